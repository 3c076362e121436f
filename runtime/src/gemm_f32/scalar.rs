//! The portable f32 kernel: the strip contract in plain Rust.

use super::{NR, Strip};

pub fn strip(s: &mut Strip<'_>) {
    for r in 0..s.rows {
        let mut acc = [0.0f32; NR];
        if !s.first {
            acc[..s.cols].copy_from_slice(&s.c[r * s.ldc..r * s.ldc + s.cols]);
        }
        let a = &s.a[r * s.lda..r * s.lda + s.kc];
        for (kk, &a) in a.iter().enumerate() {
            for (acc, &b) in acc.iter_mut().zip(&s.panel[kk * NR..(kk + 1) * NR]) {
                *acc += a * b;
            }
        }
        let out = &mut s.c[r * s.ldc..r * s.ldc + s.cols];
        for (j, (out, &v)) in out.iter_mut().zip(&acc).enumerate() {
            *out = match s.epilogue {
                Some(e) => e.act.apply(v + e.bias[j]),
                None => v,
            };
        }
    }
}
