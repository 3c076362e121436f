//! The depthwise driver every SIMD kernel shares: for each output row, the
//! pixels whose windows lie inside the image horizontally go four at a
//! time at fixed tap offsets; the edge pixels go one by one with only
//! their taps inside. A kernel ([`Pixels`]) computes a group of pixels.

use super::Conv2d;
use crate::ops::Activation;
use std::ops::Range;

/// Output pixels computed together: each tap vector loaded once serves
/// all of them, and two channel blocks of each give eight independent FMA
/// chains, enough to hide the FMA latency.
const PIXELS: usize = 4;

/// A SIMD depthwise kernel: `P` output pixels at once.
pub(super) trait Pixels {
    /// `P` output pixels, `out.len() / P` channels each: for each pixel `p`
    /// and channel, `bias + sum over inside of x[base + p * step + offset] *
    /// tap`, one FMA per tap in tap order, whatever `P` and `B` are (so an
    /// output does not depend on which pixels it was computed with), then
    /// `act`. `B` blocks of channels at a time: `P * B` independent FMA chains.
    ///
    /// # Safety
    /// The CPU runs the kernel; `c = out.len() / P = bias.len()`; each `(o,
    /// t)` in `inside` has `base + (P - 1) * step + o + c <= image.len()`
    /// and `t + c <= taps.len()`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn pixels<const P: usize, const B: usize>(
        image: &[f32],
        base: usize,
        step: usize,
        taps: &[f32],
        bias: &[f32],
        inside: &[(usize, usize)],
        act: Activation,
        out: &mut [f32],
    );

    /// `P` output pixels of one row, `S` input columns apart, whose
    /// windows (`KW` columns, dilation 1) lie inside the input
    /// horizontally: the same outputs as [`Pixels::pixels`] with every tap
    /// of the given kernel rows, one FMA per tap in tap order. Each input
    /// column vector of a kernel row is loaded once and fed to every pixel
    /// whose window covers it: `S * (P - 1) + KW` loads and `KW` tap loads
    /// for `P * KW` FMAs, where `pixels` loads one input per FMA.
    ///
    /// # Safety
    /// The CPU runs the kernel; `c = out.len() / P = bias.len()`; each
    /// `(o, t)` in `rows` (the input offset of a kernel row's first column,
    /// and the tap offset of its first tap) has `base + (S * (P - 1) + KW -
    /// 1) * c + o + c <= image.len()` and `t + KW * c <= taps.len()`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn window<const P: usize, const KW: usize, const S: usize>(
        image: &[f32],
        base: usize,
        taps: &[f32],
        bias: &[f32],
        rows: &[(usize, usize)],
        act: Activation,
        out: &mut [f32],
    );
}

/// Pixels per [`Pixels::window`] call: eight independent FMA chains.
const WINDOW: usize = 8;

/// Output rows `rows` (of `batch * out_h`) into `y`, with `K`'s pixel kernel.
///
/// # Safety
/// The CPU runs `K`; the slices have the sizes `super::depthwise_threads`
/// checks, `y` holding the output rows `rows`.
pub(super) unsafe fn rows<K: Pixels>(
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
    // The first of each kernel row's taps, for the window kernel (kernel
    // widths 3 and 5: at most 17 rows on the stack).
    let mut rows_of = [(0usize, 0usize); 17];
    let mut heap = Vec::new();
    let inside: &mut [(usize, usize)] = if kk <= stack.len() {
        &mut stack
    } else {
        heap.resize(kk, (0, 0));
        &mut heap
    };
    // Output columns whose window lies inside the input horizontally: in
    // them every tap sits at a fixed offset from the window's corner, and
    // the next pixel's window is `stride * c` values further on.
    let sw = g.stride[1];
    let Range { start: first, end } = inside_columns(g);
    // Used only between pixels of one image row, where it cannot overflow;
    // a (hostile) stride wider than the image has one such pixel at most.
    let step = sw.saturating_mul(c);
    for (row, y_row) in rows.zip(y.chunks_exact_mut(ow_n * c)) {
        let (b, oh) = (row / oh_n, row % oh_n);
        let image = &x[b * g.in_h * g.in_w * c..(b + 1) * g.in_h * g.in_w * c];
        // The columns first..end, taken together: their windows share the
        // taps inside (all columns of the kernel; the rows of it that fall
        // inside the input in this output row), at a fixed offset from the
        // window's corner.
        if first < end {
            let mut count = 0;
            for (pixel, tap) in inside_taps(g, oh, first) {
                inside[count] = (pixel * c, tap * c);
                count += 1;
            }
            let offsets = &inside[..count];
            let mut done = 0;
            // The common geometries (stride and dilation 1 across, kernels
            // 3 or 5 wide) through the window kernel: each kernel row's first
            // tap in `offsets` stands for it. (At stride 2 it was slower than
            // `pixels`: 0.55-0.65x at 112x112x96 3x3 and 56x56x144 5x5.)
            let windowed =
                g.dilation[1] == 1 && sw == 1 && matches!(g.kw, 3 | 5) && count / g.kw <= rows_of.len();
            let kernel_rows = &mut rows_of[..if windowed { count / g.kw } else { 0 }];
            for (row, &first_tap) in kernel_rows.iter_mut().zip(offsets.iter().step_by(g.kw)) {
                *row = first_tap;
            }
            let kernel_rows = &*kernel_rows;
            let window = |done: usize, out: &mut [f32]| {
                // SAFETY: as for `pixels` below: the windows of the WINDOW
                // pixels from `first + done` are inside, and each row's
                // taps are the `kw` after its first.
                unsafe {
                    match g.kw {
                        3 => K::window::<WINDOW, 3, 1>(image, done * step, taps, bias, kernel_rows, act, out),
                        5 => K::window::<WINDOW, 5, 1>(image, done * step, taps, bias, kernel_rows, act, out),
                        _ => unreachable!("checked by `windowed`"),
                    }
                }
            };
            while windowed && done + WINDOW <= end - first {
                window(done, &mut y_row[(first + done) * c..(first + done + WINDOW) * c]);
                done += WINDOW;
            }
            while done + PIXELS <= end - first {
                let out = &mut y_row[(first + done) * c..(first + done + PIXELS) * c];
                // SAFETY: the window of pixel `first + done + p` is the
                // first one's moved by `(done + p) * step`, and its taps in
                // `offsets` are inside the image for every p < PIXELS, since
                // that pixel is < end.
                unsafe { K::pixels::<PIXELS, 2>(image, done * step, step, taps, bias, offsets, act, out) };
                done += PIXELS;
            }
            let out = &mut y_row[(first + done) * c..end * c];
            // SAFETY: as above, for the end - first - done < PIXELS pixels left.
            unsafe {
                match end - first - done {
                    0 => {}
                    1 => K::pixels::<1, 4>(image, done * step, step, taps, bias, offsets, act, out),
                    2 => K::pixels::<2, 2>(image, done * step, step, taps, bias, offsets, act, out),
                    _ => K::pixels::<3, 2>(image, done * step, step, taps, bias, offsets, act, out),
                }
            }
        }
        // The columns whose window crosses the left or right edge: one by
        // one, with only their taps inside.
        for ow in (0..first).chain(end.max(first)..ow_n) {
            let mut count = 0;
            for (pixel, tap) in inside_taps(g, oh, ow) {
                inside[count] = (pixel * c, tap * c);
                count += 1;
            }
            let out = &mut y_row[ow * c..(ow + 1) * c];
            // SAFETY: the offsets are of in-bounds pixels of `image` and
            // taps of `taps`, c values each.
            unsafe { K::pixels::<1, 4>(image, 0, 0, taps, bias, &inside[..count], act, out) };
        }
    }
}

/// The output columns whose window lies inside the input horizontally
/// (`first..end`; empty, at `first`, when none does).
pub(super) fn inside_columns(g: &Conv2d) -> Range<usize> {
    let (ow_n, span_w) = (g.out_w(), g.dilation[1] * (g.kw - 1) + 1);
    let (sw, left_pad) = (g.stride[1], g.pads[1]);
    let first = left_pad.div_ceil(sw).min(ow_n);
    let end = if g.in_w + left_pad >= span_w {
        ((g.in_w + left_pad - span_w) / sw + 1).clamp(first, ow_n)
    } else {
        first
    };
    first..end
}

/// The taps of output pixel `(oh, ow)` (of one image) that fall inside the
/// input, in kernel order: the input pixel each reads, `ih * in_w + iw`,
/// and the tap, `i * kw + j`.
pub(super) fn inside_taps(g: &Conv2d, oh: usize, ow: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    (0..g.kh)
        .flat_map(move |i| (0..g.kw).map(move |j| (i, j)))
        .filter_map(move |(i, j)| {
            g.tap(oh, ow, i, j)
                .map(|(ih, iw)| (ih * g.in_w + iw, i * g.kw + j))
        })
}
