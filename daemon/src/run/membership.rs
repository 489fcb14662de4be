//! Group membership: a replica that owns no partition says so and, when
//! the group could use it, rejoins.
//!
//! After a `kill -9`, the dead member keeps its partitions until its
//! session expires, and some brokers notice that only on the next join.
//! A replica that owns nothing serves no one's events, so after
//! `kafka.rejoin_after` with nothing it looks at the group: with at least
//! as many members as partitions it is a spare and waits; otherwise (or
//! when the broker cannot say) it leaves and joins again, which makes the
//! broker rebalance. Cooperative-sticky assignment keeps the other
//! members' partitions where they are meanwhile.

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};

use super::kafka::GroupContext;

/// How long a metadata or group request may take.
const ASK: Duration = Duration::from_secs(2);

/// The watchdog over this replica's share of the group.
pub(super) struct Membership {
    topics: Vec<String>,
    group: String,
    rejoin_after: Duration,
    /// Since when the replica has owned nothing.
    idle_since: Option<Instant>,
}

impl Membership {
    pub(super) fn new(topics: Vec<String>, group: String, rejoin_after: Duration) -> Membership {
        Membership {
            topics,
            group,
            rejoin_after,
            // A replica starts owning nothing.
            idle_since: Some(Instant::now()),
        }
    }

    /// After a rebalance: how many partitions the replica now owns.
    pub(super) fn owned(&mut self, partitions: usize) {
        match (partitions, self.idle_since) {
            (0, None) => self.idle_since = Some(Instant::now()),
            (0, Some(_)) => {}
            _ => self.idle_since = None,
        }
    }

    /// Once a tick: rejoins if the replica has owned nothing for too long
    /// while the group may have partitions without a live owner.
    pub(super) fn check(&mut self, consumer: &StreamConsumer<GroupContext>) {
        let Some(since) = self.idle_since else {
            return;
        };
        let idle = since.elapsed();
        if idle < self.rejoin_after {
            return;
        }
        self.idle_since = Some(Instant::now());
        let partitions = self.partitions(consumer);
        let members = consumer
            .fetch_group_list(Some(&self.group), ASK)
            .ok()
            .and_then(|list| list.groups().first().map(|g| g.members().len()));
        if let (Some(p), Some(m)) = (partitions, members)
            && m >= p
        {
            tracing::info!(group = %self.group, members = m, partitions = p, ?idle, "owning no partition: the group has a member for each, so this replica is a spare");
            return;
        }
        tracing::warn!(group = %self.group, ?members, ?partitions, ?idle, "owning no partition while the group may leave some without a live owner: rejoining the group");
        consumer.unsubscribe();
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        if let Err(e) = consumer.subscribe(&topics) {
            tracing::error!(error = %e, "could not subscribe again; retrying at the next check");
        }
    }

    /// The partitions of the subscribed topics, if the broker says.
    fn partitions(&self, consumer: &StreamConsumer<GroupContext>) -> Option<usize> {
        let mut total = 0;
        for topic in &self.topics {
            let metadata = consumer.fetch_metadata(Some(topic), ASK).ok()?;
            total += metadata
                .topics()
                .iter()
                .map(|t| t.partitions().len())
                .sum::<usize>();
        }
        Some(total)
    }
}
