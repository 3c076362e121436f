//! Hybrid arithmetic: 8-bit activations times 8-bit weights, exact in i32.
//!
//! For `y = W x + b` with `W` baked as u8 (`scale_w[n]`, `zero_point_w[n]`)
//! and each activation row quantized on the fly to symmetric int8
//! (`scale_x`, zero point 0, values in ±127):
//!
//! ```text
//! y[n] = (sum_k q_w[n,k] q_x[k] - z_w[n] sum_k q_x[k]) as f32 * (scale_w[n] * scale_x) + b[n]
//! ```
//!
//! This is DESIGN §3's formula with the activation zero point at 0, so the
//! `z_x sum_k q_w` and `K z_w z_x` terms vanish. Symmetric ±127 activations
//! are what lets a SIMD kernel move the weight's sign onto the activation
//! without overflow. Every term is an exact integer as long as
//! `K * 255 * 127 < 2^31` ([`MAX_EXACT_K`]); the code generator refuses larger K.
//!
//! The functions here are the scalar reference: any fast kernel must give
//! the same bits.

use crate::QuantWeight;
use crate::ops::Activation;

/// Largest inner dimension for which every i32 sum above is exact.
pub const MAX_EXACT_K: usize = (i32::MAX as usize) / (255 * 127);

/// Quantizes one activation row to symmetric int8 in ±127 and returns its
/// scale, so that `x[k] ≈ q[k] as f32 * scale`.
///
/// The scale is `max|x| / 127`; rounding is to nearest, ties to even. A row
/// of zeros (or one with no finite non-zero value) takes the short path: all
/// `q` are 0 and the scale is 0.
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
    assert_eq!(x.len(), q.len());
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 || !amax.is_finite() {
        q.fill(0);
        return 0.0;
    }
    let inv = 127.0 / amax;
    for (q, &v) in q.iter_mut().zip(x) {
        // `as` saturates and maps NaN to 0, so no input is undefined.
        *q = (v * inv).round_ties_even() as i8;
    }
    amax / 127.0
}

/// An activation matrix quantized row by row.
#[derive(Debug, Default, Clone)]
pub struct QuantizedRows {
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
    /// `sum_k q[m, k]` of each row, for the weight zero-point correction.
    pub sums: Vec<i32>,
}

impl QuantizedRows {
    /// Quantizes `x`, `k` values a row.
    pub fn quantize(x: &[f32], k: usize) -> Self {
        let mut values = vec![0i8; x.len()];
        let mut scales = Vec::with_capacity(x.len() / k);
        let mut sums = Vec::with_capacity(x.len() / k);
        for (x_row, q_row) in x.chunks_exact(k).zip(values.chunks_exact_mut(k)) {
            scales.push(quantize_row(x_row, q_row));
            sums.push(q_row.iter().map(|&v| i32::from(v)).sum());
        }
        QuantizedRows { values, scales, sums }
    }
}

/// `y[m, n] = act((sum_k q_w[n,k] q_x[m,k] - z_w[n] sum_k q_x[m,k]) as f32
/// * (scale_w[n] * scale_x[m]) + bias[n])`: the reference hybrid product.
pub fn gemm_reference(
    x: &QuantizedRows,
    w: &QuantWeight,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    let (n, k) = (w.rows, w.cols);
    assert!(k <= MAX_EXACT_K, "K = {k} is too large for exact i32 sums");
    assert_eq!(x.values.len(), x.scales.len() * k);
    assert_eq!(y.len(), x.scales.len() * n);
    for (m, y_row) in y.chunks_exact_mut(n).enumerate() {
        let q_x = &x.values[m * k..(m + 1) * k];
        let (scale_x, sum_x) = (x.scales[m], x.sums[m]);
        for (j, (out, q_w)) in y_row.iter_mut().zip(w.data.chunks_exact(k)).enumerate() {
            let (scale_w, zp_w) = w.params.of_row(j);
            let dot: i32 = q_w
                .iter()
                .zip(q_x)
                .map(|(&a, &b)| i32::from(a) * i32::from(b))
                .sum();
            let acc = dot - i32::from(zp_w) * sum_x;
            let v = acc as f32 * (scale_w * scale_x) + bias.map_or(0.0, |b| b[j]);
            *out = act.apply(v);
        }
    }
}
