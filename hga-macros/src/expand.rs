//! The expansion of one validated declaration: a `const` [`DeclaredVariant`] holding the canonical
//! TOML, the variant key, the content hash and the generated CUDA source, and a function that builds
//! the [`ValidSpec`] once.
//!
//! [`DeclaredVariant`]: hga_dsl::macro_support::DeclaredVariant

use crate::syntax::Declaration;
use hga_dsl::{codegen, ValidSpec};
use proc_macro2::TokenStream;
use quote::quote;

/// The items declaring `valid` under the declaration's name.
pub fn expand(decl: &Declaration, valid: &ValidSpec) -> TokenStream {
    let Declaration { attrs, vis, name, .. } = decl;
    let name_str = name.to_string();
    let key = valid.variant_key();
    let hash = valid.content_hash();
    let toml = valid.to_toml();
    let cuda = codegen::generate(valid).source;
    let doc_key = format!(" Variant key: `{key}`; content hash: `{hash}`.");
    let doc_toml = format!(" Canonical spec:\n\n ```toml\n{}\n ```", toml.trim_end());
    quote! {
        #(#attrs)*
        ///
        #[doc = #doc_key]
        ///
        #[doc = #doc_toml]
        #vis const #name: ::hga_dsl::macro_support::DeclaredVariant = {
            // One `OnceLock` per declaration: every copy of the constant points at this function.
            fn spec() -> &'static ::hga_dsl::ValidSpec {
                static SPEC: ::std::sync::OnceLock<::hga_dsl::ValidSpec> = ::std::sync::OnceLock::new();
                SPEC.get_or_init(|| ::hga_dsl::macro_support::__spec_from_macro(#toml, #hash))
            }
            ::hga_dsl::macro_support::DeclaredVariant::__from_macro(#name_str, #key, #hash, #toml, #cuda, spec)
        };
    }
}
