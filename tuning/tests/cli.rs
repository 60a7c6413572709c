//! The CLI end to end: bad input exits 2 with a message naming the problem, runs are deterministic
//! (two runs → byte-identical files), `--check` accepts a fresh file and names what makes one stale.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tuning(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tuning")).args(args).output().expect("the tuning binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn rng() -> StdRng {
    let seed = std::env::var("HGA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("seed {seed} (set HGA_TEST_SEED={seed} to replay)");
    StdRng::seed_from_u64(seed)
}

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let d = std::env::temp_dir().join(format!("hga-tuning-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn assert_bad_input(args: &[&str], needle: &str) {
    let o = tuning(args);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    assert!(stderr(&o).contains(needle), "{args:?}: expected `{needle}` in: {}", stderr(&o));
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    assert_bad_input(&["--gpu", "rtx9090", "--model", "qwen3-30b"], "--gpu rtx9090: unknown GPU; known: rtx5090");
    assert_bad_input(&["--gpu", "rtx5090", "--model", "qwen9"], "unknown model preset `qwen9`; known presets:");
    assert_bad_input(
        &["--gpu", "rtx5090", "--model", "no/such/config.json"],
        "--model no/such/config.json: cannot read no/such/config.json",
    );
    assert_bad_input(&["--gpu", "rtx5090", "--model", "qwen3-30b", "--contexts", "4K,0"], "--contexts 0: must be in");
    assert_bad_input(&["--gpu", "rtx5090", "--model", "qwen3-30b", "--contexts", "4Q"], "--contexts 4Q: must be");
    assert_bad_input(&["--gpu", "rtx5090", "--model", "qwen3-30b", "--batch", "1,0"], "--batch 0: must be");
    assert_bad_input(&["--gpu", "rtx5090", "--model", "qwen3-30b", "--time-budget", "-1"], "--time-budget -1");
    assert_bad_input(&["--gpu", "auto", "--model", "qwen3-30b", "--mode", "modeled"], "needs a named GPU");
    assert_bad_input(&["--gpu", "rtx5090"], "--model");
    assert_bad_input(&["--check", "/definitely/not/here.toml"], "cannot read /definitely/not/here.toml");
    assert_bad_input(&["--gpu", "rtx5090", "--model", "qwen3-30b", "--top-chunks", "0"], "--top-chunks");
    assert_bad_input(
        &["--gpu", "rtx5090", "--model", "qwen3-30b", "--mode", "modeled", "--top-chunks", "2", "--top-groups", "9"],
        "--top-groups 9: invalid HGA spec: routing.top_groups = 9: must be <=",
    );
}

#[test]
fn other_budgets_get_their_own_file_which_records_them_and_checks() {
    // An engine that routes wider or narrower than the reference router tunes for its budgets: the
    // runtime resolves a config only for the routing it records.
    let d = temp_dir("budgets");
    let args = ["--gpu", "l40s", "--model", "qwen3-8b", "--out", d.to_str().unwrap(), "--quiet", "--no-nvrtc"];
    let o = tuning(&[&args[..], &["--top-chunks", "64", "--top-groups", "16"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let path = d.join("l40s-qwen3-8b-c64g16.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let cfg = hga_dsl::tuned::TunedConfig::from_toml(&text).unwrap();
    assert_eq!((cfg.routing.top_chunks, cfg.routing.top_groups), (64, 16));
    assert!(cfg.provenance.command.contains("--top-chunks 64 --top-groups 16"), "{}", cfg.provenance.command);
    let o = tuning(&["--check", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    // The reference budgets named explicitly are the reference file.
    let o = tuning(&[&args[..], &["--top-chunks", "16"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let plain = std::fs::read_to_string(d.join("l40s-qwen3-8b.toml")).unwrap();
    assert!(!plain.contains("--top-chunks"), "{plain}");
    // A file whose routing is not the one its command names is stale.
    let p = d.join("edited.toml");
    std::fs::write(&p, text.replace("top_groups = 16", "top_groups = 24")).unwrap();
    let o = tuning(&["--check", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn measuring_a_gpu_that_is_not_present_is_refused() {
    // Whatever is present here (nothing, or an H200 on the device machine), an RTX 3090 is not.
    let o = tuning(&["--gpu", "rtx3090", "--model", "qwen3-8b", "--mode", "measured"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("cannot measure NVIDIA GeForce RTX 3090: the GPU present is")
            || e.contains("measuring the NVIDIA GeForce RTX 3090 needs that GPU"),
        "{e}"
    );
    if !tuning::device::driver_present() {
        let o = tuning(&["--gpu", "auto", "--model", "qwen3-8b"]);
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("no CUDA device: the CUDA driver library"), "{}", stderr(&o));
    }
}

#[test]
fn modeled_runs_are_deterministic_and_say_how_to_measure() {
    let mut r = rng();
    let gpus = tuning::gpu::all();
    let models = hga_dsl::presets::all();
    for _ in 0..2 {
        let g = gpus.choose(&mut r).unwrap().name.clone();
        let m = models.choose(&mut r).unwrap().name;
        let (a, b) = (temp_dir("a"), temp_dir("b"));
        let mut texts = Vec::new();
        for d in [&a, &b] {
            let o = tuning(&[
                "--gpu",
                &g,
                "--model",
                m,
                "--mode",
                "modeled",
                "--out",
                d.to_str().unwrap(),
                "--quiet",
                "--no-nvrtc",
            ]);
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            assert!(out.contains("MODELED") && out.contains("To measure for real, run"), "{out}");
            assert!(out.contains("speed-up"), "summary table missing: {out}");
            texts.push(std::fs::read(d.join(format!("{g}-{m}.toml"))).unwrap());
        }
        assert_eq!(texts[0], texts[1], "{g} {m}: two runs differ");
        let text = String::from_utf8(texts.pop().unwrap()).unwrap();
        assert!(
            text.contains("mode = \"modeled\"") && !text.contains("2026-") && !text.contains("2027-"),
            "no timestamps, marked modeled"
        );
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
    }
}

#[test]
fn check_accepts_fresh_and_names_stale() {
    let d = temp_dir("check");
    let o = tuning(&["--gpu", "l40s", "--model", "qwen3-8b", "--out", d.to_str().unwrap(), "--quiet", "--no-nvrtc"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let path = d.join("l40s-qwen3-8b.toml");
    let o = tuning(&["--check", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("OK"));

    let text = std::fs::read_to_string(&path).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (text.replace("generator = \"hga-codegen-", "generator = \"old-codegen-"), "generator: made for old-codegen-"),
        (text.replacen("content_hash = \"", "content_hash = \"f00d", 1), "content_hash recorded f00d"),
        (
            text.replace("arch = \"sm_89\"", "arch = \"sm_80\""),
            "gpu: l40s is sm_89 in the presets, the file says sm_80",
        ),
        (text.replace("cost_model = \"hga-cost-", "cost_model = \"hga-cost-0"), "cost model: made by"),
    ];
    for (i, (bad, needle)) in cases.iter().enumerate() {
        let p = d.join(format!("bad{i}.toml"));
        std::fs::write(&p, bad).unwrap();
        let o = tuning(&["--check", p.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "case {i}: {}", stderr(&o));
        assert!(stderr(&o).contains("is stale") && stderr(&o).contains(needle), "case {i}: {}", stderr(&o));
    }
    // A changed figure is found by re-running the model.
    let first_time = text.lines().find(|l| l.starts_with("time_us = ") && !l.contains('[')).unwrap();
    let p = d.join("figure.toml");
    std::fs::write(&p, text.replacen(first_time, "time_us = 0.001", 1)).unwrap();
    let o = tuning(&["--check", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("the cost model now gives"), "{}", stderr(&o));
    // Not a config at all: bad input.
    let p = d.join("garbage.toml");
    std::fs::write(&p, "format = 1\n[provenance]\nmode = 3\n").unwrap();
    let o = tuning(&["--check", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot parse tuned config"), "{}", stderr(&o));
    std::fs::write(&p, "format = 7\n").unwrap();
    let o = tuning(&["--check", p.to_str().unwrap()]);
    assert!(stderr(&o).contains("format = 7: this version reads format 1 only"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn lists_name_every_preset_with_its_source() {
    let o = tuning(&["--list-gpus"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    for g in tuning::gpu::all() {
        assert!(out.contains(&g.name) && out.contains(&g.arch) && out.contains(&g.source[..30]), "{}", g.name);
    }
    let o = tuning(&["--list-models"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    for m in hga_dsl::presets::all() {
        assert!(out.contains(m.name), "{}", m.name);
    }
}

#[test]
fn a_config_json_model_is_accepted() {
    // The workspace's tiny-code checkpoint config, found relative to the workspace (../shared beside it).
    let cwd = std::env::current_dir().unwrap();
    let root = tuning::workspace_root(&cwd).unwrap_or(cwd);
    let cfg = root.join("../shared/models/tiny-code/config.json");
    if !cfg.exists() {
        eprintln!("SKIPPED: {} not found", cfg.display());
        return;
    }
    let d = temp_dir("hf");
    let o = tuning(&[
        "--gpu",
        "rtx3090",
        "--model",
        cfg.to_str().unwrap(),
        "--out",
        d.to_str().unwrap(),
        "--quiet",
        "--no-nvrtc",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(Path::new(&d.join("rtx3090-tiny-code.toml")).exists());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn nvrtc_prunes_spilling_winners_when_present() {
    if tuning::device::nvrtc_version().is_none() {
        eprintln!("SKIPPED: NVRTC not found by name (LD_LIBRARY_PATH); modeled runs use modeled resources");
        return;
    }
    let d = temp_dir("nvrtc");
    let args = ["--gpu", "rtx5090", "--model", "qwen3-30b", "--contexts", "1M", "--batch", "1", "--quiet"];
    let o = tuning(&[&args[..], &["--out", d.to_str().unwrap()]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let path = d.join("rtx5090-qwen3-30b.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("nvrtc = \"none\""), "NVRTC was present but not used");
    let cfg = hga_dsl::tuned::TunedConfig::from_toml(&text).unwrap();
    // The winners compiled clean: none of them is among the pruned.
    for c in &cfg.choices {
        let name = hga_dsl::tuned::short_name(&c.pick.kernel);
        assert!(!cfg.space.pruned.iter().any(|p| p.variant == name), "{name} was pruned and chosen");
    }
    // --check re-derives it from the recorded NVRTC figures, without compiling.
    let o = tuning(&["--check", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&d);
}
