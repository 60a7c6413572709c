//! The search space: every combination of the spec language's allowed kernel parameters (split-K at
//! powers of two; 16-byte loads only, see [`SEARCHED_VEC_WIDTH`]), pruned before timing: specs that
//! break a rule, variants beyond the GPU's shared memory or that spill registers, and variants whose
//! generated kernels equal an earlier candidate's (the generator clamps tile tokens to what a warp's
//! registers hold).

use crate::cost::{modeled_resources, Resources};
use crate::gpu::GpuSpec;
use hga_dsl::codegen::{generate, launch_params};
use hga_dsl::kernel::allowed;
use hga_dsl::tuned::{short_name, Pruned};
use hga_dsl::{KernelParams, ValidSpec};

/// One candidate variant.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Short name (`th128_sk4_tt64_v8`).
    pub name: String,
    /// The validated spec (model, routing, these kernel parameters).
    pub spec: ValidSpec,
}

impl Candidate {
    /// The kernel parameters.
    pub fn kernel(&self) -> &KernelParams {
        self.spec.kernel()
    }
}

/// Where resource figures come from.
pub enum ResourceSource<'a> {
    /// The cost model's estimate.
    Modeled,
    /// A compiler's figures (NVRTC through the JIT): registers, shared memory and spills of the attention
    /// kernel; `None` for a variant not compiled (yet), which gets the model's estimate.
    Compiler(&'a dyn Fn(&ValidSpec) -> Option<Result<Resources, String>>),
}

/// The candidates (in a fixed order) and what was pruned, with reasons.
#[derive(Debug, Clone)]
pub struct Space {
    /// Candidates to time.
    pub candidates: Vec<Candidate>,
    /// Pruned variants.
    pub pruned: Vec<Pruned>,
    /// Pruned duplicates: (short name, index of the candidate with the same kernels).
    pub duplicates: Vec<(String, usize)>,
}

/// Split-K values searched: powers of two in the allowed range.
pub fn split_k_values() -> Vec<u32> {
    let (lo, hi) = allowed::SPLIT_K;
    (0..32).map(|i| 1u32 << i).filter(|v| (lo..=hi).contains(v)).collect()
}

/// Vector widths searched: 16-byte loads only. The attention reads missed groups from host memory with
/// the same loads as hits, and narrower ones lose PCIe bandwidth (H200, codegen 5, hga-bench
/// 2026-12-03: cold fetch 40.4–41.3 GB/s with 8-byte loads, 45.6–45.7 with 16-byte loads, while the
/// all-hit step differed by 0.5–2.5%); searching them would double the variants to compile for no
/// pick. Narrower widths stay valid in specs written by hand.
pub const SEARCHED_VEC_WIDTH: &[u32] = &[8];

/// Every searched combination, sorted by (threads, split_k, tile_tokens, vec_width).
pub fn grid() -> Vec<KernelParams> {
    let mut out = Vec::new();
    for &threads in allowed::THREADS {
        for split_k in split_k_values() {
            for &tile_tokens in allowed::TILE_TOKENS {
                for &vec_width in SEARCHED_VEC_WIDTH {
                    out.push(KernelParams { threads, split_k, tile_tokens, vec_width });
                }
            }
        }
    }
    out
}

/// Builds the space for a model/routing (`base`, whose kernel parameters are replaced) on a GPU.
pub fn build(base: &ValidSpec, gpu: &GpuSpec, resources: &ResourceSource<'_>) -> Space {
    let limits = gpu.limits();
    let mut candidates: Vec<Candidate> = Vec::new();
    // Generated bodies seen so far: (body, short name, index among the candidates if it is one).
    let mut seen: Vec<(String, String, Option<usize>)> = Vec::new();
    let mut pruned = Vec::new();
    let mut duplicates = Vec::new();
    for k in grid() {
        let name = short_name(&k);
        let spec = match base.with_kernel(k.clone()) {
            Ok(s) => s,
            Err(e) => {
                pruned.push(Pruned { variant: name, reason: e.to_string() });
                continue;
            }
        };
        let lp = launch_params(&spec);
        let body = kernel_body(&spec);
        if let Some((_, first, idx)) = seen.iter().find(|(b, _, _)| *b == body) {
            let why = if lp.tile_tokens != k.tile_tokens {
                format!(
                    ": the generator clamps tile_tokens {} to {} (a warp pass's keys and values live in registers)",
                    k.tile_tokens, lp.tile_tokens
                )
            } else {
                String::new()
            };
            let reason = match idx {
                Some(_) => format!("same kernels as {first}{why}"),
                None => format!("same kernels as {first} (pruned){why}"),
            };
            pruned.push(Pruned { variant: name.clone(), reason });
            if let Some(i) = idx {
                duplicates.push((name, *i));
            }
            continue;
        }
        seen.push((body, name.clone(), None));
        let (res, how) = match resources {
            ResourceSource::Modeled => (Ok(modeled_resources(&spec)), "modeled"),
            ResourceSource::Compiler(f) => match f(&spec) {
                Some(r) => (r, "NVRTC"),
                None => (Ok(modeled_resources(&spec)), "modeled"),
            },
        };
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                pruned.push(Pruned { variant: name, reason: format!("does not compile: {e}") });
                continue;
            }
        };
        if res.smem_bytes > limits.smem_per_block {
            pruned.push(Pruned {
                variant: name,
                reason: format!(
                    "hga_attend needs {} B of shared memory per block ({how}); {} allows {} B",
                    res.smem_bytes, limits.arch, limits.smem_per_block
                ),
            });
            continue;
        }
        if res.spill_bytes > 0 {
            pruned.push(Pruned {
                variant: name,
                reason: format!(
                    "spills {} B to local memory ({how}; hga_attend uses {} registers per thread)",
                    res.spill_bytes, res.regs_per_thread
                ),
            });
            continue;
        }
        if let Some(last) = seen.last_mut() {
            last.2 = Some(candidates.len());
        }
        candidates.push(Candidate { name, spec });
    }
    Space { candidates, pruned, duplicates }
}

/// The generated source without the header lines that name the variant: two candidates with equal bodies
/// compile to the same kernels.
fn kernel_body(spec: &ValidSpec) -> String {
    generate(spec)
        .source
        .lines()
        .filter(|l| !l.starts_with("// variant:") && !l.starts_with("// spec hash:"))
        .collect::<Vec<_>>()
        .join("\n")
}
