//! One sequence's state for one layer: exact K/V per KV head, chunk and group summaries, and HGA
//! decode and prefill attention over them.

use super::attend::attend_ranges;
use super::layout::HeadLayout;
use super::route::{self, HeadRoute, RouteTrace, Windows};
use super::summary::Summarizer;
use crate::RuntimeError;
use hga_dsl::ValidSpec;
use rayon::prelude::*;
use std::collections::HashSet;

/// K/V and summaries of one sequence in one layer, with HGA attention (DESIGN.md §1).
///
/// Keys are appended after RoPE, as engines hold them. A chunk's summaries are built when its last
/// token arrives.
#[derive(Debug, Clone)]
pub struct LayerCache {
    spec: ValidSpec,
    layout: HeadLayout,
    summarizer: Summarizer,
    len: usize,
    /// Per KV head, `[token][d]`.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// Per KV head, `[chunk][width]` and `[group][width]` for closed chunks.
    chunk_sums: Vec<Vec<f32>>,
    group_sums: Vec<Vec<f32>>,
}

impl LayerCache {
    /// An empty cache for one sequence and layer.
    pub fn new(spec: ValidSpec) -> Self {
        let layout = HeadLayout::of(&spec);
        let summarizer = Summarizer::new(spec.routing().score, spec.rope(), spec.routing().chunk, layout.head_dim);
        let per_head = || vec![Vec::new(); layout.kv_heads];
        LayerCache {
            spec,
            layout,
            summarizer,
            len: 0,
            keys: per_head(),
            values: per_head(),
            chunk_sums: per_head(),
            group_sums: per_head(),
        }
    }

    /// The spec this cache routes with.
    pub fn spec(&self) -> &ValidSpec {
        &self.spec
    }

    /// The head layout.
    pub fn layout(&self) -> HeadLayout {
        self.layout
    }

    /// Tokens appended so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no token was appended yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Closed chunks (whose summaries exist).
    pub fn closed_chunks(&self) -> usize {
        self.len / self.spec.routing().chunk as usize
    }

    /// Summary of closed chunk `chunk` of KV head `kv_head` (`head_dim` floats; two vectors, min then
    /// max, for `minmax`), or `None` if it is not closed. The oracle for the GPU summary kernels.
    pub fn chunk_summary(&self, kv_head: usize, chunk: usize) -> Option<&[f32]> {
        let w = self.summarizer.width();
        self.chunk_sums.get(kv_head)?.get(chunk * w..(chunk + 1) * w)
    }

    /// Summary of group `group` (global index) of KV head `kv_head`, or `None` if its chunk is open.
    pub fn group_summary(&self, kv_head: usize, group: usize) -> Option<&[f32]> {
        let w = self.summarizer.width();
        self.group_sums.get(kv_head)?.get(group * w..(group + 1) * w)
    }

    /// Exact keys (`[token][d]`, after RoPE) and values of KV head `kv_head`.
    pub fn kv(&self, kv_head: usize) -> Option<(&[f32], &[f32])> {
        Some((self.keys.get(kv_head)?, self.values.get(kv_head)?))
    }

    /// Appends `n` tokens: `k` and `v` are `[n][kv_heads][d]`, keys after RoPE. On error nothing is
    /// appended.
    pub fn append(&mut self, k: &[f32], v: &[f32]) -> Result<(), RuntimeError> {
        let l = self.layout;
        let n = l.tokens("k", k, l.kv_heads)?;
        HeadLayout::exact("v", v, k.len())?;
        l.tokens("v", v, l.kv_heads)?;
        let d = l.head_dim;
        for t in 0..n {
            for h in 0..l.kv_heads {
                let at = (t * l.kv_heads + h) * d;
                self.keys[h].extend_from_slice(&k[at..at + d]);
                self.values[h].extend_from_slice(&v[at..at + d]);
            }
        }
        let before = self.closed_chunks();
        self.len += n;
        for c in before..self.closed_chunks() {
            self.close_chunk(c);
        }
        Ok(())
    }

    fn close_chunk(&mut self, c: usize) {
        let r = self.spec.routing();
        let (chunk, group, d) = (r.chunk as usize, r.group as usize, self.layout.head_dim);
        for h in 0..self.layout.kv_heads {
            let keys = &self.keys[h][c * chunk * d..(c + 1) * chunk * d];
            self.summarizer.summarize(keys, c * chunk, &mut self.chunk_sums[h]);
            for (j, g) in keys.chunks_exact(group * d).enumerate() {
                self.summarizer.summarize(g, c * chunk + j * group, &mut self.group_sums[h]);
            }
        }
    }

    /// HGA attention of the newest token's query (`q`: `[q_heads][d]`, after RoPE) into `out`.
    pub fn decode(&self, q: &[f32], out: &mut [f32]) -> Result<(), RuntimeError> {
        let pos = self.len.checked_sub(1).ok_or(RuntimeError::PositionOutOfRange { field: "pos", pos: 0, len: 0 })?;
        self.attend(q, pos, out)
    }

    /// HGA attention of one query at position `pos < len()`; it sees tokens `0..=pos` only.
    pub fn attend(&self, q: &[f32], pos: usize, out: &mut [f32]) -> Result<(), RuntimeError> {
        self.attend_traced(q, pos, out).map(|_| ())
    }

    /// [`LayerCache::attend`], also returning the routing decisions.
    pub fn attend_traced(&self, q: &[f32], pos: usize, out: &mut [f32]) -> Result<RouteTrace, RuntimeError> {
        let l = self.layout;
        HeadLayout::exact("q", q, l.q_heads * l.head_dim)?;
        l.tokens("q", q, l.q_heads)?;
        HeadLayout::exact("out", out, q.len())?;
        if pos >= self.len {
            return Err(RuntimeError::PositionOutOfRange { field: "pos", pos, len: self.len });
        }
        let w = Windows::new(self.spec.routing(), (pos + 1) / self.spec.routing().chunk as usize);
        let mut heads = self.route(q, w);
        let d = l.head_dim;
        // Heads in parallel: an engine's decode step has one query per sequence, too few to fill the cores.
        heads.par_iter_mut().zip(out.par_chunks_mut(d)).enumerate().for_each_init(
            Vec::new,
            |scores, (h, (route, o))| {
                let ranges = self.ranges(w, &route.groups, pos);
                route.attended_tokens = ranges.iter().map(|(a, b)| b - a).sum();
                self.attend_head(&q[h * d..(h + 1) * d], h, &ranges, scores, o);
            },
        );
        Ok(RouteTrace { heads })
    }

    /// The routing a query `q` (`[q_heads][d]`, after RoPE) at position `pos` gets from the chunks closed
    /// so far, without attending. `pos` may be `>= len()`: the route of a query whose token this layer
    /// has not appended yet (speculative routing, e.g. from the previous layer's hidden state), which
    /// sees only the chunks closed by the `len()` tokens there are.
    pub fn route_closed(&self, q: &[f32], pos: usize) -> Result<RouteTrace, RuntimeError> {
        let l = self.layout;
        HeadLayout::exact("q", q, l.q_heads * l.head_dim)?;
        l.tokens("q", q, l.q_heads)?;
        let w = Windows::new(self.spec.routing(), (pos + 1).min(self.len) / self.spec.routing().chunk as usize);
        Ok(RouteTrace { heads: self.route(q, w) })
    }

    /// Prefill attention of a block of queries `q` (`[n][q_heads][d]`) at positions `start..start+n`,
    /// all already appended. The block routes once over the chunks closed before `start` (the union of
    /// its queries' choices per head) and attends the tokens from the local window on causally.
    pub fn prefill(&self, q: &[f32], start: usize, out: &mut [f32]) -> Result<RouteTrace, RuntimeError> {
        let l = self.layout;
        let n = l.tokens("q", q, l.q_heads)?;
        HeadLayout::exact("out", out, q.len())?;
        if n == 0 {
            return Ok(RouteTrace { heads: vec![HeadRoute::default(); l.q_heads] });
        }
        if start + n > self.len {
            return Err(RuntimeError::PositionOutOfRange { field: "start + n - 1", pos: start + n - 1, len: self.len });
        }
        let w = Windows::new(self.spec.routing(), start / self.spec.routing().chunk as usize);
        let mut heads = self.route(q, w);
        let d = l.head_dim;
        out.par_chunks_mut(d).enumerate().for_each_init(Vec::new, |scores, (row, o)| {
            let (i, h) = (row / l.q_heads, row % l.q_heads);
            let ranges = self.ranges(w, &heads[h].groups, start + i);
            self.attend_head(&q[row * d..(row + 1) * d], h, &ranges, scores, o);
        });
        for route in heads.iter_mut() {
            route.attended_tokens = self.ranges(w, &route.groups, start + n - 1).iter().map(|(a, b)| b - a).sum();
        }
        Ok(RouteTrace { heads })
    }

    fn attend_head(&self, q: &[f32], head: usize, ranges: &[(usize, usize)], scores: &mut Vec<f32>, out: &mut [f32]) {
        let kv = head / self.layout.gqa();
        attend_ranges(q, &self.keys[kv], &self.values[kv], ranges, self.layout.scale(), scores, out);
    }

    /// Token ranges a head attends at `pos`: sinks, opened groups, then local window and current chunk.
    fn ranges(&self, w: Windows, groups: &[usize], pos: usize) -> Vec<(usize, usize)> {
        let (chunk, group) = (self.spec.routing().chunk as usize, self.spec.routing().group as usize);
        let mut ranges = Vec::with_capacity(groups.len() + 2);
        if w.sinks_end > 0 {
            ranges.push((0, w.sinks_end * chunk));
        }
        let mut sorted = groups.to_vec();
        sorted.sort_unstable();
        ranges.extend(sorted.iter().map(|&g| (g * group, (g + 1) * group)));
        ranges.push((w.local_start * chunk, pos + 1));
        ranges
    }

    /// Routes every query of `q` (`[n][q_heads][d]`) over the candidates of `w`; returns per query
    /// head the union of the chosen chunks and groups (first-chosen first).
    fn route(&self, q: &[f32], w: Windows) -> Vec<HeadRoute> {
        let l = self.layout;
        let r = self.spec.routing();
        let mut heads = vec![HeadRoute::default(); l.q_heads];
        if w.local_start <= w.sinks_end {
            return heads;
        }
        let (d, gqa, gpc) = (l.head_dim, l.gqa(), self.spec.groups_per_chunk());
        let width = self.summarizer.width();
        let scale = l.scale();
        let shared = route::shared(r);
        let mut seen: Vec<(HashSet<usize>, HashSet<usize>)> = vec![Default::default(); l.q_heads];
        let candidates: Vec<usize> = (w.sinks_end..w.local_start).collect();
        for qrow in q.chunks_exact(l.q_heads * d) {
            for kv in 0..l.kv_heads {
                let score_all = |items: &[usize], table: &[f32], h: usize| -> Vec<f32> {
                    let qh = &qrow[h * d..(h + 1) * d];
                    items
                        .iter()
                        .map(|&i| self.summarizer.score(qh, &table[i * width..(i + 1) * width], scale))
                        .collect()
                };
                let hs = kv * gqa..(kv + 1) * gqa;
                let pick = |per_head: Vec<Vec<f32>>, k: usize| -> Vec<Vec<usize>> {
                    if shared {
                        vec![route::top_k(&route::shared_mass(&per_head), k); gqa]
                    } else {
                        per_head.iter().map(|s| route::top_k(s, k)).collect()
                    }
                };
                let chunk_scores = hs.clone().map(|h| score_all(&candidates, &self.chunk_sums[kv], h)).collect();
                let chunk_picks = pick(chunk_scores, r.top_chunks as usize);
                // Candidate groups of each head, ascending so that ties break towards the lower index.
                let group_cands: Vec<Vec<usize>> = chunk_picks
                    .iter()
                    .map(|picks| {
                        let mut cs: Vec<usize> = picks.iter().map(|&i| candidates[i]).collect();
                        cs.sort_unstable();
                        cs.iter().flat_map(|&c| c * gpc..(c + 1) * gpc).collect()
                    })
                    .collect();
                let group_scores =
                    hs.clone().zip(&group_cands).map(|(h, gc)| score_all(gc, &self.group_sums[kv], h)).collect();
                let group_picks = pick(group_scores, r.top_groups as usize);
                for (j, h) in hs.enumerate() {
                    let (route, (cs, gs)) = (&mut heads[h], &mut seen[h]);
                    for &i in &chunk_picks[j] {
                        if cs.insert(candidates[i]) {
                            route.chunks.push(candidates[i]);
                        }
                    }
                    for &i in &group_picks[j] {
                        if gs.insert(group_cands[j][i]) {
                            route.groups.push(group_cands[j][i]);
                        }
                    }
                }
            }
        }
        heads
    }
}
