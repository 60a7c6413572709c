//! HGA attention through `hga_runtime::cpu::LayerCache`: every query position routes on its own, as in
//! decode, and reports what it attended and which groups it opened.

use super::{attend_rows, Heads, PositionStats, SequenceAttention};
use crate::config::ModelConfig;
use crate::error::EngineError;
use hga_dsl::ValidSpec;
use hga_runtime::cpu::LayerCache;
use rayon::prelude::*;

/// One sequence's HGA state: a [`LayerCache`] per layer.
#[derive(Debug, Clone)]
pub struct HgaAttention {
    heads: Heads,
    caches: Vec<LayerCache>,
}

impl HgaAttention {
    /// An empty sequence for a model of `cfg` routing with `spec` (whose `[model]` must be the model's:
    /// [`crate::routing::spec_for_model`] guarantees it).
    pub fn new(cfg: &ModelConfig, spec: &ValidSpec) -> Self {
        HgaAttention { heads: Heads::of(cfg), caches: (0..cfg.layers).map(|_| LayerCache::new(spec.clone())).collect() }
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
        out.par_chunks_mut(row).zip(q.par_chunks(row)).zip(stats.par_iter_mut()).enumerate().try_for_each(
            |(i, ((o, qi), s))| -> Result<(), EngineError> {
                let pos = start + i;
                let trace = cache.attend_traced(qi, pos, o)?;
                s.attended += trace.heads.iter().map(|r| r.attended_tokens as u64).sum::<u64>();
                s.visible += (h.q * (pos + 1)) as u64;
                s.groups += trace.distinct_groups_per_kv_head(h.gqa()).iter().map(|&g| g as u64).sum::<u64>();
                s.routings += h.kv as u64;
                Ok(())
            },
        )
    }

    fn len(&self) -> usize {
        self.caches.last().map_or(0, LayerCache::len)
    }
}
