mod model {
    qbake::quantized_model!("../../models/transposed.safetensors");
}

fn main() {}
