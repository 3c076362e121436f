//! The x86-64 AVX-512 depthwise kernel: sixteen channels per vector, the
//! last few through a lane mask. Each output is the same FMA chain as in
//! the AVX2 kernel, so the two give the same bits.

use super::depthwise::Pixels;
use crate::gemm_f32::avx512::activate;
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
                        _mm512_storeu_ps(o.add(p * c + ch + 16 * k), activate(*acc, act));
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
                    _mm512_mask_storeu_ps(o.add(p * c + ch), mask, activate(*acc, act));
                }
                ch += 16;
            }
        }
    }
}
