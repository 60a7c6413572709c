//! Building the tuned config from the search results and writing it deterministically.

use crate::buckets::fmt_context;
use crate::search::{default_index, overall_default, round_us, BucketResult};
use crate::space::Space;
use hga_dsl::tuned::{Choice, Figures, Pick, Provenance, Space as SpaceRecord, TunedConfig, FORMAT_VERSION};
use hga_dsl::ValidSpec;

fn pick_of(spec: &ValidSpec) -> Pick {
    Pick { kernel: spec.kernel().clone(), variant_key: spec.variant_key(), content_hash: spec.content_hash() }
}

/// Assembles the config. A bucket without any timed candidate is left out (its reason is returned in
/// the notes); an error when no bucket has one.
pub fn assemble(
    base: &ValidSpec,
    space: &Space,
    results: &[BucketResult],
    provenance: Provenance,
) -> Result<(TunedConfig, Vec<String>), String> {
    let def = default_index(space);
    let mut notes = Vec::new();
    let all = results;
    let kept: Vec<BucketResult> = all.iter().filter(|r| !r.ranking().is_empty()).cloned().collect();
    for r in all.iter().filter(|r| r.ranking().is_empty()) {
        notes.push(format!(
            "left out context {} batch {}: no candidate has a time ({})",
            fmt_context(r.workload.context),
            r.workload.batch,
            r.untimed.first().map(String::as_str).unwrap_or("nothing to time")
        ));
    }
    if kept.is_empty() {
        return Err(notes.join("; "));
    }
    let results = &kept[..];
    let mut choices = Vec::new();
    let mut figures = Vec::new();
    for r in results {
        let rank = r.ranking();
        let Some(&best) = rank.first() else {
            return Err(format!(
                "no candidate has a time at context {} batch {}: {}",
                fmt_context(r.workload.context),
                r.workload.batch,
                r.untimed.first().map(String::as_str).unwrap_or("nothing to time")
            ));
        };
        let t = r.times[best].unwrap_or(f64::NAN);
        let (runner_up, ru) = match rank.get(1) {
            Some(&i) => (space.candidates[i].name.clone(), r.times[i].unwrap_or(t)),
            None => ("none".to_string(), t),
        };
        let default_us = def.and_then(|d| r.times[d]).unwrap_or(f64::NAN);
        choices.push(Choice {
            context: r.workload.context,
            batch: r.workload.batch,
            pick: pick_of(&space.candidates[best].spec),
            time_us: t,
            runner_up,
            runner_up_us: ru,
            margin: (ru / t - 1.0).max(0.0).round_to(4),
            default_us,
            timed: r.times.iter().filter(|x| x.is_some()).count() as u32,
        });
        figures.push(Figures {
            context: r.workload.context,
            batch: r.workload.batch,
            time_us: r.times.iter().map(|x| x.map(round_us).unwrap_or(f64::NAN)).collect(),
            untimed: r.untimed.clone(),
        });
    }
    let overall = overall_default(results).ok_or("no candidate was timed in every bucket")?;
    let config = TunedConfig {
        format: FORMAT_VERSION,
        provenance,
        model: base.model().clone(),
        routing: base.routing().clone(),
        default: pick_of(&space.candidates[overall].spec),
        choices,
        space: SpaceRecord {
            variants: space.candidates.iter().map(|c| c.name.clone()).collect(),
            pruned: space.pruned.clone(),
        },
        figures,
    };
    Ok((config, notes))
}

trait RoundTo {
    fn round_to(self, digits: i32) -> f64;
}

impl RoundTo for f64 {
    fn round_to(self, digits: i32) -> f64 {
        let s = 10f64.powi(digits);
        (self * s).round() / s
    }
}

/// The file text: a comment header saying what the file is and how it was made, then the TOML.
pub fn render(cfg: &TunedConfig) -> String {
    let p = &cfg.provenance;
    let mut head = format!(
        "# Tuned HGA kernel parameters: {} on {} ({}, {}).\n# Written by `{}`; do not edit by hand.\n",
        p.model, p.gpu_name, p.arch, p.mode, p.command
    );
    if p.mode == hga_dsl::tuned::Mode::Modeled {
        head.push_str(&format!(
            "# MODELED: ranked by the analytic cost model ({}), not measured.\n# To measure, run the same command \
             on a machine with a {}.\n",
            COST_NAME, p.gpu_name
        ));
    }
    head.push('\n');
    head + &cfg.to_toml()
}

const COST_NAME: &str = crate::cost::COST_MODEL_VERSION;

/// The file name for a (GPU, model, budgets): `rtx5090-qwen3-30b.toml`, `h200-qwen3-30b-c64g16.toml`.
pub fn file_name(gpu: &str, model: &str, budgets: crate::Budgets) -> String {
    let clean = |s: &str| {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect::<String>()
    };
    format!("{}-{}{}.toml", clean(gpu), clean(model), budgets.file_suffix())
}
