//! Bytes as an ONNX file: decoded, read, imported, and the import baked.
//! The checks are `qbake_tests::hostile::onnx_import`, which `cargo test` also runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qbake_tests::hostile;

#[global_allocator]
static ALLOC: hostile::CountingAlloc = hostile::CountingAlloc;

fuzz_target!(|data: &[u8]| hostile::onnx_import(data));
