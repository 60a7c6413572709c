//! The checked-in tuned configs (`configs/*.toml`), embedded so that an engine can hand them to the
//! runtime without shipping files:
//!
//! ```
//! let configs = kernels_generated::tuned::all().unwrap();
//! assert!(configs.iter().any(|c| c.provenance.gpu == "h200" && c.provenance.model == "qwen3-30b"));
//! // hga_runtime::engine::CacheConfig::new(spec, layers, max_len).with_tuned(configs)
//! ```

use hga_dsl::tuned::{TunedConfig, TunedError};

/// (file name, text) of every config under `kernels-generated/configs/`.
pub const FILES: &[(&str, &str)] = &[
    ("h200-llama3.1-70b.toml", include_str!("../configs/h200-llama3.1-70b.toml")),
    ("h200-llama3.1-8b.toml", include_str!("../configs/h200-llama3.1-8b.toml")),
    ("h200-mistral-7b-v0.3.toml", include_str!("../configs/h200-mistral-7b-v0.3.toml")),
    ("h200-qwen3-30b-2507.toml", include_str!("../configs/h200-qwen3-30b-2507.toml")),
    ("h200-qwen3-30b.toml", include_str!("../configs/h200-qwen3-30b.toml")),
    ("h200-qwen3-32b.toml", include_str!("../configs/h200-qwen3-32b.toml")),
    ("h200-qwen3-8b.toml", include_str!("../configs/h200-qwen3-8b.toml")),
    ("h200-tiny-code.toml", include_str!("../configs/h200-tiny-code.toml")),
    ("rtx4090-llama3.1-70b.toml", include_str!("../configs/rtx4090-llama3.1-70b.toml")),
    ("rtx4090-llama3.1-8b.toml", include_str!("../configs/rtx4090-llama3.1-8b.toml")),
    ("rtx4090-mistral-7b-v0.3.toml", include_str!("../configs/rtx4090-mistral-7b-v0.3.toml")),
    ("rtx4090-qwen3-30b-2507.toml", include_str!("../configs/rtx4090-qwen3-30b-2507.toml")),
    ("rtx4090-qwen3-30b.toml", include_str!("../configs/rtx4090-qwen3-30b.toml")),
    ("rtx4090-qwen3-32b.toml", include_str!("../configs/rtx4090-qwen3-32b.toml")),
    ("rtx4090-qwen3-8b.toml", include_str!("../configs/rtx4090-qwen3-8b.toml")),
    ("rtx4090-tiny-code.toml", include_str!("../configs/rtx4090-tiny-code.toml")),
    ("rtx5090-llama3.1-70b.toml", include_str!("../configs/rtx5090-llama3.1-70b.toml")),
    ("rtx5090-llama3.1-8b.toml", include_str!("../configs/rtx5090-llama3.1-8b.toml")),
    ("rtx5090-mistral-7b-v0.3.toml", include_str!("../configs/rtx5090-mistral-7b-v0.3.toml")),
    ("rtx5090-qwen3-30b-2507.toml", include_str!("../configs/rtx5090-qwen3-30b-2507.toml")),
    ("rtx5090-qwen3-30b.toml", include_str!("../configs/rtx5090-qwen3-30b.toml")),
    ("rtx5090-qwen3-32b.toml", include_str!("../configs/rtx5090-qwen3-32b.toml")),
    ("rtx5090-qwen3-8b.toml", include_str!("../configs/rtx5090-qwen3-8b.toml")),
    ("rtx5090-tiny-code.toml", include_str!("../configs/rtx5090-tiny-code.toml")),
];

/// Every checked-in config, parsed and validated.
pub fn all() -> Result<Vec<TunedConfig>, TunedError> {
    FILES.iter().map(|(_, text)| TunedConfig::from_toml(text)).collect()
}
