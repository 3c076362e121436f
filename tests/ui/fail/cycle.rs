mod model {
    qbake::quantized_model!("../../models/cycle.safetensors");
}

fn main() {}
