//! Convolutional graphs: hand-checked cases for each op's edges, and the
//! planned model (NHWC, folded, reordered) against a plain NCHW interpreter
//! of the graph document that knows nothing of the planner.

mod support;

use qbake_codegen::graph::{self, Layout, NodeDef, Op};
use qbake_codegen::read::ModelFile;
use qbake_codegen::reference::Reference;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use support::{Xorshift, model};

/// One node on an input of `shape`, run by the reference on `input`.
fn run_one(
    shape: &[usize],
    node: serde_json::Value,
    tensors: &[(&str, &[usize], Vec<f32>)],
    input: &[f32],
) -> Vec<f64> {
    let mut node = node;
    node["inputs"] = serde_json::json!(["x"]);
    node["output"] = serde_json::json!("y");
    let graph = serde_json::json!({
        "version": 1, "inputs": [{"name": "x", "shape": shape}], "outputs": ["y"], "nodes": [node]
    });
    let (_dir, path) = model(graph, tensors);
    Reference::load(&path).unwrap().run(input)
}

fn iota(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32).collect()
}

#[test]
fn stride_two_with_asymmetric_pads() {
    // 1 2 3 / 4 5 6 / 7 8 9, padded below and to the right (TF "SAME"),
    // summed over 2x2 windows at stride 2.
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let conv = serde_json::json!({"op": "Conv", "weight": "w", "strides": [2, 2], "pads": [0, 0, 1, 1]});
    let y = run_one(
        &[1, 1, 3, 3],
        conv.clone(),
        &[("w", &[1, 1, 2, 2], vec![1.0; 4])],
        &x,
    );
    assert_eq!(y, [12.0, 9.0, 15.0, 9.0]);
    // A batch of two: the second image is the first doubled.
    let x2: Vec<f32> = x
        .iter()
        .chain(&x)
        .enumerate()
        .map(|(i, v)| if i < 9 { *v } else { 2.0 * v })
        .collect();
    let y = run_one(&[2, 1, 3, 3], conv, &[("w", &[1, 1, 2, 2], vec![1.0; 4])], &x2);
    assert_eq!(y, [12.0, 9.0, 15.0, 9.0, 24.0, 18.0, 30.0, 18.0]);
    // The same through a Pad node folded into the convolution.
    let graph = serde_json::json!({
        "version": 1, "inputs": [{"name": "x", "shape": [1, 1, 3, 3]}], "outputs": ["y"],
        "nodes": [
            {"name": "pad", "op": "Pad", "inputs": ["x"], "output": "p", "pads": [0, 0, 0, 0, 0, 0, 1, 1]},
            {"name": "conv", "op": "Conv", "inputs": ["p"], "output": "y", "weight": "w", "strides": [2, 2]}
        ]
    });
    let (_dir, path) = model(graph, &[("w", &[1, 1, 2, 2], vec![1.0; 4])]);
    let reference = Reference::load(&path).unwrap();
    let steps: Vec<&str> = reference.plan().steps.iter().map(|s| s.name.as_str()).collect();
    // One channel in: NCHW and NHWC are the same order, the first change is free.
    assert_eq!(
        steps,
        ["x to NHWC", "pad+conv", "y to NCHW"],
        "the zero Pad folds into the convolution"
    );
    assert_eq!(reference.plan().steps[0].op, Op::Alias);
    assert_eq!(reference.run(&x), [12.0, 9.0, 15.0, 9.0]);
}

#[test]
fn dilation_reads_every_other_pixel() {
    // x[r][c] = 5r + c; a 3x3 kernel of ones with dilation 2 and pads 2.
    let conv = serde_json::json!({"op": "Conv", "weight": "w", "dilations": [2, 2], "pads": [2, 2, 2, 2]});
    let y = run_one(
        &[1, 1, 5, 5],
        conv,
        &[("w", &[1, 1, 3, 3], vec![1.0; 9])],
        &iota(25),
    );
    assert_eq!(y.len(), 25);
    // Corner: taps (0,0), (0,2), (2,0), (2,2) inside; centre: all nine.
    assert_eq!(y[0], 24.0);
    assert_eq!(y[12], 108.0);
}

#[test]
fn groups_see_only_their_channels() {
    // Two groups of two channels: out0 = 1 x0 + 10 x1, out1 = 100 x2 + 1000 x3.
    let conv = serde_json::json!({"op": "Conv", "weight": "w", "group": 2});
    let w = vec![1.0, 10.0, 100.0, 1000.0];
    let y = run_one(
        &[1, 4, 1, 1],
        conv,
        &[("w", &[2, 2, 1, 1], w)],
        &[1.0, 2.0, 3.0, 4.0],
    );
    assert_eq!(y, [21.0, 4300.0]);
    // Depthwise (group = channels) with a bias.
    let conv = serde_json::json!({"op": "Conv", "weight": "w", "bias": "b", "group": 2});
    let tensors: &[(&str, &[usize], Vec<f32>)] = &[
        ("w", &[2, 1, 1, 2], vec![1.0, 2.0, 3.0, 4.0]),
        ("b", &[2], vec![0.5, -0.5]),
    ];
    // Channel 0 = [1, 2], channel 1 = [3, 4] (one row of two pixels each).
    let y = run_one(&[1, 2, 1, 2], conv, tensors, &[1.0, 2.0, 3.0, 4.0]);
    assert_eq!(y, [1.0 + 4.0 + 0.5, 9.0 + 16.0 - 0.5]);
}

#[test]
fn pools_at_the_edges() {
    // 1 2 / 3 4, 2x2 windows at stride 1, padded below and to the right.
    let avg = |include: bool| serde_json::json!({"op": "AveragePool", "kernel_shape": [2, 2], "pads": [0, 0, 1, 1], "count_include_pad": include});
    let x = [1.0, 2.0, 3.0, 4.0];
    assert_eq!(run_one(&[1, 1, 2, 2], avg(false), &[], &x), [2.5, 3.0, 3.5, 4.0]);
    assert_eq!(run_one(&[1, 1, 2, 2], avg(true), &[], &x), [2.5, 1.5, 1.75, 1.0]);
    // Max pooling never picks the padding, even when every value is negative.
    let max =
        serde_json::json!({"op": "MaxPool", "kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1]});
    let y = run_one(&[1, 1, 2, 2], max, &[], &[-4.0, -3.0, -2.0, -1.0]);
    assert_eq!(y, [-4.0, -3.0, -2.0, -1.0]);
    // Global average pool.
    let gap = serde_json::json!({"op": "GlobalAveragePool"});
    assert_eq!(run_one(&[1, 2, 1, 2], gap, &[], &x), [1.5, 3.5]);
}

#[test]
fn batch_norm_folds_into_the_convolution_before_quantization() {
    // y = (conv(x) + b - mean) / sqrt(var + eps) * gamma + beta.
    let graph = serde_json::json!({
        "version": 1, "inputs": [{"name": "x", "shape": [1, 1, 1, 2]}], "outputs": ["y"],
        "nodes": [
            {"name": "conv", "op": "Conv", "inputs": ["x"], "output": "c", "weight": "w", "bias": "b"},
            {"name": "bn", "op": "BatchNormalization", "inputs": ["c"], "output": "y",
             "scale": "g", "bias": "beta", "mean": "m", "var": "v", "epsilon": 0.0}
        ]
    });
    let tensors: &[(&str, &[usize], Vec<f32>)] = &[
        ("w", &[2, 1, 1, 1], vec![1.0, 2.0]),
        ("b", &[2], vec![1.0, 0.0]),
        ("g", &[2], vec![2.0, 1.0]),
        ("beta", &[2], vec![0.5, 0.0]),
        ("m", &[2], vec![1.0, 4.0]),
        ("v", &[2], vec![4.0, 1.0]),
    ];
    let (_dir, path) = model(graph, tensors);
    let reference = Reference::load(&path).unwrap();
    let plan = reference.plan();
    // Into NHWC (free: one channel), one convolution, back to NCHW.
    assert_eq!(plan.steps.len(), 3, "{:?}", plan.steps);
    let Op::Conv { weight, bias, .. } = &plan.steps[1].op else {
        panic!("{:?}", plan.steps[1].op)
    };
    // w' = w gamma / sqrt(var), b' = (b - mean) gamma / sqrt(var) + beta.
    assert_eq!(&*plan.tensor(weight).data, [1.0, 2.0]);
    assert_eq!(&*plan.tensor(bias.as_ref().unwrap()).data, [0.5, -4.0]);
    // Output NCHW: channel 0 = x + 0.5, channel 1 = 2 x - 4.
    assert_eq!(reference.run(&[1.0, 3.0]), [1.5, 3.5, -2.0, 2.0]);
}

#[test]
fn layout_changes_only_where_needed() {
    let path = fixture("conv_ops.safetensors");
    let plan = graph::plan(&ModelFile::open(&path).unwrap()).unwrap();
    let changes: Vec<(&str, bool)> = plan
        .steps
        .iter()
        .filter(|s| s.op_name == "layout")
        .map(|s| (s.name.as_str(), matches!(s.op, Op::Alias)))
        .collect();
    // Into NHWC at the input; back for the Flatten of a 3x2 map (a copy);
    // for the global pool's 1x1 map, the same buffer.
    assert_eq!(
        changes,
        [
            ("image to NHWC", false),
            ("v to NCHW", false),
            ("gp to NCHW", true)
        ]
    );
    assert_eq!(plan.values[plan.output].layout, Layout::Plain);
    // Pad, both batch normalizations and the activations are folded or fused away.
    let names: Vec<&str> = plan.steps.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"pad0+conv1+bn1+relu6"), "{names:?}");
    assert!(names.contains(&"grouped+bn2+relu2"), "{names:?}");
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/models")
        .join(name)
}

/// The planned reference (NHWC inside, Pad and batch norms folded, weights
/// reordered) against a direct NCHW reading of the graph document.
#[test]
fn planned_reference_matches_a_plain_nchw_interpreter() {
    let path = fixture("conv_ops.safetensors");
    let file = ModelFile::open(&path).unwrap();
    let def = graph::parse(file.graph_json().unwrap()).unwrap();
    let reference = Reference::load(&path).unwrap();
    let mut rng = Xorshift(0x1234_5678);
    for _ in 0..4 {
        let input: Vec<f32> = (0..330).map(|_| rng.signed()).collect();
        let want = nchw::run(&def, &file, &input);
        let got = reference.run(&input);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6, "{got:?}\nvs\n{want:?}");
        }
    }
}

/// ONNX semantics, NCHW, f64, one node at a time, straight from the document.
mod nchw {
    use super::*;

    #[derive(Clone)]
    struct T {
        shape: Vec<usize>,
        data: Vec<f64>,
    }

    pub fn run(def: &graph::GraphDef, file: &ModelFile, input: &[f32]) -> Vec<f64> {
        let mut env: HashMap<String, T> = HashMap::new();
        let shape: Vec<usize> = def.inputs[0].shape.iter().map(|&d| d as usize).collect();
        env.insert(
            def.inputs[0].name.clone(),
            T {
                shape,
                data: input.iter().map(|&v| f64::from(v)).collect(),
            },
        );
        let tensor = |name: &Option<String>| -> T {
            let name = name.as_ref().unwrap();
            let shape = file.tensor(name).unwrap().shape.clone();
            T {
                shape,
                data: file.read_f32(name).unwrap().into_iter().map(f64::from).collect(),
            }
        };
        // The fixture lists its nodes in execution order.
        for node in &def.nodes {
            let x = env[&node.inputs[0]].clone();
            let y = match node.op.as_str() {
                "Pad" => pad(&x, node),
                "Conv" => conv(
                    &x,
                    node,
                    &tensor(&node.weight),
                    node.bias.as_ref().map(|_| tensor(&node.bias)),
                ),
                "BatchNormalization" => {
                    let (g, b, m, v) = (
                        tensor(&node.scale),
                        tensor(&node.bias),
                        tensor(&node.mean),
                        tensor(&node.var),
                    );
                    let eps = f64::from(node.epsilon.unwrap_or(1e-5));
                    let hw = x.shape[2] * x.shape[3];
                    let data = x.data.iter().enumerate().map(|(i, &v0)| {
                        let c = i / hw % x.shape[1];
                        (v0 - m.data[c]) / (v.data[c] + eps).sqrt() * g.data[c] + b.data[c]
                    });
                    T {
                        shape: x.shape.clone(),
                        data: data.collect(),
                    }
                }
                "Clip" => map(&x, |v| {
                    v.max(f64::from(node.min.unwrap()))
                        .min(f64::from(node.max.unwrap()))
                }),
                "Relu" => map(&x, |v| v.max(0.0)),
                "Mul" | "Add" if node.constant.is_some() => {
                    let c = tensor(&node.constant);
                    let data = (0..x.data.len()).map(|i| {
                        let cv = c.data[broadcast_index(&x.shape, &c.shape, i)];
                        if node.op == "Mul" {
                            x.data[i] * cv
                        } else {
                            x.data[i] + cv
                        }
                    });
                    T {
                        shape: x.shape.clone(),
                        data: data.collect(),
                    }
                }
                "Add" => {
                    let b = &env[&node.inputs[1]];
                    T {
                        shape: x.shape.clone(),
                        data: x.data.iter().zip(&b.data).map(|(a, b)| a + b).collect(),
                    }
                }
                "MaxPool" | "AveragePool" => pool(&x, node),
                "GlobalAveragePool" => {
                    let hw = x.shape[2] * x.shape[3];
                    let data = x
                        .data
                        .chunks_exact(hw)
                        .map(|c| c.iter().sum::<f64>() / hw as f64)
                        .collect();
                    T {
                        shape: vec![x.shape[0], x.shape[1], 1, 1],
                        data,
                    }
                }
                "Flatten" => T {
                    shape: vec![x.shape[0], x.data.len() / x.shape[0]],
                    data: x.data.clone(),
                },
                "Squeeze" => T {
                    shape: x.shape.iter().copied().filter(|&d| d != 1).collect(),
                    data: x.data.clone(),
                },
                "Dense" => {
                    let w = tensor(&node.weight);
                    let b = tensor(&node.bias);
                    let (n, k) = (w.shape[0], w.shape[1]);
                    let data = (0..n)
                        .map(|j| b.data[j] + (0..k).map(|i| x.data[i] * w.data[j * k + i]).sum::<f64>());
                    T {
                        shape: vec![1, n],
                        data: data.collect(),
                    }
                }
                "Softmax" => {
                    let m = x.data.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let s: f64 = x.data.iter().map(|v| (v - m).exp()).sum();
                    map(&x, |v| (v - m).exp() / s)
                }
                op => panic!("the interpreter has no {op}"),
            };
            if let Some(act) = node.activation.as_deref() {
                assert_eq!(act, "relu");
            }
            let y = if node.activation.is_some() {
                map(&y, |v| v.max(0.0))
            } else {
                y
            };
            env.insert(node.output.clone(), y);
        }
        env.remove(&def.outputs[0]).unwrap().data
    }

    fn map(x: &T, f: impl Fn(f64) -> f64) -> T {
        T {
            shape: x.shape.clone(),
            data: x.data.iter().map(|&v| f(v)).collect(),
        }
    }

    /// The index into `c` (ONNX-broadcast onto `x`) of element `i` of `x`.
    fn broadcast_index(x: &[usize], c: &[usize], mut i: usize) -> usize {
        let pad = x.len() - c.len();
        let (mut idx, mut stride) = (0, 1);
        for d in (0..x.len()).rev() {
            let coord = i % x[d];
            i /= x[d];
            if d >= pad && c[d - pad] != 1 {
                idx += coord * stride;
                stride *= c[d - pad];
            }
        }
        idx
    }

    fn get(v: &Option<Vec<i64>>, default: &[usize]) -> Vec<usize> {
        v.as_ref()
            .map_or(default.to_vec(), |v| v.iter().map(|&d| d as usize).collect())
    }

    fn pad(x: &T, node: &NodeDef) -> T {
        let p = get(&node.pads, &[]);
        let (n, c, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        let (oh, ow) = (h + p[2] + p[6], w + p[3] + p[7]);
        let mut data = vec![f64::from(node.value.unwrap_or(0.0)); n * c * oh * ow];
        for b in 0..n * c {
            for i in 0..h {
                for j in 0..w {
                    data[(b * oh + i + p[2]) * ow + j + p[3]] = x.data[(b * h + i) * w + j];
                }
            }
        }
        T {
            shape: vec![n, c, oh, ow],
            data,
        }
    }

    /// For output `(oh, ow)` and tap `(i, j)`, the input pixel, if inside.
    fn at(
        x: &T,
        p: &[usize],
        s: &[usize],
        d: &[usize],
        o: (usize, usize),
        t: (usize, usize),
    ) -> Option<(usize, usize)> {
        let ih = (o.0 * s[0] + t.0 * d[0]).checked_sub(p[0])?;
        let iw = (o.1 * s[1] + t.1 * d[1]).checked_sub(p[1])?;
        (ih < x.shape[2] && iw < x.shape[3]).then_some((ih, iw))
    }

    fn out_dim(i: usize, p0: usize, p1: usize, k: usize, s: usize, d: usize) -> usize {
        (i + p0 + p1 - d * (k - 1) - 1) / s + 1
    }

    fn conv(x: &T, node: &NodeDef, w: &T, b: Option<T>) -> T {
        let (p, s, d) = (
            get(&node.pads, &[0; 4]),
            get(&node.strides, &[1, 1]),
            get(&node.dilations, &[1, 1]),
        );
        let g = node.group.unwrap_or(1) as usize;
        let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        let (o, cg, kh, kw) = (w.shape[0], w.shape[1], w.shape[2], w.shape[3]);
        let (oh, ow) = (
            out_dim(h, p[0], p[2], kh, s[0], d[0]),
            out_dim(wd, p[1], p[3], kw, s[1], d[1]),
        );
        let mut data = Vec::new();
        for bn in 0..n {
            for oc in 0..o {
                let group = oc / (o / g);
                for y in 0..oh {
                    for xx in 0..ow {
                        let mut acc = b.as_ref().map_or(0.0, |b| b.data[oc]);
                        for ci in 0..cg {
                            for i in 0..kh {
                                for j in 0..kw {
                                    if let Some((ih, iw)) = at(x, &p, &s, &d, (y, xx), (i, j)) {
                                        let xv = x.data[((bn * c + group * cg + ci) * h + ih) * wd + iw];
                                        acc += xv * w.data[((oc * cg + ci) * kh + i) * kw + j];
                                    }
                                }
                            }
                        }
                        data.push(acc);
                    }
                }
            }
        }
        T {
            shape: vec![n, o, oh, ow],
            data,
        }
    }

    fn pool(x: &T, node: &NodeDef) -> T {
        let k = get(&node.kernel_shape, &[]);
        let (p, s) = (get(&node.pads, &[0; 4]), get(&node.strides, &[1, 1]));
        let (nc, h, w) = (x.shape[0] * x.shape[1], x.shape[2], x.shape[3]);
        let (oh, ow) = (
            out_dim(h, p[0], p[2], k[0], s[0], 1),
            out_dim(w, p[1], p[3], k[1], s[1], 1),
        );
        let mut data = Vec::new();
        for b in 0..nc {
            for y in 0..oh {
                for xx in 0..ow {
                    let vals: Vec<f64> = (0..k[0])
                        .flat_map(|i| (0..k[1]).map(move |j| (i, j)))
                        .filter_map(|t| at(x, &p, &s, &[1, 1], (y, xx), t))
                        .map(|(ih, iw)| x.data[(b * h + ih) * w + iw])
                        .collect();
                    data.push(match node.op.as_str() {
                        "MaxPool" => vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                        _ if node.count_include_pad == Some(true) => {
                            vals.iter().sum::<f64>() / (k[0] * k[1]) as f64
                        }
                        _ => vals.iter().sum::<f64>() / vals.len() as f64,
                    });
                }
            }
        }
        T {
            shape: vec![x.shape[0], x.shape[1], oh, ow],
            data,
        }
    }
}

/// Standard normal values (Box-Muller over `rng`).
fn normal(rng: &mut Xorshift, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| ((-2.0 * rng.unit().ln()).sqrt() * (2.0 * std::f64::consts::PI * rng.unit()).cos()) as f32)
        .collect()
}

/// The model at `path` baked with `options`, run on `input`: the mean
/// |error| against `want` of each output channel's mean (NCHW: 16 planes of
/// 32 x 32), averaged over the channels.
fn mean_shift(path: &Path, options: &qbake_codegen::Options, input: &[f32], want: &[f64]) -> f64 {
    let mut r = Reference::load(path).unwrap();
    let baked = qbake_codegen::quantize::bake(r.plan(), options).unwrap();
    r.set_baked(&baked).unwrap();
    let got = r.run(input);
    let per_channel: Vec<f64> = got
        .chunks_exact(1024)
        .zip(want.chunks_exact(1024))
        .map(|(g, w)| g.iter().zip(w).map(|(g, w)| g - w).sum::<f64>() / 1024.0)
        .collect();
    per_channel.iter().map(|e| e.abs()).sum::<f64>() / 16.0
}

/// The per-channel shifts of the first layer's outputs (a batch norm's
/// `beta`, or the bias it folds into), shared by the two mean-shift tests.
fn shifts(c: usize) -> Vec<f32> {
    (0..c).map(|i| 1.5 - 0.4 * i as f32).collect()
}

/// `conv1 -> relu -> conv2` (weights `w1`, `w2`, biases `b1`, `b2`) on a
/// `[1, c, side, side]` input.
fn conv_relu_conv(c: usize, side: usize) -> serde_json::Value {
    serde_json::json!({
        "version": 1, "inputs": [{"name": "x", "shape": [1, c, side, side]}], "outputs": ["y"],
        "nodes": [
            {"name": "conv1", "op": "Conv", "inputs": ["x"], "output": "c1", "weight": "w1", "bias": "b1"},
            {"name": "relu", "op": "Relu", "inputs": ["c1"], "output": "r"},
            {"name": "conv2", "op": "Conv", "inputs": ["r"], "output": "y", "weight": "w2", "bias": "b2"}
        ]
    })
}

/// The second layer's `[16, c]` weights, the one whose mean shift both
/// tests measure.
fn second_weights(c: usize) -> Vec<f32> {
    (0..16 * c)
        .map(|i| ((i * 37 % 29) as f32 / 29.0 - 0.45) * 0.7)
        .collect()
}

/// Bias correction: a layer whose input a batch normalization describes
/// loses the mean shift its rounded weights cause. Inputs are drawn from
/// the distribution the normalization states, so the corrected layer's
/// error averages to (nearly) zero, and the uncorrected one's does not.
#[test]
fn bias_correction_removes_the_mean_shift() {
    use qbake_codegen::Options;
    let c = 8;
    // conv1 is the identity; bn makes channel i ~ N(beta_i, gamma_i^2) from N(0, 1) inputs.
    let identity: Vec<f32> = (0..c * c)
        .map(|i| if i / c == i % c { 1.0 } else { 0.0 })
        .collect();
    let gamma: Vec<f32> = (0..c).map(|i| 0.5 + 0.3 * i as f32).collect();
    let (beta, w2) = (shifts(c), second_weights(c));
    let graph = serde_json::json!({
        "version": 1, "inputs": [{"name": "x", "shape": [1, c, 32, 32]}], "outputs": ["y"],
        "nodes": [
            {"name": "conv1", "op": "Conv", "inputs": ["x"], "output": "c1", "weight": "w1"},
            {"name": "bn", "op": "BatchNormalization", "inputs": ["c1"], "output": "b", "epsilon": 0.0,
             "scale": "g", "bias": "beta", "mean": "m", "var": "v"},
            {"name": "relu", "op": "Relu", "inputs": ["b"], "output": "r"},
            {"name": "conv2", "op": "Conv", "inputs": ["r"], "output": "y", "weight": "w2", "bias": "b2"}
        ]
    });
    let tensors: &[(&str, &[usize], Vec<f32>)] = &[
        ("w1", &[c, c, 1, 1], identity),
        ("g", &[c], gamma),
        ("beta", &[c], beta),
        ("m", &[c], vec![0.0; c]),
        ("v", &[c], vec![1.0; c]),
        ("w2", &[16, c, 1, 1], w2),
        ("b2", &[16], vec![0.1; 16]),
    ];
    let (_dir, path) = model(graph, tensors);
    let float = Reference::load(&path).unwrap();
    let input = normal(&mut Xorshift(0x5eed), c * 32 * 32);
    let want = float.run(&input);
    let mean_error = |bias_correction: bool| {
        let options = Options {
            keep_float_below: 0,
            bias_correction,
            ..Options::default()
        };
        mean_shift(&path, &options, &input, &want)
    };
    let (plain, corrected) = (mean_error(false), mean_error(true));
    assert!(
        corrected * 4.0 < plain,
        "mean |error| {corrected} corrected vs {plain} plain"
    );
}

/// Calibration: on a graph whose batch normalization was folded away (the
/// statistics bias correction reads are gone), inputs given at bake time
/// measure each layer's input means, and the mean shift goes just the
/// same. The calibration inputs are not the ones measured.
#[test]
fn calibration_removes_the_mean_shift_without_batch_norm() {
    use qbake_codegen::quantize;
    use qbake_codegen::{Calibration, Options};
    use safetensors::tensor::{Dtype, TensorView};
    let c = 8;
    // conv1 makes channel i ~ N(beta_i, gamma_i^2) from N(0, 1) inputs: a
    // batch normalization already folded into its weights and bias.
    let folded: Vec<f32> = (0..c * c)
        .map(|i| {
            if i / c == i % c {
                0.5 + 0.3 * (i / c) as f32
            } else {
                0.0
            }
        })
        .collect();
    let (beta, w2) = (shifts(c), second_weights(c));
    let graph = conv_relu_conv(c, 32);
    let tensors: &[(&str, &[usize], Vec<f32>)] = &[
        ("w1", &[c, c, 1, 1], folded),
        ("b1", &[c], beta),
        ("w2", &[16, c, 1, 1], w2),
        ("b2", &[16], vec![0.1; 16]),
    ];
    let (dir, path) = model(graph, tensors);
    let float = Reference::load(&path).unwrap();
    let mut rng = Xorshift(0x5eed);
    let input = normal(&mut rng, c * 32 * 32);
    // Four other inputs from the same distribution, as a batch [4, 1, c, 32, 32].
    let batch: Vec<u8> = normal(&mut rng, 4 * c * 32 * 32)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let calibration = dir.path().join("calibration.safetensors");
    let view = TensorView::new(Dtype::F32, vec![4, 1, c, 32, 32], &batch).unwrap();
    std::fs::write(&calibration, safetensors::serialize([("x", view)], None).unwrap()).unwrap();
    let want = float.run(&input);
    let mean_error = |calibration: Calibration| {
        let options = Options {
            keep_float_below: 0,
            calibration,
            ..Options::default()
        };
        mean_shift(&path, &options, &input, &want)
    };
    // Without calibration nothing says what conv2's input averages: balanced
    // rounding (on by default) takes out only what a uniform mean would see.
    let (plain, calibrated) = (
        mean_error(Calibration::Off),
        mean_error(Calibration::Inputs(calibration.clone())),
    );
    assert!(
        calibrated * 4.0 < plain,
        "mean |error| {calibrated} calibrated vs {plain} plain"
    );
    // Synthetic images (in [-1, 1]) are not these inputs (N(0, 1)), but what
    // they say of conv2's input means is closer than nothing (measured: 1.9x).
    let synthetic = mean_error(Calibration::Synthetic);
    assert!(
        synthetic * 1.5 < plain,
        "mean |error| {synthetic} synthetic vs {plain} plain"
    );
    // Calibration needs bias correction or compensated rounding, and says
    // so rather than doing nothing.
    let off = Options {
        bias_correction: false,
        compensated_rounding: false,
        calibration: Calibration::Inputs(calibration.clone()),
        ..Options::default()
    };
    let err = quantize::bake(float.plan(), &off).unwrap_err();
    assert!(
        err.is_calibration()
            && err
                .message()
                .contains("`bias_correction = false, compensated_rounding = false`"),
        "{err}"
    );
    let compensating = Options {
        compensated_rounding: true,
        ..off.clone()
    };
    assert!(quantize::bake(float.plan(), &compensating).is_ok());
    // The default is no request of the user's: it measures on synthetic
    // images, and does nothing when nothing uses them, as "none" does.
    let default = mean_error(Calibration::Auto);
    assert!(default == synthetic, "{default} vs {synthetic}");
    // The weights' docs say where the biases' means came from.
    let docs = |calibration| {
        let options = Options {
            keep_float_below: 0,
            calibration,
            ..Options::default()
        };
        qbake_codegen::generate(&path, "m.safetensors", &options)
            .unwrap()
            .to_string()
    };
    let means = "input means from batch-norm statistics where the graph has them";
    assert!(docs(Calibration::Auto).contains(&format!("{means}, else measured on synthetic images")));
    assert!(docs(Calibration::Off).contains(&format!("{means}. ")));
    assert!(
        docs(Calibration::Inputs(calibration.clone()))
            .contains("measured on the calibration inputs `calibration.safetensors`")
    );
    // And which weights were rounded with compensation, on what.
    let compensated = "Weights stored as *compensated* were rounded column by column";
    let on = |inputs: &str| format!("as the correlations of their inputs on {inputs} say");
    let auto = docs(Calibration::Auto);
    assert!(auto.contains(compensated) && auto.contains(&on("synthetic images")));
    assert!(auto.contains("| u8, per channel, compensated |"), "{auto}");
    let inputs = docs(Calibration::Inputs(calibration.clone()));
    assert!(inputs.contains(&on("the calibration inputs `calibration.safetensors`")));
    let off = docs(Calibration::Off);
    assert!(!off.contains(compensated) && !off.contains("compensated |"));
    let uncorrected = |calibration| Options {
        bias_correction: false,
        compensated_rounding: false,
        calibration,
        ..Options::default()
    };
    assert!(
        quantize::bake(float.plan(), &uncorrected(Calibration::Auto)).unwrap()
            == quantize::bake(float.plan(), &uncorrected(Calibration::Off)).unwrap()
    );
}

/// `run_visiting`, which calibration uses so that a pass holds only the
/// live values: it shows every computed value as `run_all` returns it,
/// the input first, and returns only the values it is asked to keep.
#[test]
fn run_visiting_sees_every_value_and_keeps_what_it_is_asked_to() {
    let graph = serde_json::json!({
        "version": 1, "inputs": [{"name": "x", "shape": [1, 2, 4, 4]}], "outputs": ["y"],
        "nodes": [
            {"name": "conv1", "op": "Conv", "inputs": ["x"], "output": "c1", "weight": "w1", "bias": "b1", "pads": [1, 1, 1, 1]},
            {"name": "relu", "op": "Relu", "inputs": ["c1"], "output": "r"},
            {"name": "add", "op": "Add", "inputs": ["r", "c1"], "output": "s"},
            {"name": "conv2", "op": "Conv", "inputs": ["s"], "output": "y", "weight": "w2"}
        ]
    });
    let mut rng = Xorshift(7);
    let tensors: &[(&str, &[usize], Vec<f32>)] = &[
        ("w1", &[3, 2, 3, 3], normal(&mut rng, 54)),
        ("b1", &[3], normal(&mut rng, 3)),
        ("w2", &[2, 3, 1, 1], normal(&mut rng, 6)),
    ];
    let (_dir, path) = model(graph, tensors);
    let reference = Reference::load(&path).unwrap();
    let input = normal(&mut rng, 32);
    let all = reference.run_all(&input);
    let mut seen = Vec::new();
    let output = reference.plan().output;
    let kept = reference.run_visiting(&input, |v| v == output, |i, x| seen.push((i, x.to_vec())));
    assert_eq!(seen[0].0, 0);
    seen.sort_by_key(|(i, _)| *i);
    let computed: Vec<_> = all.iter().enumerate().filter(|(_, v)| !v.is_empty()).collect();
    assert_eq!(seen.len(), computed.len());
    for ((i, x), (j, want)) in seen.iter().zip(computed) {
        assert_eq!((i, x), (&j, want));
    }
    for (i, v) in kept.iter().enumerate() {
        assert_eq!(v.is_empty(), i != output, "value {i}");
    }
    assert_eq!(kept[output], reference.run(&input));
}

/// Bias correction from means past f32's range (here the synthetic images'
/// pass through weights of 1e25, the default calibration) leaves those
/// biases as the file has them, rather than infinite.
#[test]
fn means_past_f32_leave_the_bias_finite() {
    use qbake_codegen::{Options, quantize};
    let c = 8;
    let graph = conv_relu_conv(c, 8);
    let huge: Vec<f32> = second_weights(c).iter().map(|w| w * 1e25).collect();
    let tensors: &[(&str, &[usize], Vec<f32>)] = &[
        ("w1", &[16, c, 1, 1], huge.clone()),
        ("b1", &[16], vec![0.0; 16]),
        ("w2", &[16, 16, 1, 1], [huge.clone(), huge].concat()),
        ("b2", &[16], vec![0.5; 16]),
    ];
    let (_dir, path) = model(graph, tensors);
    let plan = Reference::load(&path).unwrap().plan().clone();
    let options = Options {
        keep_float_below: 0,
        ..Options::default()
    };
    let baked = quantize::bake(&plan, &options).unwrap();
    let b2 = baked.floats.iter().find(|f| f.name == "b2").unwrap();
    assert!(b2.values.iter().all(|v| v.is_finite()), "{:?}", b2.values);
    // The moments of w2's inputs are past f32 too: it is rounded as without
    // compensation; w1's inputs are the image's, and it is compensated.
    let plain = quantize::bake(
        &plan,
        &Options {
            compensated_rounding: false,
            ..options.clone()
        },
    )
    .unwrap();
    let (w1, w2) = (baked.weight("w1").unwrap(), baked.weight("w2").unwrap());
    assert!(w1.compensated && !w2.compensated);
    assert_eq!(w2.storage, plain.weight("w2").unwrap().storage);
}

/// Compensated rounding, by default on image models (with synthetic
/// calibration images): the output error on other smooth images is lower
/// than with each weight rounded to nearest and rows balanced.
#[test]
fn compensated_rounding_lowers_the_output_error() {
    use qbake_codegen::{Options, quantize};
    let (c, side) = (3, 16);
    let mut rng = Xorshift(0xfeed);
    let w1: Vec<f32> = normal(&mut rng, 16 * c * 9).iter().map(|v| v * 0.3).collect();
    let w2: Vec<f32> = normal(&mut rng, 16 * 16).iter().map(|v| v * 0.3).collect();
    let tensors: &[(&str, &[usize], Vec<f32>)] = &[
        ("w1", &[16, c, 3, 3], w1),
        ("b1", &[16], vec![0.1; 16]),
        ("w2", &[16, 16, 1, 1], w2),
        ("b2", &[16], vec![0.0; 16]),
    ];
    let (_dir, path) = model(conv_relu_conv(c, side), tensors);
    let float = Reference::load(&path).unwrap();
    // Smooth images unlike the synthetic ones: noise averaged over 5 x 5.
    let images: Vec<Vec<f32>> = (0..4)
        .map(|_| {
            let noise = normal(&mut rng, c * side * side);
            (0..c * side * side)
                .map(|i| {
                    let (ch, y, x) = (i / (side * side), i / side % side, i % side);
                    let near = |d: usize, v: usize| (v + d).saturating_sub(2).min(side - 1);
                    (0..25)
                        .map(|d| noise[ch * side * side + near(d / 5, y) * side + near(d % 5, x)])
                        .sum::<f32>()
                        / 5.0
                })
                .collect()
        })
        .collect();
    let error = |per_channel: bool, compensated_rounding: bool| {
        let options = Options {
            keep_float_below: 0,
            per_channel,
            compensated_rounding,
            ..Options::default()
        };
        let baked = quantize::bake(float.plan(), &options).unwrap();
        assert!(
            baked
                .weights
                .iter()
                .all(|w| w.compensated == compensated_rounding)
        );
        let mut r = Reference::load(&path).unwrap();
        r.set_baked(&baked).unwrap();
        images
            .iter()
            .map(|x| {
                let (got, want) = (r.run(x), float.run(x));
                got.iter().zip(&want).map(|(g, w)| (g - w).powi(2)).sum::<f64>()
            })
            .sum::<f64>()
    };
    // Measured: 0.80x per channel, 0.94x per tensor (where it trusts the
    // correlations less). The synthetic images are 16 x 16 here, and not these.
    for (per_channel, most) in [(true, 0.9), (false, 0.97)] {
        let (compensated, nearest) = (error(per_channel, true), error(per_channel, false));
        assert!(
            compensated < most * nearest,
            "per_channel {per_channel}: {compensated} vs {nearest}"
        );
    }
}
