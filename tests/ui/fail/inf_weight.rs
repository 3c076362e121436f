mod model {
    qbake::quantized_model!("../../models/inf_weight.safetensors");
}

fn main() {}
