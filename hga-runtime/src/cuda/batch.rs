//! Device state of a batch of sequences for one layer, and the launches of one decode step.

use super::kernels::{HgaParams, Kernel};
use super::{CudaError, DecodeKernels, Gpu};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode, CU_MEMHOSTALLOC_DEVICEMAP};
use cudarc::driver::{
    CudaGraph, CudaSlice, DevicePtr, DeviceRepr, LaunchConfig, PinnedHostSlice, PushKernelArg, ValidAsZeroBits,
};
use hga_dsl::codegen::LaunchParams;
use hga_dsl::Sharing;

/// How much a [`DecodeBatch`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Sequences per launch.
    pub batch: usize,
    /// Longest context of any sequence, in tokens.
    pub max_context: usize,
    /// Slots of the GPU group cache (each holds one group's K and V of one KV head); at least the
    /// union of one step's opened groups: `batch × kv_heads × (gqa or 1) × top_groups`.
    pub n_slots: usize,
}

/// Device buffers and launches of one layer's decode step for a batch of sequences. All work goes to
/// the [`Gpu`]'s stream; nothing synchronizes except the read-back methods.
pub struct DecodeBatch<'k> {
    gpu: Gpu,
    kernels: &'k DecodeKernels,
    lp: LaunchParams,
    cap: Capacity,
    pos_host: Vec<i32>,
    p: HgaParams,
    b: Buffers,
    _own_store: Option<CudaSlice<u16>>,
    _pinned_store: Option<PinnedHostSlice<u16>>,
    /// While capturing a graph: the candidate capacity the chunk-score grid is sized for.
    capture_cands: Option<u32>,
}

/// A whole decode step captured as a CUDA graph: append, summarize (sequences whose `close` entry is
/// a chunk), route, fetch, attend and merge in one launch. Replays read the batch's buffers, so update
/// positions, queries and the new K/V before each [`DecodeBatch::launch_graph`].
pub struct StepGraph {
    graph: CudaGraph,
    candidate_capacity: u32,
}

struct Buffers {
    pos: CudaSlice<i32>,
    close: CudaSlice<i32>,
    k_new: CudaSlice<u16>,
    v_new: CudaSlice<u16>,
    win_k: CudaSlice<u16>,
    win_v: CudaSlice<u16>,
    chunk_sum: CudaSlice<f32>,
    group_sum: CudaSlice<f32>,
    q: CudaSlice<u16>,
    chunk_score: CudaSlice<f32>,
    sel_chunk: CudaSlice<i32>,
    n_sel_chunk: CudaSlice<i32>,
    sel_group: CudaSlice<i32>,
    n_sel_group: CudaSlice<i32>,
    uni_group: CudaSlice<i32>,
    uni_slot: CudaSlice<i32>,
    n_uni: CudaSlice<i32>,
    fetch_state: CudaSlice<i32>,
    out: CudaSlice<u16>,
    _rest: Vec<Box<dyn std::any::Any>>,
}

fn ptr<T>(s: &CudaSlice<T>, gpu: &Gpu) -> u64 {
    s.device_ptr(gpu.stream()).0
}

impl<'k> DecodeBatch<'k> {
    /// Allocates the state of `cap.batch` empty sequences.
    pub fn new(gpu: &Gpu, kernels: &'k DecodeKernels, cap: Capacity) -> Result<DecodeBatch<'k>, CudaError> {
        let spec = kernels.spec();
        let (m, r) = (spec.model(), spec.routing());
        let lp = kernels.generated().launch.clone();
        let (bsz, qh, kvh, d) = (cap.batch, m.q_heads as usize, m.kv_heads as usize, m.head_dim as usize);
        let (c, g, gpc, gqa) = (r.chunk as usize, r.group as usize, spec.groups_per_chunk(), spec.gqa());
        let invalid = |field, value: usize, rule: String| CudaError::Invalid { field, value: value.to_string(), rule };
        if bsz == 0 || bsz > 65535 {
            return Err(invalid("batch", bsz, "must be in 1..=65535".into()));
        }
        if cap.max_context == 0 || cap.max_context > (1 << 28) {
            return Err(invalid("max_context", cap.max_context, "must be in 1..=2^28".into()));
        }
        let cap_chunks = cap.max_context.div_ceil(c);
        let cap_groups = cap_chunks * gpc;
        let kce = (r.top_chunks as usize).min(cap_chunks);
        let kge = (r.top_groups as usize).min(kce * gpc);
        let shared = r.sharing == Sharing::PerKvHead;
        let ucap = if shared { kge } else { gqa * kge };
        let units = lp.units as usize;
        let need = bsz * kvh * ucap;
        if cap.n_slots < need || cap.n_slots > i32::MAX as usize {
            return Err(invalid(
                "n_slots",
                cap.n_slots,
                format!("must be >= batch × kv_heads × opened groups per KV head = {need}"),
            ));
        }
        let flat = bsz * kvh * cap_groups;
        if (flat * 2 * g * d) as u128 > i64::MAX as u128 || bsz * kvh * ucap > i32::MAX as usize {
            return Err(invalid("max_context", cap.max_context, "too large for 32-bit union indices".into()));
        }
        let st = gpu.stream();
        let z = |n: usize| -> Result<CudaSlice<f32>, CudaError> { Ok(st.alloc_zeros::<f32>(n.max(1))?) };
        let zi = |n: usize| -> Result<CudaSlice<i32>, CudaError> { Ok(st.alloc_zeros::<i32>(n.max(1))?) };
        let zh = |n: usize| -> Result<CudaSlice<u16>, CudaError> { Ok(st.alloc_zeros::<u16>(n.max(1))?) };
        let sv = lp.summary_vectors as usize;
        let sk = lp.split_k as usize;
        let mw = lp.mask_words as usize;
        let win = bsz * kvh * lp.window_chunks as usize * c * d;
        let chunk_mass = z(bsz * kvh * cap_chunks)?;
        let group_cand = zi(bsz * units * kce * gpc)?;
        let group_score = z(bsz * qh * kce * gpc)?;
        let group_mass = z(bsz * kvh * kce * gpc)?;
        let uni_mask = st.alloc_zeros::<u32>((bsz * kvh * ucap * mw).max(1))?;
        let slot_of = st.clone_htod(&vec![-1i32; flat])?;
        let slot_owner = st.clone_htod(&vec![-1i64; cap.n_slots])?;
        let slot_stamp = st.clone_htod(&vec![-1i32; cap.n_slots])?;
        let miss_list = zi(bsz * kvh * ucap)?;
        let slots = zh(cap.n_slots * 2 * g * d)?;
        let part_ml = z(bsz * qh * sk * 2)?;
        let part_acc = z(bsz * qh * sk * d)?;
        let b = Buffers {
            pos: zi(bsz)?,
            close: st.clone_htod(&vec![-1i32; bsz])?,
            k_new: zh(bsz * kvh * d)?,
            v_new: zh(bsz * kvh * d)?,
            win_k: zh(win)?,
            win_v: zh(win)?,
            chunk_sum: z(bsz * kvh * cap_chunks * sv * d)?,
            group_sum: z(bsz * kvh * cap_groups * sv * d)?,
            q: zh(bsz * qh * d)?,
            chunk_score: z(bsz * qh * cap_chunks)?,
            sel_chunk: zi(bsz * units * kce)?,
            n_sel_chunk: zi(bsz * units)?,
            sel_group: zi(bsz * units * kge)?,
            n_sel_group: zi(bsz * units)?,
            uni_group: zi(bsz * kvh * ucap)?,
            uni_slot: zi(bsz * kvh * ucap)?,
            n_uni: zi(bsz * kvh)?,
            fetch_state: zi(8)?,
            out: zh(bsz * qh * d)?,
            _rest: Vec::new(),
        };
        let p = HgaParams {
            pos: ptr(&b.pos, gpu),
            win_k: ptr(&b.win_k, gpu),
            win_v: ptr(&b.win_v, gpu),
            chunk_sum: ptr(&b.chunk_sum, gpu),
            group_sum: ptr(&b.group_sum, gpu),
            q: ptr(&b.q, gpu),
            chunk_score: ptr(&b.chunk_score, gpu),
            chunk_mass: ptr(&chunk_mass, gpu),
            sel_chunk: ptr(&b.sel_chunk, gpu),
            n_sel_chunk: ptr(&b.n_sel_chunk, gpu),
            group_cand: ptr(&group_cand, gpu),
            group_score: ptr(&group_score, gpu),
            group_mass: ptr(&group_mass, gpu),
            sel_group: ptr(&b.sel_group, gpu),
            n_sel_group: ptr(&b.n_sel_group, gpu),
            uni_group: ptr(&b.uni_group, gpu),
            uni_slot: ptr(&b.uni_slot, gpu),
            uni_mask: ptr(&uni_mask, gpu),
            n_uni: ptr(&b.n_uni, gpu),
            slot_of: ptr(&slot_of, gpu),
            slot_owner: ptr(&slot_owner, gpu),
            slot_stamp: ptr(&slot_stamp, gpu),
            fetch_state: ptr(&b.fetch_state, gpu),
            miss_list: ptr(&miss_list, gpu),
            host_kv: 0,
            slots: ptr(&slots, gpu),
            part_ml: ptr(&part_ml, gpu),
            part_acc: ptr(&part_acc, gpu),
            out: ptr(&b.out, gpu),
            batch: bsz as i32,
            cap_chunks: cap_chunks as i32,
            cap_groups: cap_groups as i32,
            n_slots: cap.n_slots as i32,
            step: 0,
            kce: kce as i32,
            kge: kge as i32,
            ucap: ucap as i32,
        };
        let mut b = b;
        b._rest = vec![
            Box::new(chunk_mass),
            Box::new(group_cand),
            Box::new(group_score),
            Box::new(group_mass),
            Box::new(uni_mask),
            Box::new(slot_of),
            Box::new(slot_owner),
            Box::new(slot_stamp),
            Box::new(miss_list),
            Box::new(slots),
            Box::new(part_ml),
            Box::new(part_acc),
        ];
        Ok(DecodeBatch {
            gpu: gpu.clone(),
            kernels,
            lp,
            cap,
            pos_host: vec![0; bsz],
            p,
            b,
            _own_store: None,
            _pinned_store: None,
            capture_cands: None,
        })
    }

    /// The capacity.
    pub fn capacity(&self) -> Capacity {
        self.cap
    }
    /// Chunks per sequence the summary tables hold.
    pub fn cap_chunks(&self) -> usize {
        self.p.cap_chunks as usize
    }
    /// Effective budgets (chunks, groups) and the union capacity per KV head.
    pub fn budgets(&self) -> (usize, usize, usize) {
        (self.p.kce as usize, self.p.kge as usize, self.p.ucap as usize)
    }
    /// Routing units (query heads, or KV heads when shared).
    pub fn units(&self) -> usize {
        self.lp.units as usize
    }

    /// Sets each sequence's position for this step (the new token's index: tokens `0..=pos` exist).
    pub fn set_positions(&mut self, pos: &[u32]) -> Result<(), CudaError> {
        if pos.len() != self.cap.batch {
            return Err(CudaError::Invalid {
                field: "pos",
                value: format!("{} entries", pos.len()),
                rule: format!("must have one entry per sequence ({})", self.cap.batch),
            });
        }
        if let Some(&p) = pos.iter().find(|&&p| p as usize >= self.cap.max_context) {
            return Err(CudaError::Invalid {
                field: "pos",
                value: p.to_string(),
                rule: format!("must be < max_context ({})", self.cap.max_context),
            });
        }
        self.pos_host = pos.iter().map(|&p| p as i32).collect();
        self.gpu.stream().memcpy_htod(&self.pos_host, &mut self.b.pos)?;
        let close = self.closing_chunks();
        self.upload_close(&close)
    }

    /// Per sequence, the chunk its current token closes (`(pos + 1) % chunk == 0`), else -1.
    pub fn closing_chunks(&self) -> Vec<i32> {
        let c = self.kernels.spec().routing().chunk as i32;
        self.pos_host.iter().map(|&p| if (p + 1) % c == 0 { (p + 1) / c - 1 } else { -1 }).collect()
    }

    /// Sets the chunks `hga_summarize` builds (per sequence, -1 for none); [`DecodeBatch::set_positions`]
    /// sets the chunks the new tokens close.
    pub fn upload_close(&mut self, close: &[i32]) -> Result<(), CudaError> {
        upload(&self.gpu, "close", close, &mut self.b.close)
    }

    /// Uploads this step's queries (`[B][q_heads][d]`, element bits, after RoPE).
    pub fn upload_q(&mut self, q: &[u16]) -> Result<(), CudaError> {
        upload(&self.gpu, "q", q, &mut self.b.q)
    }

    /// Uploads the whole GPU window (`[B][kv_heads][window_chunks·chunk][d]` keys and values).
    pub fn upload_window(&mut self, k: &[u16], v: &[u16]) -> Result<(), CudaError> {
        upload(&self.gpu, "win_k", k, &mut self.b.win_k)?;
        upload(&self.gpu, "win_v", v, &mut self.b.win_v)
    }

    /// Uploads summary tables (`[B][kv_heads][cap_chunks][vectors·d]` and the group table alike).
    pub fn upload_summaries(&mut self, chunk: &[f32], group: &[f32]) -> Result<(), CudaError> {
        upload(&self.gpu, "chunk_sum", chunk, &mut self.b.chunk_sum)?;
        upload(&self.gpu, "group_sum", group, &mut self.b.group_sum)
    }

    /// Points the fetch at a host store: `[B][kv_heads][cap_groups][2][group][d]` elements, readable by
    /// the device at `device_ptr` (mapped pinned host memory, or device memory).
    ///
    /// # Safety
    /// The memory must stay valid and hold that many elements while this batch launches fetches.
    pub unsafe fn set_host_store(&mut self, device_ptr: u64) {
        self.p.host_kv = device_ptr;
    }

    /// Elements of the host store layout of [`DecodeBatch::set_host_store`].
    pub fn host_store_len(&self) -> usize {
        let r = self.kernels.spec().routing();
        self.cap.batch
            * self.kernels.spec().model().kv_heads as usize
            * self.p.cap_groups as usize
            * 2
            * r.group as usize
            * self.kernels.spec().head_dim()
    }

    /// Uses a device buffer holding `store` (host store layout) as the host store; for tests.
    pub fn use_device_store(&mut self, store: &[u16]) -> Result<(), CudaError> {
        if store.len() != self.host_store_len() {
            return Err(CudaError::Invalid {
                field: "store",
                value: store.len().to_string(),
                rule: format!("must hold {} elements", self.host_store_len()),
            });
        }
        let s = self.gpu.stream().clone_htod(store)?;
        self.p.host_kv = ptr(&s, &self.gpu);
        self._own_store = Some(s);
        Ok(())
    }

    fn launch(&self, k: Kernel, grid: (u32, u32, u32), block: u32, extra: &[u64]) -> Result<(), CudaError> {
        let mut lb = self.gpu.stream().launch_builder(self.kernels.func(k));
        lb.arg(&self.p);
        for e in extra {
            lb.arg(e);
        }
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the params' pointers are this batch's live buffers, sized for the grid.
        unsafe { lb.launch(cfg) }?;
        Ok(())
    }

    fn dims(&self) -> (u32, u32, u32, u32) {
        let m = self.kernels.spec().model();
        (self.cap.batch as u32, m.q_heads, m.kv_heads, m.head_dim)
    }

    /// `hga_append`: writes the new token's keys and values (`[B][kv_heads][d]`) into the window.
    pub fn launch_append(&mut self, k: &[u16], v: &[u16]) -> Result<(), CudaError> {
        self.upload_new_kv(k, v)?;
        self.launch_append_kernel()
    }

    /// Uploads the new token's keys and values (`[B][kv_heads][d]`) for [`DecodeBatch::launch_append_kernel`].
    pub fn upload_new_kv(&mut self, k: &[u16], v: &[u16]) -> Result<(), CudaError> {
        upload(&self.gpu, "k", k, &mut self.b.k_new)?;
        upload(&self.gpu, "v", v, &mut self.b.v_new)
    }

    /// `hga_append` with the keys and values of the last [`DecodeBatch::launch_append`].
    pub fn launch_append_kernel(&mut self) -> Result<(), CudaError> {
        let (b, _, kvh, d) = self.dims();
        let (kp, vp) = (ptr(&self.b.k_new, &self.gpu), ptr(&self.b.v_new, &self.gpu));
        self.launch(Kernel::Append, (kvh, b, 1), d, &[kp, vp])
    }

    /// `hga_summarize` for `close[b]` (chunk index, or -1 for none), which must be in the window.
    pub fn launch_summarize(&mut self, close: &[i32]) -> Result<(), CudaError> {
        self.upload_close(close)?;
        self.launch_summarize_kernel()
    }

    /// `hga_summarize` with the chunks of the last [`DecodeBatch::launch_summarize`].
    pub fn launch_summarize_kernel(&mut self) -> Result<(), CudaError> {
        let (b, _, kvh, d) = self.dims();
        let cp = ptr(&self.b.close, &self.gpu);
        let spans = 1 + self.kernels.spec().groups_per_chunk() as u32;
        self.launch(Kernel::Summarize, (spans, kvh, b), d, &[cp])
    }

    /// Summarizes the chunks that the current positions just closed (`(pos + 1) % chunk == 0`).
    pub fn launch_summarize_closed(&mut self) -> Result<bool, CudaError> {
        let c = self.kernels.spec().routing().chunk as i32;
        let close: Vec<i32> =
            self.pos_host.iter().map(|&p| if (p + 1) % c == 0 { (p + 1) / c - 1 } else { -1 }).collect();
        if close.iter().all(|&x| x < 0) {
            return Ok(false);
        }
        self.launch_summarize(&close)?;
        Ok(true)
    }

    /// Routing: `hga_chunk_score`, `hga_chunk_select`, `hga_group_select`.
    pub fn launch_route(&mut self) -> Result<(), CudaError> {
        self.launch_chunk_score()?;
        self.launch_chunk_select()?;
        self.launch_group_select()
    }

    /// Candidate chunks of the sequence with the most (the `hga_chunk_score` grid).
    pub fn max_candidates(&self) -> u32 {
        let r = self.kernels.spec().routing();
        self.pos_host
            .iter()
            .map(|&p| {
                let closed = (p as u32 + 1) / r.chunk;
                let sinks_end = r.keep_first.min(closed);
                closed.saturating_sub(r.keep_last).max(sinks_end) - sinks_end
            })
            .max()
            .unwrap_or(0)
    }

    /// `hga_chunk_score` alone.
    pub fn launch_chunk_score(&mut self) -> Result<(), CudaError> {
        let (b, _, kvh, _) = self.dims();
        let cands = self.capture_cands.unwrap_or_else(|| self.max_candidates());
        let grid = (cands.div_ceil(self.lp.chunk_tile).max(1), kvh, b);
        self.launch(Kernel::ChunkScore, grid, self.lp.threads, &[])
    }

    /// `hga_chunk_select` alone.
    pub fn launch_chunk_select(&mut self) -> Result<(), CudaError> {
        let b = self.cap.batch as u32;
        self.launch(Kernel::ChunkSelect, (self.lp.units, b, 1), self.lp.select_threads, &[])
    }

    /// `hga_group_select` alone.
    pub fn launch_group_select(&mut self) -> Result<(), CudaError> {
        let b = self.cap.batch as u32;
        self.launch(Kernel::GroupSelect, (self.lp.units, b, 1), self.lp.select_threads, &[])
    }

    /// Fetch: `hga_fetch_resolve`, `hga_fetch_assign`, `hga_fetch_gather`. Needs a host store.
    pub fn launch_fetch(&mut self) -> Result<(), CudaError> {
        self.launch_fetch_resolve()?;
        self.launch_fetch_assign()?;
        self.launch_fetch_gather()
    }

    /// `hga_fetch_resolve` alone; starts a new step id (slot stamps).
    pub fn launch_fetch_resolve(&mut self) -> Result<(), CudaError> {
        if self.p.host_kv == 0 {
            return Err(CudaError::Invalid {
                field: "host_store",
                value: "unset".into(),
                rule: "set_host_store or use_device_store first".into(),
            });
        }
        let (b, _, kvh, _) = self.dims();
        self.launch(Kernel::FetchResolve, (kvh, b, 1), self.lp.threads, &[])
    }

    /// `hga_fetch_assign` alone.
    pub fn launch_fetch_assign(&mut self) -> Result<(), CudaError> {
        self.launch(Kernel::FetchAssign, (1, 1, 1), self.lp.threads, &[])
    }

    /// `hga_fetch_gather` alone.
    pub fn launch_fetch_gather(&mut self) -> Result<(), CudaError> {
        let kvh = self.kernels.spec().model().kv_heads as usize;
        let max_miss = (self.cap.batch * kvh * self.p.ucap as usize).clamp(1, 2048) as u32;
        self.launch(Kernel::FetchGather, (max_miss, 1, 1), self.lp.threads, &[])
    }

    /// Attention: `hga_attend` (split-K) and `hga_merge`.
    pub fn launch_attend(&mut self) -> Result<(), CudaError> {
        self.launch_attend_splits()?;
        self.launch_merge()
    }

    /// `hga_attend` alone.
    pub fn launch_attend_splits(&mut self) -> Result<(), CudaError> {
        let (b, _, kvh, _) = self.dims();
        self.launch(Kernel::Attend, (self.lp.split_k, kvh * self.lp.head_tiles, b), self.lp.threads, &[])
    }

    /// `hga_merge` alone.
    pub fn launch_merge(&mut self) -> Result<(), CudaError> {
        let (b, qh, _, d) = self.dims();
        self.launch(Kernel::Merge, (qh, b, 1), d, &[])
    }

    /// One whole decode step after [`DecodeBatch::set_positions`] and [`DecodeBatch::upload_q`]:
    /// append the new token's K/V, summarize closed chunks, route, fetch, attend.
    pub fn step(&mut self, k: &[u16], v: &[u16]) -> Result<(), CudaError> {
        self.launch_append(k, v)?;
        self.launch_summarize_closed()?;
        self.launch_route()?;
        self.launch_fetch()?;
        self.launch_attend()
    }

    /// Captures one whole step as a CUDA graph. Its chunk-score grid covers `candidate_capacity`
    /// candidate chunks per sequence (blocks past a sequence's candidates exit at once), so one graph
    /// serves until some sequence has more ([`DecodeBatch::launch_graph`] checks).
    pub fn capture_step(&mut self, candidate_capacity: u32) -> Result<StepGraph, CudaError> {
        if self.p.host_kv == 0 {
            return Err(CudaError::Invalid {
                field: "host_store",
                value: "unset".into(),
                rule: "set_host_store or use_device_store first".into(),
            });
        }
        let stream = self.gpu.stream().clone();
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        self.capture_cands = Some(candidate_capacity);
        let launched = (|| {
            self.launch_append_kernel()?;
            self.launch_summarize_kernel()?;
            self.launch_route()?;
            self.launch_fetch()?;
            self.launch_attend()
        })();
        self.capture_cands = None;
        let graph = stream.end_capture(CUgraphInstantiate_flags(0));
        launched?;
        let graph = graph?.ok_or_else(|| CudaError::Driver("stream capture produced no graph".into()))?;
        Ok(StepGraph { graph, candidate_capacity })
    }

    /// Replays a captured step for the current positions, queries and new K/V (see
    /// [`DecodeBatch::capture_step`]; the graph must have been captured by this batch).
    pub fn launch_graph(&self, g: &StepGraph) -> Result<(), CudaError> {
        let need = self.max_candidates();
        if need > g.candidate_capacity {
            return Err(CudaError::Invalid {
                field: "candidate_capacity",
                value: g.candidate_capacity.to_string(),
                rule: format!("the step has {need} candidate chunks: capture a new graph"),
            });
        }
        Ok(g.graph.launch()?)
    }

    /// Copies `store` (host store layout) into mapped pinned host memory owned by this batch and
    /// fetches from it (as the production store does).
    pub fn use_pinned_host_store(&mut self, store: &[u16]) -> Result<(), CudaError> {
        if store.len() != self.host_store_len() {
            return Err(CudaError::Invalid {
                field: "store",
                value: store.len().to_string(),
                rule: format!("must hold {} elements", self.host_store_len()),
            });
        }
        // SAFETY: filled right below, before any kernel reads it.
        let mut pinned =
            unsafe { self.gpu.context().alloc_pinned_with_flags::<u16>(store.len(), CU_MEMHOSTALLOC_DEVICEMAP)? };
        pinned.as_mut_slice()?.copy_from_slice(store);
        // Unified addressing: the host pointer of mapped pinned memory is valid on the device.
        self.p.host_kv = pinned.as_ptr()? as u64;
        self._pinned_store = Some(pinned);
        Ok(())
    }

    /// Fills the output with NaN bits (0xFFFF), so that tests can check that a step wrote every element.
    pub fn poison_output(&mut self) -> Result<(), CudaError> {
        let n = self.b.out.len();
        self.gpu.stream().memcpy_htod(&vec![0xFFFFu16; n], &mut self.b.out)?;
        Ok(())
    }

    /// The output (`[B][q_heads][d]` element bits); synchronizes.
    pub fn output(&self) -> Result<Vec<u16>, CudaError> {
        Ok(self.gpu.stream().clone_dtoh(&self.b.out)?)
    }

    /// Selected chunks per routing unit, best first (synchronizes): `[B][units]` lists.
    pub fn selected_chunks(&self) -> Result<Vec<Vec<usize>>, CudaError> {
        self.lists(&self.b.sel_chunk, &self.b.n_sel_chunk, self.p.kce as usize)
    }

    /// Opened groups per routing unit, best first (synchronizes): `[B][units]` lists.
    pub fn selected_groups(&self) -> Result<Vec<Vec<usize>>, CudaError> {
        self.lists(&self.b.sel_group, &self.b.n_sel_group, self.p.kge as usize)
    }

    /// The union of opened groups per (sequence, KV head) with their slots (synchronizes).
    pub fn union(&self) -> Result<Vec<Vec<(usize, i32)>>, CudaError> {
        let st = self.gpu.stream();
        let (g, s, n) =
            (st.clone_dtoh(&self.b.uni_group)?, st.clone_dtoh(&self.b.uni_slot)?, st.clone_dtoh(&self.b.n_uni)?);
        let u = self.p.ucap as usize;
        Ok(n.iter()
            .enumerate()
            .map(|(i, &c)| (0..c as usize).map(|j| (g[i * u + j] as usize, s[i * u + j])).collect())
            .collect())
    }

    /// Misses fetched by the last step; fails if the slot cache ran out (synchronizes).
    pub fn last_misses(&self) -> Result<usize, CudaError> {
        let f = self.gpu.stream().clone_dtoh(&self.b.fetch_state)?;
        if f[3] != 0 {
            return Err(CudaError::SlotsExhausted { n_slots: self.cap.n_slots });
        }
        Ok(f[1] as usize)
    }

    /// Raw chunk scores `[B][q_heads][cap_chunks]` (candidate index order; synchronizes).
    pub fn chunk_scores(&self) -> Result<Vec<f32>, CudaError> {
        Ok(self.gpu.stream().clone_dtoh(&self.b.chunk_score)?)
    }

    /// Summary tables (chunk, group) as the GPU holds them (synchronizes).
    pub fn summaries(&self) -> Result<(Vec<f32>, Vec<f32>), CudaError> {
        let st = self.gpu.stream();
        Ok((st.clone_dtoh(&self.b.chunk_sum)?, st.clone_dtoh(&self.b.group_sum)?))
    }

    fn lists(&self, sel: &CudaSlice<i32>, n: &CudaSlice<i32>, k: usize) -> Result<Vec<Vec<usize>>, CudaError> {
        let st = self.gpu.stream();
        let (s, n) = (st.clone_dtoh(sel)?, st.clone_dtoh(n)?);
        Ok(n.iter()
            .enumerate()
            .map(|(i, &c)| s[i * k..i * k + c as usize].iter().map(|&x| x as usize).collect())
            .collect())
    }
}

fn upload<T: DeviceRepr + ValidAsZeroBits>(
    gpu: &Gpu,
    field: &'static str,
    src: &[T],
    dst: &mut CudaSlice<T>,
) -> Result<(), CudaError> {
    if src.len() != dst.len() {
        return Err(CudaError::Invalid {
            field,
            value: format!("{} elements", src.len()),
            rule: format!("must have {} elements", dst.len()),
        });
    }
    gpu.stream().memcpy_htod(src, dst)?;
    Ok(())
}
