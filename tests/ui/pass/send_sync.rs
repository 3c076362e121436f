mod tiny {
    qbake::quantized_model!("../../models/tiny.safetensors");
}

fn assert_send_sync<T: Send + Sync + Copy + 'static>() {}

fn main() {
    assert_send_sync::<tiny::Model>();
    let model = tiny::Model::new(qbake::Kernels::Hybrid).with_threads(2);
    assert_eq!(model.threads(), 2);
    let outputs: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|i| s.spawn(move || model.forward(&[[i as f32; 4]]))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(*outputs[0], [[0.0; 3]]);
    assert_eq!(*outputs[2], *tiny::Model::new(qbake::Kernels::Hybrid).forward(&[[2.0; 4]]));
}
