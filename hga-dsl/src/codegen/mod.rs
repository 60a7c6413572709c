//! CUDA C++ code generation for the kernels of one decode step (DESIGN.md §2).
//!
//! [`generate`] turns a [`ValidSpec`] into one self-contained translation unit (no include directive: NVRTC
//! from a wheel has no toolkit headers) holding every kernel of a decode step, specialized by a prelude
//! of compile-time constants (head dim, group size, GQA ratio, budgets, tiles, RoPE frequencies). The
//! text is deterministic: the same spec gives byte-identical source, and its header names the variant
//! key and [`GENERATOR_VERSION`].
//!
//! The kernels all take one `HgaParams` struct by value (its C layout is in the source; the runtime
//! mirrors it) and run, per step, in this order:
//!
//! | kernel | grid | does |
//! | --- | --- | --- |
//! | `hga_append` | (KVH, B), block D | writes the step's K/V into the GPU window and the group's host record |
//! | `hga_summarize` | (1 + groups per chunk, KVH, B), block D | bf16 chunk + group summaries of a chunk that just closed |
//! | `hga_ingest_summarize` | (1 + groups per chunk, KVH, chunks), block D | summaries of the chunks a block append closes |
//! | `hga_ingest` | (⌈n·KVH·D/8/threads⌉) | a block append of one row: host records, and the window rows that stay |
//! | `hga_chunk_score` | (⌈cands/chunk_tile⌉, KVH, B) | scores of candidate chunks, every query head (on tensor cores where the score is a bf16 dot product: [`LaunchParams::score_mma`]) |
//! | `hga_select` | (units, B), block 256 | top `top_chunks`, their groups scored, top `top_groups`; with `fuse_resolve` the last unit of each (row, KV head) to finish runs the resolve below |
//! | `hga_resolve` | (KVH, B), block 128 | union per KV head, slot-cache lookup, slots for the misses (clock order); standalone form of the fused resolve |
//! | `hga_attend` | (split_k, KVH·head_tiles, B) | split-K exact attention on tensor cores (`mma.sync` m16n8k16: Q·Kᵀ and P·V, f32 accumulators; sm_80+), misses read from host and cached on the way, fp32 online softmax; the last split merges |
//!
//! A decode step is `append`, `summarize` (on chunk close), `chunk_score`, `select` (+ resolve),
//! `attend`: five launches, three of them in the route/attend part.
//!
//! ```
//! use hga_dsl::{codegen, presets, Spec};
//! let spec = Spec::new(presets::find("qwen3-30b")?.shape).validate()?;
//! let src = codegen::generate(&spec);
//! assert!(src.source.contains(&spec.variant_key()));
//! assert!(src.entry_points.contains(&"hga_attend"));
//! assert_eq!(src.source, codegen::generate(&spec).source);
//! # Ok::<(), hga_dsl::SpecError>(())
//! ```

use crate::model::{DType, RopeStyle};
use crate::routing::{ScoreKind, Sharing};
use crate::spec::ValidSpec;
use std::fmt::Write;

/// Version of the generator; part of every source header (and so of every JIT cache key). Bump when
/// the kernels or the `HgaParams` layout change.
pub const GENERATOR_VERSION: &str = "hga-codegen-9";

/// Kernel entry points: the decode step's in launch order, with the block-append pair after
/// `hga_summarize`.
pub const ENTRY_POINTS: [&str; 8] = [
    "hga_append",
    "hga_summarize",
    "hga_ingest_summarize",
    "hga_ingest",
    "hga_chunk_score",
    "hga_select",
    "hga_resolve",
    "hga_attend",
];

/// Events of the step trace, in the order of the source's `enum TraceEvent`: where a block of the
/// step's kernels is when it records each. Compiled in only with the `HGA_TRACE` define (the runtime's
/// `Jit::traced`), which records, per event, the earliest and the latest GPU global time at which a
/// block reached it.
pub const TRACE_EVENTS: [&str; 19] = [
    "chunk score: begin",
    "chunk score: end",
    "select: begin",
    "select: chunks selected",
    "select: groups scored",
    "select: groups selected",
    "resolve: begin",
    "resolve: lists staged",
    "resolve: first entries searched (trace adds a barrier)",
    "resolve: union built",
    "resolve: hits and misses listed",
    "resolve: end",
    "attend: begin",
    "attend: position, union size, queries loaded",
    "attend: tokens attended (warp 0)",
    "attend: warps combined",
    "attend: partials written",
    "merge: begin",
    "merge: end",
];

/// Launch parameters derived from the spec; the runtime sizes grids and scratch buffers from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchParams {
    /// Threads per block of the chunk-scoring, resolve, ingest and attention kernels.
    pub threads: u32,
    /// Threads per block of `hga_select` ([`SELECT_THREADS`]).
    pub select_threads: u32,
    /// Threads per block of `hga_append` and the summary kernels (= head dim).
    pub head_threads: u32,
    /// Splits of the attended tokens per (sequence, KV head, head tile).
    pub split_k: u32,
    /// Tokens per warp pass of the attention (the spec's `tile_tokens`, clamped to 16 ..= 32 at head
    /// dimensions up to 128 and to 16 beyond: the pass's keys and values live in registers).
    pub tile_tokens: u32,
    /// Query heads per attention block (the largest divisor of the GQA ratio ≤ 8).
    pub head_tile: u32,
    /// Attention blocks per KV head: GQA ratio / `head_tile`.
    pub head_tiles: u32,
    /// Candidate chunks per `hga_chunk_score` block.
    pub chunk_tile: u32,
    /// Threads per `hga_chunk_score` block ([`SCORE_THREADS`]).
    pub score_threads: u32,
    /// Threads per `hga_resolve` block ([`RESOLVE_THREADS`]).
    pub resolve_threads: u32,
    /// Routing units: query heads, or KV heads when routing is shared.
    pub units: u32,
    /// 32-bit words of the per-group query-head mask.
    pub mask_words: u32,
    /// Vectors of `head_dim` floats per summary (2 for min/max).
    pub summary_vectors: u32,
    /// Chunks held by the GPU window of each (sequence, KV head): sinks + local window + current.
    pub window_chunks: u32,
    /// Static shared memory of `hga_attend` in bytes.
    pub attend_smem_bytes: u32,
    /// Rows of warp outputs an `hga_attend` block combines through shared memory (`COMBINE_ROWS` in the
    /// source): one per warp (one round) where they fit [`COMBINE_SMEM`], else 1 (a round per warp).
    pub combine_rows: u32,
    /// Summaries are scored on tensor cores (`SCORE_MMA`): one summary vector, and bf16 queries like
    /// the bf16 tables; else by FMAs.
    pub score_mma: bool,
}

/// Threads per block of `hga_select`: one block per routing unit, so it takes many threads.
pub const SELECT_THREADS: u32 = 256;

/// Threads per block of `hga_chunk_score`: small blocks, so that even short contexts spread the
/// summary scan over many SMs.
pub const SCORE_THREADS: u32 = 128;

/// Threads per block of `hga_resolve`: one block per (sequence, KV head) whose work is a few hundred
/// entries; few warps keep its many barriers cheap.
pub const RESOLVE_THREADS: u32 = 128;

/// Shared memory for the warps' outputs of an `hga_attend` block, up to which the warps are combined in
/// one round (the source gets the resulting `COMBINE_ROWS`).
pub const COMBINE_SMEM: u32 = 32768;

/// Static shared memory allowed to `hga_attend` (below the 48 KiB static limit of every target).
pub const ATTEND_SMEM_LIMIT: u32 = 46 * 1024;

/// Entries of a KV head's opened-group lists (units × top groups) that the resolve stages in shared
/// memory (`RESOLVE_SMEM` in the source). Longer lists are searched in global memory, which the resolve
/// fused into `hga_select` must not do (other blocks of the same launch wrote them, and L1 is not
/// coherent within a launch): runtimes fuse only up to this many entries.
pub const RESOLVE_STAGED_LISTS: usize = 1024;

/// Values per thread that `block_select` holds in registers (`SEL_REG` in the source); beyond, it reads
/// them from memory a few at a time.
pub const SELECT_REGISTER_VALUES: usize = 64;

/// Units per KV head up to which the resolve builds the union by searching the units' sorted lists
/// (`UNION_SEARCH_UNITS` in the source); more units use a hash table in shared memory.
pub const UNION_SEARCH_UNITS: usize = 16;

/// The generated translation unit and what the runtime needs to launch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedSource {
    /// Full CUDA C++ source (self-contained).
    pub source: String,
    /// `extern "C"` kernel names, in launch order within a step.
    pub entry_points: Vec<&'static str>,
    /// The spec's variant key (also in the header comment).
    pub variant_key: String,
    /// [`GENERATOR_VERSION`].
    pub generator_version: &'static str,
    /// Launch parameters.
    pub launch: LaunchParams,
}

const KERNELS: &str = include_str!("kernels.cu");

/// Derives the launch parameters of a spec.
pub fn launch_params(spec: &ValidSpec) -> LaunchParams {
    let (m, r, k) = (spec.model(), spec.routing(), spec.kernel());
    let gqa = spec.gqa() as u32;
    let d = m.head_dim;
    let head_tile = (1..=gqa.min(8)).rev().find(|t| gqa % t == 0).unwrap_or(1);
    // Tokens per warp pass: every lane holds a quarter of the keys and values of 2 · TT / 16 tokens in
    // registers, which the register file allows up to 32 tokens at d <= 128 and 16 beyond.
    let tile_tokens = k.tile_tokens.clamp(16, max_warp_tile(d));
    let warps = k.threads / 32;
    // Per-warp softmax state, the warps' outputs (one row per warp where they fit COMBINE_SMEM, else
    // one), the block's state, the merge's split weights, the last-split flag.
    let combine_rows = if warps * head_tile * d * 4 <= COMBINE_SMEM { warps } else { 1 };
    let smem = warps * 8 * 8 + combine_rows * head_tile * d * 4 + head_tile * 8 + head_tile * k.split_k * 4 + 4;
    LaunchParams {
        threads: k.threads,
        select_threads: SELECT_THREADS,
        head_threads: d,
        split_k: k.split_k,
        tile_tokens,
        head_tile,
        head_tiles: gqa / head_tile,
        // Four rows per warp per pass, score_rows' batch of passes (SB in the source) per block.
        chunk_tile: 4 * score_batch(d) * SCORE_THREADS / 32,
        score_threads: SCORE_THREADS,
        resolve_threads: RESOLVE_THREADS,
        units: match r.sharing {
            Sharing::PerQueryHead => m.q_heads,
            Sharing::PerKvHead => m.kv_heads,
        },
        mask_words: gqa.div_ceil(32),
        summary_vectors: r.score.vectors() as u32,
        window_chunks: r.keep_first + r.keep_last + 1,
        attend_smem_bytes: smem,
        combine_rows,
        score_mma: r.score.vectors() == 1 && m.dtype == DType::Bf16,
    }
}

/// Largest warp pass of `hga_attend` (tokens) at head dimension `d`.
pub fn max_warp_tile(d: u32) -> u32 {
    if d <= 128 {
        32
    } else {
        16
    }
}

/// Passes of `score_rows` loaded together (`SB` in the source): as many as registers allow.
fn score_batch(head_dim: u32) -> u32 {
    if head_dim <= 128 {
        4
    } else {
        2
    }
}

/// Whether the generated kernels score summaries of `kind`: every kind but [`ScoreKind::MeanVar`], which
/// only the CPU backend implements so far. [`generate`] emits no scoring of its own for a kind it does
/// not score, so callers check this first (the runtime's kernel loader refuses such a spec).
pub fn scores(kind: ScoreKind) -> bool {
    kind != ScoreKind::MeanVar
}

/// The short names of the kinds the kernels [`scores`], for error messages ("mixed, sum, minmax").
pub fn scored_names() -> String {
    ScoreKind::ALL.into_iter().filter(|&k| scores(k)).map(ScoreKind::short).collect::<Vec<_>>().join(", ")
}

/// Generates the CUDA source of every decode-step kernel for `spec` (whose score kind must be one the
/// kernels [`scores`]).
pub fn generate(spec: &ValidSpec) -> GeneratedSource {
    let (m, r, k) = (spec.model(), spec.routing(), spec.kernel());
    let lp = launch_params(spec);
    let key = spec.variant_key();
    let rope = spec.rope();
    let gqa = spec.gqa();
    let mut s = String::with_capacity(KERNELS.len() + 4096);
    let w = &mut s;
    // Writing to a String cannot fail.
    let _ = writeln!(w, "// HGA decode-step kernels, generated by hga-dsl ({GENERATOR_VERSION}); do not edit.");
    let _ = writeln!(w, "// variant: {key}");
    let _ = writeln!(w, "// spec hash: {}", spec.content_hash());
    let _ =
        writeln!(w, "// Self-contained (no include directives); compile with NVRTC for one architecture (sm_80+).\n");
    let define = |w: &mut String, name: &str, value: String, why: &str| {
        let _ = writeln!(w, "#define {name:<14} {value:<14} // {why}");
    };
    define(w, "D", m.head_dim.to_string(), "head dimension");
    define(w, "QH", m.q_heads.to_string(), "query heads");
    define(w, "KVH", m.kv_heads.to_string(), "key/value heads");
    define(w, "GQA", gqa.to_string(), "query heads per KV head");
    define(w, "C", r.chunk.to_string(), "tokens per chunk");
    define(w, "G", r.group.to_string(), "tokens per group");
    define(w, "GPC", spec.groups_per_chunk().to_string(), "groups per chunk");
    define(w, "KF", r.keep_first.to_string(), "sink chunks");
    define(w, "KL", r.keep_last.to_string(), "local-window chunks");
    define(w, "WIN_CHUNKS", lp.window_chunks.to_string(), "chunks held by the GPU window");
    define(w, "TOP_CHUNKS", r.top_chunks.to_string(), "chunk budget");
    define(w, "TOP_GROUPS", r.top_groups.to_string(), "group budget");
    define(w, "SV", lp.summary_vectors.to_string(), "vectors per summary");
    define(w, "SCORE_MIXED", u8::from(r.score == ScoreKind::MixedRope).to_string(), "score kind: mixed RoPE");
    define(w, "SCORE_MINMAX", u8::from(r.score == ScoreKind::MinMax).to_string(), "score kind: min/max bound");
    define(w, "SCORE_MMA", u8::from(lp.score_mma).to_string(), "summaries scored on tensor cores");
    define(w, "SHARED", u8::from(r.sharing == Sharing::PerKvHead).to_string(), "routing shared per KV head");
    define(w, "UNITS", lp.units.to_string(), "routing units");
    let unit_heads = if r.sharing == Sharing::PerKvHead { gqa } else { 1 };
    define(w, "UNIT_HEADS", unit_heads.to_string(), "query heads per routing unit");
    define(w, "GQA_TILE_Q", gqa.min(8).to_string(), "query heads staged per scoring pass");
    define(w, "MW", lp.mask_words.to_string(), "words of a query-head mask");
    define(w, "NT", k.threads.to_string(), "threads per block");
    define(w, "SNT", lp.select_threads.to_string(), "threads per block of hga_select");
    define(w, "CNT", lp.score_threads.to_string(), "threads per block of hga_chunk_score");
    define(w, "RNT", lp.resolve_threads.to_string(), "threads per block of hga_resolve");
    define(w, "SK", k.split_k.to_string(), "attention splits");
    define(w, "TT", lp.tile_tokens.to_string(), "tokens per attention tile");
    define(w, "VW", k.vec_width.to_string(), "elements per vector load");
    define(w, "HT", lp.head_tile.to_string(), "query heads per attention block");
    define(w, "HTILES", lp.head_tiles.to_string(), "attention blocks per KV head");
    define(w, "CHUNK_TILE", lp.chunk_tile.to_string(), "candidate chunks per scoring block");
    define(w, "COMBINE_ROWS", lp.combine_rows.to_string(), "rows of warp outputs hga_attend combines at once");
    define(w, "ELEM_BF16", u8::from(m.dtype == DType::Bf16).to_string(), "element type bf16 (else f16)");
    define(w, "ROPE_NEOX", u8::from(m.rope_style == RopeStyle::Neox).to_string(), "rotate_half pairing");
    define(w, "RDIM", rope.rotary_dim().to_string(), "rotary dimensions");
    define(w, "PAIRS", rope.pairs().to_string(), "rotary pairs");
    let scale = 1.0 / (m.head_dim as f32).sqrt();
    define(w, "SCALE", format!("{scale:?}f"), "softmax scale 1/sqrt(D), as the CPU's f32");
    let _ = writeln!(w, "\n// Inverse frequency of each rotary pair (after scaling), as the CPU's f64.");
    let freqs: Vec<String> = rope.inv_freq().iter().map(|f| format!("{f:?}")).collect();
    let _ = writeln!(w, "__constant__ double INV_FREQ[PAIRS] = {{\n{}\n}};", wrap(&freqs));
    let _ = writeln!(w, "// Mixed RoPE: 1 where pair i takes the token-wise sum ((C-1)·inv_freq > 0.5).");
    let hf: Vec<String> = rope.high_frequency(r.chunk).iter().map(|&h| u8::from(h).to_string()).collect();
    let _ = writeln!(w, "__constant__ unsigned char HIGH_FREQ[PAIRS] = {{\n{}\n}};\n", wrap(&hf));
    s.push_str(KERNELS);
    GeneratedSource {
        source: s,
        entry_points: ENTRY_POINTS.to_vec(),
        variant_key: key,
        generator_version: GENERATOR_VERSION,
        launch: lp,
    }
}

/// Comma-separated values, eight per line.
fn wrap(items: &[String]) -> String {
    items.chunks(8).map(|c| format!("    {},", c.join(", "))).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{presets, KernelParams, Routing, Spec};

    #[test]
    fn exported_limits_match_the_source() {
        assert!(KERNELS.contains(&format!("#define RESOLVE_SMEM {RESOLVE_STAGED_LISTS}\n")));
        assert!(KERNELS.contains(&format!("#define SEL_REG {SELECT_REGISTER_VALUES} ")));
        assert!(KERNELS.contains(&format!("#define UNION_SEARCH_UNITS {UNION_SEARCH_UNITS}\n")));
        // The attention takes its combine rows from the prelude (LaunchParams::combine_rows), not a rule
        // of its own.
        assert!(!KERNELS.contains("#define COMBINE_ROWS") && !KERNELS.contains("COMBINE_SMEM"));
    }

    #[test]
    fn summaries_are_scored_on_tensor_cores_only_for_bf16_dot_products() {
        use crate::model::DType;
        use crate::routing::ScoreKind;
        for dtype in [DType::Bf16, DType::F16] {
            for score in ScoreKind::ALL.into_iter().filter(|&k| scores(k)) {
                let mut shape = presets::find("qwen3-8b").unwrap().shape;
                shape.dtype = dtype;
                let spec = Spec::new(shape).with_routing(Routing { score, ..Routing::default() }).validate().unwrap();
                let want = dtype == DType::Bf16 && score != ScoreKind::MinMax;
                assert_eq!(launch_params(&spec).score_mma, want, "{dtype:?} {score:?}");
                let src = generate(&spec).source;
                let value = src
                    .lines()
                    .find_map(|l| l.strip_prefix("#define SCORE_MMA "))
                    .and_then(|rest| rest.split_whitespace().next());
                assert_eq!(value, Some(if want { "1" } else { "0" }), "{dtype:?} {score:?}");
            }
        }
        // The kernels pick the path from the define alone.
        assert!(KERNELS.contains("#if SCORE_MMA") && !KERNELS.contains("#define SCORE_MMA"));
    }

    #[test]
    fn trace_events_match_the_source_enum() {
        let start = KERNELS.find("enum TraceEvent {").expect("the trace enum") + "enum TraceEvent {".len();
        let body = &KERNELS[start..start + KERNELS[start..].find('}').unwrap()];
        let names: Vec<&str> = body.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
        assert_eq!(names.last(), Some(&"TR_EVENTS"));
        assert_eq!(names.len() - 1, TRACE_EVENTS.len(), "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("TR_")));
    }

    #[test]
    fn deterministic_self_contained_and_specialized() {
        for p in presets::all() {
            let spec = Spec::new(p.shape.clone()).validate().unwrap();
            let a = generate(&spec);
            assert_eq!(a, generate(&spec), "{}", p.name);
            assert!(!a.source.contains("#include"), "{}", p.name);
            assert!(a.source.contains(&format!("// variant: {}", spec.variant_key())));
            assert!(a.source.contains(GENERATOR_VERSION));
            assert!(a.source.contains(&format!("#define GQA            {}", spec.gqa())));
            for e in ENTRY_POINTS {
                assert!(a.source.contains(&format!("{e}(HgaParams P")), "{e}");
            }
        }
    }

    #[test]
    fn attend_fits_static_shared_memory() {
        for d in [64u32, 96, 128, 256] {
            for tt in [16u32, 32, 64, 128] {
                let mut shape = crate::ModelShape::new(64, 8, d, 1e4);
                shape.head_dim = d;
                let spec = Spec::new(shape)
                    .with_routing(Routing { group: 16, ..Routing::default() })
                    .with_kernel(KernelParams { tile_tokens: tt, ..KernelParams::default() })
                    .validate()
                    .unwrap();
                let lp = launch_params(&spec);
                assert!(lp.attend_smem_bytes <= ATTEND_SMEM_LIMIT, "d {d} tt {tt}: {lp:?}");
            }
        }
    }
}
