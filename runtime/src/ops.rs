//! The ops a baked model's `forward` calls, in graph order.
//!
//! Shapes were checked at compile time; the asserts here guard against a
//! code generator bug, not user input.

use crate::hybrid::{self, QuantizedRows};
use crate::{Exec, Kernels, Weight, gemm_f32};

/// An activation fused into the op that produces its input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    None,
    /// `max(v, 0)`.
    Relu,
    /// `min(max(v, min), max)`; ReLU6 is `Clip { min: 0.0, max: 6.0 }`.
    Clip {
        min: f32,
        max: f32,
    },
}

impl Activation {
    /// Applies the activation. Defined as the SIMD kernels compute it
    /// (`max_ps`/`min_ps` return their second operand unless the first is
    /// strictly beyond it), so a NaN gives the lower bound (0 for `Relu`)
    /// and `None` passes it through.
    #[inline]
    pub fn apply(self, v: f32) -> f32 {
        let max = |v: f32, lo: f32| if v > lo { v } else { lo };
        let min = |v: f32, hi: f32| if v < hi { v } else { hi };
        match self {
            Activation::None => v,
            Activation::Relu => max(v, 0.0),
            Activation::Clip { min: lo, max: hi } => min(max(v, lo), hi),
        }
    }
}

/// Fully connected layer: `y[m, n] = act(sum_k x[m, k] * w[n, k] + bias[n])`,
/// with `x` of `m` rows of `w.cols()`.
pub fn dense(exec: &Exec, x: &[f32], w: &Weight, bias: Option<&[f32]>, act: Activation, y: &mut [f32]) {
    let (n, k) = (w.rows(), w.cols());
    assert!(
        x.len().is_multiple_of(k),
        "dense input is not a whole number of rows"
    );
    assert_eq!(y.len(), x.len() / k * n, "dense output has the wrong size");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias length differs from the output channels");
    }
    match (exec.kernels, w) {
        (Kernels::Hybrid, Weight::U8(qw)) => {
            let qx = QuantizedRows::quantize(x, k);
            hybrid::gemm_threads(hybrid::Kernel::detect(), exec.threads, &qx, qw, bias, act, y);
        }
        // Float weights (kept small) run in float in both families.
        _ => gemm_f32::gemm_threads(
            gemm_f32::Kernel::detect(),
            exec.threads,
            x,
            w.as_f32(),
            bias,
            act,
            y,
        ),
    }
}

/// Convolution with one group, NHWC: a GEMM over the input itself (1x1,
/// stride 1, no padding) or over its [`im2col`](crate::conv::im2col) rows, in
/// either kernel family. `w` is `[out_c, kh * kw * in_c]`.
pub fn conv2d(
    exec: &Exec,
    x: &[f32],
    g: &crate::conv::Conv2d,
    w: &Weight,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    g.check().expect("a valid geometry");
    assert_eq!(
        g.groups, 1,
        "grouped convolutions other than depthwise are not supported"
    );
    assert_eq!(
        (w.rows(), w.cols()),
        (g.out_c, g.patch_len()),
        "weights do not match the geometry"
    );
    if g.is_pointwise() {
        dense(exec, x, w, bias, act, y);
    } else {
        // Scratch per call for now; sizing it at compile time is issue 7's.
        let mut cols = vec![0.0f32; g.out_pixels() * g.patch_len()];
        crate::conv::im2col(x, g, &mut cols);
        dense(exec, &cols, w, bias, act, y);
    }
}

/// `y = act(a + b)` for two activations of the same shape.
pub fn add(a: &[f32], b: &[f32], act: Activation, y: &mut [f32]) {
    assert!(a.len() == b.len() && a.len() == y.len());
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        *y = act.apply(a + b);
    }
}

/// `y = act(x + c)` where `c` is broadcast over `x`'s leading dimensions
/// (its shape is a suffix of `x`'s).
pub fn add_constant(x: &[f32], c: &[f32], act: Activation, y: &mut [f32]) {
    assert!(x.len() == y.len() && !c.is_empty() && x.len().is_multiple_of(c.len()));
    for (y_chunk, x_chunk) in y.chunks_exact_mut(c.len()).zip(x.chunks_exact(c.len())) {
        for ((y, &x), &c) in y_chunk.iter_mut().zip(x_chunk).zip(c) {
            *y = act.apply(x + c);
        }
    }
}

/// `y = act(x)`, for an activation that could not be fused.
pub fn activate(x: &[f32], act: Activation, y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    for (y, &x) in y.iter_mut().zip(x) {
        *y = act.apply(x);
    }
}

/// Softmax along one axis of a tensor viewed as `[outer, len, inner]`.
///
/// The maximum is subtracted first, so large logits do not overflow.
pub fn softmax(x: &[f32], outer: usize, len: usize, inner: usize, y: &mut [f32]) {
    assert!(x.len() == outer * len * inner && y.len() == x.len());
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| o * len * inner + j * inner + i;
            let max = (0..len).fold(f32::NEG_INFINITY, |m, j| m.max(x[at(j)]));
            let mut sum = 0.0;
            for j in 0..len {
                let e = (x[at(j)] - max).exp();
                y[at(j)] = e;
                sum += e;
            }
            for j in 0..len {
                y[at(j)] /= sum;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::{Conv2d, conv2d_reference};
    use crate::{DequantCache, FloatWeight, QuantParams, QuantWeight};

    /// A 3x3 stride-2 padded convolution and a 1x1 one, through `conv2d` in
    /// both families, against the definition run on the baked weights.
    #[test]
    fn conv2d_in_both_families() {
        for (k, stride, pads) in [(3, 2, [1, 1, 1, 1]), (1, 1, [0; 4]), (3, 1, [0, 0, 1, 1])] {
            let g = Conv2d {
                batch: 1,
                in_h: 7,
                in_w: 6,
                in_c: 5,
                out_c: 20,
                kh: k,
                kw: k,
                stride: [stride; 2],
                dilation: [1, 1],
                pads,
                groups: 1,
            };
            let x: Vec<f32> = (0..7 * 6 * 5)
                .map(|i| ((i * 37) % 23) as f32 / 11.0 - 1.0)
                .collect();
            let q: Vec<u8> = (0..20 * g.patch_len()).map(|i| (i * 97 % 256) as u8).collect();
            let w = QuantWeight {
                name: "w",
                rows: 20,
                cols: g.patch_len(),
                packed: Box::leak(crate::format::pack_b_s8(&q, 20, g.patch_len()).into_boxed_slice()),
                params: QuantParams {
                    min: &[],
                    max: &[],
                    scale: &[0.01],
                    zero_point: &[128],
                },
                cache: DequantCache::new(),
            };
            let wf: Vec<f32> = (0..20)
                .flat_map(|n| (0..g.patch_len()).map(move |kk| (n, kk)))
                .map(|(n, kk)| w.dequantized().get(n, kk))
                .collect();
            let bias: Vec<f32> = (0..20).map(|i| i as f32 * 0.1).collect();
            let mut want = vec![0.0; g.out_pixels() * 20];
            conv2d_reference(&x, &g, &wf, Some(&bias), Activation::None, &mut want);
            let weight = Weight::U8(w);
            for kernels in [Kernels::Dequant, Kernels::Hybrid] {
                let mut y = vec![f32::NAN; want.len()];
                conv2d(
                    &Exec::new(kernels),
                    &x,
                    &g,
                    &weight,
                    Some(&bias),
                    Activation::None,
                    &mut y,
                );
                // Hybrid rounds each patch to ±127 steps of max|patch| / 127.
                let tol = if kernels == Kernels::Hybrid { 0.02 } else { 1e-5 };
                for (a, b) in y.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= tol * (1.0 + b.abs()),
                        "{kernels:?} k{k}: {a} vs {b}"
                    );
                }
            }
            // Float weights run in float in both families.
            let weight = Weight::F32(FloatWeight {
                name: "wf",
                rows: 20,
                cols: g.patch_len(),
                data: Box::leak(wf.into_boxed_slice()),
                cache: DequantCache::new(),
            });
            let mut y = vec![0.0; want.len()];
            conv2d(
                &Exec::new(Kernels::Hybrid),
                &x,
                &g,
                &weight,
                Some(&bias),
                Activation::None,
                &mut y,
            );
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()));
            }
        }
    }

    #[test]
    fn softmax_along_middle_axis() {
        // shape [1, 2, 2], axis 1: pairs (x[0], x[2]) and (x[1], x[3]).
        let mut y = [0.0; 4];
        softmax(&[0.0, 1000.0, 0.0, 1000.0], 1, 2, 2, &mut y);
        assert_eq!(y, [0.5; 4]);
        softmax(&[0.0, 0.0, 2.0f32.ln(), 0.0], 1, 2, 2, &mut y);
        assert!((y[0] - 1.0 / 3.0).abs() < 1e-6 && (y[2] - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn add_constant_broadcasts_over_rows() {
        let mut y = [0.0; 4];
        add_constant(&[1.0, 2.0, 3.0, 4.0], &[10.0, -10.0], Activation::Relu, &mut y);
        assert_eq!(y, [11.0, 0.0, 13.0, 0.0]);
    }

    #[test]
    fn activations_clip_and_map_nan_to_lower_bound() {
        let relu6 = Activation::Clip { min: 0.0, max: 6.0 };
        assert_eq!(
            [-1.0, 3.0, 9.0, f32::NAN].map(|v| relu6.apply(v)),
            [0.0, 3.0, 6.0, 0.0]
        );
        assert_eq!(Activation::Relu.apply(f32::NAN), 0.0);
        assert_eq!(Activation::Relu.apply(-0.5), 0.0);
    }
}
