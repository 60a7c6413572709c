//! Checked-in artifacts: tuned configs per GPU and model and the generated CUDA sources of the shipped variants.
