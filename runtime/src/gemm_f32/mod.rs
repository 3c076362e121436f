//! f32 matrix products for [`Kernels::Dequant`](crate::Kernels::Dequant):
//! `y[m, n] = act(sum_k x[m, k] * w[n, k] + bias[n])`.
//!
//! One contract, several implementations (as in tract-linalg): weights are
//! packed once into panels of [`NR`] output channels ([`PackedF32`]); a
//! kernel walks a strip of rows in [`MR`] x [`NR`] tiles over a block of
//! at most [`KC`] inputs; the driver here walks the strips. [`scalar`] is the
//! portable microkernel, [`avx2`] the x86-64 AVX2+FMA one, chosen at run
//! time. [`gemm_reference`] is the plain-loop definition both are tested
//! against. A one-row product (a fully connected layer on one input), and
//! the row left past the tiles when the rows are one more than a multiple
//! of [`MR`] (49, 25), take `avx2::row` there: four panels side by side,
//! the same bits per output.

use crate::alloc::AlignedVec;
use crate::ops::Activation;
use std::ops::Range;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
pub mod scalar;

/// Rows of a kernel tile.
pub const MR: usize = 6;
/// Output channels of a tile and of a packed panel (two AVX registers).
pub const NR: usize = 16;
/// Inputs per block: a tile's panel block is `KC * NR` floats (16 kB).
pub const KC: usize = 256;
/// Rows per kernel call. The driver walks blocks of `MC` rows, and every
/// panel passes over a block while its rows are in cache; each output row
/// is then written whole, once. (Panels outer, rows inner, read the whole
/// activation once per panel: at K = 16-32, where the panels are a few kB,
/// that cost 1.4-1.65x.)
pub const MC: usize = 96;

/// A `[n, k]` weight matrix packed for the f32 kernels: panels of [`NR`]
/// output channels; in a panel, for each input `k`, [`NR`] consecutive
/// floats. Channels past `n` are zero.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedF32 {
    pub n: usize,
    pub k: usize,
    /// 64-byte aligned: the kernel loads a panel's 16 values per K step as
    /// two 32-byte halves, and at the allocator's 16-byte alignment one of
    /// them would cross a cache line at every step.
    pub data: AlignedVec,
}

impl PackedF32 {
    /// Packs from any element accessor `w(n, k)`.
    pub fn from_fn(n: usize, k: usize, w: impl Fn(usize, usize) -> f32) -> Self {
        let mut data = AlignedVec::zeroed(n.div_ceil(NR) * NR * k);
        for row in 0..n {
            for col in 0..k {
                data[Self::index(row, col, k)] = w(row, col);
            }
        }
        PackedF32 { n, k, data }
    }

    /// Packs a row-major `[n, k]` matrix.
    pub fn from_rows(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k);
        Self::from_fn(n, k, |row, col| w[row * k + col])
    }

    const fn index(row: usize, col: usize, k: usize) -> usize {
        (row / NR) * NR * k + col * NR + row % NR
    }

    /// Weight `(n, k)`.
    pub fn get(&self, row: usize, col: usize) -> f32 {
        self.data[Self::index(row, col, self.k)]
    }

    /// Panel `p` and every panel after it.
    fn panels_from(&self, p: usize) -> &[f32] {
        &self.data[p * NR * self.k..]
    }
}

/// One microkernel: an implementation of the tile contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    /// AVX-512F, for the GEMM and the depthwise kernel (which share this choice).
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// Panels a tile of this kernel covers side by side: its [`Strip`]s are
    /// up to this many times [`NR`] columns wide.
    pub const fn panels_per_tile(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => 2,
            _ => 1,
        }
    }

    /// Rows of this kernel's tile: where a split across threads may cut
    /// the rows ([`crate::parallel::RowParts`]).
    pub const fn row_tile(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::MR,
            _ => MR,
        }
    }

    /// The fastest kernel this CPU runs (every op asks: no allocation).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            if is_x86_feature_detected!("avx512f") {
                return Kernel::Avx512;
            }
            return Kernel::Avx2Fma;
        }
        Kernel::Scalar
    }

    /// Every kernel this CPU runs, slowest first (tests compare them all):
    /// each needs what the ones before it do.
    pub fn available() -> Vec<Self> {
        let all = [
            Kernel::Scalar,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2Fma,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512,
        ];
        let fastest = all
            .iter()
            .position(|&k| k == Self::detect())
            .expect("detect picks one of them");
        all[..=fastest].to_vec()
    }
}

/// What a tile does after its last block of inputs.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// Bias of the strip's channels, zero past `n`: whole panels, `NR`
    /// values per panel the strip covers.
    pub bias: &'a [f32],
    pub act: Activation,
}

/// The arguments of one kernel call: `c[r][j] (+)= sum_k a[r][k] * w[k][j]`
/// for `r < rows`, `j < cols`, over `kc` inputs, where column `j` is in
/// panel `j / NR` of the strip (up to `Kernel::panels_per_tile` panels).
/// Kernels walk the strip in tiles of [`MR`] rows (`avx512::MR`).
pub struct Strip<'a> {
    /// `a[r * lda + kk]` is row `r`, input `kk` of the block.
    pub a: &'a [f32],
    pub lda: usize,
    pub rows: usize,
    /// The block's `kc * NR` packed weights of the strip's first panel,
    /// then (for a second panel) those of the next at `panel_stride`.
    pub panel: &'a [f32],
    pub panel_stride: usize,
    pub kc: usize,
    /// `c[r * ldc + j]`.
    pub c: &'a mut [f32],
    pub ldc: usize,
    pub cols: usize,
    /// Start from zero instead of from `c`'s partial sums.
    pub first: bool,
    /// Apply bias and activation (after the last block).
    pub epilogue: Option<Epilogue<'a>>,
}

impl Strip<'_> {
    /// The bounds every kernel relies on.
    fn check(&self) {
        assert!(self.rows >= 1 && self.cols >= 1 && self.cols <= 2 * NR && self.kc >= 1);
        assert!(self.a.len() >= (self.rows - 1) * self.lda + self.kc);
        let panels = self.cols.div_ceil(NR);
        assert!(self.panel.len() >= (panels - 1) * self.panel_stride + self.kc * NR);
        if let Some(e) = self.epilogue {
            assert!(e.bias.len() >= panels * NR);
        }
        assert!(self.c.len() >= (self.rows - 1) * self.ldc + self.cols);
    }
}

/// `y = act(x w^T + bias)` with `x` of `y.len() / w.n` rows of `w.k`, using the fastest kernel.
pub fn gemm(x: &[f32], w: &PackedF32, bias: Option<&[f32]>, act: Activation, y: &mut [f32]) {
    gemm_with(Kernel::detect(), x, w, bias, act, y);
}

/// [`gemm`] with a chosen kernel (tests compare them), on the calling thread.
pub fn gemm_with(
    kernel: Kernel,
    x: &[f32],
    w: &PackedF32,
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
    x: &[f32],
    w: &PackedF32,
    bias: Option<&[f32]>,
    act: Activation,
    y: &mut [f32],
) {
    let (n, k) = (w.n, w.k);
    let m = rows_of(x, w, bias);
    assert_eq!(y.len(), m * n, "y has the wrong size");
    let tile = kernel.row_tile();
    let panels_first = crate::parallel::f32_panels_first(m, k);
    crate::parallel::split_gemm(
        threads,
        m,
        n,
        NR,
        tile,
        m * n * k,
        panels_first,
        y,
        |rows, panels, y, ldc| drive(kernel, x, w, bias, act, rows, panels, y, ldc),
    );
}

/// The output channels of panels `panels` only, on this thread: `y` holds
/// every row of those columns (`m x` their count, no more).
pub(crate) fn gemm_panels(
    kernel: Kernel,
    x: &[f32],
    w: &PackedF32,
    bias: Option<&[f32]>,
    act: Activation,
    panels: Range<usize>,
    y: &mut [f32],
) {
    let m = rows_of(x, w, bias);
    assert!(
        panels.start < panels.end && panels.end <= w.n.div_ceil(NR),
        "panels out of range"
    );
    let cols = (panels.end * NR).min(w.n) - panels.start * NR;
    assert_eq!(y.len(), m * cols, "y has the wrong size");
    drive(kernel, x, w, bias, act, 0..m, panels, y, cols);
}

/// The rows of `x` for `w`, after what every product asserts of its
/// operands before the kernels trust them.
fn rows_of(x: &[f32], w: &PackedF32, bias: Option<&[f32]>) -> usize {
    assert!(
        w.k > 0 && x.len().is_multiple_of(w.k),
        "x is not a whole number of rows"
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), w.n);
    }
    x.len() / w.k
}

/// Rows `rows` of the product against panels `panels`, into `y` whose row 0
/// is row `rows.start` and whose column 0 is panel `panels.start`'s first.
#[allow(clippy::too_many_arguments)]
fn drive(
    kernel: Kernel,
    x: &[f32],
    w: &PackedF32,
    bias: Option<&[f32]>,
    act: Activation,
    rows: Range<usize>,
    panels: Range<usize>,
    y: &mut [f32],
    ldc: usize,
) {
    let (n, k) = (w.n, w.k);
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx2Fma && rows.len() % MR == 1 {
        // A lone row (a matrix-vector product, or the one past the tiles
        // of 49 or 25 rows), four panels at a time: as a 1-row tile, two
        // FMA chains waited on the FMA latency (the same bits either way).
        let last = rows.end - 1;
        let cols = (panels.end * NR).min(n) - panels.start * NR;
        let (tiles, lone) = y.split_at_mut((last - rows.start) * ldc);
        // SAFETY: `detect` (or the caller) checked AVX2 and FMA.
        unsafe {
            avx2::row(
                &x[last * k..(last + 1) * k],
                w,
                panels.clone(),
                bias,
                act,
                &mut lone[..cols],
            )
        };
        if rows.len() > 1 {
            drive(kernel, x, w, bias, act, rows.start..last, panels, tiles, ldc);
        }
        return;
    }
    let per_tile = kernel.panels_per_tile();
    for m0 in rows.clone().step_by(MC) {
        for p in panels.clone().step_by(per_tile) {
            let n0 = p * NR;
            // Up to `per_tile` panels, within this part's.
            let cols = (per_tile.min(panels.end - p) * NR).min(n - n0);
            let mut strip_bias = [0.0f32; 2 * NR];
            if let Some(b) = bias {
                strip_bias[..cols].copy_from_slice(&b[n0..n0 + cols]);
            }
            let weights = w.panels_from(p);
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                let mut strip = Strip {
                    a: &x[m0 * k + k0..],
                    lda: k,
                    rows: MC.min(rows.end - m0),
                    panel: &weights[k0 * NR..],
                    panel_stride: NR * k,
                    kc,
                    c: &mut y[(m0 - rows.start) * ldc + n0 - panels.start * NR..],
                    ldc,
                    cols,
                    first: k0 == 0,
                    epilogue: (k0 + kc == k).then_some(Epilogue {
                        bias: &strip_bias,
                        act,
                    }),
                };
                strip.check();
                // By reference: passed by value to a kernel (a target-feature
                // function, never inlined), the strip was copied by a call to
                // memcpy for every strip (2% of a hybrid pass, with the int8
                // driver's).
                match kernel {
                    Kernel::Scalar => scalar::strip(&mut strip),
                    // SAFETY: `detect` (or the caller) checked AVX2 and FMA;
                    // `check` proved the bounds the kernel reads and writes.
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx2Fma => unsafe { avx2::strip(&mut strip) },
                    // SAFETY: as above, AVX-512F.
                    #[cfg(target_arch = "x86_64")]
                    Kernel::Avx512 => unsafe { avx512::strip(&mut strip) },
                }
            }
        }
    }
}

/// `y[m, n] = act(sum_k x[m, k] * w[n, k] + bias[n])` for `x` of `m` rows of
/// `k`, and `w` of `n` rows of `k` (row-major, output-major): the definition.
pub fn gemm_reference(x: &[f32], w: &[f32], k: usize, bias: Option<&[f32]>, act: Activation, y: &mut [f32]) {
    let n = w.len() / k;
    assert_eq!(w.len(), n * k, "weight is not a whole number of rows");
    assert_eq!(x.len() / k * n, y.len(), "x and y disagree on the row count");
    for (x_row, y_row) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
        for (j, (out, w_row)) in y_row.iter_mut().zip(w.chunks_exact(k)).enumerate() {
            let dot: f32 = x_row.iter().zip(w_row).map(|(a, b)| a * b).sum();
            *out = act.apply(dot + bias.map_or(0.0, |b| b[j]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_hand_checked_product() {
        // x = [[1, 2], [3, 4]], w = [[1, 0], [0, 1], [1, 1]] (3 outputs), bias [0, 0, -10]
        let w = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
        let bias = [0.0, 0.0, -10.0];
        let want = [1.0, 2.0, 0.0, 3.0, 4.0, 0.0];
        let mut y = [0.0; 6];
        gemm_reference(
            &[1.0, 2.0, 3.0, 4.0],
            &w,
            2,
            Some(&bias),
            Activation::Relu,
            &mut y,
        );
        assert_eq!(y, want);
        let packed = PackedF32::from_rows(&w, 3, 2);
        for kernel in kernels() {
            gemm_with(
                kernel,
                &[1.0, 2.0, 3.0, 4.0],
                &packed,
                Some(&bias),
                Activation::Relu,
                &mut y,
            );
            assert_eq!(y, want, "{kernel:?}");
        }
    }

    fn kernels() -> Vec<Kernel> {
        Kernel::available()
    }

    fn values(seed: u64, len: usize, scale: f32) -> Vec<f32> {
        crate::test_values::values(seed, len)
            .into_iter()
            .map(|v| scale * v)
            .collect()
    }

    fn check_against_reference(m: usize, n: usize, k: usize, seed: u64, act: Activation, scale: f32) {
        let x = values(seed, m * k, scale);
        let w = values(seed ^ 0xabcd, n * k, 1.0);
        let bias = values(seed ^ 0x1234, n, 1.0);
        let mut want = vec![0.0; m * n];
        gemm_reference(&x, &w, k, Some(&bias), act, &mut want);
        let packed = PackedF32::from_rows(&w, n, k);
        for kernel in kernels() {
            let mut got = vec![f32::NAN; m * n];
            gemm_with(kernel, &x, &packed, Some(&bias), act, &mut got);
            for i in 0..m * n {
                // Summation order differs (and FMA rounds once): allow a few ulps of the magnitude.
                let tol = 1e-5 * (k as f32).sqrt() * scale.max(1.0) * 4.0;
                assert!(
                    (got[i] - want[i]).abs() <= tol,
                    "{kernel:?} m{m} n{n} k{k} [{i}]: {} vs {}",
                    got[i],
                    want[i]
                );
            }
        }
    }

    proptest! {
        #[test]
        fn kernels_match_the_definition(m in 1usize..20, n in 1usize..40, k in 1usize..300, seed in any::<u64>()) {
            check_against_reference(m, n, k, seed, Activation::None, 1.0);
        }
    }

    #[test]
    fn edges_blocks_and_activations() {
        for (m, n, k) in [
            (1, 1, 1),
            (3, 17, 257),
            (17, 33, 513),
            (6, 16, 256),
            (7, 15, 255),
            (13, 1, 600),
        ] {
            for act in [
                Activation::None,
                Activation::Relu,
                Activation::Clip { min: -0.5, max: 0.25 },
                // Kernels apply its lower bound; the ops bound each channel after.
                Activation::ClipChannels { min: -0.5, max: &[] },
            ] {
                check_against_reference(m, n, k, (m * 1000 + n * 10 + k) as u64, act, 1.0);
            }
        }
        // Large magnitudes.
        check_against_reference(5, 20, 100, 7, Activation::None, 1e6);
    }

    /// A one-row product (the AVX2 kernel's matrix-vector path) gives each
    /// row the bits it has in a batch, where tiles of 1-6 rows compute it,
    /// at any thread count: the same FMA chain per output. (Of 7 rows, the
    /// AVX2 driver runs the seventh as a lone row too; of 8, all in tiles.)
    #[test]
    fn a_row_alone_has_its_bits_in_a_batch() {
        for m in [7, 8] {
            for (n, k) in [
                (1, 1),
                (15, 7),
                (16, 256),
                (17, 257),
                (63, 600),
                (64, 1024),
                (129, 33),
                (1001, 300),
            ] {
                let mut x = values(n as u64, m * k, 1.0);
                // Special values in row 2: they travel the same way too.
                x[2 * k] = f32::INFINITY;
                x[2 * k + k / 2] = f32::NAN;
                x[3 * k] = -0.0;
                let w = PackedF32::from_rows(&values(k as u64, n * k, 1.0), n, k);
                let bias = values(7, n, 1.0);
                for kernel in kernels() {
                    for (bias, act) in [
                        (None, Activation::None),
                        (Some(&bias[..]), Activation::Relu),
                        (Some(&bias[..]), Activation::Clip { min: -0.5, max: 0.25 }),
                    ] {
                        let mut batch = vec![0.0; m * n];
                        gemm_with(kernel, &x, &w, bias, act, &mut batch);
                        for r in 0..m {
                            for threads in [1, 2, 3] {
                                let mut alone = vec![f32::NAN; n];
                                gemm_threads(
                                    kernel,
                                    threads,
                                    &x[r * k..(r + 1) * k],
                                    &w,
                                    bias,
                                    act,
                                    &mut alone,
                                );
                                let want = &batch[r * n..(r + 1) * n];
                                assert!(
                                    alone.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()),
                                    "{kernel:?} m{m} n{n} k{k} row {r} threads {threads}: {alone:?} vs {want:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn simd_and_scalar_agree_on_special_values() {
        let (m, n, k) = (7, 19, 9);
        let mut x = values(3, m * k, 1.0);
        x[0] = f32::INFINITY;
        x[k + 1] = f32::NAN;
        x[2 * k] = f32::MAX;
        let packed = PackedF32::from_rows(&values(4, n * k, 1.0), n, k);
        let mut outs = Vec::new();
        for kernel in kernels() {
            let mut y = vec![0.0; m * n];
            gemm_with(kernel, &x, &packed, None, Activation::Relu, &mut y);
            outs.push(y);
        }
        for y in &outs[1..] {
            for (a, b) in y.iter().zip(&outs[0]) {
                assert!(
                    a == b || (a - b).abs() <= 1e-4 * b.abs().max(1.0) || (a.is_nan() && b.is_nan()),
                    "{a} vs {b}"
                );
            }
        }
    }
}
