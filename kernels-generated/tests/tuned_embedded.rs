//! The embedded configs are exactly the files under `configs/`, and all of them parse and validate.

use std::collections::BTreeSet;

#[test]
fn embedded_configs_are_the_checked_in_files() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    let embedded: BTreeSet<String> = kernels_generated::tuned::FILES.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(on_disk, embedded, "add new config files to kernels-generated/src/tuned.rs (FILES)");
    for (name, text) in kernels_generated::tuned::FILES {
        assert_eq!(std::fs::read_to_string(dir.join(name)).unwrap(), *text, "{name}");
    }
    let configs = kernels_generated::tuned::all().unwrap();
    assert_eq!(configs.len(), on_disk.len());
    for c in &configs {
        c.validate().unwrap();
    }
}
