//! CPU backend decode step (all 32 query heads of one layer) for the Qwen3-30B-A3B shape at 4K, 32K and
//! 128K context, reference routing, against dense attention over the same cache.
//!
//! `cargo bench -p hga-runtime --bench cpu_decode`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hga_dsl::{presets, Spec};
use hga_runtime::cpu::{HeadLayout, LayerCache};
use rand::{Rng, SeedableRng};

fn bench(c: &mut Criterion) {
    let spec = Spec::new(presets::find("qwen3-30b").unwrap().shape).validate().unwrap();
    let l = HeadLayout::of(&spec);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut group = c.benchmark_group("cpu_decode_qwen3_30b");
    group.sample_size(10);
    for ctx in [4096usize, 32768, 131072] {
        let row = l.kv_heads * l.head_dim;
        let k: Vec<f32> = (0..ctx * row).map(|_| rng.random_range(-1.0..1.0)).collect();
        let v: Vec<f32> = (0..ctx * row).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut cache = LayerCache::new(spec.clone());
        cache.append(&k, &v).unwrap();
        let mut full = LayerCache::new(spec.with_routing(spec.routing().clone().full_budget()).unwrap());
        full.append(&k, &v).unwrap();
        let q: Vec<f32> = (0..l.q_heads * l.head_dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut out = vec![0.0f32; q.len()];
        group.bench_with_input(BenchmarkId::new("hga", ctx), &ctx, |b, _| {
            b.iter(|| cache.decode(&q, &mut out).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("full_budget", ctx), &ctx, |b, _| {
            b.iter(|| full.decode(&q, &mut out).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
