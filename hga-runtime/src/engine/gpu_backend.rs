//! The GPU backend behind the engine API: per layer ONE [`DecodeBatch`] (the generated kernels: window,
//! summary tables, routing, slot cache, split-K attention) with a row per possible sequence, and one
//! growable host store of pinned, device-mapped group records shared by every layer and sequence.
//!
//! **One batch per layer.** The batch has `max_sequences` rows, allocated when the cache is created.
//! A sequence takes a free row when added (the row is reset first when an earlier sequence used it:
//! slot-cache partition and host record addresses forgotten) and gives it back when removed. An attend
//! call sets the rows of its sequences active and every other row inactive (the kernels leave inactive
//! rows' state and output untouched), uploads all the queries at once, and launches route → fetch →
//! attend once for the whole batch; the output and the telemetry are read back once. So a step costs a
//! fixed number of launches whatever the batch, and every sequence keeps its own slot-cache partition
//! (`n_slots` is split evenly over (row, KV head)) across steps.
//!
//! **Host records.** The store ([`HostStore`] over [`PinnedSource`] arena blocks) grows by whole blocks
//! that never move, within `CacheConfig::host_budget_bytes`; nothing is reserved for `max_seq_len` up
//! front. When an append reaches a group that has no record yet (its first token, `pos % group == 0`),
//! the backend takes that group's record for every KV head from the arena, all or nothing
//! (`HostOutOfMemory` with nothing changed when the budget is exceeded), and uploads the records'
//! device addresses into the batch's group address table (`set_group_addrs`) before the append
//! launch. The append kernels then write every token into its record through that mapped address, so
//! the host copy is written by the GPU, bit for bit the same as the window; the host side never writes
//! records. Routed groups missing from the slot cache are read from these records by `hga_attend`.
//! A removed sequence's records go back to the arena for reuse.
//!
//! **Appends** of one (sequence, layer) are one block append (`append_block`, or
//! `append_block_device` for device buffers): two launches whatever the number of tokens (the
//! summaries of every chunk the block closes, then the window rows that stay and the host records).

use super::config::CacheConfig;
use super::telemetry::StepTelemetry;
use super::SeqId;
use crate::cuda::{Capacity, CudaError, DecodeBatch, DecodeKernels, Gpu, StateBytes};
use crate::jit::Jit;
use crate::offload::{bf16_to_f32, f32_to_bf16, HostStore, PinnedSource, RecordLayout};
use crate::RuntimeError;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, DevicePtr};
use hga_dsl::tuned::{resolve, Query, Resolved};
use hga_dsl::{Sharing, ValidSpec};
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

/// Records per arena block at most: 8 MiB blocks for 128-dim groups of 16, so that a long prefill
/// pins memory in a few large allocations rather than many small ones.
const MAX_RECORDS_PER_BLOCK: u64 = 1024;

/// Longest sequence the kernels' 32-bit indices allow.
const MAX_GPU_SEQ_LEN: usize = 1 << 28;

/// A live sequence: its row in every layer's batch, its tokens per layer.
#[derive(Debug)]
struct Seq {
    row: usize,
    lens: Vec<usize>,
}

/// Every layer's batch, the host store, and which sequence holds which row.
pub(crate) struct GpuBackend {
    // Dropped in field order: the batches (whose tables hold record addresses) before the store.
    batches: Vec<DecodeBatch<'static>>,
    store: HostStore<PinnedSource>,
    gpu: Gpu,
    /// Which sequence holds each row.
    rows: Vec<Option<SeqId>>,
    /// Rows used by a sequence since they were last reset.
    dirty: Vec<bool>,
    seqs: HashMap<SeqId, Seq>,
    /// The kernel parameters in use (boxed: the spec is large and rarely read).
    resolved: Box<Resolved>,
    record_bytes: u64,
}

impl std::fmt::Debug for GpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBackend")
            .field("gpu", &self.gpu.name())
            .field("rows", &self.rows.len())
            .field("sequences", &self.seqs.len())
            .field("store", &self.store)
            .finish()
    }
}

impl GpuBackend {
    /// Opens device `ordinal`, loads the spec's kernels and allocates every layer's batch of
    /// `max_sequences` rows. `gpu_budget_bytes` (all layers) sizes the slot caches; `None` takes a
    /// quarter of free memory. `GpuOutOfMemory` when the batches would not fit in free memory.
    pub(crate) fn new(ordinal: usize, config: &CacheConfig) -> Result<Self, RuntimeError> {
        let (layers, max_seq_len, rows) = (config.layers, config.max_seq_len, config.max_sequences);
        if rows > 65535 {
            return Err(RuntimeError::InvalidConfig {
                field: "max_sequences",
                value: rows.to_string(),
                allowed: "must be in 1..=65535 on the GPU backend (rows of a kernel launch)".into(),
            });
        }
        let gpu = Gpu::open(ordinal).map_err(cuda_err("open device"))?;
        // Configs name their GPU by preset (`h200`) and by the device's own name (`NVIDIA H200`).
        let preset =
            config.tuned.iter().find(|c| c.provenance.gpu_name == gpu.name()).map(|c| c.provenance.gpu.clone());
        let arch = gpu.arch().to_string();
        // The batch's launches span all its rows, so parameters are resolved for max_sequences rows.
        let query = Query {
            gpu: preset.as_deref().unwrap_or(""),
            arch: &arch,
            spec: &config.spec,
            context: max_seq_len as u64,
            batch: rows as u32,
        };
        let resolved = resolve(&config.tuned, &query);
        let spec = resolved.spec.clone();
        let kernels = kernels(&gpu, ordinal, &spec)?;
        let (free, _) = gpu
            .context()
            .mem_get_info()
            .map_err(|e| RuntimeError::Cuda { op: "cuMemGetInfo", message: format!("{e:?}") })?;
        let free = free as u64;
        let layout = RecordLayout { group: spec.routing().group as usize, head_dim: spec.head_dim() };
        let record = layout.bytes() as u64;
        let sizes = Sizes::of(&spec, max_seq_len, rows);
        let budget = config.gpu_budget_bytes.unwrap_or(free / 4);
        // More slots than the rows have groups would never fill.
        let per_layer = ((budget / layers as u64 / record) as usize)
            .min(sizes.all_groups.max(sizes.need_slots))
            .min(i32::MAX as usize);
        if per_layer < sizes.need_slots {
            return Err(RuntimeError::InvalidConfig {
                field: "gpu_budget_bytes",
                value: budget.to_string(),
                allowed: format!(
                    "must give each of {layers} layers at least {} slots of {record} bytes \
                     (max_sequences × kv_heads × groups one step opens per KV head)",
                    sizes.need_slots
                ),
            });
        }
        // One layer's state, plus 1 MiB for its per-step scratch.
        let cap = Capacity { batch: rows, max_context: max_seq_len, n_slots: per_layer };
        let need = (StateBytes::of(&spec, cap).total() + (1 << 20)) * layers as u64;
        if need > free {
            return Err(RuntimeError::GpuOutOfMemory { requested: need, available: free });
        }
        if max_seq_len > MAX_GPU_SEQ_LEN {
            return Err(RuntimeError::InvalidConfig {
                field: "max_seq_len",
                value: max_seq_len.to_string(),
                allowed: format!("must be <= {MAX_GPU_SEQ_LEN} on the GPU backend"),
            });
        }
        let cap = Capacity { batch: rows, max_context: max_seq_len, n_slots: per_layer };
        let batches = (0..layers)
            .map(|_| DecodeBatch::new(&gpu, kernels, cap).map_err(cuda_err("allocate layer state")))
            .collect::<Result<Vec<_>, _>>()?;
        let per_block = (config.host_budget_bytes / record).clamp(1, MAX_RECORDS_PER_BLOCK) as usize;
        let kvh = spec.model().kv_heads as usize;
        let store = HostStore::new(PinnedSource::new(&gpu), layout, kvh, per_block, config.host_budget_bytes)?;
        Ok(GpuBackend {
            batches,
            store,
            gpu,
            rows: vec![None; rows],
            dirty: vec![false; rows],
            seqs: HashMap::new(),
            resolved: Box::new(resolved),
            record_bytes: record,
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

    fn spec(&self) -> &ValidSpec {
        &self.resolved.spec
    }

    /// Host bytes the store holds (whole pinned blocks, used or not).
    pub(crate) fn host_bytes(&self) -> u64 {
        self.store.arena().reserved_bytes()
    }

    /// Gives a sequence a free row in every layer (reset first when an earlier sequence used it).
    pub(crate) fn add_sequence(&mut self, id: SeqId) -> Result<(), RuntimeError> {
        let row = self.rows.iter().position(Option::is_none).ok_or(RuntimeError::CapacityExceeded {
            field: "sequences",
            requested: self.seqs.len() + 1,
            limit: self.rows.len(),
        })?;
        if self.dirty[row] {
            for b in &mut self.batches {
                b.reset_row(row).map_err(cuda_err("reset row"))?;
            }
            self.dirty[row] = false;
        }
        self.rows[row] = Some(id);
        self.dirty[row] = true;
        self.seqs.insert(id, Seq { row, lens: vec![0; self.batches.len()] });
        Ok(())
    }

    /// Frees the sequence's row and host records.
    pub(crate) fn remove_sequence(&mut self, id: SeqId) {
        if let Some(s) = self.seqs.remove(&id) {
            self.rows[s.row] = None;
            self.store.remove_sequence(id.0);
        }
    }

    /// Appends `k`, `v` (`[n][kv_heads][d]` f32, validated by the caller) as one block.
    pub(crate) fn append(&mut self, id: SeqId, layer: usize, k: &[f32], v: &[f32]) -> Result<(), RuntimeError> {
        let n = k.len() / (self.spec().model().kv_heads as usize * self.spec().head_dim());
        let bits = |x: &[f32]| -> Vec<u16> { x.iter().map(|&e| f32_to_bf16(e)).collect() };
        let (kb, vb) = (bits(k), bits(v));
        self.append_with(id, layer, n, |b, row, p0| b.append_block(row, p0, &kb, &vb))
    }

    /// Appends device buffers of bf16 bits (`[n][kv_heads][d]`, lengths validated by the caller) as one
    /// block, read in place on the device (the batch's stream waits for work queued on their streams,
    /// and their streams wait for the append).
    pub(crate) fn append_device(
        &mut self,
        id: SeqId,
        layer: usize,
        k: &CudaSlice<u16>,
        v: &CudaSlice<u16>,
    ) -> Result<(), RuntimeError> {
        let n = k.len() / (self.spec().model().kv_heads as usize * self.spec().head_dim());
        let stream = self.gpu.stream().clone();
        self.append_with(id, layer, n, |b, row, p0| {
            // The buffers' streams and the batch's are ordered both ways (event waits, no host sync):
            // the launches read what was queued before, and later work on the buffers waits for them.
            for s in [k.stream(), v.stream()] {
                stream.join(s)?;
            }
            let (kp, _) = k.device_ptr(&stream);
            let (vp, _) = v.device_ptr(&stream);
            // SAFETY: `k` and `v` hold n tokens and live until their streams, which wait for this
            // one below, free them.
            unsafe { b.append_block_device(row, p0, n, kp, vp) }?;
            for s in [k.stream(), v.stream()] {
                s.join(&stream)?;
            }
            Ok(())
        })
    }

    /// Takes the records of the groups the `n` new tokens start, points the batch at them, then runs
    /// `launch` (the block append); on any error the records go back and nothing else changed.
    fn append_with(
        &mut self,
        id: SeqId,
        layer: usize,
        n: usize,
        launch: impl FnOnce(&mut DecodeBatch<'static>, usize, usize) -> Result<(), CudaError>,
    ) -> Result<(), RuntimeError> {
        if n == 0 {
            return Ok(());
        }
        let s = self.seqs.get(&id).ok_or(RuntimeError::UnknownSequence { id: id.0 })?;
        let (row, p0) = (s.row, s.lens[layer]);
        let g = self.spec().routing().group as usize;
        let kvh = self.spec().model().kv_heads as usize;
        let (have, need) = (p0.div_ceil(g), (p0 + n).div_ceil(g));
        debug_assert_eq!(self.store.groups(layer as u32, id.0), have);
        self.store.add_empty_groups(layer as u32, id.0, need - have)?;
        let batch = &mut self.batches[layer];
        let store = &self.store;
        let result = (|| -> Result<(), RuntimeError> {
            for h in 0..kvh {
                let addrs = (have..need)
                    .map(|gi| {
                        store.record_device_addr(layer as u32, id.0, h, gi).ok_or(RuntimeError::Cuda {
                            op: "host record",
                            message: format!("group {gi} of KV head {h} has no device-mapped record"),
                        })
                    })
                    .collect::<Result<Vec<u64>, _>>()?;
                // SAFETY: the records live in the store's arena (blocks never move) until the
                // sequence is removed, and the row is reset before another sequence uses it.
                unsafe { batch.set_group_addrs(row, h, have, &addrs) }.map_err(cuda_err("set group addresses"))?;
            }
            launch(batch, row, p0).map_err(cuda_err("append"))
        })();
        if let Err(e) = result {
            self.store.truncate_groups(layer as u32, id.0, have);
            return Err(e);
        }
        self.seqs.get_mut(&id).expect("looked up above").lens[layer] += n;
        Ok(())
    }

    /// Decode attention of each sequence's newest query: one launch sequence for the whole batch.
    pub(crate) fn attend(
        &mut self,
        layer: usize,
        seqs: &[SeqId],
        q: &[f32],
        out: &mut [f32],
        tel: &mut StepTelemetry,
    ) -> Result<(), RuntimeError> {
        let (qh, kvh, d) =
            (self.spec().model().q_heads as usize, self.spec().model().kv_heads as usize, self.spec().head_dim());
        let qrow = qh * d;
        let mut pos = vec![None; self.rows.len()];
        let mut qb = vec![0u16; self.rows.len() * qrow];
        let mut rows = Vec::with_capacity(seqs.len());
        for (i, id) in seqs.iter().enumerate() {
            let s = self.seqs.get(id).ok_or(RuntimeError::UnknownSequence { id: id.0 })?;
            let len = s.lens[layer];
            if len == 0 {
                return Err(RuntimeError::PositionOutOfRange { field: "pos", pos: 0, len: 0 });
            }
            pos[s.row] = Some((len - 1) as u32);
            for (dst, &src) in qb[s.row * qrow..(s.row + 1) * qrow].iter_mut().zip(&q[i * qrow..(i + 1) * qrow]) {
                *dst = f32_to_bf16(src);
            }
            rows.push(s.row);
        }
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
        let batch = &mut self.batches[layer];
        batch.set_rows(&pos).map_err(cuda_err("set rows"))?;
        batch.upload_q(&qb).map_err(cuda_err("upload q"))?;
        rec(0)?;
        batch.launch_route().map_err(cuda_err("route"))?;
        rec(1)?;
        batch.launch_fetch().map_err(cuda_err("fetch"))?;
        rec(2)?;
        batch.launch_attend().map_err(cuda_err("attend"))?;
        rec(3)?;
        let o = batch.output().map_err(cuda_err("read output"))?;
        let missing = batch.host_record_errors().map_err(cuda_err("read errors"))?;
        if missing > 0 {
            return Err(RuntimeError::Cuda {
                op: "attend",
                message: format!("{missing} routed groups had no host record (a backend bug)"),
            });
        }
        for (i, &row) in rows.iter().enumerate() {
            for (dst, &src) in out[i * qrow..(i + 1) * qrow].iter_mut().zip(&o[row * qrow..(row + 1) * qrow]) {
                *dst = bf16_to_f32(src);
            }
        }
        tel.stages.route += ms(0, 1)?;
        tel.stages.fetch += ms(1, 2)?;
        tel.stages.attend += ms(2, 3)?;
        let misses = batch.miss_counts().map_err(cuda_err("read misses"))?;
        let union = batch.union().map_err(cuda_err("read union"))?;
        let attended = batch.attended_tokens().map_err(cuda_err("read attended tokens"))?;
        let routed_groups = batch.selected_groups().map_err(cuda_err("read routed groups"))?;
        let (gqa, units) = (self.resolved.spec.gqa(), batch.units());
        let group = self.resolved.spec.routing().group as u64;
        for &row in &rows {
            for bk in row * kvh..(row + 1) * kvh {
                let (m, routed) = (misses[bk].0 as u64, union[bk].len() as u64);
                tel.groups_per_kv_head.push(union[bk].len());
                tel.misses += m;
                tel.hits += routed - m.min(routed);
                // The kernel spans the KV head's union; a query head's softmax holds only its own
                // routed groups (every group of a closed chunk is full).
                let span = attended[bk] as u64;
                if units == kvh {
                    tel.attended_tokens += span * gqa as u64;
                } else {
                    let kv = bk - row * kvh;
                    for h in 0..gqa {
                        let own = routed_groups[row * units + kv * gqa + h].len() as u64;
                        tel.attended_tokens += span - (routed - own.min(routed)) * group;
                    }
                }
            }
        }
        tel.bytes_h2d += tel.misses * self.record_bytes;
        Ok(())
    }
}

/// Sizes of one layer's batch that the backend checks before allocating it.
struct Sizes {
    /// Slots each layer needs at least: rows × KV heads × the union one step can open per KV head.
    need_slots: usize,
    /// Groups of all rows at max_seq_len (more slots would never fill).
    all_groups: usize,
}

impl Sizes {
    fn of(spec: &ValidSpec, max_seq_len: usize, rows: usize) -> Sizes {
        let r = spec.routing();
        let kvh = spec.model().kv_heads as usize;
        let chunks = max_seq_len.div_ceil(r.chunk as usize);
        let kce = (r.top_chunks as usize).min(chunks);
        let kge = (r.top_groups as usize).min(kce * spec.groups_per_chunk());
        let ucap = if r.sharing == Sharing::PerKvHead { kge } else { spec.gqa() * kge };
        Sizes { need_slots: rows * kvh * ucap, all_groups: rows * kvh * chunks * spec.groups_per_chunk() }
    }
}
