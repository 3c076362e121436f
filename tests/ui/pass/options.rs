// Every option, and a trailing comma.
mod per_tensor {
    qbake::quantized_model!("../../models/tiny.safetensors", per_channel = false, keep_float_below = 1,);
}

fn main() {
    let qbake::Weight::U8(w) = &per_tensor::weights::FC_WEIGHT else {
        panic!("keep_float_below = 1 quantizes every matrix");
    };
    assert!(!w.params.per_channel());
    assert_eq!((w.rows, w.cols, w.data.len()), (3, 4, 12));
    // The zero point makes 0.0 exact: W[1][0] and W[2][2] are 0.
    assert_eq!(w.dequantized()[4], 0.0);
    assert_eq!(w.dequantized()[10], 0.0);
    // 64-byte alignment of the baked bytes.
    assert_eq!(w.data.as_ptr() as usize % 64, 0);
}
