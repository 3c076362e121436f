mod model {
    qbake::quantized_model!("../../models/tiny.safetensors", per_chanel = true);
}

fn main() {}
