mod model {
    qbake::quantized_model!("../../models/tiny.safetensors", per_channel = true, per_channel = false);
}

fn main() {}
