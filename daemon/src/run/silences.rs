//! Silences shared by every replica through a compacted topic: one record
//! per silence, keyed by its id, the silence as JSON; a deletion is a
//! tombstone. Each replica publishes what its API creates and deletes, and
//! reads the topic from its beginning, so a new replica knows every silence
//! still in force and a silence made on one replica is honoured by all.
//! Expiry needs no record: every replica drops a silence at its `until`.
//!
//! The Alertmanager webhook's de-duplication rides on the same topic: each
//! alert a replica takes in (fingerprint, `startsAt`, status) is a record
//! keyed by [`SEEN_PREFIX`] and that key, so that Alertmanager's repeat,
//! or its retry after a lost answer, is a duplicate on whichever replica
//! the Service sends it to. Records older than [`SEEN_FOR`] are passed
//! over when read: Alertmanager repeats an alert well within that.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::server::{RemoteSilences, Silence, SilenceChange};

/// How long a silence record may take to reach the broker.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// How many times a record is offered before the change is given up on.
const PUBLISH_ATTEMPTS: u32 = 5;

/// The key prefix of an Alertmanager alert taken in; no silence id holds
/// a NUL.
const SEEN_PREFIX: &str = "alertmanager\u{0}";

/// How long an alert taken in counts as seen for a replica reading the
/// topic: a day, far beyond Alertmanager's default `repeat_interval` (4h).
const SEEN_FOR: Duration = Duration::from_secs(24 * 3600);

/// Publishes this replica's changes and applies every replica's, until
/// `stop`. `reader` is a consumer configuration outside the group.
pub(super) async fn sync(
    reader: ClientConfig,
    producer: FutureProducer,
    topic: String,
    mut changes: mpsc::Receiver<SilenceChange>,
    remote: RemoteSilences,
    stop: CancellationToken,
) -> Result<(), String> {
    let consumer: StreamConsumer = reader
        .create()
        .map_err(|e| format!("silences topic {topic}: {e}"))?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, 0, Offset::Beginning)
        .map_err(|e| e.to_string())?;
    consumer
        .assign(&assignment)
        .map_err(|e| format!("silences topic {topic}: {e}"))?;
    tracing::info!(%topic, "sharing silences with the other replicas");
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            change = changes.recv() => {
                let Some(change) = change else { break };
                publish(&producer, &topic, change).await;
            }
            message = consumer.recv() => match message {
                Ok(m) => match decode(m.key(), m.payload()) {
                    Some(SilenceChange::AlertSeen(_)) if too_old(m.timestamp().to_millis()) => {}
                    Some(change) => remote.apply(change),
                    None => tracing::warn!(%topic, offset = m.offset(), "unreadable silence record ignored"),
                },
                Err(e) => tracing::warn!(%topic, error = %e, "silences topic: consume error"),
            },
        }
    }
    // What the API changed last still goes out.
    while let Ok(change) = changes.try_recv() {
        publish(&producer, &topic, change).await;
    }
    Ok(())
}

/// Whether an alert-seen record stamped `at` (ms since the epoch) is past
/// [`SEEN_FOR`]; one without a time is kept.
fn too_old(at: Option<i64>) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let limit = i64::try_from(SEEN_FOR.as_millis()).unwrap_or(i64::MAX);
    at.is_some_and(|t| now.saturating_sub(t) > limit)
}

/// A record of the topic, as a change.
fn decode(key: Option<&[u8]>, payload: Option<&[u8]>) -> Option<SilenceChange> {
    let id = std::str::from_utf8(key?).ok()?.to_string();
    if let Some(seen) = id.strip_prefix(SEEN_PREFIX) {
        return payload.map(|_| SilenceChange::AlertSeen(seen.into()));
    }
    match payload {
        None => Some(SilenceChange::Deleted(id)),
        Some(bytes) => {
            let silence: Silence = serde_json::from_slice(bytes).ok()?;
            (silence.id == id).then_some(SilenceChange::Created(silence))
        }
    }
}

async fn publish(producer: &FutureProducer, topic: &str, change: SilenceChange) {
    let (id, payload) = match &change {
        SilenceChange::Created(s) => match serde_json::to_vec(s) {
            Ok(bytes) => (s.id.clone(), Some(bytes)),
            Err(e) => {
                tracing::error!(id = %s.id, error = %e, "silence not shared: cannot encode it");
                return;
            }
        },
        SilenceChange::Deleted(id) => (id.clone(), None),
        SilenceChange::AlertSeen(key) => (format!("{SEEN_PREFIX}{key}"), Some(b"seen".to_vec())),
    };
    for attempt in 1..=PUBLISH_ATTEMPTS {
        let mut record = FutureRecord::<str, [u8]>::to(topic).partition(0).key(&id);
        if let Some(bytes) = &payload {
            record = record.payload(bytes);
        }
        match producer.send(record, PUBLISH_TIMEOUT).await {
            Ok(_) => return,
            Err((e, _)) => {
                tracing::warn!(%id, attempt, error = %e, "silence not yet shared with the other replicas");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
            }
        }
    }
    tracing::error!(%id, "silence not shared with the other replicas after {PUBLISH_ATTEMPTS} attempts: it holds on this replica only");
}

#[cfg(test)]
mod tests {
    use super::*;
    use canaryd_rules::Timestamp;

    #[test]
    fn records_decode_to_changes_and_mismatched_or_garbage_ones_do_not() {
        let silence = Silence {
            id: "abc".into(),
            rule: Some("r".into()),
            subject: None,
            until: Timestamp(10),
            created_by: "me".into(),
            comment: "deploy".into(),
            created_at: Timestamp(0),
        };
        let bytes = serde_json::to_vec(&silence).unwrap();
        assert_eq!(
            decode(Some(b"abc"), Some(&bytes)),
            Some(SilenceChange::Created(silence))
        );
        assert_eq!(
            decode(Some(b"abc"), None),
            Some(SilenceChange::Deleted("abc".into()))
        );
        assert_eq!(decode(Some(b"other"), Some(&bytes)), None);
        // An Alertmanager alert taken in, as `publish` writes it.
        let key = "fp\u{0}2026-03-01T12:00:00Z\u{0}firing";
        assert_eq!(
            decode(
                Some(format!("{SEEN_PREFIX}{key}").as_bytes()),
                Some(b"seen")
            ),
            Some(SilenceChange::AlertSeen(key.into()))
        );
        assert!(too_old(Some(0)) && !too_old(None));
        assert_eq!(decode(Some(b"abc"), Some(b"{")), None);
        assert_eq!(decode(None, None), None);
    }
}
