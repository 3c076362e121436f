//! Bytes as a model file: read, planned, quantized and emitted (tokens must parse).
//! The checks are `qbake_tests::hostile::safetensors_model`, which `cargo test` also runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qbake_tests::hostile;

#[global_allocator]
static ALLOC: hostile::CountingAlloc = hostile::CountingAlloc;

fuzz_target!(|data: &[u8]| hostile::safetensors_model(data));
