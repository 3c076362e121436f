//! Code shared by the integration tests and the fuzz targets.
//!
//! [`hostile`] holds the entry points the fuzz targets in `fuzz/` call for
//! each input, and that `tests/hostile.rs` replays on the committed corpus
//! and on deterministic mutations of the fixtures: one code path, so a crash
//! the fuzzer finds is a test failure in `cargo test`.

pub mod hostile;
