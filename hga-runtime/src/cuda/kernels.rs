//! The generated kernels of one variant, loaded on a device, and the C mirror of their parameters.

use super::{CudaError, Gpu};
use crate::jit::{Compiled, Jit};
use cudarc::driver::sys::CUfunction_attribute_enum as Attr;
use cudarc::driver::{result, CudaFunction, CudaModule, CudaStream, DeviceRepr};
use hga_dsl::codegen::{self, GeneratedSource, ENTRY_POINTS, TRACE_EVENTS};
use hga_dsl::ValidSpec;
use std::fmt;
use std::sync::Arc;

/// Attributes the driver reports for a loaded kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuncAttributes {
    /// Entry point.
    pub name: &'static str,
    /// Registers per thread.
    pub registers: i32,
    /// Static shared memory in bytes.
    pub smem_bytes: i32,
    /// Local memory per thread in bytes (stack and spills).
    pub local_bytes: i32,
    /// Largest block the kernel can launch with.
    pub max_threads: i32,
}

impl fmt::Display for FuncAttributes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<18} {:>3} regs {:>6} B smem {:>4} B local, max {} threads",
            self.name, self.registers, self.smem_bytes, self.local_bytes, self.max_threads
        )
    }
}

/// The kernels of one variant, compiled for the device and loaded.
#[derive(Debug)]
pub struct DecodeKernels {
    spec: ValidSpec,
    generated: GeneratedSource,
    compiled: Compiled,
    funcs: Vec<CudaFunction>,
    attributes: Vec<FuncAttributes>,
    module: Arc<CudaModule>,
    /// The prefetch's fetch ([`super::gather`]), a module of its own.
    gather: CudaFunction,
    traced: bool,
}

/// One event of the step trace ([`TRACE_EVENTS`]): the GPU global time at which the first and the last
/// block reached it since [`DecodeKernels::reset_trace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceSpan {
    /// The event's name.
    pub event: &'static str,
    /// Earliest arrival, ns of the GPU's global timer; `None` where no block reached the event.
    pub first_ns: Option<u64>,
    /// Latest arrival, ns.
    pub last_ns: Option<u64>,
}

/// Oldest compute capability the generated kernels run on (`hga_attend`'s `mma.sync` m16n8k16 on
/// bf16/f16 and `ldmatrix`).
pub const MIN_CC: u32 = 80;

impl DecodeKernels {
    /// Generates, compiles (or takes from the JIT cache) and loads the kernels of `spec`.
    pub fn load(gpu: &Gpu, jit: &Jit, spec: &ValidSpec) -> Result<DecodeKernels, CudaError> {
        if gpu.arch().cc() < MIN_CC {
            return Err(CudaError::UnsupportedArch { arch: gpu.arch().to_string() });
        }
        let score = spec.routing().score;
        if !codegen::scores(score) {
            return Err(CudaError::Invalid {
                field: "routing.score",
                value: score.short().into(),
                rule: format!("the GPU kernels score {}; this kind runs on the CPU backend", codegen::scored_names()),
            });
        }
        let generated = codegen::generate(spec);
        let compiled = jit.compile(&generated, gpu.arch())?;
        let module = gpu.context().load_module(cudarc::nvrtc::Ptx::from_binary(compiled.cubin.clone()))?;
        let mut funcs = Vec::new();
        let mut attributes = Vec::new();
        for name in ENTRY_POINTS {
            let f = module.load_function(name)?;
            // SAFETY: the function was just loaded from this module.
            let get = |a| unsafe { result::function::get_function_attribute(f.cu_function(), a) };
            attributes.push(FuncAttributes {
                name,
                registers: get(Attr::CU_FUNC_ATTRIBUTE_NUM_REGS)?,
                smem_bytes: get(Attr::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?,
                local_bytes: get(Attr::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)?,
                max_threads: get(Attr::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
            });
            funcs.push(f);
        }
        let gather_src = super::gather::gather_source(&generated.launch);
        let gather_bin = jit.compile(&gather_src, gpu.arch())?;
        let gather = gpu
            .context()
            .load_module(cudarc::nvrtc::Ptx::from_binary(gather_bin.cubin))?
            .load_function(super::gather::GATHER_ENTRY)?;
        let traced = jit.is_traced();
        Ok(DecodeKernels { spec: spec.clone(), generated, compiled, funcs, attributes, module, gather, traced })
    }

    /// The spec.
    pub fn spec(&self) -> &ValidSpec {
        &self.spec
    }
    /// The generated source and launch parameters.
    pub fn generated(&self) -> &GeneratedSource {
        &self.generated
    }
    /// The compiled module (CUBIN, ptxas resources, cache hit).
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }
    /// Driver-reported attributes of each kernel, in [`ENTRY_POINTS`] order.
    pub fn attributes(&self) -> &[FuncAttributes] {
        &self.attributes
    }
    /// Whether the kernels record the step trace (loaded through [`Jit::traced`]).
    pub fn traced(&self) -> bool {
        self.traced
    }

    fn trace_error(&self) -> CudaError {
        CudaError::Invalid {
            field: "trace",
            value: "untraced kernels".into(),
            rule: "the step trace needs kernels loaded through Jit::traced()".into(),
        }
    }

    /// Clears the step trace (queued on `stream`), so that the next read covers what runs after it.
    pub fn reset_trace(&self, stream: &Arc<CudaStream>) -> Result<(), CudaError> {
        if !self.traced {
            return Err(self.trace_error());
        }
        let init: Vec<u64> = (0..2 * TRACE_EVENTS.len()).map(|i| if i % 2 == 0 { u64::MAX } else { 0 }).collect();
        let mut sym = self.module.get_global("hga_trace", stream)?;
        // SAFETY: `hga_trace` is `unsigned long long[2 * TR_EVENTS]` (codegen's test pins the count).
        let mut words = unsafe { sym.transmute_mut::<u64>(init.len()) }.ok_or_else(|| self.trace_error())?;
        stream.memcpy_htod(&init, &mut words)?;
        Ok(())
    }

    /// The step trace since the last [`DecodeKernels::reset_trace`] (synchronizes `stream`).
    pub fn read_trace(&self, stream: &Arc<CudaStream>) -> Result<Vec<TraceSpan>, CudaError> {
        if !self.traced {
            return Err(self.trace_error());
        }
        let n = 2 * TRACE_EVENTS.len();
        let sym = self.module.get_global("hga_trace", stream)?;
        // SAFETY: as in reset_trace.
        let words = unsafe { sym.transmute::<u64>(n) }.ok_or_else(|| self.trace_error())?;
        let v = stream.clone_dtoh(&words)?;
        Ok(TRACE_EVENTS
            .iter()
            .enumerate()
            .map(|(e, &event)| {
                let (first, last) = (v[2 * e], v[2 * e + 1]);
                let seen = first != u64::MAX;
                TraceSpan { event, first_ns: seen.then_some(first), last_ns: seen.then_some(last) }
            })
            .collect())
    }

    pub(super) fn func(&self, k: Kernel) -> &CudaFunction {
        &self.funcs[k as usize]
    }

    pub(super) fn gather(&self) -> &CudaFunction {
        &self.gather
    }
}

/// Kernel indices into [`ENTRY_POINTS`].
#[derive(Debug, Clone, Copy)]
pub(super) enum Kernel {
    Append = 0,
    Summarize,
    IngestSummarize,
    Ingest,
    ChunkScore,
    Select,
    Resolve,
    Attend,
}

/// Mirror of the generated `struct HgaParams` (same field order and C layout; raw device pointers).
/// Comparable: a captured graph replays the values it was captured with, so it is valid only while
/// they are unchanged.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct HgaParams {
    pub pos: u64,
    pub win_k: u64,
    pub win_v: u64,
    pub chunk_sum: u64,
    pub group_sum: u64,
    pub q: u64,
    pub chunk_score: u64,
    pub chunk_mass: u64,
    pub sel_chunk: u64,
    pub n_sel_chunk: u64,
    pub group_cand: u64,
    pub group_score: u64,
    pub group_mass: u64,
    pub sel_group: u64,
    pub n_sel_group: u64,
    pub uni_group: u64,
    pub uni_slot: u64,
    pub uni_mask: u64,
    pub n_uni: u64,
    pub n_att: u64,
    pub slot_of: u64,
    pub slot_owner: u64,
    pub slot_stamp: u64,
    pub part_state: u64,
    pub miss_list: u64,
    pub group_addr: u64,
    pub slots: u64,
    pub part_ml: u64,
    pub part_acc: u64,
    pub done: u64,
    pub error: u64,
    pub out: u64,
    pub batch: i32,
    pub cap_chunks: i32,
    pub cap_groups: i32,
    pub part_slots: i32,
    pub kce: i32,
    pub kge: i32,
    pub ucap: i32,
}

// SAFETY: plain old data with the C layout of the kernel parameter.
unsafe impl DeviceRepr for HgaParams {}
