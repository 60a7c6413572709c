//! The GPU backend behind the engine API: per layer ONE [`DecodeBatch`] (the generated kernels: window,
//! summary tables, routing, slot cache, split-K attention) with a row per possible sequence, and one
//! growable host store of pinned, device-mapped group records shared by every layer and sequence.
//!
//! **One batch per layer.** The batch has `max_sequences` rows, created with the cache; its summary and
//! index tables reserve address space for `max_seq_len` and map GPU memory as the rows grow (appends
//! that cannot map fail with `GpuOutOfMemory`, state unchanged). All layers share one step scratch
//! (per-step scores, candidate lists, split partials): they run one after another on one stream.
//! A sequence takes a free row when added (the row is reset first when an earlier sequence used it:
//! slot-cache partition and host record addresses forgotten) and gives it back when removed. An attend
//! call sets the rows of its sequences active and every other row inactive (the kernels leave inactive
//! rows' state and output untouched) and runs route → fetch → attend once for the whole batch. So a
//! step costs a fixed number of launches whatever the batch, and every sequence keeps its own
//! slot-cache partition (`n_slots` is split evenly over (row, KV head)) across steps.
//!
//! **Attend I/O.** Host queries go up in one copy and outputs come back in one (the rows between the
//! first and the last used). Device queries and outputs never pass through the host: with separate
//! launches and consecutive rows the kernels read and write the engine's buffers in place, otherwise
//! device-to-device copies (one per run of consecutive rows) move them. With `CacheConfig::cuda_graph`
//! each layer's route → fetch → attend (and the telemetry gather) is one CUDA graph, captured on first
//! use and again only when the batch's buffers change or the longest sequence outgrows the captured
//! chunk-score grid ([`DecodeBatch::candidate_bucket`]: about 1/8 headroom); a replay reads positions
//! and queries from the batch's buffers, so any subset of rows replays the same graph.
//!
//! **Telemetry** (`TelemetryLevel::Full`): the step's counters (union sizes, misses, attended tokens,
//! groups selected per routing unit, the host-record error count) are gathered on the device into one
//! buffer and read back with one copy; stage times come from CUDA events (the whole chain only, on a
//! graph replay). `TelemetryLevel::Off` reads nothing back, so a device-buffer attend returns without
//! waiting for the GPU.
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
//! **Speculative prefetch** ([`GpuBackend::prefetch`]): a guess of a layer's coming queries routes on
//! a [`PrefetchLane`] (a second stream with its own step scratch, made on the first prefetch and shared
//! by all layers) and reads the groups it opens that miss into the layer's slot cache; the layer's batch
//! waits for the prefetch's routing before its resolve and for the prefetch's reads before its
//! attention, so the slot cache never races it.
//!
//! **Lookahead** (`CacheConfig::lookahead`): after each layer's attend, the step's own queries route
//! wider on a second lane ([`DecodeBatch::lookahead`]) and its runners-up are read into the layer's
//! slot cache for the layer's next step, while the other layers run. The next append of the layer
//! writes past the lookahead's position and runs beside it; the next attend replays its graph behind
//! it (on the GPU the lookahead is done by then unless the rest of the model took less time than it).
//!
//! **Appends** of one (sequence, layer) are one block append (`append_block`, or
//! `append_block_device` for device buffers): two launches whatever the number of tokens (the
//! summaries of every chunk the block closes, then the window rows that stay and the host records).

use super::config::{CacheConfig, TelemetryLevel};
use super::telemetry::StepTelemetry;
use super::SeqId;
use crate::cuda::layout::Layout;
use crate::cuda::{
    AttendGraph, Capacity, CounterBuffer, CudaError, DecodeBatch, DecodeKernels, Gpu, LanePriority, PrefetchLane,
    StateBytes, StepScratch, Widening,
};
use crate::jit::Jit;
use crate::offload::{bf16_to_f32, f32_to_bf16, HostStore, PinnedSource, RecordLayout};
use crate::RuntimeError;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DriverError};
use hga_dsl::codegen::LaunchParams;
use hga_dsl::tuned::{resolve, Query, Resolved};
use hga_dsl::ValidSpec;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Maps the CUDA backend's errors onto the runtime's.
pub(crate) fn cuda_err(op: &'static str) -> impl Fn(CudaError) -> RuntimeError {
    move |e| match e {
        CudaError::DriverMissing => RuntimeError::NoGpu { reason: "the CUDA driver (libcuda) is not available".into() },
        CudaError::NoDevice { ordinal, message } => {
            RuntimeError::NoGpu { reason: format!("device {ordinal}: {message}") }
        }
        // Too old for the kernels: unusable, so `BackendChoice::Auto` takes the CPU.
        e @ CudaError::UnsupportedArch { .. } => RuntimeError::NoGpu { reason: e.to_string() },
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
    /// Per layer: counter buffer and attend graph.
    io: Vec<LayerIo>,
    // Dropped in field order: the batches (whose tables hold record addresses) before the store.
    batches: Vec<DecodeBatch<'static>>,
    /// Speculative prefetches of every layer ([`GpuBackend::prefetch`]), made on the first one.
    lane: Option<Box<PrefetchLane>>,
    /// The lookahead lane (`CacheConfig::lookahead`), routing wider than the step; made with the cache.
    ahead: Option<Box<PrefetchLane>>,
    kernels: &'static DecodeKernels,
    cap: Capacity,
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
    telemetry: TelemetryLevel,
    cuda_graph: bool,
    events: StageEvents,
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
        // After the device opened, so that `BackendChoice::Auto` without a GPU still takes the CPU.
        let score = config.spec.routing().score;
        if !hga_dsl::codegen::scores(score) {
            return Err(RuntimeError::InvalidConfig {
                field: "spec.routing.score",
                value: score.short().into(),
                allowed: format!(
                    "one of {} on the GPU backend (this kind runs on BackendChoice::Cpu)",
                    hga_dsl::codegen::scored_names()
                ),
            });
        }
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
        let wider = config.lookahead.unwrap_or_default();
        let sizes =
            Sizes::of(&spec, &kernels.generated().launch, max_seq_len, rows, wider).map_err(lookahead_err(wider))?;
        let budget = config.gpu_budget_bytes.unwrap_or(free / 4);
        let per_layer = sizes.slots_per_layer(budget, layers, record, wider)?;
        // What the layers commit at creation (window, slot pool, per-step buffers, one step scratch
        // shared by all layers). The summary and index tables grow with the sequences, a page at a time:
        // an append that cannot map its pages fails with GpuOutOfMemory and changes nothing.
        let cap = Capacity { batch: rows, max_context: max_seq_len, n_slots: per_layer };
        let need = StateBytes::at(&spec, cap, 0, layers).total() * layers as u64;
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
        // Layers run one after another on one stream, so one step scratch serves them all.
        let scratch = StepScratch::new(&gpu, kernels, cap).map_err(cuda_err("allocate step scratch"))?;
        let batches = (0..layers)
            .map(|_| {
                DecodeBatch::with_scratch(&gpu, kernels, cap, scratch.clone()).map_err(cuda_err("allocate layer state"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let per_block = (config.host_budget_bytes / record).clamp(1, MAX_RECORDS_PER_BLOCK) as usize;
        // At the batches' priority: a lookahead is background work, and a higher-priority lane
        // would take SMs from the next layer's step.
        let ahead = match config.lookahead {
            Some(w) => Some(Box::new(
                PrefetchLane::with_options(&gpu, kernels, cap, LanePriority::Default, w).map_err(lookahead_err(w))?,
            )),
            None => None,
        };
        let kvh = spec.model().kv_heads as usize;
        let store = HostStore::new(PinnedSource::new(&gpu), layout, kvh, per_block, config.host_budget_bytes)?;
        Ok(GpuBackend {
            io: (0..layers).map(|_| LayerIo::default()).collect(),
            events: StageEvents::new(&gpu)?,
            telemetry: config.telemetry,
            cuda_graph: config.cuda_graph,
            batches,
            lane: None,
            ahead,
            kernels,
            cap,
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
        // The buffers' streams and the batch's are ordered both ways (event waits, no host sync): the
        // launches read what was queued before, and later work on the buffers waits for them.
        let others = other_streams(&stream, &[k.stream(), v.stream()]);
        for s in &others {
            self.events.join(&stream, s)?;
        }
        let appended = self.append_with(id, layer, n, |b, row, p0| {
            let (kp, _) = k.device_ptr(&stream);
            let (vp, _) = v.device_ptr(&stream);
            // SAFETY: `k` and `v` hold n tokens and live until their streams, which wait for this
            // one below, free them.
            unsafe { b.append_block_device(row, p0, n, kp, vp) }
        });
        for s in &others {
            self.events.join(s, &stream)?;
        }
        appended
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

    /// Sets the rows of `seqs` active at their newest token (every other row sits the step out) and
    /// returns them in batch order.
    fn activate(&mut self, layer: usize, seqs: &[SeqId]) -> Result<Vec<usize>, RuntimeError> {
        let mut pos = vec![None; self.rows.len()];
        let mut rows = Vec::with_capacity(seqs.len());
        for id in seqs {
            let s = self.seqs.get(id).ok_or(RuntimeError::UnknownSequence { id: id.0 })?;
            let len = s.lens[layer];
            if len == 0 {
                return Err(RuntimeError::PositionOutOfRange { field: "pos", pos: 0, len: 0 });
            }
            pos[s.row] = Some((len - 1) as u32);
            rows.push(s.row);
        }
        self.batches[layer].set_rows(&pos).map_err(cuda_err("set rows"))?;
        Ok(rows)
    }

    /// Speculative prefetch of `layer` for each sequence's coming token (`q`: host f32 guesses,
    /// `[seqs][q_heads][d]`, checked by the caller) on the prefetch lane. Returns once queued; the
    /// layer's next work waits for it.
    pub(crate) fn prefetch(&mut self, layer: usize, seqs: &[SeqId], q: &[f32]) -> Result<(), RuntimeError> {
        let qrow = self.spec().model().q_heads as usize * self.spec().head_dim();
        let rows = self.prefetch_rows(layer, seqs)?;
        let mut pos = vec![None; self.rows.len()];
        let mut qb = vec![0u16; self.rows.len() * qrow];
        for (i, &(row, p)) in rows.iter().enumerate() {
            pos[row] = Some(p);
            for (d, &x) in qb[row * qrow..(row + 1) * qrow].iter_mut().zip(&q[i * qrow..(i + 1) * qrow]) {
                *d = f32_to_bf16(x);
            }
        }
        let lane = lane(&mut self.lane, &self.gpu, self.kernels, self.cap)?;
        self.batches[layer].prefetch(lane, &pos, &qb).map_err(cuda_err("prefetch"))
    }

    /// [`GpuBackend::prefetch`] with the guesses in a device buffer of bf16 bits (length checked by the
    /// caller): copied into the layer's batch on our stream after the work queued on `q`'s stream,
    /// which then waits for the copy (not for the prefetch).
    pub(crate) fn prefetch_device(
        &mut self,
        layer: usize,
        seqs: &[SeqId],
        q: &CudaSlice<u16>,
    ) -> Result<(), RuntimeError> {
        let rows = self.prefetch_rows(layer, seqs)?;
        let stream = self.gpu.stream().clone();
        let others = other_streams(&stream, &[q.stream()]);
        for s in &others {
            self.events.join(&stream, s)?;
        }
        let (qp, _guard) = q.device_ptr(&stream);
        let lane = lane(&mut self.lane, &self.gpu, self.kernels, self.cap)?;
        // SAFETY: `q` holds seqs.len() rows (checked by the caller); its stream waits below for ours,
        // which copies them first.
        let r = unsafe { self.batches[layer].prefetch_device(lane, &rows, qp) }.map_err(cuda_err("prefetch"));
        for s in &others {
            self.events.join(s, &stream)?;
        }
        r
    }

    /// The lookahead of `layer` for the coming token of the rows in `rows` (their step just launched):
    /// with the queries the batch holds, or with `q` (device address of the rows' queries in order)
    /// when the step read them in place. Nothing without a lookahead lane.
    fn look_ahead(&mut self, layer: usize, rows: &[usize], q: Option<u64>) -> Result<(), RuntimeError> {
        let Some(lane) = self.ahead.as_deref_mut() else { return Ok(()) };
        let batch = &mut self.batches[layer];
        let Some(q) = q else {
            // Positions and queries copied on the device from the step's own.
            return batch.lookahead(lane).map_err(cuda_err("lookahead"));
        };
        let mut at = Vec::with_capacity(rows.len());
        for &row in rows {
            let id = self.rows[row].expect("an active row holds a sequence");
            let coming = self.seqs[&id].lens[layer];
            // A sequence at max_seq_len has no coming token; the rows' queries are consecutive in `q`,
            // so leaving one out would shift the others: no lookahead this time.
            if coming >= self.cap.max_context {
                return Ok(());
            }
            at.push((row, coming as u32));
        }
        // SAFETY: the caller's buffer holds the rows' queries until its stream, which waits for ours
        // after this call, changes them; the copy is queued on ours.
        unsafe { batch.lookahead_device(lane, &at, q) }.map_err(cuda_err("lookahead"))
    }

    /// The rows of `seqs` and their coming positions in `layer` (the tokens the layer holds).
    fn prefetch_rows(&self, layer: usize, seqs: &[SeqId]) -> Result<Vec<(usize, u32)>, RuntimeError> {
        seqs.iter()
            .map(|id| {
                let s = self.seqs.get(id).ok_or(RuntimeError::UnknownSequence { id: id.0 })?;
                Ok((s.row, s.lens[layer] as u32))
            })
            .collect()
    }

    fn full_telemetry(&self) -> bool {
        self.telemetry == TelemetryLevel::Full
    }

    /// Route → fetch → attend of `layer` over the active rows, reading the queries from and writing the
    /// outputs to the batch's own buffers, then (with full telemetry) the counter gather: replayed from
    /// the layer's graph with `cuda_graph` (captured again when it no longer fits) unless a prefetch is
    /// in flight, else launched.
    fn launch_chain(&mut self, layer: usize) -> Result<(), RuntimeError> {
        // A replay would wait for a pending speculative prefetch's gather before routing; launched
        // stages route beside it and wait only before the resolve (its routing) and the attention (its
        // gather). A pending lookahead ran beside the other layers and is done on the GPU by now.
        let replay = self.cuda_graph && !self.batches[layer].speculation_in_flight();
        self.io[layer].replayed = replay;
        if replay {
            return self.replay_graph(layer);
        }
        self.launch_stages(layer, None)?;
        self.gather(layer)
    }

    /// The layer's attend chain as a graph replay (timed as a whole with full telemetry).
    fn replay_graph(&mut self, layer: usize) -> Result<(), RuntimeError> {
        let full = self.full_telemetry();
        let (batch, io) = (&mut self.batches[layer], &mut self.io[layer]);
        // The replay waits for a pending lookahead: first, so that a capture finds none pending.
        batch.join_prefetch().map_err(cuda_err("join lookahead"))?;
        if !io.graph.as_ref().is_some_and(|g| batch.attend_graph_fits(g)) {
            // The counter buffer moves into the new graph (its replays write it).
            let counters = match io.graph.take() {
                Some(g) => g.into_counters(),
                None => io.counters.take(),
            };
            let counters = match (full, counters) {
                (false, _) => None,
                (true, Some(c)) => Some(c),
                (true, None) => Some(batch.counter_buffer().map_err(cuda_err("allocate counters"))?),
            };
            let bucket = batch.candidate_bucket();
            io.graph = Some(batch.capture_attend(bucket, counters).map_err(cuda_err("capture attend graph"))?);
        }
        let graph = io.graph.as_ref().expect("captured above");
        let stream = self.gpu.stream();
        if full {
            self.events.record(0, stream)?;
        }
        batch.launch_attend_graph(graph).map_err(cuda_err("attend graph"))?;
        if full {
            self.events.record(3, stream)?;
        }
        Ok(())
    }

    /// Route, fetch and attend as separate launches, between stage events with full telemetry;
    /// `at`: queries and outputs read and written in place at these device addresses for this run of
    /// rows ([`DecodeBatch::with_io_at`]).
    fn launch_stages(&mut self, layer: usize, at: Option<(u64, u64, Range<usize>)>) -> Result<(), RuntimeError> {
        let events = self.full_telemetry().then_some(&self.events);
        let stream = self.gpu.stream().clone();
        let stages = |b: &mut DecodeBatch<'static>| -> Result<(), RuntimeError> {
            let rec = |i| events.map_or(Ok(()), |e| e.record(i, &stream));
            rec(0)?;
            b.launch_route().map_err(cuda_err("route"))?;
            rec(1)?;
            b.launch_fetch().map_err(cuda_err("fetch"))?;
            rec(2)?;
            b.launch_attend().map_err(cuda_err("attend"))?;
            rec(3)
        };
        let batch = &mut self.batches[layer];
        match at {
            // SAFETY: the caller's buffers hold the run's rows and outlive the launches (its streams wait
            // for ours), and the launches activate no other row.
            Some((q, out, rows)) => {
                unsafe { batch.with_io_at(q, out, rows, stages) }.map_err(cuda_err("redirect io"))?
            }
            None => stages(batch),
        }
    }

    /// Gathers the step's counters (separate launches; a graph gathers them itself).
    fn gather(&mut self, layer: usize) -> Result<(), RuntimeError> {
        if !self.full_telemetry() {
            return Ok(());
        }
        let (batch, io) = (&self.batches[layer], &mut self.io[layer]);
        if io.counters.is_none() {
            io.counters = Some(batch.counter_buffer().map_err(cuda_err("allocate counters"))?);
        }
        batch.gather_counters(io.counters.as_mut().expect("set above")).map_err(cuda_err("gather counters"))
    }

    /// Reads the step's counters back (one copy, already queued; waits for the step) and fills the
    /// telemetry of `rows` (batch order): per (sequence, KV head) the union and its misses, the tokens in
    /// each query head's softmax, and the stage times.
    fn read_telemetry(&self, layer: usize, rows: &[usize], tel: &mut StepTelemetry) -> Result<(), RuntimeError> {
        let io = &self.io[layer];
        let buf = if io.replayed { io.graph.as_ref().and_then(|g| g.counters()) } else { io.counters.as_ref() };
        let c = buf.expect("gathered with full telemetry").read().map_err(cuda_err("read counters"))?;
        let missing = c.host_record_errors();
        if missing > 0 {
            return Err(RuntimeError::Cuda {
                op: "attend",
                message: format!("{missing} routed groups had no host record (a backend bug)"),
            });
        }
        let ms = |a, b| self.events.elapsed(a, b);
        tel.stages.device = ms(0, 3)?;
        if !io.replayed {
            (tel.stages.route, tel.stages.fetch, tel.stages.attend) = (ms(0, 1)?, ms(1, 2)?, ms(2, 3)?);
        }
        let kvh = self.spec().model().kv_heads as usize;
        let (gqa, units) = (self.spec().gqa(), self.batches[layer].units());
        let group = self.spec().routing().group as u64;
        let bad =
            || RuntimeError::Cuda { op: "read counters", message: "a row outside the batch (a backend bug)".into() };
        for &row in rows {
            for kv in 0..kvh {
                let (m, routed) =
                    (c.misses(row, kv).ok_or_else(bad)?.0 as u64, c.union_len(row, kv).ok_or_else(bad)? as u64);
                tel.groups_per_kv_head.push(routed as usize);
                tel.misses += m;
                tel.hits += routed - m.min(routed);
                // The kernel spans the KV head's union; a query head's softmax holds only its own
                // routed groups (every group of a closed chunk is full).
                let span = c.attended(row, kv).ok_or_else(bad)? as u64;
                if units == kvh {
                    tel.attended_tokens += span * gqa as u64;
                } else {
                    for h in 0..gqa {
                        let own = c.selected_groups(row, kv * gqa + h).ok_or_else(bad)? as u64;
                        tel.attended_tokens += span - (routed - own.min(routed)) * group;
                    }
                }
            }
        }
        tel.bytes_h2d = tel.misses * self.record_bytes;
        Ok(())
    }

    /// Decode attention of each sequence's newest query (`q`, `out`: host f32, `[seqs][q_heads][d]`):
    /// the queries of the rows between the first and the last used go up in one copy, one launch chain
    /// runs for the whole batch, and the outputs come back in one copy (waiting for the step), with the
    /// counters read back alongside.
    pub(crate) fn attend(
        &mut self,
        layer: usize,
        seqs: &[SeqId],
        q: &[f32],
        out: &mut [f32],
        tel: &mut StepTelemetry,
    ) -> Result<(), RuntimeError> {
        let qrow = self.spec().model().q_heads as usize * self.spec().head_dim();
        let rows = self.activate(layer, seqs)?;
        let (Some(&lo), Some(&hi)) = (rows.iter().min(), rows.iter().max()) else { return Ok(()) };
        // Rows in between that sit the step out get zeros: no kernel reads them.
        let mut qb = vec![0u16; (hi + 1 - lo) * qrow];
        for (i, &row) in rows.iter().enumerate() {
            let dst = &mut qb[(row - lo) * qrow..(row - lo + 1) * qrow];
            for (d, &s) in dst.iter_mut().zip(&q[i * qrow..(i + 1) * qrow]) {
                *d = f32_to_bf16(s);
            }
        }
        self.batches[layer].upload_q_rows(lo, &qb).map_err(cuda_err("upload q"))?;
        self.launch_chain(layer)?;
        let o = self.batches[layer].read_output_rows(lo..hi + 1).map_err(cuda_err("read output"))?;
        tel.graph_replay = self.io[layer].replayed;
        if self.full_telemetry() {
            self.read_telemetry(layer, &rows, tel)?;
        }
        for (i, &row) in rows.iter().enumerate() {
            for (d, &s) in out[i * qrow..(i + 1) * qrow].iter_mut().zip(&o[(row - lo) * qrow..(row - lo + 1) * qrow]) {
                *d = bf16_to_f32(s);
            }
        }
        // After the read-backs, which would wait for it.
        self.look_ahead(layer, &rows, None)
    }

    /// Decode attention with queries and outputs in device buffers of bf16 bits (`[seqs][q_heads][d]`,
    /// lengths validated by the caller), never through the host. With separate launches and the rows of
    /// `seqs` consecutive in batch order, the kernels read `q` and write `out` in place; otherwise
    /// device-to-device copies (one per run of consecutive rows) move them to and from the batch's rows.
    /// Ordered with the buffers' streams both ways (event waits); with full telemetry it then waits for
    /// the step to read the counters back, else it returns without waiting.
    pub(crate) fn attend_device(
        &mut self,
        layer: usize,
        seqs: &[SeqId],
        q: &CudaSlice<u16>,
        out: &mut CudaSlice<u16>,
        tel: &mut StepTelemetry,
    ) -> Result<(), RuntimeError> {
        let rows = self.activate(layer, seqs)?;
        if rows.is_empty() {
            return Ok(());
        }
        let stream = self.gpu.stream().clone();
        let others = other_streams(&stream, &[q.stream(), out.stream()]);
        // Our launches read what was queued on the buffers before; later work on them waits for ours.
        for s in &others {
            self.events.join(&stream, s)?;
        }
        let result = (|| {
            let (qp, _q_guard) = q.device_ptr(&stream);
            let (op, _out_guard) = out.device_ptr_mut(&stream);
            let first = rows[0];
            let consecutive = rows.iter().enumerate().all(|(i, &r)| r == first + i);
            if consecutive && !self.cuda_graph {
                self.io[layer].replayed = false;
                self.launch_stages(layer, Some((qp, op, first..first + rows.len())))?;
                self.gather(layer)?;
                // The queries were read in place: the lookahead copies them from there too.
                return self.look_ahead(layer, &rows, Some(qp));
            }
            // SAFETY: `q` and `out` hold rows.len() rows (checked by the caller) and live until their
            // streams, which wait for ours below, free them.
            unsafe { self.batches[layer].copy_q_from_device(qp, &rows) }.map_err(cuda_err("copy q"))?;
            self.launch_chain(layer)?;
            unsafe { self.batches[layer].copy_out_to_device(op, &rows) }.map_err(cuda_err("copy output"))?;
            self.look_ahead(layer, &rows, None)
        })();
        for s in &others {
            self.events.join(s, &stream)?;
        }
        result?;
        tel.graph_replay = self.io[layer].replayed;
        if self.full_telemetry() {
            self.read_telemetry(layer, &rows, tel)?;
        }
        Ok(())
    }
}

/// A widening the layout or the slot pool cannot serve, as the config error it is; other errors as
/// the lookahead lane's.
fn lookahead_err(w: Widening) -> impl Fn(CudaError) -> RuntimeError {
    move |e| match e {
        CudaError::Invalid { field, value, rule } => RuntimeError::InvalidConfig {
            field: "lookahead",
            value: widening_value(w),
            allowed: format!("{field} {value}: {rule}"),
        },
        e => cuda_err("make lookahead lane")(e),
    }
}

/// A widening as the value of a `lookahead` config error.
fn widening_value(w: Widening) -> String {
    format!("{} chunks, {} groups", w.extra_chunks, w.extra_groups)
}

/// The streams of `bufs` other than `ours`, each once.
/// The prefetch lane in `slot`, made on first use (its step scratch is committed for `cap.max_context`).
/// A free function over the field, so that the caller can borrow the batches beside it.
fn lane<'a>(
    slot: &'a mut Option<Box<PrefetchLane>>,
    gpu: &Gpu,
    kernels: &DecodeKernels,
    cap: Capacity,
) -> Result<&'a mut PrefetchLane, RuntimeError> {
    if slot.is_none() {
        *slot = Some(Box::new(PrefetchLane::new(gpu, kernels, cap).map_err(cuda_err("make prefetch lane"))?));
    }
    Ok(slot.as_deref_mut().expect("made above"))
}

fn other_streams(ours: &CudaStream, bufs: &[&Arc<CudaStream>]) -> Vec<Arc<CudaStream>> {
    let mut others: Vec<Arc<CudaStream>> = Vec::new();
    for &s in bufs {
        if s.cu_stream() != ours.cu_stream() && others.iter().all(|o| o.cu_stream() != s.cu_stream()) {
            others.push(s.clone());
        }
    }
    others
}

/// Per layer, what attend keeps between calls.
#[derive(Default)]
struct LayerIo {
    /// The counter buffer of separate launches (a graph holds its own).
    counters: Option<CounterBuffer>,
    /// The captured attend chain, with `cuda_graph`.
    graph: Option<AttendGraph>,
    /// The last attend chain was the graph's replay (not separate launches): where its counters and
    /// stage times are.
    replayed: bool,
}

/// CUDA events made once (creating events per call costs driver calls): the stage boundaries of a step
/// (0 before route, 1 before fetch, 2 before attend, 3 after it; a graph replay records 0 and 3 only),
/// and one without timing that orders streams.
struct StageEvents {
    stages: [CudaEvent; 4],
    join: CudaEvent,
}

impl StageEvents {
    fn new(gpu: &Gpu) -> Result<StageEvents, RuntimeError> {
        let ev = |flags| {
            gpu.context()
                .new_event(Some(flags))
                .map_err(|e| RuntimeError::Cuda { op: "cuEventCreate", message: format!("{e:?}") })
        };
        let timed = CUevent_flags::CU_EVENT_DEFAULT;
        Ok(StageEvents {
            stages: [ev(timed)?, ev(timed)?, ev(timed)?, ev(timed)?],
            join: ev(CUevent_flags::CU_EVENT_DISABLE_TIMING)?,
        })
    }

    fn record(&self, i: usize, stream: &CudaStream) -> Result<(), RuntimeError> {
        self.stages[i].record(stream).map_err(|e| RuntimeError::Cuda { op: "cuEventRecord", message: format!("{e:?}") })
    }

    /// Makes `waiter`'s later work wait for what is queued on `on` now (no host wait). One event serves
    /// every join: a wait takes the event's state when it is queued.
    fn join(&self, waiter: &CudaStream, on: &CudaStream) -> Result<(), RuntimeError> {
        let err = |op| move |e: DriverError| RuntimeError::Cuda { op, message: format!("{e:?}") };
        self.join.record(on).map_err(err("cuEventRecord"))?;
        waiter.wait(&self.join).map_err(err("cuStreamWaitEvent"))
    }

    /// Device time from event `a` to event `b` (both recorded and complete).
    fn elapsed(&self, a: usize, b: usize) -> Result<Duration, RuntimeError> {
        let t = self.stages[a]
            .elapsed_ms(&self.stages[b])
            .map_err(|e| RuntimeError::Cuda { op: "cuEventElapsedTime", message: format!("{e:?}") })?;
        Ok(Duration::from_secs_f64(t as f64 / 1e3))
    }
}

/// Sizes of one layer's batch that the backend checks before allocating it.
struct Sizes {
    /// Slots each layer needs at least: rows × KV heads × the union one step (or its lookahead, routed
    /// wider) can open per KV head.
    need_slots: usize,
    /// The same without the lookahead.
    plain_slots: usize,
    /// Groups of all rows at max_seq_len (more slots would never fill).
    all_groups: usize,
}

impl Sizes {
    /// From the batches' layout (`lp`: the kernels' launch parameters), widened as the lookahead's.
    fn of(
        spec: &ValidSpec,
        lp: &LaunchParams,
        max_seq_len: usize,
        rows: usize,
        wider: Widening,
    ) -> Result<Sizes, CudaError> {
        let cap = Capacity { batch: rows, max_context: max_seq_len, n_slots: 0 };
        let top_groups = spec.routing().top_groups as usize;
        let plain = Layout::of(spec, lp, cap);
        let l = plain.widened(wider.extra_chunks, wider.extra_groups, top_groups)?;
        Ok(Sizes {
            need_slots: rows * l.kvh * l.ucap,
            plain_slots: rows * plain.kvh * plain.ucap,
            all_groups: rows * l.kvh * l.cap_groups,
        })
    }

    /// Slots per layer out of `budget` bytes for `layers` layers of `record`-byte groups: no more than
    /// the rows' groups (they would never fill), and at least these sizes' need. A budget that covers
    /// the plain need but not the lookahead `wider`'s widened union is the lookahead's error, a smaller
    /// one the budget's.
    fn slots_per_layer(&self, budget: u64, layers: usize, record: u64, wider: Widening) -> Result<usize, RuntimeError> {
        let plain_need = self.plain_slots;
        let per_layer = ((budget / layers.max(1) as u64 / record.max(1)) as usize)
            .min(self.all_groups.max(self.need_slots))
            .min(i32::MAX as usize);
        if per_layer >= self.need_slots {
            return Ok(per_layer);
        }
        if per_layer >= plain_need {
            return Err(RuntimeError::InvalidConfig {
                field: "lookahead",
                value: widening_value(wider),
                allowed: format!(
                    "its widened union needs {} slots per layer, gpu_budget_bytes = {budget} gives {per_layer}: \
                     raise the budget or narrow the lookahead",
                    self.need_slots
                ),
            });
        }
        let with_lookahead = if plain_need < self.need_slots {
            format!("; {} with the lookahead", self.need_slots)
        } else {
            String::new()
        };
        Err(RuntimeError::InvalidConfig {
            field: "gpu_budget_bytes",
            value: budget.to_string(),
            allowed: format!(
                "must give each of {layers} layers at least {plain_need} slots of {record} bytes \
                 (max_sequences × kv_heads × groups one step opens per KV head{with_lookahead})"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hga_dsl::{presets, Spec};

    /// With a lookahead, each layer's slot pool must hold the widened union even where the sequences
    /// are shorter than it (max_seq_len 4096: 256 groups per KV head, a widened union of up to 512).
    #[test]
    fn slot_needs_count_the_widened_union() {
        let spec = Spec::new(presets::find("qwen3-30b").unwrap().shape).validate().unwrap();
        let lp = hga_dsl::codegen::launch_params(&spec);
        let sizes = |len, rows, w| Sizes::of(&spec, &lp, len, rows, w).unwrap();
        let plain = sizes(4096, 2, Widening::default());
        assert_eq!(plain.need_slots, 2 * 4 * 8 * 32);
        assert_eq!(plain.all_groups, 2 * 4 * 64 * 4);
        let wide = sizes(4096, 2, Widening { extra_chunks: 8, extra_groups: 32 });
        assert_eq!(wide.need_slots, 2 * 4 * 8 * 64);
        // Budgets are capped by the context: 4 chunks of 4 groups at most.
        let tiny = sizes(256, 1, Widening { extra_chunks: 8, extra_groups: 32 });
        assert_eq!(tiny.need_slots, 4 * 8 * 16);
    }

    /// A budget too small for the widened union but enough for the plain one names the lookahead; one
    /// too small for the plain union names the budget (with the plain need); the slots are capped by
    /// the rows' groups.
    #[test]
    fn a_budget_short_of_the_widened_union_is_the_lookaheads_error() {
        let spec = Spec::new(presets::find("qwen3-30b").unwrap().shape).validate().unwrap();
        let lp = hga_dsl::codegen::launch_params(&spec);
        let w = Widening { extra_chunks: 8, extra_groups: 32 };
        let (plain, wide) =
            (Sizes::of(&spec, &lp, 4096, 2, Widening::default()).unwrap(), Sizes::of(&spec, &lp, 4096, 2, w).unwrap());
        assert_eq!(wide.plain_slots, plain.need_slots);
        let record = 8192u64;
        let budget = |slots: usize| (2 * slots) as u64 * record;
        let field = |r: Result<usize, RuntimeError>| match r {
            Err(RuntimeError::InvalidConfig { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        };
        assert_eq!(wide.slots_per_layer(budget(wide.need_slots), 2, record, w).unwrap(), wide.need_slots);
        assert_eq!(field(wide.slots_per_layer(budget(plain.need_slots), 2, record, w)), "lookahead");
        assert_eq!(field(wide.slots_per_layer(budget(plain.need_slots - 1), 2, record, w)), "gpu_budget_bytes");
        assert_eq!(plain.slots_per_layer(budget(1 << 20), 2, record, Widening::default()).unwrap(), plain.all_groups);
    }
}
