//! The portable hybrid kernels: the strip contract and the row quantizer in
//! plain Rust, reading the same packed bytes as the SIMD ones.

use super::Strip;
use qbake_format::{KG, NR};

/// Quantizes a row ([`super::quantize_row`]) and returns `(scale, sum of q, no q negative)`.
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> (f32, i32, bool) {
    let scale = super::quantize_row(x, q);
    (
        scale,
        q.iter().map(|&v| i32::from(v)).sum(),
        q.iter().all(|&v| v >= 0),
    )
}

pub fn strip(s: &mut Strip<'_>) {
    let p = &s.params[0];
    for r in 0..s.rows {
        let a = &s.a[r * s.lda..r * s.lda + s.groups * KG];
        let out = &mut s.c[r * s.ldc..r * s.ldc + s.cols];
        for (j, out) in out.iter_mut().enumerate() {
            let mut dot = 0i32;
            for (g, a) in a.chunks_exact(KG).enumerate() {
                let w = &s.panel[g * NR * KG + j * KG..g * NR * KG + (j + 1) * KG];
                dot += w
                    .iter()
                    .zip(a)
                    .map(|(&w, &a)| i32::from(w as i8) * i32::from(a))
                    .sum::<i32>();
            }
            let acc = dot - p.zero_point[j] * s.sums[r];
            *out = s.act.apply(acc as f32 * (p.scale[j] * s.scales[r]) + p.bias[j]);
        }
    }
}
