//! Baked models against the float reference computed from the original f32
//! weights, within a bound derived from the quantization error, in both
//! kernel families.
//!
//! The bound follows the error through the graph: for a dense step
//! `y = W x + b` with baked weights `Ŵ` and an input already off by `e`,
//! `|ŷ - y| <= |Ŵ| e + |Ŵ - W| |x|`, plus, in the hybrid family, the
//! activation rounding `|Ŵ| s_x / 2` and f32 rounding. ReLU and Clip are
//! 1-Lipschitz; softmax moves each output by at most half the largest input
//! error. A wrong zero point, scale, layout or correction breaks it.

use qbake::Kernels;
use qbake_codegen::Options;
use qbake_codegen::graph::Op;
use qbake_codegen::quantize::{self, Storage};
use qbake_codegen::read::ModelFile;
use qbake_codegen::reference::Reference;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod all_ops {
    qbake::quantized_model!("../models/all_ops.safetensors");
}
mod all_ops_per_tensor {
    qbake::quantized_model!("../models/all_ops.safetensors", per_channel = false);
}
mod digits {
    qbake::quantized_model!("../../examples/models/digits.safetensors");
}
mod digits_per_tensor {
    qbake::quantized_model!("../../examples/models/digits.safetensors", per_channel = false);
}

fn model_path(rel: &str) -> PathBuf {
    // Relative to this file, as the macro resolves it.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(rel)
}

/// The baked weights as the runtime sees them after dequantization.
fn dequantized_weights(path: &Path, options: &Options) -> HashMap<String, Vec<f32>> {
    let file = ModelFile::open(path).unwrap();
    let plan = qbake_codegen::graph::plan(&file).unwrap();
    let baked = quantize::bake(&plan, options).unwrap();
    baked
        .weights
        .iter()
        .map(|w| (w.name.clone(), w.dequantized()))
        .collect()
}

/// Which weights the hybrid family runs in 8 bits.
fn quantized_names(path: &Path, options: &Options) -> Vec<String> {
    let file = ModelFile::open(path).unwrap();
    let plan = qbake_codegen::graph::plan(&file).unwrap();
    let baked = quantize::bake(&plan, options).unwrap();
    baked
        .weights
        .iter()
        .filter(|w| matches!(w.storage, Storage::U8 { .. }))
        .map(|w| w.name.clone())
        .collect()
}

/// The reference run with the baked (dequantized) weights in place of the
/// file's: what the model computes, rounding aside.
fn baked_reference(path: &Path, options: &Options) -> Reference {
    let mut reference = Reference::load(path).unwrap();
    let baked = quantize::bake(reference.plan(), options).unwrap();
    reference.set_baked(&baked).unwrap();
    reference
}

/// The largest deviation from `reference` each output may show. With the
/// file's weights, this includes the weight quantization error; with the
/// baked weights (`baked_reference`), that term is zero and the bound is tight.
fn error_bound(
    reference: &Reference,
    path: &Path,
    options: &Options,
    input: &[f32],
    kernels: Kernels,
) -> Vec<f64> {
    let plan = reference.plan();
    let truth = reference.run_all(input);
    let baked = dequantized_weights(path, options);
    let quantized = quantized_names(path, options);
    let eps = f64::from(f32::EPSILON);
    let mut err: Vec<Vec<f64>> = vec![Vec::new(); plan.values.len()];
    err[0] = vec![0.0; input.len()];
    for step in &plan.steps {
        let (x, e) = (&truth[step.inputs[0]], &err[step.inputs[0]]);
        let out: Vec<f64> = match &step.op {
            Op::Dense { weight, bias, .. } => {
                let w = reference.tensor(weight).unwrap();
                let wq = &baked[weight];
                let k = *plan.values[step.inputs[0]].shape.last().unwrap();
                let n = wq.len() / k;
                // Short rows run the f32 kernels in both families.
                let hybrid = kernels == Kernels::Hybrid
                    && quantized.contains(weight)
                    && k >= qbake::ops::MIN_INT8_COLS;
                let mut out = Vec::new();
                for (xr, er) in x.chunks_exact(k).zip(e.chunks_exact(k)) {
                    let amax = xr.iter().map(|v| v.abs()).fold(0.0, f64::max);
                    let emax = er.iter().copied().fold(0.0, f64::max);
                    let half_step = if hybrid { (amax + emax) / 127.0 / 2.0 } else { 0.0 };
                    for j in 0..n {
                        let w_orig = |i: usize| f64::from(w[j * k + i]);
                        let mut bound = 0.0;
                        let mut magnitude = bias
                            .as_ref()
                            .map_or(0.0, |b| f64::from(reference.tensor(b).unwrap()[j]).abs());
                        for i in 0..k {
                            let wb = f64::from(wq[j * k + i]);
                            bound += wb.abs() * (er[i] + half_step) + (wb - w_orig(i)).abs() * xr[i].abs();
                            magnitude += wb.abs() * (xr[i].abs() + er[i] + half_step);
                        }
                        out.push(bound + (k as f64 + 4.0) * eps * magnitude);
                    }
                }
                out
            }
            Op::Add { .. } => {
                let (b, eb) = (&truth[step.inputs[1]], &err[step.inputs[1]]);
                (0..x.len())
                    .map(|i| e[i] + eb[i] + 2.0 * eps * (x[i].abs() + b[i].abs() + e[i] + eb[i]))
                    .collect()
            }
            Op::AddConstant { .. } => e
                .iter()
                .zip(x)
                .map(|(e, x)| e + 2.0 * eps * (x.abs() + e + 10.0))
                .collect(),
            Op::Activation(_) | Op::Alias => e.clone(),
            Op::Softmax { outer, len, inner } => {
                let mut out = vec![0.0; e.len()];
                for o in 0..*outer {
                    for i in 0..*inner {
                        let at = |j: usize| o * len * inner + j * inner + i;
                        let m = (0..*len).map(|j| e[at(j)]).fold(0.0, f64::max);
                        for j in 0..*len {
                            out[at(j)] = 0.5 * m + 1e-6;
                        }
                    }
                }
                out
            }
            other => panic!("the bound is derived for dense graphs; these fixtures have no {other:?}"),
        };
        err[step.output] = out;
    }
    err.swap_remove(plan.output)
}

fn inputs(len: usize, count: usize, scale: f32) -> Vec<Vec<f32>> {
    let mut s = 0x1234_5678_9abc_def1u64;
    (0..count)
        .map(|_| {
            (0..len)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    scale * ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
                })
                .collect()
        })
        .collect()
}

/// Runs `forward` on each input, checks each output against the reference
/// within the bound, and returns the worst ratio of error to bound.
fn check(
    rel: &str,
    options: Options,
    inputs: &[Vec<f32>],
    forward: impl Fn(Kernels, &[f32]) -> Vec<f32>,
) -> f64 {
    let path = model_path(rel);
    let mut worst: f64 = 0.0;
    for reference in [Reference::load(&path).unwrap(), baked_reference(&path, &options)] {
        for kernels in [Kernels::Dequant, Kernels::Hybrid] {
            for x in inputs {
                let want = reference.run(x);
                let got = forward(kernels, x);
                let bound = error_bound(&reference, &path, &options, x, kernels);
                for i in 0..want.len() {
                    let err = (f64::from(got[i]) - want[i]).abs();
                    assert!(
                        err <= bound[i],
                        "{rel} {options:?} {kernels:?}: output {i} is {} against {}, off by {err:e}, bound {:e}",
                        got[i],
                        want[i],
                        bound[i]
                    );
                    worst = worst.max(err / bound[i]);
                }
            }
        }
    }
    worst
}

#[test]
fn every_op_within_the_derived_bound() {
    let xs = inputs(32, 20, 2.0);
    let run = |per_channel: bool| {
        let options = Options {
            per_channel,
            ..Options::default()
        };
        check("../models/all_ops.safetensors", options, &xs, |kernels, x| {
            let input: all_ops::Input = [x[..16].try_into().unwrap(), x[16..].try_into().unwrap()];
            let out = if per_channel {
                all_ops::Model::new(kernels).forward(&input)
            } else {
                all_ops_per_tensor::Model::new(kernels).forward(&input)
            };
            out.as_flattened().to_vec()
        })
    };
    let (pc, pt) = (run(true), run(false));
    // The bound is not vacuous: the errors use a real share of it.
    println!("worst error/bound: per channel {pc:.3}, per tensor {pt:.3}");
    assert!(pc > 1e-3 && pt > 1e-3, "worst error/bound ratios {pc} {pt}");
}

#[test]
fn digits_within_the_derived_bound() {
    let xs: Vec<Vec<f32>> = inputs(64, 20, 1.0)
        .into_iter()
        .map(|v| v.iter().map(|x| x.abs()).collect())
        .collect();
    for per_channel in [true, false] {
        let options = Options {
            per_channel,
            ..Options::default()
        };
        check(
            "../../examples/models/digits.safetensors",
            options,
            &xs,
            |kernels, x| {
                let input: digits::Input = [x.try_into().unwrap()];
                let out = if per_channel {
                    digits::Model::new(kernels).forward(&input)
                } else {
                    digits_per_tensor::Model::new(kernels).forward(&input)
                };
                out.as_flattened().to_vec()
            },
        );
    }
}

#[test]
fn dequant_and_hybrid_differ_only_by_activation_rounding() {
    // Same bytes, two families: close, but not the same arithmetic.
    let x: all_ops::Input = [[0.5; 16], [-0.25; 16]];
    let d = all_ops::Model::new(Kernels::Dequant).forward(&x);
    let h = all_ops::Model::new(Kernels::Hybrid).forward(&x);
    let diff = d
        .as_flattened()
        .iter()
        .zip(h.as_flattened())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(diff > 0.0 && diff < 0.05, "max difference {diff}");
    // Softmax over axis 1 of [2, 4, 6]: each column of 4 sums to 1.
    for b in 0..2 {
        for c in 0..6 {
            let s: f32 = (0..4).map(|r| d[b][r * 6 + c]).sum();
            assert!((s - 1.0).abs() < 1e-5);
        }
    }
}

#[test]
fn codegen_and_runtime_agree_on_the_exact_k_limit() {
    assert_eq!(qbake_codegen::quantize::MAX_EXACT_K, qbake::hybrid::MAX_EXACT_K);
}

/// The expansion names the model file as an input of the crate (rustc's
/// dep-info, which cargo reads), so editing the model rebuilds the crate.
#[test]
fn the_model_file_is_a_build_input() {
    let dep_info = std::env::current_exe().unwrap().with_extension("d");
    let text = std::fs::read_to_string(&dep_info).unwrap_or_else(|e| panic!("{}: {e}", dep_info.display()));
    for model in [
        "tests/models/all_ops.safetensors",
        "examples/models/digits.safetensors",
    ] {
        assert!(
            text.contains(model),
            "{} does not list {model}",
            dep_info.display()
        );
    }
}
