//! The macro's output against specs built by hand with `hga-dsl`: same spec, key, hash, TOML and
//! generated source, whichever way the declaration is written.

use hga_dsl::macro_support::DeclaredVariant;
use hga_dsl::{codegen, presets, KernelParams, ModelShape, RopeScaling, RopeStyle, Routing, Sharing, Spec, ValidSpec};
use hga_macros::variants;

variants! {
    /// A preset with defaults everywhere else.
    pub QWEN3_8B { model = preset("qwen3-8b") }

    /// The same model written out, fields in another order, with separators.
    WRITTEN_OUT {
        [model]
        rope_theta = 1_000_000, head_dim = 128; kv_heads = 8
        q_heads = 32
    }

    /// Every section, an inline table with a keyword key, dotted keys and a sub-table header.
    EVERYTHING {
        [model]
        q_heads = 64
        kv_heads = 8
        head_dim = 128
        rope_theta = 5e5
        rope_style = "gptj"
        rotary_dim = 64
        dtype = "f16"
        rope_scaling = { type = "llama3", factor = 8.0, low_freq_factor = 1.0, high_freq_factor = 4.0,
                         original_max_position = 8192 }
        [routing]
        chunk = 128
        group = 32
        keep_first = 1
        keep_last = 4
        top_chunks = 8
        top_groups = 12
        sharing = "per_kv_head"
        [kernel]
        threads = 256
        split_k = 8
        tile_tokens = 32
        vec_width = 4
    }

    /// Dotted keys at the top level and a `[model.rope_scaling]` header.
    DOTTED {
        routing.top_chunks = 8
        kernel.threads = 64
        [model]
        q_heads = 8
        kv_heads = 2
        head_dim = 64
        rope_theta = 1e4
        [model.rope_scaling]
        r#type = "linear"
        factor = 2.0
    }
}

fn everything_by_hand() -> ValidSpec {
    let model = ModelShape::new(64, 8, 128, 5e5)
        .rope_style(RopeStyle::Gptj)
        .rotary_dim(64)
        .dtype(hga_dsl::DType::F16)
        .rope_scaling(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 8192,
        });
    let routing = Routing {
        chunk: 128,
        group: 32,
        keep_first: 1,
        keep_last: 4,
        top_chunks: 8,
        top_groups: 12,
        sharing: Sharing::PerKvHead,
        ..Routing::default()
    };
    let kernel = KernelParams { threads: 256, split_k: 8, tile_tokens: 32, vec_width: 4 };
    Spec::new(model).with_routing(routing).with_kernel(kernel).validate().unwrap()
}

fn dotted_by_hand() -> ValidSpec {
    let model = ModelShape::new(8, 2, 64, 1e4).rope_scaling(RopeScaling::Linear { factor: 2.0 });
    let routing = Routing { top_chunks: 8, ..Routing::default() };
    let kernel = KernelParams { threads: 64, ..KernelParams::default() };
    Spec::new(model).with_routing(routing).with_kernel(kernel).validate().unwrap()
}

/// Every accessor of `v` agrees with `expected`.
fn assert_declares(v: &DeclaredVariant, name: &str, expected: &ValidSpec) {
    assert_eq!(v.name(), name);
    assert_eq!(v.spec(), expected, "{name}: spec");
    assert_eq!(v.key(), expected.variant_key(), "{name}: key");
    assert_eq!(v.hash(), expected.content_hash(), "{name}: hash");
    assert_eq!(v.toml(), expected.to_toml(), "{name}: canonical TOML");
    assert_eq!(v.cuda_source(), codegen::generate(expected).source, "{name}: generated source");
    // The spec is built once and shared by every copy of the constant.
    assert!(std::ptr::eq(v.spec(), v.spec()));
}

#[test]
fn preset_declaration_matches_the_spec_built_by_hand() {
    let by_hand = Spec::new(presets::find("qwen3-8b").unwrap().shape).validate().unwrap();
    assert_declares(&QWEN3_8B, "QWEN3_8B", &by_hand);
}

#[test]
fn written_out_model_is_the_same_variant_as_the_preset() {
    let by_hand = Spec::new(ModelShape::new(32, 8, 128, 1e6)).validate().unwrap();
    assert_declares(&WRITTEN_OUT, "WRITTEN_OUT", &by_hand);
    assert_eq!(WRITTEN_OUT.key(), QWEN3_8B.key());
    assert_eq!(WRITTEN_OUT.hash(), QWEN3_8B.hash());
    assert_ne!(WRITTEN_OUT, QWEN3_8B, "different names");
}

#[test]
fn every_field_reaches_the_spec() {
    assert_declares(&EVERYTHING, "EVERYTHING", &everything_by_hand());
    assert_declares(&DOTTED, "DOTTED", &dotted_by_hand());
}

#[test]
fn key_and_hash_are_usable_in_constants() {
    const KEY: &str = QWEN3_8B.key();
    const HASH: &str = QWEN3_8B.hash();
    const SOURCE: &str = QWEN3_8B.cuda_source();
    const ALL: [DeclaredVariant; 4] = [QWEN3_8B, WRITTEN_OUT, EVERYTHING, DOTTED];
    assert!(KEY.starts_with("decode_bf16_q32_kv8_d128_neox128"));
    assert_eq!(HASH.len(), 16);
    assert!(SOURCE.contains(KEY));
    let keys: std::collections::HashSet<_> = ALL.iter().map(|v| v.key()).collect();
    assert_eq!(keys.len(), 3, "QWEN3_8B and WRITTEN_OUT share a key, the others differ");
}
