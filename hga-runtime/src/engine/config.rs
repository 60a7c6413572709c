//! What a cache is created with: the model's spec, layer count, length and memory limits.

use crate::cpu::HeadLayout;
use crate::cuda::Widening;
use crate::RuntimeError;
use hga_dsl::tuned::TunedConfig;
use hga_dsl::ValidSpec;

/// Configuration of one [`super::HgaCache`]: the model, the limits appends are checked against, the
/// memory budgets, and how attend runs and reports.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Head layout, RoPE and routing (shared by all layers).
    pub spec: ValidSpec,
    /// Attention layers of the model (≥ 1).
    pub layers: usize,
    /// Most tokens one sequence may hold per layer (≥ 1); appends beyond it are errors.
    pub max_seq_len: usize,
    /// Most sequences alive at once (≥ 1).
    pub max_sequences: usize,
    /// Host RAM the K/V store may use, in bytes (all layers and sequences together).
    pub host_budget_bytes: u64,
    /// GPU memory the working set (slot pool) may use, in bytes; `None` derives it from free GPU memory
    /// (a quarter of it). The CPU backend uses it to size its modelled slot pool.
    pub gpu_budget_bytes: Option<u64>,
    /// Tuned configs (`kernels-generated/configs/*.toml`, or the tuner's `--out`) the GPU backend
    /// resolves its kernel parameters from (exact bucket → nearest bucket → other routing budgets → same-arch
    /// default → built-in default, `hga_dsl::tuned::resolve`); empty: the spec's own kernel parameters.
    pub tuned: Vec<TunedConfig>,
    /// What each attend call reports ([`TelemetryLevel::Full`] by default).
    pub telemetry: TelemetryLevel,
    /// GPU backend: replay each layer's route → fetch → attend launch chain (with the telemetry
    /// read-back) as one CUDA graph, captured on the layer's first attend and again only when its
    /// buffers change or the longest sequence outgrows the captured chunk-score grid (which has about
    /// 1/8 headroom). Saves per-launch overhead (about 5–6 µs per layer step on the H200 at batch 1);
    /// the telemetry then times the chain as a whole (`StageTimes::device`) instead of per stage.
    /// Default `true`; the CPU backend ignores it.
    pub cuda_graph: bool,
    /// GPU backend: after each layer's attend, a lookahead for the layer's next step
    /// ([`crate::cuda::DecodeBatch::lookahead`]): the step's own queries routed this much wider on a
    /// second stream, their runners-up read into the layer's slot cache while the rest of the model
    /// runs. It removes misses from the next step's critical path for more PCIe reads off it (on
    /// hga-bench's drifting queries, `8,32` cut the steady misses at 64K from 53 to 11 per step for
    /// 210 groups read; BENCHMARKS.md): it pays while the reads of every layer fit in a token's time
    /// on the bus, and while the host has time to issue it: 28–50 µs of host time per attend call on
    /// an H100 host (about ten driver calls), which a loop that waits for every step pays in series
    /// (measured there: per-call time up 20–40%) and an engine that queues ahead of the GPU
    /// (device buffers, [`TelemetryLevel::Off`]) hides. It needs queries that change slowly from
    /// token to token: on tiny-code's real routing of held-out text it removed no misses
    /// (`hga-engine eval --lookahead`, BENCHMARKS.md). Each layer's slot pool must hold the widened
    /// union: a `gpu_budget_bytes` that serves the plain step but not that is an
    /// [`RuntimeError::InvalidConfig`] on `lookahead` when the cache is made. An error queueing it is
    /// returned by the attend call after the output is written. `None` (the default) runs none; the CPU
    /// backend ignores it.
    pub lookahead: Option<Widening>,
}

/// How much telemetry an attend call gathers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TelemetryLevel {
    /// Everything in [`super::StepTelemetry`]: working-set hits and misses, bytes moved, groups per
    /// (sequence, KV head), attended tokens, device time per stage. The GPU backend reads its counters
    /// back with one copy per call and so waits for the step to finish (and checks that every routed
    /// group had a host record).
    #[default]
    Full,
    /// Only `sequences`, `graph_replay` and the host time `stages.total`. The GPU backend reads nothing back, so
    /// [`super::HgaCache::attend_device`] returns without waiting for the GPU (the output is complete in
    /// the output buffer's stream order). The CPU backend fills the telemetry anyway.
    Off,
}

impl CacheConfig {
    /// A configuration with 16 sequences, a host budget of 64 GiB and a GPU budget derived from free
    /// memory.
    pub fn new(spec: ValidSpec, layers: usize, max_seq_len: usize) -> Self {
        CacheConfig {
            spec,
            layers,
            max_seq_len,
            max_sequences: 16,
            host_budget_bytes: 64 << 30,
            gpu_budget_bytes: None,
            tuned: Vec::new(),
            telemetry: TelemetryLevel::Full,
            cuda_graph: true,
            lookahead: None,
        }
    }

    /// Sets the GPU backend's lookahead ([`CacheConfig::lookahead`]).
    pub fn with_lookahead(mut self, widening: Option<Widening>) -> Self {
        self.lookahead = widening;
        self
    }

    /// Adds tuned configs for the GPU backend to resolve kernel parameters from.
    pub fn with_tuned(mut self, configs: impl IntoIterator<Item = TunedConfig>) -> Self {
        self.tuned.extend(configs);
        self
    }

    /// Sets the telemetry level.
    pub fn with_telemetry(mut self, level: TelemetryLevel) -> Self {
        self.telemetry = level;
        self
    }

    /// Turns the GPU backend's CUDA graph replay of the attend chain on or off.
    pub fn with_cuda_graph(mut self, on: bool) -> Self {
        self.cuda_graph = on;
        self
    }

    /// Head counts of the spec.
    pub fn layout(&self) -> HeadLayout {
        HeadLayout::of(&self.spec)
    }

    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let bad = |field: &'static str, value: String, allowed: &str| {
            Err(RuntimeError::InvalidConfig { field, value, allowed: allowed.to_string() })
        };
        if self.layers == 0 || self.layers > 4096 {
            return bad("layers", self.layers.to_string(), "must be in 1..=4096");
        }
        if self.max_seq_len == 0 || self.max_seq_len > 1 << 30 {
            return bad("max_seq_len", self.max_seq_len.to_string(), "must be in 1..=2^30");
        }
        if self.max_sequences == 0 || self.max_sequences > 1 << 16 {
            return bad("max_sequences", self.max_sequences.to_string(), "must be in 1..=65536");
        }
        if self.host_budget_bytes == 0 {
            return bad("host_budget_bytes", "0".into(), "must be > 0");
        }
        if self.gpu_budget_bytes == Some(0) {
            return bad("gpu_budget_bytes", "0".into(), "must be > 0 (or None to derive it)");
        }
        if let Some(w) = self.lookahead {
            let top = self.spec.routing().top_groups as usize;
            let most = crate::cuda::layout::max_group_budget(top) - top;
            if w == Widening::default() || w.extra_groups > most {
                return bad(
                    "lookahead",
                    format!("{} chunks, {} groups", w.extra_chunks, w.extra_groups),
                    &format!("must widen the route: extra_groups in 1..={most} (or extra_chunks > 0), or None"),
                );
            }
        }
        Ok(())
    }
}
