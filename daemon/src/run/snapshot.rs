//! What the HTTP side shows of the engines and rollouts: a [`Snapshot`],
//! taken when a request asks for one (see [`Shared::snapshot`]), and the
//! evaluation counter, brought up to date once a tick.

use std::collections::HashMap;
use std::time::Duration;

use canaryd_rules::Engine;
use canaryd_rules::Span;
use canaryd_rules::rollout::Rollout;
use canaryd_rules::rollout::controller::{Controller, NamedPlan};
use serde_json::{Value, json};

use crate::clock::wall_clock;
use crate::metrics::{AlertSeries, RolloutSeries};
use crate::shared::{Shared, Snapshot, subject_json};

/// Subjects whose analytics one engine contributes to a snapshot, at most.
const ANALYTICS_PER_ENGINE: usize = 10_000;

/// A snapshot of each partition's engine and rollouts; at most
/// `max_subjects` fresh subjects (in label order) go to the per-model
/// metrics.
pub(super) fn take<'a>(
    shared: &Shared,
    partitions: impl Iterator<Item = (&'a mut Engine, Option<&'a Controller>)>,
    max_subjects: usize,
) -> Snapshot {
    let now = wall_clock();
    let mut alerts = Vec::new();
    let mut alert_series = Vec::new();
    let mut subjects = HashMap::new();
    let mut analytics = Vec::new();
    let mut rollouts = Vec::new();
    let mut rollout_series = Vec::new();
    let mut held = 0;
    let mut beyond = 0;
    for (engine, controller) in partitions {
        held += engine.subject_count();
        for a in engine.alerts() {
            alert_series.push(AlertSeries {
                rule: a.rule.to_string(),
                subject: (**a.subject).clone(),
                state: a.state.phase.as_str(),
            });
            alerts.push(json!({
                "rule": a.rule,
                "subject": a.subject,
                "state": a.state.phase,
                "since": a.state.active_since,
                "values": a.values,
                "silenced": shared.is_silenced(a.rule, a.subject, now),
            }));
        }
        let taken = engine.analytics(ANALYTICS_PER_ENGINE);
        // Beyond the per-engine limit: left out of the metrics too.
        beyond += engine.active_subjects().saturating_sub(taken.len());
        for subject in taken {
            if let Some(model) = subject.labels.get("model") {
                subjects.insert(model.clone(), subject_json(model, &subject));
            }
            if !subject.stale {
                analytics.push(subject);
            }
        }
        for (model, rollout, plan) in controller.iter().flat_map(|c| c.rollouts()) {
            let (json, remaining) = rollout_view(model, rollout, plan);
            rollout_series.push(RolloutSeries {
                model: model.to_string(),
                stage: rollout.stage + 1,
                weight: rollout.weight(&plan.plan),
                hold_remaining: Duration::from_millis(
                    u64::try_from(remaining.millis()).unwrap_or(0),
                ),
            });
            rollouts.push(json);
        }
        for (model, version) in controller.iter().flat_map(|c| c.reading_models()) {
            rollouts.push(json!({
                "model": model,
                "version": version,
                "state": "reading_back",
                "phase": "new on this replica: reading its state from the traffic object",
            }));
        }
    }
    analytics.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
    let omitted = analytics.len().saturating_sub(max_subjects) + beyond;
    analytics.truncate(max_subjects);
    let mut names: Vec<String> = subjects.keys().cloned().collect();
    names.sort();
    rollouts.sort_by(|a, b| a["model"].as_str().cmp(&b["model"].as_str()));
    Snapshot {
        alerts: json!({"alerts": alerts, "subjects": names}),
        subjects,
        rollouts,
        analytics,
        omitted,
        alert_series,
        rollout_series,
        held,
        event_times: Vec::new(),
    }
}

/// Brings `canaryd_rule_evaluations_total` up to the engines' count.
/// `evaluations_seen` carries the count between calls, so the counter only
/// grows (engines dropped on revocation take theirs along).
pub(super) fn count_evaluations<'a>(
    shared: &Shared,
    engines: impl Iterator<Item = &'a Engine>,
    evaluations_seen: &mut u64,
) {
    let evaluations: u64 = engines.map(|e| e.stats().evaluations).sum();
    if evaluations > *evaluations_seen {
        shared
            .metrics
            .add_rule_evaluations(evaluations - *evaluations_seen);
    }
    *evaluations_seen = evaluations;
}

/// One rollout as the API and the status page show it.
pub(super) fn rollout_json(model: &str, rollout: &Rollout, plan: &NamedPlan) -> Value {
    rollout_view(model, rollout, plan).0
}

/// [`rollout_json`], and the clean event time its stage still needs.
fn rollout_view(model: &str, rollout: &Rollout, plan: &NamedPlan) -> (Value, Span) {
    let stages: Vec<u8> = plan
        .plan
        .stages
        .iter()
        .map(|s| s.weight)
        .chain(std::iter::once(100))
        .collect();
    let hold = rollout.hold(&plan.plan);
    let remaining = rollout.hold_remaining(&plan.plan);
    let state = serde_json::to_value(&rollout.phase).unwrap_or(Value::Null);
    let json = json!({
        "model": model,
        "version": rollout.version,
        "plan": plan.name,
        "stage": rollout.stage + 1,
        "stages": stages,
        "weight": rollout.weight(&plan.plan),
        "state": state["phase"],
        "phase": rollout.phase.to_string(),
        "stage_started": rollout.stage_started,
        "hold_s": hold.millis() / 1000,
        "held_s": rollout.held.millis() / 1000,
        "hold_remaining_s": remaining.millis() / 1000,
        "requests": rollout.requests,
    });
    (json, remaining)
}
