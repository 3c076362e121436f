//! The x86-64 AVX-512 f32 microkernel: a 12 x 16 tile, one 16-lane
//! register per row, on the same packed panels as the AVX2 one (16
//! channels per panel, so one vector per K step).

use super::{Epilogue, NR, Strip};
use crate::ops::Activation;
use std::arch::x86_64::*;

/// Rows of a tile: 12 accumulators, the panel's vector, and room for the
/// broadcasts, of 32 registers.
pub const MR: usize = 12;

/// # Safety
/// The CPU must have AVX-512F, and `s` must have passed `Strip::check`.
#[target_feature(enable = "avx512f")]
pub unsafe fn strip(s: Strip<'_>) {
    let c = s.c.as_mut_ptr();
    // SAFETY: `check` proved every row and column a tile touches; each tile
    // call covers rows `m0..m0 + R` of the strip.
    unsafe {
        let mut m0 = 0;
        while m0 + MR <= s.rows {
            tile::<MR>(&s, m0, c);
            m0 += MR;
        }
        // Edge rows: a kernel of their own count, so no work is wasted.
        match s.rows - m0 {
            0 => {}
            1 => tile::<1>(&s, m0, c),
            2 => tile::<2>(&s, m0, c),
            3 => tile::<3>(&s, m0, c),
            4 => tile::<4>(&s, m0, c),
            5 => tile::<5>(&s, m0, c),
            6 => tile::<6>(&s, m0, c),
            7 => tile::<7>(&s, m0, c),
            8 => tile::<8>(&s, m0, c),
            9 => tile::<9>(&s, m0, c),
            10 => tile::<10>(&s, m0, c),
            _ => tile::<11>(&s, m0, c),
        }
    }
}

/// Rows `m0..m0 + R` of the strip: the first `s.cols` columns through a
/// lane mask (the panel is padded to 16 channels, the output is not).
///
/// # Safety
/// AVX-512F, `s` checked, `m0 + R <= s.rows`, and `c` is `s.c`'s start.
#[target_feature(enable = "avx512f")]
unsafe fn tile<const R: usize>(s: &Strip<'_>, m0: usize, c: *mut f32) {
    let rows: [*const f32; R] = std::array::from_fn(|r| s.a[(m0 + r) * s.lda..].as_ptr());
    let mask: __mmask16 = if s.cols == NR { !0 } else { (1u16 << s.cols) - 1 };
    // SAFETY (whole body): `check` proved `kc` floats per row, the panel's
    // extent, and R rows of `ldc` with `cols` columns at row m0 of `c`; the
    // masked loads and stores touch only those columns.
    unsafe {
        let c = c.add(m0 * s.ldc);
        let mut acc = [_mm512_setzero_ps(); R];
        if !s.first {
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_maskz_loadu_ps(mask, c.add(r * s.ldc));
            }
        }
        let b = s.panel.as_ptr();
        // Four inputs per pass: the rows' addresses (more than the free
        // registers) are recomputed once per pass rather than per input.
        let mut kk = 0;
        while kk + 4 <= s.kc {
            for u in 0..4 {
                let w = _mm512_loadu_ps(b.add((kk + u) * NR));
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(_mm512_set1_ps(*rows[r].add(kk + u)), w, *acc);
                }
            }
            kk += 4;
        }
        for kk in kk..s.kc {
            let w = _mm512_loadu_ps(b.add(kk * NR));
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(*rows[r].add(kk)), w, *acc);
            }
        }
        if let Some(Epilogue { bias, act }) = s.epilogue {
            let bias = _mm512_loadu_ps(bias.as_ptr());
            for acc in acc.iter_mut() {
                *acc = activate(_mm512_add_ps(*acc, bias), act);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(c.add(r * s.ldc), mask, *acc);
        }
    }
}

/// [`Activation::apply`] on sixteen lanes, with the same results (as the
/// AVX2 `activate`: `max_ps` keeps its second operand when the first is NaN).
#[target_feature(enable = "avx512f")]
pub(crate) fn activate(v: __m512, act: Activation) -> __m512 {
    match act {
        Activation::None => v,
        Activation::Relu => _mm512_max_ps(v, _mm512_setzero_ps()),
        Activation::Clip { min, max } => {
            _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(min)), _mm512_set1_ps(max))
        }
        // The op applies the per-channel upper bounds after.
        Activation::ClipChannels { min, .. } => _mm512_max_ps(v, _mm512_set1_ps(min)),
    }
}
