//! Producing test events and reading canaryd's output topics.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};

/// A producer for the tests.
pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("acks", "all")
        .create()
        .unwrap_or_else(|e| panic!("producer: {e}"))
}

/// Sends one message to a partition and waits for the broker to take it.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    payload: &[u8],
) {
    let record = FutureRecord::to(topic)
        .partition(partition)
        .key(key)
        .payload(payload);
    if let Err((e, _)) = producer.send(record, Duration::from_secs(10)).await {
        panic!("produce to {topic}/{partition}: {e}");
    }
}

/// Sends many messages to one partition, in order, then waits for all.
pub async fn send_all(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    messages: &[(String, Vec<u8>)],
) {
    let mut pending = Vec::with_capacity(messages.len());
    for (key, payload) in messages {
        let record = FutureRecord::to(topic)
            .partition(partition)
            .key(key.as_str())
            .payload(payload.as_slice());
        match producer.send_result(record) {
            Ok(delivery) => pending.push(delivery),
            Err((e, _)) => panic!("enqueue to {topic}/{partition}: {e}"),
        }
        // Keep librdkafka's queue from filling up.
        if pending.len() >= 5_000 {
            for d in pending.drain(..) {
                await_delivery(d).await;
            }
        }
    }
    for d in pending {
        await_delivery(d).await;
    }
}

async fn await_delivery(d: rdkafka::producer::DeliveryFuture) {
    match d.await {
        Ok(Ok(_)) => {}
        Ok(Err((e, _))) => panic!("delivery failed: {e}"),
        Err(_) => panic!("delivery cancelled"),
    }
}

/// The committed offset of `group` on `topic`/`partition`, if any.
pub fn committed(bootstrap: &str, group: &str, topic: &str, partition: i32) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap_or_else(|e| panic!("consumer: {e}"));
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("committed offsets: {e}"));
    got.find_partition(topic, partition)
        .and_then(|e| e.offset().to_raw())
}

/// One consumed record.
#[derive(Clone, Debug)]
pub struct Record {
    /// The partition it was in.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Its headers, as text.
    pub headers: Vec<(String, String)>,
}

impl Record {
    /// The payload as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }

    /// A header's value.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads `topic` from the beginning until `done` says the records so far
/// are enough, or `limit` passes (then returns what it has).
pub fn read_until(
    bootstrap: &str,
    topic: &str,
    limit: Duration,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let group = format!("test-reader-{}-{}", std::process::id(), topic);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap_or_else(|e| panic!("consumer: {e}"));
    consumer
        .subscribe(&[topic])
        .unwrap_or_else(|e| panic!("subscribe {topic}: {e}"));
    let start = Instant::now();
    let mut records = Vec::new();
    while start.elapsed() < limit {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
                if done(&records) {
                    break;
                }
            }
            Some(Err(e)) => eprintln!("test consumer: {e}"),
            None => {
                if done(&records) {
                    break;
                }
            }
        }
    }
    records
}
