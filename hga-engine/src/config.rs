//! The parts of a Hugging Face `config.json` the forward pass needs, beside the attention shape and RoPE
//! that [`hga_dsl::HfModel`] reads.

use crate::error::EngineError;
use hga_dsl::{HfModel, Spec, ValidSpec};
use serde_json::Value;
use std::path::Path;

/// Architecture of a Qwen3-style decoder (Llama-style when the checkpoint has no q/k norms).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `model_type` as written.
    pub model_type: String,
    /// Residual width.
    pub hidden: usize,
    /// MLP width (SwiGLU).
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// `lm_head` shares the embedding matrix.
    pub tie_embeddings: bool,
    /// Maximum context of the published config.
    pub max_position: usize,
    /// Attention shape and RoPE as a validated spec with the reference routing: the one source of the
    /// head layout and RoPE convention for the engine and for HGA.
    pub attention: ValidSpec,
}

impl ModelConfig {
    /// Reads `config.json`.
    pub fn from_file(path: &Path) -> Result<ModelConfig, EngineError> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            EngineError::Json { message, .. } => EngineError::Json { path: path.to_path_buf(), message },
            other => other,
        })
    }

    /// Parses `config.json` text.
    pub fn from_json(text: &str) -> Result<ModelConfig, EngineError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| EngineError::Json { path: "config.json".into(), message: e.to_string() })?;
        let hf = HfModel::from_json(text)
            .map_err(|source| EngineError::Spec { origin: "config.json".to_string(), source })?;
        let act = v.get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
        if act != "silu" {
            return Err(config("hidden_act", format!("`{act}` is not supported (supported: silu)")));
        }
        let attention = Spec::new(hf.shape)
            .validate()
            .map_err(|source| EngineError::Spec { origin: "config.json".to_string(), source })?;
        let cfg = ModelConfig {
            model_type: hf.model_type,
            hidden: uint(&v, "hidden_size")?,
            intermediate: uint(&v, "intermediate_size")?,
            layers: hf.layers as usize,
            vocab: uint(&v, "vocab_size")?,
            rms_eps: v.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6) as f32,
            tie_embeddings: v.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
            max_position: hf.max_position as usize,
            attention,
        };
        if cfg.layers == 0 {
            return Err(config("num_hidden_layers", "must be >= 1".to_string()));
        }
        Ok(cfg)
    }

    /// Query heads.
    pub fn q_heads(&self) -> usize {
        self.attention.model().q_heads as usize
    }

    /// KV heads.
    pub fn kv_heads(&self) -> usize {
        self.attention.model().kv_heads as usize
    }

    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.attention.head_dim()
    }
}

fn config(field: &str, reason: String) -> EngineError {
    EngineError::Config { field: field.to_string(), reason }
}

fn uint(v: &Value, key: &str) -> Result<usize, EngineError> {
    match v.get(key) {
        None | Some(Value::Null) => Err(config(key, "missing".to_string())),
        Some(x) => x
            .as_u64()
            .filter(|&n| n >= 1)
            .map(|n| n as usize)
            .ok_or_else(|| config(key, format!("{x} is not a positive integer"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_other_activation() {
        let text = r#"{"model_type":"qwen3","num_attention_heads":8,"num_key_value_heads":2,"head_dim":128,
            "hidden_size":512,"intermediate_size":1536,"num_hidden_layers":2,"vocab_size":256,"hidden_act":"gelu"}"#;
        let e = ModelConfig::from_json(text).unwrap_err().to_string();
        assert!(e.contains("hidden_act: `gelu` is not supported"), "{e}");
    }

    #[test]
    fn names_missing_field() {
        let text = r#"{"model_type":"qwen3","num_attention_heads":8,"num_key_value_heads":2,"head_dim":128,
            "hidden_size":512,"num_hidden_layers":2,"vocab_size":256}"#;
        let e = ModelConfig::from_json(text).unwrap_err().to_string();
        assert!(e.contains("intermediate_size: missing"), "{e}");
    }
}
