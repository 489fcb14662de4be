//! The consume loop, as the flow of one event: consume → decode →
//! evaluate → record and act → commit. Each stage is a method here or a
//! module beside this one; between messages the loop also moves idle
//! partitions' event time on, applies rebalances, serves the HTTP side's
//! commands and reloads.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use canaryd_rules::event::AlertEvent;
use canaryd_rules::rollout::controller::Change;
use canaryd_rules::{Engine, Event, Ingested, Output, decode};
use futures::FutureExt;
use prometheus_client::metrics::counter::Counter;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::changelog::{self, Acked, Changelog, Checkpoint};
use super::dead_letter::DeadLetters;
use super::dispatch::Dispatcher;
use super::idle::EndProbe;
use super::kafka::{Assignment, GroupContext};
use super::membership::Membership;
use super::offsets::Offsets;
use super::partitions::{PartitionState, Partitions};
use super::read_back::{Lookup, Purpose, Read, Seen, TrafficReads};
use super::stats::LiveStats;
use super::{reload, snapshot};
use crate::act::outbox::Origin;
use crate::act::pipeline::Closed;
use crate::clock::wall_clock;
use crate::config::Loaded;
use crate::shared::{Command, Shared};

/// Messages taken without yielding before the clock and shutdown are checked.
const BURST: u32 = 256;

/// How long file changes must settle before a reload: editors and
/// ConfigMap updates touch several files.
const RELOAD_SETTLE: Duration = Duration::from_secs(1);

/// How long shutdown waits for the last checkpoint to be acknowledged.
const CHANGELOG_FLUSH: Duration = Duration::from_secs(10);

/// Why the loop ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// Shutdown was asked for.
    Shutdown,
    /// The action pipeline closed under it (a receiver's workers failed).
    PipelineClosed,
    /// The HTTP server stopped while the daemon was running.
    ServerStopped(String),
}

/// Everything the loop reads from outside besides the consumer.
pub(super) struct Inputs {
    /// Commands from the HTTP server.
    pub(super) commands: tokio::sync::mpsc::Receiver<Command>,
    /// A message whenever a watched config or rule file changed.
    pub(super) file_changes: tokio::sync::mpsc::Receiver<()>,
    /// SIGHUP.
    pub(super) hangup: tokio::signal::unix::Signal,
    /// The HTTP server's task, while serving: its end is the daemon's.
    pub(super) server: Option<ServerTask>,
}

/// The HTTP server's task.
pub(super) type ServerTask = tokio::task::JoinHandle<std::io::Result<()>>;

/// The state of the consume loop.
pub(super) struct ConsumeLoop<'c> {
    pub(super) consumer: &'c StreamConsumer<GroupContext>,
    /// Partition assignment changes, from the consumer group context.
    pub(super) assignments: mpsc::Receiver<Assignment>,
    /// The configuration in force; a reload replaces it.
    pub(super) loaded: Arc<Loaded>,
    /// Where the configuration came from, for reloads.
    pub(super) config_path: Option<std::path::PathBuf>,
    pub(super) instance: String,
    pub(super) dispatcher: Dispatcher,
    pub(super) dead_letters: DeadLetters,
    pub(super) shared: Arc<Shared>,
    pub(super) stats: Arc<LiveStats>,
    /// How often idle partitions move on and the snapshot is refreshed.
    pub(super) tick: Duration,
    /// A partition without messages this long is probed, to move its
    /// event time on.
    pub(super) idle_after: Duration,
    /// Asks the broker whether idle partitions are caught up.
    pub(super) end_probe: EndProbe,
    pub(super) partitions: Partitions,
    /// Watches that this replica owns something, or rejoins.
    pub(super) membership: Membership,
    /// Alerts from Alertmanager have no partition: they get their own engine.
    pub(super) alertmanager: Engine,
    pub(super) outputs: Vec<Output>,
    /// Rollout changes decided by the last evaluation, to record and act on.
    pub(super) rollout_changes: Vec<Change>,
    pub(super) offsets: Offsets,
    /// Where partition state is checkpointed, if anywhere.
    pub(super) changelog: Option<Changelog>,
    /// How the changelog is read back on assignment.
    pub(super) reader: Option<rdkafka::ClientConfig>,
    /// How often a checkpoint is taken.
    pub(super) checkpoint_every: Duration,
    /// How far ahead of the wall clock an event may be stamped.
    pub(super) max_future_skew: canaryd_rules::Span,
    pub(super) next_checkpoint: Instant,
    /// A consumed-messages counter per topic, taken once.
    pub(super) consumed: Vec<(String, Counter)>,
    pub(super) evaluations_seen: u64,
    /// Rollout states being read back from traffic objects.
    pub(super) traffic_reads: TrafficReads,
}

impl<'c> ConsumeLoop<'c> {
    /// Consumes until shutdown, the pipeline closing or the server
    /// stopping. Gives back the server's task if it still runs; once the
    /// pipeline is drained, [`ConsumeLoop::finish`] records where it stood.
    pub(super) async fn run(
        &mut self,
        inputs: Inputs,
        shutdown: &CancellationToken,
    ) -> (Ended, Option<ServerTask>) {
        let Inputs {
            mut commands,
            mut file_changes,
            mut hangup,
            mut server,
        } = inputs;
        let consumer = self.consumer;
        let mut now = Instant::now();
        // The wall clock, read with `now`: bounds how far ahead events may be.
        let mut wall = wall_clock();
        let mut next_tick = now + self.tick;
        let mut reload_at: Option<tokio::time::Instant> = None;
        let mut burst = 0u32;
        let ended = loop {
            // Take messages that are already waiting without the cost of a
            // select!; every BURST messages, look at the clock and shutdown.
            let ready = if burst < BURST {
                consumer.recv().now_or_never()
            } else {
                None
            };
            let message = match ready {
                Some(m) => {
                    burst += 1;
                    m
                }
                None => {
                    burst = 0;
                    // Store offsets before waiting.
                    self.offsets.store(consumer);
                    now = Instant::now();
                    wall = wall_clock();
                    if shutdown.is_cancelled() {
                        break Ended::Shutdown;
                    }
                    if now >= next_tick {
                        next_tick = now + self.tick;
                        if let Err(ended) = self.on_tick().await {
                            break ended;
                        }
                        continue;
                    }
                    let server_running = server.is_some();
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break Ended::Shutdown,
                        ended = async {
                            match server.as_mut() {
                                Some(server) => server.await,
                                None => std::future::pending().await,
                            }
                        }, if server_running => {
                            server = None;
                            break Ended::ServerStopped(match ended {
                                Ok(Ok(())) => "it stopped".to_string(),
                                Ok(Err(e)) => e.to_string(),
                                Err(e) => format!("its task failed: {e}"),
                            });
                        }
                        _ = tokio::time::sleep_until(next_tick.into()) => continue,
                        Some(()) = file_changes.recv() => {
                            reload_at = Some(tokio::time::Instant::now() + RELOAD_SETTLE);
                            continue;
                        }
                        _ = tokio::time::sleep_until(reload_at.unwrap_or_else(tokio::time::Instant::now)), if reload_at.is_some() => {
                            reload_at = None;
                            tracing::info!("configuration files changed: reloading");
                            let _ = self.reload().await;
                            continue;
                        }
                        _ = hangup.recv() => {
                            tracing::info!("SIGHUP received: reloading");
                            let _ = self.reload().await;
                            continue;
                        }
                        Some(command) = commands.recv() => {
                            if self.command(command).await.is_err() {
                                break Ended::PipelineClosed;
                            }
                            continue;
                        }
                        m = consumer.recv() => {
                            now = Instant::now();
                            wall = wall_clock();
                            m
                        }
                    }
                }
            };
            self.rebalanced().await;
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "consume error");
                    continue;
                }
            };
            match self.process(&message, now, wall, shutdown).await {
                // With a changelog, offsets move only with checkpoints.
                Ok(true) if self.changelog.is_none() => self.offsets.note(&message),
                Ok(true) => {}
                // Shutting down before it was dead-lettered: redelivered later.
                Ok(false) => break Ended::Shutdown,
                Err(Closed) => break Ended::PipelineClosed,
            }
        };
        (ended, server)
    }

    /// After the pipeline is drained: a last checkpoint (with what the
    /// receivers left unfinished in the outbox) and the offsets it allows.
    pub(super) async fn finish(&mut self) {
        self.flush_changelog().await;
        self.offsets.store(self.consumer);
    }

    /// The outbox that tracks actions decided by `topic`/`partition`: only
    /// with a changelog, where it is checkpointed.
    fn origin(&self, topic: &str, partition: i32) -> Option<Origin> {
        self.changelog
            .is_some()
            .then(|| Origin::new(topic, partition))
    }

    /// One message through the stages up to the commit: counted, decoded
    /// (or dead-lettered), evaluated, recorded and acted on. `Ok(true)`
    /// when it is processed and its offset may be stored.
    async fn process(
        &mut self,
        message: &BorrowedMessage<'_>,
        now: Instant,
        wall: canaryd_rules::Timestamp,
        shutdown: &CancellationToken,
    ) -> Result<bool, Closed> {
        self.count(message.topic());
        let state = self
            .partitions
            .state(message.topic(), message.partition(), &self.loaded);
        state.seen(now);
        if self.changelog.is_some() {
            if message.offset() < state.resume_from {
                // Already in the state restored from the changelog.
                return Ok(true);
            }
            if state.rewinding {
                if message.offset() >= state.act_from {
                    // Fetched before the rebuild sent the consumer back: it
                    // comes again, in order.
                    return Ok(true);
                }
                state.rewinding = false;
            }
        }
        // Rebuilding: an earlier owner processed these, dead letters too.
        let rebuilding = message.offset() < state.act_from;
        let event = match message.payload().map(decode) {
            Some(Ok(event)) => event,
            _ if rebuilding => return Ok(true),
            failed => {
                let (reason, detail) = match failed {
                    Some(Err(e)) => (e.kind.as_str(), e.message),
                    _ => ("missing_payload", "message has no payload".to_string()),
                };
                return Ok(self.dead_letter(message, reason, &detail, shutdown).await);
            }
        };
        // One wrong clock must not move event time ahead of everyone's:
        // later, correctly stamped events would all be late.
        let limit = wall.plus(self.max_future_skew);
        if event.ts() > limit && rebuilding {
            return Ok(true);
        }
        if event.ts() > limit {
            let detail = format!(
                "event time {} is more than kafka.max_future_skew ({}) ahead of this replica's clock",
                event.ts(),
                self.max_future_skew
            );
            return Ok(self
                .dead_letter(message, "future_time", &detail, shutdown)
                .await);
        }
        self.evaluate(message, &event);
        if !(self.outputs.is_empty() && self.rollout_changes.is_empty())
            && self
                .partitions
                .get_mut(message.topic(), message.partition())
                .is_some_and(|s| message.offset() < s.act_from)
        {
            // Rebuilding: an earlier owner decided and acted on these.
            self.stats
                .rebuilt
                .fetch_add(self.outputs.len() as u64, Ordering::Relaxed);
            self.outputs.clear();
            self.rollout_changes.clear();
        }
        if !self.outputs.is_empty() {
            let origin = self.origin(message.topic(), message.partition());
            self.dispatcher
                .dispatch(
                    &self.loaded,
                    &mut self.outputs,
                    &self.rollout_changes,
                    message.partition(),
                    origin.as_ref(),
                )
                .await?;
        }
        if !self.rollout_changes.is_empty() {
            let origin = self.origin(message.topic(), message.partition());
            self.dispatcher
                .rollout(
                    &self.loaded,
                    &mut self.rollout_changes,
                    message.partition(),
                    origin.as_ref(),
                )
                .await?;
        }
        Ok(true)
    }

    /// Sends `message` to the dead-letter topic; whether it was sent (then
    /// it counts as processed).
    async fn dead_letter(
        &mut self,
        message: &BorrowedMessage<'_>,
        reason: &str,
        detail: &str,
        shutdown: &CancellationToken,
    ) -> bool {
        let sent = self
            .dead_letters
            .send(message, reason, detail, shutdown)
            .await;
        if sent && self.changelog.is_some() {
            let (topic, partition) = (message.topic(), message.partition());
            self.partitions
                .state(topic, partition, &self.loaded)
                .next_offset = Some(message.offset() + 1);
        }
        sent
    }

    /// The consume stage's count, per topic.
    fn count(&mut self, topic: &str) {
        self.stats.consumed.fetch_add(1, Ordering::Relaxed);
        match self.consumed.iter().find(|(t, _)| t == topic) {
            Some((_, counter)) => {
                counter.inc();
            }
            None => {
                let counter = self.shared.metrics.consumed_counter(topic);
                counter.inc();
                self.consumed.push((topic.to_string(), counter));
            }
        }
    }

    /// The evaluate stage: the event into its partition's engine.
    fn evaluate(&mut self, message: &BorrowedMessage<'_>, event: &Event) {
        let (topic, partition) = (message.topic(), message.partition());
        let state = self.partitions.state(topic, partition, &self.loaded);
        let ingested = state.engine.ingest(event, &mut self.outputs);
        if let (Some(c), Some(now)) = (state.rollouts.as_mut(), state.engine.watermark()) {
            self.rollout_changes = c.after(
                event,
                ingested == Ingested::Applied,
                state.engine.last_subject(),
                &self.outputs,
                now,
            );
        }
        if ingested == Ingested::Late {
            self.stats.late.fetch_add(1, Ordering::Relaxed);
            self.shared.metrics.inc_late();
            tracing::debug!(
                topic,
                partition,
                offset = message.offset(),
                "late event dropped"
            );
        }
        state.evaluated();
        state.next_offset = Some(message.offset() + 1);
    }

    /// Once a tick: rebalances, idle partitions' event time, the snapshot.
    async fn on_tick(&mut self) -> Result<(), Ended> {
        self.rebalanced().await;
        for probed in self.end_probe.finished() {
            match (
                probed.end,
                self.partitions.get_mut(&probed.topic, probed.partition),
            ) {
                (Ok(end), Some(state)) => state.probed(probed.asked_at, end),
                (Err(e), _) => {
                    tracing::debug!(error = %e, topic = %probed.topic, partition = probed.partition, "idle partition not vouched for: its event time waits")
                }
                (Ok(_), None) => {}
            }
        }
        let tracked = self.changelog.is_some();
        let now = Instant::now();
        let mut idle = Vec::new();
        for (topic, partition, state) in self.partitions.iter_all_mut() {
            if state.wants_probe(now, self.idle_after, self.tick) {
                idle.push((topic.to_string(), partition));
            }
            let moved_to = state.advance_idle(&mut self.outputs);
            if let (Some(c), Some(to)) = (state.rollouts.as_mut(), moved_to) {
                self.rollout_changes = c.advanced(&self.outputs, to);
            }
            let origin = (tracked && !(self.outputs.is_empty() && self.rollout_changes.is_empty()))
                .then(|| Origin::new(topic, partition));
            if !self.outputs.is_empty() {
                self.dispatcher
                    .dispatch(
                        &self.loaded,
                        &mut self.outputs,
                        &self.rollout_changes,
                        partition,
                        origin.as_ref(),
                    )
                    .await
                    .map_err(|Closed| Ended::PipelineClosed)?;
            }
            if !self.rollout_changes.is_empty() {
                self.dispatcher
                    .rollout(
                        &self.loaded,
                        &mut self.rollout_changes,
                        partition,
                        origin.as_ref(),
                    )
                    .await
                    .map_err(|Closed| Ended::PipelineClosed)?;
            }
        }
        self.end_probe.start(idle);
        self.rollouts_tick()
            .await
            .map_err(|Closed| Ended::PipelineClosed)?;
        for (model, by) in self.shared.take_refused_steps() {
            tracing::warn!(%model, %by, "a rollout step was not carried out: pausing the rollout");
            let answer =
                self.rollout_command(&model, canaryd_rules::rollout::Command::Pause { by });
            if let (Some((topic, partition)), mut changes) = (answer.at, answer.changes) {
                let origin = tracked.then(|| Origin::new(&topic, partition));
                self.dispatcher
                    .rollout(&self.loaded, &mut changes, partition, origin.as_ref())
                    .await
                    .map_err(|Closed| Ended::PipelineClosed)?;
            }
        }
        self.sample_history(now);
        snapshot::count_evaluations(
            &self.shared,
            self.partitions
                .engines_mut()
                .map(|e| &*e)
                .chain(std::iter::once(&self.alertmanager)),
            &mut self.evaluations_seen,
        );
        if Instant::now() >= self.next_checkpoint {
            self.next_checkpoint = Instant::now() + self.checkpoint_every;
            self.checkpoint();
        }
        self.checkpoints_acknowledged();
        if let Some(pipeline) = &self.dispatcher.pipeline {
            self.shared
                .metrics
                .set_outbox_actions(pipeline.outbox().unfinished());
        }
        self.membership.check(self.consumer);
        Ok(())
    }

    /// Once a tick, for the rollouts: the traffic objects to read back
    /// (and what the reads found), and the progress records due.
    async fn rollouts_tick(&mut self) -> Result<(), Closed> {
        let Some(config) = self.loaded.config.rollouts.as_ref() else {
            return Ok(());
        };
        let every = config.record_every;
        let watch_every =
            Duration::from_millis(u64::try_from(config.watch_every.millis()).unwrap_or(30_000));
        let wall = Instant::now();
        let mut reads = self.traffic_reads.finished(wall);
        self.traffic_reads.new_tick(wall, watch_every);
        for (topic, partition, state) in self.partitions.iter_all_mut() {
            let rebuilding = state.is_rebuilding();
            let Some(controller) = state.rollouts.as_mut() else {
                continue;
            };
            for model in controller.take_lookups() {
                tracing::info!(%model, topic, partition, "new here, with no state restored: reading the rollout's state from its traffic object");
                let receiver = config.receiver_for(&model).map(str::to_string);
                reads.extend(self.traffic_reads.start(Lookup {
                    topic: topic.to_string(),
                    partition,
                    model,
                    receiver,
                    purpose: Purpose::TakeOver,
                }));
            }
            if !rebuilding {
                for model in controller.models() {
                    if self.traffic_reads.watch_due(model, wall, watch_every) {
                        let receiver = config.receiver_for(model).map(str::to_string);
                        reads.extend(self.traffic_reads.start(Lookup {
                            topic: topic.to_string(),
                            partition,
                            model: model.to_string(),
                            receiver,
                            purpose: Purpose::Watch,
                        }));
                    }
                }
            }
            let (Some(now), false) = (state.engine.watermark(), rebuilding) else {
                continue;
            };
            self.rollout_changes = controller.records_due(now, every);
            if !self.rollout_changes.is_empty() {
                let origin = self
                    .changelog
                    .is_some()
                    .then(|| Origin::new(topic, partition));
                self.dispatcher
                    .rollout(
                        &self.loaded,
                        &mut self.rollout_changes,
                        partition,
                        origin.as_ref(),
                    )
                    .await?;
            }
        }
        for read in reads {
            self.read_back(read).await?;
        }
        self.shared
            .metrics
            .set_rollout_reads(self.traffic_reads.pending());
        Ok(())
    }

    /// What a traffic object said, to the controller that asked; the
    /// changes it makes are acted on, unless the partition is rebuilding
    /// (an earlier owner acted on them).
    async fn read_back(&mut self, read: Read) -> Result<(), Closed> {
        let Read { lookup, seen } = read;
        let Some(state) = self.partitions.get_mut(&lookup.topic, lookup.partition) else {
            // Revoked meanwhile: the new owner reads it itself.
            return Ok(());
        };
        let rebuilding = state.is_rebuilding();
        let (Some(controller), Some(now)) = (state.rollouts.as_mut(), state.engine.watermark())
        else {
            return Ok(());
        };
        self.rollout_changes = match seen {
            Seen::Found(found) => {
                tracing::info!(model = %lookup.model, found = ?found, "rollout state read back");
                controller.read_back(&lookup.model, found, state.engine.alerts(), now)
            }
            Seen::Watched(watched) => {
                let changes = controller.watched(&lookup.model, &watched, now);
                if !changes.is_empty() {
                    tracing::info!(model = %lookup.model, ?watched, "the traffic object changed the rollout");
                }
                changes
            }
        };
        if rebuilding {
            self.rollout_changes.clear();
        }
        if self.rollout_changes.is_empty() {
            return Ok(());
        }
        let origin = self
            .changelog
            .is_some()
            .then(|| Origin::new(&lookup.topic, lookup.partition));
        self.dispatcher
            .rollout(
                &self.loaded,
                &mut self.rollout_changes,
                lookup.partition,
                origin.as_ref(),
            )
            .await
    }

    /// A point of every model's trend for the status page, when one is
    /// due; only the HTTP server reads them.
    fn sample_history(&mut self, now: Instant) {
        if self.loaded.config.http.is_none() {
            return;
        }
        let max = {
            let mut history = self
                .shared
                .history
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if !history.due(now) {
                return;
            }
            history.max_models()
        };
        // Computed before the lock is taken again, so that the server's
        // readers never wait for the analytics.
        let mut points = Vec::new();
        for (_, _, state) in self.partitions.iter_all_mut() {
            let Some(ts) = state.engine.watermark() else {
                continue;
            };
            for subject in state.engine.analytics(max) {
                let Some(model) = subject.labels.get("model") else {
                    continue;
                };
                let weight = state
                    .rollouts
                    .as_ref()
                    .and_then(|c| c.rollout(model))
                    .map(|(r, plan)| r.weight(&plan.plan));
                points.push((model.clone(), ts, subject.tracks, weight));
            }
        }
        let mut history = self
            .shared
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (model, ts, tracks, weight) in &points {
            history.record(model, *ts, tracks, *weight);
        }
    }

    /// The checkpoint stage: each partition's changed subjects, and a
    /// marker with the offset they reflect and the outbox of actions not
    /// finished, to the changelog. Never waits for the broker.
    fn checkpoint(&mut self) {
        let Some(changelog) = self.changelog.as_mut() else {
            return;
        };
        let outbox = self
            .dispatcher
            .pipeline
            .as_ref()
            .map(|p| p.outbox().clone());
        for (topic, partition, state) in self.partitions.iter_all_mut() {
            let Some(next_offset) = state.next_offset else {
                continue;
            };
            if next_offset < state.act_from {
                // Still rebuilding: a checkpoint now would let the next
                // owner act again on what an earlier owner acted on.
                continue;
            }
            let subjects = if state.rewrite_all {
                // Drain the changed set too, so it does not grow.
                let _ = state.engine.take_changed();
                state.engine.subject_states()
            } else {
                state.engine.take_changed()
            };
            let (pending, outbox_changed) = outbox
                .as_ref()
                .map(|o| o.checkpoint(&Origin::new(topic, partition)))
                .unwrap_or_default();
            let rollouts_changed = state.rollouts.as_mut().is_some_and(|c| c.take_changed());
            // Idle time firing a timer changes state without input: that is
            // written too, so a restart does not decide it again; so is an
            // action finished, so that it is not done again, and a rollout
            // moved on.
            if subjects.is_empty()
                && !outbox_changed
                && !rollouts_changed
                && state.checkpointed == Some(next_offset)
            {
                continue;
            }
            let generation = state.generation + 1;
            let checkpoint = Checkpoint {
                generation,
                next_offset,
                engine: state.engine.checkpoint(),
                subjects,
                outbox: pending,
                rollouts: state
                    .rollouts
                    .as_ref()
                    .map(|c| c.state())
                    .unwrap_or_default(),
            };
            match changelog.write(topic, partition, checkpoint) {
                Ok(()) => {
                    state.generation = generation;
                    state.checkpointed = Some(next_offset);
                    state.rewrite_all = false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, topic, partition, "checkpoint not written; the next one writes everything");
                    state.rewrite_all = true;
                }
            }
        }
    }

    /// Commits what acknowledged checkpoints reflect.
    fn checkpoints_acknowledged(&mut self) {
        let Some(changelog) = self.changelog.as_mut() else {
            return;
        };
        for acked in changelog.acknowledged() {
            match acked {
                Acked::Commit {
                    topic,
                    partition,
                    next_offset,
                } => self.offsets.note_offset(&topic, partition, next_offset - 1),
                Acked::Failed {
                    topic,
                    partition,
                    why,
                } => {
                    tracing::warn!(error = %why, %topic, partition, "checkpoint not acknowledged; the next one writes everything");
                    if let Some(state) = self.partitions.get_mut(&topic, partition) {
                        state.rewrite_all = true;
                    }
                }
            }
        }
    }

    /// At shutdown: a last checkpoint, and its acknowledgement (bounded),
    /// so that the next owner replays nothing.
    async fn flush_changelog(&mut self) {
        if self.changelog.is_none() {
            return;
        }
        self.checkpoint();
        let limit = Instant::now() + CHANGELOG_FLUSH;
        while self.changelog.as_ref().is_some_and(Changelog::busy) && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.checkpoints_acknowledged();
        }
        self.checkpoints_acknowledged();
    }

    /// Applies assignment changes. Ready means owning at least one
    /// partition: a member that owns nothing serves no one's events.
    async fn rebalanced(&mut self) {
        let mut changed = false;
        while let Ok(change) = self.assignments.try_recv() {
            if let Assignment::Revoked(list) = &change {
                for (topic, partition) in list {
                    if let Some(pipeline) = &self.dispatcher.pipeline {
                        pipeline.outbox().forget(&Origin::new(topic, *partition));
                    }
                    // Another replica reports it now.
                    self.shared.metrics.remove_consumer_lag(topic, *partition);
                }
            }
            let assigned = self.partitions.apply(change, &self.loaded, &self.instance);
            for (topic, partition) in assigned {
                self.restore(&topic, partition).await;
            }
            changed = true;
        }
        if changed {
            let owned = self.partitions.len();
            self.membership.owned(owned);
            if owned == 0 {
                tracing::warn!(instance = %self.instance, "no partition assigned: not ready");
            }
            self.shared.set_ready(owned > 0);
        }
    }

    /// Restores an assigned partition's state from the changelog, if there
    /// is one. Unreadable, it is rebuilt from the input from the committed
    /// offset on, and says so.
    async fn restore(&mut self, topic: &str, partition: i32) {
        let (Some(changelog), Some(reader)) = (&self.changelog, &self.reader) else {
            return;
        };
        let started = Instant::now();
        let (reader, changelog_topic, input) = (
            reader.clone(),
            changelog.topic().to_string(),
            topic.to_string(),
        );
        let read = tokio::task::spawn_blocking(move || {
            changelog::restore(&reader, &changelog_topic, &input, partition)
        })
        .await;
        match read {
            Ok(Ok(Some(mut restored))) => {
                let subjects = restored.subjects.len();
                let next_offset = restored.next_offset;
                let generation = restored.generation;
                let pending = std::mem::take(&mut restored.outbox);
                let unfinished = pending.len();
                let state = PartitionState::restored(&self.loaded, restored);
                self.partitions.insert(topic, partition, state);
                let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                self.stats.restores.fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.inc_state_load("restored");
                self.stats
                    .restored_subjects
                    .store(subjects as u64, Ordering::Relaxed);
                self.stats.restore_millis.store(took, Ordering::Relaxed);
                tracing::info!(topic, partition, subjects, next_offset, generation, unfinished, took = ?started.elapsed(), "partition state restored from the changelog");
                let origin = Origin::new(topic, partition);
                if self.dispatcher.resubmit(pending, &origin).await.is_err() {
                    tracing::warn!(
                        topic,
                        partition,
                        "the pipeline is closed: restored actions are left for the next owner"
                    );
                }
            }
            Ok(Ok(None)) => {
                self.rebuild_or_start(topic, partition, "the changelog has no checkpoint of it")
            }
            Ok(Err(e)) => self.rebuild_or_start(
                topic,
                partition,
                &format!("the changelog is unreadable: {e}"),
            ),
            Err(e) => self.rebuild_or_start(
                topic,
                partition,
                &format!("the changelog restore failed: {e}"),
            ),
        }
    }

    /// A partition without a checkpoint: rebuilt from the input, or
    /// started fresh; counted either way.
    fn rebuild_or_start(&mut self, topic: &str, partition: i32, why: &str) {
        if self.rebuild(topic, partition, why) {
            self.stats.rebuilds.fetch_add(1, Ordering::Relaxed);
            self.shared.metrics.inc_state_load("rebuilt");
        } else {
            self.shared.metrics.inc_state_load("fresh");
        }
    }

    /// A partition whose changelog state is lost: when the group had
    /// committed an offset (so there was state), the consumer goes back by
    /// the rebuild lookback and re-evaluates that input without acting on
    /// it, so pending timers and firing alerts are as they were; actions
    /// start again at the committed offset. A partition never committed
    /// simply starts. Whether it rebuilds.
    fn rebuild(&mut self, topic: &str, partition: i32, why: &str) -> bool {
        let consumer = self.consumer;
        let lookback = self.loaded.rebuild_lookback();
        // The consumer's own calls block for a broker round trip; this
        // happens only on assignment.
        let ask = || rebuild_range(consumer, topic, partition, lookback);
        // block_in_place needs the multi-threaded runtime `canaryd run` has;
        // elsewhere (a library user's runtime) the call just blocks.
        let found = match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(ask),
            _ => ask(),
        };
        let (from, committed) = match found {
            Ok(Some((from, committed))) if from >= committed => {
                tracing::warn!(topic, partition, why, committed, %lookback, "no input in the rebuild lookback: starting from an empty state at the committed offset");
                return false;
            }
            Ok(Some(range)) => range,
            Ok(None) => {
                tracing::info!(
                    topic,
                    partition,
                    why,
                    "no offset committed for this partition either: starting from an empty state"
                );
                return false;
            }
            Err(e) => {
                tracing::error!(topic, partition, why, error = %e, "cannot find where to rebuild from: starting from an empty state at the committed offset");
                return false;
            }
        };
        if let Err(e) = consumer.seek(
            topic,
            partition,
            rdkafka::Offset::Offset(from),
            Duration::from_secs(5),
        ) {
            tracing::error!(topic, partition, why, error = %e, "cannot go back to rebuild: starting from an empty state at the committed offset");
            return false;
        }
        let state = self.partitions.state(topic, partition, &self.loaded);
        state.act_from = committed;
        state.rewinding = true;
        tracing::error!(topic, partition, why, from, committed, %lookback, "rebuilding this partition's state from the input: re-evaluating the last {lookback} without acting, then acting from the committed offset");
        true
    }

    /// Carries out a command from the HTTP server.
    async fn command(&mut self, command: Command) -> Result<(), Closed> {
        match command {
            Command::Reload(reply) => {
                let result = self.reload().await;
                let _ = reply.send(result);
                Ok(())
            }
            Command::Snapshot(reply) => {
                let max_subjects = self
                    .loaded
                    .config
                    .http
                    .as_ref()
                    .map_or(0, |h| h.metrics.max_subjects);
                let parts = self
                    .partitions
                    .iter_all_mut()
                    .map(|(_, _, s)| (&mut s.engine, s.rollouts.as_ref()))
                    .chain(std::iter::once((&mut self.alertmanager, None)));
                let mut taken = snapshot::take(&self.shared, parts, max_subjects);
                taken.event_times = self
                    .partitions
                    .iter_all_mut()
                    .filter_map(|(topic, partition, s)| {
                        Some(crate::metrics::PartitionTime {
                            topic: topic.to_string(),
                            partition,
                            at: s.engine.watermark()?,
                        })
                    })
                    .collect();
                let _ = reply.send(taken);
                Ok(())
            }
            Command::Alerts(alerts, reply) => {
                let result = self.alertmanager_alerts(alerts).await;
                answer(reply, &result);
                result
            }
            Command::Act(requests, reply) => {
                let result = self.dispatcher.direct(&self.loaded, requests).await;
                answer(reply, &result);
                result
            }
            Command::Rollout {
                model,
                command,
                reply,
            } => {
                let RolloutAnswer {
                    at,
                    answer,
                    mut changes,
                } = self.rollout_command(&model, command);
                let tracked = self.changelog.is_some();
                if let Some((topic, partition)) = at {
                    let origin = tracked.then(|| Origin::new(&topic, partition));
                    self.dispatcher
                        .rollout(&self.loaded, &mut changes, partition, origin.as_ref())
                        .await?;
                }
                let _ = reply.send(answer);
                Ok(())
            }
        }
    }

    /// A person's command for `model`'s rollout, on the partition that
    /// carries it: where, the answer, and the changes to carry out.
    fn rollout_command(
        &mut self,
        model: &str,
        command: canaryd_rules::rollout::Command,
    ) -> RolloutAnswer {
        let found = self.partitions.iter_all_mut().find(|(_, _, s)| {
            s.rollouts
                .as_ref()
                .is_some_and(|c| c.rollout(model).is_some())
        });
        let Some((topic, partition, state)) = found else {
            let why = format!(
                "no rollout of model `{model}` on this replica (another replica may own its partition)"
            );
            return RolloutAnswer::refused(404, why);
        };
        let now = state.engine.watermark().unwrap_or_else(wall_clock);
        let Some(controller) = state.rollouts.as_mut() else {
            return RolloutAnswer::refused(404, format!("no rollout of model `{model}`"));
        };
        match controller.command(model, command, now) {
            Ok(changes) => {
                let answer = controller
                    .rollout(model)
                    .map(|(r, plan)| snapshot::rollout_json(model, r, plan))
                    .unwrap_or(Value::Null);
                RolloutAnswer {
                    at: Some((topic.to_string(), partition)),
                    answer: Ok(answer),
                    changes,
                }
            }
            Err(why) => RolloutAnswer::refused(409, why),
        }
    }

    /// Alertmanager's alerts into their own engine, and their decisions out.
    async fn alertmanager_alerts(&mut self, alerts: Vec<AlertEvent>) -> Result<(), Closed> {
        // Alertmanager reports alerts as they are now; stamping them with
        // the wall clock keeps a group_wait from making them late.
        let now = wall_clock();
        for mut alert in alerts {
            alert.ts = now;
            self.alertmanager
                .ingest(&Event::Alert(alert), &mut self.outputs);
        }
        if self.outputs.is_empty() {
            return Ok(());
        }
        self.dispatcher
            .dispatch(&self.loaded, &mut self.outputs, &[], -1, None)
            .await
    }

    /// Reloads the configuration, keeping the running one on failure.
    async fn reload(&mut self) -> Result<Value, Vec<String>> {
        let engines = self
            .partitions
            .engines_mut()
            .chain(std::iter::once(&mut self.alertmanager));
        let (loaded, report) = reload::reload(
            self.config_path.as_deref(),
            &self.loaded,
            engines,
            &self.dispatcher.audit,
            &self.shared,
        )
        .await?;
        // Rollouts carry on under the new plans; without plans they stop.
        let plans = loaded.rollout_plans();
        for (_, _, state) in self.partitions.iter_all_mut() {
            match (state.rollouts.as_mut(), &plans) {
                (Some(running), Some(plans)) => {
                    running.reload(plans.clone(), loaded.rules.clone());
                }
                _ => state.rollouts = loaded.live_rollout_controller(),
            }
        }
        self.shared
            .metrics
            .declare(loaded.config.receivers.keys().map(String::as_str));
        self.loaded = loaded;
        Ok(report)
    }

    /// A fresh partition state for the configuration in force.
    pub(super) fn fresh_engine(loaded: &Loaded) -> Engine {
        PartitionState::new(loaded).engine
    }
}

/// What a person's rollout command came to.
struct RolloutAnswer {
    /// The partition that carries the model, when something changed.
    at: Option<(String, i32)>,
    /// The rollout after it, or the HTTP status and why nothing changed.
    answer: Result<Value, (u16, String)>,
    /// What to record and carry out.
    changes: Vec<Change>,
}

impl RolloutAnswer {
    fn refused(status: u16, why: String) -> RolloutAnswer {
        RolloutAnswer {
            at: None,
            answer: Err((status, why)),
            changes: Vec::new(),
        }
    }
}

/// Where a rebuild starts (the first offset of the lookback) and where
/// acting resumes (the committed offset); `None` when nothing was committed.
fn rebuild_range(
    consumer: &StreamConsumer<GroupContext>,
    topic: &str,
    partition: i32,
    lookback: canaryd_rules::Span,
) -> Result<Option<(i64, i64)>, rdkafka::error::KafkaError> {
    use rdkafka::{Offset, TopicPartitionList};
    let ask = Duration::from_secs(5);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let committed = consumer.committed_offsets(tpl, ask)?;
    let Some(Offset::Offset(committed)) = committed
        .find_partition(topic, partition)
        .map(|e| e.offset())
    else {
        return Ok(None);
    };
    let since = wall_clock().millis().saturating_sub(lookback.millis());
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(since))?;
    let found = consumer.offsets_for_times(tpl, ask)?;
    let from = match found.find_partition(topic, partition).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => o.min(committed),
        // Nothing that recent: the lookback holds no input to re-evaluate.
        _ => committed,
    };
    Ok(Some((from, committed)))
}

/// Answers the HTTP side: accepted, or refused because the daemon stops.
fn answer(reply: oneshot::Sender<Result<(), String>>, result: &Result<(), Closed>) {
    let answer = match result {
        Ok(()) => Ok(()),
        Err(Closed) => Err("shutting down".to_string()),
    };
    let _ = reply.send(answer);
}
