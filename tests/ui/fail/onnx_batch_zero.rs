mod model {
    qbake::quantized_model!("../../models/mlp.onnx", batch = 0);
}

fn main() {}
