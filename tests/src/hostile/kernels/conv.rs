//! Convolutions, pools and the layout ops, each against a plain-loop
//! definition written here, over geometries from the input: strides,
//! dilations and pads from 1 to past the input (up to 2^61), one group,
//! several, or depthwise, batches of 1 or 2, any activation, and values of
//! every [`Style`](super::Style).
//!
//! - the geometry: the code generator's `ConvGeom::out_dims` and the
//!   runtime's `Conv2d::check` / `out_h` / `out_w` agree on every one;
//! - `im2col` / `im2col_channels`: the definition's rows, bit for bit,
//!   padding an exact +0.0;
//! - `conv2d_reference` (the runtime's definition), the depthwise kernels
//!   (each: the scalar one rounds products and sums apart, the AVX2 one
//!   fuses them, so they differ in the last bits; and `ops::depthwise_conv2d`
//!   in both families) and
//!   `ops::conv2d` / `ops::grouped_conv2d` on f32 weights (both families) or
//!   on 8-bit weights in `Kernels::Dequant`: within rounding of the exact
//!   result, non-finite exactly where the inputs force it (the f32 GEMM
//!   oracle of the parent module);
//! - `ops::conv2d` / `ops::grouped_conv2d` on 8-bit weights in
//!   `Kernels::Hybrid`: the bits of `hybrid::gemm_reference` on the
//!   definition's patches, group by group, from patches of
//!   `ops::MIN_INT8_COLS` values; on shorter ones, Dequant's bits;
//! - f32 weights give the same bits in both families, and the depthwise op
//!   the bits of `conv::depthwise` on `DepthwiseWeight::taps`;
//! - `ops::pointwise_depthwise_in_bands`, a 1x1 convolution into the
//!   depthwise one in bands of any height: the bits of the two ops;
//! - max pooling: the largest value inside the window (padding and NaN
//!   never win; a window with neither gives -Inf), bit for bit; average
//!   pooling (both `count_include_pad`) and the global pool within rounding
//!   of the exact mean;
//! - `pad_nhwc`, `nchw_to_nhwc`, `nhwc_to_nchw`, `mul_constant`: bit for bit.
//!
//! Weights are finite (the reader refuses others) but of any magnitude;
//! activations and biases take any value.

use super::{Expect, Source, StaticSlice, expect, f32_kernels, same};
use qbake::conv::{self, Conv2d};
use qbake::format::{dequantize, pack_b_s8, s8_negative_sums, s8_row_sums};
use qbake::hybrid::{self, QuantizedRows};
use qbake::{
    Activation, DepthwiseWeight, DequantCache, Exec, FloatWeight, Kernels, QuantParams, QuantWeight,
    TapsCache, Weight, ops,
};
use qbake_codegen::graph::ConvGeom;

/// Outputs times inputs per output: the work one input may ask for.
const MAX_MACS: usize = 1 << 16;

/// A stride or dilation: mostly small, sometimes past any input.
fn step(src: &mut Source) -> usize {
    match src.byte() % 16 {
        0..=9 => 1,
        10..=12 => 2,
        13 => 3,
        14 => 1 + usize::from(src.byte()),
        _ => [1 << 20, 1 << 40, usize::MAX / 4][usize::from(src.byte() % 3)],
    }
}

/// One pad: mostly 0 or 1, sometimes larger than the input, or huge (the
/// sum of two stays within `usize`, as the planner checks).
fn pad(src: &mut Source) -> usize {
    match src.byte() % 16 {
        0..=7 => 0,
        8..=11 => 1,
        12 => 2,
        13 => 3 + usize::from(src.byte() % 8),
        14 => usize::from(src.byte()),
        _ => [1 << 20, 1 << 40, 1 << 61][usize::from(src.byte() % 3)],
    }
}

fn geometry(src: &mut Source) -> Conv2d {
    let batch = 1 + usize::from(src.byte() % 2);
    // Rows up to 16 wide and kernels up to 5: the depthwise window kernels
    // (3 and 5 wide) need 8 outputs of a row inside the image.
    let (in_h, in_w) = (1 + usize::from(src.byte() % 10), 1 + usize::from(src.byte() % 16));
    let (kh, kw) = (1 + usize::from(src.byte() % 5), 1 + usize::from(src.byte() % 5));
    let stride = [step(src), step(src)];
    let dilation = [step(src), step(src)];
    let pads = [pad(src), pad(src), pad(src), pad(src)];
    let (in_c, out_c, groups) = match src.byte() % 4 {
        0 => (
            1 + usize::from(src.byte() % 12),
            1 + usize::from(src.byte() % 20),
            1,
        ),
        1 => {
            // Depthwise: past a vector of 8 channels and its tail.
            let c = 1 + usize::from(src.byte() % 20);
            (c, c, c)
        }
        _ => {
            let groups = 2 + usize::from(src.byte() % 3);
            let (cg, og) = (1 + usize::from(src.byte() % 4), 1 + usize::from(src.byte() % 4));
            (cg * groups, og * groups, groups)
        }
    };
    Conv2d {
        batch,
        in_h,
        in_w,
        in_c,
        out_c,
        kh,
        kw,
        stride,
        dilation,
        pads,
        groups,
    }
}

/// The code generator and the runtime agree on whether `g` fits, and on its
/// output size.
fn geometries_agree(g: &Conv2d) -> Option<(usize, usize)> {
    let planned = ConvGeom {
        batch: g.batch,
        in_h: g.in_h,
        in_w: g.in_w,
        in_c: g.in_c,
        out_c: g.out_c,
        kh: g.kh,
        kw: g.kw,
        stride: g.stride,
        dilation: g.dilation,
        pads: g.pads,
        groups: g.groups,
    }
    .out_dims();
    let checked = g.check();
    assert_eq!(
        planned.is_some(),
        checked.is_ok(),
        "{g:?}: planner {planned:?}, runtime {checked:?}"
    );
    if let Some(dims) = planned {
        assert_eq!(dims, (g.out_h(), g.out_w()), "{g:?}");
    }
    planned
}

/// Finite values of the input's style: NaN becomes 0, ±Inf ±f32::MAX.
fn finite(src: &mut Source, n: usize) -> Vec<f32> {
    src.values(n)
        .into_iter()
        .map(|v| match v {
            v if v.is_nan() => 0.0,
            v if v.is_infinite() => f32::MAX.copysign(v),
            v => v,
        })
        .collect()
}

/// The definition of the patch rows of the input channels `c0..c0 + cs`:
/// row `(b, oh, ow)`, for each tap `(i, j)` in order, the channels of input
/// pixel `(oh * sh + i * dh - top, ow * sw + j * dw - left)`, or +0.0 where
/// that lies outside the input.
fn patches(x: &[f32], g: &Conv2d, c0: usize, cs: usize) -> Vec<f32> {
    let (oh_n, ow_n) = (g.out_h(), g.out_w());
    let mut rows = Vec::with_capacity(g.out_pixels() * g.kh * g.kw * cs);
    for b in 0..g.batch {
        for oh in 0..oh_n {
            for ow in 0..ow_n {
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let ih = (oh * g.stride[0] + i * g.dilation[0]).checked_sub(g.pads[0]);
                        let iw = (ow * g.stride[1] + j * g.dilation[1]).checked_sub(g.pads[1]);
                        for c in c0..c0 + cs {
                            rows.push(match (ih, iw) {
                                (Some(ih), Some(iw)) if ih < g.in_h && iw < g.in_w => {
                                    x[((b * g.in_h + ih) * g.in_w + iw) * g.in_c + c]
                                }
                                _ => 0.0,
                            });
                        }
                    }
                }
            }
        }
    }
    rows
}

/// `got` against the exact convolution: output `(p, o)` of group `o / og`
/// is the patch row `p` of that group times weight row `o` plus `bias[o]`.
/// `rows[group]` are the group's patches, `w` is `[out_c, patch_len]`.
fn check_against_exact(
    who: &str,
    g: &Conv2d,
    rows: &[Vec<f32>],
    w: &[f32],
    bias: Option<&[f32]>,
    act: Activation,
    got: &[f32],
) {
    let (k, og) = (g.patch_len(), g.out_c / g.groups);
    for p in 0..g.out_pixels() {
        for o in 0..g.out_c {
            let patch = &rows[o / og][p * k..(p + 1) * k];
            let b = bias.map_or(0.0, |b| b[o]);
            let y = got[p * g.out_c + o];
            let expected = expect(patch, &w[o * k..(o + 1) * k], b);
            let ok = match expected {
                Expect::Exactly(v) => same(y, act.apply(v)),
                Expect::Near { value, tolerance } => {
                    let want = act.apply(value as f32);
                    let slack = (value - f64::from(value as f32)).abs();
                    same(y, want)
                        || (y.is_finite() && (f64::from(y) - f64::from(want)).abs() <= tolerance + slack)
                }
                Expect::Any => true,
            };
            assert!(
                ok,
                "{who} {g:?} {act:?}: pixel {p} channel {o} = {y}, expected {}",
                match expected {
                    Expect::Exactly(v) => format!("{}", act.apply(v)),
                    Expect::Near { value, tolerance } => format!("{value} ± {tolerance} before {act:?}"),
                    Expect::Any => "anything".into(),
                }
            );
        }
    }
}

/// 8-bit weights as the baked statics hold them, and their values.
struct Quantized {
    q: Vec<u8>,
    packed: StaticSlice<u8>,
    s8_sums: StaticSlice<i32>,
    s8_negative_sums: StaticSlice<i32>,
    scale: StaticSlice<f32>,
    zero_point: StaticSlice<u8>,
}

impl Quantized {
    fn new(src: &mut Source, n: usize, k: usize) -> Self {
        let style = src.byte() % 5;
        let q: Vec<u8> = (0..n * k)
            .map(|_| match style {
                0 => 0,
                1 => 255,
                2 => [0, 255][usize::from(src.byte() % 2)],
                _ => src.byte(),
            })
            .collect();
        let channels = if src.byte().is_multiple_of(2) { n } else { 1 };
        let zero_point: Vec<u8> = (0..channels).map(|_| src.byte()).collect();
        let scale: Vec<f32> = (0..channels)
            .map(|_| match src.byte() % 4 {
                0 => 0.0,
                1 => f32::from_bits(u32::from(src.u16()) + 1),
                _ => f32::from(src.u16()) * 2f32.powi(i32::from(src.byte() % 64) - 40) / 65536.0,
            })
            .collect();
        Quantized {
            packed: StaticSlice::new(pack_b_s8(&q, n, k)),
            s8_sums: StaticSlice::new(s8_row_sums(&q, n, k)),
            s8_negative_sums: StaticSlice::new(s8_negative_sums(&q, n, k)),
            q,
            scale: StaticSlice::new(scale),
            zero_point: StaticSlice::new(zero_point),
        }
    }

    /// # Safety
    /// The weight must be dropped before `self`.
    unsafe fn weight(&self, n: usize, k: usize) -> Weight {
        // SAFETY: the caller drops the weight first.
        unsafe {
            Weight::U8(QuantWeight {
                name: "fuzz",
                rows: n,
                cols: k,
                packed: self.packed.get(),
                s8_sums: self.s8_sums.get(),
                s8_negative_sums: self.s8_negative_sums.get(),
                params: QuantParams {
                    min: &[],
                    max: &[],
                    scale: self.scale.get(),
                    zero_point: self.zero_point.get(),
                },
                cache: DequantCache::new(),
            })
        }
    }

    /// The values the weights stand for, `[n, k]`.
    fn values(&self, n: usize, k: usize) -> Vec<f32> {
        // SAFETY: read here only.
        let (scale, zero_point) = unsafe { (self.scale.get(), self.zero_point.get()) };
        let channels = scale.len();
        (0..n * k)
            .map(|i| {
                let c = if channels > 1 { i / k } else { 0 };
                dequantize(self.q[i], scale[c], zero_point[c])
            })
            .collect()
    }
}

/// # Safety
/// The weight must be dropped before `data`.
unsafe fn float_weight(data: &StaticSlice<u8>, n: usize, k: usize) -> Weight {
    Weight::F32(FloatWeight {
        name: "fuzz",
        rows: n,
        cols: k,
        // SAFETY: the caller drops the weight first.
        data: unsafe { data.get() },
        cache: DequantCache::new(),
    })
}

/// Bytes as a geometry and values for every convolution kernel and op; see
/// the module docs.
pub fn conv(src: &mut Source) {
    let g = geometry(src);
    let Some((oh, ow)) = geometries_agree(&g) else {
        return;
    };
    // Bounded work: skip geometries whose output or patches are too large.
    let pixels = [g.batch, oh, ow]
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d));
    let Some(pixels) = pixels.filter(|&p| {
        p.checked_mul(g.out_c.max(g.patch_len()) * g.patch_len().max(1))
            .is_some_and(|w| w <= MAX_MACS)
    }) else {
        return;
    };
    let x = src.values(g.batch * g.in_h * g.in_w * g.in_c);
    let act = src.activation();
    let bias = (!src.byte().is_multiple_of(3)).then(|| src.values(g.out_c));
    let threads = 1 + usize::from(src.byte() % 3);
    let (k, cg, og) = (g.patch_len(), g.in_c / g.groups, g.out_c / g.groups);

    // Patches: the definition's, and im2col's bit for bit.
    let rows: Vec<Vec<f32>> = (0..g.groups).map(|gr| patches(&x, &g, gr * cg, cg)).collect();
    for (gr, want) in rows.iter().enumerate() {
        let mut got = vec![f32::NAN; pixels * k];
        if g.groups == 1 {
            conv::im2col(&x, &g, &mut got);
        } else {
            conv::im2col_channels(&x, &g, gr * cg..(gr + 1) * cg, &mut got);
        }
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert!(bits(&got) == bits(want), "{g:?}: im2col of group {gr}");
    }

    // The runtime's definition, with f32 weights of any finite magnitude.
    let w = finite(src, g.out_c * k);
    let mut y = vec![f32::NAN; pixels * g.out_c];
    conv::conv2d_reference(&x, &g, &w, bias.as_deref(), act, &mut y);
    check_against_exact("conv2d_reference", &g, &rows, &w, bias.as_deref(), act, &y);

    // The ops on f32 weights: both families, the same bits.
    {
        let data: Vec<StaticSlice<u8>> = w
            .chunks_exact(og * k)
            .map(|c| StaticSlice::new(le_bytes(c)))
            .collect();
        // SAFETY: `weights` is dropped before `data` (declared after it).
        let weights: Vec<Weight> = data.iter().map(|d| unsafe { float_weight(d, og, k) }).collect();
        let mut first: Option<Vec<f32>> = None;
        for kernels in [Kernels::Dequant, Kernels::Hybrid] {
            let y = conv_op(&g, &x, &weights, bias.as_deref(), act, kernels, threads);
            check_against_exact(
                &format!("f32 weights, {kernels:?}"),
                &g,
                &rows,
                &w,
                bias.as_deref(),
                act,
                &y,
            );
            match &first {
                None => first = Some(y),
                Some(f) => assert!(
                    f.iter().zip(&y).all(|(&a, &b)| same(a, b)),
                    "{g:?}: f32 weights differ between the families"
                ),
            }
        }
        drop(weights);
    }

    // The ops on 8-bit weights: Hybrid bit for bit, Dequant near the exact result.
    {
        let quantized: Vec<Quantized> = (0..g.groups).map(|_| Quantized::new(src, og, k)).collect();
        // SAFETY: `weights` is dropped before `quantized` (declared after it).
        let weights: Vec<Weight> = quantized.iter().map(|q| unsafe { q.weight(og, k) }).collect();
        let mut want = vec![0.0; pixels * g.out_c];
        let mut part = vec![0.0; pixels * og];
        let mut qx = QuantizedRows::default();
        for (gr, wg) in weights.iter().enumerate() {
            let Weight::U8(wg) = wg else { unreachable!() };
            qx.quantize_into(hybrid::Kernel::Scalar, &rows[gr], k);
            let b = bias.as_deref().map(|b| &b[gr * og..(gr + 1) * og]);
            hybrid::gemm_reference(&qx, wg, b, act, &mut part);
            for (dst, src) in want.chunks_exact_mut(g.out_c).zip(part.chunks_exact(og)) {
                dst[gr * og..(gr + 1) * og].copy_from_slice(src);
            }
        }
        let dequant = conv_op(&g, &x, &weights, bias.as_deref(), act, Kernels::Dequant, threads);
        // Short patches run the f32 kernels in both families.
        if k < qbake::ops::MIN_INT8_COLS {
            want.clone_from(&dequant);
        }
        let got = conv_op(&g, &x, &weights, bias.as_deref(), act, Kernels::Hybrid, threads);
        for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
            assert!(
                same(a, b),
                "{g:?} {act:?}: Hybrid [{}, {}] = {a} ({:#x}), definition {b} ({:#x})",
                i / g.out_c,
                i % g.out_c,
                a.to_bits(),
                b.to_bits()
            );
        }
        let values: Vec<f32> = quantized.iter().flat_map(|q| q.values(og, k)).collect();
        check_against_exact(
            "8-bit weights, Dequant",
            &g,
            &rows,
            &values,
            bias.as_deref(),
            act,
            &dequant,
        );
        drop(weights);
    }

    if g.is_depthwise() {
        depthwise(src, &g, &x, &rows, bias.as_deref(), act, threads);
    }
    pools(&g, &x);
    layout_ops(src, &g, &x);
}

/// `ops::conv2d` (one group) or `ops::grouped_conv2d`.
fn conv_op(
    g: &Conv2d,
    x: &[f32],
    w: &[Weight],
    bias: Option<&[f32]>,
    act: Activation,
    kernels: Kernels,
    threads: usize,
) -> Vec<f32> {
    let exec = Exec { kernels, threads };
    let mut y = vec![f32::NAN; g.out_pixels() * g.out_c];
    if g.groups == 1 {
        ops::conv2d(&exec, x, g, &w[0], bias, act, &mut y);
    } else {
        let refs: Vec<&Weight> = w.iter().collect();
        ops::grouped_conv2d(&exec, x, g, &refs, bias, act, &mut y);
    }
    y
}

/// Every depthwise kernel near the exact result; the op in both families
/// gives the kernel's bits on its cached taps, which are the weights'.
fn depthwise(
    src: &mut Source,
    g: &Conv2d,
    x: &[f32],
    rows: &[Vec<f32>],
    bias: Option<&[f32]>,
    act: Activation,
    threads: usize,
) {
    let (c, kk) = (g.in_c, g.kh * g.kw);
    // Weights [c, kh * kw] as the planner bakes them; the kernels take [kh, kw, c].
    let w = finite(src, c * kk);
    let taps: Vec<f32> = (0..kk * c).map(|i| w[(i % c) * kk + i / c]).collect();
    // Not bit for bit with each other: the scalar kernel rounds each product
    // and each sum (`o += v * w`), the AVX2 kernel fuses them (FMA).
    for kernel in f32_kernels() {
        let mut y = vec![f32::NAN; g.out_pixels() * c];
        conv::depthwise_with(kernel, x, g, &taps, bias, act, &mut y);
        check_against_exact(&format!("depthwise {kernel:?}"), g, rows, &w, bias, act, &y);
    }

    let quantized = Quantized::new(src, c, kk);
    let data = StaticSlice::new(le_bytes(&w));
    // SAFETY: the weights are dropped at the end of this function, before
    // `quantized` and `data` (declared before them).
    let weights = unsafe {
        [
            (quantized.values(c, kk), quantized.weight(c, kk)),
            (w, float_weight(&data, c, kk)),
        ]
    };
    for (values, weight) in weights {
        let dw = DepthwiseWeight {
            weight,
            taps: TapsCache::new(),
        };
        let taps = dw.taps();
        for (i, &t) in taps.iter().enumerate() {
            assert!(same(t, values[(i % c) * kk + i / c]), "tap {i}");
        }
        let mut want = vec![0.0; g.out_pixels() * c];
        conv::depthwise(x, g, taps, bias, act, &mut want);
        for kernels in [Kernels::Dequant, Kernels::Hybrid] {
            let mut y = vec![f32::NAN; want.len()];
            ops::depthwise_conv2d(&Exec { kernels, threads }, x, g, &dw, bias, act, &mut y);
            assert!(
                y.iter().zip(&want).all(|(&a, &b)| same(a, b)),
                "{g:?}: depthwise op, {kernels:?}"
            );
        }
        check_against_exact("depthwise op", g, rows, &values, bias, act, &want);
    }
    pointwise_pair(src, g, bias, act, threads);
}

/// A 1x1 convolution into the depthwise one, run as one op in bands of any
/// height: the bits of the two ops, on inputs of any value, in both
/// families, with 8-bit and f32 pointwise weights.
fn pointwise_pair(src: &mut Source, g: &Conv2d, bias: Option<&[f32]>, act: Activation, threads: usize) {
    let (c, kk) = (g.in_c, g.kh * g.kw);
    let cin = 1 + usize::from(src.byte() % 4);
    let pointwise_g = Conv2d {
        in_c: cin,
        kh: 1,
        kw: 1,
        stride: [1, 1],
        dilation: [1, 1],
        pads: [0; 4],
        groups: 1,
        ..*g
    };
    let x = src.values(g.batch * g.in_h * g.in_w * cin);
    let pointwise_act = src.activation();
    let pointwise_bias = (!src.byte().is_multiple_of(3)).then(|| src.values(c));
    let band = 1 + usize::from(src.byte()) % (g.out_h() + 1);
    let (quantized, taps) = (Quantized::new(src, c, cin), Quantized::new(src, c, kk));
    let w = finite(src, c * cin);
    let data = StaticSlice::new(le_bytes(&w));
    // SAFETY: the weights are dropped at the end of this function, before
    // `quantized`, `taps` and `data` (declared before them).
    let (pointwise, dw) = unsafe {
        (
            [quantized.weight(c, cin), float_weight(&data, c, cin)],
            DepthwiseWeight {
                weight: taps.weight(c, kk),
                taps: TapsCache::new(),
            },
        )
    };
    for w in &pointwise {
        for kernels in [Kernels::Dequant, Kernels::Hybrid] {
            let exec = Exec { kernels, threads };
            let mut mid = vec![f32::NAN; g.batch * g.in_h * g.in_w * c];
            let mut want = vec![f32::NAN; g.out_pixels() * c];
            ops::conv2d(
                &exec,
                &x,
                &pointwise_g,
                w,
                pointwise_bias.as_deref(),
                pointwise_act,
                &mut mid,
            );
            ops::depthwise_conv2d(&exec, &mid, g, &dw, bias, act, &mut want);
            let mut y = vec![f32::NAN; want.len()];
            let layer = (w, pointwise_bias.as_deref(), pointwise_act);
            ops::pointwise_depthwise_in_bands(&exec, &x, layer, g, &dw, bias, act, band, &mut y);
            assert!(
                y.iter().zip(&want).all(|(&a, &b)| same(a, b)),
                "{g:?}: 1x1 into depthwise in bands of {band}, {kernels:?}"
            );
        }
    }
}

/// Max, average and global average pooling over the geometry's window.
fn pools(g: &Conv2d, x: &[f32]) {
    let c = g.in_c;
    let p = Conv2d {
        out_c: c,
        groups: 1,
        ..*g
    };
    let pixels = p.out_pixels();
    let window = p.kh * p.kw;
    // Every tap of every window, and which lie inside the input (a patch
    // of ones is 1.0 there, +0.0 in the padding).
    let rows = patches(x, &p, 0, c);
    let ones = patches(&vec![1.0; x.len()], &p, 0, c);
    let mut max = vec![f32::NAN; pixels * c];
    ops::max_pool(x, &p, &mut max);
    for pix in 0..pixels {
        for ch in 0..c {
            let mut want = f32::NEG_INFINITY;
            for t in (0..window).map(|t| (pix * window + t) * c + ch) {
                // The largest inside; NaN never wins, the first of equals stays.
                if ones[t] == 1.0 && rows[t] > want {
                    want = rows[t];
                }
            }
            let got = max[pix * c + ch];
            assert!(
                same(got, want),
                "{p:?}: max pool [{pix}, {ch}] = {got}, want {want}"
            );
        }
    }
    for include in [false, true] {
        let mut avg = vec![f32::NAN; pixels * c];
        ops::average_pool(x, &p, include, &mut avg);
        for pix in 0..pixels {
            for ch in 0..c {
                let values: Vec<f32> = (0..window)
                    .map(|t| (pix * window + t) * c + ch)
                    .filter(|&t| ones[t] == 1.0)
                    .map(|t| rows[t])
                    .collect();
                let divisor = if include { window } else { values.len().max(1) };
                check_mean(
                    &format!("{p:?} average pool ({include})"),
                    &values,
                    divisor,
                    avg[pix * c + ch],
                );
            }
        }
    }
    let hw = g.in_h * g.in_w;
    let mut gap = vec![f32::NAN; g.batch * c];
    ops::global_average_pool(x, g.batch, hw, c, &mut gap);
    for b in 0..g.batch {
        for ch in 0..c {
            let values: Vec<f32> = (0..hw).map(|i| x[(b * hw + i) * c + ch]).collect();
            check_mean("global average pool", &values, hw, gap[b * c + ch]);
        }
    }
}

/// `got` is the mean of `values` over `divisor`: a sum in f32, times the
/// rounded reciprocal.
fn check_mean(who: &str, values: &[f32], divisor: usize, got: f32) {
    let ones = vec![1.0; values.len()];
    let inv = 1.0 / divisor as f64;
    let ok = match expect(values, &ones, 0.0) {
        Expect::Exactly(v) => same(got, v),
        Expect::Near { value, tolerance } => {
            let want = value * inv;
            // The reciprocal and the product each round once more.
            let tol = tolerance * inv + want.abs() * 2.0 * f64::from(f32::EPSILON) + 2f64.powi(-148);
            got.is_finite() && (f64::from(got) - want).abs() <= tol
        }
        Expect::Any => true,
    };
    assert!(ok, "{who}: mean of {values:?} over {divisor} gave {got}");
}

/// Pad, the layout changes and a per-channel Mul, bit for bit.
fn layout_ops(src: &mut Source, g: &Conv2d, x: &[f32]) {
    let (n, h, w, c) = (g.batch, g.in_h, g.in_w, g.in_c);
    let pads = [0; 4].map(|_: usize| usize::from(src.byte() % 4));
    let value = src.special(1.0);
    let [top, left, bottom, right] = pads;
    let (ph, pw) = (h + top + bottom, w + left + right);
    let mut y = vec![f32::NAN; n * ph * pw * c];
    ops::pad_nhwc(x, n, h, w, c, pads, value, &mut y);
    for b in 0..n {
        for i in 0..ph {
            for j in 0..pw {
                for ch in 0..c {
                    let inside = (top..top + h).contains(&i) && (left..left + w).contains(&j);
                    let want = if inside {
                        x[((b * h + i - top) * w + j - left) * c + ch]
                    } else {
                        value
                    };
                    let got = y[((b * ph + i) * pw + j) * c + ch];
                    assert!(same(got, want), "pad {pads:?} [{b}, {i}, {j}, {ch}]");
                }
            }
        }
    }

    let hw = h * w;
    let mut nchw = vec![f32::NAN; x.len()];
    ops::nhwc_to_nchw(x, n, hw, c, &mut nchw);
    for b in 0..n {
        for p in 0..hw {
            for ch in 0..c {
                assert!(
                    same(nchw[(b * c + ch) * hw + p], x[(b * hw + p) * c + ch]),
                    "NHWC to NCHW"
                );
            }
        }
    }
    let mut back = vec![f32::NAN; x.len()];
    ops::nchw_to_nhwc(&nchw, n, c, hw, &mut back);
    assert!(back.iter().zip(x).all(|(&a, &b)| same(a, b)), "NCHW to NHWC");

    let constant = src.values(c);
    let act = src.activation();
    let mut y = vec![f32::NAN; x.len()];
    ops::mul_constant(x, &constant, act, &mut y);
    for (i, (&got, &v)) in y.iter().zip(x).enumerate() {
        assert!(same(got, act.apply(v * constant[i % c])), "mul_constant [{i}]");
    }
}

/// f32 values as the little-endian bytes a `FloatWeight` holds.
fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}
