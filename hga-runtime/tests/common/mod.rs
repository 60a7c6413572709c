//! Helpers shared by the runtime's integration tests (each test file is its own crate, so not every
//! helper is used by every file).
#![allow(dead_code)]

pub mod records;

use rand::rngs::StdRng;
use rand::SeedableRng;

/// A fresh random generator; its seed is printed, and `HGA_TEST_SEED` replays one.
pub fn rng() -> StdRng {
    let seed = std::env::var("HGA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("seed {seed} (set HGA_TEST_SEED={seed} to replay)");
    StdRng::seed_from_u64(seed)
}

/// ‖a − b‖ / ‖b‖, failing on NaN, infinity or a length mismatch.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().chain(b).all(|x| x.is_finite()), "non-finite output");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// The GPU and a JIT with a test cache dir, or `None` after printing "SKIPPED: ..." when there is no
/// GPU; panics instead when `HGA_REQUIRE_GPU=1`.
pub fn gpu_or_skip() -> Option<(hga_runtime::cuda::Gpu, hga_runtime::jit::Jit)> {
    use hga_runtime::cuda::{driver_present, Gpu};
    let gpu = if driver_present() { Gpu::open(0).map_err(|e| e.to_string()) } else { Err("no CUDA driver".into()) };
    match gpu {
        Ok(g) => {
            let dir = std::env::var_os("HGA_CACHE_DIR")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join("hga-gpu-test-jit"));
            Some((g, hga_runtime::jit::Jit::with_cache_dir(dir)))
        }
        Err(e) => {
            skip_without_gpu(&e);
            None
        }
    }
}

/// Prints "SKIPPED: no GPU (reason)", or panics when `HGA_REQUIRE_GPU=1` (on the GPU machine).
pub fn skip_without_gpu(reason: &str) {
    if std::env::var("HGA_REQUIRE_GPU").as_deref() == Ok("1") {
        panic!("HGA_REQUIRE_GPU=1 but no GPU: {reason}");
    }
    eprintln!("SKIPPED: no GPU ({reason})");
}

/// Random bf16 values in (-scale, scale): (bits, the same values as f32).
pub fn random_bf16(rng: &mut StdRng, n: usize, scale: f32) -> (Vec<u16>, Vec<f32>) {
    use rand::Rng;
    let bits: Vec<u16> = (0..n).map(|_| half::bf16::from_f32(rng.random_range(-scale..scale)).to_bits()).collect();
    let f = bits.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect();
    (bits, f)
}

/// One row's token stream (`[n][kv_heads][d]` bf16 bits and their f32 values) and its CPU cache (the
/// oracle), `len` tokens of it appended so far.
pub struct Row {
    pub k_bits: Vec<u16>,
    pub v_bits: Vec<u16>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub cpu: hga_runtime::cpu::LayerCache,
    pub len: usize,
}

impl Row {
    /// `total` random tokens for a sequence of `spec`, none appended yet.
    pub fn new(spec: &hga_dsl::ValidSpec, total: usize, rng: &mut StdRng) -> Row {
        let l = hga_runtime::cpu::HeadLayout::of(spec);
        let n = total * l.kv_heads * l.head_dim;
        let (k_bits, k) = random_bf16(rng, n, 1.0);
        let (v_bits, v) = random_bf16(rng, n, 1.0);
        Row { k_bits, v_bits, k, v, cpu: hga_runtime::cpu::LayerCache::new(spec.clone()), len: 0 }
    }
}
