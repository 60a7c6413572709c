//! Checked-in artifacts: tuned configs per GPU and model and the generated CUDA sources of the shipped
//! variants.
//!
//! [`SHIPPED`] lists the variants declared in [`variants`] (one per model preset, default routing and
//! kernel parameters), each with its spec, variant key, content hash and CUDA source embedded at
//! compile time, so an engine can launch them without generating code at run time.
//!
//! ```
//! let v = kernels_generated::QWEN3_30B;
//! assert_eq!(v.spec().gqa(), 8);
//! assert_eq!(kernels_generated::find_by_key(v.key()), Some(&v));
//! ```

use hga_dsl::macro_support::DeclaredVariant;
use hga_dsl::ValidSpec;

pub mod tuned;
pub mod variants;

pub use variants::*;

/// Every shipped variant, in the order of `hga_dsl::presets::all()`.
pub const SHIPPED: &[DeclaredVariant] =
    &[QWEN3_30B, QWEN3_30B_2507, QWEN3_8B, QWEN3_32B, LLAMA3_1_8B, LLAMA3_1_70B, MISTRAL_7B_V0_3, TINY_CODE];

/// The first shipped variant with this variant key.
pub fn find_by_key(key: &str) -> Option<&'static DeclaredVariant> {
    SHIPPED.iter().find(|v| v.key() == key)
}

/// The first shipped variant with this content hash.
pub fn find_by_hash(hash: &str) -> Option<&'static DeclaredVariant> {
    SHIPPED.iter().find(|v| v.hash() == hash)
}

/// The shipped variant of exactly this spec (same content hash), if there is one.
pub fn for_spec(spec: &ValidSpec) -> Option<&'static DeclaredVariant> {
    find_by_hash(&spec.content_hash())
}
