//! Malformed messages go to the dead-letter topic, whole, with why in
//! headers: nothing is dropped, and the source can be found again.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use canaryd_connectors::RetryPolicy;
use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use super::stats::LiveStats;
use crate::shared::Shared;

/// Between tries at a dead letter: 100 ms doubling to 30 s, until
/// delivered or shutdown.
const RETRY: RetryPolicy = RetryPolicy {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(30),
};

/// The dead-letter topic and its producer.
pub(super) struct DeadLetters {
    pub(super) producer: FutureProducer,
    pub(super) topic: String,
    pub(super) stats: Arc<LiveStats>,
    pub(super) shared: Arc<Shared>,
}

impl DeadLetters {
    /// Sends `message` to the dead-letter topic with `reason` (a metric
    /// label, e.g. `invalid_json`) and `detail` in its headers, retrying
    /// until it is delivered. False if shutdown came first: the message is
    /// then not processed, and will be redelivered.
    pub(super) async fn send(
        &self,
        message: &BorrowedMessage<'_>,
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
        let mut backoff = RETRY.backoff();
        loop {
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic)
                .payload(payload)
                .headers(headers.clone());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            match self.producer.send(record, Duration::from_secs(5)).await {
                Ok(_) => {
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    self.shared.metrics.inc_dead_lettered(reason);
                    return true;
                }
                Err((e, _)) => {
                    tracing::error!(error = %e, topic = %self.topic, "dead letter not delivered; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(backoff.next_delay(None)) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::DEAD_LETTER_REASONS;

    #[test]
    fn every_decode_error_is_a_declared_reason() {
        for kind in canaryd_rules::event::DecodeErrorKind::ALL {
            assert!(DEAD_LETTER_REASONS.contains(&kind.as_str()), "{kind:?}");
        }
    }
}
