//! What the HTTP server sees of the running daemon: snapshots the consume
//! loop takes when asked, the metrics, recent action outcomes, the
//! silences, and a channel into the loop for Alertmanager's alerts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use canaryd_rules::event::AlertEvent;
use canaryd_rules::{RuleSet, SubjectAnalytics, Timestamp};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::history::{History, HistoryConfig};
use crate::metrics::{AlertSeries, Exported, Metrics, RolloutSeries};
use crate::server::{Backend, BoxFuture, DirectAction, PayloadResult, Silence};

/// Outcomes kept for `GET /api/v1/actions`.
const RECENT_ACTIONS: usize = 500;

/// Requests this close together share one snapshot: a status page polling
/// every second and a scrape cost the consume loop one between them.
const SNAPSHOT_REUSE: Duration = Duration::from_millis(500);

/// How long a request waits for the consume loop (busy restoring a
/// partition, say) before it is answered from the last snapshot.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

/// What the HTTP side shows of the engines and rollouts: taken by the
/// consume loop when a request asks, never kept up to date on it.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// `GET /api/v1/alerts`: `{"alerts":[…],"subjects":[…]}`.
    pub alerts: Value,
    /// `GET /api/v1/subjects/{model}`, by model.
    pub subjects: HashMap<String, Value>,
    /// `GET /api/v1/rollouts`, sorted by model.
    pub rollouts: Vec<Value>,
    /// The per-model metrics: fresh subjects with data, up to the cap.
    pub analytics: Vec<SubjectAnalytics>,
    /// Subjects with data left out: over the cap, or beyond what one
    /// engine contributes to a snapshot.
    pub omitted: usize,
    /// `canaryd_alerts`.
    pub alert_series: Vec<AlertSeries>,
    /// The rollout gauges.
    pub rollout_series: Vec<RolloutSeries>,
    /// Subjects the engines hold.
    pub held: usize,
    /// Each assigned partition's event time.
    pub event_times: Vec<crate::metrics::PartitionTime>,
}

/// The last snapshot and when it was taken.
#[derive(Default)]
struct Cached {
    at: Option<Instant>,
    snapshot: Arc<Snapshot>,
}

/// Work the HTTP side hands to the consume loop, with where to answer.
pub enum Command {
    /// Alerts from Alertmanager, as alert events.
    Alerts(Vec<AlertEvent>, oneshot::Sender<Result<(), String>>),
    /// Alerts that name an action directly.
    Act(Vec<DirectAction>, oneshot::Sender<Result<(), String>>),
    /// Reload the rules from the config file.
    Reload(oneshot::Sender<Result<Value, Vec<String>>>),
    /// Take a snapshot of the engines and rollouts.
    Snapshot(oneshot::Sender<Snapshot>),
    /// A person's command for a model's rollout; answers the rollout as it
    /// stands after it, or the HTTP status and why nothing changed.
    Rollout {
        /// The model.
        model: String,
        /// What to do, and who asks.
        command: canaryd_rules::rollout::Command,
        /// Where to answer.
        reply: oneshot::Sender<Result<Value, (u16, String)>>,
    },
}

/// State shared between the consume loop and the HTTP server.
pub struct Shared {
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The status page's trends: written by the consume loop, read by the
    /// server.
    pub history: Mutex<History>,
    ready: AtomicBool,
    rules: RwLock<Value>,
    /// Held while a snapshot is asked for, so that concurrent requests
    /// wait for one and share it.
    snapshot: tokio::sync::Mutex<Cached>,
    /// One scrape at a time replaces the snapshot-fed families and encodes.
    scrape: Mutex<()>,
    recent: Mutex<VecDeque<Value>>,
    silences: RwLock<Vec<Silence>>,
    refused_steps: Mutex<Vec<(String, String)>>,
    commands: mpsc::Sender<Command>,
}

impl Shared {
    /// Shared state for `rules`; commands for the loop go to `commands`.
    pub fn new(rules: &RuleSet, commands: mpsc::Sender<Command>) -> Shared {
        Shared {
            metrics: Metrics::new(),
            history: Mutex::new(History::new(HistoryConfig::default())),
            ready: AtomicBool::new(false),
            rules: RwLock::new(rules_json(rules)),
            snapshot: tokio::sync::Mutex::new(Cached::default()),
            scrape: Mutex::new(()),
            recent: Mutex::new(VecDeque::new()),
            silences: RwLock::new(Vec::new()),
            refused_steps: Mutex::new(Vec::new()),
            commands,
        }
    }

    /// Shows a reloaded rule set.
    pub fn set_rules(&self, rules: &RuleSet) {
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = rules_json(rules);
    }

    /// Ready means: rules loaded, partitions assigned, not draining.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// A snapshot no older than [`SNAPSHOT_REUSE`], taken by the consume
    /// loop; the last one (or an empty one) if the loop does not answer
    /// within [`SNAPSHOT_WAIT`].
    pub async fn snapshot(&self) -> Arc<Snapshot> {
        let mut cached = self.snapshot.lock().await;
        if cached.at.is_some_and(|at| at.elapsed() < SNAPSHOT_REUSE) {
            return cached.snapshot.clone();
        }
        let (tx, rx) = oneshot::channel();
        let asked = async {
            self.commands.send(Command::Snapshot(tx)).await.ok()?;
            rx.await.ok()
        };
        match tokio::time::timeout(SNAPSHOT_WAIT, asked).await {
            Ok(Some(fresh)) => {
                *cached = Cached {
                    at: Some(Instant::now()),
                    snapshot: Arc::new(fresh),
                };
            }
            // The last one stands in for a while, so that requests queued
            // behind this one do not each wait again.
            Ok(None) => {
                tracing::debug!("no snapshot: the consume loop has stopped");
                cached.at = Some(Instant::now());
            }
            Err(_) => {
                tracing::warn!(
                    wait_s = SNAPSHOT_WAIT.as_secs(),
                    "the consume loop did not answer for a snapshot in time: showing the last one"
                );
                cached.at = Some(Instant::now());
            }
        }
        cached.snapshot.clone()
    }

    /// A rollout step for `model` was not carried out (its weights were
    /// changed by a person, or could not be set): the consume loop pauses
    /// that rollout, `by` this.
    pub fn note_refused_step(&self, model: &str, by: String) {
        let mut refused = self.refused_steps.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: one pending pause per model is enough.
        if !refused.iter().any(|(m, _)| m == model) {
            refused.push((model.to_string(), by));
        }
    }

    /// The refused steps noted since the last call: (model, pause reason).
    pub fn take_refused_steps(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.refused_steps.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Marks `model`'s charts at `ts`.
    pub fn mark(&self, model: &str, ts: Timestamp, kind: &str, text: String) {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mark(model, ts, kind, text);
    }

    /// Remembers an action outcome for the API and counts it.
    pub fn record_outcome(&self, record: &Value) {
        let (connector, outcome) = (record["connector"].as_str(), record["outcome"].as_str());
        if let (Some(connector), Some(outcome)) = (connector, outcome) {
            self.metrics.inc_action(connector, outcome);
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() >= RECENT_ACTIONS {
            recent.pop_front();
        }
        recent.push_back(record.clone());
    }

    /// Whether a silence covers this rule and subject now.
    pub fn is_silenced(
        &self,
        rule: &str,
        subject: &BTreeMap<String, String>,
        now: Timestamp,
    ) -> bool {
        self.silences
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|s| s.is_active(now) && s.matches(rule, subject))
    }
}

fn rules_json(rules: &RuleSet) -> Value {
    let rules = rules
        .rules()
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "condition": r.condition.source(),
                "duration": r.timing.hold,
                "severity": r.severity,
                "actions": r.actions,
                "dry_run": r.dry_run,
                "group_by": r.group_by,
                "file": r.origin.to_string(),
            })
        })
        .collect();
    Value::Array(rules)
}

/// The canary and stable statistics of one subject, side by side, and the
/// judge's view of them.
pub fn subject_json(model: &str, subject: &SubjectAnalytics) -> Value {
    json!({
        "model": model,
        "canary": subject.tracks[0],
        "stable": subject.tracks[1],
        "judge": subject.judgement,
    })
}

impl Backend for std::sync::Arc<Shared> {
    fn ingest(&self, alerts: Vec<AlertEvent>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.commands
                .send(Command::Alerts(alerts, tx))
                .await
                .map_err(|_| "shutting down".to_string())?;
            rx.await.map_err(|_| "shutting down".to_string())?
        })
    }

    fn act(&self, requests: Vec<DirectAction>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.commands
                .send(Command::Act(requests, tx))
                .await
                .map_err(|_| "shutting down".to_string())?;
            rx.await.map_err(|_| "shutting down".to_string())?
        })
    }

    fn alerts(&self) -> BoxFuture<'_, Value> {
        Box::pin(async move {
            match &self.snapshot().await.alerts {
                // No snapshot yet: the loop has not answered one.
                Value::Null => json!({"alerts": [], "subjects": []}),
                alerts => alerts.clone(),
            }
        })
    }

    fn rules(&self) -> Value {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn subject(&self, model: String) -> BoxFuture<'_, Option<Value>> {
        Box::pin(async move { self.snapshot().await.subjects.get(&model).cloned() })
    }

    fn actions(&self) -> Value {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        Value::Array(recent.iter().rev().cloned().collect())
    }

    fn reload(&self) -> BoxFuture<'_, Result<Value, Vec<String>>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            let closed = || vec!["shutting down".to_string()];
            self.commands
                .send(Command::Reload(tx))
                .await
                .map_err(|_| closed())?;
            rx.await.map_err(|_| closed())?
        })
    }

    fn rollouts(&self) -> BoxFuture<'_, Value> {
        Box::pin(async move { Value::Array(self.snapshot().await.rollouts.clone()) })
    }

    fn rollout_command(
        &self,
        model: String,
        command: canaryd_rules::rollout::Command,
    ) -> BoxFuture<'_, Result<Value, (u16, String)>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            let closed = || (503, "shutting down".to_string());
            self.commands
                .send(Command::Rollout {
                    model,
                    command,
                    reply,
                })
                .await
                .map_err(|_| closed())?;
            rx.await.map_err(|_| closed())?
        })
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    fn history(&self, model: &str) -> Option<Value> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .json(model)
    }

    fn metrics(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            let snapshot = self.snapshot().await;
            let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
            self.metrics.export(&Exported {
                subjects: &snapshot.analytics,
                omitted: snapshot.omitted,
                alerts: &snapshot.alert_series,
                rollouts: &snapshot.rollout_series,
                held: snapshot.held,
                event_times: &snapshot.event_times,
            });
            self.metrics.encode()
        })
    }

    fn silenced(&self, silences: &[Silence]) {
        *self.silences.write().unwrap_or_else(|p| p.into_inner()) = silences.to_vec();
    }

    fn record_payload(&self, result: PayloadResult) {
        self.metrics.inc_alertmanager_payload(result);
    }
}
