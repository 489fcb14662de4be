//! What the HTTP server sees of the running daemon: a snapshot the consume
//! loop refreshes every second, the metrics, recent action outcomes, the
//! silences, and a channel into the loop for Alertmanager's alerts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use canaryd_rules::analytics::TrackStats;
use canaryd_rules::event::AlertEvent;
use canaryd_rules::{RuleSet, Timestamp};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::server::{Backend, BoxFuture, DirectAction, PayloadResult, Silence};

/// Outcomes kept for `GET /api/v1/actions`.
const RECENT_ACTIONS: usize = 500;

/// Work the HTTP side hands to the consume loop, with where to answer.
pub enum Command {
    /// Alerts from Alertmanager, as alert events.
    Alerts(Vec<AlertEvent>, oneshot::Sender<Result<(), String>>),
    /// Alerts that name an action directly.
    Act(Vec<DirectAction>, oneshot::Sender<Result<(), String>>),
    /// Reload the rules from the config file.
    Reload(oneshot::Sender<Result<Value, Vec<String>>>),
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
    ready: AtomicBool,
    rules: RwLock<Value>,
    alerts: RwLock<Value>,
    subjects: RwLock<HashMap<String, Value>>,
    recent: Mutex<VecDeque<Value>>,
    silences: RwLock<Vec<Silence>>,
    rollouts: RwLock<Vec<Value>>,
    hand_edits: Mutex<Vec<(String, String)>>,
    commands: mpsc::Sender<Command>,
}

impl Shared {
    /// Shared state for `rules`; commands for the loop go to `commands`.
    pub fn new(rules: &RuleSet, commands: mpsc::Sender<Command>) -> Shared {
        Shared {
            metrics: Metrics::new(),
            ready: AtomicBool::new(false),
            rules: RwLock::new(rules_json(rules)),
            alerts: RwLock::new(json!({"alerts": [], "subjects": []})),
            subjects: RwLock::new(HashMap::new()),
            recent: Mutex::new(VecDeque::new()),
            silences: RwLock::new(Vec::new()),
            rollouts: RwLock::new(Vec::new()),
            hand_edits: Mutex::new(Vec::new()),
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

    /// Replaces the alert snapshot.
    pub fn set_alerts(&self, alerts: Vec<Value>, subjects: Vec<String>) {
        let value = json!({"alerts": alerts, "subjects": subjects});
        *self.alerts.write().unwrap_or_else(|p| p.into_inner()) = value;
    }

    /// Replaces the rollouts snapshot.
    pub fn set_rollouts(&self, rollouts: Vec<Value>) {
        *self.rollouts.write().unwrap_or_else(|p| p.into_inner()) = rollouts;
    }

    /// A rollout step for `model` found weights a person changed: the
    /// consume loop pauses that rollout.
    pub fn note_hand_edit(&self, model: &str, why: &str) {
        let mut edits = self.hand_edits.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: one pending pause per model is enough.
        if !edits.iter().any(|(m, _)| m == model) {
            edits.push((model.to_string(), why.to_string()));
        }
    }

    /// The hand edits noted since the last call.
    pub fn take_hand_edits(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.hand_edits.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the analytics snapshot.
    pub fn set_subjects(&self, subjects: HashMap<String, Value>) {
        *self.subjects.write().unwrap_or_else(|p| p.into_inner()) = subjects;
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

/// The canary and stable statistics of one subject, side by side.
pub fn subject_json(model: &str, stats: &[TrackStats; 2]) -> Value {
    json!({"model": model, "canary": stats[0], "stable": stats[1]})
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

    fn alerts(&self) -> Value {
        self.alerts
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn rules(&self) -> Value {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn subject(&self, model: &str) -> Option<Value> {
        self.subjects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(model)
            .cloned()
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

    fn rollouts(&self) -> Value {
        Value::Array(
            self.rollouts
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
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

    fn metrics(&self) -> String {
        self.metrics.encode()
    }

    fn silenced(&self, silences: &[Silence]) {
        *self.silences.write().unwrap_or_else(|p| p.into_inner()) = silences.to_vec();
    }

    fn record_payload(&self, result: PayloadResult) {
        self.metrics.inc_alertmanager_payload(result);
    }
}
