mod model {
    qbake::quantized_model!("../../models/conv_bn_overflow.safetensors");
}

fn main() {}
