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

/// Times every candidate in every bucket. `budget` bounds the whole search (split evenly over the buckets);
/// a measured search times the built-in default first, then candidates in the order of `order` (most
/// promising first), so a budget cut drops the least promising. Candidates `order` leaves out get the
/// reason `skipped`.
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
    let per_bucket = budget.map(|b| b / buckets.len().max(1) as u32);
    let mut out = Vec::new();
    for (&w, seq) in buckets.iter().zip(&seqs) {
        bar.set_message(format!("context {} batch {}", crate::buckets::fmt_context(w.context), w.batch));
        let start = Instant::now();
        let mut times = vec![None; n];
        let mut reasons: Vec<Option<String>> = vec![None; n];
        for (k, &i) in seq.iter().enumerate() {
            if let Some(limit) = per_bucket {
                // The default and the first ranked candidate are always timed.
                if k >= 2 && start.elapsed() > limit {
                    let why = format!("not timed: time budget of {:.1} s per bucket spent", limit.as_secs_f64());
                    for &j in &seq[k..] {
                        reasons[j] = Some(why.clone());
                    }
                    bar.inc((seq.len() - k) as u64);
                    break;
                }
            }
            match timer.time(&space.candidates[i], w) {
                Ok(t) if t.is_finite() && t > 0.0 => times[i] = Some(round_us(t)),
                Ok(t) => reasons[i] = Some(format!("invalid time {t}")),
                Err(e) => reasons[i] = Some(e),
            }
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
