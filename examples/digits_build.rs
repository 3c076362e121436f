//! The digits classifier of the `digits` example, baked by a build script
//! (`build.rs`: `qbake_codegen::Model::new(..).emit("digits")`) instead of the
//! macro: same items, the weights in one blob in `OUT_DIR`.
//!
//! `cargo run --release --example digits_build`

use safetensors::SafeTensors;
use std::path::Path;

mod digits {
    qbake::include_model!("digits");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits_test.safetensors");
    let bytes = std::fs::read(path)?;
    let split = SafeTensors::deserialize(&bytes)?;
    let images: Vec<f32> = split
        .tensor("images")?
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let labels: Vec<usize> = split
        .tensor("labels")?
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize)
        .collect();

    println!(
        "digits, baked by build.rs into OUT_DIR/digits.rs + digits.weights: {} test images",
        labels.len()
    );
    for kernels in [qbake::Kernels::Dequant, qbake::Kernels::Hybrid] {
        let model = digits::Model::new(kernels);
        let mut out = digits::Output::default();
        let correct = images
            .chunks_exact(64)
            .zip(&labels)
            .filter(|&(x, &label)| {
                model.forward_into(&[x.try_into().unwrap()], &mut out);
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

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}
