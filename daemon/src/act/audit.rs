//! The audit trail: transitions and action outcomes as JSON, published to
//! a Kafka topic by a writer task of its own.
//!
//! Publishing never waits for the broker: a record goes into a bounded
//! queue, and the writer delivers it, with retries, many at a time. Only a
//! full queue makes a publisher wait (backpressure, counted in
//! `canaryd_audit_backpressure_total`), so nothing is dropped; a record the
//! broker refuses for about a minute is logged in full instead.

use std::sync::Arc;
use std::time::Duration;

use canaryd_connectors::RetryPolicy;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::shared::Shared;

/// Tries at delivering one record before it is logged in full instead.
const ATTEMPTS: u32 = 8;

/// Between tries: 100 ms doubling to 10 s, about a minute in all.
const RETRY: RetryPolicy = RetryPolicy {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(10),
};

/// Records the writer has handed to the broker and awaits acks for.
const IN_FLIGHT: usize = 1024;

/// Records that may wait for the writer before publishers wait too.
pub const DEFAULT_QUEUE: usize = 10_000;

/// One audit record, serialised.
struct Record {
    key: String,
    payload: String,
}

/// Where audit records go. Cloning shares the queue.
#[derive(Clone)]
pub struct Audit {
    queue: Option<mpsc::Sender<Record>>,
    instance: String,
    /// Where outcomes are also counted and kept for the JSON API.
    shared: Option<Arc<Shared>>,
}

/// The task that delivers audit records to Kafka; [`AuditWriter::finish`]
/// waits for it once every [`Audit`] clone is gone.
pub struct AuditWriter {
    task: tokio::task::JoinHandle<()>,
}

impl Audit {
    /// Logs only (and counts, once [`Audit::with_shared`]).
    pub fn log_only(instance: String) -> Audit {
        Audit {
            queue: None,
            instance,
            shared: None,
        }
    }

    /// Also counts outcomes in metrics and keeps recent ones for the API.
    pub fn with_shared(mut self, shared: Arc<Shared>) -> Audit {
        self.shared = Some(shared);
        self
    }

    /// Publishes to `topic` through `producer`, by a writer task with a
    /// queue of `capacity` records. Needs a tokio runtime.
    pub fn to_kafka(
        mut self,
        producer: FutureProducer,
        topic: String,
        capacity: usize,
    ) -> (Audit, AuditWriter) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.queue = Some(tx);
        let task = tokio::spawn(write(producer, topic, rx, self.shared.clone()));
        (self, AuditWriter { task })
    }

    /// Publishes one record keyed by `key`, tagged with this instance.
    /// Returns once the writer's queue has taken it.
    pub async fn publish(&self, key: &str, mut record: serde_json::Value) {
        if let Some(map) = record.as_object_mut() {
            map.insert("instance".into(), self.instance.clone().into());
        }
        if let Some(shared) = &self.shared
            && record["kind"] == "outcome"
        {
            shared.record_outcome(&record);
        }
        let Some(queue) = &self.queue else {
            return;
        };
        let record = Record {
            key: key.to_string(),
            payload: record.to_string(),
        };
        let refused = match queue.try_send(record) {
            Ok(()) => return,
            Err(TrySendError::Full(record)) => {
                if let Some(shared) = &self.shared {
                    shared.metrics.inc_audit_backpressure();
                }
                match queue.send(record).await {
                    Ok(()) => return,
                    Err(mpsc::error::SendError(record)) => record,
                }
            }
            Err(TrySendError::Closed(record)) => record,
        };
        // Only after the writer has gone: never silently lost.
        tracing::error!(record = %refused.payload, "audit writer stopped; record logged instead");
    }
}

impl AuditWriter {
    /// Waits, at most `limit`, for the writer to deliver what it holds; it
    /// finishes once every [`Audit`] clone has been dropped.
    pub async fn finish(self, limit: Duration) {
        match tokio::time::timeout(limit, self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "audit writer failed"),
            Err(_) => {
                tracing::error!(
                    ?limit,
                    "audit writer did not finish; undelivered records are lost"
                )
            }
        }
    }
}

/// The writer: takes records from the queue and keeps up to [`IN_FLIGHT`]
/// of them on their way to the broker, so librdkafka can batch them.
async fn write(
    producer: FutureProducer,
    topic: String,
    mut queue: mpsc::Receiver<Record>,
    shared: Option<Arc<Shared>>,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            record = queue.recv(), if open && in_flight.len() < IN_FLIGHT => match record {
                Some(record) => in_flight.push(deliver(&producer, &topic, record)),
                None => open = false,
            },
            Some(delivered) = in_flight.next(), if !in_flight.is_empty() => {
                if let Some(shared) = &shared {
                    shared.metrics.inc_audit_record(delivered);
                }
            }
        }
    }
}

/// Delivers one record, retrying; false (and the record logged in full)
/// if the broker never took it.
async fn deliver(producer: &FutureProducer, topic: &str, record: Record) -> bool {
    let mut backoff = RETRY.backoff();
    for attempt in 1..=ATTEMPTS {
        let sent = producer
            .send(
                FutureRecord::to(topic)
                    .key(&record.key)
                    .payload(&record.payload),
                Duration::from_secs(5),
            )
            .await;
        match sent {
            Ok(_) => return true,
            Err((e, _)) => {
                tracing::warn!(error = %e, attempt, topic = %topic, "audit record not delivered; retrying");
                tokio::time::sleep(backoff.next_delay(None)).await;
            }
        }
    }
    tracing::error!(topic = %topic, record = %record.payload, "audit record could not be delivered");
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

    use super::*;

    fn unreachable_producer() -> FutureProducer {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", "60000")
            .create()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn publishing_does_not_wait_for_the_broker() {
        // With time paused, anything that waits on the broker lets the
        // clock jump to the timeout at once; taking the record into the
        // queue never does.
        let (audit, _writer) = Audit::log_only("test".into()).to_kafka(
            unreachable_producer(),
            "audit".into(),
            DEFAULT_QUEUE,
        );
        for i in 0..100 {
            let record = serde_json::json!({"kind": "transition", "n": i});
            tokio::time::timeout(Duration::from_secs(1), audit.publish("k", record))
                .await
                .expect("publish waited for the broker");
        }
    }
}
