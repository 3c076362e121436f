//! What the integration tests share.

use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::PathBuf;

/// A model file with `graph` and `tensors`, in a temporary directory.
pub fn model(
    graph: serde_json::Value,
    tensors: &[(&str, &[usize], Vec<f32>)],
) -> (tempfile::TempDir, PathBuf) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| (*n, TensorView::new(Dtype::F32, s.to_vec(), b).unwrap()))
        .collect();
    let metadata = HashMap::from([("qbake.graph".to_string(), graph.to_string())]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    std::fs::write(&path, safetensors::serialize(views, Some(metadata)).unwrap()).unwrap();
    (dir, path)
}

/// Reproducible test values: xorshift64. Each test file uses part of it.
#[allow(dead_code)]
pub struct Xorshift(pub u64);

#[allow(dead_code)]
impl Xorshift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-1, 1).
    pub fn signed(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Uniform in (0, 1), for Box-Muller.
    pub fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// `rows` rows of `cols` values in [-1, 1), row `r` times `scales[r % len]`.
    pub fn rows(&mut self, rows: usize, cols: usize, scales: &[f32]) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| self.signed() * scales[i / cols % scales.len()])
            .collect()
    }
}
