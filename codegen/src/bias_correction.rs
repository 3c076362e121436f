//! Data-free bias correction (Nagel et al. 2019, "Data-Free Quantization
//! Through Weight Equalization and Bias Correction", section 4.2).
//!
//! Rounding a layer's weights moves its outputs by `(W_q - W) x`. Its
//! random part averages out over a layer's many inputs; its mean,
//! `(W_q - W) E[x]`, does not, and it adds up through the depth of a
//! network: on EfficientNet-Lite0 it is most of the 8-bit error. Where a
//! batch normalization (folded into the layer before) says what its input
//! looks like, `E[x]` is known without data, and the mean shift is taken out
//! of the bias. Calibration inputs, where the user gives some, measure
//! `E[x]` instead, everywhere.

use crate::graph::{Act, Normal, Op, Plan};
use crate::quantize::{Baked, Storage};
use std::collections::HashMap;

/// The expected value of each channel of each value of the plan, where the
/// batch normalizations say it: per value, `None` when unknown.
pub fn expected_means(plan: &Plan) -> Vec<Option<Vec<f64>>> {
    let mut means: Vec<Option<Vec<f64>>> = vec![None; plan.values.len()];
    for step in &plan.steps {
        let input = |i: usize| means[step.inputs[i]].clone();
        let out = match (&step.op, &step.bn) {
            (
                Op::Conv { act, .. }
                | Op::GroupedConv { act, .. }
                | Op::Depthwise { act, .. }
                | Op::Dense { act, .. },
                Some(bn),
            ) => Some(activated_means(plan, bn, act)),
            (Op::Add { act: Act::None }, _) => match (input(0), input(1)) {
                (Some(a), Some(b)) if a.len() == b.len() => {
                    Some(a.iter().zip(&b).map(|(a, b)| a + b).collect())
                }
                _ => None,
            },
            // Per-channel averages and renamings keep each channel's mean.
            (
                Op::GlobalAveragePool { .. }
                | Op::Alias
                | Op::ToNhwc { .. }
                | Op::ToNchw { .. }
                | Op::Pool {
                    kind: crate::graph::PoolKind::Average { .. },
                    ..
                },
                _,
            ) => input(0),
            _ => None,
        };
        means[step.output] = out;
    }
    means
}

/// `E[act(y)]` for `y ~ N(mean, std)` per channel.
fn activated_means(plan: &Plan, bn: &Normal, act: &Act) -> Vec<f64> {
    let bounds = |c: usize| match act {
        Act::None => (f64::NEG_INFINITY, f64::INFINITY),
        Act::Relu => (0.0, f64::INFINITY),
        Act::Clip { min, max } => (f64::from(*min), f64::from(*max)),
        Act::ClipChannels { min, max } => (f64::from(*min), f64::from(plan.tensor(max).data[c])),
    };
    bn.mean
        .iter()
        .zip(&bn.std)
        .enumerate()
        .map(|(c, (&m, &s))| {
            let (lo, hi) = bounds(c);
            clipped_normal_mean(f64::from(m), f64::from(s), lo, hi)
        })
        .collect()
}

/// `E[clamp(y, lo, hi)]` for `y ~ N(mean, std^2)`.
fn clipped_normal_mean(mean: f64, std: f64, lo: f64, hi: f64) -> f64 {
    if std <= 0.0 || !std.is_finite() {
        return mean.clamp(lo, hi);
    }
    let (a, b) = ((lo - mean) / std, (hi - mean) / std);
    let (cdf_a, cdf_b) = (cdf(a), cdf(b));
    let tail_lo = if lo.is_finite() { lo * cdf_a } else { 0.0 };
    let tail_hi = if hi.is_finite() { hi * (1.0 - cdf_b) } else { 0.0 };
    tail_lo + tail_hi + mean * (cdf_b - cdf_a) + std * (pdf(a) - pdf(b))
}

fn pdf(x: f64) -> f64 {
    if x.is_infinite() {
        return 0.0;
    }
    (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

fn cdf(x: f64) -> f64 {
    0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// The error function, to 1.2e-7 (Numerical Recipes' `erfc` by Chebyshev fit).
fn erf(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223
        + t * (1.00002368
            + t * (0.37409196
                + t * (0.09678418
                    + t * (-0.18628806
                        + t * (0.27886807
                            + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let erfc = t * poly.exp();
    if x >= 0.0 { 1.0 - erfc } else { erfc - 1.0 }
}

/// For weight column `k` of output `o` (in a weight whose first output is
/// `first`), the input channel it reads.
type ChannelOf = Box<dyn Fn(usize, usize, usize) -> usize>;

/// Takes `(W_q - W) E[x]` out of the bias of every layer whose weights were
/// quantized and whose input's channel means are known. Only biases that
/// one step alone reads are changed.
///
/// `means` holds each value's channel means, or `None` where unknown:
/// [`expected_means`] from batch normalizations, or measured on calibration
/// inputs (`calibration.rs`).
pub fn correct(plan: &Plan, baked: &mut Baked, means: &[Option<Vec<f64>>]) {
    // By name, so that a graph of many layers is corrected in linear time.
    let weight_at: HashMap<String, usize> = baked
        .weights
        .iter()
        .enumerate()
        .map(|(i, w)| (w.name.clone(), i))
        .collect();
    let float_at: HashMap<String, usize> = baked
        .floats
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name.clone(), i))
        .collect();
    let mut bias_readers: HashMap<&str, usize> = HashMap::new();
    for step in &plan.steps {
        for t in step.op.tensors() {
            *bias_readers.entry(t).or_insert(0) += 1;
        }
    }
    for step in &plan.steps {
        let Some(mean) = &means[step.inputs[0]] else {
            continue;
        };
        // For each weight: its name, the first output channel it computes,
        // and the input channel of column `k` of row `o`.
        let (weights, bias, channel): (Vec<(&str, usize)>, _, ChannelOf) = match &step.op {
            Op::Conv {
                geom, weight, bias, ..
            } => {
                let c = geom.in_c;
                (vec![(weight.as_str(), 0)], bias, Box::new(move |_, _, k| k % c))
            }
            Op::GroupedConv {
                geom, weights, bias, ..
            } => {
                let (og, cg) = (geom.out_c / geom.groups, geom.in_c / geom.groups);
                let ws = weights
                    .iter()
                    .enumerate()
                    .map(|(g, w)| (w.as_str(), g * og))
                    .collect();
                (ws, bias, Box::new(move |first, _, k| first / og * cg + k % cg))
            }
            Op::Depthwise { weight, bias, .. } => (vec![(weight.as_str(), 0)], bias, Box::new(|_, o, _| o)),
            Op::Dense { weight, bias, .. } => (vec![(weight.as_str(), 0)], bias, Box::new(|_, _, k| k)),
            _ => continue,
        };
        let Some(bias) = bias.as_deref().filter(|b| bias_readers.get(b) == Some(&1)) else {
            continue;
        };
        let mut shift: Vec<(usize, f64)> = Vec::new();
        for (name, first) in weights {
            let Some(w) = weight_at.get(name).map(|&i| &baked.weights[i]) else {
                continue;
            };
            if !matches!(w.storage, Storage::U8 { .. }) {
                continue;
            }
            let (q, f) = (w.dequantized(), &plan.tensor(name).data);
            for r in 0..w.rows {
                let o = first + r;
                let delta: f64 = (0..w.cols)
                    .map(|k| {
                        let c = channel(first, o, k);
                        let e = mean.get(c).copied().unwrap_or(0.0);
                        (f64::from(q[r * w.cols + k]) - f64::from(f[r * w.cols + k])) * e
                    })
                    .sum();
                shift.push((o, delta));
            }
        }
        if let Some(b) = float_at.get(bias).map(|&i| &mut baked.floats[i]) {
            for (o, delta) in shift {
                // Means past f32 (a float pass that overflows on synthetic
                // images, say) leave the bias as the file has it.
                let corrected = (f64::from(b.values[o]) - delta) as f32;
                if corrected.is_finite() {
                    b.values[o] = corrected;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipped_normal_means() {
        // Unclipped: the mean. ReLU of N(0, 1): 1 / sqrt(2 pi).
        assert!((clipped_normal_mean(0.7, 2.0, f64::NEG_INFINITY, f64::INFINITY) - 0.7).abs() < 1e-7);
        let relu = clipped_normal_mean(0.0, 1.0, 0.0, f64::INFINITY);
        assert!(
            (relu - 1.0 / (2.0 * std::f64::consts::PI).sqrt()).abs() < 1e-6,
            "{relu}"
        );
        // Far inside the window: the mean; far outside: the bound.
        assert!((clipped_normal_mean(3.0, 0.01, 0.0, 6.0) - 3.0).abs() < 1e-6);
        assert!((clipped_normal_mean(10.0, 0.5, 0.0, 6.0) - 6.0).abs() < 1e-6);
        assert!(clipped_normal_mean(-10.0, 0.5, 0.0, 6.0).abs() < 1e-6);
        // No spread: the clamp.
        assert_eq!(clipped_normal_mean(7.0, 0.0, 0.0, 6.0), 6.0);
        // Symmetric about 3 on [0, 6]: 3.
        assert!((clipped_normal_mean(3.0, 4.0, 0.0, 6.0) - 3.0).abs() < 1e-6);
    }
}
