//! What qbake's code generator writes and its runtime reads, defined once.
//!
//! The generator packs weights at compile time in the exact order the int8
//! kernels read them; the runtime reads them back (for the dequant cache and
//! the reference kernels). Both sides use these definitions, so the layout
//! cannot drift between them. Plain code: no SIMD, no syntax, no files.

mod conv;

pub use conv::Conv2d;

/// Output channels per packed panel: one microkernel call covers 16 columns
/// (two AVX2 registers of eight i32 lanes).
pub const NR: usize = 16;

/// Consecutive inputs (k) per lane group: `maddubs` + `madd` sum 4 byte products per i32 lane.
pub const KG: usize = 4;

/// Largest inner dimension whose 8-bit products sum exactly in i32:
/// `K * 255 * 127 <= i32::MAX`.
pub const MAX_EXACT_K: usize = (i32::MAX as usize) / (255 * 127);

/// `k` rounded up to whole lane groups: the row stride of quantized activations.
pub const fn padded_k(k: usize) -> usize {
    k.div_ceil(KG) * KG
}

/// Bytes of a packed `[n, k]` weight matrix.
pub const fn packed_len(n: usize, k: usize) -> usize {
    n.div_ceil(NR) * NR * padded_k(k)
}

/// Where weight `(row n, input k)` lives in the packed bytes.
///
/// Panels of [`NR`] output channels follow each other; inside a panel, groups
/// of [`KG`] inputs follow each other; inside a group, each channel's
/// [`KG`] consecutive inputs are adjacent:
///
/// ```text
/// index = (n / NR) * NR * padded_k  +  (k / KG) * NR * KG  +  (n % NR) * KG  +  k % KG
/// ```
///
/// So one 32-byte load reads 8 channels x 4 inputs, exactly one `maddubs` operand.
pub const fn packed_index(n: usize, k: usize, k_total: usize) -> usize {
    (n / NR) * NR * padded_k(k_total) + (k / KG) * NR * KG + (n % NR) * KG + k % KG
}

/// The s8 operand of a u8 weight: `q - 128`, a bit flip. Its zero point moves by the same 128.
#[inline]
pub const fn to_s8(q: u8) -> i8 {
    (q ^ 0x80) as i8
}

/// The u8 weight of an s8 operand (the inverse of [`to_s8`]).
#[inline]
pub const fn from_s8(s: i8) -> u8 {
    (s as u8) ^ 0x80
}

/// Packs a row-major `[n, k]` u8 matrix into the kernel layout, as s8.
/// Padding (channels past `n`, inputs past `k`) is 0, and the activations'
/// padding is 0 too, so it adds nothing.
pub fn pack_b_s8(q: &[u8], n: usize, k: usize) -> Vec<u8> {
    assert_eq!(q.len(), n * k, "the matrix is not n x k");
    let mut packed = vec![0u8; packed_len(n, k)];
    for (row, values) in q.chunks_exact(k.max(1)).enumerate().take(n) {
        for (col, &v) in values.iter().enumerate() {
            packed[packed_index(row, col, k)] = to_s8(v) as u8;
        }
    }
    packed
}

/// `sum_k (q[n, k] - 128)` of each row of a row-major `[n, k]` u8 matrix:
/// the s8 weights' sum per output channel. A kernel that needs an unsigned
/// activation operand (AVX-512 VNNI: `vpdpbusd` is u8 x s8) multiplies
/// `q_x + 128` instead of `q_x` and takes `128 * sum` back out.
pub fn s8_row_sums(q: &[u8], n: usize, k: usize) -> Vec<i32> {
    per_row_sums(q, n, k, i32::from)
}

/// `sum_k max(128 - q[n, k], 0)` of each row of a row-major `[n, k]` u8
/// matrix: the magnitudes of each output channel's negative s8 weights.
/// The AVX2 kernel multiplies `|w|` by a mixed-sign activation flipped as
/// `x ^ m` (`m` all ones where `w < 0`), which is `-x - 1` there: each
/// negative weight's product comes out `|w|` short, and this sum puts the
/// channel's shortfall back.
pub fn s8_negative_sums(q: &[u8], n: usize, k: usize) -> Vec<i32> {
    per_row_sums(q, n, k, |w| (-i32::from(w)).max(0))
}

/// `sum_k term(q[n, k] - 128)` of each row of a row-major `[n, k]` u8 matrix.
fn per_row_sums(q: &[u8], n: usize, k: usize, term: impl Fn(i8) -> i32) -> Vec<i32> {
    assert_eq!(q.len(), n * k, "the matrix is not n x k");
    if k == 0 {
        return vec![0; n];
    }
    q.chunks_exact(k)
        .map(|row| row.iter().map(|&v| term(to_s8(v))).sum())
        .collect()
}

/// The one definition of 8-bit dequantization: `(q - zero_point) * scale`.
#[inline]
pub fn dequantize(q: u8, scale: f32, zero_point: u8) -> f32 {
    (i32::from(q) - i32::from(zero_point)) as f32 * scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn row_sums_are_the_packed_channels_sums(n in 1usize..40, k in 1usize..40, seed in any::<u8>()) {
            let q: Vec<u8> = (0..n * k).map(|i| (i * 31 + usize::from(seed)) as u8).collect();
            let packed = pack_b_s8(&q, n, k);
            let sums = s8_row_sums(&q, n, k);
            prop_assert_eq!(sums.len(), n);
            for (row, &sum) in sums.iter().enumerate() {
                // Over the padded row too: the padding adds nothing.
                let packed_sum: i32 = (0..padded_k(k)).map(|col| i32::from(packed[packed_index(row, col, k)] as i8)).sum();
                prop_assert_eq!(sum, packed_sum);
            }
        }

        #[test]
        fn negative_sums_are_the_packed_channels_negative_weights(n in 1usize..40, k in 1usize..40, seed in any::<u8>()) {
            let q: Vec<u8> = (0..n * k).map(|i| (i * 31 + usize::from(seed)) as u8).collect();
            let packed = pack_b_s8(&q, n, k);
            let sums = s8_negative_sums(&q, n, k);
            prop_assert_eq!(sums.len(), n);
            for (row, &sum) in sums.iter().enumerate() {
                let negative: i32 = (0..padded_k(k))
                    .map(|col| i32::from(packed[packed_index(row, col, k)] as i8))
                    .filter(|&w| w < 0)
                    .map(|w| -w)
                    .sum();
                prop_assert_eq!(sum, negative);
            }
        }

        #[test]
        fn packing_is_a_bijection_onto_its_cells(n in 1usize..40, k in 1usize..40) {
            let q: Vec<u8> = (0..n * k).map(|i| (i * 7 + 3) as u8).collect();
            let packed = pack_b_s8(&q, n, k);
            prop_assert_eq!(packed.len(), packed_len(n, k));
            let mut seen = vec![false; packed.len()];
            for row in 0..n {
                for col in 0..k {
                    let i = packed_index(row, col, k);
                    prop_assert!(!seen[i]);
                    seen[i] = true;
                    prop_assert_eq!(from_s8(packed[i] as i8), q[row * k + col]);
                }
            }
            // Everything else is padding, and padding is zero.
            prop_assert!(packed.iter().zip(&seen).all(|(&b, &s)| s || b == 0));
        }
    }

    #[test]
    fn s8_is_q_minus_128() {
        for q in 0..=255u8 {
            assert_eq!(i32::from(to_s8(q)), i32::from(q) - 128);
            assert_eq!(from_s8(to_s8(q)), q);
        }
    }

    #[test]
    fn one_group_is_eight_channels_of_four_inputs_per_register_half() {
        // Channel 1, input 2 sits right after channel 0's four inputs.
        assert_eq!(packed_index(1, 2, 8), 4 + 2);
        // The next group of inputs starts after all 16 channels.
        assert_eq!(packed_index(0, 4, 8), NR * KG);
        // The second panel starts after the first's padded_k * NR bytes.
        assert_eq!(packed_index(16, 0, 5), NR * 8);
    }
}
