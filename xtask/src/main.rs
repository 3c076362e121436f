//! qbake's developer tasks, run as `cargo xtask <task>`.

mod bench_compile;
mod bench_latency;
mod bench_layers;
mod eval;
mod fixtures;
mod import;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  fixtures   rewrite the small model files the tests use (tests/models/)
  bench [--runs N] [--quick] [--peers] [--json]
             latency of the real models in both kernel families and as their
             float model, at 1 thread and all cores, with --peers beside ONNX
             Runtime (docs/bench.md;
             target/qbake-bench/latency.json and latency.svg)
  bench --layers [--runs N] [--threads N] [--unfused]
             each step of the real models timed in place, in the float model
             and both kernel families, at 1 thread or N (then also at 1 in
             the same rounds, with the steps that gain least); a fused 1x1
             and depthwise pair as one step, unless --unfused (docs/bench.md)
  bench --compile [--runs N]
             compile time and rustc memory of baking an 18 MB model, by the
             macro and by a build script (target/qbake-bench/compile.json)
  eval --model M (--inputs X.safetensors | --photos DIR --mean M --scale S) [--labels L] [--json]
             a model's accuracy in both kernel families against float, layer
             by layer (docs/eval.md)
  import MODEL.onnx OUT.safetensors [--batch N] [--output NAME]
             an ONNX model as a qbake model file (docs/onnx.md); a dynamic
             batch dimension becomes N (default 1)";

fn main() -> ExitCode {
    // The compile benchmark runs this binary as cargo's RUSTC_WRAPPER.
    if let Some(log) = std::env::var_os(bench_compile::LOG_ENV) {
        return bench_compile::wrap_rustc(&log);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("fixtures") => fixtures::write_all(&workspace_root().join("tests/models")),
        Some("bench") if args.iter().any(|a| a == "--compile") => {
            let runs = args
                .iter()
                .position(|a| a == "--runs")
                .map(|i| {
                    args.get(i + 1)
                        .and_then(|n| n.parse().ok())
                        .ok_or("--runs takes a number")
                })
                .transpose();
            runs.map_err(Into::into)
                .and_then(|runs| bench_compile::run(&workspace_root(), runs.unwrap_or(3).max(1)))
        }
        Some("bench") if args.iter().any(|a| a == "--layers") => {
            bench_layers::main(&workspace_root(), &args[1..])
        }
        Some("bench") => bench_latency::main(&workspace_root(), &args[1..]),
        Some("eval") => eval::run(&workspace_root(), &args[1..]),
        Some("import") => import::run(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown task `{other}`\n\n{USAGE}").into()),
        None => Err(USAGE.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}
