//! The bench's own dense baseline: flash-decoding over all K/V in HBM (`dense.cu`), compiled through
//! the runtime's JIT, checked against the CPU oracle before it is timed.

use super::Res;
use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use hga_dsl::codegen::{self, GeneratedSource};
use hga_dsl::ValidSpec;
use hga_runtime::cpu::{dense_causal, HeadLayout};
use hga_runtime::cuda::Gpu;
use hga_runtime::jit::Jit;
use hga_runtime::offload::{bf16_to_f32, f32_to_bf16};

const SOURCE: &str = include_str!("dense.cu");

/// Loaded dense kernels.
pub struct Dense {
    gpu: Gpu,
    layout: HeadLayout,
    partial: CudaFunction,
    merge: CudaFunction,
    fill: CudaFunction,
}

fn ptr<T>(s: &CudaSlice<T>, gpu: &Gpu) -> u64 {
    s.device_ptr(gpu.stream()).0
}

impl Dense {
    /// Compiles (or takes from the JIT cache) and loads the kernels for `spec`'s head layout.
    pub fn load(gpu: &Gpu, jit: &Jit, spec: &ValidSpec) -> Res<Dense> {
        let layout = HeadLayout::of(spec);
        if layout.head_dim != 128 {
            return Err(format!("the dense kernel needs head_dim 128, not {}", layout.head_dim).into());
        }
        let gqa = layout.gqa();
        let src = GeneratedSource {
            source: format!("#define GQA {gqa}\n{SOURCE}"),
            entry_points: vec!["dense_partial", "dense_merge", "fill_bf16"],
            variant_key: format!("hga_bench_dense_flash_decode_gqa{gqa}_d128"),
            generator_version: "hga-bench-dense-1",
            launch: codegen::launch_params(spec),
        };
        let compiled = jit.compile(&src, gpu.arch())?;
        for r in &compiled.resources {
            eprintln!("dense: {r}");
        }
        let module = gpu.context().load_module(cudarc::nvrtc::Ptx::from_binary(compiled.cubin.clone()))?;
        Ok(Dense {
            gpu: gpu.clone(),
            layout,
            partial: module.load_function("dense_partial")?,
            merge: module.load_function("dense_merge")?,
            fill: module.load_function("fill_bf16")?,
        })
    }

    fn fill(&self, buf: &mut CudaSlice<u16>, seed: u64) -> Res<()> {
        let (p, n) = (ptr(buf, &self.gpu), buf.len() as u64);
        let mut lb = self.gpu.stream().launch_builder(&self.fill);
        lb.arg(&p).arg(&n).arg(&seed);
        // SAFETY: `p` holds `n` elements.
        unsafe { lb.launch(LaunchConfig { grid_dim: (1024, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) }?;
        Ok(())
    }

    /// Splits per (sequence, KV head): enough blocks to fill the GPU, at least 64 tokens each.
    fn splits(&self, batch: usize, n: usize) -> usize {
        (528usize.div_ceil(batch * self.layout.kv_heads)).clamp(1, (n / 64).max(1))
    }

    /// One decode step: `q` `[B][QH][D]`, `k`, `v` `[B][KVH][N][D]` → `out` `[B][QH][D]`.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        batch: usize,
        n: usize,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        v: &CudaSlice<u16>,
        part_ml: &CudaSlice<f32>,
        part_acc: &CudaSlice<f32>,
        out: &CudaSlice<u16>,
    ) -> Res<()> {
        let l = self.layout;
        let s = self.splits(batch, n);
        let st = self.gpu.stream();
        let (qp, kp, vp, mlp, ap, op) = (
            ptr(q, &self.gpu),
            ptr(k, &self.gpu),
            ptr(v, &self.gpu),
            ptr(part_ml, &self.gpu),
            ptr(part_acc, &self.gpu),
            ptr(out, &self.gpu),
        );
        let (ni, kvh, si, qh) = (n as i32, l.kv_heads as i32, s as i32, l.q_heads as i32);
        let scale = std::f32::consts::LOG2_E / (l.head_dim as f32).sqrt();
        let mut lb = st.launch_builder(&self.partial);
        lb.arg(&qp).arg(&kp).arg(&vp).arg(&ni).arg(&kvh).arg(&si).arg(&scale).arg(&mlp).arg(&ap);
        let grid = (s as u32, l.kv_heads as u32, batch as u32);
        // SAFETY: buffers sized by `buffers` for this (batch, n, s).
        unsafe { lb.launch(LaunchConfig { grid_dim: grid, block_dim: (128, 1, 1), shared_mem_bytes: 0 }) }?;
        let mut lb = st.launch_builder(&self.merge);
        lb.arg(&mlp).arg(&ap).arg(&qh).arg(&si).arg(&op);
        let grid = (l.q_heads as u32, batch as u32, 1);
        // SAFETY: as above.
        unsafe {
            lb.launch(LaunchConfig { grid_dim: grid, block_dim: (l.head_dim as u32, 1, 1), shared_mem_bytes: 0 })
        }?;
        Ok(())
    }

    fn buffers(&self, batch: usize, n: usize) -> Res<[CudaSlice<f32>; 2]> {
        let l = self.layout;
        let s = self.splits(batch, n);
        let st = self.gpu.stream();
        Ok([
            st.alloc_zeros::<f32>(batch * l.q_heads * s * 2)?,
            st.alloc_zeros::<f32>(batch * l.q_heads * s * l.head_dim)?,
        ])
    }

    /// Largest relative L2 error per sequence against the CPU's dense attention on random inputs.
    pub fn check(&self, batch: usize, n: usize, seed: u64) -> Res<f64> {
        let l = self.layout;
        let (d, kvh, qh) = (l.head_dim, l.kv_heads, l.q_heads);
        let st = self.gpu.stream();
        let mut k = st.alloc_zeros::<u16>(batch * kvh * n * d)?;
        let mut v = st.alloc_zeros::<u16>(batch * kvh * n * d)?;
        let mut q = st.alloc_zeros::<u16>(batch * qh * d)?;
        self.fill(&mut k, seed)?;
        self.fill(&mut v, seed + (1 << 40))?;
        self.fill(&mut q, seed + (2 << 40))?;
        let out = st.clone_htod(&vec![0xffffu16; batch * qh * d])?;
        let [ml, acc] = self.buffers(batch, n)?;
        self.launch(batch, n, &q, &k, &v, &ml, &acc, &out)?;
        let f = |x: Vec<u16>| -> Vec<f32> { x.into_iter().map(bf16_to_f32).collect() };
        let (kh, vh, qv, o) =
            (f(st.clone_dtoh(&k)?), f(st.clone_dtoh(&v)?), f(st.clone_dtoh(&q)?), f(st.clone_dtoh(&out)?));
        let mut worst = 0.0f64;
        for b in 0..batch {
            // [KVH][N][D] → the oracle's [N][KVH][D].
            let (mut kt, mut vt) = (vec![0f32; n * kvh * d], vec![0f32; n * kvh * d]);
            for h in 0..kvh {
                for t in 0..n {
                    let src = ((b * kvh + h) * n + t) * d;
                    let dst = (t * kvh + h) * d;
                    kt[dst..dst + d].copy_from_slice(&kh[src..src + d]);
                    vt[dst..dst + d].copy_from_slice(&vh[src..src + d]);
                }
            }
            let mut want = vec![0f32; qh * d];
            dense_causal(&l, &qv[b * qh * d..(b + 1) * qh * d], n - 1, &kt, &vt, &mut want)?;
            let got = &o[b * qh * d..(b + 1) * qh * d];
            if got.iter().any(|x| !x.is_finite()) {
                return Err("dense kernel left non-finite or unwritten outputs".into());
            }
            let want_bf: Vec<f32> = want.iter().map(|&x| bf16_to_f32(f32_to_bf16(x))).collect();
            let num: f64 = got.iter().zip(&want_bf).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
            let den: f64 = want_bf.iter().map(|&b| (b as f64).powi(2)).sum();
            worst = worst.max((num / den.max(1e-30)).sqrt());
        }
        Ok(worst)
    }

    /// Median time of one decode step (µs) over `reps` runs after `warm` runs, and the K/V bytes read.
    pub fn time(&self, batch: usize, n: usize, warm: usize, reps: usize) -> Res<(f64, u64)> {
        let l = self.layout;
        let (d, kvh, qh) = (l.head_dim, l.kv_heads, l.q_heads);
        let st = self.gpu.stream();
        let elems = batch * kvh * n * d;
        // SAFETY: filled by the kernel below before any read.
        let mut k = unsafe { st.alloc::<u16>(elems) }?;
        let mut v = unsafe { st.alloc::<u16>(elems) }?;
        let mut q = st.alloc_zeros::<u16>(batch * qh * d)?;
        self.fill(&mut k, 11)?;
        self.fill(&mut v, 12)?;
        self.fill(&mut q, 13)?;
        let out = st.alloc_zeros::<u16>(batch * qh * d)?;
        let [ml, acc] = self.buffers(batch, n)?;
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let (e0, e1) = (self.gpu.context().new_event(flags)?, self.gpu.context().new_event(flags)?);
        let mut ts = Vec::with_capacity(reps);
        for i in 0..warm + reps {
            e0.record(st)?;
            self.launch(batch, n, &q, &k, &v, &ml, &acc, &out)?;
            e1.record(st)?;
            e1.synchronize()?;
            if i >= warm {
                ts.push(e0.elapsed_ms(&e1)? as f64 * 1e3);
            }
        }
        ts.sort_by(|a, b| a.total_cmp(b));
        Ok((ts[ts.len() / 2], (2 * elems * 2) as u64))
    }
}
