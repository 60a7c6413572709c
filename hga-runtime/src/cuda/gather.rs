//! `hga_gather_misses` (`gather.cu`): the fetch of a speculative prefetch. It copies the groups the
//! prefetch's resolve gave slots from their host records into those slots, without the attention that
//! fills them in a real step. Not generated per spec: the layout sizes are arguments, so one module
//! serves every variant.

use hga_dsl::codegen::{GeneratedSource, LaunchParams};

const SOURCE: &str = include_str!("gather.cu");

/// Entry point of the gather module.
pub const GATHER_ENTRY: &str = "hga_gather_misses";

/// Threads per block of [`GATHER_ENTRY`] (one warp per union entry at a time).
pub const GATHER_THREADS: u32 = 256;

/// Warps a gather launches in all (at least one block per row and KV head): each keeps eight 16-byte
/// loads per lane in flight, so 256 warps have 1 MiB in flight, several times PCIe's
/// bandwidth-delay product (~55 GB/s × ~2 µs).
pub const GATHER_WARPS: u32 = 256;

/// The gather module's source for the JIT (`launch` only fills the field; the kernel ignores it).
pub fn gather_source(launch: &LaunchParams) -> GeneratedSource {
    GeneratedSource {
        source: SOURCE.to_string(),
        entry_points: vec![GATHER_ENTRY],
        variant_key: "hga_gather_misses".to_string(),
        generator_version: "hga-gather-1",
        launch: launch.clone(),
    }
}
