//! The x86-64 AVX2+FMA f32 microkernel: a 6 x 16 tile in 12 registers.

use super::{Epilogue, MR, NR, PackedF32, Strip};
use crate::ops::Activation;
use crate::tiles::row_tiles;
use std::arch::x86_64::*;
use std::ops::Range;

/// # Safety
/// The CPU must have AVX2 and FMA, and `s` must have passed `Strip::check`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn strip(s: &mut Strip<'_>) {
    assert!(s.cols <= NR, "one panel per strip");
    let c = s.c.as_mut_ptr();
    // SAFETY: `check` proved every row and column a tile touches; each tile
    // call covers rows `m0..m0 + R` of the strip.
    unsafe {
        row_tiles!(s.rows, MR, |m0, R| tile::<R>(s, m0, c), [1 2 3 4 5]);
    }
}

/// Rows `m0..m0 + R` of the strip.
///
/// # Safety
/// AVX2 and FMA, `s` checked, `m0 + R <= s.rows`, and `c` is `s.c`'s start.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize>(s: &Strip<'_>, m0: usize, c: *mut f32) {
    let rows: [*const f32; R] = std::array::from_fn(|r| s.a[(m0 + r) * s.lda..].as_ptr());
    // SAFETY (whole body): `check` proved `kc` floats per row, the panel's
    // extent, and R rows of `ldc` with `cols` columns at row m0 of `c`.
    unsafe {
        let c = c.add(m0 * s.ldc);
        if s.cols == NR {
            kernel::<R>(rows, s.panel.as_ptr(), s.kc, c, s.ldc, s.first, s.epilogue);
            return;
        }
        // Edge columns: through a full-width buffer.
        let mut buf = [[0.0f32; NR]; R];
        if !s.first {
            for (r, row) in buf.iter_mut().enumerate() {
                std::ptr::copy_nonoverlapping(c.add(r * s.ldc), row.as_mut_ptr(), s.cols);
            }
        }
        kernel::<R>(
            rows,
            s.panel.as_ptr(),
            s.kc,
            buf.as_mut_ptr().cast(),
            NR,
            s.first,
            s.epilogue,
        );
        for (r, row) in buf.iter().enumerate() {
            std::ptr::copy_nonoverlapping(row.as_ptr(), c.add(r * s.ldc), s.cols);
        }
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
            let bounds = Bounds::new(e.act);
            for acc in acc.iter_mut() {
                for h in 0..2 {
                    acc[h] = bounds.apply(_mm256_add_ps(acc[h], bias[h]));
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(c.add(r * ldc), acc[0]);
            _mm256_storeu_ps(c.add(r * ldc + 8), acc[1]);
        }
    }
}

/// Panels [`row`] walks side by side: eight accumulator chains. A 1-row
/// tile has two, so it waits on the FMA latency: 45 GB/s of weights at
/// 1x1024x1001, where summing a buffer of that size reads 77 GB/s.
const ROW_PANELS: usize = 4;

/// One row `x` (`w.k` floats) against panels `panels` of `w`, into `y` (those
/// panels' columns), with bias (zeros when `None`) and `act`: a
/// matrix-vector product. Each output is the same chain of FMAs over `k`
/// as `kernel`'s, from zero, then `+ bias` and the bounds: the same bits
/// as the row computed in any tile, at any `KC` blocking.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn row(
    x: &[f32],
    w: &PackedF32,
    panels: Range<usize>,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    let (n, k) = (w.n, w.k);
    assert_eq!(x.len(), k, "x is not one row of K");
    assert!(
        panels.start < panels.end && panels.end <= n.div_ceil(NR),
        "panels out of range"
    );
    let n0 = panels.start * NR;
    assert_eq!(
        y.len(),
        (panels.end * NR).min(n) - n0,
        "y is not the panels' columns"
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), n);
    }
    let mut p = panels.start;
    while p < panels.end {
        let count = ROW_PANELS.min(panels.end - p);
        let cols = (count * NR).min(n - p * NR);
        let mut padded = [[0.0f32; NR]; ROW_PANELS];
        if let Some(b) = bias {
            padded.as_flattened_mut()[..cols].copy_from_slice(&b[p * NR..p * NR + cols]);
        }
        let mut out = [[0.0f32; NR]; ROW_PANELS];
        // SAFETY: AVX2 and FMA (the caller); panels `p..p + count` are in
        // `w` (asserted above), each `NR * k` floats.
        unsafe {
            let b = w.panels_from(p).as_ptr();
            match count {
                4 => row_panels::<4>(x, b, k, &padded, act, &mut out),
                3 => row_panels::<3>(x, b, k, &padded, act, &mut out),
                2 => row_panels::<2>(x, b, k, &padded, act, &mut out),
                _ => row_panels::<1>(x, b, k, &padded, act, &mut out),
            }
        }
        y[p * NR - n0..][..cols].copy_from_slice(&out.as_flattened()[..cols]);
        p += count;
    }
}

/// `out[i] = act(sum_kk x[kk] * b_i[kk] + bias[i])` for the `P` panels
/// `b_i = b + i * NR * k`.
///
/// # Safety
/// AVX2 and FMA; `b` has `P` panels of `NR * k` floats, `x` has `k`.
#[target_feature(enable = "avx2,fma")]
unsafe fn row_panels<const P: usize>(
    x: &[f32],
    b: *const f32,
    k: usize,
    bias: &[[f32; NR]; ROW_PANELS],
    act: Activation,
    out: &mut [[f32; NR]; ROW_PANELS],
) {
    // SAFETY (whole body): offsets stay within the extents above.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); 2]; P];
        for (kk, xk) in x.iter().enumerate() {
            let xv = _mm256_broadcast_ss(xk);
            for (i, acc) in acc.iter_mut().enumerate() {
                let w = b.add(i * NR * k + kk * NR);
                acc[0] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w), acc[0]);
                acc[1] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w.add(8)), acc[1]);
            }
        }
        let bounds = Bounds::new(act);
        for (i, acc) in acc.iter().enumerate() {
            for (h, acc) in acc.iter().enumerate() {
                let v = _mm256_add_ps(*acc, _mm256_loadu_ps(bias[i].as_ptr().add(8 * h)));
                _mm256_storeu_ps(out[i].as_mut_ptr().add(8 * h), bounds.apply(v));
            }
        }
    }
}

/// An activation's bounds in registers, made once per call:
/// [`Activation::apply`] on eight lanes, with the same results: `max_ps(v,
/// lo)` is `if v > lo { v } else { lo }` and `min_ps(v, hi)` is `if v < hi
/// { v } else { hi }`. Matching the activation for every vector had cost an
/// indirect jump and two broadcasts in each.
#[derive(Clone, Copy)]
pub(crate) struct Bounds {
    lo: __m256,
    hi: __m256,
    has_lo: bool,
    has_hi: bool,
}

impl Bounds {
    #[target_feature(enable = "avx2")]
    pub(crate) fn new(act: Activation) -> Self {
        let (lo, hi) = act.bounds();
        Bounds {
            lo: _mm256_set1_ps(lo.unwrap_or(0.0)),
            hi: _mm256_set1_ps(hi.unwrap_or(0.0)),
            has_lo: lo.is_some(),
            has_hi: hi.is_some(),
        }
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    pub(crate) fn apply(self, v: __m256) -> __m256 {
        let v = if self.has_lo { _mm256_max_ps(v, self.lo) } else { v };
        if self.has_hi { _mm256_min_ps(v, self.hi) } else { v }
    }
}
