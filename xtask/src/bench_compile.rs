//! `cargo xtask bench --compile`: what baking a MobileNet-sized model costs
//! the compiler, by the macro and by a build script.
//!
//! Two consumer crates are generated under `target/qbake-bench/compile/`,
//! `consumer_macro` (`quantized_model!`) and `consumer_build` (`build.rs` +
//! `include_model!`), baking the same generated model: a dense MLP with
//! about 4.6M f32 parameters (18 MB), MobileNet v1's size. (It is dense
//! because qbake has no convolutions yet; the cost of baking is per weight
//! byte and per tensor, not per op.) Both depend on qbake by path and share
//! one target directory, with dependencies built before anything is timed.
//!
//! What is timed, per crate, `cargo build --release` in its directory:
//! - clean build: after `cargo clean --release -p <crate>`, which removes the
//!   crate and its build script but no dependency;
//! - rebuild after an edit of `src/unrelated.rs`, a module the model does
//!   not touch;
//! - no-op builds (expected fresh) and a build after editing the model.
//!
//! Every rustc is run through this binary as `RUSTC_WRAPPER`, which logs
//! each compilation's crate, wall time and peak memory (max RSS, from
//! `/usr/bin/time`; the linker rustc runs is included): rustc's share of each
//! build is read from that log, not guessed.

use serde_json::{Value, json};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Set, to a log file, when this binary runs as cargo's `RUSTC_WRAPPER`.
pub const LOG_ENV: &str = "QBAKE_BENCH_RUSTC_LOG";

/// Layer widths of the model: 1024 -> 1152 -> 1152 -> 960 -> 1000, ReLU
/// between, softmax at the end; 4,576,936 parameters.
const WIDTHS: [usize; 5] = [1024, 1152, 1152, 960, 1000];

const TIME: &str = "/usr/bin/time";

pub fn run(root: &Path, runs: usize) -> Result<()> {
    let bench = root.join("target/qbake-bench");
    let dir = bench.join("compile");
    std::fs::create_dir_all(&dir)?;
    let model = dir.join("model.safetensors");
    let params = write_model(&model, false)?;
    let model_bytes = std::fs::metadata(&model)?.len();
    let mb = model_bytes as f64 / 1e6;
    println!(
        "model: dense MLP {WIDTHS:?}, {params} f32 parameters, {mb:.1} MB float file ({})",
        model.display()
    );

    let mut results = Vec::new();
    for consumer in [
        Consumer::new(&dir, Route::Macro),
        Consumer::new(&dir, Route::BuildScript),
    ] {
        consumer.write(root)?;
        println!("{}: building dependencies (not timed)", consumer.name);
        consumer.cargo(&dir)?.success()?;
        results.push(measure(&consumer, &dir, &model, runs)?);
        // Leave the model as generated for the next crate.
        write_model(&model, false)?;
    }

    let report = json!({
        "model": {
            "layers": WIDTHS,
            "parameters": params,
            "float_bytes": model_bytes,
        },
        "runs": runs,
        "macro": results[0],
        "build_script": results[1],
        "targets": targets(&results[0], &results[1], mb),
    });
    print_table(&report, mb);
    let out = bench.join("compile.json");
    std::fs::write(&out, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("\nwrote {}", out.display());
    // Timings are reported; a rebuild that is missing or spurious is a bug.
    let only_model = &report["targets"]["only_a_model_edit_rebuilds"];
    if only_model["macro"] != true || only_model["build_script"] != true {
        return Err("a model edit did not rebuild, or something else did (see above)".into());
    }
    Ok(())
}

/// How a consumer bakes the model.
#[derive(Clone, Copy, PartialEq)]
enum Route {
    Macro,
    BuildScript,
}

/// A generated crate that bakes the model.
struct Consumer {
    name: &'static str,
    dir: PathBuf,
    route: Route,
}

impl Consumer {
    fn new(dir: &Path, route: Route) -> Self {
        let name = match route {
            Route::Macro => "consumer_macro",
            Route::BuildScript => "consumer_build",
        };
        Consumer {
            name,
            dir: dir.join(name),
            route,
        }
    }

    /// Writes the crate's files, leaving unchanged ones untouched (their
    /// mtimes are what cargo compares).
    fn write(&self, root: &Path) -> Result<()> {
        let (build_deps, model_mod) = match self.route {
            Route::Macro => (
                String::new(),
                r#"qbake::quantized_model!("../../model.safetensors");"#,
            ),
            Route::BuildScript => (
                format!(
                    "\n[build-dependencies]\nqbake-codegen = {{ path = {:?} }}\n",
                    root.join("codegen")
                ),
                r#"qbake::include_model!("model");"#,
            ),
        };
        let manifest = format!(
            r#"[package]
name = "{name}"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
qbake = {{ path = {runtime:?} }}
{build_deps}
# The quantizer runs in the proc macro or the build script: optimized, as
# qbake's README advises (release builds otherwise run it at opt-level 0).
[profile.release.build-override]
opt-level = 3

[workspace]
"#,
            name = self.name,
            runtime = root.join("runtime"),
        );
        let main = format!(
            r#"mod model {{
    {model_mod}
}}
mod unrelated;

fn main() {{
    let mut input = qbake::boxed_zeroed::<model::Input>();
    for (i, x) in input.as_flattened_mut().iter_mut().enumerate() {{
        *x = (i % 17) as f32 / 17.0;
    }}
    let out = model::Model::new(qbake::Kernels::Hybrid).forward(&input);
    let sum: f64 = out.as_flattened().iter().enumerate().map(|(i, &y)| (i + 1) as f64 * f64::from(y)).sum();
    println!("{{}} {{sum:.9e}}", unrelated::NOTE);
}}
"#
        );
        std::fs::create_dir_all(self.dir.join("src"))?;
        write_if_changed(&self.dir.join("Cargo.toml"), &manifest)?;
        write_if_changed(&self.dir.join("src/main.rs"), &main)?;
        let unrelated = self.dir.join("src/unrelated.rs");
        if !unrelated.exists() {
            self.edit_unrelated(0)?;
        }
        write_if_changed(
            &self.dir.join("README.md"),
            "Generated by `cargo xtask bench --compile`.\n",
        )?;
        if self.route == Route::BuildScript {
            write_if_changed(
                &self.dir.join("build.rs"),
                "fn main() -> Result<(), qbake_codegen::Error> {\n    \
                 qbake_codegen::Model::new(\"../model.safetensors\").emit(\"model\")\n}\n",
            )?;
        }
        // The versions qbake is tested with (cargo drops what the crate does not use).
        write_if_changed(
            &self.dir.join("Cargo.lock"),
            &std::fs::read_to_string(root.join("Cargo.lock"))?,
        )?;
        Ok(())
    }

    fn edit_unrelated(&self, n: usize) -> Result<()> {
        let text = format!(
            "//! Edited by the benchmark; the model does not use it.\n\npub const NOTE: &str = \"edit {n}\";\n"
        );
        std::fs::write(self.dir.join("src/unrelated.rs"), text)?;
        Ok(())
    }

    /// `cargo build --release -v` in the crate, every rustc logged.
    fn cargo(&self, dir: &Path) -> Result<Build> {
        let log = dir.join("rustc.log");
        let _ = std::fs::remove_file(&log);
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let start = Instant::now();
        let output = Command::new(cargo)
            .args(["build", "--release", "-v"])
            .current_dir(&self.dir)
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .env("RUSTC_WRAPPER", std::env::current_exe()?)
            .env(LOG_ENV, &log)
            .output()?;
        let wall_s = start.elapsed().as_secs_f64();
        let rustc = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(serde_json::from_str)
            .collect::<std::result::Result<Vec<Value>, _>>()?;
        Ok(Build {
            name: self.name,
            ok: output.status.success(),
            wall_s,
            log: String::from_utf8_lossy(&output.stderr).into_owned(),
            rustc,
        })
    }

    fn clean(&self, dir: &Path) -> Result<()> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["clean", "--release", "--quiet", "-p", self.name])
            .current_dir(&self.dir)
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .status()?;
        if !status.success() {
            return Err(format!("cargo clean -p {} failed", self.name).into());
        }
        Ok(())
    }

    /// What the built binary prints: changes when the baked model does.
    fn run_binary(&self, dir: &Path) -> Result<String> {
        let out = Command::new(dir.join("target/release").join(self.name)).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// One `cargo build` and the rustc runs it made.
struct Build {
    name: &'static str,
    ok: bool,
    wall_s: f64,
    log: String,
    rustc: Vec<Value>,
}

impl Build {
    fn success(self) -> Result<Self> {
        if self.ok {
            Ok(self)
        } else {
            Err(format!("cargo build of {} failed:\n{}", self.name, self.log).into())
        }
    }

    /// The rustc run of the consumer crate itself, or of its build script.
    fn rustc_of(&self, build_script: bool) -> Option<&Value> {
        self.rustc.iter().find(|r| {
            if build_script {
                r["crate"] == "build_script_build" && r["source"] == "build.rs"
            } else {
                r["crate"] == self.name
            }
        })
    }

    /// Cargo built nothing: no rustc ran and it says the crate is fresh.
    fn fresh(&self) -> bool {
        self.rustc.is_empty() && self.log.contains(&format!("Fresh {}", self.name))
    }

    fn ran_build_script(&self) -> bool {
        self.log
            .lines()
            .any(|l| l.contains("Running") && l.contains("build-script-build"))
    }

    /// Cargo's reason for rebuilding the crate (`-v` prints it).
    fn dirty_reason(&self) -> Option<String> {
        self.log
            .lines()
            .find(|l| l.contains(&format!("Dirty {}", self.name)))
            .map(|l| l.trim().to_string())
    }

    fn summary(&self) -> Value {
        let field = |r: Option<&Value>, key: &str| r.map_or(Value::Null, |r| r[key].clone());
        let (main, script) = (self.rustc_of(false), self.rustc_of(true));
        let rustc_s: f64 = [main, script]
            .iter()
            .flatten()
            .filter_map(|r| r["wall_s"].as_f64())
            .sum();
        json!({
            "cargo_wall_s": self.wall_s,
            "rustc_consumer_wall_s": field(main, "wall_s"),
            "rustc_consumer_max_rss_kb": field(main, "max_rss_kb"),
            "rustc_build_rs_wall_s": field(script, "wall_s"),
            // Cargo's own work and, when it reran, the build script's run.
            "rest_wall_s": self.wall_s - rustc_s,
            "build_script_ran": self.ran_build_script(),
            "rustc": self.rustc,
        })
    }
}

fn measure(consumer: &Consumer, dir: &Path, model: &Path, runs: usize) -> Result<Value> {
    let name = consumer.name;
    let mut clean = Vec::new();
    for i in 0..runs {
        consumer.clean(dir)?;
        let b = consumer.cargo(dir)?.success()?;
        if b.rustc_of(false).is_none() {
            return Err(format!("{name}: the clean build ran no rustc for the crate").into());
        }
        println!("{name}: clean build {}/{runs}: {:.2} s", i + 1, b.wall_s);
        clean.push(b.summary());
    }

    // Nothing changed: nothing may be rebuilt.
    let noop = consumer.cargo(dir)?.success()?;
    // Files that are not sources of the crate: its README, and a file beside the model.
    touch(&consumer.dir.join("README.md"))?;
    let beside = dir.join("notes.txt");
    std::fs::write(&beside, "not a model\n")?;
    let touched = consumer.cargo(dir)?.success()?;
    println!(
        "{name}: no-op build {:.2} s ({}), after touching README.md and a file beside the model: {}",
        noop.wall_s,
        if noop.fresh() { "fresh" } else { "REBUILT" },
        if touched.fresh() { "fresh" } else { "REBUILT" }
    );

    let mut unrelated = Vec::new();
    for i in 0..runs {
        consumer.edit_unrelated(i + 1)?;
        let b = consumer.cargo(dir)?.success()?;
        println!(
            "{name}: rebuild after editing src/unrelated.rs {}/{runs}: {:.2} s",
            i + 1,
            b.wall_s
        );
        unrelated.push(b.summary());
    }

    let before = consumer.run_binary(dir)?;
    write_model(model, true)?;
    let edited = consumer.cargo(dir)?.success()?;
    let after = consumer.run_binary(dir)?;
    let rebuilt = edited.rustc_of(false).is_some();
    println!(
        "{name}: after editing the model: {:.2} s, {} ({}); output {before:?} -> {after:?}",
        edited.wall_s,
        if rebuilt { "rebuilt" } else { "NOT REBUILT" },
        edited.dirty_reason().unwrap_or_default()
    );

    Ok(json!({
        "crate": name,
        "clean": { "median": median(&clean), "runs": clean },
        "unrelated_edit": { "median": median(&unrelated), "runs": unrelated },
        "noop": { "summary": noop.summary(), "fresh": noop.fresh() },
        "after_touching_non_sources": { "summary": touched.summary(), "fresh": touched.fresh() },
        "model_edit": {
            "summary": edited.summary(),
            "rebuilt": rebuilt,
            "cargo_says": edited.dirty_reason(),
            "output_before": before,
            "output_after": after,
        },
    }))
}

/// Per key, the median of the runs' numbers.
fn median(runs: &[Value]) -> Value {
    let mut out = serde_json::Map::new();
    for key in [
        "cargo_wall_s",
        "rustc_consumer_wall_s",
        "rustc_consumer_max_rss_kb",
        "rustc_build_rs_wall_s",
        "rest_wall_s",
    ] {
        let mut v: Vec<f64> = runs.iter().filter_map(|r| r[key].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        out.insert(key.into(), v.get(v.len() / 2).map_or(Value::Null, |&m| json!(m)));
    }
    Value::Object(out)
}

fn targets(macro_: &Value, build: &Value, mb: f64) -> Value {
    let clean = &macro_["clean"]["median"];
    let per_mb = clean["cargo_wall_s"].as_f64().unwrap_or(f64::NAN) / mb;
    let rss_mb = clean["rustc_consumer_max_rss_kb"]
        .as_f64()
        .map(|kb| kb * 1024.0 / 1e6);
    let rss_limit = 4.0 * mb + 300.0;
    let rebuild = build["unrelated_edit"]["median"]["cargo_wall_s"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let only_model = |r: &Value| {
        r["noop"]["fresh"] == true
            && r["after_touching_non_sources"]["fresh"] == true
            && r["model_edit"]["rebuilt"] == true
            && r["model_edit"]["output_before"] != r["model_edit"]["output_after"]
    };
    json!({
        "macro_s_per_mb": { "value": per_mb, "limit": 0.3, "met": per_mb <= 0.3 },
        "macro_peak_rustc_mb": { "value": rss_mb, "limit": rss_limit, "met": rss_mb.map(|m| m <= rss_limit) },
        "build_script_unrelated_rebuild_s": { "value": rebuild, "limit": 1.0, "met": rebuild < 1.0 },
        "only_a_model_edit_rebuilds": {
            "macro": only_model(macro_),
            "build_script": only_model(build),
        },
    })
}

fn print_table(r: &Value, mb: f64) {
    let s = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.2} s"));
    let m = |v: &Value| {
        v.as_f64()
            .map_or("-".to_string(), |kb| format!("{:.0} MB", kb * 1024.0 / 1e6))
    };
    let yes = |v: &Value| if v == true { "yes" } else { "NO" }.to_string();
    let (a, b) = (&r["macro"], &r["build_script"]);
    let rows: Vec<(&str, String, String)> = vec![
        (
            "clean build: cargo build (wall)",
            s(&a["clean"]["median"]["cargo_wall_s"]),
            s(&b["clean"]["median"]["cargo_wall_s"]),
        ),
        (
            "  of which rustc, the crate",
            s(&a["clean"]["median"]["rustc_consumer_wall_s"]),
            s(&b["clean"]["median"]["rustc_consumer_wall_s"]),
        ),
        (
            "  of which rustc, build.rs",
            s(&a["clean"]["median"]["rustc_build_rs_wall_s"]),
            s(&b["clean"]["median"]["rustc_build_rs_wall_s"]),
        ),
        (
            "  the rest: cargo, running build.rs",
            s(&a["clean"]["median"]["rest_wall_s"]),
            s(&b["clean"]["median"]["rest_wall_s"]),
        ),
        (
            "peak rustc memory (max RSS), the crate",
            m(&a["clean"]["median"]["rustc_consumer_max_rss_kb"]),
            m(&b["clean"]["median"]["rustc_consumer_max_rss_kb"]),
        ),
        (
            "rebuild after editing src/unrelated.rs",
            s(&a["unrelated_edit"]["median"]["cargo_wall_s"]),
            s(&b["unrelated_edit"]["median"]["cargo_wall_s"]),
        ),
        (
            "  build script reran",
            "-".into(),
            yes(&b["unrelated_edit"]["runs"][0]["build_script_ran"]).replace("NO", "no"),
        ),
        (
            "no-op build (fresh?)",
            format!(
                "{} ({})",
                s(&a["noop"]["summary"]["cargo_wall_s"]),
                yes(&a["noop"]["fresh"])
            ),
            format!(
                "{} ({})",
                s(&b["noop"]["summary"]["cargo_wall_s"]),
                yes(&b["noop"]["fresh"])
            ),
        ),
        (
            "touch README + file beside model (fresh?)",
            yes(&a["after_touching_non_sources"]["fresh"]),
            yes(&b["after_touching_non_sources"]["fresh"]),
        ),
        (
            "edit the model: rebuilt, new output?",
            format!(
                "{} ({})",
                s(&a["model_edit"]["summary"]["cargo_wall_s"]),
                yes(&json!(r["targets"]["only_a_model_edit_rebuilds"]["macro"]))
            ),
            format!(
                "{} ({})",
                s(&b["model_edit"]["summary"]["cargo_wall_s"]),
                yes(&json!(r["targets"]["only_a_model_edit_rebuilds"]["build_script"]))
            ),
        ),
    ];
    println!(
        "\ncompile cost of an {mb:.1} MB float model, release, median of {} runs\n",
        r["runs"]
    );
    println!("{:<44} {:>16} {:>16}", "", "macro", "build script");
    for (label, x, y) in rows {
        println!("{label:<44} {x:>16} {y:>16}");
    }
    let t = &r["targets"];
    println!("\ntargets:");
    println!(
        "  macro: {:.3} s per MB of float weights (<= 0.3): {}",
        t["macro_s_per_mb"]["value"].as_f64().unwrap_or(f64::NAN),
        yes(&t["macro_s_per_mb"]["met"])
    );
    println!(
        "  macro: peak rustc memory {:.0} MB (<= 4 x {mb:.1} + 300 = {:.0} MB): {}",
        t["macro_peak_rustc_mb"]["value"].as_f64().unwrap_or(f64::NAN),
        t["macro_peak_rustc_mb"]["limit"].as_f64().unwrap_or(f64::NAN),
        yes(&t["macro_peak_rustc_mb"]["met"])
    );
    println!(
        "  build script: rebuild after an unrelated edit {:.2} s (< 1 s): {}",
        t["build_script_unrelated_rebuild_s"]["value"]
            .as_f64()
            .unwrap_or(f64::NAN),
        yes(&t["build_script_unrelated_rebuild_s"]["met"])
    );
    println!(
        "  both: a model edit rebuilds, nothing else does: macro {}, build script {}",
        yes(&t["only_a_model_edit_rebuilds"]["macro"]),
        yes(&t["only_a_model_edit_rebuilds"]["build_script"])
    );
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text)?;
    }
    Ok(())
}

/// Sets the file's mtime to now, contents unchanged.
fn touch(path: &Path) -> Result<()> {
    std::fs::File::options()
        .append(true)
        .open(path)?
        .set_modified(std::time::SystemTime::now())?;
    Ok(())
}

/// Writes the model: He-scaled random weights, a fixed seed. `edited` moves
/// one bias of the last layer, as a retrained model would, so the baked
/// model's output changes. Returns the number of parameters.
fn write_model(path: &Path, edited: bool) -> Result<usize> {
    use safetensors::tensor::{Dtype, TensorView};
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut nodes = Vec::new();
    let mut params = 0;
    for (i, pair) in WIDTHS.windows(2).enumerate() {
        let (k, n) = (pair[0], pair[1]);
        let he = (2.0 / k as f32).sqrt();
        let weight: Vec<u8> = (0..n * k).flat_map(|_| (he * next()).to_le_bytes()).collect();
        let mut bias: Vec<f32> = (0..n).map(|_| 0.1 * next()).collect();
        let last = i + 2 == WIDTHS.len();
        if last && edited {
            bias[0] += 4.0;
        }
        params += n * k + n;
        tensors.push((format!("fc{i}.weight"), vec![n, k], weight));
        tensors.push((
            format!("fc{i}.bias"),
            vec![n],
            bias.iter().flat_map(|b| b.to_le_bytes()).collect(),
        ));
        let input = if i == 0 { "x".to_string() } else { format!("h{i}") };
        let output = if last {
            "logits".to_string()
        } else {
            format!("h{}", i + 1)
        };
        nodes.push(json!({
            "name": format!("fc{i}"), "op": "Dense", "inputs": [input], "output": output,
            "weight": format!("fc{i}.weight"), "bias": format!("fc{i}.bias"),
            "activation": if last { "none" } else { "relu" },
        }));
    }
    nodes.push(json!({"name": "softmax", "op": "Softmax", "inputs": ["logits"], "output": "probs"}));
    let graph = json!({
        "version": 1,
        "inputs": [{"name": "x", "shape": [1, WIDTHS[0]]}],
        "outputs": ["probs"],
        "nodes": nodes,
    });
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes)?)))
        .collect::<Result<Vec<_>>>()?;
    let metadata = std::collections::HashMap::from([("qbake.graph".to_string(), graph.to_string())]);
    let bytes = safetensors::serialize(views, Some(metadata))?;
    if std::fs::read(path).ok().as_deref() != Some(&bytes[..]) {
        std::fs::write(path, bytes)?;
    }
    Ok(params)
}

/// Runs as cargo's `RUSTC_WRAPPER`: `rustc ARGS...`, logging each compilation
/// (crate, source, wall time, max RSS) as one JSON line in `log`.
pub fn wrap_rustc(log: &OsStr) -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(rustc) = args.next() else {
        eprintln!("xtask: run as RUSTC_WRAPPER without a rustc to run");
        return ExitCode::FAILURE;
    };
    let args: Vec<OsString> = args.collect();
    let after = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.to_string_lossy().into_owned())
    };
    // `___` is cargo asking rustc about the target, not a compilation.
    let crate_name = after("--crate-name").filter(|c| c != "___");
    let time_out = PathBuf::from(log).with_extension(format!("time-{}", std::process::id()));
    let timed = crate_name.is_some() && Path::new(TIME).is_file();
    let start = Instant::now();
    let status = if timed {
        Command::new(TIME)
            .arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(&time_out)
            .arg(&rustc)
            .args(&args)
            .status()
    } else {
        Command::new(&rustc).args(&args).status()
    };
    let wall_s = start.elapsed().as_secs_f64();
    let status = match status {
        Ok(status) => status,
        Err(e) => {
            eprintln!("xtask: cannot run {}: {e}", rustc.to_string_lossy());
            return ExitCode::FAILURE;
        }
    };
    if let Some(crate_name) = crate_name {
        // time(1) writes a "Command exited with non-zero status" line before the figure.
        let max_rss_kb = std::fs::read_to_string(&time_out)
            .ok()
            .and_then(|t| t.lines().last()?.trim().parse::<u64>().ok());
        let _ = std::fs::remove_file(&time_out);
        let source = args
            .iter()
            .map(|a| a.to_string_lossy())
            .find(|a| a.ends_with(".rs"))
            .map(|a| a.into_owned());
        let line =
            json!({ "crate": crate_name, "source": source, "wall_s": wall_s, "max_rss_kb": max_rss_kb });
        let logged = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = logged {
            eprintln!("xtask: cannot log to {}: {e}", PathBuf::from(log).display());
        }
    }
    ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8)
}
