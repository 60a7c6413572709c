//! Dense attention for evaluation: this crate's blocked GEMM kernel against the runtime's dense oracle
//! (`hga_runtime::cpu::dense_causal`), and HGA's per-position attend, on one 512-query block at a given
//! context, tiny-code's heads (8 q / 2 kv / 128). Prints medians of a few runs.
//!
//! `cargo bench -p hga-engine --bench attention -- [context] [--blocked-only]` (default 16384).

use hga_dsl::{presets, Spec};
use hga_engine::attention::{blocked_causal, Heads};
use hga_runtime::cpu::{dense_causal, HeadLayout, LayerCache};
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Process CPU seconds (user + system) from /proc/self/stat; NaN where that does not exist. On a shared
/// machine this is steadier than wall time.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return f64::NAN };
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, r)| r.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / 100.0
}

/// Median wall seconds and median CPU seconds.
fn time(runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (t, c) = (Instant::now(), cpu_seconds());
        f();
        wall.push(t.elapsed().as_secs_f64());
        cpu.push(cpu_seconds() - c);
    }
    (median(wall), median(cpu))
}

fn main() {
    let context: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(16384);
    let (qh, kvh, d, n) = (8, 2, 128, 512);
    let total = context + n;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut gen = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let (k, v, q) = (gen(total * kvh * d), gen(total * kvh * d), gen(n * qh * d));
    let per_head = |x: &[f32]| -> Vec<Vec<f32>> {
        (0..kvh).map(|h| (0..total).flat_map(|t| &x[(t * kvh + h) * d..][..d]).copied().collect()).collect()
    };
    let (kh, vh) = (per_head(&k), per_head(&v));
    let mut out = vec![0.0f32; q.len()];
    let pairs = (qh * (n * context + n * (n + 1) / 2)) as f64;
    let gflops = |s: f64| 4.0 * d as f64 * pairs / s / 1e9;
    println!("one block of {n} queries after {context} tokens, {} threads", rayon::current_num_threads());
    let (t, c) = time(5, || blocked_causal(Heads { q: qh, kv: kvh, dim: d }, &q, context, &kh, &vh, &mut out).unwrap());
    println!(
        "{:<40} {:>9.1} ms {:>7.1} GFLOP/s {:>7.1} GFLOP per CPU-second",
        "hga-engine blocked_causal",
        t * 1e3,
        gflops(t),
        gflops(c)
    );
    if std::env::args().any(|a| a == "--blocked-only") {
        return;
    }
    let layout = HeadLayout { q_heads: qh, kv_heads: kvh, head_dim: d };
    let (t, c) = time(3, || dense_causal(&layout, &q, context, &k, &v, &mut out).unwrap());
    println!(
        "{:<40} {:>9.1} ms {:>7.1} GFLOP/s {:>7.1} GFLOP per CPU-second",
        "hga_runtime::cpu::dense_causal",
        t * 1e3,
        gflops(t),
        gflops(c)
    );
    let spec = Spec::new(presets::find("tiny-code").unwrap().shape).validate().unwrap();
    let mut cache = LayerCache::new(spec);
    cache.append(&k, &v).unwrap();
    let row = qh * d;
    let (t, c) = time(3, || {
        use rayon::prelude::*;
        out.par_chunks_mut(row).zip(q.par_chunks(row)).enumerate().for_each(|(i, (o, qi))| {
            cache.attend_traced(qi, context + i, o).unwrap();
        })
    });
    println!(
        "{:<40} {:>9.1} ms ({:.0} µs per position, {:.0} CPU-µs)",
        "LayerCache::attend_traced (reference)",
        t * 1e3,
        t * 1e6 / n as f64,
        c * 1e6 / n as f64
    );
}
