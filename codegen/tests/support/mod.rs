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
