//! The float reference: a model run from its original f32 weights, in f64,
//! one graph step at a time. It is what quantized results are measured
//! against (tests, examples, `cargo xtask eval`), never what users ship.

use crate::Options;
use crate::error::Error;
use crate::graph::{Act, ConvGeom, Op, Plan, PoolKind};
use std::path::Path;

/// A model loaded for float evaluation.
pub struct Reference {
    plan: Plan,
}

impl Reference {
    /// The model file at `path` (safetensors, or `.onnx`, imported first).
    pub fn load(path: &Path) -> Result<Self, Error> {
        Self::load_with(path, &Options::default())
    }

    /// [`load`](Self::load) with options: for an ONNX file, its `output` and `batch`.
    pub fn load_with(path: &Path, options: &Options) -> Result<Self, Error> {
        let file = crate::open_model(path, options)?;
        Ok(Reference {
            plan: crate::plan_model(&file, options)?,
        })
    }

    /// A plan already made (by [`crate::plan_model`]).
    pub fn new(plan: Plan) -> Self {
        Reference { plan }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The f32 values of a tensor the plan uses (reordered and with batch
    /// normalization folded in, as the plan's steps read them).
    pub fn tensor(&self, name: &str) -> Option<&[f32]> {
        self.plan.tensors.get(name).map(|t| &*t.data)
    }

    /// Replaces a tensor's values, to ask what the model computes with other
    /// weights (the baked ones, say). The length must stay the same.
    pub fn set_tensor(&mut self, name: &str, values: Vec<f32>) -> Result<(), Error> {
        match self.plan.tensors.get_mut(name) {
            Some(t) if t.data.len() == values.len() => {
                t.data = values.into();
                Ok(())
            }
            Some(t) => Err(Error::new(format!(
                "tensor `{name}` has {} values, not {}",
                t.data.len(),
                values.len()
            ))),
            None => Err(Error::new(format!("the graph uses no tensor `{name}`"))),
        }
    }

    /// Takes the baked tensors in place of the file's: the dequantized
    /// weights and the baked biases and constants (bias correction changes
    /// them). The reference then computes what the baked model does,
    /// rounding aside.
    pub fn set_baked(&mut self, baked: &crate::quantize::Baked) -> Result<(), Error> {
        for w in &baked.weights {
            self.set_tensor(&w.name, w.dequantized())?;
        }
        for f in &baked.floats {
            self.set_tensor(&f.name, f.values.clone())?;
        }
        Ok(())
    }

    /// The output for `input` (flattened, in the declared shape).
    pub fn run(&self, input: &[f32]) -> Vec<f64> {
        let output = self.plan.output;
        self.run_visiting(input, |v| v == output, |_, _| {})
            .swap_remove(output)
    }

    /// Every value of the graph for `input`, indexed like `plan().values`,
    /// each in its storage layout (empty for values no step computes).
    pub fn run_all(&self, input: &[f32]) -> Vec<Vec<f64>> {
        self.run_visiting(input, |_| true, |_, _| {})
    }

    /// Runs the graph on `input`, showing `visit` each value as it is
    /// computed (the input first), and returns the values `keep` asks for
    /// (the others empty). A value not kept is dropped once its last reader
    /// has run, so that memory holds the live values only, not the whole
    /// graph's (calibration: tens of megabytes a pass for a MobileNet).
    pub fn run_visiting(
        &self,
        input: &[f32],
        keep: impl Fn(usize) -> bool,
        mut visit: impl FnMut(usize, &[f64]),
    ) -> Vec<Vec<f64>> {
        let plan = &self.plan;
        assert_eq!(input.len(), plan.input().len, "input has the wrong size");
        let mut last_read = vec![None; plan.values.len()];
        for (i, step) in plan.steps.iter().enumerate() {
            for &v in &step.inputs {
                last_read[v] = Some(i);
            }
        }
        let mut values: Vec<Vec<f64>> = vec![Vec::new(); plan.values.len()];
        values[0] = input.iter().map(|&v| f64::from(v)).collect();
        visit(0, &values[0]);
        let t = |name: &str| &*plan.tensor(name).data;
        let bias_of = |b: &Option<String>| b.as_deref().map(t);
        for (i, step) in plan.steps.iter().enumerate() {
            let x = &values[step.inputs[0]];
            let y: Vec<f64> = match &step.op {
                Op::Dense { weight, bias, act } => {
                    let w = t(weight);
                    let k = plan.values[step.inputs[0]].shape.last().copied().unwrap_or(1);
                    let n = w.len() / k;
                    let b = bias_of(bias);
                    // Each output's dot product adds its terms in k order from
                    // zero, the bias after; the loop runs over outputs
                    // innermost (weights transposed to [k][n]) to vectorize.
                    let mut wt = vec![0.0; k * n];
                    for (j, wj) in w.chunks_exact(k).enumerate() {
                        for (kk, &w) in wj.iter().enumerate() {
                            wt[kk * n + j] = f64::from(w);
                        }
                    }
                    let mut y = Vec::with_capacity(x.len() / k * n);
                    let mut dot = vec![0.0; n];
                    for row in x.chunks_exact(k) {
                        dot.fill(0.0);
                        for (&v, w) in row.iter().zip(wt.chunks_exact(n)) {
                            for (d, &w) in dot.iter_mut().zip(w) {
                                *d += v * w;
                            }
                        }
                        for (j, &d) in dot.iter().enumerate() {
                            y.push(apply(act, d + b.map_or(0.0, |b| f64::from(b[j]))));
                        }
                    }
                    y
                }
                Op::Conv {
                    geom,
                    weight,
                    bias,
                    act,
                } => {
                    let w = t(weight);
                    let patch = geom.patch_len();
                    conv(x, geom, bias_of(bias), act, |o, tap, ci| {
                        w[o * patch + tap * geom.in_c + ci]
                    })
                }
                Op::GroupedConv {
                    geom,
                    weights,
                    bias,
                    act,
                } => {
                    let ws: Vec<&[f32]> = weights.iter().map(|w| t(w)).collect();
                    let (og, cg, patch) = (
                        geom.out_c / geom.groups,
                        geom.in_c / geom.groups,
                        geom.patch_len(),
                    );
                    conv(x, geom, bias_of(bias), act, |o, tap, ci| {
                        ws[o / og][(o % og) * patch + tap * cg + ci]
                    })
                }
                Op::Depthwise {
                    geom,
                    weight,
                    bias,
                    act,
                } => {
                    let w = t(weight);
                    let taps = geom.kh * geom.kw;
                    conv(x, geom, bias_of(bias), act, |o, tap, _| w[o * taps + tap])
                }
                Op::Pool { geom, kind } => pool(x, geom, *kind),
                Op::GlobalAveragePool {
                    batch,
                    pixels,
                    channels,
                } => {
                    let mut y = vec![0.0; batch * channels];
                    for (b, image) in x.chunks_exact(pixels * channels).enumerate() {
                        for pixel in image.chunks_exact(*channels) {
                            for (c, v) in pixel.iter().enumerate() {
                                y[b * channels + c] += v;
                            }
                        }
                    }
                    y.iter().map(|s| s / *pixels as f64).collect()
                }
                Op::Pad {
                    batch,
                    h,
                    w,
                    c,
                    pads: [top, left, bottom, right],
                    value,
                } => {
                    let (oh, ow) = (h + top + bottom, w + left + right);
                    let mut y = vec![f64::from(*value); batch * oh * ow * c];
                    for b in 0..*batch {
                        for i in 0..*h {
                            let src = ((b * h + i) * w) * c;
                            let dst = ((b * oh + i + top) * ow + left) * c;
                            y[dst..dst + w * c].copy_from_slice(&x[src..src + w * c]);
                        }
                    }
                    y
                }
                Op::Add { act } => {
                    let b = &values[step.inputs[1]];
                    x.iter().zip(b).map(|(a, b)| apply(act, a + b)).collect()
                }
                Op::AddConstant { constant, act } => {
                    let c = t(constant);
                    x.iter()
                        .enumerate()
                        .map(|(i, v)| apply(act, v + f64::from(c[i % c.len()])))
                        .collect()
                }
                Op::MulConstant { constant, act } => {
                    let c = t(constant);
                    x.iter()
                        .enumerate()
                        .map(|(i, v)| apply(act, v * f64::from(c[i % c.len()])))
                        .collect()
                }
                Op::Activation(act) => x.iter().map(|&v| apply(act, v)).collect(),
                Op::Softmax { outer, len, inner } => softmax(x, *outer, *len, *inner),
                Op::Alias => x.clone(),
                Op::ToNhwc {
                    batch,
                    channels,
                    pixels,
                } => transpose_images(x, *batch, *channels, *pixels),
                Op::ToNchw {
                    batch,
                    pixels,
                    channels,
                } => transpose_images(x, *batch, *pixels, *channels),
            };
            let mut y = y;
            if let Some(Act::ClipChannels { max, .. }) = step.op.act() {
                let max = t(max);
                for (i, v) in y.iter_mut().enumerate() {
                    *v = v.min(f64::from(max[i % max.len()]));
                }
            }
            visit(step.output, &y);
            values[step.output] = y;
            for &v in step.inputs.iter().chain([&step.output]) {
                if !keep(v) && last_read[v].is_none_or(|last| last <= i) {
                    values[v] = Vec::new();
                }
            }
        }
        values
    }
}

/// The activation on one value; `ClipChannels` bounds each channel after.
fn apply(act: &Act, v: f64) -> f64 {
    match *act {
        Act::None => v,
        Act::Relu => v.max(0.0),
        Act::Clip { min, max } => v.max(f64::from(min)).min(f64::from(max)),
        Act::ClipChannels { min, .. } => v.max(f64::from(min)),
    }
}

/// Each of `batch` images `[rows, cols]` transposed to `[cols, rows]`.
fn transpose_images(x: &[f64], batch: usize, rows: usize, cols: usize) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for b in 0..batch {
        let (src, dst) = (&x[b * rows * cols..], &mut y[b * rows * cols..]);
        for r in 0..rows {
            for c in 0..cols {
                dst[c * rows + r] = src[r * cols + c];
            }
        }
    }
    y
}

/// A convolution over NHWC `x`: `w(o, tap, c)` is output `o`'s weight for
/// tap `i * kw + j` and channel `c` of its group.
///
/// Each output's sum starts at its bias and adds its terms tap by tap,
/// channel by channel. The weights are transposed once to `[tap][group][c][o]`
/// in f64 and the loops run over a pixel's outputs innermost, so that the
/// compiler vectorizes across them: the same sums, in the same order, many
/// times faster than one output at a time.
fn conv(
    x: &[f64],
    g: &ConvGeom,
    bias: Option<&[f32]>,
    act: &Act,
    w: impl Fn(usize, usize, usize) -> f32,
) -> Vec<f64> {
    let (oh_n, ow_n) = g.out_dims().expect("a checked geometry");
    let (cg, og, taps) = (g.in_c / g.groups, g.out_c / g.groups, g.kh * g.kw);
    let mut wt = Vec::with_capacity(taps * g.in_c * og);
    for tap in 0..taps {
        for group in 0..g.groups {
            for ci in 0..cg {
                wt.extend((0..og).map(|o| f64::from(w(group * og + o, tap, ci))));
            }
        }
    }
    let start: Vec<f64> = (0..g.out_c)
        .map(|o| bias.map_or(0.0, |b| f64::from(b[o])))
        .collect();
    let mut y = Vec::with_capacity(g.batch * oh_n * ow_n * g.out_c);
    let mut acc = start.clone();
    for b in 0..g.batch {
        for oh in 0..oh_n {
            for ow in 0..ow_n {
                acc.copy_from_slice(&start);
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let Some((ih, iw)) = g.tap(oh, ow, i, j) else {
                            continue;
                        };
                        let pixel = &x[((b * g.in_h + ih) * g.in_w + iw) * g.in_c..][..g.in_c];
                        let tap = &wt[(i * g.kw + j) * g.in_c * og..][..g.in_c * og];
                        if cg == 1 && og == 1 {
                            // One output per input channel (depthwise): the
                            // channels innermost.
                            for ((a, &v), &w) in acc.iter_mut().zip(pixel).zip(tap) {
                                *a += v * w;
                            }
                            continue;
                        }
                        let groups = acc.chunks_exact_mut(og).zip(pixel.chunks_exact(cg));
                        for ((acc, pixel), tap) in groups.zip(tap.chunks_exact(cg * og)) {
                            for (&v, w) in pixel.iter().zip(tap.chunks_exact(og)) {
                                for (a, &w) in acc.iter_mut().zip(w) {
                                    *a += v * w;
                                }
                            }
                        }
                    }
                }
                y.extend(acc.iter().map(|&a| apply(act, a)));
            }
        }
    }
    y
}

fn pool(x: &[f64], g: &ConvGeom, kind: PoolKind) -> Vec<f64> {
    let (oh_n, ow_n) = g.out_dims().expect("a checked geometry");
    let c = g.in_c;
    let mut y = Vec::with_capacity(g.batch * oh_n * ow_n * c);
    for b in 0..g.batch {
        for oh in 0..oh_n {
            for ow in 0..ow_n {
                for ch in 0..c {
                    let mut inside = 0usize;
                    let mut acc = if kind == PoolKind::Max {
                        f64::NEG_INFINITY
                    } else {
                        0.0
                    };
                    for i in 0..g.kh {
                        for j in 0..g.kw {
                            let Some((ih, iw)) = g.tap(oh, ow, i, j) else {
                                continue;
                            };
                            inside += 1;
                            let v = x[((b * g.in_h + ih) * g.in_w + iw) * c + ch];
                            acc = if kind == PoolKind::Max {
                                acc.max(v)
                            } else {
                                acc + v
                            };
                        }
                    }
                    y.push(match kind {
                        PoolKind::Max => acc,
                        PoolKind::Average {
                            count_include_pad: true,
                        } => acc / (g.kh * g.kw) as f64,
                        PoolKind::Average {
                            count_include_pad: false,
                        } => acc / inside as f64,
                    });
                }
            }
        }
    }
    y
}
fn softmax(x: &[f64], outer: usize, len: usize, inner: usize) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| o * len * inner + j * inner + i;
            let max = (0..len).map(|j| x[at(j)]).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..len).map(|j| (x[at(j)] - max).exp()).sum();
            for j in 0..len {
                y[at(j)] = (x[at(j)] - max).exp() / sum;
            }
        }
    }
    y
}
