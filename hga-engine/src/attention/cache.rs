//! HGA attention through the runtime's engine API ([`HgaCache`]): the calls an inference engine makes,
//! on the CPU backend or on the GPU kernels, so a model's quality can be evaluated through either.
//!
//! The cache attends each sequence's newest query, so the model's block of positions is taken one
//! position at a time: the block's keys and values wait here after `append`, and `attend` appends
//! position `i`'s token to the cache, then attends query `i` (what decoding that block would do).

use super::{attend_rows, check_layer, rows_of, Heads, PositionStats, SequenceAttention};
use crate::config::ModelConfig;
use crate::error::EngineError;
use hga_dsl::ValidSpec;
use hga_runtime::engine::{BackendChoice, CacheConfig, HgaCache, SeqId};
use std::sync::Mutex;

/// One sequence in its own [`HgaCache`].
#[derive(Debug)]
pub struct CacheAttention {
    heads: Heads,
    layers: usize,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    cache: HgaCache,
    seq: SeqId,
    /// Per layer: keys and values appended by the model and not yet in the cache.
    pending: Vec<(Vec<f32>, Vec<f32>)>,
}

impl CacheAttention {
    /// A cache for one sequence of at most `max_seq_len` tokens of a model of `cfg`, routing with
    /// `spec` (its `[model]` must be the model's), on `backend`; kernel parameters from the checked-in
    /// tuned configs.
    pub fn new(
        cfg: &ModelConfig,
        spec: &ValidSpec,
        backend: BackendChoice,
        max_seq_len: usize,
    ) -> Result<Self, EngineError> {
        let tuned = kernels_generated::tuned::all()
            .map_err(|e| EngineError::argument("tuned configs", "kernels-generated", e.to_string()))?;
        let config = CacheConfig::new(spec.clone(), cfg.layers, max_seq_len).with_tuned(tuned);
        let mut cache = HgaCache::new(config, backend)?;
        let seq = cache.add_sequence()?;
        let state = State { cache, seq, pending: vec![(Vec::new(), Vec::new()); cfg.layers] };
        Ok(CacheAttention { heads: Heads::of(cfg), layers: cfg.layers, state: Mutex::new(state) })
    }

    /// The backend the cache runs on.
    pub fn backend(&self) -> hga_runtime::engine::BackendKind {
        self.lock().cache.backend()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves no half-applied state worth refusing: every cache call
        // is all or nothing.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SequenceAttention for CacheAttention {
    fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<(), EngineError> {
        let h = self.heads;
        let row = h.kv * h.dim;
        let n = rows_of("k", k, row)?;
        if rows_of("v", v, row)? != n {
            let e =
                hga_runtime::RuntimeError::ShapeMismatch { field: "v", expected: k.len().to_string(), got: v.len() };
            return Err(e.into());
        }
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        let pending = &mut st.pending[check_layer(layer, self.layers)?];
        pending.0.extend_from_slice(k);
        pending.1.extend_from_slice(v);
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
        let (q_row, kv_row) = (h.q * h.dim, h.kv * h.dim);
        let n = attend_rows(h, q, out, stats)?;
        let layer = check_layer(layer, self.layers)?;
        let mut st = self.lock();
        let State { cache, seq, pending } = &mut *st;
        let have = cache.seq_len(*seq, layer)?;
        let waiting = pending.get(layer).map_or(0, |p| p.0.len() / kv_row);
        if start != have || n != waiting {
            return Err(EngineError::argument(
                "start",
                start,
                format!("queries must be the {waiting} positions appended since the last attend, from {have}"),
            ));
        }
        let (k, v) = std::mem::take(&mut pending[layer]);
        for i in 0..n {
            let (kr, vr) = (i * kv_row..(i + 1) * kv_row, i * kv_row..(i + 1) * kv_row);
            let step = cache.append(*seq, layer, &k[kr], &v[vr]).and_then(|()| {
                cache.attend(layer, &[*seq], &q[i * q_row..(i + 1) * q_row], &mut out[i * q_row..(i + 1) * q_row])
            });
            let t = match step {
                Ok(t) => t,
                Err(e) => {
                    // Positions before i are in the cache; the rest wait again (a failed append left
                    // the cache unchanged; after a failed attend, position i is appended).
                    let from = if cache.seq_len(*seq, layer)? > start + i { i + 1 } else { i };
                    pending[layer] = (k[from * kv_row..].to_vec(), v[from * kv_row..].to_vec());
                    return Err(e.into());
                }
            };
            let s = &mut stats[i];
            s.attended += t.attended_tokens;
            s.visible += (h.q * (start + i + 1)) as u64;
            s.groups += t.groups_per_kv_head.iter().map(|&g| g as u64).sum::<u64>();
            s.routings += h.kv as u64;
        }
        Ok(())
    }

    fn len(&self) -> usize {
        let st = self.lock();
        let last = self.layers - 1;
        let waiting = st.pending[last].0.len() / (self.heads.kv * self.heads.dim);
        st.cache.seq_len(st.seq, last).unwrap_or(0) + waiting
    }
}
