//! The x86-64 AVX2+FMA depthwise kernel: eight channels per vector, four
//! neighbouring output pixels at a time where their windows lie inside the
//! input.

use super::Conv2d;
use crate::gemm_f32::avx2::activate;
use crate::ops::Activation;
use std::arch::x86_64::*;
use std::ops::Range;

/// Output pixels computed together: each tap vector loaded once serves
/// all of them, and two channel blocks of each give eight independent FMA
/// chains, enough to hide the FMA latency.
const PIXELS: usize = 4;

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
    let inside: &mut [(usize, usize)] = if kk <= stack.len() {
        &mut stack
    } else {
        heap.resize(kk, (0, 0));
        &mut heap
    };
    // Output columns whose window lies inside the input horizontally: there
    // every tap sits at a fixed offset from the window's corner, and the
    // next pixel's window is `stride * c` values further on.
    let span_h = g.dilation[0] * (g.kh - 1) + 1;
    let span_w = g.dilation[1] * (g.kw - 1) + 1;
    let (sw, left_pad) = (g.stride[1], g.pads[1]);
    let first = left_pad.div_ceil(sw).min(ow_n);
    let end = if g.in_w + left_pad >= span_w {
        ((g.in_w + left_pad - span_w) / sw + 1).clamp(first, ow_n)
    } else {
        first
    };
    // Used only between pixels of one image row, where it cannot overflow;
    // a (hostile) stride wider than the image has one such pixel at most.
    let step = sw.saturating_mul(c);
    for (row, y_row) in rows.zip(y.chunks_exact_mut(ow_n * c)) {
        let (b, oh) = (row / oh_n, row % oh_n);
        let image = &x[b * g.in_h * g.in_w * c..(b + 1) * g.in_h * g.in_w * c];
        let top = (oh * g.stride[0])
            .checked_sub(g.pads[0])
            .filter(|t| t + span_h <= g.in_h);
        // The columns taken together: none when the window crosses the top
        // or bottom edge in this row.
        let (lo, hi) = if top.is_some() { (first, end) } else { (0, 0) };
        let mut ow = 0;
        while ow < ow_n {
            if ow == lo && lo < hi {
                let t = top.expect("inside rows only");
                let l = ow * sw - left_pad;
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let (ih, iw) = (t + i * g.dilation[0], l + j * g.dilation[1]);
                        inside[i * g.kw + j] = ((ih * g.in_w + iw) * c, (i * g.kw + j) * c);
                    }
                }
                let offsets = &inside[..kk];
                let mut done = 0;
                while done + PIXELS <= hi - lo {
                    let out = &mut y_row[(lo + done) * c..(lo + done + PIXELS) * c];
                    // SAFETY: the window of pixel `lo + done + p` is the
                    // first one's moved by `(done + p) * step`, inside the
                    // image for every p < PIXELS since that pixel is < hi.
                    unsafe { pixels::<PIXELS>(image, done * step, step, taps, bias, offsets, act, out) };
                    done += PIXELS;
                }
                let out = &mut y_row[(lo + done) * c..hi * c];
                // SAFETY: as above, for the hi - lo - done < PIXELS pixels left.
                unsafe {
                    match hi - lo - done {
                        0 => {}
                        1 => pixels::<1>(image, done * step, step, taps, bias, offsets, act, out),
                        2 => pixels::<2>(image, done * step, step, taps, bias, offsets, act, out),
                        _ => pixels::<3>(image, done * step, step, taps, bias, offsets, act, out),
                    }
                }
                ow = hi;
                continue;
            }
            // A window crossing an edge: only the taps inside.
            let mut count = 0;
            for i in 0..g.kh {
                for j in 0..g.kw {
                    if let Some((ih, iw)) = g.tap(oh, ow, i, j) {
                        inside[count] = ((ih * g.in_w + iw) * c, (i * g.kw + j) * c);
                        count += 1;
                    }
                }
            }
            // SAFETY: the offsets are of in-bounds pixels of `image` and
            // taps of `taps`, c values each.
            unsafe {
                pixels::<1>(
                    image,
                    0,
                    0,
                    taps,
                    bias,
                    &inside[..count],
                    act,
                    &mut y_row[ow * c..(ow + 1) * c],
                )
            };
            ow += 1;
        }
    }
}

/// `P` output pixels, `out.len() / P` channels each: for each pixel `p` and
/// channel, `bias + sum over inside of x[base + p * step + offset] * tap`,
/// one FMA per tap in tap order, whatever `P` is (so an output does not
/// depend on which pixels it was computed with).
///
/// # Safety
/// AVX2 and FMA; `c = out.len() / P = bias.len()`; each `(o, t)` in `inside`
/// has `base + (P - 1) * step + o + c <= image.len()` and `t + c <= taps.len()`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
unsafe fn pixels<const P: usize>(
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
    // SAFETY (every block below): ch + 8 * blocks <= c, and the caller's offsets.
    unsafe {
        while ch + 16 <= c {
            let b = bias.as_ptr().add(ch);
            let mut acc = [[_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8))]; P];
            for &(off, t) in inside {
                let (w0, w1) = (
                    _mm256_loadu_ps(tp.add(t + ch)),
                    _mm256_loadu_ps(tp.add(t + ch + 8)),
                );
                for (p, acc) in acc.iter_mut().enumerate() {
                    let v = img.add(base + p * step + off + ch);
                    acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(v), w0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(_mm256_loadu_ps(v.add(8)), w1, acc[1]);
                }
            }
            for (p, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(o.add(p * c + ch), activate(acc[0], act));
                _mm256_storeu_ps(o.add(p * c + ch + 8), activate(acc[1], act));
            }
            ch += 16;
        }
        if ch + 8 <= c {
            let mut acc = [_mm256_loadu_ps(bias.as_ptr().add(ch)); P];
            for &(off, t) in inside {
                let w = _mm256_loadu_ps(tp.add(t + ch));
                for (p, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(_mm256_loadu_ps(img.add(base + p * step + off + ch)), w, *acc);
                }
            }
            for (p, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(o.add(p * c + ch), activate(*acc, act));
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
