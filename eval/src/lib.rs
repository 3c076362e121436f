//! Accuracy of a baked model against its float self: `cargo xtask eval`.
//!
//! [`exec`] runs a planned model through the runtime's ops in either kernel
//! family, from weights baked in memory (no compiled model needed), keeping
//! every intermediate value; [`evaluate`] compares those with the f64 float
//! reference on many inputs: output agreement and cosine, and each layer's
//! output SQNR. [`photos`] makes inputs from real photos.

pub mod exec;
pub mod photos;
mod report;

pub use report::{FamilyReport, LayerReport, Report, evaluate, evaluate_loaded};
