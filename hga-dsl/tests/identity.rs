//! The text form and the names of a spec: TOML round trip, builders equal to TOML, the readable variant
//! key, and the content hash (stable across field order and omitted defaults, sensitive to every field,
//! pinned by a golden value).

use hga_dsl::kernel::allowed;
use hga_dsl::{
    presets, DType, KernelParams, ModelShape, RopeScaling, RopeStyle, Routing, ScoreKind, Sharing, Spec, ValidSpec,
};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

const LLAMA3: RopeScaling =
    RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position: 8192 };

fn qwen3_30b() -> ValidSpec {
    Spec::new(ModelShape::new(32, 4, 128, 1.0e6)).validate().unwrap()
}

/// A fresh generator; the seed is printed so a failure can be replayed with `HGA_TEST_SEED`.
fn rng() -> StdRng {
    let seed = std::env::var("HGA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("seed {seed} (set HGA_TEST_SEED={seed} to replay)");
    StdRng::seed_from_u64(seed)
}

/// A random valid spec covering every field's range, including awkward floats.
fn random_spec(r: &mut StdRng) -> ValidSpec {
    let head_dim = *allowed::HEAD_DIM.choose(r).unwrap();
    let kv_heads = r.random_range(1..=16);
    let q_heads = kv_heads * r.random_range(1..=256 / kv_heads);
    let rope_theta = 10f64.powf(r.random_range(0.1..8.0));
    let mut m = ModelShape::new(q_heads, kv_heads, head_dim, rope_theta)
        .rope_style(*[RopeStyle::Neox, RopeStyle::Gptj].choose(r).unwrap())
        .dtype(*[DType::Bf16, DType::F16].choose(r).unwrap());
    if r.random_bool(0.5) {
        m = m.rotary_dim(2 * r.random_range(1..=head_dim / 2));
    }
    m.rope_scaling = match r.random_range(0..3) {
        0 => None,
        1 => Some(RopeScaling::Linear { factor: r.random_range(0.01..64.0) }),
        _ => {
            let low_freq_factor = r.random_range(0.1..4.0);
            Some(RopeScaling::Llama3 {
                factor: r.random_range(1.0..64.0),
                low_freq_factor,
                high_freq_factor: low_freq_factor + r.random_range(0.01..8.0),
                original_max_position: r.random_range(1..1 << 20),
            })
        }
    };
    let group = *[1u32, 2, 4, 8, 16, 32, 64].choose(r).unwrap();
    let chunk = group * r.random_range(1..=1024 / group).max(2 / group);
    let top_chunks = r.random_range(1..=64);
    let routing = Routing {
        chunk,
        group,
        keep_first: r.random_range(0..=16),
        keep_last: r.random_range(0..=64),
        top_chunks,
        top_groups: r.random_range(1..=top_chunks * (chunk / group)),
        score: *ScoreKind::ALL.choose(r).unwrap(),
        sharing: *[Sharing::PerQueryHead, Sharing::PerKvHead].choose(r).unwrap(),
    };
    // Power-of-two groups are always a multiple or a divisor of a power-of-two tile.
    let kernel = KernelParams {
        threads: *allowed::THREADS.choose(r).unwrap(),
        split_k: r.random_range(allowed::SPLIT_K.0..=allowed::SPLIT_K.1),
        tile_tokens: *allowed::TILE_TOKENS.choose(r).unwrap(),
        vec_width: *allowed::VEC_WIDTH.choose(r).unwrap(),
    };
    Spec { model: m, routing, kernel }.validate().expect("random_spec builds valid specs")
}

/// The TOML text of `spec` with its sections and the keys inside each section in a random order.
fn shuffled_toml(spec: &ValidSpec, r: &mut StdRng) -> String {
    let text = spec.to_toml();
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with('[') {
            sections.push((line.to_string(), Vec::new()));
        } else {
            sections.last_mut().expect("to_toml writes keys inside sections").1.push(line.to_string());
        }
    }
    sections.shuffle(r);
    let mut out = String::new();
    for (header, mut keys) in sections {
        keys.shuffle(r);
        out += &format!("{header}\n{}\n\n", keys.join("\n"));
    }
    out
}

#[test]
fn toml_round_trip_is_exact() {
    let mut specs: Vec<ValidSpec> =
        presets::all().into_iter().map(|p| Spec::new(p.shape).validate().unwrap()).collect();
    let mut r = rng();
    specs.extend((0..500).map(|_| random_spec(&mut r)));
    for v in specs {
        let text = v.to_toml();
        let back = Spec::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, v, "{text}");
        assert_eq!(back.to_toml(), text);
        assert_eq!(back.content_hash(), v.content_hash());
        assert_eq!(back.variant_key(), v.variant_key());
    }
}

#[test]
fn builders_and_toml_yield_the_same_spec() {
    let built = Spec::new(
        ModelShape::new(32, 8, 128, 5.0e5)
            .rope_style(RopeStyle::Gptj)
            .rotary_dim(64)
            .rope_scaling(LLAMA3)
            .dtype(DType::F16),
    )
    .with_routing(Routing {
        chunk: 128,
        group: 32,
        keep_first: 1,
        keep_last: 4,
        top_chunks: 12,
        top_groups: 20,
        score: ScoreKind::MinMax,
        sharing: Sharing::PerKvHead,
    })
    .with_kernel(KernelParams { threads: 256, split_k: 8, tile_tokens: 32, vec_width: 4 })
    .validate()
    .unwrap();
    let written = Spec::from_toml(
        r#"
        [kernel]
        vec_width = 4
        tile_tokens = 32
        split_k = 8
        threads = 256

        [model]
        dtype = "f16"
        q_heads = 32
        kv_heads = 8
        head_dim = 128
        rope_theta = 500_000.0
        rope_style = "gptj"
        rotary_dim = 64
        rope_scaling = { type = "llama3", factor = 8, low_freq_factor = 1, high_freq_factor = 4.0, original_max_position = 8192 }

        [routing]
        sharing = "per_kv_head"
        score = "minmax"
        chunk = 128
        group = 32
        keep_first = 1
        keep_last = 4
        top_chunks = 12
        top_groups = 20
        "#,
    );
    // Integers are accepted where a float is expected (`factor = 8`); the second text writes floats.
    let written_ints = written.unwrap();
    let written = Spec::from_toml(
        r#"
        [kernel]
        vec_width = 4
        tile_tokens = 32
        split_k = 8
        threads = 256

        [model]
        dtype = "f16"
        q_heads = 32
        kv_heads = 8
        head_dim = 128
        rope_theta = 500_000.0
        rope_style = "gptj"
        rotary_dim = 64
        rope_scaling = { type = "llama3", factor = 8.0, low_freq_factor = 1.0, high_freq_factor = 4.0, original_max_position = 8192 }

        [routing]
        sharing = "per_kv_head"
        score = "minmax"
        chunk = 128
        group = 32
        keep_first = 1
        keep_last = 4
        top_chunks = 12
        top_groups = 20
        "#,
    )
    .unwrap();
    assert_eq!(built, written);
    assert_eq!(built, written_ints);
    assert_eq!(built.content_hash(), written.content_hash());
    assert_eq!(built.variant_key(), written.variant_key());

    // Defaults: the builder's `Spec::new` and a TOML file with only `[model]` agree.
    let minimal = Spec::from_toml("[model]\nq_heads = 32\nkv_heads = 4\nhead_dim = 128\nrope_theta = 1e6\n").unwrap();
    assert_eq!(minimal, qwen3_30b());
    assert_eq!(minimal.routing(), &Routing::default());
    assert_eq!(minimal.kernel(), &KernelParams::default());
    assert_eq!(minimal.model().rotary_dim, Some(128), "validation fills in the default rotary_dim");
}

#[test]
fn variant_key_is_readable() {
    assert_eq!(
        qwen3_30b().variant_key(),
        "decode_bf16_q32_kv4_d128_neox128_t1e6_c64_g16_f2_l8_tc16_tg32_mixed_qh_th128_sk4_tt64_v8"
    );
    let llama = Spec::new(
        ModelShape::new(32, 8, 128, 5.0e5)
            .rope_style(RopeStyle::Gptj)
            .rotary_dim(64)
            .rope_scaling(LLAMA3)
            .dtype(DType::F16),
    )
    .with_routing(Routing { score: ScoreKind::MinMax, sharing: Sharing::PerKvHead, ..Routing::default() })
    .validate()
    .unwrap();
    assert_eq!(
        llama.variant_key(),
        "decode_f16_q32_kv8_d128_gptj64_t5e5_l3f8e0lo1e0hi4e0o8192_c64_g16_f2_l8_tc16_tg32_minmax_kvh_th128_sk4_tt64_v8"
    );
    let linear = Spec::new(ModelShape::new(8, 2, 64, 1e4).rope_scaling(RopeScaling::Linear { factor: 2.5 }))
        .with_routing(Routing { score: ScoreKind::SumRotated, ..Routing::default() })
        .validate()
        .unwrap();
    assert_eq!(
        linear.variant_key(),
        "decode_bf16_q8_kv2_d64_neox64_t1e4_lin2.5e0_c64_g16_f2_l8_tc16_tg32_sum_qh_th128_sk4_tt64_v8"
    );
    // Readable and usable as a file or symbol name.
    for v in [qwen3_30b(), llama, linear] {
        let key = v.variant_key();
        assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'), "{key}");
    }
}

/// One spec per field of the spec, each differing from the base in that field only.
fn one_field_changes() -> Vec<(&'static str, ValidSpec)> {
    let base = Spec::new(ModelShape::new(32, 4, 128, 1.0e6));
    let m = |f: fn(&mut ModelShape)| {
        let mut s = base.clone();
        f(&mut s.model);
        s
    };
    let r = |f: fn(&mut Routing)| {
        let mut s = base.clone();
        f(&mut s.routing);
        s
    };
    let k = |f: fn(&mut KernelParams)| {
        let mut s = base.clone();
        f(&mut s.kernel);
        s
    };
    let l3 = |f: fn(&mut f64, &mut f64, &mut f64, &mut u64)| {
        let mut s = base.clone();
        let (mut a, mut b, mut c, mut d) = (8.0, 1.0, 4.0, 8192);
        f(&mut a, &mut b, &mut c, &mut d);
        s.model.rope_scaling =
            Some(RopeScaling::Llama3 { factor: a, low_freq_factor: b, high_freq_factor: c, original_max_position: d });
        s
    };
    let changes = vec![
        ("base", base.clone()),
        ("q_heads", m(|m| m.q_heads = 64)),
        ("kv_heads", m(|m| m.kv_heads = 8)),
        ("head_dim", m(|m| m.head_dim = 64)),
        ("rope_theta", m(|m| m.rope_theta = 1.0e7)),
        ("rope_theta by one", m(|m| m.rope_theta = 1.0e6 + 1.0)),
        ("rope_theta by one ulp", m(|m| m.rope_theta = f64::from_bits(1.0e6f64.to_bits() + 1))),
        ("rope_style", m(|m| m.rope_style = RopeStyle::Gptj)),
        ("rotary_dim", m(|m| m.rotary_dim = Some(64))),
        ("dtype", m(|m| m.dtype = DType::F16)),
        ("linear scaling", m(|m| m.rope_scaling = Some(RopeScaling::Linear { factor: 8.0 }))),
        ("linear factor", m(|m| m.rope_scaling = Some(RopeScaling::Linear { factor: 4.0 }))),
        ("llama3 scaling", l3(|_, _, _, _| {})),
        ("llama3 factor", l3(|a, _, _, _| *a = 16.0)),
        ("llama3 low_freq_factor", l3(|_, b, _, _| *b = 2.0)),
        ("llama3 high_freq_factor", l3(|_, _, c, _| *c = 8.0)),
        ("llama3 original_max_position", l3(|_, _, _, d| *d = 4096)),
        ("chunk", r(|r| r.chunk = 128)),
        ("group", r(|r| r.group = 32)),
        ("keep_first", r(|r| r.keep_first = 0)),
        ("keep_last", r(|r| r.keep_last = 16)),
        ("top_chunks", r(|r| r.top_chunks = 20)),
        ("top_groups", r(|r| r.top_groups = 48)),
        ("score sum", r(|r| r.score = ScoreKind::SumRotated)),
        ("score minmax", r(|r| r.score = ScoreKind::MinMax)),
        ("score meanvar", r(|r| r.score = ScoreKind::MeanVar)),
        ("sharing", r(|r| r.sharing = Sharing::PerKvHead)),
        ("threads", k(|k| k.threads = 256)),
        ("split_k", k(|k| k.split_k = 8)),
        ("tile_tokens", k(|k| k.tile_tokens = 32)),
        ("vec_width", k(|k| k.vec_width = 4)),
    ];
    changes.into_iter().map(|(name, s)| (name, s.validate().unwrap_or_else(|e| panic!("{name}: {e}")))).collect()
}

#[test]
fn key_and_hash_differ_when_any_field_changes() {
    let variants = one_field_changes();
    let mut keys: HashMap<String, &str> = HashMap::new();
    let mut hashes: HashMap<String, &str> = HashMap::new();
    for (name, v) in &variants {
        if let Some(other) = keys.insert(v.variant_key(), name) {
            panic!("`{name}` and `{other}` share the variant key {}", v.variant_key());
        }
        if let Some(other) = hashes.insert(v.content_hash(), name) {
            panic!("`{name}` and `{other}` share the content hash {}", v.content_hash());
        }
    }
    assert_eq!(keys.len(), variants.len());
}

#[test]
fn content_hash_is_pinned() {
    // SHA-256 of "hga-spec-v1\0" followed by the spec's canonical JSON, first 8 bytes. A change here means
    // every stored cache entry and tuned config is orphaned: bump CANONICAL_VERSION on purpose instead.
    let v = qwen3_30b();
    assert_eq!(
        serde_json::to_string(v.spec()).unwrap(),
        r#"{"model":{"q_heads":32,"kv_heads":4,"head_dim":128,"rope_theta":1000000.0,"rope_style":"neox","rotary_dim":128,"dtype":"bf16"},"routing":{"chunk":64,"group":16,"keep_first":2,"keep_last":8,"top_chunks":16,"top_groups":32,"score":"mixed_rope","sharing":"per_query_head"},"kernel":{"threads":128,"split_k":4,"tile_tokens":64,"vec_width":8}}"#
    );
    assert_eq!(v.content_hash(), "59f062178952f714");
    assert_eq!(v.content_hash().len(), 16);
}

#[test]
fn content_hash_ignores_field_order() {
    let mut r = rng();
    let mut specs: Vec<ValidSpec> = one_field_changes().into_iter().map(|(_, v)| v).collect();
    specs.extend((0..100).map(|_| random_spec(&mut r)));
    for v in specs {
        for _ in 0..5 {
            let text = shuffled_toml(&v, &mut r);
            let back = Spec::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(back, v, "{text}");
            assert_eq!(back.content_hash(), v.content_hash(), "{text}");
            assert_eq!(back.variant_key(), v.variant_key(), "{text}");
        }
    }
}

#[test]
fn omitted_defaults_hash_like_explicit_defaults() {
    let model = "q_heads = 32\nkv_heads = 4\nhead_dim = 128\nrope_theta = 1e6\n";
    let texts = [
        format!("[model]\n{model}"),
        format!("[model]\n{model}rotary_dim = 128\n"),
        format!("[model]\n{model}rope_style = \"neox\"\ndtype = \"bf16\"\n"),
        format!("[model]\n{model}[routing]\n[kernel]\n"),
        format!("[model]\n{model}[routing]\ntop_groups = 32\nscore = \"mixed_rope\"\n[kernel]\nsplit_k = 4\n"),
        "[model]\nq_heads = 32\nkv_heads = 4\nhead_dim = 128\nrope_theta = 1000000.0\nrotary_dim = 128\n\
         rope_style = \"neox\"\ndtype = \"bf16\"\n[routing]\nchunk = 64\ngroup = 16\nkeep_first = 2\n\
         keep_last = 8\ntop_chunks = 16\ntop_groups = 32\nscore = \"mixed_rope\"\nsharing = \"per_query_head\"\n\
         [kernel]\nthreads = 128\nsplit_k = 4\ntile_tokens = 64\nvec_width = 8\n"
            .to_string(),
    ];
    let want = qwen3_30b();
    for text in texts {
        let v = Spec::from_toml(&text).unwrap();
        assert_eq!(v, want, "{text}");
        assert_eq!(v.content_hash(), "59f062178952f714", "{text}");
    }
    // The builder path normalizes the same way.
    let explicit = Spec::new(ModelShape::new(32, 4, 128, 1e6).rotary_dim(128)).validate().unwrap();
    assert_eq!(explicit.content_hash(), want.content_hash());
    // A partial rotary dimension is not a default.
    let partial = Spec::new(ModelShape::new(32, 4, 128, 1e6).rotary_dim(64)).validate().unwrap();
    assert_ne!(partial.content_hash(), want.content_hash());
}
