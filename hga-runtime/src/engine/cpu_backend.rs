//! The CPU backend behind the engine API: one [`LayerCache`] per (sequence, layer).

use super::telemetry::StepTelemetry;
use super::SeqId;
use crate::cpu::{HeadLayout, LayerCache};
use crate::offload::{GroupKey, Placement, RecordLayout, SlotPool};
use crate::RuntimeError;
use hga_dsl::ValidSpec;
use rayon::prelude::*;
use std::collections::HashMap;
use std::time::Instant;

/// K/V of every live sequence in host memory, f32, attended by the reference implementation.
///
/// It also models the GPU working set: a [`SlotPool`] of the configured GPU budget in bf16 group
/// records sees every step's routed groups, so the telemetry reports the hit rate and host→device bytes
/// the GPU backend would have at the same budget, approximately: this pool is exact LRU over all
/// groups, while the GPU partitions its slots per (sequence, KV head) and evicts by
/// [`Eviction::Clock`](crate::offload::Eviction) (within 3% of exact LRU's misses on a simulated hga-bench trace).
#[derive(Debug)]
pub(crate) struct CpuBackend {
    spec: ValidSpec,
    layers: usize,
    seqs: HashMap<SeqId, Vec<LayerCache>>,
    pool: SlotPool,
    record_bytes: u64,
}

/// GPU working-set budget the CPU backend models when none is configured.
pub(crate) const MODEL_GPU_BUDGET: u64 = 1 << 30;

impl CpuBackend {
    /// `slots` records in the modelled working set.
    pub(crate) fn new(spec: ValidSpec, layers: usize, slots: usize) -> Result<Self, RuntimeError> {
        let record_bytes = Self::record(&spec).bytes() as u64;
        Ok(CpuBackend { spec, layers, seqs: HashMap::new(), pool: SlotPool::new(slots)?, record_bytes })
    }

    /// The bf16 group record of `spec`.
    pub(crate) fn record(spec: &ValidSpec) -> RecordLayout {
        RecordLayout { group: spec.routing().group as usize, head_dim: spec.head_dim() }
    }

    /// Host bytes one (sequence, layer) holds at `len` tokens: f32 keys and values plus summaries.
    pub(crate) fn host_bytes(spec: &ValidSpec, len: usize) -> u64 {
        let l = HeadLayout::of(spec);
        let r = spec.routing();
        let width = r.score.vectors() * l.head_dim;
        let kv = (len * l.kv_heads * l.head_dim * 2) as u64;
        let sums = ((len / r.chunk as usize) * l.kv_heads * width * (1 + spec.groups_per_chunk())) as u64;
        (kv + sums) * 4
    }

    pub(crate) fn add_sequence(&mut self, id: SeqId) {
        let caches = (0..self.layers).map(|_| LayerCache::new(self.spec.clone())).collect();
        self.seqs.insert(id, caches);
    }

    pub(crate) fn remove_sequence(&mut self, id: SeqId) {
        self.seqs.remove(&id);
        self.pool.remove_sequence(id.0);
    }

    /// Appends (already validated by the caller; `LayerCache` checks again and changes nothing on error).
    pub(crate) fn append(&mut self, id: SeqId, layer: usize, k: &[f32], v: &[f32]) -> Result<(), RuntimeError> {
        let cache = self.seqs.get_mut(&id).ok_or(RuntimeError::UnknownSequence { id: id.0 })?;
        cache[layer].append(k, v)
    }

    /// Decode attention of each sequence's newest query; fills the routing part of the telemetry.
    pub(crate) fn attend(
        &mut self,
        layer: usize,
        seqs: &[SeqId],
        q: &[f32],
        out: &mut [f32],
        tel: &mut StepTelemetry,
    ) -> Result<(), RuntimeError> {
        let l = HeadLayout::of(&self.spec);
        let row = l.q_heads * l.head_dim;
        let caches: Vec<&LayerCache> = seqs
            .iter()
            .map(|id| self.seqs.get(id).map(|c| &c[layer]).ok_or(RuntimeError::UnknownSequence { id: id.0 }))
            .collect::<Result<_, _>>()?;
        let t0 = Instant::now();
        let traces = caches
            .par_iter()
            .zip(q.par_chunks(row))
            .zip(out.par_chunks_mut(row))
            .map(|((c, q), o)| c.decode_traced(q, o))
            .collect::<Result<Vec<_>, _>>()?;
        tel.stages.attend = t0.elapsed();
        // Per sequence, per KV head: the distinct groups routed (the fetch set).
        let gqa = l.gqa();
        let mut keys = Vec::new();
        for (t, id) in traces.iter().zip(seqs) {
            let mut per_kv = Vec::with_capacity(l.kv_heads);
            for heads in t.heads.chunks(gqa) {
                let mut all: Vec<usize> = heads.iter().flat_map(|h| h.groups.iter().copied()).collect();
                all.sort_unstable();
                all.dedup();
                per_kv.push(all);
            }
            tel.groups_per_kv_head.extend(per_kv.iter().map(Vec::len));
            tel.attended_tokens += t.heads.iter().map(|h| h.attended_tokens as u64).sum::<u64>();
            for (kv_head, groups) in per_kv.iter().enumerate() {
                keys.extend(groups.iter().map(|&g| GroupKey {
                    layer: layer as u32,
                    seq: id.0,
                    kv_head: kv_head as u32,
                    group: g as u32,
                }));
            }
        }
        // The pool was sized at creation for the largest possible step, so placing cannot fail.
        for p in self.pool.place_step(&keys)? {
            match p {
                Placement::Hit(_) => tel.hits += 1,
                Placement::Miss { .. } => tel.misses += 1,
            }
        }
        tel.bytes_h2d = tel.misses * self.record_bytes;
        Ok(())
    }
}

/// `decode` returning the trace (the CPU backend's `decode` has no traced form).
trait DecodeTraced {
    fn decode_traced(&self, q: &[f32], out: &mut [f32]) -> Result<crate::cpu::RouteTrace, RuntimeError>;
}

impl DecodeTraced for LayerCache {
    fn decode_traced(&self, q: &[f32], out: &mut [f32]) -> Result<crate::cpu::RouteTrace, RuntimeError> {
        let pos = self.len().checked_sub(1).ok_or(RuntimeError::PositionOutOfRange { field: "pos", pos: 0, len: 0 })?;
        self.attend_traced(q, pos, out)
    }
}
