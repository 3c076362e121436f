//! The small model files the tests bake: valid ones that exercise every op,
//! and damaged ones whose compile errors the trybuild cases pin.
//! Deterministic: running it twice writes the same bytes.

use safetensors::tensor::{Dtype, TensorView};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::error::Error;
use std::path::Path;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// A tensor to write: dtype, shape and little-endian bytes.
struct Tensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn f32s(shape: &[usize], values: &[f32]) -> Tensor {
    assert_eq!(shape.iter().product::<usize>(), values.len());
    Tensor {
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// xorshift64*: reproducible values with no dependency.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// `rows x cols` weights, each row with its own magnitude (so per-channel
    /// ranges matter), roughly He-scaled.
    fn matrix(&mut self, rows: usize, cols: usize) -> Vec<f32> {
        let he = (2.0 / cols as f32).sqrt();
        (0..rows)
            .flat_map(|r| {
                let row_scale = he * (0.25 + 1.75 * ((r * 7) % 11) as f32 / 10.0);
                (0..cols).map(move |_| row_scale).collect::<Vec<_>>()
            })
            .map(|s| s * self.next_f32())
            .collect()
    }

    fn vector(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| scale * self.next_f32()).collect()
    }
}

fn write(dir: &Path, name: &str, tensors: Vec<(&str, Tensor)>, graph: Option<Value>) -> Result<()> {
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
    // axis, Flatten as the output.
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

    let tiny = || {
        vec![(
            "fc.weight",
            f32s(
                &[3, 4],
                &[0.5, -1.0, 0.25, 2.0, 0.0, 1.0, -0.5, 0.75, 1.5, -2.0, 0.0, 0.125],
            ),
        )]
    };
    write(
        dir,
        "tiny.safetensors",
        tiny(),
        Some(dense_graph(&[1, 4], "fc.weight", "Dense")),
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
    println!("wrote fixtures to {}", dir.display());
    Ok(())
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols)
        .flat_map(|c| (0..rows).map(move |r| values[r * cols + c]))
        .collect()
}
