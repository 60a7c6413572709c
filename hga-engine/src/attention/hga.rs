//! HGA attention through `hga_runtime::cpu::LayerCache`: every query position routes on its own, as in
//! decode, and reports what it attended and which groups it opened.

use super::{attend_rows, check_layer, Heads, PositionStats, SequenceAttention, SpeculateFrom, EVICTIONS};
use crate::config::ModelConfig;
use crate::error::EngineError;
use hga_dsl::ValidSpec;
use hga_runtime::cpu::LayerCache;
use hga_runtime::offload::{Eviction, PartitionModel};
use rayon::prelude::*;
use std::sync::Mutex;

/// One sequence's HGA state: a [`LayerCache`] per layer, and optionally a slot-cache replay.
#[derive(Debug)]
pub struct HgaAttention {
    heads: Heads,
    caches: Vec<LayerCache>,
    /// Per (layer, KV head): its slot partition under each of [`EVICTIONS`].
    slots: Option<Mutex<Vec<[PartitionModel; 3]>>>,
    /// Speculative prefetch replay, when asked for.
    speculation: Option<(SpeculateFrom, Mutex<Speculation>)>,
}

/// Speculative prefetch through its own CLOCK partition per (layer, KV head).
#[derive(Debug)]
struct Speculation {
    parts: Vec<PartitionModel>,
    /// Per layer: the first position and the speculative queries (`[n][q_heads][d]`) `speculate` was
    /// given and `attend` has not replayed yet. They are routed at `attend`, after the layer's append
    /// (a prefill block appends many positions at once), over the chunks a decoder's speculation sees:
    /// those closed before the position's own token is appended.
    pending: Vec<Option<(usize, Vec<f32>)>>,
}

impl HgaAttention {
    /// An empty sequence for a model of `cfg` routing with `spec` (whose `[model]` must be the model's:
    /// [`crate::routing::spec_for_model`] guarantees it).
    pub fn new(cfg: &ModelConfig, spec: &ValidSpec) -> Self {
        HgaAttention {
            heads: Heads::of(cfg),
            caches: (0..cfg.layers).map(|_| LayerCache::new(spec.clone())).collect(),
            slots: None,
            speculation: None,
        }
    }

    /// [`HgaAttention::new`], also replaying every (layer, KV head)'s routed groups, position by
    /// position, through a slot partition of `slots` slots under each of [`EVICTIONS`] (misses in
    /// [`PositionStats::misses`]), and with `speculate`, through a fourth CLOCK partition that
    /// speculative routes prefetch into ([`PositionStats::speculation`]). An error when `slots` is 0 or
    /// above 2^31.
    pub fn with_slot_replay(
        cfg: &ModelConfig,
        spec: &ValidSpec,
        slots: usize,
        speculate: Option<SpeculateFrom>,
    ) -> Result<Self, EngineError> {
        let one = PartitionModel::new(slots)?;
        let n = cfg.layers * Heads::of(cfg).kv;
        let speculation = speculate.map(|from| {
            let s = Speculation { parts: vec![one.clone(); n], pending: vec![None; cfg.layers] };
            (from, Mutex::new(s))
        });
        let parts = vec![[one.clone(), one.clone(), one]; n];
        Ok(HgaAttention { slots: Some(Mutex::new(parts)), speculation, ..HgaAttention::new(cfg, spec) })
    }
}

impl SequenceAttention for HgaAttention {
    fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<(), EngineError> {
        let l = check_layer(layer, self.caches.len())?;
        Ok(self.caches[l].append(k, v)?)
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
        let cache = &self.caches[check_layer(layer, self.caches.len())?];
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
            let mut spec = self.speculation.as_ref().map(|(_, m)| m.lock().unwrap_or_else(|e| e.into_inner()));
            let pending = spec.as_mut().and_then(|s| s.pending[layer].take());
            let pending = match pending {
                None => Vec::new(),
                Some((at, queries)) if at == start && queries.len() == q.len() => queries,
                Some((at, queries)) => {
                    return Err(EngineError::argument(
                        "speculate",
                        format!("{} values at position {at}", queries.len()),
                        format!(
                            "speculative queries for layer {layer} must be for the {} values at position {start} it attends",
                            q.len()
                        ),
                    ))
                }
            };
            // A decoder speculates before the layer appends the position's token: position p sees the
            // chunks closed by tokens 0..p, which `route_closed(.., p - 1)` gives after the append.
            let guesses: Vec<Vec<Vec<u32>>> = pending
                .par_chunks(row)
                .enumerate()
                .map(|(i, qi)| -> Result<Vec<Vec<u32>>, EngineError> {
                    let trace = cache.route_closed(qi, (start + i).saturating_sub(1))?;
                    let per_kv = trace.union_per_kv_head(h.gqa());
                    Ok(per_kv.into_iter().map(|u| u.into_iter().map(|g| g as u32).collect()).collect())
                })
                .collect::<Result<_, _>>()?;
            for (i, (s, per_kv)) in stats.iter_mut().zip(unions).enumerate() {
                for (kvh, union) in per_kv.iter().enumerate() {
                    let union: Vec<u32> = union.iter().map(|&g| g as u32).collect();
                    let at = layer * h.kv + kvh;
                    for (p, policy) in EVICTIONS.iter().enumerate() {
                        s.misses[p] += parts[at][p].resolve(&union, *policy)?.misses as u64;
                    }
                    s.cached_routings += 1;
                    if let Some(sp) = spec.as_mut() {
                        let part = &mut sp.parts[at];
                        let st = &mut s.speculation;
                        if let Some(guess) = guesses.get(i).map(|p| &p[kvh]) {
                            // The prefetch is a step of its own before the layer's: it stamps the
                            // guessed groups, and may evict groups the real route then misses.
                            let fetched = part.resolve(guess, Eviction::Clock)?;
                            st.prefetched += (fetched.misses - fetched.uncached) as u64;
                            st.routings += 1;
                            st.groups += union.len() as u64;
                            st.foreseen += union.iter().filter(|g| guess.contains(g)).count() as u64;
                        }
                        st.late_misses += part.resolve(&union, Eviction::Clock)?.misses as u64;
                    }
                }
            }
        }
        Ok(())
    }

    fn speculates(&self) -> Option<SpeculateFrom> {
        self.speculation.as_ref().map(|(from, _)| *from)
    }

    fn speculate(&self, layer: usize, q: &[f32], start: usize) -> Result<(), EngineError> {
        let Some((_, spec)) = &self.speculation else { return Ok(()) };
        let mut spec = spec.lock().unwrap_or_else(|e| e.into_inner());
        let l = check_layer(layer, spec.pending.len())?;
        spec.pending[l] = Some((start, q.to_vec()));
        Ok(())
    }

    fn len(&self) -> usize {
        self.caches.last().map_or(0, LayerCache::len)
    }
}
