//! Deterministic mutations of valid inputs, for the bounded harness `cargo
//! test` runs: what a fuzzer does in its first seconds, reproducible from
//! the seed.

/// xorshift64: reproducible and dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Numbers that tend to sit on a boundary: lengths, offsets, dimensions.
const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 62,
    i64::MAX as u64,
    u64::MAX,
];

/// One to four random edits of `input`: bit flips, boundary numbers written
/// over bytes (1, 2, 4 or 8 of them), ASCII digits changed (numbers in JSON),
/// and chunks deleted, duplicated, inserted or cut off.
pub fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        if data.is_empty() {
            let n = 1 + rng.below(16);
            data = rng.bytes(n);
            continue;
        }
        let at = rng.below(data.len());
        match rng.below(8) {
            0 => data[at] ^= 1 << rng.below(8),
            1 => {
                let value = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                let width = [1, 2, 4, 8][rng.below(4)];
                let end = (at + width).min(data.len());
                data[at..end].copy_from_slice(&value[..end - at]);
            }
            2 => {
                // A digit, if there is one near: numbers in JSON headers and graphs.
                if let Some(i) = (at..data.len()).find(|&i| data[i].is_ascii_digit()) {
                    data[i] = b"0123456789-"[rng.below(11)];
                }
            }
            3 => {
                let end = (at + 1 + rng.below(64)).min(data.len());
                data.drain(at..end);
            }
            4 => {
                let end = (at + 1 + rng.below(64)).min(data.len());
                let chunk = data[at..end].to_vec();
                let to = rng.below(data.len());
                data.splice(to..to, chunk);
            }
            5 => {
                let n = 1 + rng.below(16);
                let chunk = rng.bytes(n);
                data.splice(at..at, chunk);
            }
            6 => data.truncate(at),
            _ => data[at] = rng.next_u64() as u8,
        }
    }
    data
}
