//! The generated CUDA kernels against the CPU backend, on the GPU: whole decode steps (append, summary on
//! chunk close, chunk and group routing, fetch through the slot cache, split-K attention and merge) on
//! fresh random bf16 inputs, for the presets' shapes and other head dimensions, query-head groupings and
//! kernel parameters, contexts from one chunk to 128K, batch 1 and 8.
//! Checks: relative L2 error of the output ≤ 1e-2 (printed), the same routing decisions per head except
//! near-ties (printed), every output element written (poisoned with NaN first), summaries built by the
//! GPU equal to the CPU's, every slot the resolve assigns equal to the eviction model's
//! (`offload::PartitionModel`, `Eviction::Clock`). Skips with "SKIPPED: ..." without a GPU; fails
//! instead when HGA_REQUIRE_GPU=1.

mod common;
use common::{gpu_or_skip, random_bf16, rng};

use half::bf16;
use hga_dsl::{presets, Routing, ScoreKind, Sharing, Spec, ValidSpec};
use hga_runtime::cpu::{HeadLayout, LayerCache, RouteTrace};
use hga_runtime::cuda::{Capacity, DecodeBatch, DecodeKernels, Gpu};
use hga_runtime::jit::Jit;
use hga_runtime::offload::{Eviction, PartitionModel};
use rand::rngs::StdRng;

/// One sequence's full token stream (for every KV head) and its CPU cache.
struct Seq {
    /// `[token][kv_heads][d]`, bits and f32.
    k_bits: Vec<u16>,
    v_bits: Vec<u16>,
    k: Vec<f32>,
    v: Vec<f32>,
    cpu: LayerCache,
}

struct Case {
    spec: ValidSpec,
    batch: usize,
    /// Tokens present before the first step, per sequence.
    start: Vec<usize>,
    steps: usize,
    n_slots: Option<usize>,
    /// Replay each step as a captured CUDA graph instead of separate launches.
    graph: bool,
    /// Fetch from mapped pinned host memory instead of a device buffer.
    pinned: bool,
}

#[derive(Default)]
struct Report {
    err_num: f64,
    err_den: f64,
    heads: usize,
    route_mismatch: usize,
    near_ties: usize,
    summary_checked: usize,
    summary_max_rel: f64,
    misses: usize,
}

fn run_case(gpu: &Gpu, jit: &Jit, case: &Case, rng: &mut StdRng) -> Report {
    let spec = &case.spec;
    let l = HeadLayout::of(spec);
    let (d, kvh, qh) = (l.head_dim, l.kv_heads, l.q_heads);
    let r = spec.routing().clone();
    let (c, g, gpc) = (r.chunk as usize, r.group as usize, spec.groups_per_chunk());
    let kernels = DecodeKernels::load(gpu, jit, spec).unwrap_or_else(|e| panic!("{e}"));
    let max_context = case.start.iter().max().unwrap() + case.steps + 1;
    let ucap = {
        let kce = (r.top_chunks as usize).min(max_context.div_ceil(c));
        let kge = (r.top_groups as usize).min(kce * gpc);
        if r.sharing == Sharing::PerKvHead {
            kge
        } else {
            spec.gqa() * kge
        }
    };
    let n_slots = case.n_slots.unwrap_or(case.batch * kvh * ucap * 4);
    let mut batch = DecodeBatch::new(gpu, &kernels, Capacity { batch: case.batch, max_context, n_slots }).unwrap();
    let cap_chunks = batch.cap_chunks();
    let cap_groups = cap_chunks * gpc;
    let (sv, wc) =
        (kernels.generated().launch.summary_vectors as usize, kernels.generated().launch.window_chunks as usize);
    let width = sv * d;

    // Token streams and CPU caches holding the first `start` tokens.
    let mut seqs: Vec<Seq> = case
        .start
        .iter()
        .map(|&n0| {
            let total = n0 + case.steps;
            let (k_bits, k) = random_bf16(rng, total * kvh * d, 1.0);
            let (v_bits, v) = random_bf16(rng, total * kvh * d, 1.0);
            let mut cpu = LayerCache::new(spec.clone());
            cpu.append(&k[..n0 * kvh * d], &v[..n0 * kvh * d]).unwrap();
            Seq { k_bits, v_bits, k, v, cpu }
        })
        .collect();

    // GPU state: window (sinks + recent chunks), summaries of closed chunks, the host store.
    let win_row = |p: usize| {
        let ch = p / c;
        let slot = if ch < r.keep_first as usize {
            ch
        } else {
            r.keep_first as usize + (ch - r.keep_first as usize) % (r.keep_last as usize + 1)
        };
        slot * c + p % c
    };
    let mut win_k = vec![0u16; case.batch * kvh * wc * c * d];
    let mut win_v = win_k.clone();
    let mut chunk_sum = vec![0f32; case.batch * kvh * cap_chunks * width];
    let mut group_sum = vec![0f32; case.batch * kvh * cap_groups * width];
    let mut store = vec![0u16; batch.host_store_len()];
    for (b, s) in seqs.iter().enumerate() {
        let n0 = case.start[b];
        let total = n0 + case.steps;
        let recent = (n0 / c).saturating_sub(r.keep_last as usize) * c;
        for t in (0..n0.min(r.keep_first as usize * c)).chain(recent..n0) {
            for h in 0..kvh {
                let dst = ((b * kvh + h) * wc * c + win_row(t)) * d;
                let src = (t * kvh + h) * d;
                win_k[dst..dst + d].copy_from_slice(&s.k_bits[src..src + d]);
                win_v[dst..dst + d].copy_from_slice(&s.v_bits[src..src + d]);
            }
        }
        for h in 0..kvh {
            for ch in 0..s.cpu.closed_chunks() {
                let dst = ((b * kvh + h) * cap_chunks + ch) * width;
                chunk_sum[dst..dst + width].copy_from_slice(s.cpu.chunk_summary(h, ch).unwrap());
                for j in 0..gpc {
                    let gi = ch * gpc + j;
                    let dst = ((b * kvh + h) * cap_groups + gi) * width;
                    group_sum[dst..dst + width].copy_from_slice(s.cpu.group_summary(h, gi).unwrap());
                }
            }
            for gi in 0..total / g {
                let base = ((b * kvh + h) * cap_groups + gi) * 2 * g * d;
                for j in 0..g {
                    let src = ((gi * g + j) * kvh + h) * d;
                    store[base + j * d..base + (j + 1) * d].copy_from_slice(&s.k_bits[src..src + d]);
                    store[base + (g + j) * d..base + (g + j + 1) * d].copy_from_slice(&s.v_bits[src..src + d]);
                }
            }
        }
    }
    batch.upload_window(&win_k, &win_v).unwrap();
    batch.upload_summaries(&chunk_sum, &group_sum).unwrap();
    if case.pinned {
        batch.use_pinned_host_store(&store).unwrap();
    } else {
        batch.use_device_store(&store).unwrap();
    }
    let graph = case.graph.then(|| batch.capture_step(cap_chunks as u32).unwrap());
    drop((win_k, win_v, chunk_sum, group_sum, store));

    let mut rep = Report::default();
    let mut partitions: Vec<PartitionModel> =
        (0..case.batch * kvh).map(|_| PartitionModel::new(batch.partition_slots()).unwrap()).collect();
    let units = batch.units();
    let gqa = spec.gqa();
    for step in 0..case.steps {
        let pos: Vec<usize> = case.start.iter().map(|&n0| n0 + step).collect();
        let (q_bits, q) = random_bf16(rng, case.batch * qh * d, 1.0);
        let mut k_new = vec![0u16; case.batch * kvh * d];
        let mut v_new = k_new.clone();
        for (b, s) in seqs.iter_mut().enumerate() {
            let row = pos[b] * kvh * d..(pos[b] + 1) * kvh * d;
            k_new[b * kvh * d..(b + 1) * kvh * d].copy_from_slice(&s.k_bits[row.clone()]);
            v_new[b * kvh * d..(b + 1) * kvh * d].copy_from_slice(&s.v_bits[row.clone()]);
            let (kr, vr) = (s.k[row.clone()].to_vec(), s.v[row].to_vec());
            s.cpu.append(&kr, &vr).unwrap();
        }
        batch.set_positions(&pos.iter().map(|&p| p as u32).collect::<Vec<_>>()).unwrap();
        batch.upload_q(&q_bits).unwrap();
        batch.poison_output().unwrap();
        match &graph {
            Some(g) => {
                batch.upload_new_kv(&k_new, &v_new).unwrap();
                batch.launch_graph(g).unwrap();
            }
            None => batch.step(&k_new, &v_new).unwrap(),
        }
        let out = batch.output().unwrap();
        rep.misses += batch.last_misses().unwrap();
        let sel_c = batch.selected_chunks().unwrap();
        let sel_g = batch.selected_groups().unwrap();
        let union = batch.union().unwrap();
        let miss_counts = batch.miss_counts().unwrap();
        for (bk, u) in union.iter().enumerate() {
            // The slots the GPU assigned (hits and misses alike) are the eviction model's, step by step.
            let groups: Vec<u32> = u.iter().map(|x| x.0 as u32).collect();
            let want = partitions[bk].resolve(&groups, Eviction::Clock).unwrap();
            let got: Vec<Option<u32>> = u.iter().map(|x| u32::try_from(x.1).ok()).collect();
            assert_eq!(got, want.slots, "step {step}, (row, KV head) {bk}: slots against the eviction model");
            assert_eq!(miss_counts[bk], (want.misses, want.uncached), "step {step}, (row, KV head) {bk}: misses");
            let mut slots: Vec<i32> = u.iter().map(|x| x.1).collect();
            let part = batch.partition_slots();
            assert!(slots.iter().all(|&s| s >= 0 && (s as usize) < part), "unresolved slot in {u:?}");
            slots.sort_unstable();
            slots.dedup();
            assert_eq!(slots.len(), u.len(), "two groups of (seq, kv head) {bk} share a slot");
        }
        for (b, s) in seqs.iter().enumerate() {
            let mut want = vec![0f32; qh * d];
            let trace: RouteTrace = s.cpu.attend_traced(&q[b * qh * d..(b + 1) * qh * d], pos[b], &mut want).unwrap();
            let mut mismatched = vec![false; qh];
            let qb = &q[b * qh * d..(b + 1) * qh * d];
            for (h, mismatch) in mismatched.iter_mut().enumerate() {
                let unit = b * units + if r.sharing == Sharing::PerKvHead { h / gqa } else { h };
                let (gc, gg) = (&sel_c[unit], &sel_g[unit]);
                // The GPU lists come out ascending; the CPU's best first.
                let sorted = |v: &Vec<usize>| {
                    let mut v = v.clone();
                    v.sort_unstable();
                    v
                };
                let (wc_, wg) = (&sorted(&trace.heads[h].chunks), &sorted(&trace.heads[h].groups));
                if gc == wc_ && gg == wg {
                    continue;
                }
                *mismatch = true;
                rep.route_mismatch += 1;
                // Near-tie: the decisions that differ have f64 oracle values within rounding of each other.
                let heads: Vec<usize> = if r.sharing == Sharing::PerKvHead {
                    (h / gqa * gqa..(h / gqa + 1) * gqa).collect()
                } else {
                    vec![h]
                };
                let closed = (pos[b] + 1) / c;
                let sinks_end = (r.keep_first as usize).min(closed);
                let local_start = closed.saturating_sub(r.keep_last as usize).max(sinks_end);
                let cands: Vec<usize> = (sinks_end..local_start).collect();
                let chunk_vals = oracle_values(spec, &s.cpu, qb, &heads, &cands, true);
                let mut tie = near_tie(gc, wc_, &cands, &chunk_vals);
                if tie && gc != wc_ {
                    // Different chunks: the group candidates differ too; the chunk tie explains it.
                } else if tie {
                    let mut chosen = wc_.clone();
                    chosen.sort_unstable();
                    let gcands: Vec<usize> = chosen.iter().flat_map(|&ch| ch * gpc..(ch + 1) * gpc).collect();
                    let group_vals = oracle_values(spec, &s.cpu, qb, &heads, &gcands, false);
                    tie = near_tie(gg, wg, &gcands, &group_vals);
                }
                if tie {
                    rep.near_ties += 1;
                } else {
                    eprintln!(
                        "routing differs: seq {b} pos {} head {h}\n gpu chunks {gc:?}\n cpu chunks {wc_:?}\n gpu groups {gg:?}\n cpu groups {wg:?}",
                        pos[b]
                    );
                }
            }
            for h in 0..qh {
                for j in 0..d {
                    let x = bf16::from_bits(out[(b * qh + h) * d + j]).to_f32();
                    assert!(x.is_finite(), "output seq {b} head {h} dim {j} not written or not finite: {x}");
                    if !mismatched[h] {
                        let w = want[h * d + j];
                        rep.err_num += ((x - w) as f64).powi(2);
                        rep.err_den += (w as f64).powi(2);
                    }
                }
                rep.heads += 1;
            }
        }
    }
    // Summaries the GPU built for chunks closed during the steps.
    let (gc, gg) = batch.summaries().unwrap();
    for (b, s) in seqs.iter().enumerate() {
        for ch in case.start[b] / c..s.cpu.closed_chunks() {
            for h in 0..kvh {
                let mut pairs = vec![(
                    &gc[((b * kvh + h) * cap_chunks + ch) * width..][..width],
                    s.cpu.chunk_summary(h, ch).unwrap(),
                )];
                for j in 0..gpc {
                    let gi = ch * gpc + j;
                    pairs.push((
                        &gg[((b * kvh + h) * cap_groups + gi) * width..][..width],
                        s.cpu.group_summary(h, gi).unwrap(),
                    ));
                }
                for (got, want) in pairs {
                    let num: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
                    let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
                    let rel = (num / den.max(1e-30)).sqrt();
                    // Both sides round the same f32 sums to bf16; a sum computed in another order can
                    // land one bf16 unit apart (2^-8 relative) in a few elements.
                    assert!(rel <= 4e-3, "summary seq {b} chunk {ch} head {h}: rel err {rel:e}");
                    rep.summary_max_rel = rep.summary_max_rel.max(rel);
                    rep.summary_checked += 1;
                }
            }
        }
    }
    rep
}

/// f64 values routing ranks `items` by (chunks when `chunks`, else groups): the score of the one head,
/// or the summed softmax mass of the KV head's query heads when shared.
fn oracle_values(
    spec: &ValidSpec,
    cpu: &LayerCache,
    q: &[f32],
    heads: &[usize],
    items: &[usize],
    chunks: bool,
) -> Vec<f64> {
    let d = spec.head_dim();
    let gqa = spec.gqa();
    let scale = 1.0 / (d as f64).sqrt();
    let per_head: Vec<Vec<f64>> = heads
        .iter()
        .map(|&h| {
            let qh = &q[h * d..(h + 1) * d];
            items
                .iter()
                .map(|&i| {
                    let s = if chunks { cpu.chunk_summary(h / gqa, i) } else { cpu.group_summary(h / gqa, i) }.unwrap();
                    let v: f64 = match spec.routing().score {
                        ScoreKind::MinMax => {
                            (0..d).map(|j| (qh[j] as f64 * s[j] as f64).max(qh[j] as f64 * s[d + j] as f64)).sum()
                        }
                        _ => (0..d).map(|j| qh[j] as f64 * s[j] as f64).sum(),
                    };
                    v * scale
                })
                .collect()
        })
        .collect();
    if heads.len() == 1 {
        return per_head.into_iter().next().unwrap();
    }
    let mut mass = vec![0f64; items.len()];
    for s in per_head {
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
        for (a, x) in mass.iter_mut().zip(&s) {
            *a += (x - m).exp() / z;
        }
    }
    mass
}

/// Whether two picks from `items` (as sets) differ only where values tie within 1e-4 of the largest:
/// what one picked and the other did not, best first, pairs up value for value.
fn near_tie(gpu: &[usize], cpu: &[usize], items: &[usize], vals: &[f64]) -> bool {
    let val = |x: usize| items.iter().position(|&i| i == x).map(|p| vals[p]);
    let tol = 1e-4 * vals.iter().fold(0f64, |a, v| a.max(v.abs())).max(1e-30);
    if gpu.len() != cpu.len() {
        return false;
    }
    let only = |a: &[usize], b: &[usize]| -> Option<Vec<f64>> {
        let mut v: Vec<f64> = a.iter().filter(|x| !b.contains(x)).map(|&x| val(x)).collect::<Option<_>>()?;
        v.sort_by(|x, y| y.total_cmp(x));
        Some(v)
    };
    match (only(gpu, cpu), only(cpu, gpu)) {
        (Some(g), Some(c)) => g.iter().zip(&c).all(|(x, y)| (x - y).abs() <= tol),
        _ => false,
    }
}

fn check(name: &str, rep: &Report) {
    let rel = (rep.err_num / rep.err_den.max(1e-30)).sqrt();
    eprintln!(
        "{name}: rel L2 {rel:.2e} over {} head outputs; routing mismatches {} ({} near-ties); {} summaries, max rel err {:.1e}; {} misses fetched",
        rep.heads, rep.route_mismatch, rep.near_ties, rep.summary_checked, rep.summary_max_rel, rep.misses
    );
    assert!(rel.is_finite() && rel <= 1e-2, "{name}: relative L2 error {rel}");
    assert_eq!(rep.route_mismatch, rep.near_ties, "{name}: routing differs beyond near-ties");
    assert!(rep.route_mismatch * 50 <= rep.heads.max(1), "{name}: too many near-ties");
}

fn preset(name: &str, routing: Routing) -> ValidSpec {
    Spec::new(presets::find(name).unwrap().shape).with_routing(routing).validate().unwrap()
}

#[test]
fn gpu_decode_step_matches_cpu_batch1_contexts_one_chunk_to_128k() {
    let Some((gpu, jit)) = gpu_or_skip() else { return };
    let mut rng = rng();
    let spec = preset("qwen3-30b", Routing::default());
    for start in [0usize, 63, 1000, 8191, 131071 - 70] {
        let case = Case {
            spec: spec.clone(),
            batch: 1,
            start: vec![start],
            steps: 70,
            n_slots: None,
            graph: false,
            pinned: false,
        };
        check(&format!("qwen3-30b B=1 context {}..{}", start + 1, start + 70), &run_case(&gpu, &jit, &case, &mut rng));
    }
}

#[test]
fn gpu_decode_step_matches_cpu_batch8_contexts_to_128k() {
    let Some((gpu, jit)) = gpu_or_skip() else { return };
    let mut rng = rng();
    let spec = preset("qwen3-30b", Routing::default());
    let start = vec![10, 64, 700, 2047, 5000, 20000, 65536, 131072 - 67];
    let case = Case { spec, batch: 8, start, steps: 66, n_slots: None, graph: true, pinned: true };
    check("qwen3-30b B=8 contexts 10..128K (graph replay, pinned host store)", &run_case(&gpu, &jit, &case, &mut rng));
}

#[test]
fn gpu_decode_step_matches_cpu_every_preset_shape() {
    let Some((gpu, jit)) = gpu_or_skip() else { return };
    let mut rng = rng();
    for p in presets::all() {
        let spec = preset(p.name, Routing::default());
        let case =
            Case { spec, batch: 2, start: vec![3000, 9000], steps: 66, n_slots: None, graph: false, pinned: false };
        check(&format!("{} B=2", p.name), &run_case(&gpu, &jit, &case, &mut rng));
    }
}

#[test]
fn gpu_decode_step_matches_cpu_every_score_kind_and_sharing() {
    let Some((gpu, jit)) = gpu_or_skip() else { return };
    let mut rng = rng();
    for score in ScoreKind::ALL.into_iter().filter(|&k| hga_dsl::codegen::scores(k)) {
        for sharing in [Sharing::PerQueryHead, Sharing::PerKvHead] {
            let spec = preset("llama3.1-8b", Routing { score, sharing, ..Routing::default() });
            let case =
                Case { spec, batch: 2, start: vec![2500, 6000], steps: 66, n_slots: None, graph: false, pinned: false };
            check(&format!("llama3.1-8b {score:?} {sharing:?}"), &run_case(&gpu, &jit, &case, &mut rng));
        }
    }
}

#[test]
fn gpu_fetch_evicts_with_a_minimal_slot_cache_and_full_budget_equals_dense() {
    let Some((gpu, jit)) = gpu_or_skip() else { return };
    let mut rng = rng();
    // Smallest allowed cache: every step evicts; results must not change.
    let spec = preset("tiny-code", Routing::default());
    let need = 2 * spec.gqa() * spec.routing().top_groups as usize;
    let case = Case { spec, batch: 1, start: vec![4000], steps: 40, n_slots: Some(need), graph: false, pinned: false };
    let rep = run_case(&gpu, &jit, &case, &mut rng);
    assert!(rep.misses > need, "expected evictions and refetches, saw {} misses", rep.misses);
    check("tiny-code minimal slot cache", &rep);
    // The same with partitions larger than the resolve's registers hold (1024 slots, 64 threads: the
    // eviction reads its stamps from memory).
    let k64 = hga_dsl::KernelParams { threads: 64, split_k: 2, tile_tokens: 16, vec_width: 2 };
    let spec = Spec::new(hga_dsl::ModelShape::new(64, 4, 128, 1e6)).with_kernel(k64).validate().unwrap();
    let need = 2 * spec.gqa() * spec.routing().top_groups as usize;
    let case =
        Case { spec, batch: 1, start: vec![6000], steps: 30, n_slots: Some(4 * need), graph: false, pinned: true };
    let rep = run_case(&gpu, &jit, &case, &mut rng);
    assert!(rep.misses > need, "expected evictions and refetches, saw {} misses", rep.misses);
    check("q64 kv4 minimal slot cache, 64 threads", &rep);
    // Budgets above every candidate: HGA is dense attention.
    let full = Routing { top_chunks: 64, top_groups: 256, ..Routing::default() };
    let case = Case {
        spec: preset("tiny-code", full),
        batch: 1,
        start: vec![3000],
        steps: 3,
        n_slots: None,
        graph: false,
        pinned: false,
    };
    check("tiny-code full budget", &run_case(&gpu, &jit, &case, &mut rng));
    // GPT-J pairing with partial rotary (mixed-RoPE summaries on a subset of dimensions).
    let shape = hga_dsl::ModelShape::new(16, 4, 128, 1e4).rope_style(hga_dsl::RopeStyle::Gptj).rotary_dim(64);
    let spec = Spec::new(shape).validate().unwrap();
    let case = Case { spec, batch: 2, start: vec![3000, 7000], steps: 66, n_slots: None, graph: false, pinned: false };
    check("gptj rotary 64", &run_case(&gpu, &jit, &case, &mut rng));
    // Budgets above the register-list top-k (16): the iterative selection path, > 256 candidates.
    let wide = Routing { top_chunks: 80, top_groups: 40, ..Routing::default() };
    let case = Case {
        spec: preset("qwen3-8b", wide),
        batch: 1,
        start: vec![24000],
        steps: 3,
        n_slots: None,
        graph: false,
        pinned: false,
    };
    check("qwen3-8b wide budgets", &run_case(&gpu, &jit, &case, &mut rng));
}

#[test]
fn gpu_decode_step_matches_cpu_other_head_dims_gqa_and_kernel_parameters() {
    // The warp-tiled attention (codegen 5) maps a lane to a quarter of each row and the block's heads to
    // the N side of the tiles: head dimensions 64 / 96 / 256, head tiles of 3 and 8 heads, two head tiles
    // per KV head (GQA 16), query-head masks of two words (GQA 64), and every load width and pass size.
    let shapes = [
        ("q32 kv8 d64", hga_dsl::ModelShape::new(32, 8, 64, 1e4)),
        ("q24 kv8 d96", hga_dsl::ModelShape::new(24, 8, 96, 1e4)),
        ("q16 kv4 d256", hga_dsl::ModelShape::new(16, 4, 256, 1e6)),
        ("q64 kv4 d128", hga_dsl::ModelShape::new(64, 4, 128, 1e6)),
        ("q64 kv1 d64", hga_dsl::ModelShape::new(64, 1, 64, 1e4)),
    ];
    let kernels = [
        hga_dsl::KernelParams { threads: 64, split_k: 2, tile_tokens: 16, vec_width: 2 },
        hga_dsl::KernelParams { threads: 256, split_k: 8, tile_tokens: 32, vec_width: 4 },
    ];
    // Validated here, before the GPU check, so that CI checks the specs too.
    let specs: Vec<(String, ValidSpec)> = shapes
        .iter()
        .flat_map(|(name, shape)| {
            kernels.iter().map(move |k| {
                let spec = Spec::new(shape.clone()).with_kernel(k.clone()).validate();
                (format!("{name} {k:?}"), spec.unwrap_or_else(|e| panic!("{name}: {e}")))
            })
        })
        .collect();
    let Some((gpu, jit)) = gpu_or_skip() else { return };
    let mut rng = rng();
    for (name, spec) in specs {
        let case =
            Case { spec, batch: 2, start: vec![2000, 5000], steps: 20, n_slots: None, graph: false, pinned: true };
        check(&name, &run_case(&gpu, &jit, &case, &mut rng));
    }
}
