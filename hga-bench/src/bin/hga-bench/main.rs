//! `hga-bench`: the decode attention step of one layer on the GPU, HGA (steady state and cold) against
//! dense PyTorch SDPA measured in the same run; JSON and a table.
//!
//! ```text
//! hga-bench [--model qwen3-30b] [--contexts 4096,32768,65536,131072,524288,1048576] [--batch 1,8]
//!           [--steps 300] [--warmup 50] [--cold-steps 60] [--rho 0.9] [--churn-rho 0.75|off]
//!           [--slots-factor 4] [--speculate-cos C] [--mlp-mb MB] [--lookahead CHUNKS,GROUPS]
//!           [--sdpa .gpu/sdpa_baseline.py] [--json out.json] [--config TUNED.toml] [--gpu h200]
//!           [--mode hga|dense] [--dense-json dense.json] [--kernel THREADS,SPLIT_K,TILE_TOKENS]
//! ```
//!
//! `--help` describes each flag; a `--config` that does not load is an error.
//!
//! Per (batch, context): a [`DecodeBatch`] of the generated kernels with the whole context already in
//! place: random bf16 K/V in one pinned, device-mapped host store (the group-contiguous layout the
//! attention kernel reads misses from), random summary tables and window on the GPU. Then decode steps at positions
//! `context − 1, context, …`, each appending a random token (append + summarize on chunk close) and
//! running route (chunk score, then select with the resolve fused in: union, slot lookup and
//! assignment) → fetch (nothing left to launch since codegen 4) → attend
//! (split-K; missed groups read from host memory inside it and cached; the last split merges). Cold
//! fetch bandwidth is therefore the missed bytes over the fetch and attend stages (resolve + attend
//! up to codegen 3; attend alone since the resolve moved into route).
//!
//! - **Steady state**: queries correlated across steps as in real decoding: per head,
//!   `q_t = normalize(ρ·q_{t−1} + (1−ρ)·n_t)·√D` with `n_t` standard normal, ρ = 0.9 (the cosine
//!   between consecutive queries is then ≈ 0.99). `--warmup` steps fill the slot cache, the next
//!   `--steps` are measured. Slot pool: `--slots-factor` × the largest union one step can open.
//! - **Churn**: the steady state again at `--churn-rho` (default 0.75), the query correlation at which
//!   the bench's slot cache misses as often as tiny-code's real routing of held-out text replayed
//!   through the same cache (`hga-engine eval --replay-slots`, BENCHMARKS.md): ρ = 0.9 churns far less
//!   than that text did, so both are reported. `off` skips it.
//! - **Speculate** (`--speculate-cos C`, off by default): the churn state again, with a speculative
//!   prefetch ([`DecodeBatch::prefetch`]) before each step: a query of cosine C to the step's own
//!   (standing in for the next layer's query projected from the previous layer's hidden state,
//!   `hga-engine eval --speculate`) routes on a second stream ([`PrefetchLane`]) and reads its misses
//!   into the slot cache, beside a stand-in for the work between two layers' attention (`--mlp-mb`: one
//!   HBM-bound kernel on every SM streaming the weights the layer's output projection and MLP read).
//!   The churn row then runs the same stand-in before each step, without a prefetch. Both report the
//!   whole layer as the device runs it (queued steps: stand-in + append + step, `layer_us`), the
//!   stand-in alone, and the speculate row when its prefetch finished, its recall (the step's routed
//!   groups it opened too) and the groups it read. Not modelled: projecting the guessed query (one
//!   more GEMV before the prefetch can start) and the host's time to issue the prefetch. With the
//!   stand-in in front, the host runs ahead of the churn row's launched steps too, so its `step_us`
//!   is then close to device time (compare churn and speculate rows of one run, not other runs).
//! - **Lookahead** (`--lookahead C,G`, off by default): the steady and churn states again, each step
//!   followed by [`DecodeBatch::lookahead`] on a lane routing C chunks and G groups wider per query
//!   head: the step's own queries, whose runners-up are the groups the next step most likely opens
//!   anew, read into the slot cache. The bench waits for it before the next step: in a decoder the
//!   rest of the model (every other layer) runs between two steps of a layer. Reported: the rows'
//!   steps and hit rates, and the lookahead's own time on its lane and groups read. Not modelled: its
//!   PCIe reads sharing the bus with other layers' misses. The bench's queries (slow random walks)
//!   favour it: on real routing (`hga-engine eval --lookahead`) it removed no misses.
//! - **Cold**: a fresh independent query every step and a slot pool of exactly one step's union, so
//!   nearly every routed group is a miss (the measured hit rate is reported). Also reported: the very
//!   first step of the cold instance, whose slot cache is empty, so every routed group is a miss.
//! - Kernel parameters per (context, batch): resolved from a tuned config (`--config
//!   kernels-generated/configs/h200-qwen3-30b.toml`, `--gpu h200`) by `hga_dsl::tuned::resolve`, as the
//!   runtime picks them; the built-in defaults without one; `--kernel THREADS,SPLIT_K,TILE_TOKENS` for
//!   every row (comparisons of parameters). The JSON names each variant and its source.
//! - Routing: the reference router; `--top-chunks` / `--top-groups` measure other budgets and `--score`
//!   another summary kind (a config tuned for other routing of the model on this GPU then gives its
//!   bucket's parameters, reported as such: `Source::OtherRouting`).
//! - Times are CUDA events, medians. `step_us`: route + fetch + attend + merge as launched from the host
//!   (launch gaps included). `gpu_us`: the same kernels queued behind a 512 MiB memset so the host
//!   runs ahead: the device time alone (what a CUDA graph of the step would approach). `append_us`:
//!   append + summarize, reported apart (an engine's new token is already on the GPU).
//! - Memory: the GPU bytes of the attention state per layer ([`StateBytes`]: window, slot pool, per-step
//!   buffers, and the summary and index tables as committed for the context: they are growable, mapped
//!   page by page as sequences grow), against the dense K/V size. The step scratch (chunk scores, split
//!   partials, ...) is shared by the model's layers, which run one after another: `state/dense` counts
//!   its per-layer share (scratch / layers), `unshared/dense` the whole scratch in every layer; both for
//!   a layer whose `max_context` is the context (the JSON has the figure at this run's capacity too). The
//!   `cuMemGetInfo` delta and the bytes the batch really mapped are recorded too (the bench uploads
//!   whole summary tables, so it maps them for `max_context` = context + the steps it runs; cudarc
//!   allocates the plain buffers from a stream-ordered pool that reuses freed blocks, so the delta
//!   undercounts).
//! - Dense: PyTorch SDPA (`--sdpa` script, run through `python3` first, same shapes), and this bench's
//!   own split-K flash-decoding kernel (`dense.cu`; the codegen has none yet), run beforehand as
//!   `hga-bench --mode dense --json dense.json` (its own process, checked against the CPU oracle before
//!   timing) and merged with `--dense-json dense.json`.

mod dense;
mod mlp;

use clap::{Parser, ValueEnum};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice};
use hga_bench::median;
use hga_dsl::tuned::{resolve, Query, TunedConfig};
use hga_dsl::{presets, Routing, Spec, ValidSpec};
use hga_runtime::cuda::{
    union_slots, Capacity, DecodeBatch, DecodeKernels, Gpu, LanePriority, PrefetchLane, StateBytes, Widening,
};
use hga_runtime::jit::Jit;
use hga_runtime::offload::{f32_to_bf16, PinnedBuffer};
use mlp::{MlpGrid, MlpStandIn};
use rayon::prelude::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Instant;

/// Which measurement this process makes.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// HGA steady state, churn and cold, against the dense baselines.
    Hga,
    /// The bench's own split-K flash-decoding kernel alone (merged into an HGA run with `--dense-json`).
    Dense,
}

#[derive(Parser)]
#[command(
    name = "hga-bench",
    about = "The HGA decode attention step of one layer on the GPU, against dense attention",
    args_override_self = true
)]
struct Args {
    /// Model preset whose shape is measured (`hga_dsl::presets`).
    #[arg(long, default_value = "qwen3-30b")]
    model: String,
    /// Context lengths (tokens, at least 64).
    #[arg(long, action = clap::ArgAction::Set, value_delimiter = ',', value_parser = context, default_value = "4096,32768,65536,131072,524288,1048576")]
    contexts: Vec<usize>,
    /// Batch sizes (rows, at least 1).
    #[arg(long = "batch", action = clap::ArgAction::Set, value_delimiter = ',', value_parser = at_least_one, default_value = "1,8")]
    batches: Vec<usize>,
    /// Measured steady-state steps.
    #[arg(long, value_parser = at_least_one, default_value_t = 300)]
    steps: usize,
    /// Steady-state steps run before measuring (they fill the slot cache).
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Measured cold steps.
    #[arg(long, value_parser = at_least_one, default_value_t = 60)]
    cold_steps: usize,
    /// Correlation of consecutive queries in the steady state, in [0, 1).
    #[arg(long, value_parser = rho, default_value_t = 0.9)]
    rho: f32,
    /// Correlation of the churn row, in [0, 1); `off` skips the row.
    #[arg(long, value_parser = churn_rho, default_value = "0.75")]
    churn_rho: ChurnRho,
    /// Also run the churn state with speculative prefetch: before each step, a query of this cosine to
    /// the step's own (a stand-in for the next layer's query projected from the previous layer) is
    /// routed on a second stream and its misses read into the slot cache, beside a stand-in MLP
    /// (`--mlp-mb`); the churn row then runs the same stand-in without a prefetch. Reports whole layers
    /// for both, the step after the prefetch, its hit rate, the prefetch's recall and when it finished.
    /// In (0, 1].
    #[arg(long, value_parser = cosine)]
    speculate_cos: Option<f32>,
    /// With `--speculate-cos`: MB of HBM the stand-in for the work between two layers' attention (output
    /// projection and MLP) streams, which the churn and speculate rows run before each step (the
    /// prefetch beside it). Default: the weights Qwen3-30B-A3B reads per layer at the row's batch
    /// (output projection and the routed experts, distinct experts under uniform routing).
    #[arg(long, value_parser = positive_mb)]
    mlp_mb: Option<f64>,
    /// With `--speculate-cos`: how the stand-in MLP's blocks are laid out. `tiles`: each block streams
    /// one 64 KiB tile and exits, as the blocks of a GEMV or an MoE kernel do, so that a prefetch's
    /// blocks (on a high-priority stream) get SMs as they retire; `persistent`: one wave of blocks
    /// that stream until the end and hold every SM (the worst case for a prefetch beside it).
    #[arg(long, value_enum, default_value_t = MlpGrid::Tiles)]
    mlp_grid: MlpGrid,
    /// With `--speculate-cos`: the priority of the prefetch lane's stream (`PrefetchLane::with_priority`).
    #[arg(long, value_enum, default_value_t = Priority::Highest)]
    prefetch_priority: Priority,
    /// Also run the steady and churn states with a lookahead after every step
    /// (`DecodeBatch::lookahead`): the step's own queries routed CHUNKS chunks and GROUPS groups wider
    /// per query head on a second stream, reading the runners-up into the slot cache for the next
    /// step. It is waited for before the next step, standing in for the rest of the model, which runs
    /// between two steps of a layer; its own time is reported (`lookahead_us`). CHUNKS,GROUPS.
    #[arg(long, value_parser = widening)]
    lookahead: Option<Widening>,
    /// Slot pool size in units of the largest union one step can open.
    #[arg(long, value_parser = at_least_one, default_value_t = 4)]
    slots_factor: usize,
    /// PyTorch SDPA baseline script, run through `python3` with the same shapes.
    #[arg(long)]
    sdpa: Option<String>,
    /// Where to write the JSON report.
    #[arg(long)]
    json: Option<String>,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Hga)]
    mode: Mode,
    /// JSON of an earlier `--mode dense` run, merged into the report.
    #[arg(long)]
    dense_json: Option<String>,
    /// Tuned config to resolve kernel parameters from, per (context, batch).
    #[arg(long)]
    config: Option<String>,
    /// GPU preset name the tuned config is resolved for.
    #[arg(long = "gpu", default_value = "h200")]
    gpu_preset: String,
    /// Kernel parameters for every row instead: THREADS,SPLIT_K,TILE_TOKENS.
    #[arg(long, value_parser = kernel_params)]
    kernel: Option<hga_dsl::KernelParams>,
    #[command(flatten)]
    budgets: hga_bench::RoutingArgs,
}

/// `s` parsed as a `T` that `ok` accepts; the error names the value and the rule.
fn parse_checked<T>(s: &str, ok: impl Fn(&T) -> bool, rule: &str) -> Result<T, String>
where
    T: std::str::FromStr + std::fmt::Display,
    T::Err: std::fmt::Display,
{
    let s = s.trim();
    match s.parse::<T>() {
        Ok(x) if ok(&x) => Ok(x),
        Ok(x) => Err(format!("{x}: {rule}")),
        Err(e) => Err(format!("{s}: {e}")),
    }
}

fn at_least_one(s: &str) -> Result<usize, String> {
    parse_checked(s, |&n| n >= 1, "must be >= 1")
}

fn context(s: &str) -> Result<usize, String> {
    parse_checked(s, |&n| n >= 64, "a context must be >= 64 tokens")
}

fn rho(s: &str) -> Result<f32, String> {
    parse_checked(s, |r| (0.0..1.0).contains(r), "must be in [0, 1)")
}

fn positive_mb(s: &str) -> Result<f64, String> {
    parse_checked(s, |&x: &f64| x > 0.0 && x <= 65536.0, "must be in (0, 65536] MB")
}

fn cosine(s: &str) -> Result<f32, String> {
    parse_checked(s, |&c| c > 0.0 && c <= 1.0, "must be in (0, 1]")
}

/// `--churn-rho`: a correlation, or `off` (a newtype: clap reads a bare `Option` field as "flag may be
/// absent", not as a value that may be `off`).
#[derive(Clone, Copy)]
struct ChurnRho(Option<f32>);

fn churn_rho(s: &str) -> Result<ChurnRho, String> {
    if s == "off" {
        Ok(ChurnRho(None))
    } else {
        rho(s).map(|r| ChurnRho(Some(r)))
    }
}

fn widening(s: &str) -> Result<Widening, String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    match parts[..] {
        [c, g] => match (c.parse(), g.parse()) {
            (Ok(0), Ok(0)) => Err(format!("{s:?} must widen the route (0,0 opens nothing new)")),
            (Ok(extra_chunks), Ok(extra_groups)) => Ok(Widening { extra_chunks, extra_groups }),
            _ => Err(format!("{s:?} must be two whole numbers, CHUNKS,GROUPS")),
        },
        _ => Err(format!("{s:?} must be CHUNKS,GROUPS")),
    }
}

fn kernel_params(s: &str) -> Result<hga_dsl::KernelParams, String> {
    let v: Vec<u32> =
        s.split(',').map(|x| x.trim().parse::<u32>().map_err(|e| format!("{x}: {e}"))).collect::<Result<_, _>>()?;
    let [threads, split_k, tile_tokens] = v[..] else {
        return Err(format!("{s}: expected THREADS,SPLIT_K,TILE_TOKENS"));
    };
    Ok(hga_dsl::KernelParams { threads, split_k, tile_tokens, ..hga_dsl::KernelParams::default() })
}

/// SplitMix64: a fast, seedable generator for filling large buffers in parallel.
struct Mix(u64);
impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn normal(&mut self) -> f32 {
        // Box-Muller.
        let (u, v) = (
            ((self.next() >> 40) as f32 + 1.0) / (1u64 << 24) as f32,
            (self.next() >> 40) as f32 / (1u64 << 24) as f32,
        );
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

/// Non-zero random bf16 bits, magnitudes in [0.25, 1), both signs.
fn fill_bf16(buf: &mut [u16], seed: u64) {
    buf.par_chunks_mut(1 << 16).enumerate().for_each(|(i, c)| {
        let mut r = Mix(seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        for x in c.iter_mut() {
            let b = r.next() as u16;
            *x = (b & 0x807f) | if b & 0x4000 != 0 { 0x3f00 } else { 0x3e80 };
        }
    });
}

fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0f32; n];
    v.par_chunks_mut(1 << 16).enumerate().for_each(|(i, c)| {
        let mut r = Mix(seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        for x in c.iter_mut() {
            *x = r.uniform();
        }
    });
    v
}

fn random_bits(n: usize, seed: u64) -> Vec<u16> {
    let mut v = vec![0u16; n];
    fill_bf16(&mut v, seed);
    v
}

/// Scales `v` to L2 norm `norm`.
fn rescale(v: &mut [f32], norm: f32) {
    let f = norm / v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-20);
    v.iter_mut().for_each(|x| *x *= f);
}

/// Per-head queries: `[B][QH][D]` f32, each head of norm √D.
struct Queries {
    q: Vec<f32>,
    d: usize,
    rng: Mix,
    /// Noise of the speculative queries (its own stream: the real queries are the same with or
    /// without speculation).
    spec_rng: Mix,
}

impl Queries {
    fn new(n: usize, d: usize, seed: u64) -> Self {
        let mut s = Queries { q: vec![0.0; n], d, rng: Mix(seed), spec_rng: Mix(seed ^ 0x5bec) };
        s.advance(0.0);
        s
    }
    /// Per head `normalize(c·q̂ + √(1−c²)·n̂)·√D` with `n̂` a fresh random direction: a query of
    /// cosine ≈ c to the current one (random directions in D dimensions are nearly orthogonal).
    fn speculative_bits(&mut self, c: f32) -> Vec<u16> {
        let d = self.d;
        let s = (1.0 - c * c).max(0.0).sqrt();
        let mut out = Vec::with_capacity(self.q.len());
        let (mut qh, mut n) = (vec![0.0f32; d], vec![0.0f32; d]);
        for h in self.q.chunks(d) {
            qh.copy_from_slice(h);
            rescale(&mut qh, 1.0);
            n.iter_mut().for_each(|x| *x = self.spec_rng.normal());
            rescale(&mut n, 1.0);
            qh.iter_mut().zip(&n).for_each(|(a, b)| *a = c * *a + s * b);
            rescale(&mut qh, (d as f32).sqrt());
            out.extend(qh.iter().map(|&x| f32_to_bf16(x)));
        }
        out
    }
    /// `q ← normalize(ρ·q + (1−ρ)·noise)·√D` per head.
    fn advance(&mut self, rho: f32) {
        let d = self.d;
        for h in self.q.chunks_mut(d) {
            for x in h.iter_mut() {
                *x = rho * *x + (1.0 - rho) * self.rng.normal();
            }
            rescale(h, (d as f32).sqrt());
        }
    }
    fn bits(&self) -> Vec<u16> {
        self.q.iter().map(|&x| f32_to_bf16(x)).collect()
    }
}

pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// `--prefetch-priority`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Priority {
    Highest,
    Default,
}

impl From<Priority> for LanePriority {
    fn from(p: Priority) -> LanePriority {
        match p {
            Priority::Highest => LanePriority::Highest,
            Priority::Default => LanePriority::Default,
        }
    }
}

fn event(gpu: &Gpu) -> Res<CudaEvent> {
    Ok(gpu.context().new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?)
}

fn us(a: &CudaEvent, b: &CudaEvent) -> Res<f64> {
    Ok(a.elapsed_ms(b)? as f64 * 1e3)
}

#[derive(Default)]
struct Samples {
    step: Vec<f64>,
    gpu: Vec<f64>,
    route: Vec<f64>,
    fetch: Vec<f64>,
    attend: Vec<f64>,
    append: Vec<f64>,
    routed: u64,
    misses: u64,
    miss_fetch_us: Vec<(u64, f64)>,
    steps: u64,
    /// The first step after creation (empty slot cache: every routed group a miss), queued:
    /// (gpu µs, fetch µs, misses, routed).
    first: Option<(f64, f64, u64, u64)>,
    /// Speculative prefetch (measured steps): when it finished (from the layer's start, queued
    /// steps), the groups it brought in, and how many of the step's routed groups it had opened too.
    prefetch_us: Vec<f64>,
    /// The prefetch's start on its lane and its routing done (from the layer's start, queued steps),
    /// and the host's time to issue it (every measured step).
    prefetch_start_us: Vec<f64>,
    prefetch_routed_us: Vec<f64>,
    prefetch_issue_us: Vec<f64>,
    prefetched: u64,
    foreseen: u64,
    /// Whole layers (queued steps): stand-in MLP + append + step, the prefetch beside the MLP; and
    /// the MLP alone.
    layer: Vec<f64>,
    mlp: Vec<f64>,
    /// Lookahead after each measured step: its time on the lane (start to gather done), the host's
    /// time to issue it, and the groups it read.
    ahead_us: Vec<f64>,
    ahead_issue_us: Vec<f64>,
    ahead_fetched: u64,
}

impl Samples {
    fn summary(mut self, batch: usize, kv_heads: usize, record: u64) -> Value {
        let hit_rate = if self.routed > 0 { 1.0 - self.misses as f64 / self.routed as f64 } else { f64::NAN };
        // Effective fetch bandwidth over the queued (gap-free) steps: bytes of missed groups / fetch time.
        let (bytes, t): (u64, f64) =
            self.miss_fetch_us.iter().fold((0, 0.0), |(b, t), &(m, f)| (b + m * record, t + f));
        let first = self.first.map_or(Value::Null, |(g, f, m, r)| {
            json!({ "gpu_us": g, "fetch_us": f, "misses": m, "routed": r,
                    "fetch_GBps": (m * record) as f64 / f / 1e3 })
        });
        let speculation = if self.prefetch_us.is_empty() {
            Value::Null
        } else {
            json!({
                "prefetch_done_us": median(&mut self.prefetch_us),
                "prefetch_start_us": median(&mut self.prefetch_start_us),
                "prefetch_routed_us": median(&mut self.prefetch_routed_us),
                "prefetch_issue_host_us": median(&mut self.prefetch_issue_us),
                "prefetched_per_step": self.prefetched as f64 / self.steps.max(1) as f64,
                "recall": self.foreseen as f64 / self.routed.max(1) as f64,
            })
        };
        let lookahead = if self.ahead_us.is_empty() {
            Value::Null
        } else {
            json!({
                "lookahead_us": median(&mut self.ahead_us),
                "issue_host_us": median(&mut self.ahead_issue_us),
                "fetched_per_step": self.ahead_fetched as f64 / self.steps.max(1) as f64,
            })
        };
        let layer = if self.layer.is_empty() {
            Value::Null
        } else {
            json!({ "layer_us": median(&mut self.layer), "mlp_us": median(&mut self.mlp) })
        };
        json!({
            "speculation": speculation,
            "lookahead": lookahead,
            "layer": layer,
            "first_step": first,
            "step_us": median(&mut self.step),
            "gpu_us": median(&mut self.gpu),
            "route_us": median(&mut self.route),
            "fetch_us": median(&mut self.fetch),
            "attend_merge_us": median(&mut self.attend),
            "append_us": median(&mut self.append),
            "hit_rate": hit_rate,
            "groups_per_kv_head": self.routed as f64 / (self.steps.max(1) * (batch * kv_heads) as u64) as f64,
            "misses_per_step": self.misses as f64 / self.steps.max(1) as f64,
            "bytes_h2d_per_step": (self.misses * record) as f64 / self.steps.max(1) as f64,
            "fetch_GBps": if t > 0.0 { bytes as f64 / t / 1e3 } else { f64::NAN },
        })
    }
}

struct Bench<'a> {
    gpu: &'a Gpu,
    spec: &'a ValidSpec,
    spacer: CudaSlice<u8>,
    ev: [CudaEvent; 6],
    /// Layer timing: layer start, stand-in MLP done, prefetch done (on the lane's stream).
    lev: [CudaEvent; 3],
}

/// A churn or speculate row's whole layer: the stand-in MLP of the layer before (`bytes` streamed)
/// and, with a lane, the speculative prefetch beside it.
struct Layer<'l> {
    mlp: &'l MlpStandIn,
    bytes: u64,
    lane: Option<&'l mut PrefetchLane>,
}

impl Bench<'_> {
    /// Runs `steps` decode steps (first `warmup` unmeasured); odd steps queued behind the spacer.
    /// With `layer`, each step is preceded by the stand-in MLP (and the prefetch with query cosine
    /// `speculate`, on the lane), and the spacer goes before them: a queued step then times the whole
    /// layer on the device.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        b: &mut DecodeBatch,
        pos: &mut [u32],
        q: &mut Queries,
        rho: f32,
        speculate: Option<f32>,
        mut layer: Option<Layer>,
        mut ahead: Option<&mut PrefetchLane>,
        warmup: usize,
        steps: usize,
        seed: u64,
    ) -> Res<Samples> {
        let (kvh, d) = (self.spec.model().kv_heads as usize, self.spec.head_dim());
        let bsz = pos.len();
        let mut s = Samples::default();
        let st = self.gpu.stream().clone();
        for t in 0..warmup + steps {
            let queued = t % 2 == 1 || t == 0;
            q.advance(rho);
            b.set_positions(pos)?;
            let guess = speculate.map(|c| q.speculative_bits(c));
            b.upload_q(&q.bits())?;
            let (k, v) =
                (random_bits(bsz * kvh * d, seed + 2 * t as u64), random_bits(bsz * kvh * d, seed + 2 * t as u64 + 1));
            if let Some(l) = layer.as_mut() {
                if queued {
                    st.memset_zeros(&mut self.spacer)?;
                }
                self.lev[0].record(&st)?;
                // The prefetch routes as of the token before the step's, as a decoder's would before
                // the layer appends it; the step's resolve waits for its routing (in the fetch stage),
                // its attention for its gather.
                if let (Some(lane), Some(g)) = (l.lane.as_deref_mut(), &guess) {
                    let coming: Vec<Option<u32>> = pos.iter().map(|&p| Some(p)).collect();
                    let t0 = std::time::Instant::now();
                    b.prefetch(lane, &coming, g)?;
                    if t >= warmup {
                        s.prefetch_issue_us.push(t0.elapsed().as_secs_f64() * 1e6);
                    }
                    self.lev[2].record(lane.stream())?;
                }
                l.mlp.launch(l.bytes)?;
                self.lev[1].record(&st)?;
            }
            self.ev[0].record(&st)?;
            b.launch_append(&k, &v)?;
            b.launch_summarize_closed()?;
            self.ev[1].record(&st)?;
            if queued && layer.is_none() {
                st.memset_zeros(&mut self.spacer)?;
            }
            self.ev[2].record(&st)?;
            b.launch_route()?;
            // Stage events only in the queued steps: an event between two kernels would also keep a
            // programmatic dependent launch (HGA_PDL=1) from overlapping them.
            if queued {
                self.ev[3].record(&st)?;
            }
            b.launch_fetch()?;
            if queued {
                self.ev[4].record(&st)?;
            }
            b.launch_attend()?;
            self.ev[5].record(&st)?;
            self.ev[5].synchronize()?;
            let misses = b.last_misses()? as u64;
            let union = b.union()?;
            let routed: u64 = union.iter().map(|u| u.len() as u64).sum();
            for p in pos.iter_mut() {
                *p += 1;
            }
            if let Some(lane) = ahead.as_deref_mut() {
                // For the coming step; done before it (the rest of the model runs in between in a
                // decoder). Its host time is the engine's too.
                let t0 = Instant::now();
                b.lookahead(lane)?;
                let issue = t0.elapsed().as_secs_f64() * 1e6;
                lane.synchronize()?;
                if t >= warmup {
                    s.ahead_issue_us.push(issue);
                    s.ahead_fetched += lane.last_misses()? as u64;
                    if let Some(ev) = lane.stage_events() {
                        s.ahead_us.push(us(&ev[0], &ev[2])?);
                    }
                }
            }
            if t == 0 {
                // Misses move inside attend (read from host memory): resolve + attend is their stage.
                let f = us(&self.ev[3], &self.ev[5])?;
                s.first = Some((us(&self.ev[2], &self.ev[5])?, f, misses, routed));
            }
            if t < warmup {
                continue;
            }
            s.steps += 1;
            s.routed += routed;
            s.misses += misses;
            if let Some(lane) = layer.as_ref().and_then(|l| l.lane.as_deref()) {
                s.prefetched += lane.last_misses()? as u64;
                let guess: Vec<std::collections::HashSet<usize>> =
                    lane.last_union()?.into_iter().map(|u| u.into_iter().collect()).collect();
                s.foreseen += union
                    .iter()
                    .zip(&guess)
                    .map(|(u, g)| u.iter().filter(|(x, _)| g.contains(x)).count() as u64)
                    .sum::<u64>();
            }
            s.append.push(us(&self.ev[0], &self.ev[1])?);
            let total = us(&self.ev[2], &self.ev[5])?;
            if queued {
                s.gpu.push(total);
                s.route.push(us(&self.ev[2], &self.ev[3])?);
                s.fetch.push(us(&self.ev[3], &self.ev[4])?);
                s.miss_fetch_us.push((misses, us(&self.ev[3], &self.ev[5])?));
                s.attend.push(us(&self.ev[4], &self.ev[5])?);
                if layer.is_some() {
                    s.layer.push(us(&self.lev[0], &self.ev[5])?);
                    s.mlp.push(us(&self.lev[0], &self.lev[1])?);
                }
                if let Some(lane) = layer.as_ref().and_then(|l| l.lane.as_deref()) {
                    s.prefetch_us.push(us(&self.lev[0], &self.lev[2])?);
                    if let Some(ev) = lane.stage_events() {
                        s.prefetch_start_us.push(us(&self.lev[0], &ev[0])?);
                        s.prefetch_routed_us.push(us(&self.lev[0], &ev[1])?);
                    }
                }
            } else {
                s.step.push(total);
            }
        }
        Ok(s)
    }
}

/// Runs the SDPA baseline script; returns its JSON.
fn run_sdpa(script: &str, a: &Args, q_heads: u32, kv_heads: u32, d: u32) -> Res<Value> {
    let out = std::env::temp_dir().join(format!("hga-bench-sdpa-{}.json", std::process::id()));
    let join = |v: &[usize]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(",");
    let status = std::process::Command::new("python3")
        .arg(script)
        .args(["--q-heads", &q_heads.to_string(), "--kv-heads", &kv_heads.to_string(), "--head-dim", &d.to_string()])
        .args(["--contexts", &join(&a.contexts), "--batch", &join(&a.batches)])
        .arg("--json")
        .arg(&out)
        .env("PYTHONUNBUFFERED", "1")
        .status()?;
    if !status.success() {
        return Err(format!("{script} failed: {status}").into());
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    std::fs::remove_file(&out).ok();
    Ok(v)
}

fn main() {
    let args = Args::parse();
    let result = if args.mode == Mode::Dense { run_dense(args) } else { run(args) };
    if let Err(e) = result {
        eprintln!("hga-bench: {e}");
        std::process::exit(1);
    }
}

/// `--mode dense`: the own flash-decoding kernel, checked against the CPU oracle, then timed per
/// (batch, context). Run as its own process so that a fault in it cannot touch the HGA measurements.
fn run_dense(a: Args) -> Res<()> {
    let preset = presets::find(&a.model)?;
    let spec = Spec::new(preset.shape.clone()).validate()?;
    let gpu = Gpu::open(0)?;
    let dense = dense::Dense::load(&gpu, &Jit::from_env()?, &spec)?;
    let mut report = json!({ "device": gpu.name(), "kernel": "hga-bench dense.cu (split-K flash decoding)" });
    let save = |report: &Value| -> Res<()> {
        if let Some(path) = &a.json {
            std::fs::write(path, serde_json::to_string_pretty(report)?)?;
        }
        Ok(())
    };
    let mut worst = 0.0f64;
    for (b, n, seed) in [(2, 1000, 1u64), (1, 4099, 2), (3, 64, 3)] {
        worst = worst.max(dense.check(b, n, seed)?);
    }
    eprintln!("dense check: max rel err {worst:.2e} against the CPU oracle");
    report["check_rel_err"] = json!(worst);
    if worst > 1e-2 {
        report["error"] = json!("check failed: not timed");
        return save(&report);
    }
    let mut rows = Vec::new();
    for &bsz in &a.batches {
        for &n in &a.contexts {
            let row = match dense.time(bsz, n, 10, 50) {
                Ok((us, bytes)) => json!({ "batch": bsz, "context": n, "us": us, "kv_GBps": bytes as f64 / us / 1e3 }),
                Err(e) => json!({ "batch": bsz, "context": n, "error": e.to_string() }),
            };
            eprintln!("{row}");
            rows.push(row);
            report["decode"] = json!(rows);
            save(&report)?;
        }
    }
    Ok(())
}

/// Whether a slot partition of `slots_factor` plain unions per (row, KV head) holds the union a
/// lookahead `w` opens, at each capacity of `max_contexts` (budgets capped by the context as the
/// runtime's batches cap them: `union_slots`, so short contexts may need less). An error names the flag
/// and the smallest factor that fits.
fn lookahead_fits(
    spec: &ValidSpec,
    max_contexts: impl Iterator<Item = usize>,
    w: Widening,
    slots_factor: usize,
) -> Res<()> {
    for max_context in max_contexts {
        let plain = union_slots(spec, max_context, Widening::default())?;
        let wide = union_slots(spec, max_context, w)?;
        if wide > slots_factor * plain {
            return Err(format!(
                "--slots-factor {slots_factor} is too small for --lookahead {},{} at a capacity of {max_context} tokens: \
                 the widened union needs {wide} slots per KV head, {slots_factor} plain unions of {plain} hold {}; \
                 use --slots-factor {} or more",
                w.extra_chunks,
                w.extra_groups,
                slots_factor * plain,
                wide.div_ceil(plain.max(1))
            )
            .into());
        }
    }
    Ok(())
}

fn run(a: Args) -> Res<()> {
    let preset = presets::find(&a.model)?;
    let spec = Spec::new(preset.shape.clone()).with_routing(a.budgets.apply(Routing::default())).validate()?;
    let (m, r) = (spec.model(), spec.routing());
    let (qh, kvh, d) = (m.q_heads as usize, m.kv_heads as usize, m.head_dim as usize);
    let (g, c, gpc) = (r.group as usize, r.chunk as usize, spec.groups_per_chunk());
    let record = (2 * g * d * 2) as u64;
    // Each (row, KV head) partition must hold the widened union (checked here, not mid-run).
    let extra = a.warmup + a.steps.max(a.cold_steps) + c;
    if let Some(w) = a.lookahead {
        lookahead_fits(&spec, a.contexts.iter().map(|&n| n + extra), w, a.slots_factor)?;
    }

    // A failing baseline is reported, not fatal: the HGA numbers still come back.
    let sdpa = a.sdpa.as_ref().and_then(|script| match run_sdpa(script, &a, m.q_heads, m.kv_heads, m.head_dim) {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("hga-bench: SDPA baseline failed: {e}");
            None
        }
    });

    // The own dense kernel's results, from an earlier `--mode dense` process.
    // Like SDPA's, a missing or broken file is reported, not fatal.
    let dense_json: Option<Value> = a.dense_json.as_ref().and_then(|p| {
        let read = std::fs::read_to_string(p).map_err(|e| e.to_string());
        match read.and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string())) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("hga-bench: --dense-json {p}: {e}; no own-dense column");
                None
            }
        }
    });
    let gpu = Gpu::open(0)?;
    let jit = Jit::from_env()?;
    // Kernel parameters per (context, batch) from the tuned config, as the runtime resolves them.
    let tuned: Vec<TunedConfig> = match &a.config {
        // Asked for by name: measuring other parameters than the config's would mislead.
        Some(path) => vec![TunedConfig::load(path).map_err(|e| format!("--config {path}: {e}"))?],
        None => Vec::new(),
    };
    let arch = gpu.arch().to_string();
    let mut loaded: HashMap<String, &'static DecodeKernels> = HashMap::new();

    let cap_groups = |n: usize| (n + extra).div_ceil(c) * gpc;
    let store_len = a
        .batches
        .iter()
        .flat_map(|&b| a.contexts.iter().map(move |&n| b * kvh * cap_groups(n) * 2 * g * d))
        .max()
        .unwrap_or(0);
    let mut store = Store { gpu: &gpu, buf: None };
    if let Err(e) = store.ensure(store_len) {
        eprintln!("hga-bench: pinning {store_len} elements failed ({e}); pinning per configuration instead");
    }

    let ev = [event(&gpu)?, event(&gpu)?, event(&gpu)?, event(&gpu)?, event(&gpu)?, event(&gpu)?];
    let lev = [event(&gpu)?, event(&gpu)?, event(&gpu)?];
    let spacer = gpu.stream().alloc_zeros::<u8>(512 << 20)?;
    let mut bench = Bench { gpu: &gpu, spec: &spec, spacer, ev, lev };
    let mlp_bytes = |bsz: usize| a.mlp_mb.map_or_else(|| mlp::qwen3_30b_a3b_bytes(bsz), |mb| (mb * 1e6) as u64);
    let mlp = match a.speculate_cos {
        Some(_) => {
            let max_bytes = a.batches.iter().map(|&b| mlp_bytes(b)).max().unwrap_or(0);
            Some(MlpStandIn::load(&gpu, &jit, &spec, max_bytes, a.mlp_grid)?)
        }
        None => None,
    };
    let layers = presets::find(&a.model)?.layers as usize;

    let mut rows = Vec::new();
    let mut report = json!({
        "device": gpu.name(),
        "model": a.model,
        "routing": spec.variant_key(),
        "tuned_config": a.config,
        "spec": spec.to_toml(),
        "method": {
            "queries": format!("per head q_t = normalize({}·q_(t-1) + {}·n_t)·sqrt(D), n_t ~ N(0, I); cold: independent q each step", a.rho, 1.0 - a.rho),
            "churn_rho": a.churn_rho.0,
            "steps": a.steps, "warmup": a.warmup, "cold_steps": a.cold_steps, "slots_factor": a.slots_factor,
            "timing": "CUDA events, medians; step_us as launched, gpu_us queued behind a 512 MiB memset",
            "data": "random bf16 K/V in pinned mapped host memory, random bf16 summary tables and window",
        },
        "dense_check_rel_err": dense_json.as_ref().map_or(Value::Null, |d| d["check_rel_err"].clone()),
        "pinned_h2d_GBps": sdpa.as_ref().map_or(Value::Null, |s| s["pinned_h2d_GBps"].clone()),
        "results": [],
    });
    for &bsz in &a.batches {
        for &n in &a.contexts {
            let max_context = n + extra;
            let q = Query { gpu: &a.gpu_preset, arch: &arch, spec: &spec, context: n as u64, batch: bsz as u32 };
            let (kspec, source) = match a.kernel.clone() {
                Some(k) => (spec.with_kernel(k)?, "--kernel".to_string()),
                None => {
                    let r = resolve(&tuned, &q);
                    (r.spec, r.source.to_string())
                }
            };
            let key = kspec.variant_key();
            let kernels: &DecodeKernels = match loaded.get(&key) {
                Some(k) => k,
                None => {
                    let t0 = Instant::now();
                    let k: &'static DecodeKernels = Box::leak(Box::new(DecodeKernels::load(&gpu, &jit, &kspec)?));
                    eprintln!("kernels {key} in {:.0} ms", t0.elapsed().as_secs_f64() * 1e3);
                    loaded.insert(key.clone(), k);
                    k
                }
            };
            let cap_chunks = max_context.div_ceil(c);
            let need = bsz * kvh * union_slots(kernels.spec(), max_context, Widening::default())?;
            let mut result = json!({ "batch": bsz, "context": n, "variant": key, "kernel_source": source });
            let mut seed = (bsz * 1_000_003 + n) as u64;
            let mut one = |result: &mut Value| -> Res<()> {
                // (mode, slots, ρ, speculative cosine, warm-up steps, measured steps)
                let steady = |mode, rho, spec| (mode, need * a.slots_factor, rho, spec, a.warmup, a.steps);
                let modes = [
                    Some(steady("steady", a.rho, None)),
                    a.churn_rho.0.map(|r| steady("churn", r, None)),
                    a.speculate_cos.map(|c| steady("speculate", a.churn_rho.0.unwrap_or(a.rho), Some(c))),
                    a.lookahead.map(|_| steady("lookahead", a.rho, None)),
                    a.lookahead.and(a.churn_rho.0).map(|r| steady("lookahead_churn", r, None)),
                    Some(("cold", need, 0.0, None, 2, a.cold_steps)),
                ];
                for (mode, slots, rho, spec, warmup, steps) in modes.into_iter().flatten() {
                    let (free0, _) = gpu.context().mem_get_info()?;
                    let cap = Capacity { batch: bsz, max_context, n_slots: slots };
                    let mut b = DecodeBatch::new(&gpu, kernels, cap)?;
                    let addr = store.ensure(b.host_store_len())?;
                    // SAFETY: `store` outlives `b` and holds at least `b.host_store_len()` elements.
                    unsafe { b.set_host_store(addr)? };
                    let lp = &kernels.generated().launch;
                    let win = bsz * kvh * lp.window_chunks as usize * c * d;
                    b.upload_window(&random_bits(win, seed), &random_bits(win, seed + 1))?;
                    let sv = lp.summary_vectors as usize;
                    let (cs, gs) = (bsz * kvh * cap_chunks * sv * d, bsz * kvh * cap_chunks * gpc * sv * d);
                    b.upload_summaries(&random_f32(cs, seed + 2), &random_f32(gs, seed + 3))?;
                    gpu.sync()?;
                    let (free1, _) = gpu.context().mem_get_info()?;
                    let mut pos = vec![(n - 1) as u32; bsz];
                    let mut q = Queries::new(bsz * qh * d, d, seed + 4);
                    seed += 1000;
                    // With --speculate-cos, the churn and speculate rows time whole layers.
                    let mut lane = match spec {
                        Some(_) => {
                            let mut lane = PrefetchLane::with_priority(&gpu, kernels, cap, a.prefetch_priority.into())?;
                            lane.time_stages()?;
                            Some(lane)
                        }
                        None => None,
                    };
                    let layer = match (&mlp, mode) {
                        (Some(m), "churn" | "speculate") => {
                            Some(Layer { mlp: m, bytes: mlp_bytes(bsz), lane: lane.as_mut() })
                        }
                        _ => None,
                    };
                    let mut ahead = match (a.lookahead, mode) {
                        (Some(w), "lookahead" | "lookahead_churn") => {
                            let mut lane = PrefetchLane::with_options(&gpu, kernels, cap, LanePriority::Default, w)?;
                            lane.time_stages()?;
                            Some(lane)
                        }
                        _ => None,
                    };
                    let samples =
                        bench.run(&mut b, &mut pos, &mut q, rho, spec, layer, ahead.as_mut(), warmup, steps, seed)?;
                    result[mode] = samples.summary(bsz, kvh, record);
                    if let Some(l) = lane.as_ref().or(ahead.as_ref()) {
                        result[mode]["lane_bytes"] = json!(l.committed_bytes());
                    }
                    if let Some(w) = a.lookahead.filter(|_| ahead.is_some()) {
                        result[mode]["widening"] = json!([w.extra_chunks, w.extra_groups]);
                    }
                    if mlp.is_some() && matches!(mode, "churn" | "speculate") {
                        result[mode]["mlp_bytes"] = json!(mlp_bytes(bsz));
                        result[mode]["mlp_grid"] = json!(format!("{:?}", a.mlp_grid).to_lowercase());
                        result[mode]["prefetch_priority"] = json!(format!("{:?}", a.prefetch_priority).to_lowercase());
                    }
                    result[mode]["n_slots"] = json!(slots);
                    result[mode]["rho"] = json!(rho);
                    if mode == "steady" {
                        // Every row at the context, the step scratch shared by the model's layers, for a
                        // layer whose max_context is the context (this run's batches hold `extra` more
                        // tokens for their steps; their regions are then not page multiples, which
                        // commits a partial page more per region: `state_bytes_run_capacity`).
                        let model_cap = Capacity { max_context: n, ..cap };
                        let state = StateBytes::at(kernels.spec(), model_cap, n, layers);
                        let run_state = StateBytes::at(kernels.spec(), cap, n, layers);
                        let dense = bsz * n * kvh * d * 2 * 2;
                        result["memory"] = json!({
                            "layers_sharing_scratch": layers,
                            "state_bytes": state.total(),
                            "state_bytes_unshared": state.unshared_total(),
                            "state_bytes_reserved": state.reserved,
                            "state_bytes_run_capacity": run_state.total(),
                            "state_bytes_measured": free0.saturating_sub(free1),
                            "state_bytes_mapped_in_run": b.state_bytes(1).unshared_total(),
                            "summary_bytes": state.summaries,
                            "window_bytes": state.window,
                            "slot_bytes": state.slots,
                            "table_bytes": state.tables,
                            "step_bytes": state.step,
                            "scratch_bytes_per_layer": state.scratch,
                            "scratch_bytes_shared": state.scratch_shared,
                            "dense_kv_bytes": dense,
                            "state_over_dense": state.total() as f64 / dense as f64,
                            "unshared_over_dense": state.unshared_total() as f64 / dense as f64,
                        });
                    }
                    drop(b);
                }
                Ok(())
            };
            if let Err(e) = one(&mut result) {
                eprintln!("hga-bench: B={bsz} N={n}: {e}");
                result["error"] = json!(e.to_string());
            }
            if let Some(dj) = &dense_json {
                let hit = dj["decode"].as_array().and_then(|v| {
                    v.iter()
                        .find(|e| e["batch"].as_u64() == Some(bsz as u64) && e["context"].as_u64() == Some(n as u64))
                });
                result["dense_us"] = hit.map_or(Value::Null, |e| e["us"].clone());
            }
            if let Some(s) = &sdpa {
                let hit = s["decode"].as_array().and_then(|v| {
                    v.iter()
                        .find(|e| e["batch"].as_u64() == Some(bsz as u64) && e["context"].as_u64() == Some(n as u64))
                });
                result["sdpa_us"] = hit.map_or(Value::Null, |e| e["us"].clone());
            }
            eprintln!("{result}");
            rows.push(result);
            // Written after every configuration, so that a run cut short still leaves its results.
            report["results"] = json!(rows);
            if let Some(path) = &a.json {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
            }
        }
    }
    if let Some(s) = &sdpa {
        report["sdpa"] = s.clone();
        if let Some(path) = &a.json {
            std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
        }
    }
    print_table(&report);
    Ok(())
}

/// The pinned host store, grown (reallocated and refilled) when a configuration needs more.
struct Store<'g> {
    gpu: &'g Gpu,
    buf: Option<PinnedBuffer>,
}

impl Store<'_> {
    /// Device address of a store of at least `len` random elements.
    fn ensure(&mut self, len: usize) -> Res<u64> {
        if self.buf.as_ref().is_none_or(|b| b.len() < len) {
            self.buf = None;
            let t0 = Instant::now();
            let mut b = PinnedBuffer::new(self.gpu, len)?;
            fill_bf16(b.as_mut_slice(), 0x5eed);
            eprintln!(
                "host store: {:.2} GiB pinned + filled in {:.1} s",
                len as f64 * 2.0 / (1u64 << 30) as f64,
                t0.elapsed().as_secs_f64()
            );
            self.buf = Some(b);
        }
        Ok(self.buf.as_ref().map_or(0, |b| b.device_addr()))
    }
}

fn print_table(report: &Value) {
    let f = |v: &Value| v.as_f64().map_or("-".to_string(), |x| if x.is_nan() { "-".into() } else { format!("{x:.1}") });
    let pct = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{:.1}%", 100.0 * x));
    // Memory shares near the 5% target need two decimals.
    let pct2 = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{:.2}%", 100.0 * x));
    println!(
        "\n{} · routing {} (kernel parameters per row: see the JSON) · one layer, decode step (µs, medians)",
        report["device"].as_str().unwrap_or("?"),
        report["routing"].as_str().unwrap_or("?")
    );
    println!(
        "state: one layer's GPU attention state with its tables committed for the context; state/dense counts \
         the step scratch's per-layer share (shared by the model's layers), unshared/dense the whole scratch"
    );
    println!(
        "| B | context | HGA steady step | HGA steady gpu | route | fetch | attend+merge | hit rate | groups/kvh | churn step | churn gpu | churn hit rate | spec step | spec hit rate | spec recall | churn layer | spec layer | MLP | prefetch done | look step | look hit | look churn step | look churn hit | lookahead | HGA cold gpu | cold hit | cold fetch GB/s | empty-cache step gpu | its fetch GB/s | dense (own) | SDPA | state MiB | dense K/V MiB | state/dense | unshared/dense |"
    );
    println!(
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in report["results"].as_array().into_iter().flatten() {
        let (s, ch, sp, c, m) = (&r["steady"], &r["churn"], &r["speculate"], &r["cold"], &r["memory"]);
        let (la, lc) = (&r["lookahead"], &r["lookahead_churn"]);
        let mib = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{:.1}", x / (1u64 << 20) as f64));
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r["batch"],
            r["context"],
            f(&s["step_us"]),
            f(&s["gpu_us"]),
            f(&s["route_us"]),
            f(&s["fetch_us"]),
            f(&s["attend_merge_us"]),
            pct(&s["hit_rate"]),
            f(&s["groups_per_kv_head"]),
            f(&ch["step_us"]),
            f(&ch["gpu_us"]),
            pct(&ch["hit_rate"]),
            f(&sp["step_us"]),
            pct(&sp["hit_rate"]),
            pct(&sp["speculation"]["recall"]),
            f(&ch["layer"]["layer_us"]),
            f(&sp["layer"]["layer_us"]),
            f(&sp["layer"]["mlp_us"]),
            f(&sp["speculation"]["prefetch_done_us"]),
            f(&la["step_us"]),
            pct(&la["hit_rate"]),
            f(&lc["step_us"]),
            pct(&lc["hit_rate"]),
            f(&la["lookahead"]["lookahead_us"]),
            f(&c["gpu_us"]),
            pct(&c["hit_rate"]),
            f(&c["fetch_GBps"]),
            f(&c["first_step"]["gpu_us"]),
            f(&c["first_step"]["fetch_GBps"]),
            f(&r["dense_us"]),
            f(&r["sdpa_us"]),
            mib(&m["state_bytes"]),
            mib(&m["dense_kv_bytes"]),
            pct2(&m["state_over_dense"]),
            pct2(&m["unshared_over_dense"]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("hga-bench").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_and_values_parse_into_their_fields() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.contexts, [4096, 32768, 65536, 131072, 524288, 1048576]);
        assert_eq!(a.batches, [1, 8]);
        assert_eq!(a.churn_rho.0, Some(0.75));
        assert!(a.mode == Mode::Hga && a.kernel.is_none() && a.config.is_none() && a.speculate_cos.is_none());
        assert_eq!(parse(&["--speculate-cos", "0.9"]).unwrap().speculate_cos, Some(0.9));
        assert!(a.lookahead.is_none());
        let w = parse(&["--lookahead", "8, 32"]).unwrap().lookahead.unwrap();
        assert_eq!((w.extra_chunks, w.extra_groups), (8, 32));
        assert!(a.mlp_grid == MlpGrid::Tiles && a.prefetch_priority == Priority::Highest);
        let a = parse(&["--mlp-grid", "persistent", "--prefetch-priority", "default"]).unwrap();
        assert!(a.mlp_grid == MlpGrid::Persistent && a.prefetch_priority == Priority::Default);
        let a =
            parse(&["--churn-rho", "off", "--contexts", "65536,1048576", "--kernel", "256,16,32", "--mode", "dense"])
                .unwrap();
        assert_eq!(a.churn_rho.0, None);
        assert_eq!(a.contexts, [65536, 1048576]);
        let k = a.kernel.unwrap();
        assert_eq!((k.threads, k.split_k, k.tile_tokens), (256, 16, 32));
        assert!(a.mode == Mode::Dense);
        // Spaces after the commas are fine, and a repeated flag's last value wins.
        let a = parse(&["--contexts", "4096, 65536", "--batch", "1", "--batch", "8"]).unwrap();
        assert_eq!((a.contexts, a.batches), (vec![4096, 65536], vec![8]));
    }

    #[test]
    fn speculative_queries_have_the_asked_cosine_and_norm() {
        let d = 128;
        let mut q = Queries::new(16 * d, d, 7);
        for c in [0.5f32, 0.8, 0.95, 1.0] {
            let spec: Vec<f32> = q.speculative_bits(c).into_iter().map(hga_runtime::offload::bf16_to_f32).collect();
            for (a, b) in q.q.chunks(d).zip(spec.chunks(d)) {
                let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>();
                let cos = dot(a, b) / (dot(a, a) * dot(b, b)).sqrt();
                // Random directions in 128 dimensions: |cos| to the query below ~0.3 almost surely.
                assert!((cos - c).abs() < 0.3 * (1.0 - c * c).sqrt() + 0.01, "c {c}: {cos}");
                assert!((dot(b, b).sqrt() - (d as f32).sqrt()).abs() < 0.05, "norm");
            }
        }
    }

    #[test]
    fn the_lookahead_needs_a_slot_factor_that_holds_its_union_at_each_capacity() {
        let spec = Spec::new(presets::find("qwen3-30b").unwrap().shape).validate().unwrap();
        let w = Widening { extra_chunks: 8, extra_groups: 32 };
        // 32 groups per query head, 64 widened (8 query heads per KV head): two plain unions hold it, one
        // does not.
        assert!(lookahead_fits(&spec, [4096, 1 << 20].into_iter(), w, 2).is_ok());
        let e = lookahead_fits(&spec, [4096, 1 << 20].into_iter(), w, 1).unwrap_err().to_string();
        assert!(
            e.contains("--slots-factor 1") && e.contains("512 slots") && e.contains("--slots-factor 2 or more"),
            "{e}"
        );
        // 256 tokens: 4 chunks of 4 groups cap both budgets at 16, so one plain union holds the lookahead.
        assert!(lookahead_fits(&spec, [256].into_iter(), w, 1).is_ok());
        // 32 + 72 groups per head: past the 64 the kernels of a spec of 32 serve, so the runtime's typed
        // error of the widening, whatever the factor.
        let e = lookahead_fits(&spec, [65536].into_iter(), Widening { extra_chunks: 24, extra_groups: 72 }, 3);
        assert!(e.unwrap_err().to_string().contains("extra_groups"));
    }

    #[test]
    fn out_of_range_values_are_errors_naming_the_flag() {
        for (args, flag) in [
            (&["--rho", "1"][..], "--rho"),
            (&["--churn-rho", "1.5"], "--churn-rho"),
            (&["--contexts", "4096,32"], "--contexts"),
            (&["--batch", "0"], "--batch"),
            (&["--steps", "0"], "--steps"),
            (&["--slots-factor", "x"], "--slots-factor"),
            (&["--kernel", "256,16"], "--kernel"),
            (&["--speculate-cos", "0"], "--speculate-cos"),
            (&["--speculate-cos", "1.5"], "--speculate-cos"),
            (&["--mode", "sdpa"], "--mode"),
            (&["--mlp-grid", "waves"], "--mlp-grid"),
            (&["--prefetch-priority", "low"], "--prefetch-priority"),
            (&["--lookahead", "8"], "--lookahead"),
            (&["--lookahead", "8,x"], "--lookahead"),
            (&["--lookahead=-1,4"], "--lookahead"),
            (&["--lookahead", "0,0"], "--lookahead"),
        ] {
            let e = parse(args).err().unwrap_or_else(|| panic!("{args:?} parsed"));
            assert!(e.to_string().contains(flag), "{args:?}: {e}");
        }
    }
}
