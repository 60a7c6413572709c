//! Compile tests of `variants!`: declarations that compile, and one file per class of error whose
//! expected compiler output (every error, at its tokens) is checked in beside it as `.stderr`.
//!
//! Regenerate the `.stderr` files after a deliberate message change with
//! `TRYBUILD=overwrite cargo test -p hga-macros --test trybuild`, then read the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
