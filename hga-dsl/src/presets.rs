//! Model presets, each copied from the model's published Hugging Face `config.json` (the repository is
//! named in [`ModelPreset::source`]); `tests/presets.rs` checks them against the numbers restated there
//! and `tiny-code` against `../shared/models/tiny-code/config.json`.

use crate::error::SpecError;
use crate::model::{ModelShape, RopeScaling, RopeStyle};

/// A model's attention layout plus the facts engines and the tuner need beside it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPreset {
    /// Preset name (`--model` value).
    pub name: &'static str,
    /// Other accepted names.
    pub aliases: &'static [&'static str],
    /// Where the numbers come from.
    pub source: &'static str,
    /// Decoder layers.
    pub layers: u32,
    /// Maximum context in the published config.
    pub max_position: u64,
    /// Attention layout.
    pub shape: ModelShape,
}

const LLAMA31_SCALING: RopeScaling =
    RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position: 8192 };

fn shape(q: u32, kv: u32, d: u32, theta: f64) -> ModelShape {
    ModelShape::new(q, kv, d, theta).rope_style(RopeStyle::Neox)
}

/// All presets.
pub fn all() -> Vec<ModelPreset> {
    vec![
        ModelPreset {
            name: "qwen3-30b",
            aliases: &["qwen3-30b-a3b"],
            source: "Qwen/Qwen3-30B-A3B config.json: num_attention_heads 32, num_key_value_heads 4, head_dim 128, \
                     rope_theta 1000000, num_hidden_layers 48, max_position_embeddings 40960",
            layers: 48,
            max_position: 40960,
            shape: shape(32, 4, 128, 1.0e6),
        },
        ModelPreset {
            name: "qwen3-30b-2507",
            aliases: &["qwen3-30b-a3b-2507"],
            source: "Qwen/Qwen3-30B-A3B-Instruct-2507 config.json: as Qwen3-30B-A3B but rope_theta 10000000, \
                     max_position_embeddings 262144",
            layers: 48,
            max_position: 262144,
            shape: shape(32, 4, 128, 1.0e7),
        },
        ModelPreset {
            name: "qwen3-8b",
            aliases: &[],
            source: "Qwen/Qwen3-8B config.json: num_attention_heads 32, num_key_value_heads 8, head_dim 128, \
                     rope_theta 1000000, num_hidden_layers 36, max_position_embeddings 40960",
            layers: 36,
            max_position: 40960,
            shape: shape(32, 8, 128, 1.0e6),
        },
        ModelPreset {
            name: "qwen3-32b",
            aliases: &[],
            source: "Qwen/Qwen3-32B config.json: num_attention_heads 64, num_key_value_heads 8, head_dim 128, \
                     rope_theta 1000000, num_hidden_layers 64, max_position_embeddings 40960",
            layers: 64,
            max_position: 40960,
            shape: shape(64, 8, 128, 1.0e6),
        },
        ModelPreset {
            name: "llama3.1-8b",
            aliases: &["llama-3.1-8b"],
            source: "meta-llama/Llama-3.1-8B config.json: num_attention_heads 32, num_key_value_heads 8, \
                     hidden_size 4096 (head_dim 128), rope_theta 500000, rope_scaling llama3 (factor 8, \
                     low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 8192), \
                     num_hidden_layers 32, max_position_embeddings 131072",
            layers: 32,
            max_position: 131072,
            shape: shape(32, 8, 128, 5.0e5).rope_scaling(LLAMA31_SCALING),
        },
        ModelPreset {
            name: "llama3.1-70b",
            aliases: &["llama-3.1-70b"],
            source: "meta-llama/Llama-3.1-70B config.json: num_attention_heads 64, num_key_value_heads 8, \
                     hidden_size 8192 (head_dim 128), rope_theta 500000, rope_scaling llama3 as 8B, \
                     num_hidden_layers 80, max_position_embeddings 131072",
            layers: 80,
            max_position: 131072,
            shape: shape(64, 8, 128, 5.0e5).rope_scaling(LLAMA31_SCALING),
        },
        ModelPreset {
            name: "mistral-7b-v0.3",
            aliases: &["mistral-7b"],
            source: "mistralai/Mistral-7B-v0.3 config.json: num_attention_heads 32, num_key_value_heads 8, \
                     head_dim 128, rope_theta 1000000, sliding_window null, num_hidden_layers 32, \
                     max_position_embeddings 32768",
            layers: 32,
            max_position: 32768,
            shape: shape(32, 8, 128, 1.0e6),
        },
        ModelPreset {
            name: "tiny-code",
            aliases: &[],
            source: "../shared/models/tiny-code/config.json: num_attention_heads 8, num_key_value_heads 2, \
                     head_dim 128, rope_parameters.rope_theta 1000000, num_hidden_layers 8, \
                     max_position_embeddings 32768",
            layers: 8,
            max_position: 32768,
            shape: shape(8, 2, 128, 1.0e6),
        },
    ]
}

/// Looks a preset up by name or alias (case-insensitive).
pub fn find(name: &str) -> Result<ModelPreset, SpecError> {
    let want = name.to_ascii_lowercase();
    all().into_iter().find(|p| p.name == want || p.aliases.contains(&want.as_str())).ok_or_else(|| {
        SpecError::UnknownPreset {
            name: name.to_string(),
            known: all().iter().map(|p| p.name).collect::<Vec<_>>().join(", "),
        }
    })
}
