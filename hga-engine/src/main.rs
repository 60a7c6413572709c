//! `hga-engine`: evaluate HGA routing on a Hugging Face checkpoint, check it reproduces reference logits,
//! and generate text. `hga-engine --help` lists the subcommands.

use clap::{Args, Parser, Subcommand, ValueEnum};
use hga_dsl::{ScoreKind, Sharing, ValidSpec};
use hga_engine::attention::Lookahead;
use hga_engine::eval::{self, EvalConfig, Progress, Run};
use hga_engine::generate::generate;
use hga_engine::reference::{check_logits, ReferenceLogits};
use hga_engine::routing::{describe, spec_for_model, widen, RoutingOverrides};
use hga_engine::{AttentionKind, BackendChoice, EngineError, Model, SpeculateFrom};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "hga-engine", version, about = "CPU engine for Qwen3-architecture checkpoints with HGA attention")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Teacher-forced mean next-token NLL per position bucket, dense against routing specs.
    Eval(EvalArgs),
    /// Greedy generation from a prompt, streaming to stdout; tokens per second on stderr.
    Generate(GenerateArgs),
    /// Compares the dense forward pass with the checkpoint's reference_logits.json.
    LogitsCheck(LogitsArgs),
}

#[derive(Args)]
struct ModelArg {
    /// Checkpoint directory holding config.json and model.safetensors.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Text file: documents are consecutive --doc-bytes slices; each byte is a token.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Documents to evaluate.
    #[arg(long, default_value_t = 1)]
    docs: usize,
    /// Bytes per document.
    #[arg(long, default_value_t = 32768)]
    doc_bytes: usize,
    /// Index of the first document.
    #[arg(long, default_value_t = 0)]
    first_doc: usize,
    /// Tokens per forward block (their K/V are appended before each of them attends).
    #[arg(long, default_value_t = 512)]
    block: usize,
    /// Skip the dense baseline.
    #[arg(long)]
    no_dense: bool,
    /// A hga-dsl TOML routing spec (its [model] section may be omitted); repeatable.
    #[arg(long, value_name = "FILE")]
    spec: Vec<PathBuf>,
    #[command(flatten)]
    routing: RoutingArgs,
    /// Run the HGA specs through the runtime's engine API (one `HgaCache` per document, positions
    /// appended and attended one at a time as in decoding) on this backend, instead of the CPU
    /// `LayerCache` directly: `gpu` evaluates the generated CUDA kernels.
    #[arg(long, value_enum)]
    runtime: Option<RuntimeArg>,
    /// Also replay each (layer, KV head)'s routed groups, position by position, through a GPU slot
    /// partition of this many slots under each eviction policy (FIFO, CLOCK: the kernels', LRU), and
    /// report the misses (CPU `LayerCache` runs only: not with --runtime).
    #[arg(long, value_name = "SLOTS", conflicts_with = "runtime")]
    replay_slots: Option<usize>,
    /// With --replay-slots, also replay speculative prefetch: layer l + 1's query projected from an
    /// earlier hidden state of layer l (`input`: its input; `mid`: after its attention) routes, and
    /// its groups are brought into a CLOCK slot cache before layer l + 1's own route. Reports the
    /// misses left on the critical path.
    #[arg(long, value_enum, requires = "replay_slots")]
    speculate: Option<SpeculateArg>,
    /// With --replay-slots, also replay lookahead prefetch: right after each step of a layer, the
    /// step's query routes again with CHUNKS more chunks and GROUPS more groups per query head, and that
    /// wider union is brought into a CLOCK slot cache for the next position. Reports the misses left on
    /// the critical path and the groups the lookahead fetched. The wider union must fit the slots.
    #[arg(
        long,
        value_name = "CHUNKS,GROUPS",
        value_parser = parse_lookahead,
        allow_hyphen_values = true,
        requires = "replay_slots"
    )]
    lookahead: Option<Lookahead>,
    /// Also write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Where speculative queries come from (`--speculate`).
#[derive(Clone, Copy, ValueEnum)]
enum SpeculateArg {
    /// The previous layer's input.
    Input,
    /// The previous layer's residual stream after its attention.
    Mid,
}

impl From<SpeculateArg> for SpeculateFrom {
    fn from(a: SpeculateArg) -> Self {
        match a {
            SpeculateArg::Input => SpeculateFrom::LayerInput,
            SpeculateArg::Mid => SpeculateFrom::AfterAttention,
        }
    }
}

/// `--lookahead CHUNKS,GROUPS`: two non-negative integers.
fn parse_lookahead(s: &str) -> Result<Lookahead, String> {
    let (c, g) = s.split_once(',').ok_or("expected CHUNKS,GROUPS (two integers >= 0, e.g. 4,16)")?;
    let num = |what: &str, x: &str| x.trim().parse::<u32>().map_err(|e| format!("{what} {x:?}: {e}"));
    Ok(Lookahead { chunks: num("CHUNKS", c)?, groups: num("GROUPS", g)? })
}

/// Backend of the engine API's cache (`--runtime`).
#[derive(Clone, Copy, ValueEnum)]
enum RuntimeArg {
    /// The CPU backend.
    Cpu,
    /// The GPU backend (device 0); an error without a usable GPU.
    Gpu,
    /// The GPU when one is usable, else the CPU.
    Auto,
}

/// The HGA attention of `spec`: the CPU `LayerCache`, or the engine API's cache on `runtime`.
fn hga_kind(spec: ValidSpec, runtime: Option<RuntimeArg>, max_seq_len: usize) -> AttentionKind {
    let backend = match runtime {
        None => return AttentionKind::Hga(spec),
        Some(RuntimeArg::Cpu) => BackendChoice::Cpu,
        Some(RuntimeArg::Gpu) => BackendChoice::Gpu { ordinal: 0 },
        Some(RuntimeArg::Auto) => BackendChoice::Auto,
    };
    AttentionKind::HgaCache { spec, backend, max_seq_len }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Prompt text.
    #[arg(long, conflicts_with = "prompt_file", required_unless_present = "prompt_file")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long, value_name = "FILE")]
    prompt_file: Option<PathBuf>,
    /// Tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_new: usize,
    /// Attend with HGA routing from this hga-dsl TOML spec instead of dense attention.
    #[arg(long, value_name = "FILE", conflicts_with = "hga")]
    spec: Option<PathBuf>,
    #[command(flatten)]
    routing: RoutingArgs,
    /// Run HGA through the runtime's engine API on this backend (see `eval --runtime`).
    #[arg(long, value_enum)]
    runtime: Option<RuntimeArg>,
}

#[derive(Args)]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The reference (default: <model>/reference_logits.json).
    #[arg(long, value_name = "FILE")]
    reference: Option<PathBuf>,
    /// The document the reference scored (its first `bytes` bytes are used).
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Fail when max |Δlogit| exceeds this.
    #[arg(long, default_value_t = 0.1)]
    max_dlogit: f32,
    /// Fail when |Δ mean NLL| exceeds this.
    #[arg(long, default_value_t = 0.005)]
    max_dnll: f64,
    /// Also write the comparison as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum SharingArg {
    /// Each query head routes (the reference).
    Qh,
    /// The query heads of a KV head route together.
    Kvh,
}

/// The reference router and overrides of its parameters.
#[derive(Args)]
struct RoutingArgs {
    /// Use HGA with the reference router (hga-dsl defaults), changed by the flags below.
    #[arg(long)]
    hga: bool,
    /// Tokens per chunk.
    #[arg(long, requires = "hga")]
    chunk: Option<u32>,
    /// Tokens per group.
    #[arg(long, requires = "hga")]
    group: Option<u32>,
    /// Sink chunks always attended.
    #[arg(long, requires = "hga")]
    keep_first: Option<u32>,
    /// Local-window chunks always attended.
    #[arg(long, requires = "hga")]
    keep_last: Option<u32>,
    /// Chunks selected per query head.
    #[arg(long, requires = "hga")]
    top_chunks: Option<u32>,
    /// Groups opened per query head.
    #[arg(long, requires = "hga")]
    top_groups: Option<u32>,
    /// Summary kind.
    #[arg(long, value_enum, requires = "hga")]
    score: Option<ScoreKind>,
    /// Who routes.
    #[arg(long, value_enum, requires = "hga")]
    sharing: Option<SharingArg>,
    /// Open every candidate (HGA then equals dense: a correctness check).
    #[arg(long, requires = "hga")]
    full_budget: bool,
}

impl RoutingArgs {
    fn overrides(&self) -> RoutingOverrides {
        RoutingOverrides {
            chunk: self.chunk,
            group: self.group,
            keep_first: self.keep_first,
            keep_last: self.keep_last,
            top_chunks: self.top_chunks,
            top_groups: self.top_groups,
            score: self.score,
            sharing: self.sharing.map(|s| match s {
                SharingArg::Qh => Sharing::PerQueryHead,
                SharingArg::Kvh => Sharing::PerKvHead,
            }),
            full_budget: self.full_budget,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Eval(a) => run_eval(a),
        Command::Generate(a) => run_generate(a),
        Command::LogitsCheck(a) => run_logits(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let mut msg = format!("error: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg += &format!(": {s}");
                src = s.source();
            }
            eprintln!("{msg}");
            ExitCode::from(2)
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, EngineError> {
    std::fs::read(path).map_err(|source| EngineError::Io { path: path.to_path_buf(), source })
}

fn load_spec(path: &Path, model: &Model) -> Result<ValidSpec, EngineError> {
    let text = String::from_utf8_lossy(&read(path)?).into_owned();
    spec_for_model(&text, &path.display().to_string(), &model.config().attention)
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), EngineError> {
    let text = serde_json::to_string_pretty(value).expect("reports always serialize");
    std::fs::write(path, text + "\n").map_err(|source| EngineError::Io { path: path.to_path_buf(), source })
}

fn load_model(dir: &Path) -> Result<Model, EngineError> {
    let t = std::time::Instant::now();
    let model = Model::load(dir)?;
    let c = model.config();
    eprintln!(
        "loaded {} ({} layers, hidden {}, {} q / {} kv heads × {}) in {:.2} s; {} threads",
        dir.display(),
        c.layers,
        c.hidden,
        c.q_heads(),
        c.kv_heads(),
        c.head_dim(),
        t.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
    Ok(model)
}

fn run_eval(a: EvalArgs) -> Result<ExitCode, EngineError> {
    let cfg = EvalConfig { doc_bytes: a.doc_bytes, docs: a.docs, first_doc: a.first_doc, block: a.block };
    let data = read(&a.data)?;
    cfg.check(data.len())?;
    let model = load_model(&a.model.model)?;
    let mut runs = Vec::new();
    if !a.no_dense {
        runs.push(Run { name: "dense".to_string(), kind: AttentionKind::Dense });
    }
    if a.replay_slots == Some(0) {
        return Err(EngineError::argument("--replay-slots", 0, "must be >= 1"));
    }
    let kind_of = |spec: ValidSpec| -> Result<AttentionKind, EngineError> {
        Ok(match a.replay_slots {
            Some(slots) => {
                if let Some(la) = a.lookahead {
                    check_lookahead_fits(&spec, la, slots)?;
                }
                let speculate = a.speculate.map(SpeculateFrom::from);
                AttentionKind::HgaSlots { spec, slots, speculate, lookahead: a.lookahead }
            }
            None => hga_kind(spec, a.runtime, cfg.doc_bytes),
        })
    };
    for path in &a.spec {
        let spec = load_spec(path, &model)?;
        let name = path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned());
        runs.push(Run { name, kind: kind_of(spec)? });
    }
    if a.routing.hga {
        let o = a.routing.overrides();
        runs.push(Run { name: o.label(), kind: kind_of(o.spec(&model.config().attention)?)? });
    }
    if runs.is_empty() {
        return Err(EngineError::argument("--no-dense", true, "leaves nothing to evaluate: give --spec FILE or --hga"));
    }
    for r in &runs {
        eprintln!("run {:<28} {}", r.name, r.kind.spec().map_or("dense causal".to_string(), describe));
    }
    let total = (eval::scored_positions(&cfg) * cfg.docs * runs.len()) as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} positions, {per_sec}, eta {eta} {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    let mut on_progress = |p: Progress| match p {
        Progress::Start { doc, run } => bar.set_message(format!("doc {doc} {run}")),
        Progress::Tokens(n) => bar.inc(n as u64),
        Progress::Done { doc, run, nll, seconds } => {
            let nll: Vec<String> = nll.iter().map(|x| format!("{x:.4}")).collect();
            let line = format!("doc {doc} {run}: NLL per bucket [{}] in {seconds:.1} s", nll.join(", "));
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
    };
    let report = eval::evaluate(&model, &data, &cfg, &runs, &mut on_progress)?;
    bar.finish_and_clear();
    print!("{}", eval::table(&report));
    for r in &report.runs {
        let secs: f64 = r.docs.iter().map(|d| d.seconds).sum::<f64>() / r.docs.len().max(1) as f64;
        println!("{}: {secs:.1} s per document of {} bytes", r.name, cfg.doc_bytes);
    }
    if let Some(path) = &a.json {
        write_json(path, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The wider route's largest union (`top_groups + GROUPS` per query head, times the query heads per KV
/// head unless they share routing) must fit the partition: a prefetch that cannot keep what it fetches
/// measures nothing.
fn check_lookahead_fits(spec: &ValidSpec, la: Lookahead, slots: usize) -> Result<(), EngineError> {
    let wide = widen(spec, la.chunks, la.groups)?;
    let m = spec.model();
    let heads = if wide.routing().sharing == Sharing::PerKvHead { 1 } else { (m.q_heads / m.kv_heads) as u64 };
    let most = heads * wide.routing().top_groups as u64;
    if most > slots as u64 {
        let top = spec.routing().top_groups;
        let rule =
            format!("the wider union (up to {heads} × (top_groups {top} + GROUPS {}) = {most} groups)", la.groups);
        let value = format!("{},{}", la.chunks, la.groups);
        return Err(EngineError::argument("--lookahead", value, format!("{rule} must fit --replay-slots {slots}")));
    }
    Ok(())
}

fn run_generate(a: GenerateArgs) -> Result<ExitCode, EngineError> {
    if a.max_new == 0 {
        return Err(EngineError::argument("--max-new", 0, "must be >= 1"));
    }
    let prompt = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => p.as_bytes().to_vec(),
        (None, Some(f)) => read(f)?,
        (None, None) => unreachable!("clap requires --prompt or --prompt-file"),
    };
    let model = load_model(&a.model.model)?;
    let longest = prompt.len() + a.max_new;
    let kind = match (&a.spec, a.routing.hga) {
        (Some(path), _) => hga_kind(load_spec(path, &model)?, a.runtime, longest),
        (None, true) => hga_kind(a.routing.overrides().spec(&model.config().attention)?, a.runtime, longest),
        (None, false) => AttentionKind::Dense,
    };
    if model.config().vocab != 256 {
        return Err(EngineError::Config {
            field: "vocab_size".to_string(),
            reason: format!(
                "{} tokens; generate reads and writes bytes, so it needs a byte-level model (256)",
                model.config().vocab
            ),
        });
    }
    let tokens: Vec<u32> = prompt.iter().map(|&b| b as u32).collect();
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&prompt);
    let stats = generate(&model, &kind, &tokens, a.max_new, &mut |t| {
        let _ = out.write_all(&[t as u8]);
        let _ = out.flush();
    })?;
    let _ = writeln!(out);
    eprintln!(
        "{}: prompt {} tokens in {:.2} s ({:.0} tok/s); generated {} tokens in {:.2} s ({:.1} tok/s)",
        kind.spec().map_or("dense".to_string(), describe),
        stats.prompt_tokens,
        stats.prefill_seconds,
        stats.prefill_tokens_per_second(),
        stats.generated,
        stats.decode_seconds,
        stats.decode_tokens_per_second()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_logits(a: LogitsArgs) -> Result<ExitCode, EngineError> {
    let ref_path = a.reference.clone().unwrap_or_else(|| a.model.model.join("reference_logits.json"));
    let reference = ReferenceLogits::from_file(&ref_path)?;
    let data = read(&a.data)?;
    let model = load_model(&a.model.model)?;
    let r = check_logits(&model, &reference, &data)?;
    println!("{:>9} {:>14} {:>7}", "position", "max |Δlogit|", "argmax");
    for p in &r.positions {
        println!(
            "{:>9} {:>14.4} {:>7}",
            p.position,
            p.max_abs_dlogit,
            if p.argmax_agrees { "same" } else { "DIFFERS" }
        );
    }
    let dnll = r.mean_nll - r.reference_mean_nll;
    println!("max |Δlogit| {:.4} (bound {})", r.max_abs_dlogit, a.max_dlogit);
    println!(
        "mean NLL over {} bytes: {:.5} vs reference {:.5}: Δ {dnll:+.5} (bound {})",
        reference.bytes, r.mean_nll, r.reference_mean_nll, a.max_dnll
    );
    println!("max |ΔNLL| over the first {} positions {:.4}", reference.nll_first_16.len(), r.max_abs_dnll_first);
    println!("forward pass of {} tokens: {:.2} s", reference.bytes, r.seconds);
    if let Some(path) = &a.json {
        write_json(path, &r)?;
    }
    // NaN fails both comparisons.
    let ok = r.max_abs_dlogit <= a.max_dlogit && dnll.abs() <= a.max_dnll;
    if ok {
        println!("PASS");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("FAIL: outside the bounds");
        Ok(ExitCode::from(1))
    }
}
