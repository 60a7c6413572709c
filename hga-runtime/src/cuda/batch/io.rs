//! Device-side input and output of a [`super::DecodeBatch`] for engines: queries and outputs in device
//! buffers, and the step's telemetry in one read-back.
