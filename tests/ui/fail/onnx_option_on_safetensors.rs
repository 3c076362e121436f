mod model {
    qbake::quantized_model!("../../models/tiny.safetensors", batch = 2);
}

fn main() {}
