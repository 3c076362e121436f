mod model {
    qbake::quantized_model!("../../models/garbage_header.safetensors");
}

fn main() {}
