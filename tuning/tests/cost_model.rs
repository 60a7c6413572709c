//! Sanity of the cost model and the GPU presets: a longer context or a larger batch is never modeled
//! cheaper; the split-K trade-off goes the expected way; every preset carries its facts and sources.

use hga_dsl::{presets, KernelParams, Spec};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tuning::cost::{step_cost, Assumptions, Workload};
use tuning::gpu;

fn rng() -> StdRng {
    let seed = std::env::var("HGA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("seed {seed} (set HGA_TEST_SEED={seed} to replay)");
    StdRng::seed_from_u64(seed)
}

#[test]
fn more_context_or_batch_is_never_cheaper() {
    let mut r = rng();
    let gpus = gpu::all();
    let models = presets::all();
    let grid = tuning::space::grid();
    let a = Assumptions::default();
    for _ in 0..3000 {
        let g = gpus.choose(&mut r).unwrap();
        let m = models.choose(&mut r).unwrap();
        let k: KernelParams = grid.choose(&mut r).unwrap().clone();
        let Ok(spec) = Spec::new(m.shape.clone()).with_kernel(k).validate() else { continue };
        let c1 = r.random_range(1..=(2u64 << 20));
        let c2 = c1 + r.random_range(0..=(1u64 << 20));
        let b1 = r.random_range(1..=16u32);
        let b2 = b1 + r.random_range(0..=8u32);
        let t = |c, b| step_cost(g, &spec, Workload { context: c, batch: b }, &a);
        let (x, y, z) = (t(c1, b1), t(c2, b1), t(c2, b2));
        for s in [&x, &y, &z] {
            assert!(s.total_us.is_finite() && s.total_us > 0.0, "{s:?}");
            assert!(s.kernels.iter().all(|k| k.us.is_finite() && k.us > 0.0), "{s:?}");
        }
        assert!(
            y.total_us >= x.total_us,
            "{} {} {:?}: context {c1} → {c2} got cheaper: {} → {}",
            g.name,
            m.name,
            spec.kernel(),
            x.total_us,
            y.total_us
        );
        assert!(z.total_us >= y.total_us, "{} {} {:?}: batch {b1} → {b2} got cheaper", g.name, m.name, spec.kernel());
        assert!(y.dram_bytes >= x.dram_bytes);
    }
}

#[test]
fn split_k_pays_at_batch_1_and_long_context_and_merge_costs_show() {
    let a = Assumptions::default();
    let spec = |sk| {
        Spec::new(presets::find("qwen3-30b").unwrap().shape)
            .with_kernel(KernelParams { split_k: sk, ..KernelParams::default() })
            .validate()
            .unwrap()
    };
    for g in gpu::all() {
        let w = Workload { context: 1 << 20, batch: 1 };
        let attend = |sk| step_cost(&g, &spec(sk), w, &a).kernels.iter().find(|k| k.name == "hga_attend").unwrap().us;
        assert!(attend(16) < attend(1), "{}: 16 splits should beat 1 at batch 1 (few blocks)", g.name);
        let merge = |sk| step_cost(&g, &spec(sk), w, &a).kernels.iter().find(|k| k.name == "hga_merge").unwrap().us;
        assert!(merge(64) > merge(1), "{}: merging 64 splits costs more than 1", g.name);
    }
}

#[test]
fn gpu_presets_carry_their_facts_and_sources() {
    let names: Vec<String> = gpu::all().into_iter().map(|g| g.name).collect();
    for want in ["rtx5090", "rtx4090", "rtx3090", "l40s", "a100-80gb", "h100-sxm", "h200"] {
        assert!(names.iter().any(|n| n == want), "preset {want} missing");
    }
    for g in gpu::all() {
        assert!(gpu::arch_limits(&g.arch).is_some(), "{}: arch {} has no limits", g.name, g.arch);
        assert!(g.sms > 0 && g.clock_ghz > 0.5 && g.fp32_tflops > 1.0, "{g:?}");
        assert!(g.mem_gb >= 16.0 && g.mem_bw_gbs >= 500.0 && g.l2_mib >= 4.0, "{g:?}");
        assert!(matches!(g.pcie_gen, 4 | 5) && g.pcie_gbs > 20.0, "{g:?}");
        assert!(g.source.contains("NVIDIA") && (g.source.contains("datasheet") || g.source.contains("whitepaper")));
        // Peak FP32 ≈ SMs × 128 lanes (64 on A100) × 2 × clock: the figures agree with each other.
        let lanes = if g.arch == "sm_80" { 64.0 } else { 128.0 };
        let derived = g.sms as f64 * lanes * 2.0 * g.clock_ghz / 1e3;
        assert!((derived / g.fp32_tflops - 1.0).abs() < 0.03, "{}: {derived} vs {}", g.name, g.fp32_tflops);
        assert_eq!(gpu::find(&g.name).as_ref(), Some(&g));
        assert_eq!(gpu::find(&g.full_name).as_ref().map(|x| &x.name), Some(&g.name));
    }
    assert_eq!(gpu::for_device_name("NVIDIA H200").map(|g| g.name), Some("h200".into()));
    assert_eq!(gpu::for_device_name("NVIDIA H100 80GB HBM3").map(|g| g.name), Some("h100-sxm".into()));
    assert_eq!(gpu::for_device_name("NVIDIA GeForce RTX 5090").map(|g| g.name), Some("rtx5090".into()));
    assert_eq!(gpu::for_device_name("NVIDIA H100 PCIe"), None);
    assert_eq!(gpu::find("RTX 4090").map(|g| g.name), Some("rtx4090".into()));
}
