//! What an engine keeps of a [`super::DecodeBatch`]'s device-side attend I/O (the methods are in
//! `batch/io.rs`): a [`CounterBuffer`] that one step's counters are gathered into and read back from
//! with one copy, the [`StepCounters`] read, and an [`AttendGraph`] (route → fetch → attend, and the
//! gather, captured as one CUDA graph).

use super::kernels::HgaParams;
use super::{CudaError, StepGraph};
use cudarc::driver::{CudaSlice, CudaStream, PinnedHostSlice};
use std::sync::Arc;

/// Where each counter of a step sits in a [`CounterBuffer`] (`i32` entries): the host-record error
/// count, then per (row, KV head) the union size, the 4 partition-state words, the attended tokens,
/// then per (row, routing unit) the selected groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CounterLayout {
    pub rows: usize,
    pub kv_heads: usize,
    pub units: usize,
}

impl CounterLayout {
    pub const ERROR: usize = 0;
    pub const N_UNI: usize = 1;
    pub fn part_state(&self) -> usize {
        Self::N_UNI + self.rows * self.kv_heads
    }
    pub fn n_att(&self) -> usize {
        self.part_state() + 4 * self.rows * self.kv_heads
    }
    pub fn n_sel_group(&self) -> usize {
        self.n_att() + self.rows * self.kv_heads
    }
    pub fn len(&self) -> usize {
        self.n_sel_group() + self.rows * self.units
    }
}

/// A device buffer and a pinned host mirror for the counters of one step of one batch
/// ([`super::DecodeBatch::counter_buffer`], filled by [`super::DecodeBatch::gather_counters`]).
pub struct CounterBuffer {
    pub(super) layout: CounterLayout,
    pub(super) dev: CudaSlice<i32>,
    pub(super) host: PinnedHostSlice<i32>,
    /// `host`'s address (kept as an integer so that the buffer stays `Send`); valid while `host` lives.
    pub(super) host_addr: usize,
    pub(super) stream: Arc<CudaStream>,
}

impl std::fmt::Debug for CounterBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterBuffer").field("layout", &self.layout).field("len", &self.dev.len()).finish()
    }
}

impl CounterBuffer {
    /// Waits for the stream (so for the last [`super::DecodeBatch::gather_counters`]) and returns a
    /// copy of the counters.
    pub fn read(&self) -> Result<StepCounters, CudaError> {
        self.stream.synchronize()?;
        // SAFETY: `host_addr` points at `host`'s `layout.len()` elements, alive with `self`; the stream
        // is idle, so no copy writes them now.
        let data = unsafe { std::slice::from_raw_parts(self.host_addr as *const i32, self.host.len()) };
        Ok(StepCounters { layout: self.layout, data: data.to_vec() })
    }
}

/// The counters of one step as read back ([`CounterBuffer::read`]). Entries of rows that sat the step
/// out hold what an earlier step left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepCounters {
    layout: CounterLayout,
    data: Vec<i32>,
}

impl StepCounters {
    fn at(&self, i: usize) -> usize {
        self.data[i].max(0) as usize
    }
    fn bk(&self, row: usize, kv_head: usize) -> Option<usize> {
        (row < self.layout.rows && kv_head < self.layout.kv_heads).then(|| row * self.layout.kv_heads + kv_head)
    }
    /// Routed groups found without a host record since the batch was made (as
    /// [`super::DecodeBatch::host_record_errors`]; should stay 0).
    pub fn host_record_errors(&self) -> usize {
        self.at(CounterLayout::ERROR)
    }
    /// Distinct groups routed to (row, KV head) (the length of its [`super::DecodeBatch::union`]
    /// entry); `None` past the batch's rows or KV heads.
    pub fn union_len(&self, row: usize, kv_head: usize) -> Option<usize> {
        Some(self.at(CounterLayout::N_UNI + self.bk(row, kv_head)?))
    }
    /// (misses, those read from host without a free slot) of (row, KV head), as
    /// [`super::DecodeBatch::miss_counts`]; `None` past the batch's rows or KV heads.
    pub fn misses(&self, row: usize, kv_head: usize) -> Option<(usize, usize)> {
        let at = self.layout.part_state() + 4 * self.bk(row, kv_head)?;
        Some((self.at(at + 2), self.at(at + 3)))
    }
    /// Tokens (row, KV head)'s attention spanned, as [`super::DecodeBatch::attended_tokens`]; `None`
    /// past the batch's rows or KV heads.
    pub fn attended(&self, row: usize, kv_head: usize) -> Option<usize> {
        Some(self.at(self.layout.n_att() + self.bk(row, kv_head)?))
    }
    /// Groups routing unit `unit` of `row` opened (the length of its
    /// [`super::DecodeBatch::selected_groups`] entry); `None` past the batch's rows or units.
    pub fn selected_groups(&self, row: usize, unit: usize) -> Option<usize> {
        (row < self.layout.rows && unit < self.layout.units)
            .then(|| self.at(self.layout.n_sel_group() + row * self.layout.units + unit))
    }
}

/// Route → fetch → attend of one batch captured as a CUDA graph ([`super::DecodeBatch::capture_attend`]),
/// with the counter gather when it was captured with a [`CounterBuffer`] (which the graph then owns: its
/// replays write it).
pub struct AttendGraph {
    pub(super) step: StepGraph,
    /// The step graph's candidate capacity (its own field is private to the batch module).
    pub(super) candidate_capacity: u32,
    /// The kernel parameters it was captured with.
    pub(super) params: HgaParams,
    pub(super) counters: Option<CounterBuffer>,
}

// SAFETY: CUDA graphs may be used from any thread as long as no two threads use one at once (the
// driver does not synchronize them); `AttendGraph` is not `Sync`, so moving it keeps that.
unsafe impl Send for AttendGraph {}

impl std::fmt::Debug for AttendGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttendGraph")
            .field("candidate_capacity", &self.candidate_capacity)
            .field("counters", &self.counters)
            .finish()
    }
}

impl AttendGraph {
    /// Candidate chunks per sequence the captured chunk-score grid covers.
    pub fn candidate_capacity(&self) -> u32 {
        self.candidate_capacity
    }
    /// The counter buffer the replays fill, if one was captured.
    pub fn counters(&self) -> Option<&CounterBuffer> {
        self.counters.as_ref()
    }
    /// Gives the counter buffer back (to capture a new graph with it).
    pub fn into_counters(self) -> Option<CounterBuffer> {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_layout_is_packed() {
        let l = CounterLayout { rows: 3, kv_heads: 4, units: 32 };
        assert_eq!(l.part_state(), 13);
        assert_eq!(l.n_att(), 13 + 48);
        assert_eq!(l.n_sel_group(), 13 + 48 + 12);
        assert_eq!(l.len(), 13 + 48 + 12 + 96);
        let mut data: Vec<i32> = (0..l.len() as i32).collect();
        data[0] = 7;
        let c = StepCounters { layout: l, data };
        assert_eq!(c.host_record_errors(), 7);
        assert_eq!(c.union_len(2, 3), Some(12));
        assert_eq!(c.union_len(3, 0), None);
        assert_eq!(c.union_len(0, 4), None);
        assert_eq!(c.misses(1, 0), Some((13 + 16 + 2, 13 + 16 + 3)));
        assert_eq!(c.attended(0, 1), Some(62));
        assert_eq!(c.selected_groups(2, 31), Some(73 + 95));
        assert_eq!(c.selected_groups(2, 32), None);
    }
}
