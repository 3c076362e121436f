//! The digits classifier of the `digits` example, baked by a build script
//! (`build.rs`: `qbake_codegen::Model::new(..).emit("digits")`) instead of the
//! macro: same items, the weights in one blob in `OUT_DIR`.
//!
//! `cargo run --release --example digits_build`

#[path = "digits_data.rs"]
mod digits_data;

use digits_data::{argmax, load_test_split};

mod digits {
    qbake::include_model!("digits");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (images, labels) = load_test_split()?;
    println!(
        "digits, baked by build.rs into OUT_DIR/digits.rs + digits.weights: {} test images",
        labels.len()
    );
    for kernels in [qbake::Kernels::Dequant, qbake::Kernels::Hybrid] {
        let model = digits::Model::new(kernels);
        let mut out = digits::Output::default();
        let correct = images
            .iter()
            .zip(&labels)
            .filter(|&(x, &label)| {
                model.forward_into(x, &mut out);
                argmax(&out[0]) == label
            })
            .count();
        println!(
            "8-bit, {kernels:?}: {:.2}% correct",
            100.0 * correct as f64 / labels.len() as f64
        );
    }
    Ok(())
}
