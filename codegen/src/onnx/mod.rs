//! ONNX import: a model exported from PyTorch, TensorFlow or Keras becomes a
//! qbake model file (safetensors with `qbake.graph`, docs/format.md).
//!
//! - [`proto`]: the ONNX protobuf messages, declared by hand for prost;
//! - [`model`]: a decoded file with typed accessors (tensors as f32 or i64,
//!   attributes by name, Constant values, input and output shapes);
//! - [`import`](mod@import): the ONNX graph mapped onto qbake's ops, with its tensors;
//! - [`shapes`]: the ops' shape rules (windows with `auto_pad` resolved,
//!   broadcasting, Squeeze and Unsqueeze);
//! - [`write_safetensors`]: the result as a file the macro bakes.
//!
//! No Python, no `protoc`. Any bytes give a model or an [`Error`]: decoding
//! is prost's, which bounds every length by the buffer; a pass over the wire
//! format first refuses files whose decoded structures would be out of
//! proportion to their size; and each conversion here checks sizes against
//! the data present before it allocates.
//! docs/onnx.md lists which ops map to what.

pub mod import;
pub mod model;
pub mod proto;
pub mod shapes;
mod wire;

pub use import::{ImportOptions, Imported, Tensor};
pub use model::OnnxModel;

use crate::error::Error;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Decodes the ONNX file `bytes` and imports its graph.
pub fn import(bytes: &[u8], options: &ImportOptions) -> Result<Imported, Error> {
    import::import_model(&OnnxModel::decode(bytes)?, options)
}

/// The imported model as safetensors bytes: F32 tensors, and the graph under
/// the `qbake.graph` metadata key.
pub fn to_safetensors(imported: &Imported) -> Result<Vec<u8>, Error> {
    let bytes: Vec<Vec<u8>> = imported
        .tensors
        .iter()
        .map(|t| t.data.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = imported
        .tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            TensorView::new(Dtype::F32, t.shape.clone(), b)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| Error::new(format!("tensor `{}`: {e}", t.name)))
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let metadata = HashMap::from([(crate::read::GRAPH_KEY.to_string(), imported.graph_json.clone())]);
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::new(format!("cannot write safetensors: {e}")))
}

/// Writes the imported model to `path` as a qbake model file.
pub fn write_safetensors(imported: &Imported, path: &Path) -> Result<(), Error> {
    let bytes = to_safetensors(imported)?;
    std::fs::write(path, bytes).map_err(|e| Error::new(format!("cannot write {}: {e}", path.display())))
}
