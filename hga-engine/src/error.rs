//! Errors of the engine: each names the file, field or tensor at fault and what was expected.

use std::path::PathBuf;

/// Everything that can go wrong loading a checkpoint, reading data or running the model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A file could not be read or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file (config, reference logits) could not be parsed.
    #[error("cannot parse {path}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// `config.json` lacks a field, or has a value this engine does not support.
    #[error("config.json: {field}: {reason}")]
    Config {
        /// The JSON field.
        field: String,
        /// What is wrong, with what is supported.
        reason: String,
    },
    /// The safetensors file is malformed.
    #[error("cannot read safetensors {path}: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The reader's message.
        message: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("tensor {name} is missing from the checkpoint")]
    MissingTensor {
        /// Its name.
        name: String,
    },
    /// A tensor has another shape than the config implies.
    #[error("tensor {name} has shape {got:?}; config.json implies {expected:?}")]
    TensorShape {
        /// Its name.
        name: String,
        /// The shape implied by config.json.
        expected: Vec<usize>,
        /// The stored shape.
        got: Vec<usize>,
    },
    /// A tensor has an element type this engine does not read.
    #[error("tensor {name} has dtype {dtype}; supported: BF16, F16, F32")]
    TensorDtype {
        /// Its name.
        name: String,
        /// The stored dtype.
        dtype: String,
    },
    /// A routing spec (TOML file or flags) is invalid or does not fit the checkpoint.
    #[error("routing spec {origin}: {source}")]
    Spec {
        /// Where the spec came from: a file path or `command-line flags`.
        origin: String,
        /// The spec language's error, naming the field and the rule.
        #[source]
        source: hga_dsl::SpecError,
    },
    /// A routing spec's `[model]` section disagrees with the checkpoint.
    #[error("routing spec {origin}: model.{field} = {spec_value} but the checkpoint has {model_value}")]
    SpecModelMismatch {
        /// Where the spec came from.
        origin: String,
        /// The differing field of `[model]`.
        field: &'static str,
        /// The spec's value.
        spec_value: String,
        /// The checkpoint's value.
        model_value: String,
    },
    /// An argument is outside its allowed range.
    #[error("{field} = {value}: {rule}")]
    Argument {
        /// The argument (as spelled on the command line).
        field: &'static str,
        /// The value given.
        value: String,
        /// The allowed range, in words.
        rule: String,
    },
    /// The attention backend rejected its input.
    #[error("attention: {0}")]
    Runtime(#[from] hga_runtime::RuntimeError),
}

impl EngineError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io { path: path.into(), source }
    }

    /// An [`EngineError::Argument`].
    pub fn argument(field: &'static str, value: impl ToString, rule: impl Into<String>) -> Self {
        EngineError::Argument { field, value: value.to_string(), rule: rule.into() }
    }
}
