mod model {
    qbake::quantized_model!("../../models/truncated_header.safetensors");
}

fn main() {}
