//! From transitions to actions: what canaryd does when an alert fires.

use canaryd_connectors::{Action, Evidence};
use canaryd_rules::{Phase, RuleSet, Transition};

/// The actions a transition calls for: one per action of the rule when it
/// starts firing, none otherwise. `global_dry_run` forces dry run on all.
pub fn actions_for(t: &Transition, rules: &RuleSet, global_dry_run: bool) -> Vec<Action> {
    if t.to != Phase::Firing {
        return Vec::new();
    }
    build(t, rules, global_dry_run)
}

/// When a firing alert resolves: the same actions (same idempotency keys),
/// so that receivers which track incidents can close them.
pub fn resolutions_for(t: &Transition, rules: &RuleSet, global_dry_run: bool) -> Vec<Action> {
    if !(t.from == Phase::Firing && t.to == Phase::Resolved) {
        return Vec::new();
    }
    build(t, rules, global_dry_run)
}

fn build(t: &Transition, rules: &RuleSet, global_dry_run: bool) -> Vec<Action> {
    let Some(rule) = rules.rules().get(t.rule) else {
        return Vec::new();
    };
    let since = t.active_since.unwrap_or(t.ts);
    let subject: std::collections::BTreeMap<String, String> = (*t.subject).clone();
    let values: Vec<f64> = rule
        .condition
        .variables()
        .iter()
        .map(|v| t.values.get(v).copied().unwrap_or(f64::NAN))
        .collect();
    let thresholds = rule.condition.thresholds(&values);
    let context = serde_json::json!({
        "rule": rule.name,
        "severity": rule.severity,
        "subject": subject,
        "labels": rule.labels,
        "values": t.values,
        "thresholds": thresholds,
        "condition": rule.condition.source(),
    });
    let annotations = canaryd_rules::template::render_all(&rule.annotations, &context);
    let key = Action::key_for(&rule.name, &subject, since);
    rule.actions
        .iter()
        .map(|&action| Action {
            key: format!("{key}|{action}"),
            ts: t.ts,
            rule: rule.name.clone(),
            subject: subject.clone(),
            action,
            severity: rule.severity,
            deadline: rule.deadline,
            dry_run: global_dry_run || rule.dry_run,
            evidence: Evidence {
                condition: rule.condition.source().to_string(),
                values: t.values.clone(),
                thresholds: thresholds.clone(),
                duration: rule.timing.hold,
                since,
            },
            labels: rule.labels.clone(),
            annotations: annotations.clone(),
            traffic: None,
        })
        .collect()
}
