mod model {
    qbake::quantized_model!("../../models/mlp.onnx", output = 1);
}

fn main() {}
