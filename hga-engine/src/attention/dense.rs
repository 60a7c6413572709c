//! Dense causal attention as blocked GEMMs with an online softmax (flash-attention order): the
//! baseline of every evaluation, and fast enough for 32K-token documents on two cores.

use super::{check_layer, rows_of, Heads, PositionStats, SequenceAttention};
use crate::config::ModelConfig;
use crate::error::EngineError;
use crate::linalg::{exp_shifted_sum, gemm, max_of, View};
use rayon::prelude::*;

/// Queries per task (times the GQA factor: the query heads of one KV head share a GEMM).
const QUERY_BLOCK: usize = 64;
/// Keys per softmax tile: the score tile `[gqa·QUERY_BLOCK][KEY_TILE]` stays in L2.
const KEY_TILE: usize = 512;

/// Dense causal attention over the K/V appended per layer.
#[derive(Debug, Clone)]
pub struct DenseAttention {
    heads: Heads,
    /// Per layer, per KV head, `[token][d]`.
    keys: Vec<Vec<Vec<f32>>>,
    values: Vec<Vec<Vec<f32>>>,
}

impl DenseAttention {
    /// An empty sequence for a model of `cfg`.
    pub fn new(cfg: &ModelConfig) -> Self {
        let heads = Heads::of(cfg);
        let empty = vec![vec![Vec::new(); heads.kv]; cfg.layers];
        DenseAttention { heads, keys: empty.clone(), values: empty }
    }
}

impl SequenceAttention for DenseAttention {
    fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<(), EngineError> {
        let h = self.heads;
        rows_of("k", k, h.kv * h.dim)?;
        if v.len() != k.len() {
            return Err(hga_runtime::RuntimeError::ShapeMismatch {
                field: "v",
                expected: k.len().to_string(),
                got: v.len(),
            }
            .into());
        }
        let l = check_layer(layer, self.keys.len())?;
        let (keys, values) = (&mut self.keys[l], &mut self.values[l]);
        for (kt, vt) in k.chunks_exact(h.kv * h.dim).zip(v.chunks_exact(h.kv * h.dim)) {
            for j in 0..h.kv {
                keys[j].extend_from_slice(&kt[j * h.dim..(j + 1) * h.dim]);
                values[j].extend_from_slice(&vt[j * h.dim..(j + 1) * h.dim]);
            }
        }
        Ok(())
    }

    fn attend(
        &self,
        layer: usize,
        q: &[f32],
        start: usize,
        out: &mut [f32],
        stats: &mut [PositionStats],
    ) -> Result<(), EngineError> {
        let l = check_layer(layer, self.keys.len())?;
        blocked_causal(self.heads, q, start, &self.keys[l], &self.values[l], out)?;
        for (i, s) in stats.iter_mut().enumerate() {
            let visible = (self.heads.q * (start + i + 1)) as u64;
            s.attended += visible;
            s.visible += visible;
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.keys.last().map_or(0, |k| k[0].len() / self.heads.dim)
    }
}

/// Dense causal attention of `q` (`[n][q_heads][d]`) at positions `start..start + n` over per-KV-head
/// keys and values (`keys[h]`: `[token][d]`, at least `start + n` tokens) into `out` (`[n][q_heads][d]`).
/// Scale `1/√d`; f32 with an online softmax over key tiles.
pub fn blocked_causal(
    heads: Heads,
    q: &[f32],
    start: usize,
    keys: &[Vec<f32>],
    values: &[Vec<f32>],
    out: &mut [f32],
) -> Result<(), EngineError> {
    let d = heads.dim;
    let n = rows_of("q", q, heads.q * d)?;
    if out.len() != q.len() {
        return Err(hga_runtime::RuntimeError::ShapeMismatch {
            field: "out",
            expected: q.len().to_string(),
            got: out.len(),
        }
        .into());
    }
    let have = keys.first().map_or(0, |k| k.len() / d);
    if n > 0 && start + n > have {
        return Err(hga_runtime::RuntimeError::PositionOutOfRange {
            field: "start + n - 1",
            pos: start + n - 1,
            len: have,
        }
        .into());
    }
    let gqa = heads.gqa();
    let scale = 1.0 / (d as f32).sqrt();
    let tasks: Vec<(usize, usize)> =
        (0..n).step_by(QUERY_BLOCK).flat_map(|b| (0..heads.kv).map(move |h| (b, h))).collect();
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(b, kv)| {
            let nb = QUERY_BLOCK.min(n - b);
            // Packed queries of this KV head's query heads: row g·nb + i is head kv·gqa + g, query b + i.
            let m = gqa * nb;
            let mut qp = vec![0.0f32; m * d];
            let mut pos = vec![0usize; m];
            for g in 0..gqa {
                for i in 0..nb {
                    let src = &q[((b + i) * heads.q + kv * gqa + g) * d..][..d];
                    for (x, &y) in qp[(g * nb + i) * d..][..d].iter_mut().zip(src) {
                        *x = y * scale;
                    }
                    pos[g * nb + i] = start + b + i;
                }
            }
            let mut o = vec![0.0f32; m * d];
            flash_rows(&qp, &pos, &keys[kv], &values[kv], d, &mut o);
            o
        })
        .collect();
    for (&(b, kv), o) in tasks.iter().zip(&results) {
        let nb = QUERY_BLOCK.min(n - b);
        for g in 0..gqa {
            for i in 0..nb {
                out[((b + i) * heads.q + kv * gqa + g) * d..][..d].copy_from_slice(&o[(g * nb + i) * d..][..d]);
            }
        }
    }
    Ok(())
}

/// Online-softmax attention of pre-scaled query rows `qp` (`[m][d]`, row `r` at position `pos[r]`) over
/// one KV head's `keys`/`values` (`[token][d]`) into `o` (`[m][d]`).
fn flash_rows(qp: &[f32], pos: &[usize], keys: &[f32], values: &[f32], d: usize, o: &mut [f32]) {
    let m = pos.len();
    let end = pos.iter().max().map_or(0, |p| p + 1);
    let mut s = vec![0.0f32; m * KEY_TILE.min(end)];
    let mut max = vec![f32::NEG_INFINITY; m];
    let mut sum = vec![0.0f32; m];
    o.fill(0.0);
    for t0 in (0..end).step_by(KEY_TILE) {
        let w = KEY_TILE.min(end - t0);
        let s = &mut s[..m * w];
        gemm(View::rows(qp, m, d), View::transposed(&keys[t0 * d..(t0 + w) * d], d, w), 0.0, s, w);
        for r in 0..m {
            let row = &mut s[r * w..(r + 1) * w];
            let valid = (pos[r] + 1).saturating_sub(t0).min(w);
            if valid == 0 {
                row.fill(0.0);
                continue;
            }
            let tile_max = max_of(&row[..valid]);
            let new_max = max[r].max(tile_max);
            if new_max > max[r] && max[r] > f32::NEG_INFINITY {
                let c = (max[r] - new_max).exp();
                sum[r] *= c;
                o[r * d..(r + 1) * d].iter_mut().for_each(|x| *x *= c);
            }
            max[r] = new_max;
            sum[r] += exp_shifted_sum(&mut row[..valid], new_max);
            row[valid..].fill(0.0);
        }
        gemm(View::rows(s, m, w), View::rows(&values[t0 * d..(t0 + w) * d], w, d), 1.0, o, d);
    }
    for r in 0..m {
        let inv = 1.0 / sum[r];
        o[r * d..(r + 1) * d].iter_mut().for_each(|x| *x *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Naive f64 softmax attention of one query head.
    fn naive(q: &[f32], keys: &[f32], values: &[f32], upto: usize, d: usize) -> Vec<f64> {
        let scale = 1.0 / (d as f64).sqrt();
        let s: Vec<f64> =
            (0..upto).map(|t| (0..d).map(|j| q[j] as f64 * keys[t * d + j] as f64).sum::<f64>() * scale).collect();
        let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
        let z: f64 = e.iter().sum();
        (0..d).map(|j| (0..upto).map(|t| e[t] / z * values[t * d + j] as f64).sum()).collect()
    }

    #[test]
    fn matches_naive_softmax() {
        let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let heads = Heads { q: 4, kv: 2, dim: 64 };
        let d = heads.dim;
        let total = rng.random_range(600..1300);
        let start = rng.random_range(0..total - 100);
        let n = total - start;
        let keys: Vec<Vec<f32>> =
            (0..heads.kv).map(|_| (0..total * d).map(|_| rng.random_range(-2.0..2.0)).collect()).collect();
        let values: Vec<Vec<f32>> =
            (0..heads.kv).map(|_| (0..total * d).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        let q: Vec<f32> = (0..n * heads.q * d).map(|_| rng.random_range(-2.0..2.0)).collect();
        let mut out = vec![f32::NAN; q.len()];
        blocked_causal(heads, &q, start, &keys, &values, &mut out).unwrap();
        for i in 0..n {
            for h in 0..heads.q {
                let kv = h / heads.gqa();
                let at = (i * heads.q + h) * d;
                let want = naive(&q[at..at + d], &keys[kv], &values[kv], start + i + 1, d);
                for j in 0..d {
                    let got = out[at + j] as f64;
                    assert!((got - want[j]).abs() < 1e-5, "query {i} head {h} dim {j}: {got} vs {}", want[j]);
                }
            }
        }
    }

    #[test]
    fn rejects_positions_beyond_keys() {
        let heads = Heads { q: 2, kv: 1, dim: 64 };
        let kv = vec![vec![0.5f32; 10 * 64]];
        let q = vec![0.1f32; 2 * 2 * 64];
        let mut out = vec![0.0; q.len()];
        let e = blocked_causal(heads, &q, 9, &kv, &kv, &mut out).unwrap_err().to_string();
        assert!(e.contains("start + n - 1 = 10: must be < the 10 tokens appended"), "{e}");
    }
}
