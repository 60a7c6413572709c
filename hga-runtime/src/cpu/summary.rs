//! Chunk and group summaries (DESIGN.md §1) and how a query scores them.

use super::attend::dot;
use hga_dsl::{Rope, ScoreKind};

/// Builds summaries of one KV head's spans for one score kind.
#[derive(Debug, Clone)]
pub(crate) struct Summarizer {
    kind: ScoreKind,
    rope: Rope,
    /// Mixed RoPE: per rotary pair, true = token-wise sum, false = anchor-rotated raw sum.
    high_freq: Vec<bool>,
    head_dim: usize,
}

impl Summarizer {
    pub(crate) fn new(kind: ScoreKind, rope: Rope, chunk: u32, head_dim: usize) -> Self {
        let high_freq = rope.high_frequency(chunk);
        Summarizer { kind, rope, high_freq, head_dim }
    }

    /// Floats per summary.
    pub(crate) fn width(&self) -> usize {
        self.kind.vectors() * self.head_dim
    }

    /// Appends to `out` the summary of the span of `n` tokens starting at position `start`, whose
    /// post-RoPE keys are `keys` (`[n][d]`). Computed in f32, stored rounded to bf16 (to nearest even),
    /// the precision of the GPU's summary tables: half the HBM of f32 tables, bf16's range for sums of
    /// many keys, and the same routing on both backends.
    pub(crate) fn summarize(&self, keys: &[f32], start: usize, out: &mut Vec<f32>) {
        let first = out.len();
        self.summarize_f32(keys, start, out);
        for x in &mut out[first..] {
            *x = half::bf16::from_f32(*x).to_f32();
        }
    }

    fn summarize_f32(&self, keys: &[f32], start: usize, out: &mut Vec<f32>) {
        let d = self.head_dim;
        let n = keys.len() / d;
        match self.kind {
            ScoreKind::MinMax => {
                let mut lo = vec![f32::INFINITY; d];
                let mut hi = vec![f32::NEG_INFINITY; d];
                for k in keys.chunks_exact(d) {
                    for j in 0..d {
                        lo[j] = lo[j].min(k[j]);
                        hi[j] = hi[j].max(k[j]);
                    }
                }
                out.extend_from_slice(&lo);
                out.extend_from_slice(&hi);
            }
            ScoreKind::SumRotated => out.extend(sum_rows(keys, d)),
            ScoreKind::MixedRope => {
                let mut summary = sum_rows(keys, d);
                // Anchor: sum of pre-RoPE keys rotated to the span's centre.
                let mut raw = vec![0.0f32; d];
                let mut row = vec![0.0f32; d];
                for (i, k) in keys.chunks_exact(d).enumerate() {
                    row.copy_from_slice(k);
                    self.rope.unrotate(&mut row, (start + i) as f64);
                    for j in 0..d {
                        raw[j] += row[j];
                    }
                }
                self.rope.rotate(&mut raw, start as f64 + (n as f64 - 1.0) / 2.0);
                for (i, &hf) in self.high_freq.iter().enumerate() {
                    if !hf {
                        let (a, b) = self.rope.pair(i);
                        summary[a] = raw[a];
                        summary[b] = raw[b];
                    }
                }
                out.extend(summary);
            }
            other => unreachable!("score kind {other:?} has no CPU summary"),
        }
    }

    /// Score of a summary for query `q` (one head), scaled by `scale`.
    pub(crate) fn score(&self, q: &[f32], summary: &[f32], scale: f32) -> f32 {
        match self.kind {
            ScoreKind::MinMax => {
                let d = self.head_dim;
                let (lo, hi) = summary.split_at(d);
                let mut s = 0.0f32;
                for j in 0..d {
                    s += (q[j] * lo[j]).max(q[j] * hi[j]);
                }
                s * scale
            }
            _ => dot(q, summary) * scale,
        }
    }
}

fn sum_rows(keys: &[f32], d: usize) -> Vec<f32> {
    let mut s = vec![0.0f32; d];
    for k in keys.chunks_exact(d) {
        for j in 0..d {
            s[j] += k[j];
        }
    }
    s
}
