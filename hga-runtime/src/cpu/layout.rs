//! Head counts and buffer-length checks shared by the CPU entry points.

use crate::RuntimeError;
use hga_dsl::ValidSpec;

/// Head counts of one attention layer. Buffers are row-major `[token][head][head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLayout {
    /// Query heads.
    pub q_heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
}

impl HeadLayout {
    /// The layout of a validated spec.
    pub fn of(spec: &ValidSpec) -> Self {
        let m = spec.model();
        HeadLayout { q_heads: m.q_heads as usize, kv_heads: m.kv_heads as usize, head_dim: m.head_dim as usize }
    }

    /// Query heads per KV head.
    pub fn gqa(&self) -> usize {
        self.q_heads / self.kv_heads
    }

    /// Softmax scale `1/√D`.
    pub fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// Checks that `buf` holds a whole number of tokens of `heads` heads; returns the token count.
    pub(crate) fn tokens(&self, field: &'static str, buf: &[f32], heads: usize) -> Result<usize, RuntimeError> {
        let row = heads * self.head_dim;
        if buf.len() % row != 0 {
            return Err(RuntimeError::ShapeMismatch {
                field,
                expected: format!("a multiple of {heads} heads × {} = {row}", self.head_dim),
                got: buf.len(),
            });
        }
        if let Some(index) = buf.iter().position(|x| !x.is_finite()) {
            return Err(RuntimeError::NotFinite { field, index });
        }
        Ok(buf.len() / row)
    }

    /// Checks that `buf` has exactly `expected` elements.
    pub(crate) fn exact(field: &'static str, buf: &[f32], expected: usize) -> Result<(), RuntimeError> {
        if buf.len() != expected {
            return Err(RuntimeError::ShapeMismatch { field, expected: expected.to_string(), got: buf.len() });
        }
        Ok(())
    }
}
