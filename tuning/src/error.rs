//! The tuner's errors. Bad input (arguments, unknown names, unreadable model or config files, asking to
//! measure a GPU that is not present) exits with code 2; failures of the work itself with code 1.

use hga_dsl::tuned::TunedError;
use hga_dsl::SpecError;

/// Everything the tuner reports instead of panicking.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// An argument's value breaks its rule.
    #[error("{arg} {value}: {rule}")]
    BadArg {
        /// The flag.
        arg: &'static str,
        /// The value given.
        value: String,
        /// The rule, with the allowed range.
        rule: String,
    },
    /// `--gpu` names no preset.
    #[error("--gpu {name}: unknown GPU; known: {known}, or `auto` (the present device); see --list-gpus")]
    UnknownGpu {
        /// The name given.
        name: String,
        /// Preset names.
        known: String,
    },
    /// `--model` is neither a preset nor a readable `config.json`.
    #[error("--model {arg}: {source}")]
    Model {
        /// The value given.
        arg: String,
        /// Why.
        #[source]
        source: SpecError,
    },
    /// `--gpu auto` or `--mode measured` without a usable device.
    #[error("no CUDA device: {reason}")]
    NoDevice {
        /// What is missing.
        reason: String,
    },
    /// Measuring a GPU other than the one present.
    #[error(
        "cannot measure {asked}: the GPU present is {present}. Run on a machine with a {asked}, or use --mode modeled \
         (the cost model of the {asked}), or --gpu auto to measure the {present}"
    )]
    WrongDevice {
        /// The GPU asked for.
        asked: String,
        /// The GPU present.
        present: String,
    },
    /// Measured mode asked for but this build cannot measure.
    #[error("cannot measure: {reason}")]
    CannotMeasure {
        /// Why.
        reason: String,
    },
    /// A tuned config file that cannot be read.
    #[error("{path}: {source}")]
    Config {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: TunedError,
    },
    /// A config that parses but no longer matches the generator, the spec rules or the GPU.
    #[error("{path} is stale:\n  - {}", .reasons.join("\n  - "))]
    Stale {
        /// The file.
        path: String,
        /// Every reason, one per line.
        reasons: Vec<String>,
    },
    /// A measurement failed as a whole.
    #[error("measurement failed: {0}")]
    Measure(String),
    /// Writing output failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl TuneError {
    /// Process exit code: 2 for bad input, 1 for failures of the work.
    pub fn exit_code(&self) -> i32 {
        match self {
            TuneError::BadArg { .. }
            | TuneError::UnknownGpu { .. }
            | TuneError::Model { .. }
            | TuneError::NoDevice { .. }
            | TuneError::WrongDevice { .. }
            | TuneError::CannotMeasure { .. }
            | TuneError::Config { .. } => 2,
            TuneError::Stale { .. } | TuneError::Measure(_) | TuneError::Io { .. } => 1,
        }
    }
}
