mod model {
    qbake::quantized_model!(
        "../../models/tiny.safetensors",
        bias_correction = false,
        compensated_rounding = false,
        calibration = "../../models/tiny_calibration.safetensors",
    );
}

fn main() {}
