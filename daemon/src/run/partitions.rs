//! The evaluation state of each assigned partition: one engine per
//! partition, created on assignment and dropped on revocation, and the
//! wall-clock bookkeeping that moves an idle partition's event time on
//! (see [`super::idle`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use canaryd_rules::rollout::controller::Controller;
use canaryd_rules::{Engine, Output, Span, Timestamp};

use super::changelog::Restored;
use super::kafka::Assignment;
use crate::config::Loaded;

/// One assigned partition's evaluation state.
pub(super) struct PartitionState {
    pub(super) engine: Engine,
    /// The rollouts of this partition's models, with `rollouts:` plans:
    /// only the partition's owner moves their weights.
    pub(super) rollouts: Option<Controller>,
    /// Wall-clock time of the last message (an event or not), to move an
    /// idle partition's event time forward at wall-clock speed.
    last_message_at: Instant,
    /// The watermark right after the last event.
    watermark_then: Option<Timestamp>,
    /// The latest moment since the last message at which the broker
    /// vouched that this partition had nothing more: idle event time moves
    /// on up to there and no further.
    vouched_at: Option<Instant>,
    /// The offset after the last message processed.
    pub(super) next_offset: Option<i64>,
    /// With a changelog: the offset its last checkpoint reflects.
    pub(super) checkpointed: Option<i64>,
    /// With a changelog: the last checkpoint's generation.
    pub(super) generation: u64,
    /// Input before this offset is already in the restored state.
    pub(super) resume_from: i64,
    /// A checkpoint failed: the next one writes every subject.
    pub(super) rewrite_all: bool,
    /// Rebuilding a lost state: input before this offset was acted on by
    /// an earlier owner, so it is evaluated but its decisions are not
    /// acted on again.
    pub(super) act_from: i64,
    /// Rebuilding: the consumer was sent back before `act_from`; messages
    /// fetched before the seek took effect are ignored until the first
    /// one from before `act_from` arrives.
    pub(super) rewinding: bool,
}

impl PartitionState {
    /// A fresh engine for the rules of `loaded`.
    pub(super) fn new(loaded: &Loaded) -> PartitionState {
        PartitionState {
            engine: Engine::new(
                loaded.rules.clone(),
                &loaded.vocabulary,
                loaded.engine_config(),
            ),
            rollouts: loaded.live_rollout_controller(),
            last_message_at: Instant::now(),
            watermark_then: None,
            vouched_at: None,
            next_offset: None,
            checkpointed: None,
            generation: 0,
            resume_from: 0,
            rewrite_all: false,
            act_from: 0,
            rewinding: false,
        }
    }

    /// The state a changelog checkpoint saved, for the rules of `loaded`.
    pub(super) fn restored(loaded: &Loaded, restored: Restored) -> PartitionState {
        let watermark = restored.engine.watermark;
        let engine = Engine::restore(
            loaded.rules.clone(),
            &loaded.vocabulary,
            loaded.engine_config(),
            restored.engine,
            restored.subjects,
        );
        let mut rollouts = loaded.live_rollout_controller();
        if let Some(c) = rollouts.as_mut() {
            c.restore(restored.rollouts, engine.alerts());
        }
        PartitionState {
            engine,
            rollouts,
            last_message_at: Instant::now(),
            watermark_then: watermark,
            vouched_at: None,
            next_offset: Some(restored.next_offset),
            checkpointed: Some(restored.next_offset),
            generation: restored.generation,
            resume_from: restored.next_offset,
            rewrite_all: false,
            act_from: 0,
            rewinding: false,
        }
    }

    /// Notes that a message of this partition, an event or not, arrived
    /// at wall-clock time `now`: the partition is not idle.
    /// Whether it is still going over input an earlier owner acted on.
    pub(super) fn is_rebuilding(&self) -> bool {
        self.next_offset.is_some_and(|next| next < self.act_from)
    }

    pub(super) fn seen(&mut self, now: Instant) {
        self.last_message_at = now;
        self.vouched_at = None;
    }

    /// Notes that an event was evaluated.
    pub(super) fn evaluated(&mut self) {
        self.watermark_then = self.engine.watermark();
    }

    /// Whether no message arrived for `idle_after` before `now`, and the
    /// broker has not vouched for this partition since `fresh` ago: then
    /// it is worth asking where the partition ends.
    pub(super) fn wants_probe(&self, now: Instant, idle_after: Duration, fresh: Duration) -> bool {
        self.watermark_then.is_some()
            && now.saturating_duration_since(self.last_message_at) >= idle_after
            && self
                .vouched_at
                .is_none_or(|v| now.saturating_duration_since(v) >= fresh)
    }

    /// The broker's answer to a probe asked at `asked_at`: the partition's
    /// next message will have offset `end`. It vouches for the time up to
    /// `asked_at` only if nothing arrived since and nothing was waiting.
    pub(super) fn probed(&mut self, asked_at: Instant, end: i64) {
        let caught_up = self.next_offset.is_some_and(|next| end <= next);
        if caught_up && asked_at >= self.last_message_at {
            self.vouched_at = Some(self.vouched_at.map_or(asked_at, |v| v.max(asked_at)));
        }
    }

    /// Moves event time on to [`PartitionState::idle_event_time`], and
    /// says where to.
    pub(super) fn advance_idle(&mut self, outputs: &mut Vec<Output>) -> Option<Timestamp> {
        let to = self.idle_event_time()?;
        self.engine.advance(to, outputs);
        Some(to)
    }

    /// The watermark after the last event plus the wall-clock time from the
    /// last message to the last moment the broker vouched for.
    fn idle_event_time(&self) -> Option<Timestamp> {
        let (wm, vouched) = (self.watermark_then?, self.vouched_at?);
        let idle = vouched.saturating_duration_since(self.last_message_at);
        Some(wm.plus(Span(i64::try_from(idle.as_millis()).unwrap_or(i64::MAX))))
    }
}

/// Evaluation state by topic, then partition: looked up by `&str` per message.
#[derive(Default)]
pub(super) struct Partitions {
    by_topic: hashbrown::HashMap<String, HashMap<i32, PartitionState>>,
}

impl Partitions {
    /// The state of `partition` of `topic`, made fresh if it has none (a
    /// message that arrived before its assignment was seen).
    pub(super) fn state(
        &mut self,
        topic: &str,
        partition: i32,
        loaded: &Loaded,
    ) -> &mut PartitionState {
        // `entry_ref` allocates the topic's name only the first time.
        self.by_topic
            .entry_ref(topic)
            .or_default()
            .entry(partition)
            .or_insert_with(|| PartitionState::new(loaded))
    }

    /// Applies an assignment change: revoked partitions lose their state,
    /// assigned ones start fresh. Returns the partitions assigned, for a
    /// caller that restores their state.
    pub(super) fn apply(
        &mut self,
        change: Assignment,
        loaded: &Loaded,
        instance: &str,
    ) -> Vec<(String, i32)> {
        match change {
            Assignment::Assigned(list) => {
                tracing::info!(%instance, partitions = ?list, "partitions assigned");
                for (topic, partition) in &list {
                    self.insert(topic, *partition, PartitionState::new(loaded));
                }
                list
            }
            Assignment::Revoked(list) => {
                tracing::info!(%instance, partitions = ?list, "partitions revoked");
                for (topic, partition) in list {
                    if let Some(by_partition) = self.by_topic.get_mut(&topic) {
                        by_partition.remove(&partition);
                    }
                }
                Vec::new()
            }
        }
    }

    /// Sets the state of `partition` of `topic`.
    pub(super) fn insert(&mut self, topic: &str, partition: i32, state: PartitionState) {
        self.by_topic
            .entry_ref(topic)
            .or_default()
            .insert(partition, state);
    }

    /// Every partition with its topic and state.
    pub(super) fn iter_all_mut(
        &mut self,
    ) -> impl Iterator<Item = (&str, i32, &mut PartitionState)> {
        self.by_topic.iter_mut().flat_map(|(topic, by_partition)| {
            by_partition
                .iter_mut()
                .map(move |(partition, state)| (topic.as_str(), *partition, state))
        })
    }

    /// The state of `partition` of `topic`, if owned.
    pub(super) fn get_mut(&mut self, topic: &str, partition: i32) -> Option<&mut PartitionState> {
        self.by_topic.get_mut(topic)?.get_mut(&partition)
    }

    /// How many partitions are owned.
    pub(super) fn len(&self) -> usize {
        self.by_topic.values().map(HashMap::len).sum()
    }

    /// Every partition's engine.
    pub(super) fn engines_mut(&mut self) -> impl Iterator<Item = &mut Engine> {
        self.by_topic
            .values_mut()
            .flat_map(|p| p.values_mut())
            .map(|s| &mut s.engine)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests panic on purpose

    use std::path::Path;

    use canaryd_rules::decode;

    use super::*;
    use crate::config::Config;

    fn loaded() -> Loaded {
        let examples =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/canaryd.yaml");
        Config::parse(&examples, "rules: [canary-alerts.yaml]")
            .unwrap()
            .load()
            .unwrap()
    }

    /// A partition that evaluated one event and stands at offset 10.
    fn state() -> PartitionState {
        let mut state = PartitionState::new(&loaded());
        let event = decode(
            br#"{"type":"metric","ts":"2026-03-01T12:00:00Z","name":"canary_error_rate","value":0.2,"labels":{"model":"m"}}"#,
        )
        .unwrap();
        state.engine.ingest(&event, &mut Vec::new());
        state.evaluated();
        state.next_offset = Some(10);
        state
    }

    const IDLE: Duration = Duration::from_secs(5);
    const FRESH: Duration = Duration::from_secs(1);

    #[test]
    fn a_quiet_partition_is_probed_and_moves_on_only_as_far_as_the_broker_vouches() {
        let mut state = state();
        let t0 = Instant::now();
        state.seen(t0);
        let wm = state.engine.watermark().unwrap();
        assert!(!state.wants_probe(t0 + Duration::from_secs(4), IDLE, FRESH));
        assert!(state.wants_probe(t0 + IDLE, IDLE, FRESH));
        assert_eq!(state.idle_event_time(), None, "nothing vouched yet");

        // A backlog: the broker has offset 10 and more.
        state.probed(t0 + IDLE, 11);
        assert_eq!(
            state.idle_event_time(),
            None,
            "a backlog vouches for nothing"
        );
        // Asked before the last message: stale.
        state.probed(t0 - Duration::from_secs(1), 10);
        assert_eq!(
            state.idle_event_time(),
            None,
            "a probe from before the last message"
        );

        state.probed(t0 + IDLE, 10);
        assert_eq!(state.idle_event_time(), Some(wm.plus(Span::seconds(5))));
        assert!(
            !state.wants_probe(t0 + IDLE, IDLE, FRESH),
            "just vouched for"
        );
        assert!(
            state.wants_probe(t0 + IDLE + FRESH, IDLE, FRESH),
            "asked again each tick"
        );
        // An older answer arriving late takes nothing back.
        state.probed(t0 + Duration::from_secs(3), 10);
        assert_eq!(state.idle_event_time(), Some(wm.plus(Span::seconds(5))));
        state.probed(t0 + Duration::from_secs(8), 10);
        assert_eq!(state.idle_event_time(), Some(wm.plus(Span::seconds(8))));

        // A message: not idle any more, and nothing vouched since it.
        state.seen(t0 + Duration::from_secs(9));
        assert_eq!(state.idle_event_time(), None);
        assert!(!state.wants_probe(t0 + Duration::from_secs(10), IDLE, FRESH));
    }

    #[test]
    fn a_partition_without_an_event_or_a_position_is_never_moved_on() {
        let mut fresh = PartitionState::new(&loaded());
        let t0 = Instant::now();
        fresh.seen(t0);
        assert!(
            !fresh.wants_probe(t0 + IDLE, IDLE, FRESH),
            "no event time to move"
        );

        let mut unplaced = state();
        unplaced.next_offset = None;
        unplaced.seen(t0);
        unplaced.probed(t0 + IDLE, 0);
        assert_eq!(unplaced.idle_event_time(), None, "no position to compare");
    }
}
