//! The analytic cost model of one decode step (one layer) on a named GPU, used to rank kernel variants
//! when that GPU is not present.
//!
//! It follows the generated kernels (`hga_dsl::codegen`, the launch order in its module docs) and
//! charges each one the larger of its memory time (bytes over achieved bandwidth: HBM, or PCIe for
//! cache misses) and its latency/issue time (serial rounds × per-round cycles × waves over the SMs,
//! with occupancy from threads, shared memory and registers per block), plus a launch overhead.
//! The split-K trade-off appears as more attention blocks (parallelism) against a longer merge and
//! per-split prologues; threads trade per-thread work against occupancy and reduction depth; tile
//! tokens trade synchronisation rounds against padding; vector width changes load instructions.
//!
//! The model is deliberately monotone in context and batch (steady-state averages instead of per-step
//! chunk-boundary effects), so a longer context is never modeled cheaper.

use crate::gpu::GpuSpec;
use hga_dsl::codegen::{launch_params, LaunchParams};
use hga_dsl::{Sharing, ValidSpec};

/// Version of the model; part of every modeled config's provenance (a modeled config written by another
/// version is stale).
pub const COST_MODEL_VERSION: &str = "hga-cost-3";

/// Assumptions that no datasheet gives; recorded in every modeled config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Assumptions {
    /// Launch overhead and ramp of one kernel, µs (BENCHMARKS.md, H200: 4.3 µs back to back, ~1 µs less
    /// inside a CUDA graph).
    pub launch_us: f64,
    /// Device-memory load latency under load, cycles.
    pub dram_latency_cycles: f64,
    /// L2 hit latency, cycles.
    pub l2_latency_cycles: f64,
    /// Fraction of peak memory bandwidth a streaming kernel reaches (DESIGN.md §6: the H200's
    /// device-to-device copy ran at 4.19 of 4.8 TB/s).
    pub dram_efficiency: f64,
    /// Fraction of the PCIe link a gather from mapped pinned memory reaches (DESIGN.md §6: 50.9 GB/s of
    /// the H200's 63 GB/s Gen5 x16).
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
}

impl Default for Assumptions {
    fn default() -> Self {
        Assumptions {
            launch_us: 3.0,
            dram_latency_cycles: 800.0,
            l2_latency_cycles: 300.0,
            dram_efficiency: 0.87,
            pcie_efficiency: 0.80,
            miss_fraction: 0.10,
            union_fraction: 0.58,
            scan_unroll: 4.0,
            narrow_load_efficiency: (0.95, 0.85),
        }
    }
}

impl Assumptions {
    /// The provenance string: version and every assumption.
    pub fn describe(&self) -> String {
        format!(
            "{COST_MODEL_VERSION}: launch {} us, DRAM latency {} cycles, L2 latency {} cycles, DRAM efficiency {}, \
             PCIe efficiency {}, miss fraction {}, GQA union fraction {}, scan unroll {}, 8/4-byte load \
             efficiency {}/{}",
            self.launch_us,
            self.dram_latency_cycles,
            self.l2_latency_cycles,
            self.dram_efficiency,
            self.pcie_efficiency,
            self.miss_fraction,
            self.union_fraction,
            self.scan_unroll,
            self.narrow_load_efficiency.0,
            self.narrow_load_efficiency.1
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
    /// Per kernel, in launch order.
    pub kernels: Vec<KernelCost>,
    /// Sum, µs.
    pub total_us: f64,
    /// Bytes read or written in device memory.
    pub dram_bytes: f64,
    /// Bytes over PCIe (cache misses).
    pub pcie_bytes: f64,
    /// Floating-point operations (scores and exact attention).
    pub flops: f64,
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
/// base plus the per-thread accumulators and vector registers, capped by `__launch_bounds__(threads)`.
pub fn modeled_resources(spec: &ValidSpec) -> Resources {
    let lp = launch_params(spec);
    let d = spec.head_dim() as u32;
    let items_pt = (lp.head_tile * (d / 2)).div_ceil(lp.threads);
    let want = 40 + 2 * items_pt + spec.kernel().vec_width;
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
    Routed { candidates, selected, opened, union, tokens: window + union * g }
}

/// Per-SM occupancy of a kernel: resident blocks per SM.
fn blocks_per_sm(gpu: &GpuSpec, threads: u32, regs: u32, smem: u32) -> f64 {
    let l = gpu.limits();
    let by_threads = l.threads_per_sm / threads.max(32);
    let by_regs = l.regs_per_sm / (regs.max(1) * threads.max(32));
    let by_smem = l.smem_per_sm.checked_div(smem).unwrap_or(u32::MAX);
    by_threads.min(by_regs).min(by_smem).min(l.blocks_per_sm).max(1) as f64
}

/// Cycles a warp-level issue of `instr` instructions per thread takes when `warps` warps share the SM's
/// four schedulers. A lone warp issues about one instruction every 4 cycles (dependent chains through
/// shared memory): calibrated on the H200 attention figures of BENCHMARKS.md (split_k 4: 129 µs,
/// split_k 32: 25 µs for ~4.6K tokens per KV head).
fn issue_cycles(instr: f64, warps_per_sm: f64) -> f64 {
    instr * (warps_per_sm / 4.0).max(4.0)
}

/// Cycles of a block-wide reduction (two barriers, five shuffles, a serial pass over the warps).
fn reduce_cycles(threads: u32) -> f64 {
    2.0 * 40.0 + 5.0 * 30.0 + (threads / 32) as f64 * 8.0
}

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
    /// A kernel of `grid` blocks whose blocks each take `block_cycles` alone on an SM, with `resident`
    /// blocks per SM; memory time and launch overhead on top.
    fn kernel(&self, grid: f64, resident: f64, block_cycles: f64, bytes: f64) -> f64 {
        let slots = self.gpu.sms as f64 * resident;
        let waves = (grid / slots).ceil().max(1.0);
        self.a.launch_us + self.us(waves * block_cycles).max(self.dram_us(bytes))
    }
}

/// The modeled decode step of one layer for `spec` on `gpu`.
pub fn step_cost(gpu: &GpuSpec, spec: &ValidSpec, w: Workload, a: &Assumptions) -> StepCost {
    let lp: LaunchParams = launch_params(spec);
    let m = spec.model();
    let r = spec.routing();
    let x = Ctx { gpu, a };
    let rt = routed(spec, w.context, a);
    let b = w.batch as f64;
    let (qh, kvh, d) = (m.q_heads as f64, m.kv_heads as f64, m.head_dim as f64);
    let gqa = spec.gqa() as f64;
    let elem = m.dtype.bytes() as f64;
    let sv = lp.summary_vectors as f64;
    let nt = lp.threads as f64;
    let warps = nt / 32.0;
    let dram_lat = a.dram_latency_cycles;
    let l2_lat = a.l2_latency_cycles;
    let mut kernels = Vec::new();
    let mut dram = 0.0;
    let mut flops = 0.0;

    // hga_append and hga_summarize (block = head dim): one token in; a chunk's summaries every C steps.
    let append_bytes = b * kvh * d * elem * 4.0;
    kernels.push(KernelCost { name: "hga_append", us: x.kernel(b * kvh, 8.0, dram_lat * 2.0, append_bytes) });
    let summ_bytes = b * kvh * (r.chunk as f64 * d * elem + (1.0 + spec.groups_per_chunk() as f64) * sv * d * 4.0);
    let summ_cycles = dram_lat + r.chunk as f64 * 20.0;
    kernels.push(KernelCost {
        name: "hga_summarize",
        us: x.kernel(b * kvh, 8.0, summ_cycles / r.chunk as f64, summ_bytes / r.chunk as f64),
    });
    dram += append_bytes + summ_bytes / r.chunk as f64;

    // hga_chunk_score: a warp per candidate chunk (strided by the block's warps), every query head.
    let chunk_tile = lp.chunk_tile as f64;
    let grid = (rt.candidates / chunk_tile).ceil().max(1.0) * kvh * b;
    let per_warp = (chunk_tile / warps).ceil();
    let heads_pass = (gqa / 8.0).ceil();
    let score_instr = per_warp * gqa * (d / 32.0 * sv * 4.0 + 12.0);
    let staging = heads_pass * (8.0f64.min(gqa) * d / nt).ceil() * 6.0;
    let res = blocks_per_sm(gpu, lp.threads, 40, (8.0f64.min(gqa) * d * 4.0) as u32);
    let cs_cycles =
        heads_pass * (2.0 * l2_lat) + per_warp * dram_lat + issue_cycles(score_instr + staging, res * warps);
    let cs_bytes = b * kvh * rt.candidates * sv * d * 4.0 + b * qh * rt.candidates * 4.0;
    kernels.push(KernelCost { name: "hga_chunk_score", us: x.kernel(grid, res, cs_cycles, cs_bytes) });
    dram += cs_bytes;
    flops += b * qh * rt.candidates * sv * d * 2.0;

    // hga_chunk_select and hga_group_select: one block of `select_threads` per routing unit. Top-k as the
    // generator does it: rank counting in shared memory for short lists; per-thread sorted lists of k
    // with batched loads, a warp merge and a rank count for k <= 16; otherwise k rounds of a block scan.
    let units = lp.units as f64;
    let snt = lp.select_threads as f64;
    let swarps = snt / 32.0;
    let res = blocks_per_sm(gpu, lp.select_threads, 64, 4096);
    let scan = |n: f64| (n / snt).ceil() / a.scan_unroll * l2_lat + (n / snt).ceil() * 6.0;
    let reduce = reduce_cycles(lp.select_threads);
    let mass_passes = if r.sharing == Sharing::PerKvHead { gqa * 3.0 } else { 0.0 };
    let topk_cycles = |n: f64, k: f64| {
        let k = k.min(n);
        let select = if n <= 256.0 {
            l2_lat + n * 3.0 + 2.0 * 40.0
        } else if k <= 16.0 && swarps * k <= 512.0 {
            // Per thread: batches of 16 loads, each element compared into a sorted list of k; then k
            // rounds of a warp arg-max and a rank count over the warps' lists (every thread one item).
            let batches = (n / (16.0 * snt)).ceil();
            let per_thread = (n / snt).ceil();
            batches * dram_lat
                + issue_cycles(per_thread * 60.0, swarps)
                + k * 400.0
                + issue_cycles(swarps * k * 4.0, swarps)
                + 2.0 * 40.0
        } else {
            k * (scan(n) + reduce)
        };
        mass_passes * (scan(n) + reduce) + select
    };
    let csel_cycles = l2_lat + topk_cycles(rt.candidates, rt.selected);
    kernels.push(KernelCost {
        name: "hga_chunk_select",
        us: x.kernel(units * b, res, csel_cycles, b * units * rt.candidates * 4.0),
    });

    // hga_group_select: score the selected chunks' groups (a warp per group), then the top-k.
    let n_groups = rt.selected * spec.groups_per_chunk() as f64;
    let unit_heads = if r.sharing == Sharing::PerKvHead { gqa } else { 1.0 };
    let gs_instr = (n_groups / swarps).ceil() * unit_heads * (d / 32.0 * sv * 4.0 + 12.0);
    let gs_bytes = b * units * n_groups * sv * d * 4.0;
    let gsel_cycles = 2.0 * l2_lat
        + (n_groups / swarps).ceil().min(1.0) * dram_lat
        + issue_cycles(gs_instr, swarps)
        + topk_cycles(n_groups, rt.opened);
    kernels.push(KernelCost { name: "hga_group_select", us: x.kernel(units * b, res, gsel_cycles, gs_bytes) });
    dram += gs_bytes;
    flops += b * qh * n_groups * sv * d * 2.0;

    // hga_fetch_resolve: union of GQA × opened entries per KV head in rounds of `threads`, slot lookups.
    let entries = if r.sharing == Sharing::PerKvHead { rt.opened } else { gqa * rt.opened };
    let rounds = (entries / nt).ceil().max(1.0);
    // Each entry is kept where its group first occurs: every thread compares its entry with those before.
    let dedupe_instr = (entries / nt).ceil() * entries * 6.0;
    let resolve_cycles =
        rounds * (2.0 * l2_lat + 2.0 * reduce_cycles(lp.threads)) + issue_cycles(dedupe_instr, warps) + dram_lat;
    kernels.push(KernelCost {
        name: "hga_fetch_resolve",
        us: x.kernel(kvh * b, res, resolve_cycles, b * kvh * entries * 16.0),
    });
    // hga_fetch_assign: one block hands slots to the misses.
    let misses = b * kvh * rt.union * a.miss_fraction;
    let assign_cycles = (misses / nt).ceil().max(1.0) * (l2_lat + reduce_cycles(lp.threads));
    kernels.push(KernelCost { name: "hga_fetch_assign", us: x.kernel(1.0, 1.0, assign_cycles, misses * 32.0) });
    // hga_fetch_gather: missed groups from mapped pinned host memory over PCIe.
    let pcie = misses * 2.0 * r.group as f64 * d * elem;
    let gather_us = a.launch_us + x.pcie_us(pcie).max(x.us(2.0 * dram_lat));
    kernels.push(KernelCost { name: "hga_fetch_gather", us: gather_us });
    dram += pcie;

    // hga_attend: grid (split_k, KVH × head tiles, B); per tile: stage K/V (one latency, no double
    // buffering), scores, softmax, accumulate; four barriers.
    let res_attend = modeled_resources(spec);
    let tt = lp.tile_tokens as f64;
    let ht = lp.head_tile as f64;
    let vw = spec.kernel().vec_width as f64;
    let sk = lp.split_k as f64;
    let tiles = (rt.tokens / tt).ceil().max(1.0);
    let per_block_tiles = (tiles / sk).ceil();
    let grid = sk * kvh * lp.head_tiles as f64 * b;
    let res = blocks_per_sm(gpu, lp.threads, res_attend.regs_per_thread, res_attend.smem_bytes);
    let vpr = d / vw;
    let stage_instr = (tt * vpr / nt).ceil() * (26.0 + vw / 2.0 + 2.0);
    let keep_instr = (ht * tt / nt).ceil() * 10.0;
    let score_instr = (ht * tt / nt).ceil() * (d / 2.0) * 5.0;
    let softmax_instr = (ht / warps).ceil() * ((tt / 32.0).ceil() * 24.0 + 40.0);
    let items_pt = (ht * d / 2.0 / nt).ceil();
    let accum_instr = items_pt * tt * 6.0;
    let tile_instr = stage_instr + keep_instr + score_instr + softmax_instr + accum_instr;
    let resident_warps = res.min((grid / gpu.sms as f64).ceil()) * warps;
    let tile_cycles = dram_lat + issue_cycles(tile_instr, resident_warps) + 4.0 * (40.0 + 4.0 * warps);
    let prologue = l2_lat + (ht * d / nt).ceil() * 6.0 + dram_lat;
    let attend_cycles = prologue + per_block_tiles * tile_cycles;
    let attend_bytes = b * kvh * rt.tokens * d * elem * 2.0 + b * qh * sk * (d + 2.0) * 4.0;
    let load_eff = match vw as u32 * m.dtype.bytes() as u32 {
        16.. => 1.0,
        8 => a.narrow_load_efficiency.0,
        _ => a.narrow_load_efficiency.1,
    };
    let attend_flops = b * qh * (rt.tokens - rt.union * r.group as f64 + rt.opened * r.group as f64) * d * 4.0;
    let compute_us = attend_flops / (gpu.fp32_tflops * 1e6);
    let attend_us = x.kernel(grid, res, attend_cycles, attend_bytes / load_eff).max(a.launch_us + compute_us);
    kernels.push(KernelCost { name: "hga_attend", us: attend_us });
    dram += attend_bytes;
    flops += attend_flops;

    // hga_merge: grid (QH, B), block D: each thread reads its split partials (unrolled: SK is constant).
    let merge_bytes = b * qh * (sk * (d + 2.0) * 4.0 + d * elem);
    let merge_cycles = 2.0 * l2_lat + sk * 2.0 * 8.0 + dram_lat;
    let res = blocks_per_sm(gpu, m.head_dim, 32, 0);
    kernels.push(KernelCost { name: "hga_merge", us: x.kernel(qh * b, res, merge_cycles, merge_bytes) });
    dram += merge_bytes;

    let total_us = kernels.iter().map(|k| k.us).sum();
    StepCost { kernels, total_us, dram_bytes: dram, pcie_bytes: pcie, flops }
}
