//! # tuning: the HGA autotuner
//!
//! `cargo run -p tuning -- --gpu rtx5090 --model qwen3-30b` searches the kernel parameters of the
//! generated decode-step kernels (`hga_dsl::codegen`) for one model on one GPU, per (context bucket,
//! batch bucket), and writes one deterministic TOML file (`hga_dsl::tuned`) under
//! `kernels-generated/configs/`.
//!
//! - **Measured** when the named GPU is present: each candidate compiled by the JIT, checked against the
//!   CPU backend, timed with CUDA events (see [`measure`]).
//! - **Modeled** otherwise (this machine, CI, a laptop): ranked by the analytic cost model of the named
//!   GPU ([`cost`]); the file says `modeled` and how to measure for real.
//!
//! [`check`] tells whether a checked-in config still matches the spec rules, the generator, the GPU
//! presets and (for modeled files) the cost model.

pub mod buckets;
pub mod check;
pub mod cost;
pub mod device;
pub mod error;
pub mod gpu;
pub mod measure;
pub mod output;
pub mod report;
pub mod search;
pub mod space;

use cost::{Assumptions, Workload};
use error::TuneError;
use gpu::GpuSpec;
use hga_dsl::tuned::short_name;
use hga_dsl::tuned::{Mode, Provenance, TunedConfig};
use hga_dsl::{presets, HfModel, ModelShape, Routing, Spec, SpecError, ValidSpec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How to obtain times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Measure when the named GPU is present, else model it.
    Auto,
    /// Measure; refused when the named GPU is not present.
    Measured,
    /// Model, even when the GPU is present.
    Modeled,
}

/// The model to tune for.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelChoice {
    /// Preset name, or the `config.json`'s folder name.
    pub name: String,
    /// Attention layout.
    pub shape: ModelShape,
    /// Where it came from (preset source or file path).
    pub source: String,
}

/// Resolves `--model`: a preset name, or a path to a Hugging Face `config.json`.
pub fn resolve_model(arg: &str) -> Result<ModelChoice, TuneError> {
    let looks_like_path = arg.contains('/') || arg.contains('\\') || arg.ends_with(".json");
    if !looks_like_path {
        return presets::find(arg)
            .map(|p| ModelChoice { name: p.name.to_string(), shape: p.shape, source: p.source.to_string() })
            .map_err(|source| TuneError::Model { arg: arg.to_string(), source });
    }
    let path = Path::new(arg);
    let hf = HfModel::from_file(path).map_err(|source| TuneError::Model { arg: arg.to_string(), source })?;
    let name = if path.file_name().is_some_and(|f| f == "config.json") {
        path.parent().and_then(|p| p.file_name()).map(|s| s.to_string_lossy().into_owned())
    } else {
        path.file_stem().map(|s| s.to_string_lossy().into_owned())
    }
    .filter(|s| !s.is_empty())
    .unwrap_or_else(|| "model".to_string());
    Ok(ModelChoice { name, shape: hf.shape, source: arg.to_string() })
}

/// The GPU asked for.
#[derive(Debug, Clone)]
pub enum GpuChoice {
    /// A named preset.
    Preset(GpuSpec),
    /// The present device.
    Auto,
}

/// Resolves `--gpu`.
pub fn resolve_gpu(arg: &str) -> Result<GpuChoice, TuneError> {
    if arg.eq_ignore_ascii_case("auto") {
        return Ok(GpuChoice::Auto);
    }
    gpu::find(arg).map(GpuChoice::Preset).ok_or_else(|| TuneError::UnknownGpu {
        name: arg.to_string(),
        known: gpu::all().iter().map(|g| g.name.clone()).collect::<Vec<_>>().join(", "),
    })
}

/// Everything one tuning run needs.
#[derive(Debug, Clone)]
pub struct Request {
    /// `--gpu`.
    pub gpu: String,
    /// `--model`.
    pub model: String,
    /// Context buckets.
    pub contexts: Vec<u64>,
    /// Batch buckets.
    pub batches: Vec<u32>,
    /// Whole-search time budget.
    pub time_budget: Option<Duration>,
    /// Measured or modeled.
    pub mode: ModeArg,
    /// Progress bars on stderr.
    pub progress: bool,
    /// Modeled mode: prune spilling winners with NVRTC's figures when NVRTC is present.
    pub nvrtc: bool,
    /// Routing budgets other than the reference router's (`--top-chunks`, `--top-groups`).
    pub budgets: Budgets,
}

/// Routing budgets a config is tuned for instead of the reference router's: the runtime resolves a
/// config only for the routing it records, so an engine that routes wider or narrower tunes for that.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budgets {
    /// Chunks selected per routing unit.
    pub top_chunks: Option<u32>,
    /// Groups opened per routing unit.
    pub top_groups: Option<u32>,
}

impl Budgets {
    /// The reference routing with these budgets.
    pub fn routing(self) -> Routing {
        Routing::default().with_budgets(self.top_chunks, self.top_groups)
    }

    /// The flags that name these budgets (none for the reference router's), as a command line has them.
    pub fn flags(self) -> String {
        let (r, d) = (self.routing(), Routing::default());
        let mut s = String::new();
        if r.top_chunks != d.top_chunks {
            s += &format!(" --top-chunks {}", r.top_chunks);
        }
        if r.top_groups != d.top_groups {
            s += &format!(" --top-groups {}", r.top_groups);
        }
        s
    }

    /// The budgets a command line written by [`command_line`] names.
    pub fn from_command(command: &str) -> Budgets {
        let flag = |name| command_flag(command, name).and_then(|v| v.parse().ok());
        Budgets { top_chunks: flag("--top-chunks"), top_groups: flag("--top-groups") }
    }

    /// What a file name adds for these budgets: `-c64g16`, or nothing for the reference router's.
    pub fn file_suffix(self) -> String {
        let r = self.routing();
        if r == Routing::default() {
            return String::new();
        }
        format!("-c{}g{}", r.top_chunks, r.top_groups)
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The config.
    pub config: TunedConfig,
    /// Its file text.
    pub text: String,
    /// Suggested file name.
    pub file_name: String,
    /// Notes for the user (how to measure for real, what was pruned).
    pub notes: Vec<String>,
}

/// The command that writes this config again (deterministic: only non-default flags).
pub fn command_line(req: &Request, gpu_name: &str) -> String {
    let mut s = format!("cargo run -p tuning -- --gpu {gpu_name} --model {}", req.model);
    let ctx: Vec<String> = req.contexts.iter().map(|&c| buckets::fmt_context(c)).collect();
    if ctx.join(",") != buckets::DEFAULT_CONTEXTS {
        s += &format!(" --contexts {}", ctx.join(","));
    }
    let b: Vec<String> = req.batches.iter().map(u32::to_string).collect();
    if b.join(",") != buckets::DEFAULT_BATCHES {
        s += &format!(" --batch {}", b.join(","));
    }
    s += &req.budgets.flags();
    if req.mode == ModeArg::Modeled {
        s += " --mode modeled";
    }
    s
}

/// The value of `flag` (`--model`) in a command line written by [`command_line`], if it names one.
pub fn command_flag<'c>(command: &'c str, flag: &str) -> Option<&'c str> {
    command.split(&format!(" {flag} ")).nth(1).and_then(|s| s.split(' ').next())
}

/// The model and the request's routing (the reference router with its budgets) as a validated spec.
/// A model the reference router cannot serve is a `--model` error; budgets it cannot take are one of
/// the budget's flag, with the spec's rule.
pub fn base_spec(model: &ModelChoice, budgets: Budgets) -> Result<ValidSpec, TuneError> {
    let plain = Spec::new(model.shape.clone());
    plain.clone().validate().map_err(|source| TuneError::Model { arg: model.name.clone(), source })?;
    let routing = budgets.routing();
    plain.with_routing(routing.clone()).validate().map_err(|e| {
        let on_groups = matches!(&e, SpecError::Invalid(vs) if vs.iter().any(|v| v.field == "routing.top_groups"));
        let (arg, value) = match budgets.top_groups {
            Some(g) if on_groups => ("--top-groups", g),
            _ => ("--top-chunks", routing.top_chunks),
        };
        TuneError::BadArg { arg, value: value.to_string(), rule: e.to_string() }
    })
}

/// Where the modeled search gets compiled resource figures from.
#[derive(Debug, Clone)]
pub enum Compiler {
    /// Nowhere: resources are modeled (the generator's static shared memory, estimated registers).
    None,
    /// NVRTC of this version: the leading candidates are compiled for the GPU's arch, those that spill
    /// are pruned and the search repeated until the winners compile clean.
    Nvrtc(String),
    /// The NVRTC figures recorded in a config's pruned list (to re-derive it without compiling).
    Recorded {
        /// NVRTC version recorded.
        version: String,
        /// Figures by short name.
        figures: HashMap<String, Result<cost::Resources, String>>,
    },
}

/// Candidates per bucket compiled in each round of NVRTC pruning.
const NVRTC_TOP: usize = 3;

/// Runs the cost model over the space: the modeled search, deterministic for a given compiler.
pub fn modeled(gpu: &GpuSpec, model: &ModelChoice, req: &Request, compiler: Compiler) -> Result<Outcome, TuneError> {
    let base = base_spec(model, req.budgets)?;
    let a = Assumptions::default();
    let workloads = workloads(req);
    let (nvrtc, mut known, compile) = match compiler {
        Compiler::None => (None, HashMap::new(), false),
        Compiler::Nvrtc(v) => (Some(v), HashMap::new(), true),
        Compiler::Recorded { version, figures } => (Some(version), figures, false),
    };
    let (space, results) = loop {
        let figures = |spec: &ValidSpec| known.get(&short_name(spec.kernel())).cloned();
        let source =
            if nvrtc.is_some() { space::ResourceSource::Compiler(&figures) } else { space::ResourceSource::Modeled };
        let space = space::build(&base, gpu, &source);
        let mut timer = search::ModelTimer { gpu, assumptions: a };
        let order = |_w: Workload| (0..space.candidates.len()).collect::<Vec<_>>();
        let results = search::run(&space, &workloads, &mut timer, req.time_budget, &order, "not modeled", req.progress);
        if !compile {
            break (space, results);
        }
        let mut lead: Vec<usize> =
            results.iter().flat_map(|r| r.ranking().into_iter().take(NVRTC_TOP)).collect::<Vec<_>>();
        lead.extend(search::overall_default(&results));
        lead.sort_unstable();
        lead.dedup();
        // Only the winners must be compiled clean; the runners-up are compiled alongside to save rounds.
        let winners_known = results
            .iter()
            .filter_map(|r| r.ranking().first().copied())
            .chain(search::overall_default(&results))
            .all(|i| known.contains_key(&space.candidates[i].name));
        if winners_known {
            break (space, results);
        }
        let fresh: Vec<&space::Candidate> =
            lead.iter().map(|&i| &space.candidates[i]).filter(|c| !known.contains_key(&c.name)).collect();
        for (name, r) in nvrtc_resources_parallel(&fresh, &gpu.arch) {
            known.insert(name, r);
        }
    };
    let provenance = Provenance {
        mode: Mode::Modeled,
        gpu: gpu.name.clone(),
        gpu_name: gpu.full_name.clone(),
        arch: gpu.arch.clone(),
        driver: "none".into(),
        nvrtc: nvrtc.clone().unwrap_or_else(|| "none".into()),
        hga_version: env!("CARGO_PKG_VERSION").into(),
        generator: hga_dsl::codegen::GENERATOR_VERSION.into(),
        model: model.name.clone(),
        cost_model: a.describe(),
        command: command_line(req, &gpu.name),
    };
    let (config, mut notes) = output::assemble(&base, &space, &results, provenance).map_err(TuneError::Measure)?;
    let text = output::render(&config);
    notes.extend([
        format!(
            "MODELED: variants were ranked by the cost model of the {} ({}), not measured.",
            gpu.full_name,
            cost::COST_MODEL_VERSION
        ),
        format!(
            "To measure for real, run `{}` on a machine with a {}.",
            // The same request in the default mode, which measures where the GPU is present.
            command_line(&Request { mode: ModeArg::Auto, ..req.clone() }, &gpu.name),
            gpu.full_name
        ),
    ]);
    Ok(Outcome { file_name: output::file_name(&gpu.name, &model.name, req.budgets), config, text, notes })
}

/// [`nvrtc_resources`] of several variants on all cores.
fn nvrtc_resources_parallel(cands: &[&space::Candidate], arch: &str) -> Vec<(String, Result<cost::Resources, String>)> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(cands.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let out = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(c) = cands.get(i) else { break };
                let r = nvrtc_resources(&c.spec, arch);
                out.lock().unwrap_or_else(|e| e.into_inner()).push((c.name.clone(), r));
            });
        }
    });
    let mut v = out.into_inner().unwrap_or_else(|e| e.into_inner());
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Registers, shared memory and spills of a variant's kernels as NVRTC/ptxas report them (the attention
/// kernel's registers and shared memory; the largest spill of any kernel).
fn nvrtc_resources(spec: &ValidSpec, arch: &str) -> Result<cost::Resources, String> {
    let cc: u32 = arch.trim_start_matches("sm_").parse().map_err(|_| format!("unknown arch {arch}"))?;
    let jit = hga_runtime::jit::Jit::from_env().map_err(|e| e.to_string())?;
    let c =
        jit.compile(&hga_dsl::codegen::generate(spec), hga_runtime::jit::Arch::new(cc)).map_err(|e| e.to_string())?;
    let attend = c.resources.iter().find(|r| r.name == "hga_attend").ok_or("ptxas reported no hga_attend")?;
    let spill = c.resources.iter().map(|r| r.spill_stores.max(r.spill_loads)).max().unwrap_or(0);
    Ok(cost::Resources { regs_per_thread: attend.registers, smem_bytes: attend.smem_bytes, spill_bytes: spill })
}

/// The buckets of a request, sorted by context then batch.
pub fn workloads(req: &Request) -> Vec<Workload> {
    let mut w: Vec<Workload> = req
        .contexts
        .iter()
        .flat_map(|&context| req.batches.iter().map(move |&batch| Workload { context, batch }))
        .collect();
    w.sort();
    w
}

/// NVRTC for the modeled search when it is present and not switched off.
fn compiler(req: &Request) -> Compiler {
    match device::nvrtc_version() {
        Some(v) if req.nvrtc => Compiler::Nvrtc(v),
        _ => Compiler::None,
    }
}

/// Runs a request: decides measured or modeled, searches, and returns the config.
pub fn tune(req: &Request) -> Result<Outcome, TuneError> {
    let model = resolve_model(&req.model)?;
    let asked = resolve_gpu(&req.gpu)?;
    if req.contexts.is_empty() {
        return Err(TuneError::BadArg { arg: "--contexts", value: String::new(), rule: "needs at least one".into() });
    }
    if req.batches.is_empty() {
        return Err(TuneError::BadArg { arg: "--batch", value: String::new(), rule: "needs at least one".into() });
    }
    // Only look for a device when it could matter; a missing driver is not an error for a modeled run.
    let present = match (&asked, req.mode) {
        (_, ModeArg::Modeled) => None,
        _ => device::driver_present().then(device::probe).and_then(Result::ok),
    };
    match (asked, req.mode) {
        (GpuChoice::Auto, ModeArg::Modeled) => Err(TuneError::BadArg {
            arg: "--gpu",
            value: "auto".into(),
            rule: "--mode modeled needs a named GPU (see --list-gpus)".into(),
        }),
        (GpuChoice::Auto, _) => {
            let p = match present {
                Some(p) => p,
                None => {
                    return Err(TuneError::NoDevice {
                        reason: device::probe().err().unwrap_or_else(|| "no device".into())
                            + "; name a GPU (--gpu rtx5090, see --list-gpus) to rank variants with its cost model",
                    })
                }
            };
            measure::measured(&p, &model, req)
        }
        (GpuChoice::Preset(g), ModeArg::Modeled) => modeled(&g, &model, req, compiler(req)),
        (GpuChoice::Preset(g), ModeArg::Auto) => match present {
            Some(p) if p.spec.name == g.name => measure::measured(&p, &model, req),
            _ => modeled(&g, &model, req, compiler(req)),
        },
        (GpuChoice::Preset(g), ModeArg::Measured) => match present {
            Some(p) if p.spec.name == g.name => measure::measured(&p, &model, req),
            Some(p) => Err(TuneError::WrongDevice { asked: g.full_name, present: p.name }),
            None => Err(TuneError::NoDevice {
                reason: format!(
                    "{}; measuring the {} needs that GPU (or use --mode modeled)",
                    device::probe().err().unwrap_or_else(|| "no device".into()),
                    g.full_name
                ),
            }),
        },
    }
}

/// The workspace root: the nearest ancestor of `start` holding `Cargo.toml` with `[workspace]`.
pub fn workspace_root(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| std::fs::read_to_string(d.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]")))
        .map(Path::to_path_buf)
}

/// Default output folder: `kernels-generated/configs` of the workspace containing the current dir, else
/// the current dir.
pub fn default_out_dir() -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    match workspace_root(&cwd) {
        Some(root) if root.join("kernels-generated").is_dir() => root.join("kernels-generated").join("configs"),
        _ => cwd,
    }
}
