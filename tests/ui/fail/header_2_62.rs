mod model {
    qbake::quantized_model!("../../models/header_2_62.safetensors");
}

fn main() {}
