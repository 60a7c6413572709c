//! The README's spec example parses, validates, and has the variant key, content hash and error text the
//! README shows. Embedded at build time so the check also runs from a test executable carried elsewhere.

use hga_dsl::{presets, RopeScaling, Spec};

const README: &str = include_str!("../../README.md");

/// The first fenced block of `lang` in the README.
fn block(lang: &str) -> &'static str {
    let open = format!("```{lang}\n");
    let start = README.find(&open).unwrap_or_else(|| panic!("README has no ```{lang} block")) + open.len();
    let len = README[start..].find("```").expect("the block is closed");
    &README[start..start + len]
}

#[test]
fn readme_spec_example_is_valid_and_named_as_shown() {
    let spec = Spec::from_toml(block("toml")).unwrap_or_else(|e| panic!("README's TOML example: {e}"));
    assert_eq!(spec, Spec::new(presets::find("qwen3-30b").unwrap().shape).validate().unwrap());
    let rust = block("rust");
    assert!(rust.contains(&format!("// {}", spec.variant_key())), "README shows another variant key");
    assert!(rust.contains(&format!("// {}", spec.content_hash())), "README shows another content hash");
}

#[test]
fn readme_commented_options_are_valid() {
    // Uncommenting the optional lines gives a valid spec with those options.
    let text: String = block("toml")
        .lines()
        .map(|l| l.strip_prefix("# rotary_dim").map(|r| format!("rotary_dim{r}")).unwrap_or_else(|| l.to_string()))
        .map(|l| l.strip_prefix("# rope_scaling").map(|r| format!("rope_scaling{r}")).unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let spec = Spec::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(spec.model().rotary_dim, Some(64));
    assert!(matches!(spec.model().rope_scaling, Some(RopeScaling::Llama3 { .. })));
}

#[test]
fn readme_error_example_is_what_validation_says() {
    let mut spec = Spec::new(presets::find("qwen3-30b").unwrap().shape);
    spec.model.q_heads = 30;
    spec.routing.group = 128;
    let err = spec.validate().unwrap_err().to_string();
    assert!(README.contains(&format!("`{err}`")), "README's error example differs from: {err}");
}

#[test]
fn readme_names_the_two_commands() {
    assert!(README.contains("cargo run -p tuning -- --gpu rtx5090 --model qwen3-30b"));
    assert!(README.contains("cargo test --workspace"));
    let ci = include_str!("../../.ci/run");
    assert!(ci.lines().any(|l| l.trim() == "cargo test --workspace"), ".ci/run runs the README's test command");
}
