//! # hga-engine: run a real checkpoint with HGA attention and measure the gap to dense
//!
//! A small CPU engine for Hugging Face Qwen3-architecture checkpoints (`config.json` +
//! `model.safetensors`, bf16/f16/f32 weights widened to f32 at load). Matrix products go through
//! `matrixmultiply`, parallelism through rayon, and attention through the [`SequenceAttention`] trait:
//! dense ([`DenseAttention`], blocked GEMMs with an online softmax) or HGA with any routing spec.
//!
//! ```no_run
//! use hga_engine::{AttentionKind, Model, PositionStats};
//! let model = Model::load("../shared/models/tiny-code".as_ref())?;
//! let tokens: Vec<u32> = b"import networkx as nx\n".iter().map(|&b| b as u32).collect();
//! let mut seq = AttentionKind::Dense.new_sequence(model.config());
//! let mut stats = vec![PositionStats::default(); tokens.len()];
//! let logits = model.forward(&tokens, seq.as_mut(), &mut stats)?; // [n][vocab]
//! # Ok::<(), hga_engine::EngineError>(())
//! ```
#![warn(missing_docs)]

pub mod attention;
pub mod config;
pub mod error;
pub mod eval;
pub mod generate;
mod linalg;
pub mod model;
pub mod reference;
pub mod routing;
pub mod weights;

pub use attention::{AttentionKind, DenseAttention, HgaAttention, PositionStats, SequenceAttention};
pub use config::ModelConfig;
pub use error::EngineError;
pub use model::Model;
