//! The wall clock as event time: the one place the daemon reads it.
//!
//! The engine never reads a clock; live mode uses this to move idle
//! partitions on, to stamp Alertmanager's alerts and to judge silences.

use canaryd_rules::Timestamp;

/// Milliseconds since the Unix epoch, now; 0 on a clock set before 1970.
pub fn wall_clock() -> Timestamp {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Timestamp(millis)
}
