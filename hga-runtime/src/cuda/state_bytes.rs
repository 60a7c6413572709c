//! GPU bytes of a batch's attention state, computed from its spec and capacity without a GPU: the
//! engine's memory check and hga-bench's memory table both use it.

use super::layout::Layout;
use super::vmm::DEFAULT_PAGE_BYTES;
use super::Capacity;
use hga_dsl::ValidSpec;

/// GPU bytes of one layer's [`super::DecodeBatch`] by kind. The summary and index tables are growable
/// (address space reserved for `max_context`, pages of [`DEFAULT_PAGE_BYTES`] mapped as rows grow), so
/// they count what is committed for the given contexts; the window, slot pool and per-step buffers are
/// allocated whole. The [`super::StepScratch`] is shared by all layers of a model (they run one after
/// another on one stream): `scratch` is this layer's share of it, `scratch_shared` all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateBytes {
    /// bf16 chunk and group summary tables, committed.
    pub summaries: u64,
    /// Keys and values of the sinks, the local window and the current chunk.
    pub window: u64,
    /// The slot cache: one group record per slot, plus its owner and stamp.
    pub slots: u64,
    /// Per group its slot index and host record address, committed.
    pub tables: u64,
    /// The batch's own per-step buffers (new K/V, queries, a prefetch's guessed queries, output, the
    /// opened-group lists and union kept for telemetry, partition state).
    pub step: u64,
    /// This layer's share of the step scratch: `scratch_shared / layers`, rounded up.
    pub scratch: u64,
    /// The whole step scratch (per-step f32 chunk scores and masses, committed; candidate lists, split
    /// partials, counters), as a layer with a scratch of its own holds it.
    pub scratch_shared: u64,
    /// Address space the layer reserves: its tables for every row at `max_context` (whole pages), plus
    /// the rest and its scratch share at `max_context`; what it commits at most.
    pub reserved: u64,
}

impl StateBytes {
    /// The state at its largest: every row at `max_context`, a scratch of its own (one layer).
    pub fn of(spec: &ValidSpec, cap: Capacity) -> StateBytes {
        StateBytes::at(spec, cap, cap.max_context, 1)
    }

    /// The state committed when every row holds `context` tokens (clamped to `max_context`) and the
    /// step scratch is shared by `layers` layers (1: a scratch of its own), with the default page size.
    pub fn at(spec: &ValidSpec, cap: Capacity, context: usize, layers: usize) -> StateBytes {
        let contexts = vec![context.min(cap.max_context); cap.batch];
        StateBytes::at_rows(spec, cap, &contexts, layers, DEFAULT_PAGE_BYTES)
    }

    /// The state committed when row `i` holds `contexts[i]` tokens (the longest any of its sequences
    /// held: pages stay mapped after a row is reset), pages of `page` bytes, the scratch shared by
    /// `layers` layers. `contexts` has one entry per row (missing rows count as empty).
    pub fn at_rows(spec: &ValidSpec, cap: Capacity, contexts: &[usize], layers: usize, page: u64) -> StateBytes {
        let lp = hga_dsl::codegen::launch_params(spec);
        let l = Layout::of(spec, &lp, cap);
        let page = page.max(1);
        let layers = layers.max(1) as u64;
        let chunks: Vec<usize> = (0..cap.batch).map(|i| l.chunks_for(contexts.get(i).copied().unwrap_or(0))).collect();
        let full = vec![l.cap_chunks; cap.batch];
        let [cs, gs, so, ga] = l.batch_tables();
        let scratch_at = |chunks: &[usize]| -> u64 {
            l.scratch_tables().iter().map(|t| t.committed(chunks, page)).sum::<u64>() + l.scratch_plain_bytes()
        };
        let (window, slots, step) = (l.window_bytes(), l.slot_bytes(), l.step_bytes());
        let scratch_shared = scratch_at(&chunks);
        let reserved = [cs, gs, so, ga].iter().map(|t| t.reserved(page)).sum::<u64>()
            + window
            + slots
            + step
            + scratch_at(&full).div_ceil(layers);
        StateBytes {
            summaries: cs.committed(&chunks, page) + gs.committed(&chunks, page),
            window,
            slots,
            tables: so.committed(&chunks, page) + ga.committed(&chunks, page),
            step,
            scratch: scratch_shared.div_ceil(layers),
            scratch_shared,
            reserved,
        }
    }

    /// The layer's committed bytes, its share of the scratch included.
    pub fn total(&self) -> u64 {
        self.summaries + self.window + self.slots + self.tables + self.step + self.scratch
    }

    /// The layer's committed bytes with the whole scratch counted (a layer with its own scratch).
    pub fn unshared_total(&self) -> u64 {
        self.total() - self.scratch + self.scratch_shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hga_dsl::{presets, Spec};

    const MIB: u64 = 1 << 20;

    fn qwen() -> ValidSpec {
        Spec::new(presets::find("qwen3-30b").unwrap().shape).validate().unwrap()
    }

    #[test]
    fn qwen3_30b_at_1m_full_context() {
        let spec = qwen();
        let lp = hga_dsl::codegen::launch_params(&spec);
        let cap = Capacity { batch: 1, max_context: 1 << 20, n_slots: 2048 };
        let s = StateBytes::at(&spec, cap, 1 << 20, 48);
        // 16384 chunks and 65536 groups per KV head, 4 KV heads, one 128-dim bf16 vector each: 16 MiB
        // and 64 MiB, whole pages.
        assert_eq!(lp.summary_vectors, 1);
        assert_eq!(s.summaries, 4 * (16384 + 65536) * 128 * 2);
        // 2 sinks + 8 local + 1 current chunk of 64 tokens, keys and values.
        assert_eq!(lp.window_chunks, 11);
        assert_eq!(s.window, 2 * 4 * 11 * 64 * 128 * 2);
        assert_eq!(s.slots, 2048 * (8192 + 8));
        // slot_of: 4 × 65536 × 4 bytes = 1 MiB, one 2 MiB page; group_addr: 2 MiB.
        assert_eq!(s.tables, 2 * MIB + 2 * MIB);
        // chunk_score: 32 × 16384 × 4 bytes = 2 MiB, one page; no chunk masses (routing per query head).
        let plain = scratch_plain(&spec, &lp, 1);
        assert_eq!(s.scratch_shared, 2 * MIB + plain);
        assert_eq!(s.scratch, (2 * MIB + plain).div_ceil(48));
        assert_eq!(s.total(), s.summaries + s.window + s.slots + s.tables + s.step + s.scratch);
        assert_eq!(s.unshared_total(), s.total() - s.scratch + s.scratch_shared);
        // At max_context everything is mapped: committed = reserved.
        assert_eq!(s.reserved, s.total());
        // A scratch of its own: of() counts it whole.
        let own = StateBytes::of(&spec, cap);
        assert_eq!(own.scratch, own.scratch_shared);
        assert_eq!(own.total(), s.unshared_total());
        // Under 5% of the dense K/V (2 × 4 × 128 × 2 bytes per token) with the scratch shared by the
        // model's 48 layers (4.95%; 5.05% with a scratch per layer).
        let dense = (1u64 << 20) * 2 * 4 * 128 * 2;
        assert!(s.total() * 100 < 5 * dense, "{} of {dense}", s.total());
        assert!(s.unshared_total() > s.total());
    }

    /// Hand-computed plain scratch of qwen3-30b (per query head routing): group candidates and scores,
    /// selected chunks, union masks and misses, split partials, merge and fused-resolve counters.
    fn scratch_plain(spec: &ValidSpec, lp: &hga_dsl::codegen::LaunchParams, b: u64) -> u64 {
        let r = spec.routing();
        let (qh, kvh, d, units) = (32u64, 4u64, 128u64, lp.units as u64);
        let kce = r.top_chunks as u64;
        let kg = kce * spec.groups_per_chunk() as u64;
        let kge = (r.top_groups as u64).min(kg);
        let ucap = 8 * kge;
        let sk = lp.split_k as u64;
        4 * (b * units * kg
            + b * qh * kg
            + 1
            + b * units * kce
            + b * units
            + b * kvh * ucap * lp.mask_words as u64
            + b * kvh * ucap
            + b * qh * sk * 2
            + b * qh * sk * d
            + b * kvh * (lp.head_tiles as u64 + 1))
    }

    #[test]
    fn committed_tables_follow_the_context_page_by_page() {
        let spec = qwen();
        let cap = Capacity { batch: 1, max_context: 1 << 20, n_slots: 2048 };
        // Empty rows commit no table page.
        let e = StateBytes::at(&spec, cap, 0, 1);
        assert_eq!((e.summaries, e.tables), (0, 0));
        assert_eq!(e.scratch_shared, scratch_plain(&spec, &hga_dsl::codegen::launch_params(&spec), 1));
        // 64K tokens = 1024 chunks: chunk regions are 4 MiB apart (one 2 MiB page each, 256 KiB used),
        // group regions 16 MiB apart (1 MiB used: one page each).
        let s = StateBytes::at(&spec, cap, 65536, 1);
        assert_eq!(s.summaries, 4 * 2 * MIB + 4 * 2 * MIB);
        // slot_of regions are 256 KiB apart, 16 KiB used: all in page 0; group_addr regions 512 KiB
        // apart, 32 KiB used: pages 0 (regions 0..4 start at 0, 0.5, 1, 1.5 MiB) only.
        assert_eq!(s.tables, 2 * MIB + 2 * MIB);
        // chunk_score: 32 regions of 64 KiB, 4 KiB used each: one page.
        assert_eq!(s.scratch_shared - e.scratch_shared, 2 * MIB);
        // One more token opens chunk 1024: still inside the same pages.
        assert_eq!(StateBytes::at(&spec, cap, 65537, 1).summaries, s.summaries);
        // 3 MiB of chunk summaries per region (12288 chunks) need 2 pages per region; group summaries
        // 12 MiB: 6 pages per region.
        let t = StateBytes::at(&spec, cap, 12288 * 64, 1);
        assert_eq!(t.summaries, 4 * 2 * 2 * MIB + 4 * 6 * 2 * MIB);
        // The reservation does not depend on the context; contexts past max_context are clamped.
        assert_eq!(t.reserved, s.reserved);
        assert_eq!(StateBytes::at(&spec, cap, 1 << 30, 1), StateBytes::at(&spec, cap, 1 << 20, 1));
    }

    #[test]
    fn rows_commit_their_own_regions() {
        let spec = qwen();
        let cap = Capacity { batch: 8, max_context: 1 << 20, n_slots: 2048 };
        let one = StateBytes::at(&spec, Capacity { batch: 1, ..cap }, 1 << 20, 1);
        let all = StateBytes::at(&spec, cap, 1 << 20, 1);
        assert_eq!(all.summaries, 8 * one.summaries);
        assert_eq!(all.slots, one.slots);
        assert_eq!(all.tables, 8 * MIB + 8 * 2 * MIB);
        // Rows 0 and 5 at 64K, the others empty: twice the one-row figure of 64K for the summaries.
        let mut ctx = vec![0; 8];
        ctx[0] = 65536;
        ctx[5] = 65536;
        let two = StateBytes::at_rows(&spec, cap, &ctx, 1, DEFAULT_PAGE_BYTES);
        let single = StateBytes::at(&spec, Capacity { batch: 1, ..cap }, 65536, 1);
        assert_eq!(two.summaries, 2 * single.summaries);
        // A smaller page commits less for the same use.
        let small = StateBytes::at_rows(&spec, cap, &ctx, 1, 64 << 10);
        assert_eq!(small.summaries, 2 * 4 * (256 << 10) + 2 * 4 * MIB);
        assert!(small.total() < two.total());
    }

    #[test]
    fn regions_off_page_boundaries_commit_a_partial_page_more() {
        // max_context 1M + 1000: 16400 chunks per region, so regions are not page multiples and the 1M
        // tokens of each row's regions straddle one page more. Chunk summaries: regions of 4,198,400
        // bytes using 4 MiB each cover pages 0..=8; group summaries (16,793,600 bytes, 16 MiB used)
        // pages 0..=32; slot_of 4 × 262,400 bytes: one page; group_addr 4 × 524,800: two.
        let spec = qwen();
        let cap = Capacity { batch: 1, max_context: (1 << 20) + 1000, n_slots: 2048 };
        let s = StateBytes::at(&spec, cap, 1 << 20, 48);
        assert_eq!(s.summaries, 9 * 2 * MIB + 33 * 2 * MIB);
        assert_eq!(s.tables, 2 * MIB + 2 * 2 * MIB);
        // chunk scores: 32 regions of 65,600 bytes: two pages.
        let plain = scratch_plain(&spec, &hga_dsl::codegen::launch_params(&spec), 1);
        assert_eq!(s.scratch_shared, 2 * 2 * MIB + plain);
        let aligned = StateBytes::at(&spec, Capacity { max_context: 1 << 20, ..cap }, 1 << 20, 48);
        assert_eq!(s.total() - aligned.total(), 4 * MIB + 2 * MIB + (s.scratch - aligned.scratch));
    }
}
