//! Measured mode: on the named GPU, each candidate is compiled by the JIT, its output checked against
//! the CPU backend, then timed with CUDA events (warm-up, median of ≥ 10, inputs rotated beyond L2).

use crate::device::Present;
use crate::error::TuneError;
use crate::{ModelChoice, Outcome, Request};

/// Runs the measured search on the present device.
pub fn measured(present: &Present, _model: &ModelChoice, _req: &Request) -> Result<Outcome, TuneError> {
    Err(TuneError::CannotMeasure {
        reason: format!(
            "found a {} ({}), but this build has no CUDA decode-step launcher yet (hga-runtime's cuda module); \
             use --mode modeled",
            present.name, present.arch
        ),
    })
}
