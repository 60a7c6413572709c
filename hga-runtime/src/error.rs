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
}
