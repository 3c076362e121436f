mod model {
    qbake::quantized_model!(tiny);
}

fn main() {}
