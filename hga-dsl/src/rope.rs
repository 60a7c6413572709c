//! RoPE as the rest of the workspace needs it: inverse frequencies (with scaling), the dimension pairs,
//! rotation by a possibly fractional position, and the mixed-RoPE high-frequency mask (DESIGN.md §1).

use crate::model::{RopeScaling, RopeStyle};
use crate::spec::ValidSpec;

/// Rotary embedding of one validated spec: one entry per rotary pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    style: RopeStyle,
    rotary_dim: usize,
    inv_freq: Vec<f64>,
}

impl Rope {
    /// The RoPE of a validated spec.
    pub fn of(spec: &ValidSpec) -> Rope {
        let m = spec.model();
        let rotary_dim = m.rotary_dim.unwrap_or(m.head_dim) as usize;
        let half = rotary_dim / 2;
        let inv_freq = (0..half)
            .map(|i| {
                let f = m.rope_theta.powf(-(2.0 * i as f64) / rotary_dim as f64);
                scale(f, m.rope_scaling.as_ref())
            })
            .collect();
        Rope { style: m.rope_style, rotary_dim, inv_freq }
    }

    /// Inverse frequency of pair `i` (after scaling).
    pub fn inv_freq(&self) -> &[f64] {
        &self.inv_freq
    }

    /// Number of rotary pairs.
    pub fn pairs(&self) -> usize {
        self.inv_freq.len()
    }

    /// Rotary dimensions.
    pub fn rotary_dim(&self) -> usize {
        self.rotary_dim
    }

    /// The two head dimensions rotated together by pair `i`.
    pub fn pair(&self, i: usize) -> (usize, usize) {
        match self.style {
            RopeStyle::Neox => (i, i + self.rotary_dim / 2),
            RopeStyle::Gptj => (2 * i, 2 * i + 1),
        }
    }

    /// Rotates `x` (one head vector) in place to position `pos` (fractional positions allowed).
    pub fn rotate(&self, x: &mut [f32], pos: f64) {
        for (i, &f) in self.inv_freq.iter().enumerate() {
            let (a, b) = self.pair(i);
            let (s, c) = (pos * f).sin_cos();
            let (xa, xb) = (x[a] as f64, x[b] as f64);
            x[a] = (xa * c - xb * s) as f32;
            x[b] = (xa * s + xb * c) as f32;
        }
    }

    /// Undoes [`Rope::rotate`] at `pos`: recovers the pre-RoPE vector.
    pub fn unrotate(&self, x: &mut [f32], pos: f64) {
        self.rotate(x, -pos)
    }

    /// Mixed-RoPE mask: `true` where pair `i` is high-frequency (`(chunk-1)·inv_freq > 0.5`) and its
    /// summary takes the token-wise sum; `false` where it takes the anchor-rotated raw sum.
    pub fn high_frequency(&self, chunk: u32) -> Vec<bool> {
        self.inv_freq.iter().map(|&f| (chunk as f64 - 1.0) * f > 0.5).collect()
    }
}

fn scale(inv_freq: f64, scaling: Option<&RopeScaling>) -> f64 {
    match scaling {
        None => inv_freq,
        Some(RopeScaling::Linear { factor }) => inv_freq / factor,
        Some(&RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position }) => {
            // Same piecewise rule as Hugging Face `_compute_llama3_parameters`.
            let old = original_max_position as f64;
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            let wavelen = 2.0 * std::f64::consts::PI / inv_freq;
            if wavelen < high_wavelen {
                inv_freq
            } else if wavelen > low_wavelen {
                inv_freq / factor
            } else {
                let smooth = (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
            }
        }
    }
}
