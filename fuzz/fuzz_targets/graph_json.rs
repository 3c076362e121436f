//! Bytes as the `qbake.graph` of a file with a fixed set of tensors, baked as a model.
//! The checks are `qbake_tests::hostile::graph_json`, which `cargo test` also runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qbake_tests::hostile;

#[global_allocator]
static ALLOC: hostile::CountingAlloc = hostile::CountingAlloc;

fuzz_target!(|data: &[u8]| hostile::graph_json(data));
