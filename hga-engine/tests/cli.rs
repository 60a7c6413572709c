//! Command-line errors: each names the argument and its allowed range, and exits non-zero.

mod common;

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_hga-engine")).args(args).output().unwrap();
    println!(
        "args {args:?}\nstdout {}\nstderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn fails_with(args: &[&str], message: &str) {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(message), "{args:?}: stderr lacks {message:?}");
}

fn paths() -> (String, String) {
    (common::tiny_code().display().to_string(), common::dev_data().display().to_string())
}

#[test]
fn eval_ranges_are_named() {
    let (m, d) = paths();
    fails_with(&["eval", "--model", &m, "--data", &d, "--docs", "0"], "--docs = 0: must be >= 1");
    fails_with(&["eval", "--model", &m, "--data", &d, "--docs", "13"], "the 12 whole documents of 32768 bytes");
    fails_with(&["eval", "--model", &m, "--data", &d, "--doc-bytes", "1"], "--doc-bytes = 1: must be >= 2");
    fails_with(&["eval", "--model", &m, "--data", &d, "--block", "0"], "--block = 0: must be >= 1");
    fails_with(&["eval", "--model", &m, "--data", &d, "--no-dense"], "give --spec FILE or --hga");
}

#[test]
fn routing_errors_are_named() {
    let (m, d) = paths();
    // Routing flags belong to --hga.
    fails_with(&["eval", "--model", &m, "--data", &d, "--top-groups", "64"], "--hga");
    fails_with(&["eval", "--model", &m, "--data", &d, "--hga", "--top-groups", "1000"], "routing.top_groups = 1000");
    fails_with(
        &["eval", "--model", &m, "--data", &d, "--hga", "--group", "48"],
        "routing.group = 48: must divide routing.chunk (64)",
    );
    fails_with(
        &["eval", "--model", &m, "--data", &d, "--spec", "/nonexistent/spec.toml"],
        "cannot access /nonexistent/spec.toml",
    );
    let spec = std::env::temp_dir().join(format!("hga-engine-cli-{}.toml", std::process::id()));
    std::fs::write(&spec, "[model]\nq_heads = 8\nkv_heads = 4\nhead_dim = 128\nrope_theta = 1e6\n").unwrap();
    let s = spec.display().to_string();
    fails_with(&["eval", "--model", &m, "--data", &d, "--spec", &s], "model.kv_heads = 4 but the checkpoint has 2");
    std::fs::write(&spec, "[routing]\ntop_chunk = 3\n").unwrap();
    fails_with(&["eval", "--model", &m, "--data", &d, "--spec", &s], "unknown field `top_chunk`");
    std::fs::remove_file(&spec).ok();
}

#[test]
fn lookahead_errors_are_named() {
    let (m, d) = paths();
    let eval = ["eval", "--model", &m, "--data", &d, "--no-dense", "--hga"];
    let with = |extra: &[&'static str]| [&eval[..], extra].concat();
    // Parsing: clap's errors name the flag.
    for bad in ["4", "4,16,2", "x,16", "4,", "-1,16", "4,-16", "4;16", ""] {
        fails_with(&with(&["--replay-slots", "256", "--lookahead", bad]), "for '--lookahead <CHUNKS,GROUPS>'");
    }
    fails_with(&with(&["--replay-slots", "256", "--lookahead", "4"]), "expected CHUNKS,GROUPS");
    fails_with(&with(&["--replay-slots", "256", "--lookahead", "x,16"]), "CHUNKS \"x\"");
    fails_with(&with(&["--lookahead", "4,16"]), "--replay-slots");
    // Values that parse but do not make a valid wider route, or one whose unions overflow the slots.
    fails_with(&with(&["--replay-slots", "256", "--lookahead", "0,100"]), "--lookahead = 0,100");
    fails_with(
        &with(&["--replay-slots", "255", "--lookahead", "8,32"]),
        "--lookahead = 8,32: the wider union (up to 4 × (top_groups 32 + GROUPS 32) = 256 groups) must fit \
         --replay-slots 255",
    );
}

#[test]
fn model_and_generate_errors_are_named() {
    let (m, d) = paths();
    fails_with(&["eval", "--model", "/nonexistent", "--data", &d], "cannot access /nonexistent/config.json");
    fails_with(&["generate", "--model", &m], "--prompt");
    fails_with(&["generate", "--model", &m, "--prompt", "x", "--max-new", "0"], "--max-new = 0: must be >= 1");
    fails_with(&["generate", "--model", &m, "--prompt", ""], "--prompt = \"\": must hold at least one token");
    fails_with(&["logits-check", "--model", &m], "--data");
}

#[test]
fn generate_streams_and_reports_speed() {
    let (m, _) = paths();
    for extra in [&[][..], &["--hga", "--top-chunks", "4", "--top-groups", "8"][..]] {
        let mut args =
            vec!["generate", "--model", &m, "--prompt", "import networkx as nx\n\n\ndef ", "--max-new", "24"];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert!(out.status.success());
        assert_eq!(out.stdout.len(), "import networkx as nx\n\n\ndef ".len() + 24 + 1, "prompt, 24 bytes, newline");
        assert!(String::from_utf8_lossy(&out.stderr).contains("tok/s"));
    }
}
