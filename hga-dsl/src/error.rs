//! Validation and parse errors. Every violation names the field, the offending value and the rule.

use std::fmt;

/// One broken rule: `field = value: rule`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Dotted path of the field in the TOML form, e.g. `routing.group`.
    pub field: String,
    /// The offending value as written.
    pub value: String,
    /// The rule it breaks, in words, with the allowed range.
    pub rule: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.field, self.value, self.rule)
    }
}

/// Errors from reading or validating a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The spec was read but breaks one or more rules (all of them are listed).
    #[error("invalid HGA spec: {}", join(.0))]
    Invalid(Vec<Violation>),
    /// The TOML text could not be parsed (syntax, unknown field, wrong type).
    #[error("cannot parse HGA spec: {message}")]
    Parse {
        /// The parser's message, including line and column.
        message: String,
        /// Byte range in the input the error points at, when known.
        span: Option<std::ops::Range<usize>>,
    },
    /// A Hugging Face `config.json` uses something this version does not support.
    #[error("unsupported model config: {field}: {reason}")]
    UnsupportedConfig {
        /// The JSON field.
        field: String,
        /// Why it is unsupported.
        reason: String,
    },
    /// Unknown preset name.
    #[error("unknown model preset `{name}`; known presets: {known}")]
    UnknownPreset {
        /// The name asked for.
        name: String,
        /// Comma-separated known names.
        known: String,
    },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn join(v: &[Violation]) -> String {
    v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("; ")
}

impl SpecError {
    /// The violations, if this is a validation error.
    pub fn violations(&self) -> &[Violation] {
        match self {
            SpecError::Invalid(v) => v,
            _ => &[],
        }
    }
}

/// Collects violations during validation.
#[derive(Default)]
pub(crate) struct Checker {
    pub(crate) found: Vec<Violation>,
}

impl Checker {
    pub(crate) fn check(&mut self, ok: bool, field: &str, value: impl fmt::Display, rule: impl Into<String>) {
        if !ok {
            self.found.push(Violation { field: field.to_string(), value: value.to_string(), rule: rule.into() });
        }
    }

    pub(crate) fn finish(self) -> Result<(), SpecError> {
        if self.found.is_empty() {
            Ok(())
        } else {
            Err(SpecError::Invalid(self.found))
        }
    }
}
