//! Counters of what the consume loop did, for its log line at shutdown
//! and for tests and benchmarks.

use std::sync::atomic::AtomicU64;

/// Counts since start-up.
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Messages consumed.
    pub consumed: AtomicU64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Events dropped as late.
    pub late: AtomicU64,
    /// Alert transitions.
    pub transitions: AtomicU64,
    /// Actions accepted by the pipeline.
    pub actions: AtomicU64,
    /// Decisions made again while rebuilding a lost state, not acted on
    /// again (an earlier owner did).
    pub rebuilt: AtomicU64,
    /// Partition states rebuilt from the input, the changelog having none.
    pub rebuilds: AtomicU64,
    /// Partition states restored from the changelog.
    pub restores: AtomicU64,
    /// Subjects in the last state restored.
    pub restored_subjects: AtomicU64,
    /// How long the last restore took, in milliseconds.
    pub restore_millis: AtomicU64,
}
