//! Reading a rollout's state back from its traffic object.
//!
//! A replica that takes over a model with no state restored from a
//! changelog (none is configured, or it was lost) must not start the
//! rollout again at its first stage: that would throw away hours of hold,
//! or carry a rolled-back version forward again. The `kube` receiver
//! records the rollout's state on the object it changes, so the
//! controller asks for it ([`Controller::take_lookups`]) and waits; the
//! reads run here, beside the consume loop, which never waits for the API
//! server. A read that fails for a moment (timeout, 5xx) is tried again;
//! one that cannot succeed (403, 404, a record canaryd cannot read) pauses
//! the rollout with the reason, for a person to decide.
//!
//! [`Controller::take_lookups`]: canaryd_rules::rollout::controller::Controller::take_lookups

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canaryd_connectors::kube::ROLLOUT_ANNOTATION;
use canaryd_connectors::{Connector, ConnectorError, TrafficState};
use canaryd_rules::rollout::Rollout;
use canaryd_rules::rollout::controller::Found;
use serde::Deserialize;
use tokio::task::JoinSet;

/// How long a read that failed for a moment waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// One model's traffic object to read, for the partition that owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Lookup {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) model: String,
    /// The plan's traffic receiver.
    pub(super) receiver: Option<String>,
}

/// What a read found, for the controller.
#[derive(Debug)]
pub(super) struct Read {
    pub(super) lookup: Lookup,
    pub(super) found: Found,
}

/// The reads under way, and those waiting to be tried again.
pub(super) struct TrafficReads {
    /// The receivers that can read back, by name.
    readers: HashMap<String, Arc<dyn Connector>>,
    running: JoinSet<(Lookup, Result<TrafficState, ConnectorError>)>,
    /// By task, so that a read whose task failed is not lost.
    lookups: HashMap<tokio::task::Id, Lookup>,
    retry: Vec<(Instant, Lookup)>,
}

impl TrafficReads {
    /// Reads through `receivers` (those that keep no state are skipped).
    pub(super) fn new(receivers: &[Arc<dyn Connector>]) -> TrafficReads {
        TrafficReads {
            readers: receivers
                .iter()
                .map(|c| (c.name().to_string(), c.clone()))
                .collect(),
            running: JoinSet::new(),
            lookups: HashMap::new(),
            retry: Vec::new(),
        }
    }

    /// How many reads are under way or waiting to be tried again.
    pub(super) fn pending(&self) -> usize {
        self.lookups.len() + self.retry.len()
    }

    /// Starts reading `lookup`'s object. A model whose receiver keeps no
    /// state has nothing to read: that answer is given at once.
    pub(super) fn start(&mut self, lookup: Lookup) -> Option<Read> {
        let reader = lookup
            .receiver
            .as_ref()
            .and_then(|r| self.readers.get(r))
            .cloned();
        let subject = BTreeMap::from([("model".to_string(), lookup.model.clone())]);
        if reader
            .as_ref()
            .is_none_or(|r| r.read_traffic(&subject).is_none())
        {
            return Some(Read {
                lookup,
                found: Found::Nothing,
            });
        }
        let task_lookup = lookup.clone();
        let handle = self.running.spawn(async move {
            // Checked above: this receiver reads.
            let read = match reader.as_ref().and_then(|r| r.read_traffic(&subject)) {
                Some(read) => read.await,
                None => Err(ConnectorError::Permanent(
                    "the receiver no longer reads its object".to_string(),
                )),
            };
            (task_lookup, read)
        });
        self.lookups.insert(handle.id(), lookup);
        None
    }

    /// The reads that finished since the last call; reads that failed for
    /// a moment and are due are started again.
    pub(super) fn finished(&mut self, now: Instant) -> Vec<Read> {
        let mut out = Vec::new();
        while let Some(joined) = self.running.try_join_next_with_id() {
            match joined {
                Ok((id, (lookup, read))) => {
                    self.lookups.remove(&id);
                    match read {
                        Ok(state) => out.push(Read {
                            found: found(state),
                            lookup,
                        }),
                        Err(ConnectorError::Permanent(why)) => out.push(Read {
                            found: Found::Refused(format!(
                                "cannot read its traffic object through receiver `{}`: {why}",
                                lookup.receiver.as_deref().unwrap_or_default()
                            )),
                            lookup,
                        }),
                        Err(e @ ConnectorError::Retriable { .. }) => {
                            tracing::warn!(model = %lookup.model, error = %e, retry_in = ?RETRY_AFTER, "cannot read the rollout's state from its traffic object yet: the rollout waits");
                            self.retry.push((now + RETRY_AFTER, lookup));
                        }
                    }
                }
                Err(e) => {
                    if let Some(lookup) = self.lookups.remove(&e.id()) {
                        tracing::error!(model = %lookup.model, error = %e, "reading the rollout's state failed: trying again");
                        self.retry.push((now + RETRY_AFTER, lookup));
                    }
                }
            }
        }
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retry)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.retry = waiting;
        for (_, lookup) in due {
            out.extend(self.start(lookup));
        }
        out
    }
}

/// What canaryd writes in [`ROLLOUT_ANNOTATION`].
#[derive(Deserialize)]
struct Record {
    plan: String,
    rollout: Rollout,
}

/// What the object holds, as the controller takes it.
fn found(state: TrafficState) -> Found {
    let Some(text) = state.rollout else {
        return Found::Nothing;
    };
    let hand_edit = match (state.canary_weight, state.written_weight) {
        (Some(now), Some(written)) if now != written => Some(format!(
            "{} has canary weight {now}, but canaryd last set {written}",
            state.target
        )),
        _ => None,
    };
    match serde_json::from_str::<Record>(&text) {
        Ok(record) => Found::Recorded {
            plan: record.plan,
            rollout: record.rollout,
            hand_edit,
        },
        Err(e) => Found::Refused(format!(
            "{ROLLOUT_ANNOTATION} on {} is not a rollout record canaryd can read ({e})",
            state.target
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canaryd_rules::rollout::Phase;
    use canaryd_rules::{Span, Timestamp};

    fn state(rollout: Option<&str>, now: Option<i64>, written: Option<i64>) -> TrafficState {
        TrafficState {
            target: "VirtualService ns/m".into(),
            rollout: rollout.map(str::to_string),
            canary_weight: now,
            written_weight: written,
        }
    }

    /// A record as `rollout_actions` writes it.
    fn record() -> String {
        let rollout = Rollout {
            version: "v2".into(),
            stage: 1,
            stage_started: Timestamp(1_000),
            held: Span::seconds(4),
            requests: 7,
            last_step: Timestamp(5_000),
            phase: Phase::Progressing,
        };
        serde_json::json!({"plan": "default", "at": 5_000, "rollout": rollout}).to_string()
    }

    #[test]
    fn a_record_is_read_with_its_plan_and_state() {
        let Found::Recorded {
            plan,
            rollout,
            hand_edit,
        } = found(state(Some(&record()), Some(10), Some(10)))
        else {
            panic!("not read");
        };
        assert_eq!(plan, "default");
        assert_eq!((rollout.version.as_str(), rollout.stage), ("v2", 1));
        assert_eq!(hand_edit, None);
    }

    #[test]
    fn weights_changed_since_canaryd_wrote_them_are_a_hand_edit() {
        let Found::Recorded { hand_edit, .. } = found(state(Some(&record()), Some(30), Some(10)))
        else {
            panic!("not read");
        };
        assert_eq!(
            hand_edit.as_deref(),
            Some("VirtualService ns/m has canary weight 30, but canaryd last set 10")
        );
    }

    #[test]
    fn no_record_is_nothing_and_a_corrupt_one_is_refused_with_the_object_named() {
        assert_eq!(found(state(None, Some(30), None)), Found::Nothing);
        let Found::Refused(why) = found(state(Some("{\"plan\":"), Some(10), Some(10))) else {
            panic!("not refused");
        };
        assert!(
            why.starts_with("canaryd.io/rollout on VirtualService ns/m is not a rollout record"),
            "{why}"
        );
    }
}
