//! The x86-64 AVX2+FMA depthwise kernel: eight channels per vector.

use super::Conv2d;
use crate::gemm_f32::avx2::activate;
use crate::ops::Activation;
use std::arch::x86_64::*;
use std::ops::Range;

/// # Safety
/// The CPU must have AVX2 and FMA; the slices have the sizes
/// `super::depthwise_with` checks, `y` holding the output rows `rows`
/// (`batch * out_h` in all).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn depthwise(
    x: &[f32],
    g: &Conv2d,
    taps: &[f32],
    bias: &[f32],
    act: Activation,
    rows: Range<usize>,
    y: &mut [f32],
) {
    let c = g.in_c;
    let (oh_n, ow_n) = (g.out_h(), g.out_w());
    let kk = g.kh * g.kw;
    // (pixel offset, tap offset) of the taps inside the input, for one
    // output pixel: on the stack for kernels up to 7x7.
    let mut stack = [(0usize, 0usize); 49];
    let mut heap = Vec::new();
    let inside_buf: &mut [(usize, usize)] = if kk <= stack.len() {
        &mut stack
    } else {
        heap.resize(kk, (0, 0));
        &mut heap
    };
    // An output pixel whose window lies inside the input (most of them)
    // reads every tap at a fixed offset from the window's corner.
    let span_h = g.dilation[0] * (g.kh - 1) + 1;
    let span_w = g.dilation[1] * (g.kw - 1) + 1;
    let mut outs = y.chunks_exact_mut(c);
    for row in rows {
        let (b, oh) = (row / oh_n, row % oh_n);
        let image = &x[b * g.in_h * g.in_w * c..(b + 1) * g.in_h * g.in_w * c];
        {
            for ow in 0..ow_n {
                let out = outs.next().expect("sized by the caller");
                let top = (oh * g.stride[0]).checked_sub(g.pads[0]);
                let left = (ow * g.stride[1]).checked_sub(g.pads[1]);
                let count = match (top, left) {
                    (Some(t), Some(l)) if t + span_h <= g.in_h && l + span_w <= g.in_w => {
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let (ih, iw) = (t + i * g.dilation[0], l + j * g.dilation[1]);
                                inside_buf[i * g.kw + j] = ((ih * g.in_w + iw) * c, (i * g.kw + j) * c);
                            }
                        }
                        kk
                    }
                    _ => {
                        let mut count = 0;
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                if let Some((ih, iw)) = g.tap(oh, ow, i, j) {
                                    inside_buf[count] = ((ih * g.in_w + iw) * c, (i * g.kw + j) * c);
                                    count += 1;
                                }
                            }
                        }
                        count
                    }
                };
                // SAFETY: the offsets are of in-bounds pixels of `image` and
                // taps of `taps`, c values each, and every block read ends
                // at or before c.
                unsafe { pixel(image, taps, bias, &inside_buf[..count], act, out) };
            }
        }
    }
}

/// One output pixel: for each channel, `bias + sum over the taps inside of
/// x * w`, one FMA per tap in tap order. Four blocks of eight channels at a
/// time, so that four independent FMA chains hide the FMA latency.
///
/// # Safety
/// AVX2 and FMA; each `(p, t)` in `inside` has `p + c <= image.len()` and
/// `t + c <= taps.len()`, with `c = out.len() = bias.len()`.
#[target_feature(enable = "avx2,fma")]
unsafe fn pixel(
    image: &[f32],
    taps: &[f32],
    bias: &[f32],
    inside: &[(usize, usize)],
    act: Activation,
    out: &mut [f32],
) {
    let c = out.len();
    let (img, tp, o) = (image.as_ptr(), taps.as_ptr(), out.as_mut_ptr());
    let mut ch = 0;
    // SAFETY (every block below): ch + 8 * blocks <= c, and the caller's offsets.
    unsafe {
        while ch + 32 <= c {
            let b = bias.as_ptr().add(ch);
            let (mut a0, mut a1) = (_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8)));
            let (mut a2, mut a3) = (_mm256_loadu_ps(b.add(16)), _mm256_loadu_ps(b.add(24)));
            for &(p, t) in inside {
                let (v, w) = (img.add(p + ch), tp.add(t + ch));
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v), _mm256_loadu_ps(w), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(v.add(8)), _mm256_loadu_ps(w.add(8)), a1);
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(v.add(16)), _mm256_loadu_ps(w.add(16)), a2);
                a3 = _mm256_fmadd_ps(_mm256_loadu_ps(v.add(24)), _mm256_loadu_ps(w.add(24)), a3);
            }
            _mm256_storeu_ps(o.add(ch), activate(a0, act));
            _mm256_storeu_ps(o.add(ch + 8), activate(a1, act));
            _mm256_storeu_ps(o.add(ch + 16), activate(a2, act));
            _mm256_storeu_ps(o.add(ch + 24), activate(a3, act));
            ch += 32;
        }
        while ch + 8 <= c {
            let mut acc = _mm256_loadu_ps(bias.as_ptr().add(ch));
            for &(p, t) in inside {
                let v = _mm256_loadu_ps(img.add(p + ch));
                let w = _mm256_loadu_ps(tp.add(t + ch));
                acc = _mm256_fmadd_ps(v, w, acc);
            }
            _mm256_storeu_ps(o.add(ch), activate(acc, act));
            ch += 8;
        }
    }
    for ch in ch..c {
        let acc = inside
            .iter()
            .fold(bias[ch], |acc, &(p, t)| image[p + ch].mul_add(taps[t + ch], acc));
        out[ch] = act.apply(acc);
    }
}
