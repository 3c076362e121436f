use super::*;
use crate::{DequantCache, QuantParams};
use proptest::prelude::*;

fn leak<T>(v: Vec<T>) -> &'static [T] {
    Box::leak(v.into_boxed_slice())
}

/// A weight from row-major u8 values, packed as the code generator packs it.
fn weight(rows: usize, cols: usize, q: &[u8], scale: &[f32], zero_point: &[u8]) -> QuantWeight {
    QuantWeight {
        name: "w",
        rows,
        cols,
        packed: leak(qbake_format::pack_b_s8(q, rows, cols)),
        s8_sums: leak(qbake_format::s8_row_sums(q, rows, cols)),
        s8_negative_sums: leak(qbake_format::s8_negative_sums(q, rows, cols)),
        params: QuantParams {
            min: &[],
            max: &[],
            scale: leak(scale.to_vec()),
            zero_point: leak(zero_point.to_vec()),
        },
        cache: DequantCache::new(),
    }
}

/// Rows quantized exactly as given (for extremes a float row cannot produce).
fn rows(values: &[i8], k: usize, scale: f32) -> QuantizedRows {
    let stride = padded_k(k);
    let m = values.len() / k;
    let mut padded = vec![0i8; m * stride];
    for r in 0..m {
        padded[r * stride..r * stride + k].copy_from_slice(&values[r * k..(r + 1) * k]);
    }
    QuantizedRows {
        k,
        stride,
        values: padded,
        scales: vec![scale; m],
        sums: values
            .chunks_exact(k)
            .map(|r| r.iter().map(|&v| i32::from(v)).sum())
            .collect(),
        nonnegative: values
            .chunks_exact(k)
            .map(|r| r.iter().all(|&v| v >= 0))
            .collect(),
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn f32(&mut self, scale: f32) -> f32 {
        scale * ((self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
    }
}

fn kernels() -> Vec<Kernel> {
    Kernel::available()
}

/// Every kernel gives the reference's bits.
fn assert_kernels_match_reference(x: &QuantizedRows, w: &QuantWeight, bias: Option<&[f32]>, act: Activation) {
    let mut want = vec![0.0; x.rows() * w.rows];
    gemm_reference(x, w, bias, act, &mut want);
    for kernel in kernels() {
        let mut got = vec![f32::NAN; want.len()];
        gemm_with(kernel, x, w, bias, act, &mut got);
        for (i, (g, r)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                r.to_bits(),
                "{kernel:?} m{} n{} k{} [{i}]: {g} vs {r}",
                x.rows(),
                w.rows,
                w.cols
            );
        }
    }
}

fn random_case(m: usize, n: usize, k: usize, seed: u64, per_channel: bool, act: Activation) {
    let mut rng = Rng(seed | 1);
    let q: Vec<u8> = (0..n * k).map(|_| rng.next() as u8).collect();
    let channels = if per_channel { n } else { 1 };
    let zp: Vec<u8> = (0..channels).map(|_| rng.next() as u8).collect();
    let scale: Vec<f32> = (0..channels).map(|_| rng.f32(0.01).abs() + 1e-4).collect();
    let w = weight(n, k, &q, &scale, &zp);
    // Mixed signs, and rows all >= 0 (after ReLU), which take the unsigned kernel.
    let x: Vec<f32> = (0..m * k)
        .map(|i| {
            if (i / k) % 3 == 1 {
                rng.f32(3.0).abs()
            } else {
                rng.f32(3.0)
            }
        })
        .collect();
    let bias: Vec<f32> = (0..n).map(|_| rng.f32(1.0)).collect();
    let relu: Vec<f32> = x.iter().map(|v| v.max(0.0)).collect();
    for kernel in kernels() {
        let mut xq = QuantizedRows::default();
        xq.quantize_into(kernel, &relu, k);
        assert!(xq.nonnegative.iter().all(|&n| n));
        assert_kernels_match_reference(&xq, &w, Some(&bias), act);
        let mut xq = QuantizedRows::default();
        xq.quantize_into(kernel, &x, k);
        assert_eq!(xq, QuantizedRows::quantize(&x, k), "{kernel:?} quantizer");
        assert_kernels_match_reference(&xq, &w, Some(&bias), act);
    }
}

/// Every kernel quantizes the row `x` to the definition's values, scale,
/// sum and sign flag, with zero padding.
fn quantizers_give_the_definitions_bits(x: &[f32]) -> Result<(), TestCaseError> {
    let mut want = vec![0i8; x.len()];
    let scale = quantize_row(x, &mut want);
    for kernel in kernels() {
        let mut rows = QuantizedRows::default();
        rows.quantize_into(kernel, x, x.len());
        prop_assert_eq!(rows.row(0), &want[..]);
        prop_assert_eq!(rows.scales[0].to_bits(), scale.to_bits());
        prop_assert_eq!(rows.sums[0], want.iter().map(|&v| i32::from(v)).sum::<i32>());
        prop_assert_eq!(rows.nonnegative[0], want.iter().all(|&v| v >= 0));
        prop_assert!(rows.values[x.len()..].iter().all(|&v| v == 0), "padding is zero");
    }
    Ok(())
}

proptest! {
    #[test]
    fn row_quantization_is_symmetric_and_within_half_a_step(x in prop::collection::vec(-1e4f32..1e4, 1..300)) {
        let mut q = vec![0i8; x.len()];
        let scale = quantize_row(&x, &mut q);
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        prop_assert_eq!(scale, amax / 127.0);
        for (&v, &q) in x.iter().zip(&q) {
            prop_assert!(q != i8::MIN, "-128 is never used");
            prop_assert!((v - f32::from(q) * scale).abs() <= scale * 0.5001);
        }
    }

    /// The SIMD quantizer gives the definition's bits, sums included.
    #[test]
    fn quantizers_agree(x in prop::collection::vec(prop_oneof![-1e4f32..1e4, Just(0.0), Just(f32::NAN), -1e-40f32..1e-40], 1..100)) {
        quantizers_give_the_definitions_bits(&x)?;
    }

    /// The same without NaN (which sends a row to the scalar path): every
    /// length through the 32-, 8- and 1-value steps, mixed-sign and
    /// non-negative rows, zeros and subnormals among them.
    #[test]
    fn quantizers_agree_on_the_vector_paths(
        x in prop::collection::vec(prop_oneof![4 => -1e4f32..1e4, 1 => Just(0.0), 1 => -1e-40f32..1e-40], 1..300),
        nonnegative in any::<bool>(),
    ) {
        let x: Vec<f32> = if nonnegative { x.iter().map(|v| v.abs()).collect() } else { x };
        quantizers_give_the_definitions_bits(&x)?;
    }

    /// Whole matrices, each row of its own kind (every path of every
    /// quantizer, one after another through the same buffers): every
    /// kernel's rows equal the scalar kernel's, padding and flags included.
    #[test]
    fn quantizers_agree_row_after_row(
        // Multiples of 8 as often as others: the AVX2 quantizer takes
        // those eight rows at a time (unrolled for K = 16, 24, 32, 64).
        k in prop_oneof![1usize..150, (1usize..20).prop_map(|c| 8 * c)],
        kinds in prop::collection::vec(0u8..8, 1..40),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng(seed | 1);
        let x: Vec<f32> = kinds
            .iter()
            .flat_map(|&kind| (0..k).map(move |i| (kind, i)))
            .map(|(kind, i)| match kind {
                // All zeros, either sign: the short path.
                0 => if i % 2 == 0 { 0.0 } else { -0.0 },
                // One NaN or one infinity among ordinary values.
                1 => if i == k / 2 { f32::NAN } else { rng.f32(3.0) },
                2 => if i == k - 1 { f32::NEG_INFINITY } else { rng.f32(3.0) },
                // Subnormals only: the division path, or zero scale.
                3 => f32::from_bits((rng.next() >> 44) as u32) * if i % 3 == 0 { -1.0 } else { 1.0 },
                // The largest finite magnitudes.
                4 => if i % 2 == 0 { f32::MAX } else { -f32::MAX * rng.f32(1.0).abs() },
                // Non-negative (after a ReLU) and mixed-sign rows.
                5 => rng.f32(6.0).abs(),
                6 => rng.f32(1e-3),
                // Exact ties: multiples of half a step of a max of 127.
                _ => f32::from((rng.next() % 509) as i16 - 254) * 0.5,
            })
            .collect();
        let mut want = QuantizedRows::default();
        want.quantize_into(Kernel::Scalar, &x, k);
        for kernel in kernels() {
            // A reused buffer, dirty from a wider matrix, as in a model.
            let mut rows = QuantizedRows::default();
            rows.quantize_into(kernel, &vec![1.0; 2 * kinds.len() * (k + 1)], k + 1);
            rows.quantize_into(kernel, &x, k);
            prop_assert_eq!(&rows.values, &want.values, "{:?}", kernel);
            prop_assert_eq!(
                rows.scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
                want.scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>()
            );
            prop_assert_eq!(&rows.sums, &want.sums);
            prop_assert_eq!(&rows.nonnegative, &want.nonnegative);
        }
    }

    #[test]
    fn kernels_match_the_definition(
        m in 1usize..20, n in 1usize..40, k in 1usize..80, seed in any::<u64>(), per_channel in any::<bool>(),
    ) {
        random_case(m, n, k, seed, per_channel, Activation::None);
    }

    /// The integer formula equals the float product of the dequantized
    /// operands: the zero-point correction is right.
    #[test]
    fn gemm_matches_dequantized_float_product(
        m in 1usize..4, n in 1usize..6, k in 1usize..40, seed in any::<u64>(), per_channel in any::<bool>(),
    ) {
        let mut rng = Rng(seed | 1);
        let q: Vec<u8> = (0..n * k).map(|_| rng.next() as u8).collect();
        let channels = if per_channel { n } else { 1 };
        let zp: Vec<u8> = (0..channels).map(|_| rng.next() as u8).collect();
        let scale: Vec<f32> = (0..channels).map(|i| 0.001 * (i + 1) as f32).collect();
        let w = weight(n, k, &q, &scale, &zp);
        let x: Vec<f32> = (0..m * k).map(|_| rng.f32(10.0)).collect();
        let bias: Vec<f32> = (0..n).map(|j| j as f32 - 1.0).collect();
        let qx = QuantizedRows::quantize(&x, k);
        let mut y = vec![0.0; m * n];
        gemm(&qx, &w, Some(&bias), Activation::None, &mut y);
        let wf = w.dequantize();
        for r in 0..m {
            for j in 0..n {
                let term = |i: usize| f64::from(wf.get(j, i)) * f64::from(qx.row(r)[i]) * f64::from(qx.scales[r]);
                let want: f64 = (0..k).map(term).sum::<f64>() + f64::from(bias[j]);
                let mag: f64 = (0..k).map(|i| term(i).abs()).sum();
                prop_assert!((f64::from(y[r * n + j]) - want).abs() <= 1e-5 * (mag + 1.0), "{} vs {want}", y[r * n + j]);
            }
        }
    }
}

#[test]
fn edge_shapes_and_activations() {
    for m in [1, 3, 4, 5, 17, 64, 65, 131] {
        for n in [1, 3, 15, 16, 17, 33] {
            for k in [1, 3, 4, 5, 31, 33] {
                random_case(
                    m,
                    n,
                    k,
                    (m * 10_000 + n * 100 + k) as u64,
                    (m + n) % 2 == 0,
                    Activation::None,
                );
            }
        }
    }
    for act in [
        Activation::Relu,
        Activation::Clip { min: -0.25, max: 0.5 },
        // Kernels apply its lower bound; the ops bound each channel after.
        Activation::ClipChannels { min: -0.25, max: &[] },
    ] {
        random_case(9, 20, 77, 5, true, act);
    }
}

#[test]
fn zero_rows_take_the_short_path() {
    let mut q = [5i8; 4];
    assert_eq!(quantize_row(&[0.0, -0.0, 0.0, 0.0], &mut q), 0.0);
    assert_eq!(q, [0; 4]);
    // NaN is skipped by the max and maps to 0.
    let scale = quantize_row(&[f32::NAN, 1.0, -2.0, 0.5], &mut q);
    assert_eq!((scale, q), (2.0 / 127.0, [0, 64, -127, 32]));
    // An infinity has no finite scale: the row is zeros.
    assert_eq!(quantize_row(&[f32::INFINITY, 1.0, 0.0, 0.0], &mut q), 0.0);
    assert_eq!(q, [0; 4]);
    // A row of tiny subnormals: 127 / max overflows, so the division path runs.
    // The scale itself is a coarse subnormal; the row still reconstructs within half a step.
    let tiny = [
        f32::from_bits(1000),
        -f32::from_bits(1000),
        0.0,
        f32::from_bits(500),
    ];
    let scale = quantize_row(&tiny, &mut q);
    assert!(scale > 0.0, "{scale}");
    for (&v, &q) in tiny.iter().zip(&q) {
        assert!(
            q != i8::MIN && (v - f32::from(q) * scale).abs() <= scale / 2.0,
            "{v:e} {q} {scale:e}"
        );
    }
    // A largest magnitude of 190 steps: 190 / 127 rounds the scale down to 1
    // step, so x / scale would be -190 and saturate to -128 (found by
    // fuzzing). The scale is rounded up instead, and every kernel agrees.
    let step = f32::from_bits(1);
    for amax in 128..=400u32 {
        let x = [-(amax as f32) * step, amax as f32 * step, step, 0.0];
        let mut q = [0i8; 4];
        let scale = quantize_row(&x, &mut q);
        assert!(q.iter().all(|&v| v >= -127), "{amax} steps: {q:?}");
        assert!(
            x.iter()
                .zip(&q)
                .all(|(&v, &q)| (v - f32::from(q) * scale).abs() <= scale / 2.0)
        );
        let w = weight(1, 4, &[0; 4], &[1.0], &[128]);
        for kernel in kernels() {
            let mut xq = QuantizedRows::default();
            xq.quantize_into(kernel, &x, 4);
            assert_eq!(xq.row(0), q);
            assert_kernels_match_reference(&xq, &w, None, Activation::None);
        }
    }
}

/// Extremes, on every kernel and every tile height, bit for bit with the
/// reference and with exact integer arithmetic: weights all 0 or all 255,
/// activations ±127, every
/// product at its largest, summed over the largest exact K, and on both
/// sides of the largest K whose zero-point correction the AVX2 epilogue
/// makes in f32. Sums of two 16-bit products (255 * 127 * 2 = 64770) would
/// saturate at 32767.
#[test]
fn extreme_operands_sum_exactly() {
    for k in [2, 5, 64, MAX_F32_EXACT_K - 2, MAX_F32_EXACT_K + 2, MAX_EXACT_K] {
        for (q_w, q_x, zp) in [
            (255u8, 127i8, 0u8),
            (0, -127, 255),
            (255, -127, 0),
            (0, 127, 0),
            (255, 127, 255),
            (128, -127, 0),
        ] {
            let w = weight(1, k, &vec![q_w; k], &[1.0], &[zp]);
            // 49 rows: a 32-row and a 16-row block of AMX tiles (at K >=
            // 64), full 8-row (AVX-512 VNNI) and 4-row (AVX2) tiles, and a
            // lone row after them.
            let x = rows(&vec![q_x; 49 * k], k, 1.0);
            let exact = (i64::from(q_w) - i64::from(zp)) * i64::from(q_x) * k as i64;
            for kernel in kernels() {
                let mut y = [0.0; 49];
                gemm_with(kernel, &x, &w, None, Activation::None, &mut y);
                for y in y {
                    assert_eq!(y, exact as f32, "{kernel:?} k {k}: q_w {q_w} q_x {q_x} zp {zp}");
                }
            }
        }
    }
    // Just past MAX_F32_EXACT_K (K = 1036, so a bound raised past the
    // truth fails here) a dot product can be an inexact f32: here
    // |dot| = 16841089 > 2^24, and correcting it in f32 would give -128
    // where the exact result is -127 (one weight 1, the rest 0, zero point
    // 0, activations -127).
    let k = 1036;
    let mut q = vec![0u8; k];
    q[0] = 1;
    let w = weight(1, k, &q, &[1.0], &[0]);
    let x = rows(&vec![-127; k], k, 1.0);
    for kernel in kernels() {
        let mut y = [0.0];
        gemm_with(kernel, &x, &w, None, Activation::None, &mut y);
        assert_eq!(y[0], -127.0, "{kernel:?}: the correction past the f32-exact K");
    }
    // Alternating signs and tiles of every kernel (37 x 17 outputs), with a bias.
    let (m, n, k) = (37, 17, 1001);
    let q: Vec<u8> = (0..n * k)
        .map(|i| if i % 3 == 0 { 255 } else { i as u8 })
        .collect();
    let xs: Vec<i8> = (0..m * k).map(|i| if i % 2 == 0 { 127 } else { -127 }).collect();
    let w = weight(n, k, &q, &vec![0.5; n], &(0..n as u8).collect::<Vec<_>>());
    assert_kernels_match_reference(&rows(&xs, k, 0.25), &w, Some(&vec![1.0; n]), Activation::None);
}

/// The shapes around the AMX kernel's tiles (16 rows, 16 columns, 64
/// inputs): whole and partial blocks of 32 and 16 rows, the rest on the VNNI
/// kernel, one and two panels, K with and without a tail past the last
/// whole 64, non-negative and mixed-sign rows (`random_case` runs both).
#[test]
fn tile_shapes() {
    let mut seed = 1;
    for m in [16, 17, 31, 32, 33, 48, 49, 64, 65, 100] {
        for k in [63, 64, 65, 68, 127, 128, 132, 260] {
            for n in [1, 16, 17, 32, 33, 47] {
                seed += 1;
                random_case(m, n, k, seed, seed % 2 == 0, Activation::Relu);
            }
        }
    }
}

/// A pair of products past i16 range: a kernel that summed pairs in
/// saturating 16-bit lanes (`maddubs` on raw u8 x s8) would give 32767.
#[test]
fn would_fail_under_int16_saturation() {
    let w = weight(1, 4, &[255, 255, 255, 255], &[1.0], &[0]);
    let x = rows(&[127, 127, 127, 127], 4, 1.0);
    for kernel in kernels() {
        let mut y = [0.0];
        gemm_with(kernel, &x, &w, None, Activation::None, &mut y);
        assert_eq!(y[0], 4.0 * 255.0 * 127.0, "{kernel:?}");
    }
}
