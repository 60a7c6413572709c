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
use hga_dsl::tuned::{Mode, Provenance, TunedConfig};
use hga_dsl::{presets, HfModel, ModelShape, Spec, ValidSpec};
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
    if req.mode == ModeArg::Modeled {
        s += " --mode modeled";
    }
    s
}

/// The model and default routing as a validated spec.
pub fn base_spec(model: &ModelChoice) -> Result<ValidSpec, TuneError> {
    Spec::new(model.shape.clone()).validate().map_err(|source| TuneError::Model { arg: model.name.clone(), source })
}

/// Runs the cost model over the space: the modeled search, fully deterministic.
pub fn modeled(gpu: &GpuSpec, model: &ModelChoice, req: &Request, nvrtc: Option<String>) -> Result<Outcome, TuneError> {
    let base = base_spec(model)?;
    let space = space::build(&base, gpu, &space::ResourceSource::Modeled);
    let a = Assumptions::default();
    let workloads = workloads(req);
    let mut timer = search::ModelTimer { gpu, assumptions: a };
    let order = |_w: Workload| (0..space.candidates.len()).collect::<Vec<_>>();
    let results = search::run(&space, &workloads, &mut timer, req.time_budget, &order, "not modeled", req.progress);
    let provenance = Provenance {
        mode: Mode::Modeled,
        gpu: gpu.name.clone(),
        gpu_name: gpu.full_name.clone(),
        arch: gpu.arch.clone(),
        driver: "none".into(),
        nvrtc: nvrtc.unwrap_or_else(|| "none".into()),
        hga_version: env!("CARGO_PKG_VERSION").into(),
        generator: hga_dsl::codegen::GENERATOR_VERSION.into(),
        model: model.name.clone(),
        cost_model: a.describe(),
        command: command_line(req, &gpu.name),
    };
    let config = output::assemble(&base, &space, &results, provenance).map_err(TuneError::Measure)?;
    let text = output::render(&config);
    let notes = vec![
        format!(
            "MODELED: no {} is present, so variants were ranked by the cost model ({}), not measured.",
            gpu.full_name,
            cost::COST_MODEL_VERSION
        ),
        format!("To measure for real, run `{}` on a machine with a {}.", command_line(req, &gpu.name), gpu.full_name),
    ];
    Ok(Outcome { file_name: output::file_name(&gpu.name, &model.name), config, text, notes })
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
        (GpuChoice::Preset(g), ModeArg::Modeled) => modeled(&g, &model, req, device::nvrtc_version()),
        (GpuChoice::Preset(g), ModeArg::Auto) => match present {
            Some(p) if p.spec.name == g.name => measure::measured(&p, &model, req),
            _ => modeled(&g, &model, req, device::nvrtc_version()),
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
