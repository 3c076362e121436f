//! GEMM throughput at MobileNet's 1x1-convolution shapes and a transformer
//! shape, as GOP/s and as a share of this machine's peak measured in the
//! same run (the best of the peak loops run at its start and beside every
//! shape). `cargo bench -p qbake --bench kernels` (add `-- --quick` for a
//! short run, `-- 784x256x256` for one GEMM shape, `-- depthwise` for the
//! depthwise shapes only).
//!
//! - int8: the hybrid GEMM on quantized activations (the quantizer is timed
//!   separately, in the fully connected comparison), against the u8 x s8
//!   peak: a register-only loop of `maddubs` + `madd` + `add`, the shortest
//!   exact u8 x s8 -> i32 step on AVX2, or of `vpdpbusd` when the kernel
//!   uses AVX-512 VNNI (also with AMX, whose kernel leaves rows and inputs
//!   short of a tile to VNNI); with AMX, also against a register-only loop
//!   of `tdpbssd` on four tiles, and against the next kernel down (VNNI).
//! - f32: the Dequant GEMM on cached panels, against a register-only FMA loop
//!   on the kernel's vectors (16 lanes with AVX-512, else 8).
//! - A fully connected layer, Hybrid (quantize + int8 GEMM) against Dequant
//!   (f32 GEMM), at K >= 256.
//! - Both GEMMs on 2 threads against 1.
//! - The depthwise kernel at MobileNetV2's and EfficientNet-Lite0's
//!   depthwise shapes, as GFLOP/s against the FMA peak, at 1 and 2 threads,
//!   and against the AVX2 kernel where a wider one runs.

use qbake::conv::{self, Conv2d};
use qbake::gemm_f32::{self, PackedF32};
use qbake::hybrid::{self, QuantizedRows};
use qbake::{Activation, AlignedVec, DequantCache, QuantParams, QuantWeight};
use std::time::{Duration, Instant};

/// Depthwise layers (input height = width, channels, kernel, stride):
/// MobileNetV2 224 (3x3) and EfficientNet-Lite0 (its 5x5 ones).
const DEPTHWISE: &[(usize, usize, usize, usize)] = &[
    (112, 32, 3, 1),
    (112, 96, 3, 2),
    (56, 144, 3, 1),
    (28, 192, 3, 1),
    (14, 576, 3, 1),
    (7, 960, 3, 1),
    (56, 144, 5, 2),
    (28, 240, 5, 1),
    (14, 672, 5, 1),
    (7, 1152, 5, 1),
];

const SHAPES: &[(usize, usize, usize)] = &[
    (12544, 32, 64),
    (12544, 16, 96),
    (3136, 128, 128),
    (784, 256, 256),
    (196, 512, 512),
    (49, 1024, 1024),
    (49, 320, 1280),
    (1, 1024, 1001),
    (128, 384, 1536),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `MxKxN` arguments pick shapes; none means all.
    let picked: Vec<&String> = args.iter().filter(|a| a.contains('x')).collect();
    let budget = Duration::from_millis(if quick { 150 } else { 600 });
    if args.iter().any(|a| a == "depthwise") {
        println!(
            "peaks: f32 FMA on {} lanes (the depthwise kernel's) {:.1} GFLOP/s",
            f32_kernel_lanes(),
            f32_gemm_peak() / 1e9
        );
        return depthwise(budget);
    }
    let hybrid_kernel = hybrid::Kernel::detect();
    let f32_kernel = gemm_f32::Kernel::detect();
    // The int8 kernel one step down, measured beside it.
    let hybrid_below = {
        let all = hybrid::Kernel::available();
        all[all.len().saturating_sub(2)]
    };
    println!("kernels: int8 {hybrid_kernel:?} (and {hybrid_below:?}), f32 {f32_kernel:?}");
    let mut amx_peak = amx_peak();
    if let Some(peak) = amx_peak {
        println!(
            "AMX peak (1 thread, register-only tdpbssd on four tiles): {:.1} GOP/s",
            peak / 1e9
        );
    }

    // The machine is shared: the peaks are measured again beside every
    // shape, and the shares are of the best of all these measurements (the
    // machine undisturbed), so that a neighbour's load during one peak
    // measurement cannot raise a share past 100%.
    let (mut peak_u8s8, mut peak_fma) = (int8_peak(), f32_gemm_peak());
    println!(
        "peaks (1 thread, register-only, at start): int8 {:.1} GOP/s ({}), f32 FMA {:.1} GFLOP/s ({} lanes, as the f32 kernel)\n",
        peak_u8s8 / 1e9,
        int8_peak_name(),
        peak_fma / 1e9,
        f32_kernel_lanes()
    );

    // Per shape: (name, int8 ops/s, int8 ops/s on mixed-sign rows, f32
    // flops/s, hybrid FC vs f32, quantizer share, int8 vs the kernel below).
    let mut measured: Vec<(String, f64, f64, f64, f64, f64, f64)> = Vec::new();
    let mut fc_speedups = Vec::new();
    let mut two_threads: Vec<(f64, f64)> = Vec::new();
    // Matrix-vector products: (name, int8 panel bytes and seconds, f32 panel bytes and seconds).
    let mut gemv: Vec<(String, usize, f64, usize, f64)> = Vec::new();
    for &(m, k, n) in SHAPES {
        if !picked.is_empty() && !picked.iter().any(|p| **p == format!("{m}x{k}x{n}")) {
            continue;
        }
        let case = Case::new(m, k, n);
        let ops = 2.0 * (m * k * n) as f64;
        // Each candidate has its own buffers.
        // Aligned as a baked model's scratch is.
        let mut ys: Vec<AlignedVec> = (0..7).map(|_| AlignedVec::zeroed(m * n)).collect();
        let [y1, y2, y3, y4, y5, y6, y7] = ys.as_mut_slice() else {
            unreachable!()
        };
        let (mut rows, mut fc_rows) = (QuantizedRows::default(), QuantizedRows::default());
        let int8_with = |kernel, y: &mut [f32], x: &QuantizedRows| {
            hybrid::gemm_with(kernel, x, &case.w, Some(&case.bias), Activation::Relu, y)
        };
        let int8 = |y: &mut [f32], x: &QuantizedRows| int8_with(hybrid_kernel, y, x);
        // Interleaved rounds: the candidates see the same machine, and the
        // best time of each is what the kernel can do when not disturbed.
        let [
            t_int8,
            t_signed,
            t_f32,
            t_quantize,
            t_fc_hybrid,
            t_int8_2,
            t_f32_2,
            t_int8_below,
        ] = best_of_rounds(
            budget,
            &mut [
                &mut || int8(y1, &case.xq),
                &mut || int8(y2, &case.xq_signed),
                &mut || {
                    gemm_f32::gemm_with(
                        f32_kernel,
                        &case.x,
                        &case.wf,
                        Some(&case.bias),
                        Activation::Relu,
                        y3,
                    )
                },
                &mut || rows.quantize_into(hybrid_kernel, &case.x, k),
                &mut || {
                    fc_rows.quantize_into(hybrid_kernel, &case.x, k);
                    int8(y4, &fc_rows);
                },
                &mut || {
                    hybrid::gemm_threads(
                        hybrid_kernel,
                        2,
                        &case.xq,
                        &case.w,
                        Some(&case.bias),
                        Activation::Relu,
                        y5,
                    )
                },
                &mut || {
                    gemm_f32::gemm_threads(
                        f32_kernel,
                        2,
                        &case.x,
                        &case.wf,
                        Some(&case.bias),
                        Activation::Relu,
                        y6,
                    )
                },
                &mut || int8_with(hybrid_below, y7, &case.xq),
            ],
        )
        .try_into()
        .unwrap();
        peak_u8s8 = peak_u8s8.max(int8_peak());
        amx_peak = amx_peak.zip(self::amx_peak()).map(|(a, b)| a.max(b));
        peak_fma = peak_fma.max(f32_gemm_peak());
        let fc = t_f32 / t_fc_hybrid;
        two_threads.push((t_int8 / t_int8_2, t_f32 / t_f32_2));
        if k >= 256 {
            fc_speedups.push(fc);
        }
        if m == 1 {
            let f32_bytes = case.wf.data.len() * std::mem::size_of::<f32>();
            gemv.push((
                format!("{m}x{k}x{n}"),
                case.w.packed.len(),
                t_int8,
                f32_bytes,
                t_f32,
            ));
        }
        measured.push((
            format!("{m}x{k}x{n}"),
            ops / t_int8,
            ops / t_signed,
            ops / t_f32,
            fc,
            t_quantize / t_fc_hybrid,
            t_int8_below / t_int8,
        ));
    }
    println!(
        "best peaks of the run: int8 {:.1} GOP/s, f32 {:.1} GFLOP/s{}\n",
        peak_u8s8 / 1e9,
        peak_fma / 1e9,
        amx_peak.map_or(String::new(), |p| format!(", AMX {:.1} GOP/s", p / 1e9))
    );
    println!(
        "{:>16} | {:>9} {:>7} {:>8} {:>9} | {:>10} {:>7} | {:>14} {:>10}",
        "M x K x N",
        "int8 GOP/s",
        "% peak",
        "signed",
        format!("vs {hybrid_below:?}"),
        "f32 GFLOP/s",
        "% peak",
        "hybrid FC vs f32",
        "quantizer"
    );
    let (mut int8_share, mut signed_share, mut f32_share) = (Vec::new(), Vec::new(), Vec::new());
    let mut below = Vec::new();
    for (name, g8, g_signed, g32, fc, quantizer, vs_below) in &measured {
        below.push(*vs_below);
        int8_share.push(g8 / peak_u8s8);
        signed_share.push(g_signed / peak_u8s8);
        f32_share.push(g32 / peak_fma);
        println!(
            "{:>16} | {:>10.1} {:>6.1}% {:>7.1}% {:>8.2}x | {:>11.1} {:>6.1}% | {:>13.2}x {:>9.1}%",
            name,
            g8 / 1e9,
            100.0 * g8 / peak_u8s8,
            100.0 * g_signed / peak_u8s8,
            vs_below,
            g32 / 1e9,
            100.0 * g32 / peak_fma,
            fc,
            100.0 * quantizer
        );
    }
    println!(
        "\ngeomean: int8 {:.1}% of u8s8 peak ({:.1}% with mixed-sign rows), f32 {:.1}% of FMA peak; hybrid FC vs f32 at K >= 256: geomean {:.2}x, min {:.2}x",
        100.0 * geomean(&int8_share),
        100.0 * geomean(&signed_share),
        100.0 * geomean(&f32_share),
        geomean(&fc_speedups),
        fc_speedups.iter().copied().fold(f64::INFINITY, f64::min)
    );
    println!(
        "int8 vs {hybrid_below:?} (same run): geomean {:.2}x",
        geomean(&below)
    );
    if let Some(peak) = amx_peak {
        let shares: Vec<f64> = measured.iter().map(|m| m.1 / peak).collect();
        println!(
            "int8 against the AMX peak ({:.1} GOP/s): geomean {:.1}%, best {:.1}%",
            peak / 1e9,
            100.0 * geomean(&shares),
            100.0 * shares.iter().copied().fold(0.0, f64::max)
        );
    }
    let (t8, t32): (Vec<f64>, Vec<f64>) = two_threads.into_iter().unzip();
    println!(
        "2 threads vs 1 (same run): int8 geomean {:.2}x (min {:.2}x), f32 geomean {:.2}x (min {:.2}x)",
        geomean(&t8),
        t8.iter().copied().fold(f64::INFINITY, f64::min),
        geomean(&t32),
        t32.iter().copied().fold(f64::INFINITY, f64::min)
    );
    if !gemv.is_empty() {
        // One row reads every weight once per call: the bound is how fast
        // the weights arrive, not the multiply rate (the f32 panels do not
        // fit in L2).
        println!(
            "matrix-vector products against reading their weights (a buffer of the same size summed, best of the same rounds):"
        );
    }
    for (name, int8_bytes, t_int8, f32_bytes, t_f32) in gemv {
        let [read_int8, read_f32] = [int8_bytes, f32_bytes].map(|b| read_bandwidth(b, budget));
        let line = |bytes: usize, t: f64, read: f64| {
            format!(
                "{:.2} MB of panels per call at {:.1} GB/s, {:.0}% of {:.1} GB/s",
                bytes as f64 / 1e6,
                bytes as f64 / t / 1e9,
                100.0 * bytes as f64 / t / read,
                read / 1e9
            )
        };
        println!(
            "{name:>16} | int8 {}; f32 {}",
            line(int8_bytes, t_int8, read_int8),
            line(f32_bytes, t_f32, read_f32)
        );
    }
    if picked.is_empty() {
        depthwise(budget);
    }
}

/// Bytes/s of summing a buffer of `bytes` once, the best of rounds within
/// `budget`: the rate at which a one-row product can read its weights
/// from wherever a buffer of that size stays between calls.
fn read_bandwidth(bytes: usize, budget: Duration) -> f64 {
    let words: Vec<u64> = (0..bytes.div_ceil(8) as u64).collect();
    let fold = |v: &[u64]| {
        // Eight lanes, so that the loop is loads, not one chain of xors.
        let mut acc = [0u64; 8];
        for chunk in v.chunks_exact(8) {
            for (a, x) in acc.iter_mut().zip(chunk) {
                *a ^= x;
            }
        }
        acc.iter().fold(0, |a, b| a ^ b)
    };
    let t = best_of_rounds(
        budget,
        &mut [&mut || {
            std::hint::black_box(fold(std::hint::black_box(&words)));
        }],
    );
    (words.len() * 8) as f64 / t[0]
}

/// The depthwise kernel alone, f32 on both families' taps: GFLOP/s and its
/// share of the FMA peak at its vector width, 2 threads against 1, and
/// against the AVX2 kernel where a wider one runs.
fn depthwise(budget: Duration) {
    let kernel = conv::Kernel::detect();
    // The narrower SIMD kernel, to compare with in the same rounds.
    let narrower = conv::Kernel::available()
        .into_iter()
        .rfind(|&k| k != conv::Kernel::Scalar && k != kernel);
    // As for the GEMMs: shares of the best peak measured in the run.
    let mut peak_fma = f32_gemm_peak();
    // Per shape: (name, flops/s, 2 threads vs 1, vs the narrower kernel).
    let mut measured: Vec<(String, f64, f64, f64)> = Vec::new();
    for &(hw, c, k, stride) in DEPTHWISE {
        let pad = k / 2;
        let g = Conv2d {
            batch: 1,
            in_h: hw,
            in_w: hw,
            in_c: c,
            out_c: c,
            kh: k,
            kw: k,
            stride: [stride; 2],
            dilation: [1, 1],
            pads: [pad; 4],
            groups: c,
        };
        // Aligned as a baked model's scratch is.
        let mut x = AlignedVec::zeroed(hw * hw * c);
        x.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i % 251) as f32 / 251.0 - 0.5);
        let taps: Vec<f32> = (0..k * k * c).map(|i| (i % 13) as f32 / 13.0 - 0.5).collect();
        let bias = vec![0.1f32; c];
        let [mut y1, mut y2, mut y3] = [0; 3].map(|_| AlignedVec::zeroed(g.out_pixels() * c));
        let act = Activation::Clip { min: 0.0, max: 6.0 };
        let times = best_of_rounds(
            budget,
            &mut [
                &mut || conv::depthwise_threads(kernel, 1, &x, &g, &taps, Some(&bias), act, &mut y1),
                &mut || conv::depthwise_threads(kernel, 2, &x, &g, &taps, Some(&bias), act, &mut y2),
                &mut || {
                    if let Some(narrower) = narrower {
                        conv::depthwise_threads(narrower, 1, &x, &g, &taps, Some(&bias), act, &mut y3)
                    }
                },
            ],
        );
        let (t1, t2, t_narrower) = (times[0], times[1], times[2]);
        peak_fma = peak_fma.max(f32_gemm_peak());
        let flops = 2.0 * (g.out_pixels() * c * k * k) as f64 / t1;
        measured.push((
            format!("{hw}x{hw}x{c} {k}x{k}/{stride}"),
            flops,
            t1 / t2,
            t_narrower / t1,
        ));
    }
    println!(
        "\ndepthwise ({kernel:?}) | {:>11} {:>7} | {:>9} | {:>9}",
        "GFLOP/s",
        "% peak",
        "2 threads",
        narrower.map_or(String::new(), |k| format!("vs {k:?}"))
    );
    let (mut shares, mut two, mut wider) = (Vec::new(), Vec::new(), Vec::new());
    for (name, flops, two_vs_one, vs_narrower) in &measured {
        shares.push(flops / peak_fma);
        two.push(*two_vs_one);
        wider.push(*vs_narrower);
        println!(
            "{:>24} | {:>11.1} {:>6.1}% | {:>8.2}x | {:>8}",
            name,
            flops / 1e9,
            100.0 * flops / peak_fma,
            two_vs_one,
            narrower.map_or(String::new(), |_| format!("{vs_narrower:.2}x"))
        );
    }
    println!(
        "depthwise geomean: {:.1}% of the FMA peak ({} lanes, best of the run: {:.1} GFLOP/s); 2 threads vs 1 geomean {:.2}x{}",
        100.0 * geomean(&shares),
        f32_kernel_lanes(),
        peak_fma / 1e9,
        geomean(&two),
        narrower.map_or(String::new(), |k| format!(
            "; vs {k:?} geomean {:.2}x",
            geomean(&wider)
        ))
    );
}

struct Case {
    x: Vec<f32>,
    xq: QuantizedRows,
    /// The same rows shifted to mixed signs: the kernel's signed path.
    xq_signed: QuantizedRows,
    w: QuantWeight,
    wf: PackedF32,
    bias: Vec<f32>,
}

impl Case {
    fn new(m: usize, k: usize, n: usize) -> Self {
        let mut s = 0x9e37_79b9_7f4a_7c15u64 ^ (m * 31 + k * 7 + n) as u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let x: Vec<f32> = (0..m * k)
            .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32)
            .collect();
        let q: Vec<u8> = (0..n * k).map(|_| next() as u8).collect();
        let leak = |v: Vec<u8>| -> &'static [u8] { Box::leak(v.into_boxed_slice()) };
        let scale: &'static [f32] = Box::leak(vec![0.01f32; n].into_boxed_slice());
        let w = QuantWeight {
            name: "bench",
            rows: n,
            cols: k,
            packed: leak(qbake::format::pack_b_s8(&q, n, k)),
            s8_sums: Box::leak(qbake::format::s8_row_sums(&q, n, k).into_boxed_slice()),
            s8_negative_sums: Box::leak(qbake::format::s8_negative_sums(&q, n, k).into_boxed_slice()),
            params: QuantParams {
                min: &[],
                max: &[],
                scale,
                zero_point: leak(vec![128; n]),
            },
            cache: DequantCache::new(),
        };
        let wf = w.dequantize();
        let xq = QuantizedRows::quantize(&x, k);
        let signed: Vec<f32> = x.iter().map(|v| v - 0.5).collect();
        let xq_signed = QuantizedRows::quantize(&signed, k);
        Case {
            x,
            xq,
            xq_signed,
            w,
            wf,
            bias: vec![0.1; n],
        }
    }
}

/// The best seconds per call of each function, run in interleaved rounds
/// within `budget` (after a warm-up round), at least 5 rounds.
fn best_of_rounds(budget: Duration, fns: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    for f in fns.iter_mut() {
        f();
    }
    let mut best = vec![f64::INFINITY; fns.len()];
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < budget * fns.len() as u32 || rounds < 5 {
        for (f, best) in fns.iter_mut().zip(&mut best) {
            let t = Instant::now();
            f();
            *best = best.min(t.elapsed().as_secs_f64());
        }
        rounds += 1;
    }
    best
}

fn geomean(v: &[f64]) -> f64 {
    (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp()
}

/// (u8s8 ops/s, f32 FMA flops/s on 8 lanes), each the best of several runs.
fn peaks() -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA were detected.
        return unsafe { (best(&|n| peak::u8s8(n)), best(&|n| peak::fma(n))) };
    }
    (f64::NAN, f64::NAN)
}

/// The int8 peak of the instructions the int8 kernel uses on non-negative
/// rows: `vpdpbusd` on 16 lanes with AVX-512 VNNI, else `maddubs` + `madd`
/// + `add` on 8 (`peaks`).
fn int8_peak() -> f64 {
    #[cfg(target_arch = "x86_64")]
    if matches!(
        hybrid::Kernel::detect(),
        hybrid::Kernel::Avx512Vnni | hybrid::Kernel::Amx
    ) {
        // SAFETY: `detect` checked AVX-512F and VNNI.
        return unsafe { best(&|n| peak::vnni(n)) };
    }
    peaks().0
}

/// The `tdpbssd` peak, where the int8 kernel uses AMX.
fn amx_peak() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if hybrid::Kernel::detect() == hybrid::Kernel::Amx {
        // SAFETY: `detect` checked AMX and obtained the tile state.
        return Some(unsafe { best(&|n| peak::amx(n >> 4)) });
    }
    None
}

/// What [`int8_peak`] measures.
fn int8_peak_name() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if matches!(
        hybrid::Kernel::detect(),
        hybrid::Kernel::Avx512Vnni | hybrid::Kernel::Amx
    ) {
        return "vpdpbusd, 16 lanes";
    }
    "maddubs+madd+add, 8 lanes"
}

/// The f32 FMA peak of the vectors the f32 GEMM kernel uses: 16 lanes
/// with AVX-512, else 8 (`peaks`).
fn f32_gemm_peak() -> f64 {
    #[cfg(target_arch = "x86_64")]
    if gemm_f32::Kernel::detect() == gemm_f32::Kernel::Avx512 {
        // SAFETY: `detect` checked AVX-512F.
        return unsafe { best(&|n| peak::fma512(n)) };
    }
    peaks().1
}

/// The f32 GEMM kernel's vector width.
fn f32_kernel_lanes() -> usize {
    #[cfg(target_arch = "x86_64")]
    if gemm_f32::Kernel::detect() == gemm_f32::Kernel::Avx512 {
        return 16;
    }
    8
}

/// The best of five runs of a peak loop.
fn best(f: &dyn Fn(u64) -> f64) -> f64 {
    (0..5).map(|_| f(1 << 20)).fold(0.0, f64::max)
}

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;
    use std::hint::black_box;
    use std::time::Instant;

    /// Ops/s of 6 independent `vpmaddubsw` + `vpmaddwd` + `vpaddd` chains:
    /// 32 multiply-adds (64 ops) per step, the shortest exact u8 x s8 -> i32
    /// step. Written in assembly so the compiler cannot hoist the products.
    #[target_feature(enable = "avx2")]
    pub fn u8s8(iters: u64) -> f64 {
        let a = black_box(_mm256_set1_epi8(3));
        let b = black_box(_mm256_set1_epi8(-2));
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); 6];
        let t = Instant::now();
        for _ in 0..iters {
            // SAFETY: register-only AVX2 arithmetic; AVX2 is enabled.
            unsafe {
                std::arch::asm!(
                    "vpmaddubsw {t0}, {a}, {b}", "vpmaddubsw {t1}, {a}, {b}", "vpmaddubsw {t2}, {a}, {b}",
                    "vpmaddubsw {t3}, {a}, {b}", "vpmaddubsw {t4}, {a}, {b}", "vpmaddubsw {t5}, {a}, {b}",
                    "vpmaddwd {t0}, {t0}, {o}", "vpmaddwd {t1}, {t1}, {o}", "vpmaddwd {t2}, {t2}, {o}",
                    "vpmaddwd {t3}, {t3}, {o}", "vpmaddwd {t4}, {t4}, {o}", "vpmaddwd {t5}, {t5}, {o}",
                    "vpaddd {c0}, {c0}, {t0}", "vpaddd {c1}, {c1}, {t1}", "vpaddd {c2}, {c2}, {t2}",
                    "vpaddd {c3}, {c3}, {t3}", "vpaddd {c4}, {c4}, {t4}", "vpaddd {c5}, {c5}, {t5}",
                    a = in(ymm_reg) a, b = in(ymm_reg) b, o = in(ymm_reg) ones,
                    c0 = inout(ymm_reg) acc[0], c1 = inout(ymm_reg) acc[1], c2 = inout(ymm_reg) acc[2],
                    c3 = inout(ymm_reg) acc[3], c4 = inout(ymm_reg) acc[4], c5 = inout(ymm_reg) acc[5],
                    t0 = out(ymm_reg) _, t1 = out(ymm_reg) _, t2 = out(ymm_reg) _,
                    t3 = out(ymm_reg) _, t4 = out(ymm_reg) _, t5 = out(ymm_reg) _,
                    options(pure, nomem, nostack),
                );
            }
        }
        let secs = t.elapsed().as_secs_f64();
        black_box(acc);
        (iters * 6 * 64) as f64 / secs
    }

    /// Ops/s of 12 independent `vpdpbusd` chains: 64 multiply-adds (128
    /// ops) per instruction.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub fn vnni(iters: u64) -> f64 {
        let a = black_box(_mm512_set1_epi8(3));
        let b = black_box(_mm512_set1_epi8(-2));
        let mut acc = [_mm512_setzero_si512(); 12];
        let t = Instant::now();
        for _ in 0..iters {
            for acc in acc.iter_mut() {
                *acc = _mm512_dpbusd_epi32(*acc, a, b);
            }
        }
        let secs = t.elapsed().as_secs_f64();
        black_box(acc);
        (iters * 12 * 128) as f64 / secs
    }

    /// Ops/s of `tdpbssd` on four independent 16 x 16 sum tiles, each a
    /// 16 x 64 by 64 x 16 product (16384 multiply-adds).
    ///
    /// # Safety
    /// The CPU must have AMX-INT8 and the process its tile state.
    pub unsafe fn amx(iters: u64) -> f64 {
        #[repr(C, align(64))]
        struct Config([u8; 16], [u16; 16], [u8; 16]);
        let mut config = Config([0; 16], [0; 16], [0; 16]);
        config.0[0] = 1;
        config.1[..8].fill(64);
        config.2[..8].fill(16);
        let data = black_box([1i8; 1024]);
        let t = Instant::now();
        // SAFETY: the caller's; the loads read the 1024 bytes of `data`.
        unsafe {
            std::arch::asm!(
                "ldtilecfg [{c}]",
                "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
                "tileloadd tmm4, [{d} + {s}*1]", "tileloadd tmm5, [{d} + {s}*1]",
                "tileloadd tmm6, [{d} + {s}*1]", "tileloadd tmm7, [{d} + {s}*1]",
                c = in(reg) &config, d = in(reg) data.as_ptr(), s = in(reg) 64usize,
                options(nostack, readonly),
            );
            for _ in 0..iters {
                std::arch::asm!(
                    "tdpbssd tmm0, tmm4, tmm6",
                    "tdpbssd tmm1, tmm4, tmm7",
                    "tdpbssd tmm2, tmm5, tmm6",
                    "tdpbssd tmm3, tmm5, tmm7",
                    options(nostack, nomem),
                );
            }
            std::arch::asm!("tilerelease", options(nostack, nomem));
        }
        (iters * 4 * 16 * 16 * 64 * 2) as f64 / t.elapsed().as_secs_f64()
    }

    /// Flops/s of 12 independent FMA chains on sixteen lanes.
    #[target_feature(enable = "avx512f")]
    pub fn fma512(iters: u64) -> f64 {
        let a = black_box(_mm512_set1_ps(0.999));
        let b = black_box(_mm512_set1_ps(0.001));
        let mut acc = [_mm512_setzero_ps(); 12];
        let t = Instant::now();
        for _ in 0..iters {
            for acc in acc.iter_mut() {
                *acc = _mm512_fmadd_ps(*acc, a, b);
            }
        }
        let secs = t.elapsed().as_secs_f64();
        black_box(acc);
        (iters * 12 * 32) as f64 / secs
    }

    /// Flops/s of 12 independent FMA chains on eight lanes.
    #[target_feature(enable = "avx2,fma")]
    pub fn fma(iters: u64) -> f64 {
        let a = black_box(_mm256_set1_ps(0.999));
        let b = black_box(_mm256_set1_ps(0.001));
        let mut acc = [_mm256_setzero_ps(); 12];
        let t = Instant::now();
        for _ in 0..iters {
            for acc in acc.iter_mut() {
                *acc = _mm256_fmadd_ps(*acc, a, b);
            }
        }
        let secs = t.elapsed().as_secs_f64();
        black_box(acc);
        (iters * 12 * 16) as f64 / secs
    }
}
