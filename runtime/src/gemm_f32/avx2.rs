//! The x86-64 AVX2+FMA f32 microkernel: a 6 x 16 tile in 12 registers.

use super::{Epilogue, MR, NR, Tile};
use crate::ops::Activation;
use std::arch::x86_64::*;

/// # Safety
/// The CPU must have AVX2 and FMA, and `t` must have passed `Tile::check`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile(t: Tile<'_>) {
    // Rows past `rows` re-read the last valid row; their results are dropped.
    let rows: [*const f32; MR] = std::array::from_fn(|r| t.a[r.min(t.rows - 1) * t.lda..].as_ptr());
    if t.rows == MR && t.cols == NR {
        // SAFETY: a full tile: `check` proved MR rows of `ldc` and NR columns in `c`.
        unsafe { kernel(rows, t.panel.as_ptr(), t.kc, t.c.as_mut_ptr(), t.ldc, t.first, t.epilogue) };
        return;
    }
    let mut buf = [[0.0f32; NR]; MR];
    if !t.first {
        for (r, row) in buf.iter_mut().enumerate().take(t.rows) {
            row[..t.cols].copy_from_slice(&t.c[r * t.ldc..r * t.ldc + t.cols]);
        }
    }
    // SAFETY: `buf` is a full MR x NR tile with row stride NR.
    unsafe { kernel(rows, t.panel.as_ptr(), t.kc, buf.as_mut_ptr().cast(), NR, t.first, t.epilogue) };
    for (r, row) in buf.iter().enumerate().take(t.rows) {
        t.c[r * t.ldc..r * t.ldc + t.cols].copy_from_slice(&row[..t.cols]);
    }
}

/// `c[r][j] = (first ? 0 : c[r][j]) + sum_kk a[r][kk] * b[kk][j]`, then the epilogue.
///
/// # Safety
/// Each `a[r]` has `kc` readable floats, `b` has `kc * NR`, and `c` has MR
/// rows of stride `ldc` with NR writable floats each.
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel(
    a: [*const f32; MR],
    b: *const f32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    first: bool,
    epilogue: Option<Epilogue<'_>>,
) {
    // SAFETY (whole body): every pointer offset stays within the extents the
    // caller guarantees above.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        if !first {
            for (r, acc) in acc.iter_mut().enumerate() {
                acc[0] = _mm256_loadu_ps(c.add(r * ldc));
                acc[1] = _mm256_loadu_ps(c.add(r * ldc + 8));
            }
        }
        for kk in 0..kc {
            let b0 = _mm256_loadu_ps(b.add(kk * NR));
            let b1 = _mm256_loadu_ps(b.add(kk * NR + 8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a[r].add(kk));
                acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
            }
        }
        if let Some(e) = epilogue {
            let bias = [_mm256_loadu_ps(e.bias.as_ptr()), _mm256_loadu_ps(e.bias.as_ptr().add(8))];
            for acc in acc.iter_mut() {
                for h in 0..2 {
                    acc[h] = activate(_mm256_add_ps(acc[h], bias[h]), e.act);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(c.add(r * ldc), acc[0]);
            _mm256_storeu_ps(c.add(r * ldc + 8), acc[1]);
        }
    }
}

/// [`Activation::apply`] on eight lanes, with the same results: `max_ps(v, lo)`
/// is `if v > lo { v } else { lo }` and `min_ps(v, hi)` is `if v < hi { v } else { hi }`.
#[target_feature(enable = "avx2")]
pub fn activate(v: __m256, act: Activation) -> __m256 {
    match act {
        Activation::None => v,
        Activation::Relu => _mm256_max_ps(v, _mm256_setzero_ps()),
        Activation::Clip { min, max } => _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(min)), _mm256_set1_ps(max)),
    }
}
