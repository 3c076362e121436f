mod model {
    qbake::quantized_model!("../../models/no_chain.safetensors");
}

fn main() {}
