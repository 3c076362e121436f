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
            hybrid::gemm(&qx, qw, bias, act, y);
        }
        // Float weights (kept small) run in float in both families.
        _ => gemm_f32::gemm(x, w.as_f32(), bias, act, y),
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
