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
        "conv_ops.safetensors",
        "offsets_past_end.safetensors",
    ] {
        let valid = fixture(name);
        for i in 0..120 {
            run(
                hostile::safetensors_model,
                &format!("{name}, mutation {i}"),
                &mutate(&valid, &mut rng),
            );
        }
    }
}

/// Calibration inputs are read at compile time too: a damaged file is an
/// error, and what reads cleanly bakes (tiny's input is `[1, 4]`).
#[test]
fn mutated_calibration_files_give_errors_not_panics() {
    use qbake_codegen::{Calibration, Options, calibration, quantize};
    let mut rng = Rng::new(7);
    let valid = fixture("tiny_calibration.safetensors");
    let model =
        qbake_codegen::reference::Reference::load(&root().join("tests/models/tiny.safetensors")).unwrap();
    let file = std::env::temp_dir().join(format!("qbake-hostile-calibration-{}", std::process::id()));
    let (mut read, mut refused) = (0, 0);
    for i in 0..200 {
        std::fs::write(&file, mutate(&valid, &mut rng)).unwrap();
        let result = std::panic::catch_unwind(|| {
            let ok = calibration::read_inputs(&file, None, &[1, 4]).is_ok();
            let options = Options {
                keep_float_below: 0,
                calibration: Calibration::Inputs(file.clone()),
                ..Options::default()
            };
            assert_eq!(quantize::bake(model.plan(), &options).is_ok(), ok);
            ok
        });
        match result {
            Ok(true) => read += 1,
            Ok(false) => refused += 1,
            Err(_) => panic!("calibration mutation {i} panicked (message above)"),
        }
    }
    std::fs::remove_file(file).unwrap();
    // Both outcomes are reached, or the mutations test nothing.
    assert!(read > 0 && refused > 0, "{read} read, {refused} refused");
}

#[test]
fn mutated_graphs_give_errors_not_panics() {
    let mut rng = Rng::new(2);
    let seeds = files(&root().join("fuzz/corpus/graph_json"));
    for name in [
        "fixed_tensors.json",
        "quantized.json",
        "conv.json",
        "conv_quantized.json",
        "all_ops.json",
    ] {
        let (_, valid) = seeds
            .iter()
            .find(|(p, _)| p.ends_with(name))
            .unwrap_or_else(|| panic!("fuzz/corpus/graph_json/{name} is committed"));
        if name != "all_ops.json" {
            // Valid over the fixed tensors (all_ops.json names the fixture's tensors).
            let file = hostile::file_with_graph(std::str::from_utf8(valid).unwrap());
            qbake_codegen::generate_from_bytes(&file, "seed.safetensors", &Default::default()).unwrap();
        }
        for i in 0..150 {
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
    for name in ["mlp.onnx", "opset10.onnx", "conv.onnx", "conv_opset10.onnx"] {
        let valid = fixture(name);
        // The fixture itself imports and bakes.
        let imported = qbake_codegen::onnx::import(&valid, &Default::default()).unwrap();
        let file = qbake_codegen::onnx::to_safetensors(&imported).unwrap();
        qbake_codegen::generate_from_bytes(&file, name, &Default::default()).unwrap();
        for i in 0..150 {
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

#[test]
fn convolutions_agree_with_their_definitions_on_seeded_inputs() {
    // A first byte of 0x80 to 0xfd selects the convolution section.
    let count: usize = std::env::var("QBAKE_CONV_INPUTS").map_or(200, |v| v.parse().unwrap());
    let mut rng = Rng::new(5);
    for i in 0..count {
        let len = [8, 24, 64, 256, 1024][i % 5];
        let mut data = rng.bytes(len);
        data[0] = 0x80 + (data[0] % 0x7e);
        run(hostile::kernels, &format!("conv input {i}"), &data);
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
        s8_sums: Box::leak(qbake::format::s8_row_sums(&[0; 4], 1, 4).into_boxed_slice()),
        s8_negative_sums: Box::leak(qbake::format::s8_negative_sums(&[0; 4], 1, 4).into_boxed_slice()),
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

/// A graph over the fixed tensors of `hostile::graph_json`: input `x` of
/// `shape`, then `nodes` (JSON objects), the last one's output the graph's.
fn conv_graph(shape: &str, nodes: &[&str]) -> String {
    let last = nodes.last().unwrap();
    let out = last
        .split(r#""output":""#)
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    format!(
        r#"{{"version":1,"inputs":[{{"name":"x","shape":{shape}}}],"outputs":["{out}"],"nodes":[{}]}}"#,
        nodes.join(",")
    )
}

/// Conv, BatchNormalization, Pad and pool nodes with odd attributes over the
/// fixed tensors: each gives its error (docs/robustness.md lists them), or
/// bakes (an empty message), and the harness's checks pass (no panic,
/// tokens parse, within budget). Four of them, whose folded values overflow
/// f32, panicked the code generator before (bug 4).
#[test]
fn conv_graphs_with_odd_attributes_give_errors() {
    let conv = |attrs: &str| {
        format!(r#"{{"name":"c","op":"Conv","inputs":["x"],"output":"y","weight":"k3"{attrs}}}"#)
    };
    let cases: Vec<(&str, String, Vec<String>, &str)> = vec![
        ("weight of rank 3", "[1,4,6,6]".into(), vec![r#"{"name":"c","op":"Conv","inputs":["x"],"output":"y","weight":"r3"}"#.into()], "node `c`: weight `r3` has shape [2, 4, 8]; Conv needs [out_channels, in_channels / group, kh, kw]"),
        ("weight of rank 5", "[1,4,6,6]".into(), vec![r#"{"name":"c","op":"Conv","inputs":["x"],"output":"y","weight":"r5"}"#.into()], "node `c`: weight `r5` has shape [1, 4, 2, 3, 3]; Conv needs [out_channels, in_channels / group, kh, kw]"),
        ("channels that do not match", "[1,3,6,6]".into(), vec![conv("")], "node `c`: weight `k3` of shape [4, 2, 3, 3] with group 1 does not fit an input of 3 channels: in_channels / group must be 3, and group must divide 4 outputs"),
        ("group that does not divide the outputs", "[1,6,6,6]".into(), vec![conv(r#","group":3"#)], "node `c`: weight `k3` of shape [4, 2, 3, 3] with group 3 does not fit an input of 6 channels: in_channels / group must be 2, and group must divide 4 outputs"),
        ("group 0", "[1,2,6,6]".into(), vec![conv(r#","group":0"#)], "node `c`: `group` must be positive, got 0"),
        ("group -1", "[1,2,6,6]".into(), vec![conv(r#","group":-1"#)], "node `c`: `group` must be positive, got -1"),
        ("stride 0", "[1,2,6,6]".into(), vec![conv(r#","strides":[0,1]"#)], "node `c`: `strides` must be positive, got 0"),
        ("3 strides", "[1,2,6,6]".into(), vec![conv(r#","strides":[1,1,1]"#)], "node `c`: `strides` has 3 values; it takes 2 ([h, w])"),
        ("dilation 0", "[1,2,6,6]".into(), vec![conv(r#","dilations":[1,0]"#)], "node `c`: `dilations` must be positive, got 0"),
        ("huge dilation", "[1,2,6,6]".into(), vec![conv(r#","dilations":[4611686018427387904,1]"#)], "node `c`: a 3x3 window (dilation [4611686018427387904, 1]) does not fit the 6x6 input padded by [0, 0, 0, 0]"),
        ("negative pads", "[1,2,6,6]".into(), vec![conv(r#","pads":[0,-1,0,0]"#)], "node `c`: `pads` [0, -1, 0, 0] must be non-negative"),
        ("pads whose sum overflows", "[1,2,6,6]".into(), vec![conv(r#","pads":[9223372036854775807,0,9223372036854775807,0]"#)], "node `c`: a 3x3 window (dilation [1, 1]) does not fit the 6x6 input padded by [9223372036854775807, 0, 9223372036854775807, 0]"),
        ("pads giving an output too large", "[1,2,6,6]".into(), vec![conv(r#","pads":[4611686018427387904,0,4611686018427387904,0]"#)], "node `c`: its output shape [1, 4, 9223372036854775812, 4] overflows"),
        ("kernel larger than the input", "[1,2,3,3]".into(), vec![r#"{"name":"c","op":"Conv","inputs":["x"],"output":"y","weight":"k5"}"#.into()], "node `c`: a 5x5 window (dilation [1, 1]) does not fit the 3x3 input padded by [0, 0, 0, 0]"),
        ("input of rank 2", "[2,2]".into(), vec![conv("")], "node `c`: Conv takes a 4-D input [N, C, H, W], got [2, 2]"),
        ("bias of the wrong size", "[1,2,6,6]".into(), vec![conv(r#","bias":"b8""#)], "node `c`: bias `b8` has shape [8]; expected [4]"),
        ("BN negative var", "[1,4,6,6]".into(), vec![r#"{"name":"bn","op":"BatchNormalization","inputs":["x"],"output":"y","scale":"b","bias":"b","mean":"b","var":"negvar"}"#.into()], "node `bn`: channel 2 has var + epsilon = -0.9999900000002526; it must be positive"),
        ("BN negative epsilon", "[1,4,6,6]".into(), vec![r#"{"name":"bn","op":"BatchNormalization","inputs":["x"],"output":"y","scale":"b","bias":"b","mean":"b","var":"var","epsilon":-10}"#.into()], "node `bn`: channel 0 has var + epsilon = -9.5; it must be positive"),
        ("BN wrong channels", "[1,8,6,6]".into(), vec![r#"{"name":"bn","op":"BatchNormalization","inputs":["x"],"output":"y","scale":"b","bias":"b","mean":"b","var":"var"}"#.into()], "node `bn`: `scale` tensor `b` has shape [4]; expected [8], one value per channel"),
        ("BN overflowing scale folded", "[1,2,6,6]".into(), vec![conv(""), r#"{"name":"bn","op":"BatchNormalization","inputs":["y"],"output":"z","scale":"bigscale","bias":"b","mean":"b","var":"tinyvar","epsilon":0}"#.into()], "tensor `k3` holds -inf at index 0 once BatchNormalization, Mul and Add are folded; baked values must be finite"),
        ("BN overflowing scale alone", "[1,4,6,6]".into(), vec![r#"{"name":"bn","op":"BatchNormalization","inputs":["x"],"output":"y","scale":"bigscale","bias":"b","mean":"b","var":"tinyvar","epsilon":0}"#.into()], "tensor `bn.scale` holds inf at index 0 once BatchNormalization, Mul and Add are folded; baked values must be finite"),
        ("huge weights times BN", "[1,2,6,6]".into(), vec![r#"{"name":"c","op":"Conv","inputs":["x"],"output":"y","weight":"khuge"}"#.into(), r#"{"name":"bn","op":"BatchNormalization","inputs":["y"],"output":"z","scale":"bigscale","bias":"b","mean":"b","var":"var"}"#.into()], "tensor `khuge` holds inf at index 0 once BatchNormalization, Mul and Add are folded; baked values must be finite"),
        ("huge weights times Mul", "[1,2,6,6]".into(), vec![r#"{"name":"c","op":"Conv","inputs":["x"],"output":"y","weight":"khuge"}"#.into(), r#"{"op":"Mul","inputs":["y"],"output":"z","constant":"c411"}"#.into(), r#"{"op":"Mul","inputs":["z"],"output":"z2","constant":"bigscale"}"#.into()], "tensor `khuge` holds -inf at index 0 once BatchNormalization, Mul and Add are folded; baked values must be finite"),
        ("Pad of 6 values", "[1,2,6,6]".into(), vec![r#"{"op":"Pad","inputs":["x"],"output":"y","pads":[0,0,1,0,0,1]}"#.into()], "node `Pad#0`: pads [0, 0, 1, 0, 0, 1] must be 8 non-negative values for a 4-D input"),
        ("Pad of the channel axis", "[1,2,6,6]".into(), vec![r#"{"op":"Pad","inputs":["x"],"output":"y","pads":[0,1,0,0,0,0,0,0]}"#.into()], "node `Pad#0`: pads [0, 1, 0, 0, 0, 0, 0, 0] pad the batch or channel axis; qbake pads the two spatial axes"),
        ("Pad negative", "[1,2,6,6]".into(), vec![r#"{"op":"Pad","inputs":["x"],"output":"y","pads":[0,0,-1,0,0,0,0,0]}"#.into()], "node `Pad#0`: pads [0, 0, -1, 0, 0, 0, 0, 0] must be 8 non-negative values for a 4-D input"),
        ("Pad overflowing", "[1,2,6,6]".into(), vec![r#"{"op":"Pad","inputs":["x"],"output":"y","pads":[0,0,9223372036854775807,0,0,0,9223372036854775807,0]}"#.into()], "node `Pad#0`: pads [0, 0, 9223372036854775807, 0, 0, 0, 9223372036854775807, 0] overflow"),
        ("Pad huge output", "[1,2,6,6]".into(), vec![r#"{"op":"Pad","inputs":["x"],"output":"y","pads":[0,0,4294967296,0,0,0,0,4294967296]}"#.into()], "node `Pad#0`: its output shape [1, 2, 4294967302, 4294967302] overflows"),
        ("Pad infinite value", "[1,2,6,6]".into(), vec![r#"{"op":"Pad","inputs":["x"],"output":"y","pads":[0,0,1,1,0,0,1,1],"value":1e39}"#.into()], "node `Pad#0`: Pad's value must be finite, got inf"),
        ("Pad then Conv, larger than the input", "[1,2,2,2]".into(), vec![r#"{"op":"Pad","inputs":["x"],"output":"p","pads":[0,0,9,9,0,0,9,9]}"#.into(), r#"{"name":"c","op":"Conv","inputs":["p"],"output":"y","weight":"k3","strides":[7,7]}"#.into()], ""),
        ("MaxPool without kernel_shape", "[1,2,6,6]".into(), vec![r#"{"op":"MaxPool","inputs":["x"],"output":"y"}"#.into()], "node `MaxPool#0`: MaxPool needs `kernel_shape`"),
        ("MaxPool kernel 0", "[1,2,6,6]".into(), vec![r#"{"op":"MaxPool","inputs":["x"],"output":"y","kernel_shape":[0,2]}"#.into()], "node `MaxPool#0`: `kernel_shape` must be positive, got 0"),
        ("MaxPool window in the padding", "[1,2,6,6]".into(), vec![r#"{"op":"MaxPool","inputs":["x"],"output":"y","kernel_shape":[2,2],"pads":[2,0,0,0]}"#.into()], "node `MaxPool#0`: pads [2, 0, 0, 0] reach as far as the 2x2 window: a window could lie wholly in the padding"),
        ("AveragePool larger than the input", "[1,2,3,3]".into(), vec![r#"{"op":"AveragePool","inputs":["x"],"output":"y","kernel_shape":[4,4]}"#.into()], "node `AveragePool#0`: a 4x4 window (dilation [1, 1]) does not fit the 3x3 input padded by [0, 0, 0, 0]"),
        ("AveragePool huge stride", "[1,2,6,6]".into(), vec![r#"{"op":"AveragePool","inputs":["x"],"output":"y","kernel_shape":[2,2],"strides":[9223372036854775807,9223372036854775807]}"#.into()], ""),
        ("GlobalAveragePool of rank 2", "[2,4]".into(), vec![r#"{"op":"GlobalAveragePool","inputs":["x"],"output":"y"}"#.into()], "node `GlobalAveragePool#0`: GlobalAveragePool takes a 4-D input [N, C, H, W], got [2, 4]"),
        ("Squeeze of a non-1 axis", "[1,2,6,6]".into(), vec![r#"{"op":"Squeeze","inputs":["x"],"output":"y","axes":[1]}"#.into()], "node `Squeeze#0`: it squeezes axis 1 of shape [1, 2, 6, 6], which has size 2, not 1"),
        ("Unsqueeze out of range", "[1,2,6,6]".into(), vec![r#"{"op":"Unsqueeze","inputs":["x"],"output":"y","axes":[9]}"#.into()], "node `Unsqueeze#0`: axis 9 is out of range for rank 5"),
    ];
    for (what, shape, nodes, want) in cases {
        let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let graph = conv_graph(&shape, &nodes);
        run(hostile::graph_json, what, graph.as_bytes());
        let file = hostile::file_with_graph(&graph);
        for options in [
            qbake_codegen::Options::default(),
            qbake_codegen::Options {
                keep_float_below: 0,
                ..Default::default()
            },
        ] {
            let got = qbake_codegen::generate_from_bytes(&file, "m.safetensors", &options);
            match (got, want) {
                (Ok(_), "") => {}
                (Err(e), want) => assert_eq!(e.message(), want, "{what}"),
                (Ok(_), want) => panic!("{what}: baked, expected `{want}`"),
            }
        }
    }
}
