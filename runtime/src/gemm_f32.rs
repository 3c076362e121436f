//! f32 matrix products for [`Kernels::Dequant`](crate::Kernels::Dequant).
//!
//! The reference kernel: plain loops, the definition fast kernels are tested against.

use crate::ops::Activation;

/// `y[m, n] = act(sum_k x[m, k] * w[n, k] + bias[n])` for `x` of `m` rows of
/// `k`, and `w` of `n` rows of `k` (row-major, output-major).
pub fn gemm_reference(x: &[f32], w: &[f32], k: usize, bias: Option<&[f32]>, act: Activation, y: &mut [f32]) {
    let n = w.len() / k;
    assert_eq!(w.len(), n * k, "weight is not a whole number of rows");
    assert_eq!(x.len() / k * n, y.len(), "x and y disagree on the row count");
    for (x_row, y_row) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
        for (j, (out, w_row)) in y_row.iter_mut().zip(w.chunks_exact(k)).enumerate() {
            let dot: f32 = x_row.iter().zip(w_row).map(|(a, b)| a * b).sum();
            *out = act.apply(dot + bias.map_or(0.0, |b| b[j]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_hand_checked_product() {
        // x = [[1, 2], [3, 4]], w = [[1, 0], [0, 1], [1, 1]] (3 outputs), bias [0, 0, -10]
        let mut y = [0.0; 6];
        gemm_reference(
            &[1.0, 2.0, 3.0, 4.0],
            &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            2,
            Some(&[0.0, 0.0, -10.0]),
            Activation::Relu,
            &mut y,
        );
        assert_eq!(y, [1.0, 2.0, 0.0, 3.0, 4.0, 0.0]);
    }
}
