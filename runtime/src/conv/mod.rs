//! Convolutions and pools on NHWC activations.
//!
//! The graph's declared interface is NCHW; inside, activations of a
//! convolutional network are NHWC, so that a pixel's channels are one
//! contiguous row: a 1x1 convolution is then a plain GEMM (pixels x
//! channels) and a k x k one a GEMM over [`im2col`] rows, in either kernel
//! family. Depthwise convolutions (one filter per channel) have a direct
//! kernel that runs eight or sixteen channels per vector.
//!
//! Weights of a convolution are `[out_c, kh, kw, in_c / groups]` (the code
//! generator reorders ONNX's `[out_c, in_c / groups, kh, kw]` at compile
//! time); depthwise taps are `[kh, kw, c]`.
//!
//! The code generator calls these through [`ops`](crate::ops)
//! ([`conv2d`](crate::ops::conv2d), [`grouped_conv2d`](crate::ops::grouped_conv2d),
//! [`depthwise_conv2d`](crate::ops::depthwise_conv2d) and the pools); here
//! are the kernels and their definitions, tested against each other.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod depthwise;
mod direct;
pub use direct::MAX_DIRECT_IN_C;
pub mod scalar;

use crate::gemm_f32::PackedF32;
use crate::ops::Activation;
use std::ops::Range;

/// The geometry of a 2-D convolution or pool over NHWC data, shared with
/// the code generator, which writes it as a literal.
pub use qbake_format::Conv2d;

/// Writes the patches of a `groups == 1` convolution as rows: row
/// `(b, oh, ow)` holds, for each tap `(i, j)`, the input pixel's `in_c`
/// channels, or zeros where the tap falls in the padding.
pub fn im2col(x: &[f32], g: &Conv2d, out: &mut [f32]) {
    assert_eq!(g.groups, 1, "im2col is for ungrouped convolutions");
    im2col_channels(x, g, 0..g.in_c, out);
}

/// [`im2col`] of the input channels `channels` only (one group of a grouped
/// convolution): each row holds, for each tap, those channels of the pixel.
pub fn im2col_channels(x: &[f32], g: &Conv2d, channels: Range<usize>, out: &mut [f32]) {
    im2col_pixels(x, g, channels, 0..g.out_pixels(), out);
}

/// [`im2col_channels`] of the output pixels `pixels` only (in `(b, oh, ow)`
/// order): the rows of one part of a convolution split across threads.
pub fn im2col_pixels(x: &[f32], g: &Conv2d, channels: Range<usize>, pixels: Range<usize>, out: &mut [f32]) {
    assert_eq!(x.len(), g.batch * g.in_h * g.in_w * g.in_c);
    assert!(channels.start < channels.end && channels.end <= g.in_c);
    assert!(pixels.start <= pixels.end && pixels.end <= g.out_pixels());
    let (oh_n, ow_n, c, cs) = (g.out_h(), g.out_w(), g.in_c, channels.len());
    let row_len = g.kh * g.kw * cs;
    assert_eq!(out.len(), pixels.len() * row_len);
    // A kernel row wholly inside the input, over all its channels and
    // without dilation, is one contiguous run of the input: one copy.
    let whole_rows = cs == c && g.dilation[1] == 1;
    let span_w = g.dilation[1] * (g.kw - 1) + 1;
    for (p, row) in pixels.zip(out.chunks_exact_mut(row_len)) {
        let (b, oh, ow) = (p / (oh_n * ow_n), p / ow_n % oh_n, p % ow_n);
        let image = &x[b * g.in_h * g.in_w * c..(b + 1) * g.in_h * g.in_w * c];
        let left = (ow * g.stride[1])
            .checked_sub(g.pads[1])
            .filter(|l| l + span_w <= g.in_w);
        for (i, dst) in row.chunks_exact_mut(g.kw * cs).enumerate() {
            if let (true, Some(ih), Some(l)) = (whole_rows, g.tap_row(oh, i), left) {
                copy(dst, &image[(ih * g.in_w + l) * c..][..g.kw * c]);
                continue;
            }
            for (j, dst) in dst.chunks_exact_mut(cs).enumerate() {
                match g.tap(oh, ow, i, j) {
                    Some((ih, iw)) => copy(dst, &image[(ih * g.in_w + iw) * c + channels.start..][..cs]),
                    None => dst.fill(0.0),
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)`. Runs of up to 16 values (a stem's kernel
/// row of 3 pixels of 3 channels is 9) are copied as two overlapping
/// moves of a fixed length, which compile to a few vector moves: a call to
/// `memcpy` for each cost more than the copy.
fn copy(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    assert_eq!(n, src.len());
    let mut two = |w: usize| {
        dst[..w].copy_from_slice(&src[..w]);
        dst[n - w..].copy_from_slice(&src[n - w..]);
    };
    match n {
        0 => {}
        1 => dst[0] = src[0],
        2..=3 => two(2),
        4..=7 => two(4),
        8..=16 => two(8),
        _ => dst.copy_from_slice(src),
    }
}

/// Convolution of few input channels (`in_c <= MAX_DIRECT_IN_C`, one
/// group), NHWC, from the input directly (`direct.rs`) with f32 weights
/// packed for the f32 GEMM: `y[b, oh, ow, n] = act(sum over the taps inside
/// and the input channels of x * w, + bias[n])`, from zero, one FMA per term
/// in `k` order, then the bias (the bits of im2col + the f32 GEMM). Output
/// rows split across up to `threads` threads as the depthwise ones are; the
/// result does not depend on the split.
#[allow(clippy::too_many_arguments)]
pub fn direct_threads(
    kernel: Kernel,
    threads: usize,
    x: &[f32],
    g: &Conv2d,
    w: &PackedF32,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    g.check().expect("a valid geometry");
    assert!(
        g.groups == 1 && g.in_c <= MAX_DIRECT_IN_C,
        "not a direct geometry: {g:?}"
    );
    assert_eq!(x.len(), g.batch * g.in_h * g.in_w * g.in_c);
    assert_eq!(
        (w.n, w.k),
        (g.out_c, g.patch_len()),
        "weights do not match the geometry"
    );
    assert_eq!(y.len(), g.out_pixels() * g.out_c);
    let run = |bias: &[f32], rows: Range<usize>, y: &mut [f32]| match kernel {
        // SAFETY: the sizes were checked above and `split_rows` gives `y`
        // exactly the rows of `rows`.
        Kernel::Scalar => unsafe { direct::rows::<direct::Scalar>(x, g, w, bias, act, rows, y) },
        // SAFETY: as above, and AVX2 and FMA were detected.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => unsafe { direct::rows::<avx2::Avx2>(x, g, w, bias, act, rows, y) },
        // SAFETY: as above, AVX-512F.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { direct::rows::<avx512::Avx512>(x, g, w, bias, act, rows, y) },
    };
    let rows = g.batch * g.out_h();
    let macs = g.out_pixels() * g.out_c * g.patch_len();
    let split = |bias: &[f32], y: &mut [f32]| {
        crate::parallel::split_rows(threads, rows, g.out_w() * g.out_c, macs, y, |r, y| {
            run(bias, r, y)
        })
    };
    with_bias(bias, g.out_c, |bias| split(bias, y))
}

/// The depthwise kernels need what the f32 GEMM's need (AVX2 and FMA): one
/// choice for both.
pub use crate::gemm_f32::Kernel;

/// Depthwise convolution, NHWC: `y[b, oh, ow, c] = act(bias[c] + sum_{i,j}
/// taps[i, j, c] * x[b, ih, iw, c])` over the taps inside the input.
pub fn depthwise(x: &[f32], g: &Conv2d, taps: &[f32], bias: Option<&[f32]>, act: Activation, y: &mut [f32]) {
    depthwise_with(Kernel::detect(), x, g, taps, bias, act, y);
}

/// [`depthwise`] with a chosen kernel (tests compare them).
pub fn depthwise_with(
    kernel: Kernel,
    x: &[f32],
    g: &Conv2d,
    taps: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    depthwise_threads(kernel, 1, x, g, taps, bias, act, y);
}

/// [`depthwise_with`], its output rows split across up to `threads` threads
/// when the work is large enough ([`crate::parallel::MIN_PARALLEL_DEPTHWISE_MACS`]);
/// each output is computed the same way whatever the split.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_threads(
    kernel: Kernel,
    threads: usize,
    x: &[f32],
    g: &Conv2d,
    taps: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    g.check().expect("a valid geometry");
    assert!(g.is_depthwise(), "not a depthwise geometry: {g:?}");
    assert_eq!(x.len(), g.batch * g.in_h * g.in_w * g.in_c);
    assert_eq!(taps.len(), g.kh * g.kw * g.in_c);
    assert_eq!(y.len(), g.out_pixels() * g.out_c);
    let run = |bias: &[f32], rows: std::ops::Range<usize>, y: &mut [f32]| match kernel {
        Kernel::Scalar => scalar::depthwise(x, g, taps, bias, act, rows, y),
        // SAFETY: AVX2 and FMA were detected; the sizes were checked above
        // and `split_rows` gives `y` exactly the rows of `rows`.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2Fma => unsafe { depthwise::rows::<avx2::Avx2>(x, g, taps, bias, act, rows, y) },
        // SAFETY: as above, AVX-512F.
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => unsafe { depthwise::rows::<avx512::Avx512>(x, g, taps, bias, act, rows, y) },
    };
    let rows = g.batch * g.out_h();
    let macs = g.out_pixels() * g.out_c * g.kh * g.kw;
    let split = |bias: &[f32], y: &mut [f32]| {
        crate::parallel::split_rows(threads, rows, g.out_w() * g.out_c, macs, y, |r, y| {
            run(bias, r, y)
        })
    };
    with_bias(bias, g.out_c, |bias| split(bias, y))
}

/// A convolution of any group count, NHWC, in plain loops: the definition
/// the kernels are tested against. `w` is `[out_c, kh, kw, in_c / groups]`.
pub fn conv2d_reference(
    x: &[f32],
    g: &Conv2d,
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    g.check().expect("a valid geometry");
    let (cg, og) = (g.in_c / g.groups, g.out_c / g.groups);
    assert_eq!(w.len(), g.out_c * g.kh * g.kw * cg);
    assert_eq!(y.len(), g.out_pixels() * g.out_c);
    let (oh_n, ow_n) = (g.out_h(), g.out_w());
    for b in 0..g.batch {
        for oh in 0..oh_n {
            for ow in 0..ow_n {
                for o in 0..g.out_c {
                    let group = o / og;
                    let mut acc = bias.map_or(0.0, |b| f64::from(b[o]));
                    for i in 0..g.kh {
                        for j in 0..g.kw {
                            let Some((ih, iw)) = g.tap(oh, ow, i, j) else {
                                continue;
                            };
                            for ci in 0..cg {
                                let xv = x[((b * g.in_h + ih) * g.in_w + iw) * g.in_c + group * cg + ci];
                                let wv = w[((o * g.kh + i) * g.kw + j) * cg + ci];
                                acc += f64::from(xv) * f64::from(wv);
                            }
                        }
                    }
                    y[((b * oh_n + oh) * ow_n + ow) * g.out_c + o] = act.apply(acc as f32);
                }
            }
        }
    }
}

/// Global average pool: `[batch, h, w, c]` to `[batch, c]`.
pub fn global_average_pool(x: &[f32], batch: usize, pixels: usize, c: usize, y: &mut [f32]) {
    assert!(x.len() == batch * pixels * c && y.len() == batch * c && pixels > 0);
    for (x, y) in x.chunks_exact(pixels * c).zip(y.chunks_exact_mut(c)) {
        y.fill(0.0);
        for pixel in x.chunks_exact(c) {
            for (y, &v) in y.iter_mut().zip(pixel) {
                *y += v;
            }
        }
        let inv = 1.0 / pixels as f32;
        for y in y.iter_mut() {
            *y *= inv;
        }
    }
}

/// Average or max pooling, NHWC, `g.in_c == g.out_c`, `groups` ignored.
/// Max pooling ignores the padding; average pooling divides by the taps
/// inside the input, or by all taps with `count_include_pad` (ONNX).
pub fn pool(x: &[f32], g: &Conv2d, kind: Pool, y: &mut [f32]) {
    let c = g.in_c;
    assert!(g.out_c == c && x.len() == g.batch * g.in_h * g.in_w * c && y.len() == g.out_pixels() * c);
    let (oh_n, ow_n) = (g.out_h(), g.out_w());
    let mut outs = y.chunks_exact_mut(c);
    for b in 0..g.batch {
        let image = &x[b * g.in_h * g.in_w * c..(b + 1) * g.in_h * g.in_w * c];
        for oh in 0..oh_n {
            for ow in 0..ow_n {
                let out = outs.next().expect("sized above");
                out.fill(if kind == Pool::Max { f32::NEG_INFINITY } else { 0.0 });
                let mut inside = 0usize;
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let Some((ih, iw)) = g.tap(oh, ow, i, j) else {
                            continue;
                        };
                        inside += 1;
                        let pixel = &image[(ih * g.in_w + iw) * c..][..c];
                        for (o, &v) in out.iter_mut().zip(pixel) {
                            *o = if kind == Pool::Max {
                                if v > *o { v } else { *o }
                            } else {
                                *o + v
                            };
                        }
                    }
                }
                let divisor = match kind {
                    Pool::Max => continue,
                    Pool::Average {
                        count_include_pad: true,
                    } => g.kh * g.kw,
                    Pool::Average {
                        count_include_pad: false,
                    } => inside.max(1),
                };
                let inv = 1.0 / divisor as f32;
                for o in out.iter_mut() {
                    *o *= inv;
                }
            }
        }
    }
}

/// The reduction of a [`pool`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    Max,
    Average { count_include_pad: bool },
}

/// Runs `f` with the bias, or with `n` zeros (from the scratch) for none.
fn with_bias<R>(bias: Option<&[f32]>, n: usize, f: impl FnOnce(&[f32]) -> R) -> R {
    match bias {
        Some(b) => {
            assert_eq!(b.len(), n, "one bias per output channel");
            f(b)
        }
        None => crate::scratch::with_zeros(n, f),
    }
}

#[cfg(test)]
mod tests;
