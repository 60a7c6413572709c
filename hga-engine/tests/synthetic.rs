//! A small random checkpoint written in the test: incremental decoding equals one prefill block (dense
//! and full-budget HGA), biases are applied, and loading errors name the tensor.

mod common;

use hga_dsl::Routing;
use hga_engine::{AttentionKind, EngineError, Model, PositionStats};
use rand::{Rng, SeedableRng};
use safetensors::{Dtype, View};
use std::path::PathBuf;

const HIDDEN: usize = 128;
const INTER: usize = 96;
const LAYERS: usize = 2;
const QH: usize = 2;
const KVH: usize = 1;
const D: usize = 64;
const VOCAB: usize = 40;

fn config(tie: bool) -> String {
    format!(
        r#"{{"model_type":"qwen3","hidden_size":{HIDDEN},"intermediate_size":{INTER},"num_hidden_layers":{LAYERS},
        "num_attention_heads":{QH},"num_key_value_heads":{KVH},"head_dim":{D},"vocab_size":{VOCAB},
        "rms_norm_eps":1e-6,"rope_theta":10000.0,"tie_word_embeddings":{tie},"hidden_act":"silu",
        "max_position_embeddings":4096}}"#
    )
}

/// Tensor names and shapes of the checkpoint (with or without q/k/v biases).
fn tensors(bias: bool) -> Vec<(String, Vec<usize>)> {
    let mut t = vec![
        ("model.embed_tokens.weight".to_string(), vec![VOCAB, HIDDEN]),
        ("model.norm.weight".into(), vec![HIDDEN]),
    ];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        t.push((format!("{p}.input_layernorm.weight"), vec![HIDDEN]));
        t.push((format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN]));
        t.push((format!("{p}.self_attn.q_proj.weight"), vec![QH * D, HIDDEN]));
        t.push((format!("{p}.self_attn.k_proj.weight"), vec![KVH * D, HIDDEN]));
        t.push((format!("{p}.self_attn.v_proj.weight"), vec![KVH * D, HIDDEN]));
        t.push((format!("{p}.self_attn.o_proj.weight"), vec![HIDDEN, QH * D]));
        t.push((format!("{p}.self_attn.q_norm.weight"), vec![D]));
        t.push((format!("{p}.self_attn.k_norm.weight"), vec![D]));
        t.push((format!("{p}.mlp.gate_proj.weight"), vec![INTER, HIDDEN]));
        t.push((format!("{p}.mlp.up_proj.weight"), vec![INTER, HIDDEN]));
        t.push((format!("{p}.mlp.down_proj.weight"), vec![HIDDEN, INTER]));
        if bias {
            t.push((format!("{p}.self_attn.q_proj.bias"), vec![QH * D]));
            t.push((format!("{p}.self_attn.k_proj.bias"), vec![KVH * D]));
            t.push((format!("{p}.self_attn.v_proj.bias"), vec![KVH * D]));
        }
    }
    t
}

struct Tensor {
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Tensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        (&self.bytes[..]).into()
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes a checkpoint directory; `value(name, index)` gives each element.
fn write_checkpoint(tag: &str, tensors: &[(String, Vec<usize>)], mut value: impl FnMut(&str, usize) -> f32) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hga-engine-synthetic-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config(true)).unwrap();
    let data: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let bytes = (0..n).flat_map(|i| value(name, i).to_le_bytes()).collect();
            (name.clone(), Tensor { shape: shape.clone(), bytes })
        })
        .collect();
    safetensors::serialize_to_file(data.iter().map(|(n, t)| (n.as_str(), t)), None, &dir.join("model.safetensors"))
        .unwrap();
    dir
}

fn random_values(seed: u64) -> impl FnMut(&str, usize) -> f32 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    move |name: &str, _| {
        if name.contains("norm") {
            rng.random_range(0.8..1.2)
        } else if name.contains("bias") {
            0.0
        } else {
            rng.random_range(-0.15..0.15)
        }
    }
}

fn logits(model: &Model, kind: &AttentionKind, tokens: &[u32], block: usize) -> Vec<f32> {
    try_logits(model, kind, tokens, block).expect("a CPU attention backend is always usable")
}

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{what}: element {i}: {x} vs {y}");
    }
}

#[test]
fn decode_equals_prefill_for_dense_and_full_budget_hga() {
    let seed = common::seed();
    let dir = write_checkpoint("decode", &tensors(false), random_values(seed));
    let model = Model::load(&dir).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 1);
    let tokens: Vec<u32> = (0..300).map(|_| rng.random_range(0..VOCAB as u32)).collect();
    let small = Routing { chunk: 16, group: 4, keep_first: 1, keep_last: 2, ..Routing::default() }.full_budget();
    let hga = AttentionKind::Hga(model.config().attention.with_routing(small).unwrap());
    let prefill = logits(&model, &AttentionKind::Dense, &tokens, 300);
    assert!(prefill.iter().all(|x| x.is_finite()));
    assert_close(&logits(&model, &AttentionKind::Dense, &tokens, 1), &prefill, "dense, one token at a time");
    assert_close(&logits(&model, &AttentionKind::Dense, &tokens, 37), &prefill, "dense, blocks of 37");
    assert_close(&logits(&model, &hga, &tokens, 64), &prefill, "full-budget HGA, blocks of 64");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn biases_are_applied() {
    let seed = common::seed();
    let plain = write_checkpoint("plain", &tensors(false), random_values(seed));
    let zero_bias = write_checkpoint("zero-bias", &tensors(true), random_values(seed));
    let mut values = random_values(seed);
    let bias = write_checkpoint(
        "bias",
        &tensors(true),
        move |name, i| if name.contains("bias") { 0.5 } else { values(name, i) },
    );
    let tokens: Vec<u32> = (0..50).map(|i| (i * 7 % VOCAB) as u32).collect();
    let run = |dir: &PathBuf| logits(&Model::load(dir).unwrap(), &AttentionKind::Dense, &tokens, 50);
    let base = run(&plain);
    assert_close(&run(&zero_bias), &base, "zero biases");
    let shifted = run(&bias);
    assert!(shifted.iter().zip(&base).any(|(a, b)| (a - b).abs() > 1e-3), "a bias of 0.5 must change the logits");
    for d in [plain, zero_bias, bias] {
        std::fs::remove_dir_all(d).ok();
    }
}

#[test]
fn loading_errors_name_the_tensor() {
    let mut t = tensors(false);
    t.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight");
    let dir = write_checkpoint("missing", &t, |_, _| 0.1);
    let e = Model::load(&dir).unwrap_err();
    assert!(matches!(&e, EngineError::MissingTensor { name } if name == "model.layers.1.mlp.up_proj.weight"), "{e}");
    std::fs::remove_dir_all(dir).ok();

    let mut t = tensors(false);
    t.iter_mut().find(|(n, _)| n == "model.layers.0.self_attn.k_proj.weight").unwrap().1 = vec![2 * D, HIDDEN];
    let dir = write_checkpoint("shape", &t, |_, _| 0.1);
    let e = Model::load(&dir).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.0.self_attn.k_proj.weight has shape [128, 128]; config.json implies [64, 128]"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// Logits of `kind` and whether its sequence could be created (`None`: the backend is not usable here).
fn try_logits(model: &Model, kind: &AttentionKind, tokens: &[u32], block: usize) -> Option<Vec<f32>> {
    let mut seq = match kind.new_sequence(model.config()) {
        Ok(s) => s,
        Err(EngineError::Runtime(hga_runtime::RuntimeError::NoGpu { reason })) => {
            let required = std::env::var("HGA_REQUIRE_GPU").as_deref() == Ok("1");
            assert!(!required, "HGA_REQUIRE_GPU=1 but no usable GPU: {reason}");
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    let mut all = Vec::new();
    for b in tokens.chunks(block) {
        let mut stats = vec![PositionStats::default(); b.len()];
        all.extend(model.forward(b, seq.as_mut(), &mut stats).unwrap());
        // Routed attention attends at most what dense attention sees, and something.
        assert!(stats.iter().all(|s| s.attended > 0 && s.attended <= s.visible), "{stats:?}");
    }
    Some(all)
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|x| x.is_finite()), "non-finite logits");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn engine_api_hga_on_the_cpu_backend_matches_the_layer_cache() {
    let seed = common::seed();
    let dir = write_checkpoint("engine-cpu", &tensors(false), random_values(seed));
    let model = Model::load(&dir).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 2);
    let tokens: Vec<u32> = (0..300).map(|_| rng.random_range(0..VOCAB as u32)).collect();
    let small = Routing {
        chunk: 16,
        group: 4,
        keep_first: 1,
        keep_last: 2,
        top_chunks: 3,
        top_groups: 5,
        ..Routing::default()
    };
    let spec = model.config().attention.with_routing(small).unwrap();
    let kind = AttentionKind::HgaCache {
        spec: spec.clone(),
        backend: hga_engine::BackendChoice::Cpu,
        max_seq_len: tokens.len(),
    };
    // Each block size against the direct path in the same blocks: the block size changes the float
    // order of the routing scores, and with random weights and small budgets a near-tie can route
    // differently in blocks of 1 and of 64 (seed 1796319173159789449, token 191), which is not the API.
    for block in [1, 64, 300] {
        let direct = logits(&model, &AttentionKind::Hga(spec.clone()), &tokens, block);
        let via_api = try_logits(&model, &kind, &tokens, block).expect("the CPU backend is always usable");
        assert_close(&via_api, &direct, &format!("engine API (CPU backend), blocks of {block}"));
    }
    std::fs::remove_dir_all(dir).ok();
}

/// The generated CUDA kernels inside a real forward pass: full-budget HGA through the engine API on the
/// GPU against dense attention on the CPU (bf16 K/V, queries and outputs on the GPU: a few 1e-3).
/// Skips without a GPU (prints SKIPPED; fails under HGA_REQUIRE_GPU=1); runs on the device.
#[test]
fn engine_api_hga_on_the_gpu_matches_dense_at_full_budget() {
    let seed = common::seed();
    let dir = write_checkpoint("engine-gpu", &tensors(false), random_values(seed));
    let model = Model::load(&dir).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 3);
    let tokens: Vec<u32> = (0..300).map(|_| rng.random_range(0..VOCAB as u32)).collect();
    let full = Routing { chunk: 16, group: 4, keep_first: 1, keep_last: 2, ..Routing::default() }.full_budget();
    let spec = model.config().attention.with_routing(full).unwrap();
    let kind =
        AttentionKind::HgaCache { spec, backend: hga_engine::BackendChoice::Gpu { ordinal: 0 }, max_seq_len: 300 };
    let Some(gpu) = try_logits(&model, &kind, &tokens, 64) else {
        println!("SKIPPED: engine_api_hga_on_the_gpu_matches_dense_at_full_budget: no usable GPU");
        std::fs::remove_dir_all(dir).ok();
        return;
    };
    let dense = logits(&model, &AttentionKind::Dense, &tokens, 300);
    let err = rel_l2(&gpu, &dense);
    println!("engine API on the GPU, full budget: logits rel L2 {err:.2e} against dense on the CPU");
    assert!(err < 2e-2, "logits rel L2 {err}");
    std::fs::remove_dir_all(dir).ok();
}

/// A layer index past the model's is a typed error naming `layer` in every attention backend, not a
/// panic, and the sequence is unchanged.
#[test]
fn a_layer_past_the_model_is_an_error_in_every_backend() {
    let seed = common::seed();
    let dir = write_checkpoint("layers", &tensors(false), random_values(seed));
    let model = Model::load(&dir).unwrap();
    let c = model.config();
    let (layers, qd, kvd) = (c.layers, c.q_heads() * c.head_dim(), c.kv_heads() * c.head_dim());
    let spec = c.attention.clone();
    let kinds = [
        AttentionKind::Dense,
        AttentionKind::Hga(spec.clone()),
        AttentionKind::HgaSlots {
            spec: spec.clone(),
            slots: 64,
            speculate: Some(hga_engine::SpeculateFrom::AfterAttention),
            lookahead: Some(hga_engine::attention::Lookahead { chunks: 1, groups: 4 }),
        },
        AttentionKind::HgaCache { spec, backend: hga_engine::BackendChoice::Cpu, max_seq_len: 64 },
    ];
    for kind in &kinds {
        let mut seq = kind.new_sequence(c).unwrap();
        let (k, v, q) = (vec![0.5f32; kvd], vec![0.5f32; kvd], vec![0.5f32; qd]);
        let named = |e: EngineError| assert!(e.to_string().contains("layer"), "{kind:?}: {e}");
        named(seq.append(layers, &k, &v).unwrap_err());
        let (mut out, mut stats) = (vec![0.0f32; qd], vec![PositionStats::default()]);
        named(seq.attend(layers, &q, 0, &mut out, &mut stats).unwrap_err());
        if seq.speculates().is_some() {
            named(seq.speculate(layers, &q, 0).unwrap_err());
        }
        assert!(seq.is_empty(), "{kind:?}");
    }
    std::fs::remove_dir_all(dir).ok();
}
