//! Reproduction of a checkpoint's reference logits (`reference_logits.json`, written by the stock
//! Hugging Face implementation): the check that the forward pass is the architecture.

use crate::attention::{AttentionKind, PositionStats};
use crate::error::EngineError;
use crate::linalg::log_sum_exp;
use crate::model::Model;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// `reference_logits.json` as written next to the checkpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct ReferenceLogits {
    /// Bytes of the document that were scored.
    pub bytes: usize,
    /// Positions whose logits are stored.
    pub positions: Vec<usize>,
    /// Logits per position (keys are the positions as strings).
    pub logits: BTreeMap<String, Vec<f32>>,
    /// Mean next-token NLL over the scored bytes.
    pub mean_nll: f64,
    /// NLL of the first positions.
    pub nll_first_16: Vec<f64>,
}

impl ReferenceLogits {
    /// Reads the JSON file.
    pub fn from_file(path: &Path) -> Result<Self, EngineError> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| EngineError::Json { path: path.to_path_buf(), message: e.to_string() })
    }
}

/// One stored position compared.
#[derive(Debug, Clone, Serialize)]
pub struct PositionDelta {
    /// The position.
    pub position: usize,
    /// max |logit − reference| over the vocabulary.
    pub max_abs_dlogit: f32,
    /// Whether the argmax (the greedy next token) agrees.
    pub argmax_agrees: bool,
}

/// The comparison of this engine's dense forward pass with the reference.
#[derive(Debug, Clone, Serialize)]
pub struct LogitsReport {
    /// Per stored position.
    pub positions: Vec<PositionDelta>,
    /// Max over positions.
    pub max_abs_dlogit: f32,
    /// This engine's mean next-token NLL over the same bytes.
    pub mean_nll: f64,
    /// The reference's.
    pub reference_mean_nll: f64,
    /// max |ΔNLL| over the first positions stored in the reference.
    pub max_abs_dnll_first: f64,
    /// Seconds the forward pass took.
    pub seconds: f64,
}

/// Runs `model` densely over the first `reference.bytes` bytes of `data` and compares.
pub fn check_logits(model: &Model, reference: &ReferenceLogits, data: &[u8]) -> Result<LogitsReport, EngineError> {
    let n = reference.bytes;
    if data.len() < n {
        return Err(EngineError::argument(
            "data",
            format!("{} bytes", data.len()),
            format!("must hold the {n} bytes the reference scored"),
        ));
    }
    let vocab = model.config().vocab;
    let tokens: Vec<u32> = data[..n].iter().map(|&b| b as u32).collect();
    let mut seq = AttentionKind::Dense.new_sequence(model.config())?;
    let mut stats = vec![PositionStats::default(); n];
    let t0 = std::time::Instant::now();
    let logits = model.forward(&tokens, seq.as_mut(), &mut stats)?;
    let seconds = t0.elapsed().as_secs_f64();
    let nll: Vec<f64> = (0..n - 1).map(|p| token_nll(&logits[p * vocab..(p + 1) * vocab], tokens[p + 1])).collect();
    let mean_nll = nll.iter().sum::<f64>() / nll.len() as f64;
    let mut positions = Vec::new();
    for &p in &reference.positions {
        let want = reference.logits.get(&p.to_string()).ok_or_else(|| EngineError::Json {
            path: "reference_logits.json".into(),
            message: format!("logits.{p} missing though listed in positions"),
        })?;
        if p >= n || want.len() != vocab {
            return Err(EngineError::Json {
                path: "reference_logits.json".into(),
                message: format!(
                    "logits.{p}: {} values at position {p}; expected {vocab} at a position < {n}",
                    want.len()
                ),
            });
        }
        let got = &logits[p * vocab..(p + 1) * vocab];
        let max_abs_dlogit =
            got.iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, |m, x| if x.is_nan() { f32::NAN } else { m.max(x) });
        positions.push(PositionDelta { position: p, max_abs_dlogit, argmax_agrees: argmax(got) == argmax(want) });
    }
    let max_abs_dlogit =
        positions.iter().map(|p| p.max_abs_dlogit).fold(0.0f32, |m, x| if x.is_nan() { f32::NAN } else { m.max(x) });
    let max_abs_dnll_first = reference
        .nll_first_16
        .iter()
        .zip(&nll)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f64, |m, x| if x.is_nan() { f64::NAN } else { m.max(x) });
    Ok(LogitsReport {
        positions,
        max_abs_dlogit,
        mean_nll,
        reference_mean_nll: reference.mean_nll,
        max_abs_dnll_first,
        seconds,
    })
}

/// Negative log-likelihood of `target` under `logits`.
pub fn token_nll(logits: &[f32], target: u32) -> f64 {
    log_sum_exp(logits) - logits[target as usize] as f64
}

/// Index of the largest value (first on ties).
pub fn argmax(x: &[f32]) -> usize {
    x.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) }).0
}
