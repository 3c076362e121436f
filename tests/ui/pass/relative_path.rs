// The path resolves against this file's directory, as include_bytes! does,
// even though trybuild compiles it from another crate directory.
mod tiny {
    qbake::quantized_model!("../../models/tiny.safetensors", keep_float_below = 0);
}

fn main() {
    // tiny is y = W x with W = [[0.5, -1, 0.25, 2], [0, 1, -0.5, 0.75], [1.5, -2, 0, 0.125]].
    let x: tiny::Input = [[1.0, 2.0, 3.0, 4.0]];
    let want = [7.25, 3.5, -2.0];
    for kernels in [qbake::Kernels::Dequant, qbake::Kernels::Hybrid] {
        let y = tiny::Model::new(kernels).forward(&x);
        for (got, want) in y[0].iter().zip(want) {
            // Per-channel steps are at most 3.5 / 255; activations 4 / 127.
            assert!((got - want).abs() < 0.2, "{kernels:?}: {got} vs {want}");
        }
    }
    assert_eq!(tiny::INPUT_SHAPE, [1, 4]);
    assert_eq!(tiny::OUTPUT_SHAPE, [1, 3]);
}
