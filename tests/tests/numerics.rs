//! Run-time numerics: NaN, ±Inf, ±f32::MAX, subnormals and zeros through the
//! baked fixture models, in both kernel families. Each gives a defined
//! output, asserted here and listed in docs/robustness.md:
//!
//! - `Kernels::Hybrid` quantizes each activation row of an int8 layer (8-bit
//!   weights, rows of at least `ops::MIN_INT8_COLS` values): a NaN counts
//!   as 0, a row holding an infinity quantizes to all zeros (scale 0), so
//!   the layer gives its bias for that row; f32::MAX sets the row's scale,
//!   and the row's other values round to 0. Shorter rows run the f32
//!   kernels, as in Dequant, with the same bits.
//! - `Kernels::Dequant` is IEEE f32 arithmetic: NaN propagates, an infinity
//!   times an exactly zero weight is NaN (0.0 is exact in qbake's weights),
//!   sums of large values overflow to ±Inf.
//! - In both, ReLU and Clip map NaN to their lower bound (`Activation::apply`),
//!   and softmax gives NaN for a slice holding NaN or +Inf.
//! - Rows never mix: a bad value changes only the outputs of its own row.

use qbake::hybrid::{self, QuantizedRows};
use qbake::{Activation, Kernels, Weight, gemm_f32};

mod tiny {
    qbake::quantized_model!("../models/tiny.safetensors");
}
mod tiny_q {
    // Every weight in 8 bits, in rows of 4: both families run the f32 kernels.
    qbake::quantized_model!("../models/tiny.safetensors", keep_float_below = 1);
}
mod wide_q {
    // Every weight in 8 bits, in rows of 32: the Hybrid family runs the int8 path.
    qbake::quantized_model!("../models/wide.safetensors", keep_float_below = 1);
}
// The tests below need their larger weights in 8 bits: the pre-4096
// default of `keep_float_below` (fc1 of the MLP has 1536 values).
mod mlp {
    qbake::quantized_model!("../models/mlp.safetensors", keep_float_below = 1024);
}
mod all_ops {
    qbake::quantized_model!("../models/all_ops.safetensors", keep_float_below = 1024);
}
mod mlp_threads {
    // Its own statics: only the concurrency test touches its cache.
    qbake::quantized_model!("../models/mlp.safetensors", keep_float_below = 1024);
}

const FAMILIES: [Kernels; 2] = [Kernels::Hybrid, Kernels::Dequant];

/// Bitwise equality, NaNs equal.
fn same(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

const SPECIALS: [f32; 7] = [
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::MAX,
    -f32::MAX,
    1e-45,
    0.0,
];

/// tiny's four inputs, repeated to wide's 32.
fn widen(x: [f32; 4]) -> [f32; 32] {
    std::array::from_fn(|k| x[k % 4])
}

/// Single Dense layers against the runtime's definitions, bit for bit.
#[test]
fn one_dense_layer_gives_the_definitions_outputs_for_any_value() {
    let Weight::U8(w) = &wide_q::weights::FC_WEIGHT else {
        panic!("keep_float_below = 1 quantizes the weight")
    };
    assert!(w.cols >= qbake::ops::MIN_INT8_COLS, "wide runs in int8");
    let mut inputs: Vec<[f32; 4]> = vec![[0.0; 4], [f32::NAN; 4], [1.0, -2.0, 0.5, 3.0]];
    for (i, &s) in SPECIALS.iter().enumerate() {
        let mut x = [0.25, -1.5, 2.0, 0.75];
        x[i % 4] = s;
        inputs.push(x);
        inputs.push([s; 4]);
    }
    for x4 in inputs {
        let x = widen(x4);
        // Hybrid: the quantized row times the 8-bit weights, exactly as defined.
        let hybrid = wide_q::Model::new(Kernels::Hybrid).forward(&[x]);
        let mut want = [0.0; 3];
        hybrid::gemm_reference(
            &QuantizedRows::quantize(&x, 32),
            w,
            None,
            Activation::None,
            &mut want,
        );
        assert!(
            same(&hybrid[0], &want),
            "{x:?}: Hybrid {:?}, definition {want:?}",
            hybrid[0]
        );

        // Dequant: f32 arithmetic on the dequantized weights.
        let dequant = wide_q::Model::new(Kernels::Dequant).forward(&[x]);
        let rows: Vec<f32> = (0..3)
            .flat_map(|n| (0..32).map(move |k| (n, k)))
            .map(|(n, k)| w.dequantized().get(n, k))
            .collect();
        let mut want = [0.0; 3];
        gemm_f32::gemm_reference(&x, &rows, 32, None, Activation::None, &mut want);
        for (n, (got, one)) in dequant[0].iter().zip(want).enumerate() {
            // Within the rounding of 32 products and their sum.
            let magnitude: f32 = (0..32).map(|k| (x[k] * rows[n * 32 + k]).abs()).sum();
            let close = (got - one).abs() <= 34.0 * f32::EPSILON * magnitude.max(f32::MIN_POSITIVE);
            // An overflowing sum is ±Inf or NaN depending on the kernel: FMA
            // rounds a product once with the sum, the definition twice.
            let overflow = !got.is_finite() && !one.is_finite() && x.iter().any(|v| v.abs() == f32::MAX);
            assert!(
                same(&[*got], &[one]) || close || overflow,
                "{x:?}: Dequant {:?}, definition {want:?}",
                dequant[0]
            );
        }

        // Rows shorter than MIN_INT8_COLS run the f32 kernels in both
        // families, 8-bit weights or not: the same bits.
        let a = tiny_q::Model::new(Kernels::Hybrid).forward(&[x4]);
        let b = tiny_q::Model::new(Kernels::Dequant).forward(&[x4]);
        assert!(same(&a[0], &b[0]), "{x4:?}: short rows, {:?} vs {:?}", a[0], b[0]);
        let a = tiny::Model::new(Kernels::Hybrid).forward(&[x4]);
        let b = tiny::Model::new(Kernels::Dequant).forward(&[x4]);
        assert!(
            same(&a[0], &b[0]),
            "{x4:?}: f32 weights, {:?} vs {:?}",
            a[0],
            b[0]
        );
    }
}

#[test]
fn documented_outputs_of_one_dense_layer() {
    let hybrid = wide_q::Model::new(Kernels::Hybrid);
    let dequant = wide_q::Model::new(Kernels::Dequant);
    // Zeros: exact zeros (no bias) in both families.
    for m in [hybrid, dequant] {
        assert_eq!(*m.forward(&[[0.0; 32]]), [[0.0; 3]]);
    }
    // Hybrid: a NaN counts as 0.
    let x = widen([0.25, -1.5, 2.0, 0.75]);
    for i in [0, 5, 18, 31] {
        let (mut with_nan, mut with_zero) = (x, x);
        with_nan[i] = f32::NAN;
        with_zero[i] = 0.0;
        assert!(same(
            &hybrid.forward(&[with_nan])[0],
            &hybrid.forward(&[with_zero])[0]
        ));
        // Dequant: NaN propagates to every output.
        assert!(dequant.forward(&[with_nan])[0].iter().all(|v| v.is_nan()));
    }
    // Hybrid: a row holding an infinity quantizes to zeros: the output is the bias (none: 0).
    for inf in [f32::INFINITY, f32::NEG_INFINITY] {
        let mut x = x;
        x[1] = inf;
        assert_eq!(*hybrid.forward(&[x]), [[0.0; 3]]);
        // Dequant: inf x w is ±inf, and inf x 0 (weights (1, 0) and (2, 2) are exactly 0) is NaN.
        let mut x = [1.0; 32];
        x[0] = inf;
        let y = dequant.forward(&[x])[0];
        assert_eq!(y[0], inf, "weight (0, 0) is 0.5 > 0");
        assert!(y[1].is_nan(), "weight (1, 0) is exactly 0: inf x 0 is NaN");
        assert_eq!(y[2], inf, "weight (2, 0) is 1.5 > 0");
    }
    // Hybrid: all NaN is an all-zero row.
    assert_eq!(*hybrid.forward(&[[f32::NAN; 32]]), [[0.0; 3]]);
}

/// A model's output rows.
type Rows<const R: usize, const O: usize> = Box<[[f32; O]; R]>;

/// Runs `forward` on `x` and on `x` with row 0 replaced by `row0`.
fn row_runs<const R: usize, const C: usize, const O: usize>(
    forward: impl Fn(&[[f32; C]; R]) -> Rows<R, O>,
    x: [[f32; C]; R],
    row0: [f32; C],
) -> (Rows<R, O>, Rows<R, O>) {
    let mut bad = x;
    bad[0] = row0;
    (forward(&x), forward(&bad))
}

fn input<const R: usize, const C: usize>(seed: u32) -> [[f32; C]; R] {
    let mut s = seed | 1;
    std::array::from_fn(|_| {
        std::array::from_fn(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
    })
}

/// Rows with special values through the all-ops fixture (ReLU6 first,
/// softmax last) and the MLP (ReLU, then float Dense and softmax).
#[test]
fn special_values_stay_in_their_row_and_give_documented_outputs() {
    for kernels in FAMILIES {
        let all_ops = all_ops::Model::new(kernels);
        let x: [[f32; 16]; 2] = input(7);
        let mlp = mlp::Model::new(kernels);
        let xm: [[f32; 32]; 2] = input(9);
        for (i, s) in SPECIALS.iter().enumerate() {
            for row0 in [[*s; 16], {
                let mut r = x[0];
                r[i] = *s;
                r
            }] {
                let (clean, bad) = row_runs(|x| all_ops.forward(x), x, row0);
                assert!(same(&clean[1], &bad[1]), "{kernels:?} {s}: row 1 changed");
                // ReLU6 first: whatever row 0 holds, what follows is finite,
                // and each group of the softmax (axis 1 of [2, 4, 6]) sums to 1.
                assert!(
                    bad[0].iter().all(|v| v.is_finite()),
                    "{kernels:?} {s}: {:?}",
                    bad[0]
                );
                for g in 0..6 {
                    let sum: f32 = (0..4).map(|j| bad[0][j * 6 + g]).sum();
                    assert!(
                        (sum - 1.0).abs() < 1e-5,
                        "{kernels:?} {s}: group {g} sums to {sum}"
                    );
                }
            }
            let mut row0 = xm[0];
            row0[i] = *s;
            let (clean, bad) = row_runs(|x| mlp.forward(x), xm, row0);
            assert!(same(&clean[1], &bad[1]), "{kernels:?} {s}: mlp row 1 changed");
            let sum: f32 = bad[0].iter().sum();
            let probabilities = bad[0].iter().all(|v| (0.0..=1.0).contains(v)) && (sum - 1.0).abs() < 1e-5;
            let nan = bad[0].iter().all(|v| v.is_nan());
            match (kernels, *s) {
                // Hybrid: a row with an infinity is a row of zeros.
                (Kernels::Hybrid, v) if v.is_infinite() => {
                    let zeros = row_runs(|x| mlp.forward(x), xm, [0.0; 32]).1;
                    assert!(same(&bad[0], &zeros[0]), "{kernels:?} {s}: {:?}", bad[0]);
                }
                // Dequant: ±Inf times fc1's weights is ±Inf (or NaN); ReLU
                // keeps the +Inf, the float fc2 then sums +Inf and -Inf
                // products into NaN logits, and softmax gives NaN.
                (Kernels::Dequant, v) if v.is_infinite() => assert!(nan, "{kernels:?} {s}: {:?}", bad[0]),
                // f32::MAX: fc1 may overflow to +Inf, and then the same; or not.
                (_, v) if v.abs() == f32::MAX => {
                    assert!(probabilities || nan, "{kernels:?} {s}: {:?}", bad[0])
                }
                // NaN: read as 0 (Hybrid), or NaN through fc1 and 0 after ReLU (Dequant).
                _ => assert!(probabilities, "{kernels:?} {s}: {:?}", bad[0]),
            }
        }
    }
}

/// Hybrid identities: a NaN counts as 0, a row with an infinity is a row
/// of zeros, all NaN is all zeros; through a whole model (the MLP: its first
/// layer runs in int8, then ReLU, a float Dense and softmax).
#[test]
fn hybrid_reads_nan_as_zero_and_infinite_rows_as_zero_rows() {
    let mlp = mlp::Model::new(Kernels::Hybrid);
    let x: [[f32; 32]; 2] = input(11);
    let zero_row = row_runs(|x| mlp.forward(x), x, [0.0; 32]).1;
    for inf in [f32::INFINITY, f32::NEG_INFINITY] {
        let mut row = x[0];
        row[3] = inf;
        assert!(same(&row_runs(|x| mlp.forward(x), x, row).1[0], &zero_row[0]));
    }
    assert!(same(
        &row_runs(|x| mlp.forward(x), x, [f32::NAN; 32]).1[0],
        &zero_row[0]
    ));
    let mut with_nan = x[0];
    with_nan[5] = f32::NAN;
    let mut with_zero = x[0];
    with_zero[5] = 0.0;
    assert!(same(
        &row_runs(|x| mlp.forward(x), x, with_nan).1[0],
        &row_runs(|x| mlp.forward(x), x, with_zero).1[0]
    ));
}

#[test]
fn zeros_and_huge_inputs_give_probabilities_or_a_nan_row() {
    for kernels in FAMILIES {
        for v in [0.0, f32::MAX, -f32::MAX, 1e30, -1e30] {
            let y = all_ops::Model::new(kernels).forward(&[[v; 16]; 2]);
            assert!(
                y.iter()
                    .flatten()
                    .all(|p| p.is_finite() && (0.0..=1.0).contains(p)),
                "{kernels:?} {v}"
            );
            // The MLP's ReLU lets an overflow through: a row is
            // probabilities, or NaN when fc1 overflowed to +Inf.
            let y = mlp::Model::new(kernels).forward(&[[v; 32]; 2]);
            for row in y.iter() {
                let nan = row.iter().all(|p| p.is_nan());
                let probabilities = row.iter().all(|p| (0.0..=1.0).contains(p));
                assert!(
                    probabilities || (nan && v.abs() == f32::MAX),
                    "{kernels:?} {v}: {row:?}"
                );
            }
        }
        // Zeros: the same output in both families up to the float path's
        // rounding: the first layer gives exactly its bias in each.
        let h = all_ops::Model::new(Kernels::Hybrid).forward(&[[0.0; 16]; 2]);
        let d = all_ops::Model::new(Kernels::Dequant).forward(&[[0.0; 16]; 2]);
        for (a, b) in h.iter().flatten().zip(d.iter().flatten()) {
            assert!((a - b).abs() < 0.05, "zeros: Hybrid {a}, Dequant {b}");
        }
    }
}

/// The dequant cache's first use from many threads at once: every thread
/// gets the same panels and the same output, and the cache is filled once.
#[test]
fn first_use_of_the_dequant_cache_from_many_threads() {
    let Weight::U8(fc1) = &mlp_threads::weights::FC1_WEIGHT else {
        panic!("fc1 is quantized")
    };
    assert!(!fc1.cache.is_filled(), "nothing else uses this model");
    let model = mlp_threads::Model::new(Kernels::Dequant);
    let x: [[f32; 32]; 2] = input(13);
    let barrier = std::sync::Barrier::new(8);
    let results: Vec<(usize, Box<[[f32; 10]; 2]>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let y = model.forward(&x);
                    (fc1.dequantized().data.as_ptr() as usize, y)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(fc1.cache.is_filled());
    let (addr, first) = &results[0];
    for (a, y) in &results {
        assert_eq!(a, addr, "every thread reads the same panels");
        assert!(same(y.as_flattened(), first.as_flattened()));
    }
    assert!(same(model.forward(&x).as_flattened(), first.as_flattened()));
}

// ---- Convolutions ----
//
// `conv_edges`: two images [3, 6, 5] -> a zero Pad of one pixel (folded into
// the convolution) -> Conv 3x3 to 8 channels (one weight exactly 0) ->
// depthwise Conv 3x3 padded by one -> [2, 8, 6, 5], no activation. An output
// pixel sees the input pixels within 2 rows and columns, nothing else.
// `_q` quantizes both weights, so that Hybrid runs the first convolution in
// 8 bits; by default its 216 weights stay f32 and both families run it in
// float. The depthwise convolution runs on f32 taps in both families.

mod conv_edges {
    qbake::quantized_model!("../models/conv_edges.safetensors");
}
mod conv_edges_q {
    qbake::quantized_model!("../models/conv_edges.safetensors", keep_float_below = 0);
}
mod conv_ops {
    qbake::quantized_model!("../models/conv_ops.safetensors");
}
mod conv_ops_q {
    qbake::quantized_model!("../models/conv_ops.safetensors", keep_float_below = 0);
}

type Image = [[[[f32; 5]; 6]; 3]; 2];
type EdgesOut = [[[[f32; 5]; 6]; 8]; 2];

fn image(seed: u32) -> Box<Image> {
    let rows: [[f32; 30]; 6] = input(seed);
    let mut x = qbake::boxed_zeroed::<Image>();
    for (v, r) in x
        .as_flattened_mut()
        .as_flattened_mut()
        .as_flattened_mut()
        .iter_mut()
        .zip(rows.as_flattened())
    {
        *v = *r;
    }
    x
}

/// `conv_edges` (quantized or not) in one family.
fn edges(quantized: bool, kernels: Kernels, x: &Image) -> Box<EdgesOut> {
    if quantized {
        conv_edges_q::Model::new(kernels).forward(x)
    } else {
        conv_edges::Model::new(kernels).forward(x)
    }
}

/// Input pixel `(b, h, w)` is within reach of output pixel `(ob, oh, ow)`.
fn reaches(b: usize, h: usize, w: usize, ob: usize, oh: usize, ow: usize) -> bool {
    b == ob && h.abs_diff(oh) <= 2 && w.abs_diff(ow) <= 2
}

/// A special value at one pixel (a corner, an edge, the middle; in one
/// channel or all three) changes only the outputs that pixel reaches, in
/// either family: the padding adds exact zeros, and the other image is
/// untouched. Within reach, each family gives what docs/robustness.md says.
#[test]
fn conv_special_values_stay_within_reach() {
    let x = image(21);
    for quantized in [false, true] {
        for kernels in FAMILIES {
            let clean = edges(quantized, kernels, &x);
            for (b, h, w) in [(0, 0, 0), (1, 5, 4), (0, 3, 2), (1, 0, 3)] {
                for s in SPECIALS {
                    for channels in [0..1, 0..3] {
                        let mut bad = x.clone();
                        let mut zero = x.clone();
                        for c in channels.clone() {
                            bad[b][c][h][w] = s;
                            zero[b][c][h][w] = 0.0;
                        }
                        let y = edges(quantized, kernels, &bad);
                        let what = format!(
                            "quantized {quantized} {kernels:?} {s} at ({b}, {h}, {w}) channels {channels:?}"
                        );
                        for ob in 0..2 {
                            for o in 0..8 {
                                for oh in 0..6 {
                                    for ow in 0..5 {
                                        let (v, c) = (y[ob][o][oh][ow], clean[ob][o][oh][ow]);
                                        if !reaches(b, h, w, ob, oh, ow) {
                                            assert!(
                                                same(&[v], &[c]),
                                                "{what}: ({ob}, {o}, {oh}, {ow}) changed, {c} to {v}"
                                            );
                                            continue;
                                        }
                                        let hybrid_u8 = quantized && kernels == Kernels::Hybrid;
                                        if s.is_nan() && !hybrid_u8 {
                                            // NaN times any weight, plus anything, is NaN.
                                            assert!(v.is_nan(), "{what}: ({ob}, {o}, {oh}, {ow}) = {v}");
                                        } else if s.is_infinite() && !hybrid_u8 {
                                            // ±Inf, or NaN (Inf x 0, +Inf + -Inf): never finite.
                                            assert!(!v.is_finite(), "{what}: ({ob}, {o}, {oh}, {ow}) = {v}");
                                        } else if s.is_infinite() || s.is_nan() {
                                            // Hybrid, 8 bits: NaN reads as 0; a patch row with an
                                            // Inf quantizes to zeros. Finite either way.
                                            assert!(v.is_finite(), "{what}: ({ob}, {o}, {oh}, {ow}) = {v}");
                                        }
                                    }
                                }
                            }
                        }
                        if quantized && kernels == Kernels::Hybrid && s.is_nan() {
                            // A NaN counts as 0, bit for bit.
                            let z = edges(quantized, kernels, &zero);
                            assert!(
                                same(
                                    y.as_flattened().as_flattened().as_flattened(),
                                    z.as_flattened().as_flattened().as_flattened()
                                ),
                                "{what}: not the run with 0"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// All zeros: the first convolution gives exactly its bias in both
/// families (Hybrid's zero rows, Dequant's sums of exact zeros), so the
/// outputs are the same bits in both; the padded edges included.
#[test]
fn conv_zeros_give_the_same_bits_in_both_families() {
    let zeros = qbake::boxed_zeroed::<Image>();
    for quantized in [false, true] {
        let h = edges(quantized, Kernels::Hybrid, &zeros);
        let d = edges(quantized, Kernels::Dequant, &zeros);
        let flat = |y: &EdgesOut| y.as_flattened().as_flattened().as_flattened().to_vec();
        assert!(same(&flat(&h), &flat(&d)), "quantized {quantized}");
        // The two images are the same, and an interior pixel equals the
        // others of its channel (the bias through 9 taps); edges see fewer taps.
        assert!(same(
            h[0].as_flattened().as_flattened(),
            h[1].as_flattened().as_flattened()
        ));
        for c in 0..8 {
            assert!(
                h[0][c][1..5].iter().all(|r| same(&r[1..4], &[h[0][c][1][1]; 3])),
                "channel {c}"
            );
        }
    }
}

/// The whole convolutional fixture (ReLU6 after its first convolution,
/// softmax last): any special value, anywhere or everywhere, gives finite
/// probabilities in both families, quantized or not.
#[test]
fn conv_ops_gives_probabilities_for_any_value() {
    type In = [[[[f32; 10]; 11]; 3]; 1];
    let run = |quantized: bool, kernels: Kernels, x: &In| -> Vec<f32> {
        let y = if quantized {
            conv_ops_q::Model::new(kernels).forward(x)
        } else {
            conv_ops::Model::new(kernels).forward(x)
        };
        y.as_flattened().to_vec()
    };
    let rows: [[f32; 30]; 11] = input(23);
    let mut x = qbake::boxed_zeroed::<In>();
    for (v, r) in x
        .as_flattened_mut()
        .as_flattened_mut()
        .as_flattened_mut()
        .iter_mut()
        .zip(rows.as_flattened())
    {
        *v = *r;
    }
    for quantized in [false, true] {
        for kernels in FAMILIES {
            for s in SPECIALS.into_iter().chain([1e30, -1e30]) {
                for at in [Some((0, 0, 0)), Some((2, 5, 9)), Some((1, 10, 4)), None] {
                    let mut bad = x.clone();
                    match at {
                        Some((c, h, w)) => bad[0][c][h][w] = s,
                        None => bad
                            .as_flattened_mut()
                            .as_flattened_mut()
                            .as_flattened_mut()
                            .fill(s),
                    }
                    let p = run(quantized, kernels, &bad);
                    let sum: f32 = p.iter().sum();
                    assert!(
                        p.iter().all(|v| (0.0..=1.0).contains(v)) && (sum - 1.0).abs() < 1e-5,
                        "quantized {quantized} {kernels:?} {s} at {at:?}: {p:?}"
                    );
                }
            }
        }
    }
}
