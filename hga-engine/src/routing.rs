//! Routing specs for a checkpoint: from a hga-dsl TOML file (with or without a `[model]` section) or
//! from command-line overrides of the reference router.

use crate::error::EngineError;
use hga_dsl::{ModelShape, Routing, ScoreKind, Sharing, Spec, ValidSpec};

/// Reads a hga-dsl TOML spec for a model whose attention is `model` (from its `config.json`).
///
/// A file without `[model]` gets the checkpoint's; a file with one must agree with it (the head layout
/// and RoPE are the model's facts, not a choice). `origin` names the spec in errors.
pub fn spec_for_model(text: &str, origin: &str, model: &ValidSpec) -> Result<ValidSpec, EngineError> {
    let spec_err = |source| EngineError::Spec { origin: origin.to_string(), source };
    let mut table: toml::Table = toml::from_str(text)
        .map_err(|e: toml::de::Error| spec_err(hga_dsl::SpecError::Parse { message: e.to_string(), span: e.span() }))?;
    let has_model = table.contains_key("model");
    if !has_model {
        let shape = toml::Value::try_from(model.model()).expect("a model shape always serializes");
        table.insert("model".to_string(), shape);
    }
    let text = toml::to_string(&table).expect("a parsed TOML table always serializes");
    let spec = Spec::from_toml(&text).map_err(spec_err)?;
    if has_model {
        check_same_model(spec.model(), model.model(), origin)?;
    }
    Ok(spec)
}

fn check_same_model(spec: &ModelShape, model: &ModelShape, origin: &str) -> Result<(), EngineError> {
    let differ = |field: &'static str, a: String, b: String| {
        if a == b {
            Ok(())
        } else {
            Err(EngineError::SpecModelMismatch { origin: origin.to_string(), field, spec_value: a, model_value: b })
        }
    };
    differ("q_heads", spec.q_heads.to_string(), model.q_heads.to_string())?;
    differ("kv_heads", spec.kv_heads.to_string(), model.kv_heads.to_string())?;
    differ("head_dim", spec.head_dim.to_string(), model.head_dim.to_string())?;
    differ("rope_theta", spec.rope_theta.to_string(), model.rope_theta.to_string())?;
    differ("rope_style", format!("{:?}", spec.rope_style), format!("{:?}", model.rope_style))?;
    differ("rotary_dim", format!("{:?}", spec.rotary_dim), format!("{:?}", model.rotary_dim))?;
    differ("rope_scaling", format!("{:?}", spec.rope_scaling), format!("{:?}", model.rope_scaling))
}

/// Overrides of the reference router's parameters (each `None` keeps the default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutingOverrides {
    /// `routing.chunk`.
    pub chunk: Option<u32>,
    /// `routing.group`.
    pub group: Option<u32>,
    /// `routing.keep_first`.
    pub keep_first: Option<u32>,
    /// `routing.keep_last`.
    pub keep_last: Option<u32>,
    /// `routing.top_chunks`.
    pub top_chunks: Option<u32>,
    /// `routing.top_groups`.
    pub top_groups: Option<u32>,
    /// `routing.score`.
    pub score: Option<ScoreKind>,
    /// `routing.sharing`.
    pub sharing: Option<Sharing>,
    /// Budgets large enough to open every candidate (HGA then equals dense).
    pub full_budget: bool,
}

impl RoutingOverrides {
    /// Whether any parameter is overridden.
    pub fn any(&self) -> bool {
        *self != RoutingOverrides::default()
    }

    /// The reference routing with these overrides.
    pub fn routing(&self) -> Routing {
        let mut r = Routing::default();
        if self.full_budget {
            r = r.full_budget();
        }
        r.chunk = self.chunk.unwrap_or(r.chunk);
        r.group = self.group.unwrap_or(r.group);
        r.keep_first = self.keep_first.unwrap_or(r.keep_first);
        r.keep_last = self.keep_last.unwrap_or(r.keep_last);
        r.top_chunks = self.top_chunks.unwrap_or(r.top_chunks);
        r.top_groups = self.top_groups.unwrap_or(r.top_groups);
        r.score = self.score.unwrap_or(r.score);
        r.sharing = self.sharing.unwrap_or(r.sharing);
        r
    }

    /// The spec for `model` (validated: an out-of-range override names its field).
    pub fn spec(&self, model: &ValidSpec) -> Result<ValidSpec, EngineError> {
        model
            .with_routing(self.routing())
            .map_err(|source| EngineError::Spec { origin: "command-line flags".to_string(), source })
    }

    /// A short name: `hga` plus the overridden fields.
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        let mut push = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{name}={v}"));
            }
        };
        if self.full_budget {
            push("budget", Some("full".to_string()));
        }
        push("chunk", self.chunk.map(|x| x.to_string()));
        push("group", self.group.map(|x| x.to_string()));
        push("keep_first", self.keep_first.map(|x| x.to_string()));
        push("keep_last", self.keep_last.map(|x| x.to_string()));
        push("top_chunks", self.top_chunks.map(|x| x.to_string()));
        push("top_groups", self.top_groups.map(|x| x.to_string()));
        push("score", self.score.map(|x| x.short().to_string()));
        push("sharing", self.sharing.map(|x| x.short().to_string()));
        if parts.is_empty() {
            "hga".to_string()
        } else {
            format!("hga({})", parts.join(","))
        }
    }
}

/// `spec` with `chunks` more `top_chunks` and `groups` more `top_groups`: the budgets of a lookahead
/// route ([`crate::attention::Lookahead`]), validated (an error naming `--lookahead` when they overflow
/// or break the spec's rules).
pub fn widen(spec: &ValidSpec, chunks: u32, groups: u32) -> Result<ValidSpec, EngineError> {
    let mut r = spec.routing().clone();
    let value = format!("{chunks},{groups}");
    let (Some(c), Some(g)) = (r.top_chunks.checked_add(chunks), r.top_groups.checked_add(groups)) else {
        return Err(EngineError::argument(
            "--lookahead",
            value,
            "top_chunks + CHUNKS and top_groups + GROUPS overflow",
        ));
    };
    (r.top_chunks, r.top_groups) = (c, g);
    spec.with_routing(r)
        .map_err(|e| EngineError::argument("--lookahead", value, format!("the wider route is invalid: {e}")))
}

/// One-line description of a spec's routing, for tables.
pub fn describe(spec: &ValidSpec) -> String {
    let r = spec.routing();
    format!(
        "chunk {} group {} keep {}/{} top {}/{} {} {}",
        r.chunk,
        r.group,
        r.keep_first,
        r.keep_last,
        r.top_chunks,
        r.top_groups,
        r.score.short(),
        r.sharing.short()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hga_dsl::presets;

    fn tiny() -> ValidSpec {
        Spec::new(presets::find("tiny-code").unwrap().shape).validate().unwrap()
    }

    #[test]
    fn routing_only_file_takes_the_model() {
        let s = spec_for_model("[routing]\ntop_chunks = 64\ntop_groups = 128\n", "t.toml", &tiny()).unwrap();
        assert_eq!((s.routing().top_chunks, s.routing().top_groups, s.model().q_heads), (64, 128, 8));
    }

    #[test]
    fn mismatched_model_is_named() {
        let text = "[model]\nq_heads = 8\nkv_heads = 2\nhead_dim = 128\nrope_theta = 10000.0\n";
        let e = spec_for_model(text, "t.toml", &tiny()).unwrap_err().to_string();
        assert!(e.contains("model.rope_theta = 10000 but the checkpoint has 1000000"), "{e}");
    }

    #[test]
    fn invalid_routing_names_field() {
        let e = spec_for_model("[routing]\ngroup = 48\n", "t.toml", &tiny()).unwrap_err().to_string();
        assert!(e.contains("t.toml") && e.contains("routing.group = 48: must divide routing.chunk (64)"), "{e}");
        let o = RoutingOverrides { top_groups: Some(1000), ..Default::default() };
        let e = o.spec(&tiny()).unwrap_err().to_string();
        assert!(e.contains("command-line flags") && e.contains("routing.top_groups = 1000"), "{e}");
    }

    #[test]
    fn widen_adds_budgets_and_names_the_flag() {
        let s = widen(&tiny(), 8, 32).unwrap();
        assert_eq!((s.routing().top_chunks, s.routing().top_groups), (24, 64));
        assert_eq!(s.model(), tiny().model());
        let e = widen(&tiny(), 0, 100).unwrap_err().to_string();
        assert!(e.contains("--lookahead = 0,100") && e.contains("routing.top_groups = 132"), "{e}");
        let e = widen(&tiny(), u32::MAX, 0).unwrap_err().to_string();
        assert!(e.contains("--lookahead") && e.contains("overflow"), "{e}");
    }

    #[test]
    fn labels_name_overrides() {
        assert_eq!(RoutingOverrides::default().label(), "hga");
        let o = RoutingOverrides { top_chunks: Some(64), sharing: Some(Sharing::PerKvHead), ..Default::default() };
        assert_eq!(o.label(), "hga(top_chunks=64,sharing=kvh)");
    }
}
