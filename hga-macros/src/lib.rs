//! # hga-macros: declare HGA variants in Rust source
//!
//! [`variants!`] declares the variants an engine ships — model shape, routing and kernel parameters —
//! checks them when the crate compiles, and embeds each one's canonical spec, variant key, content
//! hash and generated CUDA source, so the engine ships without generating at run time.
//!
//! The macro is a thin shim over `hga-dsl`: it renders its tokens to the TOML form, parses that with
//! `hga-dsl`'s parser ([`hga_dsl::macro_support::parse_spec`], the same grammar as
//! [`hga_dsl::Spec::parse_toml`]) and checks it with [`hga_dsl::Spec::validate`]. Every error is a
//! compile error at the tokens it is about, with the validator's message, and all of them are reported
//! at once.
//!
//! The crate that uses the macro depends on `hga-dsl` (the expansion names `::hga_dsl`).

mod check;
mod expand;
mod render;
mod syntax;

use proc_macro::TokenStream;

/// Declares HGA variants as constants of type [`hga_dsl::macro_support::DeclaredVariant`].
///
/// # Syntax
///
/// Each declaration is `attributes visibility NAME { spec }`; one invocation holds any number. The
/// spec is the TOML form written as tokens:
///
/// - `[model]`, `[routing]`, `[kernel]` (and dotted `[model.rope_scaling]`) start a section, and the
///   `key = value` pairs after a header belong to it, as in TOML; dotted keys (`routing.top_chunks = 8`
///   before any header) work too. Nothing separates pairs (tokens have no newlines); a `,` or `;` after
///   one is allowed.
/// - Values are TOML values in Rust spelling: integers (`128`, `1_000_000`), floats (`1e6`, `8.0`),
///   `"strings"`, `true`/`false`, arrays `[..]`, inline tables `{ key = value, .. }`. Keys are names
///   (keywords too: `type = "llama3"`) or `"quoted"`. Literal suffixes (`32u32`) are errors: the
///   parser gives each field its type.
/// - `model = preset("qwen3-30b")`, before any header, takes the whole `[model]` section from
///   [`hga_dsl::presets`] (names and aliases as `presets::find` accepts them).
/// - `[routing]` and `[kernel]` may be left out: their fields default as in the TOML form.
///
/// # Expansion
///
/// For `pub NAME { .. }`: `pub const NAME: DeclaredVariant`, documented with its key, hash and
/// canonical TOML. [`key`], [`hash`], [`toml`] and [`cuda_source`] are `const fn`s returning
/// `&'static str`, usable in constants. [`spec`] returns `&'static ValidSpec`: `ValidSpec`'s fields
/// are private (only [`Spec::validate`] makes one), so it is parsed from the embedded canonical TOML on
/// first use and kept in a `OnceLock`. That cannot fail: the macro validated this very text with the
/// same `hga-dsl` (the canonical TOML round-trips), and a content-hash check at that point turns the
/// one way it could — a different `hga-dsl` at run time — into a clear panic instead of a wrong spec.
///
/// [`key`]: hga_dsl::macro_support::DeclaredVariant::key
/// [`hash`]: hga_dsl::macro_support::DeclaredVariant::hash
/// [`toml`]: hga_dsl::macro_support::DeclaredVariant::toml
/// [`cuda_source`]: hga_dsl::macro_support::DeclaredVariant::cuda_source
/// [`spec`]: hga_dsl::macro_support::DeclaredVariant::spec
/// [`Spec::validate`]: hga_dsl::Spec::validate
///
/// # Errors
///
/// Compile errors, all reported together, each at the offending tokens: shape errors (`q_heads: 32`,
/// an unquoted string), unknown fields and sections, wrong types, bad enum values, duplicate or
/// missing fields, unknown presets (from the parser), and every rule [`Spec::validate`] checks, with
/// its message (`model.q_heads = 30: must be a multiple of model.kv_heads (4)`), at the value that
/// breaks it.
///
/// # Example
///
/// ```
/// use hga_macros::variants;
///
/// variants! {
///     /// Qwen3-30B-A3B with the reference router and untuned kernels.
///     pub QWEN3_30B { model = preset("qwen3-30b") }
///
///     /// A Llama 3.1 8B layout written out, with a tighter budget and shared routing.
///     pub LLAMA_SHARED {
///         [model]
///         q_heads = 32
///         kv_heads = 8
///         head_dim = 128
///         rope_theta = 5e5
///         rope_scaling = { type = "llama3", factor = 8.0, low_freq_factor = 1.0, high_freq_factor = 4.0,
///                          original_max_position = 8192 }
///         [routing]
///         top_chunks = 8
///         top_groups = 16
///         sharing = "per_kv_head"
///         [kernel]
///         threads = 256
///     }
/// }
///
/// // Key and hash are `&'static str` constants.
/// const KEY: &str = QWEN3_30B.key();
/// assert!(KEY.starts_with("decode_bf16_q32_kv4_d128"));
/// assert_eq!(QWEN3_30B.spec().gqa(), 8);
/// assert_eq!(LLAMA_SHARED.spec().routing().top_chunks, 8);
/// // The same as building the spec by hand.
/// let by_hand = hga_dsl::Spec::new(hga_dsl::presets::find("qwen3-30b").unwrap().shape).validate().unwrap();
/// assert_eq!(QWEN3_30B.hash(), by_hand.content_hash());
/// assert!(QWEN3_30B.cuda_source().contains("hga_attend"));
/// ```
///
/// An invalid spec does not compile:
///
/// ```compile_fail
/// hga_macros::variants! {
///     pub BAD {
///         model = preset("qwen3-8b")
///         [routing]
///         chunk = 64
///         group = 24 // must divide routing.chunk (64)
///     }
/// }
/// ```
#[proc_macro]
pub fn variants(input: TokenStream) -> TokenStream {
    let decls = match syn::parse::<syntax::Declarations>(input) {
        Ok(d) => d,
        Err(e) => return e.to_compile_error().into(),
    };
    let mut out = proc_macro2::TokenStream::new();
    for decl in &decls.0 {
        match check::check(decl) {
            Ok(valid) => out.extend(expand::expand(decl, &valid)),
            Err(errors) => {
                for e in errors {
                    out.extend(e.to_compile_error());
                }
                // A stand-in keeps uses of the name from adding "cannot find value" errors; the crate
                // does not compile, so it never runs.
                let (vis, name) = (&decl.vis, &decl.name);
                out.extend(quote::quote! {
                    #vis const #name: ::hga_dsl::macro_support::DeclaredVariant =
                        ::hga_dsl::macro_support::DeclaredVariant::__from_macro("", "", "", "", "", || {
                            ::core::unreachable!()
                        });
                });
            }
        }
    }
    out.into()
}
