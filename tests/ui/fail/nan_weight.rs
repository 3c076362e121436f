mod model {
    qbake::quantized_model!("../../models/nan_weight.safetensors");
}

fn main() {}
