//! NVRTC JIT with an on-disk cache: generated CUDA source → CUBIN for one architecture.
//!
//! ```no_run
//! use hga_dsl::{codegen, presets, Spec};
//! use hga_runtime::jit::{Arch, Jit};
//! let spec = Spec::new(presets::find("qwen3-30b")?.shape).validate()?;
//! let jit = Jit::from_env()?;                       // $HGA_CACHE_DIR, else <user cache dir>/hga/jit
//! let built = jit.compile(&codegen::generate(&spec), Arch::new(90))?;
//! for k in &built.resources { println!("{k}"); }    // registers, shared memory, spills per kernel
//! assert!(built.spill_free());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - **Cache key**: SHA-256 over (source, NVRTC version, arch, options); the file name also carries the
//!   variant key's hash prefix for humans. Entries are written to a temporary file and renamed into
//!   place, so two processes compiling the same variant at once both succeed and readers never see a
//!   partial file.
//! - **Warm start**: no compilation. NVRTC is loaded only to read its version (`nvrtcVersion`); when
//!   libnvrtc is absent, a cached CUBIN for the same (source, arch, options) from any NVRTC version is
//!   used.
//! - **No panics** without NVRTC: presence is checked first and calls into cudarc are wrapped in
//!   `catch_unwind`; failures are [`JitError`]s, compile errors carrying the NVRTC log and variant key.
//! - **Resources**: compiled with `--ptxas-options=-v`; [`Compiled::resources`] parses ptxas' report
//!   (registers, shared memory, stack frame, spill stores and loads per kernel). It is stored beside
//!   the CUBIN, so a warm start reports it too.

mod cache;
mod nvrtc;
mod resources;

pub use cache::cache_dir_from_env;
pub use resources::KernelResources;

use hga_dsl::codegen::GeneratedSource;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A GPU architecture as NVRTC names it: compute capability `major * 10 + minor` (`sm_90`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arch(u32);

impl Arch {
    /// `sm_<cc>`, e.g. `Arch::new(90)` for Hopper, `Arch::new(120)` for Blackwell consumer parts.
    pub fn new(cc: u32) -> Arch {
        Arch(cc)
    }
    /// From a device's compute capability.
    pub fn from_capability(major: i32, minor: i32) -> Arch {
        Arch((major.max(0) * 10 + minor.max(0)) as u32)
    }
    /// The compute capability number (90 for sm_90).
    pub fn cc(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sm_{}", self.0)
    }
}

/// Errors of the JIT.
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    /// libnvrtc could not be loaded and no cached CUBIN exists.
    #[error("NVRTC (libnvrtc) is not available: {0}; install the CUDA toolkit or `pip install nvidia-cuda-nvrtc` and add its lib directory to LD_LIBRARY_PATH")]
    NvrtcMissing(String),
    /// NVRTC rejected the source.
    #[error("NVRTC failed to compile variant {variant_key} for {arch}: {status}\n{log}")]
    Compile {
        /// The variant's key.
        variant_key: String,
        /// Target architecture.
        arch: Arch,
        /// NVRTC's status.
        status: String,
        /// NVRTC's program log.
        log: String,
    },
    /// A call into NVRTC failed or panicked outside compilation.
    #[error("NVRTC call {call} failed: {message}")]
    Nvrtc {
        /// The function.
        call: &'static str,
        /// What it said.
        message: String,
    },
    /// The cache directory could not be used.
    #[error("JIT cache {path}: {source}")]
    Cache {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No cache directory: neither HGA_CACHE_DIR nor a user cache directory is known.
    #[error("no JIT cache directory: set HGA_CACHE_DIR")]
    NoCacheDir,
}

/// A compiled variant.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The CUBIN image (load with `cuModuleLoadData`).
    pub cubin: Vec<u8>,
    /// Per-kernel resources reported by ptxas.
    pub resources: Vec<KernelResources>,
    /// ptxas' report and NVRTC warnings, as NVRTC logged them.
    pub log: String,
    /// Whether it came from the on-disk cache (no compilation).
    pub cache_hit: bool,
    /// The cache entry.
    pub cache_path: PathBuf,
    /// The variant key.
    pub variant_key: String,
    /// The architecture.
    pub arch: Arch,
}

impl Compiled {
    /// Whether no kernel spills registers to local memory.
    pub fn spill_free(&self) -> bool {
        self.resources.iter().all(|r| r.spill_stores == 0 && r.spill_loads == 0)
    }
}

/// The JIT: NVRTC plus an on-disk cache directory.
#[derive(Debug, Clone)]
pub struct Jit {
    cache_dir: PathBuf,
    options: Vec<String>,
}

/// Options every compilation gets besides the architecture (part of the cache key). `--no-cache` turns
/// off NVRTC's own compilation cache (CUDA 12.9+): a compilation it serves from there skips ptxas and
/// logs no resource report (seen on the H200 for sm_90 variants that an earlier process had compiled),
/// and this JIT caches CUBINs with their reports itself.
pub const BASE_OPTIONS: &[&str] = &["--std=c++17", "--ptxas-options=-v", "-lineinfo", "--no-cache"];

/// The define that compiles the step trace in ([`Jit::traced`]).
const TRACE_OPTION: &str = "-DHGA_TRACE";

impl Jit {
    /// A JIT caching in `dir` (created on first write).
    pub fn with_cache_dir(dir: impl Into<PathBuf>) -> Jit {
        Jit { cache_dir: dir.into(), options: BASE_OPTIONS.iter().map(|s| s.to_string()).collect() }
    }

    /// A JIT caching in `$HGA_CACHE_DIR`, else `<user cache dir>/hga/jit`. `$HGA_NVRTC_OPTIONS`
    /// (whitespace-separated) adds NVRTC options, for kernel experiments such as `-DSEL_REG=8` (they
    /// are part of the cache key).
    pub fn from_env() -> Result<Jit, JitError> {
        let jit = Jit::with_cache_dir(cache_dir_from_env()?);
        Ok(match std::env::var("HGA_NVRTC_OPTIONS") {
            Ok(extra) => jit.with_options(extra.split_whitespace()),
            Err(_) => jit,
        })
    }

    /// The same JIT passing `options` to NVRTC too (after the base options; part of the cache key):
    /// for kernel experiments, e.g. `-DSEL_REG=8` where the source guards a constant with `#ifndef`.
    pub fn with_options<S: Into<String>>(mut self, options: impl IntoIterator<Item = S>) -> Jit {
        self.options.extend(options.into_iter().map(Into::into));
        self
    }

    /// The same JIT compiling the step trace in (`-DHGA_TRACE`, a separate cache entry): the kernels
    /// record when their blocks reach each of [`hga_dsl::codegen::TRACE_EVENTS`], read back with
    /// [`crate::cuda::DecodeKernels::read_trace`]. For diagnosis only: every block adds a few atomics.
    pub fn traced(mut self) -> Jit {
        if !self.is_traced() {
            self.options.push(TRACE_OPTION.to_string());
        }
        self
    }

    /// Whether kernels compiled by this JIT record the step trace.
    pub fn is_traced(&self) -> bool {
        self.options.iter().any(|o| o == TRACE_OPTION)
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Whether libnvrtc can be loaded (no panic when it cannot).
    pub fn nvrtc_present() -> bool {
        nvrtc::present()
    }

    /// NVRTC's (major, minor) version.
    pub fn nvrtc_version() -> Result<(i32, i32), JitError> {
        nvrtc::version()
    }

    /// Compiles `src` for `arch`, or loads it from the cache.
    pub fn compile(&self, src: &GeneratedSource, arch: Arch) -> Result<Compiled, JitError> {
        let mut opts = self.options.clone();
        opts.push(format!("--gpu-architecture={arch}"));
        let version = if nvrtc::present() { Some(nvrtc::version()?) } else { None };
        let stem = |v: (i32, i32)| entry_stem(src, arch, &opts, v);
        let hit = match version {
            Some(v) => cache::read(&self.cache_dir.join(stem(v))),
            None => cache::find_any(&self.cache_dir, &entry_prefix(src, arch, &opts)),
        };
        if let Some((path, log, cubin)) = hit {
            return Ok(Compiled {
                resources: resources::parse(&log),
                cubin,
                log,
                cache_hit: true,
                cache_path: path,
                variant_key: src.variant_key.clone(),
                arch,
            });
        }
        let Some(version) = version else {
            return Err(JitError::NvrtcMissing("libnvrtc not found by name (LD_LIBRARY_PATH)".into()));
        };
        let (cubin, log) = nvrtc::compile(&src.source, &src.variant_key, arch, &opts)?;
        let path = self.cache_dir.join(stem(version));
        cache::write(&self.cache_dir, &path, &log, &cubin)?;
        Ok(Compiled {
            resources: resources::parse(&log),
            cubin,
            log,
            cache_hit: false,
            cache_path: path,
            variant_key: src.variant_key.clone(),
            arch,
        })
    }
}

/// `<key hash>-<arch>-<source+options hash>` : the part of the cache name independent of NVRTC.
fn entry_prefix(src: &GeneratedSource, arch: Arch, opts: &[String]) -> String {
    let key = hex(&Sha256::digest(src.variant_key.as_bytes())[..4]);
    let mut h = Sha256::new();
    h.update(src.source.as_bytes());
    for o in opts {
        h.update([0u8]);
        h.update(o.as_bytes());
    }
    format!("{key}-{arch}-{}", hex(&h.finalize()[..12]))
}

fn entry_stem(src: &GeneratedSource, arch: Arch, opts: &[String], version: (i32, i32)) -> String {
    format!("{}-nvrtc{}.{}.hgacubin", entry_prefix(src, arch, opts), version.0, version.1)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
