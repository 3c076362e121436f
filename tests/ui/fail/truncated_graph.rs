mod model {
    qbake::quantized_model!("../../models/truncated_graph.safetensors");
}

fn main() {}
