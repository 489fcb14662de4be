//! The action pipeline: a bounded queue in front of the connectors.
//!
//! `submit` waits while the queue is full, so backpressure reaches the
//! consumer and nothing is dropped. The worker deduplicates by idempotency
//! key, runs the connector and records every outcome.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use canaryd_connectors::{Action, Connector, Outcome, OutcomeKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::audit::Audit;

/// How many recent idempotency keys the worker remembers.
const DEDUP_MEMORY: usize = 100_000;

/// The sending side of the pipeline.
#[derive(Clone)]
pub struct Pipeline {
    tx: mpsc::Sender<Action>,
}

/// The pipeline has shut down and accepts nothing more.
#[derive(Debug, thiserror::Error)]
#[error("the action pipeline is closed")]
pub struct Closed;

impl Pipeline {
    /// Starts the worker. The handle finishes once every `Pipeline` clone is
    /// dropped and the queue is drained; await it to surface a panic.
    pub fn start(
        connector: Arc<dyn Connector>,
        capacity: usize,
        audit: Audit,
    ) -> (Pipeline, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let worker = tokio::spawn(work(rx, connector, audit));
        (Pipeline { tx }, worker)
    }

    /// Queues an action; returns once it is accepted. Waits while the queue is full.
    pub async fn submit(&self, action: Action) -> Result<(), Closed> {
        self.tx.send(action).await.map_err(|_| Closed)
    }
}

async fn work(mut rx: mpsc::Receiver<Action>, connector: Arc<dyn Connector>, audit: Audit) {
    let mut seen: HashSet<String> = HashSet::new();
    let mut order: VecDeque<String> = VecDeque::new();
    while let Some(action) = rx.recv().await {
        if seen.contains(&action.key) {
            tracing::info!(key = %action.key, "duplicate action ignored");
            continue;
        }
        if order.len() >= DEDUP_MEMORY
            && let Some(old) = order.pop_front()
        {
            seen.remove(&old);
        }
        seen.insert(action.key.clone());
        order.push_back(action.key.clone());

        record(&audit, &action, &accepted(&action, connector.name())).await;
        let outcome = match connector.execute(&action).await {
            Ok(o) => o,
            Err(e) => Outcome {
                key: action.key.clone(),
                connector: connector.name().to_string(),
                kind: OutcomeKind::Failed,
                dry_run: action.dry_run,
                detail: e.to_string(),
            },
        };
        record(&audit, &action, &outcome).await;
    }
}

fn accepted(action: &Action, connector: &str) -> Outcome {
    Outcome {
        key: action.key.clone(),
        connector: connector.to_string(),
        kind: OutcomeKind::Accepted,
        dry_run: action.dry_run,
        detail: String::new(),
    }
}

async fn record(audit: &Audit, action: &Action, outcome: &Outcome) {
    tracing::info!(
        rule = %action.rule,
        action = %action.action,
        subject = ?action.subject,
        key = %outcome.key,
        connector = %outcome.connector,
        outcome = ?outcome.kind,
        dry_run = outcome.dry_run,
        detail = %outcome.detail,
        "action outcome"
    );
    audit
        .publish(
            &action.key,
            serde_json::json!({
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
            }),
        )
        .await;
}
