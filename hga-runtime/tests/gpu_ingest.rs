//! Block appends and inactive rows of a [`DecodeBatch`], on the GPU, against the CPU backend: random bf16
//! tokens appended in blocks of random sizes (crossing chunk and group boundaries) build the same
//! summaries as the CPU (bf16, within one rounding), the same window rows, and host records equal to the
//! tokens bit for bit (written by the kernels through the group address table); decode steps over a
//! subset of the rows match the CPU and leave the other rows' output, host records and slot cache
//! untouched; a row reset and refilled with a new sequence forgets the old one. Skips with
//! "SKIPPED: ..." without a GPU; fails instead when HGA_REQUIRE_GPU=1.

mod common;
use common::{gpu_or_skip, random_bf16, rel_err, rng, Row};

use half::bf16;
use hga_dsl::{ModelShape, Spec};
use hga_runtime::cpu::HeadLayout;
use hga_runtime::cuda::{Capacity, DecodeBatch, DecodeKernels};
use rand::rngs::StdRng;
use rand::Rng;

impl Row {
    /// Appends the next `n` tokens to the CPU cache and the GPU row in one block.
    fn append(&mut self, batch: &mut DecodeBatch, row: usize, n: usize, width: usize) {
        let r = self.len * width..(self.len + n) * width;
        self.cpu.append(&self.k[r.clone()], &self.v[r.clone()]).unwrap();
        batch.append_block(row, self.len, &self.k_bits[r.clone()], &self.v_bits[r]).unwrap();
        self.len += n;
    }
}

#[test]
fn block_appends_and_inactive_rows_match_the_cpu() {
    let Some((gpu, jit)) = gpu_or_skip() else { return };
    let mut rng = rng();
    let spec = Spec::new(ModelShape::new(8, 2, 128, 1e6)).validate().unwrap();
    let l = HeadLayout::of(&spec);
    let (kvh, d, qh) = (l.kv_heads, l.head_dim, l.q_heads);
    let r = spec.routing().clone();
    let gpc = spec.groups_per_chunk();
    let kernels = DecodeKernels::load(&gpu, &jit, &spec).unwrap();
    let lp = kernels.generated().launch.clone();
    let max_context = 4096;
    let rows_n = 3;
    let ucap = spec.gqa() * r.top_groups as usize;
    let cap = Capacity { batch: rows_n, max_context, n_slots: rows_n * kvh * ucap * 2 };
    let mut batch = DecodeBatch::new(&gpu, &kernels, cap).unwrap();
    let cap_chunks = batch.cap_chunks();
    let cap_groups = cap_chunks * gpc;
    batch.use_pinned_host_store(&vec![0u16; batch.host_store_len()]).unwrap();
    let width = kvh * d;
    let steps = 24;

    // Rows 0 and 2 get sequences appended in blocks of random sizes; row 1 stays empty.
    let mut rows: Vec<Option<Row>> = (0..rows_n).map(|_| None).collect();
    for (i, target) in [(0usize, 2000 + rng.random_range(0..900)), (2, 1200 + rng.random_range(0..900))] {
        let mut row = Row::new(&spec, target + steps, &mut rng);
        while row.len < target {
            let n = rng.random_range(1..=300).min(target - row.len);
            row.append(&mut batch, i, n, width);
        }
        rows[i] = Some(row);
    }
    check_state(&batch, &rows, &spec, cap_groups, lp.window_chunks as usize);

    // Decode steps over subsets of the rows; the others sit out.
    let decode = |batch: &mut DecodeBatch, rows: &mut Vec<Option<Row>>, rng: &mut StdRng, step: usize| {
        let active: Vec<bool> = (0..rows_n).map(|i| rows[i].is_some() && (i != 2 || step % 3 != 1)).collect();
        let pos: Vec<Option<u32>> =
            (0..rows_n).map(|i| active[i].then(|| rows[i].as_ref().unwrap().len as u32)).collect();
        let (q_bits, q) = random_bf16(rng, rows_n * qh * d, 1.0);
        let mut k_new = vec![0u16; rows_n * width];
        let mut v_new = k_new.clone();
        for (i, row) in rows.iter_mut().enumerate() {
            let Some(row) = row.as_mut().filter(|_| active[i]) else { continue };
            let t = row.len * width..(row.len + 1) * width;
            k_new[i * width..(i + 1) * width].copy_from_slice(&row.k_bits[t.clone()]);
            v_new[i * width..(i + 1) * width].copy_from_slice(&row.v_bits[t.clone()]);
            row.cpu.append(&row.k[t.clone()], &row.v[t]).unwrap();
            row.len += 1;
        }
        batch.set_rows(&pos).unwrap();
        batch.upload_q(&q_bits).unwrap();
        batch.poison_output().unwrap();
        batch.step(&k_new, &v_new).unwrap();
        let out = batch.output().unwrap();
        for (i, row) in rows.iter().enumerate() {
            let o = &out[i * qh * d..(i + 1) * qh * d];
            if !active[i] {
                assert!(o.iter().all(|&x| x == 0xFFFF), "inactive row {i} output written at step {step}");
                continue;
            }
            let row = row.as_ref().unwrap();
            let mut want = vec![0f32; qh * d];
            row.cpu.attend(&q[i * qh * d..(i + 1) * qh * d], row.len - 1, &mut want).unwrap();
            let got: Vec<f32> = o.iter().map(|&b| bf16::from_bits(b).to_f32()).collect();
            let e = rel_err(&got, &want);
            assert!(e < 1e-2, "row {i} step {step}: rel err {e:e}");
        }
    };
    for step in 0..steps / 2 {
        decode(&mut batch, &mut rows, &mut rng, step);
    }
    assert_eq!(batch.host_record_errors().unwrap(), 0);
    check_state(&batch, &rows, &spec, cap_groups, lp.window_chunks as usize);

    // Row 0 gets a new, shorter sequence: its slot partition and addresses are forgotten first.
    batch.reset_row(0).unwrap();
    let addr = batch.pinned_store_addr().unwrap().unwrap();
    let rec = batch.record_bytes();
    // Row 0's records are the first kv_heads × cap_groups of the flat store.
    let addrs: Vec<u64> = (0..(kvh * cap_groups) as u64).map(|gi| addr + gi * rec).collect();
    for h in 0..kvh {
        // SAFETY: the flat pinned store owned by the batch holds row 0's records at these offsets.
        unsafe { batch.set_group_addrs(0, h, 0, &addrs[h * cap_groups..(h + 1) * cap_groups]) }.unwrap();
    }
    let mut fresh = Row::new(&spec, 1500 + steps, &mut rng);
    while fresh.len < 1500 {
        let n = rng.random_range(1..=500).min(1500 - fresh.len);
        fresh.append(&mut batch, 0, n, width);
    }
    rows[0] = Some(fresh);
    for step in steps / 2..steps {
        decode(&mut batch, &mut rows, &mut rng, step);
    }
    assert_eq!(batch.host_record_errors().unwrap(), 0);
}

/// Summaries, window rows and host records of every row against its CPU cache and token stream; rows
/// without a sequence have all-zero host records.
fn check_state(batch: &DecodeBatch, rows: &[Option<Row>], spec: &hga_dsl::ValidSpec, cap_groups: usize, wc: usize) {
    let l = HeadLayout::of(spec);
    let (kvh, d) = (l.kv_heads, l.head_dim);
    let r = spec.routing();
    let (c, g, gpc) = (r.chunk as usize, r.group as usize, spec.groups_per_chunk());
    let (kf, kl) = (r.keep_first as usize, r.keep_last as usize);
    let cap_chunks = cap_groups / gpc;
    let width = d; // mixed RoPE: one vector per summary
    let (cs, gs) = batch.summaries().unwrap();
    let (wk, wv) = batch.window().unwrap();
    let store = batch.pinned_store().unwrap().unwrap();
    let rec = 2 * g * d;
    for (i, row) in rows.iter().enumerate() {
        for h in 0..kvh {
            let bk = i * kvh + h;
            let records = &store[bk * cap_groups * rec..(bk + 1) * cap_groups * rec];
            let Some(row) = row else {
                assert!(records.iter().all(|&x| x == 0), "empty row {i} has host data");
                continue;
            };
            let mut checked = 0;
            for ch in 0..row.cpu.closed_chunks() {
                let mut pairs =
                    vec![(&cs[(bk * cap_chunks + ch) * width..][..width], row.cpu.chunk_summary(h, ch).unwrap())];
                for j in 0..gpc {
                    let gi = ch * gpc + j;
                    pairs.push((&gs[(bk * cap_groups + gi) * width..][..width], row.cpu.group_summary(h, gi).unwrap()));
                }
                for (got, want) in pairs {
                    let e = rel_err(got, want);
                    assert!(e <= 4e-3, "row {i} head {h} chunk {ch}: summary rel err {e:e}");
                    checked += 1;
                }
            }
            assert!(checked > 0);
            for p in 0..row.len {
                let src = (p * kvh + h) * d;
                let kr = &records[(p / g) * rec + (p % g) * d..][..d];
                let vr = &records[(p / g) * rec + (g + p % g) * d..][..d];
                assert_eq!(kr, &row.k_bits[src..src + d], "row {i} head {h} token {p}: host key record");
                assert_eq!(vr, &row.v_bits[src..src + d], "row {i} head {h} token {p}: host value record");
            }
            // Window: sinks and the last keep_last + 1 chunks.
            let last = (row.len - 1) / c;
            for p in 0..row.len {
                let ch = p / c;
                if !(ch < kf || ch + kl >= last) {
                    continue;
                }
                let slot = if ch < kf { ch } else { kf + (ch - kf) % (kl + 1) };
                let at = (bk * wc * c + slot * c + p % c) * d;
                let src = (p * kvh + h) * d;
                assert_eq!(&wk[at..at + d], &row.k_bits[src..src + d], "row {i} head {h} token {p}: window key");
                assert_eq!(&wv[at..at + d], &row.v_bits[src..src + d], "row {i} head {h} token {p}: window value");
            }
        }
    }
}
