mod model {
    qbake::quantized_model!("../../models/not_safetensors.safetensors");
}

fn main() {}
