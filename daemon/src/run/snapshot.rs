//! What the HTTP side shows of the engines: alerts, analytics and the
//! alert and evaluation metrics, refreshed once a second while serving.

use std::collections::{BTreeMap, HashMap};

use canaryd_rules::Engine;
use serde_json::json;

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
