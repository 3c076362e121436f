mod model {
    qbake::quantized_model!("../../models/no_graph.safetensors");
}

fn main() {}
