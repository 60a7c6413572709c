//! The NVRTC calls, through cudarc's dynamically loaded bindings. cudarc panics when the library or a
//! symbol is missing, so presence is checked first and every call runs under `catch_unwind`.

use super::{Arch, JitError};
use cudarc::nvrtc::sys;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Whether libnvrtc can be loaded.
pub(super) fn present() -> bool {
    // SAFETY: only tries to dlopen the candidate names.
    catch_unwind(|| unsafe { sys::is_culib_present() }).unwrap_or(false)
}

fn guarded<T>(call: &'static str, f: impl FnOnce() -> Result<T, JitError>) -> Result<T, JitError> {
    if !present() {
        return Err(JitError::NvrtcMissing("libnvrtc not found by name (LD_LIBRARY_PATH)".into()));
    }
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let message = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into());
        Err(JitError::Nvrtc { call, message })
    })
}

fn check(call: &'static str, r: sys::nvrtcResult) -> Result<(), JitError> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(JitError::Nvrtc { call, message: format!("{r:?}") })
    }
}

/// NVRTC's version.
pub(super) fn version() -> Result<(i32, i32), JitError> {
    guarded("nvrtcVersion", || {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        check("nvrtcVersion", unsafe { sys::nvrtcVersion(&mut major, &mut minor) })?;
        Ok((major, minor))
    })
}

/// Compiles to CUBIN; returns (cubin, program log).
pub(super) fn compile(source: &str, key: &str, arch: Arch, opts: &[String]) -> Result<(Vec<u8>, String), JitError> {
    guarded("nvrtcCompileProgram", || {
        let src =
            CString::new(source).map_err(|e| JitError::Nvrtc { call: "nvrtcCreateProgram", message: e.to_string() })?;
        let name = CString::new("hga_decode.cu").expect("no NUL");
        let copts: Vec<CString> = opts.iter().map(|o| CString::new(o.as_str()).expect("options have no NUL")).collect();
        let ptrs: Vec<*const c_char> = copts.iter().map(|o| o.as_ptr()).collect();
        let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
        // SAFETY: valid C strings outlive the program; the program is destroyed below.
        unsafe {
            check(
                "nvrtcCreateProgram",
                sys::nvrtcCreateProgram(&mut prog, src.as_ptr(), name.as_ptr(), 0, std::ptr::null(), std::ptr::null()),
            )?;
            let status = sys::nvrtcCompileProgram(prog, ptrs.len() as i32, ptrs.as_ptr());
            let log = program_log(prog);
            let result = if status != sys::nvrtcResult::NVRTC_SUCCESS {
                Err(JitError::Compile { variant_key: key.to_string(), arch, status: format!("{status:?}"), log })
            } else {
                cubin(prog).map(|c| (c, log))
            };
            let _ = sys::nvrtcDestroyProgram(&mut prog);
            result
        }
    })
}

unsafe fn program_log(prog: sys::nvrtcProgram) -> String {
    let mut n = 0usize;
    if sys::nvrtcGetProgramLogSize(prog, &mut n) != sys::nvrtcResult::NVRTC_SUCCESS || n == 0 {
        return String::new();
    }
    let mut buf = vec![0u8; n];
    if sys::nvrtcGetProgramLog(prog, buf.as_mut_ptr() as *mut c_char) != sys::nvrtcResult::NVRTC_SUCCESS {
        return String::new();
    }
    String::from_utf8_lossy(&buf).trim_end_matches('\0').to_string()
}

unsafe fn cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>, JitError> {
    let mut n = 0usize;
    check("nvrtcGetCUBINSize", sys::nvrtcGetCUBINSize(prog, &mut n))?;
    let mut buf = vec![0u8; n];
    check("nvrtcGetCUBIN", sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char))?;
    Ok(buf)
}
