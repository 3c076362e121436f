//! 8-bit quantization of weights (DESIGN §3).
//!
//! Each tensor, or each output channel, is stored as u8 with a min and a max:
//! value 0 is `min`, 255 is `max`, linear in between. The range is widened to
//! contain 0.0, and the zero point is rounded to an integer so that 0.0 is
//! exact; `min`/`max` are then the range actually represented.

use crate::compensation::Moments;
use crate::error::{Error, bail};
use crate::graph::Plan;
use crate::{Calibration, Options};
use std::collections::{HashMap, HashSet};

pub use qbake_format::MAX_EXACT_K;

/// The parameters of one quantized range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    pub min: f32,
    pub max: f32,
    pub scale: f32,
    pub zero_point: u8,
}

impl QParams {
    /// Parameters for values in `[lo, hi]`. The range is widened to contain
    /// 0.0 and nudged so that 0.0 is exact. An empty range (all zeros) gives
    /// scale 0, which represents every value as exactly 0.0.
    pub fn for_range(lo: f32, hi: f32) -> QParams {
        let (lo, hi) = (f64::from(lo.min(0.0)), f64::from(hi.max(0.0)));
        let scale = ((hi - lo) / 255.0) as f32;
        // A range too narrow for f32 (or empty) holds only zeros, to within
        // the smallest subnormal.
        if scale <= 0.0 || !scale.is_finite() {
            return QParams {
                min: 0.0,
                max: 0.0,
                scale: 0.0,
                zero_point: 0,
            };
        }
        let zero_point = (-lo / f64::from(scale)).round().clamp(0.0, 255.0) as u8;
        QParams {
            min: -f32::from(zero_point) * scale,
            max: f32::from(255 - zero_point) * scale,
            scale,
            zero_point,
        }
    }

    /// `clamp(round(x / scale) + zero_point, 0, 255)`, ties to even.
    pub fn quantize(&self, x: f32) -> u8 {
        if self.scale == 0.0 {
            return self.zero_point;
        }
        let q = (f64::from(x) / f64::from(self.scale)).round_ties_even() + f64::from(self.zero_point);
        q.clamp(0.0, 255.0) as u8
    }

    /// `(q - zero_point) * scale`, in f32 exactly as the runtime computes it.
    pub fn dequantize(&self, q: u8) -> f32 {
        qbake_format::dequantize(q, self.scale, self.zero_point)
    }
}

/// A weight matrix as it will be baked: `rows` output channels by `cols`.
#[derive(Debug, Clone, PartialEq)]
pub struct BakedWeight {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub storage: Storage,
    /// Range of the float values.
    pub min: f32,
    pub max: f32,
    /// Signal-to-quantization-noise ratio in dB; infinite when exact.
    pub sqnr_db: f64,
    /// Whether the rows were rounded with compensation, on the calibration
    /// inputs' moments (`compensation.rs`).
    pub compensated: bool,
}

impl BakedWeight {
    /// A matrix kept in f32: exact.
    fn float(name: &str, rows: usize, cols: usize, values: Vec<f32>) -> BakedWeight {
        let (min, max) = min_max(&values);
        BakedWeight {
            name: name.to_string(),
            rows,
            cols,
            storage: Storage::F32(values),
            min,
            max,
            sqnr_db: f64::INFINITY,
            compensated: false,
        }
    }

    /// The values the model computes with: the u8 bytes dequantized exactly
    /// as the runtime does, or the kept f32 values; `[rows, cols]` row-major.
    pub fn dequantized(&self) -> Vec<f32> {
        match &self.storage {
            Storage::F32(v) => v.clone(),
            Storage::U8 { data, params } => data
                .chunks_exact(self.cols)
                .enumerate()
                .flat_map(|(n, row)| {
                    let p = params[if params.len() > 1 { n } else { 0 }];
                    row.iter().map(move |&q| p.dequantize(q))
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    /// Row-major u8, with one `QParams` per tensor or per row.
    U8 { data: Vec<u8>, params: Vec<QParams> },
    /// Kept in float (too small to gain from 8 bits).
    F32(Vec<f32>),
}

/// A float tensor baked as is: a bias or an added constant.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatTensor {
    pub name: String,
    pub values: Vec<f32>,
}

/// Everything the plan needs baked, each tensor once, in first-use order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Baked {
    pub weights: Vec<BakedWeight>,
    pub floats: Vec<FloatTensor>,
}

impl Baked {
    pub fn weight(&self, name: &str) -> Option<&BakedWeight> {
        self.weights.iter().find(|w| w.name == name)
    }
}

/// Quantizes every weight matrix the plan uses and collects its float
/// tensors (biases, constants), each once, in first-use order.
pub fn bake(plan: &Plan, options: &Options) -> Result<Baked, Error> {
    check_finite(plan)?;
    let known = crate::bias_correction::expected_means(plan);
    let measured = calibration_inputs(plan, options, &known)?.map(|inputs| {
        let wanted = if options.compensated_rounding {
            crate::compensation::wanted(plan, options.keep_float_below)
        } else {
            HashMap::new()
        };
        crate::calibration::measure(plan, &inputs, wanted)
    });
    let (moments, measured_means) = match measured {
        Some(m) => (m.moments, Some(m.means)),
        None => (HashMap::new(), None),
    };
    let mut quantized = bake_weights(plan, options, &moments);
    drop(moments);
    let mut baked = collect(plan, |name| {
        quantized.remove(name).expect("every weight is baked once")
    })?;
    if options.bias_correction {
        let means = match (measured_means, &options.calibration) {
            (Some(measured), Calibration::Inputs(_)) => measured,
            (Some(measured), _) => crate::calibration::fill_missing(plan, known, measured),
            (None, _) => known,
        };
        crate::bias_correction::correct(plan, &mut baked, &means);
    }
    Ok(baked)
}

/// Each weight matrix of the plan, baked by [`bake_weight_with`] with its
/// `moments`, if any: on all cores, as rounding with compensation
/// (a Cholesky factorization per matrix) and the range search are most of
/// a bake's time after calibration.
fn bake_weights(
    plan: &Plan,
    options: &Options,
    moments: &HashMap<String, Moments>,
) -> HashMap<String, Result<BakedWeight, Error>> {
    let names: Vec<&str> = first_uses(plan)
        .into_iter()
        .filter_map(|(name, weight)| weight.then_some(name))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(names.len())
        .max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&name) = names.get(i) else {
                            return done;
                        };
                        let ((rows, cols), values) = (matrix(plan, name), plan.tensor(name).data.to_vec());
                        let baked = bake_weight_with(name, rows, cols, values, options, moments.get(name));
                        done.push((name.to_string(), baked));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("quantizing a weight panicked"))
            .collect()
    })
}

/// The calibration inputs, when bias correction or compensated rounding
/// will use them: the user's, or synthetic images (asked for, or by
/// default for an image input). Synthetic images that only bias
/// correction would use, on a graph whose batch-norm statistics (`known`)
/// say every mean it needs, are not made.
fn calibration_inputs(
    plan: &Plan,
    options: &Options,
    known: &[Option<Vec<f64>>],
) -> Result<Option<Vec<Vec<f32>>>, Error> {
    let in_calibration = |e: Error| Error::new(format!("calibration: {e}")).in_calibration();
    let used = options.bias_correction || options.compensated_rounding;
    match &options.calibration {
        Calibration::Inputs(_) | Calibration::Synthetic if !used => Err(Error::new(
            "`calibration` inputs are used by bias correction and compensated rounding, \
             which `bias_correction = false, compensated_rounding = false` turn off",
        )
        .in_calibration()),
        Calibration::Inputs(path) => {
            let (_, inputs) =
                crate::calibration::read_inputs(path, None, &plan.input().shape).map_err(in_calibration)?;
            Ok(Some(inputs))
        }
        c if used && crate::calibration::uses_synthetic(c, plan) => {
            crate::calibration::image_dims(&plan.input().shape).map_err(in_calibration)?;
            if !options.compensated_rounding && !crate::calibration::means_missing(plan, known) {
                return Ok(None);
            }
            let images = crate::calibration::synthetic_images(&plan.input().shape).map_err(in_calibration)?;
            Ok(Some(images))
        }
        _ => Ok(None),
    }
}

/// Every tensor the plan uses, in f32 as the plan holds it: the float
/// model (`reference = true`).
pub fn float(plan: &Plan) -> Result<Baked, Error> {
    check_finite(plan)?;
    collect(plan, |name| {
        let (t, (rows, cols)) = (plan.tensor(name), matrix(plan, name));
        Ok(BakedWeight::float(name, rows, cols, t.data.to_vec()))
    })
}

/// `(rows, cols)` of a weight matrix.
fn matrix(plan: &Plan, name: &str) -> (usize, usize) {
    let &[rows, cols] = plan.tensor(name).shape.as_slice() else {
        unreachable!("the planner makes weights matrices");
    };
    (rows, cols)
}

/// The first tensor the plan uses, in first-use order, that holds a value
/// that is not finite, as an error.
fn check_finite(plan: &Plan) -> Result<(), Error> {
    for (name, _) in first_uses(plan) {
        if let Some((i, v)) = plan
            .tensor(name)
            .data
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite())
        {
            bail!(
                "tensor `{name}` holds {v} at index {i} once BatchNormalization, Mul and Add are folded; baked values must be finite"
            );
        }
    }
    Ok(())
}

/// Each tensor the plan uses, once, in first-use order, and whether it is
/// a weight matrix (the tensors that get quantized) there.
fn first_uses(plan: &Plan) -> Vec<(&str, bool)> {
    // A set, so that a graph of many tensors is walked in linear time.
    let mut seen = HashSet::new();
    plan.steps
        .iter()
        .flat_map(|step| {
            let weights = step.op.weights();
            step.op
                .tensors()
                .into_iter()
                .map(move |name| (name, weights.contains(&name)))
        })
        .filter(|(name, _)| seen.insert(*name))
        .collect()
}

/// Each tensor the plan uses, once, in first-use order: weight matrices
/// through `weight(name)`, the rest as they are.
fn collect(plan: &Plan, mut weight: impl FnMut(&str) -> Result<BakedWeight, Error>) -> Result<Baked, Error> {
    let mut baked = Baked::default();
    for (name, is_weight) in first_uses(plan) {
        if is_weight {
            baked.weights.push(weight(name)?);
        } else {
            baked.floats.push(FloatTensor {
                name: name.to_string(),
                values: plan.tensor(name).data.to_vec(),
            });
        }
    }
    Ok(baked)
}

/// Quantizes one `[rows, cols]` matrix, or keeps it in f32 when it is small.
pub fn bake_weight(
    name: &str,
    rows: usize,
    cols: usize,
    values: Vec<f32>,
    options: &Options,
) -> Result<BakedWeight, Error> {
    bake_weight_with(name, rows, cols, values, options, None)
}

/// [`bake_weight`], rounding with compensation where `moments` (of the
/// matrix's inputs) are given.
fn bake_weight_with(
    name: &str,
    rows: usize,
    cols: usize,
    values: Vec<f32>,
    options: &Options,
    moments: Option<&Moments>,
) -> Result<BakedWeight, Error> {
    if values.len() < options.keep_float_below {
        return Ok(BakedWeight::float(name, rows, cols, values));
    }
    let (min, max) = min_max(&values);
    if cols > MAX_EXACT_K {
        bail!(
            "tensor `{name}` has {cols} inputs per output; the 8-bit kernels sum exactly in i32 only up to {MAX_EXACT_K}"
        );
    }
    let range = |v: &[f32]| {
        if options.mse_ranges {
            mse_params(v)
        } else {
            let (lo, hi) = min_max(v);
            QParams::for_range(lo, hi)
        }
    };
    let params: Vec<QParams> = if options.per_channel {
        values.chunks_exact(cols).map(range).collect()
    } else {
        vec![range(&values)]
    };
    let row_params = |n: usize| &params[if options.per_channel { n } else { 0 }];
    let damping = if options.per_channel {
        crate::compensation::DAMPING_PER_CHANNEL
    } else {
        crate::compensation::DAMPING_PER_TENSOR
    };
    let order = moments.and_then(|m| m.order(damping));
    let mut data = Vec::with_capacity(values.len());
    let (mut signal, mut noise) = (0.0f64, 0.0f64);
    for (n, row) in values.chunks_exact(cols).enumerate() {
        let p = row_params(n);
        let start = data.len();
        if let Some(order) = &order {
            data.extend(order.round(row, p));
        } else {
            data.extend(row.iter().map(|&x| p.quantize(x)));
            if options.balanced_rounding {
                balance_row(row, p, &mut data[start..]);
            }
        }
        for (&x, &q) in row.iter().zip(&data[start..]) {
            let e = f64::from(x) - f64::from(p.dequantize(q));
            signal += f64::from(x) * f64::from(x);
            noise += e * e;
        }
    }
    Ok(BakedWeight {
        name: name.into(),
        rows,
        cols,
        storage: Storage::U8 { data, params },
        min,
        max,
        sqnr_db: sqnr_db(signal, noise),
        compensated: order.is_some(),
    })
}

/// Rounds the other way the weights of a row nearest to a tie, as few as
/// needed for the row's rounding errors to sum to at most half a step.
///
/// A layer's output moves by `sum_k e_k x_k` for rounding errors `e`. Its
/// random part averages out; but inputs after a ReLU are positive on
/// average, so a row whose errors sum to `E` steps shifts its output by
/// about `E * scale * mean(x)` on every input, and `E` grows like
/// `sqrt(K)`. Bias correction removes that where batch-norm statistics
/// give `mean(x)`; without them this is the data-free part of the same
/// fix: each flipped weight's error grows from just under half a step to
/// just over it.
fn balance_row(row: &[f32], p: &QParams, q: &mut [u8]) {
    if p.scale == 0.0 {
        return;
    }
    let scale = f64::from(p.scale);
    // Each weight's rounding error, in steps.
    let errors: Vec<f64> = row
        .iter()
        .zip(q.iter())
        .map(|(&x, &q)| f64::from(q) - f64::from(p.zero_point) - f64::from(x) / scale)
        .collect();
    let total: f64 = errors.iter().sum();
    let flips = total.abs().round() as usize;
    if flips == 0 {
        return;
    }
    // Rounded up too far: move down the weights that were rounded up the most.
    let down = total > 0.0;
    let mut candidates: Vec<usize> = (0..q.len())
        .filter(|&k| {
            if down {
                q[k] > 0 && errors[k] > 0.0
            } else {
                q[k] < 255 && errors[k] < 0.0
            }
        })
        .collect();
    candidates.sort_by(|&a, &b| errors[b].abs().total_cmp(&errors[a].abs()));
    for &k in candidates.iter().take(flips) {
        if down {
            q[k] -= 1;
        } else {
            q[k] += 1;
        }
    }
}

/// The range, among the data's own shrunk by up to 30 % in 1 % steps,
/// whose quantization has the least squared error over `values`: clipping
/// a few outliers buys finer steps for all the rest.
fn mse_params(values: &[f32]) -> QParams {
    let (lo, hi) = min_max(values);
    let candidates: Vec<QParams> = (0..=30)
        .map(|step| {
            let shrink = 1.0 - 0.01 * step as f32;
            QParams::for_range(lo * shrink, hi * shrink)
        })
        .collect();
    // Block by block, every candidate, so that a large tensor is read from
    // memory once rather than 31 times.
    let mut errors = vec![0.0f64; candidates.len()];
    for block in values.chunks(4096) {
        for (e, p) in errors.iter_mut().zip(&candidates) {
            *e += squared_error(block, p);
        }
    }
    // The first least error: ties keep the wider range.
    let best = (0..candidates.len()).fold(0, |b, i| if errors[i] < errors[b] { i } else { b });
    candidates[best]
}

/// `sum (x - dequantize(quantize(x)))^2`: what the range search minimizes.
/// Each term is exactly the scalar definition's; the form is one that
/// vectorizes (the range search evaluates it 31 times per weight, which in
/// the scalar form, with a libm call to round each value, was most of
/// baking's time), and the sum runs in eight lanes.
fn squared_error(values: &[f32], p: &QParams) -> f64 {
    // Adding and subtracting 1.5 * 2^52 rounds an f64 under 2^51 in
    // magnitude to an integer, ties to even (the default rounding mode),
    // without SSE4.1's `round`. Larger magnitudes clamp to 0 or 255 either way.
    const ROUND: f64 = 6_755_399_441_055_744.0;
    let (scale, zero_point) = (f64::from(p.scale), f64::from(p.zero_point));
    let term = |x: f32| {
        let q = if p.scale == 0.0 {
            zero_point
        } else {
            ((f64::from(x) / scale + ROUND) - ROUND + zero_point).clamp(0.0, 255.0)
        };
        let e = f64::from(x) - f64::from((q - zero_point) as f32 * p.scale);
        e * e
    };
    let mut lanes = [0.0f64; 8];
    let chunks = values.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&x| term(x)).sum();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += term(x);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

fn min_max(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// `10 log10(signal / noise)`; infinite when there is no noise.
pub fn sqnr_db(signal: f64, noise: f64) -> f64 {
    if noise == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (signal / noise).log10()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn range() -> impl Strategy<Value = (f32, f32)> {
        (-1e3f32..1e3, -1e3f32..1e3).prop_map(|(a, b)| (a.min(b), a.max(b)))
    }

    proptest! {
        #[test]
        fn error_is_at_most_half_a_step_inside_the_range((lo, hi) in range(), t in 0.0f64..=1.0) {
            let p = QParams::for_range(lo, hi);
            // Any value of the data range, and any value of the represented range.
            for x in [lo + (hi - lo) * t as f32, p.min + (p.max - p.min) * t as f32] {
                let x = x.clamp(lo.min(0.0), hi.max(0.0));
                let err = (x - p.dequantize(p.quantize(x))).abs();
                // Half a step, plus the f32 rounding of the product and of x itself.
                let slack = f32::EPSILON * x.abs().max(p.max.abs()).max(p.min.abs()) * 2.0;
                prop_assert!(err <= p.scale / 2.0 + slack, "x {x} err {err} params {p:?}");
            }
        }

        #[test]
        fn zero_is_exact_and_range_contains_it((lo, hi) in range()) {
            let p = QParams::for_range(lo, hi);
            prop_assert_eq!(p.dequantize(p.quantize(0.0)), 0.0);
            prop_assert!(p.min <= 0.0 && p.max >= 0.0);
            prop_assert_eq!(p.dequantize(0), p.min);
            prop_assert_eq!(p.dequantize(255), p.max);
        }

        #[test]
        fn balanced_rows_sum_their_errors_to_half_a_step(
            row in proptest::collection::vec(-3.0f32..3.0, 1..300),
            per_channel in any::<bool>(),
        ) {
            // On the data's own range: clipped values (MSE ranges) err by
            // more than a step, which this bound is not about.
            let options = Options { balanced_rounding: true, per_channel, keep_float_below: 0, mse_ranges: false, ..Options::default() };
            let plain = bake_weight("w", 1, row.len(), row.clone(), &Options { balanced_rounding: false, ..options.clone() }).unwrap();
            let balanced = bake_weight("w", 1, row.len(), row.clone(), &options).unwrap();
            let Storage::U8 { params, .. } = &balanced.storage else { unreachable!() };
            let scale = f64::from(params[0].scale);
            let steps = |w: &BakedWeight| -> Vec<f64> {
                w.dequantized().iter().zip(&row).map(|(&q, &x)| (f64::from(q) - f64::from(x)) / scale).collect()
            };
            let (before, after) = (steps(&plain), steps(&balanced));
            let sum: f64 = after.iter().sum();
            prop_assert!(sum.abs() <= 0.5 + 1e-3, "errors sum to {sum} steps");
            // Only weights that were near a tie moved, each by one step.
            for (b, a) in before.iter().zip(&after) {
                prop_assert!(a.abs() < 1.0 + 1e-3, "error {a} steps");
                prop_assert!((a - b).abs() < 1e-3 || ((a - b).abs() - 1.0).abs() < 1e-3);
            }
            let flipped = before.iter().zip(&after).filter(|(b, a)| (*a - *b).abs() > 0.5).count();
            prop_assert_eq!(flipped as f64, before.iter().sum::<f64>().abs().round());
        }

        #[test]
        fn quantization_is_monotonic((lo, hi) in range(), a in -2e3f32..2e3, b in -2e3f32..2e3) {
            let p = QParams::for_range(lo, hi);
            let (a, b) = (a.min(b), a.max(b));
            prop_assert!(p.quantize(a) <= p.quantize(b));
            prop_assert!(p.dequantize(p.quantize(a)) <= p.dequantize(p.quantize(b)));
        }
    }

    #[test]
    fn empty_range_gives_exact_zeros() {
        let p = QParams::for_range(0.0, 0.0);
        assert_eq!((p.scale, p.zero_point), (0.0, 0));
        assert_eq!(p.dequantize(p.quantize(0.0)), 0.0);
        let options = Options {
            keep_float_below: 0,
            ..Options::default()
        };
        let w = bake_weight("z", 4, 300, vec![0.0; 1200], &options).unwrap();
        assert_eq!(w.sqnr_db, f64::INFINITY);
        let Storage::U8 { data, .. } = &w.storage else {
            panic!("1200 values are quantized")
        };
        assert!(data.iter().all(|&q| q == 0));
    }

    #[test]
    fn one_sided_ranges_include_zero() {
        let p = QParams::for_range(2.0, 5.0);
        assert_eq!((p.min, p.zero_point), (0.0, 0));
        assert_eq!(p.dequantize(255), p.max);
        let n = QParams::for_range(-5.0, -2.0);
        assert_eq!((n.max, n.zero_point), (0.0, 255));
    }

    #[test]
    fn per_channel_beats_per_tensor_on_uneven_rows() {
        // Row 0 spans ±100, row 1 spans ±0.01: one range for both drowns row 1.
        let values: Vec<f32> = (0..2048)
            .map(|i| {
                if i < 1024 {
                    (i as f32 - 512.0) / 5.12
                } else {
                    (i as f32 - 1536.0) / 51200.0
                }
            })
            .collect();
        let options = |per_channel| Options {
            per_channel,
            keep_float_below: 0,
            ..Options::default()
        };
        let pc = bake_weight("w", 2, 1024, values.clone(), &options(true)).unwrap();
        let pt = bake_weight("w", 2, 1024, values, &options(false)).unwrap();
        let Storage::U8 { params, .. } = &pc.storage else {
            panic!()
        };
        assert_eq!(params.len(), 2);
        assert!(pc.sqnr_db > pt.sqnr_db);
    }

    proptest! {
        /// The range search's vectorizable error against its definition:
        /// each value alone (so each term exactly), and whole slices, whose
        /// sums differ only by the order of addition.
        #[test]
        fn squared_error_is_the_definitions(
            (lo, hi) in range(),
            shrink in prop_oneof![Just(1.0f32), 0.01f32..=1.0, Just(1e-30f32)],
            values in proptest::collection::vec(prop_oneof![
                -1e3f32..1e3,
                Just(0.0f32),
                Just(f32::MAX),
                Just(-f32::MAX),
                Just(f32::from_bits(1)),
            ], 0..40),
        ) {
            let p = QParams::for_range(lo * shrink, hi * shrink);
            let term = |x: f32| (f64::from(x) - f64::from(p.dequantize(p.quantize(x)))).powi(2);
            for &x in &values {
                prop_assert_eq!(squared_error(&[x], &p).to_bits(), term(x).to_bits(), "x {} {:?}", x, p);
            }
            let exact: f64 = values.iter().map(|&x| term(x)).sum();
            let fast = squared_error(&values, &p);
            prop_assert!((fast - exact).abs() <= exact * 1e-12, "{} vs {}", fast, exact);
        }
    }

    #[test]
    fn mse_ranges_clip_a_lone_outlier_and_never_raise_the_error() {
        let error = |values: &[f32], p: &QParams| -> f64 {
            values
                .iter()
                .map(|&x| (f64::from(x) - f64::from(p.dequantize(p.quantize(x)))).powi(2))
                .sum()
        };
        // 10,000 values in [-1, 1] and one at 1.03: clipping it costs less
        // than the finer steps save on the rest.
        let mut values: Vec<f32> = (0..10_000).map(|i| i as f32 / 5_000.0 - 1.0).collect();
        values.push(1.03);
        let (full, clipped) = (QParams::for_range(-1.0, 1.03), mse_params(&values));
        assert!(clipped.max < full.max, "{clipped:?} vs {full:?}");
        assert!(error(&values, &clipped) < error(&values, &full));
        // A far outlier is clipped by a step or two at most: further
        // clipping costs it more than the others gain.
        values.push(20.0);
        let far = mse_params(&values);
        assert!(far.max >= 20.0 * 0.97, "{far:?}");
        // Never worse than the full range.
        for seed in 0..20u32 {
            let v: Vec<f32> = (0..500)
                .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 100.0 - 3.0)
                .collect();
            let (lo, hi) = min_max(&v);
            assert!(error(&v, &mse_params(&v)) <= error(&v, &QParams::for_range(lo, hi)));
        }
    }

    /// Found by the hostile-input harness: a BatchNormalization whose scale
    /// overflows f32 (gamma 1e30 over the root of a subnormal variance) gave
    /// infinite constants, or infinite weights once folded into a
    /// convolution, and the emitter panicked on the infinite literal (or a
    /// quantized weight silently became all zeros). Refused now.
    #[test]
    fn values_that_overflow_when_folded_are_refused() {
        use safetensors::tensor::{Dtype, TensorView};
        let bytes = |v: &[f32]| v.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let tensors = [
            ("w", vec![2, 1, 1, 1], bytes(&[0.5, -2.0])),
            ("gamma", vec![2], bytes(&[1e30, 1.0])),
            ("zero", vec![2], bytes(&[0.0, 0.0])),
            ("var", vec![2], bytes(&[f32::from_bits(1), 1.0])),
        ];
        let conv = r#"{"name":"c","op":"Conv","inputs":["x"],"output":"y","weight":"w"},"#;
        let bn = r#"{"name":"bn","op":"BatchNormalization","inputs":["IN"],"output":"z","scale":"gamma","bias":"zero","mean":"zero","var":"var","epsilon":0}"#;
        for (nodes, input, bad) in [
            (format!("{conv}{}", bn.replace("IN", "y")), 1, "w"),
            (bn.replace("IN", "x"), 2, "bn.scale"),
        ] {
            let graph = format!(
                r#"{{"version":1,"inputs":[{{"name":"x","shape":[1,{input},2,2]}}],"outputs":["z"],"nodes":[{nodes}]}}"#
            );
            let views = tensors
                .iter()
                .map(|(n, s, b)| (n.to_string(), TensorView::new(Dtype::F32, s.clone(), b).unwrap()));
            let metadata = std::collections::HashMap::from([(crate::read::GRAPH_KEY.to_string(), graph)]);
            let file = safetensors::serialize(views, Some(metadata)).unwrap();
            for keep_float_below in [0, 1024] {
                let options = Options {
                    keep_float_below,
                    ..Options::default()
                };
                let err = crate::generate_from_bytes(&file, "m.safetensors", &options).unwrap_err();
                assert!(
                    err.message()
                        .starts_with(&format!("tensor `{bad}` holds inf at index 0 once")),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn small_tensors_stay_float_and_large_k_is_refused() {
        let w = bake_weight("small", 10, 32, vec![0.5; 320], &Options::default()).unwrap();
        assert!(matches!(w.storage, Storage::F32(_)));
        let err = bake_weight(
            "wide",
            1,
            MAX_EXACT_K + 1,
            vec![0.5; MAX_EXACT_K + 1],
            &Options::default(),
        )
        .unwrap_err();
        assert!(err.message().contains("`wide`"), "{err}");
    }
}
