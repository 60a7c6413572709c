//! What one attention step did: bytes moved, working-set hits, groups fetched, time per stage.

use std::time::Duration;

/// Time spent in each stage of one decode step: wall clock on the CPU backend (which reports routing and
/// attention together as `attend`); CUDA events on the GPU backend (`attend` includes the split-K merge,
/// which is launched with it, so `merge` stays zero). When the GPU backend replays the launch chain as a
/// CUDA graph (`CacheConfig::cuda_graph`), events cannot mark the stages inside it: `route`, `fetch`
/// and `attend` stay zero and `device` times the whole chain. With `TelemetryLevel::Off` only `total`
/// is set.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    /// Scoring chunk and group summaries and choosing the groups. On the GPU backend also the fetch
    /// bookkeeping (union, slot lookup, slots for the misses), which is fused into the select kernel.
    pub route: Duration,
    /// Moving missed groups from the host store into working-set slots. Zero on the GPU backend: its
    /// misses are read from host memory inside `attend`, and the bookkeeping is part of `route`.
    pub fetch: Duration,
    /// Exact attention over sinks, local window, routed groups and the open chunk.
    pub attend: Duration,
    /// Merging split-K partial results.
    pub merge: Duration,
    /// GPU backend: device time of the whole launch chain, route through merge (on separate launches
    /// the sum of `route`, `fetch` and `attend`; on a graph replay the only device time). Zero on the
    /// CPU backend.
    pub device: Duration,
    /// The whole step on the host, validation included.
    pub total: Duration,
}

/// Telemetry of one [`super::HgaCache::attend`] call (one layer, a batch of sequences).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepTelemetry {
    /// Sequences in the batch.
    pub sequences: usize,
    /// Bytes moved host → device (on the CPU backend: what the modelled GPU working set would move).
    pub bytes_h2d: u64,
    /// Routed groups found in the working set.
    pub hits: u64,
    /// Routed groups fetched from the host store.
    pub misses: u64,
    /// Distinct groups routed per (sequence, KV head), `[sequence][kv_head]` in batch order: the union
    /// over the query heads sharing the KV head.
    pub groups_per_kv_head: Vec<usize>,
    /// Tokens in the softmax, summed over sequences and query heads (sinks, the head's routed groups,
    /// the local window and current chunk).
    pub attended_tokens: u64,
    /// Time per stage.
    pub stages: StageTimes,
    /// The GPU backend replayed the launch chain as a CUDA graph (see [`StageTimes`]); reported at
    /// every telemetry level.
    pub graph_replay: bool,
}

impl StepTelemetry {
    /// Fraction of routed groups found in the working set; `None` when nothing was routed.
    pub fn hit_rate(&self) -> Option<f64> {
        let all = self.hits + self.misses;
        (all > 0).then(|| self.hits as f64 / all as f64)
    }

    /// Mean distinct groups per (sequence, KV head).
    pub fn mean_groups_per_kv_head(&self) -> f64 {
        if self.groups_per_kv_head.is_empty() {
            return 0.0;
        }
        self.groups_per_kv_head.iter().sum::<usize>() as f64 / self.groups_per_kv_head.len() as f64
    }
}

/// Running totals over all steps since the cache was created.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// Attention steps (calls of `attend`).
    pub steps: u64,
    /// Bytes moved host → device.
    pub bytes_h2d: u64,
    /// Working-set hits.
    pub hits: u64,
    /// Working-set misses.
    pub misses: u64,
    /// Time per stage, summed.
    pub stages: StageTimes,
}

impl Totals {
    pub(crate) fn add(&mut self, t: &StepTelemetry) {
        self.steps += 1;
        self.bytes_h2d += t.bytes_h2d;
        self.hits += t.hits;
        self.misses += t.misses;
        let (a, b) = (&mut self.stages, &t.stages);
        a.route += b.route;
        a.fetch += b.fetch;
        a.attend += b.attend;
        a.merge += b.merge;
        a.device += b.device;
        a.total += b.total;
    }

    /// Hit rate over all steps; `None` before anything was routed.
    pub fn hit_rate(&self) -> Option<f64> {
        let all = self.hits + self.misses;
        (all > 0).then(|| self.hits as f64 / all as f64)
    }
}
