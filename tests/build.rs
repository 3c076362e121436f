//! Bakes, through the build-script path, the models that
//! `tests/build_script.rs` compares with the macro's expansion of the same
//! files and options.

use qbake_codegen::{Error, Model};

fn main() -> Result<(), Error> {
    let all_ops = "models/all_ops.safetensors";
    let digits = "../examples/models/digits.safetensors";
    Model::new(all_ops).emit("all_ops")?;
    Model::new(all_ops)
        .per_channel(false)
        .keep_float_below(500)
        .emit("all_ops_per_tensor")?;
    Model::new(digits).emit("digits")?;
    Model::new(digits)
        .per_channel(false)
        .keep_float_below(1)
        .emit("digits_per_tensor")
}
