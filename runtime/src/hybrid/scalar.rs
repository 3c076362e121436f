//! The portable hybrid kernels: the tile contract and the row quantizer in
//! plain Rust, reading the same packed bytes as the SIMD ones.

use super::{MR, Tile};
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

pub fn tile(t: Tile<'_>) {
    let mut dot = [[0i32; NR]; MR];
    for g in 0..t.groups {
        let w = &t.panel[g * NR * KG..(g + 1) * NR * KG];
        for (r, dot) in dot.iter_mut().enumerate().take(t.rows) {
            let a = &t.a[r * t.lda + g * KG..r * t.lda + (g + 1) * KG];
            for (j, dot) in dot.iter_mut().enumerate() {
                for i in 0..KG {
                    *dot += i32::from(w[j * KG + i] as i8) * i32::from(a[i]);
                }
            }
        }
    }
    let p = t.params;
    for (r, dot) in dot.iter().enumerate().take(t.rows) {
        let out = &mut t.c[r * t.ldc..r * t.ldc + t.cols];
        for (j, out) in out.iter_mut().enumerate() {
            let acc = dot[j] - p.zero_point[j] * t.sums[r];
            *out = t.act.apply(acc as f32 * (p.scale[j] * t.scales[r]) + p.bias[j]);
        }
    }
}
