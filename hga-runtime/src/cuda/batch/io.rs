//! Device-side input and output of a [`super::DecodeBatch`] for engines: queries and outputs in device
//! buffers, and the step's telemetry in one read-back.
//!
//! - **Queries and outputs** in the engine's device buffers (`[n][q_heads][d]` bf16 bits, one entry per
//!   sequence of the step): either the kernels read and write them in place
//!   ([`DecodeBatch::with_io_at`], for steps whose rows are one consecutive run), or device-to-device
//!   copies move them to and from the batch's own rows ([`DecodeBatch::copy_q_from_device`],
//!   [`DecodeBatch::copy_out_to_device`]; one copy per consecutive run of rows). From host memory,
//!   [`DecodeBatch::upload_q_rows`] and [`DecodeBatch::read_output_rows`] move only the rows between the
//!   first and the last one used.
//! - **Counters** of a step (host-record errors, union sizes, misses, attended tokens, selected groups
//!   per routing unit) are gathered on the device into one packed buffer and copied to pinned host
//!   memory by [`DecodeBatch::gather_counters`] (all asynchronous, capturable in a graph), then read with
//!   one synchronization ([`CounterBuffer::read`]).
//! - **The attend chain as a CUDA graph**: [`DecodeBatch::capture_attend`] records route → fetch →
//!   attend (and the counter gather) once; [`DecodeBatch::launch_attend_graph`] replays it while the
//!   batch's buffers are the ones captured and the step's candidate chunks fit the captured grid
//!   ([`DecodeBatch::attend_graph_fits`]; [`DecodeBatch::candidate_bucket`] gives a capacity with
//!   headroom so that growing contexts re-capture rarely).

use super::{ptr, DecodeBatch, StepGraph};
use crate::cuda::attend_io::{AttendGraph, CounterBuffer, CounterLayout};
use crate::cuda::CudaError;
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{result, CudaSlice, CudaStream};
use std::ops::Range;

/// Maximal runs of consecutive rows in `rows`: (index into `rows`, first row, length).
fn runs(rows: &[usize]) -> Vec<(usize, usize, usize)> {
    let mut out: Vec<(usize, usize, usize)> = Vec::new();
    for (i, &r) in rows.iter().enumerate() {
        match out.last_mut() {
            Some((_, first, n)) if *first + *n == r => *n += 1,
            _ => out.push((i, r, 1)),
        }
    }
    out
}

/// Restores the batch's own query and output buffers when dropped (see [`DecodeBatch::with_io_at`]).
struct IoRedirect<'a, 'k> {
    batch: &'a mut DecodeBatch<'k>,
    saved: (u64, u64),
}

impl Drop for IoRedirect<'_, '_> {
    fn drop(&mut self) {
        (self.batch.p.q, self.batch.p.out) = self.saved;
    }
}

impl DecodeBatch<'_> {
    /// Elements of one row of queries or outputs (`q_heads × d`).
    fn q_row(&self) -> usize {
        let m = self.kernels.spec().model();
        (m.q_heads * m.head_dim) as usize
    }

    /// Checks that `rows` are distinct rows of the batch.
    pub(super) fn check_rows(&self, rows: &[usize]) -> Result<(), CudaError> {
        let mut seen = vec![false; self.cap.batch];
        for &r in rows {
            if r >= self.cap.batch || std::mem::replace(&mut seen[r], true) {
                return Err(CudaError::Invalid {
                    field: "rows",
                    value: format!("{rows:?}"),
                    rule: format!("must be distinct rows below the batch size ({})", self.cap.batch),
                });
            }
        }
        Ok(())
    }

    /// Device-to-device copies of `rows.len()` rows of `q_row` bf16 elements between `ext` (the engine's
    /// buffer, entry `i` for `rows[i]`) and the batch buffer at `own`, one per run of consecutive rows.
    ///
    /// # Safety
    /// `ext` must hold `rows.len()` rows, valid until the stream has run the copies.
    unsafe fn copy_rows(&self, ext: u64, own: u64, rows: &[usize], to_own: bool) -> Result<(), CudaError> {
        self.check_rows(rows)?;
        // Queries in: the step's input, like upload_q. Outputs out: after the attention.
        let stream = if to_own { self.free_stream() } else { self.stream()? };
        // SAFETY: forwarded from the caller; `own` is a buffer of the batch's rows.
        unsafe { self.copy_row_runs(stream, ext, own, rows, to_own) }
    }

    /// [`DecodeBatch::copy_rows`] on `stream` (rows checked by the caller).
    ///
    /// # Safety
    /// As [`DecodeBatch::copy_rows`]; `own` must hold the batch's rows.
    pub(super) unsafe fn copy_row_runs(
        &self,
        stream: &CudaStream,
        ext: u64,
        own: u64,
        rows: &[usize],
        to_own: bool,
    ) -> Result<(), CudaError> {
        let bytes = (self.q_row() * 2) as u64;
        self.gpu.context().bind_to_thread()?;
        for (i, r, n) in runs(rows) {
            let (e, o) = (ext + i as u64 * bytes, own + r as u64 * bytes);
            let (dst, src) = if to_own { (o, e) } else { (e, o) };
            // SAFETY: both ranges hold `n` rows (the batch's by its capacity, `ext`'s by the caller).
            unsafe { result::memcpy_dtod_async(dst, src, n * bytes as usize, stream.cu_stream()) }?;
        }
        Ok(())
    }

    /// Copies this step's queries from device memory into the batch: entry `i` of `src`
    /// (`[rows.len()][q_heads][d]` bf16 bits) becomes row `rows[i]`'s (one copy per run of consecutive
    /// rows; asynchronous).
    ///
    /// # Safety
    /// `src` must be a device address holding `rows.len()` rows, valid until the stream has run the copies.
    pub unsafe fn copy_q_from_device(&mut self, src: u64, rows: &[usize]) -> Result<(), CudaError> {
        let own = ptr(&self.b.q, &self.gpu);
        // SAFETY: forwarded from the caller.
        unsafe { self.copy_rows(src, own, rows, true) }
    }

    /// Copies the last step's outputs of `rows` to device memory: row `rows[i]` becomes entry `i` of `dst`
    /// (`[rows.len()][q_heads][d]` bf16 bits; one copy per run of consecutive rows; asynchronous).
    ///
    /// # Safety
    /// `dst` must be a device address holding `rows.len()` rows, valid until the stream has run the
    /// copies, and not read by other streams before then.
    pub unsafe fn copy_out_to_device(&self, dst: u64, rows: &[usize]) -> Result<(), CudaError> {
        let own = ptr(&self.b.out, &self.gpu);
        // SAFETY: forwarded from the caller.
        unsafe { self.copy_rows(dst, own, rows, false) }
    }

    /// Uploads the queries of rows `first_row..first_row + n` (`q`: `[n][q_heads][d]` bf16 bits); the
    /// other rows' queries are left as they are.
    pub fn upload_q_rows(&mut self, first_row: usize, q: &[u16]) -> Result<(), CudaError> {
        let row = self.q_row();
        let n = q.len() / row;
        if q.len() % row != 0 || first_row + n > self.cap.batch {
            return Err(CudaError::Invalid {
                field: "q",
                value: format!("{} elements from row {first_row}", q.len()),
                rule: format!("must be whole rows of {row} elements within the batch ({} rows)", self.cap.batch),
            });
        }
        let at = first_row * row;
        let st = self.free_stream().clone();
        st.memcpy_htod(q, &mut self.b.q.slice_mut(at..at + q.len()))?;
        Ok(())
    }

    /// The outputs of rows `rows` (`[rows.len()][q_heads][d]` element bits) as of the last step (one copy
    /// of the rows between the first and the last; synchronizes).
    pub fn read_output_rows(&self, rows: Range<usize>) -> Result<Vec<u16>, CudaError> {
        if rows.start > rows.end || rows.end > self.cap.batch {
            return Err(CudaError::Invalid {
                field: "rows",
                value: format!("{rows:?}"),
                rule: format!("must be within the batch ({} rows)", self.cap.batch),
            });
        }
        let row = self.q_row();
        Ok(self.stream()?.clone_dtoh(&self.b.out.slice(rows.start * row..rows.end * row))?)
    }

    /// Runs `f` (launches of this batch) with the kernels reading the queries at `q` and writing the
    /// outputs at `out` in place of the batch's own buffers: row `rows.start + i` is entry `i` of
    /// `[rows.len()][q_heads][d]` bf16 bits there. The batch's buffers are restored afterwards (also on
    /// a panic). An error when a row outside `rows` is active (it would read and write past the
    /// buffers). Do not capture graphs inside `f`: they would keep these addresses.
    ///
    /// # Safety
    /// `q` and `out` must be device addresses holding `rows.len()` rows, valid until the stream has run
    /// `f`'s launches; `f` must not activate rows outside `rows`.
    pub unsafe fn with_io_at<R>(
        &mut self,
        q: u64,
        out: u64,
        rows: Range<usize>,
        f: impl FnOnce(&mut Self) -> R,
    ) -> Result<R, CudaError> {
        let active_outside = self.pos_host.iter().enumerate().any(|(r, &p)| p >= 0 && !rows.contains(&r));
        let shift = (rows.start * self.q_row() * 2) as u64;
        let base = |a: u64| a.checked_sub(shift);
        let (Some(qb), Some(ob)) = (base(q), base(out)) else {
            return Err(CudaError::Invalid {
                field: "rows",
                value: format!("{rows:?}"),
                rule: "the buffers' addresses must be at least the rows before them".into(),
            });
        };
        if active_outside || rows.end > self.cap.batch {
            return Err(CudaError::Invalid {
                field: "rows",
                value: format!("{rows:?}"),
                rule: format!("must hold every active row, within the batch ({} rows)", self.cap.batch),
            });
        }
        let saved = (self.p.q, self.p.out);
        // The kernels index row b at `q + b × row`: shifted down by the rows before the run, row
        // `rows.start` lands on the buffers' first entry. Only active rows are read or written.
        (self.p.q, self.p.out) = (qb, ob);
        let guard = IoRedirect { batch: self, saved };
        Ok(f(&mut *guard.batch))
    }

    /// A counter buffer for this batch's steps.
    pub fn counter_buffer(&self) -> Result<CounterBuffer, CudaError> {
        let layout = self.counter_layout();
        let st = self.gpu.stream();
        let dev = st.alloc_zeros::<i32>(layout.len())?;
        // Plain pinned memory (not write-combined): the host reads it.
        // SAFETY: zeroed right below, before anything reads it.
        let mut host = unsafe { self.gpu.context().alloc_pinned_with_flags::<i32>(layout.len(), 0)? };
        host.as_mut_slice()?.fill(0);
        let host_addr = host.as_mut_ptr()? as usize;
        Ok(CounterBuffer { layout, dev, host, host_addr, stream: st.clone() })
    }

    fn counter_layout(&self) -> CounterLayout {
        let kv_heads = self.kernels.spec().model().kv_heads as usize;
        CounterLayout { rows: self.cap.batch, kv_heads, units: self.lp.units as usize }
    }

    /// Gathers the counters of the last step into `buf`'s device buffer and copies them to its pinned
    /// host mirror (device-to-device copies, then one device-to-host copy; all asynchronous, so it can be
    /// captured into a graph). [`CounterBuffer::read`] waits for them.
    pub fn gather_counters(&self, buf: &mut CounterBuffer) -> Result<(), CudaError> {
        let l = self.counter_layout();
        if buf.layout != l || buf.stream.cu_stream() != self.gpu.stream().cu_stream() {
            return Err(CudaError::Invalid {
                field: "counters",
                value: format!("{:?}", buf.layout),
                rule: format!("must be made by this batch ({l:?})"),
            });
        }
        let b = &self.b;
        let parts: [(&CudaSlice<i32>, usize, usize); 5] = [
            (&b.error, CounterLayout::ERROR, 1),
            (&b.n_uni, CounterLayout::N_UNI, l.rows * l.kv_heads),
            (&b.part_state, l.part_state(), 4 * l.rows * l.kv_heads),
            (&b.n_att, l.n_att(), l.rows * l.kv_heads),
            (&b.n_sel_group, l.n_sel_group(), l.rows * l.units),
        ];
        self.gpu.context().bind_to_thread()?;
        let stream = self.stream()?.cu_stream();
        let dev = ptr(&buf.dev, &self.gpu);
        for (src, at, n) in parts {
            // Guards the sizes the layout assumes (the buffers are allocated with at least one entry).
            if src.len() < n {
                return Err(CudaError::Invalid {
                    field: "counters",
                    value: format!("{} entries", src.len()),
                    rule: format!("a counter array must hold {n} entries"),
                });
            }
            // SAFETY: `src` holds n entries, `buf.dev` holds `l.len()` ≥ at + n.
            unsafe { result::memcpy_dtod_async(dev + (at * 4) as u64, ptr(src, &self.gpu), n * 4, stream) }?;
        }
        // SAFETY: `host_addr` is `buf.host`'s pinned memory of `l.len()` entries, alive with `buf`;
        // readers wait for the stream first (`CounterBuffer::read`).
        let host = unsafe { std::slice::from_raw_parts_mut(buf.host_addr as *mut i32, l.len()) };
        unsafe { result::memcpy_dtoh_async(host, dev, stream) }?;
        Ok(())
    }

    /// A candidate capacity for [`DecodeBatch::capture_attend`] that covers this step's candidate chunks
    /// ([`DecodeBatch::max_candidates`]) with headroom: the chunk-score grid rounded up to a multiple of
    /// an eighth of its power of two (at most 1/8 idle blocks beyond 8, so a context that grows
    /// re-captures about eight times per doubling), never beyond the summary table.
    pub fn candidate_bucket(&self) -> u32 {
        let tile = self.lp.chunk_tile.max(1);
        let blocks = self.max_candidates().div_ceil(tile).max(1);
        let step = ((1u32 << (31 - blocks.leading_zeros())) / 8).max(1);
        let table = (self.p.cap_chunks as u32).div_ceil(tile).max(blocks);
        (blocks.div_ceil(step) * step).min(table) * tile
    }

    /// Captures route → fetch → attend for the current batch buffers as a CUDA graph whose chunk-score
    /// grid covers `candidate_capacity` candidate chunks per sequence, followed by the counter gather
    /// into `counters` when given (the graph keeps the buffer). Nothing runs until
    /// [`DecodeBatch::launch_attend_graph`]. Replays read positions, queries and every table from the
    /// batch's buffers, so one graph serves any set of active rows.
    pub fn capture_attend(
        &mut self,
        candidate_capacity: u32,
        counters: Option<CounterBuffer>,
    ) -> Result<AttendGraph, CudaError> {
        let mut counters = counters;
        if let Some(c) = &counters {
            // Checks the buffer before the capture starts (the gather itself checks the same).
            if c.layout != self.counter_layout() {
                return Err(CudaError::Invalid {
                    field: "counters",
                    value: format!("{:?}", c.layout),
                    rule: format!("must be made by this batch ({:?})", self.counter_layout()),
                });
            }
        }
        // A prefetch's event cannot be waited for inside a capture.
        let stream = self.stream()?.clone();
        // Captures start on an idle stream (captures are rare: the wait costs nothing per step).
        stream.synchronize()?;
        stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        self.capture_cands = Some(candidate_capacity);
        let launched = (|| {
            self.launch_decode()?;
            if let Some(c) = counters.as_mut() {
                self.gather_counters(c)?;
            }
            Ok::<(), CudaError>(())
        })();
        self.capture_cands = None;
        let graph = stream.end_capture(CUgraphInstantiate_flags(0));
        launched?;
        let graph = graph?.ok_or_else(|| CudaError::Driver("stream capture produced no graph".into()))?;
        Ok(AttendGraph { step: StepGraph { graph, candidate_capacity }, candidate_capacity, params: self.p, counters })
    }

    /// Whether `g` can replay this step: captured with the batch's current buffers and a grid that
    /// covers the step's candidate chunks.
    pub fn attend_graph_fits(&self, g: &AttendGraph) -> bool {
        g.params == self.p && self.max_candidates() <= g.candidate_capacity
    }

    /// Replays a graph of [`DecodeBatch::capture_attend`] for the current positions and queries; an error
    /// (nothing launched) when it does not fit ([`DecodeBatch::attend_graph_fits`]): capture a new one.
    pub fn launch_attend_graph(&self, g: &AttendGraph) -> Result<(), CudaError> {
        if g.params != self.p {
            return Err(CudaError::Invalid {
                field: "graph",
                value: "captured with other buffers".into(),
                rule:
                    "the batch's buffers changed since the capture (or another batch captured it): capture a new graph"
                        .into(),
            });
        }
        self.launch_graph(&g.step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_consecutive_rows() {
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(runs(&[3]), vec![(0, 3, 1)]);
        assert_eq!(runs(&[0, 1, 2]), vec![(0, 0, 3)]);
        assert_eq!(runs(&[4, 0, 1, 3, 2]), vec![(0, 4, 1), (1, 0, 2), (3, 3, 1), (4, 2, 1)]);
        assert_eq!(runs(&[5, 6, 2, 3]), vec![(0, 5, 2), (2, 2, 2)]);
    }
}
