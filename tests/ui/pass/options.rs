// Every option of a safetensors model (`output` and `batch` are for ONNX
// files, pinned in ui/fail), and a trailing comma.
mod per_tensor {
    qbake::quantized_model!(
        "../../models/tiny.safetensors",
        per_channel = false,
        keep_float_below = 1,
        bias_correction = false,
        equalize = true,
        balanced_rounding = false,
        compensated_rounding = false,
        mse_ranges = true,
        reference = true,
        warn_sqnr_below = 0,
    );
}

// Calibration inputs, beside the default options: bias correction
// measures means on them, compensated rounding correlations.
mod calibrated {
    qbake::quantized_model!(
        "../../models/tiny.safetensors",
        keep_float_below = 1,
        calibration = "../../models/tiny_calibration.safetensors",
    );
}

// No data: synthetic images measure the means of layers no batch
// normalization describes.
mod synthetic {
    qbake::quantized_model!(
        "../../models/conv_ops.safetensors",
        keep_float_below = 1,
        calibration = "synthetic",
    );
}

// No calibration: bias correction from batch-norm statistics alone.
mod uncalibrated {
    qbake::quantized_model!(
        "../../models/conv_ops.safetensors",
        keep_float_below = 1,
        calibration = "none",
    );
}

fn main() {
    let _synthetic = synthetic::Model::new(qbake::Kernels::Dequant);
    let _uncalibrated = uncalibrated::Model::new(qbake::Kernels::Hybrid);
    let _calibrated = calibrated::Model::new(qbake::Kernels::Hybrid);
    let qbake::Weight::U8(w) = &per_tensor::weights::FC_WEIGHT else {
        panic!("keep_float_below = 1 quantizes every matrix");
    };
    assert!(!w.params.per_channel());
    assert_eq!((w.rows, w.cols), (3, 4));
    // Packed at compile time: one panel of 16 channels by one group of 4 inputs.
    assert_eq!(w.packed.len(), qbake::format::packed_len(3, 4));
    // The zero point makes 0.0 exact: W[1][0] and W[2][2] are 0.
    assert_eq!(w.dequantized().get(1, 0), 0.0);
    assert_eq!(w.dequantized().get(2, 2), 0.0);
    // `reference = true` bakes the float model beside it.
    let _float = per_tensor::reference::Model::new(qbake::Kernels::Dequant);
    // 64-byte alignment of the baked bytes.
    assert_eq!(w.packed.as_ptr() as usize % 64, 0);
}
