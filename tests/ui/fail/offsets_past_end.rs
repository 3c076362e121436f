mod model {
    qbake::quantized_model!("../../models/offsets_past_end.safetensors");
}

fn main() {}
