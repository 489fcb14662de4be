//! The evaluation state of each assigned partition: one engine per
//! partition, created on assignment and dropped on revocation, and the
//! wall-clock bookkeeping that moves an idle partition's event time on.

use std::collections::HashMap;
use std::time::Instant;

use canaryd_rules::{Engine, Output, Timestamp};

use super::changelog::Restored;
use super::kafka::Assignment;
use crate::config::Loaded;

/// One assigned partition's evaluation state.
pub(super) struct PartitionState {
    pub(super) engine: Engine,
    /// Wall-clock time of the last event, to move an idle partition's event
    /// time forward at wall-clock speed.
    last_event_at: Instant,
    /// The watermark right after that event.
    watermark_then: Option<Timestamp>,
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
            last_event_at: Instant::now(),
            watermark_then: None,
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
        PartitionState {
            engine,
            last_event_at: Instant::now(),
            watermark_then: watermark,
            next_offset: Some(restored.next_offset),
            checkpointed: Some(restored.next_offset),
            generation: restored.generation,
            resume_from: restored.next_offset,
            rewrite_all: false,
            act_from: 0,
            rewinding: false,
        }
    }

    /// Notes that an event was evaluated at wall-clock time `now`.
    pub(super) fn evaluated(&mut self, now: Instant) {
        self.last_event_at = now;
        self.watermark_then = self.engine.watermark();
    }

    /// Moves event time on by the wall-clock time since the last event.
    pub(super) fn advance_idle(&mut self, outputs: &mut Vec<Output>) {
        if let Some(wm) = self.watermark_then {
            let idle = i64::try_from(self.last_event_at.elapsed().as_millis()).unwrap_or(i64::MAX);
            self.engine
                .advance(Timestamp(wm.0.saturating_add(idle)), outputs);
        }
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
