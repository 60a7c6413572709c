//! Host records, block appends and checked decode steps shared by the GPU tests of growing batches.

use super::{random_bf16, rel_err, Row};
use half::bf16;
use hga_dsl::ValidSpec;
use hga_runtime::cpu::HeadLayout;
use hga_runtime::cuda::DecodeBatch;
use hga_runtime::offload::PinnedBuffer;
use rand::rngs::StdRng;
use rand::Rng;

/// Host records of one batch: per row a pinned buffer `[kv_heads][groups][2][group][d]`, and the groups
/// whose addresses the batch has.
pub struct Records {
    pub bufs: Vec<PinnedBuffer>,
    set: Vec<usize>,
    groups: Vec<usize>,
    rec: usize,
}

impl Records {
    pub fn new(gpu: &hga_runtime::cuda::Gpu, spec: &ValidSpec, tokens: &[usize]) -> Records {
        let (g, d, kvh) = (spec.routing().group as usize, spec.head_dim(), spec.model().kv_heads as usize);
        let groups: Vec<usize> = tokens.iter().map(|t| t.div_ceil(g)).collect();
        let bufs = groups.iter().map(|&n| PinnedBuffer::new(gpu, kvh * n * 2 * g * d).unwrap()).collect();
        Records { bufs, set: vec![0; tokens.len()], groups, rec: 2 * g * d }
    }

    /// Gives `batch` the addresses of row `row`'s groups up to the one of token `len - 1`.
    pub fn cover(&mut self, batch: &mut DecodeBatch, row: usize, len: usize, kvh: usize, g: usize) {
        let want = len.div_ceil(g);
        assert!(want <= self.groups[row]);
        if want <= self.set[row] {
            return;
        }
        let base = self.bufs[row].device_addr();
        for h in 0..kvh {
            let addrs: Vec<u64> =
                (self.set[row]..want).map(|gi| base + ((h * self.groups[row] + gi) * self.rec * 2) as u64).collect();
            // SAFETY: the pinned buffers outlive the batch and hold these records.
            unsafe { batch.set_group_addrs(row, h, self.set[row], &addrs) }.unwrap();
        }
        self.set[row] = want;
    }
}

/// Appends tokens `from..to` of `row` to each batch in the blocks `blocks` (sizes), with their records.
pub fn append(
    batches: &mut [(&mut DecodeBatch, &mut Records)],
    r: usize,
    row: &Row,
    from: usize,
    blocks: &[usize],
    spec: &ValidSpec,
) {
    let (kvh, d, g) = (spec.model().kv_heads as usize, spec.head_dim(), spec.routing().group as usize);
    let w = kvh * d;
    let mut p = from;
    for &n in blocks {
        for (b, recs) in batches.iter_mut() {
            recs.cover(b, r, p + n, kvh, g);
            b.append_block(r, p, &row.k_bits[p * w..(p + n) * w], &row.v_bits[p * w..(p + n) * w]).unwrap();
        }
        p += n;
    }
}

/// Random block sizes summing to `n`.
pub fn blocks(rng: &mut StdRng, n: usize, max: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut left = n;
    while left > 0 {
        let b = rng.random_range(1..=max).min(left);
        out.push(b);
        left -= b;
    }
    out
}

/// One decode step of `rows` (active where `active[i]`) on every batch of `batches` with a random query
/// (bits and values, drawn before the step: [`next_query`]); returns their outputs and checks the active
/// rows against the CPU (which gets the new token).
pub fn decode(
    batches: &mut [(&mut DecodeBatch, &mut Records)],
    rows: &mut [Row],
    active: &[bool],
    q: &(Vec<u16>, Vec<f32>),
    spec: &ValidSpec,
) -> Vec<Vec<u16>> {
    decode_with(batches, rows, active, q, spec, |_, _| {})
}

/// [`decode`], calling `before_step(i, batch)` for batch `i` after its positions and queries are set,
/// right before its step's launches (nothing joined in between).
pub fn decode_with(
    batches: &mut [(&mut DecodeBatch, &mut Records)],
    rows: &mut [Row],
    active: &[bool],
    (q_bits, q): &(Vec<u16>, Vec<f32>),
    spec: &ValidSpec,
    mut before_step: impl FnMut(usize, &mut DecodeBatch),
) -> Vec<Vec<u16>> {
    let l = HeadLayout::of(spec);
    let (kvh, d, qh, g) = (l.kv_heads, l.head_dim, l.q_heads, spec.routing().group as usize);
    let w = kvh * d;
    let n = rows.len();
    let mut k_new = vec![0u16; n * w];
    let mut v_new = k_new.clone();
    let mut pos = vec![None; n];
    for (i, row) in rows.iter_mut().enumerate() {
        if !active[i] {
            continue;
        }
        let t = row.len * w..(row.len + 1) * w;
        k_new[i * w..(i + 1) * w].copy_from_slice(&row.k_bits[t.clone()]);
        v_new[i * w..(i + 1) * w].copy_from_slice(&row.v_bits[t.clone()]);
        row.cpu.append(&row.k[t.clone()], &row.v[t]).unwrap();
        pos[i] = Some(row.len as u32);
        row.len += 1;
    }
    let mut outs = Vec::new();
    for (bi, (b, recs)) in batches.iter_mut().enumerate() {
        for (i, row) in rows.iter().enumerate() {
            if active[i] {
                recs.cover(b, i, row.len, kvh, g);
            }
        }
        b.set_rows(&pos).unwrap();
        b.upload_q(q_bits).unwrap();
        b.poison_output().unwrap();
        before_step(bi, b);
        b.step(&k_new, &v_new).unwrap();
        outs.push(b.output().unwrap());
    }
    let out = &outs[0];
    for (i, row) in rows.iter().enumerate() {
        let o = &out[i * qh * d..(i + 1) * qh * d];
        if !active[i] {
            assert!(o.iter().all(|&x| x == 0xFFFF), "inactive row {i} output written");
            continue;
        }
        let mut want = vec![0f32; qh * d];
        row.cpu.attend(&q[i * qh * d..(i + 1) * qh * d], row.len - 1, &mut want).unwrap();
        let got: Vec<f32> = o.iter().map(|&b| bf16::from_bits(b).to_f32()).collect();
        let e = rel_err(&got, &want);
        assert!(e < 1e-2, "row {i} at {}: rel err {e:e} against the CPU", row.len - 1);
    }
    outs
}

/// A random query for every row of `spec` (`[rows][q_heads][d]`): bits and values.
pub fn next_query(rng: &mut StdRng, rows: usize, spec: &ValidSpec) -> (Vec<u16>, Vec<f32>) {
    random_bf16(rng, rows * spec.model().q_heads as usize * spec.head_dim(), 1.0)
}
