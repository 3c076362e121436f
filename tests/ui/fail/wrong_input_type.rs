mod tiny {
    qbake::quantized_model!("../../models/tiny.safetensors");
}

fn main() {
    let model = tiny::Model::new(qbake::Kernels::Dequant);
    // The model takes [[f32; 4]; 1].
    let input = [[0.0f32; 5]; 1];
    let _ = model.forward(&input);
}
