//! [`DedupSet`]: the keys seen recently, at most a fixed number, oldest
//! forgotten first. The one bounded memory of "done already" that the
//! action pipeline (idempotency keys) and the Alertmanager receiver
//! (fingerprints) share.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Recently seen keys; at most `capacity`, the oldest forgotten first.
#[derive(Debug)]
pub struct DedupSet<K> {
    capacity: usize,
    /// A sequence number per insertion, to tell a key's live entry in
    /// `order` from a stale one.
    next: u64,
    seen: HashMap<K, u64>,
    /// Keys in the order they were inserted, with the sequence number they
    /// had then; an entry whose key was removed (or inserted again since)
    /// is stale and only waits to be popped.
    order: VecDeque<(K, u64)>,
}

impl<K: Hash + Eq + Clone> DedupSet<K> {
    /// An empty set that remembers at most `capacity` keys (at least one).
    pub fn new(capacity: usize) -> DedupSet<K> {
        DedupSet {
            capacity: capacity.max(1),
            next: 0,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether `key` is new; if it is, it is remembered from now on.
    pub fn insert(&mut self, key: K) -> bool {
        if self.seen.contains_key(&key) {
            return false;
        }
        self.next += 1;
        self.seen.insert(key.clone(), self.next);
        self.order.push_back((key, self.next));
        while self.order.len() > self.capacity {
            if let Some((old, seq)) = self.order.pop_front()
                && self.seen.get(&old) == Some(&seq)
            {
                self.seen.remove(&old);
            }
        }
        true
    }

    /// Forgets `key`, e.g. one reserved for work that was then not done.
    pub fn remove(&mut self, key: &K) {
        self.seen.remove(key);
    }

    /// Whether `key` is remembered.
    pub fn contains(&self, key: &K) -> bool {
        self.seen.contains_key(key)
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_bounded_and_forgets_the_oldest() {
        let mut d = DedupSet::new(3);
        for k in ["a", "b", "c"] {
            assert!(d.insert(k));
        }
        assert!(!d.insert("a"));
        assert!(d.insert("d"));
        assert_eq!(d.len(), 3);
        assert!(!d.contains(&"a"));
        assert!(d.insert("a"), "the oldest was forgotten");
        assert!(!d.insert("d"));
    }

    #[test]
    fn a_removed_key_can_be_inserted_again_and_is_not_evicted_early() {
        let mut d = DedupSet::new(2);
        assert!(d.insert("a"));
        d.remove(&"a");
        assert!(d.is_empty());
        assert!(d.insert("b"));
        assert!(d.insert("a"));
        // The stale first entry for "a" is popped, but "a" stays seen.
        assert!(!d.insert("a"));
        assert!(!d.insert("b"));
    }

    #[test]
    fn the_queue_stays_bounded_under_churn() {
        let mut d = DedupSet::new(10);
        for i in 0..10_000u32 {
            assert!(d.insert(i));
            if i % 2 == 0 {
                d.remove(&i);
            }
        }
        assert!(d.len() <= 10);
        assert!(d.order.len() <= 10);
    }
}
