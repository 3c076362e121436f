use std::sync::OnceLock;

/// Bytes aligned to 64, a cache line and the widest vector load, so kernels
/// may read baked weights with aligned loads.
#[repr(C, align(64))]
pub struct Aligned<const N: usize>(pub [u8; N]);

/// Quantization parameters of a weight matrix: one entry per tensor, or one
/// per output channel (row). `q` stands for `(q - zero_point) * scale`; value
/// 0 is `min`, value 255 is `max`, and 0.0 is exactly `zero_point`.
#[derive(Debug)]
pub struct QuantParams {
    pub min: &'static [f32],
    pub max: &'static [f32],
    pub scale: &'static [f32],
    pub zero_point: &'static [u8],
}

impl QuantParams {
    /// True when each row has its own parameters.
    pub fn per_channel(&self) -> bool {
        self.scale.len() > 1
    }

    /// `(scale, zero_point)` of row `n`.
    #[inline]
    pub fn of_row(&self, n: usize) -> (f32, u8) {
        if self.per_channel() {
            (self.scale[n], self.zero_point[n])
        } else {
            (self.scale[0], self.zero_point[0])
        }
    }
}

/// A baked 8-bit weight matrix of `rows` output channels by `cols` inputs,
/// row-major: `data[n * cols + k]` weighs input `k` of output `n`.
#[derive(Debug)]
pub struct QuantWeight {
    /// The tensor's name in the model file.
    pub name: &'static str,
    pub rows: usize,
    pub cols: usize,
    pub data: &'static [u8],
    pub params: QuantParams,
    /// The f32 copy for [`Kernels::Dequant`](crate::Kernels::Dequant), filled on first use.
    pub cache: DequantCache,
}

impl QuantWeight {
    /// The weights as f32, dequantized on the first call and cached.
    pub fn dequantized(&self) -> &[f32] {
        self.cache.get_or_fill(|| self.dequantize())
    }

    /// Dequantizes every weight: `(q - zero_point) * scale`.
    pub fn dequantize(&self) -> Box<[f32]> {
        let mut out = Vec::with_capacity(self.data.len());
        for (n, row) in self.data.chunks_exact(self.cols).enumerate() {
            let (scale, zp) = self.params.of_row(n);
            out.extend(row.iter().map(|&q| dequantize(q, scale, zp)));
        }
        out.into_boxed_slice()
    }
}

/// The one definition of 8-bit dequantization.
#[inline]
pub fn dequantize(q: u8, scale: f32, zero_point: u8) -> f32 {
    (i32::from(q) - i32::from(zero_point)) as f32 * scale
}

/// A weight matrix kept in f32 (biases and matrices too small to gain from 8 bits).
#[derive(Debug)]
pub struct FloatWeight {
    pub name: &'static str,
    pub rows: usize,
    pub cols: usize,
    pub data: &'static [f32],
}

/// A weight matrix as baked: 8-bit, or kept in f32.
#[derive(Debug)]
pub enum Weight {
    U8(QuantWeight),
    F32(FloatWeight),
}

impl Weight {
    pub fn rows(&self) -> usize {
        match self {
            Weight::U8(w) => w.rows,
            Weight::F32(w) => w.rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            Weight::U8(w) => w.cols,
            Weight::F32(w) => w.cols,
        }
    }

    /// The weights as f32: the baked floats, or the dequant cache.
    pub fn as_f32(&self) -> &[f32] {
        match self {
            Weight::U8(w) => w.dequantized(),
            Weight::F32(w) => w.data,
        }
    }
}

/// A once-filled f32 copy of a weight tensor, shared by every `Model` and
/// thread: the first caller dequantizes, concurrent callers wait for it, and
/// everyone after reads the same memory.
#[derive(Debug, Default)]
pub struct DequantCache(OnceLock<Box<[f32]>>);

impl DequantCache {
    pub const fn new() -> Self {
        DequantCache(OnceLock::new())
    }

    /// The cached values, computing them with `fill` if this is the first call.
    pub fn get_or_fill(&self, fill: impl FnOnce() -> Box<[f32]>) -> &[f32] {
        self.0.get_or_init(fill)
    }

    pub fn is_filled(&self) -> bool {
        self.0.get().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn cache_fills_exactly_once_under_contention() {
        static CACHE: DequantCache = DequantCache::new();
        static FILLS: AtomicUsize = AtomicUsize::new(0);
        let barrier = std::sync::Barrier::new(8);
        let addrs: Vec<usize> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let v = CACHE.get_or_fill(|| {
                            FILLS.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            vec![1.0; 1000].into_boxed_slice()
                        });
                        assert_eq!(v.len(), 1000);
                        v.as_ptr() as usize
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(FILLS.load(Ordering::SeqCst), 1);
        assert!(addrs.iter().all(|&a| a == addrs[0]));
        assert!(CACHE.is_filled());
    }

    #[test]
    fn per_tensor_and_per_channel_dequantize() {
        static DATA: [u8; 6] = [0, 128, 255, 10, 20, 30];
        let w = QuantWeight {
            name: "w",
            rows: 2,
            cols: 3,
            data: &DATA,
            params: QuantParams {
                min: &[-1.0, 0.0],
                max: &[1.0, 2.55],
                scale: &[2.0 / 255.0, 0.01],
                zero_point: &[128, 0],
            },
            cache: DequantCache::new(),
        };
        let f = w.dequantized();
        assert_eq!(f[1], 0.0);
        assert_eq!(f[0], -128.0 * (2.0f32 / 255.0));
        assert_eq!(f[3..], [10.0 * 0.01, 20.0 * 0.01, 30.0 * 0.01]);
        assert!(w.cache.is_filled());
    }
}
