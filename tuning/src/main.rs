//! The HGA autotuner CLI: `cargo run -p tuning -- --gpu rtx5090 --model qwen3-30b`.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tuning::error::TuneError;
use tuning::{buckets, check, gpu, report, Budgets, ModeArg, Request};

/// Tunes the HGA decode-step kernels for one model on one GPU and writes a TOML config.
///
/// Without the named GPU the variants are ranked by an analytic cost model of it (the config says
/// `modeled`); on a machine with that GPU they are compiled, checked against the CPU backend and timed.
#[derive(Debug, Parser)]
#[command(name = "tuning", version, about, long_about = None)]
struct Cli {
    /// GPU preset (see --list-gpus), or `auto` for the present device.
    #[arg(long, value_name = "NAME|auto", required_unless_present_any = ["check", "list_gpus", "list_models"])]
    gpu: Option<String>,
    /// Model preset (see --list-models) or a path to a Hugging Face config.json.
    #[arg(long, value_name = "PRESET|PATH", required_unless_present_any = ["check", "list_gpus", "list_models"])]
    model: Option<String>,
    /// Output folder (default: kernels-generated/configs of this workspace).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Context buckets, tokens with K/M suffixes.
    #[arg(long, value_name = "LIST", default_value = buckets::DEFAULT_CONTEXTS)]
    contexts: String,
    /// Batch buckets.
    #[arg(long, value_name = "LIST", default_value = buckets::DEFAULT_BATCHES)]
    batch: String,
    /// Time budget of the whole search, seconds (measured mode: least promising candidates are dropped).
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    time_budget: Option<f64>,
    /// measured (needs the GPU), modeled (cost model), or auto (measured when the GPU is present).
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    mode: ModeArg,
    /// Checks a tuned config against the current generator, spec rules and GPU presets; writes nothing.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["gpu", "model"])]
    check: Option<PathBuf>,
    /// Lists the GPU presets with their facts and sources.
    #[arg(long)]
    list_gpus: bool,
    /// Lists the model presets.
    #[arg(long)]
    list_models: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Modeled mode: do not compile the leading variants with NVRTC to prune spilling ones (faster, and
    /// the same file on every machine).
    #[arg(long)]
    no_nvrtc: bool,
    /// Chunks selected per routing unit, if not the reference router's 16 (the file name then says
    /// `-c<chunks>g<groups>`; the runtime resolves a config only for the routing it records).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "check")]
    top_chunks: Option<u32>,
    /// Groups opened per routing unit, if not the reference router's 32.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "check")]
    top_groups: Option<u32>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn run(cli: Cli) -> Result<(), TuneError> {
    if cli.list_gpus {
        print!("{}", list_gpus());
    }
    if cli.list_models {
        for p in hga_dsl::presets::all() {
            let m = &p.shape;
            println!(
                "{:<16} q_heads {:>3}  kv_heads {:>2}  head_dim {:>3}  layers {:>3}  max context {:>7}  ({})",
                p.name, m.q_heads, m.kv_heads, m.head_dim, p.layers, p.max_position, p.source
            );
        }
    }
    if cli.list_gpus || cli.list_models {
        return Ok(());
    }
    if let Some(path) = &cli.check {
        let r = check::check_file(path)?;
        println!("{}: OK: {}: {}", path.display(), r.what, r.summary);
        return Ok(());
    }
    let time_budget = match cli.time_budget {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 && s <= 86400.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => {
            return Err(TuneError::BadArg {
                arg: "--time-budget",
                value: s.to_string(),
                rule: "must be a number of seconds in (0, 86400]".into(),
            })
        }
    };
    let req = Request {
        gpu: cli.gpu.unwrap_or_default(),
        model: cli.model.unwrap_or_default(),
        contexts: buckets::parse_contexts(&cli.contexts)?,
        batches: buckets::parse_batches(&cli.batch)?,
        time_budget,
        mode: cli.mode,
        progress: !cli.quiet,
        nvrtc: !cli.no_nvrtc,
        budgets: Budgets { top_chunks: cli.top_chunks, top_groups: cli.top_groups },
    };
    let start = Instant::now();
    let out = tuning::tune(&req)?;
    let dir = cli.out.unwrap_or_else(tuning::default_out_dir);
    std::fs::create_dir_all(&dir).map_err(|source| TuneError::Io { path: dir.display().to_string(), source })?;
    let path = dir.join(&out.file_name);
    std::fs::write(&path, &out.text).map_err(|source| TuneError::Io { path: path.display().to_string(), source })?;
    println!("{}", report::table(&out.config));
    for n in &out.notes {
        println!("{n}");
    }
    println!("wrote {} in {:.2} s", path.display(), start.elapsed().as_secs_f64());
    Ok(())
}

fn list_gpus() -> String {
    let mut s = String::new();
    for g in gpu::all() {
        s += &format!(
            "{:<10} {:<24} {:<6} {:>3} SMs  {:>5.0} GB/s  {:>3.0} GB  L2 {:>3.0} MiB  PCIe Gen{} {:.0} GB/s\n           \
             source: {}\n",
            g.name, g.full_name, g.arch, g.sms, g.mem_bw_gbs, g.mem_gb, g.l2_mib, g.pcie_gen, g.pcie_gbs, g.source
        );
    }
    s
}
