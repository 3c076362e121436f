mod model {
    qbake::quantized_model!("../../models/does_not_exist.safetensors");
}

fn main() {}
