mod model {
    qbake::quantized_model!("../../models/tiny.safetensors", calibration = true);
}

fn main() {}
