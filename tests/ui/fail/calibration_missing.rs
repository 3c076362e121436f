mod model {
    qbake::quantized_model!("../../models/tiny.safetensors", calibration = "../../models/no_such_inputs.safetensors");
}

fn main() {}
