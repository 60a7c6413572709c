//! A stand-in for the work a decoder runs between two layers' attention (the output projection and
//! the MLP): one HBM-bound kernel that streams a buffer on every SM, as a batch-1..8 GEMV does. The
//! speculative prefetch of the next layer overlaps it (`--speculate-cos`).

use super::Res;
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use hga_dsl::codegen::{self, GeneratedSource};
use hga_dsl::ValidSpec;
use hga_runtime::cuda::Gpu;
use hga_runtime::jit::Jit;

const SOURCE: &str = r#"
// Reads n 16-byte words grid-stride and folds them into one word per block (kept, so that the loads
// are not removed).
extern "C" __global__ void __launch_bounds__(256) hbm_stream(const uint4* __restrict__ x, unsigned long long n,
                                                             unsigned* sink) {
    unsigned acc = 0;
    for (unsigned long long i = blockIdx.x * 256ull + threadIdx.x; i < n; i += (unsigned long long)gridDim.x * 256) {
        const uint4 w = __ldcs(x + i);
        acc ^= w.x ^ w.y ^ w.z ^ w.w;
    }
    if (acc == 0x9e3779b9u) sink[blockIdx.x] = acc;
}
"#;

/// Bytes of weights Qwen3-30B-A3B reads per layer for one decode step of `batch` sequences: the
/// attention output projection (4096 → 2048) and the experts the tokens route to (3 matrices of
/// 2048 × 768 each, 8 of 128 experts per token; distinct experts of `batch` tokens expected under
/// uniform routing), bf16.
pub fn qwen3_30b_a3b_bytes(batch: usize) -> u64 {
    let expert = 3.0 * 2048.0 * 768.0 * 2.0;
    let distinct = 128.0 * (1.0 - (1.0f64 - 8.0 / 128.0).powi(batch as i32));
    (4096.0 * 2048.0 * 2.0 + distinct * expert) as u64
}

/// How the stand-in's blocks cover the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MlpGrid {
    /// One block per 64 KiB tile: blocks retire all along, as a GEMV's do.
    Tiles,
    /// Eight blocks of 256 threads per SM (every thread slot) streaming grid-stride to the end.
    Persistent,
}

/// 16-byte words one block of the tiled grid streams (64 KiB: 16 per thread).
const TILE_WORDS: u64 = 256 * 16;

/// The loaded kernel and a buffer to stream.
pub struct MlpStandIn {
    gpu: Gpu,
    func: CudaFunction,
    buf: CudaSlice<u8>,
    sink: CudaSlice<u32>,
    /// Blocks of the persistent grid.
    wave: u32,
    grid: MlpGrid,
}

impl MlpStandIn {
    /// Compiles the kernel and allocates the largest buffer it will stream (`max_bytes`).
    pub fn load(gpu: &Gpu, jit: &Jit, spec: &ValidSpec, max_bytes: u64, grid: MlpGrid) -> Res<MlpStandIn> {
        let src = GeneratedSource {
            source: SOURCE.to_string(),
            entry_points: vec!["hbm_stream"],
            variant_key: "hga_bench_hbm_stream".to_string(),
            generator_version: "hga-bench-mlp-1",
            launch: codegen::launch_params(spec),
        };
        let compiled = jit.compile(&src, gpu.arch())?;
        let module = gpu.context().load_module(cudarc::nvrtc::Ptx::from_binary(compiled.cubin.clone()))?;
        let sms = gpu
            .context()
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?
            as u32;
        let st = gpu.stream();
        let words = max_bytes.div_ceil(16).max(1);
        let blocks = words.div_ceil(TILE_WORDS).max((8 * sms) as u64);
        Ok(MlpStandIn {
            gpu: gpu.clone(),
            func: module.load_function("hbm_stream")?,
            buf: st.alloc_zeros::<u8>((words * 16) as usize)?,
            sink: st.alloc_zeros::<u32>(blocks as usize)?,
            wave: 8 * sms,
            grid,
        })
    }

    /// Streams the first `bytes` of the buffer on the GPU's stream.
    pub fn launch(&self, bytes: u64) -> Res<()> {
        let n = (bytes / 16).min(self.buf.len() as u64 / 16);
        let st = self.gpu.stream();
        let (x, s) = (self.buf.device_ptr(st).0, self.sink.device_ptr(st).0);
        let mut lb = st.launch_builder(&self.func);
        lb.arg(&x).arg(&n).arg(&s);
        let blocks = match self.grid {
            // The sink holds a word per tile of the largest buffer.
            MlpGrid::Tiles => n.div_ceil(TILE_WORDS).max(1) as u32,
            MlpGrid::Persistent => self.wave,
        };
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: `x` holds at least `n` 16-byte words, `sink` one word per block.
        unsafe { lb.launch(cfg) }?;
        Ok(())
    }
}
