//! The changelog: each input partition's evaluation state, checkpointed to
//! a compacted Kafka topic, and restored by whichever replica owns the
//! partition next. The Kafka Streams model: a state store and its
//! changelog, with the input offset committed only once the state that
//! reflects it is in the changelog.
//!
//! Input partition `p` of topic `t` writes to changelog partition `p`:
//!
//! | key | value (CBOR) |
//! |---|---|
//! | `s` 0 `t` 0 `p` 0 subject | a [`SubjectState`] and the checkpoint generation that wrote it |
//! | `m` 0 `t` 0 `p` | the marker: generation, next input offset, the engine's clocks, the outbox, the rollouts |
//!
//! A checkpoint writes the subjects changed since the last one, then its
//! marker, which carries the partition's outbox: the actions decided
//! before the offset that a receiver has not finished. Once the broker has
//! acknowledged all of them, the input offset in the marker may be
//! committed. A restore reads the changelog partition
//! to its end, takes the latest marker and, for each subject, the latest
//! record of that generation or older (records of an unfinished
//! checkpoint are newer and ignored), and skips input before the marker's
//! offset. Compaction keeps the latest record per key; it must not remove
//! a record that is still the newest of its key below the last marker, so
//! the topic wants `min.compaction.lag.ms` well above the checkpoint
//! interval (see the README).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use canaryd_rules::{EngineCheckpoint, SubjectState};

use crate::act::outbox::Pending;
use canaryd_rules::rollout::Rollout;
use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

/// Version of the record format, in every value.
const FORMAT: u32 = 1;

/// How long a restore may read before it gives up and starts empty.
const RESTORE_LIMIT: Duration = Duration::from_secs(60);

/// One changelog value.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind")]
enum Value {
    /// A subject's state as of checkpoint `generation`.
    Subject {
        format: u32,
        generation: u64,
        state: SubjectState,
    },
    /// Checkpoint `generation` is complete: input before `next_offset` is
    /// in the state, and its actions are done or in `outbox`.
    Marker {
        format: u32,
        generation: u64,
        next_offset: i64,
        engine: EngineCheckpoint,
        #[serde(default)]
        outbox: Vec<Pending>,
        /// The partition's rollouts, by model.
        #[serde(default)]
        rollouts: Vec<(String, Rollout)>,
    },
}

fn marker_key(topic: &str, partition: i32) -> String {
    format!("m\0{topic}\0{partition}")
}

fn subject_key(topic: &str, partition: i32, state: &SubjectState) -> String {
    let mut key = format!("s\0{topic}\0{partition}\0");
    for (i, l) in state.group_by.iter().enumerate() {
        if i > 0 {
            key.push('\u{1}');
        }
        key.push_str(l);
        key.push('=');
        key.push_str(state.labels.get(l).map(String::as_str).unwrap_or(""));
    }
    key
}

fn encode(value: &Value) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    ciborium::into_writer(value, &mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// One checkpoint of a partition.
pub(super) struct Checkpoint {
    pub(super) generation: u64,
    /// The first input offset the state does not reflect.
    pub(super) next_offset: i64,
    pub(super) engine: EngineCheckpoint,
    /// The subjects changed since the last checkpoint (or all of them).
    pub(super) subjects: Vec<SubjectState>,
    pub(super) outbox: Vec<Pending>,
    pub(super) rollouts: Vec<(String, Rollout)>,
}

/// A checkpoint on its way to the broker.
struct InFlight {
    topic: String,
    partition: i32,
    next_offset: i64,
    deliveries: Vec<DeliveryFuture>,
}

/// What a finished checkpoint allows.
pub(super) enum Acked {
    /// Input before `next_offset` may be committed.
    Commit {
        topic: String,
        partition: i32,
        next_offset: i64,
    },
    /// A record was not taken: the next checkpoint of this partition must
    /// write every subject again.
    Failed {
        topic: String,
        partition: i32,
        why: String,
    },
}

/// The writing side.
pub(super) struct Changelog {
    producer: FutureProducer,
    topic: String,
    in_flight: Vec<InFlight>,
}

/// What a partition's changelog held.
pub(super) struct Restored {
    /// The generation of the checkpoint restored.
    pub(super) generation: u64,
    /// The first input offset the state does not reflect.
    pub(super) next_offset: i64,
    pub(super) engine: EngineCheckpoint,
    pub(super) subjects: Vec<SubjectState>,
    /// Actions decided before `next_offset` that were not finished.
    pub(super) outbox: Vec<Pending>,
    /// The rollouts of the partition's models, by model.
    pub(super) rollouts: Vec<(String, Rollout)>,
}

impl Changelog {
    pub(super) fn new(producer: FutureProducer, topic: String) -> Changelog {
        Changelog {
            producer,
            topic,
            in_flight: Vec::new(),
        }
    }

    /// The changelog topic.
    pub(super) fn topic(&self) -> &str {
        &self.topic
    }

    /// Starts writing `checkpoint` of `topic`/`partition`: the subjects
    /// that changed, then the marker. Never waits for the broker;
    /// [`Changelog::acknowledged`] says when it is done.
    pub(super) fn write(
        &mut self,
        topic: &str,
        partition: i32,
        checkpoint: Checkpoint,
    ) -> Result<(), String> {
        let Checkpoint {
            generation,
            next_offset,
            engine,
            subjects,
            outbox,
            rollouts,
        } = checkpoint;
        let mut deliveries = Vec::with_capacity(subjects.len() + 1);
        for state in subjects {
            let key = subject_key(topic, partition, &state);
            let value = encode(&Value::Subject {
                format: FORMAT,
                generation,
                state,
            })?;
            deliveries.push(self.send(partition, &key, &value)?);
        }
        let value = encode(&Value::Marker {
            format: FORMAT,
            generation,
            next_offset,
            engine,
            outbox,
            rollouts,
        })?;
        deliveries.push(self.send(partition, &marker_key(topic, partition), &value)?);
        self.in_flight.push(InFlight {
            topic: topic.to_string(),
            partition,
            next_offset,
            deliveries,
        });
        Ok(())
    }

    fn send(&self, partition: i32, key: &str, value: &[u8]) -> Result<DeliveryFuture, String> {
        let record = FutureRecord::to(&self.topic)
            .partition(partition)
            .key(key)
            .payload(value);
        self.producer
            .send_result(record)
            .map_err(|(e, _)| format!("changelog {}: {e}", self.topic))
    }

    /// The checkpoints finished since the last call, oldest first. A
    /// checkpoint is committed only after every earlier one of its
    /// partition: a later marker relies on the subjects the earlier ones
    /// wrote. Once one fails, the later ones of its partition fail with it.
    pub(super) fn acknowledged(&mut self) -> Vec<Acked> {
        let mut done = Vec::new();
        let mut still = Vec::with_capacity(self.in_flight.len());
        // Partitions with an earlier checkpoint still on its way, or failed.
        let mut waiting: Vec<(String, i32)> = Vec::new();
        let mut failed_parts: Vec<(String, i32, String)> = Vec::new();
        for mut checkpoint in std::mem::take(&mut self.in_flight) {
            let mut failed = None;
            checkpoint
                .deliveries
                .retain_mut(|d| match d.now_or_never() {
                    None => true,
                    Some(Ok(Ok(_))) => false,
                    Some(Ok(Err((e, _)))) => {
                        failed.get_or_insert(e.to_string());
                        false
                    }
                    Some(Err(_)) => {
                        failed.get_or_insert("the producer dropped the record".to_string());
                        false
                    }
                });
            let part = (checkpoint.topic.clone(), checkpoint.partition);
            let earlier_failed = failed_parts
                .iter()
                .find(|(t, p, _)| *t == part.0 && *p == part.1)
                .map(|(_, _, why)| why.clone());
            if let Some(why) = failed.or(earlier_failed) {
                failed_parts.push((part.0.clone(), part.1, why.clone()));
                done.push(Acked::Failed {
                    topic: checkpoint.topic,
                    partition: checkpoint.partition,
                    why,
                });
            } else if checkpoint.deliveries.is_empty() && !waiting.contains(&part) {
                done.push(Acked::Commit {
                    topic: checkpoint.topic,
                    partition: checkpoint.partition,
                    next_offset: checkpoint.next_offset,
                });
            } else {
                waiting.push(part);
                still.push(checkpoint);
            }
        }
        self.in_flight = still;
        done
    }

    /// Whether checkpoints are still on their way.
    pub(super) fn busy(&self) -> bool {
        !self.in_flight.is_empty()
    }
}

/// Changelog records by key, decoded (`None`: unreadable).
type Decoded = Vec<(Vec<u8>, Option<Value>)>;

/// Decodes `records` on every core, in their order.
fn decode_all(records: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Decoded, String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = records.len().div_ceil(threads).max(1);
    let decode = |part: &mut [(Vec<u8>, Vec<u8>)]| -> Decoded {
        part.iter_mut()
            .map(|(key, payload)| {
                let value = ciborium::from_reader::<Value, _>(payload.as_slice()).ok();
                (std::mem::take(key), value)
            })
            .collect()
    };
    let mut records = records;
    if threads == 1 || records.len() < 1_000 {
        return Ok(decode(&mut records));
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = records
            .chunks_mut(chunk)
            .map(|part| scope.spawn(move || decode(part)))
            .collect();
        let mut all = Vec::new();
        for handle in handles {
            // A panicking decoder is a bug: the restore fails, and says so.
            all.extend(
                handle
                    .join()
                    .map_err(|_| "a changelog decoder panicked".to_string())?,
            );
        }
        Ok(all)
    })
}

/// Refuses a changelog with fewer partitions than an input topic: input
/// partition `p` checkpoints to changelog partition `p`, so the others
/// could never be checkpointed, and their offsets never committed. Passes
/// when the broker cannot tell (unreachable, topic not created yet): the
/// restore then says what is wrong. Blocking.
pub(super) fn check_size(
    config: &ClientConfig,
    inputs: &[String],
    changelog: &str,
) -> Result<(), String> {
    let client: BaseConsumer = config.create().map_err(|e| e.to_string())?;
    // One request for every topic: start-up waits at most this once.
    let Ok(metadata) = client.fetch_metadata(None, Duration::from_secs(5)) else {
        tracing::warn!(
            changelog,
            "the broker did not answer for the changelog topic's partitions; it is not checked"
        );
        return Ok(());
    };
    let partitions = |topic: &str| -> Option<usize> {
        let found = metadata.topics().iter().find(|t| t.name() == topic)?;
        let count = found.partitions().len();
        (found.error().is_none() && count > 0).then_some(count)
    };
    let Some(have) = partitions(changelog) else {
        tracing::warn!(
            changelog,
            "the broker does not report the changelog topic's partitions; create it before the input is consumed"
        );
        return Ok(());
    };
    for input in inputs {
        if let Some(need) = partitions(input).filter(|&need| need > have) {
            return Err(format!(
                "kafka.changelog_topic {changelog:?} has {have} partition(s), input topic {input:?} has {need}: \
                 input partition p keeps its state in changelog partition p, so partitions {have} to {} \
                 could never be checkpointed nor their offsets committed; give the changelog {need} partitions",
                need - 1
            ));
        }
    }
    Ok(())
}

/// Reads changelog partition `partition` of `changelog` to its end and
/// returns the latest complete checkpoint of input `topic`/`partition`;
/// `Ok(None)` when it has none. Blocking: run it off the async threads.
pub(super) fn restore(
    config: &ClientConfig,
    changelog: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<Restored>, String> {
    let started = Instant::now();
    let reader: BaseConsumer = config.create().map_err(|e| e.to_string())?;
    let (low, high) = reader
        .fetch_watermarks(changelog, partition, Duration::from_secs(10))
        .map_err(|e| format!("changelog {changelog} partition {partition}: {e}"))?;
    if high <= low {
        tracing::debug!(changelog, partition, low, high, "changelog partition empty");
        return Ok(None);
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(changelog, partition, Offset::Beginning)
        .map_err(|e| e.to_string())?;
    reader.assign(&assignment).map_err(|e| e.to_string())?;
    let marker = marker_key(topic, partition);
    let prefix = format!("s\0{topic}\0{partition}\0");
    // Read first, decode after, in parallel: decoding is most of the cost.
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut bytes = 0usize;
    let mut position = low;
    let mut end = high;
    loop {
        while position < end {
            if started.elapsed() > RESTORE_LIMIT {
                return Err(format!(
                    "changelog {changelog} partition {partition}: not read to its end within {RESTORE_LIMIT:?}"
                ));
            }
            let Some(message) = reader.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.map_err(|e| e.to_string())?;
            position = message.offset() + 1;
            let (Some(key), Some(payload)) = (message.key(), message.payload()) else {
                continue;
            };
            if key != marker.as_bytes() && !key.starts_with(prefix.as_bytes()) {
                continue; // another input topic's state
            }
            bytes += payload.len();
            records.push((key.to_vec(), payload.to_vec()));
        }
        // The end read at the start can lag what the broker acknowledged
        // (seen on Tansu): read on while it moves.
        let (_, now_high) = reader
            .fetch_watermarks(changelog, partition, Duration::from_secs(10))
            .map_err(|e| format!("changelog {changelog} partition {partition}: {e}"))?;
        if now_high <= end {
            break;
        }
        end = now_high;
    }
    let read = started.elapsed();
    let decoded = decode_all(records)
        .map_err(|e| format!("changelog {changelog} partition {partition}: {e}"))?;
    type Latest = (
        u64,
        i64,
        EngineCheckpoint,
        Vec<Pending>,
        Vec<(String, Rollout)>,
    );
    let mut latest: Option<Latest> = None;
    // Every generation of each subject seen, oldest first (compaction
    // leaves few).
    let mut subjects: HashMap<Vec<u8>, Vec<(u64, SubjectState)>> = HashMap::new();
    let mut undecodable = 0u64;
    for (key, value) in decoded {
        match value {
            Some(Value::Marker {
                format: FORMAT,
                generation,
                next_offset,
                engine,
                outbox,
                rollouts,
            }) => {
                if latest.as_ref().is_none_or(|(g, ..)| generation >= *g) {
                    latest = Some((generation, next_offset, engine, outbox, rollouts));
                }
            }
            Some(Value::Subject {
                format: FORMAT,
                generation,
                state,
            }) => subjects.entry(key).or_default().push((generation, state)),
            Some(_) | None => undecodable += 1,
        }
    }
    if undecodable > 0 {
        return Err(format!(
            "changelog {changelog} partition {partition}: {undecodable} records could not be read"
        ));
    }
    tracing::debug!(changelog, partition, low, end, subjects = subjects.len(), bytes, ?read, marker = latest.is_some(), took = ?started.elapsed(), "changelog read");
    let Some((generation, next_offset, engine, outbox, rollouts)) = latest else {
        return Ok(None);
    };
    let subjects = subjects
        .into_values()
        .filter_map(|versions| {
            versions
                .into_iter()
                .filter(|(g, _)| *g <= generation)
                .max_by_key(|(g, _)| *g)
                .map(|(_, s)| s)
        })
        .collect();
    Ok(Some(Restored {
        generation,
        next_offset,
        engine,
        subjects,
        outbox,
        rollouts,
    }))
}
