//! Hybrid arithmetic: 8-bit activations times 8-bit weights, exact in i32.
//!
//! For `y = W x + b` with `W` baked as u8 (`scale_w[n]`, `zero_point_w[n]`)
//! and each activation row quantized on the fly to symmetric int8
//! (`scale_x`, zero point 0, values in ±127):
//!
//! ```text
//! y[n] = act((sum_k q_w[n,k] q_x[k] - z_w[n] sum_k q_x[k]) as f32 * (scale_w[n] * scale_x) + b[n])
//! ```
//!
//! This is DESIGN §3's formula with the activation zero point at 0, so the
//! `z_x sum_k q_w` and `K z_w z_x` terms vanish. Every term is an exact integer while
//! `K * 255 * 127 <= i32::MAX` ([`MAX_EXACT_K`]); the code generator
//! refuses larger K.
//!
//! The kernels read weights as s8 (`q_w - 128`, packed at compile time by
//! `qbake_format::pack_b_s8`) with zero point `z_w - 128`: the same integer
//! `acc`. The AVX2 kernel multiplies with `maddubs` (unsigned x signed bytes,
//! pairs summed in 16 bits) and never lets a pair pass 32767:
//!
//! - rows with no negative value (the usual case after ReLU) are the
//!   unsigned operand, `0..=127`, against the s8 weight: at most
//!   2 * 127 * 128 = 32512;
//! - other rows are flipped where the weight is negative (`q_x ^ m`, which
//!   is `-q_x - 1` there) and multiply `|w| <= 128`: pairs within
//!   `-32768..=32512`, each negative weight's product `|w|` short, which
//!   the weights' baked `QuantWeight::s8_negative_sums` give back.
//!
//! The AVX-512 VNNI kernel (`avx512`) multiplies four bytes per lane with
//! no 16-bit step; rows with a negative value go in as `q_x + 128`, which the
//! weights' baked per-channel sums (`QuantWeight::s8_sums`) take back out.
//! The AMX kernel (`amx`) multiplies whole 16-row tiles at K >= 64 with
//! `tdpbssd` (signed by signed bytes, exact i32 sums), reading the packed
//! panels in place, and leaves the rest of a strip to the VNNI kernel.
//!
//! [`quantize_row`] and [`gemm_reference`] are the definitions; the kernels
//! in [`scalar`], `avx2` and `avx512` give the same bits.

use crate::QuantWeight;
use crate::ops::Activation;
use qbake_format::{KG, NR, padded_k};
use std::ops::Range;

pub use qbake_format::MAX_EXACT_K;

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod scalar;

/// Rows of a kernel tile.
pub const MR: usize = 4;
/// The largest (padded) K for which the AVX2 epilogue may make the
/// zero-point correction in f32: `dot`, at most `128 * 127 * K`, is then
/// an exact f32, so one FMA rounds the exact `dot - z * sum` once, as the
/// conversion of the exact i32 would.
pub const MAX_F32_EXACT_K: usize = 1032;
/// Rows per block: the block's activations (at most `MC * K` bytes) stay in
/// L1/L2 while every weight panel passes over them.
pub const MC: usize = 64;

/// One implementation of the hybrid kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    /// AVX2 for the products, FMA for the epilogue's zero-point correction.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// [`Kernel::Avx2`], with the products of non-negative rows by AVX-512
    /// VNNI (`vpdpbusd`), the same integers.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    /// [`Kernel::Avx512Vnni`], with the products of whole 16-row groups at
    /// K >= 64 on AMX tiles (`tdpbssd`), the same integers.
    #[cfg(target_arch = "x86_64")]
    Amx,
}

impl Kernel {
    /// Panels a tile of this kernel covers side by side: its [`Strip`]s are
    /// up to this many times [`NR`] columns wide.
    pub const fn panels_per_tile(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni | Kernel::Amx => 2,
            _ => 1,
        }
    }

    /// Rows of this kernel's tile at inner dimension `k`: where a split
    /// across threads may cut the rows ([`crate::parallel::RowParts`]).
    pub fn row_tile(self, k: usize) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx if amx::rows_on_tiles(amx::TILE_ROWS, padded_k(k) / KG) > 0 => amx::TILE_ROWS,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni | Kernel::Amx => avx512::MR,
            _ => MR,
        }
    }

    /// The fastest kernel this CPU runs (every op asks: no allocation).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
            {
                return if amx::available() {
                    Kernel::Amx
                } else {
                    Kernel::Avx512Vnni
                };
            }
            return Kernel::Avx2;
        }
        Kernel::Scalar
    }

    /// Every kernel this CPU runs, slowest first (tests compare them all):
    /// each needs what the ones before it do.
    pub fn available() -> Vec<Self> {
        let all = [
            Kernel::Scalar,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni,
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx,
        ];
        let fastest = all
            .iter()
            .position(|&k| k == Self::detect())
            .expect("detect picks one of them");
        all[..=fastest].to_vec()
    }
}

/// Quantizes one activation row to symmetric int8 in ±127 and returns its
/// scale, so that `x[k] ≈ q[k] as f32 * scale`: the definition.
///
/// `scale = max|x| / 127` (NaN ignored by the max), and `q =
/// round_ties_even(x * (127 / max|x|))`; in the rare rows of subnormals
/// where `127 / max|x|` overflows, `q = round_ties_even(x / scale)` with
/// `scale` rounded up until `max|x| / scale <= 127`. Every `q` is in ±127,
/// never -128. A NaN value gives 0. A row with no finite non-zero scale
/// (all zeros, all tiny subnormals, or an infinity) takes the short path:
/// all `q` are 0 and the scale is 0.
pub fn quantize_row(x: &[f32], q: &mut [i8]) -> f32 {
    assert_eq!(x.len(), q.len());
    let amax = x
        .iter()
        .fold(0.0f32, |m, v| if v.abs() > m { v.abs() } else { m });
    let mut scale = amax / 127.0;
    if scale <= 0.0 || !scale.is_finite() {
        q.fill(0);
        return 0.0;
    }
    let inv = 127.0 / amax;
    if inv.is_finite() {
        for (q, &v) in q.iter_mut().zip(x) {
            // |v * inv| <= 127 (1 + 2 eps) rounds into ±127; `as` maps NaN to 0.
            *q = (v * inv).round_ties_even() as i8;
        }
    } else {
        // A subnormal scale is coarse: rounded down, `amax / scale` could
        // pass 127 and saturate to -128. Round it up until it cannot.
        while amax / scale > 127.0 {
            scale = scale.next_up();
        }
        for (q, &v) in q.iter_mut().zip(x) {
            *q = (v / scale).round_ties_even() as i8;
        }
    }
    scale
}

/// An activation matrix quantized row by row, each row padded with zeros to
/// whole lane groups (`stride = padded_k(k)`), as the kernels read it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct QuantizedRows {
    pub k: usize,
    pub stride: usize,
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
    /// `sum_k q[m, k]` of each row, for the weight zero-point correction.
    pub sums: Vec<i32>,
    /// Whether each row has no negative value (the faster kernel applies).
    pub nonnegative: Vec<bool>,
}

impl QuantizedRows {
    /// Quantizes `x`, `k` values a row, with the fastest kernel.
    pub fn quantize(x: &[f32], k: usize) -> Self {
        let mut rows = QuantizedRows::default();
        rows.quantize_into(Kernel::detect(), x, k);
        rows
    }

    /// Quantizes into `self`, reusing its buffers.
    pub fn quantize_into(&mut self, kernel: Kernel, x: &[f32], k: usize) {
        assert!(k > 0 && x.len().is_multiple_of(k));
        let (m, stride) = (x.len() / k, padded_k(k));
        self.k = k;
        self.stride = stride;
        // Every value is written below; only the padding needs its zeros.
        self.values.resize(m * stride, 0);
        self.scales.resize(m, 0.0);
        self.sums.resize(m, 0);
        self.nonnegative.resize(m, false);
        match kernel {
            Kernel::Scalar => each_row(self, x, 0, scalar::quantize_row),
            // SAFETY: `detect` (or the test choosing it) checked AVX2.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::quantize_rows(self, x) },
            // SAFETY: `detect` (or the test choosing it) checked AVX-512F,
            // BW and VNNI.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni | Kernel::Amx => unsafe { avx512::quantize_rows(self, x) },
        }
    }

    pub fn rows(&self) -> usize {
        self.scales.len()
    }

    /// Row `r`'s `k` values.
    pub fn row(&self, r: usize) -> &[i8] {
        &self.values[r * self.stride..r * self.stride + self.k]
    }
}

/// Quantizes each of `x`'s rows from `first` on into `rows` (sized by
/// [`QuantizedRows::quantize_into`]) with `row`, which returns `(scale, sum
/// of q, no q negative)`. Inlined into the scalar and AVX2 kernels'
/// `quantize_rows` (the AVX-512 one has its own loop), so that a SIMD row
/// function inlines here too: a call per row (registers saved, the
/// reductions' results passed back through memory) cost as much as
/// quantizing a row of 16 values.
#[inline(always)]
fn each_row(
    rows: &mut QuantizedRows,
    x: &[f32],
    first: usize,
    mut row: impl FnMut(&[f32], &mut [i8]) -> (f32, i32, bool),
) {
    let (k, stride) = (rows.k, rows.stride);
    for (r, x_row) in x.chunks_exact(k).enumerate().skip(first) {
        let (q_row, padding) = rows.values[r * stride..(r + 1) * stride].split_at_mut(k);
        // Most rows have none (K a multiple of 4); `fill` on an empty
        // slice still cost a call to memset per row (1.2% of a hybrid
        // forward in a profile).
        if !padding.is_empty() {
            padding.fill(0);
        }
        (rows.scales[r], rows.sums[r], rows.nonnegative[r]) = row(x_row, q_row);
    }
}

/// The definition, in plain loops over the logical weights:
/// `y[m, n] = act((sum_k q_w[n,k] q_x[m,k] - z_w[n] sum_k q_x[m,k]) as f32 *
/// (scale_w[n] * scale_x[m]) + bias[n])`.
pub fn gemm_reference(
    x: &QuantizedRows,
    w: &QuantWeight,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    let (n, k) = (w.rows, w.cols);
    assert!(k <= MAX_EXACT_K, "K = {k} is too large for exact i32 sums");
    assert_eq!(x.k, k);
    assert_eq!(y.len(), x.rows() * n);
    for (m, y_row) in y.chunks_exact_mut(n).enumerate() {
        let (q_x, scale_x, sum_x) = (x.row(m), x.scales[m], x.sums[m]);
        for (j, out) in y_row.iter_mut().enumerate() {
            let (scale_w, zp_w) = w.params.of_row(j);
            let dot: i32 = (0..k).map(|i| i32::from(w.q(j, i)) * i32::from(q_x[i])).sum();
            let acc = dot - i32::from(zp_w) * sum_x;
            let v = acc as f32 * (scale_w * scale_x) + bias.map_or(0.0, |b| b[j]);
            *out = act.apply(v);
        }
    }
}

/// Per-channel constants of one panel, padded to [`NR`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PanelParams {
    /// s8 zero points: `z_w - 128`.
    pub zero_point: [i32; NR],
    /// `-128 * sum_k w_s8[n, k]`: what multiplying `q_x + 128` instead of
    /// `q_x` adds to each channel's dot product, negated.
    pub offset_correction: [i32; NR],
    /// `sum_k max(-w_s8[n, k], 0)`: what the AVX2 kernel's flipped
    /// mixed-sign rows leave out of each channel's dot product.
    pub negative_sum: [i32; NR],
    pub scale: [f32; NR],
    pub bias: [f32; NR],
}

/// The arguments of one kernel call: `rows` rows of the quantized
/// activations against the strip's panels (up to
/// `Kernel::panels_per_tile`), written to `c[r * ldc + j]` for `j < cols`,
/// column `j` from panel `j / NR`. Kernels walk the strip in tiles of
/// [`MR`] rows (`avx512::MR`).
pub struct Strip<'a> {
    /// `a[r * lda + i]`: row `r`, input `i` (rows padded to whole groups).
    pub a: &'a [i8],
    pub lda: usize,
    /// The same rows as u8 `a + 128`, laid out as `a`, for kernels whose
    /// activation operand is unsigned ([`Kernel::Avx512Vnni`]); given when
    /// such a kernel runs and a row has a negative value.
    pub offset: Option<&'a [u8]>,
    pub rows: usize,
    /// `groups * NR * KG` packed s8 weights of the first panel; the next
    /// panel's at `panel_stride`.
    pub panel: &'a [u8],
    pub panel_stride: usize,
    pub groups: usize,
    pub sums: &'a [i32],
    pub scales: &'a [f32],
    /// Whether each row has no negative value.
    pub nonnegative: &'a [bool],
    /// One per panel of the strip.
    pub params: &'a [PanelParams],
    pub act: Activation,
    pub c: &'a mut [f32],
    pub ldc: usize,
    pub cols: usize,
}

impl Strip<'_> {
    /// The strip's rows from `m0` on.
    fn skip_rows(&mut self, m0: usize) -> Strip<'_> {
        Strip {
            a: &self.a[m0 * self.lda..],
            lda: self.lda,
            offset: self.offset.map(|o| &o[m0 * self.lda..]),
            rows: self.rows - m0,
            panel: self.panel,
            panel_stride: self.panel_stride,
            groups: self.groups,
            sums: &self.sums[m0..],
            scales: &self.scales[m0..],
            nonnegative: &self.nonnegative[m0..],
            params: self.params,
            act: self.act,
            c: &mut self.c[m0 * self.ldc..],
            ldc: self.ldc,
            cols: self.cols,
        }
    }

    /// The bounds every kernel relies on.
    fn check(&self) {
        let panels = self.cols.div_ceil(NR);
        assert!(self.rows >= 1 && self.cols >= 1 && panels <= 2 && self.params.len() >= panels);
        assert!(self.a.len() >= (self.rows - 1) * self.lda + self.groups * KG);
        if let Some(offset) = self.offset {
            assert!(offset.len() >= (self.rows - 1) * self.lda + self.groups * KG);
        }
        assert!(self.panel.len() >= (panels - 1) * self.panel_stride + self.groups * NR * KG);
        assert!(
            self.sums.len() >= self.rows
                && self.scales.len() >= self.rows
                && self.nonnegative.len() >= self.rows
        );
        assert!(self.c.len() >= (self.rows - 1) * self.ldc + self.cols);
    }
}

/// The hybrid product with the fastest kernel.
pub fn gemm(x: &QuantizedRows, w: &QuantWeight, bias: Option<&[f32]>, act: Activation, y: &mut [f32]) {
    gemm_with(Kernel::detect(), x, w, bias, act, y);
}

/// [`gemm`] with a chosen kernel (tests compare them), on the calling thread.
pub fn gemm_with(
    kernel: Kernel,
    x: &QuantizedRows,
    w: &QuantWeight,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    gemm_threads(kernel, 1, x, w, bias, act, y);
}

/// [`gemm_with`] on up to `threads` threads ([`crate::parallel`]); the
/// result does not depend on `threads`.
pub fn gemm_threads(
    kernel: Kernel,
    threads: usize,
    x: &QuantizedRows,
    w: &QuantWeight,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    let (n, k) = (w.rows, w.cols);
    check(x, w, bias);
    let m = x.rows();
    assert_eq!(y.len(), m * n, "y has the wrong size");
    let tile = kernel.row_tile(k);
    // By rows first: see `parallel::f32_panels_first`.
    crate::parallel::split_gemm(
        threads,
        m,
        n,
        NR,
        tile,
        m * n * k,
        false,
        y,
        |rows, panels, y, ldc| drive(kernel, x, w, bias, act, rows, panels, y, ldc),
    );
}

/// The output channels of panels `panels` only, on this thread: `y` holds
/// every row of those columns (`m x` their count, no more).
pub(crate) fn gemm_panels(
    kernel: Kernel,
    x: &QuantizedRows,
    w: &QuantWeight,
    bias: Option<&[f32]>,
    act: Activation,
    panels: Range<usize>,
    y: &mut [f32],
) {
    check(x, w, bias);
    assert!(
        panels.start < panels.end && panels.end <= w.rows.div_ceil(NR),
        "panels out of range"
    );
    let cols = (panels.end * NR).min(w.rows) - panels.start * NR;
    assert_eq!(y.len(), x.rows() * cols, "y has the wrong size");
    drive(kernel, x, w, bias, act, 0..x.rows(), panels, y, cols);
}

/// What every product asserts of its operands before the kernels trust them.
fn check(x: &QuantizedRows, w: &QuantWeight, bias: Option<&[f32]>) {
    let (n, k) = (w.rows, w.cols);
    assert!(k <= MAX_EXACT_K, "K = {k} is too large for exact i32 sums");
    assert_eq!(x.k, k, "activations and weights disagree on K");
    assert_eq!(
        w.packed.len(),
        qbake_format::packed_len(n, k),
        "weights are not packed for n x k"
    );
    assert_eq!(w.s8_sums.len(), n, "one weight sum per output channel");
    assert_eq!(w.s8_negative_sums.len(), n, "one negative sum per output channel");
    if let Some(b) = bias {
        assert_eq!(b.len(), n);
    }
}

/// Quantizes the f32 rows `x` ([`QuantizedRows`]) and multiplies them by
/// `w`: a fully connected layer in the hybrid family, on up to `threads`
/// threads. When the rows are split across threads, each part quantizes its
/// own rows, into its thread's buffer, just before its product: the
/// quantizer runs in parallel too, and its output is still in that core's
/// cache when the product reads it. Otherwise the rows are quantized once,
/// on the calling thread. The result is the same either way (each row is
/// quantized alone).
pub fn quantize_gemm_threads(
    kernel: Kernel,
    threads: usize,
    x: &[f32],
    w: &QuantWeight,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    let (n, k) = (w.rows, w.cols);
    assert!(k > 0 && x.len().is_multiple_of(k), "x is not whole rows of K");
    let m = x.len() / k;
    assert_eq!(y.len(), m * n, "y has the wrong size");
    match crate::parallel::RowParts::new(threads, m, m * n * k, kernel.row_tile(k)) {
        Some(parts) => parts.run(y, n, &|rows, y| {
            crate::scratch::with_rows(|qx| {
                qx.quantize_into(kernel, &x[rows.start * k..rows.end * k], k);
                gemm_threads(kernel, 1, qx, w, bias, act, y);
            })
        }),
        None => crate::scratch::with_rows(|qx| {
            qx.quantize_into(kernel, x, k);
            gemm_threads(kernel, threads, qx, w, bias, act, y);
        }),
    }
}

/// Rows `rows` of the product against panels `panels`, into `y` whose row 0
/// is row `rows.start` and whose column 0 is panel `panels.start`'s first.
#[allow(clippy::too_many_arguments)]
fn drive(
    kernel: Kernel,
    x: &QuantizedRows,
    w: &QuantWeight,
    bias: Option<&[f32]>,
    act: Activation,
    rows: Range<usize>,
    panels: Range<usize>,
    y: &mut [f32],
    ldc: usize,
) {
    let (n, stride) = (w.rows, x.stride);
    let panel_len = NR * stride;
    let per_tile = kernel.panels_per_tile();
    // This thread's tiles, for all of the part's strips (released on drop).
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `detect` (or the test choosing it) checked `amx::available`.
    let mut tiles = (kernel == Kernel::Amx).then(|| unsafe { amx::Tiles::configure() });
    // The part's panels' constants, once for all its row blocks.
    crate::scratch::with_vec(&crate::scratch::PANEL_PARAMS, panels.len(), |params| {
        for (params, p) in params.iter_mut().zip(panels.clone()) {
            w.panel_params_into(p, bias, params);
        }
        for m0 in rows.clone().step_by(MC) {
            let count = MC.min(rows.end - m0);
            let block = &x.values[m0 * stride..(m0 + count) * stride];
            // The VNNI kernel's unsigned copy of the block's rows, made once
            // for all panels, when a row needs it.
            // The first of the block's rows the VNNI tile multiplies: AMX
            // multiplies signed bytes on its tiles and leaves it the rest.
            let to_vnni = match kernel {
                #[cfg(target_arch = "x86_64")]
                Kernel::Amx => amx::rows_on_tiles(count, stride / KG),
                _ => 0,
            };
            let offset_len = match kernel {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512Vnni | Kernel::Amx
                    if !x.nonnegative[m0 + to_vnni..m0 + count].iter().all(|&n| n) =>
                {
                    block.len()
                }
                _ => 0,
            };
            crate::scratch::with_vec(&crate::scratch::OFFSET_ROWS, offset_len, |offset| {
                for (u, &q) in offset.iter_mut().zip(block) {
                    // `q + 128` as u8: the format's s8 -> u8 bit flip.
                    *u = qbake_format::from_s8(q);
                }
                for p in panels.clone().step_by(per_tile) {
                    let n0 = p * NR;
                    // Up to `per_tile` panels, within this part's.
                    let count_p = per_tile.min(panels.end - p);
                    let mut strip = Strip {
                        a: block,
                        lda: stride,
                        offset: (offset_len > 0).then_some(&*offset),
                        rows: count,
                        panel: &w.packed[p * panel_len..],
                        panel_stride: panel_len,
                        groups: stride / KG,
                        sums: &x.sums[m0..],
                        scales: &x.scales[m0..],
                        nonnegative: &x.nonnegative[m0..],
                        params: &params[p - panels.start..][..count_p],
                        act,
                        c: &mut y[(m0 - rows.start) * ldc + n0 - panels.start * NR..],
                        ldc,
                        cols: (count_p * NR).min(n - n0),
                    };
                    strip.check();
                    // By reference, as in the f32 driver: by value, every
                    // strip was copied by a call to memcpy.
                    match kernel {
                        Kernel::Scalar => scalar::strip(&mut strip),
                        // SAFETY: AVX2 and FMA were detected; `check` proved the bounds.
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Avx2 => unsafe { avx2::strip(&mut strip) },
                        // SAFETY: AVX-512F and VNNI were detected; `check`
                        // proved the bounds, and rows with a negative value
                        // have their copy.
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Avx512Vnni => unsafe { avx512::strip(&mut strip) },
                        // SAFETY: as for VNNI; `tiles` was configured above, on this thread.
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Amx => unsafe {
                            amx::strip(&mut strip, tiles.as_mut().expect("made for AMX above"))
                        },
                    }
                }
            });
        }
    });
}

#[cfg(test)]
mod tests;
