//! The engine's blocked dense kernel against the runtime's dense oracle, on fresh random data.

mod common;

use hga_engine::attention::{blocked_causal, Heads};
use hga_runtime::cpu::{dense_causal, HeadLayout};
use rand::{Rng, SeedableRng};

#[test]
fn blocked_dense_matches_runtime_oracle() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(common::seed());
    let (q_heads, kv_heads, d) = (8, 2, 128);
    let total = rng.random_range(700..1500);
    let start = rng.random_range(0..total - 1);
    let n = total - start;
    let mut gen = |len: usize, s: f32| -> Vec<f32> { (0..len).map(|_| rng.random_range(-s..s)).collect() };
    let k = gen(total * kv_heads * d, 3.0);
    let v = gen(total * kv_heads * d, 1.0);
    let q = gen(n * q_heads * d, 3.0);
    let layout = HeadLayout { q_heads, kv_heads, head_dim: d };
    let mut want = vec![f32::NAN; q.len()];
    dense_causal(&layout, &q, start, &k, &v, &mut want).unwrap();
    let per_head = |x: &[f32]| -> Vec<Vec<f32>> {
        (0..kv_heads).map(|h| (0..total).flat_map(|t| &x[(t * kv_heads + h) * d..][..d]).copied().collect()).collect()
    };
    let mut got = vec![f32::NAN; q.len()];
    blocked_causal(Heads { q: q_heads, kv: kv_heads, dim: d }, &q, start, &per_head(&k), &per_head(&v), &mut got)
        .unwrap();
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-5 + 1e-4 * w.abs(), "element {i}: {g} vs {w}");
    }
}
