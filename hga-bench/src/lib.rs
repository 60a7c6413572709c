//! What the device benchmarks of this crate (`hga-bench`, `hga_kernel_bench`) share.

/// Median of `v` (sorted in place, upper median for an even count); NaN for no samples (a small
/// `hga_kernel_bench --iters` leaves some step kinds untimed).
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_samples() {
        assert!(super::median(&mut []).is_nan());
        assert_eq!(super::median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&mut [4.0, 1.0, 3.0, 2.0]), 3.0);
    }
}
