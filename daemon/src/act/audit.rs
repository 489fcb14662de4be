//! The audit trail: transitions and action outcomes as JSON, published to
//! a Kafka topic and always logged.

use std::time::Duration;

use canaryd_connectors::RetryPolicy;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Tries at delivering one record before it is logged in full instead.
const ATTEMPTS: u32 = 8;

/// Between tries: 100 ms doubling to 10 s, about a minute in all.
const RETRY: RetryPolicy = RetryPolicy {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(10),
};

/// Where audit records go. Cloning shares the producer.
#[derive(Clone)]
pub struct Audit {
    sink: Option<(FutureProducer, String)>,
    instance: String,
    /// Where outcomes are also counted and kept for the JSON API.
    shared: Option<std::sync::Arc<crate::shared::Shared>>,
}

impl Audit {
    /// Publishes to `topic` through `producer`.
    pub fn kafka(producer: FutureProducer, topic: String, instance: String) -> Audit {
        Audit {
            sink: Some((producer, topic)),
            instance,
            shared: None,
        }
    }

    /// Logs only.
    pub fn log_only(instance: String) -> Audit {
        Audit {
            sink: None,
            instance,
            shared: None,
        }
    }

    /// Also counts outcomes in metrics and keeps recent ones for the API.
    pub fn with_shared(mut self, shared: std::sync::Arc<crate::shared::Shared>) -> Audit {
        self.shared = Some(shared);
        self
    }

    /// Publishes one record keyed by `key`. Waits for the broker's
    /// acknowledgement, retrying; a record that cannot be delivered within a
    /// minute is logged in full, so it is never silently lost.
    pub async fn publish(&self, key: &str, mut record: serde_json::Value) {
        if let Some(map) = record.as_object_mut() {
            map.insert("instance".into(), self.instance.clone().into());
        }
        if let Some(shared) = &self.shared
            && record["kind"] == "outcome"
        {
            shared.record_outcome(&record);
        }
        let Some((producer, topic)) = &self.sink else {
            return;
        };
        let payload = record.to_string();
        let mut backoff = RETRY.backoff();
        for attempt in 1..=ATTEMPTS {
            let sent = producer
                .send(
                    FutureRecord::to(topic).key(key).payload(&payload),
                    Duration::from_secs(5),
                )
                .await;
            match sent {
                Ok(_) => return,
                Err((e, _)) => {
                    tracing::warn!(error = %e, attempt, topic = %topic, "audit record not delivered; retrying");
                    tokio::time::sleep(backoff.next_delay(None)).await;
                }
            }
        }
        tracing::error!(topic = %topic, record = %payload, "audit record could not be delivered");
    }
}
