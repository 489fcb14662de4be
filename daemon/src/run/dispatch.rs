//! The record and act stages: each engine output is logged and published
//! to the audit trail, and the actions it asks for go to the pipeline,
//! unless a silence covers them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use canaryd_connectors::{Action, Evidence};
use canaryd_rules::event::AlertStatus;
use canaryd_rules::rollout::controller::{Change, ChangeKind};
use canaryd_rules::{ActionName, Output, Phase, Severity, Span, Subject};
use serde_json::json;

use super::stats::LiveStats;
use crate::act::audit::Audit;
use crate::act::decide::{actions_for, resolutions_for, rollout_actions};
use crate::act::outbox::{Origin, Pending};
use crate::act::pipeline::{Closed, Pipeline};
use crate::clock::wall_clock;
use crate::config::Loaded;
use crate::server::DirectAction;
use crate::shared::Shared;

/// Where decisions go: the audit trail and the action pipeline.
pub(super) struct Dispatcher {
    /// `None` once closed at shutdown.
    pub(super) pipeline: Option<Pipeline>,
    pub(super) audit: Audit,
    pub(super) shared: Arc<Shared>,
    pub(super) stats: Arc<LiveStats>,
}

impl Dispatcher {
    fn pipeline(&self) -> Result<&Pipeline, Closed> {
        self.pipeline.as_ref().ok_or(Closed)
    }

    /// Closes the pipeline: its receivers finish what they hold and stop.
    pub(super) fn close(&mut self) {
        self.pipeline = None;
    }

    /// Publishes `outputs` (draining them) and submits their actions;
    /// `partition` is the input partition they came from (-1 for
    /// Alertmanager's alerts), and `origin` the outbox that tracks their
    /// actions, if any. `changes` are the rollout changes the same outputs
    /// made: a rollout that stepped back took the `reduce_traffic` of its
    /// model's rule as that step, and the rule's cut is not made again on
    /// the weights the rollout owns. Returns once the pipeline has taken
    /// every action; `Err` once it has closed.
    pub(super) async fn dispatch(
        &self,
        loaded: &Loaded,
        outputs: &mut Vec<Output>,
        changes: &[Change],
        partition: i32,
        origin: Option<&Origin>,
    ) -> Result<(), Closed> {
        for output in outputs.drain(..) {
            match output {
                Output::Stale { ts, subject } => {
                    tracing::warn!(subject = %Subject(&subject), %ts, "subject has no fresh data");
                    let record = json!({"kind": "stale", "ts": ts, "subject": subject});
                    self.audit.publish("stale", record).await;
                }
                Output::Evicted {
                    ts,
                    subject,
                    alerts,
                } => {
                    tracing::info!(subject = %Subject(&subject), %ts, alerts_ended = alerts.len(), "subject evicted: no events for engine.evict_after; its alerts ended quietly");
                    self.shared.metrics.inc_evicted();
                    let record = json!({"kind": "evicted", "ts": ts, "subject": subject,
                        "alerts_ended": alerts});
                    self.audit.publish("evicted", record).await;
                }
                Output::Transition(t) => {
                    self.stats.transitions.fetch_add(1, Ordering::Relaxed);
                    let Some(rule) = loaded.rules.rules().get(t.rule) else {
                        continue;
                    };
                    tracing::info!(rule = %rule.name, subject = %Subject(&t.subject), from = %t.from, to = %t.to, ts = %t.ts, values = ?t.values, "alert transition");
                    self.audit
                        .publish(&rule.name, json!({
                            "kind": "transition", "ts": t.ts, "rule": rule.name, "subject": t.subject,
                            "from": t.from, "to": t.to, "severity": rule.severity, "values": t.values,
                            "partition": partition,
                        }))
                        .await;
                    if t.to == Phase::Firing
                        && let Some(model) = t.subject.get("model")
                    {
                        let actions: Vec<&str> = rule.actions.iter().map(|a| a.as_str()).collect();
                        let text = format!("{} fired ({})", rule.name, actions.join(", "));
                        self.shared.mark(model, t.ts, "firing", text);
                    }
                    for action in actions_for(&t, &loaded.rules, loaded.config.dry_run) {
                        let carried = (action.action == ActionName::ReduceTraffic)
                            .then(|| stepped_back(loaded, changes, &action))
                            .flatten();
                        self.submit(action, origin, carried).await?;
                    }
                    for action in resolutions_for(&t, &loaded.rules, loaded.config.dry_run) {
                        self.pipeline()?.resolve(action).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Records rollout changes (log and audit trail) and hands what they
    /// ask for to their receivers.
    pub(super) async fn rollout(
        &self,
        loaded: &Loaded,
        changes: &mut Vec<Change>,
        partition: i32,
        origin: Option<&Origin>,
    ) -> Result<(), Closed> {
        for change in changes.drain(..) {
            if change.kind == ChangeKind::Progress {
                // Nothing happened: only the traffic object hears of it.
                tracing::debug!(model = %change.model, version = %change.version, stage = change.stage, held = %change.state.held, "rollout progress recorded");
            } else {
                self.record_rollout(&change, partition).await;
            }
            for (action, receivers) in rollout_actions(loaded, &change) {
                self.pipeline()?
                    .submit_to(action, &receivers, origin)
                    .await?;
                self.stats.actions.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// A rollout change in the log, the metrics, the model's marks and the
    /// audit trail.
    async fn record_rollout(&self, change: &Change, partition: i32) {
        tracing::info!(model = %change.model, version = %change.version, event = change.kind.as_str(), weight = change.weight, stage = change.stage, ts = %change.ts, reason = %change.reason, "rollout");
        self.shared
            .metrics
            .inc_rollout_transition(&change.model, change.kind.as_str());
        let text = format!(
            "{} {} at {}%: {}",
            change.version,
            change.kind.as_str(),
            change.weight,
            change.reason
        );
        self.shared
            .mark(&change.model, change.ts, change.kind.as_str(), text);
        let record = json!({
            "kind": "rollout", "ts": change.ts, "subject": {"model": change.model},
            "version": change.version, "event": change.kind, "weight": change.weight,
            "stage": change.stage, "reason": change.reason, "partition": partition,
        });
        self.audit
            .publish(&format!("rollout|{}", change.model), record)
            .await;
    }

    /// Carries out the actions Alertmanager's alerts name directly.
    pub(super) async fn direct(
        &self,
        loaded: &Loaded,
        requests: Vec<DirectAction>,
    ) -> Result<(), Closed> {
        for request in requests {
            let action = direct_action(loaded, &request);
            match request.status {
                AlertStatus::Resolved => self.pipeline()?.resolve(action).await?,
                AlertStatus::Firing => self.submit(action, None, None).await?,
            }
        }
        Ok(())
    }

    /// Hands what a partition's restored outbox held back to its receivers.
    pub(super) async fn resubmit(
        &self,
        pending: Vec<Pending>,
        origin: &Origin,
    ) -> Result<(), Closed> {
        for p in pending {
            tracing::info!(rule = %p.action.rule, subject = %Subject(&p.action.subject), action = %p.action.action, receiver = %p.receiver, key = %p.action.key, "unfinished action restored from the outbox: carrying it out");
            self.pipeline()?.resubmit(p, origin).await?;
        }
        Ok(())
    }

    /// Hands `action` to the pipeline, unless a silence covers it: then it
    /// is only recorded. `carried`: a receiver that has carried it out
    /// already, and how.
    async fn submit(
        &self,
        action: Action,
        origin: Option<&Origin>,
        carried: Option<(&str, &str)>,
    ) -> Result<(), Closed> {
        if self
            .shared
            .is_silenced(&action.rule, &action.subject, wall_clock())
        {
            tracing::info!(rule = %action.rule, subject = %Subject(&action.subject), action = %action.action, "silenced: not acting");
            let record = json!({"kind": "silenced", "ts": action.ts, "rule": action.rule, "subject": action.subject, "action": action.action, "key": action.key});
            self.audit.publish(&action.key, record).await;
            return Ok(());
        }
        self.pipeline()?
            .submit_carried(action, origin, carried)
            .await?;
        self.stats.actions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The traffic receiver and the reason of the step back that `action`'s
/// model's rollout made, if it made one: the rollout owns the weights, and
/// its step back is the rule's `reduce_traffic`.
fn stepped_back<'c>(
    loaded: &'c Loaded,
    changes: &'c [Change],
    action: &Action,
) -> Option<(&'c str, &'c str)> {
    let model = action.subject.get("model")?;
    let change = changes
        .iter()
        .find(|c| c.kind == ChangeKind::SteppedBack && c.model == *model)?;
    let receiver = loaded.config.rollouts.as_ref()?.receiver_for(model)?;
    Some((receiver, change.reason.as_str()))
}

/// The action an Alertmanager alert names with the action label.
fn direct_action(loaded: &Loaded, request: &DirectAction) -> Action {
    let severity = request
        .labels
        .get("severity")
        .and_then(|s| s.parse::<Severity>().ok())
        .unwrap_or(Severity::High);
    Action {
        key: format!(
            "alertmanager|{}|{}|{}|{}",
            request.alertname,
            Subject(&request.subject),
            request.starts_at.millis(),
            request.action
        ),
        ts: request.starts_at,
        rule: request.alertname.clone(),
        subject: request.subject.clone(),
        action: request.action,
        severity,
        deadline: loaded.config.decision_matrix.get(severity).deadline,
        dry_run: loaded.config.dry_run,
        evidence: Evidence {
            condition: format!("Alertmanager alert {}", request.alertname),
            values: BTreeMap::new(),
            thresholds: Vec::new(),
            duration: Span::ZERO,
            since: request.starts_at,
        },
        labels: request.labels.clone(),
        annotations: request.annotations.clone(),
        traffic: None,
    }
}
