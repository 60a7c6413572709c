//! The Qwen3 decoder forward pass over a block of tokens, with attention from a [`SequenceAttention`].

use crate::attention::{PositionStats, SequenceAttention, SpeculateFrom};
use crate::config::ModelConfig;
use crate::error::EngineError;
use crate::linalg::{linear, rms_norm, rms_norm_into, swiglu};
use crate::weights::{LayerWeights, Weights};
use hga_dsl::Rope;
use rayon::prelude::*;
use std::path::Path;

/// A loaded checkpoint: configuration, f32 weights and the RoPE of its attention spec.
#[derive(Debug, Clone)]
pub struct Model {
    config: ModelConfig,
    weights: Weights,
    rope: Rope,
}

impl Model {
    /// Loads `dir/config.json` and `dir/model.safetensors`.
    pub fn load(dir: &Path) -> Result<Model, EngineError> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let weights = Weights::load(&dir.join("model.safetensors"), &config)?;
        Ok(Model::new(config, weights))
    }

    /// A model from parts (the weights must match the config: [`Weights::load`] checks that).
    pub fn new(config: ModelConfig, weights: Weights) -> Model {
        let rope = Rope::of(&config.attention);
        Model { config, weights, rope }
    }

    /// The architecture.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Runs `tokens` at positions `attn.len()..` through the model, appending their K/V to `attn`;
    /// returns the logits `[n][vocab]`. Adds each position's attention statistics to `stats[i]` (a slice
    /// of `tokens.len()` entries).
    pub fn forward(
        &self,
        tokens: &[u32],
        attn: &mut dyn SequenceAttention,
        stats: &mut [PositionStats],
    ) -> Result<Vec<f32>, EngineError> {
        let c = &self.config;
        let (h, d, qh, kvh) = (c.hidden, c.head_dim(), c.q_heads(), c.kv_heads());
        let (qd, kvd) = (qh * d, kvh * d);
        let n = tokens.len();
        let start = attn.len();
        if stats.len() != n {
            return Err(EngineError::argument("stats", stats.len(), format!("must have one entry per token ({n})")));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= c.vocab) {
            return Err(EngineError::argument("token", t, format!("must be < vocab_size ({})", c.vocab)));
        }
        let mut x: Vec<f32> =
            tokens.iter().flat_map(|&t| &self.weights.embed[t as usize * h..][..h]).copied().collect();
        let mut normed = vec![0.0f32; n * h];
        let mut qkv = vec![0.0f32; n * (qd + 2 * kvd)];
        let (mut q, mut k, mut v) = (vec![0.0f32; n * qd], vec![0.0f32; n * kvd], vec![0.0f32; n * kvd]);
        let mut att = vec![0.0f32; n * qd];
        let mut proj = vec![0.0f32; n * h];
        let mut gate_up = vec![0.0f32; n * 2 * c.intermediate];
        let mut act = vec![0.0f32; n * c.intermediate];
        // Speculative queries for the next layer, when the attention asks for them.
        let speculate = attn.speculates();
        let m = if speculate.is_some() { n } else { 0 };
        let mut spec = [vec![0.0f32; m * qd], vec![0.0f32; m * kvd], vec![0.0f32; m * kvd]];
        let layers = &self.weights.layers;
        for (li, lw) in layers.iter().enumerate() {
            self.project(lw, &x, start, (&mut normed, &mut qkv), (&mut q, &mut k, &mut v));
            let next = layers.get(li + 1);
            if let (Some(SpeculateFrom::LayerInput), Some(nw)) = (speculate, next) {
                self.speculate(&*attn, li + 1, nw, &x, start, (&mut normed, &mut qkv), &mut spec)?;
            }
            attn.append(li, &k, &v)?;
            attn.attend(li, &q, start, &mut att, stats)?;
            linear(&att, &lw.o_proj, qd, h, &mut proj);
            x.par_iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
            if let (Some(SpeculateFrom::AfterAttention), Some(nw)) = (speculate, next) {
                self.speculate(&*attn, li + 1, nw, &x, start, (&mut normed, &mut qkv), &mut spec)?;
            }
            rms_norm_into(&x, &lw.post_norm, c.rms_eps, &mut normed);
            linear(&normed, &lw.gate_up, h, 2 * c.intermediate, &mut gate_up);
            swiglu(&gate_up, c.intermediate, &mut act);
            linear(&act, &lw.down, c.intermediate, h, &mut proj);
            x.par_iter_mut().zip(&proj).for_each(|(x, p)| *x += p);
        }
        rms_norm_into(&x, &self.weights.norm, c.rms_eps, &mut normed);
        let head = self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed);
        let mut logits = vec![0.0f32; n * c.vocab];
        linear(&normed, head, h, c.vocab, &mut logits);
        Ok(logits)
    }

    /// Layer `layer`'s (weights `lw`) speculative queries of the hidden states `x`, handed to `attn`.
    #[allow(clippy::too_many_arguments)]
    fn speculate(
        &self,
        attn: &dyn SequenceAttention,
        layer: usize,
        lw: &LayerWeights,
        x: &[f32],
        start: usize,
        scratch: (&mut [f32], &mut [f32]),
        [q, k, v]: &mut [Vec<f32>; 3],
    ) -> Result<(), EngineError> {
        self.project(lw, x, start, scratch, (q, k, v));
        attn.speculate(layer, q, start)
    }

    /// Layer `lw`'s queries, keys and values (`[n][heads][head_dim]`, after its norms and RoPE at
    /// positions `start..`) of the hidden states `x`, through the scratch buffers `normed` and `qkv`.
    fn project(
        &self,
        lw: &LayerWeights,
        x: &[f32],
        start: usize,
        (normed, qkv): (&mut [f32], &mut [f32]),
        (q, k, v): (&mut [f32], &mut [f32], &mut [f32]),
    ) {
        let c = &self.config;
        let (h, d, qd, kvd) = (c.hidden, c.head_dim(), c.q_heads() * c.head_dim(), c.kv_heads() * c.head_dim());
        rms_norm_into(x, &lw.input_norm, c.rms_eps, normed);
        linear(normed, &lw.qkv, h, qd + 2 * kvd, qkv);
        q.par_chunks_mut(qd)
            .zip(k.par_chunks_mut(kvd))
            .zip(v.par_chunks_mut(kvd))
            .zip(qkv.par_chunks(qd + 2 * kvd))
            .enumerate()
            .for_each(|(i, (((q, k), v), row))| {
                q.copy_from_slice(&row[..qd]);
                k.copy_from_slice(&row[qd..qd + kvd]);
                v.copy_from_slice(&row[qd + kvd..]);
                if let Some(b) = &lw.qkv_bias {
                    let (bq, bk, bv) = (&b[..qd], &b[qd..qd + kvd], &b[qd + kvd..]);
                    q.iter_mut()
                        .zip(bq)
                        .chain(k.iter_mut().zip(bk))
                        .chain(v.iter_mut().zip(bv))
                        .for_each(|(x, b)| *x += b);
                }
                let pos = (start + i) as f64;
                // Qwen3 normalizes each head before RoPE; keys are cached after RoPE.
                for (head, norm) in
                    q.chunks_exact_mut(d).map(|x| (x, &lw.q_norm)).chain(k.chunks_exact_mut(d).map(|x| (x, &lw.k_norm)))
                {
                    if let Some(w) = norm {
                        rms_norm(head, w, c.rms_eps);
                    }
                    self.rope.rotate(head, pos);
                }
            });
    }
}
