//! The x86-64 AVX2+FMA depthwise kernel: eight channels per vector.

use super::depthwise::Pixels;
use super::direct::Direct;
use crate::gemm_f32::NR;
use crate::gemm_f32::avx2::Bounds;
use crate::ops::Activation;
use std::arch::x86_64::*;

/// Eight channels per vector.
pub(super) struct Avx2;

impl Pixels for Avx2 {
    /// With blocks of 8 channels.
    ///
    /// # Safety
    /// AVX2 and FMA, and the contract of [`Pixels::pixels`].
    #[target_feature(enable = "avx2,fma")]
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
        // SAFETY (every block below): ch + 8 * blocks <= c, and the caller's offsets.
        unsafe {
            while ch + 8 * B <= c {
                let b = bias.as_ptr().add(ch);
                let mut acc: [[__m256; B]; P] = [std::array::from_fn(|k| _mm256_loadu_ps(b.add(8 * k))); P];
                for &(off, t) in inside {
                    let w: [__m256; B] = std::array::from_fn(|k| _mm256_loadu_ps(tp.add(t + ch + 8 * k)));
                    for (p, acc) in acc.iter_mut().enumerate() {
                        let v = img.add(base + p * step + off + ch);
                        for (k, acc) in acc.iter_mut().enumerate() {
                            *acc = _mm256_fmadd_ps(_mm256_loadu_ps(v.add(8 * k)), w[k], *acc);
                        }
                    }
                }
                for (p, acc) in acc.iter().enumerate() {
                    for (k, acc) in acc.iter().enumerate() {
                        _mm256_storeu_ps(o.add(p * c + ch + 8 * k), bounds.apply(*acc));
                    }
                }
                ch += 8 * B;
            }
            while ch + 8 <= c {
                let mut acc = [_mm256_loadu_ps(bias.as_ptr().add(ch)); P];
                for &(off, t) in inside {
                    let w = _mm256_loadu_ps(tp.add(t + ch));
                    for (p, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm256_fmadd_ps(_mm256_loadu_ps(img.add(base + p * step + off + ch)), w, *acc);
                    }
                }
                for (p, acc) in acc.iter().enumerate() {
                    _mm256_storeu_ps(o.add(p * c + ch), bounds.apply(*acc));
                }
                ch += 8;
            }
        }
        for p in 0..P {
            for ch in ch..c {
                let acc = inside.iter().fold(bias[ch], |acc, &(off, t)| {
                    image[base + p * step + off + ch].mul_add(taps[t + ch], acc)
                });
                out[p * c + ch] = act.apply(acc);
            }
        }
    }

    /// With one block of 8 channels at a time, the last `c % 8` one by
    /// one, as in `pixels`.
    ///
    /// # Safety
    /// AVX2 and FMA, and the contract of [`Pixels::window`].
    #[target_feature(enable = "avx2,fma")]
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
        let bounds = Bounds::new(act);
        let mut ch = 0;
        // SAFETY (every block below): ch + 8 <= c, and the caller's offsets.
        unsafe {
            while ch + 8 <= c {
                let mut acc = [_mm256_loadu_ps(bias.as_ptr().add(ch)); P];
                for &(off, t) in rows {
                    let w: [__m256; KW] = std::array::from_fn(|j| _mm256_loadu_ps(tp.add(t + j * c + ch)));
                    let row = img.add(base + off + ch);
                    // Input column `col` is tap `j` of pixel `(col - j) / S`
                    // where that divides; in increasing `col`, each pixel
                    // takes its taps in order.
                    for col in 0..S * (P - 1) + KW {
                        let v = _mm256_loadu_ps(row.add(col * c));
                        for (j, w) in w.iter().enumerate() {
                            if col >= j && (col - j) % S == 0 && (col - j) / S < P {
                                let p = (col - j) / S;
                                acc[p] = _mm256_fmadd_ps(v, *w, acc[p]);
                            }
                        }
                    }
                }
                for (p, acc) in acc.iter().enumerate() {
                    _mm256_storeu_ps(o.add(p * c + ch), bounds.apply(*acc));
                }
                ch += 8;
            }
        }
        for p in 0..P {
            for ch in ch..c {
                let acc = rows.iter().fold(bias[ch], |acc, &(off, t)| {
                    (0..KW).fold(acc, |acc, j| {
                        image[base + p * S * c + off + j * c + ch].mul_add(taps[t + j * c + ch], acc)
                    })
                });
                out[p * c + ch] = act.apply(acc);
            }
        }
    }
}

impl Direct for Avx2 {
    /// One: two panels' accumulators for eight pixels would need 32 of the
    /// 16 registers.
    const PANELS: usize = 1;

    /// Six: eight pixels' accumulators (16) and the panel's two vectors
    /// and a broadcast would need 19 of the 16 registers.
    const GROUP: usize = 6;

    /// A panel's 16 channels in two vectors; a partial last panel's
    /// channels stored one by one.
    ///
    /// # Safety
    /// AVX2 and FMA, and the contract of [`Direct::pixels`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pixels<const P: usize>(
        image: &[f32],
        base: usize,
        step: usize,
        panel: &[f32],
        _panel_stride: usize,
        terms: &[(usize, usize)],
        bias: &[f32; 2 * NR],
        act: Activation,
        out: &mut [f32],
        ldo: usize,
        cols: usize,
    ) {
        let (img, w) = (image.as_ptr(), panel.as_ptr());
        let bounds = Bounds::new(act);
        // SAFETY: the caller's offsets.
        let acc = unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; P];
            for &(off, k) in terms {
                let w = [_mm256_loadu_ps(w.add(k * NR)), _mm256_loadu_ps(w.add(k * NR + 8))];
                for (p, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_set1_ps(*img.add(base + p * step + off));
                    acc[0] = _mm256_fmadd_ps(x, w[0], acc[0]);
                    acc[1] = _mm256_fmadd_ps(x, w[1], acc[1]);
                }
            }
            let b = [
                _mm256_loadu_ps(bias.as_ptr()),
                _mm256_loadu_ps(bias.as_ptr().add(8)),
            ];
            for acc in acc.iter_mut() {
                acc[0] = _mm256_add_ps(acc[0], b[0]);
                acc[1] = _mm256_add_ps(acc[1], b[1]);
            }
            acc
        };
        for (p, acc) in acc.iter().enumerate() {
            let row = &mut out[p * ldo..p * ldo + cols];
            if cols == NR {
                // SAFETY: `row` has 16 values.
                unsafe {
                    _mm256_storeu_ps(row.as_mut_ptr(), bounds.apply(acc[0]));
                    _mm256_storeu_ps(row.as_mut_ptr().add(8), bounds.apply(acc[1]));
                }
            } else {
                let mut all = [0.0f32; NR];
                // SAFETY: `all` has 16 values.
                unsafe {
                    _mm256_storeu_ps(all.as_mut_ptr(), bounds.apply(acc[0]));
                    _mm256_storeu_ps(all.as_mut_ptr().add(8), bounds.apply(acc[1]));
                }
                row.copy_from_slice(&all[..cols]);
            }
        }
    }
}
