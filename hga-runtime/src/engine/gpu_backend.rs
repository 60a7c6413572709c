//! The GPU backend behind the engine API: per (sequence, layer) a [`DecodeBatch`] of one sequence (the
//! generated kernels of issue 3: window, summary tables, routing, slot cache, gather, split-K attention)
//! and a pinned, device-mapped host store in the kernels' group-contiguous layout.
//!
//! Appends come as host slices (f32, converted to bf16): each token goes to the GPU window by
//! `hga_append` (closing chunks are summarized on the GPU by `hga_summarize`) and, on the host side, into
//! its group record of the pinned store, which the gather kernel reads when the group is routed.

use super::telemetry::StepTelemetry;
use super::SeqId;
use crate::cuda::{Capacity, CudaError, DecodeBatch, DecodeKernels, Gpu};
use crate::jit::Jit;
use crate::offload::{bf16_to_f32, f32_to_bf16, PinnedBuffer};
use crate::RuntimeError;
use cudarc::driver::sys::CUevent_flags;
use hga_dsl::tuned::{resolve, Query, Resolved, TunedConfig};
use hga_dsl::ValidSpec;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Maps the CUDA backend's errors onto the runtime's.
pub(crate) fn cuda_err(op: &'static str) -> impl Fn(CudaError) -> RuntimeError {
    move |e| match e {
        CudaError::DriverMissing => RuntimeError::NoGpu { reason: "the CUDA driver (libcuda) is not available".into() },
        CudaError::NoDevice { ordinal, message } => {
            RuntimeError::NoGpu { reason: format!("device {ordinal}: {message}") }
        }
        CudaError::Driver(m) if m.contains("OUT_OF_MEMORY") => {
            RuntimeError::GpuOutOfMemory { requested: 0, available: 0 }
        }
        other => RuntimeError::Cuda { op, message: other.to_string() },
    }
}

/// Loaded kernels live for the process, one per (device, variant): a [`DecodeBatch`] borrows them.
fn kernels(gpu: &Gpu, ordinal: usize, spec: &ValidSpec) -> Result<&'static DecodeKernels, RuntimeError> {
    static LOADED: OnceLock<Mutex<HashMap<(usize, String), &'static DecodeKernels>>> = OnceLock::new();
    let mut map = LOADED.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    let key = (ordinal, spec.to_toml());
    if let Some(k) = map.get(&key) {
        return Ok(k);
    }
    let jit = Jit::from_env().map_err(|e| RuntimeError::Cuda { op: "JIT cache", message: e.to_string() })?;
    let k: &'static DecodeKernels =
        Box::leak(Box::new(DecodeKernels::load(gpu, &jit, spec).map_err(cuda_err("load kernels"))?));
    map.insert(key, k);
    Ok(k)
}

struct LayerState {
    batch: DecodeBatch<'static>,
    store: PinnedBuffer,
    len: usize,
}

/// Every live sequence's per-layer GPU state and host store.
pub(crate) struct GpuBackend {
    gpu: Gpu,
    kernels: &'static DecodeKernels,
    spec: ValidSpec,
    layers: usize,
    max_seq_len: usize,
    slots: usize,
    seqs: HashMap<SeqId, Vec<LayerState>>,
    resolved: Resolved,
}

impl std::fmt::Debug for GpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBackend").field("gpu", &self.gpu.name()).field("sequences", &self.seqs.len()).finish()
    }
}

impl GpuBackend {
    /// Opens device `ordinal` and loads the spec's kernels. `gpu_budget` (bytes for all layers and
    /// sequences) sizes each (sequence, layer)'s slot pool; `None` takes a quarter of free memory.
    pub(crate) fn new(
        ordinal: usize,
        spec: ValidSpec,
        layers: usize,
        max_seq_len: usize,
        max_sequences: usize,
        gpu_budget: Option<u64>,
        tuned: &[TunedConfig],
    ) -> Result<Self, RuntimeError> {
        let gpu = Gpu::open(ordinal).map_err(cuda_err("open device"))?;
        // Configs name their GPU by preset (`h200`) and by the device's own name (`NVIDIA H200`).
        let preset = tuned.iter().find(|c| c.provenance.gpu_name == gpu.name()).map(|c| c.provenance.gpu.clone());
        let arch = gpu.arch().to_string();
        // Each (sequence, layer) state is a batch of one, sized for the longest sequence.
        let query = Query {
            gpu: preset.as_deref().unwrap_or(""),
            arch: &arch,
            spec: &spec,
            context: max_seq_len as u64,
            batch: 1,
        };
        let resolved = resolve(tuned, &query);
        let spec = resolved.spec.clone();
        let kernels = kernels(&gpu, ordinal, &spec)?;
        let (free, _) = gpu
            .context()
            .mem_get_info()
            .map_err(|e| RuntimeError::Cuda { op: "cuMemGetInfo", message: format!("{e:?}") })?;
        let budget = gpu_budget.unwrap_or(free as u64 / 4);
        let record = (2 * 2 * spec.routing().group as usize * spec.head_dim()) as u64;
        let units = if spec.routing().sharing == hga_dsl::Sharing::PerKvHead { 1 } else { spec.gqa() };
        let kvh = spec.model().kv_heads as usize;
        let chunks = max_seq_len.div_ceil(spec.routing().chunk as usize);
        let kce = (spec.routing().top_chunks as usize).min(chunks);
        let kge = (spec.routing().top_groups as usize).min(kce * spec.groups_per_chunk());
        let need = kvh * units * kge;
        // More slots than a sequence has groups would never fill.
        let all_groups = kvh * chunks * spec.groups_per_chunk();
        let per_state = ((budget / (layers * max_sequences) as u64 / record) as usize).min(all_groups.max(need));
        if per_state < need.max(1) {
            return Err(RuntimeError::InvalidConfig {
                field: "gpu_budget_bytes",
                value: budget.to_string(),
                allowed: format!(
                    "must give each of layers × max_sequences = {} states at least {need} slots of {record} bytes",
                    layers * max_sequences
                ),
            });
        }
        Ok(GpuBackend {
            gpu,
            kernels,
            spec,
            layers,
            max_seq_len,
            slots: per_state.min(i32::MAX as usize),
            seqs: HashMap::new(),
            resolved,
        })
    }

    /// The device's name.
    pub(crate) fn device_name(&self) -> &str {
        self.gpu.name()
    }

    /// The kernel parameters in use and where they came from.
    pub(crate) fn resolved(&self) -> &Resolved {
        &self.resolved
    }

    /// Host bytes one sequence reserves (its pinned stores, all layers, sized for `max_seq_len`).
    pub(crate) fn host_bytes_per_sequence(spec: &ValidSpec, layers: usize, max_seq_len: usize) -> u64 {
        let r = spec.routing();
        let groups = max_seq_len.div_ceil(r.chunk as usize) * spec.groups_per_chunk();
        (layers * spec.model().kv_heads as usize * groups * 2 * r.group as usize * spec.head_dim() * 2) as u64
    }

    /// GPU bytes one (sequence, layer) state takes, estimated from the buffers' sizes.
    fn device_bytes_per_state(&self) -> u64 {
        let lp = &self.kernels.generated().launch;
        let (r, d) = (self.spec.routing(), self.spec.head_dim());
        let kvh = self.spec.model().kv_heads as usize;
        let chunks = self.max_seq_len.div_ceil(r.chunk as usize);
        let groups = chunks * self.spec.groups_per_chunk();
        let sums = kvh * (chunks + groups) * lp.summary_vectors as usize * d * 4;
        let window = 2 * kvh * lp.window_chunks as usize * r.chunk as usize * d * 2;
        let slots = self.slots * (2 * r.group as usize * d * 2 + 12);
        let tables = kvh * (groups * 4 + chunks * 8);
        (sums + window + slots + tables + (1 << 20)) as u64
    }

    /// Allocates a sequence's state in every layer; all or nothing.
    pub(crate) fn add_sequence(&mut self, id: SeqId) -> Result<(), RuntimeError> {
        let (free, _) = self
            .gpu
            .context()
            .mem_get_info()
            .map_err(|e| RuntimeError::Cuda { op: "cuMemGetInfo", message: format!("{e:?}") })?;
        let need = self.device_bytes_per_state() * self.layers as u64;
        if need > free as u64 {
            return Err(RuntimeError::GpuOutOfMemory { requested: need, available: free as u64 });
        }
        let cap = Capacity { batch: 1, max_context: self.max_seq_len, n_slots: self.slots };
        let mut states = Vec::with_capacity(self.layers);
        for _ in 0..self.layers {
            let mut batch = DecodeBatch::new(&self.gpu, self.kernels, cap).map_err(cuda_err("allocate layer state"))?;
            let store = PinnedBuffer::new(&self.gpu, batch.host_store_len())?;
            // SAFETY: the store lives in the same LayerState as the batch and is dropped after it.
            unsafe { batch.set_host_store(store.device_addr()) }.map_err(cuda_err("set host store"))?;
            states.push(LayerState { batch, store, len: 0 });
        }
        self.seqs.insert(id, states);
        Ok(())
    }

    pub(crate) fn remove_sequence(&mut self, id: SeqId) {
        self.seqs.remove(&id);
    }

    /// Appends `k`, `v` (`[n][kv_heads][d]` f32, validated by the caller) token by token.
    pub(crate) fn append(&mut self, id: SeqId, layer: usize, k: &[f32], v: &[f32]) -> Result<(), RuntimeError> {
        let (kvh, d) = (self.spec.model().kv_heads as usize, self.spec.head_dim());
        let (g, gpc) = (self.spec.routing().group as usize, self.spec.groups_per_chunk());
        let st = &mut self.seqs.get_mut(&id).ok_or(RuntimeError::UnknownSequence { id: id.0 })?[layer];
        let cap_groups = st.batch.cap_chunks() * gpc;
        let row = kvh * d;
        let (mut kb, mut vb) = (vec![0u16; row], vec![0u16; row]);
        for (kt, vt) in k.chunks_exact(row).zip(v.chunks_exact(row)) {
            let pos = st.len;
            for (dst, src) in kb.iter_mut().zip(kt).chain(vb.iter_mut().zip(vt)) {
                *dst = f32_to_bf16(*src);
            }
            // Host store: the token's row in its group record (keys, then values G rows later).
            let store = st.store.as_mut_slice();
            for h in 0..kvh {
                let rec = (h * cap_groups + pos / g) * 2 * g * d;
                let at = rec + (pos % g) * d;
                store[at..at + d].copy_from_slice(&kb[h * d..(h + 1) * d]);
                store[at + g * d..at + g * d + d].copy_from_slice(&vb[h * d..(h + 1) * d]);
            }
            st.batch.set_positions(&[pos as u32]).map_err(cuda_err("set positions"))?;
            st.batch.launch_append(&kb, &vb).map_err(cuda_err("append"))?;
            st.batch.launch_summarize_closed().map_err(cuda_err("summarize"))?;
            st.len += 1;
        }
        Ok(())
    }

    /// Decode attention of each sequence's newest query, one launch sequence per sequence.
    pub(crate) fn attend(
        &mut self,
        layer: usize,
        seqs: &[SeqId],
        q: &[f32],
        out: &mut [f32],
        tel: &mut StepTelemetry,
    ) -> Result<(), RuntimeError> {
        let (qh, kvh, d) =
            (self.spec.model().q_heads as usize, self.spec.model().kv_heads as usize, self.spec.head_dim());
        let record = (2 * 2 * self.spec.routing().group as usize * d) as u64;
        let row = qh * d;
        let ev = || {
            self.gpu
                .context()
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| RuntimeError::Cuda { op: "cuEventCreate", message: format!("{e:?}") })
        };
        let events = [ev()?, ev()?, ev()?, ev()?];
        let stream = self.gpu.stream().clone();
        let rec = |i: usize| {
            events[i].record(&stream).map_err(|e| RuntimeError::Cuda { op: "cuEventRecord", message: format!("{e:?}") })
        };
        let ms = |a: usize, b: usize| -> Result<Duration, RuntimeError> {
            let t = events[a]
                .elapsed_ms(&events[b])
                .map_err(|e| RuntimeError::Cuda { op: "cuEventElapsedTime", message: format!("{e:?}") })?;
            Ok(Duration::from_secs_f64(t as f64 / 1e3))
        };
        for (b, id) in seqs.iter().enumerate() {
            let st = &mut self.seqs.get_mut(id).ok_or(RuntimeError::UnknownSequence { id: id.0 })?[layer];
            let qb: Vec<u16> = q[b * row..(b + 1) * row].iter().map(|&x| f32_to_bf16(x)).collect();
            st.batch.set_positions(&[(st.len - 1) as u32]).map_err(cuda_err("set positions"))?;
            st.batch.upload_q(&qb).map_err(cuda_err("upload q"))?;
            rec(0)?;
            st.batch.launch_route().map_err(cuda_err("route"))?;
            rec(1)?;
            st.batch.launch_fetch().map_err(cuda_err("fetch"))?;
            rec(2)?;
            st.batch.launch_attend().map_err(cuda_err("attend"))?;
            rec(3)?;
            let o = st.batch.output().map_err(cuda_err("read output"))?;
            for (dst, &src) in out[b * row..(b + 1) * row].iter_mut().zip(&o) {
                *dst = bf16_to_f32(src);
            }
            tel.stages.route += ms(0, 1)?;
            tel.stages.fetch += ms(1, 2)?;
            tel.stages.attend += ms(2, 3)?;
            let misses = st.batch.last_misses().map_err(cuda_err("fetch state"))? as u64;
            let union = st.batch.union().map_err(cuda_err("read union"))?;
            debug_assert_eq!(union.len(), kvh);
            let routed: u64 = union.iter().map(|u| u.len() as u64).sum();
            tel.groups_per_kv_head.extend(union.iter().map(Vec::len));
            tel.misses += misses;
            tel.hits += routed - misses.min(routed);
            tel.bytes_h2d += misses * record;
        }
        Ok(())
    }
}
