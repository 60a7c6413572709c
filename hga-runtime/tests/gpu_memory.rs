//! GPU memory of a [`DecodeBatch`], on the GPU: growable summary and group tables (pages mapped as rows
//! grow) give the same state and outputs, bit for bit, as tables mapped whole at creation, and the
//! bytes they commit are [`StateBytes`]'s figures; batches sharing one [`StepScratch`], used alternately,
//! give the same outputs and telemetry as batches with their own; growth past `max_context` and out of
//! GPU memory are typed errors that leave the batch as it was. Random bf16 tokens, checked against the
//! CPU backend too. Skips with "SKIPPED: ..." without a GPU; fails instead when HGA_REQUIRE_GPU=1.

mod common;
use common::records::{append, blocks, decode, next_query, Records};
use common::{gpu_or_skip, rng, Row};

use hga_dsl::{ModelShape, Spec, ValidSpec};
use hga_runtime::cuda::{Capacity, CudaError, DecodeBatch, DecodeKernels, StateBytes, StepScratch};
use rand::Rng;
use std::sync::Mutex;

/// The tests map a lot of device memory (one of them all of it): one at a time.
static GPU: Mutex<()> = Mutex::new(());

fn spec() -> ValidSpec {
    Spec::new(ModelShape::new(8, 2, 128, 1e6)).validate().unwrap()
}

fn ucap(spec: &ValidSpec) -> usize {
    spec.gqa() * spec.routing().top_groups as usize
}

#[test]
fn grown_tables_match_tables_mapped_whole_bit_for_bit() {
    let _one = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let Some((gpu, jit)) = gpu_or_skip() else { return };
    let mut rng = rng();
    let spec = spec();
    let (kvh, c) = (spec.model().kv_heads as usize, spec.routing().chunk as usize);
    let kernels = DecodeKernels::load(&gpu, &jit, &spec).unwrap();
    // Group summaries of a (row, KV head) are 4 MiB apart; a 2 MiB page holds 8192 groups = 131072
    // tokens, so row 0 crosses into its second page during the decode steps.
    let max_context = 1 << 18;
    let cap = Capacity { batch: 2, max_context, n_slots: 2 * kvh * ucap(&spec) * 2 };
    let steps = 72;
    let starts = [131072 - 40 - rng.random_range(0..20), 3000 + rng.random_range(0..3000)];
    let totals: Vec<usize> = starts.iter().map(|s| s + steps).collect();
    let mut rows: Vec<Row> = totals.iter().map(|&t| Row::new(&spec, t, &mut rng)).collect();

    let mut eager = DecodeBatch::new(&gpu, &kernels, cap).unwrap();
    eager.commit_all().unwrap();
    let mut grown = DecodeBatch::new(&gpu, &kernels, cap).unwrap();
    assert!((0..2).all(|r| grown.grown_chunks(r) == 0));
    let (mut rec_e, mut rec_g) = (Records::new(&gpu, &spec, &totals), Records::new(&gpu, &spec, &totals));
    let vmm = grown.uses_vmm();
    eprintln!("vmm: {vmm}, page {} bytes", grown.page_bytes());
    if vmm {
        let empty = grown.state_bytes(1);
        assert_eq!((empty.summaries, empty.tables), (0, 0), "an empty batch commits no table page");
    }
    for (i, row) in rows.iter_mut().enumerate() {
        let w = kvh * spec.head_dim();
        row.cpu.append(&row.k[..starts[i] * w], &row.v[..starts[i] * w]).unwrap();
        let bl = blocks(&mut rng, starts[i], 9000);
        append(&mut [(&mut eager, &mut rec_e), (&mut grown, &mut rec_g)], i, row, 0, &bl, &spec);
        row.len = starts[i];
    }
    let check_bytes = |b: &DecodeBatch, lens: &[usize]| {
        if b.uses_vmm() {
            let want = StateBytes::at_rows(&spec, cap, lens, 1, b.page_bytes());
            assert_eq!(b.state_bytes(1), want, "committed bytes at {lens:?}");
        }
    };
    let lens = |rows: &[Row]| rows.iter().map(|r| r.len).collect::<Vec<_>>();
    check_bytes(&grown, &lens(&rows));
    check_bytes(&eager, &[max_context; 2]);
    assert_eq!(grown.grown_chunks(0), starts[0].div_ceil(c));
    let before = grown.state_bytes(1);
    assert_eq!(grown.summaries().unwrap(), eager.summaries().unwrap(), "summary tables differ");

    for step in 0..steps {
        let active = [true, step % 3 != 1];
        let outs = decode(
            &mut [(&mut grown, &mut rec_g), (&mut eager, &mut rec_e)],
            &mut rows,
            &active,
            &next_query(&mut rng, 2, &spec),
            &spec,
        );
        assert!(outs[0] == outs[1], "step {step}: grown and eager outputs differ");
        assert_eq!(grown.union().unwrap(), eager.union().unwrap(), "step {step}: unions differ");
    }
    assert!(rows[0].len > 131072 && grown.grown_chunks(0) > 2048);
    check_bytes(&grown, &lens(&rows));
    if vmm {
        let after = grown.state_bytes(1);
        assert!(after.summaries > before.summaries, "row 0 crossed a page: {after:?} {before:?}");
        assert!(after.total() < eager.state_bytes(1).total());
    }
    assert_eq!(grown.summaries().unwrap(), eager.summaries().unwrap(), "summary tables differ after the steps");
    for r in 0..2 {
        assert!(rec_g.bufs[r].as_slice() == rec_e.bufs[r].as_slice(), "row {r}: host records differ");
    }
    assert_eq!(grown.host_record_errors().unwrap(), 0);
    assert_eq!(eager.host_record_errors().unwrap(), 0);
}

#[test]
fn batches_sharing_a_step_scratch_match_batches_with_their_own() {
    let _one = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let Some((gpu, jit)) = gpu_or_skip() else { return };
    let mut rng = rng();
    let spec = spec();
    let kvh = spec.model().kv_heads as usize;
    let kernels = DecodeKernels::load(&gpu, &jit, &spec).unwrap();
    let max_context = 16384;
    let cap = Capacity { batch: 2, max_context, n_slots: 2 * kvh * ucap(&spec) * 2 };
    let scratch = StepScratch::new(&gpu, &kernels, cap).unwrap();
    // Two layers: each a batch on the shared scratch and one with its own; the second layer's slot pool
    // differs (the scratch does not depend on it).
    let cap_b = Capacity { n_slots: 2 * kvh * ucap(&spec) * 3, ..cap };
    let mut a_sh = DecodeBatch::with_scratch(&gpu, &kernels, cap, scratch.clone()).unwrap();
    let mut b_sh = DecodeBatch::with_scratch(&gpu, &kernels, cap_b, scratch.clone()).unwrap();
    let mut a_own = DecodeBatch::new(&gpu, &kernels, cap).unwrap();
    let mut b_own = DecodeBatch::new(&gpu, &kernels, cap_b).unwrap();
    let steps = 40;
    let (a0, a1) = (5000 + rng.random_range(0..3000), 2000 + rng.random_range(0..2000));
    let starts = [[a0, a1], [a1 + 700, a0 - 900]];
    let mut layers: Vec<Vec<Row>> =
        starts.iter().map(|s| s.iter().map(|&n| Row::new(&spec, n + steps, &mut rng)).collect()).collect();
    let totals: Vec<Vec<usize>> = starts.iter().map(|s| s.iter().map(|n| n + steps).collect()).collect();
    let mut recs: Vec<Records> = (0..4).map(|i| Records::new(&gpu, &spec, &totals[i / 2])).collect();
    let w = kvh * spec.head_dim();
    {
        let [ra_sh, ra_own, rb_sh, rb_own] = &mut recs[..] else { unreachable!() };
        for (li, (x, y, rx, ry)) in
            [(&mut a_sh, &mut a_own, ra_sh, ra_own), (&mut b_sh, &mut b_own, rb_sh, rb_own)].into_iter().enumerate()
        {
            for (i, row) in layers[li].iter_mut().enumerate() {
                let n = starts[li][i];
                row.cpu.append(&row.k[..n * w], &row.v[..n * w]).unwrap();
                let bl = blocks(&mut rng, n, 3000);
                append(&mut [(&mut *x, &mut *rx), (&mut *y, &mut *ry)], i, row, 0, &bl, &spec);
                row.len = n;
            }
        }
    }
    let [ra_sh, ra_own, rb_sh, rb_own] = &mut recs[..] else { unreachable!() };
    for step in 0..steps {
        // Layer a, then layer b on the same scratch; layer b leaves row 1 out on odd steps, so the
        // scratch entries of row 1 hold layer a's values when layer b's step skips them.
        let oa = decode(
            &mut [(&mut a_sh, &mut *ra_sh), (&mut a_own, &mut *ra_own)],
            &mut layers[0],
            &[true, true],
            &next_query(&mut rng, 2, &spec),
            &spec,
        );
        let chunks_a = a_sh.selected_chunks().unwrap();
        assert_eq!(chunks_a, a_own.selected_chunks().unwrap(), "step {step}: layer a selected chunks");
        let ob = decode(
            &mut [(&mut b_sh, &mut *rb_sh), (&mut b_own, &mut *rb_own)],
            &mut layers[1],
            &[true, step % 2 == 0],
            &next_query(&mut rng, 2, &spec),
            &spec,
        );
        assert!(oa[0] == oa[1], "step {step}: layer a output differs with the shared scratch");
        assert!(ob[0] == ob[1], "step {step}: layer b output differs with the shared scratch");
        // Per-batch telemetry stays readable after the other layer ran.
        for (x, y, name) in [(&a_sh, &a_own, "a"), (&b_sh, &b_own, "b")] {
            assert_eq!(x.union().unwrap(), y.union().unwrap(), "step {step}: layer {name} union");
            assert_eq!(x.selected_groups().unwrap(), y.selected_groups().unwrap(), "step {step}: layer {name} groups");
            assert_eq!(x.attended_tokens().unwrap(), y.attended_tokens().unwrap(), "step {step}: layer {name} tokens");
            assert_eq!(x.miss_counts().unwrap(), y.miss_counts().unwrap(), "step {step}: layer {name} misses");
        }
    }
    // The scratch is counted once, split over the layers sharing it.
    let s = a_sh.state_bytes(2);
    assert_eq!(s.scratch_shared, scratch.committed_bytes());
    assert_eq!(s.scratch, scratch.committed_bytes().div_ceil(2));

    // A scratch of another capacity or stream is refused.
    let bad = |r: Result<DecodeBatch, CudaError>, what: &str| match r {
        Err(CudaError::Invalid { field: "scratch", .. }) => {}
        Err(e) => panic!("{what}: unexpected error {e}"),
        Ok(_) => panic!("{what}: accepted"),
    };
    let other_batch = StepScratch::new(&gpu, &kernels, Capacity { batch: 3, n_slots: 3 * kvh * ucap(&spec), ..cap });
    bad(DecodeBatch::with_scratch(&gpu, &kernels, cap, other_batch.unwrap()), "batch 3 scratch");
    let longer = StepScratch::new(&gpu, &kernels, Capacity { max_context: 2 * max_context, ..cap }).unwrap();
    bad(DecodeBatch::with_scratch(&gpu, &kernels, cap, longer), "longer scratch");
    let other_gpu = hga_runtime::cuda::Gpu::open(0).unwrap();
    bad(DecodeBatch::with_scratch(&other_gpu, &kernels, cap, scratch.clone()), "scratch of another stream");
}

#[test]
fn growth_past_max_context_or_memory_is_a_typed_error_and_changes_nothing() {
    let _one = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let Some((gpu, jit)) = gpu_or_skip() else { return };
    let mut rng = rng();
    let spec = spec();
    let kvh = spec.model().kv_heads as usize;
    let kernels = DecodeKernels::load(&gpu, &jit, &spec).unwrap();
    let max_context = 4096;
    let cap = Capacity { batch: 1, max_context, n_slots: kvh * ucap(&spec) * 2 };
    let mut batch = DecodeBatch::new(&gpu, &kernels, cap).unwrap();
    let mut recs = Records::new(&gpu, &spec, &[max_context]);
    let mut rows = vec![Row::new(&spec, max_context, &mut rng)];
    let n0 = 4000;
    let w = kvh * spec.head_dim();
    let r0 = &mut rows[0];
    r0.cpu.append(&r0.k[..n0 * w], &r0.v[..n0 * w]).unwrap();
    append(&mut [(&mut batch, &mut recs)], 0, &rows[0], 0, &[n0], &spec);
    rows[0].len = n0;
    let (grown, bytes, sums) = (batch.grown_chunks(0), batch.state_bytes(1), batch.summaries().unwrap());
    let invalid = |r: Result<(), CudaError>, field: &str| match r {
        Err(CudaError::Invalid { field: f, .. }) if f == field => {}
        other => panic!("expected an invalid {field}, got {other:?}"),
    };
    let (k, v) = (vec![0u16; 200 * w], vec![0u16; 200 * w]);
    invalid(batch.append_block(0, n0, &k, &v), "append_block");
    invalid(batch.set_rows(&[Some(max_context as u32)]), "pos");
    let cap_groups = batch.cap_chunks() * spec.groups_per_chunk();
    // SAFETY: refused before any address is stored.
    invalid(unsafe { batch.set_group_addrs(0, 0, cap_groups - 1, &[0, 0]) }, "group_addrs");
    invalid(batch.upload_close(&[batch.cap_chunks() as i32]), "close");
    assert_eq!(batch.grown_chunks(0), grown);
    assert_eq!(batch.state_bytes(1), bytes);
    assert_eq!(batch.summaries().unwrap(), sums);
    // The batch still decodes correctly.
    for _ in 0..3 {
        decode(&mut [(&mut batch, &mut recs)], &mut rows, &[true], &next_query(&mut rng, 1, &spec), &spec);
    }
    assert_eq!(batch.host_record_errors().unwrap(), 0);
    drop((batch, recs));

    // Out of GPU memory: a batch whose tables at max_context exceed the device's memory is created
    // (address space only); growing every row to max_context fails with CUDA_ERROR_OUT_OF_MEMORY and
    // maps nothing.
    let probe = DecodeBatch::new(&gpu, &kernels, cap).unwrap();
    if !probe.uses_vmm() {
        eprintln!("SKIPPED part: no VMM on this device, tables are allocated whole");
        return;
    }
    drop(probe);
    let (_, total) = gpu.context().mem_get_info().unwrap();
    let max_context = 1 << 24;
    let per_row = StateBytes::at(&spec, Capacity { batch: 1, max_context, n_slots: kvh * ucap(&spec) }, max_context, 1);
    let tables_per_row = per_row.summaries + per_row.tables;
    let rows_n = ((total as u64 * 5 / 4).div_ceil(tables_per_row) as usize).clamp(2, 65535);
    let cap = Capacity { batch: rows_n, max_context, n_slots: rows_n * kvh * ucap(&spec) };
    let mut big = DecodeBatch::new(&gpu, &kernels, cap).unwrap();
    gpu.sync().unwrap();
    let before = big.state_bytes(1);
    eprintln!(
        "{rows_n} rows of {max_context} tokens: {} GiB reserved, {} MiB committed",
        before.reserved >> 30,
        before.total() >> 20
    );
    assert!(before.reserved > total as u64);
    let (free0, _) = gpu.context().mem_get_info().unwrap();
    let e = big.set_rows(&vec![Some(max_context as u32 - 1); rows_n]).unwrap_err();
    assert!(e.to_string().contains("OUT_OF_MEMORY"), "{e}");
    assert_eq!(big.state_bytes(1), before);
    assert!((0..rows_n).all(|r| big.grown_chunks(r) == 0));
    let (free1, _) = gpu.context().mem_get_info().unwrap();
    assert!(free1 + (64 << 20) >= free0, "{} MiB not given back", (free0 - free1) >> 20);
    // Still usable: a short position maps its first pages.
    big.set_rows(&vec![Some(1000); rows_n]).unwrap();
    assert!(big.state_bytes(1).summaries > 0);
}
