//! Convolution of few input channels (an image model's first layer, 3
//! channels) straight from the input: no im2col rows. Those rows would be
//! `kh * kw * in_c` values a pixel (27 for a 3x3 stem), written and read
//! back, each as costly as the products it feeds (the im2col and the GEMM
//! at K = 27 were 6% and 8% of a hybrid EfficientNet-Lite0 pass).
//!
//! Each output pixel is `sum over the taps inside the input and the input
//! channels of x * w, + bias`, with the weights read from the f32 GEMM's
//! packed panels (for each input `k`, 16 output channels): from zero, one
//! FMA per term in `k` order whatever the pixel's neighbours, then the
//! bias. That is the f32 GEMM's arithmetic over the im2col rows (whose
//! padding zeros add nothing to a sum that starts at +0), so the same bits
//! as that path for finite weights (a padding zero times an infinite
//! weight is NaN there), and nothing depends on how pixels are grouped or
//! split across threads. The driver mirrors the depthwise one: pixels
//! whose windows lie inside the input horizontally go [`GROUP`] at a time
//! at fixed offsets, the others one by one with only their taps inside.

use super::Conv2d;
use super::depthwise::{inside_columns, inside_taps};
use crate::gemm_f32::{NR, PackedF32};
use crate::ops::Activation;
use std::ops::Range;

/// Output pixels per kernel call: eight independent FMA chains.
pub(super) const GROUP: usize = 8;

/// The largest input channel count the direct path takes; with more, the
/// im2col rows are long enough for the GEMM to pay.
pub const MAX_DIRECT_IN_C: usize = 4;

/// A direct-convolution kernel: `P` output pixels of up to [`Self::PANELS`]
/// panels of 16 output channels.
pub(super) trait Direct {
    /// Panels a call covers: each input value broadcast once feeds them all.
    const PANELS: usize;

    /// Pixels per call where whole groups fit: [`GROUP`], or 6 where eight
    /// pixels' accumulators would not fit the registers (the driver's two
    /// choices).
    const GROUP: usize = GROUP;

    /// For each pixel `p < P`: `out[p * ldo + j] = act(sum over (o, k) in
    /// terms of image[base + p * step + o] * w(k, j) + bias[j])` for `j <
    /// cols`, where `w(k, j) = panel[j / 16 * panel_stride + k * 16 + j %
    /// 16]`: from zero, one FMA per term in order, then the bias.
    ///
    /// # Safety
    /// The CPU runs the kernel; `cols <= 16 * PANELS`; for every term,
    /// `base + (P - 1) * step + o < image.len()` and `(cols - 1) / 16 *
    /// panel_stride + k * 16 + 16 <= panel.len()`; `out` holds `(P - 1) *
    /// ldo + cols` values.
    #[allow(clippy::too_many_arguments)]
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
    );
}

/// The portable kernel: the same FMAs, one value at a time.
pub(super) struct Scalar;

impl Direct for Scalar {
    const PANELS: usize = 2;

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
        for p in 0..P {
            for j in 0..cols {
                let w = &panel[j / NR * panel_stride + j % NR..];
                let acc = terms.iter().fold(0.0, |acc, &(o, k)| {
                    image[base + p * step + o].mul_add(w[k * NR], acc)
                });
                out[p * ldo + j] = act.apply(acc + bias[j]);
            }
        }
    }
}

/// Output rows `rows` (of `batch * out_h`) into `y`, with `K`.
///
/// # Safety
/// The CPU runs `K`; `x`, `w` and `bias` match `g` (checked by
/// [`super::direct_threads`]) and `y` holds the output rows `rows`.
pub(super) unsafe fn rows<K: Direct>(
    x: &[f32],
    g: &Conv2d,
    w: &PackedF32,
    bias: &[f32],
    act: Activation,
    rows: Range<usize>,
    y: &mut [f32],
) {
    let (c, n) = (g.in_c, g.out_c);
    let (oh_n, ow_n) = (g.out_h(), g.out_w());
    let k = g.patch_len();
    // (input offset, k) of the terms inside the input: at most 7 x 7 taps
    // of MAX_DIRECT_IN_C channels on the stack.
    let mut stack = [(0usize, 0usize); 49 * MAX_DIRECT_IN_C];
    let mut heap = Vec::new();
    let terms: &mut [(usize, usize)] = if k <= stack.len() {
        &mut stack
    } else {
        heap.resize(k, (0, 0));
        &mut heap
    };
    let panels = n.div_ceil(NR);
    // The panels from `p` on.
    let panel = |p: usize| &w.data[p * NR * k..];
    // The columns whose window lies inside the input horizontally, as in
    // the depthwise driver.
    let sw = g.stride[1];
    let Range { start: first, end } = inside_columns(g);
    let step = sw.saturating_mul(c);
    let group = K::GROUP;
    for (row, y_row) in rows.zip(y.chunks_exact_mut(ow_n * n)) {
        let (b, oh) = (row / oh_n, row % oh_n);
        let image = &x[b * g.in_h * g.in_w * c..(b + 1) * g.in_h * g.in_w * c];
        let mut run = |ow: Range<usize>, base: usize, terms: &[(usize, usize)]| {
            for p in (0..panels).step_by(K::PANELS) {
                let cols = (K::PANELS * NR).min(n - p * NR);
                let mut panel_bias = [0.0; 2 * NR];
                panel_bias[..cols].copy_from_slice(&bias[p * NR..p * NR + cols]);
                let mut done = 0;
                while done < ow.len() {
                    let out = &mut y_row[(ow.start + done) * n + p * NR..];
                    let base = base + done * step;
                    // `P` pixels from `done`.
                    macro_rules! pixels {
                        ($p:expr) => {
                            K::pixels::<{ $p }>(
                                image,
                                base,
                                step,
                                panel(p),
                                NR * k,
                                terms,
                                &panel_bias,
                                act,
                                out,
                                n,
                                cols,
                            )
                        };
                    }
                    // SAFETY: every term's offset is of an input value
                    // inside `image` for each of the pixels from `ow.start
                    // + done` (the caller's `base` and `terms`), and `k`
                    // indexes the panel's K values.
                    unsafe {
                        if done + group <= ow.len() {
                            match group {
                                6 => pixels!(6),
                                GROUP => pixels!(GROUP),
                                _ => unreachable!("Direct::GROUP is 6 or GROUP"),
                            }
                            done += group;
                        } else {
                            pixels!(1);
                            done += 1;
                        }
                    }
                }
            }
        };
        if first < end {
            let mut count = 0;
            for (pixel, tap) in inside_taps(g, oh, first) {
                for ci in 0..c {
                    terms[count] = (pixel * c + ci, tap * c + ci);
                    count += 1;
                }
            }
            run(first..end, 0, &terms[..count]);
        }
        for ow in (0..first).chain(end.max(first)..ow_n) {
            let mut count = 0;
            for (pixel, tap) in inside_taps(g, oh, ow) {
                for ci in 0..c {
                    terms[count] = (pixel * c + ci, tap * c + ci);
                    count += 1;
                }
            }
            run(ow..ow + 1, 0, &terms[..count]);
        }
    }
}
