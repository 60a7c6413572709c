//! Device time of each decode-step kernel and of the whole step (CUDA events, medians), for the
//! Qwen3-30B-A3B shape (32 q heads, 4 KV heads, d 128) at 64K and 1M context, batch 1, next to two
//! floors: bytes moved over the HBM bandwidth measured in the same run, and launch overhead.
//!
//! `hga_kernel_bench [--json PATH] [--iters N] [--threads N] [--split-k N] [--tile-tokens N] [--vec-width N] [--trace] [--top-chunks N]
//! [--top-groups N] [--score KIND]` (kernel parameters default to `KernelParams::default()`, routing to the reference router's). `--trace` compiles the step trace in (`Jit::traced`) and, instead of
//! the timings, prints when the first and the last block reached each point of the step (mean over
//! `--iters` graph replays, µs from the first block's start). Inputs are random bf16 (never zeros); several copies
//! of the state rotate so that the summary tables read per step exceed the 60 MB L2. Two regimes: "hit"
//! (the same query every step: all opened groups already in the slot cache) and "miss" (a fresh query
//! every step: groups read by `hga_attend` from mapped pinned host memory). Whole steps are timed as separate
//! launches and as one CUDA graph replay.

use clap::Parser;
use hga_bench::median;
use hga_dsl::{presets, Spec};
use hga_runtime::cuda::{Capacity, CudaError, DecodeBatch, DecodeKernels, Gpu};
use hga_runtime::jit::Jit;
use std::fmt::Write as _;

#[derive(Parser)]
#[command(name = "hga_kernel_bench", about = "Device time of each HGA decode-step kernel and of the whole step")]
struct Args {
    /// Where to write the JSON report.
    #[arg(long)]
    json: Option<String>,
    /// Timed iterations per measurement (graph replays with --trace).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    iters: u32,
    /// Threads per attention block (default: `KernelParams::default()`; the spec validates all four).
    #[arg(long)]
    threads: Option<u32>,
    /// Attention splits per (row, KV head).
    #[arg(long)]
    split_k: Option<u32>,
    /// Tokens per attention tile.
    #[arg(long)]
    tile_tokens: Option<u32>,
    /// Elements per vector load.
    #[arg(long)]
    vec_width: Option<u32>,
    /// Compile the step trace in and print when blocks reached each point of the step, instead of timings.
    #[arg(long)]
    trace: bool,
    #[command(flatten)]
    budgets: hga_bench::RoutingArgs,
}

const KERNELS: [&str; 6] = ["append", "summarize", "chunk_score", "select", "resolve", "attend"];

/// Fast non-zero random bf16 bits in ±[2^-8, 2).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bf16(&mut self) -> u16 {
        let r = self.next();
        let sign = ((r >> 63) as u16) << 15;
        let exp = 119 + (r >> 40) as u16 % 8;
        sign | (exp << 7) | (r as u16 & 0x7f)
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("hga_kernel_bench: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (json_path, iters, trace) = (args.json, args.iters as usize, args.trace);
    let d = hga_dsl::KernelParams::default();
    let kp = hga_dsl::KernelParams {
        threads: args.threads.unwrap_or(d.threads),
        split_k: args.split_k.unwrap_or(d.split_k),
        tile_tokens: args.tile_tokens.unwrap_or(d.tile_tokens),
        vec_width: args.vec_width.unwrap_or(d.vec_width),
    };
    let spec = Spec::new(presets::find("qwen3-30b")?.shape)
        .with_routing(args.budgets.apply(hga_dsl::Routing::default()))
        .with_kernel(kp)
        .validate()?;
    // After the spec: bad flags are reported on a machine without a GPU too.
    let gpu = Gpu::open(0)?;
    let jit = if trace { Jit::from_env()?.traced() } else { Jit::from_env()? };
    let t = std::time::Instant::now();
    let kernels = DecodeKernels::load(&gpu, &jit, &spec)?;
    println!(
        "{} ({}), variant {}\nJIT: {} in {:.0} ms",
        gpu.name(),
        gpu.arch(),
        spec.variant_key(),
        if kernels.compiled().cache_hit { "cache hit" } else { "compiled" },
        t.elapsed().as_secs_f64() * 1e3
    );
    for a in kernels.attributes() {
        println!("  {a}");
    }
    let (m, r) = (spec.model(), spec.routing());
    let (qh, kvh, d) = (m.q_heads as usize, m.kv_heads as usize, m.head_dim as usize);
    let (c, g, gpc) = (r.chunk as usize, r.group as usize, spec.groups_per_chunk());
    let st = gpu.stream().clone();

    // Ceilings measured here: HBM copy bandwidth (read + write) and the cost of one launch.
    let bytes = 1usize << 30;
    let src = st.clone_htod(&vec![0x3f80u16; bytes / 2])?;
    let mut dst = st.alloc_zeros::<u16>(bytes / 2)?;
    let mut bw = Vec::new();
    for _ in 0..10 {
        let tm = gpu.timer()?;
        tm.start()?;
        st.memcpy_dtod(&src, &mut dst)?;
        bw.push(2.0 * bytes as f64 / (tm.stop_us()? * 1e-6));
    }
    let hbm = median(&mut bw);
    drop((src, dst));
    println!("HBM copy bandwidth (read+write): {:.2} TB/s", hbm / 1e12);

    let mut json = String::from("{\n");
    let _ = writeln!(
        json,
        "  \"device\": \"{}\", \"variant\": \"{}\", \"hbm_bytes_per_s\": {hbm:.4e},",
        gpu.name(),
        spec.variant_key()
    );
    let mut rows = Vec::new();
    for (ci, context) in [65536usize, 1 << 20].into_iter().enumerate() {
        let copies = if context <= 65536 { 8 } else { 3 };
        let cap = Capacity { batch: 1, max_context: context, n_slots: 4 * kvh * spec.gqa() * r.top_groups as usize };
        let mut rng = Rng(0x9e3779b97f4a7c15 ^ context as u64);
        // One pinned, device-mapped host store shared by all copies.
        let probe = DecodeBatch::new(&gpu, &kernels, cap)?;
        let store_len = probe.host_store_len();
        let cap_chunks = probe.cap_chunks();
        drop(probe);
        // SAFETY: filled below before any kernel reads it.
        let mut store = unsafe {
            gpu.context().alloc_pinned_with_flags::<u16>(store_len, cudarc::driver::sys::CU_MEMHOSTALLOC_DEVICEMAP)?
        };
        for x in store.as_mut_slice()?.iter_mut() {
            *x = rng.bf16();
        }
        let store_ptr = store.as_ptr()? as u64;
        let lp = kernels.generated().launch.clone();
        let mut batches = Vec::new();
        let mut queries = Vec::new();
        for _ in 0..copies {
            let mut b = DecodeBatch::new(&gpu, &kernels, cap)?;
            let wlen = kvh * lp.window_chunks as usize * c * d;
            let (wk, wv): (Vec<u16>, Vec<u16>) = (0..wlen).map(|_| (rng.bf16(), rng.bf16())).unzip();
            b.upload_window(&wk, &wv)?;
            let sw = lp.summary_vectors as usize * d;
            let cs: Vec<f32> = (0..kvh * cap_chunks * sw).map(|_| rng.f32() * 8.0).collect();
            let gs: Vec<f32> = (0..kvh * cap_chunks * gpc * sw).map(|_| rng.f32() * 2.0).collect();
            b.upload_summaries(&cs, &gs)?;
            // SAFETY: the pinned store outlives every batch (dropped after them below).
            unsafe { b.set_host_store(store_ptr)? };
            b.set_positions(&[context as u32 - 1])?;
            let q: Vec<u16> = (0..qh * d).map(|_| rng.bf16()).collect();
            b.upload_q(&q)?;
            queries.push(q);
            batches.push(b);
        }
        let kv_new: Vec<u16> = (0..kvh * d).map(|_| rng.bf16()).collect();
        // Warm up: every copy fetches its groups once.
        for b in batches.iter_mut() {
            for _ in 0..3 {
                b.step(&kv_new, &kv_new)?;
            }
        }
        gpu.sync()?;
        let graphs: Vec<_> =
            batches.iter_mut().map(|b| b.capture_step(b.max_candidates() + 4)).collect::<Result<_, _>>()?;
        let union: usize = batches[0].union()?.iter().map(|u| u.len()).sum();
        let n_cand = batches[0].max_candidates() as usize;
        for regime in ["hit", "miss"] {
            if trace {
                print_trace(
                    &gpu,
                    &kernels,
                    &mut batches,
                    &graphs,
                    &queries,
                    &kv_new,
                    regime,
                    context,
                    iters,
                    &mut rng,
                )?;
                continue;
            }
            let mut per_kernel: Vec<Vec<f64>> = vec![Vec::new(); KERNELS.len()];
            let mut whole = Vec::new();
            let mut closing = Vec::new();
            let mut graph_steady = Vec::new();
            let mut graph_closing = Vec::new();
            let mut misses = Vec::new();
            let events: Vec<_> = (0..=KERNELS.len()).map(|_| gpu.timer()).collect::<Result<_, _>>()?;
            for it in 0..iters {
                let b = &mut batches[it % copies];
                upload_query(b, regime, &queries[it % copies], &mut rng)?;
                let close_chunk = (context / c) as i32 - 1;
                let mode = it % 5;
                if mode == 3 || mode == 4 {
                    // The whole step as one CUDA graph replay: steady, or closing a chunk.
                    b.upload_close(&[if mode == 4 { close_chunk } else { -1 }])?;
                    b.upload_new_kv(&kv_new, &kv_new)?;
                    let g = &graphs[it % copies];
                    let tm = gpu.timer()?;
                    tm.start()?;
                    b.launch_graph(g)?;
                    let us = tm.stop_us()?;
                    if mode == 4 {
                        graph_closing.push(us)
                    } else {
                        graph_steady.push(us)
                    }
                } else if mode != 2 {
                    // Whole step, events only around it: a steady step (no chunk closes), or one whose
                    // token closes a chunk (+ summaries).
                    b.upload_close(&[close_chunk])?;
                    b.upload_new_kv(&kv_new, &kv_new)?;
                    let tm = gpu.timer()?;
                    tm.start()?;
                    b.launch_append_kernel()?;
                    if mode == 1 {
                        b.launch_summarize_kernel()?;
                    }
                    b.launch_decode()?;
                    let us = tm.stop_us()?;
                    if mode == 1 {
                        closing.push(us)
                    } else {
                        whole.push(us)
                    }
                } else {
                    // Per kernel: an event before each launch.
                    b.launch_append(&kv_new, &kv_new)?;
                    let stamp = |i: usize| events[i].start();
                    stamp(0)?;
                    b.launch_summarize_kernel()?;
                    stamp(1)?;
                    b.launch_chunk_score()?;
                    stamp(2)?;
                    b.launch_select()?;
                    stamp(3)?;
                    b.launch_resolve()?;
                    stamp(4)?;
                    b.launch_attend()?;
                    stamp(5)?;
                    gpu.sync()?;
                    for k in 1..KERNELS.len() {
                        per_kernel[k].push(events[k - 1].elapsed_to(&events[k])?);
                    }
                    misses.push(b.last_misses()? as f64);
                }
            }
            // The append kernel alone (it uploads its inputs first, so time it separately).
            for b in batches.iter_mut().take(1) {
                for _ in 0..50 {
                    let tm = gpu.timer()?;
                    b.launch_append(&kv_new, &kv_new)?;
                    tm.start()?;
                    b.launch_append_kernel()?;
                    per_kernel[0].push(tm.stop_us()?);
                }
            }
            let med: Vec<f64> = per_kernel.iter_mut().map(|v| median(v)).collect();
            let step_us = median(&mut whole);
            let closing_us = median(&mut closing);
            let graph_us = (median(&mut graph_steady), median(&mut graph_closing));
            let miss = median(&mut misses);
            // Bytes each kernel must move at least (each input read once, each output written once).
            let tok = (r.keep_first as usize + r.keep_last as usize) * c + c / 2;
            // Misses (8 KiB each from host) are read inside attend.
            let model_bytes = [
                4 * kvh * d * 2,
                2 * kvh * c * d * 2 + (1 + gpc) * kvh * d * 2,
                n_cand * kvh * d * 2 + n_cand * qh * 4,
                n_cand * qh * 4 + qh * r.top_chunks as usize * gpc * d * 2,
                kvh * spec.gqa() * r.top_groups as usize * 4 + miss as usize * 16,
                (union * g + kvh * tok) * d * 2 * 2 + qh * lp.split_k as usize * (d + 2) * 4 * 2 + qh * d * 2,
            ];
            let total_bytes: usize = model_bytes.iter().sum();
            let _ = writeln!(json, "  \"ctx{context}_{regime}\": {{\"step_us\": {step_us:.2}, \"closing_step_us\": {closing_us:.2}, \"graph_step_us\": {:.2}, \"graph_closing_step_us\": {:.2}, \"misses\": {miss}, \"union_groups\": {union}, \"candidates\": {n_cand}, \"bytes\": {total_bytes}, \"kernels\": {{{}}}}},",
                graph_us.0, graph_us.1,
                KERNELS.iter().zip(&med).zip(&model_bytes).map(|((k, t), b)| format!("\"{k}\": {{\"us\": {t:.2}, \"bytes\": {b}}}")).collect::<Vec<_>>().join(", "));
            rows.push((context, regime, med, model_bytes, step_us, closing_us, graph_us, miss, union, n_cand));
        }
        drop(batches);
        drop(store);
        let _ = ci;
    }
    if trace {
        // Traced kernels add atomics to every block: no timing from them.
        return Ok(());
    }
    // Launch overhead: back-to-back launches of the cheapest kernel (resolve with no rows routed).
    let mut b = DecodeBatch::new(&gpu, &kernels, Capacity { batch: 1, max_context: 4096, n_slots: 4096 })?;
    let mut per_launch = Vec::new();
    for _ in 0..20 {
        let tm = gpu.timer()?;
        tm.start()?;
        for _ in 0..100 {
            b.launch_resolve()?;
        }
        per_launch.push(tm.stop_us()? / 100.0);
    }
    let launch_us = median(&mut per_launch);
    let _ = writeln!(json, "  \"launch_us\": {launch_us:.3}\n}}");
    println!("\nlaunch overhead (back-to-back, per kernel): {launch_us:.2} us; HBM {:.2} TB/s", hbm / 1e12);
    for (context, regime, med, bytes, step_us, closing_us, graph_us, miss, union, n_cand) in rows {
        println!(
            "\ncontext {}K, batch 1, {regime}: {n_cand} candidate chunks, {union} opened groups (union over KV heads), {miss} misses",
            context / 1024
        );
        println!("  {:<14} {:>9} {:>12} {:>10}", "kernel", "us (med)", "bytes", "HBM floor");
        for (k, (t, by)) in KERNELS.iter().zip(med.iter().zip(&bytes)) {
            println!("  {k:<14} {t:>9.2} {by:>12} {:>8.2}us", *by as f64 / hbm * 1e6);
        }
        let total: usize = bytes.iter().sum();
        let steady: usize = total - bytes[1];
        println!(
            "  {:<14} {step_us:>9.2} {steady:>12} {:>8.2}us   launch floor {:.1} us (5 launches)",
            "step (steady)",
            steady as f64 / hbm * 1e6,
            5.0 * launch_us
        );
        println!(
            "  {:<14} {closing_us:>9.2} {total:>12} {:>8.2}us   launch floor {:.1} us (6 launches)",
            "step (closing)",
            total as f64 / hbm * 1e6,
            6.0 * launch_us
        );
        println!(
            "  {:<14} {:>9.2} (steady), {:.2} (closing): one CUDA graph launch per step",
            "step as graph", graph_us.0, graph_us.1
        );
        println!("  miss floor over PCIe at 50 GB/s (DESIGN.md §6): {:.1} us", miss * 8192.0 / 50e9 * 1e6);
    }
    if let Some(p) = json_path {
        std::fs::write(&p, json)?;
        println!("\nwrote {p}");
    }
    Ok(())
}

/// Uploads a step's query: the copy's own (`hit`: its groups are cached) or a fresh random one (`miss`).
fn upload_query(b: &mut DecodeBatch, regime: &str, own: &[u16], rng: &mut Rng) -> Result<(), CudaError> {
    if regime == "miss" {
        let q: Vec<u16> = (0..own.len()).map(|_| rng.bf16()).collect();
        b.upload_q(&q)
    } else {
        b.upload_q(own)
    }
}

/// The step trace of `iters` graph replays of `regime` (the same queries, or fresh ones every step),
/// averaged: per event, when the first and the last block reached it, µs from the first block's start.
#[allow(clippy::too_many_arguments)]
fn print_trace(
    gpu: &Gpu,
    kernels: &DecodeKernels,
    batches: &mut [DecodeBatch],
    graphs: &[hga_runtime::cuda::StepGraph],
    queries: &[Vec<u16>],
    kv_new: &[u16],
    regime: &str,
    context: usize,
    iters: usize,
    rng: &mut Rng,
) -> Result<(), Box<dyn std::error::Error>> {
    use hga_dsl::codegen::TRACE_EVENTS;
    println!("\ncontext {}K, batch 1, {regime}: step trace, µs from the first block's start", context / 1024);
    let st = gpu.stream().clone();
    let mut sum = vec![(0.0f64, 0.0f64, 0usize); TRACE_EVENTS.len()];
    for it in 0..iters {
        let b = &mut batches[it % graphs.len()];
        upload_query(b, regime, &queries[it % graphs.len()], rng)?;
        b.upload_close(&[-1])?;
        b.upload_new_kv(kv_new, kv_new)?;
        kernels.reset_trace(&st)?;
        b.launch_graph(&graphs[it % graphs.len()])?;
        let spans = kernels.read_trace(&st)?;
        let Some(t0) = spans.iter().filter_map(|s| s.first_ns).min() else { continue };
        for (acc, s) in sum.iter_mut().zip(&spans) {
            if let (Some(f), Some(l)) = (s.first_ns, s.last_ns) {
                acc.0 += (f - t0) as f64 / 1e3;
                acc.1 += (l - t0) as f64 / 1e3;
                acc.2 += 1;
            }
        }
    }
    for (e, (f, l, n)) in TRACE_EVENTS.iter().zip(sum) {
        if n > 0 {
            println!("  {e:<46} first {:>7.2}  last {:>7.2}", f / n as f64, l / n as f64);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_parses_and_rejects_zero_iterations() {
        Args::command().debug_assert();
        let a = Args::try_parse_from(["hga_kernel_bench", "--trace", "--split-k", "16", "--iters", "40"]).unwrap();
        assert!(a.trace && a.split_k == Some(16) && a.iters == 40 && a.threads.is_none());
        let e = Args::try_parse_from(["hga_kernel_bench", "--iters", "0"]).err().unwrap();
        assert!(e.to_string().contains("--iters"), "{e}");
    }
}
