//! Per-step scratch of the decode kernels, shareable by the batches of all layers of a model.
//!
//! An engine runs its layers' steps one after another on one stream, so the buffers that a step writes
//! before it reads them, and that nothing reads after the step, serve every layer. Per buffer:
//!
//! | buffer | written | read | shared |
//! |---|---|---|---|
//! | chunk_score `[B][QH][cap_chunks]` | hga_chunk_score, candidates `0..n` of active rows | hga_select, same `0..n` | yes (growable) |
//! | chunk_mass `[B][KVH][cap_chunks]` | hga_select (shared routing) | hga_select, after | yes (growable) |
//! | group_cand, group_score, group_mass | hga_select | hga_select | yes |
//! | sel_chunk, n_sel_chunk | hga_select | hga_select; [`super::DecodeBatch::selected_chunks`] | yes (read-back: the last step run on the scratch) |
//! | uni_mask, miss_list | the resolve (fused into hga_select, or hga_resolve) | the resolve, hga_attend | yes |
//! | part_ml, part_acc | hga_attend, every split | the merging split | yes |
//! | done `[B][KVH·head tiles]`, then `[B][KVH]` | hga_attend's split counts, hga_select's unit counts (atomic) | the merging split / the resolving unit resets its counter to 0 | yes |
//! | sel_group, n_sel_group | hga_select | the resolve; engine telemetry after the step | no: per batch |
//! | uni_group, uni_slot, n_uni | the resolve | hga_attend; telemetry ([`super::DecodeBatch::union`]) | no: per batch |
//! | n_att | hga_attend | telemetry | no: per batch |
//! | part_state, slot_of/owner/stamp | the resolve | the next steps of the same layer | no: layer state |
//!
//! Rows that sit a step out are skipped by every kernel, so what an earlier step of another layer left
//! in their scratch entries is never read. The per-batch buffers are small (a few KiB per row): keeping
//! them per layer lets telemetry be read after later layers ran.
//!
//! Batches sharing a scratch must run on the same stream, one step at a time (a step's launches are
//! not interleaved with another batch's); [`super::DecodeBatch::with_scratch`] checks the stream and
//! that the scratch was sized for the batch's spec and capacity.

use super::kernels::HgaParams;
use super::layout::{Layout, Table};
use super::vmm::GrowableBuffer;
use super::{Capacity, CudaError, DecodeKernels, Gpu};
use cudarc::driver::{CudaSlice, DevicePtr};
use std::sync::{Arc, Mutex, MutexGuard};

/// Per-step scratch buffers of a batch's decode step (see the module docs for which), growable chunk
/// scores included. Make one per model with [`StepScratch::new`] and give it to every layer's batch
/// through [`super::DecodeBatch::with_scratch`].
pub struct StepScratch {
    gpu: Gpu,
    pub(crate) layout: Layout,
    variant: String,
    /// chunk_score and chunk_mass, with the chunks each row of them holds.
    growable: Mutex<Growable>,
    plain: Vec<CudaSlice<u32>>,
    /// Device addresses of the plain buffers, in [`Layout::scratch_plain`] order.
    plain_ptrs: [u64; 10],
    chunk_score_ptr: u64,
    chunk_mass_ptr: u64,
}

pub(crate) struct Growable {
    pub bufs: [GrowableBuffer; 2],
    pub tables: [Table; 2],
    /// Chunks mapped per row.
    pub rows: Vec<usize>,
}

impl Growable {
    /// Maps (pending) what rows `need` (row, chunks) use beyond what they have; all or nothing: on an
    /// error the pending pages are unmapped. The caller commits or rolls back.
    pub fn map(&mut self, need: &[(usize, usize)]) -> Result<(), CudaError> {
        let rows = self.rows.len();
        let mut mapped = Ok(());
        'map: for &(row, chunks) in need {
            if chunks <= self.rows[row] {
                continue;
            }
            for (buf, t) in self.bufs.iter_mut().zip(&self.tables) {
                for r in t.row_ranges(rows, row, chunks) {
                    mapped = buf.map(r).map(|_| ());
                    if mapped.is_err() {
                        break 'map;
                    }
                }
            }
        }
        if mapped.is_err() {
            self.rollback();
        }
        mapped
    }
    /// Fills what [`Growable::map`] mapped and records the rows' new extents.
    pub fn commit(&mut self, need: &[(usize, usize)]) -> Result<(), CudaError> {
        for b in &mut self.bufs {
            b.commit()?;
        }
        for &(row, chunks) in need {
            self.rows[row] = self.rows[row].max(chunks);
        }
        Ok(())
    }
    /// Unmaps what [`Growable::map`] mapped.
    pub fn rollback(&mut self) {
        for b in &mut self.bufs {
            b.rollback();
        }
    }
}

impl std::fmt::Debug for StepScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepScratch")
            .field("variant", &self.variant)
            .field("batch", &self.layout.bsz)
            .field("cap_chunks", &self.layout.cap_chunks)
            .finish()
    }
}

impl StepScratch {
    /// The scratch of batches of `kernels`' spec with capacity `cap` (only `batch` and `max_context`
    /// matter: `n_slots` may differ between the batches that share it). Chunk scores are reserved for
    /// `max_context` and mapped as rows grow.
    pub fn new(gpu: &Gpu, kernels: &DecodeKernels, cap: Capacity) -> Result<Arc<StepScratch>, CudaError> {
        let layout = Layout::of(kernels.spec(), &kernels.generated().launch, cap);
        layout.check(cap)?;
        Ok(Arc::new(Self::with_layout(gpu, kernels, layout)?))
    }

    pub(crate) fn with_layout(gpu: &Gpu, kernels: &DecodeKernels, layout: Layout) -> Result<StepScratch, CudaError> {
        let tables = layout.scratch_tables();
        let bufs = [GrowableBuffer::new(gpu, tables[0].bytes(), 0)?, GrowableBuffer::new(gpu, tables[1].bytes(), 0)?];
        let st = gpu.stream();
        let plain =
            layout.scratch_plain().iter().map(|&(_, n)| st.alloc_zeros::<u32>(n)).collect::<Result<Vec<_>, _>>()?;
        let mut plain_ptrs = [0u64; 10];
        for (p, s) in plain_ptrs.iter_mut().zip(&plain) {
            *p = s.device_ptr(st).0;
        }
        Ok(StepScratch {
            gpu: gpu.clone(),
            variant: kernels.generated().variant_key.clone(),
            chunk_score_ptr: bufs[0].ptr(),
            chunk_mass_ptr: bufs[1].ptr(),
            growable: Mutex::new(Growable { bufs, tables, rows: vec![0; layout.bsz] }),
            plain,
            plain_ptrs,
            layout,
        })
    }

    /// Why a batch with `layout` on `gpu` cannot use this scratch, if it cannot: another stream, or
    /// buffers sized differently (spec, launch parameters, batch, chunks of `max_context`).
    pub(crate) fn check_compatible(&self, gpu: &Gpu, layout: &Layout) -> Result<(), CudaError> {
        if !Arc::ptr_eq(self.gpu.stream(), gpu.stream()) {
            return Err(CudaError::Invalid {
                field: "scratch",
                value: "a scratch of another stream".into(),
                rule: "batches sharing a step scratch must run on its stream (one step at a time)".into(),
            });
        }
        // The slot partition does not size any scratch buffer.
        let (a, b) = (Layout { part_slots: 0, ..self.layout }, Layout { part_slots: 0, ..*layout });
        if a != b {
            return Err(CudaError::Invalid {
                field: "scratch",
                value: format!("made for {} (batch {}, {} chunks): {a:?}", self.variant, a.bsz, a.cap_chunks),
                rule: format!(
                    "must be made for the batch's spec and capacity (batch {}, {} chunks): {b:?}",
                    b.bsz, b.cap_chunks
                ),
            });
        }
        Ok(())
    }

    /// Maps and commits the chunk scores and masses of every row for `max_context` (a scratch that
    /// does not follow the rows' growth: a prefetch lane's).
    pub(crate) fn commit_all(&self) -> Result<(), CudaError> {
        let need: Vec<(usize, usize)> = (0..self.layout.bsz).map(|r| (r, self.layout.cap_chunks)).collect();
        let mut g = self.growable();
        g.map(&need)?;
        g.commit(&need)
    }

    /// Points `p`'s scratch buffers at this scratch.
    pub(super) fn apply(&self, p: &mut HgaParams) {
        let sp = &self.plain_ptrs;
        p.chunk_score = self.chunk_score_ptr;
        p.chunk_mass = self.chunk_mass_ptr;
        (p.group_cand, p.group_score, p.group_mass, p.sel_chunk, p.n_sel_chunk) = (sp[0], sp[1], sp[2], sp[3], sp[4]);
        (p.uni_mask, p.miss_list, p.part_ml, p.part_acc, p.done) = (sp[5], sp[6], sp[7], sp[8], sp[9]);
    }

    pub(crate) fn growable(&self) -> MutexGuard<'_, Growable> {
        // A panic while holding the lock leaves the bookkeeping consistent (each step updates it after
        // the driver calls succeed), so a poisoned lock is still usable.
        self.growable.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Device bytes committed now: the mapped pages of the chunk scores and masses, and the rest.
    pub fn committed_bytes(&self) -> u64 {
        let g = self.growable();
        g.bufs.iter().map(|b| b.committed_bytes()).sum::<u64>() + self.layout.scratch_plain_bytes()
    }

    /// Raw chunk scores `[B][q_heads][cap_chunks]` of the last step run on this scratch (synchronizes;
    /// unmapped parts read as 0).
    pub fn chunk_scores(&self) -> Result<Vec<f32>, CudaError> {
        self.growable().bufs[0].read::<f32>()
    }

    /// Selected chunks per routing unit `[B][units][kce]` and their counts `[B][units]`, of the last
    /// step run on this scratch (synchronizes).
    pub(crate) fn selected_chunk_lists(&self) -> Result<(Vec<i32>, Vec<i32>), CudaError> {
        let st = self.gpu.stream();
        let as_i32 = |v: Vec<u32>| v.into_iter().map(|x| x as i32).collect();
        Ok((as_i32(st.clone_dtoh(&self.plain[3])?), as_i32(st.clone_dtoh(&self.plain[4])?)))
    }
}
