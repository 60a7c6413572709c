//! The host store: group-contiguous records, arena growth without moving old records, the RAM budget
//! as a typed error that changes nothing, reuse after removal; bf16 conversion.

mod common;
use common::rng;

use hga_runtime::offload::{bf16_to_f32, f32_to_bf16, HeapSource, HostStore, RecordLayout};
use hga_runtime::RuntimeError;
use rand::Rng;
use std::collections::HashMap;

const G: usize = 4;
const D: usize = 8;
const H: usize = 3;

fn layout() -> RecordLayout {
    RecordLayout { group: G, head_dim: D }
}

/// Random non-zero element bits for `groups` groups, `[n][H][D]`.
fn tokens(rng: &mut impl Rng, groups: usize) -> Vec<u16> {
    (0..groups * G * H * D).map(|_| rng.random_range(1..=u16::MAX)).collect()
}

/// Every record of (layer, seq) against the tokens appended, element by element.
fn check(store: &HostStore<HeapSource>, layer: u32, seq: u64, k: &[u16], v: &[u16]) {
    let groups = k.len() / (G * H * D);
    assert_eq!(store.groups(layer, seq), groups);
    for grp in 0..groups {
        for h in 0..H {
            let rec = store.group(layer, seq, h, grp).expect("stored");
            assert_eq!(rec.len(), 2 * G * D);
            for t in 0..G {
                let src = ((grp * G + t) * H + h) * D;
                assert_eq!(&rec[t * D..(t + 1) * D], &k[src..src + D], "keys of group {grp} head {h} token {t}");
                assert_eq!(&rec[(G + t) * D..(G + t + 1) * D], &v[src..src + D], "values of group {grp} head {h}");
            }
        }
    }
    assert!(store.group(layer, seq, 0, groups).is_none());
    assert!(store.group(layer, seq, H, 0).is_none());
}

#[test]
fn records_are_group_contiguous_and_never_move() {
    let mut rng = rng();
    assert_eq!(RecordLayout { group: 16, head_dim: 128 }.bytes(), 8192, "4 KiB K + 4 KiB V");
    let mut store = HostStore::new(HeapSource, layout(), H, 5, u64::MAX).unwrap();
    let mut sent: HashMap<(u32, u64), (Vec<u16>, Vec<u16>)> = HashMap::new();
    let mut first_ptr = None;
    for _ in 0..60 {
        let (layer, seq) = (rng.random_range(0..2u32), rng.random_range(0..3u64));
        let n = rng.random_range(0..4);
        let (k, v) = (tokens(&mut rng, n), tokens(&mut rng, n));
        store.append_groups(layer, seq, &k, &v).unwrap();
        let e = sent.entry((layer, seq)).or_default();
        e.0.extend(&k);
        e.1.extend(&v);
        if first_ptr.is_none() && store.groups(0, 0) > 0 {
            let r = store.record_ref(0, 0, 0, 0).unwrap();
            first_ptr = Some((store.arena().record_ptr(r), store.group(0, 0, 0, 0).unwrap().to_vec()));
        }
    }
    for ((layer, seq), (k, v)) in &sent {
        check(&store, *layer, *seq, k, v);
    }
    let live: usize = sent.values().map(|(k, _)| k.len() / (G * D)).sum();
    assert_eq!(store.arena().live_records(), live);
    assert!(store.arena().reserved_bytes() >= (live * layout().bytes()) as u64);
    assert!(store.arena().reserved_bytes() < ((live + 5) * layout().bytes()) as u64, "blocks are filled");
    // The first record kept its address and contents through every later growth.
    let (ptr, data) = first_ptr.expect("sequence 0 of layer 0 got groups");
    let r = store.record_ref(0, 0, 0, 0).unwrap();
    assert_eq!(store.arena().record_ptr(r), ptr);
    assert_eq!(store.group(0, 0, 0, 0).unwrap(), &data[..]);
}

#[test]
fn budget_is_a_typed_error_and_removal_frees_records() {
    let mut rng = rng();
    let block = 4 * layout().bytes() as u64;
    let mut store = HostStore::new(HeapSource, layout(), H, 4, 3 * block).unwrap();
    let (k0, v0) = (tokens(&mut rng, 2), tokens(&mut rng, 2));
    store.append_groups(0, 7, &k0, &v0).unwrap(); // 6 records
    let (k1, v1) = (tokens(&mut rng, 2), tokens(&mut rng, 2));
    store.append_groups(1, 8, &k1, &v1).unwrap(); // 12 records = 3 blocks
    assert_eq!(store.arena().reserved_bytes(), 3 * block);
    let (k2, v2) = (tokens(&mut rng, 1), tokens(&mut rng, 1));
    assert_eq!(
        store.append_groups(0, 7, &k2, &v2).unwrap_err(),
        RuntimeError::HostOutOfMemory { requested: block, used: 3 * block, budget: 3 * block }
    );
    check(&store, 0, 7, &k0, &v0);
    check(&store, 1, 8, &k1, &v1);
    assert_eq!(store.arena().live_records(), 12);
    // Shape errors change nothing either.
    assert!(matches!(
        store.append_groups(0, 7, &k2[1..], &v2[1..]),
        Err(RuntimeError::ShapeMismatch { field: "k", .. })
    ));
    assert!(matches!(store.append_groups(0, 7, &k2, &v0), Err(RuntimeError::ShapeMismatch { field: "v", .. })));
    check(&store, 0, 7, &k0, &v0);
    // Removing a sequence frees its records; the failed append now fits without a new block.
    store.remove_sequence(8);
    assert_eq!(store.groups(1, 8), 0);
    store.append_groups(0, 7, &k2, &v2).unwrap();
    assert_eq!(store.arena().reserved_bytes(), 3 * block);
    let k = [k0, k2].concat();
    let v = [v0, v2].concat();
    check(&store, 0, 7, &k, &v);
}

#[test]
fn bf16_rounds_to_nearest_even() {
    let mut rng = rng();
    assert_eq!(f32_to_bf16(1.0), 0x3f80);
    assert_eq!(f32_to_bf16(-2.0), 0xc000);
    // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: to even (1); 1 + 3·2^-8 ties up to 1 + 2^-6.
    assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
    assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
    assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
    assert_eq!(bf16_to_f32(f32_to_bf16(f32::INFINITY)), f32::INFINITY);
    for _ in 0..100_000 {
        let x: f32 = rng.random_range(-1e6f32..1e6);
        let y = bf16_to_f32(f32_to_bf16(x));
        assert!((y - x).abs() <= x.abs() / 256.0, "{x} -> {y}");
        assert_eq!(f32_to_bf16(y), f32_to_bf16(x), "representable values round-trip");
    }
}
