//! The summary table printed at the end of a run.

use crate::buckets::fmt_context;
use hga_dsl::tuned::{short_name, TunedConfig};

/// A readable table: per bucket the winner, its time, the runner-up and margin, and the speed-up over the
/// built-in default parameters.
pub fn table(cfg: &TunedConfig) -> String {
    let p = &cfg.provenance;
    let mut rows = vec![[
        "context".to_string(),
        "batch".into(),
        "choice".into(),
        "µs/layer".into(),
        "runner-up".into(),
        "margin".into(),
        "default µs".into(),
        "speed-up".into(),
    ]];
    for c in &cfg.choices {
        let speedup = if c.default_us.is_finite() { format!("{:.2}×", c.default_us / c.time_us) } else { "-".into() };
        rows.push([
            fmt_context(c.context),
            c.batch.to_string(),
            short_name(&c.pick.kernel),
            format!("{:.2}", c.time_us),
            c.runner_up.clone(),
            format!("{:.1}%", c.margin * 100.0),
            if c.default_us.is_finite() { format!("{:.2}", c.default_us) } else { "-".into() },
            speedup,
        ]);
    }
    let widths: Vec<usize> = (0..8).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = format!(
        "{} on {} ({}), {}: {} candidates, {} pruned; default over all buckets: {}\n",
        p.model,
        p.gpu_name,
        p.arch,
        p.mode,
        cfg.space.variants.len(),
        cfg.space.pruned.len(),
        short_name(&cfg.default.kernel)
    );
    for (k, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (s, &w))| {
                let pad = w - s.chars().count();
                if i == 2 || i == 4 {
                    format!("{s}{}", " ".repeat(pad))
                } else {
                    format!("{}{s}", " ".repeat(pad))
                }
            })
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
        if k == 0 {
            out += &widths.iter().map(|&w| "-".repeat(w)).collect::<Vec<_>>().join("  ");
            out.push('\n');
        }
    }
    out
}
