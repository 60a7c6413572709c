//! hga-runtime
