mod model {
    qbake::quantized_model!("../../models/tiny.safetensors", per_channel = 1);
}

fn main() {}
