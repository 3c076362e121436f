use crate::AlignedVec;
use crate::gemm_f32::PackedF32;
use crate::hybrid::PanelParams;
use qbake_format::{NR, dequantize};
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

/// A baked 8-bit weight matrix of `rows` output channels by `cols` inputs.
///
/// The bytes are s8 (`q - 128`) in the panel order the int8 kernels read
/// (`qbake_format::packed_index`), packed at compile time.
#[derive(Debug)]
pub struct QuantWeight {
    /// The tensor's name in the model file.
    pub name: &'static str,
    pub rows: usize,
    pub cols: usize,
    pub packed: &'static [u8],
    /// `sum_k (q[n, k] - 128)` of each output channel, baked beside the
    /// bytes (`qbake_format::s8_row_sums`): the AVX-512 VNNI kernel
    /// multiplies `q_x + 128` by the weights and takes `128 * sum` back out.
    /// The kernels trust it as they trust the bytes; another value changes
    /// that kernel's outputs, and nothing else.
    pub s8_sums: &'static [i32],
    /// `sum_k max(128 - q[n, k], 0)` of each output channel, baked beside
    /// the bytes (`qbake_format::s8_negative_sums`): the AVX2 kernel's
    /// mixed-sign rows come out that much short and take it back. Trusted
    /// as `s8_sums` is.
    pub s8_negative_sums: &'static [i32],
    pub params: QuantParams,
    /// The f32 panels for [`Kernels::Dequant`](crate::Kernels::Dequant), filled on first use.
    pub cache: DequantCache,
}

impl QuantWeight {
    /// The stored u8 value of weight `(n, k)`.
    #[inline]
    pub fn q(&self, n: usize, k: usize) -> u8 {
        qbake_format::from_s8(self.packed[qbake_format::packed_index(n, k, self.cols)] as i8)
    }

    /// The weights as f32 panels, dequantized and packed on the first call, then cached.
    pub fn dequantized(&self) -> &PackedF32 {
        self.cache.get_or_fill(|| self.dequantize())
    }

    /// Dequantizes every weight, `(q - zero_point) * scale`, into f32 panels.
    pub fn dequantize(&self) -> PackedF32 {
        PackedF32::from_fn(self.rows, self.cols, |n, k| {
            let (scale, zp) = self.params.of_row(n);
            dequantize(self.q(n, k), scale, zp)
        })
    }

    /// The per-channel constants of panel `p` for the int8 kernels, written
    /// over `params` (channels past the matrix get zeros). In place and
    /// field by field over slices: a one-row product makes these for every
    /// panel on every call, and a loop over `of_row` returning a new
    /// struct took 14% of a 1x1024x1001 one.
    pub fn panel_params_into(&self, p: usize, bias: Option<&[f32]>, params: &mut PanelParams) {
        let channels = p * NR..(p * NR + NR).min(self.rows);
        let count = channels.len();
        if self.params.per_channel() {
            params.scale[..count].copy_from_slice(&self.params.scale[channels.clone()]);
            for (z, &q) in params
                .zero_point
                .iter_mut()
                .zip(&self.params.zero_point[channels.clone()])
            {
                *z = i32::from(q) - 128;
            }
        } else {
            params.scale[..count].fill(self.params.scale[0]);
            params.zero_point[..count].fill(i32::from(self.params.zero_point[0]) - 128);
        }
        // Wrapping, as the kernels' sums are: a sum that is not the
        // weights' own (a hand-built weight) gives wrong values, not a panic.
        for (c, &sum) in params
            .offset_correction
            .iter_mut()
            .zip(&self.s8_sums[channels.clone()])
        {
            *c = sum.wrapping_mul(-128);
        }
        params.negative_sum[..count].copy_from_slice(&self.s8_negative_sums[channels.clone()]);
        match bias {
            Some(b) => params.bias[..count].copy_from_slice(&b[channels]),
            None => params.bias[..count].fill(0.0),
        }
        params.scale[count..].fill(0.0);
        params.zero_point[count..].fill(0);
        params.offset_correction[count..].fill(0);
        params.negative_sum[count..].fill(0);
        params.bias[count..].fill(0.0);
    }
}

/// A weight matrix kept in f32, row-major `[rows, cols]`, as little-endian
/// bytes: a baked model writes them as one byte string, which rustc reads
/// far faster than as many float literals.
#[derive(Debug)]
pub struct FloatWeight {
    pub name: &'static str,
    pub rows: usize,
    pub cols: usize,
    /// `rows * cols * 4` bytes.
    pub data: &'static [u8],
    /// Its f32 panels, packed on first use.
    pub cache: DequantCache,
}

impl FloatWeight {
    /// A weight built at run time (tools, tests): its bytes are leaked, as a
    /// baked model's are static.
    pub fn from_values(name: &'static str, rows: usize, cols: usize, values: &[f32]) -> Self {
        assert_eq!(values.len(), rows * cols, "values do not fill the matrix");
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        FloatWeight {
            name,
            rows,
            cols,
            data: Box::leak(bytes.into_boxed_slice()),
            cache: DequantCache::new(),
        }
    }

    /// Weight `(n, k)`.
    pub fn get(&self, n: usize, k: usize) -> f32 {
        let at = (n * self.cols + k) * 4;
        let b = &self.data[at..at + 4];
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
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

    /// The weights as f32 panels for the float kernels: the dequant cache,
    /// or the baked floats packed once.
    pub fn as_f32(&self) -> &PackedF32 {
        match self {
            Weight::U8(w) => w.dequantized(),
            Weight::F32(w) => w
                .cache
                .get_or_fill(|| PackedF32::from_fn(w.rows, w.cols, |n, k| w.get(n, k))),
        }
    }
}

/// A depthwise convolution's weights as baked: a `[channels, kh * kw]`
/// matrix, so that per-channel quantization is per row.
#[derive(Debug)]
pub struct DepthwiseWeight {
    pub weight: Weight,
    /// The taps in f32, filled on first use.
    pub taps: TapsCache,
}

impl DepthwiseWeight {
    /// The taps as [`conv::depthwise`](crate::conv::depthwise) takes them,
    /// `[kh, kw, channels]`: the baked values (dequantized if 8-bit),
    /// transposed on the first call, then cached. Both kernel families run
    /// on these.
    pub fn taps(&self) -> &[f32] {
        self.taps.0.get_or_init(|| {
            let (c, kk) = (self.weight.rows(), self.weight.cols());
            let value = |ch: usize, t: usize| match &self.weight {
                Weight::U8(w) => {
                    let (scale, zp) = w.params.of_row(ch);
                    dequantize(w.q(ch, t), scale, zp)
                }
                Weight::F32(w) => w.get(ch, t),
            };
            let mut taps = AlignedVec::zeroed(kk * c);
            for (i, tap) in taps.iter_mut().enumerate() {
                *tap = value(i % c, i / c);
            }
            taps
        })
    }
}

/// The f32 taps of a [`DepthwiseWeight`], filled once and shared like a
/// [`DequantCache`]; `new` is `const` so that it can sit in a `static`.
/// 64-byte aligned: with a channel count a multiple of 16, every 16-lane
/// load of a tap then stays within one cache line.
#[derive(Debug, Default)]
pub struct TapsCache(OnceLock<AlignedVec>);

impl TapsCache {
    pub const fn new() -> Self {
        TapsCache(OnceLock::new())
    }
}

/// A once-filled f32 copy of a weight tensor, in the f32 kernels' panel
/// order, shared by every `Model` and thread: the first caller fills it,
/// concurrent callers wait for it, and everyone after reads the same memory.
#[derive(Debug, Default)]
pub struct DequantCache(OnceLock<PackedF32>);

impl DequantCache {
    pub const fn new() -> Self {
        DequantCache(OnceLock::new())
    }

    /// The cached panels, computing them with `fill` if this is the first call.
    pub fn get_or_fill(&self, fill: impl FnOnce() -> PackedF32) -> &PackedF32 {
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
                            PackedF32::from_rows(&[1.0; 1000], 10, 100)
                        });
                        // 10 channels padded to one panel of 16.
                        assert_eq!(v.data.len(), 16 * 100);
                        v.data.as_ptr() as usize
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(FILLS.load(Ordering::SeqCst), 1);
        assert!(addrs.iter().all(|&a| a == addrs[0]));
        assert!(CACHE.is_filled());
    }

    /// A per-channel 8-bit depthwise weight of `c` channels and `taps` taps.
    fn depthwise_u8(q: &[u8], c: usize, taps: usize) -> DepthwiseWeight {
        let scale: Vec<f32> = (0..c).map(|ch| 0.01 + ch as f32 * 0.003).collect();
        let zero_point: Vec<u8> = (0..c).map(|ch| (100 + ch * 7) as u8).collect();
        DepthwiseWeight {
            weight: Weight::U8(QuantWeight {
                name: "dw",
                rows: c,
                cols: taps,
                packed: Box::leak(qbake_format::pack_b_s8(q, c, taps).into_boxed_slice()),
                s8_sums: Box::leak(qbake_format::s8_row_sums(q, c, taps).into_boxed_slice()),
                s8_negative_sums: Box::leak(qbake_format::s8_negative_sums(q, c, taps).into_boxed_slice()),
                params: QuantParams {
                    min: &[],
                    max: &[],
                    scale: Box::leak(scale.into_boxed_slice()),
                    zero_point: Box::leak(zero_point.into_boxed_slice()),
                },
                cache: DequantCache::new(),
            }),
            taps: TapsCache::new(),
        }
    }

    #[test]
    fn depthwise_taps_are_the_weights_transposed() {
        let (c, kk) = (5, 9);
        let q: Vec<u8> = (0..c * kk).map(|i| (i * 53 % 256) as u8).collect();
        let w = depthwise_u8(&q, c, kk);
        let Weight::U8(qw) = &w.weight else { unreachable!() };
        let taps = w.taps();
        assert_eq!(taps.len(), kk * c);
        for t in 0..kk {
            for ch in 0..c {
                let (scale, zp) = qw.params.of_row(ch);
                let want = dequantize(q[ch * kk + t], scale, zp);
                assert_eq!(taps[t * c + ch].to_bits(), want.to_bits(), "tap {t} channel {ch}");
            }
        }
        // As the code generator bakes it: a `static` over little-endian bytes.
        static BYTES: [u8; 180] = {
            let mut b = [0u8; 180];
            let mut i = 0;
            while i < 45 {
                let v = (i as f32).to_le_bytes();
                b[4 * i] = v[0];
                b[4 * i + 1] = v[1];
                b[4 * i + 2] = v[2];
                b[4 * i + 3] = v[3];
                i += 1;
            }
            b
        };
        static FLOAT: DepthwiseWeight = DepthwiseWeight {
            weight: Weight::F32(FloatWeight {
                name: "dwf",
                rows: 5,
                cols: 9,
                data: &BYTES,
                cache: DequantCache::new(),
            }),
            taps: TapsCache::new(),
        };
        let w = &FLOAT;
        // taps[t][ch] = data[ch][t].
        assert_eq!(w.taps()[..c], [0.0, 9.0, 18.0, 27.0, 36.0]);
        assert_eq!(w.taps()[c * (kk - 1)..], [8.0, 17.0, 26.0, 35.0, 44.0]);
    }

    #[test]
    fn depthwise_taps_fill_once_under_contention() {
        let (c, kk) = (37, 25);
        let q: Vec<u8> = (0..c * kk).map(|i| (i * 31 % 256) as u8).collect();
        let w = depthwise_u8(&q, c, kk);
        let barrier = std::sync::Barrier::new(8);
        let seen: Vec<(usize, Vec<f32>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        let taps = w.taps();
                        (taps.as_ptr() as usize, taps.to_vec())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(seen.iter().all(|s| s == &seen[0]));
    }

    #[test]
    fn per_tensor_and_per_channel_dequantize() {
        let rows = [0u8, 128, 255, 10, 20, 30];
        let packed: &'static [u8] = Box::leak(qbake_format::pack_b_s8(&rows, 2, 3).into_boxed_slice());
        let w = QuantWeight {
            name: "w",
            rows: 2,
            cols: 3,
            packed,
            s8_sums: Box::leak(qbake_format::s8_row_sums(&rows, 2, 3).into_boxed_slice()),
            s8_negative_sums: Box::leak(qbake_format::s8_negative_sums(&rows, 2, 3).into_boxed_slice()),
            params: QuantParams {
                min: &[-1.0, 0.0],
                max: &[1.0, 2.55],
                scale: &[2.0 / 255.0, 0.01],
                zero_point: &[128, 0],
            },
            cache: DequantCache::new(),
        };
        assert_eq!((0..3).map(|k| w.q(1, k)).collect::<Vec<_>>(), [10, 20, 30]);
        let f = w.dequantized();
        assert_eq!(f.get(0, 1), 0.0);
        assert_eq!(f.get(0, 0), -128.0 * (2.0f32 / 255.0));
        assert_eq!(
            [f.get(1, 0), f.get(1, 1), f.get(1, 2)],
            [10.0 * 0.01, 20.0 * 0.01, 30.0 * 0.01]
        );
        assert!(w.cache.is_filled());
        // Over a panel's constants from another matrix: every field rewritten.
        let mut p = PanelParams {
            zero_point: [7; NR],
            offset_correction: [7; NR],
            negative_sum: [7; NR],
            scale: [7.0; NR],
            bias: [7.0; NR],
        };
        w.panel_params_into(0, Some(&[5.0, 6.0]), &mut p);
        assert_eq!(p.zero_point[..3], [0, -128, 0]);
        assert_eq!(p.bias[..3], [5.0, 6.0, 0.0]);
        assert_eq!(p.scale[..3], [2.0 / 255.0, 0.01, 0.0]);
        assert_eq!(p.offset_correction[2..], [0; NR - 2]);
        assert_eq!(p.negative_sum[2..], [0; NR - 2]);
        w.panel_params_into(0, None, &mut p);
        assert_eq!(p.bias, [0.0; NR]);
    }
}
