//! What the device benchmarks of this crate (`hga-bench`, `hga_kernel_bench`) share.

use hga_dsl::Routing;

/// Routing budgets a benchmark measures instead of the reference router's (`--top-chunks`,
/// `--top-groups`): what a wider chunk selection costs on the device (a wider chunk stage at the same
/// group budget moves the same bytes over PCIe, and routes closer to dense: hga-engine's README).
/// The spec's validation checks the values (`routing.top_groups` at most the selected chunks' groups).
#[derive(clap::Args, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budgets {
    /// Chunks selected per routing unit (default: the reference router's 16).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub top_chunks: Option<u32>,
    /// Groups opened per routing unit (default: the reference router's 32).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub top_groups: Option<u32>,
}

impl Budgets {
    /// `r` with the budgets named here.
    pub fn apply(self, r: Routing) -> Routing {
        r.with_budgets(self.top_chunks, self.top_groups)
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
    use super::Budgets;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        budgets: Budgets,
    }

    #[test]
    fn budgets_replace_only_what_is_named() {
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
    }

    #[test]
    fn median_of_samples() {
        assert!(super::median(&mut []).is_nan());
        assert_eq!(super::median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&mut [4.0, 1.0, 3.0, 2.0]), 3.0);
    }
}
