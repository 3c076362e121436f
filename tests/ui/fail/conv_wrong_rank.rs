mod model {
    qbake::quantized_model!("../../models/conv_wrong_rank.safetensors");
}

fn main() {}
