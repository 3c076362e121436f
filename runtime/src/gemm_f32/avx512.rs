//! The x86-64 AVX-512 f32 microkernel: a 12 x 32 tile over two panels side
//! by side (12 x 16 for a lone last panel), one 16-lane register per row
//! and panel, on the same packed panels as the AVX2 one (16 channels per
//! panel, so one vector per K step).

use super::{Epilogue, NR, Strip};
use crate::ops::Activation;
use crate::tiles::row_tiles;
use std::arch::x86_64::*;

/// Rows of a tile: 24 accumulators (two panels), the panels' two vectors
/// and a broadcast, of 32 registers. Each broadcast input feeds two FMAs.
pub const MR: usize = 12;

/// # Safety
/// The CPU must have AVX-512F, and `s` must have passed `Strip::check`.
#[target_feature(enable = "avx512f")]
pub unsafe fn strip(s: &mut Strip<'_>) {
    let c = s.c.as_mut_ptr();
    // SAFETY: `check` proved every row and column a tile touches; each tile
    // call covers rows `m0..m0 + R` of the strip.
    unsafe {
        if s.cols > NR {
            rows_of::<true>(s, c)
        } else {
            rows_of::<false>(s, c)
        }
    }
}

/// The strip's tiles, over two panels if `TWO`.
///
/// # Safety
/// As [`strip`], with `c` `s.c`'s start.
#[target_feature(enable = "avx512f")]
unsafe fn rows_of<const TWO: bool>(s: &Strip<'_>, c: *mut f32) {
    // SAFETY: as the caller's.
    unsafe {
        row_tiles!(s.rows, MR, |m0, R| tile::<R, TWO>(s, m0, c), [1 2 3 4 5 6 7 8 9 10 11]);
    }
}

/// Rows `m0..m0 + R` of the strip: the first `s.cols` columns of one panel,
/// or of two (`TWO`: all 16 of the first and `s.cols - 16` of the second),
/// through lane masks (panels are padded to 16 channels, the output is not).
///
/// # Safety
/// AVX-512F, `s` checked, `m0 + R <= s.rows`, `c` is `s.c`'s start, and
/// `TWO` only if `s.cols > NR`.
#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize, const TWO: bool>(s: &Strip<'_>, m0: usize, c: *mut f32) {
    const { assert!(R <= MR) };
    let rows: [*const f32; R] = std::array::from_fn(|r| s.a[(m0 + r) * s.lda..].as_ptr());
    let lanes = |cols: usize| -> __mmask16 { if cols >= NR { !0 } else { (1u16 << cols) - 1 } };
    let masks = if TWO {
        [!0, lanes(s.cols - NR)]
    } else {
        [lanes(s.cols), 0]
    };
    let panels = if TWO { 2 } else { 1 };
    // SAFETY (whole body): `check` proved `kc` floats per row, the panels'
    // extents (the second at `panel_stride`), the bias of both, and R rows
    // of `ldc` with `cols` columns at row m0 of `c`; the masked loads and
    // stores touch only those columns.
    unsafe {
        let c = c.add(m0 * s.ldc);
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        if !s.first {
            for (r, acc) in acc.iter_mut().enumerate() {
                for h in 0..panels {
                    acc[h] = _mm512_maskz_loadu_ps(masks[h], c.add(r * s.ldc + h * NR));
                }
            }
        }
        let b = [
            s.panel.as_ptr(),
            s.panel.as_ptr().add(if TWO { s.panel_stride } else { 0 }),
        ];
        let step = |acc: &mut [[__m512; 2]; R], kk: usize| {
            let w = [
                _mm512_loadu_ps(b[0].add(kk * NR)),
                _mm512_loadu_ps(b[1].add(kk * NR)),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*rows[r].add(kk));
                for h in 0..panels {
                    acc[h] = _mm512_fmadd_ps(x, w[h], acc[h]);
                }
            }
        };
        // Four inputs per pass: the rows' addresses (more than the free
        // registers) are recomputed once per pass rather than per input.
        let mut kk = 0;
        while kk + 4 <= s.kc {
            for u in 0..4 {
                step(&mut acc, kk + u);
            }
            kk += 4;
        }
        for kk in kk..s.kc {
            step(&mut acc, kk);
        }
        if let Some(Epilogue { bias, act }) = s.epilogue {
            let bias = [
                _mm512_loadu_ps(bias.as_ptr()),
                _mm512_loadu_ps(bias.as_ptr().add(if TWO { NR } else { 0 })),
            ];
            let bounds = Bounds::new(act);
            for acc in acc.iter_mut() {
                for h in 0..panels {
                    acc[h] = bounds.apply(_mm512_add_ps(acc[h], bias[h]));
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for h in 0..panels {
                _mm512_mask_storeu_ps(c.add(r * s.ldc + h * NR), masks[h], acc[h]);
            }
        }
    }
}

/// An activation's bounds in registers, made once per call:
/// [`Activation::apply`] on sixteen lanes, with the same results (as the
/// AVX2 `Bounds`: `max_ps` keeps its second operand when the first is NaN).
/// Matching the activation for every vector had cost an indirect jump and
/// two broadcasts in each (1-2% of a hybrid forward).
#[derive(Clone, Copy)]
pub(crate) struct Bounds {
    lo: __m512,
    hi: __m512,
    has_lo: bool,
    has_hi: bool,
}

impl Bounds {
    #[target_feature(enable = "avx512f")]
    pub(crate) fn new(act: Activation) -> Self {
        let (lo, hi) = act.bounds();
        Bounds {
            lo: _mm512_set1_ps(lo.unwrap_or(0.0)),
            hi: _mm512_set1_ps(hi.unwrap_or(0.0)),
            has_lo: lo.is_some(),
            has_hi: hi.is_some(),
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(crate) fn apply(self, v: __m512) -> __m512 {
        let v = if self.has_lo { _mm512_max_ps(v, self.lo) } else { v };
        if self.has_hi { _mm512_min_ps(v, self.hi) } else { v }
    }
}
