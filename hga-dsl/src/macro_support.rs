//! Support for `hga-macros`: the parse entry point the macro uses to point errors at tokens, and
//! [`DeclaredVariant`], the type its declarations expand to.
//!
//! The macro renders its tokens to the TOML form and parses them with [`parse_spec`] — the same serde
//! grammar as [`Spec::parse_toml`] — so there is one grammar and one set of rules.

use crate::error::SpecError;
use crate::presets;
use crate::spec::{Spec, ValidSpec};
use std::ops::Range;

/// A parse failure with the parser's bare message (no excerpt of the text) and the byte range it
/// points at, so the macro can map it back to the tokens that produced those bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseProblem {
    /// What is wrong, e.g. ``unknown field `bogus`, expected one of ...``.
    pub message: String,
    /// Byte range of the input the parser points at, when it knows one.
    pub span: Option<Range<usize>>,
}

/// Parses the TOML form without validating, like [`Spec::parse_toml`], but keeps the message and the
/// span apart.
pub fn parse_spec(text: &str) -> Result<Spec, ParseProblem> {
    toml::from_str(text).map_err(|e| ParseProblem { message: e.message().trim().to_string(), span: e.span() })
}

/// The `[model]` table of a preset as a TOML inline table (`{ q_heads = 32, ... }`).
pub fn preset_model_inline(name: &str) -> Result<String, SpecError> {
    let preset = presets::find(name)?;
    let value = toml::Value::try_from(&preset.shape)
        .map_err(|e| SpecError::Parse { message: format!("preset `{name}` does not serialize: {e}"), span: None })?;
    Ok(value.to_string())
}

/// A variant declared with `hga_macros::variants!`: validated when the crate was compiled, embedded
/// as its canonical TOML with its variant key, content hash and generated CUDA source.
///
/// All fields are `&'static str` so a declaration is a `const` usable in const contexts (e.g.
/// `const KEY: &str = QWEN3_30B.key();`); the [`ValidSpec`] is built on first use by [`Self::spec`].
#[derive(Debug, Clone, Copy)]
pub struct DeclaredVariant {
    name: &'static str,
    key: &'static str,
    hash: &'static str,
    toml: &'static str,
    cuda_source: &'static str,
    spec: fn() -> &'static ValidSpec,
}

impl DeclaredVariant {
    /// Used by the macro's expansion only: the strings must come from one validated spec.
    #[doc(hidden)]
    pub const fn __from_macro(
        name: &'static str,
        key: &'static str,
        hash: &'static str,
        toml: &'static str,
        cuda_source: &'static str,
        spec: fn() -> &'static ValidSpec,
    ) -> Self {
        DeclaredVariant { name, key, hash, toml, cuda_source, spec }
    }

    /// The name the variant was declared under (the constant's name, e.g. `QWEN3_30B`).
    pub const fn name(&self) -> &'static str {
        self.name
    }
    /// [`ValidSpec::variant_key`] of the spec.
    pub const fn key(&self) -> &'static str {
        self.key
    }
    /// [`ValidSpec::content_hash`] of the spec.
    pub const fn hash(&self) -> &'static str {
        self.hash
    }
    /// The canonical TOML form ([`ValidSpec::to_toml`]) of the spec.
    pub const fn toml(&self) -> &'static str {
        self.toml
    }
    /// The generated CUDA source of the variant's kernels.
    pub const fn cuda_source(&self) -> &'static str {
        self.cuda_source
    }
    /// The validated spec, parsed from [`Self::toml`] on first use and kept for the program's life.
    pub fn spec(&self) -> &'static ValidSpec {
        (self.spec)()
    }
}

/// Two declarations are equal when they declare the same spec under the same name.
impl PartialEq for DeclaredVariant {
    fn eq(&self, other: &Self) -> bool {
        (self.name, self.hash, self.toml) == (other.name, other.hash, other.toml)
    }
}

impl Eq for DeclaredVariant {}

/// Used by the macro's expansion only: rebuilds the spec from the canonical TOML the macro validated.
///
/// It cannot fail while the macro and the program link the same `hga-dsl`: [`ValidSpec::to_toml`]
/// round-trips through [`Spec::from_toml`] and the rules are the same code. The hash check catches the
/// one way it could (a different `hga-dsl` at compile time and at run time) instead of running kernels
/// for a spec other than the one declared.
#[doc(hidden)]
pub fn __spec_from_macro(toml: &str, hash: &str) -> ValidSpec {
    let spec = Spec::from_toml(toml)
        .unwrap_or_else(|e| panic!("hga_macros::variants!: the spec it validated no longer validates: {e}"));
    assert_eq!(
        spec.content_hash(),
        hash,
        "hga_macros::variants!: content hash differs between compile time and run time (hga-dsl versions differ)"
    );
    spec
}
