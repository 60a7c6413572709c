//! The host K/V store: group-contiguous records per (layer, sequence, KV head, group) in an arena that
//! grows without copying, within a RAM budget (DESIGN.md §3).

use super::arena::{Arena, BlockSource, RecordRef};
use super::record::RecordLayout;
use crate::RuntimeError;
use std::collections::HashMap;

/// Exact K/V of closed groups, one record per (layer, sequence, KV head, group): `g × D` keys then
/// `g × D` values, adjacent, so that opening a group is one contiguous read.
pub struct HostStore<S: BlockSource> {
    layout: RecordLayout,
    kv_heads: usize,
    arena: Arena<S>,
    /// (layer, sequence) → per KV head, the record of each group in order.
    index: HashMap<(u32, u64), Vec<Vec<RecordRef>>>,
}

impl<S: BlockSource> std::fmt::Debug for HostStore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostStore").field("layout", &self.layout).field("arena", &self.arena).finish()
    }
}

impl<S: BlockSource> HostStore<S> {
    /// An empty store taking blocks of `records_per_block` records from `source`, at most
    /// `budget_bytes` in all.
    pub fn new(
        source: S,
        layout: RecordLayout,
        kv_heads: usize,
        records_per_block: usize,
        budget_bytes: u64,
    ) -> Result<Self, RuntimeError> {
        if layout.group == 0 || layout.head_dim == 0 || kv_heads == 0 {
            return Err(RuntimeError::InvalidConfig {
                field: "host_store",
                value: format!("group {} head_dim {} kv_heads {kv_heads}", layout.group, layout.head_dim),
                allowed: "all must be >= 1".into(),
            });
        }
        if !(1..=1 << 20).contains(&records_per_block) {
            return Err(RuntimeError::InvalidConfig {
                field: "records_per_block",
                value: records_per_block.to_string(),
                allowed: "must be in 1..=1048576".into(),
            });
        }
        let arena = Arena::new(source, layout.elems(), records_per_block, budget_bytes);
        Ok(HostStore { layout, kv_heads, arena, index: HashMap::new() })
    }

    /// The record shape.
    pub fn layout(&self) -> RecordLayout {
        self.layout
    }

    /// The arena (bytes reserved, budget, live records).
    pub fn arena(&self) -> &Arena<S> {
        &self.arena
    }

    /// Groups stored for (layer, sequence).
    pub fn groups(&self, layer: u32, seq: u64) -> usize {
        self.index.get(&(layer, seq)).map_or(0, |h| h[0].len())
    }

    /// Appends whole groups of one (layer, sequence): `k` and `v` are `[n][kv_heads][D]` element bits,
    /// `n` a multiple of the group size. All or nothing: on error the store is unchanged.
    pub fn append_groups(&mut self, layer: u32, seq: u64, k: &[u16], v: &[u16]) -> Result<(), RuntimeError> {
        let (g, d, h) = (self.layout.group, self.layout.head_dim, self.kv_heads);
        let per_group = g * h * d;
        if k.len() % per_group != 0 {
            return Err(RuntimeError::ShapeMismatch {
                field: "k",
                expected: format!("a multiple of group {g} × {h} heads × {d} = {per_group}"),
                got: k.len(),
            });
        }
        if v.len() != k.len() {
            return Err(RuntimeError::ShapeMismatch { field: "v", expected: k.len().to_string(), got: v.len() });
        }
        let n_groups = k.len() / per_group;
        let mut records = self.arena.take(n_groups * h)?.into_iter();
        let heads = self.index.entry((layer, seq)).or_insert_with(|| vec![Vec::new(); h]);
        for j in 0..n_groups {
            for (kvh, list) in heads.iter_mut().enumerate() {
                let r = records.next().expect("took n_groups × kv_heads records");
                let rec = self.arena.record_mut(r);
                let (rk, rv) = rec.split_at_mut(g * d);
                for t in 0..g {
                    let src = ((j * g + t) * h + kvh) * d;
                    rk[t * d..(t + 1) * d].copy_from_slice(&k[src..src + d]);
                    rv[t * d..(t + 1) * d].copy_from_slice(&v[src..src + d]);
                }
                list.push(r);
            }
        }
        Ok(())
    }

    /// Appends `n_groups` records per KV head to (layer, sequence) without writing them (the GPU's
    /// append kernels fill them through [`HostStore::record_device_addr`]); a reused record holds stale
    /// data until then. All or nothing: `HostOutOfMemory` (store unchanged) beyond the budget.
    pub fn add_empty_groups(&mut self, layer: u32, seq: u64, n_groups: usize) -> Result<(), RuntimeError> {
        let h = self.kv_heads;
        let mut records = self.arena.take(n_groups * h)?.into_iter();
        let heads = self.index.entry((layer, seq)).or_insert_with(|| vec![Vec::new(); h]);
        for _ in 0..n_groups {
            for list in heads.iter_mut() {
                list.push(records.next().expect("took n_groups × kv_heads records"));
            }
        }
        Ok(())
    }

    /// Keeps the first `keep` groups of (layer, sequence) and releases the rest (undoes
    /// [`HostStore::add_empty_groups`] when the write that was to follow fails).
    pub fn truncate_groups(&mut self, layer: u32, seq: u64, keep: usize) {
        if let Some(heads) = self.index.get_mut(&(layer, seq)) {
            let mut gone = Vec::new();
            for list in heads.iter_mut() {
                gone.extend(list.drain(keep.min(list.len())..));
            }
            self.arena.release(gone);
        }
    }

    /// The device address of group `group`'s record of (layer, sequence, KV head), when the store's
    /// blocks are device-mapped.
    pub fn record_device_addr(&self, layer: u32, seq: u64, kv_head: usize, group: usize) -> Option<u64> {
        self.arena.record_device_addr(self.record_ref(layer, seq, kv_head, group)?)
    }

    /// Where group `group` of (layer, sequence, KV head) lives.
    pub fn record_ref(&self, layer: u32, seq: u64, kv_head: usize, group: usize) -> Option<RecordRef> {
        self.index.get(&(layer, seq))?.get(kv_head)?.get(group).copied()
    }

    /// The record of one group: keys then values.
    pub fn group(&self, layer: u32, seq: u64, kv_head: usize, group: usize) -> Option<&[u16]> {
        Some(self.arena.record(self.record_ref(layer, seq, kv_head, group)?))
    }

    /// Drops every layer of a sequence; its records are reused by later appends.
    pub fn remove_sequence(&mut self, seq: u64) {
        let keys: Vec<(u32, u64)> = self.index.keys().filter(|k| k.1 == seq).copied().collect();
        for key in keys {
            let heads = self.index.remove(&key).expect("listed above");
            self.arena.release(heads.into_iter().flatten());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::HeapSource;

    /// Empty groups are taken all or nothing within the budget, released by truncation, and reused.
    #[test]
    fn empty_groups_within_budget() {
        let layout = RecordLayout { group: 4, head_dim: 8 };
        let budget = 10 * layout.bytes() as u64;
        let mut s = HostStore::new(HeapSource, layout, 2, 2, budget).unwrap();
        s.add_empty_groups(0, 7, 3).unwrap();
        assert_eq!(s.groups(0, 7), 3);
        let err = s.add_empty_groups(1, 7, 3).unwrap_err();
        assert!(matches!(err, RuntimeError::HostOutOfMemory { budget: b, .. } if b == budget), "{err}");
        assert_eq!((s.groups(1, 7), s.arena().live_records()), (0, 6));
        s.truncate_groups(0, 7, 1);
        assert_eq!((s.groups(0, 7), s.arena().live_records()), (1, 2));
        s.add_empty_groups(1, 7, 4).unwrap();
        assert_eq!((s.groups(1, 7), s.arena().live_records()), (4, 10));
        // Heap blocks are not device-mapped.
        assert_eq!(s.record_device_addr(1, 7, 1, 3), None);
        assert!(s.record_ref(1, 7, 1, 3).is_some() && s.record_ref(1, 7, 1, 4).is_none());
    }
}
