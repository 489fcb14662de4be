//! What the HTTP side shows of the engines: alerts, analytics and the
//! alert and evaluation metrics, refreshed once a second while serving.

use std::collections::{BTreeMap, HashMap};

use canaryd_rules::Engine;
use canaryd_rules::Span;
use canaryd_rules::rollout::controller::{Controller, NamedPlan};
use canaryd_rules::rollout::{Phase, Rollout};
use serde_json::{Value, json};

use crate::clock::wall_clock;
use crate::shared::{Shared, subject_json};

/// Subjects whose analytics one engine contributes to a snapshot, at most.
const ANALYTICS_PER_ENGINE: usize = 10_000;

/// Replaces the snapshot in `shared` with the state of `engines`.
/// `evaluations_seen` carries the evaluation count between calls, so the
/// counter only grows (engines dropped on revocation take theirs along).
pub(super) fn refresh<'a>(
    shared: &Shared,
    engines: impl Iterator<Item = &'a mut Engine>,
    evaluations_seen: &mut u64,
) {
    let now = wall_clock();
    let mut alerts = Vec::new();
    let mut counts: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
    let mut subjects = HashMap::new();
    let mut evaluations = 0;
    for engine in engines {
        evaluations += engine.stats().evaluations;
        for a in engine.alerts() {
            *counts
                .entry((a.rule.to_string(), a.state.phase.as_str()))
                .or_default() += 1;
            alerts.push(json!({
                "rule": a.rule,
                "subject": a.subject,
                "state": a.state.phase,
                "since": a.state.active_since,
                "values": a.values,
                "silenced": shared.is_silenced(a.rule, a.subject, now),
            }));
        }
        for (labels, stats) in engine.analytics(ANALYTICS_PER_ENGINE) {
            if let Some(model) = labels.get("model") {
                subjects.insert(model.clone(), subject_json(model, &stats));
            }
        }
    }
    let mut names: Vec<String> = subjects.keys().cloned().collect();
    names.sort();
    shared.set_alerts(alerts, names);
    shared.set_subjects(subjects);
    shared.metrics.clear_alerts();
    for ((rule, state), n) in counts {
        shared.metrics.set_alerts(&rule, state, n);
    }
    if evaluations > *evaluations_seen {
        shared
            .metrics
            .add_rule_evaluations(evaluations - *evaluations_seen);
    }
    *evaluations_seen = evaluations;
}

/// One rollout as the API and the status page show it.
pub(super) fn rollout_json(model: &str, rollout: &Rollout, plan: &NamedPlan) -> Value {
    let stages: Vec<u8> = plan
        .plan
        .stages
        .iter()
        .map(|s| s.weight)
        .chain(std::iter::once(100))
        .collect();
    let hold = match rollout.phase {
        Phase::Complete | Phase::RolledBack { .. } => Span::ZERO,
        _ => plan
            .plan
            .stages
            .get(rollout.stage)
            .map_or(plan.plan.soak, |s| s.hold),
    };
    let state = serde_json::to_value(&rollout.phase).unwrap_or(Value::Null);
    json!({
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
        "hold_remaining_s": hold.millis().saturating_sub(rollout.held.millis()).max(0) / 1000,
        "requests": rollout.requests,
    })
}

/// Replaces the rollouts the API shows.
pub(super) fn refresh_rollouts<'a>(
    shared: &Shared,
    controllers: impl Iterator<Item = &'a Controller>,
) {
    let mut all: Vec<Value> = controllers
        .flat_map(|c| {
            c.rollouts()
                .into_iter()
                .map(|(model, rollout, plan)| rollout_json(model, rollout, plan))
        })
        .collect();
    all.sort_by(|a, b| a["model"].as_str().cmp(&b["model"].as_str()));
    shared.set_rollouts(all);
}
