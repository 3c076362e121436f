use super::*;
use crate::test_values::values;
use proptest::prelude::*;

/// A one-image geometry with stride 1, dilation 1 and no padding.
fn geometry(c: usize, out_c: usize, hw: [usize; 2], k: [usize; 2], groups: usize) -> Conv2d {
    Conv2d {
        batch: 1,
        in_h: hw[0],
        in_w: hw[1],
        in_c: c,
        out_c,
        kh: k[0],
        kw: k[1],
        stride: [1, 1],
        dilation: [1, 1],
        pads: [0; 4],
        groups,
    }
}

/// `g` with the given stride, dilation and padding.
fn with(g: Conv2d, stride: usize, dilation: usize, pads: [usize; 4]) -> Conv2d {
    Conv2d {
        stride: [stride; 2],
        dilation: [dilation; 2],
        pads,
        ..g
    }
}

fn kernels() -> Vec<Kernel> {
    Kernel::available()
}

/// Whether the AVX2+FMA depthwise kernel runs here.
#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    Kernel::available().contains(&Kernel::Avx2Fma)
}

fn close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "{what} [{i}]: {g} vs {w}"
        );
    }
}

/// A hand-checked case: a 3x3 input, a 2x2 kernel, stride 1, asymmetric
/// padding (TF "SAME" exported to ONNX pads only the end: [0, 0, 1, 1]).
#[test]
fn asymmetric_padding_by_hand() {
    let g = with(geometry(1, 1, [3, 3], [2, 2], 1), 1, 1, [0, 0, 1, 1]);
    assert_eq!((g.out_h(), g.out_w()), (3, 3));
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let w = [1.0, 10.0, 100.0, 1000.0]; // taps (0,0) (0,1) (1,0) (1,1)
    let mut y = vec![0.0; 9];
    conv2d_reference(&x, &g, &w, None, Activation::None, &mut y);
    // y[0][0] = 1 + 20 + 400 + 5000; the last column and row see zeros past the edge.
    // y[0][2] = 3 + 600 (its right column is padding); y[2][0] = 7 + 80.
    assert_eq!(y, [5421.0, 6532.0, 603.0, 8754.0, 9865.0, 906.0, 87.0, 98.0, 9.0]);
}

/// Stride 2 and dilation 2 by hand on a 5x5 ramp with a 3x3 all-ones kernel.
#[test]
fn stride_and_dilation_by_hand() {
    let x: Vec<f32> = (0..25).map(|v| v as f32).collect();
    let ones = [1.0; 9];
    let g = with(geometry(1, 1, [5, 5], [3, 3], 1), 2, 1, [0; 4]);
    let mut y = vec![0.0; 4];
    conv2d_reference(&x, &g, &ones, None, Activation::None, &mut y);
    // Windows at (0,0), (0,2), (2,0), (2,2): 9 * centre value.
    assert_eq!(y, [54.0, 72.0, 144.0, 162.0]);
    let g = with(geometry(1, 1, [5, 5], [3, 3], 1), 1, 2, [0; 4]);
    let mut y = vec![0.0; 1];
    conv2d_reference(&x, &g, &ones, None, Activation::None, &mut y);
    // Taps at rows and columns 0, 2, 4: 9 * 12.
    assert_eq!(y, [108.0]);
}

#[test]
fn geometry_checks() {
    assert!(
        with(geometry(4, 4, [3, 3], [5, 5], 1), 1, 1, [0; 4])
            .check()
            .is_err()
    );
    assert!(
        with(geometry(4, 4, [3, 3], [5, 5], 1), 1, 1, [1, 1, 1, 1])
            .check()
            .is_ok()
    );
    assert!(
        with(geometry(6, 4, [3, 3], [1, 1], 4), 1, 1, [0; 4])
            .check()
            .is_err()
    );
    assert!(
        with(geometry(4, 4, [3, 3], [1, 1], 1), 0, 1, [0; 4])
            .check()
            .is_err()
    );
}

proptest! {
    /// im2col rows times the weights are the convolution.
    #[test]
    fn im2col_then_gemm_is_the_convolution(
        c in 1usize..6, out_c in 1usize..7, h in 1usize..8, w in 1usize..8, k in 1usize..4,
        stride in 1usize..3, dilation in 1usize..3, pads in prop::array::uniform4(0usize..3), seed in any::<u64>(),
    ) {
        let g = with(geometry(c, out_c, [h, w], [k, k], 1), stride, dilation, pads);
        prop_assume!(g.check().is_ok());
        let x = values(seed, h * w * c);
        let wt = values(seed ^ 7, out_c * g.patch_len());
        let bias = values(seed ^ 9, out_c);
        let mut want = vec![0.0; g.out_pixels() * out_c];
        conv2d_reference(&x, &g, &wt, Some(&bias), Activation::Relu, &mut want);
        let mut cols = vec![f32::NAN; g.out_pixels() * g.patch_len()];
        im2col(&x, &g, &mut cols);
        let mut got = vec![0.0; want.len()];
        crate::gemm_f32::gemm_reference(&cols, &wt, g.patch_len(), Some(&bias), Activation::Relu, &mut got);
        close(&got, &want, "im2col");
    }

    /// Every depthwise kernel is the grouped convolution with groups = channels.
    #[test]
    fn depthwise_kernels_match_the_definition(
        c in 1usize..45, h in 1usize..9, w in 1usize..9, k in 1usize..4, stride in 1usize..3,
        dilation in 1usize..3, pads in prop::array::uniform4(0usize..3), seed in any::<u64>(),
    ) {
        let g = with(geometry(c, c, [h, w], [k, k], c), stride, dilation, pads);
        prop_assume!(g.check().is_ok());
        let x = values(seed, h * w * c);
        // Definition weights [c, kh, kw, 1]; kernel taps [kh, kw, c].
        let wt = values(seed ^ 3, c * k * k);
        let taps: Vec<f32> = (0..k * k * c).map(|i| wt[(i % c) * k * k + i / c]).collect();
        let bias = values(seed ^ 5, c);
        let act = Activation::Clip { min: -0.5, max: 0.75 };
        let mut want = vec![0.0; g.out_pixels() * c];
        conv2d_reference(&x, &g, &wt, Some(&bias), act, &mut want);
        for kernel in kernels() {
            let mut got = vec![f32::NAN; want.len()];
            depthwise_with(kernel, &x, &g, &taps, Some(&bias), act, &mut got);
            close(&got, &want, &format!("{kernel:?}"));
        }
    }
}

/// Each SIMD depthwise kernel (AVX2, AVX-512), whichever pixels it
/// computes together, gives each output exactly `bias` followed by one FMA
/// per tap inside the input, in tap order: the same bits as this plain
/// loop. Runs them on inputs from `seed` and returns the first output that
/// differs.
#[cfg(target_arch = "x86_64")]
fn simd_depthwise_differs_from_the_fma_chain(g: &Conv2d, seed: u64) -> Option<String> {
    let c = g.in_c;
    let x = values(seed, g.batch * g.in_h * g.in_w * c);
    let taps = values(seed ^ 3, g.kh * g.kw * c);
    let bias = values(seed ^ 5, c);
    let act = Activation::Clip { min: -0.5, max: 0.75 };
    let mut want = vec![0.0f32; g.out_pixels() * c];
    let mut outs = want.chunks_exact_mut(c);
    for b in 0..g.batch {
        for oh in 0..g.out_h() {
            for ow in 0..g.out_w() {
                let out = outs.next().expect("sized above");
                for (ch, out) in out.iter_mut().enumerate() {
                    let mut acc = bias[ch];
                    for i in 0..g.kh {
                        for j in 0..g.kw {
                            if let Some((ih, iw)) = g.tap(oh, ow, i, j) {
                                let v = x[((b * g.in_h + ih) * g.in_w + iw) * c + ch];
                                acc = v.mul_add(taps[(i * g.kw + j) * c + ch], acc);
                            }
                        }
                    }
                    *out = act.apply(acc);
                }
            }
        }
    }
    for kernel in kernels().into_iter().filter(|&k| k != Kernel::Scalar) {
        let mut got = vec![f32::NAN; want.len()];
        depthwise_with(kernel, &x, g, &taps, Some(&bias), act, &mut got);
        if let Some((i, (a, b))) = got
            .iter()
            .zip(&want)
            .enumerate()
            .find(|(_, (a, b))| a.to_bits() != b.to_bits())
        {
            return Some(format!("{kernel:?} [{i}]: {a} vs {b} in {g:?}"));
        }
    }
    None
}

#[cfg(target_arch = "x86_64")]
proptest! {
    /// Bit for bit: wide rows (several groups of pixels computed together,
    /// and the remainders), strides, dilations, uneven padding, two images,
    /// channel counts around the kernels' 8- to 64-channel blocks.
    #[test]
    fn depthwise_simd_is_the_fma_chain(
        c in 1usize..70, h in 1usize..8, w in 1usize..24, k in 1usize..6, stride in 1usize..4,
        dilation in 1usize..3, pads in prop::array::uniform4(0usize..3), seed in any::<u64>(),
    ) {
        prop_assume!(has_avx2_fma());
        let g = Conv2d { batch: 2, ..with(geometry(c, c, [h, w], [k, k], c), stride, dilation, pads) };
        prop_assume!(g.check().is_ok());
        let differs = simd_depthwise_differs_from_the_fma_chain(&g, seed);
        prop_assert!(differs.is_none(), "{}", differs.unwrap_or_default());
    }
}

/// Strides 1 and 2 with the real models' kernel widths, bit for bit: rows
/// of 8 to 40 pixels (whole and partial groups of four and of eight, the
/// windowed path's), kernels taller, shorter or as tall as wide, channel
/// counts around the 8- to 64-channel blocks.
#[cfg(target_arch = "x86_64")]
#[test]
fn depthwise_simd_rows_are_the_fma_chain() {
    if !has_avx2_fma() {
        return;
    }
    let mut seed = 1;
    for (kh, kw) in [(3, 3), (5, 5), (1, 3), (5, 3), (3, 5), (7, 5), (8, 3)] {
        for (w, stride) in [8, 9, 15, 16, 17, 24, 40]
            .into_iter()
            .flat_map(|w| [(w, 1), (2 * w + 3, 2)])
        {
            for c in [1, 7, 8, 9, 16, 17, 31, 33, 48, 64, 65, 81] {
                for pads in [
                    [0; 4],
                    [1, 1, 1, 1],
                    [kh / 2, kw / 2, kh / 2, kw / 2],
                    [0, 2, 1, 0],
                ] {
                    let g = Conv2d {
                        kh,
                        kw,
                        pads,
                        stride: [stride; 2],
                        ..geometry(c, c, [kh + 2, w], [kh, kw], c)
                    };
                    if g.check().is_err() {
                        continue;
                    }
                    seed += 1;
                    if let Some(differs) = simd_depthwise_differs_from_the_fma_chain(&g, seed) {
                        panic!("{differs}");
                    }
                }
            }
        }
    }
}

#[test]
fn depthwise_special_values_agree() {
    // NaN, infinities and huge values in some channels: the kernels agree on
    // which outputs are NaN, and on the rest. 19 channels take the AVX2
    // kernel's single-block and scalar-tail paths; 40 its four-block one.
    for c in [19, 40] {
        let g = with(geometry(c, c, [4, 4], [3, 3], c), 1, 1, [1, 1, 1, 1]);
        let mut x = values(1, 16 * c);
        x[3] = f32::NAN;
        x[c * 5 + 8] = f32::INFINITY;
        x[c * 9 + 17] = f32::MAX;
        x[c * 10 + c - 1] = f32::NEG_INFINITY;
        let taps = values(2, 9 * c);
        // ClipChannels: the kernels apply its lower bound (NaN to it).
        for act in [Activation::None, Activation::ClipChannels { min: -0.5, max: &[] }] {
            let mut outs = Vec::new();
            for kernel in kernels() {
                let mut y = vec![0.0; 16 * c];
                depthwise_with(kernel, &x, &g, &taps, None, act, &mut y);
                outs.push(y);
            }
            for y in &outs[1..] {
                for (a, b) in y.iter().zip(&outs[0]) {
                    assert!(
                        a.is_nan() == b.is_nan()
                            && (a.is_nan() || a == b || (a - b).abs() <= 1e-5 * b.abs().max(1.0)),
                        "{c} channels, {act:?}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn pools_by_hand() {
    // 1 channel, 3x3 ramp 1..9, 2x2 windows, stride 1, padding at the end.
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    let g = with(geometry(1, 1, [3, 3], [2, 2], 1), 1, 1, [0, 0, 1, 1]);
    let mut y = vec![0.0; 9];
    pool(&x, &g, Pool::Max, &mut y);
    assert_eq!(y, [5.0, 6.0, 6.0, 8.0, 9.0, 9.0, 8.0, 9.0, 9.0]);
    pool(
        &x,
        &g,
        Pool::Average {
            count_include_pad: false,
        },
        &mut y,
    );
    assert_eq!(y[..3], [3.0, 4.0, 4.5]);
    assert_eq!(y[8], 9.0);
    pool(
        &x,
        &g,
        Pool::Average {
            count_include_pad: true,
        },
        &mut y,
    );
    assert_eq!(y[2], 9.0 / 4.0);
    assert_eq!(y[8], 9.0 / 4.0);
    let mut gap = vec![0.0; 2];
    global_average_pool(&[1.0, 10.0, 3.0, 30.0], 1, 2, 2, &mut gap);
    assert_eq!(gap, [2.0, 20.0]);
}

#[test]
fn depthwise_threads_split_rows_not_results() {
    // 64x64 pixels, 64 channels, 3x3 with stride 1: past the threshold.
    let g = with(geometry(64, 64, [64, 64], [3, 3], 64), 1, 1, [1, 1, 1, 1]);
    assert!(g.out_pixels() * 64 * 9 >= crate::parallel::MIN_PARALLEL_DEPTHWISE_MACS);
    let x = values(7, 64 * 64 * 64);
    let taps = values(8, 9 * 64);
    let bias = values(9, 64);
    for kernel in kernels() {
        let mut one = vec![0.0; x.len()];
        depthwise_threads(kernel, 1, &x, &g, &taps, Some(&bias), Activation::Relu, &mut one);
        for threads in [2, 3, 7] {
            let mut many = vec![f32::NAN; x.len()];
            depthwise_threads(
                kernel,
                threads,
                &x,
                &g,
                &taps,
                Some(&bias),
                Activation::Relu,
                &mut many,
            );
            assert!(
                one.iter().zip(&many).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{kernel:?} x{threads}"
            );
        }
    }
}

#[test]
fn short_copies_copy_every_value() {
    for n in 0..40 {
        let src: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
        let mut dst = vec![f32::NAN; n];
        super::copy(&mut dst, &src);
        assert_eq!(dst, src, "{n} values");
    }
}

/// The direct convolution (few input channels) of every kernel, at 1 and 3
/// threads, against the FMA chain it defines (from zero, one FMA per tap
/// inside and input channel in `k` order, then the bias) bit for bit, and
/// against the f64 reference within rounding; with the output channels
/// past a whole panel and rows with and without whole groups of eight
/// pixels. The SIMD f32 GEMMs over the im2col rows, the path it replaces,
/// give the same bits.
fn direct_differs(g: &Conv2d, seed: u64) -> Option<String> {
    let (c, n, k) = (g.in_c, g.out_c, g.patch_len());
    let x = values(seed, g.batch * g.in_h * g.in_w * c);
    let w = values(seed ^ 3, n * k);
    let bias = values(seed ^ 5, n);
    let act = Activation::Clip { min: -0.5, max: 0.75 };
    let packed = PackedF32::from_rows(&w, n, k);
    let mut want = vec![0.0f32; g.out_pixels() * n];
    let mut outs = want.chunks_exact_mut(n);
    for b in 0..g.batch {
        for oh in 0..g.out_h() {
            for ow in 0..g.out_w() {
                let out = outs.next().expect("sized above");
                for (o, out) in out.iter_mut().enumerate() {
                    let mut acc = 0.0f32;
                    for i in 0..g.kh {
                        for j in 0..g.kw {
                            if let Some((ih, iw)) = g.tap(oh, ow, i, j) {
                                for ci in 0..c {
                                    let v = x[((b * g.in_h + ih) * g.in_w + iw) * c + ci];
                                    acc = v.mul_add(w[o * k + (i * g.kw + j) * c + ci], acc);
                                }
                            }
                        }
                    }
                    *out = act.apply(acc + bias[o]);
                }
            }
        }
    }
    let mut reference = vec![0.0f32; want.len()];
    conv2d_reference(&x, g, &w, Some(&bias), act, &mut reference);
    close(&want, &reference, "the FMA chain against the f64 reference");
    let mut cols = vec![0.0f32; g.out_pixels() * k];
    im2col(&x, g, &mut cols);
    for kernel in kernels().into_iter().filter(|&k| k != Kernel::Scalar) {
        let mut gemm = vec![f32::NAN; want.len()];
        crate::gemm_f32::gemm_with(kernel, &cols, &packed, Some(&bias), act, &mut gemm);
        if let Some((i, (a, b))) = gemm
            .iter()
            .zip(&want)
            .enumerate()
            .find(|(_, (a, b))| a.to_bits() != b.to_bits())
        {
            return Some(format!("im2col + {kernel:?} GEMM [{i}]: {a} vs {b} in {g:?}"));
        }
    }
    for kernel in kernels() {
        for threads in [1, 3] {
            let mut got = vec![f32::NAN; want.len()];
            direct_threads(kernel, threads, &x, g, &packed, Some(&bias), act, &mut got);
            if let Some((i, (a, b))) = got
                .iter()
                .zip(&want)
                .enumerate()
                .find(|(_, (a, b))| a.to_bits() != b.to_bits())
            {
                return Some(format!(
                    "{kernel:?}, {threads} threads [{i}]: {a} vs {b} in {g:?}"
                ));
            }
        }
    }
    None
}

proptest! {
    #[test]
    fn direct_conv_is_the_fma_chain(
        c in 1usize..=MAX_DIRECT_IN_C, out_c in 1usize..40, h in 1usize..7, w in 1usize..30, k in 1usize..6,
        stride in 1usize..4, dilation in 1usize..3, pads in prop::array::uniform4(0usize..3), seed in any::<u64>(),
    ) {
        let g = Conv2d { batch: 2, ..with(geometry(c, out_c, [h, w], [k, k], 1), stride, dilation, pads) };
        prop_assume!(g.check().is_ok());
        let differs = direct_differs(&g, seed);
        prop_assert!(differs.is_none(), "{}", differs.unwrap_or_default());
    }
}

/// The image models' stems: 3x3 stride 2 on 3 channels, "SAME" padding
/// at both ends or only at the end, into 16, 32 and 33 channels.
#[test]
fn direct_conv_stems() {
    for (hw, pads) in [(32, [0, 0, 1, 1]), (33, [1, 1, 1, 1]), (20, [0; 4])] {
        for out_c in [16, 32, 33] {
            let g = with(geometry(3, out_c, [hw, hw], [3, 3], 1), 2, 1, pads);
            if let Some(differs) = direct_differs(&g, hw as u64 * 7 + out_c as u64) {
                panic!("{differs}");
            }
        }
    }
}
