//! The build-script path: `Model::new(path).emit(name)` in `build.rs` writes
//! the baked model into `OUT_DIR`, and `include_model!(name)` brings it in.
//!
//! The items are the macro's, from the same emitter; only the weight bytes
//! differ in where they live: one 64-byte-aligned blob, `OUT_DIR/name.weights`,
//! which the generated `OUT_DIR/name.rs` includes with `include_bytes!`.
//! rustc then never parses the bytes as a literal, and a crate whose model
//! did not change recompiles without running the quantizer again.

use crate::emit::{self, Bytes};
use crate::{Calibration, Error, Options, quantize};
use proc_macro2::TokenStream;
use std::path::{Path, PathBuf};
use syn::LitStr;

/// A model to bake from `build.rs`, with the same options as
/// `quantized_model!`:
///
/// ```no_run
/// // build.rs
/// fn main() -> Result<(), qbake_codegen::Error> {
///     qbake_codegen::Model::new("models/digits.safetensors")
///         .per_channel(true)
///         .emit("digits")
/// }
/// ```
///
/// and in the crate's source, `mod digits { qbake::include_model!("digits"); }`.
#[derive(Debug, Clone)]
pub struct Model {
    path: PathBuf,
    options: Options,
}

impl Model {
    /// The model file at `path`, relative to the package root
    /// (`CARGO_MANIFEST_DIR`), with the default options. Reads `.safetensors`
    /// files that carry a `qbake.graph`, and `.onnx` files (imported first).
    pub fn new(path: impl AsRef<Path>) -> Self {
        Model {
            path: path.as_ref().to_path_buf(),
            options: Options::default(),
        }
    }

    /// One min/max per output channel (`true`, the default) or per tensor.
    pub fn per_channel(mut self, per_channel: bool) -> Self {
        self.options.per_channel = per_channel;
        self
    }

    /// Weight matrices with fewer elements stay f32 (default 4096).
    pub fn keep_float_below(mut self, elements: usize) -> Self {
        self.options.keep_float_below = elements;
        self
    }

    /// Data-free bias correction (default `true`; see `Options`).
    pub fn bias_correction(mut self, on: bool) -> Self {
        self.options.bias_correction = on;
        self
    }

    /// Also bake the float model, as `reference::Model` (default `false`).
    pub fn reference(mut self, on: bool) -> Self {
        self.options.reference = on;
        self
    }

    /// Warn for weights quantized below this SQNR, in dB (default 30; 0: never).
    pub fn warn_sqnr_below(mut self, db: u32) -> Self {
        self.options.warn_sqnr_below = db;
        self
    }

    /// Cross-layer equalization (default `false`; see `Options`).
    pub fn equalize(mut self, on: bool) -> Self {
        self.options.equalize = on;
        self
    }

    /// Balanced rounding of each weight row (default `true`; see `Options`).
    pub fn balanced_rounding(mut self, on: bool) -> Self {
        self.options.balanced_rounding = on;
        self
    }

    /// Compensated rounding on the calibration inputs (default `true`; see `Options`).
    pub fn compensated_rounding(mut self, on: bool) -> Self {
        self.options.compensated_rounding = on;
        self
    }

    /// MSE-optimal weight ranges (default `true`; see `Options`).
    pub fn mse_ranges(mut self, on: bool) -> Self {
        self.options.mse_ranges = on;
        self
    }

    /// Calibration inputs for bias correction (`Options::calibration`): a
    /// safetensors file with one F32 tensor, a batch of inputs. A relative
    /// path is the build script's, that is the package's directory.
    pub fn calibration(mut self, path: impl AsRef<Path>) -> Self {
        self.options.calibration = Calibration::Inputs(path.as_ref().to_path_buf());
        self
    }

    /// Calibration on synthetic images, no data (`Calibration::Synthetic`;
    /// the default for image inputs, `Calibration::Auto`).
    pub fn synthetic_calibration(mut self) -> Self {
        self.options.calibration = Calibration::Synthetic;
        self
    }

    /// No calibration: bias correction from batch-norm statistics alone
    /// (`Calibration::Off`).
    pub fn no_calibration(mut self) -> Self {
        self.options.calibration = Calibration::Off;
        self
    }

    /// ONNX models: the graph output to compute, when there are several.
    pub fn output(mut self, name: &str) -> Self {
        self.options.output = Some(name.to_string());
        self
    }

    /// ONNX models: the size of a dynamic batch dimension (default 1).
    pub fn batch(mut self, batch: usize) -> Self {
        self.options.batch = Some(batch);
        self
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// Bakes the model into `OUT_DIR/name.rs` and `OUT_DIR/name.weights`,
    /// for `qbake::include_model!("name")`, and tells cargo to run the build
    /// script again when the model file changes (and only then).
    ///
    /// On failure, the error names the file and what is wrong with it, and is
    /// also reported to cargo as `cargo::error`, which fails the build with
    /// that message on top.
    pub fn emit(&self, name: &str) -> Result<(), Error> {
        let result = env_dir("CARGO_MANIFEST_DIR").and_then(|manifest_dir| {
            let path = manifest_dir.join(&self.path);
            // Printed before anything can fail, so that fixing the file reruns the script.
            println!("cargo::rerun-if-changed={}", path.display());
            let mut model = Model {
                path: self.path.clone(),
                options: self.options.clone(),
            };
            if let Calibration::Inputs(inputs) = &mut model.options.calibration {
                *inputs = manifest_dir.join(&*inputs);
                println!("cargo::rerun-if-changed={}", inputs.display());
            }
            model.emit_into(&path, &env_dir("OUT_DIR")?, name)
        });
        if let Err(e) = &result {
            println!("cargo::error={e}");
        }
        result
    }

    /// `emit`, with the model file and the output directory given (and the
    /// calibration file's path taken as it is).
    pub fn emit_into(&self, path: &Path, out_dir: &Path, name: &str) -> Result<(), Error> {
        check_name(name)?;
        let display = self.path.display().to_string();
        let in_file = |e: Error| match &self.options.calibration {
            Calibration::Inputs(inputs) if e.is_calibration() => {
                Error::new(format!("qbake: {}: {e}", inputs.display()))
            }
            _ => Error::new(format!("qbake: {display}: {e}")),
        };
        let file = crate::open_model(path, &self.options).map_err(in_file)?;
        let plan = crate::plan_model(&file, &self.options).map_err(in_file)?;
        let baked = quantize::bake(&plan, &self.options).map_err(in_file)?;
        let blob_file = format!("{name}.weights");
        let bytes = Bytes::Blob { file: &blob_file };
        let (mut tokens, blob) = emit::model(path, &display, &plan, &baked, &self.options, bytes);
        if self.options.reference {
            let file = format!("{name}.reference.weights");
            let bytes = Bytes::Blob { file: &file };
            let (float, blob) =
                emit::reference_module(path, &display, &plan, &self.options, bytes).map_err(in_file)?;
            tokens.extend(float);
            write(&out_dir.join(&file), &blob)?;
        }
        let source = format!(
            "// Generated by qbake_codegen::Model::emit from `{display}`; \
             the weight bytes are in `{blob_file}` beside this file.\n{tokens}\n"
        );
        write(&out_dir.join(&blob_file), &blob)?;
        write(&out_dir.join(format!("{name}.rs")), source.as_bytes())
    }
}

fn env_dir(var: &str) -> Result<PathBuf, Error> {
    std::env::var_os(var).map(PathBuf::from).ok_or_else(|| {
        Error::new(format!(
            "qbake: {var} is not set; `Model::emit` runs in a build script, which cargo gives it"
        ))
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes)
        .map_err(|e| Error::new(format!("qbake: cannot write {}: {e}", path.display())))
}

/// A name is a file stem in `OUT_DIR`, shared by `emit` and `include_model!`.
fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Error::new(format!(
            "qbake: `{name}` is not a model name; use ASCII letters, digits, `_` and `-`"
        )));
    }
    Ok(())
}

/// The whole `include_model!` expansion: the items `Model::emit(name)` wrote
/// in `out_dir` (the invoking crate's `OUT_DIR`), or one `compile_error!` at
/// the argument saying what is missing.
///
/// The items are read and returned as the macro's own expansion, not
/// `include!`d: so they are linted as `quantized_model!`'s are (no dead-code
/// warnings for the `Model` methods a crate does not call), and errors point
/// at the call. The crate still rebuilds when they change, since cargo
/// recompiles it whenever its build script runs.
pub fn include_model(input: TokenStream, out_dir: Option<&Path>) -> TokenStream {
    expand(input, out_dir).unwrap_or_else(syn::Error::into_compile_error)
}

fn expand(input: TokenStream, out_dir: Option<&Path>) -> syn::Result<TokenStream> {
    let usage = "qbake: expected the name given to `qbake_codegen::Model::emit` in build.rs, \
                 as in `include_model!(\"digits\")`";
    let name: LitStr = syn::parse2(input).map_err(|e| syn::Error::new(e.span(), usage))?;
    let at_name = |message: String| syn::Error::new(name.span(), message);
    check_name(&name.value()).map_err(|e| at_name(e.to_string()))?;
    let file = format!("{}.rs", name.value());
    let Some(out_dir) = out_dir else {
        return Err(at_name(format!(
            "qbake: OUT_DIR is not set: `include_model!` needs a build.rs that calls \
             `qbake_codegen::Model::new(\"path/to/model.safetensors\").emit(\"{}\")`",
            name.value()
        )));
    };
    let path = out_dir.join(&file);
    if !path.is_file() {
        return Err(at_name(format!(
            "qbake: no model `{}` in OUT_DIR: build.rs must call `qbake_codegen::Model::new(..).emit(\"{}\")`{}",
            name.value(),
            name.value(),
            emitted_names(out_dir)
        )));
    }
    let damaged = |e: &dyn std::fmt::Display| {
        at_name(format!(
            "qbake: cannot read OUT_DIR/{file} ({e}); `cargo clean` and build again to rewrite it"
        ))
    };
    let source = std::fs::read_to_string(&path).map_err(|e| damaged(&e))?;
    source.parse().map_err(|e| damaged(&e))
}

/// `"; it emitted `a`, `b`"`: the models in `out_dir`, to spot a typo.
fn emitted_names(out_dir: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(out_dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".weights")?;
            out_dir
                .join(format!("{stem}.rs"))
                .is_file()
                .then(|| stem.to_string())
        })
        .collect();
    names.sort();
    if names.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
        format!("; it emitted {}", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proc_macro2::TokenTree;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/models")
            .join(name)
    }

    /// A fresh directory under the system's temp dir.
    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("qbake-codegen-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Every token of `tokens`, the contents of groups in place of the groups.
    fn flat(tokens: TokenStream) -> Vec<TokenTree> {
        tokens
            .into_iter()
            .flat_map(|t| match t {
                TokenTree::Group(g) => flat(g.stream()),
                t => vec![t],
            })
            .collect()
    }

    #[test]
    fn the_blob_holds_the_macros_bytes_at_64_byte_boundaries() {
        let dir = scratch("blob");
        let path = fixture("all_ops.safetensors");
        // d4 (576 values) is quantized too: four tensors in u8.
        let model = Model::new("all_ops.safetensors").keep_float_below(500);
        model.emit_into(&path, &dir, "all_ops").unwrap();
        let blob = std::fs::read(dir.join("all_ops.weights")).unwrap();
        let source = std::fs::read_to_string(dir.join("all_ops.rs")).unwrap();

        // The macro's byte arrays: `Aligned(*b"...")`, in emission order.
        let inline = flat(crate::generate(&path, "all_ops.safetensors", model.options()).unwrap());
        let arrays: Vec<Vec<u8>> = inline
            .windows(2)
            .filter_map(|w| match (&w[0], &w[1]) {
                (TokenTree::Punct(p), TokenTree::Literal(l)) if p.as_char() == '*' => Some(
                    syn::parse2::<syn::LitByteStr>(TokenTree::Literal(l.clone()).into())
                        .ok()?
                        .value(),
                ),
                _ => None,
            })
            .collect();
        // The build script's: `split_at(offset).1.split_at(len)` of the blob.
        let numbers: Vec<usize> = flat(source.parse().unwrap())
            .windows(2)
            .filter_map(|w| match (&w[0], &w[1]) {
                (TokenTree::Ident(i), TokenTree::Literal(l)) if i == "split_at" => {
                    l.to_string().trim_end_matches("usize").parse().ok()
                }
                _ => None,
            })
            .collect();
        assert_eq!(arrays.len(), 4);
        assert_eq!(numbers.len(), 2 * arrays.len());
        let mut end = 0;
        for (bytes, at) in arrays.iter().zip(numbers.chunks_exact(2)) {
            let (offset, len) = (at[0], at[1]);
            assert!(offset % 64 == 0 && offset >= end, "offset {offset} after {end}");
            assert_eq!(&blob[offset..offset + len], &bytes[..]);
            end = offset + len;
        }
        assert_eq!(blob.len(), end);
        assert!(
            source.contains(r#"include_bytes ! (concat ! (env ! ("OUT_DIR") , "/" , "all_ops.weights"))"#)
        );
        // The float file is not an input of the crate: the rerun-if-changed line is.
        assert!(!source.contains(".safetensors\")"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_the_file_and_the_fault() {
        let dir = scratch("errors");
        let emit = |file: &str| {
            Model::new(format!("models/{file}"))
                .emit_into(&fixture(file), &dir, "m")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            emit("nan_weight.safetensors"),
            "qbake: models/nan_weight.safetensors: node `fc`: tensor `fc.weight` holds NaN at index 5; weights must be finite"
        );
        assert!(
            emit("does_not_exist.safetensors")
                .starts_with("qbake: models/does_not_exist.safetensors: cannot open the model file: "),
        );
        assert!(emit("no_graph.safetensors").starts_with("qbake: models/no_graph.safetensors: "));
        // A fault of the calibration inputs names their file, not the model's.
        let short = fixture("tiny_calibration_short.safetensors");
        let calibrated = Model::new("models/tiny.safetensors")
            .calibration(&short)
            .emit_into(&fixture("tiny.safetensors"), &dir, "m")
            .unwrap_err()
            .to_string();
        assert_eq!(
            calibrated,
            format!(
                "qbake: {}: calibration: inputs tensor `x` of shape [5] is not a batch of inputs of shape [1, 4]",
                short.display()
            )
        );
        let synthetic = Model::new("models/tiny.safetensors")
            .synthetic_calibration()
            .emit_into(&fixture("tiny.safetensors"), &dir, "m")
            .unwrap_err()
            .to_string();
        assert_eq!(
            synthetic,
            "qbake: models/tiny.safetensors: calibration: synthetic calibration makes images, [N, C, H, W]; this model's input is [1, 4]"
        );
        // The default asks for synthetic images only where the input is an
        // image: this model bakes as without calibration.
        let baked = |model: Model| {
            let out = scratch("default-calibration");
            model.emit_into(&fixture("tiny.safetensors"), &out, "m").unwrap();
            let files = ["m.rs", "m.weights"].map(|f| std::fs::read(out.join(f)).unwrap());
            std::fs::remove_dir_all(out).unwrap();
            files
        };
        assert_eq!(
            baked(Model::new("models/tiny.safetensors")),
            baked(Model::new("models/tiny.safetensors").no_calibration())
        );
        let good = scratch("calibrated");
        Model::new("models/tiny.safetensors")
            .calibration(fixture("tiny_calibration.safetensors"))
            .emit_into(&fixture("tiny.safetensors"), &good, "m")
            .unwrap();
        std::fs::remove_dir_all(good).unwrap();
        let bad_name = Model::new("t").emit_into(&fixture("tiny.safetensors"), &dir, "../x");
        assert!(
            bad_name
                .unwrap_err()
                .to_string()
                .contains("`../x` is not a model name")
        );
        // Nothing was written for the failures.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn include_model_says_what_is_missing() {
        let dir = scratch("include");
        let expand = |tokens: TokenStream, out_dir: Option<&Path>| include_model(tokens, out_dir).to_string();
        let name = quote::quote!("tiny");
        assert!(expand(name.clone(), None).contains("OUT_DIR is not set"));
        let missing = expand(name.clone(), Some(&dir));
        assert!(missing.contains("no model `tiny` in OUT_DIR"), "{missing}");
        Model::new("tiny.safetensors")
            .keep_float_below(1)
            .emit_into(&fixture("tiny.safetensors"), &dir, "tinny")
            .unwrap();
        // A typo is shown beside what exists.
        assert!(expand(name.clone(), Some(&dir)).contains("it emitted `tinny`"));
        assert!(expand(quote::quote!(tiny), Some(&dir)).contains("expected the name given to"));
        // The expansion is the emitted items, which include the blob.
        let items = expand(quote::quote!("tinny"), Some(&dir));
        assert!(items.contains("pub struct Model"), "{items}");
        assert!(items.contains(r#"include_bytes ! (concat ! (env ! ("OUT_DIR") , "/" , "tinny.weights"))"#));
        std::fs::write(dir.join("tinny.rs"), "pub struct {").unwrap();
        assert!(expand(quote::quote!("tinny"), Some(&dir)).contains("cannot read OUT_DIR/tinny.rs"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// An `.onnx` file bakes from `build.rs` too, to the same items the macro
    /// gives it, and its import options are the builder's.
    #[test]
    fn onnx_models_bake_like_the_macro() {
        let dir = scratch("onnx");
        let path = fixture("mlp.onnx");
        let model = Model::new("mlp.onnx").batch(3);
        model.emit_into(&path, &dir, "mlp").unwrap();
        let source = std::fs::read_to_string(dir.join("mlp.rs")).unwrap();
        assert!(
            source.contains("pub const INPUT_SHAPE : [usize ; 2usize] = [3usize , 32usize]"),
            "{source}"
        );
        let inline = crate::generate(&path, "mlp.onnx", model.options())
            .unwrap()
            .to_string();
        assert!(inline.contains("pub const INPUT_SHAPE : [usize ; 2usize] = [3usize , 32usize]"));
        let wrong = Model::new("mlp.onnx")
            .output("nope")
            .emit_into(&path, &dir, "mlp2");
        assert!(
            wrong
                .unwrap_err()
                .to_string()
                .contains("the ONNX graph has no output `nope`")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// `reference(true)`: the float model beside the 8-bit one, its bytes in
    /// a blob of their own.
    #[test]
    fn the_float_model_gets_its_own_blob() {
        let dir = scratch("reference");
        Model::new("mlp.safetensors")
            .reference(true)
            .emit_into(&fixture("mlp.safetensors"), &dir, "mlp")
            .unwrap();
        let source = std::fs::read_to_string(dir.join("mlp.rs")).unwrap();
        assert!(source.contains("pub mod reference"), "{source}");
        assert!(source.contains(r#""mlp.reference.weights""#));
        // fc1 (1536 values) in f32: 6144 bytes, plus fc2's.
        let blob = std::fs::metadata(dir.join("mlp.reference.weights"))
            .unwrap()
            .len();
        assert!(blob >= (48 * 32 + 10 * 48) * 4, "{blob}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
