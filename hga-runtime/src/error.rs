//! Errors of the runtime's public API.

/// What can go wrong when an engine calls the runtime. The state is unchanged when an error is returned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuntimeError {
    /// A buffer's length does not match the layout.
    #[error("{field}: length {got} does not match the layout (expected {expected})")]
    ShapeMismatch {
        /// Which argument.
        field: &'static str,
        /// What the layout requires, in words or as a number.
        expected: String,
        /// The length given.
        got: usize,
    },
    /// A query position beyond the appended tokens.
    #[error("{field} = {pos}: must be < the {len} tokens appended")]
    PositionOutOfRange {
        /// Which argument.
        field: &'static str,
        /// The position given.
        pos: usize,
        /// Tokens appended so far.
        len: usize,
    },
    /// A value that is not finite (NaN or infinity) in an input buffer.
    #[error("{field}: element {index} is not finite")]
    NotFinite {
        /// Which argument.
        field: &'static str,
        /// First offending element.
        index: usize,
    },
    /// A sequence id that was never added or was removed.
    #[error("sequence {id}: unknown (never added, or removed)")]
    UnknownSequence {
        /// The id given.
        id: u64,
    },
    /// A sequence named twice in one batch.
    #[error("sequence {id}: appears more than once in the batch")]
    DuplicateSequence {
        /// The id given twice.
        id: u64,
    },
    /// An index (layer, KV head, …) beyond its range.
    #[error("{field} = {value}: must be < {limit}")]
    IndexOutOfRange {
        /// Which argument.
        field: &'static str,
        /// The index given.
        value: usize,
        /// The exclusive upper bound.
        limit: usize,
    },
    /// A request beyond a configured maximum (sequence length, sequences, working-set slots).
    #[error("{field}: {requested} exceeds the configured maximum {limit}")]
    CapacityExceeded {
        /// What was exceeded.
        field: &'static str,
        /// What the request needs.
        requested: usize,
        /// The configured maximum.
        limit: usize,
    },
    /// The host store would exceed its RAM budget, or the host refused the allocation.
    #[error("host memory: {requested} more bytes needed, {used} of the budget {budget} bytes in use")]
    HostOutOfMemory {
        /// Bytes the operation needs beyond what is in use.
        requested: u64,
        /// Bytes in use.
        used: u64,
        /// The budget.
        budget: u64,
    },
    /// The GPU (or its configured budget) has too little memory.
    #[error("GPU memory: {requested} bytes needed, {available} available")]
    GpuOutOfMemory {
        /// Bytes the operation needs.
        requested: u64,
        /// Bytes available (free on the device, or left in the budget).
        available: u64,
    },
    /// A configuration value outside its allowed range.
    #[error("config.{field} = {value}: {allowed}")]
    InvalidConfig {
        /// Which field.
        field: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        allowed: String,
    },
    /// No usable GPU (no driver, no device, or the crate was built without the `cuda` feature).
    #[error("no usable GPU: {reason}")]
    NoGpu {
        /// Why.
        reason: String,
    },
    /// A CUDA call failed.
    #[error("CUDA {op}: {message}")]
    Cuda {
        /// The operation.
        op: &'static str,
        /// The driver's message.
        message: String,
    },
}
