//! Hostile inputs: what every reader and kernel must survive.
//!
//! Each entry point takes arbitrary bytes and panics only when qbake breaks
//! a promise: a reader that panics, allocates out of proportion to its input
//! or emits tokens that are not Rust, or a kernel that disagrees with its
//! definition. An `Err` from a reader is the expected answer to damaged bytes.
//!
//! - [`safetensors_model`]: bytes as a model file, through
//!   `qbake_codegen::generate_from_bytes` (read, plan, quantize, emit);
//! - [`graph_json`]: bytes as the `qbake.graph` document of a file with a
//!   fixed set of tensors, through the same path;
//! - [`onnx_import`]: bytes as an ONNX file, through the reader's accessors,
//!   the importer, and the import baked as above;
//! - [`kernels`]: bytes as shapes and values for the int8 and f32 kernels,
//!   each compared with its definition.
//!
//! The fuzz targets in `fuzz/` call these; `tests/hostile.rs` replays the
//! committed corpus and deterministic mutations of the fixtures through them.
//! Allocation is measured when the binary installs [`CountingAlloc`].

mod alloc;
mod kernels;
pub mod mutate;

pub use alloc::{CountingAlloc, measure};
pub use kernels::kernels;

use qbake_codegen::onnx::{self, ImportOptions, OnnxModel};
use qbake_codegen::{Options, generate_from_bytes};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::sync::OnceLock;

/// Peak heap a model file may take to bake, per byte of the file, on top of
/// [`BAKE_SLACK`]. Most of it is tokens: every f32 kept in float (biases,
/// constants, small matrices) becomes a literal token of some 70 bytes, and
/// the 8-bit weights a byte-string literal of up to 4 characters a byte.
pub const BAKE_FACTOR: usize = 128;
/// See [`BAKE_FACTOR`].
pub const BAKE_SLACK: usize = 16 << 20;

/// The option sets every model is baked with: the defaults, and everything
/// quantized, per tensor, equalized.
fn option_sets() -> [Options; 2] {
    [
        Options::default(),
        Options {
            per_channel: false,
            keep_float_below: 0,
            equalize: true,
            ..Options::default()
        },
    ]
}

/// Bytes as a model file: baked with each option set. A success must be
/// tokens that parse as Rust items.
pub fn safetensors_model(data: &[u8]) {
    for options in option_sets() {
        let (result, peak) = measure(|| generate_from_bytes(data, "fuzz.safetensors", &options));
        check_budget("baking a model file", data.len(), peak, BAKE_FACTOR, BAKE_SLACK);
        match result {
            Ok(tokens) => {
                if let Err(e) = syn::parse2::<syn::File>(tokens.clone()) {
                    panic!("the expansion is not Rust: {e}\n{tokens}");
                }
            }
            // A file refused with the defaults is refused with any options.
            Err(_) => return,
        }
    }
}

/// The tensors a fuzzed graph may name: every dtype qbake reads and some it
/// refuses, both layouts, a matrix large enough to quantize, empty and
/// scalar shapes, and non-finite values.
/// A tensor of the fixed set: name, dtype, shape, little-endian bytes.
type FixedTensor = (String, Dtype, Vec<usize>, Vec<u8>);

fn graph_tensors() -> &'static [FixedTensor] {
    static TENSORS: OnceLock<Vec<FixedTensor>> = OnceLock::new();
    TENSORS.get_or_init(|| {
        let f32s = |shape: &[usize], f: &dyn Fn(usize) -> f32| {
            let n: usize = shape.iter().product();
            (0..n).flat_map(|i| f(i).to_le_bytes()).collect::<Vec<u8>>()
        };
        let wave = |i: usize| ((i * 37 % 23) as f32 - 11.0) / 8.0;
        let t = |name: &str, dtype, shape: &[usize], bytes| (name.to_string(), dtype, shape.to_vec(), bytes);
        vec![
            t("w", Dtype::F32, &[4, 8], f32s(&[4, 8], &wave)),
            t("w_kn", Dtype::F32, &[8, 4], f32s(&[8, 4], &wave)),
            t("b", Dtype::F32, &[4], f32s(&[4], &wave)),
            t("b8", Dtype::F32, &[8], f32s(&[8], &wave)),
            t("c", Dtype::F32, &[1, 4], f32s(&[1, 4], &wave)),
            t("big", Dtype::F32, &[40, 32], f32s(&[40, 32], &wave)),
            t("big_kn", Dtype::F32, &[32, 40], f32s(&[32, 40], &wave)),
            t("b40", Dtype::F32, &[40], f32s(&[40], &wave)),
            t("zeros", Dtype::F32, &[40, 32], vec![0; 40 * 32 * 4]),
            t(
                "huge",
                Dtype::F32,
                &[4, 8],
                f32s(&[4, 8], &|i| if i % 3 == 0 { f32::MAX } else { -f32::MAX }),
            ),
            t(
                "tiny",
                Dtype::F32,
                &[4, 8],
                f32s(&[4, 8], &|i| f32::from_bits(i as u32 + 1)),
            ),
            t(
                "h",
                Dtype::F16,
                &[4, 8],
                (0..32u16).flat_map(|i| (0x3c00 + i).to_le_bytes()).collect(),
            ),
            t(
                "bf",
                Dtype::BF16,
                &[4, 8],
                (0..32u16).flat_map(|i| (0x3f80 - i).to_le_bytes()).collect(),
            ),
            t(
                "i",
                Dtype::I64,
                &[4],
                (0..4i64).flat_map(|i| i.to_le_bytes()).collect(),
            ),
            t("u8", Dtype::U8, &[4, 8], (0..32).collect()),
            t(
                "nan",
                Dtype::F32,
                &[4, 8],
                f32s(&[4, 8], &|i| if i == 5 { f32::NAN } else { 1.0 }),
            ),
            t(
                "inf",
                Dtype::F32,
                &[4],
                f32s(&[4], &|i| if i == 2 { f32::INFINITY } else { 1.0 }),
            ),
            t("e0", Dtype::F32, &[0, 8], Vec::new()),
            t("e1", Dtype::F32, &[8, 0], Vec::new()),
            t("s", Dtype::F32, &[], f32s(&[], &wave)),
            t("one", Dtype::F32, &[1, 1], f32s(&[1, 1], &wave)),
            t("r3", Dtype::F32, &[2, 4, 8], f32s(&[2, 4, 8], &wave)),
            // Convolutions: [out, in / group, kh, kw] weights for 2 or 4
            // input channels, one large enough to quantize, one of huge
            // values, a 5x5 kernel, and a rank-5 tensor.
            t("k3", Dtype::F32, &[4, 2, 3, 3], f32s(&[4, 2, 3, 3], &wave)),
            t("k1", Dtype::F32, &[8, 4, 1, 1], f32s(&[8, 4, 1, 1], &wave)),
            t("kg", Dtype::F32, &[4, 1, 2, 2], f32s(&[4, 1, 2, 2], &wave)),
            t("dw", Dtype::F32, &[4, 1, 3, 3], f32s(&[4, 1, 3, 3], &wave)),
            t("k5", Dtype::F32, &[2, 2, 5, 5], f32s(&[2, 2, 5, 5], &wave)),
            t("kbig", Dtype::F32, &[40, 4, 3, 3], f32s(&[40, 4, 3, 3], &wave)),
            t(
                "khuge",
                Dtype::F32,
                &[4, 2, 3, 3],
                f32s(&[4, 2, 3, 3], &|i| if i % 2 == 0 { f32::MAX } else { -f32::MAX }),
            ),
            t("r5", Dtype::F32, &[1, 4, 2, 3, 3], f32s(&[1, 4, 2, 3, 3], &wave)),
            // BatchNormalization and per-channel constants for 4 channels:
            // a variance that is negative somewhere, one of a subnormal, and
            // scales large enough to overflow what they fold into.
            t("var", Dtype::F32, &[4], f32s(&[4], &|i| 0.5 + i as f32)),
            t("negvar", Dtype::F32, &[4], f32s(&[4], &|i| 1.0 - i as f32)),
            t("tinyvar", Dtype::F32, &[4], f32s(&[4], &|_| f32::from_bits(1))),
            t("bigscale", Dtype::F32, &[4], f32s(&[4], &|_| 1e30)),
            t("c411", Dtype::F32, &[4, 1, 1], f32s(&[4, 1, 1], &wave)),
            t("c1411", Dtype::F32, &[1, 4, 1, 1], f32s(&[1, 4, 1, 1], &wave)),
        ]
    })
}

/// A model file with `graph_tensors` and `graph` as its `qbake.graph`.
pub fn file_with_graph(graph: &str) -> Vec<u8> {
    let tensors = graph_tensors();
    let views = tensors.iter().map(|(name, dtype, shape, bytes)| {
        let view = TensorView::new(*dtype, shape.clone(), bytes).expect("the fixed tensors are consistent");
        (name.clone(), view)
    });
    let metadata = HashMap::from([(qbake_codegen::read::GRAPH_KEY.to_string(), graph.to_string())]);
    safetensors::serialize(views, Some(metadata)).expect("the fixed tensors serialize")
}

/// Bytes as the graph document of a file with `graph_tensors`.
pub fn graph_json(data: &[u8]) {
    match std::str::from_utf8(data) {
        Ok(graph) => safetensors_model(&file_with_graph(graph)),
        // Safetensors metadata is text: only the parser sees other bytes.
        Err(_) => {
            let _ = qbake_codegen::graph::parse(&String::from_utf8_lossy(data));
        }
    }
}

/// Bytes as an ONNX file: decoded, read through every accessor, imported,
/// and the import baked. Decoding and importing stay within the budgets
/// docs/onnx.md states; the bake within [`BAKE_FACTOR`] of the file it makes.
pub fn onnx_import(data: &[u8]) {
    use qbake_codegen::onnx::import::{MEMORY_FACTOR, MEMORY_SLACK};
    use qbake_codegen::onnx::model::{DECODE_SLACK, MAX_DECODE_FACTOR};
    let (model, peak) = measure(|| OnnxModel::decode(data));
    check_budget("decoding ONNX", data.len(), peak, MAX_DECODE_FACTOR, DECODE_SLACK);
    let Ok(model) = model else { return };

    let ((), peak) = measure(|| {
        let _ = (
            model.inputs(),
            model.outputs(),
            model.op_counts(),
            model.opsets(),
            model.producer(),
        );
        for t in model.initializers() {
            let _ = t.value();
        }
        for node in model.nodes() {
            if node.op() == "Constant" {
                let _ = node.constant_value();
            }
        }
    });
    // Values convert to at most 8 bytes each from at least 1 byte on the wire.
    check_budget("reading ONNX tensors", data.len(), peak, 8, 1 << 20);

    // Options from the bytes, so the corpus covers a fixed and a chosen batch.
    let batch = match data.iter().fold(0u8, |a, &b| a.wrapping_add(b)) % 4 {
        0 => None,
        n => Some(usize::from(n)),
    };
    let options = ImportOptions { batch, output: None };
    let (imported, peak) = measure(|| onnx::import(data, &options));
    check_budget(
        "importing ONNX",
        data.len(),
        peak,
        MAX_DECODE_FACTOR + MEMORY_FACTOR,
        DECODE_SLACK + MEMORY_SLACK,
    );
    let Ok(imported) = imported else { return };
    match onnx::to_safetensors(&imported) {
        Ok(file) => safetensors_model(&file),
        Err(e) => panic!("an import that cannot be written: {e}"),
    }
}

fn check_budget(what: &str, len: usize, peak: Option<usize>, factor: usize, slack: usize) {
    if let Some(peak) = peak {
        let budget = factor.saturating_mul(len).saturating_add(slack);
        assert!(
            peak <= budget,
            "{what}: {len} input bytes took {peak} bytes of heap at the peak, over the budget of {budget}"
        );
    }
}
