//! A classifier of 8x8 handwritten digits (scikit-learn's bundled copy of the
//! UCI digits), trained by `models/train_digits.py`, baked to 8 bits at
//! compile time, and measured on the held-out test split against its float self.
//!
//! `cargo run --release --example digits`

use safetensors::SafeTensors;
use std::path::Path;

mod digits {
    qbake::quantized_model!("models/digits.safetensors");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    let (images, labels) = load_test_split(&dir.join("digits_test.safetensors"))?;
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

/// The test split: `images` [n, 64] f32 in [0, 1], `labels` [n] i64.
fn load_test_split(path: &Path) -> Result<(Vec<digits::Input>, Vec<usize>), Box<dyn std::error::Error>> {
    let bytes = std::fs::read(path)?;
    let st = SafeTensors::deserialize(&bytes)?;
    let images: Vec<f32> = st
        .tensor("images")?
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let labels: Vec<usize> = st
        .tensor("labels")?
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize)
        .collect();
    let inputs = images.chunks_exact(64).map(|c| [c.try_into().unwrap()]).collect();
    Ok((inputs, labels))
}

fn argmax<T: PartialOrd + Copy>(v: &[T]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

fn accuracy(pred: &[usize], labels: &[usize]) -> f64 {
    100.0 * pred.iter().zip(labels).filter(|(a, b)| a == b).count() as f64 / labels.len() as f64
}
