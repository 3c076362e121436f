mod model {
    qbake::quantized_model!("../../models/tiny.safetensors", calibration = "../../models/tiny_calibration_short.safetensors");
}

fn main() {}
