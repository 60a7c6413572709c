//! The CPU backend: f32, exactly the semantics of DESIGN.md §1.
//!
//! - [`dense_causal`]: dense causal attention, the oracle.
//! - [`LayerCache`]: one sequence's K/V and summaries for one layer; decode and prefill attention.
//! - [`RouteTrace`]: which chunks and groups each query head opened.

mod attend;
mod dense;
mod layer_cache;
mod layout;
mod route;
mod summary;

pub use dense::dense_causal;
pub use layer_cache::LayerCache;
pub use layout::HeadLayout;
pub use route::{HeadRoute, RouteTrace};
