mod model {
    qbake::quantized_model!("../../models/mlp.onnx", output = "logits");
}

fn main() {}
