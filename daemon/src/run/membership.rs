//! Group membership: a replica that owns no partition says so and, when
//! the group could use it, rejoins.
//!
//! After a `kill -9`, the dead member keeps its partitions until its
//! session expires, and some brokers notice that only on the next join.
//! A replica that owns nothing serves no one's events, so after
//! `kafka.rejoin_after` with nothing it looks at the group. With at least
//! as many members as partitions it is a spare and waits. When the broker
//! does not list the group's members (an error, a timeout), the offsets
//! tell: a
//! partition whose input grows while its committed offset has not moved
//! since the last look has no live owner, and the replica rejoins, which
//! makes the broker rebalance; if every partition is kept up with, it is a
//! spare, and does not set off a rebalance every period. Cooperative-sticky
//! assignment keeps the other members' partitions where they are meanwhile.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

use super::kafka::GroupContext;

/// How long a metadata, group or offset request may take.
const ASK: Duration = Duration::from_secs(2);

/// Per partition: its committed offset and the end of its input.
type Offsets = HashMap<(String, i32), (i64, i64)>;

/// What a replica that has owned nothing for a while does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Every partition has a live owner: this replica is a spare.
    Spare,
    /// Some partition may have none: join the group again.
    Rejoin,
    /// Not known yet: look again at the next check.
    Wait,
}

/// The decision, from what the broker said: the group's `members` and the
/// topics' `partitions` (either unknown), and the offsets `before` (the
/// last look) and `now`.
fn verdict(
    members: Option<usize>,
    partitions: Option<usize>,
    before: Option<&Offsets>,
    now: Option<&Offsets>,
) -> Verdict {
    if let (Some(m), Some(p)) = (members, partitions) {
        return if m >= p {
            Verdict::Spare
        } else {
            Verdict::Rejoin
        };
    }
    let (Some(before), Some(now)) = (before, now) else {
        // The offsets cannot be read either: rejoin, as the safe side.
        return if now.is_none() {
            Verdict::Rejoin
        } else {
            Verdict::Wait
        };
    };
    let stuck = now.iter().any(|(partition, &(committed, end))| {
        committed < end
            && before
                .get(partition)
                .is_some_and(|&(was, _)| was == committed)
    });
    if stuck {
        Verdict::Rejoin
    } else {
        Verdict::Spare
    }
}

/// The watchdog over this replica's share of the group.
pub(super) struct Membership {
    topics: Vec<String>,
    group: String,
    rejoin_after: Duration,
    /// Since when the replica has owned nothing.
    idle_since: Option<Instant>,
    /// The offsets at the last look, while idle.
    looked: Option<(Instant, Offsets)>,
}

impl Membership {
    pub(super) fn new(topics: Vec<String>, group: String, rejoin_after: Duration) -> Membership {
        Membership {
            topics,
            group,
            rejoin_after,
            // A replica starts owning nothing.
            idle_since: Some(Instant::now()),
            looked: None,
        }
    }

    /// After a rebalance: how many partitions the replica now owns.
    pub(super) fn owned(&mut self, partitions: usize) {
        match (partitions, self.idle_since) {
            (0, None) => self.idle_since = Some(Instant::now()),
            (0, Some(_)) => {}
            _ => {
                self.idle_since = None;
                self.looked = None;
            }
        }
    }

    /// Once a tick: rejoins if the replica has owned nothing for too long
    /// while the group may have partitions without a live owner. Half way,
    /// it notes the offsets, so that progress can be seen by then.
    pub(super) fn check(&mut self, consumer: &StreamConsumer<GroupContext>) {
        let Some(since) = self.idle_since else {
            return;
        };
        let idle = since.elapsed();
        if idle < self.rejoin_after / 2 {
            return;
        }
        match &self.looked {
            None => {
                self.looked = self.offsets(consumer).map(|o| (Instant::now(), o));
                return;
            }
            // Progress is judged over half a period at least.
            Some((at, _)) if idle < self.rejoin_after || at.elapsed() < self.rejoin_after / 2 => {
                return;
            }
            Some(_) => {}
        }
        let now = self.offsets(consumer);
        // The offsets name every partition; asked again only without them.
        let partitions = match &now {
            Some(offsets) => Some(offsets.len()),
            None => self.partitions(consumer),
        };
        let members = consumer
            .fetch_group_list(Some(&self.group), ASK)
            .ok()
            .and_then(|list| list.groups().first().map(|g| g.members().len()))
            .filter(|&m| m > 0);
        let before = self.looked.as_ref().map(|(_, o)| o);
        let decided = verdict(members, partitions, before, now.as_ref());
        let since_look = self.looked.as_ref().map(|(at, _)| at.elapsed());
        self.looked = now.map(|o| (Instant::now(), o));
        self.idle_since = Some(Instant::now());
        match decided {
            Verdict::Spare => {
                tracing::info!(group = %self.group, ?members, ?partitions, ?idle, "owning no partition: every partition has a live owner, so this replica is a spare");
            }
            Verdict::Wait => {}
            Verdict::Rejoin => {
                tracing::warn!(group = %self.group, ?members, ?partitions, ?idle, ?since_look, "owning no partition while the group may leave some without a live owner: rejoining the group");
                self.looked = None;
                consumer.unsubscribe();
                let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
                if let Err(e) = consumer.subscribe(&topics) {
                    tracing::error!(error = %e, "could not subscribe again; retrying at the next check");
                }
            }
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

    /// Each partition's committed offset (the group's) and end, if the
    /// broker says. Nothing committed counts as the start.
    fn offsets(&self, consumer: &StreamConsumer<GroupContext>) -> Option<Offsets> {
        let mut list = TopicPartitionList::new();
        for topic in &self.topics {
            let metadata = consumer.fetch_metadata(Some(topic), ASK).ok()?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    list.add_partition(t.name(), p.id());
                }
            }
        }
        let committed = consumer.committed_offsets(list, ASK).ok()?;
        let mut out = Offsets::new();
        for e in committed.elements() {
            let (low, high) = consumer
                .fetch_watermarks(e.topic(), e.partition(), ASK)
                .ok()?;
            let at = match e.offset() {
                Offset::Offset(o) => o,
                _ => low,
            };
            out.insert((e.topic().to_string(), e.partition()), (at, high));
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(list: &[(i32, i64, i64)]) -> Offsets {
        list.iter()
            .map(|&(p, committed, end)| (("events".to_string(), p), (committed, end)))
            .collect()
    }

    #[test]
    fn with_the_members_known_a_member_per_partition_makes_a_spare() {
        assert_eq!(verdict(Some(3), Some(3), None, None), Verdict::Spare);
        assert_eq!(verdict(Some(4), Some(3), None, None), Verdict::Spare);
        assert_eq!(verdict(Some(2), Some(3), None, None), Verdict::Rejoin);
    }

    #[test]
    fn without_members_a_partition_whose_input_waits_uncommitted_has_no_owner() {
        let before = offsets(&[(0, 100, 150), (1, 40, 40)]);
        // Partition 0's owner committed since: alive. Partition 1 is idle.
        let kept_up = offsets(&[(0, 160, 170), (1, 40, 40)]);
        assert_eq!(
            verdict(None, Some(2), Some(&before), Some(&kept_up)),
            Verdict::Spare
        );
        // Partition 0 grew, and nobody committed: its owner is gone.
        let stuck = offsets(&[(0, 100, 190), (1, 40, 40)]);
        assert_eq!(
            verdict(None, Some(2), Some(&before), Some(&stuck)),
            Verdict::Rejoin
        );
        // Caught up with its input and nothing new: not stuck.
        let quiet = offsets(&[(0, 150, 150), (1, 40, 40)]);
        let after = offsets(&[(0, 150, 150), (1, 40, 40)]);
        assert_eq!(
            verdict(None, Some(2), Some(&quiet), Some(&after)),
            Verdict::Spare
        );
    }

    #[test]
    fn a_first_look_waits_for_a_second_and_unreadable_offsets_rejoin() {
        let now = offsets(&[(0, 100, 190)]);
        assert_eq!(verdict(None, Some(1), None, Some(&now)), Verdict::Wait);
        assert_eq!(verdict(None, None, Some(&now), None), Verdict::Rejoin);
    }
}
