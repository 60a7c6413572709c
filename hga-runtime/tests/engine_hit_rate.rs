//! The modelled working set on real routing (CPU backend, Qwen3-30B-A3B shape, reference router):
//! decoding with correlated consecutive queries (q_t = normalize(0.9·q_(t−1) + 0.1·n_t)·√D, as
//! hga-bench) reuses most routed groups; independent queries do not. The working set holds two steps'
//! worth of groups. Prints both hit rates.

use hga_dsl::{presets, Spec};
use hga_runtime::engine::{BackendChoice, CacheConfig, HgaCache};
use rand::{Rng, SeedableRng};
use rand_distr_free::normal;

mod rand_distr_free {
    use rand::Rng;
    /// Standard normal by Box-Muller (no extra dependency).
    pub fn normal(rng: &mut impl Rng) -> f32 {
        let (u, v): (f32, f32) = (rng.random_range(f32::EPSILON..1.0), rng.random_range(0.0..1.0));
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

fn advance(q: &mut [f32], d: usize, rho: f32, rng: &mut impl Rng) {
    for h in q.chunks_mut(d) {
        for x in h.iter_mut() {
            *x = rho * *x + (1.0 - rho) * normal(rng);
        }
        let norm = h.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-20);
        for x in h.iter_mut() {
            *x *= (d as f32).sqrt() / norm;
        }
    }
}

/// Hit rate over `steps` decode steps after `warmup`, each appending one random token.
fn hit_rate(rho: f32, context: usize, warmup: usize, steps: usize, seed: u64) -> f64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let spec = Spec::new(presets::find("qwen3-30b").unwrap().shape).validate().unwrap();
    let mut config = CacheConfig::new(spec, 1, context + warmup + steps);
    config.max_sequences = 1;
    // Twice the largest step (4 KV heads × 8 query heads × 32 groups, 8 KiB records): far below the
    // context's 4 × context / 16 groups, so hits come from reuse between nearby steps, not capacity.
    config.gpu_budget_bytes = Some(2 * 4 * 8 * 32 * 8192);
    let mut cache = HgaCache::new(config, BackendChoice::Cpu).unwrap();
    let l = cache.layout();
    let (row_kv, d) = (l.kv_heads * l.head_dim, l.head_dim);
    let id = cache.add_sequence().unwrap();
    let kv: Vec<f32> = (0..context * row_kv).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let vv: Vec<f32> = (0..context * row_kv).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    cache.append(id, 0, &kv, &vv).unwrap();
    let mut q = vec![0.0f32; l.q_heads * d];
    advance(&mut q, d, 0.0, &mut rng);
    let mut out = vec![0.0f32; q.len()];
    let (mut hits, mut all) = (0u64, 0u64);
    for t in 0..warmup + steps {
        let k: Vec<f32> = (0..row_kv).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        cache.append(id, 0, &k, &k).unwrap();
        advance(&mut q, d, rho, &mut rng);
        let tel = cache.attend(0, &[id], &q, &mut out).unwrap();
        assert!(out.iter().all(|x| x.is_finite()));
        if t >= warmup {
            hits += tel.hits;
            all += tel.hits + tel.misses;
        }
    }
    hits as f64 / all.max(1) as f64
}

#[test]
fn correlated_queries_hit_the_working_set() {
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let (context, warmup, steps) = (16384, 10, 60);
    let correlated = hit_rate(0.9, context, warmup, steps, seed);
    let independent = hit_rate(0.0, context, warmup, steps, seed ^ 1);
    println!("modelled hit rate at {context} tokens: correlated {correlated:.3}, independent {independent:.3}");
    assert!(correlated > 0.5, "correlated {correlated}");
    assert!(correlated > independent + 0.2, "correlated {correlated}, independent {independent}");
}
