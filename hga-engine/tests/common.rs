//! Paths of the shared test data, resolved from the workspace root (the repository is checked out with
//! `shared/` beside it, as `../shared`).
#![allow(dead_code)]

use std::path::PathBuf;

/// `<workspace root>/../shared`.
pub fn shared() -> PathBuf {
    let root =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate lives in the workspace").to_path_buf();
    let shared = root.join("..").join("shared");
    assert!(
        shared.join("models/tiny-code/config.json").is_file(),
        "missing {}: shared/ must sit beside the repository",
        shared.display()
    );
    shared
}

/// The tiny-code checkpoint directory.
pub fn tiny_code() -> PathBuf {
    shared().join("models").join("tiny-code")
}

/// The evaluation data.
pub fn dev_data() -> PathBuf {
    shared().join("eval").join("dev_networkx_32k.bin")
}

/// A fresh seed (or `HGA_TEST_SEED`), printed so that a failure can be replayed.
pub fn seed() -> u64 {
    let s = std::env::var("HGA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    println!("seed {s} (set HGA_TEST_SEED={s} to replay)");
    s
}
