//! Reading a model file: safetensors tensors and the `qbake.graph` metadata.

use crate::error::{Error, bail};
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

/// The metadata key that holds the graph JSON.
pub const GRAPH_KEY: &str = "qbake.graph";

/// A model file, memory-mapped, with its header parsed and checked.
pub struct ModelFile {
    bytes: memmap2::Mmap,
    /// Offset of the first tensor byte (after the 8-byte length and the header).
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
    graph_json: Option<String>,
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range within the data section.
    pub offsets: (usize, usize),
}

impl ModelFile {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let file = File::open(path).map_err(|e| Error::new(format!("cannot open the model file: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| Error::new(format!("cannot read the model file: {e}")))?
            .len();
        if len == 0 {
            bail!("the model file is empty; expected a safetensors file");
        }
        // SAFETY: the map is read-only. A file changed while the compiler runs
        // can only give wrong weights, which the rebuild it triggers replaces.
        let bytes = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| Error::new(format!("cannot map the model file: {e}")))?;
        Self::parse(bytes)
    }

    fn parse(bytes: memmap2::Mmap) -> Result<Self, Error> {
        // The first 8 bytes are the header's length: checked here too, for a
        // message that says what is wrong with a file that is not safetensors.
        let Some(len_bytes) = bytes.first_chunk::<8>() else {
            bail!(
                "the model file has {} bytes, too few for a safetensors file",
                bytes.len()
            );
        };
        let header_len = u64::from_le_bytes(*len_bytes);
        let rest = bytes.len() as u64 - 8;
        if header_len > rest {
            bail!(
                "not a safetensors file, or a truncated one: its first 8 bytes give a header of {header_len} bytes, but {rest} bytes follow"
            );
        }
        // The safetensors crate checks the header length against the file,
        // the JSON, dtypes, and that offsets tile the data exactly.
        let (header_len, metadata) = SafeTensors::read_metadata(&bytes).map_err(not_safetensors)?;
        SafeTensors::deserialize(&bytes).map_err(not_safetensors)?;
        let graph_json = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(GRAPH_KEY).cloned());
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let info = TensorInfo {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    offsets: info.data_offsets,
                };
                (name, info)
            })
            .collect();
        Ok(ModelFile {
            bytes,
            data_start: 8 + header_len,
            tensors,
            graph_json,
        })
    }

    /// The `qbake.graph` JSON, if the file has one.
    pub fn graph_json(&self) -> Option<&str> {
        self.graph_json.as_deref()
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    /// A tensor's values as f32 (F32, F16 and BF16 convert exactly).
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, Error> {
        let Some(info) = self.tensors.get(name) else {
            bail!("the file has no tensor `{name}`");
        };
        let bytes = &self.bytes[self.data_start + info.offsets.0..self.data_start + info.offsets.1];
        let values: Vec<f32> = match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => bail!("tensor `{name}` has dtype {other:?}; qbake reads F32, F16 and BF16 weights"),
        };
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!(
                "tensor `{name}` holds {} at index {i}; weights must be finite",
                values[i]
            );
        }
        Ok(values)
    }
}

fn not_safetensors(e: safetensors::SafeTensorError) -> Error {
    Error::new(format!("not a valid safetensors file: {e}"))
}
