//! The engine API on the GPU backend against the CPU backend fed the same (bf16-rounded) inputs: full
//! budget and routed outputs, batches of sequences of different lengths in one call (any subset of the
//! rows), a removed sequence's row reused, block appends against token-by-token ones, working-set hits
//! on a repeated step, the host budget, typed errors; every attend path (host slices or device buffers,
//! CUDA graph on or off, telemetry full or off) bit for bit against the others, and the one-copy counter
//! read-back against the batch's per-buffer read-backs; speculative prefetch (host and device guesses)
//! against a cache without it. Skips visibly without a GPU; fails instead when
//! HGA_REQUIRE_GPU=1.

mod common;
use common::{rel_err, rng};

use hga_dsl::{ModelShape, Routing, Sharing, Spec, ValidSpec};
use hga_runtime::engine::{BackendChoice, BackendKind, CacheConfig, HgaCache, SeqId, StepTelemetry, TelemetryLevel};
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
    for graph in [true, false] {
        check_against_cpu_with(routing.clone(), lens, bound, tie_share, graph);
    }
}

/// [`check_against_cpu`] with the GPU backend's CUDA graph on or off.
fn check_against_cpu_with(routing: Routing, lens: &[usize], bound: f64, tie_share: f64, graph: bool) {
    let mut rng = rng();
    let spec = spec(routing);
    let mut config = CacheConfig::new(spec, 1, 4096);
    config.max_sequences = 4;
    let Some(mut gpu) = gpu_cache(config.clone().with_cuda_graph(graph)) else { return };
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
        check_stage_times(&tg, graph);
    }
    let over = errs.iter().filter(|&&e| e >= bound).count();
    let mut sorted = errs.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    eprintln!(
        "graph {graph}: {} head outputs: median rel err {:.2e}, max {:.2e}; {over} over {bound:.0e}",
        errs.len(),
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
    assert!(over as f64 <= tie_share * errs.len() as f64, "{over} of {} heads over {bound}", errs.len());
}

/// Stage times of a step with full telemetry: per stage on separate launches, the whole chain only on a
/// graph replay.
fn check_stage_times(t: &StepTelemetry, graph: bool) {
    let s = &t.stages;
    assert_eq!(t.graph_replay, graph, "{t:?}");
    assert!(s.device.as_nanos() > 0, "{s:?}");
    if graph {
        assert!(s.route.is_zero() && s.fetch.is_zero() && s.attend.is_zero(), "{s:?}");
    } else {
        assert!(s.route.as_nanos() > 0 && s.fetch.as_nanos() > 0 && s.attend.as_nanos() > 0, "{s:?}");
    }
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
    // A slot cache larger than the GPU (the slot pool is allocated with the cache): a typed error.
    // (A long max_seq_len alone is not: the summary and index tables only reserve address space and
    // map memory as sequences grow; gpu_memory covers growth that runs out of memory.)
    let mut huge = CacheConfig::new(spec(routing()), 1, 1 << 28);
    huge.host_budget_bytes = u64::MAX;
    huge.max_sequences = 64;
    huge.gpu_budget_bytes = Some(u64::MAX / 2);
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
    // Attend: queries or outputs of the wrong length, a sequence twice, an unknown one: typed errors,
    // and the output buffer untouched.
    let qd = st.clone_htod(&bits(&q)).unwrap();
    let poison = vec![0xffffu16; qrow];
    let mut od = st.clone_htod(&poison).unwrap();
    let mut long = st.clone_htod(&vec![0u16; qrow + 1]).unwrap();
    let short_q = st.clone_htod(&vec![0u16; qrow - 1]).unwrap();
    let err = |r: Result<_, RuntimeError>| r.unwrap_err();
    assert!(matches!(
        err(cache.attend_device(0, &[b], &short_q, &mut od)),
        RuntimeError::ShapeMismatch { field: "q", .. }
    ));
    assert!(matches!(
        err(cache.attend_device(0, &[b], &qd, &mut long)),
        RuntimeError::ShapeMismatch { field: "out", .. }
    ));
    assert!(matches!(err(cache.attend_device(0, &[b, b], &qd, &mut od)), RuntimeError::DuplicateSequence { .. }));
    assert!(matches!(
        err(cache.attend_device(0, &[SeqId(99)], &qd, &mut od)),
        RuntimeError::UnknownSequence { id: 99 }
    ));
    assert!(matches!(err(cache.attend_device(2, &[b], &qd, &mut od)), RuntimeError::IndexOutOfRange { .. }));
    assert_eq!(st.clone_dtoh(&od).unwrap(), poison);
}

/// One way of calling attend: queries and outputs in host slices or device buffers, the layer's launch
/// chain as a CUDA graph or separate launches, full telemetry or none.
#[derive(Debug, Clone, Copy)]
struct AttendPath {
    device: bool,
    graph: bool,
    telemetry: TelemetryLevel,
}

/// What full telemetry counts (everything but the times).
fn counts(t: &StepTelemetry) -> (usize, u64, u64, u64, Vec<usize>, u64) {
    (t.sequences, t.bytes_h2d, t.hits, t.misses, t.groups_per_kv_head.clone(), t.attended_tokens)
}

/// Every attend path on caches fed the same appends and queries gives the reference path's (host
/// slices, separate launches, full telemetry) outputs bit for bit, and the same counts with full
/// telemetry: batches of consecutive rows (kernels pointed at the device buffers) and of rows out of
/// order or with gaps (device-to-device copies), decode appends between steps, and a block append that
/// outgrows the captured chunk-score grid (the graph is captured again). Per-query-head and shared
/// routing; two layers (one graph each).
#[test]
fn gpu_attend_paths_agree_bit_for_bit() {
    use TelemetryLevel::{Full, Off};
    let paths = [
        AttendPath { device: false, graph: false, telemetry: Full },
        AttendPath { device: false, graph: true, telemetry: Full },
        AttendPath { device: true, graph: false, telemetry: Full },
        AttendPath { device: true, graph: true, telemetry: Full },
        AttendPath { device: true, graph: true, telemetry: Off },
        AttendPath { device: true, graph: false, telemetry: Off },
        AttendPath { device: false, graph: true, telemetry: Off },
    ];
    for routing in [routing(), Routing { sharing: Sharing::PerKvHead, ..routing() }] {
        let mut rng = rng();
        let layers = 2;
        let mut config = CacheConfig::new(spec(routing.clone()), layers, 8192);
        config.max_sequences = 5;
        let mut caches = Vec::new();
        for p in &paths {
            let Some(c) = gpu_cache(config.clone().with_cuda_graph(p.graph).with_telemetry(p.telemetry)) else {
                return;
            };
            caches.push(c);
        }
        let gpu = hga_runtime::cuda::Gpu::open(0).unwrap();
        let st = gpu.stream();
        let l = caches[0].layout();
        let (kvrow, qrow) = (l.kv_heads * l.head_dim, l.q_heads * l.head_dim);
        let append = |rng: &mut rand::rngs::StdRng, caches: &mut [HgaCache], id: SeqId, n: usize| {
            for layer in 0..layers {
                let (k, v) = (randv(rng, n * kvrow), randv(rng, n * kvrow));
                for c in caches.iter_mut() {
                    c.append(id, layer, &k, &v).unwrap();
                }
            }
        };
        // Four sequences in rows 0..4 (row 4 stays free); ids are the same in every cache.
        let mut ids = Vec::new();
        for len in [700, 1500, 64, 1000] {
            let id = caches[0].add_sequence().unwrap();
            for c in &mut caches[1..] {
                assert_eq!(c.add_sequence().unwrap(), id);
            }
            append(&mut rng, &mut caches, id, len);
            ids.push(id);
        }
        let subsets: [&[usize]; 7] = [&[0, 1, 2, 3], &[1, 2], &[2, 0], &[3], &[0, 2, 3], &[3, 2, 1, 0], &[1]];
        for (step, subset) in subsets.iter().cycle().take(10).enumerate() {
            if step == 5 {
                // 1500 + 5 + 4000 tokens: more candidate chunks than one chunk-score block covers (64).
                append(&mut rng, &mut caches, ids[1], 4000);
            }
            let seqs: Vec<SeqId> = subset.iter().map(|&i| ids[i]).collect();
            for layer in 0..layers {
                let q = randv(&mut rng, seqs.len() * qrow);
                let mut reference: Option<(Vec<u16>, StepTelemetry)> = None;
                for (c, p) in caches.iter_mut().zip(&paths) {
                    let (o, t) = if p.device {
                        let qd = st.clone_htod(&q.iter().map(|&x| f32_to_bf16(x)).collect::<Vec<_>>()).unwrap();
                        let mut od = st.clone_htod(&vec![0xffffu16; q.len()]).unwrap();
                        let t = c.attend_device(layer, &seqs, &qd, &mut od).unwrap();
                        (st.clone_dtoh(&od).unwrap(), t)
                    } else {
                        let mut o = vec![f32::NAN; q.len()];
                        let t = c.attend(layer, &seqs, &q, &mut o).unwrap();
                        (o.iter().map(|&x| f32_to_bf16(x)).collect(), t)
                    };
                    let label = format!("{:?} routing, step {step}, layer {layer}, {subset:?}, {p:?}", routing.sharing);
                    assert!(o.iter().all(|&x| bf16_to_f32(x).is_finite()), "{label}: every output written");
                    assert_eq!(t.sequences, seqs.len(), "{label}");
                    match (&reference, p.telemetry) {
                        (None, _) => {
                            assert_eq!(t.hits + t.misses, t.groups_per_kv_head.iter().sum::<usize>() as u64);
                            assert_eq!(t.groups_per_kv_head.len(), seqs.len() * l.kv_heads);
                            assert!(t.attended_tokens > 0);
                            check_stage_times(&t, false);
                            reference = Some((o, t));
                        }
                        (Some((ro, rt)), Full) => {
                            assert!(o == *ro, "{label}: output differs from the reference path");
                            assert_eq!(counts(&t), counts(rt), "{label}");
                            check_stage_times(&t, p.graph);
                        }
                        (Some((ro, _)), Off) => {
                            assert!(o == *ro, "{label}: output differs from the reference path");
                            let none = StepTelemetry { sequences: seqs.len(), ..StepTelemetry::default() };
                            assert_eq!(counts(&t), counts(&none), "{label}");
                            assert!(!t.graph_replay && t.stages.device.is_zero(), "{label}");
                        }
                    }
                }
            }
            // Decoding: each sequence of the step appends its next token.
            for &i in subset.iter() {
                append(&mut rng, &mut caches, ids[i], 1);
            }
        }
    }
}

/// The counters one step gathers into one buffer and reads back with one copy equal the batch's
/// per-buffer read-backs (union, misses, attended tokens, selected groups, host-record errors), on
/// separate launches and on a graph replay of a second batch fed the same appends (whose outputs and
/// counters equal the first's bit for bit); a graph whose chunk-score grid the rows outgrew does not
/// replay (a typed error) and is captured again. Per-query-head and shared routing.
#[test]
fn gpu_counters_match_per_buffer_readbacks() {
    use hga_runtime::cuda::{Capacity, DecodeBatch, DecodeKernels};
    let Some((gpu, jit)) = common::gpu_or_skip() else { return };
    for routing in [routing(), Routing { sharing: Sharing::PerKvHead, ..routing() }] {
        let mut rng = rng();
        let spec = spec(routing.clone());
        let kernels = DecodeKernels::load(&gpu, &jit, &spec).unwrap();
        let (kvh, qh, d, gqa) = (4usize, 32usize, 128usize, spec.gqa());
        let ucap = if routing.sharing == Sharing::PerKvHead { 1 } else { gqa } * routing.top_groups as usize;
        let rows = 3;
        let cap = Capacity { batch: rows, max_context: 8192, n_slots: rows * kvh * ucap * 2 };
        let mut launched = DecodeBatch::new(&gpu, &kernels, cap).unwrap();
        let mut replayed = DecodeBatch::new(&gpu, &kernels, cap).unwrap();
        for b in [&mut launched, &mut replayed] {
            b.use_device_store(&vec![0u16; b.host_store_len()]).unwrap();
        }
        let units = launched.units();
        let mut lens = [0usize; 3];
        let append = |rng: &mut rand::rngs::StdRng, bs: [&mut DecodeBatch; 2], lens: &mut [usize; 3], row, n| {
            let (k, _) = common::random_bf16(rng, n * kvh * d, 1.0);
            let (v, _) = common::random_bf16(rng, n * kvh * d, 1.0);
            for b in bs {
                b.append_block(row, lens[row], &k, &v).unwrap();
            }
            lens[row] += n;
        };
        // Rows 0 and 2 hold sequences; row 1 stays empty.
        append(&mut rng, [&mut launched, &mut replayed], &mut lens, 0, 1500);
        append(&mut rng, [&mut launched, &mut replayed], &mut lens, 2, 3000);
        let mut counters = launched.counter_buffer().unwrap();
        let mut graph = None;
        let mut captures = 0;
        for step in 0..6 {
            if step == 3 {
                // 4500 more tokens in row 0: more candidate chunks than the captured grid covers.
                append(&mut rng, [&mut launched, &mut replayed], &mut lens, 0, 4500);
                let g = graph.as_ref().unwrap();
                replayed.set_rows(&[Some(lens[0] as u32 - 1), None, Some(lens[2] as u32 - 1)]).unwrap();
                assert!(!replayed.attend_graph_fits(g), "{g:?}: {} candidates", replayed.max_candidates());
                assert!(replayed.launch_attend_graph(g).is_err());
            }
            let active = [step % 3 != 1, false, step % 3 != 2];
            let pos: Vec<Option<u32>> = (0..rows).map(|r| active[r].then(|| lens[r] as u32 - 1)).collect();
            let (q, _) = common::random_bf16(&mut rng, rows * qh * d, 1.0);
            for b in [&mut launched, &mut replayed] {
                b.set_rows(&pos).unwrap();
                b.upload_q(&q).unwrap();
                b.poison_output().unwrap();
            }
            launched.launch_decode().unwrap();
            launched.gather_counters(&mut counters).unwrap();
            let c = counters.read().unwrap();
            if !graph.as_ref().is_some_and(|g| replayed.attend_graph_fits(g)) {
                let buf = match graph.take() {
                    Some(g) => hga_runtime::cuda::AttendGraph::into_counters(g).unwrap(),
                    None => replayed.counter_buffer().unwrap(),
                };
                let g = replayed.capture_attend(replayed.candidate_bucket(), Some(buf)).unwrap();
                assert!(g.candidate_capacity() >= replayed.max_candidates());
                graph = Some(g);
                captures += 1;
            }
            let g = graph.as_ref().unwrap();
            replayed.launch_attend_graph(g).unwrap();
            let cg = g.counters().unwrap().read().unwrap();
            let label = format!("{:?} routing, step {step}, rows {pos:?}", routing.sharing);
            let out = launched.output().unwrap();
            assert!(out == replayed.output().unwrap(), "{label}: graph output differs from launches");
            assert_eq!(cg, c, "{label}: graph counters differ from launches'");
            for (b, c) in [(&launched, &c), (&replayed, &cg)] {
                let (union, misses) = (b.union().unwrap(), b.miss_counts().unwrap());
                let (attended, selected) = (b.attended_tokens().unwrap(), b.selected_groups().unwrap());
                assert_eq!(c.host_record_errors(), b.host_record_errors().unwrap(), "{label}");
                assert_eq!(c.host_record_errors(), 0, "{label}");
                for r in (0..rows).filter(|&r| active[r]) {
                    let row = &out[r * qh * d..(r + 1) * qh * d];
                    assert!(row.iter().all(|&x| bf16_to_f32(x).is_finite()), "{label}: row {r} written");
                    for kv in 0..kvh {
                        let bk = r * kvh + kv;
                        assert_eq!(
                            c.union_len(r, kv),
                            Some(union[bk].len()),
                            "{label}: union of row {r}, KV head {kv}"
                        );
                        assert_eq!(c.misses(r, kv), Some(misses[bk]), "{label}: misses of row {r}, KV head {kv}");
                        assert_eq!(c.attended(r, kv), Some(attended[bk]), "{label}: attended of row {r}, KV head {kv}");
                        assert!(c.attended(r, kv) > Some(0), "{label}");
                    }
                    for u in 0..units {
                        assert_eq!(c.selected_groups(r, u), Some(selected[r * units + u].len()), "{label}: unit {u}");
                    }
                }
            }
            // Decoding: the active rows append their next token.
            for r in (0..rows).filter(|&r| active[r]) {
                append(&mut rng, [&mut launched, &mut replayed], &mut lens, r, 1);
            }
        }
        assert_eq!(captures, 2, "captured once, then again when the candidates outgrew the grid");
    }
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

/// Host wall time per attend of one layer in the steady state (the same query again: every routed group
/// a hit) on each path, printed for the record (`-- --nocapture`): separate launches or one graph, host
/// slices or device buffers, full telemetry or none (the latter timed up to the output's stream having
/// run every step). Every path's output equals the first's bit for bit.
#[test]
fn gpu_attend_time_per_path() {
    use std::time::Instant;
    use TelemetryLevel::{Full, Off};
    let paths = [
        AttendPath { device: false, graph: false, telemetry: Full },
        AttendPath { device: false, graph: true, telemetry: Full },
        AttendPath { device: true, graph: false, telemetry: Full },
        AttendPath { device: true, graph: true, telemetry: Full },
        AttendPath { device: true, graph: false, telemetry: Off },
        AttendPath { device: true, graph: true, telemetry: Off },
    ];
    // Skip before making the inputs (tens of millions of values).
    let Some((gpu, _)) = common::gpu_or_skip() else { return };
    let st = gpu.stream();
    for (batch, len) in [(1usize, 32768usize), (4, 8192)] {
        let mut rng = rng();
        let mut config = CacheConfig::new(spec(routing()), 1, len + 64);
        config.max_sequences = batch;
        let l = config.layout();
        let (kvrow, qrow) = (l.kv_heads * l.head_dim, l.q_heads * l.head_dim);
        let (k, v) = (randv(&mut rng, len * kvrow), randv(&mut rng, len * kvrow));
        let q = randv(&mut rng, batch * qrow);
        let mut reference: Option<Vec<u16>> = None;
        for p in &paths {
            let Some(mut cache) = gpu_cache(config.clone().with_cuda_graph(p.graph).with_telemetry(p.telemetry)) else {
                return;
            };
            let ids: Vec<SeqId> = (0..batch)
                .map(|_| {
                    let id = cache.add_sequence().unwrap();
                    cache.append(id, 0, &k, &v).unwrap();
                    id
                })
                .collect();
            let qd = st.clone_htod(&q.iter().map(|&x| f32_to_bf16(x)).collect::<Vec<_>>()).unwrap();
            let mut od = st.clone_htod(&vec![0xffffu16; q.len()]).unwrap();
            let mut oh = vec![f32::NAN; q.len()];
            let (warm, n) = (5, 200);
            let mut device = Vec::with_capacity(n);
            let mut t0 = Instant::now();
            for i in 0..warm + n {
                if i == warm {
                    st.synchronize().unwrap();
                    t0 = Instant::now();
                }
                let t = if p.device {
                    cache.attend_device(0, &ids, &qd, &mut od).unwrap()
                } else {
                    cache.attend(0, &ids, &q, &mut oh).unwrap()
                };
                if i >= warm {
                    device.push(t.stages.device.as_secs_f64() * 1e6);
                }
            }
            st.synchronize().unwrap();
            let per = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
            device.sort_by(|a, b| a.total_cmp(b));
            eprintln!(
                "B={batch} context {len}: {p:?}: {per:.1} us per attend (host wall), device {:.1} us (median)",
                device[n / 2]
            );
            let o: Vec<u16> =
                if p.device { st.clone_dtoh(&od).unwrap() } else { oh.iter().map(|&x| f32_to_bf16(x)).collect() };
            assert!(o.iter().all(|&x| bf16_to_f32(x).is_finite()), "{p:?}: every output written");
            match &reference {
                None => reference = Some(o),
                Some(r) => assert!(o == *r, "B={batch} context {len}: {p:?} output differs from the first path"),
            }
        }
    }
}

/// [`HgaCache::prefetch`] (layer 0, host guesses) and [`HgaCache::prefetch_device`] (layer 1) before
/// each step (the exact query, a perturbed one, an unrelated one) leave
/// the outputs bit for bit those of a cache that never prefetches, and the prefetching cache misses
/// less. Two layers, two sequences, a slot cache of twice one step's union per layer.
#[test]
fn gpu_prefetch_changes_hits_not_outputs() {
    let mut rng = rng();
    let layers = 2;
    let mut config = CacheConfig::new(spec(routing()), layers, 8192);
    config.max_sequences = 2;
    let l = hga_runtime::cpu::HeadLayout::of(&config.spec);
    let (kvrow, qrow) = (l.kv_heads * l.head_dim, l.q_heads * l.head_dim);
    // Two unions per (row, KV head): 2 rows × 4 KV heads × 8 query heads × 8 groups × 2, per layer.
    let union_slots = 2 * 4 * 8 * 8;
    config.gpu_budget_bytes = Some((layers * 2 * union_slots * 2 * 16 * 128 * 2) as u64);
    let (Some(mut plain), Some(mut spec_c)) = (gpu_cache(config.clone()), gpu_cache(config)) else { return };
    let gpu = hga_runtime::cuda::Gpu::open(0).unwrap();
    let ids = fill(&mut rng, [&mut plain, &mut spec_c], &[3000, 1700]);
    for layer in 1..layers {
        for (a, b) in ids[0].iter().zip(&ids[1]) {
            let n = plain.seq_len(*a, 0).unwrap();
            let (k, v) = (randv(&mut rng, n * kvrow), randv(&mut rng, n * kvrow));
            plain.append(*a, layer, &k, &v).unwrap();
            spec_c.append(*b, layer, &k, &v).unwrap();
        }
    }
    let (mut misses_plain, mut misses_spec) = (0, 0);
    for step in 0..40 {
        for layer in 0..layers {
            let q = randv(&mut rng, 2 * qrow);
            let guess = match step % 3 {
                0 => q.clone(),
                1 => q
                    .iter()
                    .map(|&x| bf16_to_f32(f32_to_bf16(0.8 * x + 0.2 * rng.random_range(-1.0f32..1.0))))
                    .collect(),
                _ => randv(&mut rng, 2 * qrow),
            };
            if layer == 1 {
                let bits: Vec<u16> = guess.iter().map(|&x| f32_to_bf16(x)).collect();
                let dev = gpu.stream().clone_htod(&bits).unwrap();
                spec_c.prefetch_device(layer, &ids[1], &dev).unwrap();
                // The buffer's stream waits for the batch's copy: dropping it is safe at once.
                drop(dev);
            } else {
                spec_c.prefetch(layer, &ids[1], &guess).unwrap();
            }
            let (k, v) = (randv(&mut rng, 2 * kvrow), randv(&mut rng, 2 * kvrow));
            for (c, id) in [(&mut plain, &ids[0]), (&mut spec_c, &ids[1])] {
                for (i, &s) in id.iter().enumerate() {
                    c.append(s, layer, &k[i * kvrow..(i + 1) * kvrow], &v[i * kvrow..(i + 1) * kvrow]).unwrap();
                }
            }
            let (mut oa, mut ob) = (vec![0.0; 2 * qrow], vec![0.0; 2 * qrow]);
            let ta = plain.attend(layer, &ids[0], &q, &mut oa).unwrap();
            let tb = spec_c.attend(layer, &ids[1], &q, &mut ob).unwrap();
            assert!(oa == ob, "step {step}, layer {layer}: the prefetching cache's output differs");
            assert_eq!(ta.hits + ta.misses, tb.hits + tb.misses, "step {step}, layer {layer}: routed groups");
            misses_plain += ta.misses;
            misses_spec += tb.misses;
        }
    }
    eprintln!("misses: {misses_plain} without prefetch, {misses_spec} with");
    assert!(misses_spec < misses_plain, "prefetch did not reduce misses: {misses_spec} vs {misses_plain}");
}

/// `CacheConfig::lookahead` (2 chunks and 8 groups wider per query head) while the queries drift as a
/// decoder's do: through host slices (layer 0) and device buffers (layer 1), with CUDA graphs (the
/// queries copied into the batch) and without (read in place, so the lookahead copies them from the
/// caller's buffer), the outputs are bit for bit those of a cache without it, the graphed cache
/// replays its graph behind a pending lookahead, and the next steps miss less; a sequence reaching `max_seq_len` raises no error (the in-place path then skips the
/// lookahead, the others route it to no purpose). A widening past the kernels' list searches or the slot partitions is a typed config error.
#[test]
fn gpu_lookahead_changes_hits_not_outputs() {
    use hga_runtime::cuda::Widening;
    let mut rng = rng();
    let layers = 2;
    // The longer sequence reaches max_seq_len at the last step: it has no coming token to look ahead for.
    let mut config = CacheConfig::new(spec(routing()), layers, 3000 + 40);
    config.max_sequences = 2;
    let l = hga_runtime::cpu::HeadLayout::of(&config.spec);
    let (kvrow, qrow) = (l.kv_heads * l.head_dim, l.q_heads * l.head_dim);
    let record = 2 * 16 * 128 * 2;
    // Two widened unions per (row, KV head): 8 query heads × (8 + 8) groups × 2.
    let part = 8 * 16 * 2;
    config.gpu_budget_bytes = Some((layers * 2 * 4 * part * record) as u64);
    let widening = Widening { extra_chunks: 2, extra_groups: 8 };
    let look = config.clone().with_lookahead(Some(widening));
    let too_wide = config.clone().with_lookahead(Some(Widening { extra_chunks: 2, extra_groups: 9 }));
    assert!(matches!(too_wide.validate(), Err(RuntimeError::InvalidConfig { field: "lookahead", .. })));
    let Some(mut plain) = gpu_cache(config.clone()) else { return };
    // A slot pool of one plain union per (row, KV head) cannot hold the widened one.
    let mut small = look.clone();
    small.gpu_budget_bytes = Some((layers * 2 * 4 * 64 * record) as u64);
    match HgaCache::new(small, BackendChoice::Gpu { ordinal: 0 }) {
        Err(RuntimeError::InvalidConfig { field: "lookahead", .. }) => {}
        Err(e) => panic!("expected a lookahead config error, got {e}"),
        Ok(_) => panic!("expected a lookahead config error, got a cache"),
    }
    let mut graphed = gpu_cache(look.clone()).unwrap();
    let mut in_place = gpu_cache(look.with_cuda_graph(false)).unwrap();
    let mut caches = [&mut plain, &mut graphed, &mut in_place];
    let mut ids: [Vec<SeqId>; 3] = Default::default();
    for len in [3000, 1700] {
        let s: Vec<SeqId> = caches.iter_mut().map(|c| c.add_sequence().unwrap()).collect();
        for layer in 0..layers {
            let (k, v) = (randv(&mut rng, len * kvrow), randv(&mut rng, len * kvrow));
            for (c, &id) in caches.iter_mut().zip(&s) {
                c.append(id, layer, &k, &v).unwrap();
            }
        }
        for (i, &id) in s.iter().enumerate() {
            ids[i].push(id);
        }
    }
    let gpu = hga_runtime::cuda::Gpu::open(0).unwrap();
    let st = gpu.stream();
    let mut q: Vec<Vec<f32>> = (0..layers).map(|_| randv(&mut rng, 2 * qrow)).collect();
    let mut misses = [0u64; 3];
    for step in 0..40 {
        for (layer, ql) in q.iter_mut().enumerate() {
            // Each query drifts: 0.9 of the last one plus 0.1 of fresh noise.
            for x in ql.iter_mut() {
                *x = bf16_to_f32(f32_to_bf16(0.9 * *x + 0.1 * rng.random_range(-1.0f32..1.0)));
            }
            let (k, v) = (randv(&mut rng, 2 * kvrow), randv(&mut rng, 2 * kvrow));
            let mut outs = Vec::new();
            for (c, id) in caches.iter_mut().zip(&ids) {
                for (i, &s) in id.iter().enumerate() {
                    c.append(s, layer, &k[i * kvrow..(i + 1) * kvrow], &v[i * kvrow..(i + 1) * kvrow]).unwrap();
                }
                let (o, t) = if layer == 0 {
                    let mut o = vec![0.0; 2 * qrow];
                    let t = c.attend(layer, id, ql, &mut o).unwrap();
                    (o, t)
                } else {
                    let qd = st.clone_htod(&ql.iter().map(|&x| f32_to_bf16(x)).collect::<Vec<_>>()).unwrap();
                    let mut od = st.clone_htod(&vec![0u16; 2 * qrow]).unwrap();
                    let t = c.attend_device(layer, id, &qd, &mut od).unwrap();
                    (st.clone_dtoh(&od).unwrap().into_iter().map(bf16_to_f32).collect(), t)
                };
                outs.push((o, t.hits + t.misses, t.misses, t.graph_replay));
            }
            // A pending lookahead does not keep the graphed cache from replaying (it waits for it).
            assert!(outs[1].3, "step {step}, layer {layer}: the graphed cache with a lookahead launched its stages");
            for (i, (o, routed, m, _)) in outs.iter().enumerate() {
                assert!(*o == outs[0].0, "step {step}, layer {layer}: cache {i}'s output differs");
                assert_eq!(*routed, outs[0].1, "step {step}, layer {layer}: routed groups");
                if step >= 4 {
                    misses[i] += m;
                }
            }
        }
    }
    eprintln!("misses: {} without lookahead, {} with (graphs), {} with (in place)", misses[0], misses[1], misses[2]);
    assert!(misses[1] < misses[0] && misses[2] < misses[0], "the lookahead did not reduce misses: {misses:?}");
}

/// An engine that queues work ahead of the GPU (device buffers, `TelemetryLevel::Off`): every attend
/// of a cache with a lookahead replays its graph, although the layer's lookahead, queued one model step
/// before, may still be pending as far as the host can see (the replay waits for it on the GPU), and
/// the outputs are bit for bit those of a cache without a lookahead.
#[test]
fn gpu_lookahead_replays_when_queued_ahead() {
    use hga_runtime::cuda::Widening;
    let mut rng = rng();
    let (layers, steps, lens) = (4, 24, [3000, 1700]);
    let mut config = CacheConfig::new(spec(routing()), layers, 3000 + steps);
    config.max_sequences = 2;
    config.telemetry = TelemetryLevel::Off;
    let l = hga_runtime::cpu::HeadLayout::of(&config.spec);
    let (kvrow, qrow) = (l.kv_heads * l.head_dim, l.q_heads * l.head_dim);
    // Two widened unions per (row, KV head) of 16 KiB records: 8 query heads × (8 + 8) groups × 2.
    config.gpu_budget_bytes = Some((layers * 2 * 4 * (8 * 16 * 2) * (2 * 16 * 128 * 2)) as u64);
    let look = config.clone().with_lookahead(Some(Widening { extra_chunks: 2, extra_groups: 8 }));
    let Some(mut plain) = gpu_cache(config) else { return };
    let mut ahead = gpu_cache(look).unwrap();
    let mut ids: [Vec<SeqId>; 2] = Default::default();
    for len in lens {
        let s = [plain.add_sequence().unwrap(), ahead.add_sequence().unwrap()];
        for layer in 0..layers {
            let (k, v) = (randv(&mut rng, len * kvrow), randv(&mut rng, len * kvrow));
            for (c, &id) in [&mut plain, &mut ahead].into_iter().zip(&s) {
                c.append(id, layer, &k, &v).unwrap();
            }
        }
        for (i, &id) in s.iter().enumerate() {
            ids[i].push(id);
        }
    }
    let gpu = hga_runtime::cuda::Gpu::open(0).unwrap();
    let st = gpu.stream();
    let bf = |x: &[f32]| x.iter().map(|&x| f32_to_bf16(x)).collect::<Vec<u16>>();
    // Every step's inputs on the device first, so that the loop below queues only the caches' work.
    let mut q: Vec<Vec<f32>> = (0..layers).map(|_| randv(&mut rng, 2 * qrow)).collect();
    let mut inputs = Vec::new();
    for _ in 0..steps {
        for ql in q.iter_mut() {
            for x in ql.iter_mut() {
                *x = bf16_to_f32(f32_to_bf16(0.9 * *x + 0.1 * rng.random_range(-1.0f32..1.0)));
            }
            let kv: Vec<_> = (0..4).map(|_| st.clone_htod(&bf(&randv(&mut rng, kvrow))).unwrap()).collect();
            inputs.push((st.clone_htod(&bf(ql)).unwrap(), kv));
        }
    }
    let mut outs: [Vec<_>; 2] = Default::default();
    for (i, (qd, kv)) in inputs.iter().enumerate() {
        let layer = i % layers;
        for (c, (cache, id)) in [&mut plain, &mut ahead].into_iter().zip(&ids).enumerate() {
            for (s, &seq) in id.iter().enumerate() {
                cache.append_device(seq, layer, &kv[2 * s], &kv[2 * s + 1]).unwrap();
            }
            let mut od = st.alloc_zeros::<u16>(2 * qrow).unwrap();
            let t = cache.attend_device(layer, id, qd, &mut od).unwrap();
            assert!(t.graph_replay, "step {}, layer {layer}, cache {c}: launched its stages", i / layers);
            outs[c].push(od);
        }
    }
    for (i, (a, b)) in outs[0].iter().zip(&outs[1]).enumerate() {
        let (a, b) = (st.clone_dtoh(a).unwrap(), st.clone_dtoh(b).unwrap());
        assert!(a == b, "step {}, layer {}: the lookahead changed the output", i / layers, i % layers);
    }
}

/// A score kind the GPU kernels do not implement (mean-variance summaries, CPU backend only) is a typed
/// config error naming the field, never kernels that route by another score.
#[test]
fn gpu_refuses_a_score_kind_its_kernels_lack() {
    use hga_dsl::ScoreKind;
    let config = CacheConfig::new(spec(Routing { score: ScoreKind::MeanVar, ..routing() }), 1, 4096);
    match HgaCache::new(config, BackendChoice::Gpu { ordinal: 0 }) {
        Err(RuntimeError::NoGpu { reason }) => common::skip_without_gpu(&reason),
        Err(RuntimeError::InvalidConfig { field: "spec.routing.score", value, .. }) => assert_eq!(value, "meanvar"),
        Err(e) => panic!("expected a spec.routing.score error, got {e}"),
        Ok(_) => panic!("expected a spec.routing.score error, got a GPU cache"),
    }
}
