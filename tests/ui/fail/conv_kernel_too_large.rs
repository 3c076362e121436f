mod model {
    qbake::quantized_model!("../../models/conv_kernel_too_large.safetensors");
}

fn main() {}
