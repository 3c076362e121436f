mod model {
    qbake::quantized_model!();
}

fn main() {}
