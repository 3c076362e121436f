//! A pass over the protobuf wire format, before prost decodes anything, that
//! bounds the memory decoding will take.
//!
//! prost checks every length against the buffer, but a message costs more in
//! memory than on the wire: an empty `NodeProto` is 2 bytes in the file and
//! over a hundred as a struct, so a file of empty nodes or tensors would
//! decode into a hundred times its size. This walk follows the same schema as
//! [`super::proto`], adds up what each message, string and number will take,
//! and lets [`super::OnnxModel::decode`] refuse a file whose structures would
//! be out of all proportion to its bytes. Real models are mostly tensor bytes
//! and come out near 1x.

use super::proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, Segment,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto,
};
use crate::error::{Error, bail};
use std::mem::size_of;

/// The messages of the schema prost decodes.
#[derive(Debug, Clone, Copy)]
enum Msg {
    Model,
    OpsetId,
    Graph,
    Node,
    Attribute,
    Tensor,
    Segment,
    Entry,
    ValueInfo,
    Type,
    TypeTensor,
    Shape,
    Dimension,
}

impl Msg {
    /// The message a length-delimited field holds, if it is one of the schema's.
    fn child(self, field: u64) -> Option<Msg> {
        use Msg::*;
        Some(match (self, field) {
            (Model, 7) => Graph,
            (Model, 8) => OpsetId,
            (Graph, 1) => Node,
            (Graph, 5) => Tensor,
            (Graph, 11 | 12) => ValueInfo,
            (Node, 5) => Attribute,
            (Attribute, 5 | 10) => Tensor,
            (Tensor, 3) => Segment,
            (Tensor, 13) => Entry,
            (ValueInfo, 2) => Type,
            (Type, 1) => TypeTensor,
            (TypeTensor, 2) => Shape,
            (Shape, 1) => Dimension,
            _ => return None,
        })
    }

    /// Fields that are lists of varints (packed or not): each element
    /// becomes an 8-byte number however short it is on the wire.
    fn varint_list(self, field: u64) -> bool {
        matches!((self, field), (Msg::Tensor, 1 | 5 | 7) | (Msg::Attribute, 8))
    }

    /// Declared fields of bytes, strings or packed fixed-width numbers; prost
    /// skips the undeclared ones without keeping them.
    fn bytes_field(self, field: u64) -> bool {
        use Msg::*;
        matches!(
            (self, field),
            (Model, 2 | 3)
                | (OpsetId, 1)
                | (Graph, 2)
                | (Node, 1 | 2 | 3 | 4 | 7)
                | (Attribute, 1 | 4 | 7 | 9 | 21)
                | (Tensor, 4 | 8 | 9 | 10)
                | (Entry, 1 | 2)
                | (ValueInfo, 1)
                | (Dimension, 2)
        )
    }

    fn size(self) -> usize {
        match self {
            Msg::Model => size_of::<ModelProto>(),
            Msg::OpsetId => size_of::<OperatorSetIdProto>(),
            Msg::Graph => size_of::<GraphProto>(),
            Msg::Node => size_of::<NodeProto>(),
            Msg::Attribute => size_of::<AttributeProto>(),
            Msg::Tensor => size_of::<TensorProto>(),
            Msg::Segment => size_of::<Segment>(),
            Msg::Entry => size_of::<StringStringEntryProto>(),
            Msg::ValueInfo => size_of::<ValueInfoProto>(),
            Msg::Type => size_of::<TypeProto>(),
            Msg::TypeTensor => size_of::<TypeProtoTensor>(),
            Msg::Shape => size_of::<TensorShapeProto>(),
            Msg::Dimension => size_of::<Dimension>(),
        }
    }
}

/// An upper bound, in bytes, of the memory prost's decoding of `bytes` as a
/// `ModelProto` takes (before the growth slack of its vectors). Malformed
/// wire data is an error, as it is for prost.
pub fn decoded_size(bytes: &[u8]) -> Result<usize, Error> {
    let mut total = Msg::Model.size();
    walk(bytes, Msg::Model, &mut total)?;
    Ok(total)
}

fn varint(buf: &mut &[u8]) -> Result<u64, Error> {
    let mut value = 0u64;
    for i in 0..10 {
        let Some((&b, rest)) = buf.split_first() else {
            bail!("not a valid ONNX file (protobuf decoding failed: a number runs past the end)");
        };
        *buf = rest;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Ok(value);
        }
    }
    bail!("not a valid ONNX file (protobuf decoding failed: a number is longer than 10 bytes)")
}

fn take<'a>(buf: &mut &'a [u8], len: u64) -> Result<&'a [u8], Error> {
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= buf.len())
        .ok_or_else(|| {
            Error::new(format!(
                "not a valid ONNX file (protobuf decoding failed: a field of {len} bytes, but {} remain)",
                buf.len()
            ))
        })?;
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

/// Walks the fields of one `msg`; recursion is bounded by the schema's depth.
fn walk(mut buf: &[u8], msg: Msg, total: &mut usize) -> Result<(), Error> {
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (field, wire) = (key >> 3, key & 7);
        if field == 0 {
            bail!("not a valid ONNX file (protobuf decoding failed: field number 0)");
        }
        let cost = match wire {
            0 => {
                varint(&mut buf)?;
                8
            }
            1 => {
                take(&mut buf, 8)?;
                8
            }
            5 => {
                take(&mut buf, 4)?;
                8
            }
            2 => {
                let len = varint(&mut buf)?;
                let body = take(&mut buf, len)?;
                match msg.child(field) {
                    Some(child) => {
                        walk(body, child, total)?;
                        child.size()
                    }
                    // A packed list of varints: one element ends at each byte below 0x80.
                    None if msg.varint_list(field) => 8 * body.iter().filter(|&&b| b < 0x80).count(),
                    // Bytes, a string, or packed fixed-width numbers: their length, plus a header.
                    None if msg.bytes_field(field) => 24 + body.len(),
                    None => 0,
                }
            }
            other => bail!("not a valid ONNX file (protobuf decoding failed: wire type {other})"),
        };
        *total = total.saturating_add(cost);
    }
    Ok(())
}
