//! The x86-64 AVX2+FMA depthwise kernel: eight channels per vector.

use super::Conv2d;
use crate::gemm_f32::avx2::activate;
use crate::ops::Activation;
use std::arch::x86_64::*;

/// # Safety
/// The CPU must have AVX2 and FMA; the slices have the sizes
/// `super::depthwise_with` checks.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn depthwise(x: &[f32], g: &Conv2d, taps: &[f32], bias: &[f32], act: Activation, y: &mut [f32]) {
    let c = g.in_c;
    let (oh_n, ow_n) = (g.out_h(), g.out_w());
    let blocks = c / 8;
    // (pixel offset in the image, tap offset) of the taps inside the input:
    // on the stack for kernels up to 7x7 (no allocation per call).
    let mut stack = [(0usize, 0usize); 49];
    let mut heap = Vec::new();
    let taps_buf: &mut [(usize, usize)] = if g.kh * g.kw <= stack.len() {
        &mut stack
    } else {
        heap.resize(g.kh * g.kw, (0, 0));
        &mut heap
    };
    let mut outs = y.chunks_exact_mut(c);
    for b in 0..g.batch {
        let image = &x[b * g.in_h * g.in_w * c..(b + 1) * g.in_h * g.in_w * c];
        for oh in 0..oh_n {
            for ow in 0..ow_n {
                let out = outs.next().expect("sized by the caller");
                let mut count = 0;
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        if let Some((ih, iw)) = g.tap(oh, ow, i, j) {
                            taps_buf[count] = ((ih * g.in_w + iw) * c, (i * g.kw + j) * c);
                            count += 1;
                        }
                    }
                }
                let inside = &taps_buf[..count];
                // SAFETY: pixel offsets are of in-bounds pixels of `image`
                // (c values each), tap offsets of `taps` (c values each), and
                // 8 * blk + 8 <= c for every block read.
                unsafe {
                    for blk in 0..blocks {
                        let ch = 8 * blk;
                        let mut acc = _mm256_loadu_ps(bias.as_ptr().add(ch));
                        for &(p, t) in inside {
                            let v = _mm256_loadu_ps(image.as_ptr().add(p + ch));
                            let w = _mm256_loadu_ps(taps.as_ptr().add(t + ch));
                            acc = _mm256_fmadd_ps(v, w, acc);
                        }
                        _mm256_storeu_ps(out.as_mut_ptr().add(ch), activate(acc, act));
                    }
                }
                for ch in 8 * blocks..c {
                    let acc = inside
                        .iter()
                        .fold(bias[ch], |acc, &(p, t)| image[p + ch].mul_add(taps[t + ch], acc));
                    out[ch] = act.apply(acc);
                }
            }
        }
    }
}
