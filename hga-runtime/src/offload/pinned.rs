//! Pinned, device-mapped host memory (DESIGN.md §3): page-locked so copies run at full PCIe speed, and
//! mapped so that the attention kernel can read scattered groups straight from it (and the append
//! kernels write new tokens into it).

use super::arena::{BlockSource, HostBlock};
use crate::cuda::Gpu;
use crate::RuntimeError;
use cudarc::driver::{result, sys};
use rayon::prelude::*;
use std::sync::Arc;

/// A page-locked host buffer of `u16` elements that the GPU reads at [`PinnedBuffer::device_addr`].
pub struct PinnedBuffer {
    ptr: *mut u16,
    len: usize,
    dev: u64,
    ctx: Arc<cudarc::driver::CudaContext>,
}

// SAFETY: the buffer is plain memory owned by this value; the raw pointer is not shared elsewhere.
unsafe impl Send for PinnedBuffer {}
// SAFETY: shared access is read-only through `&self`.
unsafe impl Sync for PinnedBuffer {}

impl std::fmt::Debug for PinnedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PinnedBuffer({} elements at device 0x{:x})", self.len, self.dev)
    }
}

impl PinnedBuffer {
    /// `len` zeroed elements, pinned and mapped into `gpu`'s address space. `HostOutOfMemory` when the
    /// host cannot pin that much; `Cuda` on other driver failures.
    pub fn new(gpu: &Gpu, len: usize) -> Result<Self, RuntimeError> {
        let bytes = len.max(1) * 2;
        let ctx = gpu.context().clone();
        ctx.bind_to_thread().map_err(|e| RuntimeError::Cuda { op: "bind context", message: format!("{e:?}") })?;
        let flags = sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE;
        // SAFETY: a fresh allocation; its contents are zeroed below before anyone reads them.
        let raw = unsafe { result::malloc_host(bytes, flags) }.map_err(|e| {
            if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                RuntimeError::HostOutOfMemory { requested: bytes as u64, used: 0, budget: 0 }
            } else {
                RuntimeError::Cuda { op: "cuMemHostAlloc", message: format!("{e:?}") }
            }
        })?;
        let ptr = raw as *mut u16;
        let mut dev: sys::CUdeviceptr = 0;
        // SAFETY: `raw` was allocated with DEVICEMAP in the current context.
        let r = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, raw, 0) };
        if r != sys::CUresult::CUDA_SUCCESS {
            // SAFETY: allocated above, not shared.
            unsafe { result::free_host(raw) }.ok();
            return Err(RuntimeError::Cuda { op: "cuMemHostGetDevicePointer", message: format!("{r:?}") });
        }
        let mut buf = PinnedBuffer { ptr, len, dev, ctx };
        buf.as_mut_slice().par_chunks_mut(1 << 20).for_each(|c| c.fill(0));
        Ok(buf)
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The GPU's address of element 0.
    pub fn device_addr(&self) -> u64 {
        self.dev
    }

    /// The elements.
    pub fn as_slice(&self) -> &[u16] {
        // SAFETY: `ptr` holds `len` initialized elements for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The elements, writable. The GPU must not be reading the part written (order writes before the
    /// launches that read them).
    pub fn as_mut_slice(&mut self) -> &mut [u16] {
        // SAFETY: as above, and `&mut self` is unique on the host side.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by `malloc_host` in `new`, freed once.
        unsafe { result::free_host(self.ptr as *mut std::ffi::c_void) }.ok();
    }
}

impl HostBlock for PinnedBuffer {
    fn as_slice(&self) -> &[u16] {
        PinnedBuffer::as_slice(self)
    }
    fn as_mut_slice(&mut self) -> &mut [u16] {
        PinnedBuffer::as_mut_slice(self)
    }
    fn device_addr(&self) -> Option<u64> {
        Some(self.dev)
    }
}

/// Arena blocks of pinned, device-mapped memory: a [`super::HostStore`] on them is readable by the
/// GPU's kernels at [`super::Arena::record_device_addr`].
#[derive(Debug, Clone)]
pub struct PinnedSource {
    gpu: Gpu,
}

impl PinnedSource {
    /// Blocks for `gpu`.
    pub fn new(gpu: &Gpu) -> Self {
        PinnedSource { gpu: gpu.clone() }
    }
}

impl BlockSource for PinnedSource {
    type Block = PinnedBuffer;
    fn allocate(&mut self, elems: usize) -> Result<PinnedBuffer, RuntimeError> {
        PinnedBuffer::new(&self.gpu, elems)
    }
}
