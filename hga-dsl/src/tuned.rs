//! Tuned configs: the autotuner's output file format and how the runtime picks kernel parameters from it.
//!
//! One file per (GPU, model), written by `cargo run -p tuning -- --gpu NAME --model PRESET` and checked in
//! under `kernels-generated/configs/`. It records, per (context bucket, batch bucket), the chosen
//! [`KernelParams`] with the variant key and content hash of the resulting spec, the time of the choice and
//! of the runner-up, and (in `[[figures]]`) every candidate's time; plus provenance: GPU, arch, driver and
//! NVRTC versions, hga version, and whether the times were `measured` on the GPU or `modeled` by the
//! tuner's analytic cost model.
//!
//! [`resolve`] picks parameters for a (GPU, spec, context, batch): an exact bucket of a matching config,
//! else the nearest bucket of that config, else the default of a config for the same architecture, else
//! the built-in default, and says which one it used ([`Source`]).
//!
//! ```
//! use hga_dsl::tuned::{resolve, Query, Source};
//! use hga_dsl::{presets, Spec};
//! let spec = Spec::new(presets::find("qwen3-30b")?.shape).validate()?;
//! let q = Query { gpu: "rtx5090", arch: "sm_120", spec: &spec, context: 65536, batch: 1 };
//! let r = resolve(&[], &q);
//! assert_eq!(r.source, Source::BuiltIn);
//! assert_eq!(r.spec.kernel(), spec.kernel());
//! # Ok::<(), hga_dsl::SpecError>(())
//! ```

use crate::kernel::KernelParams;
use crate::model::ModelShape;
use crate::routing::Routing;
use crate::spec::{Spec, ValidSpec};
use crate::SpecError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Version of this file format; a file with another version is rejected (not guessed at).
pub const FORMAT_VERSION: u32 = 1;

/// How the times in a config were obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Compiled, checked against the CPU backend and timed with CUDA events on the named GPU.
    Measured,
    /// Ranked by the tuner's analytic cost model of the named GPU; no GPU was used.
    Modeled,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Measured => "measured",
            Mode::Modeled => "modeled",
        })
    }
}

/// Where a config came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// `measured` or `modeled`.
    pub mode: Mode,
    /// GPU preset name (`--gpu` value), e.g. `rtx5090`.
    pub gpu: String,
    /// The GPU's marketing name, e.g. `NVIDIA GeForce RTX 5090` (as the driver reports it when measured).
    pub gpu_name: String,
    /// Compute architecture, e.g. `sm_120`.
    pub arch: String,
    /// CUDA driver version (`13.0`), or `none` when modeled without a driver.
    pub driver: String,
    /// NVRTC version (`13.0`), or `none`.
    pub nvrtc: String,
    /// Version of the hga crates that wrote the file.
    pub hga_version: String,
    /// Version of the CUDA code generator whose kernels were timed or modeled, or `none`.
    pub generator: String,
    /// Model preset name, or the `config.json` file name for a model read from a file.
    pub model: String,
    /// Version and assumptions of the cost model (modeled), or `none` (measured).
    pub cost_model: String,
    /// The command that writes this file again.
    pub command: String,
}

/// One chosen variant: the kernel parameters and the names of the resulting spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pick {
    /// The kernel parameters.
    pub kernel: KernelParams,
    /// [`ValidSpec::variant_key`] of (model, routing, kernel).
    pub variant_key: String,
    /// [`ValidSpec::content_hash`] of (model, routing, kernel).
    pub content_hash: String,
}

/// The choice for one (context bucket, batch bucket).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choice {
    /// Context length of the bucket (tokens).
    pub context: u64,
    /// Batch size of the bucket (sequences).
    pub batch: u32,
    /// The winner.
    #[serde(flatten)]
    pub pick: Pick,
    /// Decode-step time of one layer with the winner, µs.
    pub time_us: f64,
    /// Short name (`th128_sk4_tt64_v8`) of the runner-up, or `none` when there was one candidate.
    pub runner_up: String,
    /// The runner-up's time, µs (equal to `time_us` when there is none).
    pub runner_up_us: f64,
    /// `runner_up_us / time_us - 1`: how clearly the winner won.
    pub margin: f64,
    /// Time of the built-in default parameters ([`KernelParams::default`]) in this bucket, µs.
    pub default_us: f64,
    /// Candidates that were timed (or modeled) in this bucket.
    pub timed: u32,
}

/// Every candidate's time in one bucket, in the order of [`Space::variants`]; `nan` = not timed (the
/// reason is in `untimed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Figures {
    /// Context length of the bucket.
    pub context: u64,
    /// Batch size of the bucket.
    pub batch: u32,
    /// µs per candidate.
    pub time_us: Vec<f64>,
    /// `short name: reason` for each candidate without a time (time budget, output mismatch, launch error).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub untimed: Vec<String>,
}

/// A variant excluded before timing, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pruned {
    /// Short name (`th512_sk4_tt128_v8`).
    pub variant: String,
    /// Why (a validation rule, shared memory or registers beyond the GPU's limits, spills).
    pub reason: String,
}

/// The searched space: the candidates (in the order of [`Figures::time_us`]) and what was pruned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Space {
    /// Short names of the candidates.
    pub variants: Vec<String>,
    /// Pruned variants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<Pruned>,
}

/// A tuned config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunedConfig {
    /// [`FORMAT_VERSION`].
    pub format: u32,
    /// Where it came from.
    pub provenance: Provenance,
    /// The model's attention layout.
    pub model: ModelShape,
    /// The routing the kernels were tuned for.
    pub routing: Routing,
    /// The best single variant over all buckets (least geometric-mean slowdown against each bucket's
    /// winner): what other models on the same architecture fall back to.
    pub default: Pick,
    /// One choice per (context, batch) bucket, sorted by context then batch.
    #[serde(rename = "choice")]
    pub choices: Vec<Choice>,
    /// The searched space.
    pub space: Space,
    /// Every candidate's time per bucket, sorted like `choices`.
    #[serde(rename = "figures", default)]
    pub figures: Vec<Figures>,
}

/// Why a config file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TunedError {
    /// The TOML could not be read as a tuned config.
    #[error("cannot parse tuned config: {0}")]
    Parse(String),
    /// A different format version.
    #[error("tuned config format = {found}: this version reads format {FORMAT_VERSION} only; run the tuner again")]
    Format {
        /// The version in the file.
        found: u32,
    },
    /// The model and routing, or a choice's kernel parameters, break the spec rules.
    #[error("tuned config {what}: {source}")]
    Spec {
        /// Which part (`model/routing`, `choice context=65536 batch=1`, `default`).
        what: String,
        /// The violations.
        #[source]
        source: SpecError,
    },
    /// Reading the file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl TunedConfig {
    /// Parses a config and checks the format version (not the spec rules: see [`TunedConfig::validate`]).
    pub fn from_toml(text: &str) -> Result<TunedConfig, TunedError> {
        // Read the version first so a file of another format says so instead of failing on a field.
        let table: toml::Table = toml::from_str(text).map_err(|e| TunedError::Parse(e.to_string()))?;
        let format = match table.get("format") {
            Some(toml::Value::Integer(v)) => u32::try_from(*v).unwrap_or(u32::MAX),
            Some(other) => return Err(TunedError::Parse(format!("format = {other}: must be an integer"))),
            None => return Err(TunedError::Parse("missing field `format`".into())),
        };
        if format != FORMAT_VERSION {
            return Err(TunedError::Format { found: format });
        }
        toml::from_str(text).map_err(|e| TunedError::Parse(e.to_string()))
    }

    /// Reads and parses a config file.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<TunedConfig, TunedError> {
        let p = path.as_ref();
        let text =
            std::fs::read_to_string(p).map_err(|e| TunedError::Io { path: p.display().to_string(), source: e })?;
        TunedConfig::from_toml(&text)
    }

    /// The TOML text (deterministic: field order is fixed by the types, vectors are written as stored).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a tuned config always serializes")
    }

    /// The model and routing as a spec with the built-in kernel parameters.
    pub fn base_spec(&self) -> Result<ValidSpec, TunedError> {
        Spec::new(self.model.clone())
            .with_routing(self.routing.clone())
            .validate()
            .map_err(|source| TunedError::Spec { what: "model/routing".into(), source })
    }

    /// The validated spec of one pick under this config's model and routing.
    pub fn spec_of(&self, pick: &Pick, what: &str) -> Result<ValidSpec, TunedError> {
        Spec::new(self.model.clone())
            .with_routing(self.routing.clone())
            .with_kernel(pick.kernel.clone())
            .validate()
            .map_err(|source| TunedError::Spec { what: what.to_string(), source })
    }

    /// Checks the spec rules for the model, routing, default and every choice. Names and hashes are
    /// compared by [`TunedConfig::stale_names`].
    pub fn validate(&self) -> Result<(), TunedError> {
        self.base_spec()?;
        self.spec_of(&self.default, "default")?;
        for c in &self.choices {
            self.spec_of(&c.pick, &format!("choice context={} batch={}", c.context, c.batch))?;
        }
        Ok(())
    }

    /// Picks whose recorded variant key or content hash differ from what the current spec rules compute,
    /// as `what: recorded … , current …` lines (empty when all match).
    pub fn stale_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        let picks = std::iter::once(("default".to_string(), &self.default))
            .chain(self.choices.iter().map(|c| (format!("choice context={} batch={}", c.context, c.batch), &c.pick)));
        for (what, pick) in picks {
            match self.spec_of(pick, &what) {
                Err(e) => out.push(e.to_string()),
                Ok(spec) => {
                    if spec.variant_key() != pick.variant_key {
                        out.push(format!(
                            "{what}: variant_key recorded `{}`, current spec rules give `{}`",
                            pick.variant_key,
                            spec.variant_key()
                        ));
                    }
                    if spec.content_hash() != pick.content_hash {
                        out.push(format!(
                            "{what}: content_hash recorded {}, current spec rules give {}",
                            pick.content_hash,
                            spec.content_hash()
                        ));
                    }
                }
            }
        }
        out
    }

    /// Whether this config was tuned for the model layout and routing of `spec` (kernel parameters aside).
    pub fn matches_spec(&self, spec: &ValidSpec) -> bool {
        self.base_spec().is_ok_and(|b| b.model() == spec.model() && b.routing() == spec.routing())
    }
}

/// The short name of kernel parameters, as at the end of a variant key: `th128_sk4_tt64_v8`.
pub fn short_name(k: &KernelParams) -> String {
    format!("th{}_sk{}_tt{}_v{}", k.threads, k.split_k, k.tile_tokens, k.vec_width)
}

/// What the runtime asks for.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// GPU preset name (`h200`) of the present device.
    pub gpu: &'a str,
    /// Its architecture (`sm_90`).
    pub arch: &'a str,
    /// The model layout and routing in use (its kernel parameters are replaced).
    pub spec: &'a ValidSpec,
    /// Current context length.
    pub context: u64,
    /// Current batch size.
    pub batch: u32,
}

/// Which rule of the resolution order produced the parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A config for this GPU and model had exactly this (context, batch) bucket.
    Exact {
        /// The config's `gpu/model`.
        config: String,
        /// measured or modeled.
        mode: Mode,
    },
    /// A config for this GPU and model; the nearest bucket was used.
    NearestBucket {
        /// The config's `gpu/model`.
        config: String,
        /// measured or modeled.
        mode: Mode,
        /// The bucket's context.
        context: u64,
        /// The bucket's batch.
        batch: u32,
    },
    /// No config for this GPU, model and routing; the exact or nearest bucket of a config for this GPU
    /// and model layout tuned for other routing budgets.
    OtherRouting {
        /// The config's `gpu/model`.
        config: String,
        /// measured or modeled.
        mode: Mode,
        /// The bucket's context.
        context: u64,
        /// The bucket's batch.
        batch: u32,
    },
    /// No config for this GPU and model; the default of a config for the same architecture.
    ArchDefault {
        /// The config's `gpu/model`.
        config: String,
        /// measured or modeled.
        mode: Mode,
    },
    /// Nothing applied: [`KernelParams::default`] (or the query's own parameters, should the default not
    /// validate with its routing).
    BuiltIn,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Exact { config, mode } => write!(f, "exact bucket of {config} ({mode})"),
            Source::NearestBucket { config, mode, context, batch } => {
                write!(f, "nearest bucket (context {context}, batch {batch}) of {config} ({mode})")
            }
            Source::OtherRouting { config, mode, context, batch } => {
                write!(
                    f,
                    "bucket (context {context}, batch {batch}) of {config} ({mode}), tuned for other routing budgets"
                )
            }
            Source::ArchDefault { config, mode } => write!(f, "same-arch default of {config} ({mode})"),
            Source::BuiltIn => f.write_str("built-in default"),
        }
    }
}

/// The outcome of [`resolve`].
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The query's spec with the chosen kernel parameters (validated).
    pub spec: ValidSpec,
    /// Where the parameters came from.
    pub source: Source,
}

/// The config's choice for the query's bucket, else its nearest bucket's, whose parameters validate with
/// the query's spec.
fn nearest_pick<'c>(
    c: &'c TunedConfig,
    query: &Query<'_>,
    with: &impl Fn(&KernelParams) -> Option<ValidSpec>,
) -> Option<(&'c Choice, ValidSpec)> {
    let mut near: Vec<&Choice> = c.choices.iter().collect();
    // The exact bucket sorts first (distance 0).
    near.sort_by(|a, b| {
        bucket_distance(a, query.context, query.batch)
            .partial_cmp(&bucket_distance(b, query.context, query.batch))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    near.into_iter().find_map(|ch| with(&ch.pick.kernel).map(|s| (ch, s)))
}

/// Distance of a bucket to the asked (context, batch): log-scale, context first. Ties go to the larger
/// bucket (its parameters have more parallelism, the safer error).
fn bucket_distance(c: &Choice, context: u64, batch: u32) -> (f64, f64, std::cmp::Reverse<u64>, std::cmp::Reverse<u32>) {
    let lc = ((c.context.max(1) as f64) / (context.max(1) as f64)).log2().abs();
    let lb = ((c.batch.max(1) as f64) / (batch.max(1) as f64)).log2().abs();
    (lc, lb, std::cmp::Reverse(c.context), std::cmp::Reverse(c.batch))
}

/// Picks kernel parameters for a query: exact key → nearest bucket → other routing → same-arch default →
/// built-in default.
///
/// A config applies to the exact and nearest rules when its GPU preset name equals `query.gpu` and it was
/// tuned for the query's model layout and routing. Then a config for the same GPU and model layout
/// tuned for other routing budgets gives its exact or nearest bucket's pick (the shapes and contexts
/// are the query's; only the routing's share of the work differs). Configs for the same arch are
/// tried for their `default` pick, those for the same model first (its routing, then others). A pick
/// whose parameters do not validate with the query's spec is skipped, so the result is always a
/// valid spec.
pub fn resolve(configs: &[TunedConfig], query: &Query<'_>) -> Resolved {
    let name = |c: &TunedConfig| format!("{}/{}", c.provenance.gpu, c.provenance.model);
    let with = |k: &KernelParams| query.spec.with_kernel(k.clone()).ok();
    let gpu = query.gpu.to_ascii_lowercase();
    // Configs for the query's model layout: its routing (same_model), or other budgets (other_routing).
    let (mut same_model, mut other_routing): (Vec<&TunedConfig>, Vec<&TunedConfig>) = (Vec::new(), Vec::new());
    for c in configs {
        match c.base_spec() {
            Ok(b) if b.model() == query.spec.model() && b.routing() == query.spec.routing() => same_model.push(c),
            Ok(b) if b.model() == query.spec.model() => other_routing.push(c),
            _ => {}
        }
    }
    let this_gpu = |c: &&TunedConfig| c.provenance.gpu.eq_ignore_ascii_case(&gpu);
    for c in same_model.iter().copied().filter(this_gpu) {
        if let Some((ch, spec)) = nearest_pick(c, query, &with) {
            let (config, mode) = (name(c), c.provenance.mode);
            let source = if ch.context == query.context && ch.batch == query.batch {
                Source::Exact { config, mode }
            } else {
                Source::NearestBucket { config, mode, context: ch.context, batch: ch.batch }
            };
            return Resolved { spec, source };
        }
    }
    for c in other_routing.iter().copied().filter(this_gpu) {
        if let Some((ch, spec)) = nearest_pick(c, query, &with) {
            let source =
                Source::OtherRouting { config: name(c), mode: c.provenance.mode, context: ch.context, batch: ch.batch };
            return Resolved { spec, source };
        }
    }
    let same_arch = |c: &&TunedConfig| c.provenance.arch == query.arch;
    let arch_first =
        same_model.iter().chain(&other_routing).copied().filter(same_arch).chain(configs.iter().filter(same_arch));
    for c in arch_first {
        if let Some(spec) = with(&c.default.kernel) {
            return Resolved { spec, source: Source::ArchDefault { config: name(c), mode: c.provenance.mode } };
        }
    }
    let spec = with(&KernelParams::default()).unwrap_or_else(|| query.spec.clone());
    Resolved { spec, source: Source::BuiltIn }
}
