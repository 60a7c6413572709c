//! The working-set index: hit/miss/evict sequences, capacity limits, no slot handed out twice, groups of
//! the current step never evicted; random steps against a plain LRU model.

use hga_runtime::offload::{GroupKey, Placement, SlotPool};
use hga_runtime::RuntimeError;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};

fn key(group: u32) -> GroupKey {
    GroupKey { layer: 0, seq: 1, kv_head: 0, group }
}

#[test]
fn hit_miss_evict_by_hand() {
    let mut p = SlotPool::new(3).unwrap();
    let (a, b, c, d) = (key(0), key(1), key(2), key(3));
    let s = p.place_step(&[a, b]).unwrap();
    assert!(matches!(s[..], [Placement::Miss { evicted: None, .. }, Placement::Miss { evicted: None, .. }]));
    assert_ne!(s[0].slot(), s[1].slot());
    assert_eq!(p.place_step(&[a]).unwrap(), vec![Placement::Hit(s[0].slot())]);
    let sc = p.place_step(&[c]).unwrap()[0];
    assert!(matches!(sc, Placement::Miss { evicted: None, .. }));
    // Full: d evicts the least recently used, b (step 1); a was used in step 2, c in step 3.
    assert_eq!(p.place_step(&[d]).unwrap(), vec![Placement::Miss { slot: s[1].slot(), evicted: Some(b) }]);
    // a hits and is pinned; b evicts c (LRU), then c must evict d, not the pinned a or b.
    let step = p.place_step(&[a, b, c]).unwrap();
    assert_eq!(step[0], Placement::Hit(s[0].slot()));
    assert_eq!(step[1], Placement::Miss { slot: sc.slot(), evicted: Some(c) });
    assert_eq!(step[2], Placement::Miss { slot: s[1].slot(), evicted: Some(d) });
    assert_eq!(p.occupied(), 3);
    // A repeated key in one step gets one slot.
    let rep = p.place_step(&[b, b]).unwrap();
    assert_eq!(rep, vec![Placement::Hit(sc.slot()), Placement::Hit(sc.slot())]);
}

#[test]
fn capacity_is_a_typed_error_and_changes_nothing() {
    let mut p = SlotPool::new(3).unwrap();
    p.place_step(&[key(0), key(1), key(2)]).unwrap();
    p.place_step(&[key(1)]).unwrap();
    let order = p.lru_order();
    assert_eq!(
        p.place_step(&[key(5), key(6), key(7), key(8), key(5)]).unwrap_err(),
        RuntimeError::CapacityExceeded { field: "working-set slots", requested: 4, limit: 3 }
    );
    assert_eq!(p.lru_order(), order);
    assert!((0..3).all(|g| p.lookup(&key(g)).is_some()));
    assert!(p.lookup(&key(5)).is_none());
    // Exactly the capacity is fine, and evicts everything older.
    let s = p.place_step(&[key(5), key(6), key(7)]).unwrap();
    assert!(s.iter().all(|x| matches!(x, Placement::Miss { evicted: Some(_), .. })));
    assert!(matches!(SlotPool::new(0), Err(RuntimeError::InvalidConfig { field: "slots", .. })));
}

#[test]
fn remove_sequence_frees_its_slots() {
    let mut p = SlotPool::new(4).unwrap();
    let other = GroupKey { seq: 2, ..key(9) };
    p.place_step(&[key(0), other, key(1)]).unwrap();
    p.remove_sequence(1);
    assert_eq!(p.occupied(), 1);
    assert_eq!(p.lru_order(), vec![p.lookup(&other).unwrap()]);
    // Freed slots are handed out before anything is evicted.
    let s = p.place_step(&[key(3), key(4), key(5)]).unwrap();
    assert!(s.iter().all(|x| matches!(x, Placement::Miss { evicted: None, .. })));
    assert!(p.lookup(&other).is_some());
}

/// Plain LRU: keys from least to most recently used.
struct Model {
    order: Vec<GroupKey>,
    capacity: usize,
}

#[test]
fn random_steps_match_an_lru_model() {
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _round in 0..20 {
        let capacity = rng.random_range(1..40);
        let universe = rng.random_range(1..120u32);
        let mut pool = SlotPool::new(capacity).unwrap();
        let mut model = Model { order: Vec::new(), capacity };
        let mut slot_of: HashMap<GroupKey, u32> = HashMap::new();
        for _step in 0..300 {
            let n = rng.random_range(0..capacity + 3);
            // Correlated steps: mostly a narrow moving window of groups, sometimes far ones.
            let centre = rng.random_range(0..universe);
            let keys: Vec<GroupKey> = (0..n)
                .map(|_| {
                    let g = if rng.random_bool(0.8) {
                        centre + rng.random_range(0..8)
                    } else {
                        rng.random_range(0..universe)
                    };
                    GroupKey { layer: g % 2, seq: (g % 3) as u64, kv_head: g % 4, group: g }
                })
                .collect();
            let distinct: HashSet<GroupKey> = keys.iter().copied().collect();
            let before = pool.lru_order();
            let result = pool.place_step(&keys);
            if distinct.len() > capacity {
                assert!(matches!(result, Err(RuntimeError::CapacityExceeded { .. })));
                assert_eq!(pool.lru_order(), before);
                continue;
            }
            let placed = result.unwrap();
            let mut pinned = HashSet::new();
            for (k, p) in keys.iter().zip(&placed) {
                let resident = model.order.iter().position(|x| x == k);
                match (resident, p) {
                    (Some(i), Placement::Hit(s)) => {
                        model.order.remove(i);
                        assert_eq!(slot_of[k], *s, "a hit is where the group was put");
                    }
                    (None, Placement::Miss { slot, evicted }) => {
                        let want_evict = (model.order.len() == model.capacity).then(|| model.order.remove(0));
                        assert_eq!(*evicted, want_evict, "LRU victim");
                        if let Some(e) = evicted {
                            assert!(!pinned.contains(e), "evicted a group of the current step");
                            assert_eq!(slot_of.remove(e), Some(*slot), "the victim's slot is reused");
                        }
                        assert!(!slot_of.values().any(|s| s == slot), "slot {slot} handed out twice");
                        slot_of.insert(*k, *slot);
                    }
                    other => panic!("model and pool disagree on {k:?}: {other:?}"),
                }
                model.order.push(*k);
                pinned.insert(*k);
            }
            // Every group of the step is resident where it was placed; the index is a bijection.
            for (k, p) in keys.iter().zip(&placed) {
                assert_eq!(pool.lookup(k), Some(p.slot()));
            }
            assert_eq!(pool.occupied(), model.order.len());
            let lru: Vec<GroupKey> = pool.lru_order().iter().map(|&s| pool.owner(s).unwrap()).collect();
            assert_eq!(lru, model.order);
        }
    }
}
