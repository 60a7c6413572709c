//! The CUDA backend of one decode step: device context, the generated kernels (JIT-compiled through
//! [`crate::jit`]) and the device state of a batch of sequences for one layer.
//!
//! ```no_run
//! use hga_dsl::{presets, Spec};
//! use hga_runtime::cuda::{Capacity, DecodeBatch, DecodeKernels, Gpu};
//! use hga_runtime::jit::Jit;
//! let spec = Spec::new(presets::find("qwen3-30b")?.shape).validate()?;
//! let gpu = Gpu::open(0)?;                                  // typed error without a driver or GPU
//! let kernels = DecodeKernels::load(&gpu, &Jit::from_env()?, &spec)?; // NVRTC or the on-disk cache
//! for r in &kernels.compiled().resources { println!("{r}"); }
//! let cap = Capacity { batch: 1, max_context: 65536, n_slots: 4096 };
//! let mut b = DecodeBatch::new(&gpu, &kernels, cap)?;
//! // Per step: positions, then q/k/v of the new token (bf16 bits), then the whole pipeline.
//! b.set_positions(&[1000])?;
//! let (q, k, v) = (vec![0u16; 32 * 128], vec![0u16; 4 * 128], vec![0u16; 4 * 128]);
//! b.upload_q(&q)?;
//! b.step(&k, &v)?;                 // append, summarize on chunk close, route, fetch, attend, merge
//! let out: Vec<u16> = b.output()?; // [B][q_heads][d] bf16 bits
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! For the tuner: [`DecodeBatch`] exposes each stage as its own launch ([`DecodeBatch::launch_append`],
//! [`DecodeBatch::launch_summarize`], [`DecodeBatch::launch_route`] (chunk score, then select with
//! the resolve fused in: union, slot lookup, slots for the misses), [`DecodeBatch::launch_fetch`]
//! (nothing after a route; `hga_resolve` after [`DecodeBatch::launch_select`] alone),
//! [`DecodeBatch::launch_attend`] (split-K attention that reads the misses from host memory and merges));
//! time them with [`Gpu::timer`] (CUDA events on the batch's stream); [`DecodeBatch::launch_decode`]
//! runs route → fetch → attend back to back. [`DecodeBatch::capture_step`]
//! records a whole step as a CUDA graph ([`StepGraph`]), replayed with [`DecodeBatch::launch_graph`].
//!
//! For engines: one batch holds up to `batch` sequences (rows); [`DecodeBatch::set_rows`] picks the
//! rows of a step (the others sit out untouched), [`DecodeBatch::append_block`] /
//! [`DecodeBatch::append_block_device`] append many tokens of one row in two launches,
//! [`DecodeBatch::reset_row`] frees a row for a new sequence. Host memory for the K/V is a table of
//! group record addresses ([`DecodeBatch::set_group_addrs`]; any device-readable memory: mapped pinned
//! arena blocks in production, one flat buffer in tests via [`DecodeBatch::set_host_store`]); the append
//! kernels write each token into its record, so the host copy is the GPU's, bit for bit.
//!
//! Memory: a batch's summary and group tables reserve address space for `max_context` and map pages
//! ([`vmm::GrowableBuffer`], CUDA virtual memory management) as its rows grow, so a layer commits what
//! its sequences use ([`StateBytes::at`]). The per-step scratch ([`StepScratch`]) can serve every layer of
//! a model: make one with [`StepScratch::new`] and the layers' batches with [`DecodeBatch::with_scratch`].

mod attend_io;
mod batch;
mod gather;
mod kernels;
pub(crate) mod layout;
mod scratch;
mod state_bytes;
pub mod vmm;

pub use attend_io::{AttendGraph, CounterBuffer, StepCounters};
pub use batch::{Capacity, DecodeBatch, LanePriority, PrefetchLane, StepGraph, Widening};
pub use gather::gather_source;
pub use kernels::{DecodeKernels, FuncAttributes, TraceSpan};
pub use layout::union_slots;
pub use scratch::StepScratch;
pub use state_bytes::StateBytes;
pub use vmm::GrowableBuffer;

use crate::jit::{Arch, JitError};
use cudarc::driver::{CudaContext, CudaEvent, CudaStream, DriverError};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// Errors of the CUDA backend.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// libcuda could not be loaded (no driver).
    #[error("CUDA driver (libcuda) is not available")]
    DriverMissing,
    /// No device with this ordinal.
    #[error("no CUDA device {ordinal}: {message}")]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// What the driver said.
        message: String,
    },
    /// The device is older than the generated kernels need (sm_80: tensor-core `mma.sync` on bf16/f16).
    #[error("{arch}: the decode kernels need sm_80 or newer (tensor-core mma on bf16/f16)")]
    UnsupportedArch {
        /// The device's architecture, e.g. `sm_75`.
        arch: String,
    },
    /// A driver call failed.
    #[error("CUDA driver call failed: {0}")]
    Driver(String),
    /// Compilation or the JIT cache failed.
    #[error(transparent)]
    Jit(#[from] JitError),
    /// An argument does not fit the batch's capacity or layout.
    #[error("{field} = {value}: {rule}")]
    Invalid {
        /// The argument.
        field: &'static str,
        /// Its value.
        value: String,
        /// The rule it breaks.
        rule: String,
    },
}

impl From<DriverError> for CudaError {
    fn from(e: DriverError) -> Self {
        CudaError::Driver(format!("{e:?}"))
    }
}

/// Whether libcuda can be loaded (never panics).
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen candidate names.
    catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() }).unwrap_or(false)
}

/// One device and the stream all of this backend's work goes to.
#[derive(Debug, Clone)]
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: Arch,
    name: String,
}

impl Gpu {
    /// Opens device `ordinal`: typed errors (never a panic) without a driver or device.
    pub fn open(ordinal: usize) -> Result<Gpu, CudaError> {
        if !driver_present() {
            return Err(CudaError::DriverMissing);
        }
        let opened = catch_unwind(AssertUnwindSafe(|| -> Result<Gpu, CudaError> {
            let ctx =
                CudaContext::new(ordinal).map_err(|e| CudaError::NoDevice { ordinal, message: format!("{e:?}") })?;
            // One stream, raw pointers in the params struct: cudarc's per-buffer event tracking only
            // adds work here.
            // SAFETY: no other stream of this context uses these buffers.
            unsafe { ctx.disable_event_tracking() };
            let (major, minor) = ctx.compute_capability()?;
            let name = ctx.name()?;
            // A stream of its own: the legacy default stream cannot be captured into graphs.
            let stream = ctx.new_stream()?;
            Ok(Gpu { ctx, stream, arch: Arch::from_capability(major, minor), name })
        }));
        opened.unwrap_or_else(|_| Err(CudaError::DriverMissing))
    }

    /// The device's architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }
    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The stream.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// The same device and context with a stream of its own (work on it runs concurrently with this
    /// one's, ordered only through events).
    pub fn with_new_stream(&self) -> Result<Gpu, CudaError> {
        Ok(Gpu { stream: self.ctx.new_stream()?, ..self.clone() })
    }
    /// [`Gpu::with_new_stream`] at the context's highest stream priority: as blocks of other streams
    /// retire, the SMs take this stream's pending blocks first.
    pub fn with_priority_stream(&self) -> Result<Gpu, CudaError> {
        self.ctx.bind_to_thread()?;
        let (_, greatest) = cudarc::driver::result::stream::get_priority_range()?;
        Ok(Gpu { stream: self.ctx.new_stream_with_priority(greatest)?, ..self.clone() })
    }
    /// Waits for all work on the stream.
    pub fn sync(&self) -> Result<(), CudaError> {
        Ok(self.stream.synchronize()?)
    }
    /// A pair of CUDA events on the stream for timing a region.
    pub fn timer(&self) -> Result<Timer, CudaError> {
        let mk = || self.ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT));
        Ok(Timer { start: mk()?, end: mk()?, stream: self.stream.clone() })
    }
}

/// CUDA events around a region of stream work.
#[derive(Debug)]
pub struct Timer {
    start: CudaEvent,
    end: CudaEvent,
    stream: Arc<CudaStream>,
}

impl Timer {
    /// Records the start event.
    pub fn start(&self) -> Result<(), CudaError> {
        Ok(self.start.record(&self.stream)?)
    }
    /// Device time in microseconds from this timer's start event to `later`'s start event (both
    /// recorded and complete).
    pub fn elapsed_to(&self, later: &Timer) -> Result<f64, CudaError> {
        Ok(self.start.elapsed_ms(&later.start)? as f64 * 1e3)
    }
    /// Records the end event, waits for it and returns the elapsed device time in microseconds.
    pub fn stop_us(&self) -> Result<f64, CudaError> {
        self.end.record(&self.stream)?;
        self.end.synchronize()?;
        Ok(self.start.elapsed_ms(&self.end)? as f64 * 1e3)
    }
}
