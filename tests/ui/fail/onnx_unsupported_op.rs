mod model {
    qbake::quantized_model!("../../models/unsupported_op.onnx");
}

fn main() {}
