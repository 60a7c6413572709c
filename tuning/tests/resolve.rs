//! The loader's resolution order (hga_dsl::tuned::resolve): exact bucket → nearest bucket → other
//! routing budgets → same-arch default → built-in default, with the rule used reported; on configs written by the tuner.

use hga_dsl::tuned::{resolve, short_name, Mode, Query, Source, TunedConfig};
use hga_dsl::{presets, KernelParams, Spec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tuning::{ModeArg, Request};

fn config(gpu: &str, model: &str) -> TunedConfig {
    config_with(gpu, model, Default::default())
}

fn config_with(gpu: &str, model: &str, budgets: tuning::Budgets) -> TunedConfig {
    let req = Request {
        gpu: gpu.into(),
        model: model.into(),
        contexts: vec![4096, 65536, 1 << 20],
        batches: vec![1, 8],
        time_budget: None,
        mode: ModeArg::Modeled,
        progress: false,
        nvrtc: false,
        budgets,
    };
    let g = tuning::gpu::find(gpu).unwrap();
    let m = tuning::resolve_model(model).unwrap();
    let out = tuning::modeled(&g, &m, &req, tuning::Compiler::None).unwrap();
    // What is written is what is read.
    let back = TunedConfig::from_toml(&out.text).unwrap();
    assert_eq!(back.to_toml(), out.config.to_toml());
    back
}

#[test]
fn resolution_order() {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("seed {seed}");
    let mut r = StdRng::seed_from_u64(seed);
    let h200 = config("h200", "qwen3-30b");
    let h200_8b = config("h200", "qwen3-8b");
    let r4090 = config("rtx4090", "qwen3-30b");
    let all = vec![r4090.clone(), h200_8b.clone(), h200.clone()];
    let spec = Spec::new(presets::find("qwen3-30b").unwrap().shape).validate().unwrap();

    // Exact bucket.
    for c in &h200.choices {
        let q = Query { gpu: "h200", arch: "sm_90", spec: &spec, context: c.context, batch: c.batch };
        let got = resolve(&all, &q);
        assert_eq!(got.source, Source::Exact { config: "h200/qwen3-30b".into(), mode: Mode::Modeled });
        assert_eq!(got.spec.kernel(), &c.pick.kernel);
        assert_eq!(got.spec.variant_key(), c.pick.variant_key);
    }
    // Nearest bucket: log-distance in context first, then batch.
    for _ in 0..50 {
        let context = r.random_range(1..=(4u64 << 20));
        let batch = r.random_range(1..=64u32);
        let q = Query { gpu: "H200", arch: "sm_90", spec: &spec, context, batch };
        let got = resolve(&all, &q);
        let dist = |c: u64, b: u32| ((c as f64 / context as f64).log2().abs(), (b as f64 / batch as f64).log2().abs());
        let best = h200
            .choices
            .iter()
            .min_by(|a, b| dist(a.context, a.batch).partial_cmp(&dist(b.context, b.batch)).unwrap())
            .unwrap();
        match &got.source {
            Source::Exact { .. } => assert!(h200.choices.iter().any(|c| c.context == context && c.batch == batch)),
            Source::NearestBucket { config, context: c, batch: b, .. } => {
                assert_eq!(config, "h200/qwen3-30b");
                assert_eq!(dist(*c, *b), dist(best.context, best.batch), "asked {context}/{batch}");
                let pick = h200.choices.iter().find(|x| x.context == *c && x.batch == *b).unwrap();
                assert_eq!(got.spec.kernel(), &pick.pick.kernel);
            }
            other => panic!("{other:?}"),
        }
    }
    // Same arch, no config for this GPU: an H100 gets the H200 config's default, same model first.
    let q = Query { gpu: "h100-sxm", arch: "sm_90", spec: &spec, context: 65536, batch: 1 };
    let got = resolve(&all, &q);
    assert_eq!(got.source, Source::ArchDefault { config: "h200/qwen3-30b".into(), mode: Mode::Modeled });
    assert_eq!(got.spec.kernel(), &h200.default.kernel);
    // ... and from the other model's config when this model has none on that arch.
    let got = resolve(&[r4090.clone(), h200_8b.clone()], &q);
    assert_eq!(got.source, Source::ArchDefault { config: "h200/qwen3-8b".into(), mode: Mode::Modeled });
    assert_eq!(got.spec.model(), spec.model(), "the query's model is kept");
    // Nothing for the arch: built-in default.
    let q = Query { gpu: "a100-80gb", arch: "sm_80", spec: &spec, context: 65536, batch: 1 };
    let got = resolve(&all, &q);
    assert_eq!(got.source, Source::BuiltIn);
    assert_eq!(got.spec.kernel(), &KernelParams::default());
    assert_eq!(resolve(&[], &q).source, Source::BuiltIn);
    // Other routing budgets: never exact; this GPU's config for the model layout gives its bucket's
    // pick (the routing is the query's), before any other model's.
    let other = spec.with_routing(hga_dsl::Routing { top_chunks: 64, ..spec.routing().clone() }).unwrap();
    let q = Query { gpu: "h200", arch: "sm_90", spec: &other, context: 65536, batch: 1 };
    let got = resolve(&all, &q);
    assert_eq!(
        got.source,
        Source::OtherRouting { config: "h200/qwen3-30b".into(), mode: Mode::Modeled, context: 65536, batch: 1 }
    );
    let pick = h200.choices.iter().find(|c| c.context == 65536 && c.batch == 1).unwrap();
    assert_eq!(got.spec.kernel(), &pick.pick.kernel);
    assert_eq!(got.spec.routing(), other.routing());
    assert!(got.source.to_string().contains("tuned for other routing budgets"), "{}", got.source);
    // ... and a config tuned for these budgets wins over it.
    let wide = config_with("h200", "qwen3-30b", tuning::Budgets { top_chunks: Some(64), top_groups: None });
    let got = resolve(&[h200.clone(), wide.clone()], &q);
    assert_eq!(got.source, Source::Exact { config: "h200/qwen3-30b".into(), mode: Mode::Modeled });
    assert_eq!(
        got.spec.kernel(),
        &wide.choices.iter().find(|c| c.context == 65536 && c.batch == 1).unwrap().pick.kernel
    );
    // On another GPU of the arch: the same model's default comes before another model's.
    let q = Query { gpu: "h100-sxm", arch: "sm_90", spec: &other, context: 65536, batch: 1 };
    let got = resolve(&[h200_8b.clone(), h200.clone()], &q);
    assert_eq!(got.source, Source::ArchDefault { config: "h200/qwen3-30b".into(), mode: Mode::Modeled });
}

#[test]
fn picks_name_their_variants() {
    let c = config("rtx5090", "tiny-code");
    for ch in &c.choices {
        let spec = c.spec_of(&ch.pick, "choice").unwrap();
        assert_eq!(spec.variant_key(), ch.pick.variant_key);
        assert_eq!(spec.content_hash(), ch.pick.content_hash);
        assert!(ch.pick.variant_key.ends_with(&short_name(&ch.pick.kernel)));
        assert!(ch.runner_up_us >= ch.time_us && ch.margin >= 0.0);
        assert!(ch.default_us >= ch.time_us, "the default is a candidate, so the winner is not slower");
    }
    assert!(c.stale_names().is_empty());
    assert!(c.validate().is_ok());
}
