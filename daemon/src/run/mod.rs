//! `canaryd run`: what starts the daemon and stops it. [`Live`] builds the
//! Kafka clients, the receivers, the action pipeline and the HTTP server,
//! runs the consume loop ([`consume`]) until shutdown, then drains the
//! pipeline and commits offsets. At least once: an offset is stored only
//! after its event has been evaluated and its actions accepted (or it was
//! dead-lettered).
//!
//! # Layout
//!
//! - [`consume`]: the consume loop and its stages, in the order an event
//!   meets them: consume, decode, evaluate, record and act, commit.
//! - [`partitions`]: one engine per assigned partition.
//! - [`idle`]: event time for partitions without messages, as far as the
//!   broker vouches that nothing is waiting.
//! - [`membership`]: a replica that owns nothing says so, and rejoins.
//! - [`dispatch`]: the record and act stages: audit trail, silences, pipeline.
//! - [`dead_letter`]: malformed messages to the dead-letter topic.
//! - [`offsets`]: the commit stage: processed offsets, stored in batches.
//! - [`changelog`]: each partition's state, checkpointed to a compacted
//!   topic and restored by the partition's next owner.
//! - [`silences`]: silences shared by every replica through a compacted topic.
//! - [`reload`]: reloading the config, and the file watcher that asks for it.
//! - [`snapshot`]: what the HTTP side shows of the engines.
//! - [`kafka`]: Kafka settings and the consumer group context.
//! - [`stats`]: counters of what the loop did.

mod changelog;
mod consume;
mod dead_letter;
mod dispatch;
mod idle;
pub mod kafka;
mod membership;
mod offsets;
mod partitions;
mod read_back;
mod reload;
mod silences;
mod snapshot;
pub mod stats;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use canaryd_connectors::{Connector, DryRun};
use canaryd_rules::ActionName;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::changelog::Changelog;
use self::consume::{ConsumeLoop, Ended, Inputs};
use self::dead_letter::DeadLetters;
use self::dispatch::Dispatcher;
use self::idle::EndProbe;
use self::kafka::{GroupContext, KafkaConfig};
use self::membership::Membership;
use self::reload::Watched;
pub use self::stats::LiveStats;
use crate::act::audit::{self, Audit};
use crate::act::pipeline::{Pipeline, WorkerFailed};
use crate::act::routes::{Route, Routes};
use crate::config::Loaded;
use crate::server::{Backend, Server};
use crate::shared::{Command, Shared};

/// How long the audit writer may take, at shutdown, to deliver what is queued.
const AUDIT_FLUSH: Duration = Duration::from_secs(15);

/// Silence changes made through the API waiting to be shared.
const SILENCE_QUEUE: usize = 1_024;

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
    /// The HTTP server stopped while the daemon ran.
    #[error("HTTP server stopped: {0}")]
    Server(String),
}

/// The running daemon.
pub struct Live {
    loaded: Arc<Loaded>,
    /// Where the configuration came from, for reloads.
    config_path: Option<std::path::PathBuf>,
    kafka: KafkaConfig,
    instance: String,
    /// Counters, shared with whoever reports them.
    pub stats: Arc<LiveStats>,
    /// How often idle partitions move on and the snapshot is refreshed.
    tick: Duration,
    /// Carries out every action when set by `with_connector` (tests,
    /// benchmarks), instead of the configured receivers.
    connector: Option<Arc<dyn Connector>>,
    /// What the HTTP server sees: snapshot, metrics, silences.
    pub shared: Arc<Shared>,
    /// Commands from the HTTP server, for the consume loop.
    commands: tokio::sync::mpsc::Receiver<Command>,
    /// Where the other replicas reach this one's HTTP server.
    advertise: Option<String>,
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
        let (command_tx, commands) = tokio::sync::mpsc::channel(64);
        let shared = Arc::new(Shared::new(&loaded.rules, command_tx));
        shared
            .metrics
            .record_initial_load(std::time::SystemTime::now());
        shared
            .metrics
            .declare(loaded.config.receivers.keys().map(String::as_str));
        if let Some(http) = &loaded.config.http {
            *shared.history.lock().unwrap_or_else(|p| p.into_inner()) =
                crate::history::History::new(http.history.clone());
        }
        Ok(Live {
            loaded: Arc::new(loaded),
            config_path: None,
            kafka,
            instance,
            stats: Arc::new(LiveStats::default()),
            tick: Duration::from_secs(1),
            connector: None,
            shared,
            commands,
            advertise: None,
        })
    }

    /// Where the other replicas reach this replica's HTTP server
    /// (`HOST:PORT`): it joins the group under that name, and forwards a
    /// rollout request for a model it does not carry to the replica that
    /// does. Needs `http:`.
    pub fn advertising(mut self, address: Option<String>) -> Result<Live, RunError> {
        if let Some(a) = &address {
            let valid = a
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(RunError::Config(format!(
                    "--advertise {a}: expected HOST:PORT, such as 10.1.2.3:9464"
                )));
            }
            if self.loaded.config.http.is_none() {
                return Err(RunError::Config(
                    "--advertise needs `http:`: it is the HTTP server's address".into(),
                ));
            }
            if self.kafka.silences_topic.is_none() {
                return Err(RunError::Config(
                    "--advertise needs kafka.silences_topic: the replicas find each other there"
                        .into(),
                ));
            }
        }
        self.advertise = address;
        Ok(self)
    }

    /// Where to reload the configuration from (SIGHUP, `POST /-/reload`,
    /// file changes).
    pub fn with_config_path(mut self, path: std::path::PathBuf) -> Live {
        self.config_path = Some(path);
        self
    }

    /// Sends every action to `connector` instead (tests, benchmarks).
    pub fn with_connector(mut self, connector: Arc<dyn Connector>) -> Live {
        self.connector = Some(connector);
        self
    }

    /// Consumes until `shutdown` is cancelled, then drains the pipeline and
    /// commits offsets. Fails at start-up on anything the config names
    /// that cannot be had (a broker client, a receiver's secret, the HTTP
    /// address or its credentials), and later if the pipeline or the HTTP
    /// server fails.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RunError> {
        let Live {
            loaded,
            config_path,
            kafka,
            instance,
            stats,
            tick,
            connector,
            shared,
            commands,
            advertise,
        } = self;
        let config = &loaded.config;

        // Everything that can fail on the config is built before anything runs.
        let (assign_tx, assignments) = mpsc::channel();
        let mut consumer_config = kafka.consumer_config(&instance).map_err(RunError::Config)?;
        // Statistics feed the consumer-lag metric, which only the HTTP server
        // shows; parsing them runs on the consume loop, so only then.
        let serving = config.http.is_some();
        if serving {
            consumer_config.set("statistics.interval.ms", "5000");
        }
        if let Some(address) = &advertise {
            // Names the replica in the group's member list, for operators.
            consumer_config.set("client.id", format!("canaryd@{address}"));
        }
        let consumer: StreamConsumer<GroupContext> =
            consumer_config.create_with_context(GroupContext {
                events: assign_tx,
                shared: serving.then(|| shared.clone()),
            })?;
        let producer: FutureProducer = kafka
            .producer_config()
            .map_err(RunError::Config)?
            .create()?;
        let audit = Audit::log_only(instance.clone()).with_shared(shared.clone());
        let (audit, audit_writer) = match &kafka.audit_topic {
            Some(topic) => {
                let (audit, writer) =
                    audit.to_kafka(producer.clone(), topic.clone(), audit::DEFAULT_QUEUE);
                (audit, Some(writer))
            }
            None => (audit, None),
        };
        let (receivers, routes) = receivers(&loaded, connector).await?;
        let http = match &config.http {
            Some(http) => {
                let backend: Arc<dyn Backend> = Arc::new(shared.clone());
                let (server, sharing) = match &kafka.silences_topic {
                    Some(topic) => {
                        let (tx, rx) = tokio::sync::mpsc::channel(SILENCE_QUEUE);
                        let (server, remote) = Server::sharing_silences(http, backend, tx)
                            .map_err(|e| RunError::Config(format!("http: {e}")))?;
                        (server, Some((topic.clone(), rx, remote)))
                    }
                    None => (
                        Server::new(http, backend)
                            .map_err(|e| RunError::Config(format!("http: {e}")))?,
                        None,
                    ),
                };
                let listener = tokio::net::TcpListener::bind(http.listen)
                    .await
                    .map_err(|e| RunError::Config(format!("http.listen {}: {e}", http.listen)))?;
                tracing::info!(address = ?listener.local_addr().ok(), "serving HTTP");
                Some((server, listener, sharing))
            }
            None => None,
        };
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| RunError::Config(format!("cannot listen for SIGHUP: {e}")))?;
        let reader = match &kafka.changelog_topic {
            Some(changelog) => {
                let reader = kafka.reader_config().map_err(RunError::Config)?;
                let (config, inputs, changelog) =
                    (reader.clone(), kafka.topics.clone(), changelog.clone());
                tokio::task::spawn_blocking(move || {
                    changelog::check_size(&config, &inputs, &changelog)
                })
                .await
                .map_err(|e| RunError::Config(format!("changelog size check: {e}")))?
                .map_err(RunError::Config)?;
                Some(reader)
            }
            None => None,
        };
        let end_probe = EndProbe::new(&kafka.reader_config().map_err(RunError::Config)?)?;
        let topics: Vec<&str> = kafka.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;

        // Start: the pipeline, the HTTP server, the file watcher.
        let hurry = CancellationToken::new();
        let traffic_reads = read_back::TrafficReads::new(&receivers);
        let (pipeline, workers) = Pipeline::start(
            receivers,
            &routes,
            &config.pipeline,
            audit.clone(),
            hurry.clone(),
        );
        pipeline.stats.attach(shared.clone());
        let server_stop = CancellationToken::new();
        let (server, sharing) = match http {
            Some((server, listener, sharing)) => (
                Some(tokio::spawn(server.serve(listener, server_stop.clone()))),
                sharing,
            ),
            None => (None, None),
        };
        let silences_stop = CancellationToken::new();
        let silences = match sharing {
            Some((topic, changes, remote)) => {
                let reader = kafka.reader_config().map_err(RunError::Config)?;
                let me = advertise.clone().map(|address| silences::Me {
                    address,
                    instance: instance.clone(),
                });
                let sync = silences::sync(
                    reader,
                    producer.clone(),
                    topic,
                    changes,
                    remote,
                    me,
                    silences_stop.clone(),
                );
                Some(tokio::spawn(async move {
                    let synced = sync.await;
                    if let Err(e) = &synced {
                        tracing::error!(error = %e, "silences are not shared: each replica keeps its own");
                    }
                    synced
                }))
            }
            None => None,
        };
        let (file_tx, file_changes) = tokio::sync::mpsc::channel::<()>(1);
        let _watcher = config_path
            .as_deref()
            .and_then(|path| reload::watch(Watched::new(path, &config.rules), file_tx));
        tracing::info!(%instance, topics = ?kafka.topics, group = %kafka.group_id, rules = loaded.rules.len(), "consuming");

        let changelog = kafka
            .changelog_topic
            .clone()
            .map(|topic| Changelog::new(producer.clone(), topic));
        let mut consume = ConsumeLoop {
            consumer: &consumer,
            assignments,
            alertmanager: ConsumeLoop::fresh_engine(&loaded),
            loaded: loaded.clone(),
            config_path,
            instance,
            dispatcher: Dispatcher {
                pipeline: Some(pipeline),
                audit,
                shared: shared.clone(),
                stats: stats.clone(),
            },
            dead_letters: DeadLetters {
                producer,
                topic: kafka.dead_letter_topic.clone(),
                stats: stats.clone(),
                shared: shared.clone(),
            },
            shared: shared.clone(),
            stats: stats.clone(),
            tick,
            idle_after: Duration::from_millis(
                u64::try_from(kafka.idle_after.millis()).unwrap_or(5_000),
            ),
            end_probe,
            partitions: Default::default(),
            membership: Membership::new(
                kafka.topics.clone(),
                kafka.group_id.clone(),
                Duration::from_millis(u64::try_from(kafka.rejoin_after.millis()).unwrap_or(30_000)),
            ),
            outputs: Vec::new(),
            rollout_changes: Vec::new(),
            offsets: Default::default(),
            changelog,
            reader,
            checkpoint_every: Duration::from_millis(
                u64::try_from(kafka.checkpoint_interval.millis())
                    .unwrap_or(1000)
                    .max(1),
            ),
            next_checkpoint: std::time::Instant::now(),
            max_future_skew: kafka.max_future_skew,
            consumed: Vec::new(),
            evaluations_seen: 0,
            traffic_reads,
        };
        let inputs = Inputs {
            commands,
            file_changes,
            hangup,
            server,
        };
        let (ended, server) = consume.run(inputs, &shutdown).await;

        // Stop: not ready, drain the pipeline, commit, stop the server.
        shared.set_ready(false);
        tracing::info!(
            ?ended,
            "shutting down: draining actions and committing offsets"
        );
        let grace = Duration::from_millis(
            u64::try_from(consume.loaded.config.pipeline.shutdown_grace.millis()).unwrap_or(0),
        );
        // Receivers finish what they hold before the last checkpoint, so
        // that it carries only what they left unfinished.
        consume.dispatcher.close();
        let drained = drain(workers, hurry, grace).await;
        consume.finish().await;
        drop(consume);
        // Every publisher is gone now: the writer delivers what is queued.
        if let Some(writer) = audit_writer {
            writer.finish(AUDIT_FLUSH).await;
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
            consumed = stats.consumed.load(Ordering::Relaxed),
            dead_lettered = stats.dead_lettered.load(Ordering::Relaxed),
            late = stats.late.load(Ordering::Relaxed),
            transitions = stats.transitions.load(Ordering::Relaxed),
            actions = stats.actions.load(Ordering::Relaxed),
            "stopped"
        );
        silences_stop.cancel();
        if let Some(silences) = silences {
            match silences.await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {} // said when it failed
                Err(e) => tracing::error!(error = %e, "silence sharing task panicked"),
            }
        }
        server_stop.cancel();
        if let Some(server) = server {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "HTTP server failed"),
                Err(e) => tracing::error!(error = %e, "HTTP server task panicked"),
            }
        }
        match ended {
            Ended::ServerStopped(why) => Err(RunError::Server(why)),
            Ended::Shutdown | Ended::PipelineClosed => drained,
        }
    }
}

/// The configured receivers and routes; with `connector` (tests,
/// benchmarks), or with no receivers configured, every action goes to that
/// one connector (the dry-run one by default).
async fn receivers(
    loaded: &Loaded,
    connector: Option<Arc<dyn Connector>>,
) -> Result<(Vec<Arc<dyn Connector>>, Routes), RunError> {
    let config = &loaded.config;
    if config.receivers.is_empty() || connector.is_some() {
        if !config.dry_run && connector.is_none() {
            tracing::warn!("no receivers configured: every action is recorded as a dry run");
        }
        let connector = connector.unwrap_or_else(|| Arc::new(DryRun::new()));
        let routes = ActionName::ALL
            .into_iter()
            .map(|a| {
                let route = Route {
                    receivers: vec![connector.name().to_string()],
                    dry_run: false,
                };
                (a, route)
            })
            .collect();
        return Ok((vec![connector], routes));
    }
    let mut built = Vec::new();
    for (name, spec) in &config.receivers {
        let connector = spec
            .build(name)
            .await
            .map_err(|e| RunError::Config(format!("receivers.{name}: {e}")))?;
        built.push(connector);
    }
    for action in ActionName::ALL {
        if !config.routes.contains_key(&action) {
            tracing::warn!(%action, "no route: such actions will be recorded as failed");
        }
    }
    Ok((built, config.routes.clone()))
}

/// Waits for the pipeline's workers to finish what they hold; after
/// `grace`, tells them to give up (what is left is dead-lettered).
async fn drain(
    mut workers: JoinSet<Result<(), WorkerFailed>>,
    hurry: CancellationToken,
    grace: Duration,
) -> Result<(), RunError> {
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
    drained
}
