//! Growable device buffers through CUDA virtual memory management: the whole address range is reserved
//! at creation (address space is cheap) and physical memory is mapped page by page (the allocation
//! granularity, 2 MiB on current GPUs) only where the buffer is used. Pointers never change, so kernels
//! keep indexing the full layout; only pages that were asked for may be touched.
//!
//! The page bookkeeping ([`PageMap`]) is pure logic, apart from the driver calls, so it is unit-tested
//! without a GPU. On devices without VMM support a [`GrowableBuffer`] is one plain allocation of the
//! whole size, filled at creation, and growing is a no-op.

use super::{CudaError, Gpu};
use cudarc::driver::sys;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr};
use std::ops::Range;
use std::sync::Arc;

/// The page size [`crate::cuda::StateBytes`] assumes: the VMM allocation granularity of current NVIDIA
/// GPUs (the H200's included). [`GrowableBuffer::page_bytes`] has the device's own.
pub const DEFAULT_PAGE_BYTES: u64 = 2 << 20;

/// Which pages of a reserved range are mapped. Page `i` covers bytes `i·page .. (i+1)·page`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageMap {
    page: u64,
    bytes: u64,
    mapped: Vec<bool>,
}

impl PageMap {
    /// An empty map of a buffer of `bytes` bytes in pages of `page` bytes (a power of two).
    pub fn new(bytes: u64, page: u64) -> Result<PageMap, CudaError> {
        if page == 0 || !page.is_power_of_two() {
            return Err(CudaError::Invalid {
                field: "page",
                value: page.to_string(),
                rule: "must be a power of two".into(),
            });
        }
        let pages = bytes.div_ceil(page);
        let pages = usize::try_from(pages).map_err(|_| CudaError::Invalid {
            field: "bytes",
            value: bytes.to_string(),
            rule: "too many pages for this host".into(),
        })?;
        Ok(PageMap { page, bytes, mapped: vec![false; pages] })
    }

    /// Page size in bytes.
    pub fn page(&self) -> u64 {
        self.page
    }
    /// Bytes of the buffer (not rounded).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// Pages of the reservation (the buffer rounded up to whole pages).
    pub fn pages(&self) -> usize {
        self.mapped.len()
    }
    /// Bytes of the reservation.
    pub fn reserved_bytes(&self) -> u64 {
        self.mapped.len() as u64 * self.page
    }
    /// Pages mapped.
    pub fn mapped_pages(&self) -> usize {
        self.mapped.iter().filter(|&&m| m).count()
    }
    /// Bytes mapped (whole pages).
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped_pages() as u64 * self.page
    }

    /// The pages that hold bytes `range` (empty for an empty range); a typed error, and nothing
    /// changed, when the range reaches past the buffer.
    pub fn pages_for(&self, range: Range<u64>) -> Result<Range<usize>, CudaError> {
        if range.start > range.end || range.end > self.bytes {
            return Err(CudaError::Invalid {
                field: "range",
                value: format!("bytes {}..{}", range.start, range.end),
                rule: format!("must lie within the buffer's {} bytes", self.bytes),
            });
        }
        if range.is_empty() {
            return Ok(0..0);
        }
        Ok((range.start / self.page) as usize..range.end.div_ceil(self.page) as usize)
    }

    /// The runs of unmapped pages among those holding `range`, ascending.
    pub fn missing(&self, range: Range<u64>) -> Result<Vec<Range<usize>>, CudaError> {
        let pages = self.pages_for(range)?;
        Ok(runs(pages.filter(|&p| !self.mapped[p])))
    }

    /// Whether every byte of `range` is on a mapped page.
    pub fn is_mapped(&self, range: Range<u64>) -> Result<bool, CudaError> {
        Ok(self.pages_for(range)?.all(|p| self.mapped[p]))
    }

    /// The runs of mapped pages, ascending.
    pub fn mapped_runs(&self) -> Vec<Range<usize>> {
        runs((0..self.mapped.len()).filter(|&p| self.mapped[p]))
    }

    /// The runs of mapped pages within `range`, as byte ranges clipped to it, ascending.
    pub fn mapped_within(&self, range: Range<u64>) -> Result<Vec<Range<u64>>, CudaError> {
        let pages = self.pages_for(range.clone())?;
        Ok(runs(pages.filter(|&p| self.mapped[p]))
            .into_iter()
            .map(|r| (r.start as u64 * self.page).max(range.start)..(r.end as u64 * self.page).min(range.end))
            .collect())
    }

    /// Marks pages mapped or not.
    pub fn mark(&mut self, pages: Range<usize>, mapped: bool) {
        self.mapped[pages].fill(mapped);
    }
}

/// Ascending indices grouped into runs of consecutive ones.
fn runs(idx: impl Iterator<Item = usize>) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for i in idx {
        match out.last_mut() {
            Some(r) if r.end == i => r.end += 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

/// Pages the union of byte ranges covers (ranges ascending and disjoint, as the regions of a
/// `[rows][cap][..]` table are), without building a [`PageMap`]: what mapping them would commit.
pub fn pages_covering(ranges: impl Iterator<Item = Range<u64>>, page: u64) -> u64 {
    let (mut count, mut next_free) = (0u64, 0u64);
    for r in ranges.filter(|r| !r.is_empty()) {
        let (first, end) = ((r.start / page).max(next_free), r.end.div_ceil(page));
        if end > first {
            count += end - first;
            next_free = end;
        }
    }
    count
}

/// A device buffer of fixed address whose physical memory is mapped on demand, page by page. New pages
/// are filled with a byte value on the stream before any later work, so unmapped and never-written
/// parts read as that value ([`GrowableBuffer::read`]). Growing happens in two phases so that several
/// buffers grow all or nothing: [`GrowableBuffer::map`] (pages pending, nothing queued on them), then
/// [`GrowableBuffer::commit`] (fills queued) or [`GrowableBuffer::rollback`] (pending pages unmapped).
pub struct GrowableBuffer {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    base: u64,
    map: PageMap,
    /// Per page: its physical allocation while mapped.
    handles: Vec<Option<sys::CUmemGenericAllocationHandle>>,
    /// Pages mapped since the last commit or rollback.
    pending: Vec<Range<usize>>,
    fill: u8,
    /// Devices without VMM: one plain allocation of the whole buffer.
    plain: Option<CudaSlice<u8>>,
}

impl std::fmt::Debug for GrowableBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrowableBuffer")
            .field("base", &format_args!("{:#x}", self.base))
            .field("bytes", &self.map.bytes())
            .field("mapped_pages", &self.map.mapped_pages())
            .field("plain", &self.plain.is_some())
            .finish()
    }
}

/// Whether the device supports virtual memory management (`cuMemCreate` / `cuMemMap`); false when the
/// attribute cannot be read.
pub fn vmm_supported(gpu: &Gpu) -> bool {
    let a = sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED;
    gpu.context().attribute(a).is_ok_and(|v| v != 0) && std::env::var("HGA_NO_VMM").as_deref() != Ok("1")
}

fn drv(r: sys::CUresult, what: &str) -> Result<(), CudaError> {
    r.result().map_err(|e| CudaError::Driver(format!("{what}: {e:?}")))
}

fn allocation_prop(ordinal: usize) -> sys::CUmemAllocationProp {
    // SAFETY: an all-zero property struct is valid (no handle types, no flags); the fields that matter
    // are set right below.
    let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = ordinal as i32;
    prop
}

/// The device's VMM page size (minimum allocation granularity).
pub fn granularity(gpu: &Gpu) -> Result<u64, CudaError> {
    gpu.context().bind_to_thread()?;
    let prop = allocation_prop(gpu.context().ordinal());
    let mut g = 0usize;
    // SAFETY: `prop` is a valid property struct and `g` a valid output location.
    drv(
        unsafe {
            sys::cuMemGetAllocationGranularity(
                &mut g,
                &prop,
                sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
            )
        },
        "cuMemGetAllocationGranularity",
    )?;
    Ok(g as u64)
}

impl GrowableBuffer {
    /// Reserves `bytes` bytes of address space on `gpu` (nothing mapped), or, without VMM support,
    /// allocates them whole and fills them with `fill` on the stream. A zero-byte buffer has address 0.
    pub fn new(gpu: &Gpu, bytes: u64, fill: u8) -> Result<GrowableBuffer, CudaError> {
        if vmm_supported(gpu) {
            Self::reserve(gpu, bytes, fill)
        } else {
            Self::plain(gpu, bytes, fill)
        }
    }

    fn reserve(gpu: &Gpu, bytes: u64, fill: u8) -> Result<GrowableBuffer, CudaError> {
        let page = granularity(gpu)?;
        let map = PageMap::new(bytes, page)?;
        let mut base = 0u64;
        if map.reserved_bytes() > 0 {
            // SAFETY: `base` is a valid output location; the range is freed in Drop.
            drv(
                unsafe { sys::cuMemAddressReserve(&mut base, map.reserved_bytes() as usize, page as usize, 0, 0) },
                "cuMemAddressReserve",
            )?;
        }
        Ok(GrowableBuffer {
            ctx: gpu.context().clone(),
            stream: gpu.stream().clone(),
            base,
            handles: vec![None; map.pages()],
            map,
            pending: Vec::new(),
            fill,
            plain: None,
        })
    }

    fn plain(gpu: &Gpu, bytes: u64, fill: u8) -> Result<GrowableBuffer, CudaError> {
        let n = usize::try_from(bytes).map_err(|_| CudaError::Invalid {
            field: "bytes",
            value: bytes.to_string(),
            rule: "too large for this host".into(),
        })?;
        let (base, plain) = if n == 0 {
            (0, None)
        } else {
            let s = gpu.stream().alloc_zeros::<u8>(n)?;
            let base = s.device_ptr(gpu.stream()).0;
            (base, Some(s))
        };
        // The whole buffer is one "page", mapped from the start.
        let mut map = PageMap::new(bytes, bytes.max(1).next_power_of_two())?;
        let pages = map.pages();
        map.mark(0..pages, true);
        let b = GrowableBuffer {
            ctx: gpu.context().clone(),
            stream: gpu.stream().clone(),
            base,
            handles: vec![None; pages],
            map,
            pending: Vec::new(),
            fill,
            plain,
        };
        if fill != 0 && n > 0 {
            b.memset(base..base + bytes)?;
        }
        Ok(b)
    }

    /// Device address of byte 0 (fixed for the buffer's life).
    pub fn ptr(&self) -> u64 {
        self.base
    }
    /// Bytes of the buffer.
    pub fn bytes(&self) -> u64 {
        self.map.bytes()
    }
    /// Page size (the whole buffer when it is a plain allocation).
    pub fn page_bytes(&self) -> u64 {
        self.map.page()
    }
    /// Whether this is a plain allocation (device without VMM).
    pub fn is_plain(&self) -> bool {
        self.plain.is_some()
    }
    /// Device memory mapped (committed) now, in bytes.
    pub fn committed_bytes(&self) -> u64 {
        if self.plain.is_some() {
            self.map.bytes()
        } else {
            self.map.mapped_bytes()
        }
    }
    /// Bytes of address space reserved.
    pub fn reserved_bytes(&self) -> u64 {
        if self.plain.is_some() {
            self.map.bytes()
        } else {
            self.map.reserved_bytes()
        }
    }
    /// The page bookkeeping.
    pub fn page_map(&self) -> &PageMap {
        &self.map
    }

    /// Maps the pages holding `range` that are not mapped yet (idempotent); they stay pending until
    /// [`GrowableBuffer::commit`] fills them or [`GrowableBuffer::rollback`] unmaps them. On a failure
    /// (out of memory included: the message names `CUDA_ERROR_OUT_OF_MEMORY`) the pages this call
    /// mapped are unmapped again and the error is returned: nothing changed. Returns the pages mapped.
    pub fn map(&mut self, range: Range<u64>) -> Result<usize, CudaError> {
        let missing = self.map.missing(range)?;
        if missing.is_empty() || self.plain.is_some() {
            return Ok(0);
        }
        self.ctx.bind_to_thread()?;
        let mut done: Vec<Range<usize>> = Vec::new();
        let mut mapped = 0;
        for run in missing {
            match self.map_run(run.clone()) {
                Ok(()) => {
                    mapped += run.len();
                    done.push(run);
                }
                Err(e) => {
                    for r in done {
                        self.unmap_run(r);
                    }
                    return Err(e);
                }
            }
        }
        self.pending.extend(done);
        Ok(mapped)
    }

    /// Maps one run of unmapped pages and makes them accessible, page by page; all or nothing.
    fn map_run(&mut self, run: Range<usize>) -> Result<(), CudaError> {
        let page = self.map.page();
        let prop = allocation_prop(self.ctx.ordinal());
        let access = sys::CUmemAccessDesc {
            location: prop.location,
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        for p in run.clone() {
            let at = self.base + p as u64 * page;
            let mut h: sys::CUmemGenericAllocationHandle = 0;
            // SAFETY: valid property struct and output location; the handle is released on unmap.
            if let Err(e) = drv(unsafe { sys::cuMemCreate(&mut h, page as usize, &prop, 0) }, "cuMemCreate") {
                self.unmap_run(run.start..p);
                return Err(e);
            }
            // SAFETY: `at` is a page of this buffer's reservation that is not mapped; `h` is a fresh
            // allocation of one page.
            if let Err(e) = drv(unsafe { sys::cuMemMap(at, page as usize, 0, h, 0) }, "cuMemMap") {
                // SAFETY: `h` was created above and is not mapped.
                let _ = unsafe { sys::cuMemRelease(h) };
                self.unmap_run(run.start..p);
                return Err(e);
            }
            self.handles[p] = Some(h);
            self.map.mark(p..p + 1, true);
            // SAFETY: the page was mapped right above.
            let r = drv(unsafe { sys::cuMemSetAccess(at, page as usize, &access, 1) }, "cuMemSetAccess");
            if let Err(e) = r {
                self.unmap_run(run.start..p + 1);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unmaps and releases the mapped pages of `run` (no work may be queued on them).
    fn unmap_run(&mut self, run: Range<usize>) {
        let page = self.map.page();
        for p in run {
            if let Some(h) = self.handles[p].take() {
                // SAFETY: page p is mapped to `h` and nothing queued touches it.
                unsafe {
                    let _ = sys::cuMemUnmap(self.base + p as u64 * page, page as usize);
                    let _ = sys::cuMemRelease(h);
                }
                self.map.mark(p..p + 1, false);
            }
        }
    }

    /// Queues the fill of the pending pages on the stream (before any later work) and makes them
    /// part of the buffer.
    pub fn commit(&mut self) -> Result<(), CudaError> {
        let page = self.map.page();
        for r in std::mem::take(&mut self.pending) {
            self.memset(self.base + r.start as u64 * page..self.base + r.end as u64 * page)?;
        }
        Ok(())
    }

    /// Unmaps the pending pages (nothing was queued on them).
    pub fn rollback(&mut self) {
        if !self.pending.is_empty() {
            let _ = self.ctx.bind_to_thread();
        }
        for r in std::mem::take(&mut self.pending) {
            self.unmap_run(r);
        }
    }

    /// [`GrowableBuffer::map`] then [`GrowableBuffer::commit`]: `range` usable by the stream's next work.
    pub fn ensure(&mut self, range: Range<u64>) -> Result<usize, CudaError> {
        let n = self.map(range)?;
        self.commit()?;
        Ok(n)
    }

    /// Fills the mapped parts of `range` with the fill value again (on the stream).
    pub fn refill(&self, range: Range<u64>) -> Result<(), CudaError> {
        for r in self.map.mapped_within(range)? {
            self.memset(self.base + r.start..self.base + r.end)?;
        }
        Ok(())
    }

    /// Copies `src` to byte offset `at` on the stream; the bytes must be mapped.
    pub fn write<T: Copy>(&self, at: u64, src: &[T]) -> Result<(), CudaError> {
        let n = std::mem::size_of_val(src) as u64;
        if !self.map.is_mapped(at..at + n)? {
            return Err(CudaError::Invalid {
                field: "range",
                value: format!("bytes {at}..{}", at + n),
                rule: "must be mapped before it is written".into(),
            });
        }
        if n == 0 {
            return Ok(());
        }
        self.ctx.bind_to_thread()?;
        // SAFETY: the destination is mapped device memory of this buffer; a pageable source is staged
        // by the driver before the call returns.
        drv(
            unsafe {
                sys::cuMemcpyHtoDAsync_v2(self.base + at, src.as_ptr().cast(), n as usize, self.stream.cu_stream())
            },
            "cuMemcpyHtoDAsync",
        )
    }

    /// The whole buffer as `T`s (synchronizes): mapped pages copied, unmapped ones read as the fill
    /// byte repeated.
    pub fn read<T: Copy + Default>(&self) -> Result<Vec<T>, CudaError> {
        let size = std::mem::size_of::<T>() as u64;
        let n = (self.bytes() / size) as usize;
        let mut out = vec![T::default(); n];
        // SAFETY: T is plain data (Copy), viewed as its bytes to fill and copy into.
        let raw = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), n * size as usize) };
        raw.fill(self.fill);
        if n == 0 {
            return Ok(out);
        }
        self.ctx.bind_to_thread()?;
        for r in self.map.mapped_within(0..n as u64 * size)? {
            let dst = &mut raw[r.start as usize..r.end as usize];
            // SAFETY: the source is mapped device memory of this buffer; `dst` stays alive until the
            // synchronize below.
            drv(
                unsafe {
                    sys::cuMemcpyDtoHAsync_v2(
                        dst.as_mut_ptr().cast(),
                        self.base + r.start,
                        dst.len(),
                        self.stream.cu_stream(),
                    )
                },
                "cuMemcpyDtoHAsync",
            )?;
        }
        self.stream.synchronize()?;
        Ok(out)
    }

    fn memset(&self, range: Range<u64>) -> Result<(), CudaError> {
        self.ctx.bind_to_thread()?;
        let len = (range.end - range.start) as usize;
        let st = self.stream.cu_stream();
        // SAFETY: the range is mapped device memory of this buffer.
        unsafe {
            if range.start % 4 == 0 && len % 4 == 0 {
                drv(
                    sys::cuMemsetD32Async(range.start, u32::from_ne_bytes([self.fill; 4]), len / 4, st),
                    "cuMemsetD32Async",
                )
            } else {
                drv(sys::cuMemsetD8Async(range.start, self.fill, len, st), "cuMemsetD8Async")
            }
        }
    }
}

impl Drop for GrowableBuffer {
    fn drop(&mut self) {
        if self.plain.is_some() || self.base == 0 {
            return;
        }
        // Queued work may still read the pages.
        let _ = self.ctx.bind_to_thread();
        let _ = self.stream.synchronize();
        let pages = self.map.pages();
        self.pending.clear();
        self.unmap_run(0..pages);
        // SAFETY: the reservation was made in `reserve` with this size and nothing is mapped in it.
        let _ = unsafe { sys::cuMemAddressFree(self.base, self.map.reserved_bytes() as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = 2 << 20;

    #[test]
    fn pages_for_covers_the_range_and_rejects_overflow() {
        let m = PageMap::new(5 * P + 100, P).unwrap();
        assert_eq!(m.pages(), 6);
        assert_eq!(m.reserved_bytes(), 6 * P);
        assert_eq!(m.pages_for(0..0).unwrap(), 0..0);
        assert_eq!(m.pages_for(0..1).unwrap(), 0..1);
        assert_eq!(m.pages_for(P - 1..P + 1).unwrap(), 0..2);
        assert_eq!(m.pages_for(P..2 * P).unwrap(), 1..2);
        assert_eq!(m.pages_for(3 * P + 7..5 * P + 100).unwrap(), 3..6);
        for bad in [0..5 * P + 101, 6 * P..6 * P + 1] {
            let e = m.pages_for(bad.clone()).unwrap_err();
            assert!(matches!(e, CudaError::Invalid { field: "range", .. }), "{bad:?}: {e}");
        }
        assert!(PageMap::new(10, 3).is_err());
        assert!(PageMap::new(10, 0).is_err());
        assert_eq!(PageMap::new(0, P).unwrap().pages(), 0);
    }

    #[test]
    fn missing_runs_are_idempotent_once_marked() {
        let mut m = PageMap::new(10 * P, P).unwrap();
        assert_eq!(m.missing(P / 2..3 * P + 1).unwrap(), vec![0..4]);
        m.mark(1..2, true);
        m.mark(3..4, true);
        assert_eq!(m.missing(P / 2..3 * P + 1).unwrap(), vec![0..1, 2..3]);
        for r in m.missing(0..10 * P).unwrap() {
            m.mark(r, true);
        }
        assert_eq!(m.mapped_pages(), 10);
        assert!(m.missing(0..10 * P).unwrap().is_empty());
        assert!(m.is_mapped(0..10 * P).unwrap());
        // The same request again maps nothing more.
        assert!(m.missing(P / 2..3 * P + 1).unwrap().is_empty());
        assert_eq!(m.mapped_runs(), vec![0..10]);
        m.mark(4..6, false);
        assert_eq!(m.mapped_runs(), vec![0..4, 6..10]);
        assert!(!m.is_mapped(3 * P..5 * P).unwrap());
        assert_eq!(m.mapped_within(3 * P + 5..7 * P - 1).unwrap(), vec![3 * P + 5..4 * P, 6 * P..7 * P - 1]);
        // An overflowing request changes nothing.
        let before = m.clone();
        assert!(m.missing(0..11 * P).is_err());
        assert_eq!(m, before);
    }

    #[test]
    fn pages_covering_counts_shared_pages_once() {
        // Four regions of 1.5 pages, each using its first 0.25 page: pages 0, 1, 3, 4 (region 1 starts
        // in page 1 at 1.5 P, region 2 at 3 P, region 3 at 4.5 P).
        let rb = 3 * P / 2;
        let used = P / 4;
        let ranges = (0..4).map(|r| r * rb..r * rb + used);
        assert_eq!(pages_covering(ranges.clone(), P), 4);
        let mut m = PageMap::new(4 * rb, P).unwrap();
        for r in ranges {
            for run in m.missing(r).unwrap() {
                m.mark(run, true);
            }
        }
        assert_eq!(m.mapped_runs(), vec![0..2, 3..5]);
        // Small regions share one page.
        assert_eq!(pages_covering((0..32).map(|r| r * 1000..r * 1000 + 10), P), 1);
        assert_eq!(pages_covering((0..4).map(|r| r * P..(r + 1) * P), P), 4);
        assert_eq!(pages_covering(std::iter::empty(), P), 0);
        assert_eq!(pages_covering((0..4).map(|r| r * P..r * P), P), 0);
    }
}
