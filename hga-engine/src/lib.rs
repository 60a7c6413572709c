//! A small CPU engine for Qwen3-architecture checkpoints that takes attention from `hga-runtime`.
