//! The slot partition of one (row, KV head) as the GPU resolve runs it (`resolve_kv` in the kernels),
//! step by step on the host: the model its tests compare against, and a simulator of eviction
//! policies on routed traces (`examples/eviction_sim.rs`).
//!
//! A step resolves the KV head's union of opened groups (each group once, in union order): a group
//! already in a slot is a hit and its slot is stamped with the step (pinned: not evictable this step);
//! the misses, in union order, take the slots the policy picks; misses past the evictable slots get
//! none (the attention reads them straight from host memory, uncached).

use crate::RuntimeError;
use std::collections::HashMap;

/// Which slots the misses of a step take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// What the kernels run since codegen 9: the first slots in clock order from the hand that were
    /// not used in the last [`recent_steps`] steps, then (when those run out) any slot not used this
    /// step, in clock order again. A CLOCK-like second chance from the stamps alone.
    Clock,
    /// The kernels' policy up to codegen 8: any slot not used this step, in clock order from the hand
    /// (first in, first out: a slot's use before this step does not count).
    Fifo,
    /// Exact least recently used (equal ages in clock order from the hand): the CPU backend's
    /// [`SlotPool`](super::SlotPool) policy, the reference `Clock` approximates.
    Lru,
}

/// The steps whose slots [`Eviction::Clock`]'s first pass spares: a quarter of the hand's lap under
/// first in, first out (`slots / misses` of the last step), at least 1. A slot used again within
/// that window gets a second chance, as a CLOCK reference bit would give it.
pub fn recent_steps(slots: usize, last_misses: usize) -> u32 {
    (slots / (4 * last_misses.max(1))).max(1) as u32
}

/// What one step's resolve did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Per union entry: its slot (a hit, or the slot a miss fills), `None` for a miss left uncached.
    pub slots: Vec<Option<u32>>,
    /// Misses (entries not in a slot at the start of the step).
    pub misses: usize,
    /// Misses that got no slot.
    pub uncached: usize,
}

/// One partition: `slots` slots, their owners and last-use steps, and the clock hand.
#[derive(Debug, Clone)]
pub struct PartitionModel {
    owner: Vec<Option<u32>>,
    stamp: Vec<Option<u32>>,
    slot_of: HashMap<u32, u32>,
    step: u32,
    hand: usize,
    last_misses: usize,
}

impl PartitionModel {
    /// An empty partition of `slots` slots (`1..=2^31`).
    pub fn new(slots: usize) -> Result<Self, RuntimeError> {
        super::slot_pool::check_slots(slots)?;
        Ok(PartitionModel {
            owner: vec![None; slots],
            stamp: vec![None; slots],
            slot_of: HashMap::new(),
            step: 0,
            hand: 0,
            last_misses: 0,
        })
    }

    /// Slots in the partition.
    pub fn slots(&self) -> usize {
        self.owner.len()
    }

    /// The group in `slot`.
    pub fn owner(&self, slot: usize) -> Option<u32> {
        self.owner.get(slot).copied().flatten()
    }

    /// Resolves one step's union (distinct groups, in union order) under `policy`.
    pub fn resolve(&mut self, union: &[u32], policy: Eviction) -> Result<Resolved, RuntimeError> {
        self.resolve_with(union, |step, this| this.pick(step, policy))
    }

    /// Resolves one step's union with misses taking the evictable slots lowest `rank(group, age)`
    /// first (`group`, `age`: the slot's owner and steps since its last use, `None` when never used),
    /// equal ranks in clock order from the hand: for simulating policies that are not [`Eviction`]'s.
    pub fn resolve_ranked(
        &mut self,
        union: &[u32],
        rank: impl Fn(Option<u32>, Option<u32>) -> f64,
    ) -> Result<Resolved, RuntimeError> {
        self.resolve_with(union, |n, this| {
            let mut free = this.evictable();
            free.sort_by(|&a, &b| rank(this.owner[a], this.age(a)).total_cmp(&rank(this.owner[b], this.age(b))));
            free.truncate(n);
            free
        })
    }

    fn resolve_with(
        &mut self,
        union: &[u32],
        pick: impl FnOnce(usize, &mut Self) -> Vec<usize>,
    ) -> Result<Resolved, RuntimeError> {
        let mut seen = std::collections::HashSet::with_capacity(union.len());
        if let Some(g) = union.iter().find(|g| !seen.insert(**g)) {
            return Err(RuntimeError::InvalidConfig {
                field: "union",
                value: format!("group {g} twice"),
                allowed: "distinct groups".into(),
            });
        }
        self.step += 1;
        let step = self.step;
        let mut slots = vec![None; union.len()];
        let mut miss = Vec::new();
        for (i, g) in union.iter().enumerate() {
            match self.slot_of.get(g) {
                Some(&s) => {
                    self.stamp[s as usize] = Some(step);
                    slots[i] = Some(s);
                }
                None => miss.push(i),
            }
        }
        let taken = pick(miss.len(), self);
        // The hand moves past the slot that took the last miss (it stays when misses go uncached).
        if let (Some(&last), true) = (taken.last(), taken.len() == miss.len()) {
            self.hand = (last + 1) % self.slots();
        }
        self.last_misses = miss.len();
        for (&i, &s) in miss.iter().zip(&taken) {
            if let Some(old) = self.owner[s].take() {
                self.slot_of.remove(&old);
            }
            self.owner[s] = Some(union[i]);
            self.slot_of.insert(union[i], s as u32);
            self.stamp[s] = Some(step);
            slots[i] = Some(s as u32);
        }
        Ok(Resolved { slots, misses: miss.len(), uncached: miss.len() - taken.len() })
    }

    /// Steps since `slot`'s last use; `None`: never used.
    fn age(&self, slot: usize) -> Option<u32> {
        self.stamp[slot].map(|t| self.step - t)
    }

    /// The slots not used this step, in clock order from the hand.
    fn evictable(&self) -> Vec<usize> {
        let ps = self.slots();
        (0..ps).map(|o| (self.hand + o) % ps).filter(|&s| self.age(s) != Some(0)).collect()
    }

    /// The slots `n` misses take, in the order the misses (in union order) take them.
    fn pick(&self, n: usize, policy: Eviction) -> Vec<usize> {
        let free = self.evictable();
        match policy {
            Eviction::Fifo => free.into_iter().take(n).collect(),
            Eviction::Lru => {
                let mut by_age = free;
                // Stable: equal ages stay in clock order. Never used sorts first.
                by_age.sort_by_key(|&s| std::cmp::Reverse(self.age(s).unwrap_or(u32::MAX)));
                by_age.into_iter().take(n).collect()
            }
            Eviction::Clock => {
                let recent = recent_steps(self.slots(), self.last_misses);
                let (old, young): (Vec<usize>, Vec<usize>) =
                    free.into_iter().partition(|&s| self.age(s).is_none_or(|a| a > recent));
                old.into_iter().chain(young).take(n).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spared_window_is_a_quarter_lap() {
        assert_eq!(recent_steps(512, 16), 8);
        assert_eq!(recent_steps(512, 0), 128);
        assert_eq!(recent_steps(8, 100), 1);
    }

    #[test]
    fn lru_and_clock_beat_fifo_on_a_trace_with_reuse() {
        // Each step: 4 of a hot set of 8 groups (chosen by a fixed LCG) and 2 new groups; 10 slots.
        let mut x = 12345u64;
        let mut trace = Vec::new();
        for step in 0..400u32 {
            let mut union = Vec::new();
            while union.len() < 4 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let g = (x >> 33) as u32 % 8;
                if !union.contains(&g) {
                    union.push(g);
                }
            }
            union.extend([1000 + 2 * step, 1001 + 2 * step]);
            trace.push(union);
        }
        let hits = |policy| {
            let mut p = PartitionModel::new(10).unwrap();
            let mut slots = Vec::new();
            let mut hits = 0;
            for u in &trace {
                let r = p.resolve(u, policy).unwrap();
                hits += u.len() - r.misses;
                slots.push(r.slots);
            }
            (hits, slots)
        };
        let (fifo, lru, clock) = (hits(Eviction::Fifo).0, hits(Eviction::Lru).0, hits(Eviction::Clock).0);
        assert!(lru > fifo + 100 && clock > fifo + 50, "LRU {lru} hits, CLOCK {clock}, FIFO {fifo}");
    }

    #[test]
    fn misses_past_the_free_slots_stay_uncached_and_a_repeat_is_an_error() {
        let mut p = PartitionModel::new(3).unwrap();
        let r = p.resolve(&[5, 6, 7, 8], Eviction::Clock).unwrap();
        assert_eq!(r.slots, vec![Some(0), Some(1), Some(2), None]);
        assert_eq!((r.misses, r.uncached), (4, 1));
        let r = p.resolve(&[6, 9], Eviction::Clock).unwrap();
        assert_eq!((r.misses, r.uncached), (1, 0));
        assert_eq!(r.slots, vec![Some(1), Some(0)]);
        assert!(p.resolve(&[1, 1], Eviction::Lru).is_err());
        assert!(PartitionModel::new(0).is_err());
    }
}
