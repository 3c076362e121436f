//! `cargo xtask bench --layers`: where the time of a forward pass goes,
//! step by step, in the real models (docs/bench.md, "Where the time goes").
//!
//! Each model is planned and baked as the macro does it (default options),
//! then run through the runtime's own ops by `qbake_eval::Executor`, step
//! after step as the generated `forward` runs them; each step's time is the
//! fastest of the rounds, which take the three engines in turn: the float
//! model (`reference = true`'s weights) and the 8-bit one in both kernel
//! families, at 1 thread (or `--threads N`, and 1 in the same rounds:
//! which steps gain from more cores, and which do not). A 1x1 convolution
//! that the generated `forward` runs inside the depthwise one after it is
//! timed with it, as one step (`--unfused` times each step on its own, as
//! `forward` ran them before).

use crate::bench_latency::{MODELS, Spec, photo_input};
use qbake::Kernels;
use qbake_codegen::graph::Op;
use qbake_codegen::quantize::Baked;
use qbake_eval::exec::Executor;
use std::path::Path;

/// How a step is counted: its kind and its multiply-adds.
pub(crate) fn kind_and_macs(baked: &Baked, op: &Op, output_len: usize) -> (String, usize) {
    let cols = |name: &str| {
        baked
            .weights
            .iter()
            .find(|w| w.name == name)
            .map_or(0, |w| w.cols)
    };
    match op {
        Op::Dense { weight, .. } => {
            let k = cols(weight);
            (format!("dense, K = {k}"), output_len * k)
        }
        Op::Conv { geom: g, .. } if g.is_pointwise() => ("1x1 conv".into(), output_len * g.patch_len()),
        Op::Conv { geom: g, .. } | Op::GroupedConv { geom: g, .. } => (
            format!("{}x{} conv, stride {}", g.kh, g.kw, g.stride[0]),
            output_len * g.patch_len(),
        ),
        Op::Depthwise { geom: g, .. } => (
            format!("{}x{} depthwise, stride {}", g.kh, g.kw, g.stride[0]),
            output_len * g.kh * g.kw,
        ),
        other => (
            format!("{other:?}")
                .split([' ', '{', '('])
                .next()
                .unwrap_or("op")
                .to_string(),
            0,
        ),
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// With `--threads N`: each engine's sum of steps at 1 thread, timed in the
/// same rounds, and the steps whose parts lose the most time to the split
/// in the hybrid family (`N`-thread time past a perfect `1/N` of the
/// 1-thread one), where threads gain least.
fn scaling(
    plan: &qbake_codegen::graph::Plan,
    steps: &[(String, usize)],
    counted: &[bool],
    times: &[Vec<f64>],
    one_thread: &[Vec<f64>],
    threads: usize,
) {
    let sum = |t: &[f64]| t.iter().sum::<f64>();
    let gain = |e: usize| sum(&one_thread[e]) / sum(&times[e]);
    println!(
        "  at 1 thread, same rounds: f32 reference {:.2} ms, Dequant {:.2} ms, Hybrid {:.2} ms; {threads} threads are {:.2}x, {:.2}x, {:.2}x faster",
        sum(&one_thread[0]) * 1e3,
        sum(&one_thread[1]) * 1e3,
        sum(&one_thread[2]) * 1e3,
        gain(0),
        gain(1),
        gain(2),
    );
    let (one, many) = (&one_thread[2], &times[2]);
    let lost = |i: usize| many[i] - one[i] / threads as f64;
    let mut order: Vec<usize> = (0..steps.len()).filter(|&i| counted[i]).collect();
    order.sort_by(|&a, &b| lost(b).total_cmp(&lost(a)));
    println!("  Hybrid steps that gain least, by time past 1/{threads} of their 1-thread time:");
    println!(
        "  {:<36} {:>16} | {:>9} {:>9} {:>7} {:>9}",
        "step",
        "output",
        "1 thread",
        format!("{threads} threads"),
        "gain",
        "lost"
    );
    for &i in order.iter().take(10) {
        println!(
            "  {:<36} {:>16} | {:>6.1} us {:>6.1} us {:>6.2}x {:>6.1} us",
            steps[i].0,
            format!("{:?}", plan.values[plan.steps[i].output].shape),
            one[i] * 1e6,
            many[i] * 1e6,
            one[i] / many[i],
            lost(i) * 1e6,
        );
    }
}

/// `cargo xtask bench --layers [--runs N] [--threads N] [--unfused] [--model K]...`
/// (`args` after `bench`).
pub fn main(root: &Path, args: &[String]) -> Result<()> {
    if cfg!(debug_assertions) {
        return crate::bench_latency::run_release(root, "bench", args, false);
    }
    let (mut rounds, mut threads, mut fused) = (20, 1, true);
    let mut models = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--model" {
            let key = it.next().ok_or("--model takes a model's key")?;
            models.push(crate::bench_latency::model_index(key)?);
            continue;
        }
        let mut count = |what: &str| {
            let n = it.next().and_then(|n| n.parse::<usize>().ok()).filter(|&n| n > 0);
            n.ok_or(format!("{what} takes a positive number"))
        };
        match arg.as_str() {
            "--layers" => {}
            "--runs" => rounds = count("--runs")?,
            "--threads" => threads = count("--threads")?,
            "--unfused" => fused = false,
            other => return Err(format!("unknown option `{other}` with --layers").into()),
        }
    }
    for m in crate::bench_latency::chosen_models(models) {
        model(root, &MODELS[m], rounds, threads, fused)?;
    }
    Ok(())
}

fn model(root: &Path, spec: &Spec, rounds: usize, threads: usize, fused: bool) -> Result<()> {
    let options = qbake_codegen::Options {
        output: spec.output.map(Into::into),
        ..Default::default()
    };
    let file = qbake_codegen::open_model(&root.join(spec.onnx), &options)?;
    let plan = qbake_codegen::plan_model(&file, &options)?;
    let baked = qbake_codegen::quantize::bake(&plan, &options)?;
    let float = qbake_codegen::quantize::float(&plan)?;
    let input = photo_input(&root.join(spec.photo), spec)?;
    let engines = [
        (
            "f32 reference",
            Executor::new(plan.clone(), &float),
            Kernels::Dequant,
        ),
        ("Dequant", Executor::new(plan.clone(), &baked), Kernels::Dequant),
        ("Hybrid", Executor::new(plan.clone(), &baked), Kernels::Hybrid),
    ];
    eprintln!("{}: {} steps, {rounds} rounds", spec.name, plan.steps.len());
    // Rounds outside, engines inside: whatever else the machine does falls
    // on the three alike. Each engine as the generated `forward` runs it,
    // then (when that fuses steps) with every step on its own.
    let into_next = plan.fused_into_next();
    let mut times = vec![vec![f64::INFINITY; plan.steps.len()]; engines.len()];
    let mut unfused = times.clone();
    // With threads, each engine also at 1 thread in the same rounds.
    let mut one_thread = times.clone();
    for _ in 0..rounds {
        for (e, ((_, exec, kernels), (best, alone))) in
            engines.iter().zip(times.iter_mut().zip(&mut unfused)).enumerate()
        {
            for (best, t) in best
                .iter_mut()
                .zip(exec.time_steps(*kernels, threads, &input, 1, fused))
            {
                *best = best.min(t);
            }
            if threads > 1 {
                for (best, t) in one_thread[e]
                    .iter_mut()
                    .zip(exec.time_steps(*kernels, 1, &input, 1, fused))
                {
                    *best = best.min(t);
                }
            }
            if fused {
                // A pair's two steps summed in each round, as the fused
                // op is timed (the sum of each one's fastest round would
                // flatter them).
                let mut t = exec.time_steps(*kernels, threads, &input, 1, false);
                for i in 0..t.len() {
                    if into_next[i] {
                        t[i + 1] += std::mem::take(&mut t[i]);
                    }
                }
                for (best, t) in alone.iter_mut().zip(t) {
                    *best = best.min(t);
                }
            }
        }
    }
    let mut steps: Vec<(String, usize)> = plan
        .steps
        .iter()
        .map(|s| kind_and_macs(&baked, &s.op, plan.values[s.output].len))
        .collect();
    // A 1x1 convolution run inside the depthwise one after it counts with
    // it, as one step of both kinds; the 1x1 step itself is left out.
    let counted: Vec<bool> = into_next.iter().map(|&f| !(fused && f)).collect();
    // Each step's own multiply-adds, for its GEMM shape below.
    let own_macs: Vec<usize> = steps.iter().map(|s| s.1).collect();
    for i in (0..steps.len()).filter(|&i| !counted[i]) {
        let (pointwise, macs) = std::mem::take(&mut steps[i]);
        let depthwise = &mut steps[i + 1];
        *depthwise = (format!("{pointwise} + {}", depthwise.0), macs + depthwise.1);
    }
    let totals: Vec<f64> = times.iter().map(|t| t.iter().sum()).collect();
    let macs: usize = steps.iter().map(|s| s.1).sum();
    println!(
        "\n{} ({} M multiply-adds), {threads} thread{}, each step the fastest of {rounds} passes in order",
        spec.name,
        macs / 1_000_000,
        if threads == 1 { "" } else { "s" }
    );
    println!(
        "  sum of steps: f32 reference {:.2} ms ({:.1} GFLOP/s), Dequant {:.2} ms, Hybrid {:.2} ms ({:.1} GOP/s)",
        totals[0] * 1e3,
        2.0 * macs as f64 / totals[0] / 1e9,
        totals[1] * 1e3,
        totals[2] * 1e3,
        2.0 * macs as f64 / totals[2] / 1e9,
    );
    if fused {
        let alone: Vec<f64> = unfused.iter().map(|t| t.iter().sum()).collect();
        println!(
            "  each step on its own (--unfused), same rounds: f32 reference {:.2} ms, Dequant {:.2} ms, Hybrid {:.2} ms; fusing is {:.2}x, {:.2}x, {:.2}x faster",
            alone[0] * 1e3,
            alone[1] * 1e3,
            alone[2] * 1e3,
            alone[0] / totals[0],
            alone[1] / totals[1],
            alone[2] / totals[2],
        );
    }
    if threads > 1 {
        scaling(&plan, &steps, &counted, &times, &one_thread, threads);
    }
    // By kind.
    let mut kinds: Vec<(String, usize, usize, [f64; 3])> = Vec::new();
    for (i, (kind, m)) in steps.iter().enumerate().filter(|&(i, _)| counted[i]) {
        let key = kind.split(',').next().unwrap_or(kind).to_string();
        let at = match kinds.iter().position(|k| k.0 == key) {
            Some(at) => at,
            None => {
                kinds.push((key, 0, 0, [0.0; 3]));
                kinds.len() - 1
            }
        };
        kinds[at].1 += 1;
        kinds[at].2 += m;
        for (sum, t) in kinds[at].3.iter_mut().zip(&times) {
            *sum += t[i];
        }
    }
    kinds.sort_by(|a, b| b.3[0].total_cmp(&a.3[0]));
    println!(
        "  {:<22} {:>5} {:>8} | {:>19} | {:>8} | {:>19}",
        "kind", "steps", "M MACs", "f32 ref ms (GFLOP/s)", "Dequant", "Hybrid ms (GOP/s)"
    );
    for (kind, n, m, t) in &kinds {
        let rate = |t: f64| {
            if *m > 0 {
                format!("{:.1}", 2.0 * *m as f64 / t / 1e9)
            } else {
                "-".into()
            }
        };
        println!(
            "  {:<22} {:>5} {:>8.1} | {:>9.3} ({:>6}) {:>2.0}% | {:>8.3} | {:>9.3} ({:>6}) {:>2.0}%",
            kind,
            n,
            *m as f64 / 1e6,
            t[0] * 1e3,
            rate(t[0]),
            100.0 * t[0] / totals[0],
            t[1] * 1e3,
            t[2] * 1e3,
            rate(t[2]),
            100.0 * t[2] / totals[2],
        );
    }
    // The slowest steps in the float model.
    let mut order: Vec<usize> = (0..steps.len()).filter(|&i| counted[i]).collect();
    order.sort_by(|&a, &b| times[0][b].total_cmp(&times[0][a]));
    println!("  slowest steps (f32 reference):");
    println!(
        "  {:<26} {:>22} {:>8} | {:>8} {:>8} | {:>8} {:>8}",
        "step", "shape (M x K x N)", "M MACs", "f32 ms", "GFLOP/s", "Hybrid", "GOP/s"
    );
    for &i in order.iter().take(12) {
        let (kind, m) = &steps[i];
        // A fused pair's shape is its 1x1 convolution's.
        let at = if i > 0 && !counted[i - 1] { i - 1 } else { i };
        let step = &plan.steps[at];
        let n = plan.values[step.output].shape.get(1).copied().unwrap_or(0);
        let rows = plan.values[step.output].len.checked_div(n).unwrap_or(0);
        let k = own_macs[at].checked_div(rows * n).unwrap_or(0);
        println!(
            "  {:<26} {:>22} {:>8.1} | {:>8.3} {:>8.1} | {:>8.3} {:>8.1}",
            kind,
            format!("{rows} x {k} x {n}"),
            *m as f64 / 1e6,
            times[0][i] * 1e3,
            2.0 * *m as f64 / times[0][i] / 1e9,
            times[2][i] * 1e3,
            2.0 * *m as f64 / times[2][i] / 1e9,
        );
    }
    Ok(())
}
