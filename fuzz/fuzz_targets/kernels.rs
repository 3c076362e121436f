//! Bytes as shapes and values: quantizer, int8 and f32 GEMM, softmax, each against its definition.
//! The checks are `qbake_tests::hostile::kernels`, which `cargo test` also runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qbake_tests::hostile;

#[global_allocator]
static ALLOC: hostile::CountingAlloc = hostile::CountingAlloc;

fuzz_target!(|data: &[u8]| hostile::kernels(data));
