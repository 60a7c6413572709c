//! Dense causal attention: the oracle for HGA at full budget.

use super::attend::attend_ranges;
use super::layout::HeadLayout;
use crate::RuntimeError;
use rayon::prelude::*;

/// Dense causal attention.
///
/// `q` is `[n_q][q_heads][d]` (after RoPE); query `i` sits at position `q_start + i` and attends keys
/// `0..=q_start + i`. `k` and `v` are `[n_kv][kv_heads][d]` (keys after RoPE) with
/// `n_kv ≥ q_start + n_q`. `out` is `[n_q][q_heads][d]`. Softmax scale `1/√d`, f32 arithmetic.
pub fn dense_causal(
    layout: &HeadLayout,
    q: &[f32],
    q_start: usize,
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
) -> Result<(), RuntimeError> {
    let n_q = layout.tokens("q", q, layout.q_heads)?;
    let n_kv = layout.tokens("k", k, layout.kv_heads)?;
    HeadLayout::exact("v", v, k.len())?;
    layout.tokens("v", v, layout.kv_heads)?;
    HeadLayout::exact("out", out, q.len())?;
    if n_q > 0 && q_start + n_q > n_kv {
        return Err(RuntimeError::PositionOutOfRange { field: "q_start + n_q - 1", pos: q_start + n_q - 1, len: n_kv });
    }
    let d = layout.head_dim;
    // Per-KV-head contiguous copies so that each head's scan is a linear walk.
    let split = |x: &[f32]| -> Vec<Vec<f32>> {
        (0..layout.kv_heads)
            .map(|h| (0..n_kv).flat_map(|t| &x[(t * layout.kv_heads + h) * d..][..d]).copied().collect())
            .collect()
    };
    let (kh, vh) = (split(k), split(v));
    let gqa = layout.gqa();
    let scale = layout.scale();
    out.par_chunks_mut(d).enumerate().for_each_init(Vec::new, |scores, (row, o)| {
        let (i, head) = (row / layout.q_heads, row % layout.q_heads);
        let pos = q_start + i;
        let kv = head / gqa;
        attend_ranges(&q[row * d..(row + 1) * d], &kh[kv], &vh[kv], &[(0, pos + 1)], scale, scores, o);
    });
    Ok(())
}
