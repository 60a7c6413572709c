//! RoPE: inverse frequencies, pairing styles on hand-computed cases, rotate/unrotate round trip, Llama 3.1
//! and linear scaling against hand-computed values, and the mixed-RoPE high-frequency mask threshold.

use hga_dsl::{ModelShape, Rope, RopeScaling, RopeStyle, Spec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::f64::consts::PI;

fn rope(shape: ModelShape) -> Rope {
    Spec::new(shape).validate().unwrap().rope()
}

/// `|got - want| <= rel * |want|` (and never NaN).
fn assert_rel(got: f64, want: f64, rel: f64, what: &str) {
    assert!((got - want).abs() <= rel * want.abs(), "{what}: got {got:e}, want {want:e} (relative bound {rel:e})");
}

fn rng() -> StdRng {
    let seed = std::env::var("HGA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("seed {seed} (set HGA_TEST_SEED={seed} to replay)");
    StdRng::seed_from_u64(seed)
}

#[test]
fn inv_freq_is_theta_to_the_minus_2i_over_rotary_dim() {
    // θ = 10000 over 4 rotary dims: θ^0 = 1 and θ^(-2/4) = 1/100.
    let r = rope(ModelShape::new(8, 2, 64, 1e4).rotary_dim(4));
    assert_eq!(r.pairs(), 2);
    assert_eq!(r.rotary_dim(), 4);
    assert_rel(r.inv_freq()[0], 1.0, 1e-15, "pair 0");
    assert_rel(r.inv_freq()[1], 0.01, 1e-15, "pair 1");

    // θ = 1e6 over 128 dims: 64 pairs, the last is 1e6^(-126/128) = 10^(-5.90625).
    let r = rope(ModelShape::new(32, 4, 128, 1e6));
    assert_eq!((r.pairs(), r.rotary_dim()), (64, 128));
    let want = [(0, 1.0), (16, 0.03162277660168379), (32, 1e-3), (48, 10f64.powf(-4.5)), (63, 10f64.powf(-5.90625))];
    for (i, f) in want {
        assert_rel(r.inv_freq()[i], f, 1e-13, &format!("pair {i}"));
    }
    assert!(r.inv_freq().windows(2).all(|w| w[1] < w[0]), "inverse frequencies fall strictly");

    // Partial rotary: frequencies are over the rotary dimensions, not the head dimension.
    let r = rope(ModelShape::new(32, 4, 128, 1e4).rotary_dim(32));
    assert_eq!(r.pairs(), 16);
    assert_rel(r.inv_freq()[8], 1e-2, 1e-14, "pair 8 of 32 rotary dims at θ = 1e4");
}

#[test]
fn pairing_styles_on_a_hand_computed_case() {
    // θ = 4 over 4 rotary dims: inv_freq = [1, 1/2]. At position π, pair 0 turns by π (negates) and pair 1
    // by π/2 ((a, b) → (−b, a)). Dimensions past the rotary ones do not move.
    let x: Vec<f32> = (1..=64).map(|v| v as f32).collect();
    let check = |style: RopeStyle, pairs: [(usize, usize); 2], head: [f32; 4]| {
        let r = rope(ModelShape::new(8, 2, 64, 4.0).rotary_dim(4).rope_style(style));
        assert_eq!([r.pair(0), r.pair(1)], pairs, "{style:?}");
        let mut y = x.clone();
        r.rotate(&mut y, PI);
        for (d, (&got, &want)) in y.iter().zip(head.iter().chain(&x[4..])).enumerate() {
            assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "{style:?} dim {d}: got {got}, want {want}");
        }
    };
    // NeoX pairs (0, 2) and (1, 3): (1, 3) → (−1, −3); (2, 4) → (−4, 2).
    check(RopeStyle::Neox, [(0, 2), (1, 3)], [-1.0, -4.0, -3.0, 2.0]);
    // GPT-J pairs (0, 1) and (2, 3): (1, 2) → (−1, −2); (3, 4) → (−4, 3).
    check(RopeStyle::Gptj, [(0, 1), (2, 3)], [-1.0, -2.0, -4.0, 3.0]);

    // Full rotary dimension: NeoX pairs i with i + 64, GPT-J 2i with 2i + 1.
    let neox = rope(ModelShape::new(32, 4, 128, 1e6));
    let gptj = rope(ModelShape::new(32, 4, 128, 1e6).rope_style(RopeStyle::Gptj));
    for i in 0..64 {
        assert_eq!(neox.pair(i), (i, i + 64));
        assert_eq!(gptj.pair(i), (2 * i, 2 * i + 1));
    }
}

#[test]
fn rotation_matches_the_formula_at_general_positions() {
    // x = e_a (unit vector on the pair's first dim) rotates to (cos mθ_i, sin mθ_i) on the pair.
    let mut r = rng();
    for style in [RopeStyle::Neox, RopeStyle::Gptj] {
        let rp = rope(ModelShape::new(32, 4, 128, 5e5).rope_style(style));
        for _ in 0..20 {
            let i = r.random_range(0..64);
            let pos = r.random_range(0.0..200_000.0);
            let (a, b) = rp.pair(i);
            let mut x = vec![0f32; 128];
            x[a] = 1.0;
            rp.rotate(&mut x, pos);
            let angle = pos * rp.inv_freq()[i];
            assert!((x[a] as f64 - angle.cos()).abs() < 1e-6, "{style:?} pair {i} pos {pos}");
            assert!((x[b] as f64 - angle.sin()).abs() < 1e-6, "{style:?} pair {i} pos {pos}");
            assert!(x.iter().enumerate().all(|(d, &v)| d == a || d == b || v == 0.0));
        }
    }
}

#[test]
fn rotate_then_unrotate_is_the_identity() {
    let mut r = rng();
    let shapes = [
        ModelShape::new(32, 4, 128, 1e6),
        ModelShape::new(32, 4, 128, 1e6).rope_style(RopeStyle::Gptj),
        ModelShape::new(32, 8, 128, 5e5).rope_scaling(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 8192,
        }),
        ModelShape::new(16, 16, 256, 1e4).rope_style(RopeStyle::Gptj).rotary_dim(64),
        ModelShape::new(8, 2, 64, 1e4).rotary_dim(32).rope_scaling(RopeScaling::Linear { factor: 4.0 }),
        ModelShape::new(12, 4, 96, 1e7),
    ];
    for shape in shapes {
        let rp = rope(shape.clone());
        let d = shape.head_dim as usize;
        for _ in 0..200 {
            let x: Vec<f32> = (0..d).map(|_| r.random_range(-4.0f32..4.0)).collect();
            // Integer positions up to 1M and the fractional anchors (s + (n-1)/2) of summaries.
            let pos = if r.random_bool(0.5) {
                r.random_range(0..1 << 20) as f64
            } else {
                r.random_range(0..1 << 14) as f64 * 64.0 + 31.5
            };
            let mut y = x.clone();
            rp.rotate(&mut y, pos);
            let norm = |v: &[f32]| v.iter().map(|&e| (e as f64).powi(2)).sum::<f64>().sqrt();
            assert_rel(norm(&y), norm(&x), 1e-6, "rotation keeps the norm");
            // The dims past rotary_dim are untouched, bit for bit.
            assert_eq!(&y[rp.rotary_dim()..], &x[rp.rotary_dim()..]);
            rp.unrotate(&mut y, pos);
            let scale = norm(&x);
            for (k, (&got, &want)) in y.iter().zip(&x).enumerate() {
                assert!(got.is_finite(), "{shape:?} pos {pos} dim {k}: {got}");
                assert!(
                    ((got - want) as f64).abs() <= 1e-6 * scale,
                    "{shape:?} pos {pos} dim {k}: got {got}, want {want}"
                );
            }
        }
    }
}

#[test]
fn llama3_scaling_matches_hand_computed_values() {
    // Llama 3.1: θ = 5e5, D = 128, factor 8, low 1, high 4, original context 8192. The wavelength
    // 2π/f decides: below 8192/4 = 2048 kept, above 8192/1 = 8192 divided by 8, between them blended with
    // s = (8192/λ − 1)/(4 − 1) as (1 − s)·f/8 + s·f.
    let r = rope(ModelShape::new(32, 8, 128, 5e5).rope_scaling(RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: 8192,
    }));
    let cases = [
        // pair, f = 5e5^(-i/64), λ = 2π/f, scaled
        (0, 1.0),                          // λ = 6.28: kept
        (20, 0.016560440080994446),        // λ = 379.4: kept
        (30, 0.0013718935677611381),       // f = 2.1311195369119653e-3, λ = 2948.30, s = 0.592849295: blended
        (33, 0.00031269375038406517),      // f = 1.1520427402627808e-3, λ = 5453.95, s = 0.167343402: blended
        (36, 0.000622772421914596 / 8.0),  // λ = 10089.1: divided by 8
        (63, 2.455140791131609e-06 / 8.0), // λ = 2.56e6: divided by 8
    ];
    for (i, want) in cases {
        assert_rel(r.inv_freq()[i], want, 1e-12, &format!("llama3 pair {i}"));
    }
    // 29 pairs kept, 6 blended, 29 divided.
    let plain = rope(ModelShape::new(32, 8, 128, 5e5));
    let kept = (0..64).filter(|&i| r.inv_freq()[i] == plain.inv_freq()[i]).count();
    let divided = (0..64).filter(|&i| (r.inv_freq()[i] - plain.inv_freq()[i] / 8.0).abs() < 1e-18).count();
    assert_eq!((kept, divided, 64 - kept - divided), (29, 29, 6));

    // Linear (position interpolation): every frequency divided by the factor.
    let lin = rope(ModelShape::new(32, 8, 128, 5e5).rope_scaling(RopeScaling::Linear { factor: 4.0 }));
    for i in 0..64 {
        assert_rel(lin.inv_freq()[i], plain.inv_freq()[i] / 4.0, 1e-15, &format!("linear pair {i}"));
    }
}

#[test]
fn high_frequency_mask_threshold() {
    // (C − 1)·f > 0.5, strictly. θ = 4 over 4 dims gives f = [1, 1/2]: with C = 2, pair 1 sits exactly on
    // the threshold (1 · 1/2 = 0.5) and is low-frequency; with C = 3 it is high.
    let r = rope(ModelShape::new(8, 2, 64, 4.0).rotary_dim(4));
    assert_eq!(r.high_frequency(2), [true, false]);
    assert_eq!(r.high_frequency(3), [true, true]);

    // Qwen3 (θ = 1e6, D = 128), C = 64: f_i > 0.5/63 ⇔ i < 64·ln(126)/ln(1e6) = 22.40, so pairs 0..=22.
    let qwen = rope(ModelShape::new(32, 4, 128, 1e6));
    let mask = qwen.high_frequency(64);
    assert_eq!(mask.len(), 64);
    assert!(mask[..23].iter().all(|&h| h) && mask[23..].iter().all(|&h| !h), "{mask:?}");
    // Larger chunks move the boundary up: C = 128 gives i < 64·ln(254)/ln(1e6) = 25.6.
    assert_eq!(qwen.high_frequency(128).iter().filter(|&&h| h).count(), 26);
    // θ = 1e7 (Qwen3-2507): i < 64·ln(126)/ln(1e7) = 19.2.
    assert_eq!(rope(ModelShape::new(32, 4, 128, 1e7)).high_frequency(64).iter().filter(|&&h| h).count(), 20);
    // The mask uses the scaled frequencies: Llama 3.1 at C = 64, i < 64·ln(126)/ln(5e5) = 23.6 (all kept).
    let llama = rope(ModelShape::new(32, 8, 128, 5e5).rope_scaling(RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: 8192,
    }));
    assert_eq!(llama.high_frequency(64).iter().filter(|&&h| h).count(), 24);
    // Linear scaling by 4 lowers every frequency: 0.5/63·4 threshold on the unscaled f, i < 64·ln(31.5)/ln(1e6).
    let lin = rope(ModelShape::new(32, 4, 128, 1e6).rope_scaling(RopeScaling::Linear { factor: 4.0 }));
    assert_eq!(lin.high_frequency(64).iter().filter(|&&h| h).count(), 16);
}
