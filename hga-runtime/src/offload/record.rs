//! The group record: the unit of the host store and of the GPU working set (DESIGN.md §3).

/// Shape of one group record: `group × head_dim` keys, then `group × head_dim` values, adjacent, in
/// 2-byte elements (bf16 or f16 bits). With `head_dim` 128 and `group` 16: 4 KiB K + 4 KiB V.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLayout {
    /// Tokens per group `g`.
    pub group: usize,
    /// Elements per head `D`.
    pub head_dim: usize,
}

impl RecordLayout {
    /// Elements of one record (keys and values).
    pub fn elems(&self) -> usize {
        2 * self.group * self.head_dim
    }

    /// Bytes of one record.
    pub fn bytes(&self) -> usize {
        2 * self.elems()
    }
}

/// Rounds an f32 to bf16 bits (round to nearest even; NaN stays NaN).
pub fn f32_to_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// The f32 value of bf16 bits (exact).
pub fn bf16_to_f32(x: u16) -> f32 {
    half::bf16::from_bits(x).to_f32()
}
