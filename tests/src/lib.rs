//! Shared helpers of the integration tests live in the test files; this crate has no library code.
