//! The tokens of a baked model: weight statics, shape types, and `Model`.
//!
//! The expansion is meant to be read (`cargo expand`): one `static` per
//! tensor with its parameters beside it, and a `forward_into` that calls one
//! runtime op per graph step, in order.

use crate::Options;
use crate::graph::{Act, ConvGeom, Op, Plan, PoolKind, Value};
use crate::quantize::{Baked, BakedWeight, QParams, Storage};
use crate::scratch::{Place, Scratch};
use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{format_ident, quote};
use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::path::Path;

/// Where the baked weight bytes go.
#[derive(Clone, Copy, Debug)]
pub enum Bytes<'a> {
    /// Byte-string literals in the tokens: the macro.
    Inline,
    /// One blob, returned beside the tokens, which the tokens bring in with
    /// `include_bytes!` of `OUT_DIR/<file>`: the build script.
    Blob { file: &'a str },
}

/// The items of a baked model, and the blob of its weight bytes (empty for
/// [`Bytes::Inline`]).
pub fn model(
    path: &Path,
    display_path: &str,
    plan: &Plan,
    baked: &Baked,
    options: &Options,
    bytes: Bytes,
) -> (TokenStream, Vec<u8>) {
    let names = StaticNames::new(baked);
    let (weights_mod, blob) = weights_module(display_path, plan, baked, &names, options, bytes);
    let input = plan.input();
    let output = &plan.values[plan.output];
    let (input_ty, output_ty) = (array_type(&input.shape), array_type(&output.shape));
    let (input_shape, output_shape) = (shape_const(&input.shape), shape_const(&output.shape));
    let scratch = crate::scratch::assign(plan);
    let forward_body = forward_body(plan, &names, &scratch);
    let scratch_items = scratch_items(&scratch);
    let sqnr_warnings = sqnr_warnings(baked, options);
    let model_doc = model_doc(display_path, plan, baked);
    // Naming a file in `include_bytes!` makes the compiler record it as an
    // input of this crate, so editing the model (or the calibration inputs)
    // rebuilds it. The bytes are never used: the const is not part of the
    // binary. A build script says `rerun-if-changed` instead, and its crate
    // never reads the float file.
    let rebuild_trigger = match bytes {
        Bytes::Inline => std::iter::once(path)
            .chain(match &options.calibration {
                crate::Calibration::Inputs(inputs) => Some(inputs.as_path()),
                _ => None,
            })
            .map(|path| {
                let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
                let path = path.to_string_lossy();
                quote! { const _: &[u8] = include_bytes!(#path); }
            })
            .collect(),
        Bytes::Blob { .. } => TokenStream::new(),
    };
    let tokens = quote! {
        #weights_mod

        #[doc = "Shape of [`Input`]."]
        pub const INPUT_SHAPE: #input_shape;
        #[doc = "Shape of [`Output`]."]
        pub const OUTPUT_SHAPE: #output_shape;
        /// The model's input, in the graph's declared shape.
        pub type Input = #input_ty;
        /// The model's output, in the graph's declared shape.
        pub type Output = #output_ty;

        #rebuild_trigger

        #sqnr_warnings

        #scratch_items

        #[doc = #model_doc]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct Model {
            exec: ::qbake::Exec,
        }

        impl Model {
            /// A model running with the given kernel family on one thread.
            pub const fn new(kernels: ::qbake::Kernels) -> Self {
                Model { exec: ::qbake::Exec::new(kernels) }
            }

            /// The same model with an intra-op thread budget (at least 1).
            pub const fn with_threads(mut self, threads: usize) -> Self {
                self.exec.threads = if threads == 0 { 1 } else { threads };
                self
            }

            pub const fn kernels(&self) -> ::qbake::Kernels {
                self.exec.kernels
            }

            pub const fn threads(&self) -> usize {
                self.exec.threads
            }

            /// Runs the model on `input`.
            pub fn forward(&self, input: &Input) -> ::std::boxed::Box<Output> {
                let mut output = ::qbake::boxed_zeroed::<Output>();
                self.forward_into(input, &mut output);
                output
            }

            /// Runs the model on `input`, writing into `output`.
            pub fn forward_into(&self, input: &Input, output: &mut Output) {
                self.exec.run(|| {
                    #forward_body
                })
            }
        }
    };
    (tokens, blob)
}

/// With `reference = true`: the float model as `pub mod reference`, the
/// same items with the file's f32 weights (folded, not quantized), and the
/// blob of its bytes (empty for [`Bytes::Inline`]).
pub fn reference_module(
    path: &Path,
    display_path: &str,
    plan: &Plan,
    options: &Options,
    bytes: Bytes,
) -> Result<(TokenStream, Vec<u8>), crate::Error> {
    let baked = crate::quantize::float(plan)?;
    let (items, blob) = model(path, display_path, plan, &baked, options, bytes);
    let doc = format!(
        "The float model of `{display_path}`: the same steps with its f32 weights, not quantized, \
         to measure the 8-bit model against or to fall back on. Both kernel families run it in f32."
    );
    let tokens = quote! {
        #[doc = #doc]
        pub mod reference {
            #items
        }
    };
    Ok((tokens, blob))
}

/// Rust names of the baked statics, unique, derived from the tensor names.
struct StaticNames(HashMap<String, Ident>);

impl StaticNames {
    fn new(baked: &Baked) -> Self {
        let mut taken = HashSet::new();
        let names = baked
            .weights
            .iter()
            .map(|w| &w.name)
            .chain(baked.floats.iter().map(|f| &f.name))
            .map(|name| {
                let base = identifier(name).to_uppercase();
                let mut ident = base.clone();
                let mut i = 1;
                // `_S8` and `_F32` suffixes are the weights' byte arrays.
                while ident.ends_with("_S8") || ident.ends_with("_F32") || !taken.insert(ident.clone()) {
                    i += 1;
                    ident = format!("{base}_{i}");
                }
                (name.clone(), Ident::new(&ident, Span::call_site()))
            })
            .collect();
        StaticNames(names)
    }

    fn get(&self, tensor: &str) -> &Ident {
        &self.0[tensor]
    }
}

/// A Rust identifier close to `name`: alphanumerics kept, the rest `_`.
fn identifier(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert_str(0, "t_");
    }
    s
}

fn weights_module(
    display_path: &str,
    plan: &Plan,
    baked: &Baked,
    names: &StaticNames,
    options: &Options,
    bytes: Bytes,
) -> (TokenStream, Vec<u8>) {
    let depthwise = plan.depthwise_weights();
    let mut items = TokenStream::new();
    let mut sink = match bytes {
        Bytes::Inline => ByteSink::Inline,
        Bytes::Blob { .. } => ByteSink::Blob(Vec::new()),
    };
    for w in &baked.weights {
        items.extend(weight_static(
            w,
            names.get(&w.name),
            depthwise.contains(w.name.as_str()),
            &mut sink,
        ));
    }
    let blob = match (sink, bytes) {
        (ByteSink::Blob(blob), Bytes::Blob { file }) if !blob.is_empty() => {
            items.extend(blob_module(file, blob.len()));
            blob
        }
        _ => Vec::new(),
    };
    for f in &baked.floats {
        let ident = names.get(&f.name);
        let len = f.values.len();
        let values = f.values.iter().map(|&v| Literal::f32_unsuffixed(v));
        let doc = format!("`{}`: {len} f32 values.", f.name);
        items.extend(quote! {
            #[doc = #doc]
            pub static #ident: [f32; #len] = [#(#values),*];
        });
    }
    let doc = weights_doc(
        display_path,
        baked,
        &format!("{}{}", rounding_doc(baked, options), bias_doc(plan, options)),
        options,
    );
    // Baked values are data: one may fall near pi or log10(e), and a
    // user's clippy has nothing to say about it.
    let tokens = quote! {
        #[doc = #doc]
        #[allow(clippy::approx_constant)]
        pub mod weights {
            #items
        }
    };
    (tokens, blob)
}

/// The `static` of one weight matrix: a `Weight`, or for a depthwise
/// convolution a `DepthwiseWeight` holding it (its taps cache beside it).
fn weight_static(w: &BakedWeight, ident: &Ident, depthwise: bool, sink: &mut ByteSink) -> TokenStream {
    let (name, rows, cols) = (&w.name, w.rows, w.cols);
    let doc = format!("`{}`: {}", w.name, describe_weight(w));
    let (weight, bytes) = match &w.storage {
        Storage::U8 { data, params } => {
            let bytes_ident = format_ident!("{}_S8", ident);
            // Packed at compile time in the order the int8 kernels read.
            let byte_array = sink.aligned_bytes(&bytes_ident, &qbake_format::pack_b_s8(data, w.rows, w.cols));
            let field = |f: fn(&QParams) -> f32| params.iter().map(move |p| Literal::f32_unsuffixed(f(p)));
            let (mins, maxs, scales) = (field(|p| p.min), field(|p| p.max), field(|p| p.scale));
            let zero_points = Literal::byte_string(&params.iter().map(|p| p.zero_point).collect::<Vec<_>>());
            let sums = |f: fn(&[u8], usize, usize) -> Vec<i32>| {
                f(data, w.rows, w.cols).into_iter().map(Literal::i32_unsuffixed)
            };
            let s8_sums = sums(qbake_format::s8_row_sums);
            let s8_negative_sums = sums(qbake_format::s8_negative_sums);
            let weight = quote! {
                ::qbake::Weight::U8(::qbake::QuantWeight {
                    name: #name,
                    rows: #rows,
                    cols: #cols,
                    packed: &#bytes_ident.0,
                    s8_sums: &[#(#s8_sums),*],
                    s8_negative_sums: &[#(#s8_negative_sums),*],
                    params: ::qbake::QuantParams {
                        min: &[#(#mins),*],
                        max: &[#(#maxs),*],
                        scale: &[#(#scales),*],
                        zero_point: #zero_points,
                    },
                    cache: ::qbake::DequantCache::new(),
                })
            };
            (weight, byte_array)
        }
        Storage::F32(values) => {
            // Little-endian bytes: one literal, however many values.
            let bytes_ident = format_ident!("{}_F32", ident);
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            let byte_array = sink.aligned_bytes(&bytes_ident, &bytes);
            let weight = quote! {
                ::qbake::Weight::F32(::qbake::FloatWeight {
                    name: #name,
                    rows: #rows,
                    cols: #cols,
                    data: &#bytes_ident.0,
                    cache: ::qbake::DequantCache::new(),
                })
            };
            (weight, byte_array)
        }
    };
    let item = if depthwise {
        quote! {
            pub static #ident: ::qbake::DepthwiseWeight = ::qbake::DepthwiseWeight {
                weight: #weight,
                taps: ::qbake::TapsCache::new(),
            };
        }
    } else {
        quote!(pub static #ident: ::qbake::Weight = #weight;)
    };
    quote! {
        #[doc = #doc]
        #item
        #bytes
    }
}

/// Where baked weight bytes go while a model's statics are emitted.
enum ByteSink {
    /// Byte-string literals in the tokens (the macro).
    Inline,
    /// The build script's blob, filled as tensors are emitted.
    Blob(Vec<u8>),
}

impl ByteSink {
    /// `static NAME` whose `.0` is `bytes`, 64-byte aligned: the one place
    /// baked weight bytes are emitted. For the macro, an `Aligned<N>` holding
    /// a single byte-string literal (never a token per byte); for a build
    /// script, a slice of the blob, which gets the bytes.
    fn aligned_bytes(&mut self, ident: &Ident, bytes: &[u8]) -> TokenStream {
        let len = bytes.len();
        match self {
            ByteSink::Inline => {
                let literal = Literal::byte_string(bytes);
                quote!(static #ident: ::qbake::Aligned<#len> = ::qbake::Aligned(*#literal);)
            }
            ByteSink::Blob(blob) => {
                let offset = append_aligned(blob, bytes);
                // `split_at` is const and checks the bounds at compile time.
                // No `unsafe` cast to `&Aligned`: the slice is aligned because
                // the blob is and `offset` is a multiple of 64.
                quote! {
                    static #ident: blob::Slice = blob::Slice(blob::BYTES.0.split_at(#offset).1.split_at(#len).0);
                }
            }
        }
    }
}

/// Appends `bytes` to `blob` at its next 64-byte boundary, and says where.
fn append_aligned(blob: &mut Vec<u8>, bytes: &[u8]) -> usize {
    let offset = blob.len().next_multiple_of(64);
    blob.resize(offset, 0);
    blob.extend_from_slice(bytes);
    offset
}

/// The module holding the blob of a build-script model, `OUT_DIR/<file>`.
fn blob_module(file: &str, len: usize) -> TokenStream {
    quote! {
        /// The weight bytes: one 64-byte-aligned blob written by the build
        /// script beside this source, each tensor at a multiple of 64.
        mod blob {
            pub(super) static BYTES: ::qbake::Aligned<#len> =
                ::qbake::Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/", #file)));

            /// A tensor's bytes within [`BYTES`]; `.0` is the slice, as it is
            /// the array of an `Aligned`.
            pub(super) struct Slice(pub(super) &'static [u8]);
        }
    }
}

fn describe_weight(w: &BakedWeight) -> String {
    match &w.storage {
        Storage::U8 { data, params } => format!(
            "[{}, {}] u8 {}, {} bytes, float range [{:.6}, {:.6}], SQNR {}",
            w.rows,
            w.cols,
            if params.len() > 1 {
                "per channel"
            } else {
                "per tensor"
            },
            data.len(),
            w.min,
            w.max,
            db(w.sqnr_db)
        ),
        Storage::F32(_) => format!(
            "[{}, {}] kept f32 (fewer than the quantization threshold), {} bytes, range [{:.6}, {:.6}]",
            w.rows,
            w.cols,
            w.rows * w.cols * 4,
            w.min,
            w.max
        ),
    }
}

fn db(v: f64) -> String {
    if v.is_infinite() {
        "exact".into()
    } else {
        format!("{v:.1} dB")
    }
}

/// How the weights were rounded, for the weights' docs, when some were
/// rounded with compensation.
fn rounding_doc(baked: &Baked, options: &Options) -> String {
    if !baked.weights.iter().any(|w| w.compensated) {
        return String::new();
    }
    let inputs = match &options.calibration {
        crate::Calibration::Inputs(path) => calibration_file(path),
        _ => "synthetic images".into(),
    };
    format!(
        "Weights stored as *compensated* were rounded column by column, each weight first taking up \
         its share of the rounding errors of those before it, as the correlations of their inputs on \
         {inputs} say (OPTQ): that lowers the error of the layer's outputs, at some cost to the \
         weights' own SQNR. "
    )
}

/// The user's calibration inputs, as the docs name them: by file name, so
/// that the expansion does not depend on the machine.
fn calibration_file(path: &std::path::Path) -> String {
    format!(
        "the calibration inputs `{}`",
        path.file_name().unwrap_or_default().to_string_lossy()
    )
}

/// What the baked biases hold besides the file's values, for the weights'
/// docs: bias correction, and where its means came from.
fn bias_doc(plan: &Plan, options: &Options) -> String {
    if !options.bias_correction {
        return String::new();
    }
    let means = match &options.calibration {
        crate::Calibration::Inputs(path) => format!("measured on {}", calibration_file(path)),
        c if crate::calibration::uses_synthetic(c, plan) => {
            "from batch-norm statistics where the graph has them, else measured on synthetic images".into()
        }
        _ => "from batch-norm statistics where the graph has them".into(),
    };
    format!(
        "Biases are bias-corrected: each takes out the mean shift that rounding its layer's weights \
         causes, with the layer's input means {means}. "
    )
}

fn weights_doc(display_path: &str, baked: &Baked, bias_doc: &str, options: &Options) -> String {
    let quantized = baked
        .weights
        .iter()
        .any(|w| matches!(w.storage, Storage::U8 { .. }));
    let mut d = if !quantized && !baked.weights.is_empty() {
        format!(
            "The tensors of `{display_path}`, in f32: the float model, not quantized. Each `*_F32` \
             array is a weight's values as little-endian bytes.\n\n\
             | tensor | shape (out, in) | stored as | bytes | min | max | SQNR |\n|---|---|---|---|---|---|---|\n"
        )
    } else {
        format!(
            "The tensors of `{display_path}`, as baked.\n\n\
         Weight matrices of {} elements or more are stored as u8 with min/max {} \
         (`x = (q - zero_point) * scale`, 0.0 exact); smaller ones, biases and constants stay f32. \
         {bias_doc}SQNR is the signal-to-quantization-noise ratio of the stored weights against the file's floats. \
         The bytes of each `*_S8` array are `q - 128`, packed at compile time in the panel order the int8 \
         kernels read (`qbake::format::packed_index`); `QuantWeight::q(n, k)` reads one weight back. \
         `s8_sums` holds each output channel's sum of those bytes, for the AVX-512 VNNI kernel, and \
         `s8_negative_sums` the sum of its negative ones' magnitudes, for the AVX2 kernel's mixed-sign rows.\n\n\
         | tensor | shape (out, in) | stored as | bytes | min | max | SQNR |\n|---|---|---|---|---|---|---|\n",
            options.keep_float_below,
            if options.per_channel {
                "per output channel"
            } else {
                "per tensor"
            },
        )
    };
    for w in &baked.weights {
        let (stored, bytes) = match &w.storage {
            Storage::U8 { data, params } => {
                let stored = match (params.len() > 1, w.compensated) {
                    (true, true) => "u8, per channel, compensated",
                    (true, false) => "u8, per channel",
                    (false, true) => "u8, per tensor, compensated",
                    (false, false) => "u8, per tensor",
                };
                (stored, data.len())
            }
            Storage::F32(v) => ("f32", v.len() * 4),
        };
        let _ = writeln!(
            d,
            "| `{}` | [{}, {}] | {stored} | {bytes} | {:.6} | {:.6} | {} |",
            w.name,
            w.rows,
            w.cols,
            w.min,
            w.max,
            db(w.sqnr_db)
        );
    }
    for f in &baked.floats {
        let (lo, hi) = f
            .values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        let _ = writeln!(
            d,
            "| `{}` | [{}] | f32 | {} | {lo:.6} | {hi:.6} | exact |",
            f.name,
            f.values.len(),
            f.values.len() * 4
        );
    }
    d
}

fn model_doc(display_path: &str, plan: &Plan, baked: &Baked) -> String {
    let fused_into_next = plan.fused_into_next();
    let quantized: usize = baked
        .weights
        .iter()
        .filter_map(|w| match &w.storage {
            Storage::U8 { data, .. } => Some(data.len()),
            Storage::F32(_) => None,
        })
        .sum();
    let mut d = format!(
        "The model of `{display_path}`, baked by qbake: {quantized} weight bytes in u8 \
         (see [`weights`]).\n\nIts steps, in execution order (activations fused into their producer):\n\n"
    );
    for (i, step) in plan.steps.iter().enumerate() {
        let from: Vec<String> = step
            .inputs
            .iter()
            .map(|&v| format!("{:?}", plan.values[v].shape))
            .collect();
        let to = &plan.values[step.output].shape;
        let conv_doc = |kind: &str, g: &ConvGeom, weights: &str, act: &Act| {
            format!(
                "{kind} {}x{}, stride {:?}, pads {:?}{}{}, {weights}{}",
                g.kh,
                g.kw,
                g.stride,
                g.pads,
                if g.dilation == [1, 1] {
                    String::new()
                } else {
                    format!(", dilation {:?}", g.dilation)
                },
                if g.groups == 1 {
                    String::new()
                } else {
                    format!(", {} groups", g.groups)
                },
                act_doc(act)
            )
        };
        let what = match &step.op {
            Op::Dense { weight, act, .. } => format!("{}, weight `{weight}`{}", step.op_name, act_doc(act)),
            Op::Conv {
                geom, weight, act, ..
            } => conv_doc("Conv", geom, &format!("weight `{weight}`"), act),
            Op::GroupedConv {
                geom, weights, act, ..
            } => conv_doc("Conv", geom, &format!("weights `{}`", weights.join("`, `")), act),
            Op::Depthwise {
                geom, weight, act, ..
            } => conv_doc("depthwise Conv", geom, &format!("taps `{weight}`"), act),
            Op::Pool { geom, kind } => format!(
                "{} {}x{}, stride {:?}, pads {:?}",
                match kind {
                    PoolKind::Max => "MaxPool",
                    PoolKind::Average { .. } => "AveragePool",
                },
                geom.kh,
                geom.kw,
                geom.stride,
                geom.pads
            ),
            Op::Pad { pads, value, .. } => format!("Pad {pads:?} with {value}"),
            Op::Add { act } => format!("Add{}", act_doc(act)),
            Op::AddConstant { constant, act } => format!("Add `{constant}`{}", act_doc(act)),
            Op::MulConstant { constant, act } => format!("Mul `{constant}`{}", act_doc(act)),
            Op::Activation(act) => format!("{}{}", step.op_name, act_doc(act)),
            Op::ToNhwc { .. } => "NCHW to NHWC".into(),
            Op::ToNchw { .. } => "NHWC to NCHW".into(),
            Op::Alias if step.op_name == "layout" => "the same buffer in the other layout".into(),
            Op::Softmax { .. } | Op::Alias | Op::GlobalAveragePool { .. } => step.op_name.clone(),
        };
        let fused = if fused_into_next[i] {
            " (run band by band inside the next step: this output never exists whole)"
        } else {
            ""
        };
        let _ = writeln!(
            d,
            "{}. `{}`: {what}, {} -> {to:?}{fused}",
            i + 1,
            step.name,
            from.join(" + ")
        );
    }
    d
}

fn act_doc(act: &Act) -> String {
    match act {
        Act::None => String::new(),
        Act::Relu => " + ReLU".into(),
        Act::Clip { min, max } => format!(" + Clip [{min}, {max}]"),
        Act::ClipChannels { min, max } => format!(" + Clip [{min}, `{max}`] (per channel)"),
    }
}

fn act_tokens(act: &Act, names: &StaticNames) -> TokenStream {
    match act {
        Act::None => quote!(::qbake::Activation::None),
        Act::Relu => quote!(::qbake::Activation::Relu),
        Act::Clip { min, max } => {
            let (min, max) = (f32_tokens(*min), f32_tokens(*max));
            quote!(::qbake::Activation::Clip { min: #min, max: #max })
        }
        Act::ClipChannels { min, max } => {
            let (min, max) = (f32_tokens(*min), names.get(max));
            quote!(::qbake::Activation::ClipChannels { min: #min, max: &weights::#max })
        }
    }
}

fn f32_tokens(v: f32) -> TokenStream {
    if v == f32::INFINITY {
        quote!(f32::INFINITY)
    } else if v == f32::NEG_INFINITY {
        quote!(f32::NEG_INFINITY)
    } else {
        let lit = Literal::f32_unsuffixed(v);
        quote!(#lit)
    }
}

/// A compile-time warning for each quantized weight under the SQNR the user
/// asked for: stable Rust lets a macro warn only through a lint, so each is
/// the use of a deprecated constant whose note says what is wrong.
fn sqnr_warnings(baked: &Baked, options: &Options) -> TokenStream {
    let threshold = f64::from(options.warn_sqnr_below);
    let hint = if options.per_channel {
        ""
    } else {
        " (`per_channel = true` gives each output channel its own range)"
    };
    baked
        .weights
        .iter()
        .filter(|w| matches!(w.storage, Storage::U8 { .. }) && w.sqnr_db < threshold)
        .map(|w| {
            let note = format!(
                "qbake: weight `{}` quantizes at {:.1} dB SQNR, below the {} dB of `warn_sqnr_below`{hint}",
                w.name, w.sqnr_db, options.warn_sqnr_below
            );
            quote! {
                const _: () = {
                    #[deprecated(note = #note)]
                    const LOW_SQNR: () = ();
                    LOW_SQNR
                };
            }
        })
        .collect()
}

/// The per-thread scratch the forward pass works in, sized here.
fn scratch_items(scratch: &Scratch) -> TokenStream {
    if scratch.slots.is_empty() {
        return TokenStream::new();
    }
    let n = scratch.slots.len();
    let lens = scratch.slots.iter().map(|&l| Literal::usize_unsuffixed(l));
    let bytes = scratch.slots.iter().sum::<usize>() * 4;
    let doc = format!(
        "The lengths (f32s) of the scratch buffers `forward` computes in: {bytes} bytes, allocated once \
         per thread that runs the model, on its first call. Values whose lifetimes do not overlap share a buffer."
    );
    quote! {
        #[doc = #doc]
        const SCRATCH_SLOTS: [usize; #n] = [#(#lens),*];

        ::std::thread_local! {
            static SCRATCH: ::std::cell::RefCell<::std::vec::Vec<::qbake::AlignedVec>> =
                const { ::std::cell::RefCell::new(::std::vec::Vec::new()) };
        }
    }
}

/// A `qbake::conv::Conv2d` literal.
fn geom_tokens(g: &ConvGeom) -> TokenStream {
    let n = |v: usize| Literal::usize_unsuffixed(v);
    let (batch, in_h, in_w, in_c, out_c, kh, kw, groups) = (
        n(g.batch),
        n(g.in_h),
        n(g.in_w),
        n(g.in_c),
        n(g.out_c),
        n(g.kh),
        n(g.kw),
        n(g.groups),
    );
    let (stride, dilation, pads) = (g.stride.map(n), g.dilation.map(n), g.pads.map(n));
    quote! {
        ::qbake::conv::Conv2d {
            batch: #batch, in_h: #in_h, in_w: #in_w, in_c: #in_c, out_c: #out_c, kh: #kh, kw: #kw,
            stride: [#(#stride),*], dilation: [#(#dilation),*], pads: [#(#pads),*], groups: #groups,
        }
    }
}

/// `[usize; R] = [d0, d1, ...]`
fn shape_const(shape: &[usize]) -> TokenStream {
    let rank = shape.len();
    quote!([usize; #rank] = [#(#shape),*])
}

/// `[[f32; d1]; d0]` for shape `[d0, d1]`.
fn array_type(shape: &[usize]) -> TokenStream {
    shape
        .iter()
        .rev()
        .fold(quote!(f32), |inner, d| quote!([#inner; #d]))
}

fn flatten_calls(rank: usize, method: &str) -> TokenStream {
    let m = format_ident!("{method}");
    let calls = (1..rank).map(|_| quote!(.#m()));
    quote!(#(#calls)*)
}

/// The body of `forward_into`: one buffer per computed value, one op call per step.
fn forward_body(plan: &Plan, names: &StaticNames, scratch: &Scratch) -> TokenStream {
    let mut idents: HashMap<usize, Ident> = HashMap::new();
    let mut taken: HashSet<String> = ["input", "output", "out", "self"].map(String::from).into();
    let mut ident_for = |v: usize, value: &Value| -> Ident {
        idents
            .entry(v)
            .or_insert_with(|| {
                let mut base = identifier(&value.name).to_lowercase();
                if syn::parse_str::<Ident>(&base).is_err() {
                    base.insert_str(0, "v_");
                }
                let mut name = base.clone();
                let mut i = 1;
                while !taken.insert(name.clone()) {
                    i += 1;
                    name = format!("{base}_{i}");
                }
                Ident::new(&name, Span::call_site())
            })
            .clone()
    };

    let input = plan.input();
    let input_ident = ident_for(0, input);
    let flat_in = flatten_calls(input.shape.len(), "as_flattened");
    let flat_out = flatten_calls(plan.values[plan.output].shape.len(), "as_flattened_mut");
    let slot_ident = |s: usize| format_ident!("s{}", s);
    let mut body = quote! {
        let #input_ident: &[f32] = input #flat_in;
        let out: &mut [f32] = output #flat_out;
    };
    let fused_into_next = plan.fused_into_next();
    for (i, step) in plan.steps.iter().enumerate() {
        // Run inside the next step, below.
        if fused_into_next[i] {
            continue;
        }
        let ins: Vec<Ident> = step
            .inputs
            .iter()
            .map(|&v| ident_for(v, &plan.values[v]))
            .collect();
        let is_output = step.output == plan.output;
        let out_ident = ident_for(step.output, &plan.values[step.output]);
        if let Op::Alias = step.op {
            let src = &ins[0];
            body.extend(if is_output {
                quote!(out.copy_from_slice(&#src);)
            } else {
                quote!(let #out_ident: &[f32] = &*#src;)
            });
            continue;
        }
        let dst = match scratch.place[step.output] {
            Some(Place::Slot(slot)) => {
                let (slot, len) = (
                    slot_ident(slot),
                    Literal::usize_unsuffixed(plan.values[step.output].len),
                );
                body.extend(quote!(let #out_ident = &mut #slot[..#len];));
                quote!(#out_ident)
            }
            _ => quote!(out),
        };
        let x = &ins[0];
        let bias_tokens = |bias: &Option<String>| match bias {
            Some(b) => {
                let b = names.get(b);
                quote!(Some(&weights::#b))
            }
            None => quote!(None),
        };
        body.extend(match &step.op {
            Op::Dense { weight, bias, act } => {
                let (w, bias, act) = (names.get(weight), bias_tokens(bias), act_tokens(act, names));
                quote!(::qbake::ops::dense(&self.exec, &#x, &weights::#w, #bias, #act, #dst);)
            }
            Op::Conv {
                geom,
                weight,
                bias,
                act,
            } => {
                let (g, w, bias, act) = (geom_tokens(geom), names.get(weight), bias_tokens(bias), act_tokens(act, names));
                quote!(::qbake::ops::conv2d(&self.exec, &#x, &#g, &weights::#w, #bias, #act, #dst);)
            }
            Op::GroupedConv {
                geom,
                weights,
                bias,
                act,
            } => {
                let (g, bias, act) = (geom_tokens(geom), bias_tokens(bias), act_tokens(act, names));
                let ws = weights.iter().map(|w| names.get(w));
                quote!(::qbake::ops::grouped_conv2d(&self.exec, &#x, &#g, &[#(&weights::#ws),*], #bias, #act, #dst);)
            }
            Op::Depthwise {
                geom,
                weight,
                bias,
                act,
            } => {
                let (g, w, bias, act) = (geom_tokens(geom), names.get(weight), bias_tokens(bias), act_tokens(act, names));
                match i.checked_sub(1).map(|p| (p, &plan.steps[p])) {
                    Some((p, pointwise)) if fused_into_next[p] => {
                        let Op::Conv { weight: pw, bias: pb, act: pa, .. } = &pointwise.op else {
                            unreachable!("`fused_into_next` takes 1x1 convolutions")
                        };
                        let x = ident_for(pointwise.inputs[0], &plan.values[pointwise.inputs[0]]);
                        let (pw, pb, pa) = (names.get(pw), bias_tokens(pb), act_tokens(pa, names));
                        quote! {
                            ::qbake::ops::pointwise_depthwise(
                                &self.exec, &#x, &weights::#pw, #pb, #pa, &#g, &weights::#w, #bias, #act, #dst,
                            );
                        }
                    }
                    _ => quote!(::qbake::ops::depthwise_conv2d(&self.exec, &#x, &#g, &weights::#w, #bias, #act, #dst);),
                }
            }
            Op::Pool { geom, kind } => {
                let g = geom_tokens(geom);
                match kind {
                    PoolKind::Max => quote!(::qbake::ops::max_pool(&#x, &#g, #dst);),
                    PoolKind::Average { count_include_pad } => {
                        quote!(::qbake::ops::average_pool(&#x, &#g, #count_include_pad, #dst);)
                    }
                }
            }
            Op::GlobalAveragePool {
                batch,
                pixels,
                channels,
            } => {
                let [batch, pixels, channels] = [*batch, *pixels, *channels].map(Literal::usize_unsuffixed);
                quote!(::qbake::ops::global_average_pool(&#x, #batch, #pixels, #channels, #dst);)
            }
            Op::Pad {
                batch,
                h,
                w,
                c,
                pads,
                value,
            } => {
                let [batch, h, w, c] = [*batch, *h, *w, *c].map(Literal::usize_unsuffixed);
                let pads = pads.map(Literal::usize_unsuffixed);
                let value = f32_tokens(*value);
                quote!(::qbake::ops::pad_nhwc(&#x, #batch, #h, #w, #c, [#(#pads),*], #value, #dst);)
            }
            Op::Add { act } => {
                let (b, act) = (&ins[1], act_tokens(act, names));
                quote!(::qbake::ops::add(&self.exec, &#x, &#b, #act, #dst);)
            }
            Op::AddConstant { constant, act } => {
                let (c, act) = (names.get(constant), act_tokens(act, names));
                quote!(::qbake::ops::add_constant(&#x, &weights::#c, #act, #dst);)
            }
            Op::MulConstant { constant, act } => {
                let (c, act) = (names.get(constant), act_tokens(act, names));
                quote!(::qbake::ops::mul_constant(&#x, &weights::#c, #act, #dst);)
            }
            Op::Activation(act) => {
                let act = act_tokens(act, names);
                quote!(::qbake::ops::activate(&#x, #act, #dst);)
            }
            Op::Softmax { outer, len, inner } => {
                let [outer, len, inner] = [*outer, *len, *inner].map(Literal::usize_unsuffixed);
                quote!(::qbake::ops::softmax(&#x, #outer, #len, #inner, #dst);)
            }
            Op::ToNhwc {
                batch,
                channels,
                pixels,
            } => {
                let [batch, channels, pixels] = [*batch, *channels, *pixels].map(Literal::usize_unsuffixed);
                quote!(::qbake::ops::nchw_to_nhwc(&#x, #batch, #channels, #pixels, #dst);)
            }
            Op::ToNchw {
                batch,
                pixels,
                channels,
            } => {
                let [batch, pixels, channels] = [*batch, *pixels, *channels].map(Literal::usize_unsuffixed);
                quote!(::qbake::ops::nhwc_to_nchw(&#x, #batch, #pixels, #channels, #dst);)
            }
            Op::Alias => unreachable!("handled above"),
        });
    }
    if scratch.slots.is_empty() {
        return body;
    }
    let slots: Vec<Ident> = (0..scratch.slots.len()).map(slot_ident).collect();
    quote! {
        ::qbake::with_scratch(&SCRATCH, &SCRATCH_SLOTS, |scratch| {
            let [#(#slots),*] = scratch else {
                unreachable!("the scratch has one buffer per slot")
            };
            #body
        })
    }
}
