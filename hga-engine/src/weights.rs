//! Loads a safetensors checkpoint into f32 (bf16 and f16 are widened once, at load).

use crate::config::ModelConfig;
use crate::error::EngineError;
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// Weights of one decoder layer, f32, row-major `[out][in]` as stored by PyTorch.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// RMSNorm before attention, `[hidden]`.
    pub input_norm: Vec<f32>,
    /// q, k and v projections stacked: `[(q_heads + 2·kv_heads)·head_dim][hidden]`.
    pub qkv: Vec<f32>,
    /// Biases of the stacked projection, when the checkpoint has them.
    pub qkv_bias: Option<Vec<f32>>,
    /// Per-head RMSNorm of queries and keys (Qwen3), `[head_dim]`; absent in Llama-style checkpoints.
    pub q_norm: Option<Vec<f32>>,
    /// See `q_norm`.
    pub k_norm: Option<Vec<f32>>,
    /// Output projection `[hidden][q_heads·head_dim]`.
    pub o_proj: Vec<f32>,
    /// RMSNorm before the MLP, `[hidden]`.
    pub post_norm: Vec<f32>,
    /// Gate and up projections stacked: `[2·intermediate][hidden]`.
    pub gate_up: Vec<f32>,
    /// Down projection `[hidden][intermediate]`.
    pub down: Vec<f32>,
}

/// All weights of the model.
#[derive(Debug, Clone)]
pub struct Weights {
    /// Token embeddings `[vocab][hidden]`.
    pub embed: Vec<f32>,
    /// Decoder layers.
    pub layers: Vec<LayerWeights>,
    /// Final RMSNorm `[hidden]`.
    pub norm: Vec<f32>,
    /// Output head `[vocab][hidden]`; `None` when tied to `embed`.
    pub lm_head: Option<Vec<f32>>,
}

impl Weights {
    /// Reads `path` (one `.safetensors` file) and checks every tensor's shape against `cfg`.
    pub fn load(path: &Path, cfg: &ModelConfig) -> Result<Weights, EngineError> {
        let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| EngineError::Safetensors { path: path.to_path_buf(), message: e.to_string() })?;
        let r = Reader { st: &st };
        let (h, d) = (cfg.hidden, cfg.head_dim());
        let (qd, kvd) = (cfg.q_heads() * d, cfg.kv_heads() * d);
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let p = format!("model.layers.{i}");
            let mut qkv = r.get(&format!("{p}.self_attn.q_proj.weight"), &[qd, h])?;
            qkv.extend(r.get(&format!("{p}.self_attn.k_proj.weight"), &[kvd, h])?);
            qkv.extend(r.get(&format!("{p}.self_attn.v_proj.weight"), &[kvd, h])?);
            let qkv_bias = match r.opt(&format!("{p}.self_attn.q_proj.bias"), &[qd])? {
                None => None,
                Some(mut b) => {
                    b.extend(r.get(&format!("{p}.self_attn.k_proj.bias"), &[kvd])?);
                    b.extend(r.get(&format!("{p}.self_attn.v_proj.bias"), &[kvd])?);
                    Some(b)
                }
            };
            let q_norm = r.opt(&format!("{p}.self_attn.q_norm.weight"), &[d])?;
            let k_norm = r.opt(&format!("{p}.self_attn.k_norm.weight"), &[d])?;
            if q_norm.is_some() != k_norm.is_some() {
                let missing = if q_norm.is_none() { "q_norm" } else { "k_norm" };
                return Err(EngineError::MissingTensor { name: format!("{p}.self_attn.{missing}.weight") });
            }
            let mut gate_up = r.get(&format!("{p}.mlp.gate_proj.weight"), &[cfg.intermediate, h])?;
            gate_up.extend(r.get(&format!("{p}.mlp.up_proj.weight"), &[cfg.intermediate, h])?);
            layers.push(LayerWeights {
                input_norm: r.get(&format!("{p}.input_layernorm.weight"), &[h])?,
                qkv,
                qkv_bias,
                q_norm,
                k_norm,
                o_proj: r.get(&format!("{p}.self_attn.o_proj.weight"), &[h, qd])?,
                post_norm: r.get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate_up,
                down: r.get(&format!("{p}.mlp.down_proj.weight"), &[h, cfg.intermediate])?,
            });
        }
        let lm_head = r.opt("lm_head.weight", &[cfg.vocab, h])?;
        if lm_head.is_none() && !cfg.tie_embeddings {
            return Err(EngineError::MissingTensor { name: "lm_head.weight".to_string() });
        }
        Ok(Weights {
            embed: r.get("model.embed_tokens.weight", &[cfg.vocab, h])?,
            layers,
            norm: r.get("model.norm.weight", &[h])?,
            lm_head,
        })
    }
}

struct Reader<'a> {
    st: &'a SafeTensors<'a>,
}

impl Reader<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, EngineError> {
        self.opt(name, shape)?.ok_or_else(|| EngineError::MissingTensor { name: name.to_string() })
    }

    fn opt(&self, name: &str, shape: &[usize]) -> Result<Option<Vec<f32>>, EngineError> {
        let Ok(t) = self.st.tensor(name) else { return Ok(None) };
        if t.shape() != shape {
            return Err(EngineError::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                got: t.shape().to_vec(),
            });
        }
        let data = t.data();
        let out = match t.dtype() {
            Dtype::BF16 => data.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::F16 => data.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            other => return Err(EngineError::TensorDtype { name: name.to_string(), dtype: format!("{other:?}") }),
        };
        Ok(Some(out))
    }
}
