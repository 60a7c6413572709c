//! GPU presets: the facts the cost model needs, each preset with the vendor documents they come from.
//!
//! Per-architecture limits (threads, blocks and shared memory per SM, shared memory per block, registers)
//! are from the CUDA C++ Programming Guide, "Technical Specifications per Compute Capability" table
//! (CUDA 13.0). Board figures are from the datasheet or architecture whitepaper named in each `source`.

/// Limits of one compute capability (CUDA C++ Programming Guide, technical specifications table).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArchLimits {
    /// `sm_XX`.
    pub arch: &'static str,
    /// Maximum resident threads per SM.
    pub threads_per_sm: u32,
    /// Maximum resident blocks per SM.
    pub blocks_per_sm: u32,
    /// 32-bit registers per SM.
    pub regs_per_sm: u32,
    /// Maximum registers per thread.
    pub regs_per_thread: u32,
    /// Shared memory per SM, bytes.
    pub smem_per_sm: u32,
    /// Maximum shared memory per block (opt-in), bytes.
    pub smem_per_block: u32,
}

const KIB: u32 = 1024;

/// Ampere consumer parts: the most restrictive limits of the table, also the fallback for unknown arches.
const SM86: ArchLimits = ArchLimits {
    arch: "sm_86",
    threads_per_sm: 1536,
    blocks_per_sm: 16,
    regs_per_sm: 65536,
    regs_per_thread: 255,
    smem_per_sm: 100 * KIB,
    smem_per_block: 99 * KIB,
};

/// The compute capabilities of the presets.
pub const ARCHS: &[ArchLimits] = &[
    ArchLimits {
        arch: "sm_80",
        threads_per_sm: 2048,
        blocks_per_sm: 32,
        regs_per_sm: 65536,
        regs_per_thread: 255,
        smem_per_sm: 164 * KIB,
        smem_per_block: 163 * KIB,
    },
    SM86,
    ArchLimits {
        arch: "sm_89",
        threads_per_sm: 1536,
        blocks_per_sm: 24,
        regs_per_sm: 65536,
        regs_per_thread: 255,
        smem_per_sm: 100 * KIB,
        smem_per_block: 99 * KIB,
    },
    ArchLimits {
        arch: "sm_90",
        threads_per_sm: 2048,
        blocks_per_sm: 32,
        regs_per_sm: 65536,
        regs_per_thread: 255,
        smem_per_sm: 228 * KIB,
        smem_per_block: 227 * KIB,
    },
    ArchLimits {
        arch: "sm_120",
        threads_per_sm: 1536,
        blocks_per_sm: 32,
        regs_per_sm: 65536,
        regs_per_thread: 255,
        smem_per_sm: 128 * KIB,
        smem_per_block: 99 * KIB,
    },
];

/// Looks up the limits of an architecture (`sm_90`).
pub fn arch_limits(arch: &str) -> Option<&'static ArchLimits> {
    ARCHS.iter().find(|a| a.arch == arch)
}

/// A GPU as the cost model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSpec {
    /// Preset name (`--gpu` value), lower case.
    pub name: String,
    /// Other accepted names.
    pub aliases: Vec<String>,
    /// Name as the driver reports it (`NVIDIA GeForce RTX 5090`).
    pub full_name: String,
    /// Compute architecture.
    pub arch: String,
    /// Streaming multiprocessors.
    pub sms: u32,
    /// Boost clock, GHz.
    pub clock_ghz: f64,
    /// Peak FP32 (non-tensor) throughput, TFLOP/s.
    pub fp32_tflops: f64,
    /// Device memory, GB (10^9 bytes, as datasheets count).
    pub mem_gb: f64,
    /// Peak device memory bandwidth, GB/s.
    pub mem_bw_gbs: f64,
    /// L2 cache, MiB.
    pub l2_mib: f64,
    /// PCIe generation of the host link.
    pub pcie_gen: u32,
    /// PCIe bandwidth per direction (x16), GB/s.
    pub pcie_gbs: f64,
    /// Where the figures come from.
    pub source: String,
}

impl GpuSpec {
    /// The per-architecture limits. Presets only use known architectures; a device read by `auto` with an
    /// unknown one falls back to the most restrictive limits among them.
    pub fn limits(&self) -> ArchLimits {
        arch_limits(&self.arch).copied().unwrap_or(ArchLimits { arch: "unknown", ..SM86 })
    }
}

struct Row {
    name: &'static str,
    aliases: &'static [&'static str],
    full_name: &'static str,
    arch: &'static str,
    sms: u32,
    clock_ghz: f64,
    fp32_tflops: f64,
    mem_gb: f64,
    mem_bw_gbs: f64,
    l2_mib: f64,
    pcie_gen: u32,
    pcie_gbs: f64,
    source: &'static str,
}

const PRESETS: &[Row] = &[
    Row {
        name: "rtx5090",
        aliases: &["rtx-5090", "5090", "geforce-rtx-5090"],
        full_name: "NVIDIA GeForce RTX 5090",
        arch: "sm_120",
        sms: 170,
        clock_ghz: 2.407,
        fp32_tflops: 104.8,
        mem_gb: 32.0,
        mem_bw_gbs: 1792.0,
        l2_mib: 96.0,
        pcie_gen: 5,
        pcie_gbs: 63.0,
        source: "NVIDIA RTX Blackwell GPU Architecture whitepaper (2025), GeForce RTX 5090 specifications table: \
                 170 SMs, boost 2407 MHz, 104.8 FP32 TFLOPS, 32 GB GDDR7 at 28 Gbps on 512 bits = 1792 GB/s, \
                 96 MB L2; nvidia.com RTX 5090 product page: PCIe Gen 5 x16",
    },
    Row {
        name: "rtx4090",
        aliases: &["rtx-4090", "4090", "geforce-rtx-4090"],
        full_name: "NVIDIA GeForce RTX 4090",
        arch: "sm_89",
        sms: 128,
        clock_ghz: 2.52,
        fp32_tflops: 82.6,
        mem_gb: 24.0,
        mem_bw_gbs: 1008.0,
        l2_mib: 72.0,
        pcie_gen: 4,
        pcie_gbs: 31.5,
        source: "NVIDIA Ada Lovelace GPU Architecture whitepaper v1.1, Appendix A (GeForce RTX 4090): 128 SMs, \
                 boost 2520 MHz, 82.6 FP32 TFLOPS, 24 GB GDDR6X at 21 Gbps on 384 bits = 1008 GB/s, 72 MB L2; \
                 nvidia.com RTX 4090 specifications: PCIe Gen 4 x16",
    },
    Row {
        name: "rtx3090",
        aliases: &["rtx-3090", "3090", "geforce-rtx-3090"],
        full_name: "NVIDIA GeForce RTX 3090",
        arch: "sm_86",
        sms: 82,
        clock_ghz: 1.695,
        fp32_tflops: 35.6,
        mem_gb: 24.0,
        mem_bw_gbs: 936.0,
        l2_mib: 6.0,
        pcie_gen: 4,
        pcie_gbs: 31.5,
        source: "NVIDIA Ampere GA102 GPU Architecture whitepaper v2.0, Table 1 (GeForce RTX 3090): 82 SMs, boost \
                 1695 MHz, 35.6 FP32 TFLOPS, 24 GB GDDR6X at 19.5 Gbps on 384 bits = 936 GB/s, 6144 KB L2; \
                 PCIe Gen 4 x16",
    },
    Row {
        name: "l40s",
        aliases: &["l40-s"],
        full_name: "NVIDIA L40S",
        arch: "sm_89",
        sms: 142,
        clock_ghz: 2.52,
        fp32_tflops: 91.6,
        mem_gb: 48.0,
        mem_bw_gbs: 864.0,
        l2_mib: 96.0,
        pcie_gen: 4,
        pcie_gbs: 31.5,
        source: "NVIDIA L40S datasheet (2023): 18,176 CUDA cores (= 142 SMs of 128, Ada whitepaper), 91.6 FP32 \
                 TFLOPS, 48 GB GDDR6 at 864 GB/s, PCIe Gen4 x16 64 GB/s bidirectional; L2 96 MB per the Ada \
                 Lovelace whitepaper v1.1 (AD102)",
    },
    Row {
        name: "a100-80gb",
        aliases: &["a100", "a100-80g", "a100-sxm4-80gb"],
        full_name: "NVIDIA A100-SXM4-80GB",
        arch: "sm_80",
        sms: 108,
        clock_ghz: 1.41,
        fp32_tflops: 19.5,
        mem_gb: 80.0,
        mem_bw_gbs: 2039.0,
        l2_mib: 40.0,
        pcie_gen: 4,
        pcie_gbs: 31.5,
        source: "NVIDIA A100 Tensor Core GPU datasheet (80GB SXM): 19.5 FP32 TFLOPS, 80 GB HBM2e at 2039 GB/s, \
                 PCIe Gen4 64 GB/s bidirectional; NVIDIA A100 Tensor Core GPU Architecture whitepaper v1.0, \
                 Table 3: 108 SMs, boost 1410 MHz, 40 MB L2",
    },
    Row {
        name: "h100-sxm",
        aliases: &["h100", "h100-sxm5", "h100-80gb"],
        full_name: "NVIDIA H100 80GB HBM3",
        arch: "sm_90",
        sms: 132,
        clock_ghz: 1.98,
        fp32_tflops: 67.0,
        mem_gb: 80.0,
        mem_bw_gbs: 3350.0,
        l2_mib: 50.0,
        pcie_gen: 5,
        pcie_gbs: 63.0,
        source: "NVIDIA H100 Tensor Core GPU datasheet (H100 SXM): 67 FP32 TFLOPS, 80 GB HBM3 at 3.35 TB/s, \
                 PCIe Gen5 128 GB/s bidirectional; NVIDIA H100 Tensor Core GPU Architecture whitepaper v1.04, \
                 Table 3 (H100 SXM5): 132 SMs, boost 1980 MHz, 50 MB L2",
    },
    Row {
        name: "h200",
        aliases: &["h200-sxm", "h200-141gb"],
        full_name: "NVIDIA H200",
        arch: "sm_90",
        sms: 132,
        clock_ghz: 1.98,
        fp32_tflops: 67.0,
        mem_gb: 141.0,
        mem_bw_gbs: 4800.0,
        l2_mib: 50.0,
        pcie_gen: 5,
        pcie_gbs: 63.0,
        source: "NVIDIA H200 Tensor Core GPU datasheet (H200 SXM): 67 FP32 TFLOPS, 141 GB HBM3e at 4.8 TB/s, \
                 PCIe Gen5 128 GB/s bidirectional; same GH100 configuration as H100 SXM5 (H100 whitepaper \
                 v1.04, Table 3): 132 SMs, boost 1980 MHz, 50 MB L2",
    },
];

fn of_row(r: &Row) -> GpuSpec {
    GpuSpec {
        name: r.name.to_string(),
        aliases: r.aliases.iter().map(|s| s.to_string()).collect(),
        full_name: r.full_name.to_string(),
        arch: r.arch.to_string(),
        sms: r.sms,
        clock_ghz: r.clock_ghz,
        fp32_tflops: r.fp32_tflops,
        mem_gb: r.mem_gb,
        mem_bw_gbs: r.mem_bw_gbs,
        l2_mib: r.l2_mib,
        pcie_gen: r.pcie_gen,
        pcie_gbs: r.pcie_gbs,
        source: r.source.to_string(),
    }
}

/// All presets, in the order `--list-gpus` prints them.
pub fn all() -> Vec<GpuSpec> {
    PRESETS.iter().map(of_row).collect()
}

/// Looks up a preset by name or alias, ignoring case, spaces, `-` and `_` (`RTX 5090` = `rtx5090`).
pub fn find(name: &str) -> Option<GpuSpec> {
    let norm = |s: &str| s.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase();
    let want = norm(name);
    PRESETS
        .iter()
        .find(|r| norm(r.name) == want || r.aliases.iter().any(|a| norm(a) == want) || norm(r.full_name) == want)
        .map(of_row)
}

/// The preset whose driver name a present device reports, e.g. `NVIDIA H200` or `NVIDIA H100 80GB HBM3`.
pub fn for_device_name(device_name: &str) -> Option<GpuSpec> {
    let n = device_name.to_ascii_lowercase();
    // Most specific first: "H200" must not match an H100 rule and "RTX 4090 D" is not a 4090.
    let rules: &[(&str, &[&str])] = &[
        ("rtx5090", &["rtx 5090"]),
        ("rtx4090", &["rtx 4090"]),
        ("rtx3090", &["rtx 3090"]),
        ("l40s", &["l40s"]),
        ("a100-80gb", &["a100-sxm4-80gb", "a100 80gb", "a100-80gb"]),
        ("h100-sxm", &["h100 80gb hbm3", "h100 sxm"]),
        ("h200", &["h200"]),
    ];
    let excluded = ["rtx 4090 d", "rtx 5090 d", "laptop", "mobile", "nvl", "pcie"];
    if excluded.iter().any(|x| n.contains(x)) {
        return None;
    }
    rules.iter().find(|(_, pats)| pats.iter().any(|p| n.contains(p))).and_then(|(name, _)| find(name))
}
