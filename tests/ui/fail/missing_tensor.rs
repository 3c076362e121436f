mod model {
    qbake::quantized_model!("../../models/missing_tensor.safetensors");
}

fn main() {}
