mod model {
    qbake::quantized_model!("../../models/conv_channels.safetensors");
}

fn main() {}
