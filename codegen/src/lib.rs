//! qbake's code generator: a plain library, used by the `quantized_model!`
//! macro and, through [`Model`], by build scripts.
//!
//! A model goes one way through it:
//!
//! 1. [`read`]: the safetensors file, memory-mapped, and its `qbake.graph`
//!    (or an ONNX file, imported first by [`onnx`]);
//! 2. [`graph`] and `plan`: the graph validated (tensors, shapes, cycles)
//!    and planned into steps of the runtime's ops: NHWC inside convolutional
//!    networks, batch norms and per-channel constants folded into the layer
//!    before them, activations fused into their producers;
//!    With `equalize`, `equalize` then trades channel ranges between
//!    consecutive layers;
//! 3. [`quantize`]: each large weight matrix to u8 with min/max, per tensor
//!    or per output channel, rounded with `compensation` on the
//!    correlations of its inputs, then `bias_correction`, with channel
//!    means from batch normalizations; both measured where needed on the
//!    user's inputs or on synthetic images ([`calibration`], whose input
//!    reader `cargo xtask eval` shares);
//! 4. `emit`: the tokens of the baked model, its activations placed in a
//!    per-thread scratch sized here (`scratch`).
//!
//! [`reference`](mod@reference) runs a plan in f64: what the baked model is measured against.
//!
//! Every failure is an [`Error`] naming what is wrong; the macro turns it into
//! one `compile_error!` at its argument. Nothing here panics on bad input.

mod bias_correction;
mod build_script;
pub mod calibration;
mod compensation;
mod emit;
mod equalize;
mod error;
pub mod graph;
mod input;
pub mod onnx;
mod options;
mod plan;
pub mod quantize;
pub mod read;
pub mod reference;
mod scratch;

pub use build_script::{Model, include_model};
pub use error::Error;
pub use input::quantized_model;
pub use options::{Calibration, Options};

use proc_macro2::TokenStream;
use std::path::Path;

/// Generates the items of a baked model from the model file at `path`.
///
/// `display_path` is how errors and docs name the file (the path as the user
/// wrote it, so messages do not depend on the machine).
pub fn generate(path: &Path, display_path: &str, options: &Options) -> Result<TokenStream, Error> {
    generate_file(&open_model(path, options)?, path, display_path, options)
}

/// Opens a model file: a qbake safetensors file, or an `.onnx` file,
/// imported in memory as `cargo xtask import` would write it.
pub fn open_model(path: &Path, options: &Options) -> Result<read::ModelFile, Error> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) {
        let bytes =
            std::fs::read(path).map_err(|e| Error::new(format!("cannot read the model file: {e}")))?;
        let imported = onnx::import(&bytes, &options.import_options())?;
        return read::ModelFile::from_bytes(&onnx::to_safetensors(&imported)?);
    }
    if options.output.is_some() || options.batch.is_some() {
        return Err(Error::new(
            "`output` and `batch` choose how an ONNX model is imported; this file is not `.onnx`",
        ));
    }
    read::ModelFile::open(path)
}

/// [`generate`] for a model file already in memory (the fuzzer's entry):
/// the same reading, checks, quantization and tokens. The expansion names
/// `display_path` as the file whose edits rebuild the crate.
pub fn generate_from_bytes(
    bytes: &[u8],
    display_path: &str,
    options: &Options,
) -> Result<TokenStream, Error> {
    let file = read::ModelFile::from_bytes(bytes)?;
    generate_file(&file, Path::new(display_path), display_path, options)
}

/// The plan `options` bake: [`graph::plan`], then cross-layer equalization
/// when asked for. The float model it computes is the file's (equalization
/// changes no output but by f32 rounding), so it is also what the baked
/// model is measured against.
pub fn plan_model(file: &read::ModelFile, options: &Options) -> Result<graph::Plan, Error> {
    let mut plan = graph::plan(file)?;
    if options.equalize {
        equalize::equalize(&mut plan);
    }
    Ok(plan)
}

fn generate_file(
    file: &read::ModelFile,
    path: &Path,
    display_path: &str,
    options: &Options,
) -> Result<TokenStream, Error> {
    let plan = plan_model(file, options)?;
    let baked = quantize::bake(&plan, options)?;
    let mut tokens = emit::model(path, display_path, &plan, &baked, options, emit::Bytes::Inline).0;
    if options.reference {
        tokens.extend(emit::reference_module(path, display_path, &plan, options, emit::Bytes::Inline)?.0);
    }
    Ok(tokens)
}
