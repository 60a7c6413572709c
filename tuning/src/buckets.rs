//! Context and batch buckets: parsing `--contexts 4K,32K,1M` and `--batch 1,8`, and printing them.

use crate::error::TuneError;

/// Default context buckets.
pub const DEFAULT_CONTEXTS: &str = "4K,32K,64K,128K,512K,1M";
/// Default batch buckets.
pub const DEFAULT_BATCHES: &str = "1,8";
/// Largest context accepted (tokens): 64M.
pub const MAX_CONTEXT: u64 = 64 << 20;
/// Largest batch accepted.
pub const MAX_BATCH: u32 = 1024;

/// Parses one context: a number of tokens with an optional `K` (×1024) or `M` (×1048576) suffix.
pub fn parse_context(s: &str) -> Result<u64, TuneError> {
    let t = s.trim();
    let bad = |rule: &str| TuneError::BadArg { arg: "--contexts", value: t.to_string(), rule: rule.to_string() };
    let (num, mul) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1024u64),
        Some('m' | 'M') => (&t[..t.len() - 1], 1 << 20),
        _ => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| bad("must be a whole number of tokens, optionally with K or M (4K, 1M)"))?;
    let v = n.checked_mul(mul).ok_or_else(|| bad("too large"))?;
    if v == 0 || v > MAX_CONTEXT {
        return Err(bad(&format!("must be in 1..={} tokens (64M)", MAX_CONTEXT)));
    }
    Ok(v)
}

/// Parses a comma-separated context list; sorted, duplicates removed.
pub fn parse_contexts(s: &str) -> Result<Vec<u64>, TuneError> {
    let mut v = s.split(',').map(parse_context).collect::<Result<Vec<_>, _>>()?;
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// Parses a comma-separated batch list; sorted, duplicates removed.
pub fn parse_batches(s: &str) -> Result<Vec<u32>, TuneError> {
    let mut v = s
        .split(',')
        .map(|x| {
            let t = x.trim();
            t.parse::<u32>().ok().filter(|b| (1..=MAX_BATCH).contains(b)).ok_or_else(|| TuneError::BadArg {
                arg: "--batch",
                value: t.to_string(),
                rule: format!("must be a whole number in 1..={MAX_BATCH}"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// `4096` → `4K`, `1048576` → `1M`, `5000` → `5000`.
pub fn fmt_context(c: u64) -> String {
    if c >= 1 << 20 && c % (1 << 20) == 0 {
        format!("{}M", c >> 20)
    } else if c >= 1024 && c % 1024 == 0 {
        format!("{}K", c >> 10)
    } else {
        c.to_string()
    }
}
