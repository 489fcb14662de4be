//! From transitions to actions: what canaryd does when an alert fires.

use std::collections::BTreeMap;

use canaryd_connectors::{Action, Evidence, TrafficChange};
use canaryd_rules::rollout::Phase as RolloutPhase;
use canaryd_rules::rollout::controller::{Change, ChangeKind};
use canaryd_rules::{ActionName, Phase, RuleSet, Severity, Subject, Transition};

use crate::config::Loaded;

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

/// What a rollout change asks for, and of which receivers: its weight
/// through the plan's traffic receiver (a change that moves no traffic is
/// still recorded there, when that receiver keeps the rollout's state for
/// a new owner to read back); on a promotion, a notice to
/// `rollouts.promoted`; on a rollback, an incident ticket to
/// `rollouts.incident`. Keys come from the change's event time, so that a
/// change decided again after a restart is recognised as the same one.
pub fn rollout_actions(loaded: &Loaded, change: &Change) -> Vec<(Action, Vec<String>)> {
    let Some(config) = loaded.config.rollouts.as_ref() else {
        return Vec::new();
    };
    let subject = BTreeMap::from([("model".to_string(), change.model.clone())]);
    let plan = if config.models.contains_key(&change.model) {
        change.model.as_str()
    } else {
        "default"
    };
    let severity = match change.kind {
        ChangeKind::RolledBack => Severity::Critical,
        _ => Severity::Low,
    };
    let action = |name: ActionName, what: &str| Action {
        key: format!(
            "rollout|{}|{}|stage {}|{}|{}|{what}",
            Subject(&subject),
            change.state.version,
            change.stage,
            change.kind.as_str(),
            change.ts.millis()
        ),
        ts: change.ts,
        rule: format!(
            "rollout {plan}: {} at stage {}",
            change.kind.as_str(),
            change.stage
        ),
        subject: subject.clone(),
        action: name,
        severity,
        deadline: loaded.config.decision_matrix.get(severity).deadline,
        dry_run: loaded.config.dry_run,
        evidence: Evidence {
            condition: change.reason.clone(),
            values: BTreeMap::new(),
            thresholds: Vec::new(),
            duration: change.state.held,
            since: change.state.stage_started,
        },
        labels: BTreeMap::from([("rollout".to_string(), change.kind.as_str().to_string())]),
        annotations: BTreeMap::from([(
            "summary".to_string(),
            format!(
                "{} {}: {} at {}% (stage {}): {}",
                change.model,
                if change.version.is_empty() {
                    "canary"
                } else {
                    &change.version
                },
                change.kind.as_str(),
                change.weight,
                change.stage,
                change.reason
            ),
        )]),
        traffic: None,
    };
    let mut out = Vec::new();
    let record = !change.traffic && config.reads_back(&change.model, &loaded.config.receivers);
    if (change.traffic || record)
        && let Some(receiver) = config.receiver_for(&change.model)
    {
        let mut shift = action(
            ActionName::ShiftTraffic,
            if change.traffic { "weight" } else { "record" },
        );
        let at = change.ts.millis();
        let state = serde_json::json!({"plan": plan, "at": at, "rollout": change.state});
        shift.traffic = Some(TrafficChange {
            weight: change.weight,
            state: Some(state.to_string()),
            at,
            // A paused rollout takes the weights as they are: its record
            // is written whatever they are.
            adopt: change.kind == ChangeKind::Resumed
                || (record && matches!(change.state.phase, RolloutPhase::Paused { .. })),
            record,
        });
        out.push((shift, vec![receiver.to_string()]));
    }
    match change.kind {
        ChangeKind::Promoted if !config.promoted.is_empty() => out.push((
            action(ActionName::NotifyMlTeam, "promoted"),
            config.promoted.clone(),
        )),
        ChangeKind::RolledBack if !config.incident.is_empty() => out.push((
            action(ActionName::NotifyOnCall, "incident"),
            config.incident.clone(),
        )),
        _ => {}
    }
    out
}
