//! Every validation rule of `Spec::validate` has a failing input whose exact message (field, value, rule)
//! is asserted; several violations are reported at once; unknown fields and malformed TOML are errors.

use hga_dsl::{KernelParams, ModelShape, RopeScaling, Routing, Spec, SpecError};

/// The Qwen3-30B-A3B layout with the reference router and untuned kernels: valid.
fn base() -> Spec {
    Spec::new(ModelShape::new(32, 4, 128, 1.0e6))
}

const LLAMA3: RopeScaling =
    RopeScaling::Llama3 { factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position: 8192 };

/// Validates `spec` and returns its violations as `field = value: rule` lines; panics if it is valid or
/// fails for another reason.
fn violations(spec: Spec) -> Vec<String> {
    match spec.clone().validate() {
        Ok(_) => panic!("expected violations, but the spec validated: {spec:?}"),
        Err(e @ SpecError::Invalid(_)) => {
            let lines: Vec<String> = e.violations().iter().map(|v| v.to_string()).collect();
            assert_eq!(e.to_string(), format!("invalid HGA spec: {}", lines.join("; ")));
            lines
        }
        Err(e) => panic!("expected SpecError::Invalid, got {e:?}"),
    }
}

/// Applies `edit` to the base spec and asserts exactly the violations `want`.
fn expect(edit: impl FnOnce(&mut Spec), want: &[&str]) {
    let mut spec = base();
    edit(&mut spec);
    assert_eq!(violations(spec), want);
}

#[test]
fn the_base_spec_and_its_edges_are_valid() {
    base().validate().unwrap();
    let edges = [
        ModelShape::new(1, 1, 64, 1.0001),
        ModelShape::new(256, 256, 256, 1e12).rotary_dim(256),
        ModelShape::new(256, 1, 96, 1e4).rotary_dim(2),
        ModelShape::new(8, 2, 128, 1e6).rope_scaling(RopeScaling::Linear { factor: 0.5 }),
        ModelShape::new(8, 2, 128, 1e6).rope_scaling(RopeScaling::Llama3 {
            factor: 1.0,
            low_freq_factor: 0.001,
            high_freq_factor: 0.002,
            original_max_position: 1,
        }),
    ];
    for m in edges {
        Spec::new(m.clone()).validate().unwrap_or_else(|e| panic!("{m:?}: {e}"));
    }
    let routing = [
        Routing { chunk: 2, group: 1, top_chunks: 1, top_groups: 2, ..Routing::default() },
        Routing { chunk: 1024, group: 1024, keep_first: 0, keep_last: 0, ..Routing::default() }.full_budget(),
        Routing { keep_first: 1 << 19, keep_last: 1 << 19, ..Routing::default() },
        Routing { top_chunks: 16, top_groups: 64, ..Routing::default() },
    ];
    for r in routing {
        base().with_routing(r.clone()).validate().unwrap_or_else(|e| panic!("{r:?}: {e}"));
    }
    for k in [
        KernelParams { threads: 64, split_k: 1, tile_tokens: 16, vec_width: 2 },
        KernelParams { threads: 512, split_k: 64, tile_tokens: 128, vec_width: 4 },
    ] {
        base().with_kernel(k.clone()).validate().unwrap_or_else(|e| panic!("{k:?}: {e}"));
    }
}

#[test]
fn model_heads() {
    expect(|s| s.model.q_heads = 0, &["model.q_heads = 0: must be in 1..=256"]);
    expect(|s| s.model.q_heads = 260, &["model.q_heads = 260: must be in 1..=256"]);
    expect(|s| s.model.kv_heads = 0, &["model.kv_heads = 0: must be in 1..=256"]);
    expect(
        |s| (s.model.q_heads, s.model.kv_heads) = (512, 512),
        &["model.q_heads = 512: must be in 1..=256", "model.kv_heads = 512: must be in 1..=256"],
    );
    expect(|s| s.model.q_heads = 30, &["model.q_heads = 30: must be a multiple of model.kv_heads (4)"]);
    expect(|s| s.model.kv_heads = 64, &["model.q_heads = 32: must be a multiple of model.kv_heads (64)"]);
}

#[test]
fn model_head_dim() {
    for d in [0, 32, 100, 127, 512] {
        let want = format!("model.head_dim = {d}: must be one of [64, 96, 128, 256]");
        expect(|s| s.model.head_dim = d, &[want.as_str()]);
    }
}

#[test]
fn model_rope_theta() {
    for (theta, shown) in [(1.0, "1"), (0.5, "0.5"), (-1e4, "-10000"), (f64::NAN, "NaN"), (f64::INFINITY, "inf")] {
        let want = format!("model.rope_theta = {shown}: must be a finite number > 1");
        expect(|s| s.model.rope_theta = theta, &[want.as_str()]);
    }
}

#[test]
fn model_rotary_dim() {
    for r in [0, 1, 7, 130, 256] {
        let want = format!("model.rotary_dim = {r}: must be even and in 2..=model.head_dim (128)");
        expect(|s| s.model.rotary_dim = Some(r), &[want.as_str()]);
    }
}

#[test]
fn model_rope_scaling_linear() {
    for (factor, shown) in [(0.0, "0"), (-2.0, "-2"), (f64::NAN, "NaN"), (f64::INFINITY, "inf")] {
        let want = format!("model.rope_scaling.factor = {shown}: must be > 0");
        expect(|s| s.model.rope_scaling = Some(RopeScaling::Linear { factor }), &[want.as_str()]);
    }
}

#[test]
fn model_rope_scaling_llama3() {
    let with = |edit: fn(&mut f64, &mut f64, &mut f64, &mut u64)| {
        move |s: &mut Spec| {
            let RopeScaling::Llama3 {
                mut factor,
                mut low_freq_factor,
                mut high_freq_factor,
                mut original_max_position,
            } = LLAMA3
            else {
                unreachable!()
            };
            edit(&mut factor, &mut low_freq_factor, &mut high_freq_factor, &mut original_max_position);
            s.model.rope_scaling =
                Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position });
        }
    };
    expect(with(|f, _, _, _| *f = 0.5), &["model.rope_scaling.factor = 0.5: must be >= 1"]);
    expect(with(|f, _, _, _| *f = f64::NAN), &["model.rope_scaling.factor = NaN: must be >= 1"]);
    expect(with(|_, lo, _, _| *lo = 0.0), &["model.rope_scaling.low_freq_factor = 0: must be > 0"]);
    expect(with(|_, lo, _, _| *lo = -1.0), &["model.rope_scaling.low_freq_factor = -1: must be > 0"]);
    expect(
        with(|_, _, hi, _| *hi = 1.0),
        &["model.rope_scaling.high_freq_factor = 1: must be > model.rope_scaling.low_freq_factor (1)"],
    );
    expect(
        with(|_, lo, hi, _| (*lo, *hi) = (4.0, 2.5)),
        &["model.rope_scaling.high_freq_factor = 2.5: must be > model.rope_scaling.low_freq_factor (4)"],
    );
    expect(
        with(|_, _, hi, _| *hi = f64::INFINITY),
        &["model.rope_scaling.high_freq_factor = inf: must be > model.rope_scaling.low_freq_factor (1)"],
    );
    expect(with(|_, _, _, o| *o = 0), &["model.rope_scaling.original_max_position = 0: must be >= 1"]);
}

#[test]
fn routing_chunk_and_group() {
    // group 1 keeps the chunk's own rule from dragging the divisibility rule in.
    for c in [0, 1, 1025, 4096] {
        let want = format!("routing.chunk = {c}: must be in 2..=1024");
        expect(|s| (s.routing.chunk, s.routing.group) = (c, 1), &[want.as_str()]);
    }
    expect(|s| s.routing.group = 0, &["routing.group = 0: must be >= 1"]);
    // 128 is a multiple of the tile (64), so only the chunk rule breaks.
    expect(|s| s.routing.group = 128, &["routing.group = 128: must divide routing.chunk (64)"]);
    expect(
        |s| (s.routing.chunk, s.routing.group, s.kernel.tile_tokens) = (100, 32, 32),
        &["routing.group = 32: must divide routing.chunk (100)"],
    );
}

#[test]
fn routing_budgets() {
    expect(|s| s.routing.top_chunks = 0, &["routing.top_chunks = 0: must be >= 1"]);
    expect(|s| s.routing.top_groups = 0, &["routing.top_groups = 0: must be >= 1"]);
    expect(
        |s| s.routing.top_groups = 65,
        &["routing.top_groups = 65: must be <= routing.top_chunks × routing.chunk / routing.group (64): only the \
           selected chunks' groups are candidates"],
    );
    expect(
        |s| (s.routing.top_chunks, s.routing.group) = (3, 64),
        &["routing.top_groups = 32: must be <= routing.top_chunks × routing.chunk / routing.group (3): only the \
           selected chunks' groups are candidates"],
    );
}

#[test]
fn routing_windows() {
    expect(
        |s| s.routing.keep_last = 1 << 20,
        &["routing.keep_last = 1048576: routing.keep_first + routing.keep_last must be <= 1048576 chunks"],
    );
    expect(
        |s| (s.routing.keep_first, s.routing.keep_last) = (u32::MAX, u32::MAX),
        &["routing.keep_last = 4294967295: routing.keep_first + routing.keep_last must be <= 1048576 chunks"],
    );
}

#[test]
fn kernel_params() {
    for t in [0, 32, 96, 1024] {
        let want = format!("kernel.threads = {t}: must be one of [64, 128, 256, 512]");
        expect(|s| s.kernel.threads = t, &[want.as_str()]);
    }
    for k in [0, 65] {
        let want = format!("kernel.split_k = {k}: must be in 1..=64");
        expect(|s| s.kernel.split_k = k, &[want.as_str()]);
    }
    for t in [0, 8, 48, 256] {
        let want = format!("kernel.tile_tokens = {t}: must be one of [16, 32, 64, 128]");
        expect(|s| s.kernel.tile_tokens = t, &[want.as_str()]);
    }
    // A group of 48 tokens (chunk 96) fits no power-of-two tile of 64.
    expect(
        |s| (s.routing.chunk, s.routing.group) = (96, 48),
        &["kernel.tile_tokens = 64: must be a multiple or a divisor of routing.group (48)"],
    );
    for v in [0, 1, 3, 16] {
        let want = format!("kernel.vec_width = {v}: must be one of [2, 4, 8]");
        expect(|s| s.kernel.vec_width = v, &[want.as_str()]);
    }
}

#[test]
fn all_violations_are_reported_at_once_in_field_order() {
    let err = Spec::from_toml(
        r#"
        [model]
        q_heads = 30
        kv_heads = 4
        head_dim = 100
        rope_theta = 0.5
        rotary_dim = 7
        [routing]
        group = 128
        top_chunks = 0
        [kernel]
        threads = 96
        vec_width = 16
        "#,
    )
    .unwrap_err();
    let want = [
        "model.q_heads = 30: must be a multiple of model.kv_heads (4)",
        "model.head_dim = 100: must be one of [64, 96, 128, 256]",
        "model.rope_theta = 0.5: must be a finite number > 1",
        "model.rotary_dim = 7: must be even and in 2..=model.head_dim (100)",
        "routing.group = 128: must divide routing.chunk (64)",
        "routing.top_chunks = 0: must be >= 1",
        "kernel.threads = 96: must be one of [64, 128, 256, 512]",
        "kernel.vec_width = 16: must be one of [2, 4, 8]",
    ];
    let got: Vec<String> = err.violations().iter().map(|v| v.to_string()).collect();
    assert_eq!(got, want);
    assert_eq!(err.to_string(), format!("invalid HGA spec: {}", want.join("; ")));
    // The structured form carries the same three parts.
    let v = &err.violations()[0];
    assert_eq!((v.field.as_str(), v.value.as_str()), ("model.q_heads", "30"));
    assert_eq!(v.rule, "must be a multiple of model.kv_heads (4)");
}

#[test]
fn rules_hold_for_the_toml_form_too() {
    let model = "[model]\nq_heads = 32\nkv_heads = 4\nhead_dim = 128\n";
    let cases = [
        ("rope_theta = nan\n", "model.rope_theta = NaN: must be a finite number > 1"),
        ("rope_theta = inf\n", "model.rope_theta = inf: must be a finite number > 1"),
        (
            "rope_theta = 5e5\n[model.rope_scaling]\ntype = \"llama3\"\nfactor = 8.0\nlow_freq_factor = 4.0\n\
             high_freq_factor = 1.0\noriginal_max_position = 8192\n",
            "model.rope_scaling.high_freq_factor = 1: must be > model.rope_scaling.low_freq_factor (4)",
        ),
        (
            "rope_theta = 1e6\nrope_scaling = { type = \"linear\", factor = 0.0 }\n",
            "model.rope_scaling.factor = 0: must be > 0",
        ),
        ("rope_theta = 1e6\n[routing]\nchunk = 48\ngroup = 16\ntop_groups = 49\n", "routing.top_groups = 49: must be <= routing.top_chunks × routing.chunk / routing.group (48): only the selected chunks' groups are candidates"),
        ("rope_theta = 1e6\n[kernel]\nsplit_k = 0\n", "kernel.split_k = 0: must be in 1..=64"),
    ];
    for (rest, want) in cases {
        let text = format!("{model}{rest}");
        let err = Spec::from_toml(&text).unwrap_err();
        let got: Vec<String> = err.violations().iter().map(|v| v.to_string()).collect();
        assert_eq!(got, [want], "for\n{text}");
    }
}

#[test]
fn revalidation_guards_builder_changes_of_a_valid_spec() {
    let valid = base().validate().unwrap();
    let err = valid.with_routing(Routing { group: 0, ..Routing::default() }).unwrap_err();
    assert_eq!(err.to_string(), "invalid HGA spec: routing.group = 0: must be >= 1");
    let err = valid.with_kernel(KernelParams { split_k: 100, ..KernelParams::default() }).unwrap_err();
    assert_eq!(err.to_string(), "invalid HGA spec: kernel.split_k = 100: must be in 1..=64");
}

/// Parses `text`, expecting a parse error (not a validation error); returns its message.
fn parse_error(text: &str) -> String {
    match Spec::from_toml(text) {
        Err(SpecError::Parse { message, span }) => {
            assert!(span.is_some(), "a parse error should point into the text: {message}");
            message
        }
        other => panic!("expected a parse error for\n{text}\ngot {other:?}"),
    }
}

const MODEL: &str = "[model]\nq_heads = 32\nkv_heads = 4\nhead_dim = 128\nrope_theta = 1e6\n";

#[test]
fn unknown_fields_are_errors_in_every_section() {
    let cases = [
        (format!("{MODEL}[extras]\nfoo = 1\n"), "extras"),
        (format!("variant = \"x\"\n{MODEL}"), "variant"),
        (format!("{MODEL}num_layers = 48\n"), "num_layers"),
        (format!("{MODEL}rope_theta_typo = 2\n"), "rope_theta_typo"),
        (format!("{MODEL}[routing]\ntop_chunk = 16\n"), "top_chunk"),
        (format!("{MODEL}[kernel]\nthread = 128\n"), "thread"),
        (format!("{MODEL}[model.rope_scaling]\ntype = \"linear\"\nfactor = 2.0\nbeta = 1.0\n"), "beta"),
        (
            format!(
                "{MODEL}[model.rope_scaling]\ntype = \"llama3\"\nfactor = 8.0\nlow_freq_factor = 1.0\n\
                 high_freq_factor = 4.0\noriginal_max_position = 8192\noriginal_max_position_embeddings = 8192\n"
            ),
            "original_max_position_embeddings",
        ),
    ];
    for (text, field) in cases {
        let msg = parse_error(&text);
        assert!(msg.contains(&format!("unknown field `{field}`")), "message does not name `{field}`: {msg}");
        // The full error says it is a parse error.
        let full = Spec::from_toml(&text).unwrap_err().to_string();
        assert!(full.starts_with("cannot parse HGA spec: "), "{full}");
    }
}

#[test]
fn malformed_values_and_missing_fields_are_parse_errors() {
    let no_theta = "[model]\nq_heads = 32\nkv_heads = 4\nhead_dim = 128\n";
    assert!(parse_error(no_theta).contains("missing field `rope_theta`"), "{}", parse_error(no_theta));
    assert!(parse_error("[routing]\nchunk = 64\n").contains("missing field `model`"));
    let cases = [
        (format!("{MODEL}[routing]\nscore = \"best\"\n"), "best"),
        (format!("{MODEL}[routing]\nsharing = \"per_layer\"\n"), "per_layer"),
        (format!("{MODEL}rope_style = \"rotate_half\"\n"), "rotate_half"),
        (format!("{MODEL}dtype = \"fp8\"\n"), "fp8"),
        (format!("{MODEL}[model.rope_scaling]\ntype = \"yarn\"\nfactor = 4.0\n"), "unknown variant `yarn`"),
    ];
    for (text, value) in cases {
        let msg = parse_error(&text);
        assert!(msg.contains(value), "message does not name `{value}`: {msg}");
    }
    // Wrong types and negative counts are not silently converted.
    let msg = parse_error("[model]\nq_heads = \"32\"\nkv_heads = 4\nhead_dim = 128\nrope_theta = 1e6\n");
    assert!(msg.contains("q_heads"), "{msg}");
    let msg = parse_error("[model]\nq_heads = -32\nkv_heads = 4\nhead_dim = 128\nrope_theta = 1e6\n");
    assert!(msg.contains("q_heads = -32") && msg.contains("invalid value: integer `-32`, expected u32"), "{msg}");
    let msg = parse_error(&format!("{MODEL}[routing]\nchunk = 64.0\n"));
    assert!(msg.contains("chunk = 64.0") && msg.contains("invalid type: floating point `64.0`"), "{msg}");
    // Plain syntax errors too.
    parse_error("[model\nq_heads = 32\n");
}
