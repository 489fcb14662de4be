//! The action pipeline: routes each action to its receivers, each with a
//! bounded queue and its own pool of workers.
//!
//! - `submit` returns once every routed receiver's queue has taken the
//!   action; a full queue makes it wait, so backpressure reaches the
//!   consumer and nothing is dropped.
//! - A receiver remembers recent idempotency keys, so a re-fired or
//!   re-delivered action never notifies or rolls back twice.
//! - Retriable failures are retried with exponential backoff and jitter
//!   until the action's deadline. A permanent failure, or a deadline
//!   missed, is dead-lettered (as an audit record holding the whole action)
//!   and escalated to the `notify_on_call` receivers with the reason.
//! - Notifications over a receiver's rate limit are held and sent as one
//!   summary, never dropped. Traffic changes are never rate limited.
//! - An action decided by an input partition's events is tracked in the
//!   [`Outbox`] until its receiver is finished with it, so a checkpoint
//!   never commits past an action that is neither done nor written down.
//!   Actions abandoned at shutdown stay there for the partition's next
//!   owner.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use canaryd_connectors::{Action, Connector, ConnectorError, Outcome, OutcomeKind, RetryPolicy};
use canaryd_rules::{ActionName, Span, Subject};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::act::audit::Audit;
use crate::act::outbox::{Origin, Outbox, Pending};
use crate::act::routes::Routes;
use crate::dedup::DedupSet;
use crate::shared::Shared;

/// How many recent idempotency keys each receiver remembers.
const DEDUP_MEMORY: usize = 100_000;

/// `pipeline:` in the config file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Actions each receiver may have waiting.
    pub queue_capacity: usize,
    /// Actions each receiver works on at once.
    pub workers: usize,
    /// First retry delay; doubles each attempt, with jitter.
    pub retry_initial: Span,
    /// Longest retry delay.
    pub retry_max: Span,
    /// Notifications per subject per minute, per receiver.
    pub rate_limit_per_minute: u32,
    /// Notifications a subject may send at once before the rate applies.
    pub rate_limit_burst: u32,
    /// How often notifications held back by the rate limit go out as one summary.
    pub summary_every: Span,
    /// On shutdown, how long in-flight actions may take to finish. After
    /// it, nothing new is attempted and what is left is dead-lettered.
    pub shutdown_grace: Span,
}

impl PipelineConfig {
    /// The backoff between attempts at one action.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::new(
            Duration::from_millis(u64::try_from(self.retry_initial.millis()).unwrap_or(0)),
            Duration::from_millis(u64::try_from(self.retry_max.millis()).unwrap_or(0)),
        )
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            queue_capacity: 1024,
            workers: 4,
            retry_initial: Span(250),
            retry_max: Span::seconds(30),
            rate_limit_per_minute: 20,
            rate_limit_burst: 5,
            summary_every: Span::seconds(60),
            shutdown_grace: Span::seconds(20),
        }
    }
}

/// Counts of outcomes by receiver, for logs and metrics.
#[derive(Default)]
pub struct PipelineStats {
    outcomes: Mutex<BTreeMap<(String, OutcomeKind), u64>>,
    /// Where connector latencies also go, once attached.
    sink: std::sync::OnceLock<Arc<Shared>>,
}

impl PipelineStats {
    fn count(&self, receiver: &str, kind: OutcomeKind) {
        let mut map = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((receiver.to_string(), kind)).or_default() += 1;
    }

    /// Also feeds connector latencies into the metrics of `shared`.
    pub fn attach(&self, shared: Arc<Shared>) {
        // Attached once, at start-up; a second call changes nothing.
        let _ = self.sink.set(shared);
    }

    fn observe(&self, receiver: &str, seconds: f64) {
        if let Some(shared) = self.sink.get() {
            shared
                .metrics
                .observe_connector_duration(receiver, Duration::from_secs_f64(seconds));
        }
    }

    /// Outcomes so far: (receiver, outcome) → count.
    pub fn outcomes(&self) -> BTreeMap<(String, OutcomeKind), u64> {
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Work for a receiver.
enum Job {
    /// Carry out an action; `origin` is the partition whose outbox tracks it.
    Fire {
        action: Action,
        accepted: Instant,
        origin: Option<Origin>,
    },
    /// Tell the receiver the alert behind the action resolved.
    Resolve(Action),
}

/// The sending side of one receiver.
struct Lane {
    name: String,
    tx: mpsc::Sender<Job>,
}

/// The sending side of the pipeline. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    lanes: Arc<Vec<Lane>>,
    routes: Arc<HashMap<ActionName, (Vec<usize>, bool)>>,
    audit: Audit,
    outbox: Outbox,
    /// Outcome counters.
    pub stats: Arc<PipelineStats>,
}

/// The pipeline has shut down and accepts nothing more.
#[derive(Debug, thiserror::Error)]
#[error("the action pipeline is closed")]
pub struct Closed;

/// A receiver's worker pool panicked or could not be joined.
#[derive(Debug, thiserror::Error)]
#[error("receiver {receiver}: {message}")]
pub struct WorkerFailed {
    /// The receiver.
    pub receiver: String,
    /// What happened.
    pub message: String,
}

impl Pipeline {
    /// Starts one worker pool per receiver. The returned set finishes once
    /// every `Pipeline` clone is dropped and the queues are drained; join it
    /// to surface a panic.
    pub fn start(
        receivers: Vec<Arc<dyn Connector>>,
        routes: &Routes,
        config: &PipelineConfig,
        audit: Audit,
        hurry: CancellationToken,
    ) -> (Pipeline, JoinSet<Result<(), WorkerFailed>>) {
        let stats = Arc::new(PipelineStats::default());
        let index: HashMap<String, usize> = receivers
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name().to_string(), i))
            .collect();
        let mut route_map = HashMap::new();
        for (action, route) in routes {
            let lanes: Vec<usize> = route
                .receivers
                .iter()
                .filter_map(|r| index.get(r).copied())
                .collect();
            route_map.insert(*action, (lanes, route.dry_run));
        }
        let oncall: Vec<Arc<dyn Connector>> = route_map
            .get(&ActionName::NotifyOnCall)
            .map(|(lanes, _)| lanes.iter().map(|&i| receivers[i].clone()).collect())
            .unwrap_or_default();
        let mut txs = Vec::new();
        let mut rxs = Vec::new();
        for r in &receivers {
            let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
            txs.push(Lane {
                name: r.name().to_string(),
                tx,
            });
            rxs.push(rx);
        }
        let outbox = Outbox::default();
        let pipeline = Pipeline {
            lanes: Arc::new(txs),
            routes: Arc::new(route_map),
            audit: audit.clone(),
            outbox: outbox.clone(),
            stats: stats.clone(),
        };
        let mut set = JoinSet::new();
        for (connector, rx) in receivers.into_iter().zip(rxs) {
            // Escalations go straight to the on-call connectors, so they are
            // never queued behind, or rate limited with, what failed.
            let oncall = oncall
                .iter()
                .filter(|c| c.name() != connector.name())
                .cloned()
                .collect();
            let lane = LaneWorker {
                connector,
                config: config.clone(),
                audit: audit.clone(),
                stats: stats.clone(),
                oncall,
                limiter: RateLimiter::keyed(quota(config)),
                held: Mutex::new(Vec::new()),
                seen: Mutex::new(DedupSet::new(DEDUP_MEMORY)),
                hurry: hurry.clone(),
                outbox: outbox.clone(),
            };
            set.spawn(Arc::new(lane).run(rx));
        }
        (pipeline, set)
    }

    /// Queues `action` for every receiver its route names; returns once all
    /// have taken it. An action with no route is recorded as failed, never
    /// silently dropped.
    pub async fn submit(&self, action: Action) -> Result<(), Closed> {
        self.submit_from(action, None).await
    }

    /// [`Pipeline::submit`], tracked in `origin`'s outbox until each
    /// receiver is finished with it.
    pub async fn submit_from(&self, action: Action, origin: Option<&Origin>) -> Result<(), Closed> {
        self.submit_carried(action, origin, None).await
    }

    /// [`Pipeline::submit_from`], except that the receiver `carried` names
    /// has carried it out already, as it says: a rollout's step back was
    /// the rule's `reduce_traffic`. That receiver's outcome says so, and it
    /// is not asked again; the route's other receivers act as ever.
    pub async fn submit_carried(
        &self,
        mut action: Action,
        origin: Option<&Origin>,
        carried: Option<(&str, &str)>,
    ) -> Result<(), Closed> {
        let Some((lanes, dry_run)) = self.routes.get(&action.action) else {
            let detail = format!("no route for {}: add it under `routes:`", action.action);
            self.refuse(&action, "none", detail).await;
            return Ok(());
        };
        action.dry_run |= *dry_run;
        let accepted = Instant::now();
        for &lane in lanes {
            let lane = &self.lanes[lane];
            match carried {
                Some((receiver, how)) if lane.name == receiver => {
                    let outcome = Outcome {
                        key: action.key.clone(),
                        connector: lane.name.clone(),
                        kind: OutcomeKind::Succeeded,
                        dry_run: action.dry_run,
                        detail: format!("carried out by the model's rollout: {how}"),
                    };
                    self.stats.count(&lane.name, OutcomeKind::Succeeded);
                    record(&self.audit, &action, &outcome).await;
                }
                _ => self.fire(lane, action.clone(), accepted, origin).await?,
            }
        }
        Ok(())
    }

    /// Queues `action` for the named `receivers` (a rollout's, which has
    /// no route), tracked in `origin`'s outbox. A receiver that does not
    /// exist gets it recorded as failed.
    pub async fn submit_to(
        &self,
        action: Action,
        receivers: &[String],
        origin: Option<&Origin>,
    ) -> Result<(), Closed> {
        let accepted = Instant::now();
        for receiver in receivers {
            match self.lanes.iter().find(|l| l.name == *receiver) {
                Some(lane) => self.fire(lane, action.clone(), accepted, origin).await?,
                None => {
                    let detail = format!("receiver {receiver} is not configured");
                    self.refuse(&action, receiver, detail).await;
                }
            }
        }
        Ok(())
    }

    /// Hands an action restored from `origin`'s outbox back to its
    /// receiver. Its deadline counts from now. A receiver no longer
    /// configured gets it recorded as failed.
    pub async fn resubmit(&self, pending: Pending, origin: &Origin) -> Result<(), Closed> {
        let Pending { receiver, action } = pending;
        let Some(lane) = self.lanes.iter().find(|l| l.name == receiver) else {
            let detail = format!(
                "restored from the outbox, but receiver {receiver} is no longer configured"
            );
            self.refuse(&action, &receiver, detail).await;
            return Ok(());
        };
        self.fire(lane, action, Instant::now(), Some(origin)).await
    }

    /// Queues `action` on `lane`, tracked in `origin`'s outbox.
    async fn fire(
        &self,
        lane: &Lane,
        action: Action,
        accepted: Instant,
        origin: Option<&Origin>,
    ) -> Result<(), Closed> {
        if let Some(origin) = origin {
            self.outbox.add(origin, &lane.name, &action);
        }
        let job = Job::Fire {
            action,
            accepted,
            origin: origin.cloned(),
        };
        lane.tx.send(job).await.map_err(|_| Closed)
    }

    /// Records `action` as failed at `connector` without trying it.
    async fn refuse(&self, action: &Action, connector: &str, detail: String) {
        let outcome = Outcome {
            key: action.key.clone(),
            connector: connector.to_string(),
            kind: OutcomeKind::Failed,
            dry_run: action.dry_run,
            detail,
        };
        self.stats.count(connector, OutcomeKind::Failed);
        record(&self.audit, action, &outcome).await;
    }

    /// The outbox of every partition's unfinished actions.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Tells every receiver of the action's route that its alert resolved.
    pub async fn resolve(&self, action: Action) -> Result<(), Closed> {
        let Some((lanes, _)) = self.routes.get(&action.action) else {
            return Ok(());
        };
        for &lane in lanes {
            self.lanes[lane]
                .tx
                .send(Job::Resolve(action.clone()))
                .await
                .map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Receiver names, in configuration order.
    pub fn receivers(&self) -> Vec<String> {
        self.lanes.iter().map(|l| l.name.clone()).collect()
    }
}

fn quota(config: &PipelineConfig) -> Quota {
    let per_minute = NonZeroU32::new(config.rate_limit_per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(config.rate_limit_burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(per_minute).allow_burst(burst)
}

/// One receiver's worker pool.
struct LaneWorker {
    connector: Arc<dyn Connector>,
    config: PipelineConfig,
    audit: Audit,
    stats: Arc<PipelineStats>,
    /// Where escalations go: the `notify_on_call` receivers but this one.
    oncall: Vec<Arc<dyn Connector>>,
    /// Notifications per subject.
    limiter: DefaultKeyedRateLimiter<String>,
    /// Notifications over the limit, waiting for the next summary.
    held: Mutex<Vec<(Action, Option<Origin>)>>,
    /// Idempotency keys acted on recently.
    seen: Mutex<DedupSet<String>>,
    /// Cancelled when the shutdown grace period is over.
    hurry: CancellationToken,
    /// Told when this receiver is finished with an action.
    outbox: Outbox,
}

/// How an attempt to carry out an action ended, when not in success.
enum Unfinished {
    /// For good: failed, or out of time. Recorded as `kind`.
    Given(OutcomeKind, String),
    /// Stopped by shutdown.
    Abandoned(String),
}

impl LaneWorker {
    fn name(&self) -> &str {
        self.connector.name()
    }

    async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Job>) -> Result<(), WorkerFailed> {
        let permits = Arc::new(Semaphore::new(self.config.workers.max(1)));
        let mut jobs = JoinSet::new();
        let every = Duration::from_millis(self.config.summary_every.millis().max(1) as u64);
        let mut summary = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut failure = None;
        loop {
            tokio::select! {
                job = rx.recv() => {
                    let Some(job) = job else { break };
                    let permit = match permits.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break, // never closed
                    };
                    let me = self.clone();
                    jobs.spawn(async move {
                        me.handle(job).await;
                        drop(permit);
                    });
                }
                _ = summary.tick() => {
                    self.limiter.retain_recent();
                    self.send_summary().await;
                }
                Some(done) = jobs.join_next(), if !jobs.is_empty() => {
                    if let Err(e) = done {
                        tracing::error!(receiver = self.name(), error = %e, "action worker panicked");
                        failure.get_or_insert(e.to_string());
                    }
                }
            }
        }
        while let Some(done) = jobs.join_next().await {
            if let Err(e) = done {
                tracing::error!(receiver = self.name(), error = %e, "action worker panicked");
                failure.get_or_insert(e.to_string());
            }
        }
        // Whatever is still held goes out before the lane closes.
        self.send_summary().await;
        match failure {
            None => Ok(()),
            Some(message) => Err(WorkerFailed {
                receiver: self.name().to_string(),
                message,
            }),
        }
    }

    async fn handle(&self, job: Job) {
        match job {
            Job::Fire {
                action,
                accepted,
                origin,
            } => {
                let first = self
                    .seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(action.key.clone());
                if !first {
                    tracing::info!(receiver = self.name(), key = %action.key, "duplicate action ignored");
                    self.finished(origin.as_ref(), &action);
                    return;
                }
                self.outcome(self.name(), &action, OutcomeKind::Accepted, String::new())
                    .await;
                if self.hurry.is_cancelled() {
                    self.abandon(&action, origin.as_ref(), "before the first attempt".into())
                        .await;
                    return;
                }
                if !action.action.changes_traffic() && !self.within_limit(&action) {
                    self.held
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((action, origin));
                    return;
                }
                if self.deliver(&action, accepted, true).await {
                    self.finished(origin.as_ref(), &action);
                } else {
                    self.abandon(&action, origin.as_ref(), String::new()).await;
                }
            }
            Job::Resolve(action) => {
                let Some(call) = self.connector.resolve(&action) else {
                    return;
                };
                let started = Instant::now();
                let result = call.await;
                self.stats
                    .observe(self.name(), started.elapsed().as_secs_f64());
                match result {
                    Ok(o) => {
                        self.outcome(
                            self.name(),
                            &action,
                            o.kind,
                            format!("resolve: {}", o.detail),
                        )
                        .await
                    }
                    Err(e) => {
                        self.outcome(
                            self.name(),
                            &action,
                            OutcomeKind::Failed,
                            format!("resolve: {e}"),
                        )
                        .await
                    }
                }
            }
        }
    }

    fn within_limit(&self, action: &Action) -> bool {
        self.limiter
            .check_key(&Subject(&action.subject).to_string())
            .is_ok()
    }

    /// This receiver is finished with one submission of `action`.
    fn finished(&self, origin: Option<&Origin>, action: &Action) {
        if let Some(origin) = origin {
            self.outbox.finished(origin, &action.key, self.name());
        }
    }

    /// Shutdown stopped `action`. Tracked in an outbox, it stays there for
    /// the partition's next owner; otherwise it is dead-lettered.
    async fn abandon(&self, action: &Action, origin: Option<&Origin>, why: String) {
        let (kind, detail) = match origin {
            Some(_) => (
                OutcomeKind::Retried,
                format!(
                    "abandoned at shutdown {why}; kept in the outbox for the partition's next owner"
                ),
            ),
            None => (
                OutcomeKind::DeadLettered,
                format!("abandoned at shutdown {why}"),
            ),
        };
        self.outcome(self.name(), action, kind, detail).await;
    }

    /// Carries `action` out through this receiver; on failure records it,
    /// dead-letters it and (unless it is itself an escalation) tells on-call.
    /// `false` when shutdown stopped it before it was either done or given
    /// up on.
    async fn deliver(&self, action: &Action, accepted: Instant, may_escalate: bool) -> bool {
        let (kind, failure) = match self
            .attempt(self.connector.as_ref(), action, accepted)
            .await
        {
            Ok(()) => return true,
            Err(Unfinished::Abandoned(why)) => {
                tracing::info!(receiver = self.name(), key = %action.key, %why, "action abandoned at shutdown");
                return false;
            }
            Err(Unfinished::Given(kind, failure)) => (kind, failure),
        };
        self.outcome(self.name(), action, kind, failure.clone())
            .await;
        if kind == OutcomeKind::Failed {
            // A permanent failure is dead-lettered too, so the action is kept.
            self.outcome(
                self.name(),
                action,
                OutcomeKind::DeadLettered,
                failure.clone(),
            )
            .await;
        }
        if !may_escalate {
            return true;
        }
        let escalation = escalation_for(action, self.name(), &failure);
        let mut told = Vec::new();
        for target in &self.oncall {
            match self
                .attempt(target.as_ref(), &escalation, Instant::now())
                .await
            {
                Ok(()) => told.push(target.name().to_string()),
                Err(Unfinished::Given(kind, why)) => {
                    self.outcome(target.name(), &escalation, kind, why).await
                }
                Err(Unfinished::Abandoned(why)) => {
                    let why = format!("abandoned at shutdown {why}");
                    self.outcome(target.name(), &escalation, OutcomeKind::DeadLettered, why)
                        .await
                }
            }
        }
        let detail = if told.is_empty() {
            format!("no on-call receiver could be told: {failure}")
        } else {
            format!("on-call told through {}: {failure}", told.join(", "))
        };
        self.outcome(self.name(), action, OutcomeKind::Escalated, detail)
            .await;
        true
    }

    /// A rollout's step that will not be carried out pauses the rollout, so
    /// that it never goes on as if the weight were set: a person changed
    /// the weights, or the receiver refused or could not be reached in
    /// time. A record of state alone pauses it only on a hand edit.
    fn refused_step(&self, action: &Action, reason: &str) {
        let (Some(traffic), Some(shared), Some(model)) = (
            action.traffic.as_ref(),
            self.stats.sink.get(),
            action.subject.get("model"),
        ) else {
            return;
        };
        if action.action != ActionName::ShiftTraffic {
            return;
        }
        if reason.starts_with(canaryd_connectors::kube::HAND_EDIT) {
            shared.note_refused_step(model, format!("canaryd on a hand edit ({reason})"));
        } else if !traffic.record {
            shared.note_refused_step(
                model,
                format!(
                    "canaryd: the canary's weight could not be set to {}% ({reason})",
                    traffic.weight
                ),
            );
        }
    }

    /// Tries `connector` until success, a permanent error or the action's
    /// deadline (counted from `accepted`). Records each outcome on the way.
    async fn attempt(
        &self,
        connector: &dyn Connector,
        action: &Action,
        accepted: Instant,
    ) -> Result<(), Unfinished> {
        let name = connector.name();
        let budget = Duration::from_millis(action.deadline.millis().max(0) as u64);
        let mut backoff = self.config.retry_policy().backoff();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let started = std::time::Instant::now();
            let result = connector.execute(action).await;
            self.stats.observe(name, started.elapsed().as_secs_f64());
            match result {
                Ok(o) => {
                    self.outcome(name, action, o.kind, o.detail).await;
                    return Ok(());
                }
                Err(ConnectorError::Permanent(reason)) => {
                    self.refused_step(action, &reason);
                    return Err(Unfinished::Given(
                        OutcomeKind::Failed,
                        format!("failed permanently: {reason}"),
                    ));
                }
                Err(ConnectorError::Retriable {
                    reason,
                    retry_after,
                }) => {
                    let wait = backoff.next_delay(retry_after);
                    if accepted.elapsed() + wait >= budget {
                        self.refused_step(action, &reason);
                        return Err(Unfinished::Given(
                            OutcomeKind::DeadLettered,
                            format!(
                                "not done within its {} deadline after {attempt} attempts: {reason}",
                                action.deadline
                            ),
                        ));
                    }
                    self.outcome(
                        name,
                        action,
                        OutcomeKind::Retried,
                        format!("attempt {attempt}: {reason}"),
                    )
                    .await;
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.hurry.cancelled() => {
                            return Err(Unfinished::Abandoned(
                                format!("after {attempt} attempts: {reason}"),
                            ));
                        }
                    }
                }
            }
        }
    }

    /// Sends held notifications as one summary.
    async fn send_summary(&self) {
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()));
        if held.is_empty() {
            return;
        }
        let actions: Vec<Action> = held.iter().map(|(a, _)| a.clone()).collect();
        let summary = summary_of(&actions, self.name());
        for action in &actions {
            let detail = format!("rate limited; sent in summary {}", summary.key);
            self.outcome(self.name(), action, OutcomeKind::Accepted, detail)
                .await;
        }
        let sent = self.deliver(&summary, Instant::now(), true).await;
        for (action, origin) in &held {
            if sent {
                self.finished(origin.as_ref(), action);
            } else {
                self.abandon(action, origin.as_ref(), "in a summary".into())
                    .await;
            }
        }
    }

    async fn outcome(&self, receiver: &str, action: &Action, kind: OutcomeKind, detail: String) {
        self.stats.count(receiver, kind);
        let outcome = Outcome {
            key: action.key.clone(),
            connector: receiver.to_string(),
            kind,
            dry_run: action.dry_run,
            detail,
        };
        record(&self.audit, action, &outcome).await;
    }
}

/// The on-call notification sent when `action` could not be carried out.
fn escalation_for(action: &Action, receiver: &str, reason: &str) -> Action {
    let mut escalation = action.clone();
    escalation.key = format!("{}|escalated|{receiver}", action.key);
    escalation.action = ActionName::NotifyOnCall;
    escalation.annotations.insert(
        "summary".into(),
        format!(
            "ESCALATION: {} for {} by rule {:?} via {receiver} {reason}",
            action.action,
            Subject(&action.subject),
            action.rule
        ),
    );
    escalation
}

/// One notification standing for several held back by the rate limit.
fn summary_of(held: &[Action], receiver: &str) -> Action {
    let mut summary = held[held.len() - 1].clone();
    let lines: Vec<String> = held
        .iter()
        .map(|a| {
            format!(
                "{} {} ({}) at {}",
                a.rule,
                Subject(&a.subject),
                a.severity,
                a.ts
            )
        })
        .collect();
    summary.key = format!("summary|{receiver}|{}|{}", held.len(), held[0].key);
    summary.rule = format!("{} notifications held back by the rate limit", held.len());
    summary
        .annotations
        .insert("summary".into(), lines.join("\n"));
    summary.severity = held
        .iter()
        .map(|a| a.severity)
        .max()
        .unwrap_or(summary.severity);
    summary
}

async fn record(audit: &Audit, action: &Action, outcome: &Outcome) {
    tracing::info!(
        rule = %action.rule,
        action = %action.action,
        subject = ?action.subject,
        key = %outcome.key,
        receiver = %outcome.connector,
        outcome = ?outcome.kind,
        dry_run = outcome.dry_run,
        detail = %outcome.detail,
        "action outcome"
    );
    let mut record = serde_json::json!({
        "kind": "outcome",
        "ts": action.ts,
        "rule": action.rule,
        "subject": action.subject,
        "action": action.action,
        "severity": action.severity,
        "deadline_s": action.deadline.as_secs_f64(),
        "dry_run": outcome.dry_run,
        "key": outcome.key,
        "connector": outcome.connector,
        "outcome": outcome.kind,
        "detail": outcome.detail,
        "evidence": action.evidence,
    });
    // A dead letter carries the whole action, so nothing is lost.
    if outcome.kind == OutcomeKind::DeadLettered
        && let (Some(map), Ok(full)) = (record.as_object_mut(), serde_json::to_value(action))
    {
        map.insert("action_record".into(), full);
    }
    audit.publish(&action.key, record).await;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::act::routes::{Route, route_problems};
    use canaryd_connectors::Evidence;
    use canaryd_connectors::connector::BoxFuture;
    use canaryd_rules::{Severity, Timestamp};
    use futures::FutureExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails the first `failures` calls with `error`, then succeeds; records every call.
    struct Flaky {
        name: String,
        failures: AtomicUsize,
        permanent: bool,
        /// What a retriable failure says in `Retry-After`.
        retry_after: Option<Duration>,
        calls: Mutex<Vec<Action>>,
        /// When each call came, in (paused) tokio time.
        called_at: Mutex<Vec<Instant>>,
        gate: Option<Arc<Semaphore>>,
    }

    impl Flaky {
        fn new(name: &str, failures: usize, permanent: bool) -> Arc<Flaky> {
            Arc::new(Flaky {
                name: name.into(),
                failures: AtomicUsize::new(failures),
                permanent,
                retry_after: None,
                calls: Mutex::new(Vec::new()),
                called_at: Mutex::new(Vec::new()),
                gate: None,
            })
        }

        fn asking_to_wait(name: &str, failures: usize, wait: Duration) -> Arc<Flaky> {
            let mut flaky = Arc::into_inner(Flaky::new(name, failures, false)).unwrap();
            flaky.retry_after = Some(wait);
            Arc::new(flaky)
        }

        fn calls(&self) -> Vec<Action> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Connector for Flaky {
        fn name(&self) -> &str {
            &self.name
        }

        fn execute<'a>(
            &'a self,
            action: &'a Action,
        ) -> BoxFuture<'a, Result<Outcome, ConnectorError>> {
            Box::pin(async move {
                if let Some(gate) = &self.gate {
                    gate.acquire().await.unwrap().forget();
                }
                self.calls.lock().unwrap().push(action.clone());
                self.called_at.lock().unwrap().push(Instant::now());
                let left = self.failures.load(Ordering::SeqCst);
                if left > 0 {
                    self.failures.store(left - 1, Ordering::SeqCst);
                    return Err(if self.permanent {
                        ConnectorError::Permanent("403 forbidden".into())
                    } else {
                        ConnectorError::Retriable {
                            reason: "503 unavailable".into(),
                            retry_after: self.retry_after,
                        }
                    });
                }
                Ok(Outcome {
                    key: action.key.clone(),
                    connector: self.name.clone(),
                    kind: OutcomeKind::Succeeded,
                    dry_run: action.dry_run,
                    detail: "done".into(),
                })
            })
        }
    }

    /// A test action: rule `r`, subject `model=<model>`, critical.
    pub(crate) fn action(key: &str, name: ActionName, model: &str) -> Action {
        Action {
            key: key.into(),
            ts: Timestamp(0),
            rule: "r".into(),
            subject: BTreeMap::from([("model".to_string(), model.to_string())]),
            action: name,
            severity: Severity::Critical,
            deadline: Span::seconds(30),
            dry_run: false,
            evidence: Evidence {
                condition: "x > 1".into(),
                values: BTreeMap::new(),
                thresholds: vec![],
                duration: Span::ZERO,
                since: Timestamp(0),
            },
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            traffic: None,
        }
    }

    fn routes(pairs: &[(ActionName, &[&str])]) -> Routes {
        pairs
            .iter()
            .map(|(a, r)| {
                (
                    *a,
                    Route {
                        receivers: r.iter().map(|s| s.to_string()).collect(),
                        dry_run: false,
                    },
                )
            })
            .collect()
    }

    async fn drain(pipeline: Pipeline, mut set: JoinSet<Result<(), WorkerFailed>>) {
        drop(pipeline);
        while let Some(done) = set.join_next().await {
            done.unwrap().unwrap();
        }
    }

    fn count(stats: &PipelineStats, receiver: &str, kind: OutcomeKind) -> u64 {
        stats
            .outcomes()
            .get(&(receiver.to_string(), kind))
            .copied()
            .unwrap_or(0)
    }

    fn audit() -> Audit {
        Audit::log_only("test".into())
    }

    #[tokio::test(start_paused = true)]
    async fn a_repeated_key_acts_once() {
        let kube = Flaky::new("kube", 0, false);
        let (p, set) = Pipeline::start(
            vec![kube.clone()],
            &routes(&[(ActionName::AutoRollback, &["kube"])]),
            &PipelineConfig::default(),
            audit(),
            CancellationToken::new(),
        );
        for _ in 0..3 {
            p.submit(action("k1", ActionName::AutoRollback, "m"))
                .await
                .unwrap();
        }
        let stats = p.stats.clone();
        drain(p, set).await;
        assert_eq!(kube.calls().len(), 1);
        assert_eq!(count(&stats, "kube", OutcomeKind::Succeeded), 1);
    }

    /// Sends one on-call notification through `slack` and waits for the
    /// pipeline to finish with it.
    async fn notify_through(slack: &Arc<Flaky>) -> Arc<PipelineStats> {
        let (p, set) = Pipeline::start(
            vec![slack.clone()],
            &routes(&[(ActionName::NotifyOnCall, &["slack"])]),
            &PipelineConfig::default(),
            audit(),
            CancellationToken::new(),
        );
        p.submit(action("k1", ActionName::NotifyOnCall, "m"))
            .await
            .unwrap();
        let stats = p.stats.clone();
        drain(p, set).await;
        stats
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_out_and_one_past_the_deadline_is_not_tried() {
        let slack = Flaky::asking_to_wait("slack", 1, Duration::from_secs(7));
        let stats = notify_through(&slack).await;
        let at = slack.called_at.lock().unwrap().clone();
        assert_eq!(at.len(), 2);
        // The backoff alone would have retried after 125 to 250 ms.
        assert!(
            at[1] - at[0] >= Duration::from_secs(7),
            "{:?}",
            at[1] - at[0]
        );
        assert_eq!(count(&stats, "slack", OutcomeKind::Succeeded), 1);

        // Asked to wait longer than the action's 30 s deadline: given up at
        // once, not hammered.
        let slack = Flaky::asking_to_wait("slack", 1, Duration::from_secs(60));
        let stats = notify_through(&slack).await;
        assert_eq!(slack.calls().len(), 1);
        assert_eq!(count(&stats, "slack", OutcomeKind::DeadLettered), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retriable_errors_are_retried_until_success() {
        let kube = Flaky::new("kube", 2, false);
        let (p, set) = Pipeline::start(
            vec![kube.clone()],
            &routes(&[(ActionName::AutoRollback, &["kube"])]),
            &PipelineConfig::default(),
            audit(),
            CancellationToken::new(),
        );
        p.submit(action("k1", ActionName::AutoRollback, "m"))
            .await
            .unwrap();
        let stats = p.stats.clone();
        drain(p, set).await;
        assert_eq!(kube.calls().len(), 3);
        assert_eq!(count(&stats, "kube", OutcomeKind::Retried), 2);
        assert_eq!(count(&stats, "kube", OutcomeKind::Succeeded), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_missed_deadline_is_dead_lettered_and_escalated_to_on_call() {
        let kube = Flaky::new("kube", usize::MAX, false);
        let pager = Flaky::new("pager", 0, false);
        let (p, set) = Pipeline::start(
            vec![kube.clone(), pager.clone()],
            &routes(&[
                (ActionName::AutoRollback, &["kube"]),
                (ActionName::NotifyOnCall, &["pager"]),
            ]),
            &PipelineConfig::default(),
            audit(),
            CancellationToken::new(),
        );
        let started = Instant::now();
        p.submit(action("k1", ActionName::AutoRollback, "m"))
            .await
            .unwrap();
        let stats = p.stats.clone();
        drain(p, set).await;
        // Retries stop at the 30 s deadline; the backoff is capped so several happen.
        assert!(kube.calls().len() >= 5, "{}", kube.calls().len());
        assert!(started.elapsed() <= Duration::from_secs(30));
        assert_eq!(count(&stats, "kube", OutcomeKind::DeadLettered), 1);
        assert_eq!(count(&stats, "kube", OutcomeKind::Escalated), 1);
        let told = pager.calls();
        assert_eq!(told.len(), 1);
        assert_eq!(told[0].action, ActionName::NotifyOnCall);
        assert!(
            told[0].annotations["summary"].starts_with("ESCALATION: auto_rollback for model=m"),
            "{:?}",
            told[0].annotations
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_is_not_retried_and_escalates_at_once() {
        let kube = Flaky::new("kube", 1, true);
        let pager = Flaky::new("pager", 0, false);
        let (p, set) = Pipeline::start(
            vec![kube.clone(), pager.clone()],
            &routes(&[
                (ActionName::AutoRollback, &["kube"]),
                (ActionName::NotifyOnCall, &["pager"]),
            ]),
            &PipelineConfig::default(),
            audit(),
            CancellationToken::new(),
        );
        p.submit(action("k1", ActionName::AutoRollback, "m"))
            .await
            .unwrap();
        let stats = p.stats.clone();
        drain(p, set).await;
        assert_eq!(kube.calls().len(), 1);
        assert_eq!(count(&stats, "kube", OutcomeKind::Failed), 1);
        assert_eq!(count(&stats, "kube", OutcomeKind::DeadLettered), 1);
        assert!(pager.calls()[0].annotations["summary"].contains("403 forbidden"));
    }

    #[tokio::test(start_paused = true)]
    async fn notifications_over_the_limit_go_out_as_one_summary_and_rollbacks_are_never_limited() {
        let slack = Flaky::new("slack", 0, false);
        let kube = Flaky::new("kube", 0, false);
        let config = PipelineConfig {
            rate_limit_per_minute: 1,
            rate_limit_burst: 2,
            ..PipelineConfig::default()
        };
        let (p, set) = Pipeline::start(
            vec![slack.clone(), kube.clone()],
            &routes(&[
                (ActionName::NotifyMlTeam, &["slack"]),
                (ActionName::AutoRollback, &["kube"]),
            ]),
            &config,
            audit(),
            CancellationToken::new(),
        );
        for i in 0..5 {
            p.submit(action(&format!("n{i}"), ActionName::NotifyMlTeam, "m"))
                .await
                .unwrap();
            p.submit(action(&format!("r{i}"), ActionName::AutoRollback, "m"))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_secs(61)).await;
        let stats = p.stats.clone();
        drain(p, set).await;
        let sent = slack.calls();
        assert_eq!(sent.len(), 3, "two within the burst, then one summary");
        assert_eq!(sent[2].rule, "3 notifications held back by the rate limit");
        assert_eq!(sent[2].annotations["summary"].lines().count(), 3);
        assert_eq!(kube.calls().len(), 5);
        assert_eq!(count(&stats, "slack", OutcomeKind::Succeeded), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_holds_the_submitter_back() {
        let gate = Arc::new(Semaphore::new(0));
        let slow = Arc::new(Flaky {
            name: "slow".into(),
            failures: AtomicUsize::new(0),
            permanent: false,
            retry_after: None,
            called_at: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            gate: Some(gate.clone()),
        });
        let config = PipelineConfig {
            queue_capacity: 1,
            workers: 1,
            ..PipelineConfig::default()
        };
        let (p, set) = Pipeline::start(
            vec![slow.clone()],
            &routes(&[(ActionName::AutoRollback, &["slow"])]),
            &config,
            audit(),
            CancellationToken::new(),
        );
        // One action in the worker, one waiting for a worker, one in the
        // queue: the next submit must wait.
        let mut taken = 0;
        let blocked = loop {
            let mut next =
                Box::pin(p.submit(action(&format!("a{taken}"), ActionName::AutoRollback, "m")));
            if (&mut next).now_or_never().is_none() {
                break next;
            }
            taken += 1;
            assert!(taken <= 3, "the queue must be bounded");
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
        };
        gate.add_permits(10);
        blocked.await.unwrap();
        drain(p, set).await;
        assert_eq!(slow.calls().len(), taken + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unrouted_action_is_recorded_as_failed() {
        let (p, set) = Pipeline::start(
            vec![],
            &Routes::new(),
            &PipelineConfig::default(),
            audit(),
            CancellationToken::new(),
        );
        p.submit(action("a", ActionName::NotifyFinops, "m"))
            .await
            .unwrap();
        assert_eq!(count(&p.stats, "none", OutcomeKind::Failed), 1);
        drain(p, set).await;
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_grace_period_unfinished_actions_are_dead_lettered_not_lost() {
        let down = Flaky::new("down", usize::MAX, false);
        let hurry = CancellationToken::new();
        let (p, mut set) = Pipeline::start(
            vec![down.clone()],
            &routes(&[(ActionName::NotifyFinops, &["down"])]),
            &PipelineConfig::default(),
            audit(),
            hurry.clone(),
        );
        let mut slow = action("a", ActionName::NotifyFinops, "m");
        slow.deadline = Span::seconds(1800);
        p.submit(slow).await.unwrap();
        let stats = p.stats.clone();
        drop(p);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(
            set.try_join_next().is_none(),
            "still retrying within the deadline"
        );
        hurry.cancel();
        while let Some(done) = set.join_next().await {
            done.unwrap().unwrap();
        }
        assert_eq!(count(&stats, "down", OutcomeKind::DeadLettered), 1);
        assert_eq!(count(&stats, "down", OutcomeKind::Succeeded), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_outbox_keeps_what_shutdown_stopped_and_lets_go_of_what_finished() {
        let down = Flaky::new("down", usize::MAX, false);
        let up = Flaky::new("up", 0, false);
        let hurry = CancellationToken::new();
        let (p, mut set) = Pipeline::start(
            vec![down.clone(), up.clone()],
            &routes(&[
                (ActionName::NotifyFinops, &["down"]),
                (ActionName::NotifyMlTeam, &["up"]),
            ]),
            &PipelineConfig::default(),
            audit(),
            hurry.clone(),
        );
        let origin = Origin::new("events", 3);
        let mut slow = action("slow", ActionName::NotifyFinops, "m");
        slow.deadline = Span::seconds(1800);
        p.submit_from(slow, Some(&origin)).await.unwrap();
        p.submit_from(
            action("quick", ActionName::NotifyMlTeam, "m"),
            Some(&origin),
        )
        .await
        .unwrap();
        let outbox = p.outbox().clone();
        let stats = p.stats.clone();
        assert_eq!(outbox.unfinished(), 2, "both are tracked once submitted");
        drop(p);
        tokio::time::sleep(Duration::from_secs(20)).await;
        hurry.cancel();
        while let Some(done) = set.join_next().await {
            done.unwrap().unwrap();
        }
        assert_eq!(up.calls().len(), 1);
        let (pending, _) = outbox.checkpoint(&origin);
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert_eq!(pending[0].action.key, "slow");
        assert_eq!(pending[0].receiver, "down");
        // Kept for the next owner, not dead-lettered here.
        assert_eq!(count(&stats, "down", OutcomeKind::DeadLettered), 0);
        assert_eq!(count(&stats, "down", OutcomeKind::Escalated), 0);
    }

    #[tokio::test]
    async fn a_restored_action_goes_once_and_only_to_the_receivers_that_had_not_finished() {
        let up = Flaky::new("up", 0, false);
        let other = Flaky::new("other", 0, false);
        let (p, set) = Pipeline::start(
            vec![up.clone(), other.clone()],
            &routes(&[(ActionName::AutoRollback, &["up", "other"])]),
            &PipelineConfig::default(),
            audit(),
            CancellationToken::new(),
        );
        let origin = Origin::new("events", 0);
        let a = action("k", ActionName::AutoRollback, "m");
        // The outbox held it for "up" only: "other" had finished.
        let pending = Pending {
            receiver: "up".into(),
            action: a.clone(),
        };
        p.resubmit(pending.clone(), &origin).await.unwrap();
        // The partition came back to this replica and was restored again.
        p.resubmit(pending, &origin).await.unwrap();
        p.resubmit(
            Pending {
                receiver: "gone".into(),
                action: a.clone(),
            },
            &origin,
        )
        .await
        .unwrap();
        let outbox = p.outbox().clone();
        let stats = p.stats.clone();
        drain(p, set).await;
        assert_eq!(up.calls().len(), 1);
        assert_eq!(other.calls().len(), 0, "finished before the restart");
        assert_eq!(count(&stats, "gone", OutcomeKind::Failed), 1);
        assert_eq!(outbox.unfinished(), 0);
    }

    #[test]
    fn routes_must_name_existing_receivers() {
        let problems = route_problems(
            &routes(&[
                (ActionName::NotifyOnCall, &["pagerdty"]),
                (ActionName::NotifyFinops, &[]),
            ]),
            &["pagerduty"],
        );
        assert_eq!(
            problems,
            vec![
                "routes.notify_on_call: unknown receiver `pagerdty` (did you mean `pagerduty`?)"
                    .to_string(),
                "routes.notify_finops: no receiver".to_string(),
            ]
        );
    }
}
