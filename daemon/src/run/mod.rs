//! `canaryd run`: consume events from Kafka as part of a consumer group,
//! evaluate rules per partition in event time, and hand actions to the
//! pipeline. At least once: an offset is stored only after its event has
//! been evaluated and its actions accepted (or it was dead-lettered).

pub mod kafka;

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

use self::kafka::{Assignment, GroupContext, KafkaConfig};
use crate::act::audit::Audit;
use crate::act::decide::{actions_for, resolutions_for};
use crate::act::pipeline::Pipeline;
use crate::act::routes::{Route, Routes};
use crate::config::{Config, Loaded};
use crate::server::{self, Backend, DirectAction};
use crate::shared::{Command, Shared};
use std::collections::BTreeMap;

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

/// The wall clock as event time.
fn wall_clock() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Timestamp(ms)
}

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
    /// The configuration in force; a reload swaps it.
    loaded: std::sync::RwLock<Arc<Loaded>>,
    /// Where the configuration came from, for reloads.
    config_path: Option<std::path::PathBuf>,
    kafka: KafkaConfig,
    instance: String,
    /// Counters, shared with whoever reports them.
    pub stats: Arc<LiveStats>,
    tick: Duration,
    /// Carries out actions when no receivers are configured (dry run), or
    /// always when set by `with_connector`.
    connector: Arc<dyn Connector>,
    connector_overridden: bool,
    /// What the HTTP server sees: snapshot, metrics, silences.
    pub shared: Arc<Shared>,
    /// Commands from the HTTP server, taken by `run`.
    commands: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Command>>>,
}

impl Live {
    /// Prepares live mode from a loaded config; fails if it has no `kafka:`.
    pub fn new(loaded: Loaded, instance: String) -> Result<Live, RunError> {
        let kafka = loaded
            .config
            .kafka
            .clone()
            .ok_or_else(|| RunError::Config("`kafka:` is required for `canaryd run`".into()))?;
        let (command_tx, commands) = tokio::sync::mpsc::channel(64);
        let shared = Arc::new(Shared::new(&loaded.rules, command_tx));
        let problems = loaded.problems();
        if !problems.is_empty() {
            return Err(RunError::Config(problems.join("; ")));
        }
        Ok(Live {
            loaded: std::sync::RwLock::new(Arc::new(loaded)),
            config_path: None,
            kafka,
            instance,
            stats: Arc::new(LiveStats::default()),
            tick: Duration::from_secs(1),
            connector: Arc::new(DryRun::new()),
            connector_overridden: false,
            shared,
            commands: std::sync::Mutex::new(Some(commands)),
        })
    }

    /// The configuration in force.
    fn loaded(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Where to reload the configuration from (SIGHUP, `POST /-/reload`).
    pub fn with_config_path(mut self, path: std::path::PathBuf) -> Live {
        self.config_path = Some(path);
        self
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
        let mut consumer_config = self.kafka.consumer_config().map_err(RunError::Config)?;
        // Statistics feed the consumer-lag metric, which only the HTTP server
        // shows; parsing them runs on the consume loop, so only then.
        let serving = self.loaded().config.http.is_some();
        if serving {
            consumer_config.set("statistics.interval.ms", "5000");
        }
        let consumer: StreamConsumer<GroupContext> =
            consumer_config.create_with_context(GroupContext {
                events: assign_tx,
                shared: serving.then(|| self.shared.clone()),
            })?;
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
        if !self.loaded().config.dry_run {
            tracing::warn!(
                "no action connectors are available yet: every action is recorded as a dry run"
            );
        }
        let audit = audit.with_shared(self.shared.clone());
        let (receivers, routes) = self.receivers().await?;
        let hurry = CancellationToken::new();
        let (pipeline, mut workers) = Pipeline::start(
            receivers,
            &routes,
            &self.loaded().config.pipeline,
            audit.clone(),
            hurry.clone(),
        );
        pipeline.stats.attach(self.shared.clone());
        tracing::info!(instance = %self.instance, topics = ?self.kafka.topics, group = %self.kafka.group_id, rules = self.loaded().rules.len(), "consuming");

        let server_stop = CancellationToken::new();
        let server = match &self.loaded().config.http {
            Some(http) => {
                let listener = tokio::net::TcpListener::bind(http.listen)
                    .await
                    .map_err(|e| RunError::Config(format!("http.listen {}: {e}", http.listen)))?;
                tracing::info!(address = ?listener.local_addr().ok(), "serving HTTP");
                let backend: Arc<dyn Backend> = Arc::new(self.shared.clone());
                Some(tokio::spawn(server::serve(
                    listener,
                    http.clone(),
                    backend,
                    server_stop.clone(),
                )))
            }
            None => None,
        };
        let mut commands = self
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| RunError::Config("run called twice".into()))?;
        // Alerts from Alertmanager have no partition: they get their own engine.
        let mut alertmanager = self.fresh_state().engine;
        let mut consumed: Vec<(String, prometheus_client::metrics::counter::Counter)> = Vec::new();
        let mut evaluations_seen = 0u64;
        let (file_tx, mut file_changes) = tokio::sync::mpsc::channel::<()>(1);
        let _watcher = self.watch_files(file_tx);
        let mut reload_at: Option<tokio::time::Instant> = None;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| RunError::Config(format!("cannot listen for SIGHUP: {e}")))?;
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
                        // Only the HTTP server reads the snapshot; without it,
                        // the consume loop does not pay for building one.
                        if server.is_some() {
                            self.snapshot(
                                &mut partitions,
                                &mut alertmanager,
                                &mut evaluations_seen,
                            );
                        }
                        continue;
                    }
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep_until(next_tick.into()) => continue,
                        Some(()) = file_changes.recv() => {
                            // Editors and ConfigMap updates touch several files:
                            // wait for them to settle.
                            reload_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                            continue;
                        }
                        _ = tokio::time::sleep_until(reload_at.unwrap_or_else(tokio::time::Instant::now)), if reload_at.is_some() => {
                            reload_at = None;
                            tracing::info!("configuration files changed: reloading");
                            let _ = self.reload(&mut partitions, &mut alertmanager, &audit).await;
                            continue;
                        }
                        _ = hangup.recv() => {
                            tracing::info!("SIGHUP received: reloading");
                            let _ = self.reload(&mut partitions, &mut alertmanager, &audit).await;
                            continue;
                        }
                        Some(command) = commands.recv() => {
                            if !self.command(command, &mut partitions, &mut alertmanager, &mut outputs, &pipeline, &audit).await {
                                break;
                            }
                            continue;
                        }
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
            match consumed.iter().find(|(t, _)| t == topic) {
                Some((_, counter)) => {
                    counter.inc();
                }
                None => {
                    let counter = self.shared.metrics.consumed_counter(topic);
                    counter.inc();
                    consumed.push((topic.to_string(), counter));
                }
            }
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
                self.shared.metrics.inc_late();
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

        self.shared.set_ready(false);
        tracing::info!("shutting down: draining actions and committing offsets");
        drop(pipeline);
        let grace = Duration::from_millis(
            self.loaded().config.pipeline.shutdown_grace.millis().max(0) as u64,
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
        server_stop.cancel();
        if let Some(server) = server {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "HTTP server failed"),
                Err(e) => tracing::error!(error = %e, "HTTP server task panicked"),
            }
        }
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
        let config = &self.loaded().config;
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
            built.push(
                spec.build(name)
                    .await
                    .map_err(|e| RunError::Config(format!("receivers.{name}: {e}")))?,
            );
        }
        for action in ActionName::ALL {
            if !config.routes.contains_key(&action) {
                tracing::warn!(%action, "no route: such actions will be recorded as failed");
            }
        }
        Ok((built, config.routes.clone()))
    }

    /// Refreshes what the HTTP side shows: alerts, analytics, metrics.
    fn snapshot(
        &self,
        partitions: &mut Partitions,
        alertmanager: &mut Engine,
        evaluations_seen: &mut u64,
    ) {
        let now = wall_clock();
        let mut alerts = Vec::new();
        let mut counts: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
        let mut subjects = HashMap::new();
        let mut evaluations = 0;
        let engines = partitions
            .values_mut()
            .flat_map(|p| p.values_mut())
            .map(|s| &mut s.engine);
        for engine in engines.chain(std::iter::once(alertmanager)) {
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
                    "silenced": self.shared.is_silenced(a.rule, a.subject, now),
                }));
            }
            for (labels, stats) in engine.analytics(10_000) {
                if let Some(model) = labels.get("model") {
                    subjects.insert(model.clone(), crate::shared::subject_json(model, &stats));
                }
            }
        }
        let mut names: Vec<String> = subjects.keys().cloned().collect();
        names.sort();
        self.shared.set_alerts(alerts, names);
        self.shared.set_subjects(subjects);
        self.shared.metrics.clear_alerts();
        for ((rule, state), n) in counts {
            self.shared.metrics.set_alerts(&rule, state, n);
        }
        // Engines dropped on revocation take their counts with them.
        if evaluations > *evaluations_seen {
            self.shared
                .metrics
                .add_rule_evaluations(evaluations - *evaluations_seen);
        }
        *evaluations_seen = evaluations;
    }

    /// Carries out a command from the HTTP server. False once the pipeline closed.
    async fn command(
        &self,
        command: Command,
        partitions: &mut Partitions,
        alertmanager: &mut Engine,
        outputs: &mut Vec<Output>,
        pipeline: &Pipeline,
        audit: &Audit,
    ) -> bool {
        match command {
            Command::Reload(reply) => {
                let result = self.reload(partitions, alertmanager, audit).await;
                let _ = reply.send(result);
                true
            }
            Command::Alerts(alerts, reply) => {
                // Alertmanager reports alerts as they are now; stamping them
                // with the wall clock keeps a group_wait from making them late.
                let now = wall_clock();
                for mut alert in alerts {
                    alert.ts = now;
                    alertmanager.ingest(&canaryd_rules::Event::Alert(alert), outputs);
                }
                let ok = outputs.is_empty() || self.dispatch(outputs, pipeline, audit, -1).await;
                let _ = reply.send(if ok {
                    Ok(())
                } else {
                    Err("shutting down".into())
                });
                ok
            }
            Command::Act(requests, reply) => {
                let mut ok = true;
                for request in requests {
                    let action = self.direct_action(&request);
                    let sent = match request.status {
                        canaryd_rules::event::AlertStatus::Resolved => {
                            pipeline.resolve(action).await
                        }
                        canaryd_rules::event::AlertStatus::Firing => {
                            if self
                                .shared
                                .is_silenced(&action.rule, &action.subject, wall_clock())
                            {
                                tracing::info!(rule = %action.rule, "silenced: not acting");
                                Ok(())
                            } else {
                                pipeline.submit(action).await
                            }
                        }
                    };
                    ok &= sent.is_ok();
                }
                let _ = reply.send(if ok {
                    Ok(())
                } else {
                    Err("shutting down".into())
                });
                ok
            }
        }
    }

    /// Watches the directories of the config and rule files. Watching the
    /// directory, not the file, survives the symlink swap by which
    /// Kubernetes updates a mounted ConfigMap.
    fn watch_files(
        &self,
        changed: tokio::sync::mpsc::Sender<()>,
    ) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let config = self.config_path.clone()?;
        let mut dirs: Vec<std::path::PathBuf> = std::iter::once(config)
            .chain(self.loaded().config.rules.iter().cloned())
            .filter_map(|p| {
                p.parent().map(|d| {
                    if d.as_os_str().is_empty() {
                        ".".into()
                    } else {
                        d.to_path_buf()
                    }
                })
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        let handler = move |event: notify::Result<notify::Event>| {
            // A full channel already holds a pending change.
            if event.is_ok_and(|e| !e.kind.is_access()) {
                let _ = changed.try_send(());
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch configuration files; reload with SIGHUP or /-/reload");
                return None;
            }
        };
        for dir in &dirs {
            if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot watch directory; reload with SIGHUP or /-/reload");
            }
        }
        Some(watcher)
    }

    /// Re-reads the config file, compiles its rules beside the running ones
    /// and, only if all is well, swaps them in, keeping the state of
    /// unchanged rules. On failure the running rules stay and the errors
    /// are returned.
    async fn reload(
        &self,
        partitions: &mut Partitions,
        alertmanager: &mut Engine,
        audit: &Audit,
    ) -> Result<serde_json::Value, Vec<String>> {
        let started = Instant::now();
        let result = self.try_reload(partitions, alertmanager, audit).await;
        let ok = result.is_ok();
        self.shared
            .metrics
            .record_reload(ok, started.elapsed(), std::time::SystemTime::now());
        match &result {
            Ok(report) => tracing::info!(%report, "configuration reloaded"),
            Err(errors) => {
                tracing::error!(?errors, "reload failed; the running configuration stays")
            }
        }
        result
    }

    async fn try_reload(
        &self,
        partitions: &mut Partitions,
        alertmanager: &mut Engine,
        audit: &Audit,
    ) -> Result<serde_json::Value, Vec<String>> {
        let path = self
            .config_path
            .clone()
            .ok_or_else(|| vec!["this canaryd was not started from a config file".to_string()])?;
        let running = self.loaded();
        let loaded = Config::read(&path)
            .and_then(|c| c.load_reusing(Some(&running)))
            .map_err(|e| e.lines())?;
        let problems = loaded.problems();
        if !problems.is_empty() {
            return Err(problems);
        }
        let loaded = Arc::new(loaded);
        let mut report = canaryd_rules::ReloadReport::default();
        let engines = partitions
            .values_mut()
            .flat_map(|p| p.values_mut())
            .map(|s| &mut s.engine);
        for engine in engines.chain(std::iter::once(alertmanager)) {
            let placeholder = Engine::new(
                loaded.rules.clone(),
                &loaded.vocabulary,
                loaded.engine_config(),
            );
            let old = std::mem::replace(engine, placeholder);
            let (new, r) = old.reload(loaded.rules.clone(), &loaded.vocabulary);
            *engine = new;
            report.dropped.extend(r.dropped);
            report.added = r.added;
            report.changed = r.changed;
            report.removed = r.removed;
            report.kept = r.kept;
        }
        // Alerts of removed or changed rules end quietly, with a record.
        for (rule, subject, phase) in &report.dropped {
            let record =
                json!({"kind": "ended_by_reload", "rule": rule, "subject": subject, "was": phase});
            audit.publish(rule, record).await;
        }
        self.shared.set_rules(&loaded.rules);
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = loaded;
        Ok(json!({
            "added": report.added,
            "changed": report.changed,
            "removed": report.removed,
            "kept": report.kept,
            "ended": report.dropped.len(),
        }))
    }

    /// The action an Alertmanager alert names with the action label.
    fn direct_action(&self, request: &DirectAction) -> canaryd_connectors::Action {
        let severity = request
            .labels
            .get("severity")
            .and_then(|s| s.parse::<canaryd_rules::Severity>().ok())
            .unwrap_or(canaryd_rules::Severity::High);
        let subject_text: Vec<String> = request
            .subject
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        canaryd_connectors::Action {
            key: format!(
                "alertmanager|{}|{}|{}|{}",
                request.alertname,
                subject_text.join(","),
                request.starts_at.millis(),
                request.action
            ),
            ts: request.starts_at,
            rule: request.alertname.clone(),
            subject: request.subject.clone(),
            action: request.action,
            severity,
            deadline: self.loaded().config.decision_matrix.get(severity).deadline,
            dry_run: self.loaded().config.dry_run,
            evidence: canaryd_connectors::Evidence {
                condition: format!("Alertmanager alert {}", request.alertname),
                values: BTreeMap::new(),
                thresholds: Vec::new(),
                duration: canaryd_rules::Span::ZERO,
                since: request.starts_at,
            },
            labels: request.labels.clone(),
            annotations: request.annotations.clone(),
        }
    }

    fn fresh_state(&self) -> PartitionState {
        PartitionState {
            engine: Engine::new(
                self.loaded().rules.clone(),
                &self.loaded().vocabulary,
                self.loaded().engine_config(),
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
                    self.shared.set_ready(true);
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
        let loaded = self.loaded();
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
                    let Some(rule) = loaded.rules.rules().get(t.rule) else {
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
                    for action in
                        actions_for(&t, &self.loaded().rules, self.loaded().config.dry_run)
                    {
                        if self
                            .shared
                            .is_silenced(&action.rule, &action.subject, wall_clock())
                        {
                            tracing::info!(rule = %action.rule, subject = ?action.subject, action = %action.action, "silenced: not acting");
                            let record = json!({"kind": "silenced", "ts": action.ts, "rule": action.rule, "subject": action.subject, "action": action.action, "key": action.key});
                            audit.publish(&action.key, record).await;
                            continue;
                        }
                        if pipeline.submit(action).await.is_err() {
                            return false;
                        }
                        self.stats.actions.fetch_add(1, Ordering::Relaxed);
                    }
                    for action in
                        resolutions_for(&t, &self.loaded().rules, self.loaded().config.dry_run)
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
                    self.shared.metrics.inc_dead_lettered(reason);
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
