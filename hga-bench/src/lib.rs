//! What the device benchmarks of this crate (`hga-bench`, `hga_kernel_bench`) share.

use hga_dsl::{Routing, ScoreKind};

/// Routing a benchmark measures instead of the reference router's: budgets (`--top-chunks`,
/// `--top-groups`: what a wider chunk selection costs on the device; a wider chunk stage at the same
/// group budget moves the same bytes over PCIe, and routes closer to dense: hga-engine's README) and the
/// summary kind (`--score`). The spec's validation checks the budgets (`routing.top_groups` at most the
/// selected chunks' groups); the kernel loader refuses a kind the kernels do not score.
#[derive(clap::Args, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoutingArgs {
    /// Chunks selected per routing unit (default: the reference router's 16).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub top_chunks: Option<u32>,
    /// Groups opened per routing unit (default: the reference router's 32).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub top_groups: Option<u32>,
    /// Summary kind (default: the reference's mixed RoPE).
    #[arg(long, value_enum)]
    pub score: Option<ScoreKind>,
}

impl RoutingArgs {
    /// `r` with the budgets and the kind named here.
    pub fn apply(self, r: Routing) -> Routing {
        Routing { score: self.score.unwrap_or(r.score), ..r.with_budgets(self.top_chunks, self.top_groups) }
    }
}

/// Median of `v` (sorted in place, upper median for an even count); NaN for no samples (a small
/// `hga_kernel_bench --iters` leaves some step kinds untimed).
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::RoutingArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        budgets: RoutingArgs,
    }

    #[test]
    fn routing_args_replace_only_what_is_named() {
        let r = hga_dsl::Routing::default();
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()));
        assert_eq!(parse(&[]).unwrap().budgets.apply(r.clone()), r);
        let wide = parse(&["--top-chunks", "64"]).unwrap().budgets.apply(r.clone());
        assert_eq!((wide.top_chunks, wide.top_groups, wide.chunk), (64, r.top_groups, r.chunk));
        let both = parse(&["--top-chunks", "8", "--top-groups", "16"]).unwrap().budgets.apply(r.clone());
        assert_eq!((both.top_chunks, both.top_groups), (8, 16));
        let zero = parse(&["--top-groups", "0"]).err().expect("0 is refused").to_string();
        assert!(zero.contains("--top-groups"), "{zero}");
        // Past the selected chunks' groups: the spec's validation names the field.
        let past = parse(&["--top-chunks", "2", "--top-groups", "9"]).unwrap().budgets.apply(r);
        let shape = hga_dsl::presets::find("qwen3-30b").unwrap().shape;
        let err = hga_dsl::Spec::new(shape).with_routing(past).validate().unwrap_err().to_string();
        assert!(err.contains("routing.top_groups"), "{err}");
        let mv = parse(&["--score", "meanvar"]).unwrap().budgets.apply(hga_dsl::Routing::default());
        assert_eq!((mv.score, mv.top_chunks), (hga_dsl::ScoreKind::MeanVar, 16));
        assert!(parse(&["--score", "best"]).is_err());
        // Every kind's flag value is its short name.
        use clap::ValueEnum;
        assert_eq!(hga_dsl::ScoreKind::value_variants(), hga_dsl::ScoreKind::ALL);
        for k in hga_dsl::ScoreKind::ALL {
            assert_eq!(k.to_possible_value().unwrap().get_name(), k.short());
            assert_eq!(parse(&["--score", k.short()]).unwrap().budgets.score, Some(k));
        }
    }

    #[test]
    fn median_of_samples() {
        assert!(super::median(&mut []).is_nan());
        assert_eq!(super::median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&mut [4.0, 1.0, 3.0, 2.0]), 3.0);
    }
}
