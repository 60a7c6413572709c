//! The engine-facing API: one [`HgaCache`] per model holds every layer of every live sequence.
//!
//! An engine creates the cache for its model ([`CacheConfig`]: spec, layers, maximum sequence length,
//! memory budgets) on a backend ([`BackendChoice`]), adds a sequence per request, appends each new
//! token's post-RoPE keys and values per layer, and asks per layer for the attention output of a batch
//! of sequences' newest queries. Each step returns [`StepTelemetry`] ([`TelemetryLevel`] says how
//! much). On the GPU backend, keys, values, queries and outputs may also live in device buffers
//! (`append_device`, `attend_device`: never staged through the host), and each layer's attend runs as
//! one CUDA graph unless `CacheConfig::cuda_graph` is off. Bad input returns a typed
//! [`crate::RuntimeError`] and leaves the cache unchanged.
//!
//! ```
//! use hga_dsl::{presets, Spec};
//! use hga_runtime::engine::{BackendChoice, CacheConfig, HgaCache};
//!
//! let spec = Spec::new(presets::find("tiny-code")?.shape).validate()?;
//! let mut cache = HgaCache::new(CacheConfig::new(spec, 2, 1024), BackendChoice::Cpu)?;
//! let l = cache.layout();
//! let seq = cache.add_sequence()?;
//! let (k, v) = (vec![0.1f32; l.kv_heads * l.head_dim], vec![1.0f32; l.kv_heads * l.head_dim]);
//! let q = vec![0.2f32; l.q_heads * l.head_dim];
//! let mut o = vec![0.0f32; l.q_heads * l.head_dim];
//! for layer in 0..2 {
//!     cache.append(seq, layer, &k, &v)?;
//!     let step = cache.attend(layer, &[seq], &q, &mut o)?;
//!     assert_eq!(step.sequences, 1);
//! }
//! assert!(o.iter().all(|x| (x - 1.0).abs() < 1e-6));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cache;
mod config;
mod cpu_backend;
#[cfg(feature = "cuda")]
mod gpu_backend;
mod telemetry;

pub use cache::{BackendChoice, BackendKind, HgaCache, SeqId};
pub use config::{CacheConfig, TelemetryLevel};
pub use telemetry::{StageTimes, StepTelemetry, Totals};
