//! Exact softmax attention of one query head over a set of token ranges: the one kernel behind both
//! dense attention and HGA's final step, so that full-budget HGA and dense differ only in summation order.

/// Attends `q` (one head, `d` elements) over the tokens in `ranges` (half-open, ascending, disjoint) of
/// one KV head whose keys and values are `[token][d]`; writes `out` (`d` elements).
pub(crate) fn attend_ranges(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    ranges: &[(usize, usize)],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let d = q.len();
    scores.clear();
    for &(a, b) in ranges {
        for t in a..b {
            scores.push(dot(q, &keys[t * d..(t + 1) * d]) * scale);
        }
    }
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    out.fill(0.0);
    let mut i = 0;
    for &(a, b) in ranges {
        for t in a..b {
            let w = scores[i] / sum;
            i += 1;
            for (o, &v) in out.iter_mut().zip(&values[t * d..(t + 1) * d]) {
                *o += w * v;
            }
        }
    }
}

/// Dot product with four independent accumulators (vectorizes; deterministic order).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}
