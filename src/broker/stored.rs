//! The stored messages of one shard's broker, by id.
//!
//! Message ids only grow: a persistent message's is its record's journal
//! offset, a non-persistent one's a counter above every offset. So each of
//! the two kinds is kept as a deque sorted by id: a store appends at the
//! back, a lookup is a binary search, a release leaves a hole that leaves
//! with the front (FIFO consumption) or in a compaction once holes are half
//! the deque. A hash table of a large backlog cost a cache miss or two per
//! store (the top item of the hot-standby passive's profile); the back of a
//! deque is always in cache, and the memory per message is the same.
//!
//! An id that arrives out of order (none does today) is inserted in place:
//! correct, only slower.

use super::Stored;
use crate::ids::MessageId;
use std::collections::VecDeque;

/// Holes below this many entries are never compacted away (cheap to keep).
const COMPACT_MIN: usize = 64;

#[derive(Debug, Default)]
pub(super) struct StoredMessages {
    /// Persistent ids, then non-persistent ones.
    kinds: [Sorted; 2],
}

impl StoredMessages {
    pub fn len(&self) -> usize {
        self.kinds.iter().map(Sorted::len).sum()
    }

    /// Stores `stored` (whose `refs` is above zero) under `id`, which must
    /// not be present.
    pub fn insert(&mut self, id: MessageId, stored: Stored) {
        assert!(stored.refs > 0, "a stored message has a holder");
        self.kind_mut(id).insert(id, stored);
    }

    pub fn get(&self, id: MessageId) -> Option<&Stored> {
        let kind = &self.kinds[kind_of(id)];
        kind.find(id).map(|i| &kind.entries[i].1)
    }

    /// The message, to change its holders. `refs` never goes to zero here
    /// (zero marks a hole): the last holder `remove`s the message instead.
    pub fn get_mut(&mut self, id: MessageId) -> Option<&mut Stored> {
        let kind = self.kind_mut(id);
        kind.find(id).map(|i| &mut kind.entries[i].1)
    }

    pub fn remove(&mut self, id: MessageId) -> Option<Stored> {
        self.kind_mut(id).remove(id)
    }

    fn kind_mut(&mut self, id: MessageId) -> &mut Sorted {
        &mut self.kinds[kind_of(id)]
    }
}

fn kind_of(id: MessageId) -> usize {
    usize::from(id.offset().is_none())
}

/// Entries by increasing id; an entry with `refs == 0` is a hole.
#[derive(Debug, Default)]
struct Sorted {
    entries: VecDeque<(MessageId, Stored)>,
    holes: usize,
}

impl Sorted {
    fn len(&self) -> usize {
        self.entries.len() - self.holes
    }

    fn insert(&mut self, id: MessageId, stored: Stored) {
        if self.entries.back().is_none_or(|&(last, _)| last < id) {
            self.entries.push_back((id, stored));
            return;
        }
        match self.entries.binary_search_by_key(&id, |&(id, _)| id) {
            Ok(i) => {
                assert!(is_hole(&self.entries[i].1), "message {id:?} stored twice");
                self.entries[i].1 = stored;
                self.holes -= 1;
            }
            Err(i) => self.entries.insert(i, (id, stored)),
        }
    }

    /// The index of `id`'s live entry.
    fn find(&self, id: MessageId) -> Option<usize> {
        let i = self.entries.binary_search_by_key(&id, |&(id, _)| id).ok()?;
        (!is_hole(&self.entries[i].1)).then_some(i)
    }

    fn remove(&mut self, id: MessageId) -> Option<Stored> {
        let i = self.find(id)?;
        let removed = std::mem::replace(&mut self.entries[i].1, hole());
        self.holes += 1;
        while self.entries.front().is_some_and(|(_, s)| is_hole(s)) {
            self.entries.pop_front();
            self.holes -= 1;
        }
        while self.entries.back().is_some_and(|(_, s)| is_hole(s)) {
            self.entries.pop_back();
            self.holes -= 1;
        }
        if self.holes >= COMPACT_MIN && self.holes * 2 >= self.entries.len() {
            self.entries.retain(|(_, s)| !is_hole(s));
            self.holes = 0;
        }
        Some(removed)
    }
}

fn hole() -> Stored {
    Stored {
        refs: 0,
        durable_refs: 0,
        expires_at_ms: 0,
        data: None,
    }
}

fn is_hole(stored: &Stored) -> bool {
    stored.refs == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Offset, ShardId};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn stored(refs: u32) -> Stored {
        Stored { refs, ..hole() }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Store the next id of a kind (persistent if true), or an earlier
        /// one if `back` (out of order).
        Store { persistent: bool, back: u64 },
        /// Remove the live message at this position (modulo their number).
        Remove(usize),
        /// Look up an id that may or may not be present.
        Get(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<bool>(), prop_oneof![9 => Just(0u64), 1 => 1..50u64])
                .prop_map(|(persistent, back)| Op::Store { persistent, back }),
            3 => any::<usize>().prop_map(Op::Remove),
            1 => (0..3000u64).prop_map(Op::Get),
        ]
    }

    fn id(persistent: bool, n: u64) -> MessageId {
        if persistent {
            MessageId::persistent(ShardId(1), Offset(n * 100))
        } else {
            MessageId::volatile(ShardId(1), n)
        }
    }

    proptest! {
        /// Whatever the order of stores and releases, the deques answer as
        /// an ordered map does, and holes never outnumber live entries for
        /// long.
        #[test]
        fn behaves_as_a_map(ops in prop::collection::vec(op(), 1..600)) {
            let mut map = StoredMessages::default();
            let mut model: BTreeMap<MessageId, u32> = BTreeMap::new();
            let mut next = [1000u64, 1000u64];
            for (step, op) in ops.into_iter().enumerate() {
                let refs = step as u32 + 1;
                match op {
                    Op::Store { persistent, back } => {
                        let n = &mut next[usize::from(persistent)];
                        let candidate = id(persistent, n.saturating_sub(back));
                        if back == 0 {
                            *n += 1;
                        }
                        if model.contains_key(&candidate) {
                            continue;
                        }
                        map.insert(candidate, stored(refs));
                        model.insert(candidate, refs);
                    }
                    Op::Remove(at) if !model.is_empty() => {
                        let victim = *model.keys().nth(at % model.len()).unwrap();
                        let removed = map.remove(victim).map(|s| s.refs);
                        prop_assert_eq!(removed, model.remove(&victim));
                        prop_assert!(map.remove(victim).is_none());
                    }
                    Op::Remove(_) => {}
                    Op::Get(n) => {
                        for candidate in [id(true, n), id(false, n)] {
                            prop_assert_eq!(
                                map.get(candidate).map(|s| s.refs),
                                model.get(&candidate).copied()
                            );
                        }
                    }
                }
                prop_assert_eq!(map.len(), model.len());
                for kind in &map.kinds {
                    prop_assert!(kind.holes < COMPACT_MIN || kind.holes * 2 < kind.entries.len());
                    prop_assert!(kind.entries.iter().zip(kind.entries.iter().skip(1)).all(|(a, b)| a.0 < b.0));
                }
            }
            for (&id, &refs) in &model {
                prop_assert_eq!(map.get(id).map(|s| s.refs), Some(refs));
            }
        }
    }

    #[test]
    fn fifo_release_leaves_no_holes_behind() {
        let mut map = StoredMessages::default();
        for n in 0..1000 {
            map.insert(id(true, n), stored(1));
        }
        for n in 0..999 {
            assert_eq!(map.remove(id(true, n)).map(|s| s.refs), Some(1));
        }
        assert_eq!(map.len(), 1);
        assert_eq!(map.kinds[0].entries.len(), 1);
        assert_eq!(map.kinds[0].holes, 0);
    }
}
