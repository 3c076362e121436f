//! The x86-64 AVX-512 depthwise kernel: sixteen channels per vector, the
//! last few through a lane mask. Each output is the same FMA chain as in
//! the AVX2 kernel, so the two give the same bits.

use super::depthwise::Pixels;
use super::direct::Direct;
use crate::gemm_f32::NR;
use crate::gemm_f32::avx512::Bounds;
use crate::ops::Activation;
use std::arch::x86_64::*;

/// Sixteen channels per vector.
pub(super) struct Avx512;

impl Pixels for Avx512 {
    /// With blocks of 16 channels.
    ///
    /// # Safety
    /// AVX-512F, and the contract of [`Pixels::pixels`].
    #[target_feature(enable = "avx512f")]
    unsafe fn pixels<const P: usize, const B: usize>(
        image: &[f32],
        base: usize,
        step: usize,
        taps: &[f32],
        bias: &[f32],
        inside: &[(usize, usize)],
        act: Activation,
        out: &mut [f32],
    ) {
        let c = bias.len();
        debug_assert_eq!(out.len(), P * c);
        let (img, tp, o) = (image.as_ptr(), taps.as_ptr(), out.as_mut_ptr());
        let bounds = Bounds::new(act);
        let mut ch = 0;
        // SAFETY (every block below): ch + 16 * blocks <= c, or the mask covers
        // only channels below c; and the caller's offsets.
        unsafe {
            while ch + 16 * B <= c {
                let b = bias.as_ptr().add(ch);
                let mut acc: [[__m512; B]; P] = [std::array::from_fn(|k| _mm512_loadu_ps(b.add(16 * k))); P];
                for &(off, t) in inside {
                    let w: [__m512; B] = std::array::from_fn(|k| _mm512_loadu_ps(tp.add(t + ch + 16 * k)));
                    for (p, acc) in acc.iter_mut().enumerate() {
                        let v = img.add(base + p * step + off + ch);
                        for (k, acc) in acc.iter_mut().enumerate() {
                            *acc = _mm512_fmadd_ps(_mm512_loadu_ps(v.add(16 * k)), w[k], *acc);
                        }
                    }
                }
                for (p, acc) in acc.iter().enumerate() {
                    for (k, acc) in acc.iter().enumerate() {
                        _mm512_storeu_ps(o.add(p * c + ch + 16 * k), bounds.apply(*acc));
                    }
                }
                ch += 16 * B;
            }
            // The rest, 16 channels at a time, the last ones masked.
            while ch < c {
                let mask: __mmask16 = if c - ch >= 16 { !0 } else { (1u16 << (c - ch)) - 1 };
                let mut acc = [_mm512_maskz_loadu_ps(mask, bias.as_ptr().add(ch)); P];
                for &(off, t) in inside {
                    let w = _mm512_maskz_loadu_ps(mask, tp.add(t + ch));
                    for (p, acc) in acc.iter_mut().enumerate() {
                        let v = _mm512_maskz_loadu_ps(mask, img.add(base + p * step + off + ch));
                        *acc = _mm512_fmadd_ps(v, w, *acc);
                    }
                }
                for (p, acc) in acc.iter().enumerate() {
                    _mm512_mask_storeu_ps(o.add(p * c + ch), mask, bounds.apply(*acc));
                }
                ch += 16;
            }
        }
    }

    /// With one block of 16 channels at a time, the last ones masked (a
    /// separate loop: masked loads in the main one cost 15-25%).
    ///
    /// # Safety
    /// AVX-512F, and the contract of [`Pixels::window`].
    #[target_feature(enable = "avx512f")]
    unsafe fn window<const P: usize, const KW: usize, const S: usize>(
        image: &[f32],
        base: usize,
        taps: &[f32],
        bias: &[f32],
        rows: &[(usize, usize)],
        act: Activation,
        out: &mut [f32],
    ) {
        let c = bias.len();
        debug_assert_eq!(out.len(), P * c);
        let (img, tp, o) = (image.as_ptr(), taps.as_ptr(), out.as_mut_ptr());
        // One block of channels from `ch`; `load` reads 16 values (or the
        // mask's lanes) at a pointer.
        #[inline(always)]
        unsafe fn block<const P: usize, const KW: usize, const S: usize>(
            (img, tp, o): (*const f32, *const f32, *mut f32),
            (base, c, ch): (usize, usize, usize),
            bias: *const f32,
            rows: &[(usize, usize)],
            bounds: Bounds,
            load: impl Fn(*const f32) -> __m512,
            store: impl Fn(*mut f32, __m512),
        ) {
            // SAFETY: the caller's.
            unsafe {
                let mut acc = [load(bias.add(ch)); P];
                for &(off, t) in rows {
                    let w: [__m512; KW] = std::array::from_fn(|j| load(tp.add(t + j * c + ch)));
                    let row = img.add(base + off + ch);
                    // Input column `col` is tap `j` of pixel `(col - j) / S`
                    // where that divides; in increasing `col`, each pixel
                    // takes its taps in order.
                    for col in 0..S * (P - 1) + KW {
                        let v = load(row.add(col * c));
                        for (j, w) in w.iter().enumerate() {
                            if col >= j && (col - j) % S == 0 && (col - j) / S < P {
                                let p = (col - j) / S;
                                acc[p] = _mm512_fmadd_ps(v, *w, acc[p]);
                            }
                        }
                    }
                }
                for (p, acc) in acc.iter().enumerate() {
                    store(o.add(p * c + ch), bounds.apply(*acc));
                }
            }
        }
        let ptrs = (img, tp, o);
        let bounds = Bounds::new(act);
        let mut ch = 0;
        // SAFETY: whole blocks below c, then the rest under a mask of the
        // channels below c; and the caller's offsets.
        unsafe {
            while ch + 16 <= c {
                block::<P, KW, S>(
                    ptrs,
                    (base, c, ch),
                    bias.as_ptr(),
                    rows,
                    bounds,
                    |p| _mm512_loadu_ps(p),
                    |p, v| _mm512_storeu_ps(p, v),
                );
                ch += 16;
            }
            if ch < c {
                let mask: __mmask16 = (1u16 << (c - ch)) - 1;
                block::<P, KW, S>(
                    ptrs,
                    (base, c, ch),
                    bias.as_ptr(),
                    rows,
                    bounds,
                    |p| _mm512_maskz_loadu_ps(mask, p),
                    |p, v| _mm512_mask_storeu_ps(p, mask, v),
                );
            }
        }
    }
}

impl Direct for Avx512 {
    /// Two: each broadcast input value feeds both panels' FMAs (16
    /// accumulators for eight pixels).
    const PANELS: usize = 2;

    /// A panel's 16 channels in one vector, the last ones masked.
    ///
    /// # Safety
    /// AVX-512F, and the contract of [`Direct::pixels`].
    #[target_feature(enable = "avx512f")]
    unsafe fn pixels<const P: usize>(
        image: &[f32],
        base: usize,
        step: usize,
        panel: &[f32],
        panel_stride: usize,
        terms: &[(usize, usize)],
        bias: &[f32; 2 * NR],
        act: Activation,
        out: &mut [f32],
        ldo: usize,
        cols: usize,
    ) {
        /// `H` panels (1 or 2) of the pixels.
        #[inline(always)]
        unsafe fn panels<const P: usize, const H: usize>(
            (img, w, o): (*const f32, *const f32, *mut f32),
            (base, step, panel_stride, ldo, cols): (usize, usize, usize, usize, usize),
            terms: &[(usize, usize)],
            bias: &[f32; 2 * NR],
            bounds: Bounds,
        ) {
            let lanes = |h: usize| -> __mmask16 {
                let c = cols.saturating_sub(h * NR);
                if c >= NR { !0 } else { (1u16 << c) - 1 }
            };
            // SAFETY: the caller's offsets; the stores write `cols` lanes of
            // each pixel's row.
            unsafe {
                let mut acc = [[_mm512_setzero_ps(); H]; P];
                for &(off, k) in terms {
                    let mut wv = [_mm512_setzero_ps(); H];
                    for (h, wv) in wv.iter_mut().enumerate() {
                        *wv = _mm512_loadu_ps(w.add(h * panel_stride + k * NR));
                    }
                    for (p, acc) in acc.iter_mut().enumerate() {
                        let x = _mm512_set1_ps(*img.add(base + p * step + off));
                        for (acc, wv) in acc.iter_mut().zip(&wv) {
                            *acc = _mm512_fmadd_ps(x, *wv, *acc);
                        }
                    }
                }
                for (p, acc) in acc.iter().enumerate() {
                    for (h, acc) in acc.iter().enumerate() {
                        let bias = _mm512_loadu_ps(bias.as_ptr().add(h * NR));
                        let v = bounds.apply(_mm512_add_ps(*acc, bias));
                        _mm512_mask_storeu_ps(o.add(p * ldo + h * NR), lanes(h), v);
                    }
                }
            }
        }
        let ptrs = (image.as_ptr(), panel.as_ptr(), out.as_mut_ptr());
        let dims = (base, step, panel_stride, ldo, cols);
        let bounds = Bounds::new(act);
        // SAFETY: the caller's.
        unsafe {
            if cols > NR {
                panels::<P, 2>(ptrs, dims, terms, bias, bounds)
            } else {
                panels::<P, 1>(ptrs, dims, terms, bias, bounds)
            }
        }
    }
}
