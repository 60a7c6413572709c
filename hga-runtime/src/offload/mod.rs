//! The K/V offload tiers' host-side pieces (DESIGN.md §3), testable without a GPU:
//!
//! - [`RecordLayout`]: the group record, `g × D` keys then `g × D` values, adjacent.
//! - [`Arena`]: record slots in blocks that never move (growth without copying), within a RAM budget;
//!   blocks come from a [`BlockSource`] (heap here, pinned device-mapped memory on the GPU path).
//! - [`HostStore`]: the group-contiguous host store, (layer, sequence, KV head, group) → record.
//! - [`PartitionModel`]: one (row, KV head) slot partition as the GPU resolve runs it, under an
//!   [`Eviction`] policy: the model the GPU tests compare against, and an eviction simulator.
//! - [`SlotPool`]: the index of the GPU working set (slots of one group each), LRU eviction, groups of
//!   the current step pinned.
//! - [`PinnedBuffer`], [`PinnedSource`] (feature `cuda`): page-locked, device-mapped host memory.

mod arena;
mod host_store;
mod partition;
#[cfg(feature = "cuda")]
mod pinned;
mod record;
mod slot_pool;

pub use arena::{Arena, BlockSource, HeapSource, HostBlock, RecordRef};
pub use host_store::HostStore;
pub use partition::{recent_steps, Eviction, PartitionModel, Resolved};
#[cfg(feature = "cuda")]
pub use pinned::{PinnedBuffer, PinnedSource};
pub use record::{bf16_to_f32, f32_to_bf16, RecordLayout};
pub use slot_pool::{GroupKey, Placement, SlotPool};
