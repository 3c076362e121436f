//! Hostile inputs, bounded so that `cargo test` runs them in seconds: the
//! committed fuzz corpus and every crash the fuzzer found, replayed through
//! the fuzz targets' own checks (`qbake_tests::hostile`), then deterministic
//! mutations of the valid fixtures, then one regression test per bug found.
//! docs/robustness.md lists what each case gets.

use qbake_tests::hostile::{self, mutate::Rng, mutate::mutate};
use std::path::{Path, PathBuf};

// Readers must stay within their memory budgets: measured here as in the fuzzer.
#[global_allocator]
static ALLOC: hostile::CountingAlloc = hostile::CountingAlloc;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The files of `dir` (none if it does not exist), in name order.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .collect()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/models").join(name)).unwrap()
}

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 4] = [
    ("safetensors_model", hostile::safetensors_model),
    ("graph_json", hostile::graph_json),
    ("onnx_import", hostile::onnx_import),
    ("kernels", hostile::kernels),
];

/// Runs `target` on `data`, naming the input if it panics.
fn run(target: Target, what: &str, data: &[u8]) {
    if std::panic::catch_unwind(|| target(data)).is_err() {
        panic!("{what} ({} bytes) failed its checks (message above)", data.len());
    }
}

#[test]
fn the_fuzz_corpus_and_every_crash_found_replay_cleanly() {
    // The budgets are checked: the counting allocator is in place.
    let (_, peak) = hostile::measure(|| vec![1u8; 100_000]);
    assert!(peak.is_some_and(|p| p >= 100_000), "{peak:?}");
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let corpus = files(&root().join("fuzz/corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} is committed");
        for (path, data) in corpus
            .iter()
            .chain(&files(&root().join("fuzz/regressions").join(name)))
        {
            run(target, &path.display().to_string(), data);
            replayed += 1;
        }
    }
    println!("replayed {replayed} inputs");
}

#[test]
fn mutated_model_files_give_errors_not_panics() {
    let mut rng = Rng::new(1);
    for name in [
        "tiny.safetensors",
        "mlp.safetensors",
        "all_ops.safetensors",
        "offsets_past_end.safetensors",
    ] {
        let valid = fixture(name);
        for i in 0..150 {
            run(
                hostile::safetensors_model,
                &format!("{name}, mutation {i}"),
                &mutate(&valid, &mut rng),
            );
        }
    }
}

#[test]
fn mutated_graphs_give_errors_not_panics() {
    let mut rng = Rng::new(2);
    let seeds = files(&root().join("fuzz/corpus/graph_json"));
    for name in ["fixed_tensors.json", "quantized.json", "all_ops.json"] {
        let (_, valid) = seeds
            .iter()
            .find(|(p, _)| p.ends_with(name))
            .unwrap_or_else(|| panic!("fuzz/corpus/graph_json/{name} is committed"));
        if name != "all_ops.json" {
            // Valid over the fixed tensors (all_ops.json names the fixture's tensors).
            let file = hostile::file_with_graph(std::str::from_utf8(valid).unwrap());
            qbake_codegen::generate_from_bytes(&file, "seed.safetensors", &Default::default()).unwrap();
        }
        for i in 0..200 {
            run(
                hostile::graph_json,
                &format!("{name}, mutation {i}"),
                &mutate(valid, &mut rng),
            );
        }
    }
}

#[test]
fn mutated_onnx_files_give_errors_not_panics() {
    let mut rng = Rng::new(3);
    for name in ["mlp.onnx", "opset10.onnx"] {
        let valid = fixture(name);
        // The fixture itself imports and bakes.
        qbake_codegen::onnx::import(&valid, &Default::default()).unwrap();
        for i in 0..300 {
            run(
                hostile::onnx_import,
                &format!("{name}, mutation {i}"),
                &mutate(&valid, &mut rng),
            );
        }
    }
}

#[test]
fn kernels_agree_with_their_definitions_on_seeded_inputs() {
    let mut rng = Rng::new(4);
    for i in 0..120 {
        let len = [4, 16, 64, 256, 1024][i % 5];
        let data = rng.bytes(len);
        run(hostile::kernels, &format!("kernel input {i}"), &data);
    }
}

// ---- Regressions: one test per bug the fuzzer or this harness found ----

/// A graph whose Dense weights have a zero dimension ([0, 8], then [8, 0])
/// panicked the code generator (`chunks_exact(0)` while quantizing a K = 0
/// weight), i.e. crashed the compiler. Such tensors are now refused.
#[test]
fn zero_sized_weights_are_refused_not_a_panic() {
    let graph = |weights: &[&str]| {
        let nodes: Vec<String> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let from = if i == 0 { "x".to_string() } else { format!("h{i}") };
                format!(
                    r#"{{"op":"Dense","inputs":["{from}"],"output":"h{}","weight":"{w}"}}"#,
                    i + 1
                )
            })
            .collect();
        let out = format!("h{}", weights.len());
        format!(
            r#"{{"version":1,"inputs":[{{"name":"x","shape":[1,8]}}],"outputs":["{out}"],"nodes":[{}]}}"#,
            nodes.join(",")
        )
    };
    for weights in [&["e0"][..], &["e0", "e1"]] {
        let file = hostile::file_with_graph(&graph(weights));
        for options in [
            qbake_codegen::Options::default(),
            qbake_codegen::Options {
                per_channel: false,
                keep_float_below: 0,
                ..Default::default()
            },
        ] {
            let err = qbake_codegen::generate_from_bytes(&file, "m.safetensors", &options).unwrap_err();
            assert_eq!(
                err.message(),
                "node `Dense#0`: tensor `e0` has shape [0, 8]; tensors must not have a zero dimension"
            );
        }
    }
}

/// Found while writing the kernels fuzz target, fixed in
/// `hybrid::quantize_row`: a row whose largest magnitude is a few hundred
/// subnormal steps got a scale rounded down by up to a half (190 steps / 127
/// -> 1 step), and `x / scale` saturated to -128, which the AVX2 kernel's
/// `sign_epi8` cannot negate. The scale is now rounded up until every value
/// is within ±127.
#[test]
fn quantizer_keeps_subnormal_rows_within_127() {
    use qbake::hybrid::{self, Kernel, QuantizedRows};
    use qbake::{Activation, DequantCache, QuantParams, QuantWeight};
    let step = f32::from_bits(1);
    let x = [-190.0 * step, 190.0 * step, 0.0, 0.0];
    let mut kernels = vec![Kernel::Scalar];
    if Kernel::detect() != Kernel::Scalar {
        kernels.push(Kernel::detect());
    }
    let mut faults = Vec::new();
    let mut rows = QuantizedRows::default();
    for &kernel in &kernels {
        rows.quantize_into(kernel, &x, 4);
        if rows.row(0).iter().any(|&q| q < -127) {
            faults.push(format!("{kernel:?} quantizes {x:?} to {:?}", rows.row(0)));
        }
    }
    // u8 weights 0 (s8 -128) with zero point 128: y = sum_k (0 - 128) q_x[k] x scale.
    let w = QuantWeight {
        name: "w",
        rows: 1,
        cols: 4,
        packed: Box::leak(qbake::format::pack_b_s8(&[0; 4], 1, 4).into_boxed_slice()),
        params: QuantParams {
            min: &[],
            max: &[],
            scale: &[1.0],
            zero_point: &[128],
        },
        cache: DequantCache::new(),
    };
    let mut want = [0.0];
    hybrid::gemm_reference(&rows, &w, None, Activation::None, &mut want);
    for kernel in kernels {
        let mut got = [0.0];
        hybrid::gemm_with(kernel, &rows, &w, None, Activation::None, &mut got);
        if got[0].to_bits() != want[0].to_bits() {
            let (got, want) = (got[0] / step, want[0] / step);
            faults.push(format!(
                "{kernel:?} GEMM gives {got} steps, the definition {want}"
            ));
        }
    }
    assert!(faults.is_empty(), "{}", faults.join("; "));
}
