//! Helpers shared by the runtime's integration tests (each test file is its own crate, so not every
//! helper is used by every file).
#![allow(dead_code)]

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
