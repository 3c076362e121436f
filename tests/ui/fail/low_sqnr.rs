// Warnings denied, so the build stops on qbake's: one per weight under the threshold.
#![deny(deprecated)]

mod model {
    qbake::quantized_model!("../../models/conv_ops.safetensors", per_channel = false, keep_float_below = 0, warn_sqnr_below = 45);
}

fn main() {}
