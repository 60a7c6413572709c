//! A small CPU engine for Qwen3-architecture checkpoints that takes attention from `hga-runtime`:
//! [`Model`] (load and forward pass), [`SequenceAttention`] backends ([`DenseAttention`],
//! [`HgaAttention`]), [`eval`] (teacher-forced NLL per position bucket), [`generate`] (greedy) and
//! [`mod@reference`] (reproducing a checkpoint's reference logits).
//!
//! ```no_run
//! use hga_engine::{AttentionKind, Model, PositionStats};
//! let model = Model::load("../shared/models/tiny-code".as_ref())?;
//! let tokens: Vec<u32> = b"import networkx as nx\n".iter().map(|&b| b as u32).collect();
//! let mut seq = AttentionKind::Dense.new_sequence(model.config())?;
//! let mut stats = vec![PositionStats::default(); tokens.len()];
//! let logits = model.forward(&tokens, seq.as_mut(), &mut stats)?; // [n][vocab]
//! # Ok::<(), hga_engine::EngineError>(())
//! ```
//!
//! The crate README follows.
//!
#![doc = include_str!("../README.md")]
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

pub use attention::{
    AttentionKind, BackendChoice, CacheAttention, DenseAttention, HgaAttention, PositionStats, SequenceAttention,
    SpeculateFrom, SpeculationStats,
};
pub use config::ModelConfig;
pub use error::EngineError;
pub use model::Model;
