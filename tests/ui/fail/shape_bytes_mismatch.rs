mod model {
    qbake::quantized_model!("../../models/shape_bytes_mismatch.safetensors");
}

fn main() {}
