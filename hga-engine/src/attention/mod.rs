//! Attention backends behind one trait, so the forward pass does not care whether a run is dense or
//! routed: [`DenseAttention`] (blocked causal, GEMM-based, the baseline), HGA through
//! `hga_runtime::cpu::LayerCache` ([`HgaAttention`]), and HGA through the runtime's engine API on the
//! CPU backend or the GPU kernels ([`CacheAttention`]).

mod cache;
mod dense;
mod hga;

pub use cache::CacheAttention;
pub use dense::{blocked_causal, DenseAttention};
pub use hga::HgaAttention;
pub use hga_runtime::engine::BackendChoice;

use crate::config::ModelConfig;
use crate::error::EngineError;
use hga_dsl::ValidSpec;
use hga_runtime::offload::Eviction;

/// Per-query-position statistics of the attention, summed over heads and layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PositionStats {
    /// (query head, key) pairs in the softmax.
    pub attended: u64,
    /// (query head, key) pairs causally visible (what dense attention attends).
    pub visible: u64,
    /// Distinct routed groups, summed over KV heads: the transfer cost.
    pub groups: u64,
    /// KV-head routings counted in `groups` (layers × KV heads for a routed backend, 0 for dense).
    pub routings: u64,
    /// Slot-cache misses of the routed groups under each of [`EVICTIONS`], summed over KV heads
    /// (runs that replay the slot cache: [`AttentionKind::HgaSlots`]).
    pub misses: [u64; 3],
    /// KV-head routings replayed through the slot cache (counted in `misses`).
    pub cached_routings: u64,
    /// Speculative prefetch into the replayed slot cache ([`SequenceAttention::speculate`]).
    pub speculation: SpeculationStats,
    /// Lookahead prefetch into the replayed slot cache ([`Lookahead`]).
    pub lookahead: LookaheadStats,
}

/// Lookahead prefetch: right after position t's step of a layer, the same query is routed wider
/// (`chunks` more chunks and `groups` more groups per query head than the spec's `top_chunks` and
/// `top_groups`, over the chunks t's own route saw), and that wider union is resolved into a CLOCK
/// slot cache as a step of its own, off the critical path; position t + 1's real union then resolves
/// against it. As `hga-runtime/examples/eviction_sim.rs`'s `Clock+lookahead`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookahead {
    /// Extra chunks selected per query head.
    pub chunks: u32,
    /// Extra groups opened per query head.
    pub groups: u32,
}

/// Lookahead prefetch ([`Lookahead`]) replayed through its own CLOCK slot cache, summed over KV heads
/// and layers. Like speculation, the prefetch is a resolve step of its own, so this cache runs two
/// steps per token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LookaheadStats {
    /// KV-head routings replayed through the lookahead cache.
    pub routings: u64,
    /// Misses of the real routes: reads on the step's critical path.
    pub critical_misses: u64,
    /// Groups the wide routes brought into the slot cache after their step (misses of the wide unions
    /// that got a slot): PCIe reads off the critical path.
    pub fetched: u64,
    /// Groups of the real routes that the previous position's route (same layer and KV head) did not
    /// open: what a prefetch after the previous step had to foresee (routings after the first only).
    pub new_groups: u64,
    /// Of those, groups the previous position's wide route opened.
    pub foreseen: u64,
}

impl LookaheadStats {
    fn add(&mut self, o: &LookaheadStats) {
        self.routings += o.routings;
        self.critical_misses += o.critical_misses;
        self.fetched += o.fetched;
        self.new_groups += o.new_groups;
        self.foreseen += o.foreseen;
    }
}

/// Where the forward pass takes the hidden state it computes layer `l + 1`'s speculative query from,
/// while layer `l` runs: the earlier, the more of layer `l`'s work a prefetch of the predicted groups
/// can hide behind, and the further the prediction is from layer `l + 1`'s real query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeculateFrom {
    /// Layer `l`'s input (before its attention): the prefetch overlaps all of layer `l`.
    LayerInput,
    /// Layer `l`'s residual stream after its attention (before its MLP): the prefetch overlaps the MLP.
    AfterAttention,
}

/// Speculative prefetch replayed through a CLOCK slot cache: before a layer's step, the groups that
/// a speculative query (layer `l + 1`'s projection of an earlier hidden state) routes to are brought
/// in, so that the step's own misses are only those the speculation did not foresee. Summed over KV
/// heads and layers; layer 0 has no earlier hidden state, so its misses are all late. The prefetch is
/// a resolve step of its own, so this cache runs two steps per token: CLOCK's window of recently used
/// slots (`offload::recent_steps`, in steps) spans about half as many tokens as without prefetch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpeculationStats {
    /// KV-head routings that had a speculative route before them.
    pub routings: u64,
    /// Distinct groups the real routes of those routings opened.
    pub groups: u64,
    /// Of those, groups the speculative route had opened too.
    pub foreseen: u64,
    /// Groups the speculative routes brought into the slot cache ahead of their layer (misses of the
    /// speculative unions that got a slot): PCIe reads that overlap the previous layer's work.
    pub prefetched: u64,
    /// Misses of the real routes left after the prefetch, all layers: reads on the step's critical path.
    pub late_misses: u64,
}

impl SpeculationStats {
    fn add(&mut self, o: &SpeculationStats) {
        self.routings += o.routings;
        self.groups += o.groups;
        self.foreseen += o.foreseen;
        self.prefetched += o.prefetched;
        self.late_misses += o.late_misses;
    }
}

/// The eviction policies a slot-cache replay compares, in the order of [`PositionStats::misses`].
pub const EVICTIONS: [Eviction; 3] = [Eviction::Fifo, Eviction::Clock, Eviction::Lru];

impl PositionStats {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &PositionStats) {
        self.attended += other.attended;
        self.visible += other.visible;
        self.groups += other.groups;
        self.routings += other.routings;
        for (m, o) in self.misses.iter_mut().zip(other.misses) {
            *m += o;
        }
        self.cached_routings += other.cached_routings;
        self.speculation.add(&other.speculation);
        self.lookahead.add(&other.lookahead);
    }
}

/// One sequence's attention state over all layers: the K/V (and, for HGA, summaries) appended so far.
pub trait SequenceAttention: Send {
    /// Appends `n` tokens to layer `layer`: `k` and `v` are `[n][kv_heads][head_dim]`, keys after RoPE.
    fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<(), EngineError>;

    /// Attention of `q` (`[n][q_heads][head_dim]`, after RoPE) at positions `start..start + n` of layer
    /// `layer` into `out` (same shape). Those positions' K/V must be appended: query `i` sees tokens
    /// `0..=start + i` only. Adds position `i`'s statistics to `stats[i]`.
    fn attend(
        &self,
        layer: usize,
        q: &[f32],
        start: usize,
        out: &mut [f32],
        stats: &mut [PositionStats],
    ) -> Result<(), EngineError>;

    /// Whether, and from where, the forward pass should compute speculative queries for
    /// [`SequenceAttention::speculate`] (they cost a query projection per layer).
    fn speculates(&self) -> Option<SpeculateFrom> {
        None
    }

    /// A speculative query `q` for layer `layer` at positions `start..start + n` (`[n][q_heads][head_dim]`,
    /// after RoPE), computed from an earlier hidden state before that layer runs. Called before the
    /// layer's `append` and `attend` of the same positions; the default ignores it.
    fn speculate(&self, layer: usize, q: &[f32], start: usize) -> Result<(), EngineError> {
        let _ = (layer, q, start);
        Ok(())
    }

    /// Tokens appended to the last layer (the sequence length once a forward step is done).
    fn len(&self) -> usize;

    /// Whether nothing was appended.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which attention a run uses.
#[derive(Debug, Clone, PartialEq)]
pub enum AttentionKind {
    /// Dense causal attention.
    Dense,
    /// HGA with this spec (its `[model]` is the checkpoint's).
    Hga(ValidSpec),
    /// HGA with this spec through the CPU `LayerCache` (as `Hga`), each (layer, KV head)'s routed
    /// groups also replayed in position order through a slot partition of `slots` slots under each of
    /// [`EVICTIONS`] (`hga_runtime::offload::PartitionModel`, the GPU resolve's model): hit rates of
    /// the slot cache on real routing.
    HgaSlots {
        /// The routing spec (its `[model]` is the checkpoint's).
        spec: ValidSpec,
        /// Slots per (layer, KV head) partition.
        slots: usize,
        /// Also replay speculative prefetch (a fourth, CLOCK partition): [`SpeculationStats`].
        speculate: Option<SpeculateFrom>,
        /// Also replay lookahead prefetch (another CLOCK partition): [`LookaheadStats`].
        lookahead: Option<Lookahead>,
    },
    /// HGA with this spec through the runtime's engine API ([`CacheAttention`]) on a backend, for
    /// sequences of at most `max_seq_len` tokens.
    HgaCache {
        /// The routing spec (its `[model]` is the checkpoint's).
        spec: ValidSpec,
        /// CPU, GPU, or the GPU when one is usable.
        backend: BackendChoice,
        /// Longest sequence.
        max_seq_len: usize,
    },
}

impl AttentionKind {
    /// A fresh sequence state for a model of `cfg` (an error when the engine API's cache cannot be
    /// created, e.g. no usable GPU for `BackendChoice::Gpu`).
    pub fn new_sequence(&self, cfg: &ModelConfig) -> Result<Box<dyn SequenceAttention>, EngineError> {
        Ok(match self {
            AttentionKind::Dense => Box::new(DenseAttention::new(cfg)),
            AttentionKind::Hga(spec) => Box::new(HgaAttention::new(cfg, spec)),
            AttentionKind::HgaSlots { spec, slots, speculate, lookahead } => {
                Box::new(HgaAttention::with_slot_replay(cfg, spec, *slots, *speculate, *lookahead)?)
            }
            AttentionKind::HgaCache { spec, backend, max_seq_len } => {
                Box::new(CacheAttention::new(cfg, spec, *backend, *max_seq_len)?)
            }
        })
    }

    /// The routing spec, for HGA.
    pub fn spec(&self) -> Option<&ValidSpec> {
        match self {
            AttentionKind::Dense => None,
            AttentionKind::Hga(spec) | AttentionKind::HgaSlots { spec, .. } | AttentionKind::HgaCache { spec, .. } => {
                Some(spec)
            }
        }
    }
}

/// Head counts of one attention layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub q: usize,
    /// KV heads.
    pub kv: usize,
    /// Head dimension.
    pub dim: usize,
}

impl Heads {
    /// The heads of `cfg`.
    pub fn of(cfg: &ModelConfig) -> Self {
        Heads { q: cfg.q_heads(), kv: cfg.kv_heads(), dim: cfg.head_dim() }
    }

    /// Query heads per KV head.
    pub fn gqa(&self) -> usize {
        self.q / self.kv
    }
}

fn shape_error(field: &'static str, got: usize, row: usize) -> EngineError {
    EngineError::Runtime(hga_runtime::RuntimeError::ShapeMismatch {
        field,
        expected: format!("a multiple of {row}"),
        got,
    })
}

/// Checks an attend call's buffers: `q` whole rows of the query heads, `out` as long as `q`, one
/// `stats` entry per query; returns the query count.
/// `layer` as an index of a model of `layers` layers, or the error naming it.
pub(crate) fn check_layer(layer: usize, layers: usize) -> Result<usize, EngineError> {
    if layer < layers {
        Ok(layer)
    } else {
        Err(EngineError::argument("layer", layer, format!("must be < the model's {layers} layers")))
    }
}

pub(crate) fn attend_rows(h: Heads, q: &[f32], out: &[f32], stats: &[PositionStats]) -> Result<usize, EngineError> {
    let n = rows_of("q", q, h.q * h.dim)?;
    let mismatch = |field, expected: usize, got| {
        EngineError::Runtime(hga_runtime::RuntimeError::ShapeMismatch { field, expected: expected.to_string(), got })
    };
    if out.len() != q.len() {
        return Err(mismatch("out", q.len(), out.len()));
    }
    if stats.len() != n {
        return Err(mismatch("stats", n, stats.len()));
    }
    Ok(n)
}

/// Checks that `buf` holds whole rows of `row` floats; returns the row count.
pub(crate) fn rows_of(field: &'static str, buf: &[f32], row: usize) -> Result<usize, EngineError> {
    if buf.len() % row != 0 {
        return Err(shape_error(field, buf.len(), row));
    }
    Ok(buf.len() / row)
}
