mod model {
    qbake::quantized_model!("../../models/i64_weight.safetensors");
}

fn main() {}
