//! Kernel parameters: the compile-time tile and launch choices of the generated CUDA kernels.

use serde::{Deserialize, Serialize};

/// Tile and launch parameters of the generated kernels (the autotuner's search space).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KernelParams {
    /// Threads per block of the attention and scoring kernels (a multiple of 32).
    pub threads: u32,
    /// Splits of the attended token set per (sequence, KV head); the last split to finish merges them.
    pub split_k: u32,
    /// Tokens per warp pass of the attention kernel: a warp loads this many tokens' keys and values into
    /// registers at once (the generator clamps it to 16..=32 at head dimensions up to 128 and to 16
    /// beyond, see `codegen::max_warp_tile`). Validation still asks for a multiple or a divisor of the
    /// routing group, a rule of the earlier block-tiled kernels kept until other group sizes have run on
    /// the GPU.
    pub tile_tokens: u32,
    /// Elements per vector load (16-byte loads of bf16 are 8).
    pub vec_width: u32,
}

impl Default for KernelParams {
    fn default() -> Self {
        KernelParams { threads: 128, split_k: 4, tile_tokens: 64, vec_width: 8 }
    }
}

/// Allowed values, shared by validation and the tuner's search space.
pub mod allowed {
    /// `kernel.threads`.
    pub const THREADS: &[u32] = &[64, 128, 256, 512];
    /// `kernel.split_k` range (inclusive).
    pub const SPLIT_K: (u32, u32) = (1, 64);
    /// `kernel.tile_tokens`.
    pub const TILE_TOKENS: &[u32] = &[16, 32, 64, 128];
    /// `kernel.vec_width`.
    pub const VEC_WIDTH: &[u32] = &[2, 4, 8];
    /// `model.head_dim`.
    pub const HEAD_DIM: &[u32] = &[64, 96, 128, 256];
}
