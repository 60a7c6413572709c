//! HGA attention through `hga_runtime::cpu::LayerCache`: every query position routes on its own, as in
//! decode, and reports what it attended and which groups it opened.

use super::{attend_rows, check_layer, Heads, Lookahead, PositionStats, SequenceAttention, SpeculateFrom, EVICTIONS};
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
    /// Lookahead prefetch replay, when asked for.
    lookahead: Option<LookaheadReplay>,
}

/// Per KV head, a union of routed groups.
type PerKvHead = Vec<Vec<usize>>;

/// Lookahead prefetch ([`Lookahead`]) through its own CLOCK partition per (layer, KV head).
#[derive(Debug)]
struct LookaheadReplay {
    /// Per layer, a cache of the same K/V routing with the wider budgets (`routing::widen`): its
    /// `route_closed` is the wide route over exactly the chunks the layer's own route sees.
    wide: Vec<LayerCache>,
    /// Per (layer, KV head): the partition, and the previous position's union and wide union (sorted).
    parts: Mutex<Vec<(PartitionModel, Option<Previous>)>>,
}

/// A position's union and wide union, sorted: what the next position's new groups are measured against.
type Previous = (Vec<u32>, Vec<u32>);

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
            lookahead: None,
        }
    }

    /// [`HgaAttention::new`], also replaying every (layer, KV head)'s routed groups, position by
    /// position, through a slot partition of `slots` slots under each of [`EVICTIONS`] (misses in
    /// [`PositionStats::misses`]), and with `speculate`, through a fourth CLOCK partition that
    /// speculative routes prefetch into ([`PositionStats::speculation`]), and with `lookahead`, through
    /// another CLOCK partition that each step's wider route prefetches into after the step
    /// ([`PositionStats::lookahead`]). An error when `slots` is 0 or above 2^31, or when the wider
    /// budgets are invalid for the spec.
    pub fn with_slot_replay(
        cfg: &ModelConfig,
        spec: &ValidSpec,
        slots: usize,
        speculate: Option<SpeculateFrom>,
        lookahead: Option<Lookahead>,
    ) -> Result<Self, EngineError> {
        let one = PartitionModel::new(slots)?;
        let n = cfg.layers * Heads::of(cfg).kv;
        let speculation = speculate.map(|from| {
            let s = Speculation { parts: vec![one.clone(); n], pending: vec![None; cfg.layers] };
            (from, Mutex::new(s))
        });
        let lookahead = match lookahead {
            None => None,
            Some(la) => {
                let wide = crate::routing::widen(spec, la.chunks, la.groups)?;
                Some(LookaheadReplay {
                    wide: (0..cfg.layers).map(|_| LayerCache::new(wide.clone())).collect(),
                    parts: Mutex::new(vec![(one.clone(), None); n]),
                })
            }
        };
        let parts = vec![[one.clone(), one.clone(), one]; n];
        Ok(HgaAttention { slots: Some(Mutex::new(parts)), speculation, lookahead, ..HgaAttention::new(cfg, spec) })
    }
}

impl SequenceAttention for HgaAttention {
    fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<(), EngineError> {
        let l = check_layer(layer, self.caches.len())?;
        self.caches[l].append(k, v)?;
        if let Some(la) = &mut self.lookahead {
            la.wide[l].append(k, v)?;
        }
        Ok(())
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
        let l = check_layer(layer, self.caches.len())?;
        let cache = &self.caches[l];
        let wide = self.lookahead.as_ref().map(|la| &la.wide[l]);
        // Per position: each KV head's union, and (with lookahead) its wide union.
        let unions: Vec<(PerKvHead, PerKvHead)> = out
            .par_chunks_mut(row)
            .zip(q.par_chunks(row))
            .zip(stats.par_iter_mut())
            .enumerate()
            .map(|(i, ((o, qi), s))| -> Result<(PerKvHead, PerKvHead), EngineError> {
                let pos = start + i;
                let trace = cache.attend_traced(qi, pos, o)?;
                let unions = trace.union_per_kv_head(h.gqa());
                s.attended += trace.heads.iter().map(|r| r.attended_tokens as u64).sum::<u64>();
                s.visible += (h.q * (pos + 1)) as u64;
                s.groups += unions.iter().map(|u| u.len() as u64).sum::<u64>();
                s.routings += h.kv as u64;
                // The lookahead route: the same query, after the step, over the chunks it saw.
                let ahead = match wide {
                    Some(w) => w.route_closed(qi, pos)?.union_per_kv_head(h.gqa()),
                    None => Vec::new(),
                };
                Ok(if self.slots.is_some() { (unions, ahead) } else { Default::default() })
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
            let mut ahead_parts = self.lookahead.as_ref().map(|la| la.parts.lock().unwrap_or_else(|e| e.into_inner()));
            let g32 = |u: &[usize]| -> Vec<u32> { u.iter().map(|&g| g as u32).collect() };
            for (i, (s, (per_kv, ahead))) in stats.iter_mut().zip(unions).enumerate() {
                for (kvh, union) in per_kv.iter().enumerate() {
                    let union = g32(union);
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
                    if let Some(parts) = ahead_parts.as_mut() {
                        // The step (its misses are the critical path), then the prefetch of its wider
                        // route, a step of its own off the critical path, for the next position.
                        let ((part, prev), st) = (&mut parts[at], &mut s.lookahead);
                        st.critical_misses += part.resolve(&union, Eviction::Clock)?.misses as u64;
                        let wide = g32(&ahead[kvh]);
                        let fetched = part.resolve(&wide, Eviction::Clock)?;
                        st.fetched += (fetched.misses - fetched.uncached) as u64;
                        st.routings += 1;
                        if let Some((u, w)) = prev {
                            let new = union.iter().filter(|g| u.binary_search(g).is_err());
                            let (n, f) =
                                new.fold((0, 0), |(n, f), g| (n + 1, f + u64::from(w.binary_search(g).is_ok())));
                            st.new_groups += n;
                            st.foreseen += f;
                        }
                        let sorted = |mut v: Vec<u32>| {
                            v.sort_unstable();
                            v
                        };
                        *prev = Some((sorted(union.clone()), sorted(wide)));
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
