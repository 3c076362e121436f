//! The digits test split, shared by the `digits` and `digits_build` examples.

use safetensors::SafeTensors;
use std::path::Path;

/// One image, in the models' input shape.
pub type Image = [[f32; 64]; 1];

/// The test split: 8x8 images as 64 values in [0, 1], and their labels.
pub fn load_test_split() -> Result<(Vec<Image>, Vec<usize>), Box<dyn std::error::Error>> {
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
    if images.len() != labels.len() * 64 {
        return Err(format!("{} image values for {} labels", images.len(), labels.len()).into());
    }
    Ok((
        images.chunks_exact(64).map(|c| [c.try_into().unwrap()]).collect(),
        labels,
    ))
}

pub fn argmax<T: PartialOrd>(v: &[T]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}
