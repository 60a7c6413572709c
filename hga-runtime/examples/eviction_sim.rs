//! Slot-cache eviction policies on hga-bench's routed trace, on the CPU: hit rate and misses per step
//! for the same sequence of unions under each [`Eviction`] policy (`Clock`: the kernels'), and three
//! references: `ClockSelected` (`Clock` whose first pass also spares the slots of groups in a chunk
//! some query head selected this step: the cheapest relevance signal a resolve has at hand),
//! `Relevance` (evict the groups whose chunk scores lowest for the current query: a predictor the
//! summaries give for free, not implemented in the kernels) and `Belady` (evict the group used again
//! furthest in the future: the bound of any policy with this many slots).
//!
//! ```text
//! cargo run --release -p hga-runtime --example eviction_sim -- [--contexts 65536,1048576]
//!     [--slots-factor 2] [--warmup 50] [--steps 300] [--rho 0.9] [--seed 1] [--speculate-cos C]
//!     [--lookahead CHUNKS,GROUPS]
//! ```
//!
//! `--lookahead C,G` adds a `Clock+lookahead` row: after each step, the step's own queries routed C
//! chunks and G groups wider per query head are resolved into the partition (`DecodeBatch::lookahead`),
//! off the critical path; the row's misses are the next steps' own. On this trace it beats Belady's
//! bound; on real routing (`hga-engine eval --lookahead`) it removed no misses (BENCHMARKS.md).
//!
//! `--speculate-cos C` adds a `Clock+prefetch` row: before each step, a speculative query of cosine
//! C to the step's own (hga-bench `--speculate-cos`: a stand-in for the next layer's query projected
//! from the previous layer) routes over the chunks closed before the step's token, and its union is
//! resolved into the partition first; the row's misses are those left for the step (the critical
//! path), and a line under the table gives the prefetch's recall and groups fetched per step.
//!
//! The trace is hga-bench's steady state for the Qwen3-30B-A3B shape (32 query heads, 4 KV heads,
//! d 128) and the reference routing (chunk 64, group 16, sinks 2, local 8 chunks, top 16 chunks, top
//! 32 groups, per query head): summary vectors uniform in [-1, 1) (as the bench uploads them), per
//! head `q_t = normalize(ρ·q_(t−1) + (1−ρ)·n_t)·√D`, dot-product scores, one token appended per step.
//! Chunks closed during the run get random summaries too (the bench summarizes its random keys). Each
//! KV head's partition has `slots-factor × GQA × top groups` slots, as in hga-bench.

use hga_runtime::offload::{Eviction, PartitionModel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

const QH: usize = 32;
const KVH: usize = 4;
const D: usize = 128;
const C: usize = 64;
const GPC: usize = C / 16; // groups of 16 tokens
const KF: usize = 2;
const KL: usize = 8;
const TOP_CHUNKS: usize = 16;
const TOP_GROUPS: usize = 32;

/// A standard normal by Box-Muller (as hga-bench draws its queries).
fn normal(rng: &mut StdRng) -> f32 {
    let (u, v): (f32, f32) = (1.0 - rng.random::<f32>(), rng.random());
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

/// The best `k` of `scores` (higher first, then lower index), ascending by index.
fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let by = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, by);
        idx.truncate(k);
    }
    idx.sort_unstable();
    idx
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

struct Args {
    contexts: Vec<usize>,
    slots_factor: usize,
    warmup: usize,
    steps: usize,
    rho: f32,
    seed: u64,
    speculate_cos: Option<f32>,
    /// Extra chunks and groups per query head of the lookahead route (`--lookahead C,G`).
    lookahead: Option<(usize, usize)>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        contexts: vec![65536, 1 << 20],
        slots_factor: 2,
        warmup: 50,
        steps: 300,
        rho: 0.9,
        seed: 1,
        speculate_cos: None,
        lookahead: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let val = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {val}: {e}");
        match flag.as_str() {
            "--contexts" => {
                a.contexts = val.split(',').map(|s| s.parse().map_err(|e| bad(&e))).collect::<Result<_, _>>()?
            }
            "--slots-factor" => a.slots_factor = val.parse().map_err(|e| bad(&e))?,
            "--warmup" => a.warmup = val.parse().map_err(|e| bad(&e))?,
            "--steps" => a.steps = val.parse().map_err(|e| bad(&e))?,
            "--rho" => a.rho = val.parse().map_err(|e| bad(&e))?,
            "--seed" => a.seed = val.parse().map_err(|e| bad(&e))?,
            "--speculate-cos" => a.speculate_cos = Some(val.parse().map_err(|e| bad(&e))?),
            "--lookahead" => {
                let (c, g) = val.split_once(',').ok_or_else(|| bad(&"expected CHUNKS,GROUPS"))?;
                a.lookahead = Some((c.parse().map_err(|e| bad(&e))?, g.parse().map_err(|e| bad(&e))?));
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.contexts.iter().any(|&c| c < (KF + KL + 2) * C) || a.slots_factor == 0 || a.steps == 0 {
        return Err(format!("contexts must be >= {} tokens, --slots-factor and --steps >= 1", (KF + KL + 2) * C));
    }
    if !(0.0..1.0).contains(&a.rho) {
        return Err(format!("--rho {} must be in [0, 1)", a.rho));
    }
    if a.speculate_cos.is_some_and(|c| !(c > 0.0 && c <= 1.0)) {
        return Err(format!("--speculate-cos {:?} must be in (0, 1]", a.speculate_cos));
    }
    Ok(a)
}

/// One step of the trace: per KV head, its union and the best chunk score over its query heads of
/// every chunk (`-inf` outside the candidates).
struct Step {
    unions: Vec<Vec<u32>>,
    relevance: Vec<Vec<f32>>,
    /// Per KV head, the chunks any of its query heads selected.
    selected: Vec<std::collections::HashSet<usize>>,
    /// Per KV head, the union of the speculative query (`--speculate-cos`).
    guesses: Option<Vec<Vec<u32>>>,
    /// Per KV head, the union of this step's query routed wider (`--lookahead`): what a prefetch
    /// issued after the step would bring in for the next one.
    ahead: Option<Vec<Vec<u32>>>,
}

/// One query head's route: its groups, its candidate chunks' scores, its selected chunks.
type HeadRoute = (Vec<u32>, Vec<f32>, Vec<usize>);

/// Per KV head, the distinct groups its query heads opened, in query-head order.
fn unions_of(per_head: &[HeadRoute]) -> Vec<Vec<u32>> {
    per_head
        .chunks(QH / KVH)
        .map(|heads| {
            let mut u: Vec<u32> = Vec::new();
            for g in heads.iter().flat_map(|h| &h.0) {
                if !u.contains(g) {
                    u.push(*g);
                }
            }
            u
        })
        .collect()
}

fn trace(context: usize, a: &Args) -> Vec<Step> {
    let total = a.warmup + a.steps;
    let chunks = (context + total) / C + 1;
    let mut rng = StdRng::seed_from_u64(a.seed ^ context as u64);
    let mut table = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
    let chunk_sum = table(KVH * chunks * D);
    let group_sum = table(KVH * chunks * GPC * D);
    let mut qrng = StdRng::seed_from_u64(a.seed.wrapping_mul(31) ^ 7);
    let mut srng = StdRng::seed_from_u64(a.seed.wrapping_mul(37) ^ 11);
    let mut q = vec![0f32; QH * D];
    let mut steps = Vec::with_capacity(total);
    let unit = |h: &mut [f32]| {
        let norm = dot(h, h).sqrt().max(1e-20);
        h.iter_mut().for_each(|x| *x /= norm);
    };
    // Per query head of `q`: its groups, its candidate chunks' scores and its selected chunks, over
    // the chunks closed by `tokens` tokens.
    let route = |q: &[f32], tokens: usize, (top_chunks, top_groups): (usize, usize)| -> (usize, Vec<HeadRoute>) {
        let closed = tokens / C;
        let sinks_end = KF.min(closed);
        let local_start = closed.saturating_sub(KL).max(sinks_end);
        let per_head = (0..QH)
            .into_par_iter()
            .map(|h| {
                let kvh = h / (QH / KVH);
                let qh = &q[h * D..(h + 1) * D];
                let cs: Vec<f32> =
                    (sinks_end..local_start).map(|c| dot(qh, &chunk_sum[(kvh * chunks + c) * D..][..D])).collect();
                let sel: Vec<usize> = top_k(&cs, top_chunks).into_iter().map(|i| sinks_end + i).collect();
                let cand: Vec<usize> = sel.iter().flat_map(|&c| (0..GPC).map(move |j| c * GPC + j)).collect();
                let gs: Vec<f32> =
                    cand.iter().map(|&g| dot(qh, &group_sum[(kvh * chunks * GPC + g) * D..][..D])).collect();
                (top_k(&gs, top_groups).into_iter().map(|i| cand[i] as u32).collect(), cs, sel)
            })
            .collect();
        (sinks_end, per_head)
    };
    for t in 0..total {
        let rho = if t == 0 { 0.0 } else { a.rho };
        for h in q.chunks_mut(D) {
            h.iter_mut().for_each(|x| *x = rho * *x + (1.0 - rho) * normal(&mut qrng));
            unit(h);
            h.iter_mut().for_each(|x| *x *= (D as f32).sqrt());
        }
        let pos = context - 1 + t;
        // The speculative query routes before the step's token is appended: over the chunks closed by
        // tokens 0..pos.
        let guesses = a.speculate_cos.map(|c| {
            let mut sq = q.clone();
            for h in sq.chunks_mut(D) {
                unit(h);
                let mut n: Vec<f32> = (0..D).map(|_| normal(&mut srng)).collect();
                unit(&mut n);
                let s = (1.0 - c * c).max(0.0).sqrt();
                h.iter_mut().zip(&n).for_each(|(x, y)| *x = c * *x + s * y);
            }
            unions_of(&route(&sq, pos, (TOP_CHUNKS, TOP_GROUPS)).1)
        });
        let (sinks_end, per_head) = route(&q, pos + 1, (TOP_CHUNKS, TOP_GROUPS));
        let ahead = a.lookahead.map(|(c, g)| unions_of(&route(&q, pos + 1, (TOP_CHUNKS + c, TOP_GROUPS + g)).1));
        let heads_of = |kvh: usize| &per_head[kvh * (QH / KVH)..(kvh + 1) * (QH / KVH)];
        let unions = unions_of(&per_head);
        let relevance = (0..KVH)
            .map(|kvh| {
                let mut r = vec![f32::NEG_INFINITY; chunks];
                for (_, cs, _) in heads_of(kvh) {
                    for (i, &x) in cs.iter().enumerate() {
                        r[sinks_end + i] = r[sinks_end + i].max(x);
                    }
                }
                r
            })
            .collect();
        let selected = (0..KVH).map(|kvh| heads_of(kvh).iter().flat_map(|x| x.2.iter().copied()).collect()).collect();
        steps.push(Step { unions, relevance, selected, guesses, ahead });
    }
    steps
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("eviction_sim: {e}");
            std::process::exit(2);
        }
    };
    let slots = a.slots_factor * (QH / KVH) * TOP_GROUPS;
    println!("slots per KV head: {slots}; {} warm-up steps, {} measured; rho {}", a.warmup, a.steps, a.rho);
    println!("| context | policy | hit rate | misses / step (4 KV heads) | union / step |");
    println!("| --- | --- | --- | --- | --- |");
    for &context in &a.contexts {
        let tr = trace(context, &a);
        let mut policies = vec!["Fifo", "Clock", "Lru", "ClockSelected", "Relevance", "Belady"];
        if a.speculate_cos.is_some() {
            policies.push("Clock+prefetch");
        }
        if a.lookahead.is_some() {
            policies.push("Clock+lookahead");
        }
        // Clock+prefetch: (groups prefetched, routed groups the speculation foresaw).
        let (mut prefetched, mut foreseen) = (0usize, 0usize);
        for policy in policies {
            let (mut hits, mut misses) = (0usize, 0usize);
            for kvh in 0..KVH {
                // Belady's bound: the step at which each step's groups are next used.
                let mut next_use: Vec<std::collections::HashMap<u32, usize>> = vec![Default::default(); tr.len()];
                let mut later: std::collections::HashMap<u32, usize> = Default::default();
                for t in (0..tr.len()).rev() {
                    next_use[t] = later.clone();
                    for &g in &tr[t].unions[kvh] {
                        later.insert(g, t);
                    }
                }
                let mut p = PartitionModel::new(slots).expect("slots >= 1");
                let mut last_misses = 0;
                for (t, step) in tr.iter().enumerate() {
                    let u = &step.unions[kvh];
                    let r = match policy {
                        "Fifo" => p.resolve(u, Eviction::Fifo),
                        "Clock" => p.resolve(u, Eviction::Clock),
                        "Lru" => p.resolve(u, Eviction::Lru),
                        "ClockSelected" => {
                            // Clock's classes (old first, then recent), each split by whether the
                            // group's chunk is selected this step (unselected first); clock order within.
                            let recent = hga_runtime::offload::recent_steps(slots, last_misses);
                            let sel = &step.selected[kvh];
                            p.resolve_ranked(u, |g, age| {
                                let young = age.is_some_and(|a| a <= recent);
                                let hot = g.is_some_and(|g| sel.contains(&(g as usize / GPC)));
                                2.0 * f64::from(u8::from(young)) + f64::from(u8::from(hot))
                            })
                        }
                        "Clock+prefetch" => {
                            let guess = &step.guesses.as_ref().expect("traced with --speculate-cos")[kvh];
                            let f = p.resolve(guess, Eviction::Clock).expect("unions hold distinct groups");
                            if t >= a.warmup {
                                prefetched += f.misses - f.uncached;
                                foreseen += u.iter().filter(|g| guess.contains(g)).count();
                            }
                            p.resolve(u, Eviction::Clock)
                        }
                        "Clock+lookahead" => {
                            // The step, then (off its critical path) the prefetch of its wider route.
                            let r = p.resolve(u, Eviction::Clock).expect("unions hold distinct groups");
                            let wide = &step.ahead.as_ref().expect("traced with --lookahead")[kvh];
                            let f = p.resolve(wide, Eviction::Clock).expect("unions hold distinct groups");
                            if t >= a.warmup {
                                prefetched += f.misses - f.uncached;
                            }
                            Ok(r)
                        }
                        "Belady" => {
                            let nu = &next_use[t];
                            p.resolve_ranked(u, |g, _| {
                                g.map_or(f64::NEG_INFINITY, |g| -(*nu.get(&g).unwrap_or(&usize::MAX) as f64))
                            })
                        }
                        _ => {
                            let rel = &step.relevance[kvh];
                            p.resolve_ranked(u, |g, _| g.map_or(f64::NEG_INFINITY, |g| rel[g as usize / GPC] as f64))
                        }
                    }
                    .expect("unions hold distinct groups");
                    last_misses = r.misses;
                    if t >= a.warmup {
                        misses += r.misses;
                        hits += u.len() - r.misses;
                    }
                }
            }
            println!(
                "| {context} | {policy} | {:.1}% | {:.1} | {:.1} |",
                100.0 * hits as f64 / (hits + misses) as f64,
                misses as f64 / a.steps as f64,
                (hits + misses) as f64 / a.steps as f64
            );
            if policy == "Clock+lookahead" {
                // Of the groups each step opens that the step before did not, the share the step
                // before's wider route opened (hga-engine eval --lookahead reports the same on real
                // routing).
                let (mut new, mut foreseen_new) = (0usize, 0usize);
                for w in tr[a.warmup.max(1) - 1..].windows(2) {
                    let ahead = w[0].ahead.as_ref().expect("traced with --lookahead");
                    for ((next, prev), wide) in w[1].unions.iter().zip(&w[0].unions).zip(ahead) {
                        for g in next.iter().filter(|g| !prev.contains(g)) {
                            new += 1;
                            foreseen_new += usize::from(wide.contains(g));
                        }
                    }
                }
                println!(
                    "|  | (lookahead {:?}: {:.1} groups fetched / step after the step; {:.1} new groups / step, {:.1}% of them foreseen) |  |  |  |",
                    a.lookahead.unwrap_or_default(),
                    prefetched as f64 / a.steps as f64,
                    new as f64 / a.steps as f64,
                    100.0 * foreseen_new as f64 / new.max(1) as f64
                );
            }
            if policy == "Clock+prefetch" {
                let routed = (hits + misses) as f64;
                println!(
                    "|  | (prefetch, cosine {}: recall {:.1}%, {:.1} groups fetched / step) |  |  |  |",
                    a.speculate_cos.unwrap_or(0.0),
                    100.0 * foreseen as f64 / routed,
                    prefetched as f64 / a.steps as f64
                );
            }
        }
    }
}
