//! Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization
//! Through Weight Equalization and Bias Correction", section 4.1).
//!
//! After batch normalization is folded in, the output channels of a layer
//! can differ in range by orders of magnitude, and one min/max per tensor
//! then rounds the small channels to a few levels. ReLU is positively
//! homogeneous: for `s > 0`, `relu(y / s) = relu(y) / s`. So when layer 1
//! feeds layer 2 through it, dividing output channel `i` of layer 1 (row,
//! bias) by `s_i` and multiplying input channel `i` of layer 2 by `s_i`
//! computes the same function. Choosing `s_i = sqrt(r1_i / r2_i)` (the
//! ranges of the channel in each layer) gives the channel the same range
//! in both, which is what per-tensor quantization wants.
//!
//! A clip is homogeneous too if its bounds scale with the channel: ReLU6
//! becomes a clip to `[0, 6 / s_i]` per channel ([`Act::ClipChannels`]),
//! so the equalized model computes exactly what the file's does, up to
//! f32 rounding of the scaled weights.
//!
//! Pairs are a convolution, depthwise convolution or matrix product read
//! only by the next one (pools and reshapes between are fine), with no
//! activation or one whose lower bound is 0. A depthwise convolution sits in two pairs (it is
//! scaled on both sides), so the scales are found by sweeping every pair
//! until they settle, as the paper does.

use crate::graph::{Act, Op, Plan, Tensor};
use std::collections::HashMap;

/// Sweeps over all pairs before giving up on settling (each sweep brings
/// the ranges of a chain closer; real networks settle in a few).
const MAX_SWEEPS: usize = 100;
/// Settled: no channel's scale moved by more than this in a sweep.
const SETTLED: f64 = 1e-4;
/// A channel whose weights in either layer are all below this fraction of
/// that layer's largest is dead: batch-norm folding left its output (nearly)
/// constant, its bias. Equalizing would divide it by a tiny scale, and the
/// constant, amplified, would set the range of every activation row the
/// hybrid family quantizes. EfficientNet-Lite0 has such channels (1e-8 to
/// 4e-7 of their layer's largest): equalizing them took its per-tensor
/// hybrid cosine to float from 0.993 down to 0.963; leaving them, up to
/// 0.998 (docs/eval.md).
const DEAD: f64 = 1e-5;

/// One layer of a pair, as the kernels will read its weights.
struct Layer {
    step: usize,
    weight: String,
    rows: usize,
    cols: usize,
    /// The channels of its input: a weight column `k` reads channel
    /// `k % in_channels` (`cols` for a matrix product, `rows` for depthwise).
    in_channels: usize,
    depthwise: bool,
    values: Vec<f64>,
}

impl Layer {
    /// The channel a weight at `(row, col)` reads.
    fn channel_in(&self) -> impl Fn(usize, usize) -> usize + use<> {
        let (depthwise, channels) = (self.depthwise, self.in_channels);
        move |row, col| if depthwise { row } else { col % channels }
    }
}

/// Equalizes every pair of layers in `plan` (see the module docs), in place.
/// Returns how many pairs it equalized.
pub fn equalize(plan: &mut Plan) -> usize {
    let pairs = pairs(plan);
    if pairs.is_empty() {
        return 0;
    }
    // The layers, each once, and each pair as indices into them.
    let mut index: HashMap<usize, usize> = HashMap::new();
    let mut layers: Vec<Layer> = Vec::new();
    let mut pair_ix = Vec::with_capacity(pairs.len());
    for &(p, c) in &pairs {
        let mut at = |step: usize| {
            *index.entry(step).or_insert_with(|| {
                layers.push(layer(plan, step));
                layers.len() - 1
            })
        };
        pair_ix.push((at(p), at(c)));
    }
    // Per layer, the factor each output channel was divided by.
    let mut out_scale: Vec<Vec<f64>> = layers.iter().map(|l| vec![1.0; l.rows]).collect();
    for _ in 0..MAX_SWEEPS {
        let mut moved: f64 = 0.0;
        for &(p, c) in &pair_ix {
            let r1 = row_ranges(&layers[p]);
            let r2 = input_ranges(&layers[c]);
            let (live1, live2) = (DEAD * largest(&r1), DEAD * largest(&r2));
            let s: Vec<f64> = r1
                .iter()
                .zip(&r2)
                .map(|(&a, &b)| {
                    let s = (a / b).sqrt();
                    let live = a > live1 && b > live2;
                    if live && s.is_finite() && s > 0.0 { s } else { 1.0 }
                })
                .collect();
            let (producer, consumer) = two(&mut layers, p, c);
            for (row, v) in producer.values.chunks_exact_mut(producer.cols).enumerate() {
                v.iter_mut().for_each(|v| *v /= s[row]);
            }
            let channel_in = consumer.channel_in();
            for (row, v) in consumer.values.chunks_exact_mut(consumer.cols).enumerate() {
                for (col, v) in v.iter_mut().enumerate() {
                    *v *= s[channel_in(row, col)];
                }
            }
            for (total, s) in out_scale[p].iter_mut().zip(&s) {
                *total *= s;
                moved = moved.max((s - 1.0).abs());
            }
        }
        if moved < SETTLED {
            break;
        }
    }
    for (layer, scale) in layers.iter().zip(&out_scale) {
        write_back(plan, layer, scale);
    }
    pairs.len()
}

/// `(producer, consumer)` steps whose channels can be traded (module docs).
///
/// Every value a kernel writes or reads keeps channel `c` of element `i` at
/// `i % channels` (NHWC, or rows of a matrix), so a consumer whose input
/// channels number the producer's output channels reads them in the same
/// order, also through steps that keep that order and commute with scaling
/// a channel: pools, global average pools, and aliases (reshapes, and the
/// layout changes that move nothing).
fn pairs(plan: &Plan) -> Vec<(usize, usize)> {
    let mut readers = vec![0usize; plan.values.len()];
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for step in &plan.steps {
        for &v in &step.inputs {
            readers[v] += 1;
        }
        for name in step.op.tensors() {
            *uses.entry(name).or_default() += 1;
        }
    }
    let producer_of: HashMap<usize, usize> = plan
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.output, i))
        .collect();
    // Read by one step only, and not the model's output.
    let private = |v: usize| readers[v] == 1 && v != plan.output;
    let only_here = |names: Vec<&str>| names.iter().all(|n| uses.get(n) == Some(&1));
    let mut pairs = Vec::new();
    for (c, consumer) in plan.steps.iter().enumerate() {
        let in_channels = match &consumer.op {
            Op::Conv { geom, .. } | Op::Depthwise { geom, .. } => geom.in_c,
            Op::Dense { weight, .. } => plan.tensor(weight).shape[1],
            _ => continue,
        };
        // Back from the consumer's input, through steps that keep channels.
        let mut v = consumer.inputs[0];
        let producer = loop {
            match producer_of.get(&v) {
                Some(&p) if private(v) => match plan.steps[p].op {
                    Op::Alias | Op::Pool { .. } | Op::GlobalAveragePool { .. } => v = plan.steps[p].inputs[0],
                    Op::Conv { .. } | Op::Depthwise { .. } | Op::Dense { .. } => break Some(p),
                    _ => break None,
                },
                _ => break None,
            }
        };
        let Some(p) = producer else { continue };
        let op = &plan.steps[p].op;
        let homogeneous = match op.act() {
            Some(Act::None | Act::Relu) => true,
            Some(Act::Clip { min, .. } | Act::ClipChannels { min, .. }) => *min == 0.0,
            None => false,
        };
        let channels = plan.tensor(weight_of(op)).shape[0];
        if homogeneous
            && channels == in_channels
            && only_here(op.tensors())
            && only_here(consumer.op.tensors())
        {
            pairs.push((p, c));
        }
    }
    pairs
}

fn weight_of(op: &Op) -> &str {
    match op {
        Op::Conv { weight, .. } | Op::Depthwise { weight, .. } | Op::Dense { weight, .. } => weight,
        _ => unreachable!("pairs are of convolutions and matrix products"),
    }
}

fn layer(plan: &Plan, step: usize) -> Layer {
    let op = &plan.steps[step].op;
    let weight = weight_of(op).to_string();
    let t = plan.tensor(&weight);
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let (in_channels, depthwise) = match op {
        Op::Conv { geom, .. } => (geom.in_c, false),
        Op::Depthwise { .. } => (rows, true),
        _ => (cols, false),
    };
    Layer {
        step,
        weight,
        rows,
        cols,
        in_channels,
        depthwise,
        values: t.data.iter().map(|&v| f64::from(v)).collect(),
    }
}

fn largest(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, &x| m.max(x))
}

/// Each output channel's range: its largest magnitude.
fn row_ranges(l: &Layer) -> Vec<f64> {
    l.values
        .chunks_exact(l.cols)
        .map(|row| row.iter().fold(0.0f64, |m, v| m.max(v.abs())))
        .collect()
}

/// Each input channel's range: its largest magnitude over every output and tap.
fn input_ranges(l: &Layer) -> Vec<f64> {
    let mut r = vec![0.0f64; l.in_channels];
    let channel_in = l.channel_in();
    for (row, v) in l.values.chunks_exact(l.cols).enumerate() {
        for (col, v) in v.iter().enumerate() {
            let ch = &mut r[channel_in(row, col)];
            *ch = ch.max(v.abs());
        }
    }
    r
}

fn two<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b, "a layer does not feed itself");
    if a < b {
        let (lo, hi) = v.split_at_mut(b);
        (&mut lo[a], &mut hi[0])
    } else {
        let (lo, hi) = v.split_at_mut(a);
        (&mut hi[0], &mut lo[b])
    }
}

/// Stores a layer's equalized weights, and divides what follows its
/// output channels by their scales: bias, batch-norm statistics, clip bounds.
fn write_back(plan: &mut Plan, layer: &Layer, scale: &[f64]) {
    let shape = plan.tensor(&layer.weight).shape.clone();
    set(
        plan,
        &layer.weight,
        shape,
        layer.values.iter().map(|&v| v as f32).collect(),
    );
    if scale.iter().all(|&s| s == 1.0) {
        return;
    }
    let divided = |values: &[f32]| -> Vec<f32> {
        values
            .iter()
            .zip(scale)
            .map(|(&v, &s)| (f64::from(v) / s) as f32)
            .collect()
    };
    let op = &plan.steps[layer.step].op;
    let (bias, act) = (bias_of(op).map(str::to_string), op.act().cloned());
    if let Some(bias) = bias {
        let t = plan.tensor(&bias);
        let (shape, values) = (t.shape.clone(), divided(&t.data));
        set(plan, &bias, shape, values);
    }
    let new_act = match act {
        Some(Act::Clip { min, max }) => {
            let mut name = format!("{}.clip_max", layer.weight);
            while plan.tensors.contains_key(&name) {
                name.push('_');
            }
            let bounds = divided(&vec![max; scale.len()]);
            set(plan, &name, vec![scale.len()], bounds);
            Some(Act::ClipChannels { min, max: name })
        }
        Some(Act::ClipChannels { max, .. }) => {
            let values = divided(&plan.tensor(&max).data);
            set(plan, &max, vec![scale.len()], values);
            None
        }
        _ => None,
    };
    let step = &mut plan.steps[layer.step];
    if let Some(act) = new_act {
        *step.op.act_mut().expect("pairs have activations") = act;
    }
    if let Some(bn) = &mut step.bn {
        bn.mean = divided(&bn.mean);
        bn.std = divided(&bn.std);
    }
}

fn bias_of(op: &Op) -> Option<&str> {
    match op {
        Op::Conv { bias, .. } | Op::Depthwise { bias, .. } | Op::Dense { bias, .. } => bias.as_deref(),
        _ => None,
    }
}

fn set(plan: &mut Plan, name: &str, shape: Vec<usize>, values: Vec<f32>) {
    plan.tensors.insert(
        name.to_string(),
        Tensor {
            shape,
            data: values.into(),
        },
    );
}
