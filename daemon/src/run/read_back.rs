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
//! The objects of running rollouts are also read every
//! `rollouts.watch_every` ([`Purpose::Watch`]): a canary version named on
//! the object (`canaryd.io/canary-version`) starts a new rollout, and
//! weights a person set are noticed without waiting for the next step.
//! There is no watch stream: a read per model and period, spread over the
//! ticks, and a failed read waits for the next period.
//!
//! [`Controller::take_lookups`]: canaryd_rules::rollout::controller::Controller::take_lookups

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canaryd_connectors::kube::ROLLOUT_ANNOTATION;
use canaryd_connectors::{Connector, ConnectorError, TrafficState};
use canaryd_rules::rollout::Rollout;
use canaryd_rules::rollout::controller::{Found, Watched};
use serde::Deserialize;
use tokio::task::JoinSet;

/// How long a read that failed for a moment waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How many periodic reads one tick may start: 1,000 rollouts read every
/// 30 s are about 34 a second, spread rather than sent at once.
const WATCHES_PER_TICK: usize = 64;

/// Why an object is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Purpose {
    /// A model new here, with no state restored: where its rollout stands.
    TakeOver,
    /// A running rollout's periodic look.
    Watch,
}

/// One model's traffic object to read, for the partition that owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Lookup {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) model: String,
    /// The plan's traffic receiver.
    pub(super) receiver: Option<String>,
    pub(super) purpose: Purpose,
}

/// What a read found, for the controller.
#[derive(Debug)]
pub(super) struct Read {
    pub(super) lookup: Lookup,
    pub(super) seen: Seen,
}

/// What a read found, by purpose.
#[derive(Debug)]
pub(super) enum Seen {
    Found(Found),
    Watched(Watched),
}

/// The reads under way, and those waiting to be tried again.
pub(super) struct TrafficReads {
    /// The receivers that can read back, by name.
    readers: HashMap<String, Arc<dyn Connector>>,
    running: JoinSet<(Lookup, Result<TrafficState, ConnectorError>)>,
    /// By task, so that a read whose task failed is not lost.
    lookups: HashMap<tokio::task::Id, Lookup>,
    retry: Vec<(Instant, Lookup)>,
    /// When each model's object was last read for a watch.
    watched_at: HashMap<String, Instant>,
    /// Periodic reads still allowed this tick.
    budget: usize,
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
            watched_at: HashMap::new(),
            budget: WATCHES_PER_TICK,
        }
    }

    /// Whether `model`'s object is due a periodic read (`every` since the
    /// last one) and this tick may start it; if so, it counts as read now.
    /// A model seen for the first time is read one period later: it has
    /// just started, or been read back.
    pub(super) fn watch_due(&mut self, model: &str, now: Instant, every: Duration) -> bool {
        let Some(last) = self.watched_at.get_mut(model) else {
            self.watched_at.insert(model.to_string(), now);
            return false;
        };
        if self.budget == 0 || now.duration_since(*last) < every {
            return false;
        }
        *last = now;
        self.budget -= 1;
        true
    }

    /// Once a tick: a new budget of periodic reads, and models not watched
    /// for two periods (gone from here) forgotten.
    pub(super) fn new_tick(&mut self, now: Instant, every: Duration) {
        self.budget = WATCHES_PER_TICK;
        self.watched_at
            .retain(|_, last| now.duration_since(*last) < every.saturating_mul(2));
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
            return (lookup.purpose == Purpose::TakeOver).then_some(Read {
                lookup,
                seen: Seen::Found(Found::Nothing),
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
                    match (read, lookup.purpose) {
                        (Ok(state), Purpose::TakeOver) => out.push(Read {
                            seen: Seen::Found(found(state)),
                            lookup,
                        }),
                        (Ok(state), Purpose::Watch) => out.push(Read {
                            seen: Seen::Watched(watched(state)),
                            lookup,
                        }),
                        (Err(ConnectorError::Permanent(why)), Purpose::TakeOver) => {
                            out.push(Read {
                                seen: Seen::Found(Found::Refused(format!(
                                    "cannot read its traffic object through receiver `{}`: {why}",
                                    lookup.receiver.as_deref().unwrap_or_default()
                                ))),
                                lookup,
                            })
                        }
                        (Err(e @ ConnectorError::Retriable { .. }), Purpose::TakeOver) => {
                            tracing::warn!(model = %lookup.model, error = %e, retry_in = ?RETRY_AFTER, "cannot read the rollout's state from its traffic object yet: the rollout waits");
                            self.retry.push((now + RETRY_AFTER, lookup));
                        }
                        // The rollout goes on; its next step meets the same
                        // answer and pauses if it must.
                        (Err(e), Purpose::Watch) => {
                            tracing::warn!(model = %lookup.model, error = %e, "periodic read of the traffic object failed: next period");
                        }
                    }
                }
                Err(e) => {
                    if let Some(lookup) = self.lookups.remove(&e.id()) {
                        tracing::error!(model = %lookup.model, error = %e, "reading the traffic object failed");
                        if lookup.purpose == Purpose::TakeOver {
                            self.retry.push((now + RETRY_AFTER, lookup));
                        }
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

/// The weights on the object, when a person changed them since canaryd
/// wrote them: what was found.
fn hand_edit(state: &TrafficState) -> Option<String> {
    match (state.canary_weight, state.written_weight) {
        (Some(now), Some(written)) if now != written => Some(format!(
            "{} has canary weight {now}, but canaryd last set {written}",
            state.target
        )),
        _ => None,
    }
}

/// What a periodic read saw, as the controller takes it.
fn watched(state: TrafficState) -> Watched {
    Watched {
        hand_edit: hand_edit(&state),
        version: state.canary_version,
    }
}

/// What the object holds, as the controller takes it.
fn found(state: TrafficState) -> Found {
    let hand_edit = hand_edit(&state);
    let Some(text) = state.rollout else {
        return Found::Nothing;
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
            canary_version: None,
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
            retired: Vec::new(),
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
    fn each_model_is_watched_once_a_period_from_one_period_after_it_is_first_seen() {
        let mut reads = TrafficReads::new(&[]);
        let every = Duration::from_secs(30);
        let t0 = Instant::now();
        assert!(
            !reads.watch_due("m", t0, every),
            "just started or read back"
        );
        assert!(!reads.watch_due("m", t0 + Duration::from_secs(29), every));
        assert!(reads.watch_due("m", t0 + Duration::from_secs(30), every));
        assert!(!reads.watch_due("m", t0 + Duration::from_secs(31), every));
        assert!(reads.watch_due("m", t0 + Duration::from_secs(60), every));
        // A model gone from here for two periods is forgotten, then seen
        // again as new.
        reads.new_tick(t0 + Duration::from_secs(121), every);
        assert!(!reads.watch_due("m", t0 + Duration::from_secs(122), every));
    }

    #[test]
    fn a_tick_starts_at_most_its_budget_of_watches_and_the_rest_follow() {
        let mut reads = TrafficReads::new(&[]);
        let every = Duration::from_secs(30);
        let t0 = Instant::now();
        let models: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
        for m in &models {
            reads.watch_due(m, t0, every);
        }
        let due = |reads: &mut TrafficReads, at: Instant| {
            models
                .iter()
                .filter(|m| reads.watch_due(m, at, every))
                .count()
        };
        let later = t0 + every;
        reads.new_tick(later, every);
        assert_eq!(due(&mut reads, later), WATCHES_PER_TICK);
        reads.new_tick(later, every);
        assert_eq!(due(&mut reads, later), 100 - WATCHES_PER_TICK);
        reads.new_tick(later, every);
        assert_eq!(due(&mut reads, later), 0);
    }

    #[test]
    fn a_watch_sees_the_version_named_and_a_hand_edit() {
        let mut seen = state(Some(&record()), Some(30), Some(10));
        seen.canary_version = Some("v9".into());
        let w = watched(seen);
        assert_eq!(w.version.as_deref(), Some("v9"));
        assert_eq!(
            w.hand_edit.as_deref(),
            Some("VirtualService ns/m has canary weight 30, but canaryd last set 10")
        );
        // Weights as canaryd wrote them, no record at all: nothing to see.
        assert_eq!(watched(state(None, Some(10), Some(10))), Watched::default());
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
