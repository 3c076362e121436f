//! `quantized_model!`: bakes a float model into 8-bit constants and a typed
//! `forward` at compile time; `include_model!`: brings in a model a build
//! script baked. All the work is in `qbake-codegen`; this crate only tells it
//! where the invoking source file and `OUT_DIR` are.

use proc_macro::{Span, TokenStream};
use std::path::PathBuf;

/// Quantizes a model file at compile time and expands to its weights,
/// `Input`/`Output` types and `Model`.
///
/// ```text
/// mod digits {
///     qbake::quantized_model!("models/digits.safetensors", per_channel = true);
/// }
/// ```
///
/// (`examples/digits.rs` runs this.) A relative path resolves against the
/// directory of the source file that invokes the macro, as `include_bytes!` does. See the `qbake` crate docs
/// for the options.
#[proc_macro]
pub fn quantized_model(input: TokenStream) -> TokenStream {
    qbake_codegen::quantized_model(input.into(), &invoking_dir()).into()
}

/// Brings in the model that `build.rs` baked with
/// `qbake_codegen::Model::new(path).emit(name)`: the same items as
/// `quantized_model!`, with the weights in one blob in `OUT_DIR`.
///
/// ```text
/// mod digits {
///     qbake::include_model!("digits");
/// }
/// ```
///
/// (`examples/digits_build.rs` runs this.)
#[proc_macro]
pub fn include_model(input: TokenStream) -> TokenStream {
    let out_dir = std::env::var_os("OUT_DIR").map(PathBuf::from);
    qbake_codegen::include_model(input.into(), out_dir.as_deref()).into()
}

/// The directory of the file the macro was invoked from, or the invoking
/// crate's manifest directory when the compiler cannot tell (code generated
/// by another macro, for example).
fn invoking_dir() -> PathBuf {
    Span::call_site()
        .local_file()
        .and_then(|file| file.parent().map(PathBuf::from))
        .or_else(|| std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from))
        .unwrap_or_default()
}
