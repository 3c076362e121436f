//! The x86-64 AVX-512 VNNI hybrid kernel: an 8 x 32 int8 tile over two
//! panels side by side (8 x 16 for a lone last panel), one 16-lane i32
//! register per row and panel.
//!
//! `vpdpbusd` multiplies four unsigned by four signed bytes and adds the
//! four products to an i32 lane, in one instruction and without the 16-bit
//! saturation of `maddubs`; one packed group (16 channels x 4 inputs, 64
//! bytes) is one register. The weights are the signed operand. The
//! activations must be the unsigned one:
//!
//! - rows with no negative value are already `0..=127`;
//! - other rows are read as `q_x + 128` (`0..=255`, a copy the driver makes
//!   of the block's rows), and the accumulator starts at `-128 * sum_k w[k]`
//!   (baked per channel), so it ends at the same `sum_k w[k] q_x[k]`.
//!
//! No sum passes `i32`: a partial sum is `sum_{k<j} w q_x - 128 sum_{k>=j} w`,
//! at most `128 * 128 * K` in magnitude, under `2^31` for every `K <=`
//! [`super::MAX_EXACT_K`]. The epilogue is the AVX2 one's on 16 lanes, with
//! the same operations in the same order: the same bits.

use super::{MAX_F32_EXACT_K, PanelParams, Strip};
use crate::gemm_f32::avx512::Bounds;
use crate::ops::Activation;
use crate::tiles::row_tiles;
use qbake_format::{KG, NR};
use std::arch::x86_64::*;

/// Rows of a tile: with two panels, sixteen independent `vpdpbusd`
/// chains, and each broadcast activation word feeds two of them.
pub const MR: usize = 8;

/// # Safety
/// The CPU must have AVX-512F and AVX-512 VNNI, and `s` must have passed
/// `Strip::check`.
#[target_feature(enable = "avx512f,avx512vnni")]
pub unsafe fn strip(s: &mut Strip<'_>) {
    assert!(
        s.offset.is_some() || s.nonnegative[..s.rows].iter().all(|&n| n),
        "rows with negative values need their unsigned copy"
    );
    let c = s.c.as_mut_ptr();
    // SAFETY: `check` proved every row and column a tile touches.
    unsafe {
        if s.cols > NR {
            rows_of::<true>(s, c)
        } else {
            rows_of::<false>(s, c)
        }
    }
}

/// The strip's tiles, over two panels if `TWO`.
///
/// # Safety
/// As [`strip`], with `c` `s.c`'s start.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn rows_of<const TWO: bool>(s: &Strip<'_>, c: *mut f32) {
    // SAFETY: as the caller's; each tile call covers rows `m0..m0 + R`.
    unsafe {
        row_tiles!(s.rows, MR, |m0, R| tile::<R, TWO>(s, m0, c), [1 2 3 4 5 6 7]);
    }
}

/// Rows `m0..m0 + R` of the strip, one panel or two (`TWO`), with the
/// float epilogue `act((dot - z * sum) as f32 * (scale_w * scale_x) + bias)`.
///
/// # Safety
/// AVX-512F and VNNI, `s` checked, `m0 + R <= s.rows`, `c` is `s.c`'s
/// start, `TWO` only if `s.cols > NR`, and `s.offset` is given if any of
/// the rows has a negative value.
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn tile<const R: usize, const TWO: bool>(s: &Strip<'_>, m0: usize, c: *mut f32) {
    let panels = if TWO { 2 } else { 1 };
    let masks = column_masks(s);
    let nonnegative = s.nonnegative[m0..m0 + R].iter().all(|&n| n);
    // SAFETY (whole body): `check` proved `groups * KG` bytes per row of
    // `a` and of `offset`, the panels' extents (the second at
    // `panel_stride`), one parameter set per panel, and R rows of `ldc`
    // with `cols` columns at row m0 of `c`; the parameter arrays have NR
    // entries; the masked stores touch only the strip's columns.
    unsafe {
        let (base, start) = match s.offset {
            Some(offset) if !nonnegative => (
                offset.as_ptr(),
                [&s.params[0], &s.params[panels - 1]]
                    .map(|p| _mm512_loadu_si512(p.offset_correction.as_ptr().cast())),
            ),
            _ => (s.a.as_ptr().cast::<u8>(), [_mm512_setzero_si512(); 2]),
        };
        let rows: [*const u8; R] = std::array::from_fn(|r| base.add((m0 + r) * s.lda));
        let mut acc = [start; R];
        let b = [
            s.panel.as_ptr(),
            s.panel.as_ptr().add(if TWO { s.panel_stride } else { 0 }),
        ];
        for g in 0..s.groups {
            let w = b.map(|b| _mm512_loadu_si512(b.add(g * NR * KG).cast()));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32(rows[r].add(g * KG).cast::<i32>().read_unaligned());
                for h in 0..panels {
                    acc[h] = _mm512_dpbusd_epi32(acc[h], x, w[h]);
                }
            }
        }

        let c = c.add(m0 * s.ldc);
        for h in 0..panels {
            let consts = PanelConsts::new(&s.params[h], s.act);
            for (r, acc) in acc.iter().enumerate() {
                finish(s, m0 + r, acc[h], &consts, c.add(r * s.ldc + h * NR), masks[h]);
            }
        }
    }
}

/// The lanes of the strip's columns in each of its panels.
pub(super) fn column_masks(s: &Strip<'_>) -> [__mmask16; 2] {
    let lanes = |cols: usize| -> __mmask16 { if cols >= NR { !0 } else { (1u16 << cols) - 1 } };
    if s.cols > NR {
        [!0, lanes(s.cols - NR)]
    } else {
        [lanes(s.cols), 0]
    }
}

/// One panel's epilogue constants, and the activation's bounds, in registers.
pub(super) struct PanelConsts {
    zero_point: __m512i,
    zero_point_f: __m512,
    scale: __m512,
    bias: __m512,
    bounds: Bounds,
}

impl PanelConsts {
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) fn new(p: &PanelParams, act: Activation) -> Self {
        // SAFETY: each array has NR = 16 entries.
        unsafe {
            let zero_point = _mm512_loadu_si512(p.zero_point.as_ptr().cast());
            PanelConsts {
                zero_point,
                zero_point_f: _mm512_cvtepi32_ps(zero_point),
                scale: _mm512_loadu_ps(p.scale.as_ptr()),
                bias: _mm512_loadu_ps(p.bias.as_ptr()),
                bounds: Bounds::new(act),
            }
        }
    }
}

/// Row `m` of the strip from one panel's i32 sums `acc`, written to `dst`
/// (the lanes of `mask`): `act((acc - z * sum) as f32 * (scale_w *
/// scale_x) + bias)`. As the AVX2 epilogue: the zero-point correction in
/// f32 (one FMA, exact) while K allows, else in i32.
///
/// # Safety
/// `m < s.rows`; `dst` is valid for the lanes of `mask`.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn finish(
    s: &Strip<'_>,
    m: usize,
    acc: __m512i,
    p: &PanelConsts,
    dst: *mut f32,
    mask: __mmask16,
) {
    let (sum, scale_x) = (s.sums[m], _mm512_set1_ps(s.scales[m]));
    let v = if s.groups * KG <= MAX_F32_EXACT_K {
        _mm512_fnmadd_ps(
            p.zero_point_f,
            _mm512_set1_ps(sum as f32),
            _mm512_cvtepi32_ps(acc),
        )
    } else {
        _mm512_cvtepi32_ps(_mm512_sub_epi32(
            acc,
            _mm512_mullo_epi32(p.zero_point, _mm512_set1_epi32(sum)),
        ))
    };
    let v = _mm512_add_ps(_mm512_mul_ps(v, _mm512_mul_ps(p.scale, scale_x)), p.bias);
    // SAFETY: the caller's.
    unsafe { _mm512_mask_storeu_ps(dst, mask, p.bounds.apply(v)) };
}

/// [`super::QuantizedRows::quantize_into`] with [`quantize_row`] inlined
/// (as `each_row` does for the other kernels), and the rows' sums reduced
/// sixteen rows at a time ([`sum_each`]): reduced row by row, the sums
/// drew a fifth of the quantizer's samples. In one process against the
/// row-by-row reduction, a hybrid forward was 2-5% faster; the same loop
/// written as an `each_row` closure gained nothing.
///
/// # Safety
/// The CPU must have AVX-512F, BW and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn quantize_rows(rows: &mut super::QuantizedRows, x: &[f32]) {
    let (k, stride) = (rows.k, rows.stride);
    // The lanes of each pending row's sum, from row `first`.
    let mut pending = [_mm512_setzero_si512(); 16];
    let mut first = 0;
    let flush = |pending: &mut [__m512i; 16], first: usize, count: usize, sums: &mut [i32]| {
        pending[count..].fill(_mm512_setzero_si512());
        let lanes: __mmask16 = if count == 16 { !0 } else { (1u16 << count) - 1 };
        // SAFETY: `sums` has a value for each of the `count` rows from `first`.
        unsafe {
            _mm512_mask_storeu_epi32(
                sums[first..first + count].as_mut_ptr().cast(),
                lanes,
                sum_each(pending),
            )
        };
    };
    for (r, x_row) in x.chunks_exact(k).enumerate() {
        let (q_row, padding) = rows.values[r * stride..(r + 1) * stride].split_at_mut(k);
        // As in `each_row`: `fill` on an empty slice still calls memset.
        if !padding.is_empty() {
            padding.fill(0);
        }
        // SAFETY: this function's caller checked the features `quantize_row` needs.
        let (scale, sum, nonnegative) = unsafe { quantize_row(x_row, q_row) };
        (rows.scales[r], rows.nonnegative[r]) = (scale, nonnegative);
        pending[r - first] = sum;
        if r - first == 15 {
            flush(&mut pending, first, 16, &mut rows.sums);
            first = r + 1;
        }
    }
    let count = x.len() / k - first;
    if count > 0 {
        flush(&mut pending, first, count, &mut rows.sums);
    }
}

/// Lane `r` of the result is the sum of `v[r]`'s lanes: sixteen horizontal
/// sums in four levels of adds on interleaved halves, about three
/// instructions a row where one row's own reduction takes eight.
#[target_feature(enable = "avx512f")]
#[inline]
fn sum_each(v: &[__m512i; 16]) -> __m512i {
    // In each 128-bit quarter, rows 2i and 2i + 1: [a0 + a2, b0 + b2, a1 + a3, b1 + b3].
    let pairs: [__m512i; 8] = std::array::from_fn(|i| {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b))
    });
    // In each quarter, rows 4i..4i + 4, each the sum of its four lanes there.
    let quads: [__m512i; 4] = std::array::from_fn(|i| {
        let (a, b) = (pairs[2 * i], pairs[2 * i + 1]);
        _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b))
    });
    // Quarters added in pairs: [rows 8i..8i + 4 in quarters 0 + 1, the same
    // rows in quarters 2 + 3, rows 8i + 4..8i + 8 likewise].
    let halves = |a: __m512i, b: __m512i| {
        _mm512_add_epi32(
            _mm512_shuffle_i32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_i32x4::<0b11_01_11_01>(a, b),
        )
    };
    let (low, high) = (halves(quads[0], quads[1]), halves(quads[2], quads[3]));
    halves(low, high)
}

/// [`super::quantize_row`] sixteen values at a time, the last ones through
/// a lane mask (no scalar tail), with the same bits; returns `(scale, sum of
/// q spread over sixteen lanes, no q negative)`. Rows with NaN or an
/// infinity, and the short and subnormal-scale paths, go to the scalar
/// definition, as in the AVX2 quantizer (their sum in lane 0).
///
/// The largest magnitude is taken as an unsigned integer maximum of the
/// values' bits with the sign cleared: for non-negative floats the integer
/// order is the float order, and NaN and infinity (exponent all ones) rank
/// above every finite value, so one compare after the pass finds them. That
/// is one 1-cycle operation a vector instead of a float `max` and a NaN
/// test. Groups of 64 values are narrowed by two packs and stored as one
/// vector, and summed by one `vpdpbusd` against ones.
///
/// # Safety
/// The CPU must have AVX-512F, BW and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn quantize_row(x: &[f32], q: &mut [i8]) -> (f32, __m512i, bool) {
    assert_eq!(x.len(), q.len());
    let (full, rest) = (x.len() / 16, x.len() % 16);
    let tail: __mmask16 = ((1u32 << rest) - 1) as u16;
    // SAFETY: every load and store touches 16 values at 16 * i for i <
    // full, or the `rest` lanes of `tail` at 16 * full: all within x and q.
    unsafe {
        let bits =
            |i: usize, lanes: __mmask16| _mm512_maskz_loadu_epi32(lanes, x.as_ptr().add(16 * i).cast());
        let abs_mask = _mm512_set1_epi32(0x7fff_ffff);
        // Two maxima, so that the pass is not one chain of latencies.
        let mut ms = [_mm512_setzero_si512(); 2];
        for i in 0..full {
            ms[i % 2] = _mm512_max_epu32(ms[i % 2], _mm512_and_si512(bits(i, !0), abs_mask));
        }
        if rest > 0 {
            // Masked-off lanes load 0, which raises no maximum.
            ms[1] = _mm512_max_epu32(ms[1], _mm512_and_si512(bits(full, tail), abs_mask));
        }
        let amax_bits = _mm512_reduce_max_epu32(_mm512_max_epu32(ms[0], ms[1]));
        let amax = f32::from_bits(amax_bits);
        let scale = amax / 127.0;
        let inv = 127.0 / amax;
        if amax_bits >= f32::INFINITY.to_bits() || scale <= 0.0 || !inv.is_finite() {
            let (scale, sum, nonnegative) = super::scalar::quantize_row(x, q);
            return (scale, _mm512_maskz_set1_epi32(1, sum), nonnegative);
        }
        let vinv = _mm512_set1_ps(inv);
        // `cvtps` rounds to nearest, ties to even (Rust never changes
        // MXCSR); |x * inv| <= 127, so the packs and narrowing never
        // saturate. Masked-off lanes are 0 and add nothing.
        let quantize = |i: usize, lanes: __mmask16| {
            _mm512_cvtps_epi32(_mm512_mul_ps(
                _mm512_maskz_loadu_ps(lanes, x.as_ptr().add(16 * i)),
                vinv,
            ))
        };
        // The packs interleave 128-bit lanes; this puts the four vectors back in order.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let ones = _mm512_set1_epi8(1);
        let (mut sum, mut signs) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for b in 0..full / 4 {
            let [r0, r1, r2, r3] = [0, 1, 2, 3].map(|j| quantize(4 * b + j, !0));
            let bytes = _mm512_packs_epi16(_mm512_packs_epi32(r0, r1), _mm512_packs_epi32(r2, r3));
            let bytes = _mm512_permutexvar_epi32(order, bytes);
            _mm512_storeu_si512(q.as_mut_ptr().add(64 * b).cast(), bytes);
            sum = _mm512_dpbusd_epi32(sum, ones, bytes);
            signs = _mm512_or_si512(signs, bytes);
        }
        let mut put = |i: usize, lanes: __mmask16| {
            let r = quantize(i, lanes);
            _mm512_mask_cvtsepi32_storeu_epi8(q.as_mut_ptr().add(16 * i), lanes, r);
            sum = _mm512_add_epi32(sum, r);
            signs = _mm512_or_si512(signs, r);
        };
        for i in full / 4 * 4..full {
            put(i, !0);
        }
        if rest > 0 {
            put(full, tail);
        }
        // `signs` or-s bytes and i32 lanes: a value is negative only if its
        // top bit is set, and that of a value in 0..=127 is clear, as are
        // all its other bytes' top bits.
        (scale, sum, _mm512_movepi8_mask(signs) == 0)
    }
}
