//! Measured mode: on the named GPU, each candidate is compiled by the JIT (NVRTC, in parallel, through
//! its on-disk cache), its output checked against the CPU backend (`hga_runtime::cpu`) before it is
//! timed, then timed with CUDA events: warm-up, the median of 11 samples, each sample several decode
//! steps rotated over enough copies of the state that they exceed L2, launched behind a spin kernel so
//! that host launch overhead is not what is measured.
//!
//! What is timed per step: routing (chunk score, select), fetch (resolve) and attention (split-K attend,
//! which reads missed groups from host memory and merges its splits) of one layer: every kernel whose
//! launch depends on the tuned parameters. The step is a **steady state with misses**, as in decoding:
//! every sample gives one query head in [`FRESH_HEAD_EVERY`] a fresh random query (a different one each
//! sample) and keeps the others, so most routed groups hit the slot cache and the fresh heads' groups
//! miss (about 10% of a step's groups with 8 query heads per KV head; the measured miss share is in
//! the notes). Missed groups are read from **pinned, device-mapped host memory** over PCIe as in
//! production: how a variant overlaps those reads matters (all-hit steps favoured 32 splits at batch 1,
//! which fetch misses more slowly than 16). Summaries, window, queries and the host
//! records are fresh non-zero random values; the host records are a pool of [`HOST_POOL_RECORDS`]
//! records that the groups share (the timing reads them, it does not check them).

use crate::cost::{step_cost, Assumptions, Workload};
use crate::device::Present;
use crate::error::TuneError;
use crate::search::{self, Timer};
use crate::space::{self, Candidate, ResourceSource};
use crate::{base_spec, command_line, output, ModelChoice, Outcome, Request};
use cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};
use hga_dsl::tuned::{Mode, Provenance};
use hga_dsl::{Sharing, ValidSpec};
use hga_runtime::cpu::{HeadLayout, LayerCache};
use hga_runtime::cuda::{Capacity, DecodeBatch, DecodeKernels, Gpu};
use hga_runtime::jit::Jit;
use hga_runtime::offload::PinnedBuffer;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Candidates measured per bucket: the cost model's best this many, plus the built-in default.
pub const MEASURE_TOP: usize = 24;
/// The best this many of every bucket are measured in all buckets.
pub const COMMON_TOP: usize = 4;
/// Timed samples per (candidate, bucket); the median is kept.
pub const SAMPLES: usize = 11;
/// Warm-up samples, discarded.
pub const WARMUP: usize = 2;
/// Default time budget of a measured search.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(150);
/// Relative L2 error allowed against the CPU backend (bf16 inputs and output).
pub const MAX_REL_ERR: f64 = 1e-2;
/// One query head in this many gets a fresh query in every timed step (the others keep theirs).
pub const FRESH_HEAD_EVERY: usize = 8;
/// Host records in the pinned pool that the timed steps' groups share (64 MiB at d 128, group 16).
pub const HOST_POOL_RECORDS: usize = 8192;
/// Decode-step copies a sample rotates over, at least (each runs once per sample, so that every
/// step of a sample has its fresh heads).
pub const MIN_COPIES: usize = 4;

/// A small, fast generator for fresh random inputs (seeded from the clock; the seed is printed).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1), never exactly 0.
    fn unit(&mut self) -> f32 {
        let x = ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
        if x == 0.0 {
            0.5
        } else {
            x
        }
    }
    fn bf16(&mut self) -> u16 {
        bf16_bits(self.unit())
    }
}

/// Round-to-nearest-even f32 → bf16 bits.
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

fn bf16_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

fn seed() -> u64 {
    let s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64);
    s.unwrap_or(0x9e3779b97f4a7c15) | 1
}

fn cuda(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Gives sample `sample`'s fresh query heads new random values: head h of each row (of `qh` heads of `d`
/// elements) when (h + sample) % FRESH_HEAD_EVERY == 0, so that over FRESH_HEAD_EVERY samples each
/// head is refreshed once.
fn refresh_heads(q: &mut [u16], d: usize, qh: usize, sample: usize, rng: &mut XorShift) {
    for (h, head) in q.chunks_mut(d).enumerate() {
        if (h % qh + sample) % FRESH_HEAD_EVERY == 0 {
            head.iter_mut().for_each(|x| *x = rng.bf16());
        }
    }
}

/// Host arrays of one batch state (window, summaries, host store) and the position of its step.
struct HostState {
    pos: Vec<u32>,
    win_k: Vec<u16>,
    win_v: Vec<u16>,
    chunk_sum: Vec<f32>,
    group_sum: Vec<f32>,
    q: Vec<u16>,
    k_new: Vec<u16>,
    v_new: Vec<u16>,
}

/// The CPU oracle of one small case: state, and the expected output of one step.
struct OracleCase {
    cap: Capacity,
    state: HostState,
    store: Vec<u16>,
    want: Vec<f32>,
}

/// Builds a case of `batch` sequences with `n0` tokens each, the step appending token `n0`.
fn oracle_case(spec: &ValidSpec, n0: usize, batch: usize, rng: &mut XorShift) -> Result<OracleCase, String> {
    let l = HeadLayout::of(spec);
    let (d, kvh, qh) = (l.head_dim, l.kv_heads, l.q_heads);
    let r = spec.routing();
    let (c, g, gpc) = (r.chunk as usize, r.group as usize, spec.groups_per_chunk());
    let lp = hga_dsl::codegen::launch_params(spec);
    let (sv, wc) = (lp.summary_vectors as usize, lp.window_chunks as usize);
    let width = sv * d;
    let max_context = n0 + 2;
    let cap_chunks = max_context.div_ceil(c);
    let cap_groups = cap_chunks * gpc;
    let total = n0 + 1;
    let kce = (r.top_chunks as usize).min(cap_chunks);
    let kge = (r.top_groups as usize).min(kce * gpc);
    let ucap = if r.sharing == Sharing::PerKvHead { kge } else { spec.gqa() * kge };
    let cap = Capacity { batch, max_context, n_slots: batch * kvh * ucap * 2 };
    let win_row = |p: usize| {
        let ch = p / c;
        let kf = r.keep_first as usize;
        let slot = if ch < kf { ch } else { kf + (ch - kf) % (r.keep_last as usize + 1) };
        slot * c + p % c
    };
    let mut st = HostState {
        pos: vec![n0 as u32; batch],
        win_k: vec![0; batch * kvh * wc * c * d],
        win_v: vec![0; batch * kvh * wc * c * d],
        chunk_sum: vec![0.0; batch * kvh * cap_chunks * width],
        group_sum: vec![0.0; batch * kvh * cap_groups * width],
        q: (0..batch * qh * d).map(|_| rng.bf16()).collect(),
        k_new: vec![0; batch * kvh * d],
        v_new: vec![0; batch * kvh * d],
    };
    let store_len = batch * kvh * cap_groups * 2 * g * d;
    let mut store = vec![0u16; store_len];
    let mut want = vec![0f32; batch * qh * d];
    for b in 0..batch {
        let kb: Vec<u16> = (0..total * kvh * d).map(|_| rng.bf16()).collect();
        let vb: Vec<u16> = (0..total * kvh * d).map(|_| rng.bf16()).collect();
        let kf: Vec<f32> = kb.iter().map(|&x| bf16_f32(x)).collect();
        let vf: Vec<f32> = vb.iter().map(|&x| bf16_f32(x)).collect();
        let mut cpu = LayerCache::new(spec.clone());
        cpu.append(&kf[..n0 * kvh * d], &vf[..n0 * kvh * d]).map_err(cuda)?;
        let recent = (n0 / c).saturating_sub(r.keep_last as usize) * c;
        for t in (0..n0.min(r.keep_first as usize * c)).chain(recent..n0) {
            for h in 0..kvh {
                let dst = ((b * kvh + h) * wc * c + win_row(t)) * d;
                let src = (t * kvh + h) * d;
                st.win_k[dst..dst + d].copy_from_slice(&kb[src..src + d]);
                st.win_v[dst..dst + d].copy_from_slice(&vb[src..src + d]);
            }
        }
        for h in 0..kvh {
            for ch in 0..cpu.closed_chunks() {
                let dst = ((b * kvh + h) * cap_chunks + ch) * width;
                let s = cpu.chunk_summary(h, ch).ok_or("CPU chunk summary missing")?;
                st.chunk_sum[dst..dst + width].copy_from_slice(s);
                for j in 0..gpc {
                    let gi = ch * gpc + j;
                    let dst = ((b * kvh + h) * cap_groups + gi) * width;
                    let s = cpu.group_summary(h, gi).ok_or("CPU group summary missing")?;
                    st.group_sum[dst..dst + width].copy_from_slice(s);
                }
            }
            for gi in 0..total / g {
                let base = ((b * kvh + h) * cap_groups + gi) * 2 * g * d;
                for j in 0..g {
                    let src = ((gi * g + j) * kvh + h) * d;
                    store[base + j * d..base + (j + 1) * d].copy_from_slice(&kb[src..src + d]);
                    store[base + (g + j) * d..base + (g + j + 1) * d].copy_from_slice(&vb[src..src + d]);
                }
            }
        }
        let row = n0 * kvh * d..(n0 + 1) * kvh * d;
        st.k_new[b * kvh * d..(b + 1) * kvh * d].copy_from_slice(&kb[row.clone()]);
        st.v_new[b * kvh * d..(b + 1) * kvh * d].copy_from_slice(&vb[row.clone()]);
        cpu.append(&kf[row.clone()], &vf[row]).map_err(cuda)?;
        let q: Vec<f32> = st.q[b * qh * d..(b + 1) * qh * d].iter().map(|&x| bf16_f32(x)).collect();
        cpu.attend(&q, n0, &mut want[b * qh * d..(b + 1) * qh * d]).map_err(cuda)?;
    }
    Ok(OracleCase { cap, state: st, store, want })
}

/// Runs one step of `kernels` on a case and returns the relative L2 error against the CPU (every element
/// must be written and finite).
fn check_case(gpu: &Gpu, kernels: &DecodeKernels, case: &OracleCase) -> Result<f64, String> {
    let mut b = DecodeBatch::new(gpu, kernels, case.cap).map_err(cuda)?;
    let s = &case.state;
    b.upload_window(&s.win_k, &s.win_v).map_err(cuda)?;
    b.upload_summaries(&s.chunk_sum, &s.group_sum).map_err(cuda)?;
    b.use_device_store(&case.store).map_err(cuda)?;
    b.set_positions(&s.pos).map_err(cuda)?;
    b.upload_q(&s.q).map_err(cuda)?;
    b.poison_output().map_err(cuda)?;
    b.step(&s.k_new, &s.v_new).map_err(cuda)?;
    let out = b.output().map_err(cuda)?;
    let (mut num, mut den) = (0f64, 0f64);
    for (i, (&o, &w)) in out.iter().zip(&case.want).enumerate() {
        let x = bf16_f32(o);
        if !x.is_finite() {
            return Err(format!("output element {i} not written or not finite ({x})"));
        }
        num += ((x - w) as f64).powi(2);
        den += (w as f64).powi(2);
    }
    Ok((num / den.max(1e-30)).sqrt())
}

/// Device state of one timing bucket shared by every candidate: host arrays and the store.
struct Bucket {
    w: Workload,
    cap: Capacity,
    state: HostState,
    /// The host records' pool (pinned, device-mapped).
    pool: PinnedBuffer,
    /// Groups per (row, KV head) at the bucket's capacity.
    cap_groups: usize,
    copies: usize,
}

/// The measured timer.
struct DeviceTimer<'a> {
    gpu: Gpu,
    jit: Jit,
    base: ValidSpec,
    gpu_spec: &'a crate::gpu::GpuSpec,
    spin: CudaFunction,
    kernels: HashMap<String, Result<DecodeKernels, String>>,
    checked: HashMap<String, Result<f64, String>>,
    oracle: Vec<OracleCase>,
    bucket: Option<Bucket>,
    rng: XorShift,
    /// Worst relative error seen in the CPU checks.
    worst_err: f64,
    /// Missed and routed groups over the timed steps (the miss share for the notes).
    missed: u64,
    routed: u64,
}

const SPIN_SRC: &str = r#"
__device__ __forceinline__ long long hga_clock() {
    long long t;
    asm volatile("mov.u64 %0, %%clock64;" : "=l"(t));
    return t;
}
extern "C" __global__ void hga_tuner_spin(long long cycles) {
    long long t0 = hga_clock();
    while (hga_clock() - t0 < cycles) { }
}
"#;

impl<'a> DeviceTimer<'a> {
    fn kernels(&mut self, cand: &Candidate) -> Result<&DecodeKernels, String> {
        if !self.kernels.contains_key(&cand.name) {
            let k = DecodeKernels::load(&self.gpu, &self.jit, &cand.spec).map_err(cuda).and_then(|k| {
                let spills: Vec<String> = k
                    .compiled()
                    .resources
                    .iter()
                    .filter(|r| r.spill_stores > 0 || r.spill_loads > 0)
                    .map(|r| format!("{} spills {} B (NVRTC)", r.name, r.spill_stores + r.spill_loads))
                    .collect();
                if spills.is_empty() {
                    Ok(k)
                } else {
                    Err(format!("pruned: {}", spills.join(", ")))
                }
            });
            self.kernels.insert(cand.name.clone(), k);
        }
        self.kernels[&cand.name].as_ref().map_err(Clone::clone)
    }

    /// Checks a candidate against the CPU once (two cases: every group opened, and real routing).
    fn check(&mut self, cand: &Candidate) -> Result<(), String> {
        if !self.checked.contains_key(&cand.name) {
            let r = self.kernels(cand).map(|_| ()).and_then(|_| {
                let k = self.kernels[&cand.name].as_ref().map_err(Clone::clone)?;
                let mut worst = 0f64;
                for case in &self.oracle {
                    let e = check_case(&self.gpu, k, case)?;
                    if e.is_nan() || e > MAX_REL_ERR {
                        return Err(format!(
                            "output differs from the CPU backend: relative L2 error {e:.3e} > {MAX_REL_ERR:e} at \
                             context {}",
                            case.cap.max_context - 2
                        ));
                    }
                    worst = worst.max(e);
                }
                Ok(worst)
            });
            if let Ok(e) = r {
                self.worst_err = self.worst_err.max(e);
            }
            self.checked.insert(cand.name.clone(), r);
        }
        self.checked[&cand.name].as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// Prepares the shared state of a bucket (host arrays, store), replacing the previous one.
    fn bucket(&mut self, w: Workload) -> Result<(), String> {
        if self.bucket.as_ref().is_some_and(|b| b.w == w) {
            return Ok(());
        }
        self.bucket = None;
        let spec = &self.base;
        let (m, r) = (spec.model(), spec.routing());
        let (bsz, qh, kvh, d) = (w.batch as usize, m.q_heads as usize, m.kv_heads as usize, m.head_dim as usize);
        let (c, g, gpc) = (r.chunk as usize, r.group as usize, spec.groups_per_chunk());
        let lp = hga_dsl::codegen::launch_params(spec);
        let (sv, wc) = (lp.summary_vectors as usize, lp.window_chunks as usize);
        let max_context = w.context as usize;
        let cap_chunks = max_context.div_ceil(c);
        let cap_groups = cap_chunks * gpc;
        let kce = (r.top_chunks as usize).min(cap_chunks);
        let kge = (r.top_groups as usize).min(kce * gpc);
        let ucap = if r.sharing == Sharing::PerKvHead { kge } else { spec.gqa() * kge };
        let cap = Capacity { batch: bsz, max_context, n_slots: bsz * kvh * ucap * 2 };
        // The step's query sits half a chunk into the open chunk (no summary to build in the step).
        let pos = if max_context > c { max_context - 1 - c / 2 } else { max_context - 1 } as u32;
        let rng = &mut self.rng;
        let state = HostState {
            pos: vec![pos; bsz],
            win_k: (0..bsz * kvh * wc * c * d).map(|_| rng.bf16()).collect(),
            win_v: (0..bsz * kvh * wc * c * d).map(|_| rng.bf16()).collect(),
            chunk_sum: (0..bsz * kvh * cap_chunks * sv * d).map(|_| rng.unit()).collect(),
            group_sum: (0..bsz * kvh * cap_groups * sv * d).map(|_| rng.unit()).collect(),
            q: (0..bsz * qh * d).map(|_| rng.bf16()).collect(),
            k_new: (0..bsz * kvh * d).map(|_| rng.bf16()).collect(),
            v_new: (0..bsz * kvh * d).map(|_| rng.bf16()).collect(),
        };
        // The host records: a pool of fresh random bf16 that the groups share.
        let records = (bsz * kvh * cap_groups).min(HOST_POOL_RECORDS);
        let mut pool = PinnedBuffer::new(&self.gpu, records * 2 * g * d).map_err(cuda)?;
        pool.as_mut_slice().iter_mut().for_each(|x| *x = rng.bf16());
        // Copies rotated so that one sample's steps touch more than 3× L2.
        let step_bytes = step_cost(self.gpu_spec, spec, w, &Assumptions::default()).dram_bytes;
        let l2 = self.gpu_spec.l2_mib * (1u64 << 20) as f64;
        let copies = ((3.0 * l2 / step_bytes.max(1.0)).ceil() as usize).clamp(MIN_COPIES, 16);
        self.bucket = Some(Bucket { w, cap, state, pool, cap_groups, copies });
        Ok(())
    }

    fn time_candidate(&mut self, cand: &Candidate) -> Result<f64, String> {
        let k = self.kernels[&cand.name].as_ref().map_err(Clone::clone)?;
        let bk = self.bucket.as_ref().ok_or("no bucket")?;
        let s = &bk.state;
        let (kvh, d) = (self.base.model().kv_heads as usize, self.base.head_dim());
        let qh = self.base.model().q_heads as usize;
        let mut copies = Vec::with_capacity(bk.copies);
        for _ in 0..bk.copies {
            let mut b = DecodeBatch::new(&self.gpu, k, bk.cap).map_err(cuda)?;
            b.upload_window(&s.win_k, &s.win_v).map_err(cuda)?;
            b.upload_summaries(&s.chunk_sum, &s.group_sum).map_err(cuda)?;
            // Group i of (row, KV head) reads pool record (its flat index) mod the pool's records.
            let (rec, records) = (b.record_bytes(), (bk.pool.len() * 2) as u64 / b.record_bytes());
            let n = bk.cap_groups as u64;
            for row in 0..bk.cap.batch {
                for h in 0..kvh {
                    let first = (row * kvh + h) as u64 * n;
                    let addrs: Vec<u64> = (0..n).map(|i| bk.pool.device_addr() + (first + i) % records * rec).collect();
                    // SAFETY: every address is a whole record of the pool, which outlives `b`.
                    unsafe { b.set_group_addrs(row, h, 0, &addrs) }.map_err(cuda)?;
                }
            }
            b.set_positions(&s.pos).map_err(cuda)?;
            b.upload_q(&s.q).map_err(cuda)?;
            b.launch_append(&s.k_new, &s.v_new).map_err(cuda)?;
            copies.push((b, s.q.clone()));
        }
        // One step per copy and sample: each step has its fresh heads.
        let steps = copies.len();
        let (mut missed, mut routed) = (0u64, 0u64);
        let timer = self.gpu.timer().map_err(cuda)?;
        let spin_cycles: i64 = 4_000_000;
        let mut samples = Vec::with_capacity(SAMPLES);
        for i in 0..WARMUP + SAMPLES {
            // This sample's fresh query heads, uploaded before the spin kernel (not timed).
            for (b, q) in copies.iter_mut() {
                refresh_heads(q, d, qh, i, &mut self.rng);
                b.upload_q(q).map_err(cuda)?;
            }
            let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (1, 1, 1), shared_mem_bytes: 0 };
            let mut lb = self.gpu.stream().launch_builder(&self.spin);
            lb.arg(&spin_cycles);
            // SAFETY: the spin kernel takes one 64-bit integer.
            unsafe { lb.launch(cfg) }.map_err(cuda)?;
            timer.start().map_err(cuda)?;
            for (b, _) in copies.iter_mut() {
                b.launch_decode().map_err(cuda)?;
            }
            let us = timer.stop_us().map_err(cuda)?;
            if i >= WARMUP {
                samples.push(us / steps as f64);
                for (b, _) in &copies {
                    missed += b.last_misses().map_err(cuda)? as u64;
                    routed += b.union().map_err(cuda)?.iter().map(|u| u.len() as u64).sum::<u64>();
                }
            }
        }
        self.missed += missed;
        self.routed += routed;
        samples.sort_by(f64::total_cmp);
        Ok(samples[samples.len() / 2])
    }
}

impl Timer for DeviceTimer<'_> {
    fn time(&mut self, cand: &Candidate, w: Workload) -> Result<f64, String> {
        self.check(cand)?;
        self.bucket(w)?;
        self.time_candidate(cand)
    }
    fn is_model(&self) -> bool {
        false
    }
}

/// Runs the measured search on the present device.
pub fn measured(present: &Present, model: &ModelChoice, req: &Request) -> Result<Outcome, TuneError> {
    let start = Instant::now();
    let cannot = |reason: String| TuneError::CannotMeasure { reason };
    if !Jit::nvrtc_present() {
        return Err(cannot("NVRTC (libnvrtc) is not found by name; add its folder to LD_LIBRARY_PATH".into()));
    }
    let nvrtc = Jit::nvrtc_version().map(|(a, b)| format!("{a}.{b}")).map_err(|e| cannot(e.to_string()))?;
    let gpu = Gpu::open(0).map_err(|e| cannot(e.to_string()))?;
    let jit = Jit::from_env().map_err(|e| cannot(e.to_string()))?;
    let base = base_spec(model, req.budgets)?;
    let g = &present.spec;
    let space = space::build(&base, g, &ResourceSource::Modeled);
    let a = Assumptions::default();
    let workloads = crate::workloads(req);

    // The candidates worth measuring per bucket: the model's best MEASURE_TOP and the default.
    let ranked: HashMap<Workload, Vec<usize>> = workloads
        .iter()
        .map(|&w| {
            let mut idx: Vec<(f64, usize)> =
                space.candidates.iter().enumerate().map(|(i, c)| (step_cost(g, &c.spec, w, &a).total_us, i)).collect();
            idx.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
            (w, idx.into_iter().take(MEASURE_TOP).map(|(_, i)| i).collect())
        })
        .collect();
    // Every bucket also measures the other buckets' best few, so that some candidates are timed in all
    // buckets (the overall default is chosen among those).
    let common: Vec<usize> = {
        let mut v: Vec<usize> = workloads.iter().flat_map(|w| ranked[w].iter().take(COMMON_TOP).copied()).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let ranked: HashMap<Workload, Vec<usize>> = ranked
        .into_iter()
        .map(|(w, mut v)| {
            for &c in &common {
                if !v.contains(&c) {
                    v.push(c);
                }
            }
            (w, v)
        })
        .collect();
    let mut wanted: Vec<usize> = ranked.values().flatten().copied().collect();
    wanted.extend(search::default_index(&space));
    wanted.sort_unstable();
    wanted.dedup();

    // Compile in parallel into the JIT cache; loading later hits the cache.
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(4).min(16);
    eprintln!("compiling {} variants with NVRTC {nvrtc} on {threads} threads ...", wanted.len());
    let arch = gpu.arch();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&c) = wanted.get(i) else { break };
                // Errors surface again (with the log) when the candidate is loaded.
                let _ = jit.compile(&hga_dsl::codegen::generate(&space.candidates[c].spec), arch);
            });
        }
    });
    let compile_s = start.elapsed().as_secs_f64();
    eprintln!("compiled in {compile_s:.1} s");

    let ptx = cudarc::nvrtc::compile_ptx(SPIN_SRC).map_err(|e| cannot(format!("spin kernel: {e}")))?;
    let module = gpu.context().load_module(ptx).map_err(|e| cannot(format!("spin kernel: {e}")))?;
    let spin = module.load_function("hga_tuner_spin").map_err(|e| cannot(format!("spin kernel: {e}")))?;
    let seed = seed();
    eprintln!("random inputs: seed {seed}");
    let mut rng = XorShift(seed);
    let oracle = [1100usize, 5000]
        .iter()
        .map(|&n0| oracle_case(&base, n0, 2, &mut rng))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TuneError::Measure(format!("CPU oracle: {e}")))?;
    let mut timer = DeviceTimer {
        gpu,
        jit,
        base: base.clone(),
        gpu_spec: g,
        spin,
        kernels: HashMap::new(),
        checked: HashMap::new(),
        oracle,
        bucket: None,
        rng,
        worst_err: 0.0,
        missed: 0,
        routed: 0,
    };
    let order = |w: Workload| ranked.get(&w).cloned().unwrap_or_default();
    // The whole budget, less what compiling and the setup above took.
    let total = req.time_budget.unwrap_or(DEFAULT_BUDGET);
    let budget = total.saturating_sub(start.elapsed());
    let skipped = format!("not measured: outside the cost model's best {MEASURE_TOP} for this bucket");
    let results = search::run(&space, &workloads, &mut timer, Some(budget), &order, &skipped, req.progress);
    if start.elapsed() > total + total / 10 {
        // The budget holds beyond each bucket's minimum (its default and first pick), not below it.
        eprintln!(
            "time budget {:.0} s exceeded ({:.0} s): compiling took {compile_s:.0} s, and every bucket times at \
             least the default and the cost model's first pick",
            total.as_secs_f64(),
            start.elapsed().as_secs_f64()
        );
    }
    let worst_err = timer.worst_err;
    let miss_share = timer.missed as f64 / timer.routed.max(1) as f64;
    let checked_ok = timer.checked.values().filter(|r| r.is_ok()).count();
    let provenance = Provenance {
        mode: Mode::Measured,
        gpu: g.name.clone(),
        gpu_name: present.name.clone(),
        arch: present.arch.clone(),
        driver: present.driver.clone(),
        nvrtc,
        hga_version: env!("CARGO_PKG_VERSION").into(),
        generator: hga_dsl::codegen::GENERATOR_VERSION.into(),
        model: model.name.clone(),
        cost_model: format!("orders candidates only (best {MEASURE_TOP} per bucket measured): {}", a.describe()),
        command: command_line(req, &g.name),
    };
    let (config, mut notes) = output::assemble(&base, &space, &results, provenance).map_err(TuneError::Measure)?;
    let text = output::render(&config);
    notes.extend([
        format!(
            "MEASURED on {} ({}): {} variants checked against the CPU backend (worst relative L2 error {:.2e}), \
             CUDA events, median of {SAMPLES} samples after {WARMUP} warm-up, in {:.1} s.",
            present.name,
            present.arch,
            checked_ok,
            worst_err,
            start.elapsed().as_secs_f64()
        ),
        format!(
            "Timed per layer: route + fetch + attend (with its merge) in a steady state with misses: one query head \
             in {FRESH_HEAD_EVERY} fresh each step, {:.1}% of the routed groups missed and read from pinned host \
             memory.",
            100.0 * miss_share
        ),
    ]);
    Ok(Outcome { file_name: output::file_name(&g.name, &model.name, req.budgets), config, text, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_query_head_in_eight_is_refreshed_per_sample_each_once_per_round() {
        let (bsz, qh, d) = (2, 32, 4);
        let mut rng = XorShift(seed());
        let mut q: Vec<u16> = (0..bsz * qh * d).map(|_| rng.bf16()).collect();
        let mut times = vec![0; bsz * qh];
        for sample in 0..FRESH_HEAD_EVERY {
            let before = q.clone();
            refresh_heads(&mut q, d, qh, sample, &mut rng);
            let changed: Vec<usize> =
                (0..bsz * qh).filter(|&h| q[h * d..(h + 1) * d] != before[h * d..(h + 1) * d]).collect();
            // Random bf16 values: a refreshed head equal to its old one is a 2^-64 event.
            assert_eq!(changed.len(), bsz * qh / FRESH_HEAD_EVERY, "sample {sample}: {changed:?}");
            for h in changed {
                assert_eq!((h % qh + sample) % FRESH_HEAD_EVERY, 0, "sample {sample} head {h}");
                times[h] += 1;
            }
        }
        assert!(times.iter().all(|&t| t == 1), "{times:?}");
    }

    #[test]
    fn bf16_rounding_is_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        assert_eq!(bf16_f32(bf16_bits(-2.5)), -2.5);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        let mut r = XorShift(seed());
        for _ in 0..10000 {
            let x = r.unit();
            assert!(x != 0.0 && (-1.0..1.0).contains(&x));
            let y = bf16_f32(bf16_bits(x));
            assert!(((y - x) / x).abs() <= 1.0 / 256.0, "{x} → {y}");
        }
    }

    #[test]
    fn oracle_cases_have_the_batch_layout() {
        let spec = hga_dsl::Spec::new(hga_dsl::presets::find("tiny-code").unwrap().shape).validate().unwrap();
        let mut r = XorShift(seed());
        let c = oracle_case(&spec, 1100, 2, &mut r).unwrap();
        let (kvh, qh, d) = (2, 8, 128);
        let cap_chunks = (1100usize + 2).div_ceil(64);
        assert_eq!(c.store.len(), 2 * kvh * cap_chunks * 4 * 2 * 16 * d);
        assert_eq!(c.state.chunk_sum.len(), 2 * kvh * cap_chunks * d);
        assert_eq!(c.state.q.len(), 2 * qh * d);
        assert_eq!(c.want.len(), 2 * qh * d);
        assert!(c.want.iter().all(|x| x.is_finite()) && c.want.iter().any(|&x| x != 0.0));
        assert!(c.store.iter().filter(|&&x| x != 0).count() > c.store.len() / 2);
    }
}
