//! The portable f32 microkernel: the tile contract in plain Rust.

use super::{MR, NR, Tile};

pub fn tile(t: Tile<'_>) {
    let mut acc = [[0.0f32; NR]; MR];
    if !t.first {
        for (r, row) in acc.iter_mut().enumerate().take(t.rows) {
            row[..t.cols].copy_from_slice(&t.c[r * t.ldc..r * t.ldc + t.cols]);
        }
    }
    for kk in 0..t.kc {
        let b = &t.panel[kk * NR..(kk + 1) * NR];
        for (r, row) in acc.iter_mut().enumerate().take(t.rows) {
            let a = t.a[r * t.lda + kk];
            for (acc, &b) in row.iter_mut().zip(b) {
                *acc += a * b;
            }
        }
    }
    for (r, row) in acc.iter().enumerate().take(t.rows) {
        let out = &mut t.c[r * t.ldc..r * t.ldc + t.cols];
        for (j, (out, &v)) in out.iter_mut().zip(row).enumerate() {
            *out = match t.epilogue {
                Some(e) => e.act.apply(v + e.bias[j]),
                None => v,
            };
        }
    }
}
