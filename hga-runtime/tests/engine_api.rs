//! The engine API on the CPU backend: per-sequence results equal `LayerCache`, full budget equals dense,
//! telemetry is consistent, bad input is a typed error that changes nothing.

mod common;
use common::{rel_err, rng};

use hga_dsl::{KernelParams, ModelShape, Routing, Spec, ValidSpec};
use hga_runtime::cpu::{dense_causal, HeadLayout, LayerCache};
use hga_runtime::cuda::Widening;
use hga_runtime::engine::{BackendChoice, BackendKind, CacheConfig, HgaCache, SeqId};
use hga_runtime::RuntimeError;
use rand::Rng;

fn randv(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn spec(routing: Routing) -> ValidSpec {
    Spec::new(ModelShape::new(8, 2, 64, 1e4))
        .with_routing(routing)
        .with_kernel(KernelParams { tile_tokens: 16, ..KernelParams::default() })
        .validate()
        .unwrap()
}

fn small_routing() -> Routing {
    Routing { chunk: 16, group: 4, keep_first: 1, keep_last: 2, top_chunks: 3, top_groups: 4, ..Routing::default() }
}

/// Random token counts summing to `total`, so appends cross chunk boundaries at varied offsets.
fn pieces(rng: &mut impl Rng, total: usize) -> Vec<usize> {
    let mut left = total;
    let mut out = Vec::new();
    while left > 0 {
        let n = rng.random_range(1..=left.min(37));
        out.push(n);
        left -= n;
    }
    out
}

#[test]
fn batch_attend_equals_layer_cache_per_sequence() {
    let mut rng = rng();
    let spec = spec(small_routing());
    let l = HeadLayout::of(&spec);
    let (layers, row_kv, row_q) = (2, l.kv_heads * l.head_dim, l.q_heads * l.head_dim);
    let mut cache = HgaCache::new(CacheConfig::new(spec.clone(), layers, 4096), BackendChoice::Cpu).unwrap();
    assert_eq!(cache.backend(), BackendKind::Cpu);
    let lens = [rng.random_range(1..60), rng.random_range(200..400), rng.random_range(400..700)];
    let mut oracles = Vec::new();
    let mut ids = Vec::new();
    for &len in &lens {
        let id = cache.add_sequence().unwrap();
        let mut per_layer = Vec::new();
        for layer in 0..layers {
            let mut oracle = LayerCache::new(spec.clone());
            for n in pieces(&mut rng, len) {
                let (k, v) = (randv(&mut rng, n * row_kv), randv(&mut rng, n * row_kv));
                cache.append(id, layer, &k, &v).unwrap();
                oracle.append(&k, &v).unwrap();
            }
            assert_eq!(cache.seq_len(id, layer).unwrap(), len);
            per_layer.push(oracle);
        }
        ids.push(id);
        oracles.push(per_layer);
    }
    for layer in 0..layers {
        let q = randv(&mut rng, ids.len() * row_q);
        let mut out = vec![f32::NAN; q.len()];
        let tel = cache.attend(layer, &ids, &q, &mut out).unwrap();
        for (b, oracle) in oracles.iter().enumerate() {
            let mut want = vec![f32::NAN; row_q];
            oracle[layer].decode(&q[b * row_q..(b + 1) * row_q], &mut want).unwrap();
            let got = &out[b * row_q..(b + 1) * row_q];
            assert!(got.iter().all(|x| x.is_finite()));
            assert_eq!(got, &want[..], "sequence {b} layer {layer}: same code path, must be bit-identical");
        }
        assert_eq!(tel.sequences, 3);
        assert_eq!(tel.groups_per_kv_head.len(), 3 * l.kv_heads);
        let cap = small_routing().top_groups as usize * l.gqa();
        assert!(tel.groups_per_kv_head.iter().all(|&g| g <= cap), "{:?}", tel.groups_per_kv_head);
        assert!(tel.groups_per_kv_head[2 * l.kv_heads..].iter().all(|&g| g > 0), "long sequence routes");
        assert!(tel.attended_tokens > 0);
        assert!(tel.stages.total >= tel.stages.attend);
    }
    assert_eq!(cache.totals().steps, 2);
}

#[test]
fn full_budget_batch_equals_dense() {
    let mut rng = rng();
    let spec = spec(small_routing().full_budget());
    let l = HeadLayout::of(&spec);
    let (row_kv, row_q) = (l.kv_heads * l.head_dim, l.q_heads * l.head_dim);
    let mut cache = HgaCache::new(CacheConfig::new(spec, 1, 2048), BackendChoice::Cpu).unwrap();
    let lens = [rng.random_range(1..100), rng.random_range(300..600)];
    let mut kvs = Vec::new();
    let ids: Vec<SeqId> = lens
        .iter()
        .map(|&len| {
            let id = cache.add_sequence().unwrap();
            let (k, v) = (randv(&mut rng, len * row_kv), randv(&mut rng, len * row_kv));
            cache.append(id, 0, &k, &v).unwrap();
            kvs.push((k, v));
            id
        })
        .collect();
    let q = randv(&mut rng, 2 * row_q);
    let mut out = vec![f32::NAN; q.len()];
    cache.attend(0, &ids, &q, &mut out).unwrap();
    for (b, (len, (k, v))) in lens.iter().zip(&kvs).enumerate() {
        let mut want = vec![f32::NAN; row_q];
        dense_causal(&l, &q[b * row_q..(b + 1) * row_q], len - 1, k, v, &mut want).unwrap();
        let e = rel_err(&out[b * row_q..(b + 1) * row_q], &want);
        assert!(e < 1e-5, "sequence {b}: rel err {e}");
    }
}

/// Everything observable about a cache, to check that a failed call changed nothing.
fn snapshot(cache: &mut HgaCache, q: &[f32]) -> (Vec<SeqId>, Vec<usize>, u64, Vec<f32>) {
    let ids = cache.sequences();
    let lens = ids.iter().flat_map(|&id| (0..2).map(move |l| (id, l))).map(|(id, l)| cache.seq_len(id, l).unwrap());
    let lens: Vec<usize> = lens.collect();
    let mut out = vec![f32::NAN; q.len()];
    cache.attend(0, &ids, q, &mut out).unwrap();
    (ids, lens, cache.host_bytes(), out)
}

#[test]
fn bad_input_is_a_typed_error_and_changes_nothing() {
    let mut rng = rng();
    let spec = spec(small_routing());
    let l = HeadLayout::of(&spec);
    let (row_kv, row_q) = (l.kv_heads * l.head_dim, l.q_heads * l.head_dim);
    let mut config = CacheConfig::new(spec, 2, 100);
    config.max_sequences = 2;
    let mut cache = HgaCache::new(config.clone(), BackendChoice::Cpu).unwrap();
    let a = cache.add_sequence().unwrap();
    let b = cache.add_sequence().unwrap();
    for id in [a, b] {
        for layer in 0..2 {
            cache.append(id, layer, &randv(&mut rng, 60 * row_kv), &randv(&mut rng, 60 * row_kv)).unwrap();
        }
    }
    let q = randv(&mut rng, 2 * row_q);
    let before = snapshot(&mut cache, &q);
    let (k1, v1) = (randv(&mut rng, row_kv), randv(&mut rng, row_kv));
    let mut nan = k1.clone();
    nan[5] = f32::NAN;
    let mut out = vec![0.0; 2 * row_q];
    let mut nan_q = q.clone();
    nan_q[7] = f32::INFINITY;
    let ghost = SeqId(99);
    let errors = vec![
        cache.add_sequence().map(|_| ()),
        cache.append(ghost, 0, &k1, &v1),
        cache.append(a, 2, &k1, &v1),
        cache.append(a, 0, &k1[1..], &v1[1..]),
        cache.append(a, 0, &k1, &randv(&mut rng, 2 * row_kv)),
        cache.append(a, 0, &nan, &v1),
        cache.append(a, 0, &randv(&mut rng, 41 * row_kv), &randv(&mut rng, 41 * row_kv)),
        cache.attend(0, &[a, ghost], &q, &mut out).map(|_| ()),
        cache.attend(0, &[a, a], &q, &mut out).map(|_| ()),
        cache.attend(3, &[a, b], &q, &mut out).map(|_| ()),
        cache.attend(0, &[a, b], &q[..row_q], &mut out).map(|_| ()),
        cache.attend(0, &[a, b], &q, &mut out[1..]).map(|_| ()),
        cache.remove_sequence(ghost),
        cache.prefetch(0, &[a, ghost], &q),
        cache.prefetch(0, &[b, b], &q),
        cache.prefetch(2, &[a, b], &q),
        cache.prefetch(0, &[a, b], &q[1..]),
        cache.prefetch(0, &[a, b], &nan_q),
    ];
    let expected = [
        RuntimeError::CapacityExceeded { field: "sequences", requested: 3, limit: 2 },
        RuntimeError::UnknownSequence { id: 99 },
        RuntimeError::IndexOutOfRange { field: "layer", value: 2, limit: 2 },
        RuntimeError::ShapeMismatch {
            field: "k",
            expected: format!("a multiple of 2 heads × 64 = {row_kv}"),
            got: row_kv - 1,
        },
        RuntimeError::ShapeMismatch { field: "v", expected: row_kv.to_string(), got: 2 * row_kv },
        RuntimeError::NotFinite { field: "k", index: 5 },
        RuntimeError::CapacityExceeded { field: "sequence length", requested: 101, limit: 100 },
        RuntimeError::UnknownSequence { id: 99 },
        RuntimeError::DuplicateSequence { id: a.0 },
        RuntimeError::IndexOutOfRange { field: "layer", value: 3, limit: 2 },
        RuntimeError::ShapeMismatch { field: "q", expected: (2 * row_q).to_string(), got: row_q },
        RuntimeError::ShapeMismatch { field: "out", expected: (2 * row_q).to_string(), got: 2 * row_q - 1 },
        RuntimeError::UnknownSequence { id: 99 },
        RuntimeError::UnknownSequence { id: 99 },
        RuntimeError::DuplicateSequence { id: b.0 },
        RuntimeError::IndexOutOfRange { field: "layer", value: 2, limit: 2 },
        RuntimeError::ShapeMismatch { field: "q", expected: (2 * row_q).to_string(), got: 2 * row_q - 1 },
        RuntimeError::NotFinite { field: "q", index: 7 },
    ];
    for (got, want) in errors.into_iter().zip(expected) {
        assert_eq!(got.unwrap_err(), want);
    }
    assert_eq!(snapshot(&mut cache, &q), before, "a failed call changed the cache");
    // The CPU backend has nothing to prefetch: a valid call changes nothing either.
    cache.prefetch(1, &[b, a], &q).unwrap();
    assert_eq!(snapshot(&mut cache, &q), before, "a prefetch changed the CPU cache");

    // Host budget: exactly what is in use plus less than one more token's worth fails; nothing changes.
    config.host_budget_bytes = cache.host_bytes() + 1;
    let mut tight = HgaCache::new(config, BackendChoice::Cpu).unwrap();
    let (c, d) = (tight.add_sequence().unwrap(), tight.add_sequence().unwrap());
    for id in [c, d] {
        for layer in 0..2 {
            tight.append(id, layer, &randv(&mut rng, 60 * row_kv), &randv(&mut rng, 60 * row_kv)).unwrap();
        }
    }
    let before = snapshot(&mut tight, &q);
    let used = tight.host_bytes();
    assert!(matches!(
        tight.append(c, 1, &k1, &v1),
        Err(RuntimeError::HostOutOfMemory { used: u, budget, .. }) if u == used && budget == used + 1
    ));
    assert_eq!(snapshot(&mut tight, &q), before);
    // Removing a sequence frees its bytes; then the append fits. Ids are never reused.
    tight.remove_sequence(d).unwrap();
    assert!(tight.host_bytes() < used);
    tight.append(c, 1, &k1, &v1).unwrap();
    assert_eq!(tight.seq_len(c, 1).unwrap(), 61);
    assert_eq!(tight.append(d, 0, &k1, &v1).unwrap_err(), RuntimeError::UnknownSequence { id: d.0 });
    assert!(tight.add_sequence().unwrap().0 > d.0);
    // An empty sequence has no query to attend.
    let e = tight.sequences()[1];
    assert!(matches!(
        tight.attend(0, &[e], &q[..row_q], &mut out[..row_q]),
        Err(RuntimeError::PositionOutOfRange { .. })
    ));
}

#[test]
fn invalid_config_and_missing_gpu_are_typed_errors() {
    let spec = spec(small_routing());
    let mut c = CacheConfig::new(spec, 0, 100);
    assert!(matches!(
        HgaCache::new(c.clone(), BackendChoice::Cpu),
        Err(RuntimeError::InvalidConfig { field: "layers", .. })
    ));
    c.layers = 1;
    c.max_seq_len = 0;
    assert!(matches!(
        HgaCache::new(c.clone(), BackendChoice::Cpu),
        Err(RuntimeError::InvalidConfig { field: "max_seq_len", .. })
    ));
    c.max_seq_len = 10;
    c.host_budget_bytes = 0;
    assert!(matches!(
        HgaCache::new(c.clone(), BackendChoice::Cpu),
        Err(RuntimeError::InvalidConfig { field: "host_budget_bytes", .. })
    ));
    c.host_budget_bytes = 1 << 20;
    // A lookahead must widen the route, within what the kernels' list searches cover (top_groups 4
    // here: at most 4 more groups).
    for w in [Widening::default(), Widening { extra_chunks: 1, extra_groups: 5 }] {
        assert!(matches!(
            HgaCache::new(c.clone().with_lookahead(Some(w)), BackendChoice::Cpu),
            Err(RuntimeError::InvalidConfig { field: "lookahead", .. })
        ));
    }
    c.clone().with_lookahead(Some(Widening { extra_chunks: 1, extra_groups: 4 })).validate().unwrap();
    // Without a usable GPU, asking for one is an error (never a panic); with one, it works.
    match HgaCache::new(c, BackendChoice::Gpu { ordinal: 0 }) {
        Ok(cache) => assert_eq!(cache.backend(), BackendKind::Gpu),
        Err(e) => assert!(matches!(e, RuntimeError::NoGpu { .. }), "{e}"),
    }
}

#[test]
fn modelled_working_set_counts_hits_misses_and_bytes() {
    let mut rng = rng();
    let spec = spec(small_routing());
    let l = HeadLayout::of(&spec);
    let (row_kv, row_q) = (l.kv_heads * l.head_dim, l.q_heads * l.head_dim);
    let record = 2 * 4 * 64 * 2; // g × D keys + values, bf16
    let mut config = CacheConfig::new(spec, 1, 4096);
    config.max_sequences = 2;
    // The largest step: 2 sequences × 2 KV heads × top_groups 4 × 4 query heads per KV head.
    let need = 2 * 2 * 4 * 4;
    config.gpu_budget_bytes = Some(need * record - 1);
    assert!(matches!(
        HgaCache::new(config.clone(), BackendChoice::Cpu),
        Err(RuntimeError::InvalidConfig { field: "gpu_budget_bytes", .. })
    ));
    config.gpu_budget_bytes = Some(need * record);
    let mut cache = HgaCache::new(config, BackendChoice::Cpu).unwrap();
    let ids = [cache.add_sequence().unwrap(), cache.add_sequence().unwrap()];
    for &id in &ids {
        let n = rng.random_range(600..900);
        cache.append(id, 0, &randv(&mut rng, n * row_kv), &randv(&mut rng, n * row_kv)).unwrap();
    }
    let q = randv(&mut rng, 2 * row_q);
    let mut out = vec![0.0; q.len()];
    let cold = cache.attend(0, &ids, &q, &mut out).unwrap();
    let routed: usize = cold.groups_per_kv_head.iter().sum();
    assert!(routed > 0);
    assert_eq!((cold.hits, cold.misses), (0, routed as u64));
    assert_eq!(cold.bytes_h2d, routed as u64 * record);
    assert_eq!(cold.hit_rate(), Some(0.0));
    let warm = cache.attend(0, &ids, &q, &mut out).unwrap();
    assert_eq!((warm.hits, warm.misses, warm.bytes_h2d), (routed as u64, 0, 0));
    assert_eq!(warm.hit_rate(), Some(1.0));
    // Correlated queries: the pool is exactly one step large, so misses refill it and the counts add up.
    let mut qt = q.clone();
    for _ in 0..20 {
        for x in qt.iter_mut() {
            *x = 0.9 * *x + 0.1 * rng.random_range(-1.0f32..1.0);
        }
        let t = cache.attend(0, &ids, &qt, &mut out).unwrap();
        assert_eq!(t.hits + t.misses, t.groups_per_kv_head.iter().sum::<usize>() as u64);
        assert_eq!(t.bytes_h2d, t.misses * record);
    }
    let totals = cache.totals();
    assert_eq!(totals.steps, 22);
    assert!(totals.hit_rate().unwrap() > 0.0);
}
