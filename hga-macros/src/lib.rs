//! Proc-macro front end over `hga-dsl` (filled in by the proc-macro issue).
