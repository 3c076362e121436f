//! Reading a model file: safetensors tensors and the `qbake.graph` metadata.

use crate::error::{Error, bail};
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

/// The metadata key that holds the graph JSON.
pub const GRAPH_KEY: &str = "qbake.graph";

const EMPTY: &str = "the model file is empty; expected a safetensors file";

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
            bail!("{EMPTY}");
        }
        // SAFETY: the map is read-only. A file changed while the compiler runs
        // can only give wrong weights, which the rebuild it triggers replaces.
        let bytes = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| Error::new(format!("cannot map the model file: {e}")))?;
        Self::parse(bytes)
    }

    /// A model file already in memory (fuzzing, tools): the bytes are copied
    /// into an anonymous read-only map, and from there on every check and
    /// accessor is the one [`open`](Self::open) uses.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.is_empty() {
            bail!("{EMPTY}");
        }
        let mut map = memmap2::MmapMut::map_anon(bytes.len())
            .map_err(|e| Error::new(format!("cannot map {} bytes for the model: {e}", bytes.len())))?;
        map.copy_from_slice(bytes);
        let map = map
            .make_read_only()
            .map_err(|e| Error::new(format!("cannot map the model read-only: {e}")))?;
        Self::parse(map)
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
        let (header_len, metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|e| not_safetensors(&bytes, e))?;
        SafeTensors::deserialize(&bytes).map_err(|e| not_safetensors(&bytes, e))?;
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

fn not_safetensors(bytes: &[u8], e: safetensors::SafeTensorError) -> Error {
    use safetensors::SafeTensorError as E;
    let detail = match &e {
        E::TensorInvalidInfo | E::MetadataIncompleteBuffer | E::InvalidOffset(_) | E::ValidationOverflow => {
            damaged_tensor(bytes)
        }
        E::HeaderTooLarge => Some(format!(
            "its header is larger than the {} MB safetensors allows",
            100
        )),
        _ => None,
    };
    Error::new(format!(
        "not a valid safetensors file: {}",
        detail.unwrap_or_else(|| e.to_string())
    ))
}

/// Which tensor of a header that parsed does not fit the data, and how: the
/// safetensors crate's own messages name neither.
fn damaged_tensor(bytes: &[u8]) -> Option<String> {
    let header_len = usize::try_from(u64::from_le_bytes(*bytes.first_chunk::<8>()?)).ok()?;
    let header = bytes.get(8..8usize.checked_add(header_len)?)?;
    let data_len = bytes.len() - 8 - header_len;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    let mut tensors: Vec<(&str, &str, Vec<u64>, u64, u64)> = Vec::new();
    for (name, info) in header.iter().filter(|(name, _)| *name != "__metadata__") {
        let dtype = info.get("dtype")?.as_str()?;
        let shape = info
            .get("shape")?
            .as_array()?
            .iter()
            .map(|d| d.as_u64())
            .collect::<Option<_>>()?;
        let [start, end] = info.get("data_offsets")?.as_array()?.as_slice() else {
            return None;
        };
        tensors.push((name, dtype, shape, start.as_u64()?, end.as_u64()?));
    }
    tensors.sort_by_key(|t| (t.3, t.4));
    let mut covered = 0u64;
    for (name, dtype, shape, start, end) in &tensors {
        let width: u64 = match *dtype {
            "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 1,
            "I16" | "U16" | "F16" | "BF16" => 2,
            "I32" | "U32" | "F32" => 4,
            "I64" | "U64" | "F64" => 8,
            _ => return None,
        };
        let need = shape.iter().try_fold(width, |n, &d| n.checked_mul(d));
        let Some(need) = need else {
            return Some(format!(
                "tensor `{name}` has shape {shape:?}, whose size overflows"
            ));
        };
        if *start != covered || end < start {
            return Some(format!(
                "tensor `{name}` has data_offsets [{start}, {end}], but the previous tensor ends at byte {covered}: tensors must follow each other without gaps"
            ));
        }
        if end - start != need {
            return Some(format!(
                "tensor `{name}` has dtype {dtype} and shape {shape:?}, which take {need} bytes, but its data_offsets [{start}, {end}] hold {}",
                end - start
            ));
        }
        if *end > data_len as u64 {
            return Some(format!(
                "tensor `{name}` ends at byte {end} of the data, but the file holds only {data_len} bytes after its header: it is truncated, or the offsets are wrong"
            ));
        }
        covered = *end;
    }
    (covered < data_len as u64).then(|| {
        format!("the file holds {data_len} bytes after its header, but its tensors end at byte {covered}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message for a file with `header` (as written) and `data` bytes.
    fn error(header: &str, data: usize) -> String {
        let mut bytes = Vec::from((header.len() as u64).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data, 0);
        ModelFile::from_bytes(&bytes)
            .err()
            .expect("a damaged file")
            .to_string()
    }

    #[test]
    fn damaged_tensor_tables_name_the_tensor_and_the_fault() {
        let a = r#""a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}"#;
        assert_eq!(
            error(
                &format!(r#"{{{a},"b":{{"dtype":"F16","shape":[2],"data_offsets":[12,16]}}}}"#),
                16
            ),
            "not a valid safetensors file: tensor `b` has data_offsets [12, 16], but the previous tensor ends at byte 8: tensors must follow each other without gaps"
        );
        assert_eq!(
            error(&format!("{{{a}}}"), 12),
            "not a valid safetensors file: the file holds 12 bytes after its header, but its tensors end at byte 8"
        );
        assert_eq!(
            error(
                r#"{"a":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8]}}"#,
                8
            ),
            "not a valid safetensors file: tensor `a` has shape [4611686018427387904, 8], whose size overflows"
        );
        assert_eq!(
            error(r#"{"a":{"dtype":"BF16","shape":[3],"data_offsets":[0,8]}}"#, 8),
            "not a valid safetensors file: tensor `a` has dtype BF16 and shape [3], which take 6 bytes, but its data_offsets [0, 8] hold 8"
        );
    }

    #[test]
    fn bytes_and_files_read_alike() {
        assert_eq!(
            ModelFile::from_bytes(&[]).err().unwrap().to_string(),
            "the model file is empty; expected a safetensors file"
        );
        assert_eq!(
            ModelFile::from_bytes(&[1, 0, 0]).err().unwrap().to_string(),
            "the model file has 3 bytes, too few for a safetensors file"
        );
    }
}
