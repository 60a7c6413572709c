//! Routing: which closed chunks are sinks, local window or candidates, and which candidate groups each
//! query head opens (DESIGN.md §1). Ties break towards the lower index, as on the GPU.

use hga_dsl::{Routing, Sharing};

/// Routing decisions of one query, or of one prefill block (the union of its queries'), per query head.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteTrace {
    /// One entry per query head.
    pub heads: Vec<HeadRoute>,
}

/// What one query head attended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeadRoute {
    /// Selected candidate chunks (global chunk index), best first.
    pub chunks: Vec<usize>,
    /// Opened groups (global group index = first token / group size), best first.
    pub groups: Vec<usize>,
    /// Tokens in this head's softmax (for a prefill block: those of its last query).
    pub attended_tokens: usize,
}

impl RouteTrace {
    /// Distinct groups per KV head, the union over the query heads that share it: the transfer cost.
    pub fn distinct_groups_per_kv_head(&self, gqa: usize) -> Vec<usize> {
        self.union_per_kv_head(gqa).iter().map(Vec::len).collect()
    }

    /// Per KV head, the distinct groups its `gqa` query heads opened, in the GPU resolve's union order
    /// (query head by query head, each head's groups ascending, a group where it first occurs).
    pub fn union_per_kv_head(&self, gqa: usize) -> Vec<Vec<usize>> {
        self.heads
            .chunks(gqa.max(1))
            .map(|hs| {
                let mut seen = std::collections::HashSet::new();
                let mut union = Vec::new();
                for h in hs {
                    let mut own = h.groups.clone();
                    own.sort_unstable();
                    union.extend(own.into_iter().filter(|g| seen.insert(*g)));
                }
                union
            })
            .collect()
    }
}

/// The chunk windows of a query that sees `closed` closed chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Windows {
    /// Sinks are chunks `0..sinks_end`.
    pub sinks_end: usize,
    /// Candidates are chunks `sinks_end..local_start`; the local window is `local_start..closed`.
    pub local_start: usize,
    /// Closed chunks.
    pub closed: usize,
}

impl Windows {
    pub(crate) fn new(r: &Routing, closed: usize) -> Self {
        let sinks_end = (r.keep_first as usize).min(closed);
        let local_start = closed.saturating_sub(r.keep_last as usize).max(sinks_end);
        Windows { sinks_end, local_start, closed }
    }
}

/// Indices of the `k` best scores: higher score first, then lower index.
pub(crate) fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let better = |&a: &usize, &b: &usize| scores[b].total_cmp(&scores[a]).then(a.cmp(&b));
    if k < idx.len() {
        idx.select_nth_unstable_by(k, better);
        idx.truncate(k);
    }
    idx.sort_unstable_by(better);
    idx
}

/// Turns per-head raw scores into the values ranked for selection: the scores themselves per query
/// head, or the GQA group's summed softmax mass when routing is shared per KV head.
pub(crate) fn shared_mass(per_head: &[Vec<f32>]) -> Vec<f32> {
    let n = per_head.first().map_or(0, Vec::len);
    let mut mass = vec![0.0f32; n];
    for s in per_head {
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = s.iter().map(|x| (x - max).exp()).collect();
        let sum: f32 = e.iter().sum();
        for (m, x) in mass.iter_mut().zip(e) {
            *m += x / sum;
        }
    }
    mass
}

/// Whether routing is shared per KV head.
pub(crate) fn shared(r: &Routing) -> bool {
    r.sharing == Sharing::PerKvHead
}
