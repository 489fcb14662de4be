//! The outbox: actions decided but not yet done, per input partition.
//!
//! An action enters the outbox when it is submitted, before the consume
//! loop moves on, and leaves it when its receiver is finished with it
//! (done, failed for good, or dead-lettered). Each checkpoint of a
//! partition carries its outbox, so the offset committed with that
//! checkpoint never passes an action that is not either done or written
//! down. A new owner of the partition submits what the outbox still holds;
//! finished actions are not repeated. What finished after the last
//! checkpoint is done again by the new owner, so receivers are given
//! stable idempotency keys (PagerDuty `dedup_key`, the webhook
//! `Idempotency-Key`, the action key recorded on the traffic object).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use canaryd_connectors::Action;
use serde::{Deserialize, Serialize};

/// The input partition whose events decided an action.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The input topic.
    pub topic: Arc<str>,
    /// Its partition.
    pub partition: i32,
}

impl Origin {
    /// `topic`'s `partition`.
    pub fn new(topic: &str, partition: i32) -> Origin {
        Origin {
            topic: topic.into(),
            partition,
        }
    }
}

/// An action one receiver has not finished, as written to the changelog.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// The receiver that has not finished it.
    pub receiver: String,
    /// The action, as submitted.
    pub action: Action,
}

/// One receiver's copy of one action.
#[derive(Clone, Debug)]
struct Entry {
    action: Action,
    /// Submissions not yet finished: a replayed event may submit an action
    /// that a restored outbox submitted already; the receiver ignores the
    /// second, and the entry goes only when both are through.
    submissions: u32,
}

#[derive(Default)]
struct PartitionOutbox {
    /// By (key, receiver).
    entries: BTreeMap<(String, String), Entry>,
    /// Changed since the last checkpoint.
    changed: bool,
}

/// The outboxes of every owned partition. Cheap to clone; shared by the
/// consume loop and the receivers' workers.
#[derive(Clone, Default)]
pub struct Outbox {
    inner: Arc<Mutex<HashMap<Origin, PartitionOutbox>>>,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, HashMap<Origin, PartitionOutbox>> {
        // A panic while holding the lock leaves plain data, still valid.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `receiver` has been handed `action` from `origin`.
    pub fn add(&self, origin: &Origin, receiver: &str, action: &Action) {
        let mut all = self.lock();
        let outbox = all.entry(origin.clone()).or_default();
        outbox
            .entries
            .entry((action.key.clone(), receiver.to_string()))
            .and_modify(|e| e.submissions += 1)
            .or_insert_with(|| Entry {
                action: action.clone(),
                submissions: 1,
            });
        outbox.changed = true;
    }

    /// `receiver` is finished with one submission of the action `key`.
    pub fn finished(&self, origin: &Origin, key: &str, receiver: &str) {
        let mut all = self.lock();
        let Some(outbox) = all.get_mut(origin) else {
            return; // the partition moved away meanwhile
        };
        let id = (key.to_string(), receiver.to_string());
        if let Some(entry) = outbox.entries.get_mut(&id) {
            entry.submissions = entry.submissions.saturating_sub(1);
            if entry.submissions == 0 {
                outbox.entries.remove(&id);
                outbox.changed = true;
            }
        }
    }

    /// What `origin`'s receivers have not finished, and whether that
    /// changed since the last call.
    pub fn checkpoint(&self, origin: &Origin) -> (Vec<Pending>, bool) {
        let mut all = self.lock();
        let Some(outbox) = all.get_mut(origin) else {
            return (Vec::new(), false);
        };
        let changed = std::mem::take(&mut outbox.changed);
        let pending = outbox
            .entries
            .iter()
            .map(|((_, receiver), e)| Pending {
                receiver: receiver.clone(),
                action: e.action.clone(),
            })
            .collect();
        (pending, changed)
    }

    /// Stops tracking `origin`: its new owner has its outbox. Receivers
    /// still finish what they hold.
    pub fn forget(&self, origin: &Origin) {
        self.lock().remove(origin);
    }

    /// How many actions are unfinished, over every partition.
    pub fn unfinished(&self) -> usize {
        self.lock().values().map(|o| o.entries.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canaryd_rules::ActionName;

    fn action(key: &str) -> Action {
        crate::act::pipeline::tests::action(key, ActionName::AutoRollback, "m")
    }

    #[test]
    fn an_action_stays_until_every_submission_is_finished() {
        let outbox = Outbox::default();
        let origin = Origin::new("events", 0);
        outbox.add(&origin, "kube", &action("a"));
        outbox.add(&origin, "pager", &action("a"));
        // A replayed event submits the same action again.
        outbox.add(&origin, "kube", &action("a"));
        let (pending, changed) = outbox.checkpoint(&origin);
        assert!(changed);
        assert_eq!(pending.len(), 2);
        assert!(!outbox.checkpoint(&origin).1, "nothing changed since");

        outbox.finished(&origin, "a", "kube");
        assert_eq!(
            outbox.checkpoint(&origin).0.len(),
            2,
            "one kube submission left"
        );
        outbox.finished(&origin, "a", "kube");
        outbox.finished(&origin, "a", "pager");
        let (pending, changed) = outbox.checkpoint(&origin);
        assert!(changed);
        assert!(pending.is_empty());
        // A late finish after everything is gone changes nothing.
        outbox.finished(&origin, "a", "pager");
        assert_eq!(outbox.unfinished(), 0);
    }

    #[test]
    fn partitions_are_kept_apart_and_forgotten_on_revocation() {
        let outbox = Outbox::default();
        let (p0, p1) = (Origin::new("events", 0), Origin::new("events", 1));
        outbox.add(&p0, "kube", &action("a"));
        outbox.add(&p1, "kube", &action("b"));
        assert_eq!(outbox.checkpoint(&p0).0[0].action.key, "a");
        outbox.forget(&p0);
        assert!(outbox.checkpoint(&p0).0.is_empty());
        outbox.finished(&p0, "a", "kube");
        assert_eq!(outbox.unfinished(), 1);
    }

    #[test]
    fn a_pending_action_round_trips_through_cbor() {
        let mut a = action("a");
        a.evidence
            .thresholds
            .push(canaryd_rules::condition::Threshold {
                variable: "canary_error_rate".into(),
                op: ">=",
                value: 0.05,
            });
        let pending = Pending {
            receiver: "kube".into(),
            action: a,
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&pending, &mut bytes).unwrap();
        let back: Pending = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(back, pending);
    }
}
