//! Silences shared by every replica through a compacted topic: one record
//! per silence, keyed by its id, the silence as JSON; a deletion is a
//! tombstone. Each replica publishes what its API creates and deletes, and
//! reads the topic from its beginning, so a new replica knows every silence
//! still in force and a silence made on one replica is honoured by all.
//! Expiry needs no record: every replica drops a silence at its `until`.
//!
//! A replica started with `--advertise` announces its HTTP address there
//! too (a record keyed by [`REPLICA_PREFIX`] and the address, renewed every
//! [`HEARTBEAT`], a tombstone when it stops), so that a replica asked about
//! a rollout it does not carry can ask the others.
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

/// The key prefix of a replica's announcement.
const REPLICA_PREFIX: &str = "replica\u{0}";

/// How often a replica renews its announcement; the others forget one not
/// renewed for three of these.
const HEARTBEAT: Duration = Duration::from_secs(30);

/// This replica, as it announces itself.
#[derive(Clone, Debug)]
pub(super) struct Me {
    /// Its HTTP server's address, `host:port`.
    pub address: String,
    /// Its name, for operators reading the topic.
    pub instance: String,
}

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
    me: Option<Me>,
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
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            // The first tick is at once: announced at start.
            _ = heartbeat.tick(), if me.is_some() => {
                if let Some(me) = &me {
                    publish_replica(&producer, &topic, me, true).await;
                }
            }
            change = changes.recv() => {
                let Some(change) = change else { break };
                publish(&producer, &topic, change).await;
            }
            message = consumer.recv() => match message {
                Ok(m) => match decode(m.key(), m.payload()) {
                    Some(SilenceChange::AlertSeen(_)) if too_old(m.timestamp().to_millis()) => {}
                    Some(SilenceChange::Replica { address, .. })
                        if me.as_ref().is_some_and(|me| me.address == address) => {}
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
    if let Some(me) = &me {
        publish_replica(&producer, &topic, me, false).await;
    }
    Ok(())
}

/// Announces this replica (`here`) or says it stopped.
async fn publish_replica(producer: &FutureProducer, topic: &str, me: &Me, here: bool) {
    let key = format!("{REPLICA_PREFIX}{}", me.address);
    let payload = here.then(|| {
        serde_json::json!({
            "address": me.address,
            "instance": me.instance,
            "seen": crate::clock::wall_clock().millis(),
        })
        .to_string()
    });
    let mut record = FutureRecord::<str, str>::to(topic).partition(0).key(&key);
    if let Some(p) = &payload {
        record = record.payload(p);
    }
    if let Err((e, _)) = producer.send(record, PUBLISH_TIMEOUT).await {
        tracing::warn!(address = %me.address, error = %e, "this replica's address not announced to the others");
    }
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
    if let Some(address) = id.strip_prefix(REPLICA_PREFIX) {
        let seen = match payload {
            None => None,
            Some(bytes) => {
                let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
                (v["address"] == address).then_some(())?;
                Some(canaryd_rules::Timestamp(v["seen"].as_i64()?))
            }
        };
        return Some(SilenceChange::Replica {
            address: address.to_string(),
            seen,
        });
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
        // Announced by `publish_replica` only, never asked for by the API.
        SilenceChange::Replica { .. } => return,
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
        // A replica's announcement, and its tombstone.
        let key = format!("{REPLICA_PREFIX}10.0.0.1:9464");
        assert_eq!(
            decode(
                Some(key.as_bytes()),
                Some(br#"{"address":"10.0.0.1:9464","instance":"a","seen":5}"#)
            ),
            Some(SilenceChange::Replica {
                address: "10.0.0.1:9464".into(),
                seen: Some(Timestamp(5))
            })
        );
        assert_eq!(
            decode(Some(key.as_bytes()), None),
            Some(SilenceChange::Replica {
                address: "10.0.0.1:9464".into(),
                seen: None
            })
        );
        assert_eq!(
            decode(
                Some(key.as_bytes()),
                Some(br#"{"address":"elsewhere","seen":5}"#)
            ),
            None
        );
        assert_eq!(decode(Some(b"abc"), Some(b"{")), None);
        assert_eq!(decode(None, None), None);
    }
}
