//! The present CUDA device, read through cudarc with dynamic loading: the driver library is looked for
//! first, so a machine without one gets a typed error, never a panic.

use crate::gpu::{self, GpuSpec};
use cudarc::driver::sys::CUdevice_attribute as A;
use cudarc::driver::CudaContext;

/// What the driver says about device 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Present {
    /// Device name as the driver reports it.
    pub name: String,
    /// `sm_XX`.
    pub arch: String,
    /// Driver version, `13.0`.
    pub driver: String,
    /// The preset matching the name, or a description built from the device's attributes.
    pub spec: GpuSpec,
    /// Whether `spec` is a preset (else it was built from attributes).
    pub is_preset: bool,
}

/// Whether the CUDA driver library can be loaded at all.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library by its known names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// NVRTC version `13.0`, or `None` when the library is absent.
pub fn nvrtc_version() -> Option<String> {
    // SAFETY: dlopen probe by name.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; nvrtcVersion writes two ints.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (r == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS).then(|| format!("{major}.{minor}"))
}

/// Reads device 0.
pub fn probe() -> Result<Present, String> {
    if !driver_present() {
        return Err("the CUDA driver library (libcuda.so) is not installed on this machine".into());
    }
    let n = CudaContext::device_count().map_err(|e| format!("the CUDA driver cannot count devices: {e}"))?;
    if n < 1 {
        return Err("the CUDA driver reports no device".into());
    }
    let ctx = CudaContext::new(0).map_err(|e| format!("cannot open device 0: {e}"))?;
    let err = |what: &str, e: cudarc::driver::DriverError| format!("cannot read {what} of device 0: {e}");
    let name = ctx.name().map_err(|e| err("the name", e))?;
    let (major, minor) = ctx.compute_capability().map_err(|e| err("the compute capability", e))?;
    let arch = format!("sm_{major}{minor}");
    let mut version = 0;
    // SAFETY: the driver library is loaded (the context exists); writes one int.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
    let driver = format!("{}.{}", version / 1000, (version % 1000) / 10);
    if let Some(spec) = gpu::for_device_name(&name).filter(|p| p.arch == arch) {
        return Ok(Present { name, arch, driver, spec, is_preset: true });
    }
    let attr = |a: A| ctx.attribute(a).map(|v| v.max(0) as f64).unwrap_or(0.0);
    let sms = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
    let clock_khz = attr(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE);
    let mem_khz = attr(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE);
    let bus_bits = attr(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH);
    let l2 = attr(A::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE);
    let mem = ctx.total_mem().map(|m| m as f64).unwrap_or(0.0);
    // Double data rate: bytes/s = 2 × clock × bus width / 8.
    let bw_gbs = 2.0 * mem_khz * 1e3 * bus_bits / 8.0 / 1e9;
    let clock_ghz = if clock_khz > 0.0 { clock_khz / 1e6 } else { 1.5 };
    let spec = GpuSpec {
        name: name.to_ascii_lowercase().replace(' ', "-"),
        aliases: vec![],
        full_name: name.clone(),
        arch: arch.clone(),
        sms: sms as u32,
        clock_ghz,
        fp32_tflops: sms * 128.0 * 2.0 * clock_ghz / 1e3,
        mem_gb: mem / 1e9,
        mem_bw_gbs: if bw_gbs > 0.0 { bw_gbs } else { 1000.0 },
        l2_mib: l2 / (1 << 20) as f64,
        pcie_gen: 4,
        pcie_gbs: 31.5,
        source: "read from the present device through the CUDA driver (SM count, clocks, memory bus, L2); PCIe \
                 assumed Gen4 x16, FP32 assumed 128 lanes per SM"
            .into(),
    };
    Ok(Present { name, arch, driver, spec, is_preset: false })
}
