//! Reproducible test values for the runtime's unit tests.

/// `len` values in [-1, 1) from xorshift64, the same for the same seed.
pub(crate) fn values(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}
