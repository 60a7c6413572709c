//! Every checked-in config under `kernels-generated/configs/` parses, validates, names its picks as the
//! current spec rules do, was made by the current generator and (modeled ones) by the current cost
//! model; otherwise the failure says exactly why it is stale and how to write it again.

use std::path::PathBuf;

fn configs_dir() -> PathBuf {
    // The repository root is the working directory on the device machine and an ancestor of the crate
    // directory under `cargo test`.
    let cwd = std::env::current_dir().unwrap();
    let root = tuning::workspace_root(&cwd).expect("run inside the workspace");
    root.join("kernels-generated").join("configs")
}

#[test]
fn every_checked_in_config_is_current() {
    let dir = configs_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut stale = Vec::new();
    for f in &files {
        match tuning::check::check_file(f) {
            Ok(r) => eprintln!("{}: {} ({})", f.display(), r.what, r.summary),
            Err(e) => {
                let text = std::fs::read_to_string(f).unwrap_or_default();
                let cmd = text.lines().find_map(|l| l.strip_prefix("command = ")).unwrap_or("the tuner").to_string();
                stale.push(format!("{e}\n  write it again with: {}", cmd.trim_matches('"')));
            }
        }
    }
    assert!(stale.is_empty(), "{} of {} configs are stale:\n{}", stale.len(), files.len(), stale.join("\n"));
}

#[test]
fn the_promised_configs_are_checked_in() {
    let dir = configs_dir();
    for gpu in ["rtx5090", "rtx4090", "h200"] {
        for p in hga_dsl::presets::all() {
            let f = dir.join(format!("{gpu}-{}.toml", p.name));
            if gpu == "h200" && p.name != "qwen3-30b" && !f.exists() {
                continue;
            }
            assert!(f.exists(), "missing {}", f.display());
        }
    }
}
