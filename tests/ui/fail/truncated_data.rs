mod model {
    qbake::quantized_model!("../../models/truncated_data.safetensors");
}

fn main() {}
