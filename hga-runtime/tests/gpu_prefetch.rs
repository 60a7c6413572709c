//! Speculative prefetch ([`DecodeBatch::prefetch`] on a [`PrefetchLane`]), on the GPU: two batches hold
//! the same random bf16 context; before each step one of them prefetches with a guess of the step's
//! query (the query itself, a perturbed copy, or an unrelated one; rows sitting the prefetch out too;
//! from host memory, or from device memory with the rows' entries in another order).
//! Checks, step by step: the outputs of the two batches are equal bit for bit (and match the CPU
//! backend), the slots of every union are distinct and in the partition, an exact guess leaves the
//! step no miss unless a chunk closes between the prefetch's position and the step's, the lane's union
//! is the step's then, and (with room for both unions) the prefetching batch misses less overall; a
//! slot cache of one union makes the step evict slots the gather fills. Bad arguments are typed errors
//! that queue nothing. A lookahead ([`DecodeBatch::lookahead`], on a lane of a [`Widening`]) after each
//! step of correlated queries: outputs bit for bit again, its union holds the step's, and it saves
//! misses. Skips with "SKIPPED: ..." without a GPU; fails instead when HGA_REQUIRE_GPU=1.

mod common;
use common::records::{append, blocks, decode, decode_with, next_query, Records};
use common::{gpu_or_skip, rng, Row};

use cudarc::driver::DevicePtr;
use half::bf16;
use hga_dsl::{ModelShape, Spec, ValidSpec};
use hga_runtime::cuda::{Capacity, CudaError, DecodeBatch, DecodeKernels, LanePriority, PrefetchLane, Widening};
use rand::rngs::StdRng;
use rand::Rng;
use std::collections::BTreeSet;

fn spec() -> ValidSpec {
    Spec::new(ModelShape::new(8, 2, 128, 1e6)).validate().unwrap()
}

/// `q` mixed with fresh noise: `a·q + (1 − a)·n` (bf16 bits).
fn perturbed(rng: &mut impl Rng, q: &[f32], a: f32) -> Vec<u16> {
    q.iter().map(|&x| bf16::from_f32(a * x + (1.0 - a) * rng.random_range(-1.0f32..1.0)).to_bits()).collect()
}

fn sets(u: &[Vec<(usize, i32)>]) -> Vec<BTreeSet<usize>> {
    u.iter().map(|l| l.iter().map(|&(g, _)| g).collect()).collect()
}

/// The field a typed error names.
fn field(r: Result<(), CudaError>) -> &'static str {
    match r {
        Err(CudaError::Invalid { field, .. }) => field,
        other => panic!("expected a typed error, got {other:?}"),
    }
}

/// Rows of `totals[i]` tokens each, their first `starts[i]` appended in random blocks to both
/// batches of `pair` (and their records) and to each row's CPU cache.
fn fill_twins(
    pair: &mut [(&mut DecodeBatch, &mut Records); 2],
    spec: &ValidSpec,
    starts: &[usize],
    totals: &[usize],
    rng: &mut StdRng,
) -> Vec<Row> {
    let w = spec.model().kv_heads as usize * spec.head_dim();
    let mut rows: Vec<Row> = totals.iter().map(|&t| Row::new(spec, t, rng)).collect();
    for (i, row) in rows.iter_mut().enumerate() {
        row.cpu.append(&row.k[..starts[i] * w], &row.v[..starts[i] * w]).unwrap();
        let bl = blocks(rng, starts[i], 2500);
        append(pair, i, row, 0, &bl, spec);
        row.len = starts[i];
    }
    rows
}

#[test]
fn prefetch_changes_which_groups_hit_never_the_output() {
    run(2);
}

/// A slot cache of exactly one union per partition: the step's resolve evicts slots the prefetch's
/// gather may still be filling (the step's attention must wait for it, its route need not).
#[test]
fn prefetch_into_a_minimal_slot_cache_keeps_slots_consistent() {
    run(1);
}

/// Steps with prefetches on a batch whose slot cache holds `unions` step unions per partition.
fn run(unions: usize) {
    let Some((gpu, jit)) = gpu_or_skip() else { return };
    let mut rng = rng();
    let spec = spec();
    let (kvh, c) = (spec.model().kv_heads as usize, spec.routing().chunk as usize);
    let kernels = DecodeKernels::load(&gpu, &jit, &spec).unwrap();
    let ucap = spec.gqa() * spec.routing().top_groups as usize;
    let steps = 60;
    let starts = [6000 + rng.random_range(0..3000), 3000 + rng.random_range(0..2000)];
    // One more token than the steps: the refused prefetches are followed by a step.
    let totals: Vec<usize> = starts.iter().map(|s| s + steps + 1).collect();
    let cap = Capacity { batch: 2, max_context: 16384, n_slots: 2 * kvh * ucap * unions };
    let mut plain = DecodeBatch::new(&gpu, &kernels, cap).unwrap();
    let mut spec_b = DecodeBatch::new(&gpu, &kernels, cap).unwrap();
    let mut lane = PrefetchLane::new(&gpu, &kernels, cap).unwrap();
    assert!(lane.committed_bytes() > 0);
    let (mut rec_p, mut rec_s) = (Records::new(&gpu, &spec, &totals), Records::new(&gpu, &spec, &totals));
    let mut rows =
        fill_twins(&mut [(&mut plain, &mut rec_p), (&mut spec_b, &mut rec_s)], &spec, &starts, &totals, &mut rng);

    let (mut misses_plain, mut misses_spec, mut exact_checked) = (0, 0, 0);
    for step in 0..steps {
        let q = next_query(&mut rng, 2, &spec);
        // Exact guesses, close ones, unrelated ones; row 1 sits some prefetches out.
        let kind = step % 3;
        let guess = match kind {
            0 => q.0.clone(),
            1 => perturbed(&mut rng, &q.1, 0.8),
            _ => next_query(&mut rng, 2, &spec).0,
        };
        let positions: Vec<Option<u32>> =
            rows.iter().enumerate().map(|(i, r)| (i == 0 || step % 4 != 1).then_some(r.len as u32)).collect();
        // Every fourth step the prefetch comes right before the step's launches, after its inputs are
        // set: the step's append, summarize, chunk score and select then run beside the prefetch's
        // routing (its resolve apart, after it).
        let inside = step % 4 == 2;
        if inside {
            // Below, through decode_with.
        } else if step % 2 == 0 {
            spec_b.prefetch(&mut lane, &positions, &guess).unwrap();
        } else {
            // From device memory, entries in reverse row order (the rows that take part).
            let qrow = guess.len() / 2;
            let order: Vec<(usize, u32)> =
                positions.iter().enumerate().rev().filter_map(|(r, p)| p.map(|p| (r, p))).collect();
            let entries: Vec<u16> = order.iter().flat_map(|&(r, _)| guess[r * qrow..(r + 1) * qrow].to_vec()).collect();
            let dev = gpu.stream().clone_htod(&entries).unwrap();
            let addr = dev.device_ptr(gpu.stream()).0;
            // SAFETY: `dev` holds the entries; it is freed on its stream, the batch's, after the copy.
            unsafe { spec_b.prefetch_device(&mut lane, &order, addr) }.unwrap();
            drop(dev);
        }
        let batches = &mut [(&mut plain, &mut rec_p), (&mut spec_b, &mut rec_s)];
        let outs = decode_with(batches, &mut rows, &[true, true], &q, &spec, |i, b| {
            if inside && i == 1 {
                b.prefetch(&mut lane, &positions, &guess).unwrap();
            }
        });
        assert!(outs[0] == outs[1], "step {step}: the prefetching batch's output differs");
        let union = spec_b.union().unwrap();
        for (i, u) in union.iter().enumerate() {
            let slots: BTreeSet<i32> = u.iter().map(|&(_, s)| s).collect();
            assert_eq!(slots.len(), u.len(), "step {step}, partition {i}: a slot serves two groups");
            assert!(slots.iter().all(|&s| s >= 0 && (s as usize) < spec_b.partition_slots()), "step {step}: {slots:?}");
        }
        assert_eq!(sets(&union), sets(&plain.union().unwrap()), "step {step}: the step's own routing changed");
        let (mp, ms) = (plain.last_misses().unwrap(), spec_b.last_misses().unwrap());
        misses_plain += mp;
        misses_spec += ms;
        // The prefetch routed at pos − 1: the same candidate chunks unless the step's token closed one.
        // `len` is the step's position + 1 now.
        let closes = rows.iter().any(|r| r.len % c == 0);
        if kind == 0 && positions.iter().all(|p| p.is_some()) && !closes {
            assert_eq!(ms, 0, "step {step}: an exact guess left misses");
            let lane_union: Vec<BTreeSet<usize>> =
                lane.last_union().unwrap().into_iter().map(|l| l.into_iter().collect()).collect();
            assert_eq!(lane_union, sets(&union), "step {step}: the lane's union is not the step's");
            exact_checked += 1;
        }
    }
    eprintln!("misses: {misses_plain} without prefetch, {misses_spec} with; {exact_checked} exact steps checked");
    assert!(exact_checked >= 10);
    // With room for the prefetch's union and the step's, the guesses save misses.
    if unions >= 2 {
        assert!(misses_spec < misses_plain, "prefetch did not reduce misses: {misses_spec} vs {misses_plain}");
    }
    assert_eq!(spec_b.host_record_errors().unwrap(), 0);

    // Bad arguments: typed errors, nothing queued (the batch still decodes like its twin).
    let pos: Vec<Option<u32>> = rows.iter().map(|r| Some(r.len as u32)).collect();
    let q = next_query(&mut rng, 2, &spec);
    assert_eq!(field(spec_b.prefetch(&mut lane, &pos[..1], &q.0)), "positions");
    assert_eq!(field(spec_b.prefetch(&mut lane, &pos, &q.0[1..])), "q");
    let far = vec![Some(rows[0].len as u32 + 200), None];
    assert_eq!(field(spec_b.prefetch(&mut lane, &far, &q.0)), "positions");
    let dup = [(0usize, pos[0].unwrap()), (0, pos[0].unwrap())];
    // SAFETY: refused before anything is queued (the address is never read).
    assert_eq!(field(unsafe { spec_b.prefetch_device(&mut lane, &dup, 0) }), "rows");
    let mut other = PrefetchLane::new(&gpu, &kernels, Capacity { max_context: 8192, ..cap }).unwrap();
    assert_eq!(field(spec_b.prefetch(&mut other, &pos, &q.0)), "scratch");
    let outs = decode(&mut [(&mut plain, &mut rec_p), (&mut spec_b, &mut rec_s)], &mut rows, &[true, true], &q, &spec);
    assert!(outs[0] == outs[1], "output differs after refused prefetches");
    // Between a step's resolve and its attention a prefetch could evict the slots the attention is
    // about to fill: refused.
    spec_b.launch_route().unwrap();
    spec_b.launch_fetch().unwrap();
    let pos: Vec<Option<u32>> = rows.iter().map(|r| Some(r.len as u32 - 1)).collect();
    assert_eq!(field(spec_b.prefetch(&mut lane, &pos, &q.0)), "step");
    spec_b.launch_attend().unwrap();
    spec_b.prefetch(&mut lane, &pos, &q.0).unwrap();
    spec_b.join_prefetch().unwrap();
}

/// A lookahead after every step (the step's own queries routed 4 chunks and 16 groups wider per query
/// head) while the queries drift as a decoder's do: the outputs stay bit for bit, the step's routing is
/// unchanged, the wider union holds the step's, and the next steps miss less than the twin's.
#[test]
fn lookahead_reads_the_runners_up_and_never_changes_the_output() {
    let Some((gpu, jit)) = gpu_or_skip() else { return };
    let mut rng = rng();
    let spec = spec();
    let kvh = spec.model().kv_heads as usize;
    let kernels = DecodeKernels::load(&gpu, &jit, &spec).unwrap();
    let widening = Widening { extra_chunks: 4, extra_groups: 16 };
    let wide_ucap = spec.gqa() * (spec.routing().top_groups as usize + 16);
    let steps = 48;
    let starts = [5000 + rng.random_range(0..3000), 9000 + rng.random_range(0..3000)];
    let totals: Vec<usize> = starts.iter().map(|s| s + steps).collect();
    let cap = Capacity { batch: 2, max_context: 16384, n_slots: 2 * kvh * wide_ucap * 2 };
    let mut plain = DecodeBatch::new(&gpu, &kernels, cap).unwrap();
    let mut look = DecodeBatch::new(&gpu, &kernels, cap).unwrap();
    let mut lane = PrefetchLane::with_options(&gpu, &kernels, cap, LanePriority::Highest, widening).unwrap();
    assert_eq!(lane.widening(), widening);
    let (mut rec_p, mut rec_l) = (Records::new(&gpu, &spec, &totals), Records::new(&gpu, &spec, &totals));
    let mut rows =
        fill_twins(&mut [(&mut plain, &mut rec_p), (&mut look, &mut rec_l)], &spec, &starts, &totals, &mut rng);
    // A lane as wide as the step would open nothing new; a budget past the list searches is refused.
    let mut narrow = PrefetchLane::new(&gpu, &kernels, cap).unwrap();
    assert_eq!(field(look.lookahead(&mut narrow)), "lane");
    let too_wide = Widening { extra_chunks: 8, extra_groups: 33 };
    match PrefetchLane::with_options(&gpu, &kernels, cap, LanePriority::Highest, too_wide) {
        Err(CudaError::Invalid { field: "extra_groups", .. }) => {}
        other => panic!("expected an extra_groups error, got {other:?}"),
    }

    // Queries drift: each head's query is 0.9 of the last plus 0.1 of fresh noise.
    let mut q = next_query(&mut rng, 2, &spec);
    let (mut misses_plain, mut misses_look) = (0, 0);
    for step in 0..steps {
        let bits = perturbed(&mut rng, &q.1, 0.9);
        let vals: Vec<f32> = bits.iter().map(|&b| bf16::from_bits(b).to_f32()).collect();
        q = (bits, vals);
        let outs =
            decode(&mut [(&mut plain, &mut rec_p), (&mut look, &mut rec_l)], &mut rows, &[true, true], &q, &spec);
        assert!(outs[0] == outs[1], "step {step}: the looking-ahead batch's output differs");
        let union = look.union().unwrap();
        assert_eq!(sets(&union), sets(&plain.union().unwrap()), "step {step}: the step's own routing changed");
        if step >= 8 {
            misses_plain += plain.last_misses().unwrap();
            misses_look += look.last_misses().unwrap();
        }
        // For the coming step: routed at this step's position with this step's queries, wider.
        look.lookahead(&mut lane).unwrap();
        let wide = lane.last_union().unwrap();
        for (i, (u, wd)) in sets(&union).iter().zip(&wide).enumerate() {
            let wd: BTreeSet<usize> = wd.iter().copied().collect();
            assert!(wd.len() > u.len(), "step {step}, partition {i}: the wider route opened no runner-up");
            assert!(u.is_subset(&wd), "step {step}, partition {i}: the wider union misses some of the step's groups");
        }
    }
    eprintln!("lookahead: {misses_plain} misses without, {misses_look} with");
    assert!(misses_look < misses_plain, "the lookahead did not reduce misses: {misses_look} vs {misses_plain}");
    assert_eq!(look.host_record_errors().unwrap(), 0);
}
