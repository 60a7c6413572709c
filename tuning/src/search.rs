//! The search: every candidate timed (or modeled) in every (context, batch) bucket, within a time
//! budget; the winner, runner-up and margin per bucket; one default over all buckets.

use crate::cost::{step_cost, Assumptions, Workload};
use crate::gpu::GpuSpec;
use crate::space::{Candidate, Space};
use hga_dsl::KernelParams;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::{Duration, Instant};

/// Times one candidate in one bucket: µs per decode step of one layer, or why it has no time.
pub trait Timer {
    /// The time, or the reason there is none (output mismatch, launch error).
    fn time(&mut self, cand: &Candidate, w: Workload) -> Result<f64, String>;
    /// Whether timing is cheap enough that candidates need no ordering by promise.
    fn is_model(&self) -> bool;
}

/// The cost model as a timer.
pub struct ModelTimer<'a> {
    /// The GPU modeled.
    pub gpu: &'a GpuSpec,
    /// The model's assumptions.
    pub assumptions: Assumptions,
}

impl Timer for ModelTimer<'_> {
    fn time(&mut self, cand: &Candidate, w: Workload) -> Result<f64, String> {
        Ok(step_cost(self.gpu, &cand.spec, w, &self.assumptions).total_us)
    }
    fn is_model(&self) -> bool {
        true
    }
}

/// Figures of one bucket.
#[derive(Debug, Clone)]
pub struct BucketResult {
    /// The bucket.
    pub workload: Workload,
    /// µs per candidate (index of `Space::candidates`); `None` = no time, see `untimed`.
    pub times: Vec<Option<f64>>,
    /// `name: reason` for candidates without a time.
    pub untimed: Vec<String>,
}

impl BucketResult {
    /// Candidate indices with a time, fastest first (ties: lower index first).
    pub fn ranking(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.times.len()).filter(|&i| self.times[i].is_some()).collect();
        idx.sort_by(|&a, &b| {
            let (ta, tb) = (self.times[a].unwrap_or(f64::INFINITY), self.times[b].unwrap_or(f64::INFINITY));
            ta.total_cmp(&tb).then(a.cmp(&b))
        });
        idx
    }
}

/// Rounds a time to nanoseconds, so files do not carry noise digits.
pub fn round_us(us: f64) -> f64 {
    (us * 1000.0).round() / 1000.0
}

/// The index of the candidate whose kernels the built-in default parameters produce, if any.
pub fn default_index(space: &Space) -> Option<usize> {
    let want = hga_dsl::tuned::short_name(&KernelParams::default());
    space
        .candidates
        .iter()
        .position(|c| c.name == want)
        .or_else(|| space.duplicates.iter().find(|(n, _)| *n == want).map(|(_, i)| *i))
}

/// Times every candidate in every bucket. `budget` bounds the whole search: each bucket gets what is left
/// of it over the buckets left (time a bucket does not use goes to the next), and a timing starts only
/// while the bucket's share still holds one more as long as its last. A measured search times the
/// built-in default first, then candidates in the order of `order` (most promising first), so a budget
/// cut drops the least promising. The default and the first ranked candidate are timed whatever the
/// budget: the least a bucket's result needs. Candidates `order` leaves out get the reason `skipped`.
pub fn run(
    space: &Space,
    buckets: &[Workload],
    timer: &mut dyn Timer,
    budget: Option<Duration>,
    order: &dyn Fn(Workload) -> Vec<usize>,
    skipped: &str,
    progress: bool,
) -> Vec<BucketResult> {
    let n = space.candidates.len();
    let seqs: Vec<Vec<usize>> = buckets
        .iter()
        .map(|&w| {
            let mut seq = order(w);
            if let Some(d) = default_index(space) {
                seq.retain(|&i| i != d);
                seq.insert(0, d);
            }
            seq
        })
        .collect();
    let bar = if progress {
        let pb = ProgressBar::new(seqs.iter().map(Vec::len).sum::<usize>() as u64);
        pb.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb
    } else {
        ProgressBar::hidden()
    };
    let search_start = Instant::now();
    let mut out = Vec::new();
    for (b, (&w, seq)) in buckets.iter().zip(&seqs).enumerate() {
        bar.set_message(format!("context {} batch {}", crate::buckets::fmt_context(w.context), w.batch));
        let share = budget.map(|total| total.saturating_sub(search_start.elapsed()) / (buckets.len() - b) as u32);
        let start = Instant::now();
        let mut last = Duration::ZERO;
        let mut times = vec![None; n];
        let mut reasons: Vec<Option<String>> = vec![None; n];
        for (k, &i) in seq.iter().enumerate() {
            if let Some(limit) = share {
                if k >= 2 && start.elapsed() + last > limit {
                    let why = format!(
                        "not timed: this bucket's share of the time budget ({:.1} s) spent",
                        limit.as_secs_f64()
                    );
                    for &j in &seq[k..] {
                        reasons[j] = Some(why.clone());
                    }
                    bar.inc((seq.len() - k) as u64);
                    break;
                }
            }
            let t0 = Instant::now();
            match timer.time(&space.candidates[i], w) {
                Ok(t) if t.is_finite() && t > 0.0 => times[i] = Some(round_us(t)),
                Ok(t) => reasons[i] = Some(format!("invalid time {t}")),
                Err(e) => reasons[i] = Some(e),
            }
            last = t0.elapsed();
            bar.inc(1);
        }
        for (i, r) in reasons.iter_mut().enumerate() {
            if times[i].is_none() && r.is_none() {
                *r = Some(skipped.to_string());
            }
        }
        let untimed = reasons
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|r| format!("{}: {r}", space.candidates[i].name)))
            .collect();
        out.push(BucketResult { workload: w, times, untimed });
    }
    bar.finish_and_clear();
    out
}

/// The candidate with the least geometric-mean slowdown against each bucket's winner, among those timed
/// in every bucket (ties: lower index). `None` when no candidate was timed everywhere.
pub fn overall_default(results: &[BucketResult]) -> Option<usize> {
    let n = results.first()?.times.len();
    let mut best: Option<(f64, usize)> = None;
    for i in 0..n {
        let mut log_sum = 0.0;
        let mut ok = true;
        for r in results {
            let winner = r.ranking().first().and_then(|&j| r.times[j]);
            match (r.times[i], winner) {
                (Some(t), Some(w)) => log_sum += (t / w).ln(),
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        if ok && best.is_none_or(|(b, _)| log_sum < b - 1e-12) {
            best = Some((log_sum, i));
        }
    }
    best.map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hga_dsl::{presets, Spec};

    /// A timer that takes `cost` per timing, as a device timing would (sleeps never return early).
    struct Sleeper {
        cost: Duration,
        timed: usize,
    }
    impl Timer for Sleeper {
        fn time(&mut self, _: &Candidate, _: Workload) -> Result<f64, String> {
            std::thread::sleep(self.cost);
            self.timed += 1;
            Ok(10.0 + self.timed as f64)
        }
        fn is_model(&self) -> bool {
            false
        }
    }

    #[test]
    fn the_budget_holds_beyond_each_buckets_minimum() {
        let shape = presets::find("qwen3-30b").unwrap().shape;
        let candidates: Vec<Candidate> = crate::space::grid()
            .into_iter()
            .filter_map(|k| Spec::new(shape.clone()).with_kernel(k).validate().ok())
            .take(12)
            .map(|spec| Candidate { name: hga_dsl::tuned::short_name(spec.kernel()), spec })
            .collect();
        let space = Space { candidates, pruned: Vec::new(), duplicates: Vec::new() };
        let buckets: Vec<Workload> =
            [1u64 << 12, 1 << 16, 1 << 20].iter().map(|&c| Workload { context: c, batch: 1 }).collect();
        let all: Vec<usize> = (0..space.candidates.len()).collect();
        let cost = Duration::from_millis(10);
        let budget = Duration::from_millis(150);
        let mut timer = Sleeper { cost, timed: 0 };
        let results = run(&space, &buckets, &mut timer, Some(budget), &|_| all.clone(), "skipped", false);
        // Every bucket times its minimum (two), and a timing starts only while the bucket's share holds
        // one more: at most one timing's overshoot per bucket past the budget.
        let per_bucket: Vec<usize> = results.iter().map(|r| r.times.iter().flatten().count()).collect();
        assert!(per_bucket.iter().all(|&n| n >= 2), "{per_bucket:?}");
        let cap = (budget.as_millis() / cost.as_millis()) as usize + buckets.len();
        assert!(timer.timed <= cap, "{} timings, {cap} fit the budget: {per_bucket:?}", timer.timed);
        // The budget cut is reported on every untimed candidate.
        for r in &results {
            let untimed = space.candidates.len() - r.times.iter().flatten().count();
            assert_eq!(r.untimed.len(), untimed);
            assert!(r.untimed.iter().all(|u| u.contains("share of the time budget")), "{:?}", r.untimed);
        }
        // Without a budget, everything is timed.
        let mut timer = Sleeper { cost: Duration::ZERO, timed: 0 };
        let results = run(&space, &buckets, &mut timer, None, &|_| all.clone(), "skipped", false);
        assert!(results.iter().all(|r| r.untimed.is_empty()));
        assert_eq!(timer.timed, space.candidates.len() * buckets.len());
    }
}
