//! The runtime of qbake: what a baked model calls.
//!
//! [`quantized_model!`] turns a float model file into plain items at compile
//! time: weight `static`s ([`Weight`]), `Input`/`Output` array types and a
//! `Model` whose `forward` calls the [`ops`] below in graph order. Nothing is
//! parsed or loaded at run time.
//!
//! Two kernel families run from the same baked bytes, chosen per model with
//! [`Kernels`]:
//!
//! - [`Kernels::Dequant`]: each weight matrix is turned back into f32 once, on
//!   first use ([`DequantCache`]), and float kernels run from then on;
//! - [`Kernels::Hybrid`]: activations are quantized to 8 bits on each call and
//!   multiplied with the 8-bit weights in exact i32 arithmetic
//!   ([`hybrid`]), giving float outputs.
//!
//! Depthwise convolutions run in f32 in both, on taps dequantized once
//! ([`DepthwiseWeight`]); a 1x1 convolution that only feeds one runs inside
//! it, band by band ([`ops::pointwise_depthwise`]).
//!
//! This crate knows nothing of files or syntax; `qbake-codegen` does that.

mod alloc;
pub mod conv;
mod exec;
pub mod gemm_f32;
pub mod hybrid;
pub mod ops;
pub mod parallel;
mod scratch;
#[cfg(test)]
mod test_values;
#[cfg(target_arch = "x86_64")]
mod tiles;
mod weights;

pub use alloc::{AlignedVec, Zeroable, boxed_zeroed};
pub use exec::{Exec, Kernels};
pub use ops::Activation;
pub use qbake_macros::include_model;
pub use qbake_macros::quantized_model;
pub use scratch::with_scratch;
pub use weights::{
    Aligned, DepthwiseWeight, DequantCache, FloatWeight, QuantParams, QuantWeight, TapsCache, Weight,
};

/// The packed layout and quantization arithmetic shared with the code generator.
pub use qbake_format as format;
