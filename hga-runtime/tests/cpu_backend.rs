//! The CPU backend against its oracles: dense attention (itself checked against an f64 reference), full
//! budget HGA equals dense, hand-computed summaries, a planted needle, typed errors.

mod common;
use common::{rel_err, rng};

use hga_dsl::{KernelParams, ModelShape, RopeStyle, Routing, ScoreKind, Sharing, Spec, ValidSpec};
use hga_runtime::cpu::{dense_causal, HeadLayout, LayerCache};
use hga_runtime::RuntimeError;
use rand::Rng;

fn randn(rng: &mut impl Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect()
}

fn spec(q: u32, kv: u32, d: u32, style: RopeStyle, routing: Routing) -> ValidSpec {
    Spec::new(ModelShape::new(q, kv, d, 1e4).rope_style(style))
        .with_routing(routing)
        .with_kernel(KernelParams { tile_tokens: 16, ..KernelParams::default() })
        .validate()
        .unwrap()
}

/// f64 dense causal attention, written independently of the backend.
fn dense_f64(l: &HeadLayout, q: &[f32], q_start: usize, k: &[f32], v: &[f32]) -> Vec<f32> {
    let d = l.head_dim;
    let n_q = q.len() / (l.q_heads * d);
    let mut out = vec![0.0f32; q.len()];
    for i in 0..n_q {
        for h in 0..l.q_heads {
            let kv = h / (l.q_heads / l.kv_heads);
            let qv = &q[(i * l.q_heads + h) * d..][..d];
            let s: Vec<f64> = (0..=q_start + i)
                .map(|t| {
                    let kt = &k[(t * l.kv_heads + kv) * d..][..d];
                    qv.iter().zip(kt).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (d as f64).sqrt()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for j in 0..d {
                let acc: f64 = e.iter().enumerate().map(|(t, w)| w * v[(t * l.kv_heads + kv) * d + j] as f64).sum();
                out[(i * l.q_heads + h) * d + j] = (acc / z) as f32;
            }
        }
    }
    out
}

#[test]
fn dense_matches_f64_reference() {
    let mut r = rng();
    let l = HeadLayout { q_heads: 4, kv_heads: 2, head_dim: 64 };
    let (n_kv, q_start, n_q) = (157, 140, 17);
    let k = randn(&mut r, n_kv * 2 * 64, 1.0);
    let v = randn(&mut r, n_kv * 2 * 64, 1.0);
    let q = randn(&mut r, n_q * 4 * 64, 2.0);
    let mut out = vec![f32::NAN; q.len()];
    dense_causal(&l, &q, q_start, &k, &v, &mut out).unwrap();
    let e = rel_err(&out, &dense_f64(&l, &q, q_start, &k, &v));
    assert!(e < 1e-5, "dense vs f64: {e}");
}

#[test]
fn full_budget_equals_dense() {
    let mut r = rng();
    let mut cases = 0;
    for &(q_heads, kv_heads, d) in &[(4u32, 4u32, 64u32), (8, 2, 128), (6, 2, 64), (8, 1, 96)] {
        for style in [RopeStyle::Neox, RopeStyle::Gptj] {
            for score in ScoreKind::ALL {
                for sharing in [Sharing::PerQueryHead, Sharing::PerKvHead] {
                    let chunk = [16u32, 32, 64][r.random_range(0..3)];
                    let routing = Routing {
                        chunk,
                        group: chunk / 4,
                        keep_first: r.random_range(0..3),
                        keep_last: r.random_range(0..4),
                        score,
                        sharing,
                        ..Routing::default()
                    }
                    .full_budget();
                    let s = spec(q_heads, kv_heads, d, style, routing);
                    let l = HeadLayout::of(&s);
                    // Lengths not multiples of the chunk, some shorter than sinks + local window.
                    let len = r.random_range(1..12 * chunk as usize);
                    let k = randn(&mut r, len * l.kv_heads * l.head_dim, 1.0);
                    let v = randn(&mut r, len * l.kv_heads * l.head_dim, 1.0);
                    let mut cache = LayerCache::new(s);
                    // Append in uneven blocks to cross chunk boundaries inside one call.
                    let mut at = 0;
                    while at < len {
                        let n = r.random_range(1..=40).min(len - at);
                        let row = l.kv_heads * l.head_dim;
                        cache.append(&k[at * row..(at + n) * row], &v[at * row..(at + n) * row]).unwrap();
                        at += n;
                    }
                    // Decode at the newest position and at a random earlier one.
                    for pos in [len - 1, r.random_range(0..len)] {
                        let q = randn(&mut r, l.q_heads * l.head_dim, 2.0);
                        let mut got = vec![f32::NAN; q.len()];
                        let mut want = vec![f32::NAN; q.len()];
                        cache.attend(&q, pos, &mut got).unwrap();
                        let upto = (pos + 1) * l.kv_heads * l.head_dim;
                        dense_causal(&l, &q, pos, &k[..upto], &v[..upto], &mut want).unwrap();
                        let e = rel_err(&got, &want);
                        assert!(
                            e <= 1e-5,
                            "decode {q_heads}/{kv_heads}/{d} {style:?} {score:?} {sharing:?} len {len} pos {pos}: {e}"
                        );
                    }
                    // Prefill of a block ending at the newest token.
                    let n = r.random_range(1..=len.min(70));
                    let start = len - n;
                    let q = randn(&mut r, n * l.q_heads * l.head_dim, 2.0);
                    let mut got = vec![f32::NAN; q.len()];
                    let mut want = vec![f32::NAN; q.len()];
                    cache.prefill(&q, start, &mut got).unwrap();
                    dense_causal(&l, &q, start, &k, &v, &mut want).unwrap();
                    let e = rel_err(&got, &want);
                    assert!(
                        e <= 1e-5,
                        "prefill {q_heads}/{kv_heads}/{d} {style:?} {score:?} len {len} start {start}: {e}"
                    );
                    cases += 1;
                }
            }
        }
    }
    assert_eq!(cases, 64);
}

/// Keys that are one unit vector before RoPE: the rotated keys of pair `i` are (cos pθ, sin pθ).
#[test]
fn mixed_rope_summary_hand_computed() {
    let routing = Routing { chunk: 4, group: 2, top_chunks: 1, top_groups: 1, ..Routing::default() };
    let s = Spec::new(ModelShape::new(1, 1, 64, 10000.0))
        .with_routing(routing)
        .with_kernel(KernelParams { tile_tokens: 16, ..Default::default() })
        .validate()
        .unwrap();
    let rope = s.rope();
    let mut cache = LayerCache::new(s);
    // Pair 0 (dims 0 and 32, inv_freq 1: high-frequency since 3·1 > 0.5) and pair 31 (dims 31 and 63,
    // inv_freq 1e4^(-62/64) ≈ 1.33e-4: low-frequency).
    for p in 0..4 {
        let mut k = vec![0.0f32; 64];
        k[0] = 1.0;
        k[31] = 1.0;
        rope.rotate(&mut k, p as f64);
        cache.append(&k, &vec![0.0; 64]).unwrap();
    }
    let c = cache.chunk_summary(0, 0).unwrap();
    // Summaries are stored in bf16 (8 significant bits): within half a unit in the last place.
    let near = |x: f32, e: f64| (x as f64 - e).abs() <= e.abs() * (1.0 / 256.0) + 1e-6;
    // Token-wise on pair 0: Σ_{p=0..3} (cos p, sin p).
    let (tc, ts) = (0..4).fold((0.0, 0.0), |(a, b), p| (a + (p as f64).cos(), b + (p as f64).sin()));
    assert!(near(c[0], tc), "{} vs {tc}", c[0]);
    assert!(near(c[32], ts), "{} vs {ts}", c[32]);
    // Anchor on pair 31: 4 · (cos 1.5f, sin 1.5f), f = 1e4^(-62/64).
    let f = 10000f64.powf(-62.0 / 64.0);
    assert!(near(c[31], 4.0 * (1.5 * f).cos()), "{}", c[31]);
    assert!(near(c[63], 4.0 * (1.5 * f).sin()), "{}", c[63]);
    // Every other dimension stays zero.
    assert!(c.iter().enumerate().all(|(j, x)| [0, 31, 32, 63].contains(&j) || x.abs() < 1e-6));
    // Group 1 spans positions 2..4: token-wise (cos2+cos3, sin2+sin3), anchor 2·(cos 2.5f, sin 2.5f).
    let g = cache.group_summary(0, 1).unwrap();
    assert!(near(g[0], 2f64.cos() + 3f64.cos()), "{}", g[0]);
    assert!(near(g[32], 2f64.sin() + 3f64.sin()), "{}", g[32]);
    assert!(near(g[31], 2.0 * (2.5 * f).cos()));
    assert!(near(g[63], 2.0 * (2.5 * f).sin()));
    // Every stored value is a bf16 value.
    assert!(c.iter().chain(g).all(|&x| half::bf16::from_f32(x).to_f32() == x));
    assert!(cache.chunk_summary(0, 1).is_none());
}

#[test]
fn planted_needle_group_is_routed() {
    let mut r = rng();
    for sharing in [Sharing::PerQueryHead, Sharing::PerKvHead] {
        let s =
            spec(8, 2, 128, RopeStyle::Neox, Routing { top_chunks: 4, top_groups: 4, sharing, ..Routing::default() });
        let l = HeadLayout::of(&s);
        let len = 64 * 100 + 17;
        let row = l.kv_heads * l.head_dim;
        let mut k = randn(&mut r, len * row, 0.3);
        let mut v = randn(&mut r, len * row, 1.0);
        let q = randn(&mut r, l.q_heads * l.head_dim, 1.0);
        // Group 123 (tokens 1968..1984, chunk 30, a candidate) of KV head 1 holds keys aligned with
        // query head 5 (KV head 1) and a recognizable value.
        let needle = 123;
        for t in needle * 16..(needle + 1) * 16 {
            for j in 0..128 {
                k[(t * 2 + 1) * 128 + j] = q[5 * 128 + j] * 3.0;
                v[(t * 2 + 1) * 128 + j] = 7.0;
            }
        }
        let mut cache = LayerCache::new(s);
        cache.append(&k, &v).unwrap();
        let mut out = vec![f32::NAN; q.len()];
        let trace = cache.attend_traced(&q, len - 1, &mut out).unwrap();
        assert!(trace.heads[5].groups.contains(&needle), "{sharing:?}: {:?}", trace.heads[5]);
        assert!(trace.heads[5].chunks.contains(&(needle / 4)));
        assert!(out[5 * 128..6 * 128].iter().all(|&x| (x - 7.0).abs() < 0.5), "needle value not attended");
        assert!(trace.heads.iter().all(|h| h.groups.len() <= 4 && h.chunks.len() <= 4));
        // Attended: sinks 128 + 4 groups × 16 + local 512 + current 17.
        assert_eq!(trace.heads[5].attended_tokens, 128 + 64 + 512 + 17);
        // Routing alone decides the same, also for a position this cache has not reached (speculative
        // routing sees the chunks closed so far); a wrong query length is a typed error.
        let routes = |t: &hga_runtime::cpu::RouteTrace| -> Vec<_> {
            t.heads.iter().map(|h| (h.chunks.clone(), h.groups.clone())).collect()
        };
        for pos in [len - 1, len, len + 200] {
            assert_eq!(routes(&cache.route_closed(&q, pos).unwrap()), routes(&trace), "{sharing:?} pos {pos}");
        }
        let earlier = cache.route_closed(&q, 64 * 50).unwrap();
        assert!(earlier.heads.iter().flat_map(|h| &h.groups).all(|&g| g < (50 - 8) * 4), "{earlier:?}");
        assert!(matches!(cache.route_closed(&q[1..], len), Err(RuntimeError::ShapeMismatch { field: "q", .. })));
        let per_kv = trace.distinct_groups_per_kv_head(4);
        assert_eq!(per_kv.len(), 2);
        if sharing == Sharing::PerKvHead {
            assert!(trace.heads[4..].iter().all(|h| h.groups == trace.heads[4].groups));
            assert_eq!(per_kv, vec![4, 4]);
        } else {
            assert!(per_kv.iter().all(|&n| (4..=16).contains(&n)));
        }
    }
}

#[test]
fn bad_input_is_a_typed_error_and_changes_nothing() {
    let s = spec(4, 2, 64, RopeStyle::Neox, Routing::default());
    let mut cache = LayerCache::new(s);
    let e = cache.append(&[0.0; 100], &[0.0; 100]).unwrap_err();
    assert_eq!(e.to_string(), "k: length 100 does not match the layout (expected a multiple of 2 heads × 64 = 128)");
    let e = cache.append(&[0.0; 128], &[0.0; 256]).unwrap_err();
    assert_eq!(e.to_string(), "v: length 256 does not match the layout (expected 128)");
    let mut k = vec![0.0; 128];
    k[3] = f32::NAN;
    assert_eq!(cache.append(&k, &[0.0; 128]).unwrap_err(), RuntimeError::NotFinite { field: "k", index: 3 });
    assert_eq!(cache.len(), 0);
    let mut out = vec![0.0; 256];
    assert_eq!(
        cache.decode(&[0.0; 256], &mut out).unwrap_err().to_string(),
        "pos = 0: must be < the 0 tokens appended"
    );
    cache.append(&[0.5; 128], &[1.0; 128]).unwrap();
    assert_eq!(
        cache.attend(&[0.0; 256], 1, &mut out).unwrap_err().to_string(),
        "pos = 1: must be < the 1 tokens appended"
    );
    assert!(matches!(cache.attend(&[0.0; 255], 0, &mut out), Err(RuntimeError::ShapeMismatch { field: "q", .. })));
    assert!(matches!(
        cache.attend(&[0.0; 256], 0, &mut out[..128]),
        Err(RuntimeError::ShapeMismatch { field: "out", .. })
    ));
    assert!(matches!(cache.prefill(&[0.0; 512], 0, &mut [0.0; 512]), Err(RuntimeError::PositionOutOfRange { .. })));
    let l = HeadLayout::of(cache.spec());
    assert!(matches!(
        dense_causal(&l, &[0.0; 256], 1, &[0.0; 128], &[0.0; 128], &mut out),
        Err(RuntimeError::PositionOutOfRange { .. })
    ));
    assert_eq!(cache.len(), 1);
}
