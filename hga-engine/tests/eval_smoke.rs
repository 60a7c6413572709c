//! A small evaluation on real data: dense and full-budget HGA agree; a small routing budget attends a
//! fraction of the context and fetches a bounded number of groups; replaying its routed groups through
//! slot caches changes nothing else and counts misses (all policies alike when nothing is evicted).

mod common;

use hga_dsl::Routing;
use hga_engine::attention::Lookahead;
use hga_engine::eval::{evaluate, EvalConfig, Run};
use hga_engine::{AttentionKind, Model, SpeculateFrom};

#[test]
fn dense_and_full_budget_hga_agree_and_small_budgets_route() {
    let model = Model::load(&common::tiny_code()).unwrap();
    let data = std::fs::read(common::dev_data()).unwrap();
    let base = model.config().attention.clone();
    let small = Routing {
        chunk: 16,
        group: 4,
        keep_first: 1,
        keep_last: 2,
        top_chunks: 4,
        top_groups: 8,
        ..Routing::default()
    };
    let runs = vec![
        Run { name: "dense".into(), kind: AttentionKind::Dense },
        Run { name: "full".into(), kind: AttentionKind::Hga(base.with_routing(small.clone().full_budget()).unwrap()) },
        Run { name: "small".into(), kind: AttentionKind::Hga(base.with_routing(small.clone()).unwrap()) },
        // Two steps' worth of slots (gqa 4 × top 8 groups per step), and more than the 512 groups of a
        // KV head: the latter never evicts.
        Run {
            name: "replay".into(),
            kind: AttentionKind::HgaSlots {
                spec: base.with_routing(small.clone()).unwrap(),
                slots: 64,
                speculate: None,
                lookahead: None,
            },
        },
        Run {
            name: "roomy".into(),
            kind: AttentionKind::HgaSlots {
                spec: base.with_routing(small.clone()).unwrap(),
                slots: 1024,
                speculate: None,
                lookahead: None,
            },
        },
        // Speculative prefetch, from each earlier hidden state.
        Run {
            name: "speculate roomy".into(),
            kind: AttentionKind::HgaSlots {
                spec: base.with_routing(small.clone()).unwrap(),
                slots: 1024,
                speculate: Some(SpeculateFrom::LayerInput),
                lookahead: None,
            },
        },
        Run {
            name: "speculate".into(),
            kind: AttentionKind::HgaSlots {
                spec: base.with_routing(small.clone()).unwrap(),
                slots: 64,
                speculate: Some(SpeculateFrom::AfterAttention),
                lookahead: None,
            },
        },
        // Lookahead prefetch: a cache that never evicts; one whose wider unions (4 × (8 + 8) groups)
        // just fit; and a lookahead no wider than the step, which fetches nothing. The last also
        // speculates, in its own partitions.
        Run {
            name: "lookahead roomy".into(),
            kind: AttentionKind::HgaSlots {
                spec: base.with_routing(small.clone()).unwrap(),
                slots: 1024,
                speculate: None,
                lookahead: Some(Lookahead { chunks: 2, groups: 8 }),
            },
        },
        Run {
            name: "lookahead".into(),
            kind: AttentionKind::HgaSlots {
                spec: base.with_routing(small.clone()).unwrap(),
                slots: 64,
                speculate: None,
                lookahead: Some(Lookahead { chunks: 2, groups: 8 }),
            },
        },
        Run {
            name: "lookahead none".into(),
            kind: AttentionKind::HgaSlots {
                spec: base.with_routing(small).unwrap(),
                slots: 64,
                speculate: Some(SpeculateFrom::AfterAttention),
                lookahead: Some(Lookahead { chunks: 0, groups: 0 }),
            },
        },
    ];
    let cfg = EvalConfig { doc_bytes: 2048, docs: 1, first_doc: 3, block: 300 };
    let r = evaluate(&model, &data, &cfg, &runs, &mut |_| {}).unwrap();
    let (dense, full, small) = (&r.runs[0].overall, &r.runs[1].overall, &r.runs[2].overall);
    println!("dense {dense:?}\nfull {full:?}\nsmall {small:?}");
    assert_eq!(dense.tokens, 2047);
    assert!(dense.nll.is_finite() && dense.nll > 0.1 && dense.nll < 3.0, "dense NLL {}", dense.nll);
    assert!((dense.nll - full.nll).abs() < 1e-4, "dense {} vs full-budget HGA {}", dense.nll, full.nll);
    assert_eq!(dense.attended_fraction, 1.0);
    assert_eq!(full.attended_fraction, 1.0);
    assert!(small.attended_fraction > 0.05 && small.attended_fraction < 0.5, "attended {}", small.attended_fraction);
    let g = small.groups_per_kv_head.unwrap();
    assert!(g > 1.0 && g <= 4.0 * 8.0, "groups per KV head {g}: at most gqa × top_groups = 32");
    assert!(
        small.nll.is_finite() && small.nll > dense.nll - 0.05 && small.nll < dense.nll + 1.0,
        "small {}",
        small.nll
    );
    let (replay, roomy) = (&r.runs[3].overall, &r.runs[4].overall);
    assert_eq!((replay.nll, replay.groups_per_kv_head), (small.nll, small.groups_per_kv_head));
    assert!(small.misses_per_kv_head.is_none());
    let m = replay.misses_per_kv_head.unwrap();
    assert!(m.iter().all(|&x| x > 0.0 && x <= g), "misses per KV head {m:?} of {g} groups");
    let all = roomy.misses_per_kv_head.unwrap();
    assert!(all[0] == all[1] && all[1] == all[2] && all[0] <= m[0], "without evictions {all:?}, with {m:?}");
    assert!(replay.speculation.is_none() && roomy.speculation.is_none());
    assert!(replay.lookahead.is_none() && r.runs[6].overall.lookahead.is_none());
    // Speculation changes no routing; a cache that never evicts loads each group once, ahead of its
    // layer or late, so it leaves at most the misses it had without prefetch.
    let (sr, sp) = (&r.runs[5].overall, &r.runs[6].overall);
    assert_eq!((sr.nll, sp.nll, sr.groups_per_kv_head), (small.nll, small.nll, small.groups_per_kv_head));
    assert_eq!((sr.misses_per_kv_head, sp.misses_per_kv_head), (roomy.misses_per_kv_head, replay.misses_per_kv_head));
    let s = sr.speculation.unwrap();
    println!("speculate roomy {s:?}\nspeculate {:?}", sp.speculation);
    assert!(s.recall > 0.3 && s.recall <= 1.0, "{s:?}");
    assert!(s.late_misses_per_kv_head < all[1], "{s:?} vs CLOCK {all:?}");
    assert!(s.late_misses_per_kv_head + s.prefetched_per_kv_head >= all[1] - 1e-9, "{s:?} vs CLOCK {all:?}");
    let p = sp.speculation.unwrap();
    assert!(p.recall > 0.3 && p.late_misses_per_kv_head > 0.0 && p.prefetched_per_kv_head > 0.0, "{p:?}");
    // Lookahead changes no routing; a cache that never evicts loads each group once, after the step
    // before or on its own step's critical path.
    let (lr, lp, l0) = (&r.runs[7].overall, &r.runs[8].overall, &r.runs[9].overall);
    for x in [lr, lp, l0] {
        assert_eq!((x.nll, x.groups_per_kv_head), (small.nll, small.groups_per_kv_head));
    }
    assert_eq!((lr.misses_per_kv_head, lp.misses_per_kv_head), (roomy.misses_per_kv_head, replay.misses_per_kv_head));
    let (a, b, z) = (lr.lookahead.unwrap(), lp.lookahead.unwrap(), l0.lookahead.unwrap());
    println!("lookahead roomy {a:?}\nlookahead {b:?}\nlookahead none {z:?}");
    assert!(a.critical_misses_per_kv_head < all[1], "{a:?} vs CLOCK {all:?}");
    assert!(a.critical_misses_per_kv_head + a.fetched_per_kv_head >= all[1] - 1e-9, "{a:?} vs CLOCK {all:?}");
    assert!(b.critical_misses_per_kv_head > 0.0 && b.critical_misses_per_kv_head < m[1], "{b:?} vs CLOCK {m:?}");
    assert!(b.fetched_per_kv_head > 0.0, "{b:?}");
    // A lookahead no wider than the step foresees none of the next step's new groups.
    assert_eq!((z.fetched_per_kv_head, z.recall), (0.0, 0.0), "{z:?}");
    assert!(b.recall > 0.0 && b.recall <= 1.0 && b.new_groups_per_kv_head > 0.0, "{b:?}");
    assert_eq!((a.recall, a.new_groups_per_kv_head), (b.recall, b.new_groups_per_kv_head), "routing only");
    assert_eq!(l0.speculation.map(|s| s.late_misses_per_kv_head), Some(p.late_misses_per_kv_head));
}
