//! `canaryd run`: consume events from Kafka as part of a consumer group,
//! evaluate rules per partition in event time, and hand actions to the
//! pipeline. At least once: an offset is stored only after its event has
//! been evaluated and its actions accepted (or it was dead-lettered).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use canaryd_connectors::{Connector, DryRun};
use canaryd_rules::{ActionName, Engine, Ingested, Output, Timestamp, decode};
use futures::FutureExt;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::audit::Audit;
use crate::config::Loaded;
use crate::decide::{actions_for, resolutions_for};
use crate::kafka::{Assignment, GroupContext, KafkaConfig};
use crate::pipeline::{Pipeline, Route, Routes};

/// Why live mode stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config has no `kafka:` section or it is invalid.
    #[error("config: {0}")]
    Config(String),
    /// A Kafka client could not be created or subscribed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The action pipeline's worker panicked.
    #[error("action pipeline failed: {0}")]
    Pipeline(String),
}

/// Counters for logs (and, later, metrics).
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Messages consumed.
    pub consumed: AtomicU64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Events dropped as late.
    pub late: AtomicU64,
    /// Alert transitions.
    pub transitions: AtomicU64,
    /// Actions accepted by the pipeline.
    pub actions: AtomicU64,
}

/// The highest processed offset per partition, not yet handed to librdkafka.
#[derive(Default)]
struct Processed {
    offsets: Vec<(String, i32, i64)>,
}

impl Processed {
    /// Records that `message` has been evaluated and its actions accepted.
    fn note(&mut self, message: &rdkafka::message::BorrowedMessage<'_>) {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        match self
            .offsets
            .iter_mut()
            .find(|(t, p, _)| *p == partition && t == topic)
        {
            Some(entry) => entry.2 = offset,
            None => self.offsets.push((topic.to_string(), partition, offset)),
        }
    }

    /// Stores the offsets after the processed messages; the background
    /// commit (and the one on shutdown) sends them to the broker.
    fn flush(&mut self, consumer: &StreamConsumer<GroupContext>) {
        if self.offsets.is_empty() {
            return;
        }
        let mut list = rdkafka::TopicPartitionList::with_capacity(self.offsets.len());
        for (topic, partition, offset) in self.offsets.drain(..) {
            // The stored offset is the next one to read.
            if let Err(e) =
                list.add_partition_offset(&topic, partition, rdkafka::Offset::Offset(offset + 1))
            {
                tracing::warn!(error = %e, topic, partition, "offset not stored");
            }
        }
        // Fails only for partitions revoked meanwhile; their new owner reads
        // those events again, which is at-least-once.
        if let Err(e) = consumer.store_offsets(&list) {
            tracing::debug!(error = %e, "offsets not stored");
        }
    }
}

/// Messages taken without yielding before the clock and shutdown are checked.
const BURST: u32 = 256;

/// Evaluation state by topic, then partition: looked up by `&str` per message.
type Partitions = HashMap<String, HashMap<i32, PartitionState>>;

/// One assigned partition's evaluation state.
struct PartitionState {
    engine: Engine,
    /// Wall-clock time of the last event, to move an idle partition's event
    /// time forward at wall-clock speed.
    last_event_at: Instant,
    /// The watermark right after that event.
    watermark_then: Option<Timestamp>,
}

/// The running daemon's consume loop.
pub struct Live {
    loaded: Loaded,
    kafka: KafkaConfig,
    instance: String,
    /// Counters, shared with whoever reports them.
    pub stats: Arc<LiveStats>,
    tick: Duration,
    /// Carries out actions when no receivers are configured (dry run), or
    /// always when set by `with_connector`.
    connector: Arc<dyn Connector>,
    connector_overridden: bool,
}

impl Live {
    /// Prepares live mode from a loaded config; fails if it has no `kafka:`.
    pub fn new(loaded: Loaded, instance: String) -> Result<Live, RunError> {
        let kafka = loaded
            .config
            .kafka
            .clone()
            .ok_or_else(|| RunError::Config("`kafka:` is required for `canaryd run`".into()))?;
        let problems = loaded.problems();
        if !problems.is_empty() {
            return Err(RunError::Config(problems.join("; ")));
        }
        Ok(Live {
            loaded,
            kafka,
            instance,
            stats: Arc::new(LiveStats::default()),
            tick: Duration::from_secs(1),
            connector: Arc::new(DryRun::new()),
            connector_overridden: false,
        })
    }

    /// Sends every action to `connector` instead (tests, benchmarks).
    pub fn with_connector(mut self, connector: Arc<dyn Connector>) -> Live {
        self.connector = connector;
        self.connector_overridden = true;
        self
    }

    /// Consumes until `shutdown` is cancelled, then drains the pipeline and
    /// commits offsets.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RunError> {
        let (assign_tx, assign_rx) = mpsc::channel();
        let consumer: StreamConsumer<GroupContext> = self
            .kafka
            .consumer_config()
            .map_err(RunError::Config)?
            .create_with_context(GroupContext { events: assign_tx })?;
        let topics: Vec<&str> = self.kafka.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let producer: FutureProducer = self
            .kafka
            .producer_config()
            .map_err(RunError::Config)?
            .create()?;
        let audit = match &self.kafka.audit_topic {
            Some(topic) => Audit::kafka(producer.clone(), topic.clone(), self.instance.clone()),
            None => Audit::log_only(self.instance.clone()),
        };
        if !self.loaded.config.dry_run {
            tracing::warn!(
                "no action connectors are available yet: every action is recorded as a dry run"
            );
        }
        let (receivers, routes) = self.receivers().await?;
        let hurry = CancellationToken::new();
        let (pipeline, mut workers) = Pipeline::start(
            receivers,
            &routes,
            &self.loaded.config.pipeline,
            audit.clone(),
            hurry.clone(),
        );
        tracing::info!(instance = %self.instance, topics = ?self.kafka.topics, group = %self.kafka.group_id, rules = self.loaded.rules.len(), "consuming");

        let mut partitions: Partitions = HashMap::new();
        let mut outputs = Vec::new();
        let mut now = Instant::now();
        let mut next_tick = now + self.tick;
        let mut burst = 0u32;
        let mut processed = Processed::default();
        loop {
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
                    // Store offsets before waiting: storing per message costs a
                    // round trip to librdkafka's thread each time.
                    processed.flush(&consumer);
                    now = Instant::now();
                    if shutdown.is_cancelled() {
                        break;
                    }
                    if now >= next_tick {
                        next_tick = now + self.tick;
                        self.rebalanced(&assign_rx, &mut partitions);
                        if !self
                            .tick(&mut partitions, &mut outputs, &pipeline, &audit)
                            .await
                        {
                            break;
                        }
                        continue;
                    }
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep_until(next_tick.into()) => continue,
                        m = consumer.recv() => {
                            now = Instant::now();
                            m
                        }
                    }
                }
            };
            self.rebalanced(&assign_rx, &mut partitions);
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "consume error");
                    continue;
                }
            };
            self.stats.consumed.fetch_add(1, Ordering::Relaxed);
            let (topic, partition) = (message.topic(), message.partition());
            let event = match message.payload().map(decode) {
                Some(Ok(event)) => event,
                failed => {
                    let (reason, detail) = match failed {
                        Some(Err(e)) => (e.kind.as_str(), e.message),
                        _ => ("missing_payload", "message has no payload".to_string()),
                    };
                    if !self
                        .dead_letter(&producer, &message, reason, &detail, &shutdown)
                        .await
                    {
                        break; // shutting down; the message will be redelivered
                    }
                    processed.note(&message);
                    continue;
                }
            };
            let state = match partitions.get_mut(topic) {
                Some(by_partition) => by_partition,
                None => partitions.entry(topic.to_string()).or_default(),
            }
            .entry(partition)
            .or_insert_with(|| self.fresh_state());
            if state.engine.ingest(&event, &mut outputs) == Ingested::Late {
                self.stats.late.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    topic,
                    partition,
                    offset = message.offset(),
                    "late event dropped"
                );
            }
            state.last_event_at = now;
            state.watermark_then = state.engine.watermark();
            if !outputs.is_empty()
                && !self
                    .dispatch(&mut outputs, &pipeline, &audit, partition)
                    .await
            {
                break;
            }
            processed.note(&message);
        }
        processed.flush(&consumer);

        tracing::info!("shutting down: draining actions and committing offsets");
        drop(pipeline);
        let grace = Duration::from_millis(
            self.loaded.config.pipeline.shutdown_grace.millis().max(0) as u64,
        );
        let grace_over = tokio::time::sleep(grace);
        tokio::pin!(grace_over);
        let mut drained = Ok(());
        loop {
            let done = tokio::select! {
                done = workers.join_next() => done,
                _ = &mut grace_over, if !hurry.is_cancelled() => {
                    tracing::warn!(?grace, "shutdown grace period over: abandoning unfinished actions (dead-lettered)");
                    hurry.cancel();
                    continue;
                }
            };
            let Some(done) = done else { break };
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => drained = Err(RunError::Pipeline(e.to_string())),
                Err(e) => drained = Err(RunError::Pipeline(e.to_string())),
            }
        }
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => {}
            Err(e) => {
                tracing::warn!(error = %e, "final offset commit failed; uncommitted events will be redelivered")
            }
        }
        tracing::info!(
            consumed = self.stats.consumed.load(Ordering::Relaxed),
            dead_lettered = self.stats.dead_lettered.load(Ordering::Relaxed),
            late = self.stats.late.load(Ordering::Relaxed),
            transitions = self.stats.transitions.load(Ordering::Relaxed),
            actions = self.stats.actions.load(Ordering::Relaxed),
            "stopped"
        );
        drained
    }

    /// Moves each partition's event time on while it is idle, at
    /// wall-clock speed, so durations complete and silence shows without
    /// events. False once the pipeline has closed.
    async fn tick(
        &self,
        partitions: &mut Partitions,
        outputs: &mut Vec<Output>,
        pipeline: &Pipeline,
        audit: &Audit,
    ) -> bool {
        for (partition, state) in partitions.values_mut().flat_map(|p| p.iter_mut()) {
            if let Some(wm) = state.watermark_then {
                let idle = state.last_event_at.elapsed().as_millis() as i64;
                state
                    .engine
                    .advance(Timestamp(wm.0.saturating_add(idle)), outputs);
            }
            if !outputs.is_empty() && !self.dispatch(outputs, pipeline, audit, *partition).await {
                return false;
            }
        }
        true
    }

    /// The configured receivers and routes; without any, every action goes
    /// to the one connector this loop was given (the dry-run one by default).
    async fn receivers(&self) -> Result<(Vec<Arc<dyn Connector>>, Routes), RunError> {
        let config = &self.loaded.config;
        if config.receivers.is_empty() || self.connector_overridden {
            if !config.dry_run && !self.connector_overridden {
                tracing::warn!("no receivers configured: every action is recorded as a dry run");
            }
            let routes = ActionName::ALL
                .into_iter()
                .map(|a| {
                    (
                        a,
                        Route {
                            receivers: vec![self.connector.name().to_string()],
                            dry_run: false,
                        },
                    )
                })
                .collect();
            return Ok((vec![self.connector.clone()], routes));
        }
        let mut built = Vec::new();
        for (name, spec) in &config.receivers {
            built.push(spec.build(name).await.map_err(RunError::Config)?);
        }
        for action in ActionName::ALL {
            if !config.routes.contains_key(&action) {
                tracing::warn!(%action, "no route: such actions will be recorded as failed");
            }
        }
        Ok((built, config.routes.clone()))
    }

    fn fresh_state(&self) -> PartitionState {
        PartitionState {
            engine: Engine::new(
                self.loaded.rules.clone(),
                &self.loaded.vocabulary,
                self.loaded.engine_config(),
            ),
            last_event_at: Instant::now(),
            watermark_then: None,
        }
    }

    /// Applies assignment changes: revoked partitions lose their state,
    /// assigned ones start fresh.
    fn rebalanced(&self, rx: &mpsc::Receiver<Assignment>, partitions: &mut Partitions) {
        while let Ok(change) = rx.try_recv() {
            match change {
                Assignment::Assigned(list) => {
                    tracing::info!(instance = %self.instance, partitions = ?list, "partitions assigned");
                    for (topic, partition) in list {
                        partitions
                            .entry(topic)
                            .or_default()
                            .insert(partition, self.fresh_state());
                    }
                }
                Assignment::Revoked(list) => {
                    tracing::info!(instance = %self.instance, partitions = ?list, "partitions revoked");
                    for (topic, partition) in list {
                        if let Some(by_partition) = partitions.get_mut(&topic) {
                            by_partition.remove(&partition);
                        }
                    }
                }
            }
        }
    }

    /// Publishes transitions and submits their actions. False once the
    /// pipeline has closed.
    async fn dispatch(
        &self,
        outputs: &mut Vec<Output>,
        pipeline: &Pipeline,
        audit: &Audit,
        partition: i32,
    ) -> bool {
        for output in outputs.drain(..) {
            match output {
                Output::Stale { ts, subject } => {
                    tracing::warn!(subject = ?subject, %ts, "subject has no fresh data");
                    audit
                        .publish(
                            "stale",
                            json!({"kind": "stale", "ts": ts, "subject": subject}),
                        )
                        .await;
                }
                Output::Transition(t) => {
                    self.stats.transitions.fetch_add(1, Ordering::Relaxed);
                    let Some(rule) = self.loaded.rules.rules().get(t.rule) else {
                        continue;
                    };
                    tracing::info!(rule = %rule.name, subject = ?t.subject, from = %t.from, to = %t.to, ts = %t.ts, values = ?t.values, "alert transition");
                    audit
                        .publish(&rule.name, json!({
                            "kind": "transition", "ts": t.ts, "rule": rule.name, "subject": t.subject,
                            "from": t.from, "to": t.to, "severity": rule.severity, "values": t.values,
                            "partition": partition,
                        }))
                        .await;
                    for action in actions_for(&t, &self.loaded.rules, self.loaded.config.dry_run) {
                        if pipeline.submit(action).await.is_err() {
                            return false;
                        }
                        self.stats.actions.fetch_add(1, Ordering::Relaxed);
                    }
                    for action in
                        resolutions_for(&t, &self.loaded.rules, self.loaded.config.dry_run)
                    {
                        if pipeline.resolve(action).await.is_err() {
                            return false;
                        }
                    }
                }
            }
        }
        true
    }

    /// Sends a malformed message to the dead-letter topic, retrying until it
    /// is delivered. False if shutdown came first.
    async fn dead_letter(
        &self,
        producer: &FutureProducer,
        message: &rdkafka::message::BorrowedMessage<'_>,
        reason: &str,
        detail: &str,
        shutdown: &CancellationToken,
    ) -> bool {
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        tracing::warn!(topic = message.topic(), partition = %partition, offset = %offset, reason, detail, "malformed message dead-lettered");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "canaryd-reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "canaryd-error",
                value: Some(detail),
            })
            .insert(Header {
                key: "canaryd-source-topic",
                value: Some(message.topic()),
            })
            .insert(Header {
                key: "canaryd-source-partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "canaryd-source-offset",
                value: Some(&offset),
            });
        let payload = message.payload().unwrap_or_default();
        let mut delay = Duration::from_millis(100);
        loop {
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.kafka.dead_letter_topic)
                .payload(payload)
                .headers(headers.clone());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            match producer.send(record, Duration::from_secs(5)).await {
                Ok(_) => {
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err((e, _)) => {
                    tracing::error!(error = %e, topic = %self.kafka.dead_letter_topic, "dead letter not delivered; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}
