//! Routing parameters: chunking, the always-attended windows, budgets, how summaries score, and whether
//! routing is per query head or shared per KV head.

use serde::{Deserialize, Serialize};

/// How a chunk or group summary is built and scored against a query.
///
/// Non-exhaustive: better routers are added as new kinds.
/// With the `clap` feature it is a `clap::ValueEnum` of its short names ([`ScoreKind::short`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ScoreKind {
    /// The reference: token-wise sum on high-frequency pairs, anchor-rotated raw sum on low ones.
    #[default]
    #[cfg_attr(feature = "clap", value(name = "mixed", help = "Mixed-RoPE sums (the reference)"))]
    MixedRope,
    /// Plain sum of the rotated keys.
    #[cfg_attr(feature = "clap", value(name = "sum", help = "Sums of the rotated keys"))]
    SumRotated,
    /// Quest-style bound: element-wise min and max of the rotated keys, score `Σ max(q·min, q·max)`.
    /// Written `minmax` (the name), not serde's `min_max`.
    #[serde(rename = "minmax")]
    #[cfg_attr(feature = "clap", value(name = "minmax", help = "Quest-style element-wise min/max bound"))]
    MinMax,
    /// The span's keys as a Gaussian: the mixed-RoPE mean `μ` and the per-dimension variance `σ²` of
    /// the rotated keys, score `q·μ + λ·s·Σ_j q_j² σ_j²` (times `s = 1/√D`), λ =
    /// [`ScoreKind::MEANVAR_SPREAD`]. With λ = ½ and independent dimensions that is
    /// `log E[exp(s·q·k)]`, the span's expected softmax mass per key: a span whose keys spread along
    /// `q` holds a few large logits that its mean hides (hga-engine's README: held-out tiny-code, top
    /// 64 / 32, the gap to dense 67% below the reference's). CPU backend only for now (the GPU kernels
    /// refuse it with a typed error).
    #[serde(rename = "meanvar")]
    #[cfg_attr(
        feature = "clap",
        value(name = "meanvar", help = "Mean and per-dimension variance: expected softmax mass")
    )]
    MeanVar,
}

impl ScoreKind {
    /// Every kind, in declaration order.
    pub const ALL: [ScoreKind; 4] =
        [ScoreKind::MixedRope, ScoreKind::SumRotated, ScoreKind::MinMax, ScoreKind::MeanVar];

    /// λ of [`ScoreKind::MeanVar`]. Larger than the Gaussian's ½ because the diagonal variance leaves
    /// out the dimensions' covariance: on tiny-code (development document 0, [16K,32K), top 16 / 32) λ
    /// ½, 1, 2, 4 gave NLL 0.6211, 0.6151, 0.6118, 0.6328 against the reference's 0.6292.
    pub const MEANVAR_SPREAD: f32 = 2.0;

    /// Short name used in variant keys.
    pub fn short(self) -> &'static str {
        match self {
            ScoreKind::MixedRope => "mixed",
            ScoreKind::SumRotated => "sum",
            ScoreKind::MinMax => "minmax",
            ScoreKind::MeanVar => "meanvar",
        }
    }
    /// Vectors of `head_dim` stored per summary (min/max stores two).
    pub fn vectors(self) -> usize {
        match self {
            ScoreKind::MinMax | ScoreKind::MeanVar => 2,
            _ => 1,
        }
    }
}

/// Who routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sharing {
    /// Each query head picks its own chunks and groups (the reference); the fetch is the union.
    #[default]
    PerQueryHead,
    /// The query heads of one KV head pick together by summed softmax mass of their scores.
    PerKvHead,
}

impl Sharing {
    /// Short name used in variant keys.
    pub fn short(self) -> &'static str {
        match self {
            Sharing::PerQueryHead => "qh",
            Sharing::PerKvHead => "kvh",
        }
    }
}

/// Routing parameters (DESIGN.md §1). Defaults are the reference router's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routing {
    /// Tokens per chunk `C`.
    pub chunk: u32,
    /// Tokens per group `g` (divides `chunk`).
    pub group: u32,
    /// Closed chunks at the start always attended (sinks).
    pub keep_first: u32,
    /// Last closed chunks always attended (local window).
    pub keep_last: u32,
    /// Chunks selected by chunk scoring. Only their groups compete for `top_groups`: selecting more
    /// costs routing work, not transfer, and routes closer to dense (hga-engine's README, "Choosing
    /// routing budgets": 64 instead of the reference's 16 cut tiny-code's gap to dense by 42%).
    pub top_chunks: u32,
    /// Groups opened among the selected chunks' groups: with the windows, what a step attends and
    /// reads over PCIe.
    pub top_groups: u32,
    /// Summary kind.
    pub score: ScoreKind,
    /// Per query head or shared per KV head.
    pub sharing: Sharing,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            chunk: 64,
            group: 16,
            keep_first: 2,
            keep_last: 8,
            top_chunks: 16,
            top_groups: 32,
            score: ScoreKind::MixedRope,
            sharing: Sharing::PerQueryHead,
        }
    }
}

impl Routing {
    /// Budgets large enough that every candidate is opened: HGA then equals dense attention.
    pub fn full_budget(mut self) -> Self {
        self.top_chunks = u32::MAX / 1024;
        self.top_groups = u32::MAX / 1024;
        self
    }

    /// These budgets where given, the others as they are (the benchmarks' and the tuner's
    /// `--top-chunks` / `--top-groups`).
    pub fn with_budgets(self, top_chunks: Option<u32>, top_groups: Option<u32>) -> Self {
        Routing {
            top_chunks: top_chunks.unwrap_or(self.top_chunks),
            top_groups: top_groups.unwrap_or(self.top_groups),
            ..self
        }
    }
}
