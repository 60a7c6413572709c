//! Teacher-forced quality evaluation: mean next-token NLL per position bucket, dense against routing
//! specs, with the attended fraction and the groups fetched per KV head per token.

use crate::attention::{AttentionKind, PositionStats};
use crate::error::EngineError;
use crate::model::Model;
use crate::reference::token_nll;
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

/// What to evaluate: documents are consecutive `doc_bytes`-byte slices of the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalConfig {
    /// Bytes per document.
    pub doc_bytes: usize,
    /// Documents evaluated.
    pub docs: usize,
    /// Index of the first document.
    pub first_doc: usize,
    /// Tokens per forward block (K/V of a block are appended before its positions attend).
    pub block: usize,
}

impl EvalConfig {
    /// Checks the ranges against `data_len` bytes of data.
    pub fn check(&self, data_len: usize) -> Result<(), EngineError> {
        if self.doc_bytes < 2 {
            return Err(EngineError::argument("--doc-bytes", self.doc_bytes, "must be >= 2"));
        }
        if self.docs == 0 {
            return Err(EngineError::argument("--docs", self.docs, "must be >= 1"));
        }
        if self.block == 0 {
            return Err(EngineError::argument("--block", self.block, "must be >= 1"));
        }
        let available = data_len / self.doc_bytes;
        if self.first_doc + self.docs > available {
            return Err(EngineError::argument(
                "--docs",
                self.docs,
                format!(
                    "--first-doc {} + --docs must be <= the {available} whole documents of {} bytes in the data ({data_len} bytes)",
                    self.first_doc, self.doc_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Bucket boundaries of query positions `[0, 4K) [4K, 8K) [8K, 16K) [16K, 32K)`, doubling on for
    /// longer documents and cut at the document's end (its last position has no target and is not scored).
    pub fn buckets(&self) -> Vec<(usize, usize)> {
        let end = self.doc_bytes;
        let mut out = vec![(0, 4096.min(end))];
        let mut lo = 4096;
        while lo < end - 1 {
            out.push((lo, (2 * lo).min(end)));
            lo *= 2;
        }
        out
    }
}

/// One attention configuration to evaluate.
#[derive(Debug, Clone)]
pub struct Run {
    /// Name in tables and JSON.
    pub name: String,
    /// The attention.
    pub kind: AttentionKind,
}

/// Sums over the positions of one bucket.
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    nll: f64,
    tokens: u64,
    stats: PositionStats,
}

impl Acc {
    fn add(&mut self, other: &Acc) {
        self.nll += other.nll;
        self.tokens += other.tokens;
        self.stats.add(&other.stats);
    }

    fn result(&self, range: (usize, usize)) -> BucketResult {
        let s = &self.stats;
        BucketResult {
            from: range.0,
            to: range.1,
            tokens: self.tokens,
            nll: self.nll / self.tokens.max(1) as f64,
            attended_fraction: s.attended as f64 / s.visible.max(1) as f64,
            groups_per_kv_head: (s.routings > 0).then(|| s.groups as f64 / s.routings as f64),
            misses_per_kv_head: (s.cached_routings > 0).then(|| s.misses.map(|m| m as f64 / s.cached_routings as f64)),
            speculation: (s.speculation.routings > 0).then(|| {
                let p = &s.speculation;
                let per = |x: u64| x as f64 / s.cached_routings.max(1) as f64;
                SpeculationResult {
                    recall: p.foreseen as f64 / p.groups.max(1) as f64,
                    prefetched_per_kv_head: per(p.prefetched),
                    late_misses_per_kv_head: per(p.late_misses),
                }
            }),
            lookahead: (s.lookahead.routings > 0).then(|| {
                let la = &s.lookahead;
                let per = |x: u64| x as f64 / la.routings as f64;
                LookaheadResult {
                    recall: la.foreseen as f64 / la.new_groups.max(1) as f64,
                    new_groups_per_kv_head: per(la.new_groups),
                    critical_misses_per_kv_head: per(la.critical_misses),
                    fetched_per_kv_head: per(la.fetched),
                }
            }),
        }
    }
}

/// Results over the query positions `from..to` of every document.
#[derive(Debug, Clone, Serialize)]
pub struct BucketResult {
    /// First position.
    pub from: usize,
    /// One past the last position of the bucket (the document's last position has no target).
    pub to: usize,
    /// Positions scored (all documents).
    pub tokens: u64,
    /// Mean next-token NLL (nats per token).
    pub nll: f64,
    /// Fraction of causally visible (query head, key) pairs attended.
    pub attended_fraction: f64,
    /// Distinct routed groups per KV head per token per layer (the transfer cost); `None` for dense.
    pub groups_per_kv_head: Option<f64>,
    /// Of those, the slot-cache misses under each of [`crate::attention::EVICTIONS`] (FIFO, CLOCK,
    /// LRU), for runs that replay the slot cache; `None` otherwise.
    pub misses_per_kv_head: Option<[f64; 3]>,
    /// Speculative prefetch, for runs that replay it; `None` otherwise.
    pub speculation: Option<SpeculationResult>,
    /// Lookahead prefetch, for runs that replay it; `None` otherwise.
    pub lookahead: Option<LookaheadResult>,
}

/// Lookahead prefetch through a CLOCK slot cache (`crate::attention::LookaheadStats`), per KV head per
/// token per layer like [`BucketResult::misses_per_kv_head`] (whose CLOCK entry is the same cache
/// without prefetch).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LookaheadResult {
    /// Of the groups each real route opened that the previous position's route (same layer and KV
    /// head) did not, the fraction the previous position's wide route opened.
    pub recall: f64,
    /// Groups each real route opened that the previous position's route did not.
    pub new_groups_per_kv_head: f64,
    /// Misses of the real routes: reads on the step's critical path.
    pub critical_misses_per_kv_head: f64,
    /// Groups the wider routes fetched after their step, off the critical path.
    pub fetched_per_kv_head: f64,
}

/// Speculative prefetch through a CLOCK slot cache (`crate::SpeculationStats`), per KV head per token
/// per layer like [`BucketResult::misses_per_kv_head`] (whose CLOCK entry is the same cache without
/// prefetch).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SpeculationResult {
    /// Fraction of the real routes' groups (layers 1..) that the speculative routes opened too.
    pub recall: f64,
    /// Groups prefetched ahead of their layer: reads that overlap the previous layer's work.
    pub prefetched_per_kv_head: f64,
    /// Misses left on the critical path (layer 0's included: it has nothing to speculate from).
    pub late_misses_per_kv_head: f64,
}

/// One run's results.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// The run's name.
    pub name: String,
    /// The routing spec (TOML), for HGA runs.
    pub spec: Option<String>,
    /// Per bucket, all documents.
    pub buckets: Vec<BucketResult>,
    /// All positions of all documents.
    pub overall: BucketResult,
    /// Per document: index, mean NLL per bucket, seconds.
    pub docs: Vec<DocResult>,
}

/// One document of one run.
#[derive(Debug, Clone, Serialize)]
pub struct DocResult {
    /// Document index in the data.
    pub doc: usize,
    /// Mean NLL per bucket.
    pub nll: Vec<f64>,
    /// Wall-clock seconds for the document.
    pub seconds: f64,
}

/// The whole evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Bytes per document.
    pub doc_bytes: usize,
    /// Documents `first_doc..first_doc + docs`.
    pub first_doc: usize,
    /// Number of documents.
    pub docs: usize,
    /// One per run, in the order given.
    pub runs: Vec<RunResult>,
}

/// Progress events of [`evaluate`].
#[derive(Debug, Clone)]
pub enum Progress<'a> {
    /// A run starts on a document.
    Start {
        /// Document index.
        doc: usize,
        /// Run name.
        run: &'a str,
    },
    /// Positions finished.
    Tokens(usize),
    /// A run finished a document.
    Done {
        /// Document index.
        doc: usize,
        /// Run name.
        run: &'a str,
        /// Mean NLL per bucket of this document.
        nll: &'a [f64],
        /// Seconds it took.
        seconds: f64,
    },
}

/// Positions processed per document and run (the last byte has no target).
pub fn scored_positions(cfg: &EvalConfig) -> usize {
    cfg.doc_bytes - 1
}

/// Evaluates `runs` on the documents of `data`, reporting progress to `progress`.
pub fn evaluate(
    model: &Model,
    data: &[u8],
    cfg: &EvalConfig,
    runs: &[Run],
    progress: &mut dyn FnMut(Progress),
) -> Result<EvalReport, EngineError> {
    cfg.check(data.len())?;
    if runs.is_empty() {
        return Err(EngineError::argument("runs", 0, "at least one run (dense or a routing spec) is needed"));
    }
    let buckets = cfg.buckets();
    let mut totals = vec![vec![Acc::default(); buckets.len()]; runs.len()];
    let mut docs = vec![Vec::new(); runs.len()];
    for doc in cfg.first_doc..cfg.first_doc + cfg.docs {
        let bytes = &data[doc * cfg.doc_bytes..(doc + 1) * cfg.doc_bytes];
        for (ri, run) in runs.iter().enumerate() {
            progress(Progress::Start { doc, run: &run.name });
            let t0 = Instant::now();
            let accs = eval_document(model, bytes, &run.kind, cfg.block, &buckets, progress)?;
            let seconds = t0.elapsed().as_secs_f64();
            let nll: Vec<f64> = accs.iter().map(|a| a.nll / a.tokens.max(1) as f64).collect();
            progress(Progress::Done { doc, run: &run.name, nll: &nll, seconds });
            for (t, a) in totals[ri].iter_mut().zip(&accs) {
                t.add(a);
            }
            docs[ri].push(DocResult { doc, nll, seconds });
        }
    }
    let runs = runs
        .iter()
        .zip(totals)
        .zip(docs)
        .map(|((run, acc), docs)| {
            let mut all = Acc::default();
            acc.iter().for_each(|a| all.add(a));
            RunResult {
                name: run.name.clone(),
                spec: run.kind.spec().map(|s| s.to_toml()),
                buckets: acc.iter().zip(&buckets).map(|(a, &b)| a.result(b)).collect(),
                overall: all.result((0, cfg.doc_bytes)),
                docs,
            }
        })
        .collect();
    Ok(EvalReport { doc_bytes: cfg.doc_bytes, first_doc: cfg.first_doc, docs: cfg.docs, runs })
}

/// One document, one run: per-bucket sums.
fn eval_document(
    model: &Model,
    bytes: &[u8],
    kind: &AttentionKind,
    block: usize,
    buckets: &[(usize, usize)],
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<Acc>, EngineError> {
    let vocab = model.config().vocab;
    let tokens: Vec<u32> = bytes.iter().map(|&b| b as u32).collect();
    let n = tokens.len() - 1;
    let mut seq = kind.new_sequence(model.config())?;
    let mut accs = vec![Acc::default(); buckets.len()];
    for start in (0..n).step_by(block) {
        let end = (start + block).min(n);
        let mut stats = vec![PositionStats::default(); end - start];
        let logits = model.forward(&tokens[start..end], seq.as_mut(), &mut stats)?;
        let nll: Vec<f64> =
            logits.par_chunks(vocab).enumerate().map(|(i, row)| token_nll(row, tokens[start + i + 1])).collect();
        for (i, (nll, s)) in nll.iter().zip(&stats).enumerate() {
            let pos = start + i;
            if let Some(b) = buckets.iter().position(|&(lo, hi)| (lo..hi).contains(&pos)) {
                let a = &mut accs[b];
                a.nll += nll;
                a.tokens += 1;
                a.stats.add(s);
            }
        }
        progress(Progress::Tokens(end - start));
    }
    Ok(accs)
}

/// The report as a fixed-width table: one row per run and bucket.
pub fn table(report: &EvalReport) -> String {
    let mut s = format!(
        "{:<36} {:>15} {:>9} {:>9} {:>9} {:>14}\n",
        "run", "positions", "NLL", "vs dense", "attended", "groups/KVh/tok"
    );
    let replayed = report.runs.iter().any(|r| r.overall.misses_per_kv_head.is_some());
    if replayed {
        s.insert_str(s.len() - 1, &format!(" {:>26}", "misses/KVh/tok FIFO CLOCK LRU"));
    }
    let speculated = report.runs.iter().any(|r| r.overall.speculation.is_some());
    if speculated {
        s.insert_str(s.len() - 1, &format!(" {:>33}", "speculation: recall late prefetch"));
    }
    let looked_ahead = report.runs.iter().any(|r| r.overall.lookahead.is_some());
    if looked_ahead {
        s.insert_str(s.len() - 1, &format!(" {:>38}", "lookahead: new recall critical fetched"));
    }
    let dense = report.runs.iter().find(|r| r.spec.is_none());
    for run in &report.runs {
        for (i, b) in run.buckets.iter().chain(std::iter::once(&run.overall)).enumerate() {
            let range = if i == run.buckets.len() { "all".to_string() } else { format!("[{},{})", k(b.from), k(b.to)) };
            let base = dense.map(|d| if i == run.buckets.len() { &d.overall } else { &d.buckets[i] });
            let gap = base.map_or(String::from("-"), |d| format!("{:+.4}", b.nll - d.nll));
            let groups = b.groups_per_kv_head.map_or(String::from("-"), |g| format!("{g:.1}"));
            s += &format!(
                "{:<36} {:>15} {:>9.4} {:>9} {:>9.4} {:>14}",
                run.name, range, b.nll, gap, b.attended_fraction, groups
            );
            if replayed {
                let m =
                    b.misses_per_kv_head.map_or(String::from("-"), |m| format!("{:.2} {:.2} {:.2}", m[0], m[1], m[2]));
                s += &format!(" {m:>29}");
            }
            if speculated {
                let p = b.speculation.map_or(String::from("-"), |p| {
                    format!("{:.3} {:.2} {:.2}", p.recall, p.late_misses_per_kv_head, p.prefetched_per_kv_head)
                });
                s += &format!(" {p:>33}");
            }
            if looked_ahead {
                let la = b.lookahead.map_or(String::from("-"), |la| {
                    let (c, f) = (la.critical_misses_per_kv_head, la.fetched_per_kv_head);
                    format!("{:.2} {:.3} {c:.2} {f:.2}", la.new_groups_per_kv_head, la.recall)
                });
                s += &format!(" {la:>38}");
            }
            s += "\n";
        }
    }
    s
}

fn k(pos: usize) -> String {
    if pos % 1024 == 0 {
        format!("{}K", pos / 1024)
    } else {
        pos.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_the_readme() {
        let c = EvalConfig { doc_bytes: 32768, docs: 1, first_doc: 0, block: 512 };
        assert_eq!(c.buckets(), vec![(0, 4096), (4096, 8192), (8192, 16384), (16384, 32768)]);
        let c = EvalConfig { doc_bytes: 2048, ..c };
        assert_eq!(c.buckets(), vec![(0, 2048)]);
        let c = EvalConfig { doc_bytes: 4097, ..c };
        assert_eq!(c.buckets(), vec![(0, 4096)]);
        let c = EvalConfig { doc_bytes: 4098, ..c };
        assert_eq!(c.buckets(), vec![(0, 4096), (4096, 4098)]);
    }

    #[test]
    fn ranges_are_checked() {
        let c = EvalConfig { doc_bytes: 32768, docs: 13, first_doc: 0, block: 512 };
        let e = c.check(12 * 32768).unwrap_err().to_string();
        assert!(e.contains("--docs = 13") && e.contains("the 12 whole documents"), "{e}");
        let c = EvalConfig { docs: 0, ..c };
        assert!(c.check(1 << 20).unwrap_err().to_string().contains("--docs = 0: must be >= 1"));
    }
}
