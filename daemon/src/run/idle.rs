//! Event time for partitions without messages.
//!
//! A partition that receives nothing has no event time of its own, so a
//! rule's hold would never complete once traffic stops. Its event time
//! therefore moves on at wall-clock speed, but only as far as the broker
//! vouches that nothing was waiting: a consumer that stalls (a broker
//! outage, slow fetches, a paused process) receives nothing either, and
//! moving its event time on would make the whole backlog late when it
//! arrives. So a partition quiet for `kafka.idle_after` is probed: when the
//! broker's end of the partition is no further than the consumer's position,
//! event time may move on to the moment the probe was asked. A probe that
//! fails (the broker is down) or finds a backlog moves nothing.
//!
//! Probes run one batch at a time on a blocking thread with their own
//! client, so the consume loop never waits for the broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use tokio::task::JoinHandle;

/// How long one partition's probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// At most this many partitions per probe, so that a probe during a broker
/// outage (each one timing out) ends soon, and so does shutdown.
const PROBE_BATCH: usize = 32;

/// What the broker said of one partition's end.
#[derive(Debug)]
pub(super) struct Probed {
    pub(super) topic: String,
    pub(super) partition: i32,
    /// When the probe was asked: what it vouches for is up to here.
    pub(super) asked_at: Instant,
    /// The offset the next message will get (the high watermark).
    pub(super) end: KafkaResult<i64>,
}

/// Asks the broker where idle partitions end.
pub(super) struct EndProbe {
    client: Arc<BaseConsumer>,
    running: Option<JoinHandle<Vec<Probed>>>,
}

impl EndProbe {
    /// A probe with its own client, made from `config` (no group is joined).
    pub(super) fn new(config: &ClientConfig) -> KafkaResult<EndProbe> {
        Ok(EndProbe {
            client: Arc::new(config.create()?),
            running: None,
        })
    }

    /// Whether a probe is under way.
    pub(super) fn busy(&self) -> bool {
        self.running.is_some()
    }

    /// The answers of the probe that finished since the last call, if any.
    pub(super) fn finished(&mut self) -> Vec<Probed> {
        let Some(running) = self.running.as_mut() else {
            return Vec::new();
        };
        if !running.is_finished() {
            return Vec::new();
        }
        let joined = running.now_or_never();
        self.running = None;
        match joined {
            Some(Ok(probed)) => probed,
            Some(Err(e)) => {
                tracing::error!(error = %e, "idle-partition probe failed: idle event time waits for the next one");
                Vec::new()
            }
            // Finished, so it is ready; if not, the next tick asks again.
            None => Vec::new(),
        }
    }

    /// Asks for the ends of `partitions` (at most [`PROBE_BATCH`]), unless
    /// a probe is still under way.
    pub(super) fn start(&mut self, mut partitions: Vec<(String, i32)>) {
        if self.busy() || partitions.is_empty() {
            return;
        }
        partitions.truncate(PROBE_BATCH);
        let client = self.client.clone();
        self.running = Some(tokio::task::spawn_blocking(move || {
            partitions
                .into_iter()
                .map(|(topic, partition)| {
                    let asked_at = Instant::now();
                    let end = client
                        .fetch_watermarks(&topic, partition, PROBE_TIMEOUT)
                        .map(|(_, high)| high);
                    Probed {
                        topic,
                        partition,
                        asked_at,
                        end,
                    }
                })
                .collect()
        }));
    }
}
