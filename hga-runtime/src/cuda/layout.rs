//! Sizes of a batch's device buffers, derived once from the spec, its launch parameters and the
//! capacity: used to allocate them ([`super::DecodeBatch`], [`super::StepScratch`]) and to count them
//! ([`super::StateBytes`]), so that the two cannot drift apart.

use super::{Capacity, CudaError, Widening};
use hga_dsl::codegen::LaunchParams;
use hga_dsl::{Sharing, ValidSpec};
use std::ops::Range;

/// The largest group budget per routing unit the kernels of a spec with `top_groups` serve (a
/// [`super::PrefetchLane`] may route wider than the spec): the resolve's fixed-length binary searches
/// cover lists of up to twice the largest power of two in the spec's budget.
pub(crate) fn max_group_budget(top_groups: usize) -> usize {
    2 * (1usize << top_groups.max(1).ilog2())
}

/// Slots one (row, KV head) of a batch of `spec` with capacity `max_context` needs for the union of one
/// step routed `wider` than the spec (the lookahead's; `Widening::default()` for the spec's own route):
/// the group budget per routing unit capped by the context, as the batches' buffers are sized. A slot
/// pool of `batch × kv_heads ×` this many holds any one step's union.
pub fn union_slots(spec: &ValidSpec, max_context: usize, wider: Widening) -> Result<usize, CudaError> {
    let lp = hga_dsl::codegen::launch_params(spec);
    let cap = Capacity { batch: 1, max_context, n_slots: 0 };
    let top_groups = spec.routing().top_groups as usize;
    Ok(Layout::of(spec, &lp, cap).widened(wider.extra_chunks, wider.extra_groups, top_groups)?.ucap)
}

/// Every dimension the buffers of a batch are sized by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout {
    pub bsz: usize,
    pub qh: usize,
    pub kvh: usize,
    pub d: usize,
    pub chunk: usize,
    pub group: usize,
    pub gpc: usize,
    pub units: usize,
    pub shared: bool,
    pub sv: usize,
    pub split_k: usize,
    pub mask_words: usize,
    pub head_tiles: usize,
    pub window_chunks: usize,
    pub cap_chunks: usize,
    pub cap_groups: usize,
    pub kce: usize,
    pub kge: usize,
    pub ucap: usize,
    pub part_slots: usize,
}

impl Layout {
    /// The layout of a batch of `spec` (launched with `lp`) with capacity `cap`; not validated (see
    /// [`Layout::check`]).
    pub fn of(spec: &ValidSpec, lp: &LaunchParams, cap: Capacity) -> Layout {
        let (m, r) = (spec.model(), spec.routing());
        let (c, gpc) = (r.chunk as usize, spec.groups_per_chunk());
        let cap_chunks = cap.max_context.div_ceil(c);
        let kce = (r.top_chunks as usize).min(cap_chunks);
        let kge = (r.top_groups as usize).min(kce * gpc);
        let shared = r.sharing == Sharing::PerKvHead;
        let kvh = m.kv_heads as usize;
        Layout {
            bsz: cap.batch,
            qh: m.q_heads as usize,
            kvh,
            d: m.head_dim as usize,
            chunk: c,
            group: r.group as usize,
            gpc,
            units: lp.units as usize,
            shared,
            sv: lp.summary_vectors as usize,
            split_k: lp.split_k as usize,
            mask_words: lp.mask_words as usize,
            head_tiles: lp.head_tiles as usize,
            window_chunks: lp.window_chunks as usize,
            cap_chunks,
            cap_groups: cap_chunks * gpc,
            kce,
            kge,
            ucap: if shared { kge } else { spec.gqa() * kge },
            part_slots: cap.n_slots / (cap.batch * kvh).max(1),
        }
    }

    /// The layout of a route `extra_chunks` and `extra_groups` wider than this one's (per routing unit,
    /// each capped as [`Layout::of`] caps the spec's): a [`super::PrefetchLane`]'s wider route. The
    /// kernels take the budgets at run time; `top_groups` (the spec's) bounds the list searches.
    pub fn widened(&self, extra_chunks: usize, extra_groups: usize, top_groups: usize) -> Result<Layout, CudaError> {
        let kce = self.kce.saturating_add(extra_chunks).min(self.cap_chunks);
        let kge = self.kge.saturating_add(extra_groups).min(kce * self.gpc);
        let most = max_group_budget(top_groups);
        if kge > most {
            return Err(CudaError::Invalid {
                field: "extra_groups",
                value: extra_groups.to_string(),
                rule: format!(
                    "the widened group budget ({} + {extra_groups}) must be at most {most} (twice the largest power of two \
                     in the spec's top_groups, {top_groups})",
                    self.kge
                ),
            });
        }
        let units_per_kv_head = self.ucap / self.kge.max(1);
        Ok(Layout { kce, kge, ucap: units_per_kv_head * kge, ..*self })
    }

    /// Typed errors for a capacity the kernels cannot serve.
    pub fn check(&self, cap: Capacity) -> Result<(), CudaError> {
        let invalid = |field, value: usize, rule: String| CudaError::Invalid { field, value: value.to_string(), rule };
        if self.bsz == 0 || self.bsz > 65535 {
            return Err(invalid("batch", self.bsz, "must be in 1..=65535".into()));
        }
        if cap.max_context == 0 || cap.max_context > (1 << 28) {
            return Err(invalid("max_context", cap.max_context, "must be in 1..=2^28".into()));
        }
        let need = self.bsz * self.kvh * self.ucap;
        if cap.n_slots < need || cap.n_slots > i32::MAX as usize {
            return Err(invalid(
                "n_slots",
                cap.n_slots,
                format!("must be >= batch × kv_heads × opened groups per KV head = {need}"),
            ));
        }
        let flat = self.bsz * self.kvh * self.cap_groups;
        if (flat * 2 * self.group * self.d) as u128 > i64::MAX as u128 || need > i32::MAX as usize {
            return Err(invalid("max_context", cap.max_context, "too large for 32-bit union indices".into()));
        }
        Ok(())
    }

    /// Whether a KV head's opened-group lists (its routing units × the group budget) fit the resolve's
    /// shared-memory staging, so it can run inside `hga_select`.
    pub fn resolve_fuses(&self) -> bool {
        (self.units / self.kvh.max(1)) * self.kge <= hga_dsl::codegen::RESOLVE_STAGED_LISTS
    }

    /// Chunks a sequence of `len` tokens needs in the tables (the chunk of its last token included).
    pub fn chunks_for(&self, len: usize) -> usize {
        len.div_ceil(self.chunk).min(self.cap_chunks)
    }

    /// bf16 chunk summaries `[B][KVH][cap_chunks][SV·D]`.
    pub fn chunk_sum(&self) -> Table {
        Table { regions: self.bsz * self.kvh, cap: self.cap_chunks, entry: (self.sv * self.d * 2) as u64, per_chunk: 1 }
    }
    /// bf16 group summaries `[B][KVH][cap_groups][SV·D]`.
    pub fn group_sum(&self) -> Table {
        Table { entry: (self.sv * self.d * 2) as u64, ..self.group_table() }
    }
    /// Slot of each group, i32 `[B][KVH][cap_groups]`.
    pub fn slot_of(&self) -> Table {
        Table { entry: 4, ..self.group_table() }
    }
    /// Host record address of each group, u64 `[B][KVH][cap_groups]`.
    pub fn group_addr(&self) -> Table {
        Table { entry: 8, ..self.group_table() }
    }
    fn group_table(&self) -> Table {
        Table { regions: self.bsz * self.kvh, cap: self.cap_groups, entry: 0, per_chunk: self.gpc }
    }
    /// Per-step f32 chunk scores `[B][QH][cap_chunks]`.
    pub fn chunk_score(&self) -> Table {
        Table { regions: self.bsz * self.qh, cap: self.cap_chunks, entry: 4, per_chunk: 1 }
    }
    /// Per-step f32 chunk masses of shared routing `[B][KVH][cap_chunks]` (none otherwise).
    pub fn chunk_mass(&self) -> Table {
        Table {
            regions: if self.shared { self.bsz * self.kvh } else { 0 },
            cap: self.cap_chunks,
            entry: 4,
            per_chunk: 1,
        }
    }

    /// The growable tables of the batch itself, in the order chunk_sum, group_sum, slot_of, group_addr.
    pub fn batch_tables(&self) -> [Table; 4] {
        [self.chunk_sum(), self.group_sum(), self.slot_of(), self.group_addr()]
    }
    /// The growable tables of the step scratch: chunk_score, chunk_mass.
    pub fn scratch_tables(&self) -> [Table; 2] {
        [self.chunk_score(), self.chunk_mass()]
    }

    /// Bytes of the window (keys and values).
    pub fn window_bytes(&self) -> u64 {
        (2 * self.bsz * self.kvh * self.window_chunks * self.chunk * self.d * 2) as u64
    }
    /// Slot pool bytes: group records plus owner and stamp per slot.
    pub fn slot_bytes(&self) -> u64 {
        let slots = (self.bsz * self.kvh * self.part_slots) as u64;
        slots * ((2 * 2 * self.group * self.d) as u64 + 8)
    }
    /// Bytes of the batch's own per-step buffers (the ones not shared through a step scratch): pos,
    /// close, new K/V, queries, output, opened-group lists, union, partition state, error counter.
    pub fn step_bytes(&self) -> u64 {
        let (b, kvh) = (self.bsz, self.kvh);
        let elems = 2 * b * kvh * self.d + 3 * b * self.qh * self.d; // k_new, v_new, q, spec_q, out (2 bytes)
        let ints = 3 * b // pos, close, spec_pos
            + b * self.units * (self.kge + 1) // sel_group, n_sel_group
            + 2 * b * kvh * self.ucap // uni_group, uni_slot
            + 2 * b * kvh // n_uni, n_att
            + 4 * b * kvh // part_state
            + 1; // error
        (elems * 2 + ints * 4) as u64
    }
    /// Bytes of the plain (not growable) buffers of the step scratch.
    pub fn scratch_plain_bytes(&self) -> u64 {
        self.scratch_plain().iter().map(|&(_, n)| n as u64 * 4).sum()
    }
    /// The plain buffers of the step scratch: (name, 4-byte elements), each at least 1.
    pub fn scratch_plain(&self) -> [(&'static str, usize); 10] {
        let (b, kvh, kg) = (self.bsz, self.kvh, self.kce * self.gpc);
        [
            ("group_cand", b * self.units * kg),
            ("group_score", b * self.qh * kg),
            ("group_mass", if self.shared { b * kvh * kg } else { 1 }),
            ("sel_chunk", b * self.units * self.kce),
            ("n_sel_chunk", b * self.units),
            ("uni_mask", b * kvh * self.ucap * self.mask_words),
            ("miss_list", b * kvh * self.ucap),
            ("part_ml", b * self.qh * self.split_k * 2),
            ("part_acc", b * self.qh * self.split_k * self.d),
            // hga_attend's split counters, then hga_select's unit counters (fused resolve).
            ("done", b * kvh * (self.head_tiles + 1)),
        ]
        .map(|(n, x)| (n, x.max(1)))
    }
}

/// One growable table `[regions][cap][entry bytes]`, where region `r` belongs to row
/// `r / (regions / rows)` and a row of `n` chunks uses the first `n · per_chunk` entries of each of
/// its regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Table {
    pub regions: usize,
    pub cap: usize,
    pub entry: u64,
    pub per_chunk: usize,
}

impl Table {
    /// Bytes of the whole table.
    pub fn bytes(&self) -> u64 {
        self.regions as u64 * self.cap as u64 * self.entry
    }
    /// Regions per row of a batch of `rows` rows.
    pub fn regions_per_row(&self, rows: usize) -> usize {
        self.regions / rows.max(1)
    }
    /// Bytes region `region` uses for `chunks` chunks.
    pub fn range(&self, region: usize, chunks: usize) -> Range<u64> {
        let start = region as u64 * self.cap as u64 * self.entry;
        start..start + (chunks * self.per_chunk).min(self.cap) as u64 * self.entry
    }
    /// The byte ranges of row `row` (of `rows`) for `chunks` chunks, ascending.
    pub fn row_ranges(&self, rows: usize, row: usize, chunks: usize) -> impl Iterator<Item = Range<u64>> + '_ {
        let per = self.regions_per_row(rows);
        (row * per..(row + 1) * per).map(move |r| self.range(r, chunks))
    }
    /// Bytes of all regions of row `row` (of `rows`).
    pub fn row_span(&self, rows: usize, row: usize) -> Range<u64> {
        let per = self.regions_per_row(rows);
        self.range(row * per, 0).start..self.range((row + 1) * per, 0).start
    }
    /// Bytes mapped (whole pages of `page` bytes) when row `i` uses `chunks[i]` chunks.
    pub fn committed(&self, chunks: &[usize], page: u64) -> u64 {
        let rows = chunks.len();
        let ranges = (0..rows).flat_map(|i| self.row_ranges(rows, i, chunks[i]).collect::<Vec<_>>());
        super::vmm::pages_covering(ranges, page) * page
    }
    /// Bytes of address space reserved (the table rounded up to whole pages).
    pub fn reserved(&self, page: u64) -> u64 {
        self.bytes().div_ceil(page) * page
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hga_dsl::{presets, Spec};

    fn qwen(cap: Capacity) -> Layout {
        let spec = Spec::new(presets::find("qwen3-30b").unwrap().shape).validate().unwrap();
        Layout::of(&spec, &hga_dsl::codegen::launch_params(&spec), cap)
    }

    #[test]
    fn union_slots_are_the_batches_union_capacity_capped_by_the_context() {
        let spec = Spec::new(presets::find("qwen3-30b").unwrap().shape).validate().unwrap();
        let w = Widening { extra_chunks: 8, extra_groups: 32 };
        // 8 query heads per KV head, 32 groups each; widened 64.
        assert_eq!(union_slots(&spec, 1 << 16, Widening::default()).unwrap(), 256);
        assert_eq!(union_slots(&spec, 1 << 16, w).unwrap(), 512);
        // 256 tokens: 4 chunks of 4 groups cap both at 16 per head.
        assert_eq!(union_slots(&spec, 256, w).unwrap(), 128);
        let cap = Capacity { batch: 3, max_context: 1 << 20, n_slots: 0 };
        assert_eq!(union_slots(&spec, 1 << 20, Widening::default()).unwrap(), qwen(cap).ucap);
        // Past what the kernels' list searches serve: the typed error of the widening.
        let e = union_slots(&spec, 1 << 16, Widening { extra_chunks: 8, extra_groups: 33 }).unwrap_err();
        assert!(matches!(e, CudaError::Invalid { field: "extra_groups", .. }), "{e}");
    }

    #[test]
    fn a_widened_route_grows_the_budgets_and_the_union_and_nothing_else() {
        let cap = Capacity { batch: 2, max_context: 1 << 16, n_slots: 2 * 4 * 512 };
        let l = qwen(cap);
        assert_eq!((l.kce, l.kge, l.ucap), (16, 32, 8 * 32));
        let w = l.widened(8, 32, 32).unwrap();
        assert_eq!((w.kce, w.kge, w.ucap), (24, 64, 8 * 64));
        assert_eq!(Layout { kce: l.kce, kge: l.kge, ucap: l.ucap, ..w }, l);
        w.check(cap).unwrap();
        assert!(w.resolve_fuses());
        // No widening is the same layout.
        assert_eq!(l.widened(0, 0, 32).unwrap(), l);
    }

    #[test]
    fn widening_past_the_list_searches_or_the_partitions_is_refused() {
        let cap = Capacity { batch: 1, max_context: 1 << 16, n_slots: 4 * 512 };
        let l = qwen(cap);
        match l.widened(8, 33, 32) {
            Err(CudaError::Invalid { field: "extra_groups", .. }) => {}
            other => panic!("expected an extra_groups error, got {other:?}"),
        }
        // 8 heads × 48 groups fit a partition of 512 slots; the check names n_slots when they do not.
        let w = l.widened(4, 16, 32).unwrap();
        w.check(cap).unwrap();
        let small = Capacity { n_slots: 4 * 300, ..cap };
        match w.check(small) {
            Err(CudaError::Invalid { field: "n_slots", .. }) => {}
            other => panic!("expected an n_slots error, got {other:?}"),
        }
        // Budgets stay capped by the context: 4 chunks of candidates at most.
        let tiny = qwen(Capacity { batch: 1, max_context: 256, n_slots: 4 * 128 });
        let t = tiny.widened(8, 32, 32).unwrap();
        assert_eq!((t.kce, t.kge), (4, 16));
    }
}
