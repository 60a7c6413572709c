//! # hga-runtime: what engines link
//!
//! Runs Hierarchical Global Attention for an inference engine. Today it holds the CPU backend
//! ([`cpu`]), which has exactly the reference semantics of DESIGN.md §1 and is the oracle for the GPU
//! kernels; dense causal attention ([`cpu::dense_causal`]) is the oracle for HGA at full budget.
//!
//! An engine keeps one [`cpu::LayerCache`] per (sequence, layer), appends each new token's post-RoPE
//! keys and values, and asks for the attention output of the newest query:
//!
//! ```
//! use hga_dsl::{presets, Spec};
//! use hga_runtime::cpu::{HeadLayout, LayerCache};
//!
//! let spec = Spec::new(presets::find("tiny-code")?.shape).validate()?;
//! let l = HeadLayout::of(&spec);
//! let mut cache = LayerCache::new(spec);
//! let (k, v) = (vec![0.1f32; l.kv_heads * l.head_dim], vec![1.0f32; l.kv_heads * l.head_dim]);
//! let q = vec![0.2f32; l.q_heads * l.head_dim];
//! let mut o = vec![0.0f32; l.q_heads * l.head_dim];
//! for _step in 0..3 {
//!     cache.append(&k, &v)?;  // this step's token, all KV heads, keys after RoPE
//!     cache.decode(&q, &mut o)?; // attention of this step's query, all query heads
//! }
//! assert!(o.iter().all(|x| (x - 1.0).abs() < 1e-6));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod engine;
pub mod error;
#[cfg(feature = "cuda")]
pub mod jit;
pub mod offload;

pub use error::RuntimeError;
