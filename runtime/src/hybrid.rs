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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DequantCache, QuantParams};
    use proptest::prelude::*;

    fn weight(rows: usize, cols: usize, data: &'static [u8], params: QuantParams) -> QuantWeight {
        QuantWeight {
            name: "w",
            rows,
            cols,
            data,
            params,
            cache: DequantCache::new(),
        }
    }

    fn leak<T>(v: Vec<T>) -> &'static [T] {
        Box::leak(v.into_boxed_slice())
    }

    proptest! {
        #[test]
        fn row_quantization_is_symmetric_and_within_half_a_step(x in prop::collection::vec(-1e4f32..1e4, 1..300)) {
            let mut q = vec![0i8; x.len()];
            let scale = quantize_row(&x, &mut q);
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            prop_assert_eq!(scale, amax / 127.0);
            for (&v, &q) in x.iter().zip(&q) {
                prop_assert!(q != i8::MIN, "-128 is never used");
                prop_assert!((v - f32::from(q) * scale).abs() <= scale * 0.5001);
            }
        }

        /// The integer formula equals the float product of the dequantized
        /// operands: the zero-point correction is right.
        #[test]
        fn gemm_matches_dequantized_float_product(
            m in 1usize..4, n in 1usize..6, k in 1usize..40, seed in any::<u64>(), per_channel in any::<bool>(),
        ) {
            let mut s = seed | 1;
            let mut next = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
            let data = leak((0..n * k).map(|_| next() as u8).collect());
            let channels = if per_channel { n } else { 1 };
            let zero_point = leak((0..channels).map(|_| next() as u8).collect());
            let scale = leak((0..channels).map(|i| 0.001 * (i + 1) as f32).collect());
            let w = weight(n, k, data, QuantParams { min: &[], max: &[], scale, zero_point });
            let x: Vec<f32> = (0..m * k).map(|_| (next() % 2001) as f32 / 100.0 - 10.0).collect();
            let bias: Vec<f32> = (0..n).map(|j| j as f32 - 1.0).collect();
            let qx = QuantizedRows::quantize(&x, k);
            let mut y = vec![0.0; m * n];
            gemm_reference(&qx, &w, Some(&bias), Activation::None, &mut y);
            let wf = w.dequantize();
            for r in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| f64::from(wf[j * k + i]) * f64::from(qx.values[r * k + i]) * f64::from(qx.scales[r]))
                        .sum::<f64>() + f64::from(bias[j]);
                    let mag: f64 = (0..k).map(|i| (f64::from(wf[j * k + i]) * 127.0 * f64::from(qx.scales[r])).abs()).sum();
                    prop_assert!((f64::from(y[r * n + j]) - want).abs() <= 1e-5 * (mag + 1.0), "{} vs {want}", y[r * n + j]);
                }
            }
        }
    }

    #[test]
    fn zero_rows_take_the_short_path() {
        let mut q = [5i8; 4];
        assert_eq!(quantize_row(&[0.0, -0.0, 0.0, 0.0], &mut q), 0.0);
        assert_eq!(q, [0; 4]);
        // NaN is skipped by the max and maps to 0.
        let scale = quantize_row(&[f32::NAN, 1.0, -2.0, 0.5], &mut q);
        assert_eq!((scale, q), (2.0 / 127.0, [0, 64, -127, 32]));
    }

    /// Extremes: every product at its largest, summed over the largest exact K.
    /// 16-bit pairwise sums (255 * 127 * 2 = 64770) would saturate at 32767.
    #[test]
    fn extreme_operands_sum_exactly() {
        for (q_w, q_x, zp) in [(255u8, 127i8, 0u8), (0, -127, 255), (255, -127, 0)] {
            let k = MAX_EXACT_K;
            let w = weight(
                1,
                k,
                leak(vec![q_w; k]),
                QuantParams {
                    min: &[],
                    max: &[],
                    scale: &[1.0],
                    zero_point: leak(vec![zp]),
                },
            );
            let x = QuantizedRows {
                values: vec![q_x; k],
                scales: vec![1.0],
                sums: vec![i32::from(q_x) * k as i32],
            };
            let mut y = [0.0];
            gemm_reference(&x, &w, None, Activation::None, &mut y);
            let exact = (i64::from(q_w) - i64::from(zp)) * i64::from(q_x) * k as i64;
            assert_eq!(y[0], exact as f32, "q_w {q_w} q_x {q_x} zp {zp}");
        }
        // Two products of 255 * 127: past i16, exact here.
        let w = weight(
            1,
            2,
            &[255, 255],
            QuantParams {
                min: &[],
                max: &[],
                scale: &[1.0],
                zero_point: &[0],
            },
        );
        let x = QuantizedRows {
            values: vec![127, 127],
            scales: vec![1.0],
            sums: vec![254],
        };
        let mut y = [0.0];
        gemm_reference(&x, &w, None, Activation::None, &mut y);
        assert_eq!(y[0], 64770.0);
    }
}
