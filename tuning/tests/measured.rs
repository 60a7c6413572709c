//! Measured mode on a GPU: `--gpu auto` compiles, checks against the CPU backend and times candidates,
//! and writes a `measured` config that `--check` accepts. Skips with "SKIPPED: ..." without a GPU;
//! fails instead when HGA_REQUIRE_GPU=1.

use hga_dsl::tuned::Mode;
use std::time::Duration;
use tuning::{ModeArg, Request};

#[test]
fn measures_the_present_gpu() {
    let required = std::env::var("HGA_REQUIRE_GPU").as_deref() == Ok("1");
    if let Err(e) = tuning::device::probe() {
        assert!(!required, "HGA_REQUIRE_GPU=1 but no GPU: {e}");
        eprintln!("SKIPPED: no GPU ({e})");
        return;
    }
    let req = Request {
        gpu: "auto".into(),
        model: "tiny-code".into(),
        contexts: vec![4096, 65536],
        batches: vec![1],
        time_budget: Some(Duration::from_secs(40)),
        mode: ModeArg::Auto,
        progress: false,
        nvrtc: false,
        budgets: Default::default(),
    };
    let out = tuning::tune(&req).unwrap_or_else(|e| panic!("{e}"));
    for n in &out.notes {
        eprintln!("{n}");
    }
    eprintln!("{}", tuning::report::table(&out.config));
    let c = &out.config;
    assert_eq!(c.provenance.mode, Mode::Measured);
    assert_ne!(c.provenance.driver, "none");
    assert_ne!(c.provenance.nvrtc, "none");
    assert_eq!(c.choices.len(), 2);
    for ch in &c.choices {
        assert!(ch.time_us.is_finite() && ch.time_us > 0.0 && ch.default_us.is_finite(), "{ch:?}");
        assert!(ch.timed >= 2, "{ch:?}");
    }
    if tuning::gpu::find(&c.provenance.gpu).is_some() {
        tuning::check::check_text("measured", &out.text).unwrap_or_else(|e| panic!("{e}"));
    }
}
