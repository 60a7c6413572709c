//! Matrix products (through `matrixmultiply`, parallelized with rayon) and the elementwise pieces of
//! the forward pass.

use rayon::prelude::*;

/// A strided read-only matrix view: element `(i, j)` is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// Row-major `[rows][cols]`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        View { data, rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose of row-major `[cols][rows]` (a PyTorch `[out][in]` weight seen as `[in][out]`).
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        View { data, rows, cols, rs: 1, cs: rows }
    }

    fn fits(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `c = a·b + beta·c` with `c` row-major `[a.rows][b.cols]` of row stride `ldc`. Single-threaded; callers
/// parallelize over independent blocks. With `beta == 0` the old contents of `c` are ignored.
pub(crate) fn gemm(a: View, b: View, beta: f32, c: &mut [f32], ldc: usize) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "gemm: inner dimensions differ");
    assert!(a.fits() && b.fits(), "gemm: view exceeds its buffer");
    assert!(ldc >= n && (m == 0 || n == 0 || (m - 1) * ldc + n <= c.len()), "gemm: output exceeds its buffer");
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: every index the kernel touches lies inside the buffers: checked by the asserts above.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}

/// Rows per parallel task of [`linear`]: big enough that packing the weight is amortized.
const ROWS_PER_TASK: usize = 64;

/// Up to this many rows, [`linear`] uses dot products instead of a GEMM.
const GEMV_ROWS: usize = 4;

/// Dot product with eight independent accumulators (vectorizes).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..16 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y[n][out] = x[n][in] · wᵀ` for a PyTorch weight `w: [out][in]`, in parallel over row blocks.
pub(crate) fn linear(x: &[f32], w: &[f32], in_dim: usize, out_dim: usize, y: &mut [f32]) {
    let n = x.len() / in_dim;
    assert_eq!(w.len(), in_dim * out_dim, "linear: weight shape");
    assert_eq!(y.len(), n * out_dim, "linear: output shape");
    if n <= GEMV_ROWS {
        // Decode: a GEMM would pack (copy) the whole weight for one row; dot products read it once.
        y.par_chunks_mut(out_dim).zip(x.par_chunks(in_dim)).for_each(|(yr, xr)| {
            yr.par_chunks_mut(256).enumerate().for_each(|(c, yc)| {
                for (j, yo) in yc.iter_mut().enumerate() {
                    let o = c * 256 + j;
                    *yo = dot(xr, &w[o * in_dim..(o + 1) * in_dim]);
                }
            })
        });
        return;
    }
    let rows = ROWS_PER_TASK.max(n.div_ceil(rayon::current_num_threads().max(1) * 4));
    y.par_chunks_mut(rows * out_dim).zip(x.par_chunks(rows * in_dim)).for_each(|(yc, xc)| {
        let r = xc.len() / in_dim;
        gemm(View::rows(xc, r, in_dim), View::transposed(w, in_dim, out_dim), 0.0, yc, out_dim);
    });
}

/// RMSNorm of each `weight.len()`-wide row of `x` in place: `x · w / √(mean(x²) + eps)`.
pub(crate) fn rms_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    for row in x.chunks_exact_mut(weight.len()) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for (v, w) in row.iter_mut().zip(weight) {
            *v = *v * r * w;
        }
    }
}

/// [`rms_norm`] of `x` into `out`, rows in parallel.
pub(crate) fn rms_norm_into(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    out.copy_from_slice(x);
    out.par_chunks_mut(weight.len() * 16).for_each(|rows| rms_norm(rows, weight, eps));
}

/// SwiGLU of stacked `[n][2·m]` gate-up rows into `[n][m]`: `silu(gate) · up`.
pub(crate) fn swiglu(gate_up: &[f32], m: usize, out: &mut [f32]) {
    out.par_chunks_mut(m).zip(gate_up.par_chunks(2 * m)).for_each(|(o, gu)| {
        let (g, u) = gu.split_at(m);
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    });
}

/// `log Σ exp(x)`.
pub(crate) fn log_sum_exp(x: &[f32]) -> f64 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    max + x.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

/// `x ← exp(x − shift)` over the slice, returning the sum. A Cephes-style polynomial (≈1 ulp on the
/// softmax range `x − shift ≤ 0`) written so the loop vectorizes: `f32::exp` would cost more than the
/// score GEMM in dense attention. Compiled for AVX-512 or AVX2 when the CPU has them (no FMA
/// contraction, so every path gives the same bits).
pub(crate) fn exp_shifted_sum(x: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { exp_shifted_sum_avx512(x, shift) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { exp_shifted_sum_avx2(x, shift) };
        }
    }
    exp_shifted_sum_portable(x, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn exp_shifted_sum_avx512(x: &mut [f32], shift: f32) -> f32 {
    exp_shifted_sum_portable(x, shift)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn exp_shifted_sum_avx2(x: &mut [f32], shift: f32) -> f32 {
    exp_shifted_sum_portable(x, shift)
}

#[inline(always)]
fn exp_shifted_sum_portable(x: &mut [f32], shift: f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        for (v, a) in c.iter_mut().zip(acc.iter_mut()) {
            *v = fast_exp(*v - shift);
            *a += *v;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for v in chunks.into_remainder() {
        *v = fast_exp(*v - shift);
        sum += *v;
    }
    sum
}

/// Largest element (−∞ for an empty slice), with independent lanes so that it vectorizes.
pub(crate) fn max_of(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// `e^x` for `x ≤ 88`; inputs below −87 give ≈0 (a softmax weight below 1e-38).
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2^23: adding and subtracting rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // `t`'s low mantissa bits hold the integer n (|n| ≤ 127): 2^n without a float-to-int conversion,
    // whose saturating `as` would not vectorize.
    e * f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn seed() -> u64 {
        let s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        println!("seed {s}");
        s
    }

    #[test]
    fn linear_matches_naive() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
        let n = if rng.random_bool(0.5) { rng.random_range(1..=GEMV_ROWS) } else { rng.random_range(1..300) };
        let (i, o) = (rng.random_range(1..70), rng.random_range(1..600));
        let x: Vec<f32> = (0..n * i).map(|_| rng.random_range(-1.0..1.0)).collect();
        let w: Vec<f32> = (0..o * i).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut y = vec![f32::NAN; n * o];
        linear(&x, &w, i, o, &mut y);
        for r in 0..n {
            for c in 0..o {
                let want: f64 = (0..i).map(|j| x[r * i + j] as f64 * w[c * i + j] as f64).sum();
                let norm: f64 = (0..i).map(|j| (x[r * i + j] as f64 * w[c * i + j] as f64).abs()).sum();
                let got = y[r * o + c] as f64;
                assert!((got - want).abs() <= 1e-5 * norm.max(1e-3), "({r},{c}): {got} vs {want}");
            }
        }
    }

    #[test]
    fn fast_exp_is_accurate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
        for _ in 0..100_000 {
            let x: f32 = rng.random_range(-80.0..80.0);
            let (got, want) = (fast_exp(x) as f64, (x as f64).exp());
            assert!(((got - want) / want).abs() < 4e-7, "exp({x}) = {got}, want {want}");
        }
        assert_eq!(fast_exp(0.0), 1.0);
        assert!(fast_exp(-1000.0) < 1e-37 && fast_exp(-1000.0) >= 0.0);
        let mut v = vec![0.0f32, -1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0];
        let s = exp_shifted_sum(&mut v, -1.0);
        let want: f64 = (0..10).map(|i| (1.0 - i as f64).exp()).sum();
        assert!((s as f64 - want).abs() < 1e-6 * want);
        let mut long: Vec<f32> = (0..1000).map(|_| rng.random_range(-30.0..0.0)).collect();
        let want: Vec<f64> = long.iter().map(|&x| (x as f64 + 2.0).exp()).collect();
        let s = exp_shifted_sum(&mut long, -2.0) as f64;
        assert!((s - want.iter().sum::<f64>()).abs() < 1e-5 * s);
        for (g, w) in long.iter().zip(&want) {
            assert!((*g as f64 - w).abs() <= 4e-7 * w, "{g} vs {w}");
        }
        assert_eq!(max_of(&[]), f32::NEG_INFINITY);
        let xs: Vec<f32> = (0..37).map(|_| rng.random_range(-5.0..5.0)).collect();
        assert_eq!(max_of(&xs), xs.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    }

    #[test]
    fn rms_norm_unit_rows() {
        let mut x = vec![3.0f32, -4.0, 0.0, 0.0];
        rms_norm(&mut x, &[1.0, 2.0, 1.0, 1.0], 0.0);
        let r = (25.0f32 / 4.0).sqrt();
        assert_eq!(x, vec![3.0 / r, -8.0 / r, 0.0, 0.0]);
    }
}
