//! Presets and the Hugging Face `config.json` reader.
//!
//! Each preset is checked against the attention fields of its model's published `config.json`, restated
//! below as JSON (the repository is named beside it and in `ModelPreset::source`), read through
//! `HfModel::from_json`; `tiny-code` against `../shared/models/tiny-code/config.json` read through
//! `HfModel::from_file`.

use hga_dsl::{presets, DType, HfModel, ModelShape, RopeScaling, RopeStyle, Routing, Spec, SpecError};
use std::path::{Path, PathBuf};

/// Qwen/Qwen3-30B-A3B, in the `rope_parameters` form newer transformers write.
const QWEN3_30B: &str = r#"{
  "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048,
  "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "num_hidden_layers": 48,
  "num_experts": 128, "num_experts_per_tok": 8, "max_position_embeddings": 40960, "max_window_layers": 48,
  "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
  "sliding_window": null, "use_sliding_window": false, "dtype": "bfloat16"
}"#;

/// Qwen/Qwen3-30B-A3B-Instruct-2507 (classic form).
const QWEN3_30B_2507: &str = r#"{
  "model_type": "qwen3_moe", "hidden_size": 2048, "num_attention_heads": 32, "num_key_value_heads": 4,
  "head_dim": 128, "num_hidden_layers": 48, "max_position_embeddings": 262144, "rope_theta": 10000000,
  "rope_scaling": null, "sliding_window": null, "use_sliding_window": false, "torch_dtype": "bfloat16"
}"#;

/// Qwen/Qwen3-8B.
const QWEN3_8B: &str = r#"{
  "model_type": "qwen3", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
  "head_dim": 128, "num_hidden_layers": 36, "max_position_embeddings": 40960, "rope_theta": 1000000,
  "rope_scaling": null, "sliding_window": null, "use_sliding_window": false, "torch_dtype": "bfloat16"
}"#;

/// Qwen/Qwen3-32B.
const QWEN3_32B: &str = r#"{
  "model_type": "qwen3", "hidden_size": 5120, "num_attention_heads": 64, "num_key_value_heads": 8,
  "head_dim": 128, "num_hidden_layers": 64, "max_position_embeddings": 40960, "rope_theta": 1000000,
  "rope_scaling": null, "sliding_window": null, "use_sliding_window": false, "torch_dtype": "bfloat16"
}"#;

/// meta-llama/Llama-3.1-8B: no `head_dim`, so it is hidden_size / num_attention_heads.
const LLAMA31_8B: &str = r#"{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
  "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
  "max_position_embeddings": 131072, "rope_theta": 500000.0,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "torch_dtype": "bfloat16"
}"#;

/// meta-llama/Llama-3.1-70B.
const LLAMA31_70B: &str = r#"{
  "model_type": "llama", "hidden_size": 8192, "num_attention_heads": 64, "num_key_value_heads": 8,
  "num_hidden_layers": 80, "max_position_embeddings": 131072, "rope_theta": 500000.0,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "torch_dtype": "bfloat16"
}"#;

/// mistralai/Mistral-7B-v0.3: `sliding_window` is null, so every layer is full attention.
const MISTRAL_7B_V03: &str = r#"{
  "architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096,
  "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
  "max_position_embeddings": 32768, "rope_theta": 1000000.0, "sliding_window": null,
  "torch_dtype": "bfloat16"
}"#;

/// EleutherAI/gpt-j-6b: GPT-2 style names, interleaved RoPE over the first 64 of 256 head dims, θ default.
const GPTJ_6B: &str = r#"{
  "architectures": ["GPTJForCausalLM"], "model_type": "gptj", "n_embd": 4096, "n_head": 16,
  "n_layer": 28, "n_positions": 2048, "rotary": true, "rotary_dim": 64, "torch_dtype": "float16"
}"#;

fn read(json: &str) -> HfModel {
    HfModel::from_json(json).unwrap_or_else(|e| panic!("{e}\n{json}"))
}

fn unsupported(json: &str) -> (String, String) {
    match HfModel::from_json(json) {
        Err(SpecError::UnsupportedConfig { field, reason }) => (field, reason),
        other => panic!("expected UnsupportedConfig for\n{json}\ngot {other:?}"),
    }
}

#[test]
fn every_preset_validates_with_default_routing() {
    let all = presets::all();
    assert_eq!(all.len(), 8);
    for p in &all {
        let spec = Spec::new(p.shape.clone()).validate().unwrap_or_else(|e| panic!("{}: {e}", p.name));
        assert_eq!(spec.routing(), &Routing::default());
        assert!(p.layers >= 1 && p.max_position >= 1, "{}", p.name);
        assert!(!p.source.is_empty());
        // Found by name and by each alias, case-insensitively.
        assert_eq!(presets::find(p.name).unwrap(), *p);
        assert_eq!(presets::find(&p.name.to_uppercase()).unwrap(), *p);
        for a in p.aliases {
            assert_eq!(presets::find(a).unwrap(), *p);
        }
    }
    let mut names: Vec<&str> =
        all.iter().flat_map(|p| std::iter::once(p.name).chain(p.aliases.iter().copied())).collect();
    names.sort();
    let n = names.len();
    names.dedup();
    assert_eq!(names.len(), n, "preset names and aliases are unique");
}

#[test]
fn unknown_preset_lists_the_known_ones() {
    let err = presets::find("qwen4").unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown model preset `qwen4`; known presets: qwen3-30b, qwen3-30b-2507, qwen3-8b, qwen3-32b, llama3.1-8b, \
         llama3.1-70b, mistral-7b-v0.3, tiny-code"
    );
}

#[test]
fn presets_match_their_published_configs() {
    let cases = [
        ("qwen3-30b", QWEN3_30B, "qwen3_moe"),
        ("qwen3-30b-2507", QWEN3_30B_2507, "qwen3_moe"),
        ("qwen3-8b", QWEN3_8B, "qwen3"),
        ("qwen3-32b", QWEN3_32B, "qwen3"),
        ("llama3.1-8b", LLAMA31_8B, "llama"),
        ("llama3.1-70b", LLAMA31_70B, "llama"),
        ("mistral-7b-v0.3", MISTRAL_7B_V03, "mistral"),
    ];
    for (name, json, model_type) in cases {
        let p = presets::find(name).unwrap();
        let hf = read(json);
        assert_eq!(hf.model_type, model_type);
        assert_eq!(hf.shape, p.shape, "{name}");
        assert_eq!((hf.layers, hf.max_position), (p.layers, p.max_position), "{name}");
        let as_preset = hf.into_preset();
        assert_eq!(as_preset.shape, p.shape);
    }
    // The numbers themselves, restated: a wrong preset and a wrong reader cannot agree by accident.
    let q = presets::find("qwen3-30b-a3b").unwrap();
    assert_eq!(q.shape, ModelShape::new(32, 4, 128, 1e6));
    assert_eq!((q.layers, q.max_position), (48, 40960));
    assert_eq!(presets::find("qwen3-30b-a3b-2507").unwrap().shape.rope_theta, 1e7);
    let l = presets::find("llama-3.1-70b").unwrap();
    assert_eq!(
        l.shape,
        ModelShape::new(64, 8, 128, 5e5).rope_scaling(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 8192
        })
    );
    assert_eq!((l.layers, l.max_position), (80, 131072));
}

/// `<repo>/../shared`, found from where the test was built (the dev machine and CI) or, for a test
/// executable carried to another machine, from the working directory.
fn shared_dir() -> Result<PathBuf, String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let built_here = manifest.exists();
    let mut tried = Vec::new();
    let mut candidates = vec![manifest.join("../../shared")];
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            candidates.push(dir.join("../shared"));
            candidates.push(dir.join("shared"));
        }
    }
    for c in candidates {
        if c.join("models").is_dir() {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    let why = format!("../shared not found beside the repository (tried {})", tried.join(", "));
    if built_here {
        Err(why)
    } else {
        // A test executable carried to a machine without the checkout (the GPU device): say so and skip.
        Ok(PathBuf::from(format!("SKIP:{why}")))
    }
}

#[test]
fn tiny_code_matches_its_config_json() {
    let shared = shared_dir().unwrap_or_else(|why| panic!("{why}: the tiny-code preset cannot be checked"));
    if let Some(why) = shared.to_str().and_then(|s| s.strip_prefix("SKIP:")) {
        println!("SKIPPED: tiny_code_matches_its_config_json: {why}; this executable was built on another machine");
        return;
    }
    let path = shared.join("models/tiny-code/config.json");
    let hf = HfModel::from_file(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let p = presets::find("tiny-code").unwrap();
    assert_eq!(hf.shape, p.shape);
    assert_eq!((hf.layers, hf.max_position), (p.layers, p.max_position));
    assert_eq!(hf.model_type, "qwen3");
    Spec::new(hf.shape).validate().unwrap();
}

#[test]
fn reads_the_common_config_forms() {
    // Llama 3.1 in the newer `rope_parameters` form equals the classic form.
    let v5 = read(
        r#"{"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
            "num_hidden_layers": 32, "max_position_embeddings": 131072,
            "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0,
              "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#,
    );
    assert_eq!(v5.shape, read(LLAMA31_8B).shape);

    // GPT-J: GPT-2 names, interleaved pairs, partial rotary, θ defaults to 10000, f16.
    let gptj = read(GPTJ_6B);
    assert_eq!(
        gptj.shape,
        ModelShape::new(16, 16, 256, 1e4).rope_style(RopeStyle::Gptj).rotary_dim(64).dtype(DType::F16)
    );
    assert_eq!((gptj.layers, gptj.max_position), (28, 2048));
    Spec::new(gptj.shape).validate().unwrap();

    // No num_key_value_heads: multi-head attention. Linear scaling in the legacy `type` key.
    // partial_rotary_factor sets the rotary dimension.
    let mha = read(
        r#"{"model_type": "llama", "hidden_size": 2048, "num_attention_heads": 16, "num_hidden_layers": 4,
            "rope_theta": 10000, "rope_scaling": {"type": "linear", "factor": 2.0}, "partial_rotary_factor": 0.5}"#,
    );
    assert_eq!(
        mha.shape,
        ModelShape::new(16, 16, 128, 1e4).rope_scaling(RopeScaling::Linear { factor: 2.0 }).rotary_dim(64)
    );
    assert_eq!(mha.max_position, 0, "absent max_position_embeddings reads as 0");

    // Qwen2.5 writes a window size but switches it off.
    let qwen25 = read(
        r#"{"model_type": "qwen2", "hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4,
            "num_hidden_layers": 28, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
            "sliding_window": 131072, "use_sliding_window": false, "max_window_layers": 28}"#,
    );
    assert_eq!(qwen25.shape, ModelShape::new(28, 4, 128, 1e6));
    // A window at least as long as the context is no window.
    read(
        r#"{"hidden_size": 4096, "num_attention_heads": 32, "num_hidden_layers": 32,
            "max_position_embeddings": 4096, "sliding_window": 4096}"#,
    );
}

#[test]
fn unsupported_rope_types_are_errors() {
    let yarn = r#"{"hidden_size": 4096, "num_attention_heads": 32, "num_hidden_layers": 32, "rope_theta": 1e6,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}"#;
    let (field, reason) = unsupported(yarn);
    assert_eq!(field, "rope_scaling.rope_type");
    assert_eq!(reason, "`yarn` is not supported (supported: default, linear, llama3)");
    assert_eq!(
        HfModel::from_json(yarn).unwrap_err().to_string(),
        "unsupported model config: rope_scaling.rope_type: `yarn` is not supported (supported: default, linear, \
         llama3)"
    );
    let (field, reason) = unsupported(
        r#"{"hidden_size": 4096, "num_attention_heads": 32, "num_hidden_layers": 32,
            "rope_parameters": {"rope_theta": 1e6, "rope_type": "yarn", "factor": 4.0}}"#,
    );
    assert_eq!(
        (field.as_str(), reason.as_str()),
        ("rope_parameters.rope_type", "`yarn` is not supported (supported: default, linear, llama3)")
    );
    let (field, reason) = unsupported(
        r#"{"hidden_size": 4096, "num_attention_heads": 32, "num_hidden_layers": 32,
            "rope_scaling": {"type": "dynamic", "factor": 2.0}}"#,
    );
    assert_eq!(
        (field.as_str(), reason.as_str()),
        ("rope_scaling.rope_type", "`dynamic` is not supported (supported: default, linear, llama3)")
    );
    // A llama3 scaling missing one of its numbers.
    let (field, reason) = unsupported(
        r#"{"hidden_size": 4096, "num_attention_heads": 32, "num_hidden_layers": 32,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192}}"#,
    );
    assert_eq!((field.as_str(), reason.as_str()), ("rope_scaling.low_freq_factor", "missing or not a number"));
    let (field, reason) = unsupported(
        r#"{"hidden_size": 4096, "num_attention_heads": 32, "num_hidden_layers": 32, "rope_theta": "1e6"}"#,
    );
    assert_eq!((field.as_str(), reason.as_str()), ("rope_theta", "not a number"));
}

#[test]
fn sliding_windows_are_errors() {
    let (field, reason) = unsupported(
        r#"{"model_type": "qwen2", "hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4,
            "num_hidden_layers": 28, "sliding_window": 32768, "use_sliding_window": true}"#,
    );
    assert_eq!(
        (field.as_str(), reason.as_str()),
        ("use_sliding_window", "sliding-window attention layers are not HGA's target")
    );
    // mistralai/Mistral-7B-v0.1: a 4096-token window with no switch.
    let (field, reason) = unsupported(
        r#"{"model_type": "mistral", "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
            "num_hidden_layers": 32, "max_position_embeddings": 32768, "rope_theta": 10000.0,
            "sliding_window": 4096}"#,
    );
    assert_eq!(field, "sliding_window");
    assert_eq!(
        reason,
        "a sliding window of 4096 tokens (shorter than max_position_embeddings 32768) is not HGA's target"
    );
    // Interleaved sliding and full layers (Gemma-style `layer_types`).
    let (field, reason) = unsupported(
        r#"{"hidden_size": 4096, "num_attention_heads": 32, "num_hidden_layers": 2,
            "layer_types": ["sliding_attention", "full_attention"]}"#,
    );
    assert_eq!((field.as_str(), reason.as_str()), ("layer_types", "only full_attention layers are supported"));
}

#[test]
fn missing_and_malformed_fields_are_errors() {
    let cases = [
        (r#"{"hidden_size": 4096, "num_hidden_layers": 32}"#, "num_attention_heads", "missing (nor is `n_head` given)"),
        (
            r#"{"hidden_size": 4096, "num_attention_heads": 32}"#,
            "num_hidden_layers",
            "missing (nor is `n_layer` given)",
        ),
        (r#"{"num_attention_heads": 32, "num_hidden_layers": 32}"#, "hidden_size", "missing (nor is `n_embd` given)"),
        (
            r#"{"hidden_size": 4000, "num_attention_heads": 48, "num_hidden_layers": 32}"#,
            "hidden_size",
            "not a multiple of num_attention_heads",
        ),
        (
            r#"{"hidden_size": 4096, "num_attention_heads": -32, "num_hidden_layers": 32}"#,
            "num_attention_heads",
            "not a non-negative integer",
        ),
        (
            r#"{"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 7.5, "num_hidden_layers": 32}"#,
            "num_key_value_heads",
            "not a non-negative integer",
        ),
    ];
    for (json, field, reason) in cases {
        assert_eq!(unsupported(json), (field.to_string(), reason.to_string()), "{json}");
    }
    assert!(matches!(HfModel::from_json("{ not json"), Err(SpecError::Parse { .. })));
    let missing = std::env::temp_dir().join("hga-no-such-dir/config.json");
    let err = HfModel::from_file(&missing).unwrap_err();
    assert!(matches!(err, SpecError::Io { .. }));
    assert!(err.to_string().starts_with(&format!("cannot read {}: ", missing.display())), "{err}");
}

#[test]
fn readable_but_invalid_shapes_fail_validation_by_field() {
    // Phi-2-like head_dim 80 reads, but no kernel supports it.
    let hf = read(r#"{"hidden_size": 2560, "num_attention_heads": 32, "num_hidden_layers": 32}"#);
    assert_eq!(hf.shape.head_dim, 80);
    let err = Spec::new(hf.shape).validate().unwrap_err();
    assert_eq!(err.to_string(), "invalid HGA spec: model.head_dim = 80: must be one of [64, 96, 128, 256]");
}
