//! Bytes as shapes and values for the kernels, each compared with its
//! definition:
//!
//! - the activation quantizer: every kernel gives the bits of the scalar
//!   definition, and the result keeps its contract (±127, sums, signs,
//!   zero padding, half a step of error);
//! - the int8 GEMM: every kernel gives the bits of `hybrid::gemm_reference`;
//! - the f32 GEMM: the reference and every kernel within rounding of the
//!   exact product (computed in f64), with non-finite values where the
//!   inputs force them, whatever the summation order;
//! - the dequant cache's panels: `(q - zero_point) * scale` exactly;
//! - softmax: probabilities, or NaN where docs/robustness.md says;
//! - convolutions, pools and the layout ops ([`conv`]), when the first byte
//!   is 0x80 to 0xfd.
//!
//! Values include NaN, ±Inf, ±f32::MAX, subnormals and raw bit patterns.
//! When the input runs out, a generator seeded by its hash continues, so a
//! short input still describes full-size matrices.

use qbake::format::{pack_b_s8, s8_negative_sums, s8_row_sums};
use qbake::hybrid::{self, QuantizedRows};
use qbake::{Activation, DequantCache, QuantParams, QuantWeight, gemm_f32};

mod conv;

/// Reads shapes and values from the input, then from a generator.
struct Source<'a> {
    data: &'a [u8],
    pos: usize,
    state: u64,
}

impl<'a> Source<'a> {
    fn new(data: &'a [u8]) -> Self {
        // FNV-1a of the input seeds the generator.
        let hash = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        Source {
            data,
            pos: 0,
            state: hash | 1,
        }
    }

    fn byte(&mut self) -> u8 {
        if let Some(&b) = self.data.get(self.pos) {
            self.pos += 1;
            return b;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 32) as u8
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// A value of `style`, scaled by `magnitude` when it is an ordinary one.
    fn f32(&mut self, style: Style, magnitude: f32) -> f32 {
        let ordinary = |s: &mut Self| f32::from(s.byte() as i8) / 127.0 * magnitude;
        match style {
            Style::Ordinary => ordinary(self),
            Style::Sparse if self.byte() >= 8 => ordinary(self),
            Style::Sparse | Style::Dense => self.special(magnitude),
            Style::Bits => f32::from_bits(self.u32()),
        }
    }

    fn special(&mut self, magnitude: f32) -> f32 {
        match self.byte() % 16 {
            0 => 0.0,
            1 => -0.0,
            2 => f32::NAN,
            3 => f32::INFINITY,
            4 => f32::NEG_INFINITY,
            5 => f32::MAX,
            6 => -f32::MAX,
            7 => f32::MIN_POSITIVE,
            8 => f32::from_bits(u32::from(self.byte()) + 1),
            9 => -f32::from_bits(u32::from(self.u16()) + 1),
            10 => f32::from_bits(self.u32()),
            11 => magnitude,
            12 => -magnitude,
            _ => f32::from(self.byte() as i8) / 127.0 * magnitude,
        }
    }

    fn style(&mut self) -> Style {
        match self.byte() % 8 {
            0..=3 => Style::Ordinary,
            4 | 5 => Style::Sparse,
            6 => Style::Dense,
            _ => Style::Bits,
        }
    }

    fn magnitude(&mut self) -> f32 {
        const M: [f32; 8] = [1.0, 1e-3, 1e3, 1e30, 1e-30, 1e-40, f32::MAX / 4.0, 3e-43];
        M[usize::from(self.byte()) % M.len()]
    }

    fn values(&mut self, n: usize) -> Vec<f32> {
        let (style, magnitude) = (self.style(), self.magnitude());
        (0..n).map(|_| self.f32(style, magnitude)).collect()
    }

    fn activation(&mut self) -> Activation {
        match self.byte() % 5 {
            0 | 1 => Activation::None,
            2 => Activation::Relu,
            3 => Activation::Clip { min: 0.0, max: 6.0 },
            _ => {
                let (a, b) = (self.special(1.0), self.special(1.0));
                if a.is_nan() || b.is_nan() {
                    Activation::Clip { min: -1.0, max: 1.0 }
                } else {
                    Activation::Clip {
                        min: a.min(b),
                        max: a.max(b),
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Style {
    /// Finite values of one magnitude.
    Ordinary,
    /// Ordinary, with one special value in 32.
    Sparse,
    /// Special values only.
    Dense,
    /// Any bit pattern.
    Bits,
}

/// Kernels this CPU runs, the scalar definition's twin first.
fn hybrid_kernels() -> Vec<hybrid::Kernel> {
    hybrid::Kernel::available()
}

fn f32_kernels() -> Vec<gemm_f32::Kernel> {
    gemm_f32::Kernel::available()
}

/// The same value, NaNs equal whatever their payload.
fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// A `&'static` slice for a `QuantWeight` (whose fields are the baked
/// statics' types), freed on drop: the weight must be dropped first.
struct StaticSlice<T: 'static>(*mut [T]);

impl<T> StaticSlice<T> {
    fn new(v: Vec<T>) -> Self {
        StaticSlice(Box::into_raw(v.into_boxed_slice()))
    }

    /// # Safety
    /// The reference must not be used after `self` is dropped.
    unsafe fn get(&self) -> &'static [T] {
        // SAFETY: the box is live until drop; the caller bounds the use.
        unsafe { &*self.0 }
    }
}

impl<T> Drop for StaticSlice<T> {
    fn drop(&mut self) {
        // SAFETY: made by `Box::into_raw` in `new`, freed once.
        drop(unsafe { Box::from_raw(self.0) });
    }
}

/// Bytes as shapes and values for every kernel; see the module docs.
pub fn kernels(data: &[u8]) {
    let mut src = Source::new(data);
    let shape = src.byte();
    if (0x80..=0xfd).contains(&shape) {
        conv::conv(&mut src);
        return;
    }
    let (m, n, k) = match shape {
        0xff => {
            // The largest K whose sums are exact, on few rows.
            let k = hybrid::MAX_EXACT_K - usize::from(src.byte() % 8);
            (
                1 + usize::from(src.byte() % 2),
                1 + usize::from(src.byte() % 2),
                k,
            )
        }
        0xfe => {
            // Past every blocking size: MC rows (64 int8, 96 f32), KC = 256 inputs.
            let m = 61 + usize::from(src.byte()) % 40;
            let (n, k) = (
                1 + usize::from(src.byte()) % 4,
                250 + usize::from(src.byte()) % 16,
            );
            (m, n, k)
        }
        _ => {
            // Small, so that an input runs in a millisecond or two: tiles
            // and their edges (4 and 6 rows, 16 channels, 4 inputs a group).
            let m = 1 + usize::from(src.byte()) % 24;
            let n = 1 + usize::from(src.byte()) % 40;
            let k = 1 + usize::from(src.u16()) % 300;
            (m.min((1 << 13) / (n * k)).max(1), n, k)
        }
    };
    let x = src.values(m * k);
    let act = src.activation();
    let bias = (!src.byte().is_multiple_of(3)).then(|| src.values(n));

    quantizer(&x, k);
    int8_gemm(&mut src, &x, m, n, k, bias.as_deref(), act);
    if shape == 0xff {
        // Nothing else depends on K's exactness: spend the time elsewhere.
        return;
    }
    let w = src.values(n * k);
    f32_gemm(&x, &w, n, k, bias.as_deref(), act);
    let (outer, len) = (m, k);
    softmax(&x, outer, len, 1);
    if k % 2 == 0 {
        softmax(&x, m, 2, k / 2);
    }
}

/// Every quantizer kernel gives the definition's bits, and the contract holds.
fn quantizer(x: &[f32], k: usize) {
    let mut rows = Vec::new();
    for kernel in hybrid_kernels() {
        let mut q = QuantizedRows::default();
        q.quantize_into(kernel, x, k);
        rows.push((kernel, q));
    }
    let (_, want) = &rows[0];
    for (kernel, got) in &rows[1..] {
        assert_eq!(got.values, want.values, "{kernel:?} quantized values");
        assert_eq!(got.sums, want.sums, "{kernel:?} row sums");
        assert_eq!(got.nonnegative, want.nonnegative, "{kernel:?} signs");
        let bits = |s: &[f32]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got.scales), bits(&want.scales), "{kernel:?} scales");
    }
    for (r, x_row) in x.chunks_exact(k).enumerate() {
        let (q, scale) = (want.row(r), want.scales[r]);
        let padding = &want.values[r * want.stride + k..(r + 1) * want.stride];
        assert!(padding.iter().all(|&v| v == 0), "row {r}: padding is not zero");
        assert_eq!(
            want.sums[r],
            q.iter().map(|&v| i32::from(v)).sum::<i32>(),
            "row {r}: sum"
        );
        assert_eq!(
            want.nonnegative[r],
            q.iter().all(|&v| v >= 0),
            "row {r}: sign flag"
        );
        assert!(scale.is_finite() && scale >= 0.0, "row {r}: scale {scale}");
        if scale == 0.0 {
            assert!(q.iter().all(|&v| v == 0), "row {r}: scale 0 with non-zero values");
            continue;
        }
        assert!(q.iter().all(|&v| v >= -127), "row {r}: -128");
        let amax = x_row
            .iter()
            .fold(0.0f32, |m, v| if v.abs() > m { v.abs() } else { m });
        assert!(
            amax.is_finite(),
            "row {r}: an infinite row must take the zero path"
        );
        if scale >= f32::MIN_POSITIVE {
            // Half a step of error, plus the rounding of 127 / amax.
            for (i, (&v, &q)) in x_row.iter().zip(q).enumerate() {
                let v = if v.is_nan() { 0.0 } else { f64::from(v) };
                let err = (v - f64::from(q) * f64::from(scale)).abs();
                assert!(
                    err <= 0.5001 * f64::from(scale),
                    "row {r} [{i}]: {v} quantized to {q} x {scale}"
                );
            }
        }
    }
}

/// Every int8 kernel gives `gemm_reference`'s bits; the dequantized panels
/// are `(q - zero_point) * scale`.
fn int8_gemm(
    src: &mut Source,
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
    act: Activation,
) {
    let per_channel = src.byte().is_multiple_of(2);
    let weight_style = src.byte() % 5;
    let q: Vec<u8> = (0..n * k)
        .map(|_| match weight_style {
            0 => 0,
            1 => 255,
            2 => [0, 255][usize::from(src.byte() % 2)],
            _ => src.byte(),
        })
        .collect();
    let channels = if per_channel { n } else { 1 };
    let zero_point: Vec<u8> = (0..channels).map(|_| src.byte()).collect();
    let scale: Vec<f32> = (0..channels)
        .map(|_| match src.byte() % 4 {
            // Scales the generator makes: finite, non-negative, 0 for an all-zero channel.
            0 => 0.0,
            1 => f32::from_bits(u32::from(src.u16()) + 1),
            _ => f32::from(src.u16()) * 2f32.powi(i32::from(src.byte() % 64) - 40) / 65536.0,
        })
        .collect();

    let packed = StaticSlice::new(pack_b_s8(&q, n, k));
    let s8_sums = StaticSlice::new(s8_row_sums(&q, n, k));
    let s8_negative_sums = StaticSlice::new(s8_negative_sums(&q, n, k));
    let scales = StaticSlice::new(scale);
    let zero_points = StaticSlice::new(zero_point);
    // SAFETY: `w` is dropped at the end of this function, before the slices
    // declared above it.
    let w = unsafe {
        QuantWeight {
            name: "fuzz",
            rows: n,
            cols: k,
            packed: packed.get(),
            s8_sums: s8_sums.get(),
            s8_negative_sums: s8_negative_sums.get(),
            params: QuantParams {
                min: &[],
                max: &[],
                scale: scales.get(),
                zero_point: zero_points.get(),
            },
            cache: DequantCache::new(),
        }
    };

    let mut rows = QuantizedRows::default();
    rows.quantize_into(hybrid::Kernel::Scalar, x, k);
    {
        let mut want = vec![0.0; m * n];
        hybrid::gemm_reference(&rows, &w, bias, act, &mut want);
        for kernel in hybrid_kernels() {
            let mut got = vec![f32::NAN; m * n];
            hybrid::gemm_with(kernel, &rows, &w, bias, act, &mut got);
            for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                assert!(
                    same(g, r),
                    "{kernel:?} m{m} n{n} k{k} [{}, {}]: {g} ({:#x}), reference {r} ({:#x})",
                    i / n,
                    i % n,
                    g.to_bits(),
                    r.to_bits()
                );
            }
        }
    }

    if m * n * k <= 1 << 16 || n * k <= 1 << 12 {
        let panels = w.dequantized();
        for row in 0..n {
            let (s, z) = w.params.of_row(row);
            for col in 0..k {
                let want = qbake::format::dequantize(q[row * k + col], s, z);
                assert!(same(panels.get(row, col), want), "dequantized ({row}, {col})");
            }
        }
        assert!(w.cache.is_filled());
    }
    drop(w);
}

/// The exact product of one output, in f64, and what any summation order
/// must give.
enum Expect {
    /// Within `tolerance` of `value`, before the activation.
    Near { value: f64, tolerance: f64 },
    /// Non-finite whatever the order: NaN, or one infinity.
    Exactly(f32),
    /// Large enough to overflow in some orders and not others.
    Any,
}

fn expect(x_row: &[f32], w_row: &[f32], bias: f32) -> Expect {
    let (mut exact, mut magnitude) = (0.0f64, 0.0f64);
    let (mut nan, mut pos_inf, mut neg_inf) = (false, false, false);
    let terms = x_row
        .iter()
        .zip(w_row)
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .chain([f64::from(bias)]);
    for p in terms {
        if p.is_nan() {
            nan = true;
        } else if p == f64::INFINITY {
            pos_inf = true;
        } else if p == f64::NEG_INFINITY {
            neg_inf = true;
        } else {
            exact += p;
            magnitude += p.abs();
        }
    }
    // A finite part below this never overflows f32, in any order.
    let safe = magnitude < f64::from(f32::MAX) / 4.0;
    match (nan || (pos_inf && neg_inf), pos_inf, neg_inf) {
        (true, _, _) => Expect::Exactly(f32::NAN),
        (false, true, false) if safe => Expect::Exactly(f32::INFINITY),
        (false, false, true) if safe => Expect::Exactly(f32::NEG_INFINITY),
        (false, false, false) if safe => {
            let k = x_row.len() as f64 + 1.0;
            // Each add rounds by at most an ulp of the running magnitude;
            // each product (not fused) by one more, or by a subnormal step.
            let tolerance = magnitude * (k + 1.0) * f64::from(f32::EPSILON) + k * 2f64.powi(-148);
            Expect::Near {
                value: exact,
                tolerance,
            }
        }
        _ => Expect::Any,
    }
}

/// The f32 reference and every kernel within rounding of the exact product.
fn f32_gemm(x: &[f32], w: &[f32], n: usize, k: usize, bias: Option<&[f32]>, act: Activation) {
    let m = x.len() / k;
    let mut outputs = Vec::new();
    let mut reference = vec![0.0; m * n];
    gemm_f32::gemm_reference(x, w, k, bias, act, &mut reference);
    outputs.push(("reference".to_string(), reference));
    let packed = gemm_f32::PackedF32::from_rows(w, n, k);
    for kernel in f32_kernels() {
        let mut y = vec![f32::NAN; m * n];
        gemm_f32::gemm_with(kernel, x, &packed, bias, act, &mut y);
        outputs.push((format!("{kernel:?}"), y));
    }
    for (r, x_row) in x.chunks_exact(k).enumerate() {
        for (j, w_row) in w.chunks_exact(k).enumerate() {
            let b = bias.map_or(0.0, |b| b[j]);
            let expected = expect(x_row, w_row, b);
            for (who, y) in &outputs {
                let got = y[r * n + j];
                let ok = match expected {
                    Expect::Exactly(v) => same(got, act.apply(v)),
                    Expect::Near { value, tolerance } => {
                        // Activations are 1-Lipschitz: the distance to the
                        // activated exact value bounds the kernel's error.
                        let want = act.apply(value as f32);
                        let slack = (value - f64::from(value as f32)).abs();
                        same(got, want)
                            || (got.is_finite()
                                && (f64::from(got) - f64::from(want)).abs() <= tolerance + slack)
                    }
                    Expect::Any => true,
                };
                assert!(
                    ok,
                    "{who} m{m} n{n} k{k} [{r}, {j}] = {got}, bias {b}, {act:?}: expected {}",
                    {
                        match expected {
                            Expect::Exactly(v) => format!("{}", act.apply(v)),
                            Expect::Near { value, tolerance } => {
                                format!("{value} ± {tolerance} before {act:?}")
                            }
                            Expect::Any => "anything".into(),
                        }
                    }
                );
            }
        }
    }
}

/// Softmax of each `[len]` slice: probabilities summing to 1 when the slice
/// is finite (or holds some -Inf, which get exactly 0); all NaN when it holds
/// a NaN or +Inf, or is all -Inf.
fn softmax(x: &[f32], outer: usize, len: usize, inner: usize) {
    let mut y = vec![0.0; x.len()];
    qbake::ops::softmax(x, outer, len, inner, &mut y);
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| o * len * inner + j * inner + i;
            let slice: Vec<f32> = (0..len).map(|j| x[at(j)]).collect();
            let out: Vec<f32> = (0..len).map(|j| y[at(j)]).collect();
            let poisoned = slice.iter().any(|v| v.is_nan() || *v == f32::INFINITY)
                || slice.iter().all(|v| *v == f32::NEG_INFINITY);
            if poisoned {
                assert!(out.iter().all(|v| v.is_nan()), "softmax {slice:?} gave {out:?}");
                continue;
            }
            let sum: f64 = out.iter().map(|&v| f64::from(v)).sum();
            assert!(
                out.iter().all(|v| (0.0..=1.0).contains(v)),
                "softmax {slice:?} gave {out:?}"
            );
            assert!(
                (sum - 1.0).abs() <= 4.0 * len as f64 * f64::from(f32::EPSILON),
                "softmax sums to {sum}"
            );
            for (v, p) in slice.iter().zip(&out) {
                if *v == f32::NEG_INFINITY {
                    assert_eq!(*p, 0.0, "softmax of -inf");
                }
            }
        }
    }
}
