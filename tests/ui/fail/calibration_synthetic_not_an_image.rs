mod model {
    qbake::quantized_model!("../../models/tiny.safetensors", calibration = "synthetic");
}

fn main() {}
