//! The GPU working set's index: which group occupies which slot of the device slot pool, with LRU
//! eviction; groups used by the current step are pinned and never evicted.

use crate::RuntimeError;
use std::collections::HashMap;

/// A group of one (layer, sequence, KV head).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    /// Layer.
    pub layer: u32,
    /// Sequence id.
    pub seq: u64,
    /// KV head.
    pub kv_head: u32,
    /// Global group index (first token / group size).
    pub group: u32,
}

/// Where a requested group is this step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Already in `slot`.
    Hit(u32),
    /// Must be fetched into `slot`; `evicted` is the group that held it.
    Miss {
        /// The slot to fill.
        slot: u32,
        /// The previous occupant, if any.
        evicted: Option<GroupKey>,
    },
}

impl Placement {
    /// The slot either way.
    pub fn slot(&self) -> u32 {
        match *self {
            Placement::Hit(s) | Placement::Miss { slot: s, .. } => s,
        }
    }
}

const NIL: u32 = u32::MAX;

/// A slot count must be in `1..=2^31` (slot indices are `u32`, and the GPU's are `i32`).
pub(crate) fn check_slots(slots: usize) -> Result<(), RuntimeError> {
    if slots == 0 || slots > 1 << 31 {
        return Err(RuntimeError::InvalidConfig {
            field: "slots",
            value: slots.to_string(),
            allowed: "must be in 1..=2^31".into(),
        });
    }
    Ok(())
}

/// Slots `0..capacity`; an index from group to slot; an LRU list threaded through the slots.
#[derive(Debug, Clone)]
pub struct SlotPool {
    map: HashMap<GroupKey, u32>,
    owner: Vec<Option<GroupKey>>,
    /// LRU list: `prev`/`next` by slot; `head` is the most recently used, `tail` the least.
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    /// Step that last used each slot; a slot used by the current step is pinned.
    used_at: Vec<u64>,
    step: u64,
    /// Never-used slots, handed out before anything is evicted.
    fresh: Vec<u32>,
}

impl SlotPool {
    /// A pool of `capacity` empty slots (`1..=2^31`).
    pub fn new(capacity: usize) -> Result<Self, RuntimeError> {
        check_slots(capacity)?;
        Ok(SlotPool {
            map: HashMap::new(),
            owner: vec![None; capacity],
            prev: vec![NIL; capacity],
            next: vec![NIL; capacity],
            head: NIL,
            tail: NIL,
            used_at: vec![0; capacity],
            step: 0,
            fresh: (0..capacity as u32).rev().collect(),
        })
    }

    /// Slots in the pool.
    pub fn capacity(&self) -> usize {
        self.owner.len()
    }

    /// Slots holding a group.
    pub fn occupied(&self) -> usize {
        self.map.len()
    }

    /// The slot of `key`, without touching it.
    pub fn lookup(&self, key: &GroupKey) -> Option<u32> {
        self.map.get(key).copied()
    }

    /// The group in `slot`.
    pub fn owner(&self, slot: u32) -> Option<GroupKey> {
        self.owner.get(slot as usize).copied().flatten()
    }

    /// Places the groups one step needs (a repeated key gets the same slot, reported as a hit after the
    /// first). Starts a new step:
    /// every group of it is pinned until the next call, so no group of this step evicts another.
    /// All or nothing: `CapacityExceeded` when the step needs more distinct groups than there are slots.
    pub fn place_step(&mut self, keys: &[GroupKey]) -> Result<Vec<Placement>, RuntimeError> {
        let mut distinct: Vec<&GroupKey> = keys.iter().collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() > self.capacity() {
            return Err(RuntimeError::CapacityExceeded {
                field: "working-set slots",
                requested: distinct.len(),
                limit: self.capacity(),
            });
        }
        self.step += 1;
        Ok(keys.iter().map(|k| self.place(*k)).collect())
    }

    fn place(&mut self, key: GroupKey) -> Placement {
        if let Some(&s) = self.map.get(&key) {
            self.touch(s);
            return Placement::Hit(s);
        }
        let (slot, evicted) = match self.fresh.pop() {
            Some(s) => (s, None),
            None => {
                let s = self.tail;
                debug_assert!(self.used_at[s as usize] != self.step, "place_step checked capacity");
                let old = self.owner[s as usize].take().expect("occupied slots are in the LRU list");
                self.map.remove(&old);
                (s, Some(old))
            }
        };
        self.owner[slot as usize] = Some(key);
        self.map.insert(key, slot);
        self.touch(slot);
        Placement::Miss { slot, evicted }
    }

    /// Marks `s` used by this step: most recently used, pinned.
    fn touch(&mut self, s: u32) {
        self.used_at[s as usize] = self.step;
        if self.head == s {
            return;
        }
        self.unlink(s);
        self.next[s as usize] = self.head;
        self.prev[s as usize] = NIL;
        if self.head != NIL {
            self.prev[self.head as usize] = s;
        }
        self.head = s;
        if self.tail == NIL {
            self.tail = s;
        }
    }

    fn unlink(&mut self, s: u32) {
        let (p, n) = (self.prev[s as usize], self.next[s as usize]);
        let linked = p != NIL || n != NIL || self.head == s;
        if !linked {
            return;
        }
        if p != NIL {
            self.next[p as usize] = n;
        } else {
            self.head = n;
        }
        if n != NIL {
            self.prev[n as usize] = p;
        } else {
            self.tail = p;
        }
        self.prev[s as usize] = NIL;
        self.next[s as usize] = NIL;
    }

    /// Frees every slot of `seq` (a removed sequence).
    pub fn remove_sequence(&mut self, seq: u64) {
        self.remove_where(|k| k.seq == seq);
    }

    /// Frees every slot whose group matches `pred`.
    pub fn remove_where(&mut self, pred: impl Fn(&GroupKey) -> bool) {
        let gone: Vec<(GroupKey, u32)> = self.map.iter().filter(|(k, _)| pred(k)).map(|(k, s)| (*k, *s)).collect();
        for (k, s) in gone {
            self.map.remove(&k);
            self.owner[s as usize] = None;
            self.unlink(s);
            self.used_at[s as usize] = 0;
            self.fresh.push(s);
        }
    }

    /// Slots from least to most recently used (for tests and diagnostics).
    pub fn lru_order(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.map.len());
        let mut s = self.tail;
        while s != NIL {
            out.push(s);
            s = self.prev[s as usize];
        }
        out
    }
}
