//! The small model files the tests bake: valid ones that exercise every op,
//! and damaged ones whose compile errors the trybuild cases pin.
//! Deterministic: running it twice writes the same bytes.

use safetensors::tensor::{Dtype, TensorView};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::error::Error;
use std::path::Path;

use crate::onnx_writer as onnx;
use crate::xorshift::Rng;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// A tensor to write: dtype, shape and little-endian bytes.
#[derive(Clone)]
pub(crate) struct Tensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

pub(crate) fn f32s(shape: &[usize], values: &[f32]) -> Tensor {
    assert_eq!(shape.iter().product::<usize>(), values.len());
    Tensor {
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

impl Rng {
    /// `rows x cols` weights, each row with its own magnitude (so per-channel
    /// ranges matter), roughly He-scaled.
    fn matrix(&mut self, rows: usize, cols: usize) -> Vec<f32> {
        let he = (2.0 / cols as f32).sqrt();
        (0..rows)
            .flat_map(|r| {
                let row_scale = he * (0.25 + 1.75 * ((r * 7) % 11) as f32 / 10.0);
                (0..cols).map(move |_| row_scale).collect::<Vec<_>>()
            })
            .map(|s| s * self.uniform())
            .collect()
    }

    fn vector(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * self.uniform()).collect()
    }
}

pub(crate) fn write(
    dir: &Path,
    name: &str,
    tensors: Vec<(&str, Tensor)>,
    graph: Option<Value>,
) -> Result<()> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, t)| {
            Ok((
                n.to_string(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes)?,
            ))
        })
        .collect::<Result<_>>()?;
    let metadata = graph.map(|g| HashMap::from([("qbake.graph".to_string(), g.to_string())]));
    let bytes = safetensors::serialize(views, metadata)?;
    std::fs::write(dir.join(name), bytes)?;
    Ok(())
}

/// `conv_ops.safetensors`: every convolutional op, in the shapes that
/// catch layout and folding mistakes. A zero Pad and a BatchNormalization
/// fold into a stride-2 convolution with asymmetric pads; a dilated
/// depthwise convolution keeps its Mul and Add (its ReLU stops the fold); a
/// grouped convolution with a BatchNormalization; two 1x1 convolutions into a
/// residual Add; pools at the edges (count_include_pad both ways); then both a
/// Flatten of a spatial value (a layout change back to NCHW) and a global
/// average pool (none needed), into Dense layers and a Softmax.
fn conv_ops(dir: &Path) -> Result<()> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let graph = json!({
        "version": 1,
        "inputs": [{"name": "image", "shape": [1, 3, 11, 10]}],
        "outputs": ["probs"],
        "nodes": [
            {"name": "pad0", "op": "Pad", "inputs": ["image"], "output": "p0", "pads": [0, 0, 0, 1, 0, 0, 1, 0]},
            {"name": "conv1", "op": "Conv", "inputs": ["p0"], "output": "c1", "weight": "conv1.weight", "bias": "conv1.bias",
             "strides": [2, 2], "pads": [1, 0, 0, 1]},
            {"name": "bn1", "op": "BatchNormalization", "inputs": ["c1"], "output": "b1",
             "scale": "bn1.scale", "bias": "bn1.bias", "mean": "bn1.mean", "var": "bn1.var", "epsilon": 0.001},
            {"name": "relu6", "op": "Clip", "inputs": ["b1"], "output": "a1", "min": 0.0, "max": 6.0},
            {"name": "dw", "op": "Conv", "inputs": ["a1"], "output": "d", "weight": "dw.weight", "group": 8,
             "dilations": [2, 2], "pads": [2, 2, 2, 2], "activation": "relu"},
            {"name": "dw_scale", "op": "Mul", "inputs": ["d"], "output": "ds", "constant": "dw.scale"},
            {"name": "dw_shift", "op": "Add", "inputs": ["ds"], "output": "dd", "constant": "dw.shift"},
            {"name": "grouped", "op": "Conv", "inputs": ["dd"], "output": "g", "weight": "grouped.weight", "group": 2,
             "strides": [1, 2], "pads": [0, 1, 0, 1]},
            {"name": "bn2", "op": "BatchNormalization", "inputs": ["g"], "output": "gb",
             "scale": "bn2.scale", "bias": "bn2.bias", "mean": "bn2.mean", "var": "bn2.var"},
            {"name": "relu2", "op": "Relu", "inputs": ["gb"], "output": "ga"},
            {"name": "pw1", "op": "Conv", "inputs": ["ga"], "output": "q1", "weight": "pw1.weight", "bias": "pw1.bias"},
            {"name": "pw2", "op": "Conv", "inputs": ["ga"], "output": "q2", "weight": "pw2.weight"},
            {"name": "res", "op": "Add", "inputs": ["q1", "q2"], "output": "r", "activation": "relu"},
            {"name": "maxpool", "op": "MaxPool", "inputs": ["r"], "output": "m", "kernel_shape": [3, 3],
             "strides": [2, 2], "pads": [1, 1, 1, 1]},
            {"name": "avg_excl", "op": "AveragePool", "inputs": ["m"], "output": "v1", "kernel_shape": [2, 2],
             "pads": [0, 0, 1, 1]},
            {"name": "avg_incl", "op": "AveragePool", "inputs": ["m"], "output": "v2", "kernel_shape": [2, 2],
             "pads": [0, 0, 1, 1], "count_include_pad": true},
            {"name": "pools", "op": "Add", "inputs": ["v1", "v2"], "output": "v"},
            {"name": "flat", "op": "Flatten", "inputs": ["v"], "output": "f"},
            {"name": "fc_flat", "op": "Dense", "inputs": ["f"], "output": "h1", "weight": "fc_flat.weight", "bias": "fc_flat.bias"},
            {"name": "gap", "op": "GlobalAveragePool", "inputs": ["v"], "output": "gp"},
            {"name": "squeeze", "op": "Squeeze", "inputs": ["gp"], "output": "gs", "axes": [2, 3]},
            {"name": "mix", "op": "Add", "inputs": ["h1", "gs"], "output": "h"},
            {"name": "fc", "op": "Dense", "inputs": ["h"], "output": "logits", "weight": "fc.weight", "bias": "fc.bias"},
            {"name": "softmax", "op": "Softmax", "inputs": ["logits"], "output": "probs"}
        ]
    });
    let bn = |rng: &mut Rng, name: &str, c: usize| {
        let var: Vec<f32> = rng.vector(c, 0.5).iter().map(|v| v + 0.6).collect();
        vec![
            (format!("{name}.scale"), f32s(&[c], &rng.vector(c, 1.5))),
            (format!("{name}.bias"), f32s(&[c], &rng.vector(c, 0.5))),
            (format!("{name}.mean"), f32s(&[c], &rng.vector(c, 0.3))),
            (format!("{name}.var"), f32s(&[c], &var)),
        ]
    };
    let mut tensors: Vec<(String, Tensor)> = vec![
        ("conv1.weight".into(), f32s(&[8, 3, 3, 3], &rng.matrix(8, 27))),
        ("conv1.bias".into(), f32s(&[8], &rng.vector(8, 0.2))),
        ("dw.weight".into(), f32s(&[8, 1, 3, 3], &rng.matrix(8, 9))),
        ("dw.scale".into(), f32s(&[8, 1, 1], &rng.vector(8, 2.0))),
        ("dw.shift".into(), f32s(&[1, 8, 1, 1], &rng.vector(8, 0.5))),
        ("grouped.weight".into(), f32s(&[12, 4, 1, 3], &rng.matrix(12, 12))),
        ("pw1.weight".into(), f32s(&[16, 12, 1, 1], &rng.matrix(16, 12))),
        ("pw1.bias".into(), f32s(&[16], &rng.vector(16, 0.2))),
        ("pw2.weight".into(), f32s(&[16, 12, 1, 1], &rng.matrix(16, 12))),
        ("fc_flat.weight".into(), f32s(&[16, 96], &rng.matrix(16, 96))),
        ("fc_flat.bias".into(), f32s(&[16], &rng.vector(16, 0.2))),
        ("fc.weight".into(), f32s(&[10, 16], &rng.matrix(10, 16))),
        ("fc.bias".into(), f32s(&[10], &rng.vector(10, 0.2))),
    ];
    tensors.extend(bn(&mut rng, "bn1", 8));
    tensors.extend(bn(&mut rng, "bn2", 12));
    let tensors = tensors.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    write(dir, "conv_ops.safetensors", tensors, Some(graph))
}

/// A one-Conv graph on an input of `input`, its weight `conv.weight`.
fn conv_graph(input: &[usize], attrs: Value) -> Value {
    let mut node =
        json!({"name": "conv", "op": "Conv", "inputs": ["image"], "output": "y", "weight": "conv.weight"});
    for (k, v) in attrs.as_object().expect("an object") {
        node[k] = v.clone();
    }
    json!({
        "version": 1,
        "inputs": [{"name": "image", "shape": input}],
        "outputs": ["y"],
        "nodes": [node]
    })
}

/// Convolutional models with one fault each, for the trybuild cases: a
/// weight of the wrong rank, input channels the weight does not take, a
/// kernel larger than the padded input, and a BatchNormalization whose
/// scale overflows f32 once folded into the convolution.
fn conv_faults(dir: &Path, rng: &mut Rng) -> Result<()> {
    // The [8, 3, 3, 3] weight flattened to [8, 27], as a Dense would hold it.
    let flat = rng.matrix(8, 27);
    write(
        dir,
        "conv_wrong_rank.safetensors",
        vec![("conv.weight", f32s(&[8, 27], &flat))],
        Some(conv_graph(&[1, 3, 8, 8], json!({"pads": [1, 1, 1, 1]}))),
    )?;
    let w = || f32s(&[8, 3, 3, 3], &flat);
    write(
        dir,
        "conv_channels.safetensors",
        vec![("conv.weight", w())],
        Some(conv_graph(&[1, 4, 8, 8], json!({"pads": [1, 1, 1, 1]}))),
    )?;
    write(
        dir,
        "conv_kernel_too_large.safetensors",
        vec![("conv.weight", w())],
        Some(conv_graph(
            &[1, 3, 2, 2],
            json!({"dilations": [1, 2], "pads": [0, 1, 0, 0]}),
        )),
    )?;
    // gamma 1e30 over the root of a subnormal variance: a scale of 2.7e52.
    let mut graph = conv_graph(&[1, 3, 8, 8], json!({}));
    graph["outputs"] = json!(["z"]);
    graph["nodes"].as_array_mut().expect("nodes").push(json!({
        "name": "bn", "op": "BatchNormalization", "inputs": ["y"], "output": "z",
        "scale": "bn.scale", "bias": "bn.bias", "mean": "bn.mean", "var": "bn.var", "epsilon": 0.0
    }));
    let mut var = vec![1.0; 8];
    var[3] = f32::from_bits(1);
    let mut scale = vec![1.0; 8];
    scale[3] = 1e30;
    write(
        dir,
        "conv_bn_overflow.safetensors",
        vec![
            ("conv.weight", w()),
            ("bn.scale", f32s(&[8], &scale)),
            ("bn.bias", f32s(&[8], &[0.0; 8])),
            ("bn.mean", f32s(&[8], &[0.0; 8])),
            ("bn.var", f32s(&[8], &var)),
        ],
        Some(graph),
    )
}

/// `conv_edges.safetensors`: two images [3, 6, 5] -> a zero Pad of one
/// pixel (folded into the convolution's padding) -> Conv 3x3, 8 channels,
/// with a bias and one exactly zero weight -> depthwise Conv 3x3, padded by
/// one -> NCHW out, with no activation: an output pixel sees the input
/// pixels within 2 rows and columns of it, and nothing else, so the
/// numerics tests can tell where a special value goes and that the padding
/// adds exact zeros.
fn conv_edges(dir: &Path) -> Result<()> {
    let mut rng = Rng(0x2f6b_8a3c_1d4e_5f70);
    let graph = json!({
        "version": 1,
        "inputs": [{"name": "image", "shape": [2, 3, 6, 5]}],
        "outputs": ["y"],
        "nodes": [
            {"name": "pad", "op": "Pad", "inputs": ["image"], "output": "p", "pads": [0, 0, 1, 1, 0, 0, 1, 1]},
            {"name": "conv", "op": "Conv", "inputs": ["p"], "output": "c", "weight": "conv.weight", "bias": "conv.bias"},
            {"name": "dw", "op": "Conv", "inputs": ["c"], "output": "y", "weight": "dw.weight", "group": 8, "pads": [1, 1, 1, 1]}
        ]
    });
    let mut conv = rng.matrix(8, 27);
    conv[0] = 0.0;
    let tensors = vec![
        ("conv.weight", f32s(&[8, 3, 3, 3], &conv)),
        ("conv.bias", f32s(&[8], &rng.vector(8, 0.5))),
        ("dw.weight", f32s(&[8, 1, 3, 3], &rng.matrix(8, 9))),
    ];
    write(dir, "conv_edges.safetensors", tensors, Some(graph))
}

/// The weights of `tiny.safetensors`, a [3, 4] Dense.
const TINY: [f32; 12] = [0.5, -1.0, 0.25, 2.0, 0.0, 1.0, -0.5, 0.75, 1.5, -2.0, 0.0, 0.125];

fn dense_graph(input: &[usize], weight: &str, op: &str) -> Value {
    json!({
        "version": 1,
        "inputs": [{"name": "x", "shape": input}],
        "outputs": ["y"],
        "nodes": [{"name": "fc", "op": op, "inputs": ["x"], "output": "y", "weight": weight}]
    })
}

pub fn write_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    // Every op of the format: Dense (u8 and kept-f32), MatMul, Clip, Add of
    // two activations, Relu, Add of a constant, Reshape, Softmax on a middle
    // axis, Flatten as the output. (The planner folds the constant Add into
    // d4's bias: conv_ops keeps one that cannot fold.)
    let all_ops = json!({
        "version": 1,
        "inputs": [{"name": "x", "shape": [2, 16]}],
        "outputs": ["out"],
        "nodes": [
            {"name": "d1", "op": "Dense", "inputs": ["x"], "output": "h1", "weight": "d1.weight", "bias": "d1.bias", "activation": "relu6"},
            {"name": "m2", "op": "MatMul", "inputs": ["h1"], "output": "h2", "weight": "m2.weight", "bias": "m2.bias"},
            {"name": "clip2", "op": "Clip", "inputs": ["h2"], "output": "h2c", "min": -2.0, "max": 2.0},
            {"name": "res", "op": "Add", "inputs": ["h1", "h2c"], "output": "r"},
            {"name": "relu", "op": "Relu", "inputs": ["r"], "output": "rr"},
            {"name": "m3", "op": "MatMul", "inputs": ["rr"], "output": "h3", "weight": "m3.weight"},
            {"name": "d4", "op": "Dense", "inputs": ["h3"], "output": "h4", "weight": "d4.weight", "bias": "d4.bias"},
            {"name": "shift", "op": "Add", "inputs": ["h4"], "output": "h5", "constant": "shift"},
            {"name": "grid", "op": "Reshape", "inputs": ["h5"], "output": "g", "shape": [0, 4, -1]},
            {"name": "softmax", "op": "Softmax", "inputs": ["g"], "output": "p", "axis": 1},
            {"name": "flat", "op": "Flatten", "inputs": ["p"], "output": "out", "axis": 1}
        ]
    });
    let m2 = rng.matrix(64, 64);
    let m3 = rng.matrix(24, 64);
    let tensors = vec![
        ("d1.weight", f32s(&[64, 16], &rng.matrix(64, 16))),
        ("d1.bias", f32s(&[64], &rng.vector(64, 0.5))),
        // MatMul weights are [K, N]: the transposes of [N, K] matrices.
        ("m2.weight", f32s(&[64, 64], &transpose(&m2, 64, 64))),
        ("m2.bias", f32s(&[64], &rng.vector(64, 0.1))),
        ("m3.weight", f32s(&[64, 24], &transpose(&m3, 24, 64))),
        ("d4.weight", f32s(&[24, 24], &rng.matrix(24, 24))),
        ("d4.bias", f32s(&[24], &rng.vector(24, 0.1))),
        ("shift", f32s(&[1, 24], &rng.vector(24, 1.0))),
    ];
    write(dir, "all_ops.safetensors", tensors, Some(all_ops))?;
    conv_ops(dir)?;
    conv_edges(dir)?;

    let tiny = || vec![("fc.weight", f32s(&[3, 4], &TINY))];
    write(
        dir,
        "tiny.safetensors",
        tiny(),
        Some(dense_graph(&[1, 4], "fc.weight", "Dense")),
    )?;

    // A Dense as long as the hybrid family's int8 rows: tiny's weights
    // widened to 32 inputs (column k is column k % 4 times 1 + (k / 4) / 8,
    // so the exact zeros stay in columns 0 and 2 of every 4).
    let wide: Vec<f32> = (0..3 * 32)
        .map(|i| {
            let (n, k) = (i / 32, i % 32);
            TINY[n * 4 + k % 4] * (1.0 + (k / 4) as f32 / 8.0)
        })
        .collect();
    write(
        dir,
        "wide.safetensors",
        vec![("fc.weight", f32s(&[3, 32], &wide))],
        Some(dense_graph(&[1, 32], "fc.weight", "Dense")),
    )?;

    // Calibration inputs for tiny (input [1, 4]): two inputs, and five
    // values that are no whole number of inputs.
    let calibration = [0.5, 1.0, -0.25, 2.0, 1.5, 0.0, 0.75, -1.0];
    write(
        dir,
        "tiny_calibration.safetensors",
        vec![("x", f32s(&[2, 1, 4], &calibration))],
        None,
    )?;
    write(
        dir,
        "tiny_calibration_short.safetensors",
        vec![("x", f32s(&[5], &calibration[..5]))],
        None,
    )?;

    // Damaged models, one fault each.
    std::fs::write(dir.join("not_safetensors.safetensors"), b"name,weight\nfc,0.5\n")?;
    let mut truncated = Vec::from(1000u64.to_le_bytes());
    truncated.extend_from_slice(br#"{"fc.weight":{"dtype":"F32","#);
    std::fs::write(dir.join("truncated_header.safetensors"), truncated)?;
    let i64s: Vec<u8> = (0..12i64).flat_map(|v| v.to_le_bytes()).collect();
    write(
        dir,
        "i64_weight.safetensors",
        vec![(
            "fc.weight",
            Tensor {
                dtype: Dtype::I64,
                shape: vec![3, 4],
                bytes: i64s,
            },
        )],
        Some(dense_graph(&[1, 4], "fc.weight", "Dense")),
    )?;
    write(dir, "no_graph.safetensors", tiny(), None)?;
    write(
        dir,
        "missing_tensor.safetensors",
        tiny(),
        Some(dense_graph(&[1, 4], "fc2.weight", "Dense")),
    )?;
    write(
        dir,
        "no_chain.safetensors",
        tiny(),
        Some(dense_graph(&[1, 3], "fc.weight", "Dense")),
    )?;
    write(
        dir,
        "unknown_op.safetensors",
        tiny(),
        Some(dense_graph(&[1, 4], "fc.weight", "ConvTranspose")),
    )?;
    let mut nan = rng.matrix(3, 4);
    nan[5] = f32::NAN;
    write(
        dir,
        "nan_weight.safetensors",
        vec![("fc.weight", f32s(&[3, 4], &nan))],
        Some(dense_graph(&[1, 4], "fc.weight", "Dense")),
    )?;
    let cycle = json!({
        "version": 1,
        "inputs": [{"name": "x", "shape": [1, 4]}],
        "outputs": ["y"],
        "nodes": [
            {"name": "a", "op": "Add", "inputs": ["x", "c"], "output": "b"},
            {"name": "b", "op": "Relu", "inputs": ["b"], "output": "c"},
            {"name": "out", "op": "Relu", "inputs": ["c"], "output": "y"}
        ]
    });
    write(dir, "cycle.safetensors", tiny(), Some(cycle))?;
    // Its own generator, so that the fixtures after it keep their values.
    conv_faults(dir, &mut Rng(0x5851_f42d_4c95_7f2d))?;
    hostile_files(dir, &mut rng)?;
    onnx_files(dir, &mut rng)?;
    println!("wrote fixtures to {}", dir.display());
    Ok(())
}

/// A safetensors file whose header is `header` as given (not re-serialized),
/// followed by `data`: for damage the safetensors writer would not produce.
fn raw_file(dir: &Path, name: &str, header: &str, data: &[u8]) -> Result<()> {
    let mut bytes = Vec::from((header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(dir.join(name), bytes)?;
    Ok(())
}

/// Damaged and hostile model files (docs/robustness.md), one fault each, and
/// a valid model small enough to seed the fuzzer, large enough to quantize.
fn hostile_files(dir: &Path, rng: &mut Rng) -> Result<()> {
    std::fs::write(dir.join("empty.safetensors"), b"")?;
    // The last 8 bytes of the 48 bytes of weights are gone.
    let tiny = std::fs::read(dir.join("tiny.safetensors"))?;
    std::fs::write(dir.join("truncated_data.safetensors"), &tiny[..tiny.len() - 8])?;
    // A header length of 2^62 bytes, then a few bytes.
    let mut huge = Vec::from((1u64 << 62).to_le_bytes());
    huge.extend_from_slice(b"{}");
    std::fs::write(dir.join("header_2_62.safetensors"), huge)?;
    // A header of the right length that is not JSON.
    raw_file(
        dir,
        "garbage_header.safetensors",
        "\u{7f}ELF not a header at all \u{1}\u{2}",
        &[0; 48],
    )?;
    let graph = dense_graph(&[1, 4], "fc.weight", "Dense").to_string();
    let header = |tensors: &str| {
        serde_json::json!({"__metadata__": {"qbake.graph": graph}})
            .to_string()
            .replacen('{', &format!("{{{tensors},"), 1)
    };
    let weights: Vec<u8> = (0..12).flat_map(|i| (i as f32 / 8.0).to_le_bytes()).collect();
    // The second tensor's offsets run 48 bytes past the end of the file.
    raw_file(
        dir,
        "offsets_past_end.safetensors",
        &header(
            r#""fc.weight":{"dtype":"F32","shape":[3,4],"data_offsets":[0,48]},"fc.bias":{"dtype":"F32","shape":[12],"data_offsets":[48,96]}"#,
        ),
        &weights,
    )?;
    // A [3, 5] shape (60 bytes) over 48 bytes of data.
    raw_file(
        dir,
        "shape_bytes_mismatch.safetensors",
        &header(r#""fc.weight":{"dtype":"F32","shape":[3,5],"data_offsets":[0,48]}"#),
        &weights,
    )?;
    // A Dense [N, K] weight given to MatMul, which takes [K, N].
    write(
        dir,
        "transposed.safetensors",
        vec![("fc.weight", f32s(&[3, 4], &TINY))],
        Some(dense_graph(&[1, 4], "fc.weight", "MatMul")),
    )?;
    // The graph JSON cut off halfway.
    let full = dense_graph(&[1, 4], "fc.weight", "Dense").to_string();
    let cut = serde_json::Value::String(full[..full.len() / 2].to_string());
    let data: Vec<u8> = TINY.iter().flat_map(|v| v.to_le_bytes()).collect();
    raw_file(
        dir,
        "truncated_graph.safetensors",
        &format!(
            r#"{{"__metadata__":{{"qbake.graph":{cut}}},"fc.weight":{{"dtype":"F32","shape":[3,4],"data_offsets":[0,48]}}}}"#
        ),
        &data,
    )?;
    let mut inf = rng.matrix(3, 4);
    inf[7] = f32::NEG_INFINITY;
    write(
        dir,
        "inf_weight.safetensors",
        vec![("fc.weight", f32s(&[3, 4], &inf))],
        Some(dense_graph(&[1, 4], "fc.weight", "Dense")),
    )?;

    // Valid: [2, 32] -> Dense 48 (quantized: 1536 weights) + ReLU -> Dense 10 -> Softmax.
    let mlp = json!({
        "version": 1,
        "inputs": [{"name": "x", "shape": [2, 32]}],
        "outputs": ["p"],
        "nodes": [
            {"name": "fc1", "op": "Dense", "inputs": ["x"], "output": "h", "weight": "fc1.weight", "bias": "fc1.bias", "activation": "relu"},
            {"name": "fc2", "op": "Dense", "inputs": ["h"], "output": "z", "weight": "fc2.weight", "bias": "fc2.bias"},
            {"name": "softmax", "op": "Softmax", "inputs": ["z"], "output": "p"}
        ]
    });
    let tensors = vec![
        ("fc1.weight", f32s(&[48, 32], &rng.matrix(48, 32))),
        ("fc1.bias", f32s(&[48], &rng.vector(48, 0.1))),
        ("fc2.weight", f32s(&[10, 48], &rng.matrix(10, 48))),
        ("fc2.bias", f32s(&[10], &rng.vector(10, 0.1))),
    ];
    write(dir, "mlp.safetensors", tensors, Some(mlp))
}

/// Small valid ONNX models, encoded here: the fuzzer's seeds and the
/// importer's hostile-input harness start from them.
fn onnx_files(dir: &Path, rng: &mut Rng) -> Result<()> {
    use qbake_codegen::onnx::proto::data_type as dt;
    // x [batch, 32] -> Gemm(transB = 1, alpha, beta) [40] (quantized when baked)
    // -> Relu -> MatMul [10] -> Add(a Constant node) -> Clip(min, max inputs) -> Softmax.
    let gemm = onnx::model(
        13,
        vec![
            onnx::node(
                "Gemm",
                "fc1",
                &["x", "w1", "c1"],
                &["h"],
                vec![
                    onnx::attr_i("transB", 1),
                    onnx::attr_f("alpha", 0.5),
                    onnx::attr_f("beta", 2.0),
                ],
            ),
            onnx::node("Relu", "relu1", &["h"], &["r"], vec![]),
            onnx::node("MatMul", "fc2", &["r", "w2"], &["m"], vec![]),
            onnx::node(
                "Constant",
                "b2_const",
                &[],
                &["b2"],
                vec![onnx::attr_t(
                    "value",
                    onnx::f32_tensor("", &[10], &rng.vector(10, 0.1)),
                )],
            ),
            onnx::node("Add", "fc2_bias", &["m", "b2"], &["a"], vec![]),
            onnx::node("Clip", "clip", &["a", "lo", "hi"], &["c"], vec![]),
            onnx::node(
                "Softmax",
                "softmax",
                &["c"],
                &["y"],
                vec![onnx::attr_i("axis", -1)],
            ),
        ],
        vec![
            onnx::f32_tensor("w1", &[40, 32], &rng.matrix(40, 32)),
            onnx::f32_tensor("c1", &[40], &rng.vector(40, 0.1)),
            onnx::f32_tensor("w2", &[40, 10], &rng.matrix(40, 10)),
            onnx::f32_tensor("lo", &[], &[-4.0]),
            onnx::f32_tensor("hi", &[], &[4.0]),
        ],
        vec![onnx::value("x", &["batch", "32"])],
        vec![onnx::value("y", &["batch", "10"])],
    );
    std::fs::write(dir.join("mlp.onnx"), gemm)?;

    // Opset 10 forms: Identity, Flatten, Dropout, Gemm with transB = 0 and no
    // C, an Add of a [1, N] constant, Clip by attributes, Reshape with 0 and
    // -1, and the old Softmax over every dimension from `axis` on.
    let mut shape = onnx::f32_tensor("shape", &[3], &[]);
    shape.data_type = Some(dt::INT64);
    shape.raw_data = None;
    shape.int64_data = vec![0, 2, -1];
    let opset10 = onnx::model(
        10,
        vec![
            onnx::node("Identity", "id", &["x"], &["i"], vec![]),
            onnx::node("Flatten", "flat", &["i"], &["f"], vec![onnx::attr_i("axis", 1)]),
            onnx::node(
                "Dropout",
                "drop",
                &["f"],
                &["d", "mask"],
                vec![onnx::attr_f("ratio", 0.3)],
            ),
            onnx::node("Gemm", "fc", &["d", "w"], &["g"], vec![]),
            onnx::node("Add", "bias", &["b", "g"], &["a"], vec![]),
            onnx::node(
                "Clip",
                "clip",
                &["a"],
                &["c"],
                vec![onnx::attr_f("min", -1.0), onnx::attr_f("max", 1.0)],
            ),
            onnx::node("Reshape", "reshape", &["c", "shape"], &["r"], vec![]),
            onnx::node("Softmax", "softmax", &["r"], &["y"], vec![]),
        ],
        vec![
            onnx::f32_tensor("w", &[6, 4], &rng.matrix(6, 4)),
            onnx::f32_tensor("b", &[1, 4], &rng.vector(4, 0.1)),
            shape,
        ],
        vec![onnx::value("x", &["N", "2", "3"])],
        vec![onnx::value("y", &["N", "2", "2"])],
    );
    std::fs::write(dir.join("opset10.onnx"), opset10)?;
    // A valid model with an op qbake does not import: the macro's error
    // must name the node and the op, at its argument.
    let unsupported = onnx::model(
        13,
        vec![onnx::node(
            "ConvTranspose",
            "upsample",
            &["x", "w"],
            &["y"],
            vec![],
        )],
        vec![onnx::f32_tensor("w", &[2, 2, 3, 3], &[0.5; 36])],
        vec![onnx::value("x", &["1", "2", "4", "4"])],
        vec![onnx::value("y", &["1", "2", "6", "6"])],
    );
    std::fs::write(dir.join("unsupported_op.onnx"), unsupported)?;
    conv_onnx(dir, rng)
}

/// Small convolutional ONNX models, every conv op the importer maps, in
/// opset 13 (Pad's pads and Squeeze's axes as inputs) and opset 10
/// (attributes): seeds for the fuzzer and the importer's hostile harness.
fn conv_onnx(dir: &Path, rng: &mut Rng) -> Result<()> {
    use qbake_codegen::onnx::proto::data_type as dt;
    let int64s = |name: &str, values: &[i64]| {
        let mut t = onnx::f32_tensor(name, &[values.len() as i64], &[]);
        t.data_type = Some(dt::INT64);
        t.raw_data = None;
        t.int64_data = values.to_vec();
        t
    };
    let bn = |rng: &mut Rng, name: &str, c: usize| {
        let var: Vec<f32> = rng.vector(c, 0.5).iter().map(|v| v + 0.6).collect();
        vec![
            onnx::f32_tensor(&format!("{name}.scale"), &[c as i64], &rng.vector(c, 1.5)),
            onnx::f32_tensor(&format!("{name}.bias"), &[c as i64], &rng.vector(c, 0.5)),
            onnx::f32_tensor(&format!("{name}.mean"), &[c as i64], &rng.vector(c, 0.3)),
            onnx::f32_tensor(&format!("{name}.var"), &[c as i64], &var),
        ]
    };
    let bn_node = |name: &str, x: &str, y: &str| {
        onnx::node(
            "BatchNormalization",
            name,
            &[
                x,
                &format!("{name}.scale"),
                &format!("{name}.bias"),
                &format!("{name}.mean"),
                &format!("{name}.var"),
            ],
            &[y],
            vec![onnx::attr_f("epsilon", 1e-3)],
        )
    };
    // x [N, 3, 9, 8] -> Pad -> Conv 8 (stride 2, pads) -> BN -> Clip (ReLU6)
    // -> depthwise Conv (SAME_UPPER) -> Mul, Add [1, 8, 1, 1] -> Relu
    // -> grouped Conv (group 2) -> MaxPool -> AveragePool -> GlobalAveragePool
    // -> Squeeze -> Gemm 10 -> Softmax.
    let mut initializers = vec![
        int64s("pads", &[0, 0, 0, 1, 0, 0, 1, 0]),
        onnx::f32_tensor("pad_value", &[], &[0.0]),
        onnx::f32_tensor("conv1.weight", &[8, 3, 3, 3], &rng.matrix(8, 27)),
        onnx::f32_tensor("conv1.bias", &[8], &rng.vector(8, 0.2)),
        onnx::f32_tensor("lo", &[], &[0.0]),
        onnx::f32_tensor("hi", &[], &[6.0]),
        onnx::f32_tensor("dw.weight", &[8, 1, 3, 3], &rng.matrix(8, 9)),
        onnx::f32_tensor("dw.scale", &[1, 8, 1, 1], &rng.vector(8, 2.0)),
        onnx::f32_tensor("dw.shift", &[1, 8, 1, 1], &rng.vector(8, 0.5)),
        onnx::f32_tensor("grouped.weight", &[12, 4, 1, 1], &rng.matrix(12, 4)),
        int64s("axes", &[2, 3]),
        onnx::f32_tensor("fc.weight", &[10, 12], &rng.matrix(10, 12)),
        onnx::f32_tensor("fc.bias", &[10], &rng.vector(10, 0.1)),
    ];
    initializers.extend(bn(rng, "bn1", 8));
    let conv13 = onnx::model(
        13,
        vec![
            onnx::node("Pad", "pad", &["x", "pads", "pad_value"], &["p"], vec![]),
            onnx::node(
                "Conv",
                "conv1",
                &["p", "conv1.weight", "conv1.bias"],
                &["c1"],
                vec![
                    onnx::attr_ints("strides", &[2, 2]),
                    onnx::attr_ints("pads", &[1, 0, 0, 1]),
                    onnx::attr_ints("kernel_shape", &[3, 3]),
                ],
            ),
            bn_node("bn1", "c1", "b1"),
            onnx::node("Clip", "relu6", &["b1", "lo", "hi"], &["a1"], vec![]),
            onnx::node(
                "Conv",
                "dw",
                &["a1", "dw.weight"],
                &["d"],
                vec![onnx::attr_i("group", 8), onnx::attr_s("auto_pad", "SAME_UPPER")],
            ),
            onnx::node("Mul", "dw_scale", &["d", "dw.scale"], &["ds"], vec![]),
            onnx::node("Add", "dw_shift", &["ds", "dw.shift"], &["dd"], vec![]),
            onnx::node("Relu", "relu", &["dd"], &["r"], vec![]),
            onnx::node(
                "Conv",
                "grouped",
                &["r", "grouped.weight"],
                &["g"],
                vec![onnx::attr_i("group", 2)],
            ),
            onnx::node(
                "MaxPool",
                "maxpool",
                &["g"],
                &["m"],
                vec![
                    onnx::attr_ints("kernel_shape", &[3, 3]),
                    onnx::attr_ints("strides", &[2, 2]),
                    onnx::attr_ints("pads", &[1, 1, 1, 1]),
                ],
            ),
            onnx::node(
                "AveragePool",
                "avgpool",
                &["m"],
                &["v"],
                vec![
                    onnx::attr_ints("kernel_shape", &[2, 2]),
                    onnx::attr_ints("pads", &[0, 0, 1, 1]),
                    onnx::attr_i("count_include_pad", 1),
                ],
            ),
            onnx::node("GlobalAveragePool", "gap", &["v"], &["gp"], vec![]),
            onnx::node("Squeeze", "squeeze", &["gp", "axes"], &["s"], vec![]),
            onnx::node(
                "Gemm",
                "fc",
                &["s", "fc.weight", "fc.bias"],
                &["z"],
                vec![onnx::attr_i("transB", 1)],
            ),
            onnx::node(
                "Softmax",
                "softmax",
                &["z"],
                &["y"],
                vec![onnx::attr_i("axis", 1)],
            ),
        ],
        initializers,
        vec![onnx::value("x", &["N", "3", "9", "8"])],
        vec![onnx::value("y", &["N", "10"])],
    );
    std::fs::write(dir.join("conv.onnx"), conv13)?;

    // Opset 10: Pad and Squeeze by attributes, a BN folded into a Conv with
    // dilations and SAME_LOWER, a pool with VALID, Flatten, MatMul + Add.
    let mut initializers = vec![
        onnx::f32_tensor("conv.weight", &[6, 2, 3, 3], &rng.matrix(6, 18)),
        onnx::f32_tensor("fc.weight", &[6, 5], &rng.matrix(5, 6)),
        onnx::f32_tensor("fc.bias", &[5], &rng.vector(5, 0.1)),
    ];
    initializers.extend(bn(rng, "bn", 6));
    let conv10 = onnx::model(
        10,
        vec![
            onnx::node(
                "Pad",
                "pad",
                &["x"],
                &["p"],
                vec![onnx::attr_ints("pads", &[0, 0, 1, 2, 0, 0, 2, 1])],
            ),
            onnx::node(
                "Conv",
                "conv",
                &["p", "conv.weight"],
                &["c"],
                vec![
                    onnx::attr_ints("dilations", &[2, 1]),
                    onnx::attr_s("auto_pad", "SAME_LOWER"),
                    onnx::attr_ints("strides", &[1, 2]),
                ],
            ),
            bn_node("bn", "c", "b"),
            onnx::node("Relu", "relu", &["b"], &["r"], vec![]),
            onnx::node(
                "MaxPool",
                "pool",
                &["r"],
                &["m"],
                vec![
                    onnx::attr_ints("kernel_shape", &[2, 2]),
                    onnx::attr_s("auto_pad", "VALID"),
                ],
            ),
            onnx::node("GlobalAveragePool", "gap", &["m"], &["gp"], vec![]),
            onnx::node(
                "Squeeze",
                "squeeze",
                &["gp"],
                &["s"],
                vec![onnx::attr_ints("axes", &[3, 2])],
            ),
            onnx::node("MatMul", "fc", &["s", "fc.weight"], &["z"], vec![]),
            onnx::node("Add", "fc_bias", &["z", "fc.bias"], &["y"], vec![]),
        ],
        initializers,
        vec![onnx::value("x", &["1", "2", "7", "9"])],
        vec![onnx::value("y", &["1", "5"])],
    );
    std::fs::write(dir.join("conv_opset10.onnx"), conv10)?;
    Ok(())
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| values[r * cols + c]))
        .collect()
}
