//! # hga-dsl: the HGA spec language
//!
//! Describes one Hierarchical Global Attention variant: the model's head layout and RoPE
//! ([`ModelShape`]), the router ([`Routing`]) and the kernels' tile choices ([`KernelParams`]).
//! Users write it as TOML (checked into their repositories) or build it in Rust; both go through
//! [`Spec::validate`], the single gate to a [`ValidSpec`], which cannot be invalid and names itself
//! with a stable [`ValidSpec::variant_key`] and [`ValidSpec::content_hash`].
//!
//! ```
//! use hga_dsl::Spec;
//! let spec = Spec::from_toml(r#"
//!     [model]
//!     q_heads = 32
//!     kv_heads = 4
//!     head_dim = 128
//!     rope_theta = 1e6
//!     [routing]
//!     top_chunks = 16
//!     top_groups = 32
//! "#).unwrap();
//! assert_eq!(spec.gqa(), 8);
//! assert!(spec.variant_key().starts_with("decode_bf16_q32_kv4_d128"));
//! let bad = Spec::from_toml("[model]\nq_heads = 30\nkv_heads = 4\nhead_dim = 128\nrope_theta = 1e6\n");
//! assert!(bad.unwrap_err().to_string().contains("model.q_heads = 30: must be a multiple of model.kv_heads (4)"));
//! ```
#![warn(missing_docs)]

pub mod codegen;
pub mod error;
pub mod hf;
pub mod kernel;
mod key;
pub mod macro_support;
pub mod model;
pub mod presets;
pub mod rope;
pub mod routing;
pub mod spec;
pub mod tuned;

pub use error::{SpecError, Violation};
pub use hf::HfModel;
pub use kernel::KernelParams;
pub use model::{DType, ModelShape, RopeScaling, RopeStyle};
pub use presets::ModelPreset;
pub use rope::Rope;
pub use routing::{Routing, ScoreKind, Sharing};
pub use spec::{Spec, ValidSpec};
