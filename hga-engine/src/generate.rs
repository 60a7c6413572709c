//! Greedy generation: prefill the prompt, then one token per step, each step's query attending through
//! the chosen backend (for HGA: routing on its own, as in decode).

use crate::attention::{AttentionKind, PositionStats};
use crate::error::EngineError;
use crate::model::Model;
use crate::reference::argmax;
use serde::Serialize;
use std::time::Instant;

/// Timing of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateStats {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub generated: usize,
    /// Seconds spent on the prompt.
    pub prefill_seconds: f64,
    /// Seconds spent generating.
    pub decode_seconds: f64,
}

impl GenerateStats {
    /// Prompt tokens per second.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_seconds.max(1e-9)
    }
    /// Generated tokens per second.
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.generated as f64 / self.decode_seconds.max(1e-9)
    }
}

/// Prompt tokens per forward block.
const PREFILL_BLOCK: usize = 512;

/// Generates `max_new` tokens greedily after `prompt`, calling `emit` with each as it is produced.
pub fn generate(
    model: &Model,
    kind: &AttentionKind,
    prompt: &[u32],
    max_new: usize,
    emit: &mut dyn FnMut(u32),
) -> Result<GenerateStats, EngineError> {
    if prompt.is_empty() {
        return Err(EngineError::argument("--prompt", "\"\"", "must hold at least one token"));
    }
    let vocab = model.config().vocab;
    let mut seq = kind.new_sequence(model.config())?;
    let t0 = Instant::now();
    let mut last = Vec::new();
    for block in prompt.chunks(PREFILL_BLOCK) {
        let mut stats = vec![PositionStats::default(); block.len()];
        let logits = model.forward(block, seq.as_mut(), &mut stats)?;
        last = logits[logits.len() - vocab..].to_vec();
    }
    let prefill_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    for step in 0..max_new {
        let next = argmax(&last) as u32;
        emit(next);
        if step + 1 < max_new {
            let mut stats = [PositionStats::default()];
            last = model.forward(&[next], seq.as_mut(), &mut stats)?;
        }
    }
    Ok(GenerateStats {
        prompt_tokens: prompt.len(),
        generated: max_new,
        prefill_seconds,
        decode_seconds: t1.elapsed().as_secs_f64(),
    })
}
