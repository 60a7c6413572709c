//! Fixed-size record slots in blocks that never move: the store grows by adding blocks, never by
//! copying, so addresses handed to the GPU stay valid; freed slots are reused first.

use crate::RuntimeError;

/// Host memory for one arena block: plain heap memory, or pinned device-mapped memory on the GPU path.
pub trait HostBlock: Send {
    /// The block's elements.
    fn as_slice(&self) -> &[u16];
    /// The block's elements, writable.
    fn as_mut_slice(&mut self) -> &mut [u16];
    /// The address the GPU reads this block at, when it is device-mapped.
    fn device_addr(&self) -> Option<u64> {
        None
    }
}

/// Where arena blocks come from.
pub trait BlockSource: Send {
    /// The block type.
    type Block: HostBlock;
    /// A block of `elems` elements (contents unspecified); a typed error when the host refuses.
    fn allocate(&mut self, elems: usize) -> Result<Self::Block, RuntimeError>;
}

/// Ordinary heap blocks (the CPU path and tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct HeapSource;

impl HostBlock for Box<[u16]> {
    fn as_slice(&self) -> &[u16] {
        self
    }
    fn as_mut_slice(&mut self) -> &mut [u16] {
        self
    }
}

impl BlockSource for HeapSource {
    type Block = Box<[u16]>;
    fn allocate(&mut self, elems: usize) -> Result<Self::Block, RuntimeError> {
        let mut v = Vec::new();
        v.try_reserve_exact(elems).map_err(|_| RuntimeError::HostOutOfMemory {
            requested: 2 * elems as u64,
            used: 0,
            budget: 0,
        })?;
        v.resize(elems, 0u16);
        Ok(v.into_boxed_slice())
    }
}

/// Where a record lives: block and record index inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecordRef {
    /// Block index.
    pub block: u32,
    /// Record index inside the block.
    pub index: u32,
}

/// Record slots of `record_elems` elements, `per_block` to a block, within a byte budget.
pub struct Arena<S: BlockSource> {
    source: S,
    record_elems: usize,
    per_block: usize,
    budget_bytes: u64,
    blocks: Vec<S::Block>,
    /// Next never-used record of the last block.
    fresh: usize,
    free: Vec<RecordRef>,
}

impl<S: BlockSource> std::fmt::Debug for Arena<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("record_elems", &self.record_elems)
            .field("per_block", &self.per_block)
            .field("blocks", &self.blocks.len())
            .field("free", &self.free.len())
            .finish()
    }
}

impl<S: BlockSource> Arena<S> {
    /// An empty arena; no memory is taken until the first record.
    pub fn new(source: S, record_elems: usize, per_block: usize, budget_bytes: u64) -> Self {
        assert!(record_elems > 0 && per_block > 0, "record_elems and per_block are checked by the caller");
        Arena { source, record_elems, per_block, budget_bytes, blocks: Vec::new(), fresh: per_block, free: Vec::new() }
    }

    /// Bytes of one block.
    pub fn block_bytes(&self) -> u64 {
        (2 * self.record_elems * self.per_block) as u64
    }

    /// Bytes held (whole blocks, used or not).
    pub fn reserved_bytes(&self) -> u64 {
        self.blocks.len() as u64 * self.block_bytes()
    }

    /// The budget.
    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    /// Records in use.
    pub fn live_records(&self) -> usize {
        self.blocks.len() * self.per_block - (self.per_block - self.fresh) - self.free.len()
    }

    /// Records that can still be taken without exceeding the budget.
    pub fn available(&self) -> usize {
        let more_blocks = (self.budget_bytes.saturating_sub(self.reserved_bytes()) / self.block_bytes()) as usize;
        self.free.len() + (self.per_block - self.fresh) + more_blocks * self.per_block
    }

    /// Takes `n` records, all or none: `HostOutOfMemory` when the budget (or the host) cannot hold them.
    pub fn take(&mut self, n: usize) -> Result<Vec<RecordRef>, RuntimeError> {
        if n > self.available() {
            let have = self.free.len() + (self.per_block - self.fresh);
            let short = (n - have) as u64 * (2 * self.record_elems) as u64;
            return Err(RuntimeError::HostOutOfMemory {
                requested: short.div_ceil(self.block_bytes()) * self.block_bytes(),
                used: self.reserved_bytes(),
                budget: self.budget_bytes,
            });
        }
        // Allocate the new blocks first, so that a refusal by the host leaves the arena as it was.
        let from_free = n.min(self.free.len());
        let from_fresh = (n - from_free).min(self.per_block - self.fresh);
        let need_blocks = (n - from_free - from_fresh).div_ceil(self.per_block);
        let mut new_blocks = Vec::with_capacity(need_blocks);
        for _ in 0..need_blocks {
            let block = self.source.allocate(self.record_elems * self.per_block).map_err(|e| match e {
                RuntimeError::HostOutOfMemory { requested, .. } => {
                    RuntimeError::HostOutOfMemory { requested, used: self.reserved_bytes(), budget: self.budget_bytes }
                }
                other => other,
            })?;
            new_blocks.push(block);
        }
        let mut out = self.free.split_off(self.free.len() - from_free);
        out.reverse();
        for _ in 0..n - from_free {
            if self.fresh == self.per_block {
                self.blocks.push(new_blocks.remove(0));
                self.fresh = 0;
            }
            out.push(RecordRef { block: (self.blocks.len() - 1) as u32, index: self.fresh as u32 });
            self.fresh += 1;
        }
        Ok(out)
    }

    /// Returns records for reuse. Each must have come from [`Arena::take`] and not been released since.
    pub fn release(&mut self, records: impl IntoIterator<Item = RecordRef>) {
        self.free.extend(records);
    }

    /// The elements of a record.
    pub fn record(&self, r: RecordRef) -> &[u16] {
        let at = r.index as usize * self.record_elems;
        &self.blocks[r.block as usize].as_slice()[at..at + self.record_elems]
    }

    /// The elements of a record, writable.
    pub fn record_mut(&mut self, r: RecordRef) -> &mut [u16] {
        let at = r.index as usize * self.record_elems;
        &mut self.blocks[r.block as usize].as_mut_slice()[at..at + self.record_elems]
    }

    /// Host address of a record (stable for the arena's life).
    pub fn record_ptr(&self, r: RecordRef) -> *const u16 {
        self.record(r).as_ptr()
    }

    /// Device address of a record, when blocks are device-mapped.
    pub fn record_device_addr(&self, r: RecordRef) -> Option<u64> {
        let base = self.blocks[r.block as usize].device_addr()?;
        Some(base + (2 * r.index as usize * self.record_elems) as u64)
    }
}
