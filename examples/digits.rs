//! A classifier of 8x8 handwritten digits (scikit-learn's bundled copy of the
//! UCI digits), trained by `models/train_digits.py`, baked to 8 bits at
//! compile time, and measured on the held-out test split against its float self.
//!
//! `cargo run --release --example digits`

#[path = "digits_data.rs"]
mod digits_data;

use digits_data::{argmax, load_test_split};
use std::path::Path;

mod digits {
    qbake::quantized_model!("models/digits.safetensors");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let (images, labels) = load_test_split()?;
    let reference = qbake_codegen::reference::Reference::load(&dir.join("digits.safetensors"))?;

    let float_pred: Vec<usize> = images
        .iter()
        .map(|x| argmax(&reference.run(x.as_flattened())))
        .collect();
    let float_acc = accuracy(&float_pred, &labels);
    println!("digits: {} test images, 64 -> 128 -> 64 -> 10 MLP", labels.len());
    println!("{:<22} {:>9} {:>17}", "path", "accuracy", "agrees with f32");
    println!("{:<22} {:>8.2}% {:>16}", "f32 reference", float_acc, "-");
    for kernels in [qbake::Kernels::Dequant, qbake::Kernels::Hybrid] {
        let model = digits::Model::new(kernels);
        let mut out = digits::Output::default();
        let pred: Vec<usize> = images
            .iter()
            .map(|x| {
                model.forward_into(x, &mut out);
                argmax(out.as_flattened())
            })
            .collect();
        let agree = pred.iter().zip(&float_pred).filter(|(a, b)| a == b).count();
        println!(
            "{:<22} {:>8.2}% {:>15.2}%",
            format!("8-bit, {kernels:?}"),
            accuracy(&pred, &labels),
            100.0 * agree as f64 / labels.len() as f64
        );
    }
    Ok(())
}

fn accuracy(pred: &[usize], labels: &[usize]) -> f64 {
    100.0 * pred.iter().zip(labels).filter(|(a, b)| a == b).count() as f64 / labels.len() as f64
}
