//! Reads the attention shape and RoPE of a Hugging Face `config.json`.

use crate::error::SpecError;
use crate::model::{DType, ModelShape, RopeScaling, RopeStyle};
use crate::presets::ModelPreset;
use serde_json::Value;

/// What a `config.json` says about attention, plus layers and maximum context.
#[derive(Debug, Clone, PartialEq)]
pub struct HfModel {
    /// `model_type`.
    pub model_type: String,
    /// Decoder layers.
    pub layers: u32,
    /// `max_position_embeddings`.
    pub max_position: u64,
    /// Attention layout.
    pub shape: ModelShape,
}

impl HfModel {
    /// Reads a `config.json` file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<HfModel, SpecError> {
        let p = path.as_ref();
        let text =
            std::fs::read_to_string(p).map_err(|e| SpecError::Io { path: p.display().to_string(), source: e })?;
        HfModel::from_json(&text)
    }

    /// Parses `config.json` text.
    pub fn from_json(text: &str) -> Result<HfModel, SpecError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| SpecError::Parse { message: e.to_string(), span: None })?;
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("").to_string();
        // GPT-J and GPT-2 style configs name the same numbers `n_head`, `n_embd`, `n_layer`, `n_positions`.
        let q_heads = uint(&v, "num_attention_heads", "n_head")?;
        let kv_heads = opt_uint(&v, "num_key_value_heads")?.unwrap_or(q_heads);
        let head_dim = match opt_uint(&v, "head_dim")? {
            Some(d) => d,
            None => {
                let hidden = uint(&v, "hidden_size", "n_embd")?;
                if q_heads == 0 || hidden % q_heads != 0 {
                    return Err(unsupported("hidden_size", "not a multiple of num_attention_heads"));
                }
                hidden / q_heads
            }
        };
        let layers = uint(&v, "num_hidden_layers", "n_layer")?;
        let max_position =
            opt_uint(&v, "max_position_embeddings")?.or(opt_uint(&v, "n_positions")?).unwrap_or(0) as u64;
        match v.get("use_sliding_window").and_then(Value::as_bool) {
            Some(true) => {
                return Err(unsupported("use_sliding_window", "sliding-window attention layers are not HGA's target"))
            }
            // Qwen2/Qwen3 write a `sliding_window` size but switch it off with `use_sliding_window: false`.
            Some(false) => {}
            // Mistral v0.1 and others have no switch: a window shorter than the context is in use.
            None => {
                if let Some(w) = v.get("sliding_window").and_then(Value::as_u64) {
                    if max_position == 0 || w < max_position {
                        return Err(unsupported(
                            "sliding_window",
                            &format!(
                                "a sliding window of {w} tokens (shorter than max_position_embeddings \
                                 {max_position}) is not HGA's target"
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(types) = v.get("layer_types").and_then(Value::as_array) {
            if types.iter().any(|t| t.as_str() != Some("full_attention")) {
                return Err(unsupported("layer_types", "only full_attention layers are supported"));
            }
        }
        // Newer transformers nest RoPE under `rope_parameters`; older ones use `rope_theta` + `rope_scaling`.
        let rope_params = v.get("rope_parameters").filter(|p| p.is_object());
        let theta = rope_params
            .and_then(|p| p.get("rope_theta"))
            .or_else(|| v.get("rope_theta"))
            .map(|t| t.as_f64().ok_or_else(|| unsupported("rope_theta", "not a number")))
            .transpose()?
            .unwrap_or(10000.0);
        let scaling_obj = match rope_params {
            Some(p) => Some(("rope_parameters", p)),
            None => v.get("rope_scaling").filter(|s| s.is_object()).map(|s| ("rope_scaling", s)),
        };
        let rope_scaling = match scaling_obj {
            None => None,
            Some((name, s)) => scaling(name, s)?,
        };
        let (rope_style, mut rotary_dim) =
            if model_type == "gptj" { (RopeStyle::Gptj, opt_uint(&v, "rotary_dim")?) } else { (RopeStyle::Neox, None) };
        if let Some(f) = v.get("partial_rotary_factor").and_then(Value::as_f64) {
            let r = (head_dim as f64 * f).round() as u32;
            rotary_dim = Some(r);
        }
        let dtype = match v.get("torch_dtype").or_else(|| v.get("dtype")).and_then(Value::as_str) {
            Some("float16") => DType::F16,
            // bf16 is the cache type for bf16 and f32 checkpoints alike.
            _ => DType::Bf16,
        };
        let shape =
            ModelShape { q_heads, kv_heads, head_dim, rope_theta: theta, rope_style, rotary_dim, rope_scaling, dtype };
        Ok(HfModel { model_type, layers, max_position, shape })
    }

    /// As a preset (name `config.json`).
    pub fn into_preset(self) -> ModelPreset {
        ModelPreset {
            name: "config.json",
            aliases: &[],
            source: "a Hugging Face config.json",
            layers: self.layers,
            max_position: self.max_position,
            shape: self.shape,
        }
    }
}

/// The scaling in the object `name` (`rope_scaling`, or `rope_parameters` in newer configs).
fn scaling(name: &str, s: &Value) -> Result<Option<RopeScaling>, SpecError> {
    let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
    let f = |k: &str| -> Result<f64, SpecError> {
        s.get(k).and_then(Value::as_f64).ok_or_else(|| unsupported(&format!("{name}.{k}"), "missing or not a number"))
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear { factor: f("factor")? })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: f("factor")?,
            low_freq_factor: f("low_freq_factor")?,
            high_freq_factor: f("high_freq_factor")?,
            original_max_position: f("original_max_position_embeddings")? as u64,
        })),
        other => Err(unsupported(
            &format!("{name}.rope_type"),
            &format!("`{other}` is not supported (supported: default, linear, llama3)"),
        )),
    }
}

fn unsupported(field: &str, reason: &str) -> SpecError {
    SpecError::UnsupportedConfig { field: field.to_string(), reason: reason.to_string() }
}

fn opt_uint(v: &Value, key: &str) -> Result<Option<u32>, SpecError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| unsupported(key, "not a non-negative integer")),
    }
}

/// A required count, under its Hugging Face name `key` or the GPT-2/GPT-J name `alias`.
fn uint(v: &Value, key: &str, alias: &str) -> Result<u32, SpecError> {
    match opt_uint(v, key)? {
        Some(n) => Ok(n),
        None => opt_uint(v, alias)?.ok_or_else(|| unsupported(key, &format!("missing (nor is `{alias}` given)"))),
    }
}
