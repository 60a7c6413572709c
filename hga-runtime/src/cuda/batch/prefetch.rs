//! Speculative prefetch: a guess of a layer's coming query routes on a second stream while the model
//! runs other work (the previous layer's MLP), so that the groups it opens are in the layer's slot
//! cache before the layer's real step needs them.
//!
//! `hga-engine eval --speculate mid` (BENCHMARKS.md) projects layer l + 1's query from layer l's
//! residual stream after its attention; on tiny-code it opens 83% of the groups the real query opens.
//! [`DecodeBatch::prefetch`] runs the step's own kernels with such a query on a [`PrefetchLane`]:
//! - route as of the token before the coming one (the chunks closed before the coming token is
//!   appended: that token is not in the K/V yet);
//! - resolve: the union's misses get slots under the same CLOCK policy (the prefetch is a step of the
//!   layer's slot cache);
//! - gather (`hga_gather_misses`): copies the misses from their host records into their slots, a
//!   warp per group at a time and few warps in all (the reads are bound by PCIe), without attending
//!   them (a real step fills its slots inside the attention).
//!
//! The lane has its own step scratch and lists (opened groups, union; the guessed queries and their
//! positions are copied into the batch's own buffers on its stream, after whatever produced them), on a stream of the highest
//! priority, so it runs beside another layer's work on the batch's stream. It shares the slot cache
//! with its batch, so the batch waits in two places: its resolve (which updates the slot cache) for
//! the prefetch's routing, and its attention, which reads and fills slots, and every read-back for the
//! gather too. The step's inputs, append, summarize, chunk score and select run beside the prefetch,
//! and its resolve then runs apart from its select (not fused) so that only the resolve waits. A CUDA
//! graph replay of the step would wait for the whole prefetch (the engine launches the stages instead
//! while a prefetch is in flight). Block appends and record addresses past the prefetch's position run
//! beside it too; rewrites of tokens it routed over, row resets and table uploads wait for all of it.
//! A prefetch is refused between a step's resolve and its attention (it could evict the slots that
//! attention is about to fill) and at positions past the tokens a row holds.
//!
//! The real step routes with its own query, so a guess changes which groups hit, never the output
//! (`tests/gpu_prefetch.rs` checks that bit for bit).

use super::{ptr, upload, DecodeBatch, AHEAD, DONE, ROUTED};
use crate::cuda::gather::{GATHER_THREADS, GATHER_WARPS};
use crate::cuda::kernels::HgaParams;
use crate::cuda::layout::Layout;
use crate::cuda::{Capacity, CudaError, DecodeKernels, Gpu, StepScratch};
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The priority of a [`PrefetchLane`]'s stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LanePriority {
    /// The context's highest: as blocks of the work beside the prefetch (the previous layer's MLP)
    /// retire, the SMs take the prefetch's first, so that its routing does not wait for that work to
    /// end (the layer's step waits for the routing).
    #[default]
    Highest,
    /// The same as the batch's stream.
    Default,
}

/// How much wider than the step a [`PrefetchLane`]'s prefetches route: extra chunks and extra groups
/// per routing unit (query head, or KV head when shared).
///
/// A lookahead ([`DecodeBatch::lookahead`]) needs it: the step's own queries routed as wide as the
/// step open nothing the step did not, while the runners-up of a step are the groups the next step of
/// the same layer opens anew when queries change slowly (hga-bench's do; on tiny-code's real routing
/// the previous token's wide route foresaw only 11–32% of a token's new groups: BENCHMARKS.md). With `extra_groups >= extra_chunks × groups per chunk` the
/// wider route opens every group the step's own route opens at the same position and query, with
/// routing per query head (each of those ranks at most `extra_chunks × groups per chunk` places lower
/// among the wider candidates; shared routing's softmax masses over the candidates give no such
/// guarantee).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Widening {
    /// Chunks per routing unit beyond the spec's `top_chunks`.
    pub extra_chunks: usize,
    /// Groups per routing unit beyond the spec's `top_groups` (at most twice the largest power of two
    /// in `top_groups`, in all).
    pub extra_groups: usize,
}

/// A second stream with the buffers of speculative prefetches ([`DecodeBatch::prefetch`]) for the
/// batches of one spec and capacity: every layer of a model can share one (prefetches run one after
/// another on its stream).
pub struct PrefetchLane {
    gpu: Gpu,
    /// The lane's route's layout: its batches' widened by `widening`.
    layout: Layout,
    widening: Widening,
    /// Chunk scores and the other per-step scratch, committed for `max_context` (the lane does not
    /// follow its batches' growth).
    scratch: StepScratch,
    /// The last prefetch's union lists (its resolve writes them here, not into the batch's) and a
    /// copy of the batch's slot-cache counters as that resolve left them: what the gather reads (the
    /// step may rewrite the batch's own meanwhile) and the lane's telemetry.
    uni_group: CudaSlice<i32>,
    uni_slot: CudaSlice<i32>,
    n_uni: CudaSlice<i32>,
    part_state: CudaSlice<i32>,
    /// The last prefetch's opened groups per routing unit (its select writes them here, not into the
    /// batch's, so that the step's own select may run beside the prefetch's routing).
    sel_group: CudaSlice<i32>,
    n_sel_group: CudaSlice<i32>,
    /// Positions the last prefetch routed at (-1: the row sat out).
    last_pos: Vec<i32>,
    /// Recorded on a batch's stream at each prefetch: the lane waits for the batch's earlier work.
    ready: CudaEvent,
    /// With [`PrefetchLane::time_stages`]: timing events recorded on the lane at each prefetch's
    /// start (after its wait for the batch), after its routing, and after its gather.
    stages: Option<[CudaEvent; 3]>,
}

impl std::fmt::Debug for PrefetchLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefetchLane").field("scratch", &self.scratch).finish()
    }
}

impl PrefetchLane {
    /// A lane on a new stream of the highest priority in `gpu`'s context for batches of `kernels`'
    /// spec with capacity `cap` (`n_slots` may differ between the batches).
    pub fn new(gpu: &Gpu, kernels: &DecodeKernels, cap: Capacity) -> Result<PrefetchLane, CudaError> {
        Self::with_priority(gpu, kernels, cap, LanePriority::Highest)
    }

    /// [`PrefetchLane::new`] with the lane's stream at `priority`.
    pub fn with_priority(
        gpu: &Gpu,
        kernels: &DecodeKernels,
        cap: Capacity,
        priority: LanePriority,
    ) -> Result<PrefetchLane, CudaError> {
        Self::with_options(gpu, kernels, cap, priority, Widening::default())
    }

    /// [`PrefetchLane::with_priority`] whose prefetches route `widening` wider than the step (see
    /// [`Widening`]). Errors: a widened group budget past the kernels' list searches (field
    /// `extra_groups`), a widened union the batches' slot partitions cannot hold (field `n_slots`).
    pub fn with_options(
        gpu: &Gpu,
        kernels: &DecodeKernels,
        cap: Capacity,
        priority: LanePriority,
        widening: Widening,
    ) -> Result<PrefetchLane, CudaError> {
        let base = Layout::of(kernels.spec(), &kernels.generated().launch, cap);
        base.check(cap)?;
        let layout =
            base.widened(widening.extra_chunks, widening.extra_groups, kernels.spec().routing().top_groups as usize)?;
        layout.check(cap)?;
        let lane = match priority {
            LanePriority::Highest => gpu.with_priority_stream()?,
            LanePriority::Default => gpu.with_new_stream()?,
        };
        let scratch = StepScratch::with_layout(&lane, kernels, layout)?;
        scratch.commit_all()?;
        let st = lane.stream();
        let heads = layout.bsz * layout.kvh;
        Ok(PrefetchLane {
            uni_group: st.alloc_zeros::<i32>((heads * layout.ucap).max(1))?,
            uni_slot: st.alloc_zeros::<i32>((heads * layout.ucap).max(1))?,
            n_uni: st.alloc_zeros::<i32>(heads.max(1))?,
            part_state: st.alloc_zeros::<i32>((heads * 4).max(1))?,
            sel_group: st.alloc_zeros::<i32>((layout.bsz * layout.units * layout.kge).max(1))?,
            n_sel_group: st.alloc_zeros::<i32>((layout.bsz * layout.units).max(1))?,
            last_pos: vec![-1; layout.bsz],
            ready: gpu.context().new_event(None)?,
            stages: None,
            gpu: lane,
            layout,
            widening,
            scratch,
        })
    }

    /// How much wider than the step the lane routes.
    pub fn widening(&self) -> Widening {
        self.widening
    }

    /// A lookahead on a lane of no widening would open nothing the step did not: field `lane`.
    fn require_widening(&self) -> Result<(), CudaError> {
        if self.widening == Widening::default() {
            return Err(CudaError::Invalid {
                field: "lane",
                value: "a lane of no widening".into(),
                rule: "a lookahead needs a lane that routes wider than the step (PrefetchLane::with_options)".into(),
            });
        }
        Ok(())
    }

    /// The lane's stream.
    pub fn stream(&self) -> &Arc<CudaStream> {
        self.gpu.stream()
    }

    /// Device bytes the lane holds (its scratch and buffers).
    pub fn committed_bytes(&self) -> u64 {
        let i32s = self.uni_group.len()
            + self.uni_slot.len()
            + self.n_uni.len()
            + self.part_state.len()
            + self.sel_group.len()
            + self.n_sel_group.len();
        self.scratch.committed_bytes() + 4 * i32s as u64
    }

    /// Groups the last prefetch opened per (row, KV head) (`[B·kv_heads]` lists; empty for rows that
    /// sat out); synchronizes the lane.
    pub fn last_union(&self) -> Result<Vec<Vec<usize>>, CudaError> {
        let st = self.gpu.stream();
        let (g, n) = (st.clone_dtoh(&self.uni_group)?, st.clone_dtoh(&self.n_uni)?);
        let u = self.layout.ucap;
        Ok(n.iter()
            .enumerate()
            .map(|(i, &c)| {
                let active = self.last_pos[i / self.layout.kvh] >= 0;
                let c = if active { c.max(0) as usize } else { 0 };
                g[i * u..i * u + c].iter().map(|&x| x as usize).collect()
            })
            .collect())
    }

    /// Groups the last prefetch read from host memory (its misses), over the rows that took part;
    /// synchronizes the lane.
    pub fn last_misses(&self) -> Result<usize, CudaError> {
        let s = self.gpu.stream().clone_dtoh(&self.part_state)?;
        Ok(s.chunks_exact(4)
            .enumerate()
            .filter(|(i, _)| self.last_pos[i / self.layout.kvh] >= 0)
            .map(|(_, c)| c[2].max(0) as usize)
            .sum())
    }

    /// Waits for the lane's work.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.gpu.sync()
    }

    /// From now on, records timing events at each prefetch's stages (telemetry:
    /// [`PrefetchLane::stage_events`]); off by default, since events between the lane's launches cost
    /// driver calls.
    pub fn time_stages(&mut self) -> Result<(), CudaError> {
        if self.stages.is_none() {
            let ctx = self.gpu.context();
            let mk = || ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT));
            self.stages = Some([mk()?, mk()?, mk()?]);
        }
        Ok(())
    }

    /// With [`PrefetchLane::time_stages`], the last prefetch's events: its start on the lane (after
    /// the wait for its batch's earlier work), its routing done, its gather done. Time them against an
    /// event of the batch's stream with `CudaEvent::elapsed_ms` once they have completed.
    pub fn stage_events(&self) -> Option<&[CudaEvent; 3]> {
        self.stages.as_ref()
    }

    /// Telemetry only: a failed record leaves that event's last time and nothing else.
    fn record_stage(&self, i: usize) {
        if let Some(ev) = &self.stages {
            let _ = ev[i].record(self.gpu.stream());
        }
    }
}

impl DecodeBatch<'_> {
    /// Speculative prefetch for the coming step: routes `q` (`[B][q_heads][d]` bf16 bits after RoPE, a
    /// guess of the step's queries) on `lane`'s stream and reads the groups it opens that miss into the
    /// slot cache, as of `positions` (per row the coming step's position, `None` or 0: the row sits
    /// out; routing sees the chunks closed by the token before it). Returns at once; the lane waits for
    /// the batch's work queued so far, and the batch's resolve waits for the prefetch's routing, its
    /// attention for the gather too (see the module docs). Errors (nothing
    /// queued): a lane of another spec or capacity, a position the row's tables do not reach, a `q` of
    /// the wrong length.
    pub fn prefetch(&mut self, lane: &mut PrefetchLane, positions: &[Option<u32>], q: &[u16]) -> Result<(), CudaError> {
        self.prefetch_with(lane, positions, q.len(), false, |batch, st| upload(st, "q", q, &mut batch.b.spec_q))
    }

    /// [`DecodeBatch::prefetch`] with the guessed queries in device memory: entry `i` of `q`
    /// (`[rows.len()][q_heads][d]` bf16 bits) is row `rows[i].0`'s guess for its coming position
    /// `rows[i].1`; other rows sit out. Copied into the batch on the batch's stream (one copy per run
    /// of consecutive rows), so work queued on that stream later may change `q`.
    ///
    /// # Safety
    /// `q` must be a device address holding `rows.len()` rows, valid and unchanged until the batch's
    /// stream has copied them.
    pub unsafe fn prefetch_device(
        &mut self,
        lane: &mut PrefetchLane,
        rows: &[(usize, u32)],
        q: u64,
    ) -> Result<(), CudaError> {
        // SAFETY: the caller's contract is this function's.
        unsafe { self.prefetch_rows_device(lane, rows, q, false) }
    }

    /// [`DecodeBatch::lookahead`] with the step's queries at a device address of the caller's (an
    /// engine whose step read them in place): rows and coming positions as in
    /// [`DecodeBatch::prefetch_device`], counted as a lookahead by
    /// [`DecodeBatch::speculation_in_flight`].
    ///
    /// # Safety
    /// As [`DecodeBatch::prefetch_device`].
    pub unsafe fn lookahead_device(
        &mut self,
        lane: &mut PrefetchLane,
        rows: &[(usize, u32)],
        q: u64,
    ) -> Result<(), CudaError> {
        lane.require_widening()?;
        // SAFETY: the caller's contract is this function's.
        unsafe { self.prefetch_rows_device(lane, rows, q, true) }
    }

    /// Safety: as [`DecodeBatch::prefetch_device`]; `ahead`: the prefetch is a lookahead.
    unsafe fn prefetch_rows_device(
        &mut self,
        lane: &mut PrefetchLane,
        rows: &[(usize, u32)],
        q: u64,
        ahead: bool,
    ) -> Result<(), CudaError> {
        let ids: Vec<usize> = rows.iter().map(|&(r, _)| r).collect();
        self.check_rows(&ids)?;
        let mut positions = vec![None; self.cap.batch];
        for &(r, p) in rows {
            positions[r] = Some(p);
        }
        let n = self.b.spec_q.len();
        self.prefetch_with(lane, &positions, n, ahead, |batch, st| {
            // SAFETY: the batch's buffer holds every row; the caller vouches for `q`.
            unsafe { batch.copy_row_runs(st, q, ptr(&batch.b.spec_q, &batch.gpu), &ids, true) }
        })
    }

    /// Lookahead for the next step of this layer: a prefetch for each row that took part in the step
    /// just launched, at its next position, whose guess is that step's own queries (as the batch holds
    /// them). On a lane of a [`Widening`] it reads the step's runners-up (the groups just outside its
    /// budgets), which the next step of the layer most likely opens anew, while the rest of the model
    /// runs. Positions and queries are copied on the device (no host data moves). Its resolve updates
    /// the slot cache's counters: read the step's ([`DecodeBatch::last_misses`], the union) before it.
    /// Every row that took part looks ahead, one at the last position of `max_context` too (its
    /// reads are then wasted, never wrong). Errors: a lane
    /// without widening (field `lane`: it would open nothing the step did not), or of another spec
    /// or capacity; a lookahead between a step's resolve and its attention (field `step`).
    pub fn lookahead(&mut self, lane: &mut PrefetchLane) -> Result<(), CudaError> {
        lane.require_widening()?;
        // The coming token of each row is the step's + 1: the lane routes at the step's own position.
        let pos = self.pos_host.clone();
        self.prefetch_at(lane, pos, true, true, |batch, st| {
            // Copies: the next step may set its own queries and positions while the lane still routes.
            st.memcpy_dtod(&batch.b.q, &mut batch.b.spec_q)?;
            Ok(())
        })
    }

    fn prefetch_with(
        &mut self,
        lane: &mut PrefetchLane,
        positions: &[Option<u32>],
        q_len: usize,
        ahead: bool,
        load_q: impl FnOnce(&mut Self, &Arc<CudaStream>) -> Result<(), CudaError>,
    ) -> Result<(), CudaError> {
        if q_len != self.b.spec_q.len() {
            return Err(CudaError::Invalid {
                field: "q",
                value: format!("{q_len} elements"),
                rule: format!("must have {} elements (batch × q_heads × d)", self.b.spec_q.len()),
            });
        }
        let pos = self.prefetch_positions(positions)?;
        self.prefetch_at(lane, pos, false, ahead, load_q)
    }

    /// A prefetch routing at `pos` (-1: the row sits out), copied into the batch's `spec_pos`: on the
    /// device from the step's own positions with `step_pos` (`pos` is then `pos_host`), else from `pos`;
    /// `ahead`: it is a lookahead.
    fn prefetch_at(
        &mut self,
        lane: &mut PrefetchLane,
        pos: Vec<i32>,
        step_pos: bool,
        ahead: bool,
        load_q: impl FnOnce(&mut Self, &Arc<CudaStream>) -> Result<(), CudaError>,
    ) -> Result<(), CudaError> {
        let wide = self.layout.widened(
            lane.widening.extra_chunks,
            lane.widening.extra_groups,
            self.kernels.spec().routing().top_groups as usize,
        )?;
        lane.scratch.check_compatible(&lane.gpu, &wide)?;
        if self.awaiting_attend {
            return Err(CudaError::Invalid {
                field: "step",
                value: "resolved, not attended".into(),
                rule: "a prefetch must not come between a step's resolve and its attention (its resolve could \
                       evict the slots the attention is about to fill): launch the attention first"
                    .into(),
            });
        }
        if pos.iter().all(|&p| p < 0) {
            return Ok(());
        }
        // The guesses and positions go into the batch's own buffers on its stream (after their
        // producer, before whatever reuses their memory), once an earlier prefetch of this batch,
        // which reads them, is done (a step in between has waited for it already).
        self.join_prefetch()?;
        let main = self.stream()?.clone();
        load_q(self, &main)?;
        if step_pos {
            main.memcpy_dtod(&self.b.pos, &mut self.b.spec_pos)?;
        } else {
            main.memcpy_htod(&pos, &mut self.b.spec_pos)?;
        }
        let st = lane.gpu.stream().clone();
        lane.ready.record(&main)?;
        st.wait(&lane.ready)?;
        let queued = self.queue_prefetch(lane, &st, &pos);
        if let Err(e) = queued {
            // Part of it may be queued: let it finish, and forget what the rows' slot caches hold,
            // since its resolve may have given slots to groups its gather never read.
            let _ = lane.gpu.sync();
            for (row, _) in pos.iter().enumerate().filter(|(_, &p)| p >= 0) {
                self.forget_slots(row)?;
            }
            return Err(e);
        }
        self.prefetch_pos.clone_from(&pos);
        lane.last_pos = pos;
        self.lane_pending.store(ROUTED | DONE | if ahead { AHEAD } else { 0 }, Ordering::Release);
        Ok(())
    }

    /// The prefetch's work on the lane's stream `st` at positions `pos`, which `spec_pos` holds (after
    /// its wait for the batch).
    fn queue_prefetch(&self, lane: &mut PrefetchLane, st: &Arc<CudaStream>, pos: &[i32]) -> Result<(), CudaError> {
        lane.record_stage(0);
        // No output: the prefetch runs no attention.
        let q = ptr(&self.b.spec_q, &self.gpu);
        // The select and resolve write their lists into the lane's, which the gather reads, so the
        // step's own chunk score and select (into the batch's) may run beside the prefetch: the batch
        // waits for `lane_routed` before its resolve (the slot cache) and for `lane_done` before its
        // attention (which reads and fills slots).
        let g = &lane.gpu;
        let (uni_group, uni_slot, n_uni) = (ptr(&lane.uni_group, g), ptr(&lane.uni_slot, g), ptr(&lane.n_uni, g));
        let (sel_group, n_sel_group) = (ptr(&lane.sel_group, g), ptr(&lane.n_sel_group, g));
        let l = &lane.layout;
        let mut p = HgaParams {
            pos: ptr(&self.b.spec_pos, &self.gpu),
            q,
            out: 0,
            uni_group,
            uni_slot,
            n_uni,
            sel_group,
            n_sel_group,
            kce: l.kce as i32,
            kge: l.kge as i32,
            ucap: l.ucap as i32,
            ..self.p
        };
        lane.scratch.apply(&mut p);
        self.chunk_score_on(st, &p, self.candidates_at(pos))?;
        let fuse = l.resolve_fuses();
        self.select_on(st, &p, fuse)?;
        if !fuse {
            self.resolve_on(st, &p)?;
        }
        // The slot-cache counters for the lane's telemetry, before the step rewrites them.
        st.memcpy_dtod(&self.b.part_state, &mut lane.part_state)?;
        self.lane_routed.record(st)?;
        lane.record_stage(1);
        self.gather_on(st, lane)?;
        self.lane_done.record(st)?;
        lane.record_stage(2);
        Ok(())
    }

    /// `hga_gather_misses` on `st` for the union the prefetch's resolve left in `lane`'s own lists.
    fn gather_on(&self, st: &Arc<CudaStream>, lane: &PrefetchLane) -> Result<(), CudaError> {
        let (b, _, kvh, d) = self.dims();
        let warps = GATHER_THREADS / 32;
        let p = &self.p;
        // Few blocks, their warps striding over the union: the reads are bound by PCIe, for which
        // GATHER_WARPS warps with eight 16-byte loads per lane in flight are plenty (1 MiB), and
        // blocks waiting on PCIe would otherwise hold SMs that the work beside the prefetch needs.
        let per_head = GATHER_WARPS.div_ceil(warps * kvh * b).max(1);
        let ucap = lane.layout.ucap as i32;
        let grid = ((ucap as u32).div_ceil(warps).clamp(1, per_head), kvh, b);
        let rec_elems = (2 * self.kernels.spec().routing().group * d) as i32;
        let mut lb = st.launch_builder(self.kernels.gather());
        let (kvh_i, ps, cg) = (kvh as i32, p.part_slots, p.cap_groups);
        let g = &lane.gpu;
        let (lp, lg, ls, ln) =
            (ptr(&self.b.spec_pos, &self.gpu), ptr(&lane.uni_group, g), ptr(&lane.uni_slot, g), ptr(&lane.n_uni, g));
        lb.arg(&lp).arg(&lg).arg(&ls).arg(&ln).arg(&p.group_addr).arg(&p.slots);
        lb.arg(&kvh_i).arg(&ucap).arg(&ps).arg(&cg).arg(&rec_elems);
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (GATHER_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the pointers are the batch's live buffers (and the lane's positions), sized for this
        // layout; the kernel reads the union lists the resolve just wrote.
        unsafe { lb.launch(cfg) }?;
        Ok(())
    }

    /// The positions a prefetch routes at: the token before each row's coming one (-1: sits out).
    fn prefetch_positions(&self, positions: &[Option<u32>]) -> Result<Vec<i32>, CudaError> {
        if positions.len() != self.cap.batch {
            return Err(CudaError::Invalid {
                field: "positions",
                value: format!("{} entries", positions.len()),
                rule: format!("must have one entry per sequence ({})", self.cap.batch),
            });
        }
        positions
            .iter()
            .enumerate()
            .map(|(row, p)| match *p {
                None | Some(0) => Ok(-1),
                Some(p)
                    if (p as usize) < self.cap.max_context
                        && p as usize <= self.held[row]
                        && self.layout.chunks_for(p as usize) <= self.grown[row] =>
                {
                    Ok(p as i32 - 1)
                }
                Some(p) => Err(CudaError::Invalid {
                    field: "positions",
                    value: format!("{p} for row {row}"),
                    rule: format!(
                        "must be < max_context ({}) and at most the tokens the row holds ({}), in the row's tables ({} chunks of {})",
                        self.cap.max_context,
                        self.held[row],
                        self.grown[row],
                        self.kernels.spec().routing().chunk
                    ),
                }),
            })
            .collect()
    }
}
