//! A decoded ONNX model with typed accessors: tensors as f32 or i64, node
//! attributes by name, Constant nodes' values, and graph inputs and outputs
//! with their shapes (dynamic dimensions reported as such).
//!
//! Every accessor checks what it reads and returns an [`Error`] for anything
//! malformed: no panic, and no allocation larger than what the file holds.

use super::proto::{
    AttributeProto, DimensionValue, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto,
    attribute_type as at, data_type as dt,
};
use crate::error::{Error, bail};
use prost::Message;
use std::collections::{BTreeMap, HashSet};

/// Decoding may take at most this many times the file's size in memory
/// (plus [`DECODE_SLACK`]); see `super::wire`.
pub const MAX_DECODE_FACTOR: usize = 8;

/// Memory decoding may take beyond [`MAX_DECODE_FACTOR`] times the file size.
pub const DECODE_SLACK: usize = 64 << 20;

/// A decoded ONNX file that has a graph.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    proto: ModelProto,
    /// The encoded size, in bytes: what the importer's memory use is measured against.
    size: usize,
}

/// One dimension of a declared shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size (`dim_value`, zero or more).
    Fixed(u64),
    /// A symbolic size (`dim_param`), such as `"batch"`.
    Param(String),
    /// Neither given, or a negative `dim_value` (some exporters write -1).
    Unknown,
}

impl Dim {
    pub fn is_dynamic(&self) -> bool {
        !matches!(self, Dim::Fixed(_))
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(v) => write!(f, "{v}"),
            Dim::Param(p) => write!(f, "{p:?}"),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// A graph input or output: its name, element type and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueInfo {
    pub name: String,
    /// A [`super::proto::data_type`] value; `None` if the value is not a tensor
    /// or the type is missing.
    pub elem_type: Option<i32>,
    /// `None` when not even the rank is declared.
    pub shape: Option<Vec<Dim>>,
}

/// A constant tensor's values, converted.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// FLOAT, and FLOAT16, BFLOAT16 and DOUBLE converted to f32.
    F32(Vec<f32>),
    /// INT64, and INT32 widened.
    I64(Vec<i64>),
}

/// A constant tensor: shape (row-major) and values.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorValue {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl TensorValue {
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl OnnxModel {
    /// Decodes an ONNX file. Any bytes give a model or an error.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.is_empty() {
            bail!("the ONNX file is empty");
        }
        let need = super::wire::decoded_size(bytes)?;
        if need
            > MAX_DECODE_FACTOR
                .saturating_mul(bytes.len())
                .saturating_add(DECODE_SLACK)
        {
            bail!(
                "the ONNX file ({} bytes) would take {need} bytes of memory to decode, out of proportion to its size: it is damaged, or not a model",
                bytes.len()
            );
        }
        let proto = ModelProto::decode(bytes)
            .map_err(|e| Error::new(format!("not a valid ONNX file (protobuf decoding failed: {e})")))?;
        if proto.graph.is_none() {
            bail!("the ONNX file has no graph (is it an ONNX model?)");
        }
        Ok(OnnxModel {
            proto,
            size: bytes.len(),
        })
    }

    /// Wraps a model built in memory (tests, tools).
    pub fn from_proto(proto: ModelProto) -> Result<Self, Error> {
        if proto.graph.is_none() {
            bail!("the ONNX model has no graph");
        }
        let size = proto.encoded_len();
        Ok(OnnxModel { proto, size })
    }

    /// The size of the encoded file, in bytes.
    pub fn file_size(&self) -> usize {
        self.size
    }

    pub fn proto(&self) -> &ModelProto {
        &self.proto
    }

    pub fn graph(&self) -> &GraphProto {
        self.proto.graph.as_ref().expect("checked at construction")
    }

    pub fn ir_version(&self) -> Option<i64> {
        self.proto.ir_version
    }

    pub fn producer(&self) -> String {
        let name = self.proto.producer_name.as_deref().unwrap_or("");
        let version = self.proto.producer_version.as_deref().unwrap_or("");
        format!("{name} {version}").trim().to_string()
    }

    /// The opset version the model imports for `domain` (`""` and `"ai.onnx"`
    /// are the same, standard domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        let standard = |d: &str| d.is_empty() || d == "ai.onnx";
        self.proto
            .opset_import
            .iter()
            .filter(|o| {
                let d = o.domain.as_deref().unwrap_or("");
                d == domain || (standard(d) && standard(domain))
            })
            .filter_map(|o| o.version)
            .max()
    }

    /// All `(domain, version)` pairs the model imports.
    pub fn opsets(&self) -> Vec<(String, i64)> {
        self.proto
            .opset_import
            .iter()
            .map(|o| (o.domain.clone().unwrap_or_default(), o.version.unwrap_or(0)))
            .collect()
    }

    pub fn initializers(&self) -> &[TensorProto] {
        &self.graph().initializer
    }

    pub fn nodes(&self) -> &[NodeProto] {
        &self.graph().node
    }

    /// The graph's inputs that are not initializers (before IR version 4,
    /// initializers were listed as inputs too).
    pub fn inputs(&self) -> Vec<ValueInfo> {
        let init: HashSet<&str> = self.initializers().iter().map(|t| t.name()).collect();
        self.graph()
            .input
            .iter()
            .filter(|v| !init.contains(v.name.as_deref().unwrap_or("")))
            .map(value_info)
            .collect()
    }

    pub fn outputs(&self) -> Vec<ValueInfo> {
        self.graph().output.iter().map(value_info).collect()
    }

    /// How many nodes of each op type the graph has.
    pub fn op_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for node in self.nodes() {
            *counts.entry(node.op().to_string()).or_insert(0) += 1;
        }
        counts
    }
}

fn value_info(v: &ValueInfoProto) -> ValueInfo {
    let tensor = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
    ValueInfo {
        name: v.name.clone().unwrap_or_default(),
        elem_type: tensor.and_then(|t| t.elem_type),
        shape: tensor.and_then(|t| t.shape.as_ref()).map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(DimensionValue::DimValue(v)) if *v >= 0 => Dim::Fixed(*v as u64),
                    Some(DimensionValue::DimParam(p)) if !p.is_empty() => Dim::Param(p.clone()),
                    _ => Dim::Unknown,
                })
                .collect()
        }),
    }
}

/// The name of an ONNX element type, for messages.
pub fn type_name(data_type: i32) -> String {
    let name = match data_type {
        dt::UNDEFINED => "UNDEFINED",
        dt::FLOAT => "FLOAT",
        dt::UINT8 => "UINT8",
        dt::INT8 => "INT8",
        dt::UINT16 => "UINT16",
        dt::INT16 => "INT16",
        dt::INT32 => "INT32",
        dt::INT64 => "INT64",
        dt::STRING => "STRING",
        dt::BOOL => "BOOL",
        dt::FLOAT16 => "FLOAT16",
        dt::DOUBLE => "DOUBLE",
        dt::UINT32 => "UINT32",
        dt::UINT64 => "UINT64",
        dt::COMPLEX64 => "COMPLEX64",
        dt::COMPLEX128 => "COMPLEX128",
        dt::BFLOAT16 => "BFLOAT16",
        other => return format!("type {other}"),
    };
    name.to_string()
}

/// The product of `dims`, if it fits in memory as `elem_bytes`-byte elements.
pub fn checked_len(dims: &[usize], elem_bytes: usize) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |p, &d| p.checked_mul(d))
        .filter(|&n| {
            n.checked_mul(elem_bytes)
                .is_some_and(|b| b <= isize::MAX as usize)
        })
}

impl TensorProto {
    /// The element type (`data_type`), 0 if missing.
    pub fn elem_type(&self) -> i32 {
        self.data_type.unwrap_or(dt::UNDEFINED)
    }

    /// The dimensions, checked: none negative, and their product fits.
    pub fn shape(&self) -> Result<Vec<usize>, Error> {
        let shape: Vec<usize> = self
            .dims
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<_>>()
            .ok_or_else(|| {
                Error::new(format!(
                    "tensor `{}` has negative dims {:?}",
                    self.name(),
                    self.dims
                ))
            })?;
        if checked_len(&shape, 8).is_none() {
            bail!(
                "tensor `{}` has dims {:?}, whose size overflows",
                self.name(),
                self.dims
            );
        }
        Ok(shape)
    }

    /// The number of elements its dims give.
    pub fn len(&self) -> Result<usize, Error> {
        Ok(self.shape()?.iter().product())
    }

    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }

    /// Checks that the values are in this message, whole.
    fn check_inline(&self) -> Result<(), Error> {
        if self.data_location == Some(1) || !self.external_data.is_empty() {
            bail!(
                "tensor `{}` is stored in an external file; qbake reads ONNX files whose tensors are inside the file (save the model without external data)",
                self.name()
            );
        }
        if self.segment.is_some() {
            bail!(
                "tensor `{}` is split into segments, which qbake does not read",
                self.name()
            );
        }
        Ok(())
    }

    /// The `raw_data` of `n` elements of `width` bytes, if the tensor uses it;
    /// its length must match exactly.
    fn raw(&self, n: usize, width: usize) -> Result<Option<&[u8]>, Error> {
        let Some(raw) = self.raw_data.as_deref() else {
            return Ok(None);
        };
        // `n` is a checked product, `width` at most 8: `n * width` fits.
        if raw.len() != n * width {
            bail!(
                "tensor `{}` ({}, dims {:?}) holds {} bytes of raw data; its dims need {}",
                self.name(),
                type_name(self.elem_type()),
                self.dims,
                raw.len(),
                n * width
            );
        }
        Ok(Some(raw))
    }

    fn count_mismatch(&self, field: &str, got: usize, n: usize) -> Error {
        Error::new(format!(
            "tensor `{}` ({}, dims {:?}) holds {got} values in {field}; its dims need {n}",
            self.name(),
            type_name(self.elem_type()),
            self.dims
        ))
    }

    /// The values as f32: FLOAT, or FLOAT16, BFLOAT16 or DOUBLE converted.
    pub fn to_f32(&self) -> Result<Vec<f32>, Error> {
        self.check_inline()?;
        let n = self.len()?;
        let t = self.elem_type();
        let values = match t {
            dt::FLOAT => match self.raw(n, 4)? {
                Some(raw) => raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                None if self.float_data.len() == n => self.float_data.clone(),
                None => return Err(self.count_mismatch("float_data", self.float_data.len(), n)),
            },
            dt::DOUBLE => match self.raw(n, 8)? {
                Some(raw) => raw
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().expect("chunks of 8")) as f32)
                    .collect(),
                None if self.double_data.len() == n => self.double_data.iter().map(|&v| v as f32).collect(),
                None => return Err(self.count_mismatch("double_data", self.double_data.len(), n)),
            },
            dt::FLOAT16 | dt::BFLOAT16 => {
                let convert = |bits: u16| {
                    if t == dt::FLOAT16 {
                        half::f16::from_bits(bits).to_f32()
                    } else {
                        half::bf16::from_bits(bits).to_f32()
                    }
                };
                match self.raw(n, 2)? {
                    Some(raw) => raw
                        .chunks_exact(2)
                        .map(|b| convert(u16::from_le_bytes([b[0], b[1]])))
                        .collect(),
                    // 16-bit floats sit in int32_data, one per element, as their bits.
                    None if self.int32_data.len() == n => {
                        self.int32_data.iter().map(|&v| convert(v as u16)).collect()
                    }
                    None => return Err(self.count_mismatch("int32_data", self.int32_data.len(), n)),
                }
            }
            other => bail!(
                "tensor `{}` has element type {}; qbake reads float tensors here (FLOAT, FLOAT16, BFLOAT16, DOUBLE)",
                self.name(),
                type_name(other)
            ),
        };
        Ok(values)
    }

    /// The values as i64: INT64, or INT32 widened.
    pub fn to_i64(&self) -> Result<Vec<i64>, Error> {
        self.check_inline()?;
        let n = self.len()?;
        Ok(match self.elem_type() {
            dt::INT64 => match self.raw(n, 8)? {
                Some(raw) => raw
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("chunks of 8")))
                    .collect(),
                None if self.int64_data.len() == n => self.int64_data.clone(),
                None => return Err(self.count_mismatch("int64_data", self.int64_data.len(), n)),
            },
            dt::INT32 => match self.raw(n, 4)? {
                Some(raw) => raw
                    .chunks_exact(4)
                    .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                    .collect(),
                None if self.int32_data.len() == n => self.int32_data.iter().map(|&v| i64::from(v)).collect(),
                None => return Err(self.count_mismatch("int32_data", self.int32_data.len(), n)),
            },
            other => bail!(
                "tensor `{}` has element type {}; qbake reads integer tensors here (INT64, INT32)",
                self.name(),
                type_name(other)
            ),
        })
    }

    /// Shape and values, as f32 for float types and i64 for integer types.
    pub fn value(&self) -> Result<TensorValue, Error> {
        let shape = self.shape()?;
        let data = match self.elem_type() {
            dt::INT64 | dt::INT32 => Data::I64(self.to_i64()?),
            _ => Data::F32(self.to_f32()?),
        };
        Ok(TensorValue { shape, data })
    }
}

/// What an attribute holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrKind {
    Float,
    Int,
    String,
    Tensor,
    Graph,
    Floats,
    Ints,
    Strings,
    Tensors,
    Graphs,
    SparseTensor,
    SparseTensors,
    Undefined,
}

impl std::fmt::Display for AttrKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttrKind::Float => "a float",
            AttrKind::Int => "an int",
            AttrKind::String => "a string",
            AttrKind::Tensor => "a tensor",
            AttrKind::Graph => "a graph",
            AttrKind::Floats => "a list of floats",
            AttrKind::Ints => "a list of ints",
            AttrKind::Strings => "a list of strings",
            AttrKind::Tensors => "a list of tensors",
            AttrKind::Graphs => "a list of graphs",
            AttrKind::SparseTensor => "a sparse tensor",
            AttrKind::SparseTensors => "a list of sparse tensors",
            AttrKind::Undefined => "of no known type",
        })
    }
}

impl AttributeProto {
    /// The attribute's type: its `type` field, or, in files older than IR
    /// version 2 that have none, the field that is set.
    pub fn kind(&self) -> AttrKind {
        match self.r#type.unwrap_or(at::UNDEFINED) {
            at::FLOAT => AttrKind::Float,
            at::INT => AttrKind::Int,
            at::STRING => AttrKind::String,
            at::TENSOR => AttrKind::Tensor,
            at::GRAPH => AttrKind::Graph,
            at::FLOATS => AttrKind::Floats,
            at::INTS => AttrKind::Ints,
            at::STRINGS => AttrKind::Strings,
            at::TENSORS => AttrKind::Tensors,
            at::GRAPHS => AttrKind::Graphs,
            at::SPARSE_TENSOR => AttrKind::SparseTensor,
            at::SPARSE_TENSORS => AttrKind::SparseTensors,
            at::UNDEFINED => {
                if self.f.is_some() {
                    AttrKind::Float
                } else if self.i.is_some() {
                    AttrKind::Int
                } else if self.s.is_some() {
                    AttrKind::String
                } else if self.t.is_some() {
                    AttrKind::Tensor
                } else if !self.floats.is_empty() {
                    AttrKind::Floats
                } else if !self.ints.is_empty() {
                    AttrKind::Ints
                } else if !self.strings.is_empty() {
                    AttrKind::Strings
                } else if !self.tensors.is_empty() {
                    AttrKind::Tensors
                } else {
                    AttrKind::Undefined
                }
            }
            _ => AttrKind::Undefined,
        }
    }

    fn expect(&self, kind: AttrKind) -> Result<(), Error> {
        if self.ref_attr_name.as_deref().is_some_and(|r| !r.is_empty()) {
            bail!(
                "attribute `{}` refers to a function attribute, which a main graph cannot do",
                self.name()
            );
        }
        let got = self.kind();
        if got != kind {
            bail!("attribute `{}` is {got}, not {kind}", self.name());
        }
        Ok(())
    }

    pub fn as_float(&self) -> Result<f32, Error> {
        self.expect(AttrKind::Float)?;
        Ok(self.f.unwrap_or(0.0))
    }

    pub fn as_int(&self) -> Result<i64, Error> {
        self.expect(AttrKind::Int)?;
        Ok(self.i.unwrap_or(0))
    }

    pub fn as_floats(&self) -> Result<&[f32], Error> {
        self.expect(AttrKind::Floats)?;
        Ok(&self.floats)
    }

    pub fn as_ints(&self) -> Result<&[i64], Error> {
        self.expect(AttrKind::Ints)?;
        Ok(&self.ints)
    }

    pub fn as_string(&self) -> Result<String, Error> {
        self.expect(AttrKind::String)?;
        let bytes = self.s.as_deref().unwrap_or(&[]);
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Error::new(format!("attribute `{}` is not valid UTF-8", self.name())))
    }

    pub fn as_tensor(&self) -> Result<&TensorProto, Error> {
        self.expect(AttrKind::Tensor)?;
        self.t
            .as_deref()
            .ok_or_else(|| Error::new(format!("attribute `{}` has no tensor", self.name())))
    }
}

impl NodeProto {
    pub fn op(&self) -> &str {
        self.op_type.as_deref().unwrap_or("")
    }

    /// The node's name, or `Op#index` (its position in the graph) when it has none.
    pub fn display_name(&self, index: usize) -> String {
        match self.name.as_deref() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => format!("{}#{index}", self.op()),
        }
    }

    pub fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attribute.iter().find(|a| a.name() == name)
    }

    pub fn attr_float(&self, name: &str) -> Result<Option<f32>, Error> {
        self.attr(name).map(AttributeProto::as_float).transpose()
    }

    pub fn attr_int(&self, name: &str) -> Result<Option<i64>, Error> {
        self.attr(name).map(AttributeProto::as_int).transpose()
    }

    pub fn attr_floats(&self, name: &str) -> Result<Option<&[f32]>, Error> {
        self.attr(name).map(AttributeProto::as_floats).transpose()
    }

    pub fn attr_ints(&self, name: &str) -> Result<Option<&[i64]>, Error> {
        self.attr(name).map(AttributeProto::as_ints).transpose()
    }

    pub fn attr_string(&self, name: &str) -> Result<Option<String>, Error> {
        self.attr(name).map(AttributeProto::as_string).transpose()
    }

    pub fn attr_tensor(&self, name: &str) -> Result<Option<&TensorProto>, Error> {
        self.attr(name).map(AttributeProto::as_tensor).transpose()
    }

    /// The value of a `Constant` node: its `value` tensor, or one of
    /// `value_float`, `value_floats`, `value_int`, `value_ints` (opset 12).
    pub fn constant_value(&self) -> Result<TensorValue, Error> {
        let mut found = None;
        for attr in &self.attribute {
            let value = match attr.name() {
                "value" => attr.as_tensor()?.value()?,
                "value_float" => TensorValue {
                    shape: vec![],
                    data: Data::F32(vec![attr.as_float()?]),
                },
                "value_floats" => {
                    let v = attr.as_floats()?;
                    TensorValue {
                        shape: vec![v.len()],
                        data: Data::F32(v.to_vec()),
                    }
                }
                "value_int" => TensorValue {
                    shape: vec![],
                    data: Data::I64(vec![attr.as_int()?]),
                },
                "value_ints" => {
                    let v = attr.as_ints()?;
                    TensorValue {
                        shape: vec![v.len()],
                        data: Data::I64(v.to_vec()),
                    }
                }
                other => bail!(
                    "attribute `{other}` of Constant is not supported (qbake reads value, value_float, value_floats, value_int and value_ints)"
                ),
            };
            if found.replace(value).is_some() {
                bail!("a Constant node must have exactly one value attribute, it has several");
            }
        }
        found.ok_or_else(|| Error::new("a Constant node must have a value attribute, it has none"))
    }
}
