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
            ScoreKind::MixedRope => out.extend(self.mixed(sum_rows(keys, d), keys, start)),
            ScoreKind::MeanVar => {
                let inv = 1.0 / (keys.len() / d) as f32;
                let sum = sum_rows(keys, d);
                out.extend(self.mixed(sum.clone(), keys, start).into_iter().map(|x| x * inv));
                // E[k²] − E[k]² of the rotated keys, both sums in token order (as a kernel's one pass).
                let mut sq = vec![0.0f32; d];
                for k in keys.chunks_exact(d) {
                    for j in 0..d {
                        sq[j] += k[j] * k[j];
                    }
                }
                out.extend(sq.iter().zip(&sum).map(|(&s2, &s1)| (s2 * inv - (s1 * inv) * (s1 * inv)).max(0.0)));
            }
            other => unreachable!("score kind {other:?} has no CPU summary"),
        }
    }

    /// The reference summary from `summary`, the token-wise sum of `keys`: kept on high-frequency
    /// pairs, replaced by the raw (pre-RoPE) sum rotated to the span's centre on low-frequency ones.
    fn mixed(&self, mut summary: Vec<f32>, keys: &[f32], start: usize) -> Vec<f32> {
        let d = self.head_dim;
        let n = keys.len() / d;
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
        summary
    }

    /// Score of a summary for query `q` (one head), scaled by `scale`.
    pub(crate) fn score(&self, q: &[f32], summary: &[f32], scale: f32) -> f32 {
        let d = self.head_dim;
        match self.kind {
            ScoreKind::MinMax => {
                let (lo, hi) = summary.split_at(d);
                let mut s = 0.0f32;
                for j in 0..d {
                    s += (q[j] * lo[j]).max(q[j] * hi[j]);
                }
                s * scale
            }
            ScoreKind::MeanVar => {
                let (mean, var) = summary.split_at(d);
                let spread: f32 = q.iter().zip(var).map(|(&x, &v)| x * x * v).sum();
                (dot(q, mean) + ScoreKind::MEANVAR_SPREAD * scale * spread) * scale
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

#[cfg(test)]
mod tests {
    use super::*;
    use hga_dsl::{ModelShape, Routing, Spec};

    fn summarizer(kind: ScoreKind) -> Summarizer {
        let spec = Spec::new(ModelShape::new(8, 2, 64, 1e6))
            .with_routing(Routing { score: kind, ..Routing::default() })
            .validate()
            .unwrap();
        Summarizer::new(kind, spec.rope(), 64, 64)
    }

    /// Two spans of 16 keys with the same mean, one of them spread along the query: the mean-variance
    /// score ranks the spread one first (its largest logits are larger), by λ·s·(q²·σ²) exactly; the
    /// reference's sum cannot tell them apart.
    #[test]
    fn meanvar_ranks_spread_keys_above_tight_ones() {
        let (d, n) = (64, 16);
        let mut q = vec![0.0f32; d];
        q[0] = 4.0;
        q[1] = -2.0;
        let base: Vec<f32> = (0..d).map(|j| 0.25 * ((j % 7) as f32 - 3.0)).collect();
        let tight: Vec<f32> = (0..n).flat_map(|_| base.clone()).collect();
        // ±1 on dimension 0 about the same mean: variance 1 there, none elsewhere.
        let spread: Vec<f32> = (0..n)
            .flat_map(|t| {
                let mut k = base.clone();
                k[0] += if t % 2 == 0 { 1.0 } else { -1.0 };
                k
            })
            .collect();
        let scale = 1.0 / (d as f32).sqrt();
        let score = |s: &Summarizer, keys: &[f32]| {
            let mut out = Vec::new();
            s.summarize_f32(keys, 640, &mut out);
            assert_eq!(out.len(), s.width());
            s.score(&q, &out, scale)
        };
        let mv = summarizer(ScoreKind::MeanVar);
        let gain = score(&mv, &spread) - score(&mv, &tight);
        let want = ScoreKind::MEANVAR_SPREAD * scale * q[0] * q[0] * scale;
        assert!((gain - want).abs() <= 1e-4 * want, "gain {gain}, want {want}");
        let sum = summarizer(ScoreKind::SumRotated);
        assert!((score(&sum, &spread) - score(&sum, &tight)).abs() < 1e-4);
    }
}
