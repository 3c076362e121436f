mod model {
    qbake::quantized_model!("../../models/empty.safetensors");
}

fn main() {}
