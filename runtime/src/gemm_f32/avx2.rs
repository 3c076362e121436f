//! The x86-64 AVX2+FMA f32 microkernel: a 6 x 16 tile in 12 registers.

use super::{Epilogue, MR, NR, Tile};
use crate::ops::Activation;
use std::arch::x86_64::*;

/// # Safety
/// The CPU must have AVX2 and FMA, and `t` must have passed `Tile::check`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile(t: Tile<'_>) {
    // One kernel per row count: edge tiles compute only the rows they have.
    // SAFETY: as the caller guarantees.
    unsafe {
        match t.rows {
            1 => tile_rows::<1>(t),
            2 => tile_rows::<2>(t),
            3 => tile_rows::<3>(t),
            4 => tile_rows::<4>(t),
            5 => tile_rows::<5>(t),
            _ => tile_rows::<MR>(t),
        }
    }
}

/// # Safety
/// As [`tile`], with `t.rows == R`.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_rows<const R: usize>(t: Tile<'_>) {
    let rows: [*const f32; R] = std::array::from_fn(|r| t.a[r * t.lda..].as_ptr());
    if t.cols == NR {
        // SAFETY: `check` proved R rows of `ldc` and NR columns in `c`.
        unsafe {
            kernel::<R>(
                rows,
                t.panel.as_ptr(),
                t.kc,
                t.c.as_mut_ptr(),
                t.ldc,
                t.first,
                t.epilogue,
            )
        };
        return;
    }
    // Edge columns: through a full-width buffer.
    let mut buf = [[0.0f32; NR]; R];
    if !t.first {
        for (r, row) in buf.iter_mut().enumerate() {
            row[..t.cols].copy_from_slice(&t.c[r * t.ldc..r * t.ldc + t.cols]);
        }
    }
    // SAFETY: `buf` is R rows of NR floats, row stride NR.
    unsafe {
        kernel::<R>(
            rows,
            t.panel.as_ptr(),
            t.kc,
            buf.as_mut_ptr().cast(),
            NR,
            t.first,
            t.epilogue,
        )
    };
    for (r, row) in buf.iter().enumerate() {
        t.c[r * t.ldc..r * t.ldc + t.cols].copy_from_slice(&row[..t.cols]);
    }
}

/// `c[r][j] = (first ? 0 : c[r][j]) + sum_kk a[r][kk] * b[kk][j]`, then the epilogue.
///
/// # Safety
/// Each `a[r]` has `kc` readable floats, `b` has `kc * NR`, and `c` has R
/// rows of stride `ldc` with NR writable floats each.
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel<const R: usize>(
    a: [*const f32; R],
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
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
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
            let bias = [
                _mm256_loadu_ps(e.bias.as_ptr()),
                _mm256_loadu_ps(e.bias.as_ptr().add(8)),
            ];
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
        Activation::Clip { min, max } => {
            _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(min)), _mm256_set1_ps(max))
        }
    }
}
