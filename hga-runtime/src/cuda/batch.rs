//! Device state of a batch of sequences for one layer, and the launches of one decode step.
//!
//! Memory: the summary tables (`chunk_sum`, `group_sum`) and the per-group tables (`slot_of`,
//! `group_addr`) are [`GrowableBuffer`]s: their whole `[B][KVH][cap][..]` address range is reserved at
//! creation and pages are mapped as rows grow, inside the batch's own methods ([`DecodeBatch::set_rows`],
//! [`DecodeBatch::append_block_device`], [`DecodeBatch::set_group_addrs`], [`DecodeBatch::upload_summaries`],
//! ...), so a row of `n` tokens holds the pages of its first `ceil(n / chunk)` chunks only. Pages stay
//! mapped when a row is reset for a new sequence ([`DecodeBatch::reset_row`]: they are reused). The
//! per-step scratch lives in a [`StepScratch`] that the batches of all layers may share.

use super::kernels::{HgaParams, Kernel};
use super::layout::Layout;
use super::scratch::StepScratch;
use super::state_bytes::StateBytes;
use super::vmm::GrowableBuffer;
use super::{CudaError, DecodeKernels, Gpu};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode, CU_MEMHOSTALLOC_DEVICEMAP};
use cudarc::driver::{
    CudaEvent, CudaGraph, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig, PinnedHostSlice, PushKernelArg,
    ValidAsZeroBits,
};
use hga_dsl::codegen::LaunchParams;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

mod io;
mod prefetch;

pub use prefetch::{LanePriority, PrefetchLane, Widening};

/// How much a [`DecodeBatch`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Sequences per launch.
    pub batch: usize,
    /// Longest context of any sequence, in tokens.
    pub max_context: usize,
    /// Slots of the GPU group cache (each holds one group's K and V of one KV head), split evenly into
    /// one partition per (sequence, KV head); each partition must hold the union one step can open
    /// there, so `n_slots >= batch × kv_heads × (gqa or 1) × top_groups`.
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
    layout: Layout,
    /// chunk_sum, group_sum, slot_of, group_addr ([`Layout::batch_tables`] order).
    tables: [GrowableBuffer; 4],
    /// Chunks each row's tables hold (mapped): the most any of its sequences needed.
    grown: Vec<usize>,
    scratch: Arc<StepScratch>,
    _own_store: Option<CudaSlice<u16>>,
    _pinned_store: Option<PinnedHostSlice<u16>>,
    /// Staging buffers of block appends (keys, values), grown on demand.
    staging: Option<(CudaSlice<u16>, CudaSlice<u16>)>,
    /// While capturing a graph: the candidate capacity the chunk-score grid is sized for.
    capture_cands: Option<u32>,
    /// The last [`DecodeBatch::launch_route`] resolved too (fused into `hga_select`): the next
    /// [`DecodeBatch::launch_fetch`] has nothing to launch.
    route_resolved: bool,
    /// Launch with programmatic dependent launch (sm_90+, opt-in with `HGA_PDL=1`). On the H200 it made
    /// the codegen-2 graph-replayed step slower (58.3 → 68.7 µs at 64K); with codegen 8 the launched B=1
    /// steady step is 1.8 µs faster at 1M but 0.5 µs slower at 64K (cold fetch unchanged), so it stays
    /// off by default.
    pdl: bool,
    /// Recorded on a [`PrefetchLane`]'s stream after a prefetch's routing (`lane_routed`: slot tables
    /// and lists written) and after its gather (`lane_done`: slots filled). While `lane_pending` holds
    /// [`ROUTED`] or [`DONE`], the batch's stream waits for that event before work that needs it.
    lane_routed: CudaEvent,
    lane_done: CudaEvent,
    lane_pending: AtomicU8,
    /// Per row, the position the last prefetch routed at (the token before its coming one; -1: the
    /// row sat out): writes of tokens past it need not wait for the prefetch.
    prefetch_pos: Vec<i32>,
    /// Per row, the tokens the batch was told it holds (appended, or before a step's position): a
    /// prefetch may route only over those.
    held: Vec<usize>,
    /// A step was resolved (slots given to its misses) and not attended yet: a prefetch now could
    /// evict those slots before the attention fills them.
    awaiting_attend: bool,
}

/// A whole decode step captured as a CUDA graph: append, summarize (sequences whose `close` entry is
/// a chunk), route, resolve, attend and merge in one launch. Replays read the batch's buffers, so update
/// positions, queries and the new K/V before each [`DecodeBatch::launch_graph`].
pub struct StepGraph {
    graph: CudaGraph,
    candidate_capacity: u32,
}

/// The batch's own buffers (the growable tables and the shared scratch apart).
struct Buffers {
    pos: CudaSlice<i32>,
    close: CudaSlice<i32>,
    k_new: CudaSlice<u16>,
    v_new: CudaSlice<u16>,
    win_k: CudaSlice<u16>,
    win_v: CudaSlice<u16>,
    q: CudaSlice<u16>,
    /// Guessed queries of a prefetch ([`DecodeBatch::prefetch`]) and the positions it routes at, read
    /// by the lane's routing and gather.
    spec_q: CudaSlice<u16>,
    spec_pos: CudaSlice<i32>,
    sel_group: CudaSlice<i32>,
    n_sel_group: CudaSlice<i32>,
    uni_group: CudaSlice<i32>,
    uni_slot: CudaSlice<i32>,
    n_uni: CudaSlice<i32>,
    n_att: CudaSlice<i32>,
    slot_owner: CudaSlice<i32>,
    slot_stamp: CudaSlice<i32>,
    part_state: CudaSlice<i32>,
    error: CudaSlice<i32>,
    out: CudaSlice<u16>,
    slots: CudaSlice<u16>,
}

/// [`DecodeBatch::lane_pending`] bits: a prefetch's routing, and its gather, not yet waited for; and
/// whether that prefetch is a lookahead (for the layer's next step, queued a whole model step before it).
const ROUTED: u8 = 1;
const DONE: u8 = 2;
const AHEAD: u8 = 4;

/// One launch of a step kernel: stream, params, kernel, grid, block size, and extra arguments.
struct Launch<'a> {
    stream: &'a Arc<CudaStream>,
    p: &'a HgaParams,
    k: Kernel,
    grid: (u32, u32, u32),
    block: u32,
    extra: &'a [Arg],
}

/// An extra kernel argument after the params.
enum Arg {
    Ptr(u64),
    Int(i32),
}

fn ptr<T>(s: &CudaSlice<T>, gpu: &Gpu) -> u64 {
    s.device_ptr(gpu.stream()).0
}

impl<'k> DecodeBatch<'k> {
    /// Allocates the state of `cap.batch` empty sequences, with a step scratch of its own. Rows are
    /// inactive until [`DecodeBatch::set_rows`] gives them a position.
    pub fn new(gpu: &Gpu, kernels: &'k DecodeKernels, cap: Capacity) -> Result<DecodeBatch<'k>, CudaError> {
        let layout = Layout::of(kernels.spec(), &kernels.generated().launch, cap);
        layout.check(cap)?;
        let scratch = Arc::new(StepScratch::with_layout(gpu, kernels, layout)?);
        Self::build(gpu, kernels, cap, layout, scratch)
    }

    /// Like [`DecodeBatch::new`], with a step scratch shared with other batches (one per layer of a
    /// model: make it with [`StepScratch::new`] for the same spec and capacity). Batches that share a
    /// scratch must run on the same stream, one step at a time (the engine runs layers one after
    /// another); the read-backs of the scratch ([`DecodeBatch::chunk_scores`],
    /// [`DecodeBatch::selected_chunks`]) show the last step run on it. A scratch of another stream, or
    /// sized for another spec, batch or `max_context` (in chunks), is a typed error.
    pub fn with_scratch(
        gpu: &Gpu,
        kernels: &'k DecodeKernels,
        cap: Capacity,
        scratch: Arc<StepScratch>,
    ) -> Result<DecodeBatch<'k>, CudaError> {
        let layout = Layout::of(kernels.spec(), &kernels.generated().launch, cap);
        layout.check(cap)?;
        scratch.check_compatible(gpu, &layout)?;
        Self::build(gpu, kernels, cap, layout, scratch)
    }

    fn build(
        gpu: &Gpu,
        kernels: &'k DecodeKernels,
        cap: Capacity,
        l: Layout,
        scratch: Arc<StepScratch>,
    ) -> Result<DecodeBatch<'k>, CudaError> {
        let lp = kernels.generated().launch.clone();
        let (bsz, qh, kvh, d) = (l.bsz, l.qh, l.kvh, l.d);
        let st = gpu.stream();
        let zi = |n: usize| -> Result<CudaSlice<i32>, CudaError> { Ok(st.alloc_zeros::<i32>(n.max(1))?) };
        let zh = |n: usize| -> Result<CudaSlice<u16>, CudaError> { Ok(st.alloc_zeros::<u16>(n.max(1))?) };
        let win = bsz * kvh * l.window_chunks * l.chunk * d;
        let ucap = l.ucap;
        let [cs, gs, so, ga] = l.batch_tables();
        // Summaries read as 0 and groups as uncached (-1) and without a record (0) until written.
        let tables = [
            GrowableBuffer::new(gpu, cs.bytes(), 0)?,
            GrowableBuffer::new(gpu, gs.bytes(), 0)?,
            GrowableBuffer::new(gpu, so.bytes(), 0xFF)?,
            GrowableBuffer::new(gpu, ga.bytes(), 0)?,
        ];
        let b = Buffers {
            pos: st.clone_htod(&vec![-1i32; bsz])?,
            close: st.clone_htod(&vec![-1i32; bsz])?,
            k_new: zh(bsz * kvh * d)?,
            v_new: zh(bsz * kvh * d)?,
            win_k: zh(win)?,
            win_v: zh(win)?,
            q: zh(bsz * qh * d)?,
            spec_q: zh(bsz * qh * d)?,
            spec_pos: st.clone_htod(&vec![-1i32; bsz])?,
            sel_group: zi(bsz * l.units * l.kge)?,
            n_sel_group: zi(bsz * l.units)?,
            uni_group: zi(bsz * kvh * ucap)?,
            uni_slot: zi(bsz * kvh * ucap)?,
            n_uni: zi(bsz * kvh)?,
            n_att: zi(bsz * kvh)?,
            slot_owner: st.clone_htod(&vec![-1i32; (bsz * kvh * l.part_slots).max(1)])?,
            slot_stamp: st.clone_htod(&vec![-1i32; (bsz * kvh * l.part_slots).max(1)])?,
            part_state: zi(bsz * kvh * 4)?,
            error: zi(1)?,
            out: zh(bsz * qh * d)?,
            slots: zh(bsz * kvh * l.part_slots * 2 * l.group * d)?,
        };
        let mut p = HgaParams {
            pos: ptr(&b.pos, gpu),
            win_k: ptr(&b.win_k, gpu),
            win_v: ptr(&b.win_v, gpu),
            chunk_sum: tables[0].ptr(),
            group_sum: tables[1].ptr(),
            q: ptr(&b.q, gpu),
            sel_group: ptr(&b.sel_group, gpu),
            n_sel_group: ptr(&b.n_sel_group, gpu),
            uni_group: ptr(&b.uni_group, gpu),
            uni_slot: ptr(&b.uni_slot, gpu),
            n_uni: ptr(&b.n_uni, gpu),
            n_att: ptr(&b.n_att, gpu),
            slot_of: tables[2].ptr(),
            slot_owner: ptr(&b.slot_owner, gpu),
            slot_stamp: ptr(&b.slot_stamp, gpu),
            part_state: ptr(&b.part_state, gpu),
            group_addr: tables[3].ptr(),
            slots: ptr(&b.slots, gpu),
            error: ptr(&b.error, gpu),
            out: ptr(&b.out, gpu),
            batch: bsz as i32,
            cap_chunks: l.cap_chunks as i32,
            cap_groups: l.cap_groups as i32,
            part_slots: l.part_slots as i32,
            kce: l.kce as i32,
            kge: l.kge as i32,
            ucap: ucap as i32,
            ..HgaParams::default()
        };
        scratch.apply(&mut p);
        Ok(DecodeBatch {
            gpu: gpu.clone(),
            kernels,
            lp,
            cap,
            pos_host: vec![-1; bsz],
            p,
            b,
            layout: l,
            tables,
            grown: vec![0; bsz],
            scratch,
            _own_store: None,
            _pinned_store: None,
            staging: None,
            capture_cands: None,
            route_resolved: false,
            pdl: gpu.arch().cc() >= 90 && std::env::var("HGA_PDL").as_deref() == Ok("1"),
            lane_routed: gpu.context().new_event(None)?,
            lane_done: gpu.context().new_event(None)?,
            lane_pending: AtomicU8::new(0),
            prefetch_pos: vec![-1; bsz],
            held: vec![0; bsz],
            awaiting_attend: false,
        })
    }

    /// Makes the batch's stream wait for a prefetch still running on a lane ([`DecodeBatch::prefetch`]),
    /// if any. The attention, every read-back, row resets and rewrites of tokens or record addresses
    /// the prefetch routed over call this first (the resolve waits for its routing only; the step's
    /// inputs, append, summarize, chunk score and select not at all), so the step never races the
    /// prefetch; an engine calls it to place the wait itself (work it queues on the stream afterwards
    /// waits too).
    pub fn join_prefetch(&self) -> Result<(), CudaError> {
        // The gather follows the routing on the lane: its event covers both.
        let pending = self.lane_pending.swap(0, Ordering::AcqRel);
        if pending & DONE != 0 {
            if let Err(e) = self.gpu.stream().wait(&self.lane_done) {
                // Both bits stay pending: the routing was not waited for either.
                self.lane_pending.fetch_or(pending, Ordering::AcqRel);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Whether a prefetch's gather has not been waited for yet: the next attention would wait for it.
    /// A graph replay waits for the whole prefetch before its routing, launched stages only before
    /// the attention, so an engine launches the stages while a speculative prefetch is in flight
    /// ([`DecodeBatch::speculation_in_flight`]). A prefetch already done (a lookahead that ran while
    /// the rest of the model did) is joined here, at no cost, and is not in flight.
    pub fn prefetch_in_flight(&self) -> bool {
        self.join_finished_prefetch();
        self.lane_pending.load(Ordering::Acquire) & DONE != 0
    }

    /// Whether a speculative prefetch ([`DecodeBatch::prefetch`], [`DecodeBatch::prefetch_device`]) is
    /// in flight: then launched stages route beside it, where a graph replay would wait for all of it.
    /// A lookahead in flight does not count. It was queued right after this layer's last step, so by
    /// the time the GPU reaches the next step it has run beside every other layer and is done: waiting
    /// for it costs the GPU nothing, and a replay saves the host a launch per stage. An engine that
    /// queues work ahead of the GPU cannot see that from the host, since the lookahead's event is
    /// still pending when it queues the step.
    pub fn speculation_in_flight(&self) -> bool {
        self.prefetch_in_flight() && self.lane_pending.load(Ordering::Acquire) & AHEAD == 0
    }

    /// Joins, at no cost, whatever part of a pending prefetch has already finished on its lane: all
    /// of it when its gather is done, else its routing when that is. Waits for completed events wait
    /// for nothing, so a failed one only leaves its part pending (joined later by the work that needs
    /// it, which reports the error).
    fn join_finished_prefetch(&self) {
        let pending = self.lane_pending.load(Ordering::Acquire);
        if pending & DONE != 0 && self.lane_done.try_is_complete().unwrap_or(false) {
            let _ = self.join_prefetch();
        } else if pending & ROUTED != 0 && self.lane_routed.try_is_complete().unwrap_or(false) {
            let _ = self.join_prefetch_route();
        }
    }

    /// Makes the batch's stream wait for a prefetch's routing (not its gather): enough for work that
    /// reads or writes the slot cache's tables (the resolve) or maps new table pages (`grow`), but
    /// neither the slots' contents nor the lists the gather reads (the lane's own).
    fn join_prefetch_route(&self) -> Result<(), CudaError> {
        if self.lane_pending.fetch_and(!ROUTED, Ordering::AcqRel) & ROUTED != 0 {
            if let Err(e) = self.gpu.stream().wait(&self.lane_routed) {
                self.lane_pending.fetch_or(ROUTED, Ordering::AcqRel);
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// The batch's stream without waiting for a prefetch: for work that neither reads what a
    /// prefetch writes (the slot cache, the lane's lists) nor writes what it reads (its guesses and
    /// positions, the summaries of the chunks closed before its position, the host records of
    /// routed groups): the step's inputs, its append and summarize (the open group and the closing
    /// chunk are newer than anything the prefetch routes), and its chunk score and select into the
    /// batch's own scratch and lists.
    fn free_stream(&self) -> &Arc<CudaStream> {
        self.gpu.stream()
    }

    /// The batch's stream, after a prefetch's routing ([`DecodeBatch::join_prefetch_route`]).
    fn route_stream(&self) -> Result<&Arc<CudaStream>, CudaError> {
        self.join_prefetch_route()?;
        Ok(self.gpu.stream())
    }

    /// The batch's stream, after any prefetch in flight ([`DecodeBatch::join_prefetch`]).
    fn stream(&self) -> Result<&Arc<CudaStream>, CudaError> {
        self.join_prefetch()?;
        Ok(self.gpu.stream())
    }

    /// Maps the table pages (and the scratch's chunk-score pages) rows `need` = (row, chunks) use
    /// beyond what they hold, all or nothing: on an error (out of memory: the message names
    /// `CUDA_ERROR_OUT_OF_MEMORY`) nothing is mapped and the batch is as it was. New pages are filled
    /// on the stream before any later work.
    fn grow(&mut self, need: &[(usize, usize)]) -> Result<(), CudaError> {
        let need: Vec<(usize, usize)> =
            need.iter().map(|&(r, c)| (r, c.min(self.layout.cap_chunks))).filter(|&(r, c)| c > self.grown[r]).collect();
        if need.is_empty() {
            return Ok(());
        }
        // New pages only (a prefetch never reads them), but the scratch's bookkeeping is shared.
        self.join_prefetch_route()?;
        let (rows, specs) = (self.cap.batch, self.layout.batch_tables());
        let mut mapped = Ok(());
        'map: for &(row, chunks) in &need {
            for (buf, t) in self.tables.iter_mut().zip(&specs) {
                for r in t.row_ranges(rows, row, chunks) {
                    mapped = buf.map(r).map(|_| ());
                    if mapped.is_err() {
                        break 'map;
                    }
                }
            }
        }
        let mut scratch = self.scratch.growable();
        if mapped.is_ok() {
            mapped = scratch.map(&need);
        }
        if let Err(e) = mapped {
            for buf in &mut self.tables {
                buf.rollback();
            }
            return Err(e);
        }
        for buf in &mut self.tables {
            buf.commit()?;
        }
        scratch.commit(&need)?;
        for &(row, chunks) in &need {
            self.grown[row] = chunks;
        }
        Ok(())
    }

    /// Maps every row's tables for `max_context` now (what an eager allocation holds), so that no step
    /// maps pages later; all or nothing.
    pub fn commit_all(&mut self) -> Result<(), CudaError> {
        let need: Vec<(usize, usize)> = (0..self.cap.batch).map(|r| (r, self.layout.cap_chunks)).collect();
        self.grow(&need)
    }

    /// Chunks whose table pages row `row` holds (the most any sequence of the row needed).
    pub fn grown_chunks(&self, row: usize) -> usize {
        self.grown.get(row).copied().unwrap_or(0)
    }

    /// Whether the tables are growable (CUDA virtual memory management); false on devices without it
    /// (or with `HGA_NO_VMM=1`), where they are allocated whole.
    pub fn uses_vmm(&self) -> bool {
        !self.tables[0].is_plain()
    }

    /// The device's page size of the growable tables.
    pub fn page_bytes(&self) -> u64 {
        self.tables[0].page_bytes()
    }

    /// The GPU bytes this batch holds now, by kind, from its buffers and page bookkeeping; `layers`:
    /// the batches sharing its scratch (1 for its own). With VMM it equals
    /// `StateBytes::at_rows(spec, cap, &[grown rows' tokens], layers, page_bytes())` when the scratch
    /// grew with this batch alone.
    pub fn state_bytes(&self, layers: usize) -> StateBytes {
        let l = &self.layout;
        let scratch_shared = self.scratch.committed_bytes();
        let layers = layers.max(1) as u64;
        let full = vec![l.cap_chunks; l.bsz];
        // Without VMM the scratch tables are allocated whole (page_bytes is then another table's size).
        let table_full = |t: &super::layout::Table| {
            if self.uses_vmm() {
                t.committed(&full, self.page_bytes())
            } else {
                t.bytes()
            }
        };
        let scratch_full: u64 = l.scratch_tables().iter().map(table_full).sum::<u64>() + l.scratch_plain_bytes();
        StateBytes {
            summaries: self.tables[0].committed_bytes() + self.tables[1].committed_bytes(),
            window: l.window_bytes(),
            slots: l.slot_bytes(),
            tables: self.tables[2].committed_bytes() + self.tables[3].committed_bytes(),
            step: l.step_bytes(),
            scratch: scratch_shared.div_ceil(layers),
            scratch_shared,
            reserved: self.tables.iter().map(|t| t.reserved_bytes()).sum::<u64>()
                + l.window_bytes()
                + l.slot_bytes()
                + l.step_bytes()
                + scratch_full.div_ceil(layers),
        }
    }

    /// The step scratch this batch uses (shared or its own).
    pub fn scratch(&self) -> &Arc<StepScratch> {
        &self.scratch
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
    /// Slots of each (sequence, KV head)'s partition of the slot cache.
    pub fn partition_slots(&self) -> usize {
        self.p.part_slots as usize
    }

    /// Sets each sequence's position for this step (the new token's index: tokens `0..=pos` exist).
    pub fn set_positions(&mut self, pos: &[u32]) -> Result<(), CudaError> {
        let rows: Vec<Option<u32>> = pos.iter().map(|&p| Some(p)).collect();
        self.set_rows(&rows)
    }

    /// Sets each row's position for this step; `None` rows sit the step out (every kernel leaves their
    /// state and output untouched), so one batch serves whichever of its sequences decode now.
    pub fn set_rows(&mut self, pos: &[Option<u32>]) -> Result<(), CudaError> {
        if pos.len() != self.cap.batch {
            return Err(CudaError::Invalid {
                field: "pos",
                value: format!("{} entries", pos.len()),
                rule: format!("must have one entry per sequence ({})", self.cap.batch),
            });
        }
        if let Some(p) = pos.iter().flatten().find(|&&p| p as usize >= self.cap.max_context) {
            return Err(CudaError::Invalid {
                field: "pos",
                value: p.to_string(),
                rule: format!("must be < max_context ({})", self.cap.max_context),
            });
        }
        // Tokens 0..=pos exist: the tables must hold the chunk of pos.
        let need: Vec<(usize, usize)> = pos
            .iter()
            .enumerate()
            .filter_map(|(r, p)| p.map(|p| (r, self.layout.chunks_for(p as usize + 1))))
            .collect();
        self.grow(&need)?;
        let pos_host: Vec<i32> = pos.iter().map(|p| p.map_or(-1, |p| p as i32)).collect();
        let st = self.free_stream().clone();
        st.memcpy_htod(&pos_host, &mut self.b.pos)?;
        // A step at position p reads tokens 0..p: the row holds them.
        for (h, &p) in self.held.iter_mut().zip(&pos_host) {
            *h = (*h).max(p.max(0) as usize);
        }
        self.pos_host = pos_host;
        let close = self.closing_chunks();
        self.upload_close(&close)
    }

    /// Per row, the chunk its current token closes (`(pos + 1) % chunk == 0`), else -1.
    pub fn closing_chunks(&self) -> Vec<i32> {
        let c = self.kernels.spec().routing().chunk as i32;
        self.pos_host.iter().map(|&p| if p >= 0 && (p + 1) % c == 0 { (p + 1) / c - 1 } else { -1 }).collect()
    }

    /// Sets the chunks `hga_summarize` builds (per sequence, -1 for none); [`DecodeBatch::set_positions`]
    /// sets the chunks the new tokens close. Each chunk must be one its row's tables hold (a position
    /// in it was set, or a block appended).
    pub fn upload_close(&mut self, close: &[i32]) -> Result<(), CudaError> {
        if let Some((row, &c)) = close.iter().enumerate().find(|&(r, &c)| c >= 0 && c as usize >= self.grown_chunks(r))
        {
            return Err(CudaError::Invalid {
                field: "close",
                value: format!("chunk {c} of row {row}"),
                rule: format!("must be -1 or a chunk the row's tables hold (< {})", self.grown_chunks(row)),
            });
        }
        let st = self.free_stream().clone();
        upload(&st, "close", close, &mut self.b.close)
    }

    /// Uploads this step's queries (`[B][q_heads][d]`, element bits, after RoPE).
    pub fn upload_q(&mut self, q: &[u16]) -> Result<(), CudaError> {
        // The step's input, like upload_q_rows: a prefetch reads its own guesses, not these.
        let st = self.free_stream().clone();
        upload(&st, "q", q, &mut self.b.q)
    }

    /// Uploads the whole GPU window (`[B][kv_heads][window_chunks·chunk][d]` keys and values).
    pub fn upload_window(&mut self, k: &[u16], v: &[u16]) -> Result<(), CudaError> {
        let st = self.stream()?.clone();
        upload(&st, "win_k", k, &mut self.b.win_k)?;
        upload(&st, "win_v", v, &mut self.b.win_v)
    }

    /// Uploads summary tables (`[B][kv_heads][cap_chunks][vectors·d]` and the group table alike), as
    /// f32 values; the GPU keeps them in bf16 (rounded to nearest even, as the CPU backend stores them).
    /// Maps every row's tables for `max_context`.
    pub fn upload_summaries(&mut self, chunk: &[f32], group: &[f32]) -> Result<(), CudaError> {
        for (field, x, t) in [("chunk_sum", chunk, 0), ("group_sum", group, 1)] {
            let n = (self.tables[t].bytes() / 2) as usize;
            if x.len() != n {
                return Err(CudaError::Invalid {
                    field,
                    value: format!("{} elements", x.len()),
                    rule: format!("must have {n} elements"),
                });
            }
        }
        // Every summary changes, and a prefetch's routing reads them.
        self.join_prefetch()?;
        self.commit_all()?;
        let bits = |x: &[f32]| -> Vec<u16> { x.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect() };
        self.tables[0].write(0, &bits(chunk))?;
        self.tables[1].write(0, &bits(group))
    }

    /// Points every group's host record at a flat host store: `[B][kv_heads][cap_groups][2][group][d]`
    /// elements, readable (and, for appends, writable) by the device at `device_ptr` (mapped pinned
    /// host memory, or device memory).
    ///
    /// # Safety
    /// The memory must stay valid and hold that many elements while this batch launches steps.
    ///
    /// Maps every row's tables for `max_context` (a flat store is for tests and benchmarks; engines set
    /// addresses per group as rows grow: [`DecodeBatch::set_group_addrs`]).
    pub unsafe fn set_host_store(&mut self, device_ptr: u64) -> Result<(), CudaError> {
        // Every record address changes, and a prefetch's gather reads them.
        self.join_prefetch()?;
        self.commit_all()?;
        let rec = self.record_bytes();
        let n = self.tables[3].bytes() / 8;
        let addrs: Vec<u64> = (0..n).map(|i| device_ptr + i * rec).collect();
        self.tables[3].write(0, &addrs)
    }

    /// Sets the host records of groups `first_group..` of (row, KV head): device addresses of
    /// `2 × group × d` elements each (keys then values; 0 = no record: a routed group without one is
    /// read as absent and counted by [`DecodeBatch::host_record_errors`]). Maps the row's tables up to
    /// the chunk of the last group.
    ///
    /// # Safety
    /// Each record must stay valid while this batch launches steps that may route or append to it.
    pub unsafe fn set_group_addrs(
        &mut self,
        row: usize,
        kv_head: usize,
        first_group: usize,
        addrs: &[u64],
    ) -> Result<(), CudaError> {
        let kvh = self.kernels.spec().model().kv_heads as usize;
        let cap_groups = self.p.cap_groups as usize;
        if row >= self.cap.batch || kv_head >= kvh || first_group + addrs.len() > cap_groups {
            return Err(CudaError::Invalid {
                field: "group_addrs",
                value: format!("row {row}, kv head {kv_head}, groups {first_group}..{}", first_group + addrs.len()),
                rule: format!("must be within {} rows, {kvh} KV heads, {cap_groups} groups", self.cap.batch),
            });
        }
        if addrs.is_empty() {
            return Ok(());
        }
        self.grow(&[(row, (first_group + addrs.len()).div_ceil(self.layout.gpc))])?;
        self.join_prefetch_before(row, first_group * self.kernels.spec().routing().group as usize)?;
        let at = (row * kvh + kv_head) * cap_groups + first_group;
        self.tables[3].write(at as u64 * 8, addrs)
    }

    /// Bytes of one group's host record (keys then values).
    pub fn record_bytes(&self) -> u64 {
        (2 * 2 * self.kernels.spec().routing().group as usize * self.kernels.spec().head_dim()) as u64
    }

    /// Elements of the flat host store layout of [`DecodeBatch::set_host_store`].
    pub fn host_store_len(&self) -> usize {
        (self.tables[3].bytes() / 8) as usize * self.record_bytes() as usize / 2
    }

    /// Uses a device buffer holding `store` (host store layout) as the host store; for tests.
    pub fn use_device_store(&mut self, store: &[u16]) -> Result<(), CudaError> {
        self.check_store_len(store)?;
        let s = self.stream()?.clone_htod(store)?;
        // SAFETY: the buffer is owned by this batch.
        unsafe { self.set_host_store(ptr(&s, &self.gpu))? };
        self._own_store = Some(s);
        Ok(())
    }

    fn check_store_len(&self, store: &[u16]) -> Result<(), CudaError> {
        if store.len() != self.host_store_len() {
            return Err(CudaError::Invalid {
                field: "store",
                value: store.len().to_string(),
                rule: format!("must hold {} elements", self.host_store_len()),
            });
        }
        Ok(())
    }

    /// Forgets what row `row` held (for a new sequence in it): its slot-cache index and partition,
    /// its host record addresses. Its window and summaries are rewritten as the new sequence appends.
    /// The row's table pages stay mapped (reused by the new sequence; [`DecodeBatch::grown_chunks`]).
    pub fn reset_row(&mut self, row: usize) -> Result<(), CudaError> {
        if row >= self.cap.batch {
            return Err(CudaError::Invalid {
                field: "row",
                value: row.to_string(),
                rule: format!("must be < batch ({})", self.cap.batch),
            });
        }
        self.join_prefetch()?;
        // group_addr back to 0 where mapped (unmapped pages are filled when mapped).
        let span = self.layout.batch_tables()[3].row_span(self.cap.batch, row);
        self.tables[3].refill(span)?;
        self.forget_slots(row)?;
        self.held[row] = 0;
        Ok(())
    }

    /// Empties row `row`'s slot cache: slot_of back to -1, its partition's owners, stamps and counters
    /// reset (after the batch's queued work; a pending prefetch must have been joined or synchronized).
    fn forget_slots(&mut self, row: usize) -> Result<(), CudaError> {
        let kvh = self.kernels.spec().model().kv_heads as usize;
        let ps = self.p.part_slots as usize;
        let st = self.gpu.stream().clone();
        let fill = |buf: &mut CudaSlice<i32>, at: usize, n: usize, v: i32| -> Result<(), CudaError> {
            st.memcpy_htod(&vec![v; n], &mut buf.slice_mut(at..at + n))?;
            Ok(())
        };
        let span = self.layout.batch_tables()[2].row_span(self.cap.batch, row);
        self.tables[2].refill(span)?;
        fill(&mut self.b.slot_owner, row * kvh * ps, kvh * ps, -1)?;
        fill(&mut self.b.slot_stamp, row * kvh * ps, kvh * ps, -1)?;
        fill(&mut self.b.part_state, row * kvh * 4, kvh * 4, 0)?;
        Ok(())
    }

    fn launch(&self, k: Kernel, grid: (u32, u32, u32), block: u32, extra: &[Arg]) -> Result<(), CudaError> {
        // Only the attention reads and fills slots that a prefetch's gather may still be writing, and
        // only the resolve touches the slot cache that the prefetch's routing updates.
        let st = match k {
            Kernel::Attend => self.stream()?,
            Kernel::Resolve => self.route_stream()?,
            // Block appends joined what they must first (`join_prefetch_before`).
            Kernel::Append
            | Kernel::Summarize
            | Kernel::ChunkScore
            | Kernel::Select
            | Kernel::Ingest
            | Kernel::IngestSummarize => self.free_stream(),
        };
        self.launch_on(Launch { stream: st, p: &self.p, k, grid, block, extra })
    }

    /// A launch of `l.k` with params `l.p` on `l.stream` (the batch's, or a prefetch lane's).
    fn launch_on(&self, l: Launch) -> Result<(), CudaError> {
        if self.pdl {
            return self.launch_pdl(&l);
        }
        let Launch { stream, p, k, grid, block, extra } = l;
        let mut lb = stream.launch_builder(self.kernels.func(k));
        lb.arg(p);
        for e in extra {
            match e {
                Arg::Ptr(x) => lb.arg(x),
                Arg::Int(x) => lb.arg(x),
            };
        }
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the params' pointers are this batch's live buffers, sized for the grid.
        unsafe { lb.launch(cfg) }?;
        Ok(())
    }

    /// A launch with programmatic stream serialization (sm_90+): the kernel may be scheduled while the
    /// previous one runs; its `griddepcontrol.wait` (STEP_PROLOGUE in the source) orders its work after
    /// the previous kernel's. cudarc has no launch attributes, so this goes to `cuLaunchKernelEx`.
    fn launch_pdl(&self, l: &Launch) -> Result<(), CudaError> {
        use cudarc::driver::sys;
        let &Launch { stream, p, k, grid, block, extra } = l;
        let mut params: Vec<*mut std::ffi::c_void> = Vec::with_capacity(1 + extra.len());
        params.push(p as *const HgaParams as *mut std::ffi::c_void);
        for e in extra {
            params.push(match e {
                Arg::Ptr(x) => x as *const u64 as *mut std::ffi::c_void,
                Arg::Int(x) => x as *const i32 as *mut std::ffi::c_void,
            });
        }
        // SAFETY: an all-zero attribute is a valid (ignored) value; its fields are set right below.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let cfg = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: 0,
            hStream: stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        self.gpu.context().bind_to_thread()?;
        // SAFETY: `params` points at this call's argument values, in the kernel's parameter order, and
        // the params' pointers are this batch's live buffers, sized for the grid.
        let r = unsafe {
            sys::cuLaunchKernelEx(&cfg, self.kernels.func(k).cu_function(), params.as_mut_ptr(), std::ptr::null_mut())
        };
        r.result()?;
        Ok(())
    }

    fn dims(&self) -> (u32, u32, u32, u32) {
        let m = self.kernels.spec().model();
        (self.cap.batch as u32, m.q_heads, m.kv_heads, m.head_dim)
    }

    /// `hga_append`: writes the new token's keys and values (`[B][kv_heads][d]`) into the window and
    /// into its group's host record.
    pub fn launch_append(&mut self, k: &[u16], v: &[u16]) -> Result<(), CudaError> {
        self.upload_new_kv(k, v)?;
        self.launch_append_kernel()
    }

    /// Uploads the new token's keys and values (`[B][kv_heads][d]`) for [`DecodeBatch::launch_append_kernel`].
    pub fn upload_new_kv(&mut self, k: &[u16], v: &[u16]) -> Result<(), CudaError> {
        let st = self.free_stream().clone();
        upload(&st, "k", k, &mut self.b.k_new)?;
        upload(&st, "v", v, &mut self.b.v_new)
    }

    /// `hga_append` with the keys and values of the last [`DecodeBatch::launch_append`].
    pub fn launch_append_kernel(&mut self) -> Result<(), CudaError> {
        let (b, _, kvh, d) = self.dims();
        let (kp, vp) = (ptr(&self.b.k_new, &self.gpu), ptr(&self.b.v_new, &self.gpu));
        self.launch(Kernel::Append, (kvh, b, 1), d, &[Arg::Ptr(kp), Arg::Ptr(vp)])?;
        for (h, &p) in self.held.iter_mut().zip(&self.pos_host) {
            *h = (*h).max((p + 1).max(0) as usize);
        }
        Ok(())
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
        self.launch(Kernel::Summarize, (spans, kvh, b), d, &[Arg::Ptr(cp)])
    }

    /// Summarizes the chunks that the current positions just closed (`(pos + 1) % chunk == 0`).
    pub fn launch_summarize_closed(&mut self) -> Result<bool, CudaError> {
        let close = self.closing_chunks();
        if close.iter().all(|&x| x < 0) {
            return Ok(false);
        }
        self.launch_summarize(&close)?;
        Ok(true)
    }

    /// Appends `n` tokens at positions `p0..p0 + n` to row `row` in two launches, whatever `n`: the
    /// summaries of every chunk the block closes, then the window rows that stay and the host records
    /// (their addresses must be set first: [`DecodeBatch::set_group_addrs`]). `k`, `v`:
    /// `[n][kv_heads][d]` element bits. Tokens before `p0` must have been appended (the open chunk's
    /// are read from the window).
    pub fn append_block(&mut self, row: usize, p0: usize, k: &[u16], v: &[u16]) -> Result<(), CudaError> {
        let row_len = (self.kernels.spec().model().kv_heads as usize) * self.kernels.spec().head_dim();
        if k.len() != v.len() || k.len() % row_len != 0 || k.is_empty() {
            return Err(CudaError::Invalid {
                field: "k/v",
                value: format!("{} and {} elements", k.len(), v.len()),
                rule: format!("must be equal, non-zero multiples of kv_heads × head_dim ({row_len})"),
            });
        }
        let n = k.len() / row_len;
        self.join_prefetch_before(row, p0)?;
        let st = self.free_stream().clone();
        if self.staging.as_ref().is_none_or(|(sk, _)| sk.len() < k.len()) {
            self.staging = Some((st.alloc_zeros::<u16>(k.len())?, st.alloc_zeros::<u16>(k.len())?));
        }
        let (sk, sv) = self.staging.as_mut().expect("allocated above");
        st.memcpy_htod(k, &mut sk.slice_mut(..k.len()))?;
        st.memcpy_htod(v, &mut sv.slice_mut(..v.len()))?;
        let (kp, vp) = (ptr(sk, &self.gpu), ptr(sv, &self.gpu));
        // SAFETY: the staging buffers hold n tokens and live in this batch.
        unsafe { self.append_block_device(row, p0, n, kp, vp) }
    }

    /// [`DecodeBatch::append_block`] from device buffers (`[n][kv_heads][d]` element bits at `k`, `v`).
    ///
    /// # Safety
    /// `k` and `v` must be device-readable and hold `n` tokens until the stream has run the launches.
    pub unsafe fn append_block_device(
        &mut self,
        row: usize,
        p0: usize,
        n: usize,
        k: u64,
        v: u64,
    ) -> Result<(), CudaError> {
        let c = self.kernels.spec().routing().chunk as usize;
        if row >= self.cap.batch || n == 0 || p0 + n > self.cap.max_context {
            return Err(CudaError::Invalid {
                field: "append_block",
                value: format!("row {row}, positions {p0}..{}", p0 + n),
                rule: format!(
                    "row < {}, 1 or more tokens, ending at most at max_context ({})",
                    self.cap.batch, self.cap.max_context
                ),
            });
        }
        self.grow(&[(row, self.layout.chunks_for(p0 + n))])?;
        self.join_prefetch_before(row, p0)?;
        let (_, _, kvh, d) = self.dims();
        // Chunks whose last token (c·(i+1) − 1) is in the block: p0 / c ..< (p0 + n) / c.
        let (first, end) = (p0 / c, (p0 + n) / c);
        if end > first {
            let spans = 1 + self.kernels.spec().groups_per_chunk() as u32;
            let grid = (spans, kvh, (end - first) as u32);
            let args = [Arg::Int(row as i32), Arg::Int(first as i32), Arg::Ptr(k), Arg::Int(p0 as i32)];
            self.launch(Kernel::IngestSummarize, grid, d, &args)?;
        }
        let nt = self.lp.threads as usize;
        let blocks = (n * kvh as usize * d as usize / 8).div_ceil(nt) as u32;
        let args = [Arg::Int(row as i32), Arg::Int(p0 as i32), Arg::Int(n as i32), Arg::Ptr(k), Arg::Ptr(v)];
        self.launch(Kernel::Ingest, (blocks, 1, 1), nt as u32, &args)?;
        self.held[row] = self.held[row].max(p0 + n);
        Ok(())
    }

    /// Makes the batch's stream wait for a pending prefetch if it routed row `row` over token
    /// `first_token` or later ones: work that rewrites the row's tokens, summaries or record addresses
    /// from there on must not race its routing or its gather. Writes past its position need no wait.
    fn join_prefetch_before(&self, row: usize, first_token: usize) -> Result<(), CudaError> {
        let routed_to = self.prefetch_pos.get(row).copied().unwrap_or(-1);
        if self.lane_pending.load(Ordering::Acquire) != 0 && (first_token as i64) <= routed_to as i64 {
            self.join_prefetch()?;
        }
        Ok(())
    }

    /// Routing: `hga_chunk_score`, then `hga_select` with the fetch bookkeeping fused in (the last unit
    /// of each (row, KV head) to finish resolves it: union, slot lookup, slots for the misses), so the
    /// step is one launch shorter; the [`DecodeBatch::launch_fetch`] that follows launches nothing.
    /// Budgets whose lists exceed what the resolve stages in shared memory
    /// ([`hga_dsl::codegen::RESOLVE_STAGED_LISTS`]) keep `hga_resolve` apart, in `launch_fetch`, and so
    /// does a step while a prefetch's routing is pending (only the resolve waits for it).
    pub fn launch_route(&mut self) -> Result<(), CudaError> {
        self.launch_chunk_score()?;
        // With a prefetch's routing pending, the resolve runs apart (after it), so that the chunk
        // score and select run beside it; a routing already done leaves it fused.
        self.join_finished_prefetch();
        let fuse = self.resolve_fuses() && self.lane_pending.load(Ordering::Acquire) & ROUTED == 0;
        self.launch_select_kernel(fuse)?;
        self.route_resolved = fuse;
        self.awaiting_attend |= fuse;
        Ok(())
    }

    /// Whether a KV head's opened-group lists (its routing units × the group budget) fit the resolve's
    /// shared-memory staging, so it can run inside `hga_select`.
    pub fn resolve_fuses(&self) -> bool {
        self.layout.resolve_fuses()
    }

    /// Candidate chunks of the row with the most (the `hga_chunk_score` grid).
    pub fn max_candidates(&self) -> u32 {
        self.candidates_at(&self.pos_host)
    }

    /// Candidate chunks of the row with the most at positions `pos` (-1: the row sits out).
    fn candidates_at(&self, pos: &[i32]) -> u32 {
        let r = self.kernels.spec().routing();
        pos.iter()
            .filter(|&&p| p >= 0)
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
        let cands = self.capture_cands.unwrap_or_else(|| self.max_candidates());
        self.chunk_score_on(self.free_stream(), &self.p, cands)
    }

    /// `hga_select` alone: top chunks, their groups scored, top groups (no resolve: see
    /// [`DecodeBatch::launch_resolve`]).
    pub fn launch_select(&mut self) -> Result<(), CudaError> {
        self.route_resolved = false;
        self.launch_select_kernel(false)
    }

    fn launch_select_kernel(&mut self, fuse_resolve: bool) -> Result<(), CudaError> {
        let st = if fuse_resolve { self.route_stream()? } else { self.free_stream() };
        self.select_on(st, &self.p, fuse_resolve)
    }

    /// Fetch bookkeeping: `hga_resolve` (union, slot-cache lookup, slots for the misses), unless the
    /// last [`DecodeBatch::launch_route`] already did it (it does: resolve is fused into its select).
    /// The misses' bytes move inside `hga_attend`, which reads them from host memory.
    pub fn launch_fetch(&mut self) -> Result<(), CudaError> {
        if std::mem::take(&mut self.route_resolved) {
            return Ok(());
        }
        self.launch_resolve()
    }

    /// `hga_resolve` alone; starts a new step id (slot stamps).
    pub fn launch_resolve(&mut self) -> Result<(), CudaError> {
        self.route_resolved = false;
        self.resolve_on(self.route_stream()?, &self.p)?;
        self.awaiting_attend = true;
        Ok(())
    }

    /// Attention: `hga_attend` (split-K; misses read from host memory and cached; the last split merges).
    pub fn launch_attend(&mut self) -> Result<(), CudaError> {
        self.attend_on(self.stream()?, &self.p)?;
        self.awaiting_attend = false;
        Ok(())
    }

    /// `hga_chunk_score` on `st` with params `p`, its grid sized for `cands` candidate chunks.
    fn chunk_score_on(&self, st: &Arc<CudaStream>, p: &HgaParams, cands: u32) -> Result<(), CudaError> {
        let (b, _, kvh, _) = self.dims();
        let grid = (cands.div_ceil(self.lp.chunk_tile).max(1), kvh, b);
        self.launch_on(Launch { stream: st, p, k: Kernel::ChunkScore, grid, block: self.lp.score_threads, extra: &[] })
    }

    /// `hga_select` on `st` with params `p` (the resolve fused in when `fuse_resolve`).
    fn select_on(&self, st: &Arc<CudaStream>, p: &HgaParams, fuse_resolve: bool) -> Result<(), CudaError> {
        let b = self.cap.batch as u32;
        let args = [Arg::Int(i32::from(fuse_resolve))];
        let grid = (self.lp.units, b, 1);
        self.launch_on(Launch { stream: st, p, k: Kernel::Select, grid, block: self.lp.select_threads, extra: &args })
    }

    /// `hga_resolve` on `st` with params `p`.
    fn resolve_on(&self, st: &Arc<CudaStream>, p: &HgaParams) -> Result<(), CudaError> {
        let (b, _, kvh, _) = self.dims();
        let grid = (kvh, b, 1);
        self.launch_on(Launch { stream: st, p, k: Kernel::Resolve, grid, block: self.lp.resolve_threads, extra: &[] })
    }

    /// `hga_attend` on `st` with params `p`.
    fn attend_on(&self, st: &Arc<CudaStream>, p: &HgaParams) -> Result<(), CudaError> {
        let (b, _, kvh, _) = self.dims();
        let grid = (self.lp.split_k, kvh * self.lp.head_tiles, b);
        self.launch_on(Launch { stream: st, p, k: Kernel::Attend, grid, block: self.lp.threads, extra: &[] })
    }

    /// Route → fetch → attend: [`DecodeBatch::launch_route`], [`DecodeBatch::launch_fetch`] and
    /// [`DecodeBatch::launch_attend`], with nothing in between (the part of a step that tuned kernel
    /// parameters change).
    pub fn launch_decode(&mut self) -> Result<(), CudaError> {
        self.launch_route()?;
        self.launch_fetch()?;
        self.launch_attend()
    }

    /// One whole decode step after [`DecodeBatch::set_positions`] and [`DecodeBatch::upload_q`]:
    /// append the new token's K/V, summarize closed chunks, route, resolve, attend.
    pub fn step(&mut self, k: &[u16], v: &[u16]) -> Result<(), CudaError> {
        self.launch_append(k, v)?;
        self.launch_summarize_closed()?;
        self.launch_decode()
    }

    /// Captures one whole step as a CUDA graph. Its chunk-score grid covers `candidate_capacity`
    /// candidate chunks per sequence (blocks past a sequence's candidates exit at once), so one graph
    /// serves until some sequence has more ([`DecodeBatch::launch_graph`] checks).
    pub fn capture_step(&mut self, candidate_capacity: u32) -> Result<StepGraph, CudaError> {
        // A prefetch's event cannot be waited for inside a capture.
        let stream = self.stream()?.clone();
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        self.capture_cands = Some(candidate_capacity);
        let launched = (|| {
            self.launch_append_kernel()?;
            self.launch_summarize_kernel()?;
            self.launch_decode()
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
        self.join_prefetch()?;
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
        self.check_store_len(store)?;
        // SAFETY: filled right below, before any kernel reads it.
        let mut pinned =
            unsafe { self.gpu.context().alloc_pinned_with_flags::<u16>(store.len(), CU_MEMHOSTALLOC_DEVICEMAP)? };
        pinned.as_mut_slice()?.copy_from_slice(store);
        // Unified addressing: the host pointer of mapped pinned memory is valid on the device.
        // SAFETY: the pinned buffer is owned by this batch.
        unsafe { self.set_host_store(pinned.as_ptr()? as u64)? };
        if self._pinned_store.is_some() {
            // Queued work (a prefetch's gather among it) may still read the old store.
            self.gpu.stream().synchronize()?;
        }
        self._pinned_store = Some(pinned);
        Ok(())
    }

    /// The contents of the pinned host store of [`DecodeBatch::use_pinned_host_store`] (synchronizes
    /// first: the append kernels write it).
    pub fn pinned_store(&self) -> Result<Option<Vec<u16>>, CudaError> {
        self.stream()?.synchronize()?;
        match &self._pinned_store {
            Some(p) => Ok(Some(p.as_slice()?.to_vec())),
            None => Ok(None),
        }
    }

    /// Device address of the pinned host store of [`DecodeBatch::use_pinned_host_store`].
    pub fn pinned_store_addr(&self) -> Result<Option<u64>, CudaError> {
        match &self._pinned_store {
            Some(p) => Ok(Some(p.as_ptr()? as u64)),
            None => Ok(None),
        }
    }

    /// Fills the output with NaN bits (0xFFFF), so that tests can check that a step wrote every element.
    pub fn poison_output(&mut self) -> Result<(), CudaError> {
        let n = self.b.out.len();
        let st = self.stream()?.clone();
        st.memcpy_htod(&vec![0xFFFFu16; n], &mut self.b.out)?;
        Ok(())
    }

    /// The output (`[B][q_heads][d]` element bits); synchronizes.
    pub fn output(&self) -> Result<Vec<u16>, CudaError> {
        Ok(self.stream()?.clone_dtoh(&self.b.out)?)
    }

    /// Selected chunks per routing unit, ascending (synchronizes): `[B][units]` lists. They live in the
    /// step scratch: with a shared scratch, those of the last step run on it.
    pub fn selected_chunks(&self) -> Result<Vec<Vec<usize>>, CudaError> {
        let (s, n) = self.scratch.selected_chunk_lists()?;
        Ok(to_lists(&s, &n, self.p.kce as usize))
    }

    /// Opened groups per routing unit, ascending (synchronizes): `[B][units]` lists.
    pub fn selected_groups(&self) -> Result<Vec<Vec<usize>>, CudaError> {
        self.lists(&self.b.sel_group, &self.b.n_sel_group, self.p.kge as usize)
    }

    /// The union of opened groups per (row, KV head) with their slots in the row's partition (-1: a
    /// miss read from host memory without a free slot), as of the last step (synchronizes).
    pub fn union(&self) -> Result<Vec<Vec<(usize, i32)>>, CudaError> {
        let st = self.stream()?;
        let (g, s, n) =
            (st.clone_dtoh(&self.b.uni_group)?, st.clone_dtoh(&self.b.uni_slot)?, st.clone_dtoh(&self.b.n_uni)?);
        let u = self.p.ucap as usize;
        let slot = |x: i32| {
            if x >= 0 {
                x
            } else if x == i32::MIN {
                -1
            } else {
                -x - 1
            }
        };
        Ok(n.iter()
            .enumerate()
            .map(|(i, &c)| (0..c as usize).map(|j| (g[i * u + j] as usize, slot(s[i * u + j]))).collect())
            .collect())
    }

    /// Per (row, KV head): (misses of the last step, those of them read from host without a free
    /// slot) (synchronizes).
    pub fn miss_counts(&self) -> Result<Vec<(usize, usize)>, CudaError> {
        let f = self.stream()?.clone_dtoh(&self.b.part_state)?;
        Ok(f.chunks_exact(4).map(|s| (s[2] as usize, s[3] as usize)).collect())
    }

    /// Misses of the last step over the rows that took part (synchronizes).
    pub fn last_misses(&self) -> Result<usize, CudaError> {
        let kvh = self.kernels.spec().model().kv_heads as usize;
        let counts = self.miss_counts()?;
        Ok(counts
            .chunks(kvh)
            .zip(&self.pos_host)
            .filter(|(_, &p)| p >= 0)
            .map(|(c, _)| c.iter().map(|x| x.0).sum::<usize>())
            .sum())
    }

    /// Tokens attended per (row, KV head) by the last step (synchronizes).
    pub fn attended_tokens(&self) -> Result<Vec<usize>, CudaError> {
        Ok(self.stream()?.clone_dtoh(&self.b.n_att)?.into_iter().map(|x| x as usize).collect())
    }

    /// Routed groups found without a host record since the batch was made (should stay 0).
    pub fn host_record_errors(&self) -> Result<usize, CudaError> {
        Ok(self.stream()?.clone_dtoh(&self.b.error)?[0] as usize)
    }

    /// Raw chunk scores `[B][q_heads][cap_chunks]` (candidate index order; synchronizes; 0 where no
    /// page is mapped). They live in the step scratch: with a shared scratch, those of the last step
    /// run on it.
    pub fn chunk_scores(&self) -> Result<Vec<f32>, CudaError> {
        self.scratch.chunk_scores()
    }

    /// Summary tables (chunk, group) as the GPU holds them, widened to f32 (synchronizes; 0 where no
    /// page is mapped).
    pub fn summaries(&self) -> Result<(Vec<f32>, Vec<f32>), CudaError> {
        self.join_prefetch()?;
        let wide = |x: Vec<u16>| -> Vec<f32> { x.into_iter().map(|b| half::bf16::from_bits(b).to_f32()).collect() };
        Ok((wide(self.tables[0].read::<u16>()?), wide(self.tables[1].read::<u16>()?)))
    }

    /// The window as the GPU holds it (keys, values; synchronizes).
    pub fn window(&self) -> Result<(Vec<u16>, Vec<u16>), CudaError> {
        let st = self.stream()?;
        Ok((st.clone_dtoh(&self.b.win_k)?, st.clone_dtoh(&self.b.win_v)?))
    }

    fn lists(&self, sel: &CudaSlice<i32>, n: &CudaSlice<i32>, k: usize) -> Result<Vec<Vec<usize>>, CudaError> {
        let st = self.stream()?;
        let (s, n) = (st.clone_dtoh(sel)?, st.clone_dtoh(n)?);
        Ok(to_lists(&s, &n, k))
    }
}

impl Drop for DecodeBatch<'_> {
    fn drop(&mut self) {
        // A prefetch may still read and write the buffers: the frees below are ordered on the batch's
        // stream, so that stream waits for the lane first (and the growable tables synchronize it).
        if self.join_prefetch().is_err() {
            let _ = self.gpu.context().synchronize();
        }
    }
}

/// Lists of `n[i]` entries at `s[i·k..]`.
fn to_lists(s: &[i32], n: &[i32], k: usize) -> Vec<Vec<usize>> {
    n.iter().enumerate().map(|(i, &c)| s[i * k..i * k + c as usize].iter().map(|&x| x as usize).collect()).collect()
}

fn upload<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
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
    stream.memcpy_htod(src, dst)?;
    Ok(())
}
