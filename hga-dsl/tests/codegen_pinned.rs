//! Tuned configs name the generator by `codegen::GENERATOR_VERSION`, and `tuning --check` calls a config
//! stale only when that version changes. This test pins a digest of the generated sources of every preset
//! (default routing and kernel parameters) to the version, so that a change to the generated code cannot
//! land without a version bump (and with it, re-tuned configs).

use hga_dsl::{codegen, presets, Spec};
use sha2::{Digest, Sha256};

/// (generator version, first 16 hex digits of SHA-256 over every preset's generated source).
const PINNED: (&str, &str) = ("hga-codegen-9", "696b3d1383fd9b72");

#[test]
fn generated_sources_are_pinned_to_the_generator_version() {
    let mut h = Sha256::new();
    for p in presets::all() {
        let spec = Spec::new(p.shape).validate().unwrap();
        h.update(codegen::generate(&spec).source.as_bytes());
        h.update([0u8]);
    }
    let digest: String = h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        (codegen::GENERATOR_VERSION, digest.as_str()),
        PINNED,
        "the generated CUDA source changed: bump codegen::GENERATOR_VERSION, set PINNED here to the new \
         (version, digest), and re-tune the checked-in configs (`cargo test -p tuning` names the stale ones \
         and the command that rewrites each)"
    );
}
