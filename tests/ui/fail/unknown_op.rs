mod model {
    qbake::quantized_model!("../../models/unknown_op.safetensors");
}

fn main() {}
