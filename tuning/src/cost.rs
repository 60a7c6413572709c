//! The analytic cost model of one decode step (one layer) on a named GPU, used to rank kernel variants
//! when that GPU is not present, and to order the candidates of a measured search.
//!
//! It follows the generated kernels (`hga_dsl::codegen`, the launch order in its module docs: `hga_append`,
//! `hga_summarize` on chunk close, `hga_chunk_score`, `hga_select` with the resolve fused into its last
//! unit block per (row, KV head), `hga_attend`), one function per kernel (the fused resolve is priced
//! apart, without a launch of its own). Each is charged a launch overhead plus its memory time (bytes over achieved
//! bandwidth: HBM, or PCIe for cache misses) or its latency/issue time (serial steps × cycles × waves
//! over the SMs, with occupancy from threads, shared memory and registers per block), whichever is
//! longer unless the kernel's structure makes them add. Only `hga_attend` depends on the tuned
//! parameters: split-K trades more blocks (parallelism) against the merge tail of the last split and
//! waves once the blocks no longer fit; threads trade per-thread work against occupancy; tile tokens
//! trade synchronisation rounds against padding; vector width changes load instructions.
//!
//! The constants that no datasheet gives are in [`Assumptions`], calibrated on the H200 (codegen 8,
//! qwen3-30b shape, batch 1, CUDA events event to event: 64K / 1M context, threads 256 split_k 16
//! tile_tokens 16: step 37.3 / 43.8 µs launched; see `tests/cost_model.rs` for every figure it is
//! checked against). `hga-cost-9` follows codegen 6's shorter chains: summary rows prefetched while the
//! queries load, selections kept in shared memory, block_select_few for small lists, one memory latency
//! per attention pass, the merge's loads overlapped and its weights computed per warp. `hga-cost-11`
//! follows codegen 8's resolve: the units' list searches overlap (branch-free, unrolled over the units)
//! when the lists are staged in shared memory, and the hand-off and the clock hand cost one memory
//! latency less (checked against the codegen-8 figures).
//!
//! The model is deliberately monotone in context and batch (steady-state averages instead of per-step
//! chunk-boundary effects), so a longer context is never modeled cheaper.

use crate::gpu::GpuSpec;
use hga_dsl::codegen::{launch_params, LaunchParams};
use hga_dsl::{Sharing, ValidSpec};

/// Version of the model; part of every modeled config's provenance (a modeled config written by another
/// version is stale).
pub const COST_MODEL_VERSION: &str = "hga-cost-11";

/// Assumptions that no datasheet gives; recorded in every modeled config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assumptions {
    /// Launch overhead and ramp of one kernel, µs (H200: ~4 µs event to event per kernel in a launched
    /// step, ~1 µs less inside a CUDA graph).
    pub launch_us: f64,
    /// Device-memory load latency under load, cycles.
    pub dram_latency_cycles: f64,
    /// L2 hit latency, cycles.
    pub l2_latency_cycles: f64,
    /// Fraction of peak memory bandwidth a streaming kernel reaches (DESIGN.md §6: the H200's
    /// device-to-device copy ran at 4.19 of 4.8 TB/s).
    pub dram_efficiency: f64,
    /// Fraction of the PCIe link that reads of mapped pinned memory inside `hga_attend` reach (H200: 730
    /// missed groups of 8 KiB in 135.7 µs with the kernel's own latency: ~49.5 of 63 GB/s).
    pub pcie_efficiency: f64,
    /// Fraction of a step's routed groups that miss the GPU slot cache in steady state.
    pub miss_fraction: f64,
    /// Per-query-head routing: distinct groups per KV head = opened × (1 + (GQA-1) × this); 0.58 from
    /// ../shared/eval/README.md (87.4 distinct groups per KV head for 32 opened per head at GQA 4).
    pub union_fraction: f64,
    /// Independent loads a thread keeps in flight in a strided scan loop (compiler unrolling).
    pub scan_unroll: f64,
    /// Fraction of the streaming bandwidth reached with 8-byte and 4-byte loads, relative to 16-byte
    /// loads (more load instructions per byte in flight).
    pub narrow_load_efficiency: (f64, f64),
    /// One block-wide step of a latency-bound kernel (a scan or reduction: barriers, shuffles, shared
    /// memory round trips, arrival skew), cycles; calibrated on `hga_select` and `hga_resolve` (H200).
    pub block_round_cycles: f64,
    /// Fixed latency of one `hga_attend` block (the dependent loads before its first tile, the partials,
    /// fence and counter after its last), in DRAM latencies; calibrated on the H200 (codegen 6 attend at
    /// 64K: 16.2 µs with 256 threads, 16 splits, 16-token passes, together with the merge tail below).
    pub attend_block_rounds: f64,
    /// Fixed latency of the merge tail of `hga_attend` (the last split's wait for the others' partials
    /// and its loads of them), in DRAM latencies; calibrated on the H200.
    pub merge_fixed_rounds: f64,
    /// Merge tail per 32 splits of a head: a warp's loads of their maxima and sums, its shuffles for the
    /// maximum and the sum, `expf`, the weights written, cycles.
    pub merge_split_cycles: f64,
}

impl Default for Assumptions {
    fn default() -> Self {
        Assumptions {
            launch_us: 4.0,
            dram_latency_cycles: 800.0,
            l2_latency_cycles: 300.0,
            dram_efficiency: 0.87,
            pcie_efficiency: 0.79,
            miss_fraction: 0.10,
            union_fraction: 0.58,
            scan_unroll: 8.0,
            narrow_load_efficiency: (0.95, 0.85),
            block_round_cycles: 900.0,
            attend_block_rounds: 8.0,
            merge_fixed_rounds: 4.0,
            merge_split_cycles: 300.0,
        }
    }
}

impl Assumptions {
    /// The provenance string: version and every assumption.
    pub fn describe(&self) -> String {
        format!(
            "{COST_MODEL_VERSION}: launch {} us, DRAM latency {} cycles, L2 latency {} cycles, DRAM efficiency {}, \
             PCIe efficiency {}, miss fraction {}, GQA union fraction {}, scan unroll {}, 8/4-byte load \
             efficiency {}/{}, block round {} cycles, attend block {} DRAM latencies, merge {} DRAM latencies \
             + {} cycles per split and item",
            self.launch_us,
            self.dram_latency_cycles,
            self.l2_latency_cycles,
            self.dram_efficiency,
            self.pcie_efficiency,
            self.miss_fraction,
            self.union_fraction,
            self.scan_unroll,
            self.narrow_load_efficiency.0,
            self.narrow_load_efficiency.1,
            self.block_round_cycles,
            self.attend_block_rounds,
            self.merge_fixed_rounds,
            self.merge_split_cycles
        )
    }
}

/// One bucket: context length and batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Workload {
    /// Tokens in each sequence.
    pub context: u64,
    /// Sequences.
    pub batch: u32,
}

/// Modeled time of one kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelCost {
    /// Entry point.
    pub name: &'static str,
    /// µs.
    pub us: f64,
}

/// Modeled decode step of one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct StepCost {
    /// Per kernel, in launch order (`hga_summarize` as its share of a step: it runs on chunk close).
    pub kernels: Vec<KernelCost>,
    /// Sum, µs.
    pub total_us: f64,
    /// Bytes read or written in device memory.
    pub dram_bytes: f64,
    /// Bytes over PCIe (cache misses read by `hga_attend`, the appended row written to its host record).
    pub pcie_bytes: f64,
    /// Floating-point operations (scores and exact attention).
    pub flops: f64,
}

impl StepCost {
    /// The modeled time of one kernel, if the step has it.
    pub fn kernel_us(&self, name: &str) -> Option<f64> {
        self.kernels.iter().find(|k| k.name == name).map(|k| k.us)
    }
}

/// Estimated resources of the attention kernel (the only one whose resources depend on the tuned
/// parameters beyond the thread count).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resources {
    /// Registers per thread.
    pub regs_per_thread: u32,
    /// Static shared memory per block, bytes.
    pub smem_bytes: u32,
    /// Bytes spilled to local memory (0 unless the register estimate exceeds the cap).
    pub spill_bytes: u32,
}

/// Modeled resources of `hga_attend`: the shared memory as the generator computes it; registers as a
/// base plus the query fragments (a quarter row: D/8 words), the accumulators (D/16 m tiles of four
/// floats) and a pass's keys and values (a quarter row of two tokens per 16-token step, keys and values:
/// D/2 words per step), capped by `__launch_bounds__(threads)`. Fitted to ptxas (codegen 5, sm_90):
/// 142 / 212 registers at d 128 with 16- / 32-token passes, 114 / 166 at d 96, 123 at d 64 (32-token),
/// 252–254 at d 256 (16-token).
pub fn modeled_resources(spec: &ValidSpec) -> Resources {
    let lp = launch_params(spec);
    let d = spec.head_dim() as u32;
    let want = 30 + d / 8 + d / 4 + (lp.tile_tokens / 16) * d / 2;
    let cap = (65536 / lp.threads).min(255);
    Resources {
        regs_per_thread: want.min(cap),
        smem_bytes: lp.attend_smem_bytes,
        spill_bytes: want.saturating_sub(cap) * 4,
    }
}

/// Routing quantities of a step at a context (steady-state averages, monotone in the context).
#[derive(Debug, Clone, Copy)]
struct Routed {
    /// Candidate chunks (between sinks and local window).
    candidates: f64,
    /// Chunks selected per routing unit.
    selected: f64,
    /// Groups opened per routing unit.
    opened: f64,
    /// Distinct groups per KV head (the union over its query heads).
    union: f64,
    /// Of those, groups missing from the GPU slot cache.
    misses: f64,
    /// Tokens attended per KV head: sinks + local window + half an open chunk on average + union groups.
    tokens: f64,
}

fn routed(spec: &ValidSpec, context: u64, a: &Assumptions) -> Routed {
    let r = spec.routing();
    let (c, g) = (r.chunk as f64, r.group as f64);
    let n = context as f64;
    let closed = (context / r.chunk as u64) as f64;
    let candidates = (closed - r.keep_first as f64 - r.keep_last as f64).max(0.0);
    let selected = candidates.min(r.top_chunks as f64);
    let opened = (selected * spec.groups_per_chunk() as f64).min(r.top_groups as f64);
    let union = match r.sharing {
        Sharing::PerKvHead => opened,
        _ => {
            let gqa = spec.gqa() as f64;
            (opened * (1.0 + (gqa - 1.0) * a.union_fraction)).min(candidates * spec.groups_per_chunk() as f64)
        }
    };
    let window = n.min((r.keep_first + r.keep_last) as f64 * c + c / 2.0);
    Routed { candidates, selected, opened, union, misses: union * a.miss_fraction, tokens: window + union * g }
}

/// Per-SM occupancy of a kernel: resident blocks per SM.
fn blocks_per_sm(gpu: &GpuSpec, threads: u32, regs: u32, smem: u32) -> f64 {
    let l = gpu.limits();
    let by_threads = l.threads_per_sm / threads.max(32);
    let by_regs = l.regs_per_sm / (regs.max(1) * threads.max(32));
    let by_smem = l.smem_per_sm.checked_div(smem).unwrap_or(u32::MAX);
    by_threads.min(by_regs).min(by_smem).min(l.blocks_per_sm).max(1) as f64
}

/// Cycles to issue `instr` instructions per thread when `warps` warps share the SM's four schedulers: a
/// warp alone issues about every other cycle (dependent shared-memory and FMA chains); past eight warps
/// the schedulers are the limit.
fn issue_cycles(instr: f64, warps_per_sm: f64) -> f64 {
    instr * (warps_per_sm / 4.0).max(2.0)
}

/// A plain `__syncthreads` of a block of `threads` (arrival skew grows with the warps).
fn barrier_cycles(threads: u32) -> f64 {
    40.0 + 4.0 * (threads / 32) as f64
}

/// One dependent iteration over shared memory (a load, a compare, the loop): rank counting, hash probes.
const SMEM_ITER_CYCLES: f64 = 40.0;

/// One element of a strided pass over a list that is already in L1 (load, compare, count).
const PASS_ELEM_CYCLES: f64 = 20.0;

/// One comparison of block_select_few's ranking (a broadcast shared-memory load, compare, add).
const SMEM_RANK_CYCLES: f64 = 10.0;

/// Values per thread block_select keeps in registers.
const SELECT_REGS: f64 = hga_dsl::codegen::SELECT_REGISTER_VALUES as f64;

/// Issue slots of one dependent tensor-core step of `hga_attend`: the `mma.sync` (m16n8k16) with its
/// fragment operands, whose results feed the next.
const MMA_STEP_INSTR: f64 = 8.0;

// Constants of the generated source that `LaunchParams` does not carry (kernels.cu): `block_select`'s
// candidate buffer, `hga_resolve`'s hash table and its list staging, in entries.
const SEL_CAND: f64 = 2048.0;
const HASH_CAP: f64 = 1024.0;
/// Units per KV head up to which the resolve's union searches the sorted lists instead of hashing.
const UNION_SEARCH_UNITS: f64 = hga_dsl::codegen::UNION_SEARCH_UNITS as f64;
const RESOLVE_SMEM_INTS: f64 = hga_dsl::codegen::RESOLVE_STAGED_LISTS as f64;

struct Ctx<'a> {
    gpu: &'a GpuSpec,
    a: &'a Assumptions,
}

impl Ctx<'_> {
    fn us(&self, cycles: f64) -> f64 {
        cycles / (self.gpu.clock_ghz * 1e3)
    }
    fn dram_us(&self, bytes: f64) -> f64 {
        bytes / (self.gpu.mem_bw_gbs * self.a.dram_efficiency * 1e3)
    }
    fn pcie_us(&self, bytes: f64) -> f64 {
        bytes / (self.gpu.pcie_gbs * self.a.pcie_efficiency * 1e3)
    }
    /// Waves of `grid` blocks with `resident` blocks per SM, and the blocks that share an SM in a wave.
    fn waves(&self, grid: f64, resident: f64) -> (f64, f64) {
        let sms = self.gpu.sms as f64;
        ((grid / (sms * resident)).ceil().max(1.0), resident.min((grid / sms).ceil()).max(1.0))
    }
    /// A latency-bound kernel of `grid` blocks whose blocks each take `block_cycles`, with `resident`
    /// blocks per SM: waves × block time, or the memory time when that is longer; launch on top.
    fn latency_kernel(&self, grid: f64, resident: f64, block_cycles: f64, bytes: f64) -> f64 {
        let (waves, _) = self.waves(grid, resident);
        self.a.launch_us + self.us(waves * block_cycles).max(self.dram_us(bytes))
    }
}

/// One kernel's share of the step.
struct Part {
    us: f64,
    dram: f64,
    pcie: f64,
    flops: f64,
}

/// Shapes every kernel model needs.
struct Shape<'a> {
    spec: &'a ValidSpec,
    lp: LaunchParams,
    rt: Routed,
    b: f64,
    qh: f64,
    kvh: f64,
    d: f64,
    gqa: f64,
    elem: f64,
    sv: f64,
}

/// The modeled decode step of one layer for `spec` on `gpu`.
pub fn step_cost(gpu: &GpuSpec, spec: &ValidSpec, w: Workload, a: &Assumptions) -> StepCost {
    let m = spec.model();
    let lp = launch_params(spec);
    let s = Shape {
        spec,
        rt: routed(spec, w.context, a),
        b: w.batch as f64,
        qh: m.q_heads as f64,
        kvh: m.kv_heads as f64,
        d: m.head_dim as f64,
        gqa: spec.gqa() as f64,
        elem: m.dtype.bytes() as f64,
        sv: lp.summary_vectors as f64,
        lp,
    };
    let x = Ctx { gpu, a };
    let parts = [
        ("hga_append", append(&x, &s)),
        ("hga_summarize", summarize(&x, &s)),
        ("hga_chunk_score", chunk_score(&x, &s)),
        ("hga_select", select(&x, &s)),
        ("hga_resolve", resolve(&x, &s)),
        ("hga_attend", attend(&x, &s)),
    ];
    StepCost {
        kernels: parts.iter().map(|(name, p)| KernelCost { name, us: p.us }).collect(),
        total_us: parts.iter().map(|(_, p)| p.us).sum(),
        dram_bytes: parts.iter().map(|(_, p)| p.dram).sum(),
        pcie_bytes: parts.iter().map(|(_, p)| p.pcie).sum(),
        flops: parts.iter().map(|(_, p)| p.flops).sum(),
    }
}

/// `hga_append`, grid (KVH, B), block D: the step's K/V into the window (and its RoPE), plus the same
/// row written to the group's host record (posted writes over PCIe: bytes, no wait).
fn append(x: &Ctx, s: &Shape) -> Part {
    let row = s.b * s.kvh * s.d * s.elem * 2.0;
    let cycles = 2.0 * x.a.dram_latency_cycles;
    let us = x.latency_kernel(s.b * s.kvh, 8.0, cycles, row * 2.0);
    Part { us, dram: row * 2.0, pcie: row, flops: 0.0 }
}

/// `hga_summarize`, grid (1 + groups per chunk, KVH, B), block D: only when a chunk closes, so one step
/// in `chunk` pays it; modeled as that share of one launch (reads the chunk's keys, writes bf16 summaries).
fn summarize(x: &Ctx, s: &Shape) -> Part {
    let c = s.spec.routing().chunk as f64;
    let spans = 1.0 + s.spec.groups_per_chunk() as f64;
    // The chunk's block reads its C keys, each group's block its G keys: 2C keys; bf16 summaries out.
    let bytes = s.b * s.kvh * (2.0 * c * s.d * s.elem + spans * s.sv * s.d * 2.0);
    // Each dimension sums its span's tokens in order, staged a few tokens at a time between barriers,
    // with RoPE angles in double precision: ~650 cycles per token (calibrated: H200, 27 µs per close).
    let cycles = x.a.dram_latency_cycles * 2.0 + c * 650.0;
    let once = x.latency_kernel(spans * s.b * s.kvh, 8.0, cycles, bytes);
    Part { us: once / c, dram: bytes / c, pcie: 0.0, flops: 0.0 }
}

/// Instructions per thread of one `score_rows` batch: widen the summaries once, then per query head
/// the head's query from shared memory and, per row, the dot product (min/max: two products and a max
/// per element), three shuffles and the store.
fn score_batch_instr(s: &Shape, sb: f64, heads: f64) -> f64 {
    let ev = s.d / 32.0;
    let per_elem = if s.sv > 1.0 { 3.0 } else { 1.0 };
    sb * s.sv * ev * 4.0 + heads * (ev + sb * (ev * 4.0 * per_elem + 7.0))
}

/// Instructions per thread of one warp's tile of 16 rows on tensor cores (`score_rows_mma`, codegen 7):
/// the rows' and queries' fragment loads, D/16 dependent mma per 8 heads, the stores.
fn mma_tile_instr(s: &Shape, heads: f64) -> f64 {
    let loads = 2.0 * s.d / (4.0 * s.spec.kernel().vec_width as f64);
    let head_tiles = (heads / 8.0).ceil();
    loads + head_tiles * (loads + (s.d / 16.0) * MMA_STEP_INSTR + 12.0)
}

/// `hga_chunk_score`, grid (⌈candidates / chunk_tile⌉, KVH, B), block 128. Dot-product scores of bf16
/// (`LaunchParams::score_mma`, codegen 7): each warp loads its 16 rows and the queries straight into
/// tensor-core fragments (all in flight at once) and multiplies them, so a block is two memory
/// latencies (pos, then rows) and the table streams in behind them (calibrated: H200, 1014 / 16374
/// candidates: 5.9 / 9.8 µs with the launch gap). Else per pass of up to 8 query heads: stage the
/// queries, load the block's rows (one batch per warp, all loads in flight) and score them by FMAs,
/// the memory time adding to the issue time (codegen 6, H200, 1M: 16.2 µs).
fn chunk_score(x: &Ctx, s: &Shape) -> Part {
    let (lp, rt) = (&s.lp, &s.rt);
    let a = x.a;
    let warps = (lp.score_threads / 32) as f64;
    let tile = lp.chunk_tile as f64;
    let grid = (rt.candidates / tile).ceil().max(1.0) * s.kvh * s.b;
    let scores = s.b * s.qh * rt.candidates * 4.0;
    let flops = s.b * s.qh * rt.candidates * s.sv * s.d * 2.0;
    if lp.score_mma {
        let res = blocks_per_sm(x.gpu, lp.score_threads, 48, 0);
        let (waves, sharing) = x.waves(grid, res);
        let tiles = (tile / (16.0 * warps)).ceil();
        let block_cycles =
            2.0 * a.dram_latency_cycles + issue_cycles(tiles * mma_tile_instr(s, s.gqa), sharing * warps);
        let bytes = s.b * s.kvh * rt.candidates * s.d * 2.0 + scores;
        let us = a.launch_us + x.us(waves * block_cycles) + x.dram_us(bytes);
        return Part { us, dram: bytes, pcie: 0.0, flops };
    }
    let sb = tile / (4.0 * warps);
    let passes = (s.gqa / 8.0).ceil();
    // Registers: the widened batch (SB rows × SV vectors × D/8 floats per lane) and a base.
    let regs = (40.0 + sb * s.sv * s.d / 8.0) as u32;
    let smem = (8.0f64.min(s.gqa) * s.d * 4.0) as u32;
    let res = blocks_per_sm(x.gpu, lp.score_threads, regs, smem);
    let (waves, sharing) = x.waves(grid, res);
    let instr = score_batch_instr(s, sb, 8.0f64.min(s.gqa));
    // Per pass: the queries staged (a load, two barriers), the batch's loads, their arithmetic. The
    // first pass's rows are prefetched while its queries load (codegen 6): one latency for both.
    let pass_cycles = a.dram_latency_cycles
        + 2.0 * barrier_cycles(lp.score_threads)
        + a.dram_latency_cycles
        + issue_cycles(instr, sharing * warps);
    let block_cycles = passes * pass_cycles;
    let bytes = s.b * s.kvh * rt.candidates * s.sv * s.d * 2.0 * passes + scores;
    let us = a.launch_us + x.us(waves * block_cycles) + x.dram_us(bytes);
    Part { us, dram: bytes, pcie: 0.0, flops }
}

/// Cycles of `block_select` (top `k` of `n` values, a block of `threads`), as the generator does it: if
/// k ≥ n everything is taken; if k ≤ threads / 2 a strided pass for per-thread maxima, a rank count of
/// the lane groups' maxima for a threshold, a pass counting and one writing the values above it
/// (≈1.5 k), their exact ranks (a quadratic pass over them in shared memory); else a 32-round radix
/// select with a block reduction per bit.
fn topk_cycles(a: &Assumptions, n: f64, k: f64, threads: u32) -> f64 {
    let nt = threads as f64;
    let per = (n / nt).ceil().max(1.0);
    // The first SELECT_REGS values per thread are loaded at once into registers, the rest strided.
    let tail = (per - SELECT_REGS).max(0.0);
    let first_pass = (1.0 + (tail / a.scan_unroll).ceil()) * a.l2_latency_cycles + per * PASS_ELEM_CYCLES;
    if k >= n {
        return per * PASS_ELEM_CYCLES;
    }
    if n <= nt {
        // block_select_few: one load, every value ranked against all in shared memory, two barriers.
        return a.l2_latency_cycles + n * SMEM_RANK_CYCLES + 2.0 * barrier_cycles(threads);
    }
    if k <= nt / 2.0 {
        let cands = (1.5 * k).min(n).min(SEL_CAND);
        first_pass + 2.0 * per * PASS_ELEM_CYCLES + 6.0 * a.block_round_cycles + (k + 2.0 * cands) * SMEM_ITER_CYCLES
    } else {
        first_pass
            + 32.0 * (a.block_round_cycles + per * 4.0)
            + 3.0 * a.block_round_cycles
            + 2.0 * per * PASS_ELEM_CYCLES
    }
}

/// `hga_select`, grid (units, B), block 256, one block per routing unit: top chunks of the unit's scores
/// (for shared routing first the softmax mass summed over the GQA heads: three passes per head), the
/// selected chunks' groups scored against the unit's heads from the bf16 group table, top groups. A
/// chain of dependent steps on one block: latency-bound (calibrated: H200, 1014 / 16374 candidates:
/// 15.5 / 18.4 µs).
fn select(x: &Ctx, s: &Shape) -> Part {
    let (lp, rt, a) = (&s.lp, &s.rt, x.a);
    let r = s.spec.routing();
    let snt = lp.select_threads;
    let warps = (snt / 32) as f64;
    let shared = r.sharing == Sharing::PerKvHead;
    let unit_heads = if shared { s.gqa } else { 1.0 };
    let mass = |n: f64| {
        if !shared {
            return 0.0;
        }
        let per = (n / snt as f64).ceil().max(1.0);
        s.gqa
            * ((per / a.scan_unroll).ceil() * a.l2_latency_cycles
                + 3.0 * per * PASS_ELEM_CYCLES
                + 2.0 * a.block_round_cycles)
    };
    let n_groups = rt.selected * s.spec.groups_per_chunk() as f64;
    let sb = (lp.chunk_tile as f64 / (4.0 * (lp.score_threads / 32) as f64)).max(1.0);
    let passes = (unit_heads / 8.0).ceil();
    let group_score = if lp.score_mma {
        // Tensor cores: rows of 16 per warp, rows and queries loaded together.
        let rounds = (n_groups / (16.0 * warps)).ceil().max(1.0);
        rounds * (a.dram_latency_cycles + issue_cycles(mma_tile_instr(s, unit_heads), warps))
    } else {
        // Per pass of up to 8 heads, stage the queries and one batch of rows per warp; the first
        // batch's rows are prefetched while the queries load (codegen 6): one latency for both.
        let batches = (n_groups / (4.0 * sb * warps)).ceil().max(1.0);
        passes
            * (a.dram_latency_cycles
                + 2.0 * barrier_cycles(snt)
                + batches
                    * (a.dram_latency_cycles + issue_cycles(score_batch_instr(s, sb, 8.0f64.min(unit_heads)), warps)))
            - a.dram_latency_cycles
    };
    // pos; the selected chunks and their candidate groups kept in shared memory (two barriers, a third
    // before the group scoring); the lists written at the end.
    let chain = 2.0 * a.dram_latency_cycles + 3.0 * barrier_cycles(snt);
    let cycles = chain
        + mass(rt.candidates)
        + topk_cycles(a, rt.candidates, rt.selected, snt)
        + group_score
        + mass(n_groups)
        + topk_cycles(a, n_groups, rt.opened, snt);
    let units = lp.units as f64;
    let bytes = s.b
        * units
        * (rt.candidates * 4.0 * unit_heads + n_groups * s.sv * s.d * 2.0 * passes + n_groups * 4.0 * unit_heads);
    // block_select's buffers, the staged queries, and the fused resolve's lists and hash table.
    let smem = (snt * 8) as f64 + SEL_CAND * 9.0 + 8.0 * s.d * 4.0 + (RESOLVE_SMEM_INTS + 3.0 * HASH_CAP) * 4.0;
    let res = blocks_per_sm(x.gpu, snt, 64, smem as u32);
    let us = x.latency_kernel(units * s.b, res, cycles, bytes);
    Part { us, dram: bytes, pcie: 0.0, flops: s.b * s.qh * n_groups * s.sv * s.d * 2.0 }
}

/// The resolve, run inside `hga_select` by the last unit block of each (row, KV head) to finish (no
/// launch of its own: an atomic counter, a fence, the other units' lists read through L2): the union of
/// the KV head's units' opened groups (a hash table in shared memory when the lists are short, else
/// binary searches of the sorted lists), slot lookups (hits stamped), then slots for the misses in the
/// (row, KV head)'s partition, in clock order. Every step is a block-wide scan over rounds of 256
/// entries: latency-bound (calibrated: H200, codegen 8, 256 entries, ~250 distinct groups: `hga_resolve`
/// launched apart took 9.7 µs at 64K event to event, 3.05 of them its launch).
fn resolve(x: &Ctx, s: &Shape) -> Part {
    let (lp, rt, a) = (&s.lp, &s.rt, x.a);
    let r = s.spec.routing();
    let n_units = if r.sharing == Sharing::PerKvHead { 1.0 } else { s.gqa };
    let entries = n_units * r.top_groups as f64;
    // The runtime fuses the resolve into hga_select only when the lists fit its shared-memory staging;
    // longer ones run in hga_resolve, a launch of its own with its own block size.
    let fused = entries <= RESOLVE_SMEM_INTS;
    let threads = if fused { lp.select_threads } else { lp.resolve_threads };
    let rnt = threads as f64;
    let entry_rounds = (entries / rnt).ceil().max(1.0);
    let union_cycles = if entries <= HASH_CAP / 2.0 && n_units > UNION_SEARCH_UNITS {
        // Clear the table, insert (atomics in shared memory), then keep each entry where its group first
        // occurs (a lookup and a block scan per round).
        let table = (2.0 * entries).max(32.0).log2().ceil().exp2();
        // A group opened by several units is inserted by each: their atomics on one key serialize.
        (table / rnt).ceil() * PASS_ELEM_CYCLES
            + entry_rounds * 3.0 * n_units * SMEM_ITER_CYCLES
            + 2.0 * barrier_cycles(threads)
            + entry_rounds * (SMEM_ITER_CYCLES + a.block_round_cycles)
    } else {
        // Each entry searches every unit's list (is it first? its mask): staged in shared memory, the
        // units' searches are independent chains issued together (one chain's latency, plus the issue of
        // every unit's steps); in global memory, one unit after another.
        let steps = (r.top_groups as f64).log2().ceil().max(1.0) + 1.0;
        let search = if entries <= RESOLVE_SMEM_INTS {
            steps * SMEM_ITER_CYCLES + n_units * steps * PASS_ELEM_CYCLES / 4.0
        } else {
            n_units * steps * a.l2_latency_cycles
        };
        entry_rounds * (search + a.block_round_cycles)
    };
    let union_rounds = (rt.union / rnt).ceil().max(1.0);
    // Per round of distinct groups: its slot (the union is in shared memory), a scan listing the misses.
    let lookup_cycles = union_rounds * (a.dram_latency_cycles + a.block_round_cycles);
    // Misses: per round, a scan over the partition's slots for unstamped ones, then the owner's
    // slot_of cleared and the new owner written.
    let assign_cycles = (rt.misses / rnt).ceil() * (2.0 * a.dram_latency_cycles + a.block_round_cycles);
    // Dependent global round trips outside the rounds below: the unit counter (fence, atomic), the
    // lists and counts through L2, the partition state, the union written and read back, slot indices,
    // host-record checks, stamps, the miss list, owners; at the end the state and the union's size
    // (calibrated: ~11 memory latencies since codegen 8's one-atomic hand-off and early clock hand, 12
    // before; the standalone kernel's body was 6.6 µs at 64K on the H200).
    let chain = 3.0 * a.l2_latency_cycles + 11.0 * a.dram_latency_cycles + 3.0 * barrier_cycles(threads);
    let cycles = chain + union_cycles + lookup_cycles + assign_cycles;
    let bytes = s.b * s.kvh * (entries * 4.0 + rt.union * 16.0 + rt.misses * 16.0);
    // One resolving block per (row, KV head) (fused: already resident): waves past one block per SM.
    let (waves, _) = x.waves(s.kvh * s.b, 1.0);
    let launch = if fused { 0.0 } else { a.launch_us };
    Part { us: launch + x.us(waves * cycles).max(x.dram_us(bytes)), dram: bytes, pcie: 0.0, flops: 0.0 }
}

/// `hga_attend`, grid (split_k, KVH × head tiles, B), block `threads`. Per block: a fixed latency (the
/// position, union size and queries, loaded together; after the last pass: the warps combined, partials
/// written, fence, the split counter), then its warps' passes over 16-token steps (warp-tiled since
/// codegen 5: each warp loads `tile_tokens` tokens' keys and values straight into tensor-core fragments,
/// the next pass's union entries resolved while the rows load: one memory latency per pass, then the
/// pass's compute). Missed groups are read from mapped host memory inside the kernel, so their PCIe time
/// overlaps the attention of the other splits: the body costs max(compute / HBM time, block latency +
/// PCIe time + one pass). The last split of each (row, KV head, head tile) merges all splits: a serial
/// tail on one block, its partials loaded with the split weights' inputs, a warp per head's weights
/// (calibrated: H200, qwen3-30b at 64K, threads/split_k/tile_tokens 256/16/16: 16.2 µs, 256/32/16:
/// 15.3; a fresh query every step: 133 µs for 743 missed groups).
fn attend(x: &Ctx, s: &Shape) -> Part {
    let (lp, rt, a) = (&s.lp, &s.rt, x.a);
    let r = s.spec.routing();
    let gpu = x.gpu;
    let res_attend = modeled_resources(s.spec);
    let nt = lp.threads as f64;
    let warps = nt / 32.0;
    let pass_steps = (lp.tile_tokens / 16) as f64;
    let ht = lp.head_tile as f64;
    let vw = s.spec.kernel().vec_width as f64;
    let sk = lp.split_k as f64;
    let d = s.d;
    let steps = (rt.tokens / 16.0).ceil().max(1.0);
    let passes = ((steps / sk).ceil() / (warps * pass_steps)).ceil();
    let grid = sk * s.kvh * lp.head_tiles as f64 * s.b;
    let res = blocks_per_sm(gpu, lp.threads, res_attend.regs_per_thread, res_attend.smem_bytes);
    let (waves, sharing) = x.waves(grid, res);
    // Per 16-token step of a warp: the tokens' union entries and masks, the row loads (4 per lane and
    // row quarter at 16 bytes), Q·Kᵀ (D/16 dependent mma), the online softmax of two heads per lane
    // (shuffles, exponentials), P·V (D/16 mma, four movmatrix each).
    let loads_instr = 4.0 * (d / (4.0 * vw)) * 3.0 + 40.0;
    let step_instr = loads_instr + (d / 16.0) * MMA_STEP_INSTR + 90.0 + (d / 16.0) * (MMA_STEP_INSTR + 4.0);
    // The factor 4 is calibration: the step's instructions form dependent chains (the mma of Q·Kᵀ
    // accumulate into one fragment; shuffles and exponentials of the softmax), issued well below one
    // per cycle even with the SM to themselves.
    // The next pass's union entries are read while this pass's rows load (codegen 6): one latency.
    let pass_cycles = a.dram_latency_cycles + issue_cycles(pass_steps * step_instr * 4.0, sharing * warps);
    // Combining the warps (a fixed summation order): each warp's output to its own rows of shared memory
    // and one barrier where they fit (codegen 7), else one barrier per warp; the block's partials.
    let rows = lp.combine_rows as f64;
    let rounds = if rows > 1.0 { 1.0 } else { warps };
    let combine_cycles = rounds * barrier_cycles(lp.threads) + (ht * d / nt).ceil() * (20.0 + 4.0 * rows);
    // The first pass's union entries come before its rows.
    let latency = a.attend_block_rounds * a.dram_latency_cycles + a.l2_latency_cycles + combine_cycles;
    let block_cycles = latency + passes * pass_cycles;
    let kv_bytes = s.b * s.kvh * (rt.tokens - rt.misses * r.group as f64) * d * s.elem * 2.0;
    let partial_bytes = s.b * s.qh * sk * (d + 2.0) * 4.0 * 2.0;
    let load_eff = match vw as u32 * s.elem as u32 {
        16.. => 1.0,
        8 => a.narrow_load_efficiency.0,
        _ => a.narrow_load_efficiency.1,
    };
    let flops = s.b * s.qh * (rt.tokens - rt.union * r.group as f64 + rt.opened * r.group as f64) * d * 4.0;
    let compute_us = flops / (gpu.fp32_tflops * 1e6);
    let body_us = x.us(waves * block_cycles).max(x.dram_us(kv_bytes / load_eff + partial_bytes)).max(compute_us);
    // Every head tile's blocks read a missed group's record themselves.
    let pcie = s.b * s.kvh * lp.head_tiles as f64 * rt.misses * 2.0 * r.group as f64 * d * s.elem;
    // The merge (codegen 6): each thread's first four outputs' partials loaded with the splits' maxima
    // and sums, a warp per head weighing its splits (shuffles, per 32 splits), one barrier, then per
    // further round of four outputs one round of loads of the partials.
    let merge_items = (ht * d / (4.0 * nt)).ceil();
    let merge_cycles = a.merge_fixed_rounds * a.dram_latency_cycles
        + barrier_cycles(lp.threads)
        + (sk / 32.0).ceil() * (ht / warps).ceil() * a.merge_split_cycles
        + merge_items * sk * 16.0
        + (merge_items - 1.0) * a.l2_latency_cycles;
    // With misses, the blocks that read them still compute their last pass after its data arrives.
    let pcie_bound_us = if pcie > 0.0 { x.us(latency + pass_cycles) + x.pcie_us(pcie) } else { 0.0 };
    let us = a.launch_us + body_us.max(pcie_bound_us) + x.us(merge_cycles);
    // Missed groups are written into their slots on the way.
    let fill = s.b * s.kvh * rt.misses * 2.0 * r.group as f64 * d * s.elem;
    Part { us, dram: kv_bytes + partial_bytes + fill, pcie, flops }
}
