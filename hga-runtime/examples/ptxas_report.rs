//! ptxas' resources (registers, shared memory, spills) of each kernel of one variant, compiled by NVRTC
//! without a GPU: `cargo run -p hga-runtime --example ptxas_report -- [PRESET] [ARCH] [THREADS SPLIT_K
//! TILE_TOKENS] [--trace]` (defaults: qwen3-30b, 90, `KernelParams::default()`). Needs libnvrtc on
//! LD_LIBRARY_PATH; compiles into a fresh temporary cache, or into `$HGA_CACHE_DIR` where it is set
//! (kept: a JIT cache filled here serves a device with the same NVRTC version). `--source PATH` also
//! writes the generated source (the line numbers of the CUBIN's `-lineinfo`).

use hga_dsl::{codegen, presets, KernelParams, Spec};
use hga_runtime::jit::{Arch, Jit};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let trace = all.iter().any(|a| a == "--trace");
    let source_path = all.iter().position(|a| a == "--source").and_then(|i| all.get(i + 1)).cloned();
    let args: Vec<String> = all
        .iter()
        .enumerate()
        .filter(|(i, a)| *a != "--trace" && *a != "--source" && (*i == 0 || all[i - 1] != "--source"))
        .map(|(_, a)| a.clone())
        .collect();
    let preset = args.first().map_or("qwen3-30b", String::as_str);
    let arch = Arch::new(args.get(1).map_or(Ok(90), |a| a.parse())?);
    let mut kp = KernelParams::default();
    if let [t, s, tt] = args.get(2..5).unwrap_or_default() {
        (kp.threads, kp.split_k, kp.tile_tokens) = (t.parse()?, s.parse()?, tt.parse()?);
    }
    let spec = Spec::new(presets::find(preset)?.shape).with_kernel(kp).validate()?;
    let keep = std::env::var_os("HGA_CACHE_DIR").is_some();
    let dir = std::env::temp_dir().join(format!("hga-ptxas-report-{}", std::process::id()));
    let jit = if keep { Jit::from_env()? } else { Jit::with_cache_dir(&dir) };
    let jit = if trace { jit.traced() } else { jit };
    let t = std::time::Instant::now();
    let generated = codegen::generate(&spec);
    if let Some(path) = &source_path {
        std::fs::write(path, &generated.source)?;
    }
    let compiled = jit.compile(&generated, arch)?;
    println!("{} {arch}: {:.1} s", spec.variant_key(), t.elapsed().as_secs_f64());
    for r in &compiled.resources {
        println!("  {r}");
    }
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
