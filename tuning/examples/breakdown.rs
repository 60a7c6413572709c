//! Prints the cost model's per-kernel breakdown of a few variants: `cargo run -p tuning --example breakdown -- rtx5090 qwen3-30b 65536 1 [hit] th128_sk4_tt64_v8 ...` (`hit`: no misses).
use hga_dsl::{presets, KernelParams, Spec};
use tuning::cost::{step_cost, Assumptions, Workload};

fn parse(name: &str) -> KernelParams {
    let mut k = KernelParams::default();
    for part in name.split('_') {
        let (key, v) = part.split_at(part.find(|c: char| c.is_ascii_digit()).unwrap_or(part.len()));
        let v: u32 = v.parse().unwrap_or(0);
        match key {
            "th" => k.threads = v,
            "sk" => k.split_k = v,
            "tt" => k.tile_tokens = v,
            "v" => k.vec_width = v,
            _ => {}
        }
    }
    k
}

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let gpu = tuning::gpu::find(&a[0]).expect("gpu");
    let shape = presets::find(&a[1]).expect("model").shape;
    let w = Workload { context: a[2].parse().unwrap(), batch: a[3].parse().unwrap() };
    // `hit` before the variants: no misses (the kernel bench's "hit" regime).
    let mut assume = Assumptions::default();
    for name in &a[4..] {
        if name == "hit" {
            assume.miss_fraction = 0.0;
            continue;
        }
        let spec = Spec::new(shape.clone()).with_kernel(parse(name)).validate().expect("valid");
        let c = step_cost(&gpu, &spec, w, &assume);
        println!(
            "{name}: total {:.2} us, dram {:.1} MB, pcie {:.2} MB",
            c.total_us,
            c.dram_bytes / 1e6,
            c.pcie_bytes / 1e6
        );
        for k in &c.kernels {
            println!("  {:<18} {:8.2}", k.name, k.us);
        }
    }
}
