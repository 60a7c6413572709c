//! The engine API on the GPU backend against the CPU backend fed the same (bf16-rounded) inputs: full
//! budget and routed outputs, batches of sequences of different lengths in one call (any subset of the
//! rows), a removed sequence's row reused, block appends against token-by-token ones, working-set hits
//! on a repeated step, the host budget, typed errors. Skips visibly without a GPU; fails instead when
//! HGA_REQUIRE_GPU=1.

mod common;
use common::{rel_err, rng};

use hga_dsl::{ModelShape, Routing, Spec, ValidSpec};
use hga_runtime::engine::{BackendChoice, BackendKind, CacheConfig, HgaCache, SeqId};
use hga_runtime::offload::{bf16_to_f32, f32_to_bf16};
use hga_runtime::RuntimeError;
use rand::Rng;

/// Random values already representable in bf16, so both backends see identical inputs.
fn randv(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| bf16_to_f32(f32_to_bf16(rng.random_range(-1.0f32..1.0)))).collect()
}

fn spec(routing: Routing) -> ValidSpec {
    Spec::new(ModelShape::new(32, 4, 128, 1e6)).with_routing(routing).validate().unwrap()
}

fn routing() -> Routing {
    Routing { keep_first: 1, keep_last: 2, top_chunks: 4, top_groups: 8, ..Routing::default() }
}

/// The GPU cache, or None (with a visible message) where there is no GPU and none is required.
fn gpu_cache(config: CacheConfig) -> Option<HgaCache> {
    match HgaCache::new(config, BackendChoice::Gpu { ordinal: 0 }) {
        Ok(c) => {
            assert_eq!(c.backend(), BackendKind::Gpu);
            Some(c)
        }
        Err(RuntimeError::NoGpu { reason }) => {
            common::skip_without_gpu(&reason);
            None
        }
        Err(e) => panic!("GPU backend failed: {e}"),
    }
}

/// Fills both caches with the same sequences; returns their ids (same order).
fn fill(rng: &mut impl Rng, caches: [&mut HgaCache; 2], lens: &[usize]) -> [Vec<SeqId>; 2] {
    let l = caches[0].layout();
    let row = l.kv_heads * l.head_dim;
    let mut ids = [Vec::new(), Vec::new()];
    for &len in lens {
        let ks = [caches[0].add_sequence().unwrap(), caches[1].add_sequence().unwrap()];
        let mut done = 0;
        while done < len {
            let n = rng.random_range(1..=(len - done).min(100));
            let (k, v) = (randv(rng, n * row), randv(rng, n * row));
            caches[0].append(ks[0], 0, &k, &v).unwrap();
            caches[1].append(ks[1], 0, &k, &v).unwrap();
            done += n;
        }
        ids[0].push(ks[0]);
        ids[1].push(ks[1]);
    }
    ids
}

/// Compares GPU and CPU per head output. `tie_share`: the share of heads allowed to exceed `bound`,
/// for routing flips between candidates whose scores tie within rounding (summation order differs on the
/// GPU); 0 at full budget, where nothing is selected.
fn check_against_cpu(routing: Routing, lens: &[usize], bound: f64, tie_share: f64) {
    let mut rng = rng();
    let spec = spec(routing);
    let mut config = CacheConfig::new(spec, 1, 4096);
    config.max_sequences = 4;
    let Some(mut gpu) = gpu_cache(config.clone()) else { return };
    let mut cpu = HgaCache::new(config, BackendChoice::Cpu).unwrap();
    let [gids, cids] = fill(&mut rng, [&mut gpu, &mut cpu], lens);
    let l = gpu.layout();
    let (d, row) = (l.head_dim, l.q_heads * l.head_dim);
    let mut errs = Vec::new();
    for _step in 0..3 {
        let q = randv(&mut rng, lens.len() * row);
        let (mut og, mut oc) = (vec![f32::NAN; q.len()], vec![f32::NAN; q.len()]);
        let tg = gpu.attend(0, &gids, &q, &mut og).unwrap();
        cpu.attend(0, &cids, &q, &mut oc).unwrap();
        errs.extend(og.chunks(d).zip(oc.chunks(d)).map(|(a, b)| rel_err(a, b)));
        assert_eq!(tg.groups_per_kv_head.len(), lens.len() * l.kv_heads);
        assert_eq!(tg.hits + tg.misses, tg.groups_per_kv_head.iter().sum::<usize>() as u64);
        assert_eq!(tg.bytes_h2d, tg.misses * 2 * 2 * 16 * 128);
        // The same query again: everything routed is in the working set.
        let again = gpu.attend(0, &gids, &q, &mut og).unwrap();
        assert_eq!(again.misses, 0, "{again:?}");
        assert_eq!(again.hits, tg.hits + tg.misses);
        assert_eq!(again.bytes_h2d, 0);
        assert!(tg.stages.route.as_nanos() > 0 && tg.stages.attend.as_nanos() > 0);
    }
    let over = errs.iter().filter(|&&e| e >= bound).count();
    let mut sorted = errs.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    eprintln!(
        "{} head outputs: median rel err {:.2e}, max {:.2e}; {over} over {bound:.0e}",
        errs.len(),
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
    assert!(over as f64 <= tie_share * errs.len() as f64, "{over} of {} heads over {bound}", errs.len());
}

#[test]
fn gpu_full_budget_matches_cpu() {
    check_against_cpu(routing().full_budget(), &[70, 700, 1500], 1e-2, 0.0);
}

#[test]
fn gpu_routed_matches_cpu() {
    check_against_cpu(routing(), &[1, 900, 2500], 1e-2, 0.03);
}

#[test]
fn gpu_bad_input_is_a_typed_error() {
    let mut rng = rng();
    let mut config = CacheConfig::new(spec(routing()), 1, 128);
    config.max_sequences = 1;
    let Some(mut gpu) = gpu_cache(config) else { return };
    let id = gpu.add_sequence().unwrap();
    let l = gpu.layout();
    let row = l.kv_heads * l.head_dim;
    gpu.append(id, 0, &randv(&mut rng, 100 * row), &randv(&mut rng, 100 * row)).unwrap();
    let q = randv(&mut rng, l.q_heads * l.head_dim);
    let mut before = vec![0.0; q.len()];
    gpu.attend(0, &[id], &q, &mut before).unwrap();
    assert_eq!(
        gpu.append(id, 0, &randv(&mut rng, 29 * row), &randv(&mut rng, 29 * row)).unwrap_err(),
        RuntimeError::CapacityExceeded { field: "sequence length", requested: 129, limit: 128 }
    );
    assert_eq!(
        gpu.add_sequence().unwrap_err(),
        RuntimeError::CapacityExceeded { field: "sequences", requested: 2, limit: 1 }
    );
    let mut after = vec![0.0; q.len()];
    gpu.attend(0, &[id], &q, &mut after).unwrap();
    assert_eq!(before, after);
    assert_eq!(gpu.seq_len(id, 0).unwrap(), 100);
    // Batches too large for the GPU (every layer's rows are allocated with the cache): a typed error.
    let mut huge = CacheConfig::new(spec(routing()), 1, 1 << 28);
    huge.host_budget_bytes = u64::MAX;
    huge.max_sequences = 64;
    let err = HgaCache::new(huge, BackendChoice::Gpu { ordinal: 0 }).unwrap_err();
    assert!(matches!(err, RuntimeError::GpuOutOfMemory { .. }), "{err}");
}

#[test]
fn device_buffers_match_host_slices() {
    let mut rng = rng();
    let mut config = CacheConfig::new(spec(routing()), 2, 2048);
    config.max_sequences = 2;
    let Some(mut cache) = gpu_cache(config) else { return };
    let gpu = hga_runtime::cuda::Gpu::open(0).unwrap();
    let st = gpu.stream();
    let l = cache.layout();
    let row = l.kv_heads * l.head_dim;
    let (a, b) = (cache.add_sequence().unwrap(), cache.add_sequence().unwrap());
    let bits = |x: &[f32]| -> Vec<u16> { x.iter().map(|&v| f32_to_bf16(v)).collect() };
    for layer in 0..2 {
        for n in [700, 1, 300] {
            let (k, v) = (randv(&mut rng, n * row), randv(&mut rng, n * row));
            cache.append(a, layer, &k, &v).unwrap();
            let (kd, vd) = (st.clone_htod(&bits(&k)).unwrap(), st.clone_htod(&bits(&v)).unwrap());
            cache.append_device(b, layer, &kd, &vd).unwrap();
        }
    }
    let qrow = l.q_heads * l.head_dim;
    let q = randv(&mut rng, qrow);
    for layer in 0..2 {
        let mut oa = vec![f32::NAN; qrow];
        cache.attend(layer, &[a], &q, &mut oa).unwrap();
        let qd = st.clone_htod(&bits(&q)).unwrap();
        let mut od = st.clone_htod(&vec![0xffffu16; qrow]).unwrap();
        cache.attend_device(layer, &[b], &qd, &mut od).unwrap();
        let ob: Vec<f32> = st.clone_dtoh(&od).unwrap().into_iter().map(bf16_to_f32).collect();
        assert!(ob.iter().all(|x| x.is_finite()), "every output element written");
        assert_eq!(ob, bits(&oa).into_iter().map(bf16_to_f32).collect::<Vec<_>>(), "layer {layer}");
    }
    // A device buffer of the wrong length is a typed error, and nothing changes.
    let short = st.clone_htod(&vec![0x3f80u16; row - 1]).unwrap();
    assert!(matches!(cache.append_device(a, 0, &short, &short), Err(RuntimeError::ShapeMismatch { field: "k", .. })));
    assert_eq!(cache.seq_len(a, 0).unwrap(), 1001);
}

/// The GPU backend resolves its kernel parameters from the checked-in tuned configs and says which rule
/// it used: on an H200 the measured qwen3-30b config's exact (1M, batch 1) bucket; elsewhere the rule that
/// applies, never an invalid spec.
#[test]
fn kernel_parameters_come_from_the_tuned_configs() {
    let spec = Spec::new(hga_dsl::presets::find("qwen3-30b").unwrap().shape).validate().unwrap();
    let configs = kernels_generated::tuned::all().unwrap();
    let mut config = CacheConfig::new(spec.clone(), 1, 1 << 20).with_tuned(configs.clone());
    config.max_sequences = 1;
    config.gpu_budget_bytes = Some(64 << 20);
    let Some(cache) = gpu_cache(config) else { return };
    let used = cache.kernels().expect("the GPU backend reports its kernels");
    eprintln!("kernel parameters {:?} from {}", used.spec.kernel(), used.source);
    assert_eq!(used.spec.model(), spec.model());
    assert_eq!(used.spec.routing(), spec.routing());
    let h200 = configs.iter().find(|c| c.provenance.gpu == "h200" && c.provenance.model == "qwen3-30b").unwrap();
    if h200.provenance.gpu_name == cache_device_name(&cache) {
        let want = h200.choices.iter().find(|c| c.context == 1 << 20 && c.batch == 1).unwrap();
        assert_eq!(used.spec.kernel(), &want.pick.kernel);
        assert!(matches!(used.source, hga_dsl::tuned::Source::Exact { .. }), "{}", used.source);
    }
    // Without configs: the built-in default, reported as such.
    let mut plain = CacheConfig::new(spec, 1, 1 << 20);
    plain.max_sequences = 1;
    plain.gpu_budget_bytes = Some(64 << 20);
    let cache = gpu_cache(plain).unwrap();
    assert_eq!(cache.kernels().unwrap().source, hga_dsl::tuned::Source::BuiltIn);
}

fn cache_device_name(cache: &HgaCache) -> String {
    cache.device_name().unwrap_or_default().to_string()
}

/// Per-head relative errors of `a` against `b` (`d` elements per head), summarized on stderr.
fn head_errors(label: &str, a: &[f32], b: &[f32], d: usize) -> Vec<f64> {
    let errs: Vec<f64> = a.chunks(d).zip(b.chunks(d)).map(|(x, y)| rel_err(x, y)).collect();
    let max = errs.iter().cloned().fold(0.0, f64::max);
    eprintln!("{label}: {} head outputs, max rel err {max:.2e}", errs.len());
    errs
}

/// Asserts that at most `tie_share` of the heads exceed `bound` (routing ties, see `check_against_cpu`).
fn assert_within(label: &str, errs: &[f64], bound: f64, tie_share: f64) {
    let over = errs.iter().filter(|&&e| e >= bound).count();
    assert!(over as f64 <= tie_share * errs.len() as f64, "{label}: {over} of {} heads over {bound}", errs.len());
}

/// Five sequences of different lengths in a batch of six rows, attended in one call in several subsets
/// (rows out of order, inactive rows between them): every output element against the CPU backend.
#[test]
fn gpu_subsets_of_a_batch_match_cpu() {
    for (routing, tie_share) in [(routing().full_budget(), 0.0), (routing(), 0.03)] {
        let mut rng = rng();
        let mut config = CacheConfig::new(spec(routing), 1, 4096);
        config.max_sequences = 6;
        let Some(mut gpu) = gpu_cache(config.clone()) else { return };
        let mut cpu = HgaCache::new(config, BackendChoice::Cpu).unwrap();
        let lens = [3, 64, 333, 1024, 2047];
        let [gids, cids] = fill(&mut rng, [&mut gpu, &mut cpu], &lens);
        let l = gpu.layout();
        let (d, row) = (l.head_dim, l.q_heads * l.head_dim);
        let mut errs = Vec::new();
        for subset in [vec![4, 0, 2], vec![1], vec![0, 1, 2, 3, 4], vec![3, 1]] {
            let g: Vec<SeqId> = subset.iter().map(|&i| gids[i]).collect();
            let c: Vec<SeqId> = subset.iter().map(|&i| cids[i]).collect();
            let q = randv(&mut rng, subset.len() * row);
            let (mut og, mut oc) = (vec![f32::NAN; q.len()], vec![f32::NAN; q.len()]);
            let tg = gpu.attend(0, &g, &q, &mut og).unwrap();
            let tc = cpu.attend(0, &c, &q, &mut oc).unwrap();
            errs.extend(head_errors(&format!("subset {subset:?}"), &og, &oc, d));
            assert_eq!(tg.sequences, subset.len());
            assert_eq!(tg.groups_per_kv_head.len(), subset.len() * l.kv_heads);
            assert_eq!(tg.hits + tg.misses, tg.groups_per_kv_head.iter().sum::<usize>() as u64);
            assert_eq!(tg.bytes_h2d, tg.misses * 2 * 2 * 16 * 128);
            assert!(tg.attended_tokens > 0 && tc.attended_tokens > 0);
            if tie_share == 0.0 {
                // Full budget: every token of every sequence is in every head's softmax.
                let all: u64 = subset.iter().map(|&i| (lens[i] * l.q_heads) as u64).sum();
                assert_eq!(tc.attended_tokens, all);
                assert_eq!(tg.attended_tokens, all, "{tg:?}");
            }
        }
        assert_within("subsets", &errs, 1e-2, tie_share);
    }
}

/// A removed sequence's row goes to the next sequence added: the row starts cold (no hits from the
/// old partition), its host records are reused (no new pinned memory), and outputs match the CPU.
#[test]
fn gpu_removed_row_is_reused() {
    let mut rng = rng();
    let mut config = CacheConfig::new(spec(routing()), 2, 4096);
    config.max_sequences = 2;
    let Some(mut gpu) = gpu_cache(config.clone()) else { return };
    let mut cpu = HgaCache::new(config, BackendChoice::Cpu).unwrap();
    let l = gpu.layout();
    let (d, kvrow, row) = (l.head_dim, l.kv_heads * l.head_dim, l.q_heads * l.head_dim);
    let add = |rng: &mut rand::rngs::StdRng, gpu: &mut HgaCache, cpu: &mut HgaCache, len: usize| {
        let (g, c) = (gpu.add_sequence().unwrap(), cpu.add_sequence().unwrap());
        for layer in 0..2 {
            let (k, v) = (randv(rng, len * kvrow), randv(rng, len * kvrow));
            gpu.append(g, layer, &k, &v).unwrap();
            cpu.append(c, layer, &k, &v).unwrap();
        }
        (g, c)
    };
    let (ga, ca) = add(&mut rng, &mut gpu, &mut cpu, 1500);
    let (gb, cb) = add(&mut rng, &mut gpu, &mut cpu, 900);
    let mut errs = Vec::new();
    let q = randv(&mut rng, 2 * row);
    for layer in 0..2 {
        let (mut og, mut oc) = (vec![f32::NAN; q.len()], vec![f32::NAN; q.len()]);
        gpu.attend(layer, &[ga, gb], &q, &mut og).unwrap();
        cpu.attend(layer, &[ca, cb], &q, &mut oc).unwrap();
        errs.extend(head_errors("before removal", &og, &oc, d));
    }
    let pinned = gpu.host_bytes();
    assert!(pinned > 0);
    gpu.remove_sequence(ga).unwrap();
    cpu.remove_sequence(ca).unwrap();
    assert_eq!(gpu.host_bytes(), pinned, "blocks are kept for reuse");
    let (gc, cc) = add(&mut rng, &mut gpu, &mut cpu, 700);
    assert_eq!(gpu.host_bytes(), pinned, "the new sequence reuses the removed one's records");
    assert!(gpu.attend(0, &[ga], &q[..row], &mut vec![0.0; row]).is_err());
    for layer in 0..2 {
        // The same query twice: the new row starts cold, then hits everything it routed.
        let qc = randv(&mut rng, row);
        let (mut og, mut oc) = (vec![f32::NAN; row], vec![f32::NAN; row]);
        let first = gpu.attend(layer, &[gc], &qc, &mut og).unwrap();
        cpu.attend(layer, &[cc], &qc, &mut oc).unwrap();
        errs.extend(head_errors("reused row", &og, &oc, d));
        assert!(first.misses > 0, "{first:?}");
        assert_eq!(first.hits, 0, "a reset row has an empty slot partition: {first:?}");
        let again = gpu.attend(layer, &[gc], &qc, &mut og).unwrap();
        assert_eq!((again.misses, again.hits), (0, first.misses), "{again:?}");
        let (mut og, mut oc) = (vec![f32::NAN; q.len()], vec![f32::NAN; q.len()]);
        gpu.attend(layer, &[gb, gc], &q, &mut og).unwrap();
        cpu.attend(layer, &[cb, cc], &q, &mut oc).unwrap();
        errs.extend(head_errors("both rows", &og, &oc, d));
    }
    assert_within("row reuse", &errs, 1e-2, 0.03);
}

/// Block appends spanning several chunks (unaligned starts, up to 1000 tokens at once) on the GPU
/// against token-by-token appends on the CPU backend and on the GPU.
#[test]
fn gpu_block_appends_match_token_by_token() {
    for (routing, tie_share) in [(routing().full_budget(), 0.0), (routing(), 0.03)] {
        let mut rng = rng();
        let mut config = CacheConfig::new(spec(routing), 1, 4096);
        config.max_sequences = 2;
        let Some(mut gpu) = gpu_cache(config.clone()) else { return };
        let mut cpu = HgaCache::new(config, BackendChoice::Cpu).unwrap();
        let l = gpu.layout();
        let (d, kvrow, row) = (l.head_dim, l.kv_heads * l.head_dim, l.q_heads * l.head_dim);
        let (blocks, singles, c) =
            (gpu.add_sequence().unwrap(), gpu.add_sequence().unwrap(), cpu.add_sequence().unwrap());
        let mut errs = Vec::new();
        for n in [37, 1000, 1, 200, 64, 555] {
            let (k, v) = (randv(&mut rng, n * kvrow), randv(&mut rng, n * kvrow));
            gpu.append(blocks, 0, &k, &v).unwrap();
            for t in 0..n {
                let at = t * kvrow..(t + 1) * kvrow;
                gpu.append(singles, 0, &k[at.clone()], &v[at.clone()]).unwrap();
                cpu.append(c, 0, &k[at.clone()], &v[at]).unwrap();
            }
            let q = randv(&mut rng, row);
            let (mut ob, mut os, mut oc) = (vec![f32::NAN; row], vec![f32::NAN; row], vec![f32::NAN; row]);
            gpu.attend(0, &[blocks], &q, &mut ob).unwrap();
            gpu.attend(0, &[singles], &q, &mut os).unwrap();
            cpu.attend(0, &[c], &q, &mut oc).unwrap();
            let len = gpu.seq_len(blocks, 0).unwrap();
            errs.extend(head_errors(&format!("blocks vs CPU at {len}"), &ob, &oc, d));
            let same = head_errors(&format!("blocks vs singles at {len}"), &ob, &os, d);
            assert_within("blocks vs singles", &same, 1e-2, tie_share);
        }
        assert_eq!(gpu.seq_len(blocks, 0).unwrap(), gpu.seq_len(singles, 0).unwrap());
        assert_within("blocks vs CPU", &errs, 1e-2, tie_share);
    }
}

/// The host store grows by group records within the configured budget: an append that needs more is
/// `HostOutOfMemory` and changes nothing (length, output, pinned bytes); what fits still goes in.
#[test]
fn gpu_host_budget_error_leaves_state_unchanged() {
    let mut rng = rng();
    let record = 2 * 2 * 16 * 128u64;
    let budget = 40 * 4 * record;
    let mut config = CacheConfig::new(spec(routing()), 1, 4096);
    config.max_sequences = 1;
    // Exactly 40 groups of 4 KV heads: 640 tokens.
    config.host_budget_bytes = budget;
    let Some(mut gpu) = gpu_cache(config.clone()) else { return };
    config.host_budget_bytes = 64 << 20;
    let mut cpu = HgaCache::new(config, BackendChoice::Cpu).unwrap();
    let l = gpu.layout();
    let (d, kvrow, row) = (l.head_dim, l.kv_heads * l.head_dim, l.q_heads * l.head_dim);
    let (g, c) = (gpu.add_sequence().unwrap(), cpu.add_sequence().unwrap());
    let (k, v) = (randv(&mut rng, 600 * kvrow), randv(&mut rng, 600 * kvrow));
    gpu.append(g, 0, &k, &v).unwrap();
    cpu.append(c, 0, &k, &v).unwrap();
    let pinned = gpu.host_bytes();
    assert!(pinned > 0 && pinned <= budget, "{pinned}");
    let q = randv(&mut rng, row);
    let mut before = vec![f32::NAN; row];
    let t = gpu.attend(0, &[g], &q, &mut before).unwrap();
    assert!(t.misses > 0, "routed groups are read from the host records: {t:?}");
    // 660 tokens need groups 38..=41: two groups more than the budget holds.
    let (k2, v2) = (randv(&mut rng, 60 * kvrow), randv(&mut rng, 60 * kvrow));
    let err = gpu.append(g, 0, &k2, &v2).unwrap_err();
    assert!(matches!(err, RuntimeError::HostOutOfMemory { budget: b, .. } if b == budget), "{err}");
    assert_eq!(gpu.seq_len(g, 0).unwrap(), 600);
    assert_eq!(gpu.host_bytes(), pinned);
    let mut after = vec![f32::NAN; row];
    gpu.attend(0, &[g], &q, &mut after).unwrap();
    assert_eq!(before, after);
    // What fits still goes in: 40 tokens fill groups 37..=39, the budget's last.
    gpu.append(g, 0, &k2[..40 * kvrow], &v2[..40 * kvrow]).unwrap();
    cpu.append(c, 0, &k2[..40 * kvrow], &v2[..40 * kvrow]).unwrap();
    assert_eq!(gpu.seq_len(g, 0).unwrap(), 640);
    let q = randv(&mut rng, row);
    let (mut og, mut oc) = (vec![f32::NAN; row], vec![f32::NAN; row]);
    gpu.attend(0, &[g], &q, &mut og).unwrap();
    cpu.attend(0, &[c], &q, &mut oc).unwrap();
    assert_within("after the budget error", &head_errors("budget", &og, &oc, d), 1e-2, 0.03);
    assert!(matches!(gpu.append(g, 0, &k2[..kvrow], &v2[..kvrow]), Err(RuntimeError::HostOutOfMemory { .. })));
    assert_eq!(gpu.seq_len(g, 0).unwrap(), 640);
}
