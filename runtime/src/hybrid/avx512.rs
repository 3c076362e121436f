//! The AVX-512 VNNI int8 products, for the AVX2 tile to call: `vpdpbusd`
//! multiplies four unsigned by four signed bytes and adds the four products
//! to an i32 lane, in one instruction and without the 16-bit saturation of
//! `maddubs`. One packed group (16 channels x 4 inputs, 64 bytes) is one
//! register.

use qbake_format::{KG, NR};
use std::arch::x86_64::*;

/// `dot[r][h]`: rows with no negative value (the unsigned operand, `0..=127`)
/// against the s8 weights, channels `8 h..8 h + 8`: the same integers as the
/// AVX2 `maddubs` + `madd` + `add` chain, which are exact too.
///
/// # Safety
/// AVX-512F and AVX-512 VNNI; each `a[r]` has `groups * KG` readable bytes,
/// none negative; `b` has `groups * NR * KG`.
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) unsafe fn dot_tile_nonnegative<const R: usize>(
    a: [*const i8; R],
    b: *const u8,
    groups: usize,
) -> [[__m256i; 2]; R] {
    // SAFETY (whole body): offsets stay within the extents above; loads are unaligned.
    unsafe {
        let mut acc = [_mm512_setzero_si512(); R];
        for g in 0..groups {
            let w = _mm512_loadu_si512(b.add(g * NR * KG).cast());
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32(a[r].add(g * KG).cast::<i32>().read_unaligned());
                *acc = _mm512_dpbusd_epi32(*acc, x, w);
            }
        }
        acc.map(|v| [_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v)])
    }
}
