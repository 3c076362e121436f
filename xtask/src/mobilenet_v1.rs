//! MobileNet V1 (Howard et al. 2017, "MobileNets", width 1.0, 224x224,
//! 1000 classes) as an ONNX file, for the latency benchmark: it is the model
//! issue 7's table of peers is about (569 M multiply-adds, 4.2 M weights).
//!
//! No pretrained MobileNet V1 comes from the sources this project may use,
//! so the weights are synthetic: what a trained network looks like after
//! BatchNormalization is folded (a conv with bias and a per-channel scale
//! that varies), He-scaled so that activations keep their size through the
//! 28 layers, and ReLU6 between them. Latency does not depend on what the
//! weights mean, only on shapes and on values staying ordinary (no
//! denormals, no all-zero rows); its classes mean nothing, so it has no
//! accuracy to measure. Deterministic: every build writes the same bytes.
//!
//! Included by path from `build.rs`: it uses only [`crate::onnx_writer`].

use crate::onnx_writer as onnx;
use crate::xorshift::Rng;

/// `(output channels, stride)` of each depthwise-separable block after the
/// 3x3 stride-2 stem (32 channels): its 3x3 depthwise conv has the stride,
/// its 1x1 conv the output channels.
const BLOCKS: [(usize, usize); 13] = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
];
const STEM: usize = 32;
const CLASSES: usize = 1000;

/// The input's name and NCHW shape, and the output's name.
const INPUT: &str = "input";
const SHAPE: [usize; 4] = [1, 3, 224, 224];
const OUTPUT: &str = "logits";

impl Rng {
    /// Standard normal (Box-Muller): trained weights are bell-shaped, with
    /// a few large ones that set each channel's range.
    fn normal(&mut self) -> f32 {
        let u = 0.5 * (self.uniform() + 1.0);
        let v = self.uniform();
        (-2.0 * (1.0 - u).ln()).sqrt() * (std::f32::consts::PI * v).cos()
    }
}

/// The graph and its initializers, built node by node.
struct Builder {
    rng: Rng,
    nodes: Vec<qbake_codegen::onnx::proto::NodeProto>,
    weights: Vec<qbake_codegen::onnx::proto::TensorProto>,
}

impl Builder {
    /// A folded conv (weights `[out, in / group, k, k]` and a bias) and its
    /// ReLU6, from `x`; returns the output's name.
    fn conv_relu6(
        &mut self,
        name: &str,
        x: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
    ) -> String {
        let depthwise = cin == cout && k > 1;
        let per_group = if depthwise { 1 } else { cin };
        let fan_in = per_group * k * k;
        // He's variance for ReLU layers: 2 / fan_in.
        let he = (2.0 / fan_in as f32).sqrt();
        let mut w = Vec::with_capacity(cout * fan_in);
        let mut b = Vec::with_capacity(cout);
        for _ in 0..cout {
            // BatchNormalization's gamma / sigma, folded: per-channel ranges
            // that differ by up to 4x, as a trained network's do.
            let scale = 1.0 + 0.6 * self.rng.uniform();
            w.extend((0..fan_in).map(|_| he * scale * self.rng.normal()));
            b.push(0.1 * self.rng.uniform() + 0.05);
        }
        let (wn, bn) = (format!("{name}.weight"), format!("{name}.bias"));
        let dims = [cout as i64, per_group as i64, k as i64, k as i64];
        self.weights.push(onnx::f32_tensor(&wn, &dims, &w));
        self.weights.push(onnx::f32_tensor(&bn, &[cout as i64], &b));
        let pad = (k / 2) as i64;
        let mut attrs = vec![
            onnx::attr_ints("kernel_shape", &[k as i64, k as i64]),
            onnx::attr_ints("strides", &[stride as i64, stride as i64]),
            onnx::attr_ints("pads", &[pad; 4]),
        ];
        if depthwise {
            attrs.push(onnx::attr_i("group", cin as i64));
        }
        let conv = format!("{name}.conv");
        self.nodes
            .push(onnx::node("Conv", name, &[x, &wn, &bn], &[&conv], attrs));
        let out = format!("{name}.relu6");
        self.nodes
            .push(onnx::node("Clip", &out, &[&conv, "zero", "six"], &[&out], vec![]));
        out
    }
}

/// The model as ONNX bytes (opset 13).
pub fn onnx_bytes() -> Vec<u8> {
    let mut g = Builder {
        rng: Rng(0x6d6f_6269_6c65_7631),
        nodes: Vec::new(),
        weights: vec![
            onnx::f32_tensor("zero", &[], &[0.0]),
            onnx::f32_tensor("six", &[], &[6.0]),
        ],
    };
    let mut x = g.conv_relu6("stem", INPUT, SHAPE[1], STEM, 3, 2);
    let mut channels = STEM;
    for (i, &(cout, stride)) in BLOCKS.iter().enumerate() {
        x = g.conv_relu6(&format!("block{i}.dw"), &x, channels, channels, 3, stride);
        x = g.conv_relu6(&format!("block{i}.pw"), &x, channels, cout, 1, 1);
        channels = cout;
    }
    g.nodes.push(onnx::node(
        "GlobalAveragePool",
        "pool",
        &[&x],
        &["pooled"],
        vec![],
    ));
    g.nodes.push(onnx::node(
        "Flatten",
        "flatten",
        &["pooled"],
        &["features"],
        vec![onnx::attr_i("axis", 1)],
    ));
    // The classifier has no ReLU after it: Xavier's variance.
    let glorot = (3.0 / channels as f32).sqrt();
    let fc: Vec<f32> = (0..CLASSES * channels)
        .map(|_| glorot * g.rng.uniform())
        .collect();
    let bias: Vec<f32> = (0..CLASSES).map(|_| 0.1 * g.rng.uniform()).collect();
    g.weights.push(onnx::f32_tensor(
        "fc.weight",
        &[CLASSES as i64, channels as i64],
        &fc,
    ));
    g.weights
        .push(onnx::f32_tensor("fc.bias", &[CLASSES as i64], &bias));
    g.nodes.push(onnx::node(
        "Gemm",
        "fc",
        &["features", "fc.weight", "fc.bias"],
        &[OUTPUT],
        vec![onnx::attr_i("transB", 1)],
    ));
    let shape = SHAPE.map(|d| d.to_string());
    let shape: Vec<&str> = shape.iter().map(String::as_str).collect();
    onnx::model(
        13,
        g.nodes,
        g.weights,
        vec![onnx::value(INPUT, &shape)],
        vec![onnx::value(OUTPUT, &["1", "1000"])],
    )
}

#[cfg(test)]
mod tests {
    use crate::bench_latency::MODELS;
    use crate::bench_layers::kind_and_macs;
    use std::path::Path;

    /// The file the bench runs is this generator's, and it is the paper's
    /// network: Table 1's layers, 569 M multiply-adds (Table 8: 569 M),
    /// 4.2 M parameters (Keras's 4,231,976 trainable ones, less the 10,944
    /// BatchNormalization offsets folded into biases).
    #[test]
    fn is_the_papers_mobilenet_v1() {
        let spec = MODELS.iter().find(|s| s.key == "mobilenet_v1").unwrap();
        let bytes = std::fs::read(spec.onnx).unwrap();
        assert!(
            bytes == super::onnx_bytes(),
            "build.rs wrote other bytes than the generator gives"
        );

        let options = qbake_codegen::Options::default();
        let file = qbake_codegen::open_model(Path::new(spec.onnx), &options).unwrap();
        let plan = qbake_codegen::plan_model(&file, &options).unwrap();
        let baked = qbake_codegen::quantize::bake(&plan, &options).unwrap();
        let steps: Vec<(String, usize)> = plan
            .steps
            .iter()
            .map(|s| kind_and_macs(&baked, &s.op, plan.values[s.output].len))
            .collect();
        let count = |kind: &str| steps.iter().filter(|(k, _)| k == kind).count();
        assert_eq!(count("3x3 conv, stride 2"), 1);
        assert_eq!(count("3x3 depthwise, stride 1"), 9);
        assert_eq!(count("3x3 depthwise, stride 2"), 4);
        assert_eq!(count("1x1 conv"), 13);
        assert_eq!(count("dense, K = 1024"), 1);
        let macs: usize = steps.iter().map(|(_, m)| m).sum();
        assert_eq!(macs, 568_740_352);
        use prost::Message;
        let model = qbake_codegen::onnx::proto::ModelProto::decode(&bytes[..]).unwrap();
        let params: i64 = model
            .graph
            .unwrap()
            .initializer
            .iter()
            .map(|t| t.dims.iter().product::<i64>())
            .sum();
        assert_eq!(params, 4_221_032 + 2, "the weights, and Clip's two bounds");
    }
}
