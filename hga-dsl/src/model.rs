//! The attention layout of a model: heads, head dimension, RoPE and the cache element type.

use serde::{Deserialize, Serialize};

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RopeStyle {
    /// `rotate_half` (GPT-NeoX, Llama, Qwen, Mistral in Hugging Face layout): dims `i` and `i + R/2`.
    #[default]
    Neox,
    /// Interleaved (GPT-J, original Meta layout): dims `2i` and `2i + 1`.
    Gptj,
}

impl RopeStyle {
    /// Short name used in variant keys.
    pub fn short(self) -> &'static str {
        match self {
            RopeStyle::Neox => "neox",
            RopeStyle::Gptj => "gptj",
        }
    }
}

/// Frequency scaling applied on top of plain RoPE (as in Hugging Face `rope_scaling`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RopeScaling {
    /// Position interpolation: every inverse frequency divided by `factor`.
    Linear {
        /// Divisor of the inverse frequencies (> 0).
        factor: f64,
    },
    /// Llama 3.1's wavelength-dependent scaling.
    Llama3 {
        /// Divisor applied to low frequencies (≥ 1).
        factor: f64,
        /// Wavelengths longer than `original_max_position / low_freq_factor` are fully scaled.
        low_freq_factor: f64,
        /// Wavelengths shorter than `original_max_position / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The pre-training context length.
        original_max_position: u64,
    },
}

/// Element type of the K/V cache and of the kernels' inputs and outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    /// bfloat16.
    #[default]
    Bf16,
    /// IEEE half.
    F16,
}

impl DType {
    /// Short name used in variant keys and generated code.
    pub fn short(self) -> &'static str {
        match self {
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
        }
    }
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        2
    }
}

/// Head layout and RoPE of one attention layer (all layers of the supported models share it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    /// Query heads.
    pub q_heads: u32,
    /// Key/value heads (GQA: `q_heads` is a multiple of it).
    pub kv_heads: u32,
    /// Dimension of one head.
    pub head_dim: u32,
    /// RoPE base θ.
    pub rope_theta: f64,
    /// Pairing of rotary dimensions.
    #[serde(default)]
    pub rope_style: RopeStyle,
    /// Rotary dimensions (partial rotary); `None` means all of `head_dim`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotary_dim: Option<u32>,
    /// Optional frequency scaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Cache element type.
    #[serde(default)]
    pub dtype: DType,
}

impl ModelShape {
    /// A shape with NeoX RoPE over the whole head, no scaling, bf16.
    pub fn new(q_heads: u32, kv_heads: u32, head_dim: u32, rope_theta: f64) -> Self {
        ModelShape {
            q_heads,
            kv_heads,
            head_dim,
            rope_theta,
            rope_style: RopeStyle::Neox,
            rotary_dim: None,
            rope_scaling: None,
            dtype: DType::Bf16,
        }
    }
    /// Sets the pairing style.
    pub fn rope_style(mut self, style: RopeStyle) -> Self {
        self.rope_style = style;
        self
    }
    /// Sets a partial rotary dimension.
    pub fn rotary_dim(mut self, dim: u32) -> Self {
        self.rotary_dim = Some(dim);
        self
    }
    /// Sets RoPE scaling.
    pub fn rope_scaling(mut self, scaling: RopeScaling) -> Self {
        self.rope_scaling = Some(scaling);
        self
    }
    /// Sets the element type.
    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }
}
