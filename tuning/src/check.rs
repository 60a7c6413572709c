//! `--check FILE`: is a tuned config still valid for this generator, these spec rules and its GPU?
//!
//! A config is stale when any of these holds (each is reported, not just the first):
//! - a pick breaks the spec rules, or its variant key or content hash differ from what the rules compute;
//! - it was made for another generator version (its kernels are not the ones timed);
//! - its GPU is no preset, or the preset's architecture changed;
//! - a choice is not among the recorded candidates, or the figures do not match the buckets;
//! - modeled: another cost model version, or re-running the model gives a different file.

use crate::cost::Assumptions;
use crate::cost::Resources;
use crate::error::TuneError;
use crate::gpu;
use crate::{buckets, Compiler, ModeArg, ModelChoice, Request};
use hga_dsl::tuned::{short_name, Mode, TunedConfig};
use std::collections::HashMap;

/// What a successful check found.
#[derive(Debug, Clone)]
pub struct CheckReport {
    /// `gpu/model (mode)`.
    pub what: String,
    /// Buckets and candidates checked.
    pub summary: String,
}

/// Checks a config file's text; `path` is only used in messages.
pub fn check_text(path: &str, text: &str) -> Result<CheckReport, TuneError> {
    let cfg = TunedConfig::from_toml(text).map_err(|source| TuneError::Config { path: path.into(), source })?;
    let mut why = Vec::new();
    if let Err(e) = cfg.base_spec() {
        why.push(e.to_string());
        return Err(TuneError::Stale { path: path.into(), reasons: why });
    }
    why.extend(cfg.stale_names());
    let p = &cfg.provenance;
    if p.generator != hga_dsl::codegen::GENERATOR_VERSION {
        why.push(format!(
            "generator: made for {}, the current generator is {} (its kernels differ from those {})",
            p.generator,
            hga_dsl::codegen::GENERATOR_VERSION,
            if p.mode == Mode::Measured { "timed" } else { "modeled" }
        ));
    }
    let preset = gpu::find(&p.gpu);
    match &preset {
        None => why.push(format!("gpu: `{}` is not a GPU preset (see --list-gpus)", p.gpu)),
        Some(g) if g.arch != p.arch => {
            why.push(format!("gpu: {} is {} in the presets, the file says {}", g.name, g.arch, p.arch))
        }
        Some(_) => {}
    }
    for c in &cfg.choices {
        let name = short_name(&c.pick.kernel);
        if !cfg.space.variants.contains(&name) {
            why.push(format!("choice context={} batch={}: {name} is not among the candidates", c.context, c.batch));
        }
    }
    if !cfg.space.variants.contains(&short_name(&cfg.default.kernel)) {
        why.push(format!("default: {} is not among the candidates", short_name(&cfg.default.kernel)));
    }
    let choice_buckets: Vec<(u64, u32)> = cfg.choices.iter().map(|c| (c.context, c.batch)).collect();
    let figure_buckets: Vec<(u64, u32)> = cfg.figures.iter().map(|f| (f.context, f.batch)).collect();
    if choice_buckets != figure_buckets {
        why.push("figures: the buckets of [[figures]] differ from those of [[choice]]".into());
    }
    let mut sorted = choice_buckets.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted != choice_buckets {
        why.push("choice: buckets are not sorted by (context, batch) or repeat".into());
    }
    for f in &cfg.figures {
        if f.time_us.len() != cfg.space.variants.len() {
            why.push(format!(
                "figures context={} batch={}: {} times for {} candidates",
                f.context,
                f.batch,
                f.time_us.len(),
                cfg.space.variants.len()
            ));
        }
    }
    if p.mode == Mode::Modeled {
        let current = Assumptions::default().describe();
        if p.cost_model != current {
            why.push(format!("cost model: made by `{}`, the current model is `{}`", p.cost_model, current));
        }
        if why.is_empty() {
            why.extend(regenerate(&cfg, text).unwrap_or_default());
        }
    }
    if !why.is_empty() {
        return Err(TuneError::Stale { path: path.into(), reasons: why });
    }
    Ok(CheckReport {
        what: format!("{}/{} ({})", p.gpu, p.model, p.mode),
        summary: format!(
            "{} buckets, {} candidates, {} pruned; generator {}, spec names and hashes current",
            cfg.choices.len(),
            cfg.space.variants.len(),
            cfg.space.pruned.len(),
            p.generator
        ),
    })
}

/// Runs the cost model again for a modeled config and lists the differences (empty: identical file).
fn regenerate(cfg: &TunedConfig, text: &str) -> Option<Vec<String>> {
    let g = gpu::find(&cfg.provenance.gpu)?;
    let mut contexts: Vec<u64> = cfg.choices.iter().map(|c| c.context).collect();
    contexts.sort_unstable();
    contexts.dedup();
    let mut batches: Vec<u32> = cfg.choices.iter().map(|c| c.batch).collect();
    batches.sort_unstable();
    batches.dedup();
    let model = ModelChoice { name: cfg.provenance.model.clone(), shape: cfg.model.clone(), source: String::new() };
    // The request that reproduces the recorded command line.
    let model_arg =
        crate::command_flag(&cfg.provenance.command, "--model").unwrap_or(&cfg.provenance.model).to_string();
    let mode = if cfg.provenance.command.contains("--mode modeled") { ModeArg::Modeled } else { ModeArg::Auto };
    let req = Request {
        gpu: g.name.clone(),
        model: model_arg,
        contexts,
        batches,
        time_budget: None,
        mode,
        progress: false,
        nvrtc: false,
        budgets: crate::Budgets::from_command(&cfg.provenance.command),
    };
    let compiler = if cfg.provenance.nvrtc == "none" {
        Compiler::None
    } else {
        Compiler::Recorded { version: cfg.provenance.nvrtc.clone(), figures: recorded_figures(cfg) }
    };
    let mut out = match crate::modeled(&g, &model, &req, compiler) {
        Ok(o) => o,
        Err(e) => return Some(vec![format!("re-running the cost model failed: {e}")]),
    };
    out.config.provenance.hga_version = cfg.provenance.hga_version.clone();
    let fresh = crate::output::render(&out.config);
    if fresh == text {
        return Some(vec![]);
    }
    let mut why = Vec::new();
    if routing_changed(cfg, &out.config) {
        why.push("routing: the spec language's reference routing changed".into());
    }
    for (old, new) in cfg.choices.iter().zip(&out.config.choices) {
        if old.pick != new.pick || old.time_us != new.time_us {
            why.push(format!(
                "choice context={} batch={}: recorded {} at {} us, the cost model now gives {} at {} us",
                buckets::fmt_context(old.context),
                old.batch,
                short_name(&old.pick.kernel),
                old.time_us,
                short_name(&new.pick.kernel),
                new.time_us
            ));
        }
    }
    if cfg.space != out.config.space {
        why.push(format!(
            "space: {} candidates / {} pruned recorded, the current space has {} / {}",
            cfg.space.variants.len(),
            cfg.space.pruned.len(),
            out.config.space.variants.len(),
            out.config.space.pruned.len()
        ));
    }
    if why.is_empty() {
        why.push(format!(
            "the file differs from what `{}` writes now (figures or layout); run it again",
            cfg.provenance.command
        ));
    }
    Some(why)
}

fn routing_changed(a: &TunedConfig, b: &TunedConfig) -> bool {
    a.routing != b.routing
}

/// Checks a file.
pub fn check_file(path: &std::path::Path) -> Result<CheckReport, TuneError> {
    let text = std::fs::read_to_string(path).map_err(|source| TuneError::Config {
        path: path.display().to_string(),
        source: hga_dsl::tuned::TunedError::Io { path: path.display().to_string(), source },
    })?;
    check_text(&path.display().to_string(), &text)
}

/// The NVRTC figures behind a modeled config's pruned entries, read back from their reasons.
fn recorded_figures(cfg: &TunedConfig) -> HashMap<String, Result<Resources, String>> {
    let num_before = |s: &str, tail: &str| -> Option<u32> {
        let head = &s[..s.find(tail)?];
        head.rsplit(' ').next()?.parse().ok()
    };
    let mut out = HashMap::new();
    for p in &cfg.space.pruned {
        let r = &p.reason;
        let fig = if let Some(e) = r.strip_prefix("does not compile: ").filter(|e| e.starts_with("(NVRTC)")) {
            Some(Err(e.to_string()))
        } else if r.starts_with("spills ") && r.contains("(NVRTC;") {
            let spill = num_before(r, " B to local memory");
            let regs = num_before(r, " registers per thread");
            spill
                .zip(regs)
                .map(|(spill_bytes, regs_per_thread)| Ok(Resources { regs_per_thread, smem_bytes: 0, spill_bytes }))
        } else if r.contains("B of shared memory per block (NVRTC)") {
            num_before(r, " B of shared memory per block")
                .map(|smem_bytes| Ok(Resources { regs_per_thread: 0, smem_bytes, spill_bytes: 0 }))
        } else {
            None
        };
        if let Some(f) = fig {
            out.insert(p.variant.clone(), f);
        }
    }
    out
}
