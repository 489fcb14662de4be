//! Kafka settings and clients: the consumer group, and the producer used
//! for dead letters and the audit topic.

use std::collections::BTreeMap;
use std::sync::mpsc;

use canaryd_connectors::SecretValue;
use canaryd_rules::Span;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};
use serde::Deserialize;

/// `kafka:` in the config file.
///
/// Producers must key events by subject (the model), so that canary and
/// stable events for one model land in one partition and so meet in one
/// replica of the consumer group.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `kafka-0:9092,kafka-1:9092`.
    pub brokers: String,
    /// The consumer group; replicas with the same id split the partitions.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Topics carrying events.
    pub topics: Vec<String>,
    /// Where malformed messages go, with the reason in headers.
    pub dead_letter_topic: String,
    /// Where transitions and action outcomes are published as JSON.
    #[serde(default)]
    pub audit_topic: Option<String>,
    /// Where each input partition's evaluation state is checkpointed
    /// (compacted; at least as many partitions as the input topics), so
    /// that a restart or a partition move carries on where it stood.
    /// Without it, a new owner starts from an empty state.
    #[serde(default)]
    pub changelog_topic: Option<String>,
    /// Where silences are shared between replicas (compacted, one
    /// partition): a silence made through one replica's API holds on all.
    /// Needs `http:`.
    #[serde(default)]
    pub silences_topic: Option<String>,
    /// How often changed state is written to the changelog. Offsets are
    /// committed only once the state they reflect is in the changelog, so
    /// this is also how much input a new owner replays at most.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: Span,
    /// Extra librdkafka properties, passed through: `security.protocol`,
    /// `sasl.*`, `ssl.*`, ... Secrets must come from `{env: NAME}` or `{file: PATH}`.
    #[serde(default)]
    pub properties: BTreeMap<String, SecretValue>,
    /// `fetch.wait.max.ms`: how long the broker may hold a fetch that has no
    /// data. Kafka answers as soon as data arrives, so there a larger value
    /// (e.g. 100ms) only saves idle requests; brokers that hold every fetch
    /// this long (Tansu) add it to every decision's latency.
    #[serde(default = "default_fetch_wait")]
    pub fetch_wait_max: Span,
    /// `fetch.queue.backoff.ms`: how long to pause fetching once the local
    /// queue is full. librdkafka's default (1 s) starves a consumer that
    /// does real work per message; a short pause keeps the queue fed.
    #[serde(default = "default_fetch_queue_backoff")]
    pub fetch_queue_backoff: Span,
    /// How often stored offsets are committed (and always on shutdown).
    #[serde(default = "default_commit_interval")]
    pub commit_interval: Span,
    /// An event stamped more than this ahead of the replica's clock is
    /// dead-lettered (`future_time`): one wrong clock must not move event
    /// time past now, or every correctly stamped event after it is late.
    #[serde(default = "default_max_future_skew")]
    pub max_future_skew: Span,
    /// A partition without messages this long moves its event time on at
    /// wall-clock speed, so holds complete when traffic stops; but only
    /// once the broker confirms nothing is waiting, so a stalled consumer's
    /// backlog is not made late.
    #[serde(default = "default_idle_after")]
    pub idle_after: Span,
    /// How long the group waits for a silent replica before moving its partitions.
    #[serde(default = "default_session_timeout")]
    pub session_timeout: Span,
    /// Static group membership: the replica joins with its `--instance`
    /// name as `group.instance.id`, so a replica restarted under the same
    /// name (a crashed container in its pod, a StatefulSet) takes its
    /// partitions back at once instead of waiting out the old session.
    /// Names must be unique per replica. A static member that stops does
    /// not leave the group: its partitions wait for `session_timeout`.
    #[serde(default)]
    pub static_membership: bool,
    /// `partition.assignment.strategy`. `cooperative-sticky` moves only the
    /// partitions that must move in a rebalance: the others keep their
    /// state in memory and are not restored; use it on Apache Kafka. The
    /// default, eager `range,roundrobin`, revokes every partition at every
    /// rebalance (with a changelog each one restores its state from it)
    /// and works on every broker: on Tansu 0.6.0, cooperative members
    /// that survive a `kill -9` of another are left with no partition. A
    /// group cannot mix the two: switch every replica at once.
    #[serde(default = "default_assignment_strategy")]
    pub assignment_strategy: String,
    /// A replica that owns no partition for this long, while the group may
    /// have fewer members than partitions, rejoins the group.
    #[serde(default = "default_rejoin_after")]
    pub rejoin_after: Span,
}

fn default_group() -> String {
    "canaryd".into()
}
fn default_fetch_wait() -> Span {
    Span(2)
}
fn default_fetch_queue_backoff() -> Span {
    Span(5)
}
fn default_checkpoint_interval() -> Span {
    Span::seconds(1)
}
fn default_commit_interval() -> Span {
    Span::seconds(1)
}
fn default_session_timeout() -> Span {
    Span::seconds(10)
}
fn default_max_future_skew() -> Span {
    Span::seconds(60)
}
fn default_idle_after() -> Span {
    Span::seconds(5)
}
fn default_rejoin_after() -> Span {
    Span::seconds(30)
}
fn default_assignment_strategy() -> String {
    "range,roundrobin".into()
}

/// The assignors librdkafka offers.
const ASSIGNORS: [&str; 3] = ["range", "roundrobin", "cooperative-sticky"];

/// Properties canaryd sets itself, and the setting that controls each.
const MANAGED: [(&str, &str); 11] = [
    ("bootstrap.servers", "kafka.brokers"),
    ("group.id", "kafka.group_id"),
    (
        "enable.auto.commit",
        "nothing: canaryd commits only processed events",
    ),
    (
        "enable.auto.offset.store",
        "nothing: canaryd commits only processed events",
    ),
    ("auto.commit.interval.ms", "kafka.commit_interval"),
    ("fetch.wait.max.ms", "kafka.fetch_wait_max"),
    ("fetch.queue.backoff.ms", "kafka.fetch_queue_backoff"),
    ("session.timeout.ms", "kafka.session_timeout"),
    (
        "group.instance.id",
        "kafka.static_membership and --instance",
    ),
    ("partition.assignment.strategy", "kafka.assignment_strategy"),
    ("enable.partition.eof", "nothing"),
];

/// Whether a client property holds a secret and so must not be inline.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "private.key", "key.pem", "token"]
        .iter()
        .any(|s| k.contains(s))
}

impl KafkaConfig {
    /// Every problem with these settings, for `canaryd check`.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.brokers.trim().is_empty() {
            out.push("kafka.brokers is empty".to_string());
        }
        if self.topics.is_empty() {
            out.push("kafka.topics must list at least one topic".to_string());
        }
        if self.topics.contains(&self.dead_letter_topic) {
            out.push("kafka.dead_letter_topic must not be one of kafka.topics".to_string());
        }
        if let Some(changelog) = &self.changelog_topic {
            if self.topics.contains(changelog) || *changelog == self.dead_letter_topic {
                out.push(
                    "kafka.changelog_topic must be a topic of its own, not an input or the dead-letter topic"
                        .to_string(),
                );
            }
            if self.checkpoint_interval.millis() <= 0 {
                out.push("kafka.checkpoint_interval must be longer than 0s".to_string());
            }
        }
        if let Some(silences) = &self.silences_topic
            && (self.topics.contains(silences)
                || *silences == self.dead_letter_topic
                || self.changelog_topic.as_ref() == Some(silences))
        {
            out.push(
                "kafka.silences_topic must be a topic of its own, not an input, the dead-letter or the changelog topic"
                    .to_string(),
            );
        }
        let assignors: Vec<&str> = self.assignment_strategy.split(',').map(str::trim).collect();
        if let Some(bad) = assignors.iter().find(|a| !ASSIGNORS.contains(a)) {
            out.push(format!(
                "kafka.assignment_strategy: unknown assignor {bad:?}; use {}",
                ASSIGNORS.join(", ")
            ));
        } else if assignors.len() > 1 && assignors.contains(&"cooperative-sticky") {
            out.push(
                "kafka.assignment_strategy: cooperative-sticky cannot be combined with eager assignors"
                    .to_string(),
            );
        }
        if self.max_future_skew < Span::ZERO {
            out.push("kafka.max_future_skew must not be negative".to_string());
        }
        if self.idle_after <= Span::ZERO {
            out.push("kafka.idle_after must be positive".to_string());
        }
        if self.rejoin_after < self.session_timeout {
            out.push(format!(
                "kafka.rejoin_after ({}) must be at least kafka.session_timeout ({}): a rebalance takes that long",
                self.rejoin_after, self.session_timeout
            ));
        }
        for (key, value) in &self.properties {
            if let Some((_, instead)) = MANAGED.iter().find(|(k, _)| k == key) {
                out.push(format!(
                    "kafka.properties.{key} is set by canaryd; use {instead}"
                ));
            } else if is_secret_key(key) && value.is_inline() {
                out.push(format!(
                    "kafka.properties.{key} looks like a secret: give it as {{env: NAME}} or {{file: PATH}}, not inline"
                ));
            }
        }
        out
    }

    /// Properties shared by the consumer and the producer, secrets resolved.
    fn common(&self) -> Result<ClientConfig, String> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.properties {
            let resolved = value
                .resolve()
                .map_err(|e| format!("kafka.properties.{key}: {e}"))?;
            config.set(key, resolved);
        }
        Ok(config)
    }

    /// The consumer's configuration: offsets are stored by canaryd after an
    /// event is processed, then committed in the background and on shutdown.
    /// `instance` is the replica's name, for static membership.
    pub fn consumer_config(&self, instance: &str) -> Result<ClientConfig, String> {
        let mut config = self.common()?;
        config.set("partition.assignment.strategy", &self.assignment_strategy);
        if self.static_membership {
            config.set("group.instance.id", instance);
        }
        config
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                self.commit_interval.millis().max(1).to_string(),
            )
            .set(
                "fetch.wait.max.ms",
                self.fetch_wait_max.millis().max(0).to_string(),
            )
            .set(
                "fetch.queue.backoff.ms",
                self.fetch_queue_backoff.millis().max(0).to_string(),
            )
            .set(
                "session.timeout.ms",
                self.session_timeout.millis().max(1).to_string(),
            )
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        Ok(config)
    }

    /// A consumer outside the group, for reading a partition of the
    /// changelog or the silences topic from its beginning.
    pub fn reader_config(&self) -> Result<ClientConfig, String> {
        let mut config = self.common()?;
        config
            .set("group.id", format!("{}-reader", self.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "fetch.wait.max.ms",
                self.fetch_wait_max.millis().max(0).to_string(),
            )
            .set("enable.partition.eof", "false");
        Ok(config)
    }

    /// The producer's configuration: acknowledged by all replicas.
    pub fn producer_config(&self) -> Result<ClientConfig, String> {
        let mut config = self.common()?;
        config
            .set("acks", "all")
            .set("linger.ms", "1")
            // A checkpoint of every subject (after a failed one, or at a
            // first start) is one record each: 100k subjects must fit.
            .set("queue.buffering.max.messages", "1000000")
            .set("message.timeout.ms", "30000");
        Ok(config)
    }
}

/// A partition assignment change, sent from librdkafka's callback to the
/// consume loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Assignment {
    /// These partitions are now ours: start their state fresh.
    Assigned(Vec<(String, i32)>),
    /// These partitions are no longer ours: drop their state.
    Revoked(Vec<(String, i32)>),
}

/// Consumer context that reports rebalances to the consume loop.
pub struct GroupContext {
    /// Where assignment changes go; the loop drains it before each message.
    pub events: mpsc::Sender<Assignment>,
    /// Where consumer lag is reported, from librdkafka's statistics.
    pub shared: Option<std::sync::Arc<crate::shared::Shared>>,
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(shared) = &self.shared else { return };
        for (topic, t) in &statistics.topics {
            for (&partition, p) in &t.partitions {
                // -1 is the internal UA partition and unassigned ones.
                if partition >= 0 && p.consumer_lag >= 0 {
                    shared
                        .metrics
                        .set_consumer_lag(topic, partition, p.consumer_lag);
                }
            }
        }
    }
}

fn list(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Commit what was processed before the partitions move on.
            use rdkafka::consumer::Consumer;
            if let Err(e) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
                tracing::debug!(error = %e, "no offsets to commit before revocation");
            }
            // The loop is gone only during shutdown, when state is dropped anyway.
            let _ = self.events.send(Assignment::Revoked(list(tpl)));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let _ = self.events.send(Assignment::Assigned(list(tpl)));
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "consumer group rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(extra: &str) -> KafkaConfig {
        serde_yaml_ng::from_str(&format!(
            "brokers: k:9092\ntopics: [events]\ndead_letter_topic: dlq\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn membership_settings_are_checked_and_set() {
        let eager = kafka("");
        assert!(eager.problems().is_empty(), "{:?}", eager.problems());
        let config = eager.consumer_config("pod-0").unwrap();
        assert_eq!(
            config.get("partition.assignment.strategy"),
            Some("range,roundrobin")
        );
        assert_eq!(config.get("group.instance.id"), None);

        let sticky = kafka("assignment_strategy: cooperative-sticky\nstatic_membership: true");
        assert!(sticky.problems().is_empty(), "{:?}", sticky.problems());
        let config = sticky.consumer_config("pod-0").unwrap();
        assert_eq!(
            config.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(config.get("group.instance.id"), Some("pod-0"));

        let problems = |extra: &str| kafka(extra).problems().join("\n");
        assert!(problems("assignment_strategy: sticky").contains("unknown assignor \"sticky\""));
        assert!(
            problems("assignment_strategy: range,cooperative-sticky")
                .contains("cannot be combined")
        );
        assert!(problems("rejoin_after: 5s").contains("at least kafka.session_timeout"));
        assert!(
            problems("properties: {partition.assignment.strategy: range}")
                .contains("use kafka.assignment_strategy")
        );
    }

    #[test]
    fn secret_keys_are_recognised() {
        assert!(is_secret_key("sasl.password"));
        assert!(is_secret_key("ssl.key.password"));
        assert!(is_secret_key("sasl.oauthbearer.client.secret"));
        assert!(!is_secret_key("security.protocol"));
        assert!(!is_secret_key("sasl.username"));
    }
}
