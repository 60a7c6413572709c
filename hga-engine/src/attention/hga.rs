//! HGA attention through `hga_runtime::cpu::LayerCache`: every query position routes on its own, as in
//! decode, and reports what it attended and which groups it opened.

use super::{attend_rows, Heads, PositionStats, SequenceAttention, EVICTIONS};
use crate::config::ModelConfig;
use crate::error::EngineError;
use hga_dsl::ValidSpec;
use hga_runtime::cpu::LayerCache;
use hga_runtime::offload::PartitionModel;
use rayon::prelude::*;
use std::sync::Mutex;

/// One sequence's HGA state: a [`LayerCache`] per layer, and optionally a slot-cache replay.
#[derive(Debug)]
pub struct HgaAttention {
    heads: Heads,
    caches: Vec<LayerCache>,
    /// Per (layer, KV head): its slot partition under each of [`EVICTIONS`].
    slots: Option<Mutex<Vec<[PartitionModel; 3]>>>,
}

impl HgaAttention {
    /// An empty sequence for a model of `cfg` routing with `spec` (whose `[model]` must be the model's:
    /// [`crate::routing::spec_for_model`] guarantees it).
    pub fn new(cfg: &ModelConfig, spec: &ValidSpec) -> Self {
        HgaAttention {
            heads: Heads::of(cfg),
            caches: (0..cfg.layers).map(|_| LayerCache::new(spec.clone())).collect(),
            slots: None,
        }
    }

    /// [`HgaAttention::new`], also replaying every (layer, KV head)'s routed groups, position by
    /// position, through a slot partition of `slots` slots under each of [`EVICTIONS`] (misses in
    /// [`PositionStats::misses`]). An error when `slots` is 0 or above 2^31.
    pub fn with_slot_replay(cfg: &ModelConfig, spec: &ValidSpec, slots: usize) -> Result<Self, EngineError> {
        let one = PartitionModel::new(slots)?;
        let parts = vec![[one.clone(), one.clone(), one]; cfg.layers * Heads::of(cfg).kv];
        Ok(HgaAttention { slots: Some(Mutex::new(parts)), ..HgaAttention::new(cfg, spec) })
    }
}

impl SequenceAttention for HgaAttention {
    fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<(), EngineError> {
        Ok(self.caches[layer].append(k, v)?)
    }

    fn attend(
        &self,
        layer: usize,
        q: &[f32],
        start: usize,
        out: &mut [f32],
        stats: &mut [PositionStats],
    ) -> Result<(), EngineError> {
        let h = self.heads;
        let row = h.q * h.dim;
        attend_rows(h, q, out, stats)?;
        let cache = &self.caches[layer];
        let unions: Vec<Vec<Vec<usize>>> = out
            .par_chunks_mut(row)
            .zip(q.par_chunks(row))
            .zip(stats.par_iter_mut())
            .enumerate()
            .map(|(i, ((o, qi), s))| -> Result<Vec<Vec<usize>>, EngineError> {
                let pos = start + i;
                let trace = cache.attend_traced(qi, pos, o)?;
                let unions = trace.union_per_kv_head(h.gqa());
                s.attended += trace.heads.iter().map(|r| r.attended_tokens as u64).sum::<u64>();
                s.visible += (h.q * (pos + 1)) as u64;
                s.groups += unions.iter().map(|u| u.len() as u64).sum::<u64>();
                s.routings += h.kv as u64;
                Ok(if self.slots.is_some() { unions } else { Vec::new() })
            })
            .collect::<Result<_, _>>()?;
        if let Some(slots) = &self.slots {
            // Positions in order: the partitions see the steps as a decoder would.
            let mut parts = slots.lock().unwrap_or_else(|e| e.into_inner());
            for (s, per_kv) in stats.iter_mut().zip(unions) {
                for (kvh, union) in per_kv.iter().enumerate() {
                    let union: Vec<u32> = union.iter().map(|&g| g as u32).collect();
                    for (p, policy) in EVICTIONS.iter().enumerate() {
                        s.misses[p] += parts[layer * h.kv + kvh][p].resolve(&union, *policy)?.misses as u64;
                    }
                    s.cached_routings += 1;
                }
            }
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.caches.last().map_or(0, LayerCache::len)
    }
}
