//! Per-owner caps on things held open at once: connections per peer address in the listener,
//! long requests per API key or peer in the API.
//!
//! One counter per owner, in one map, under one lock held only to add or subtract: the map
//! holds an owner only while it holds a slot, so a flood of distinct owners leaves nothing
//! behind once their slots are given back.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

/// Slots held per owner, each owner capped at `cap`. Cheap to clone; clones share the counts.
#[derive(Debug)]
pub struct Slots<K: Hash + Eq + Clone> {
    held: Arc<Mutex<HashMap<K, usize>>>,
    cap: usize,
}

impl<K: Hash + Eq + Clone> Clone for Slots<K> {
    fn clone(&self) -> Self {
        Slots {
            held: Arc::clone(&self.held),
            cap: self.cap,
        }
    }
}

/// One slot of one owner, given back when dropped.
#[derive(Debug)]
pub struct Slot<K: Hash + Eq + Clone> {
    slots: Slots<K>,
    owner: K,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    /// At most `cap` slots per owner (a cap of 0 refuses every slot).
    pub fn new(cap: usize) -> Self {
        Slots {
            held: Arc::default(),
            cap,
        }
    }

    /// The cap per owner.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// A slot for `owner`, unless it holds `cap` already.
    pub fn try_take(&self, owner: &K) -> Option<Slot<K>> {
        // Counts are plain integers: a panic elsewhere cannot leave them inconsistent.
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.entry(owner.clone()).or_default();
        if *count >= self.cap {
            if *count == 0 {
                held.remove(owner);
            }
            return None;
        }
        *count += 1;
        Some(Slot {
            slots: self.clone(),
            owner: owner.clone(),
        })
    }

    /// Slots `owner` holds now.
    pub fn held_by(&self, owner: &K) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(owner).copied().unwrap_or(0)
    }

    /// Owners holding at least one slot now.
    pub fn owners(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut held = self
            .slots
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.get_mut(&self.owner) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_owner_is_capped_on_its_own_and_forgotten_when_it_holds_nothing() {
        let slots = Slots::new(2);
        let a1 = slots.try_take(&"a").unwrap();
        let a2 = slots.try_take(&"a").unwrap();
        assert!(slots.try_take(&"a").is_none(), "a third slot for a");
        let b1 = slots.try_take(&"b").unwrap();
        assert_eq!((slots.held_by(&"a"), slots.held_by(&"b")), (2, 1));
        drop(a1);
        let a3 = slots.try_take(&"a").unwrap();
        drop((a2, a3, b1));
        assert_eq!(slots.owners(), 0);
    }

    #[test]
    fn a_zero_cap_refuses_and_remembers_nobody() {
        let slots = Slots::new(0);
        assert!(slots.try_take(&1).is_none());
        assert_eq!(slots.owners(), 0);
    }
}
