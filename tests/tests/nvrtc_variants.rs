//! CI compile check: every shipped variant (all presets × default routing × the shipped kernel-parameter
//! grid) compiles with NVRTC to CUBIN for sm_80, sm_89, sm_90 and sm_120, and the shipped defaults do
//! not spill. Every score kind and sharing mode compiles too (one preset, sm_90). Needs no GPU: NVRTC
//! from PyPI (`pip install nvidia-cuda-nvrtc`, its lib dir on LD_LIBRARY_PATH). Without NVRTC the test
//! prints "SKIPPED", except under CI (env `CI` set) or HGA_REQUIRE_GPU=1, where it fails.

use hga_dsl::codegen;
use hga_dsl::{presets, DType, KernelParams, ModelShape, RopeStyle, Routing, ScoreKind, Sharing, Spec, ValidSpec};
use hga_runtime::jit::{Arch, Jit};
use std::sync::Mutex;

const ARCHS: [u32; 4] = [80, 89, 90, 120];

/// The kernel-parameter grid shipped besides the defaults (the tuner's usual picks).
fn shipped_kernels() -> Vec<KernelParams> {
    vec![KernelParams::default(), KernelParams { threads: 256, split_k: 8, tile_tokens: 64, vec_width: 8 }]
}

fn nvrtc_or_skip() -> bool {
    if Jit::nvrtc_present() {
        return true;
    }
    let required = std::env::var_os("CI").is_some() || std::env::var("HGA_REQUIRE_GPU").as_deref() == Ok("1");
    assert!(!required, "NVRTC (libnvrtc.so.13) not found on LD_LIBRARY_PATH, and CI requires this test to run");
    eprintln!("SKIPPED: NVRTC not found (pip install nvidia-cuda-nvrtc and add nvidia/cu13/lib to LD_LIBRARY_PATH)");
    false
}

/// Compiles `jobs` on all cores into a fresh cache; returns failures as messages.
fn compile_all(jobs: Vec<(String, ValidSpec, Arch, bool)>) -> Vec<String> {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("hga-nvrtc-ci-{}-{run}", std::process::id()));
    let jit = Jit::with_cache_dir(&dir);
    let jobs = Mutex::new(jobs);
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let Some((name, spec, arch, check_spills)) = jobs.lock().unwrap().pop() else { break };
                let t = std::time::Instant::now();
                match jit.compile(&codegen::generate(&spec), arch) {
                    Ok(c) => {
                        let worst = c.resources.iter().max_by_key(|r| r.registers).map(|r| r.to_string());
                        eprintln!(
                            "{name} {arch}: {:.1}s, max regs {}",
                            t.elapsed().as_secs_f64(),
                            worst.unwrap_or_default()
                        );
                        if c.resources.len() != codegen::ENTRY_POINTS.len() {
                            failures.lock().unwrap().push(format!(
                                "{name} {arch}: ptxas report has {} kernels (cache hit: {}; log starts: {:?})",
                                c.resources.len(),
                                c.cache_hit,
                                c.log.chars().take(300).collect::<String>()
                            ));
                        }
                        if check_spills && !c.spill_free() {
                            let spills: Vec<String> = c
                                .resources
                                .iter()
                                .filter(|r| r.spill_stores + r.spill_loads > 0)
                                .map(|r| r.to_string())
                                .collect();
                            failures.lock().unwrap().push(format!("{name} {arch} spills:\n{}", spills.join("\n")));
                        }
                    }
                    Err(e) => failures.lock().unwrap().push(format!("{name} {arch}: {e}")),
                }
            });
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    failures.into_inner().unwrap()
}

#[test]
fn every_shipped_variant_compiles_for_every_arch_without_spills() {
    if !nvrtc_or_skip() {
        return;
    }
    eprintln!("NVRTC {:?}", Jit::nvrtc_version().unwrap());
    let mut jobs = Vec::new();
    for p in presets::all() {
        for (i, k) in shipped_kernels().into_iter().enumerate() {
            let spec = Spec::new(p.shape.clone()).with_kernel(k).validate().unwrap();
            for cc in ARCHS {
                jobs.push((format!("{} k{i}", p.name), spec.clone(), Arch::new(cc), i == 0));
            }
        }
    }
    let n = jobs.len();
    let t = std::time::Instant::now();
    let failures = compile_all(jobs);
    eprintln!("{n} compilations in {:.1}s", t.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{} of {n} failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_score_kind_sharing_and_element_type_compiles() {
    if !nvrtc_or_skip() {
        return;
    }
    let shape = presets::find("llama3.1-8b").unwrap().shape;
    let mut jobs = Vec::new();
    for score in ScoreKind::ALL.into_iter().filter(|&k| codegen::scores(k)) {
        for sharing in [Sharing::PerQueryHead, Sharing::PerKvHead] {
            let spec = Spec::new(shape.clone()).with_routing(Routing { score, sharing, ..Routing::default() });
            jobs.push((format!("{score:?}/{sharing:?}"), spec.validate().unwrap(), Arch::new(90), false));
        }
    }
    // The other element type and RoPE layouts: f16, GPT-J pairing, partial rotary.
    let other = ModelShape::new(32, 8, 128, 1e4).dtype(DType::F16).rope_style(RopeStyle::Gptj).rotary_dim(64);
    jobs.push(("f16/gptj/rotary64".into(), Spec::new(other).validate().unwrap(), Arch::new(90), false));
    // The attention's other layouts: head dimensions 64 / 96 / 256, head tiles of 3, two head tiles per
    // KV head, two-word head masks, narrow loads and both pass sizes (as gpu_decode runs them).
    for (q, kv, d) in [(32, 8, 64), (24, 8, 96), (16, 4, 256), (64, 4, 128), (64, 1, 64)] {
        for k in [
            KernelParams { threads: 64, split_k: 2, tile_tokens: 16, vec_width: 2 },
            KernelParams { threads: 256, split_k: 8, tile_tokens: 32, vec_width: 4 },
        ] {
            let name = format!("q{q} kv{kv} d{d} v{}", k.vec_width);
            let spec = Spec::new(ModelShape::new(q, kv, d, 1e4)).with_kernel(k).validate().unwrap();
            jobs.push((name, spec, Arch::new(90), false));
        }
    }
    let failures = compile_all(jobs);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn warm_start_compiles_nothing_and_errors_carry_log_and_key() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hga-nvrtc-warm-{}", std::process::id()));
    let jit = Jit::with_cache_dir(&dir);
    let spec = Spec::new(presets::find("tiny-code").unwrap().shape).validate().unwrap();
    let src = codegen::generate(&spec);
    let cold = jit.compile(&src, Arch::new(90)).unwrap();
    assert!(!cold.cache_hit);
    let t = std::time::Instant::now();
    let warm = jit.compile(&src, Arch::new(90)).unwrap();
    eprintln!(
        "cold: resources of {} kernels; warm start {:.1} ms",
        cold.resources.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    assert!(warm.cache_hit);
    assert_eq!(warm.cubin, cold.cubin);
    assert_eq!(warm.resources, cold.resources);
    // Concurrent compilation of one variant by several writers leaves one whole entry.
    let other = Jit::with_cache_dir(dir.join("race"));
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| assert!(!other.compile(&src, Arch::new(89)).unwrap().cubin.is_empty()));
        }
    });
    assert!(other.compile(&src, Arch::new(89)).unwrap().cache_hit);
    // The step trace is a separate cache entry, and compiles (its global and atomics).
    let traced = jit.clone().traced();
    let tc = traced.compile(&src, Arch::new(90)).unwrap();
    assert!(!tc.cache_hit && tc.cache_path != cold.cache_path && tc.cubin != cold.cubin);
    assert!(tc.log.contains("hga_attend"), "{}", tc.log);
    // Extra options (HGA_NVRTC_OPTIONS) are a separate cache entry too, and reach the source: fewer
    // register values for block_select change hga_select's code.
    let fewer = jit.clone().with_options(["-DSEL_REG=8"]);
    let fc = fewer.compile(&src, Arch::new(90)).unwrap();
    assert!(!fc.cache_hit && fc.cache_path != cold.cache_path && fc.cubin != cold.cubin);
    assert!(fewer.compile(&src, Arch::new(90)).unwrap().cache_hit);
    let mut broken = src.clone();
    broken.source.push_str("\nthis is not C++;\n");
    let err = jit.compile(&broken, Arch::new(90)).unwrap_err().to_string();
    assert!(err.contains(&spec.variant_key()) && err.contains("error"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_prefetch_gather_compiles_for_every_arch_without_spills() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("hga-nvrtc-gather-{}", std::process::id()));
    let jit = Jit::with_cache_dir(&dir);
    let spec = Spec::new(presets::find("qwen3-30b").unwrap().shape).validate().unwrap();
    let src = hga_runtime::cuda::gather_source(&codegen::generate(&spec).launch);
    for cc in ARCHS {
        let c = jit.compile(&src, Arch::new(cc)).unwrap_or_else(|e| panic!("sm_{cc}: {e}"));
        assert_eq!(c.resources.len(), 1, "sm_{cc}: {:?}", c.resources);
        assert!(c.spill_free(), "sm_{cc}: {:?}", c.resources);
        eprintln!("gather sm_{cc}: {}", c.resources[0]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
