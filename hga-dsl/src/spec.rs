//! The spec (what users write) and the validated spec (what everything else consumes).

use crate::error::{Checker, SpecError};
use crate::kernel::{allowed, KernelParams};
use crate::model::{ModelShape, RopeScaling};
use crate::rope::Rope;
use crate::routing::Routing;
use serde::{Deserialize, Serialize};

/// A spec as written: TOML with the sections `[model]`, `[routing]` and `[kernel]`, or built in Rust.
/// It may be invalid; [`Spec::validate`] is the only way to a [`ValidSpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Head layout and RoPE.
    pub model: ModelShape,
    /// Routing parameters (defaults: the reference router).
    #[serde(default)]
    pub routing: Routing,
    /// Kernel parameters (defaults: the untuned kernels).
    #[serde(default)]
    pub kernel: KernelParams,
}

/// A spec that passed every rule; its fields cannot be changed without validating again.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct ValidSpec(Spec);

impl Spec {
    /// A spec with default routing and kernel parameters.
    pub fn new(model: ModelShape) -> Self {
        Spec { model, routing: Routing::default(), kernel: KernelParams::default() }
    }
    /// Replaces the routing parameters.
    pub fn with_routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }
    /// Replaces the kernel parameters.
    pub fn with_kernel(mut self, kernel: KernelParams) -> Self {
        self.kernel = kernel;
        self
    }

    /// Parses the TOML form (unknown fields are errors) without validating.
    pub fn parse_toml(text: &str) -> Result<Spec, SpecError> {
        toml::from_str(text).map_err(|e| SpecError::Parse { message: e.to_string(), span: e.span() })
    }

    /// Parses and validates the TOML form.
    pub fn from_toml(text: &str) -> Result<ValidSpec, SpecError> {
        Spec::parse_toml(text)?.validate()
    }

    /// Checks every rule, reporting all violations at once; normalizes defaults (`rotary_dim`).
    pub fn validate(mut self) -> Result<ValidSpec, SpecError> {
        let mut c = Checker::default();
        check_model(&mut c, &self.model);
        check_routing(&mut c, &self.routing);
        check_kernel(&mut c, &self.kernel, &self.routing, &self.model);
        c.finish()?;
        self.model.rotary_dim.get_or_insert(self.model.head_dim);
        Ok(ValidSpec(self))
    }
}

fn check_model(c: &mut Checker, m: &ModelShape) {
    c.check((1..=256).contains(&m.q_heads), "model.q_heads", m.q_heads, "must be in 1..=256");
    c.check((1..=256).contains(&m.kv_heads), "model.kv_heads", m.kv_heads, "must be in 1..=256");
    if m.kv_heads >= 1 {
        c.check(
            m.q_heads % m.kv_heads == 0,
            "model.q_heads",
            m.q_heads,
            format!("must be a multiple of model.kv_heads ({})", m.kv_heads),
        );
    }
    c.check(
        allowed::HEAD_DIM.contains(&m.head_dim),
        "model.head_dim",
        m.head_dim,
        format!("must be one of {:?}", allowed::HEAD_DIM),
    );
    c.check(
        m.rope_theta.is_finite() && m.rope_theta > 1.0,
        "model.rope_theta",
        m.rope_theta,
        "must be a finite number > 1",
    );
    if let Some(r) = m.rotary_dim {
        c.check(
            r >= 2 && r % 2 == 0 && r <= m.head_dim,
            "model.rotary_dim",
            r,
            format!("must be even and in 2..=model.head_dim ({})", m.head_dim),
        );
    }
    match m.rope_scaling {
        None => {}
        Some(RopeScaling::Linear { factor }) => {
            c.check(factor.is_finite() && factor > 0.0, "model.rope_scaling.factor", factor, "must be > 0")
        }
        Some(RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position }) => {
            c.check(factor.is_finite() && factor >= 1.0, "model.rope_scaling.factor", factor, "must be >= 1");
            c.check(
                low_freq_factor.is_finite() && low_freq_factor > 0.0,
                "model.rope_scaling.low_freq_factor",
                low_freq_factor,
                "must be > 0",
            );
            c.check(
                high_freq_factor.is_finite() && high_freq_factor > low_freq_factor,
                "model.rope_scaling.high_freq_factor",
                high_freq_factor,
                format!("must be > model.rope_scaling.low_freq_factor ({low_freq_factor})"),
            );
            c.check(
                original_max_position >= 1,
                "model.rope_scaling.original_max_position",
                original_max_position,
                "must be >= 1",
            );
        }
    }
}

fn check_routing(c: &mut Checker, r: &Routing) {
    c.check((2..=1024).contains(&r.chunk), "routing.chunk", r.chunk, "must be in 2..=1024");
    c.check(r.group >= 1, "routing.group", r.group, "must be >= 1");
    if r.group >= 1 {
        c.check(r.chunk % r.group == 0, "routing.group", r.group, format!("must divide routing.chunk ({})", r.chunk));
    }
    c.check(r.top_chunks >= 1, "routing.top_chunks", r.top_chunks, "must be >= 1");
    c.check(r.top_groups >= 1, "routing.top_groups", r.top_groups, "must be >= 1");
    // Only when chunk, group and top_chunks are valid: otherwise the bound would repeat their error.
    if (2..=1024).contains(&r.chunk) && r.group >= 1 && r.chunk % r.group == 0 && r.top_chunks >= 1 {
        let reachable = r.top_chunks as u64 * (r.chunk / r.group) as u64;
        c.check(
            r.top_groups as u64 <= reachable,
            "routing.top_groups",
            r.top_groups,
            format!(
                "must be <= routing.top_chunks × routing.chunk / routing.group ({reachable}): only the \
                 selected chunks' groups are candidates"
            ),
        );
    }
    let window = r.keep_first as u64 + r.keep_last as u64;
    c.check(
        window <= 1 << 20,
        "routing.keep_last",
        r.keep_last,
        "routing.keep_first + routing.keep_last must be <= 1048576 chunks",
    );
}

fn check_kernel(c: &mut Checker, k: &KernelParams, r: &Routing, m: &ModelShape) {
    c.check(
        allowed::THREADS.contains(&k.threads),
        "kernel.threads",
        k.threads,
        format!("must be one of {:?}", allowed::THREADS),
    );
    let (lo, hi) = allowed::SPLIT_K;
    c.check((lo..=hi).contains(&k.split_k), "kernel.split_k", k.split_k, format!("must be in {lo}..={hi}"));
    c.check(
        allowed::TILE_TOKENS.contains(&k.tile_tokens),
        "kernel.tile_tokens",
        k.tile_tokens,
        format!("must be one of {:?}", allowed::TILE_TOKENS),
    );
    if r.group >= 1 && allowed::TILE_TOKENS.contains(&k.tile_tokens) {
        c.check(
            k.tile_tokens % r.group == 0 || r.group % k.tile_tokens == 0,
            "kernel.tile_tokens",
            k.tile_tokens,
            format!("must be a multiple or a divisor of routing.group ({})", r.group),
        );
    }
    c.check(
        allowed::VEC_WIDTH.contains(&k.vec_width),
        "kernel.vec_width",
        k.vec_width,
        format!("must be one of {:?}", allowed::VEC_WIDTH),
    );
    let _ = m;
}

impl ValidSpec {
    /// The head layout and RoPE.
    pub fn model(&self) -> &ModelShape {
        &self.0.model
    }
    /// The routing parameters.
    pub fn routing(&self) -> &Routing {
        &self.0.routing
    }
    /// The kernel parameters.
    pub fn kernel(&self) -> &KernelParams {
        &self.0.kernel
    }
    /// The spec as written (normalized).
    pub fn spec(&self) -> &Spec {
        &self.0
    }
    /// Query heads per KV head.
    pub fn gqa(&self) -> usize {
        (self.0.model.q_heads / self.0.model.kv_heads) as usize
    }
    /// Groups per chunk.
    pub fn groups_per_chunk(&self) -> usize {
        (self.0.routing.chunk / self.0.routing.group) as usize
    }
    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.0.model.head_dim as usize
    }
    /// The RoPE of this spec.
    pub fn rope(&self) -> Rope {
        Rope::of(self)
    }
    /// The same spec with other routing, validated again.
    pub fn with_routing(&self, routing: Routing) -> Result<ValidSpec, SpecError> {
        self.0.clone().with_routing(routing).validate()
    }
    /// The same spec with other kernel parameters, validated again.
    pub fn with_kernel(&self, kernel: KernelParams) -> Result<ValidSpec, SpecError> {
        self.0.clone().with_kernel(kernel).validate()
    }
    /// The TOML form (round-trips through [`Spec::from_toml`]).
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.0).expect("a validated spec always serializes")
    }
}
