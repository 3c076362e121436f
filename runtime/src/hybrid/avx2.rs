//! The x86-64 AVX2 hybrid kernels: a 4 x 16 int8 tile and the row quantizer.

use super::{MAX_F32_EXACT_K, MR, Strip};
use crate::gemm_f32::avx2::Bounds;
use crate::tiles::row_tiles;
use qbake_format::{KG, NR};
use std::arch::x86_64::*;

/// # Safety
/// The CPU must have AVX2 and FMA, and `s` must have passed `Strip::check`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn strip(s: &mut Strip<'_>) {
    assert!(s.cols <= NR, "one panel per strip");
    let c = s.c.as_mut_ptr();
    // SAFETY: `check` proved every row and column a tile touches; each tile
    // call covers rows `m0..m0 + R` of the strip.
    unsafe {
        row_tiles!(s.rows, MR, |m0, R| tile::<R>(s, m0, c), [1 2 3]);
    }
}

/// Rows `m0..m0 + R` of the strip, with the float epilogue
/// `act((dot - z * sum) as f32 * (scale_w * scale_x) + bias)`, lane for
/// lane the scalar one. Written here rather than in a function of its own,
/// so that the products stay in registers (a `target_feature` function
/// cannot be forced inline, and this one was not).
///
/// # Safety
/// AVX2 and FMA, `s` checked, `m0 + R <= s.rows`, and `c` is `s.c`'s start.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile<const R: usize>(s: &Strip<'_>, m0: usize, c: *mut f32) {
    let rows: [*const i8; R] = std::array::from_fn(|r| s.a[(m0 + r) * s.lda..].as_ptr());
    let nonnegative = s.nonnegative[m0..m0 + R].iter().all(|&n| n);
    // The zero-point correction `dot - z * sum` in f32, one FMA, while
    // |dot| <= 128 * 127 * K and |sum| <= 127 * K convert to f32 exactly:
    // the FMA then rounds the exact result once, as converting the exact
    // i32 would, and saves the slow `mullo`. Past that K, in i32.
    let in_f32 = s.groups * KG <= MAX_F32_EXACT_K;
    // SAFETY (whole body): `check` proved `groups * KG` bytes per row, the
    // panel's extent, and R rows of `ldc` with `cols` columns at row m0 of
    // `c`; the parameter arrays have NR entries.
    unsafe {
        let p = &s.params[0];
        let dot = if nonnegative {
            dot_tile_nonnegative::<R>(rows, s.panel.as_ptr(), s.groups)
        } else {
            let shortfall = [0, 8].map(|h| _mm256_loadu_si256(p.negative_sum.as_ptr().add(h).cast()));
            dot_tile_signed::<R>(rows, s.panel.as_ptr(), s.groups, shortfall)
        };
        // Edge columns go through a full-width buffer, left uninitialized:
        // zeroing it cost every tile eight stores (12544x16x96 spent 15% of
        // its time there), and the epilogue writes all of it.
        let mut buf = std::mem::MaybeUninit::<[[f32; NR]; R]>::uninit();
        let (out, ld) = if s.cols == NR {
            (c.add(m0 * s.ldc), s.ldc)
        } else {
            (buf.as_mut_ptr().cast::<f32>(), NR)
        };
        // The tile's rows, sliced once: indexing by `m0 + r` checked bounds
        // for each row in each half.
        let (sums, scales) = (&s.sums[m0..m0 + R], &s.scales[m0..m0 + R]);
        let sums_f32: [f32; R] = std::array::from_fn(|r| sums[r] as f32);
        let half = |h: usize| {
            let zp = _mm256_loadu_si256(p.zero_point.as_ptr().add(8 * h).cast());
            (
                zp,
                _mm256_cvtepi32_ps(zp),
                _mm256_loadu_ps(p.scale.as_ptr().add(8 * h)),
                _mm256_loadu_ps(p.bias.as_ptr().add(8 * h)),
            )
        };
        let bounds = Bounds::new(s.act);
        // A half's constants at a time, all rows: with both halves' eight
        // vectors live beside the products, the registers ran out (this
        // order: 12544x32x64 1.10-1.14x, 12544x16x96 1.08x in `cargo
        // bench`; whole forwards 1.01-1.02x at 1 thread).
        for h in 0..2 {
            let (zp, zp_f, scale_w, bias) = half(h);
            for (r, dot) in dot.iter().enumerate() {
                let (sum, scale_x) = (sums[r], _mm256_set1_ps(scales[r]));
                let acc = if in_f32 {
                    _mm256_fnmadd_ps(zp_f, _mm256_set1_ps(sums_f32[r]), _mm256_cvtepi32_ps(dot[h]))
                } else {
                    let correction = _mm256_mullo_epi32(zp, _mm256_set1_epi32(sum));
                    _mm256_cvtepi32_ps(_mm256_sub_epi32(dot[h], correction))
                };
                let v = _mm256_add_ps(_mm256_mul_ps(acc, _mm256_mul_ps(scale_w, scale_x)), bias);
                _mm256_storeu_ps(out.add(r * ld + 8 * h), bounds.apply(v));
            }
        }
        if s.cols != NR {
            // Every lane of `buf` was stored above (both halves of R rows).
            for (r, row) in buf.assume_init_ref().iter().enumerate() {
                std::ptr::copy_nonoverlapping(row.as_ptr(), c.add((m0 + r) * s.ldc), s.cols);
            }
        }
    }
}

/// `dot[r][j] = sum_i w[j][i] * a[r][i]` for rows with no negative value
/// (after ReLU, most rows): the activation is the unsigned `maddubs`
/// operand, `0..=127`, the weight the signed one, `-128..=127`, so a pair
/// sums to at most 2 * 127 * 128 = 32512 and never saturates.
///
/// # Safety
/// Each `a[r]` has `groups * KG` readable bytes, none negative; `b` has `groups * NR * KG`.
#[target_feature(enable = "avx2")]
unsafe fn dot_tile_nonnegative<const R: usize>(
    a: [*const i8; R],
    b: *const u8,
    groups: usize,
) -> [[__m256i; 2]; R] {
    // SAFETY (whole body): offsets stay within the extents above; loads are unaligned.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_si256(); 2]; R];
        for g in 0..groups {
            let w0 = _mm256_loadu_si256(b.add(g * NR * KG).cast());
            let w1 = _mm256_loadu_si256(b.add(g * NR * KG + 32).cast());
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_epi32(a[r].add(g * KG).cast::<i32>().read_unaligned());
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w0), ones));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w1), ones));
            }
        }
        acc
    }
}

/// `dot[r][j] = sum_i w[j][i] * a[r][i]` for any rows, exactly, given the
/// panel's `negative_sum` as `shortfall` (8 channels per vector).
///
/// Each 32-byte load of the panel is 8 channels x 4 inputs. `maddubs`
/// multiplies `|w| <= 128` (unsigned) by the activation flipped where the
/// weight is negative, `a ^ m` with `m` all ones there: `-a - 1`, so that
/// `|w| (a ^ m) = w a - |w|`, one `|w|` short per negative weight; the
/// sums start from `shortfall`, the channel's total, instead of 0 (in the
/// epilogue, the add cost the short-K shapes a quarter of their speed).
/// Flipped or not the signed operand is in `-128..=127`, so a pair sums to
/// `-32768..=32512` and never saturates. `madd` with ones widens pairs to
/// i32. (`sign_epi8`, which flips exactly, ran this tile at 55 G
/// multiply-adds/s on an AVX2-only AMD EPYC, against 74 G with the `xor`:
/// it took a slot on the pipes that multiply.)
///
/// # Safety
/// Each `a[r]` has `groups * KG` readable bytes; `b` has `groups * NR * KG`.
#[target_feature(enable = "avx2")]
unsafe fn dot_tile_signed<const R: usize>(
    a: [*const i8; R],
    b: *const u8,
    groups: usize,
    shortfall: [__m256i; 2],
) -> [[__m256i; 2]; R] {
    // SAFETY (whole body): offsets stay within the extents above; loads are unaligned.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let zero = _mm256_setzero_si256();
        let mut acc = [shortfall; R];
        for g in 0..groups {
            let w0 = _mm256_loadu_si256(b.add(g * NR * KG).cast());
            let w1 = _mm256_loadu_si256(b.add(g * NR * KG + 32).cast());
            let (abs0, abs1) = (_mm256_abs_epi8(w0), _mm256_abs_epi8(w1));
            let (m0, m1) = (_mm256_cmpgt_epi8(zero, w0), _mm256_cmpgt_epi8(zero, w1));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_epi32(a[r].add(g * KG).cast::<i32>().read_unaligned());
                let p0 = _mm256_maddubs_epi16(abs0, _mm256_xor_si256(x, m0));
                let p1 = _mm256_maddubs_epi16(abs1, _mm256_xor_si256(x, m1));
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(p0, ones));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(p1, ones));
            }
        }
        acc
    }
}

/// [`super::QuantizedRows::quantize_into`] with [`quantize_row`] inlined.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn quantize_rows(rows: &mut super::QuantizedRows, x: &[f32]) {
    let (k, m) = (rows.k, rows.rows());
    // Rows of whole vectors (no padding: `stride == k`), eight at a time.
    let batched = if k.is_multiple_of(8) { m / 8 * 8 } else { 0 };
    for r0 in (0..batched).step_by(8) {
        let (x, q) = (&x[r0 * k..(r0 + 8) * k], &mut rows.values[r0 * k..(r0 + 8) * k]);
        // SAFETY: this function's caller checked AVX2; 8 rows of k each.
        let (scales, sums, nonnegative) = unsafe {
            match k / 8 {
                2 => quantize_8_rows::<2>(x, q, k),
                3 => quantize_8_rows::<3>(x, q, k),
                4 => quantize_8_rows::<4>(x, q, k),
                8 => quantize_8_rows::<8>(x, q, k),
                _ => quantize_8_rows::<0>(x, q, k),
            }
        };
        rows.scales[r0..r0 + 8].copy_from_slice(&scales);
        rows.sums[r0..r0 + 8].copy_from_slice(&sums);
        rows.nonnegative[r0..r0 + 8].copy_from_slice(&nonnegative);
    }
    // SAFETY: this function's caller checked AVX2.
    super::each_row(rows, x, batched, |x, q| unsafe { quantize_row(x, q) });
}

/// Four vectors of quantized values (i32 in ±127, so the packs never
/// saturate) as their 32 bytes in order: the packs interleave 128-bit
/// lanes, and the permutation puts the four groups back.
#[target_feature(enable = "avx2")]
#[inline]
fn narrow_32([r0, r1, r2, r3]: [__m256i; 4]) -> __m256i {
    let bytes = _mm256_packs_epi16(_mm256_packs_epi32(r0, r1), _mm256_packs_epi32(r2, r3));
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Eight quantized values (i32 in ±127) as bytes at `q`.
///
/// # Safety
/// `q` has 8 writable bytes.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn store_8(q: *mut i8, v: __m256i) {
    let words = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    // SAFETY: the caller's 8 bytes.
    unsafe { _mm_storel_epi64(q.cast(), _mm_packs_epi16(words, words)) };
}

/// Lane `i`: `op` folded over the eight lanes of `v[i]` (pairs, then
/// quads, then halves), for an `op` whose result does not depend on the
/// order (max of non-NaN values, integer sums).
#[target_feature(enable = "avx2")]
#[inline]
fn fold_each(v: [__m256; 8], op: impl Fn(__m256, __m256) -> __m256) -> __m256 {
    // [a0 a2 b0 b2 | a4 a6 b4 b6] op [a1 a3 b1 b3 | a5 a7 b5 b7].
    let pairs = |a, b| {
        op(
            _mm256_shuffle_ps::<0b10_00_10_00>(a, b),
            _mm256_shuffle_ps::<0b11_01_11_01>(a, b),
        )
    };
    // Rows 0-3, then 4-7: each lane row i's first (low half) or last four.
    let low = pairs(pairs(v[0], v[1]), pairs(v[2], v[3]));
    let high = pairs(pairs(v[4], v[5]), pairs(v[6], v[7]));
    op(
        _mm256_permute2f128_ps::<0x20>(low, high),
        _mm256_permute2f128_ps::<0x31>(low, high),
    )
}

/// Eight rows of `k` values, `k` a multiple of 8, as [`quantize_row`]
/// quantizes each (the same bits), returning each row's `(scale, sum,
/// nonnegative)`. For short rows the per-row steps cost more than the
/// values: the lanes' maximum and sum, two divisions and their checks, one
/// after another. Here the eight rows' maxima and sums are reduced
/// together ([`fold_each`]) and the divisions are two vector ones.
/// A NaN needs no pass of its own: it quantizes to `i32::MIN`, which no
/// other value reaches (|x / amax * 127| <= 127); its row, and any whose
/// scale the definition's short path or division path handles, is done
/// again by the definition. `C` is `k / 8` where the caller unrolls for it
/// (K = 16 to 64: with the loops' bounds known, 1.2-1.4x faster than with
/// `C = 0`, any multiple of 8). One thread, against a row at a time: K = 16
/// 1.74x, 32 1.37x, 64 1.38x, 128 1.30x; whole hybrid forwards 1.01x.
///
/// # Safety
/// The CPU must have AVX2; `x` and `q` hold 8 rows of `k` values.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn quantize_8_rows<const C: usize>(
    x: &[f32],
    q: &mut [i8],
    k: usize,
) -> ([f32; 8], [i32; 8], [bool; 8]) {
    assert!(k.is_multiple_of(8) && x.len() == 8 * k && q.len() == 8 * k);
    assert!(C == 0 || C == k / 8);
    let chunks = if C == 0 { k / 8 } else { C };
    let blocks = chunks / 4;
    // SAFETY (whole body): row r's loads read 8 floats at r * k + 8 * i,
    // i < chunks; its stores write 32 bytes at r * k + 32 * b, b < blocks,
    // or 8 at r * k + 8 * i.
    unsafe {
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let load = |r: usize, i: usize| _mm256_loadu_ps(x.as_ptr().add(r * k + 8 * i));
        // Each row's lanes' maxima of |x|, four chains (NaN keeps the
        // maximum, as in the definition's fold).
        // (Loops, not `array::from_fn`: its closures were not inlined.)
        let mut maxima = [_mm256_setzero_ps(); 8];
        for (r, maximum) in maxima.iter_mut().enumerate() {
            let mut m = [_mm256_setzero_ps(); 4];
            for b in 0..blocks {
                for (j, m) in m.iter_mut().enumerate() {
                    *m = _mm256_max_ps(_mm256_and_ps(load(r, 4 * b + j), abs_mask), *m);
                }
            }
            for i in 4 * blocks..chunks {
                m[0] = _mm256_max_ps(_mm256_and_ps(load(r, i), abs_mask), m[0]);
            }
            *maximum = _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3]));
        }
        let amax = fold_each(maxima, |a, b| _mm256_max_ps(a, b));
        let (c127, zero) = (_mm256_set1_ps(127.0), _mm256_setzero_ps());
        let (scale, inv) = (_mm256_div_ps(amax, c127), _mm256_div_ps(c127, amax));
        // The definition's other paths: scale <= 0 or not finite, or 127 /
        // amax not finite. (Their rows would also come out with i32::MIN,
        // from 0 * inf or inf * 0, so the NaN test below backs this one.)
        let infinite = |v: __m256| {
            _mm256_cmp_ps::<_CMP_NLT_UQ>(_mm256_and_ps(v, abs_mask), _mm256_set1_ps(f32::INFINITY))
        };
        let other = _mm256_or_ps(
            _mm256_cmp_ps::<_CMP_LE_OQ>(scale, zero),
            _mm256_or_ps(infinite(scale), infinite(inv)),
        );
        let mut redo = _mm256_movemask_ps(other);
        let (mut scales, mut invs) = ([0.0f32; 8], [0.0f32; 8]);
        _mm256_storeu_ps(scales.as_mut_ptr(), scale);
        _mm256_storeu_ps(invs.as_mut_ptr(), inv);
        let mut nonnegative = [false; 8];
        let mut sums = [_mm256_setzero_ps(); 8];
        for (r, row_sum) in sums.iter_mut().enumerate() {
            if redo & (1 << r) != 0 {
                continue;
            }
            let (mut sum, mut min) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            let vinv = _mm256_set1_ps(invs[r]);
            // `cvtps` rounds to nearest, ties to even (MXCSR's default).
            let quantize = |i: usize| _mm256_cvtps_epi32(_mm256_mul_ps(load(r, i), vinv));
            let row = q.as_mut_ptr().add(r * k);
            for b in 0..blocks {
                let [r0, r1, r2, r3] = [0, 1, 2, 3].map(|j| quantize(4 * b + j));
                sum = _mm256_add_epi32(
                    sum,
                    _mm256_add_epi32(_mm256_add_epi32(r0, r1), _mm256_add_epi32(r2, r3)),
                );
                min = _mm256_min_epi32(
                    min,
                    _mm256_min_epi32(_mm256_min_epi32(r0, r1), _mm256_min_epi32(r2, r3)),
                );
                _mm256_storeu_si256(row.add(32 * b).cast(), narrow_32([r0, r1, r2, r3]));
            }
            for i in 4 * blocks..chunks {
                let v = quantize(i);
                sum = _mm256_add_epi32(sum, v);
                min = _mm256_min_epi32(min, v);
                store_8(row.add(8 * i), v);
            }
            let nan = _mm256_cmpeq_epi32(min, _mm256_set1_epi32(i32::MIN));
            if _mm256_movemask_epi8(nan) != 0 {
                redo |= 1 << r;
            }
            nonnegative[r] = _mm256_movemask_ps(_mm256_castsi256_ps(min)) == 0;
            *row_sum = _mm256_castsi256_ps(sum);
        }
        let mut total = [0i32; 8];
        let summed = fold_each(sums, |a, b| {
            _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(a), _mm256_castps_si256(b)))
        });
        _mm256_storeu_si256(total.as_mut_ptr().cast(), _mm256_castps_si256(summed));
        for r in (0..8).filter(|r| redo & (1 << r) != 0) {
            (scales[r], total[r], nonnegative[r]) =
                super::scalar::quantize_row(&x[r * k..(r + 1) * k], &mut q[r * k..(r + 1) * k]);
        }
        (scales, total, nonnegative)
    }
}

/// [`super::quantize_row`] on 32 values at a time, then 8, with the same
/// bits; returns `(scale, sum of q, no q negative)`. Rows of 8 to 31 values
/// (the inputs of 1x1 convolutions with K = 16 or 24) take the 8-wide path
/// rather than the scalar one.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
#[inline]
pub unsafe fn quantize_row(x: &[f32], q: &mut [i8]) -> (f32, i32, bool) {
    assert_eq!(x.len(), q.len());
    let (chunks, blocks) = (x.len() / 8, x.len() / 32);
    // SAFETY: every load reads 8 floats of x at 8 * i < 8 * chunks <= len;
    // every store writes 32 bytes of q at 32 * b < 32 * blocks <= len, or 8
    // bytes at 8 * i < 8 * chunks.
    unsafe {
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        // Four maxima, so that the pass is not one chain of `max` latencies;
        // the maximum is the same whichever order it is taken in.
        let (mut ms, mut nan) = ([_mm256_setzero_ps(); 4], _mm256_setzero_ps());
        let mut fold = |m: &mut __m256, i: usize| {
            let v = _mm256_loadu_ps(x.as_ptr().add(8 * i));
            // max_ps(|v|, m) keeps m when |v| is NaN, as the scalar fold does.
            *m = _mm256_max_ps(_mm256_and_ps(v, abs_mask), *m);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        };
        // Unrolled by hand: indexing `ms` by `i % 4` kept it in memory.
        for b in 0..blocks {
            for (j, m) in ms.iter_mut().enumerate() {
                fold(m, 4 * b + j);
            }
        }
        for i in 4 * blocks..chunks {
            fold(&mut ms[0], i);
        }
        let m = _mm256_max_ps(_mm256_max_ps(ms[0], ms[1]), _mm256_max_ps(ms[2], ms[3]));
        // The lanes' maximum (no NaN in m: it starts at 0 and keeps m).
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m1 = _mm_max_ss(m2, _mm_movehdup_ps(m2));
        let amax = x[8 * chunks..]
            .iter()
            .fold(_mm_cvtss_f32(m1), |m, v| if v.abs() > m { v.abs() } else { m });
        let scale = amax / 127.0;
        let inv = 127.0 / amax;
        let has_nan = _mm256_movemask_ps(nan) != 0 || x[8 * chunks..].iter().any(|v| v.is_nan());
        if scale <= 0.0 || !scale.is_finite() || !inv.is_finite() || has_nan {
            // The short path, the rare division path and rows with NaN
            // (which `cvtps` would turn into i32::MIN): the scalar definition.
            return super::scalar::quantize_row(x, q);
        }
        let vinv = _mm256_set1_ps(inv);
        // `cvtps` rounds as MXCSR says: to nearest, ties to even (Rust never
        // changes it). |x * inv| <= 127, so the packs never saturate.
        let quantize =
            |i: usize| _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(8 * i)), vinv));
        let (ones8, ones16) = (_mm256_set1_epi8(1), _mm256_set1_epi16(1));
        let (mut sum, mut min) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for b in 0..blocks {
            let bytes = narrow_32([0, 1, 2, 3].map(|j| quantize(4 * b + j)));
            _mm256_storeu_si256(q.as_mut_ptr().add(32 * b).cast(), bytes);
            // Sum of the 32 bytes: pairs (at most 2 * 127) then quads, in i32 lanes.
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, bytes), ones16));
            min = _mm256_min_epi8(min, bytes);
        }
        // The last whole groups of 8: summed as i32 lanes, their signs or-ed.
        let mut signs = _mm256_setzero_si256();
        for i in 4 * blocks..chunks {
            let r = quantize(i);
            store_8(q.as_mut_ptr().add(8 * i), r);
            sum = _mm256_add_epi32(sum, r);
            signs = _mm256_or_si256(signs, r);
        }
        // Reduced in registers: with a few hundred values per row, storing
        // the lanes and summing them one by one cost as much as a pass.
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256::<1>(sum));
        let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
        let mut total = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32::<1>(s2)));
        let mut nonnegative =
            _mm256_movemask_epi8(min) == 0 && _mm256_movemask_ps(_mm256_castsi256_ps(signs)) == 0;
        for (q, &v) in q[8 * chunks..].iter_mut().zip(&x[8 * chunks..]) {
            *q = (v * inv).round_ties_even() as i8;
            total += i32::from(*q);
            nonnegative &= *q >= 0;
        }
        (scale, total, nonnegative)
    }
}
