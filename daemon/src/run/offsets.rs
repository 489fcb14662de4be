//! The commit stage: the highest processed offset per partition, handed to
//! librdkafka in batches. An offset is stored only after its event was
//! evaluated and its actions accepted (or it was dead-lettered), so a crash
//! redelivers, never skips.

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;

use super::kafka::GroupContext;

/// Processed offsets not yet stored.
#[derive(Default)]
pub(super) struct Offsets {
    offsets: Vec<(String, i32, i64)>,
}

impl Offsets {
    /// Records that `message` has been evaluated and its actions accepted.
    pub(super) fn note(&mut self, message: &BorrowedMessage<'_>) {
        self.note_offset(message.topic(), message.partition(), message.offset());
    }

    /// Records that the message at `offset` is processed (with a
    /// changelog: its state is checkpointed).
    pub(super) fn note_offset(&mut self, topic: &str, partition: i32, offset: i64) {
        match self
            .offsets
            .iter_mut()
            .find(|(t, p, _)| *p == partition && t == topic)
        {
            Some(entry) => entry.2 = entry.2.max(offset),
            None => self.offsets.push((topic.to_string(), partition, offset)),
        }
    }

    /// Stores the offsets after the processed messages; the background
    /// commit (and the one on shutdown) sends them to the broker. Batched:
    /// storing per message costs a round trip to librdkafka's thread.
    pub(super) fn store(&mut self, consumer: &StreamConsumer<GroupContext>) {
        if self.offsets.is_empty() {
            return;
        }
        let mut list = rdkafka::TopicPartitionList::with_capacity(self.offsets.len());
        for (topic, partition, offset) in self.offsets.drain(..) {
            // The stored offset is the next one to read.
            if let Err(e) =
                list.add_partition_offset(&topic, partition, rdkafka::Offset::Offset(offset + 1))
            {
                tracing::warn!(error = %e, topic, partition, "offset not stored");
            }
        }
        // Fails only for partitions revoked meanwhile; their new owner reads
        // those events again, which is at-least-once.
        if let Err(e) = consumer.store_offsets(&list) {
            tracing::debug!(error = %e, "offsets not stored");
        }
    }
}
