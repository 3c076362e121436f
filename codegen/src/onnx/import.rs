//! ONNX graph -> `qbake.graph` (docs/format.md) plus f32 tensors.
//!
//! The importer walks the nodes the chosen output depends on, in the file's
//! (topological) order, tracking for each ONNX value either an activation with
//! its shape or a constant with its values. Each node becomes zero, one or a
//! few qbake nodes; constants are folded into weights, biases and attributes.
//! Then a MatMul or Gemm with no bias followed by the Add of a per-output
//! constant becomes one node with a bias. docs/onnx.md lists the mapping.
//!
//! Convolutional ops keep ONNX's NCHW shapes and layouts (a Conv weight is
//! written as `[O, C / group, kh, kw]`, a per-channel constant with its own
//! shape, such as `[C, 1, 1]`): choosing the internal layout, and folding
//! BatchNormalization, Mul, Add and Pad into convolutions, is the planner's.

use super::model::{Data, Dim, OnnxModel, TensorValue, checked_len, type_name};
use super::proto::{NodeProto, data_type as dt};
use super::shapes::{AutoPad, Window, window};
use crate::error::{Error, bail};
use crate::graph::{
    GraphDef, InputDef, NodeDef, broadcasts_onto, normalize_axis, reshape, squeezed, unsqueezed,
};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

/// How to import.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// The size of a dynamic batch dimension (the input's first); 1 if `None`.
    pub batch: Option<usize>,
    /// Which graph output the qbake model computes; needed only when the
    /// ONNX graph has several.
    pub output: Option<String>,
}

/// A named f32 tensor of the imported model.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// An imported model: its tensors and its `qbake.graph` JSON document.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub tensors: Vec<Tensor>,
    pub graph_json: String,
}

/// The ONNX ops the importer maps, for messages and docs.
pub const SUPPORTED_OPS: &[&str] = &[
    "Gemm",
    "MatMul",
    "Conv",
    "BatchNormalization",
    "Add",
    "Mul",
    "Relu",
    "Clip",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Pad",
    "Softmax",
    "Flatten",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Dropout",
    "Constant",
];

/// The ONNX ops that may have outputs beyond the first, which must be unused.
const EXTRA_OUTPUTS: &[&str] = &["Dropout", "MaxPool", "BatchNormalization"];

/// The importer allocates at most this many times the file's size for the
/// values it converts and derives, plus [`MEMORY_SLACK`] bytes.
pub const MEMORY_FACTOR: usize = 8;

/// See [`MEMORY_FACTOR`].
pub const MEMORY_SLACK: usize = 256 << 20;

/// Imports a decoded model.
pub fn import_model(model: &OnnxModel, options: &ImportOptions) -> Result<Imported, Error> {
    Importer::new(model, options)?.run()
}

/// A constant's values, shared (a weight read by many nodes is not copied).
#[derive(Debug, Clone)]
enum KData {
    F32(Rc<Vec<f32>>),
    I64(Rc<Vec<i64>>),
}

impl From<Data> for KData {
    fn from(data: Data) -> Self {
        match data {
            Data::F32(v) => KData::F32(Rc::new(v)),
            Data::I64(v) => KData::I64(Rc::new(v)),
        }
    }
}

/// A constant: where it came from (for naming), its shape and values.
#[derive(Debug)]
struct Konst {
    /// The initializer it is, unchanged; `None` for computed constants.
    initializer: Option<String>,
    /// The ONNX value name (for naming derived tensors).
    value: String,
    shape: Vec<usize>,
    data: KData,
}

impl Konst {
    fn len(&self) -> usize {
        match &self.data {
            KData::F32(v) => v.len(),
            KData::I64(v) => v.len(),
        }
    }
}

#[derive(Debug, Clone)]
enum Val {
    Act { name: String, shape: Vec<usize> },
    Const(Rc<Konst>),
}

/// A tensor a qbake node refers to, named at the end.
#[derive(Debug, Clone)]
struct TRef {
    /// `Some(initializer)` when the values are an initializer's, unchanged
    /// (then it keeps the initializer's name and is written once).
    initializer: Option<String>,
    /// The name wanted for a derived tensor.
    wanted: String,
    shape: Vec<usize>,
    data: Rc<Vec<f32>>,
}

#[derive(Debug, Clone)]
enum Kind {
    /// Dense (`weight` [N, K]) or, when `transposed`, MatMul (`weight` [K, N]).
    Dense {
        weight: TRef,
        bias: Option<TRef>,
        transposed: bool,
    },
    /// 2-D convolution, ONNX's weight layout `[O, C / group, kh, kw]`.
    Conv {
        weight: TRef,
        bias: Option<TRef>,
        window: Window,
        group: usize,
    },
    BatchNorm {
        scale: TRef,
        bias: TRef,
        mean: TRef,
        var: TRef,
        epsilon: f32,
    },
    Add,
    /// A constant of its ONNX shape, which broadcasts onto the input.
    AddConst(TRef),
    /// As `AddConst`.
    MulConst(TRef),
    Relu,
    MaxPool {
        kernel: [usize; 2],
        window: Window,
    },
    AveragePool {
        kernel: [usize; 2],
        window: Window,
        count_include_pad: bool,
    },
    GlobalAveragePool,
    /// ONNX's pads, `[begin of each axis..., end of each axis...]`.
    Pad {
        pads: Vec<i64>,
        value: f32,
    },
    Clip {
        min: Option<f32>,
        max: Option<f32>,
    },
    Softmax {
        axis: i64,
    },
    Flatten {
        axis: i64,
    },
    Reshape {
        shape: Vec<i64>,
    },
}

#[derive(Debug, Clone)]
struct QNode {
    name: String,
    kind: Kind,
    inputs: Vec<String>,
    output: String,
    /// The output's shape.
    shape: Vec<usize>,
}

struct Importer<'m> {
    model: &'m OnnxModel,
    opset: i64,
    batch: Option<usize>,
    output: String,
    initializers: HashMap<&'m str, &'m super::proto::TensorProto>,
    values: HashMap<String, Val>,
    /// Every value name in use (ONNX's and generated), so generated ones are fresh.
    taken: HashSet<String>,
    /// The next suffix to try for a generated name, by base name.
    suffixes: HashMap<String, usize>,
    /// Every value some node reads, or the graph outputs.
    read: HashSet<&'m str>,
    /// Bytes the importer may still allocate for values it converts or
    /// derives: in proportion to the file, so a small file cannot ask for
    /// gigabytes (a big weight shared by many nodes, scaled by each).
    budget: usize,
    nodes: Vec<QNode>,
}

fn node_error(node: &NodeProto, index: usize, e: Error) -> Error {
    Error::new(format!(
        "node `{}` ({}): {}",
        node.display_name(index),
        node.op(),
        e.message()
    ))
}

fn shape_str(shape: &[usize]) -> String {
    format!("{shape:?}")
}

impl<'m> Importer<'m> {
    fn new(model: &'m OnnxModel, options: &ImportOptions) -> Result<Self, Error> {
        let Some(opset) = model.opset("") else {
            bail!(
                "the ONNX model imports no standard operator set (opset_import has {:?}); qbake needs the ai.onnx opset version to read its ops",
                model.opsets()
            );
        };
        if options.batch == Some(0) {
            bail!("the batch size must be at least 1");
        }
        let graph = model.graph();
        let outputs = model.outputs();
        let output = match (&options.output, outputs.as_slice()) {
            (_, []) => bail!("the ONNX graph declares no output"),
            (Some(want), outs) => {
                if !outs.iter().any(|o| &o.name == want) {
                    bail!(
                        "the ONNX graph has no output `{want}`; its outputs are {}",
                        list(outs.iter().map(|o| o.name.as_str()))
                    );
                }
                want.clone()
            }
            (None, [one]) => one.name.clone(),
            (None, outs) => bail!(
                "the ONNX graph has {} outputs ({}); a qbake model computes one: choose it with --output NAME",
                outs.len(),
                list(outs.iter().map(|o| o.name.as_str()))
            ),
        };
        let mut initializers = HashMap::new();
        for t in &graph.initializer {
            if initializers.insert(t.name(), t).is_some() {
                bail!("the ONNX graph has two initializers named `{}`", t.name());
            }
        }
        let mut taken: HashSet<String> = graph.input.iter().filter_map(|v| v.name.clone()).collect();
        for node in &graph.node {
            taken.extend(node.output.iter().cloned());
        }
        let read = graph
            .node
            .iter()
            .flat_map(|n| n.input.iter())
            .chain(graph.output.iter().filter_map(|o| o.name.as_ref()))
            .map(String::as_str)
            .collect();
        Ok(Importer {
            model,
            opset,
            batch: options.batch,
            output,
            initializers,
            values: HashMap::new(),
            taken,
            suffixes: HashMap::new(),
            read,
            budget: MEMORY_FACTOR
                .saturating_mul(model.file_size())
                .saturating_add(MEMORY_SLACK),
            nodes: Vec::new(),
        })
    }

    fn run(mut self) -> Result<Imported, Error> {
        let input = self.graph_input()?;
        let needed = self.needed_nodes()?;
        let nodes = &self.model.graph().node;
        for (i, node) in nodes.iter().enumerate() {
            if needed[i] {
                self.node(node, i).map_err(|e| node_error(node, i, e))?;
            }
        }
        let output = match self.values.get(&self.output) {
            Some(Val::Act { name, shape }) => {
                self.check_declared_output(shape)?;
                name.clone()
            }
            Some(Val::Const(_)) => bail!(
                "the graph output `{}` is a constant; there is nothing to compute",
                self.output
            ),
            None => bail!("no node produces the graph output `{}`", self.output),
        };
        if output == input.0 {
            bail!(
                "the graph output `{}` is its input; there is nothing to compute",
                self.output
            );
        }
        let nodes = fold_biases(std::mem::take(&mut self.nodes), &output);
        finish(nodes, input, output, self.budget)
    }

    /// The one graph input, its shape with dynamic dimensions resolved.
    fn graph_input(&mut self) -> Result<(String, Vec<usize>), Error> {
        let inputs = self.model.inputs();
        let [input] = inputs.as_slice() else {
            bail!(
                "the ONNX graph has {} inputs ({}); qbake models take exactly one",
                inputs.len(),
                list(inputs.iter().map(|i| i.name.as_str()))
            );
        };
        let name = &input.name;
        match input.elem_type {
            Some(dt::FLOAT) => {}
            Some(t) => bail!(
                "input `{name}` has element type {}; qbake models take FLOAT inputs",
                type_name(t)
            ),
            None => bail!("input `{name}` is not declared as a tensor"),
        }
        let Some(dims) = &input.shape else {
            bail!("input `{name}` has no declared shape; qbake needs its rank and sizes");
        };
        if dims.is_empty() {
            bail!("input `{name}` is a scalar; qbake models take a tensor of at least one dimension");
        }
        let declared = || dims.iter().map(Dim::to_string).collect::<Vec<_>>().join(", ");
        let mut shape = Vec::with_capacity(dims.len());
        for (i, d) in dims.iter().enumerate() {
            shape.push(match (i, d, self.batch) {
                (0, d, batch) if d.is_dynamic() => batch.unwrap_or(1),
                (0, Dim::Fixed(v), Some(b)) if *v != b as u64 => bail!(
                    "input `{name}` has a fixed batch dimension of {v} (shape [{}]); a batch size can only be given for a dynamic one",
                    declared()
                ),
                (_, Dim::Fixed(0), _) => bail!("input `{name}` has a dimension of size 0 (shape [{}])", declared()),
                (_, Dim::Fixed(v), _) => usize::try_from(*v).map_err(|_| {
                    Error::new(format!("input `{name}` has shape [{}], too large", declared()))
                })?,
                (i, d, _) => bail!(
                    "input `{name}` has shape [{}]: dimension {i} ({d}) is dynamic; qbake sets only the first (batch) dimension, so fix the others when exporting",
                    declared()
                ),
            });
        }
        if checked_len(&shape, 4).is_none() {
            bail!("input `{name}` has shape {shape:?}, whose size overflows");
        }
        self.values.insert(
            name.clone(),
            Val::Act {
                name: name.clone(),
                shape: shape.clone(),
            },
        );
        Ok((name.clone(), shape))
    }

    /// Which nodes the chosen output depends on.
    fn needed_nodes(&self) -> Result<Vec<bool>, Error> {
        let nodes = &self.model.graph().node;
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            for out in node.output.iter().filter(|o| !o.is_empty()) {
                if producer.insert(out, i).is_some() || self.initializers.contains_key(out.as_str()) {
                    bail!(
                        "value `{out}` is produced twice (node `{}`)",
                        node.display_name(i)
                    );
                }
            }
        }
        if let Some(input) = self
            .model
            .inputs()
            .iter()
            .find(|i| producer.contains_key(i.name.as_str()))
        {
            let p = producer[input.name.as_str()];
            bail!(
                "node `{}` overwrites the graph input `{}`",
                nodes[p].display_name(p),
                input.name
            );
        }
        let mut needed = vec![false; nodes.len()];
        let mut stack: Vec<&str> = vec![&self.output];
        while let Some(v) = stack.pop() {
            if let Some(&p) = producer.get(v)
                && !needed[p]
            {
                needed[p] = true;
                stack.extend(nodes[p].input.iter().map(String::as_str));
            }
        }
        Ok(needed)
    }

    fn check_declared_output(&self, shape: &[usize]) -> Result<(), Error> {
        let declared = self.model.outputs().into_iter().find(|o| o.name == self.output);
        let Some(dims) = declared.and_then(|o| o.shape) else {
            return Ok(());
        };
        let agrees = dims.len() == shape.len()
            && dims
                .iter()
                .zip(shape)
                .all(|(d, &s)| !matches!(d, Dim::Fixed(v) if *v != s as u64));
        if !agrees {
            bail!(
                "the graph declares output `{}` with shape [{}], but its nodes compute {}",
                self.output,
                dims.iter().map(Dim::to_string).collect::<Vec<_>>().join(", "),
                shape_str(shape)
            );
        }
        Ok(())
    }

    /// The value `name` reads: an earlier node's output, the input, or an initializer.
    fn value(&mut self, name: &str) -> Result<Val, Error> {
        if let Some(v) = self.values.get(name) {
            return Ok(v.clone());
        }
        let Some(&t) = self.initializers.get(name) else {
            bail!(
                "it reads `{name}`, which is not the graph input, an initializer, or the output of an earlier node"
            );
        };
        // Converting checks the values against the bytes present first.
        let value = t.value()?;
        self.charge(value.len().saturating_mul(8), name)?;
        let val = Val::Const(Rc::new(Konst {
            initializer: Some(name.to_string()),
            value: name.to_string(),
            shape: value.shape,
            data: value.data.into(),
        }));
        self.values.insert(name.to_string(), val.clone());
        Ok(val)
    }

    /// Input `i` of `node`, which must be there.
    fn input(&mut self, node: &NodeProto, i: usize, what: &str) -> Result<Val, Error> {
        match node.input.get(i).map(String::as_str) {
            None | Some("") => bail!("its input {i} ({what}) is missing"),
            Some(name) => self.value(name),
        }
    }

    /// Input `i` of `node`, if given.
    fn optional_input(&mut self, node: &NodeProto, i: usize) -> Result<Option<Val>, Error> {
        match node.input.get(i).map(String::as_str) {
            None | Some("") => Ok(None),
            Some(name) => self.value(name).map(Some),
        }
    }

    /// An activation input: its name and shape.
    fn activation(&mut self, node: &NodeProto, i: usize, what: &str) -> Result<(String, Vec<usize>), Error> {
        match self.input(node, i, what)? {
            Val::Act { name, shape } => Ok((name, shape)),
            Val::Const(c) => bail!(
                "its input {i} ({what}) `{}` is a constant; qbake does not evaluate constant sub-graphs at import (fold them when exporting)",
                c.value
            ),
        }
    }

    /// A constant f32 input.
    fn const_f32(&mut self, node: &NodeProto, i: usize, what: &str) -> Result<Rc<Konst>, Error> {
        match self.input(node, i, what)? {
            Val::Const(c) if matches!(c.data, KData::F32(_)) => Ok(c),
            Val::Const(c) => bail!(
                "its input {i} ({what}) `{}` is an integer tensor; qbake needs float values",
                c.value
            ),
            Val::Act { name, .. } => bail!(
                "its input {i} ({what}) `{name}` is computed at run time; qbake imports {} with a constant {what}",
                node.op()
            ),
        }
    }

    /// A constant 1-D integer input (pads, axes).
    fn const_i64(&mut self, node: &NodeProto, i: usize, what: &str) -> Result<Vec<i64>, Error> {
        match self.input(node, i, what)? {
            Val::Const(c) => match &c.data {
                KData::I64(v) if c.shape.len() == 1 => {
                    self.charge(v.len().saturating_mul(8), &c.value)?;
                    Ok(v.as_ref().clone())
                }
                data => bail!(
                    "its {what} `{}` must be a 1-D integer tensor; it is {} of shape {}",
                    c.value,
                    if matches!(data, KData::I64(_)) {
                        "an integer tensor"
                    } else {
                        "a float tensor"
                    },
                    shape_str(&c.shape)
                ),
            },
            Val::Act { name, .. } => bail!(
                "its {what} `{name}` is computed at run time; qbake imports {} with constant {what}",
                node.op()
            ),
        }
    }

    fn define(&mut self, node: &NodeProto, val: Val) -> Result<(), Error> {
        let out = match node.output.first().map(String::as_str) {
            None | Some("") => bail!("it has no output"),
            Some(out) => out.to_string(),
        };
        self.values.insert(out, val);
        Ok(())
    }

    fn out_name(node: &NodeProto) -> String {
        node.output.first().cloned().unwrap_or_default()
    }

    /// A value name no ONNX value and no earlier generated value has.
    fn fresh(&mut self, base: &str) -> String {
        unique(base, &mut self.taken, &mut self.suffixes)
    }

    /// Takes `bytes` from the budget, or fails naming `what` they were for.
    fn charge(&mut self, bytes: usize, what: &str) -> Result<(), Error> {
        match self.budget.checked_sub(bytes) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => bail!(
                "importing `{what}` would take {bytes} more bytes of memory; a file of {} bytes may take {} in all",
                self.model.file_size(),
                MEMORY_FACTOR
                    .saturating_mul(self.model.file_size())
                    .saturating_add(MEMORY_SLACK)
            ),
        }
    }

    fn emit(
        &mut self,
        name: String,
        kind: Kind,
        inputs: Vec<String>,
        output: String,
        shape: Vec<usize>,
    ) -> Result<(), Error> {
        if shape.contains(&0) || checked_len(&shape, 4).is_none() {
            bail!(
                "its output would have shape {}; qbake values are non-empty and fit in memory",
                shape_str(&shape)
            );
        }
        self.values.insert(
            output.clone(),
            Val::Act {
                name: output.clone(),
                shape: shape.clone(),
            },
        );
        self.nodes.push(QNode {
            name,
            kind,
            inputs,
            output,
            shape,
        });
        Ok(())
    }

    /// Refuses attributes not in `allowed`.
    fn attributes(&self, node: &NodeProto, allowed: &[&str]) -> Result<(), Error> {
        if let Some(a) = node.attribute.iter().find(|a| !allowed.contains(&a.name())) {
            bail!(
                "attribute `{}` of {} is not supported (qbake reads {} at opset {})",
                a.name(),
                node.op(),
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    list(allowed.iter().copied())
                },
                self.opset
            );
        }
        Ok(())
    }

    fn node(&mut self, node: &NodeProto, index: usize) -> Result<(), Error> {
        let op = node.op();
        let domain = node.domain.as_deref().unwrap_or("");
        if !(domain.is_empty() || domain == "ai.onnx") {
            bail!("its operator comes from domain `{domain}`; qbake imports standard ONNX operators only");
        }
        let name = node.display_name(index);
        let out = Self::out_name(node);
        if node.output.first().is_none_or(|o| o.is_empty()) {
            bail!("it has no output");
        }
        if SUPPORTED_OPS.contains(&op) && !EXTRA_OUTPUTS.contains(&op) && node.output.len() != 1 {
            bail!("it has {} outputs; qbake reads {op} with one", node.output.len());
        }
        match op {
            "Constant" => {
                self.attributes(
                    node,
                    &["value", "value_float", "value_floats", "value_int", "value_ints"],
                )?;
                let TensorValue { shape, data } = node.constant_value()?;
                self.charge(prod(&shape)?.saturating_mul(8), &out)?;
                self.define(
                    node,
                    Val::Const(Rc::new(Konst {
                        initializer: None,
                        value: out,
                        shape,
                        data: data.into(),
                    })),
                )
            }
            "Identity" => {
                self.attributes(node, &[])?;
                let v = self.input(node, 0, "input")?;
                self.define(node, v)
            }
            "Dropout" => {
                self.attributes(node, &["ratio", "seed", "is_test"])?;
                if let Some(mask) = node
                    .output
                    .get(1)
                    .filter(|m| !m.is_empty() && self.read.contains(m.as_str()))
                {
                    bail!("its mask output `{mask}` is used; qbake removes Dropout and has no mask");
                }
                if node.output.len() > 2 {
                    bail!("it has {} outputs; Dropout has at most two", node.output.len());
                }
                if let Some(mode) = self.optional_input(node, 2)? {
                    let training = match mode {
                        Val::Const(c) => match &c.data {
                            KData::I64(v) => v.iter().any(|&b| b != 0),
                            KData::F32(v) => v.iter().any(|&b| b != 0.0),
                        },
                        Val::Act { .. } => true,
                    };
                    if training {
                        bail!("its training_mode may be true; qbake imports inference graphs");
                    }
                }
                let v = self.input(node, 0, "data")?;
                self.define(node, v)
            }
            "Gemm" => self.gemm(node, name, out),
            "MatMul" => {
                self.attributes(node, &[])?;
                let (x, shape) = self.activation(node, 0, "A")?;
                let b = self.const_f32(node, 1, "B")?;
                let &[k, n] = b.shape.as_slice() else {
                    bail!(
                        "B `{}` has shape {}; qbake imports MatMul with a 2-D constant B",
                        b.value,
                        shape_str(&b.shape)
                    );
                };
                if shape.last() != Some(&k) {
                    bail!(
                        "A has shape {} and B `{}` has shape {}: A's last dimension must be {k}",
                        shape_str(&shape),
                        b.value,
                        shape_str(&b.shape)
                    );
                }
                let mut y = shape.clone();
                *y.last_mut().expect("checked") = n;
                let weight = tref(&b, None);
                self.emit(
                    name,
                    Kind::Dense {
                        weight,
                        bias: None,
                        transposed: true,
                    },
                    vec![x],
                    out,
                    y,
                )?;
                Ok(())
            }
            "Add" => self.binary(node, name, out, false),
            "Mul" => self.binary(node, name, out, true),
            "Conv" => self.conv(node, name, out),
            "BatchNormalization" => self.batch_norm(node, name, out),
            "MaxPool" => self.pool(node, name, out, true),
            "AveragePool" => self.pool(node, name, out, false),
            "GlobalAveragePool" => {
                self.attributes(node, &[])?;
                let (x, shape) = self.activation(node, 0, "X")?;
                let &[n, c, _, _] = shape.as_slice() else {
                    bail!(
                        "X has shape {}; qbake imports 2-D pools (a 4-D X)",
                        shape_str(&shape)
                    );
                };
                self.emit(name, Kind::GlobalAveragePool, vec![x], out, vec![n, c, 1, 1])?;
                Ok(())
            }
            "Pad" => self.pad(node, name, out),
            "Squeeze" => self.squeeze(node, name, out, false),
            "Unsqueeze" => self.squeeze(node, name, out, true),
            "Relu" => {
                self.attributes(node, &[])?;
                let (x, shape) = self.activation(node, 0, "X")?;
                self.emit(name, Kind::Relu, vec![x], out, shape)?;
                Ok(())
            }
            "Clip" => self.clip(node, name, out),
            "Softmax" => {
                self.attributes(node, &["axis"])?;
                let (x, shape) = self.activation(node, 0, "input")?;
                let rank = shape.len() as i64;
                let modern = self.opset >= 13;
                let axis = node.attr_int("axis")?.unwrap_or(if modern { -1 } else { 1 });
                let a = normalize_axis(axis, rank, rank - 1)?;
                if modern || a + 1 == shape.len() {
                    let axis = if modern { axis } else { -1 };
                    self.emit(name, Kind::Softmax { axis }, vec![x], out, shape)?;
                } else {
                    // Before opset 13, Softmax normalizes over all dimensions
                    // from `axis` on: flatten them into one, softmax, reshape back.
                    let flat_shape = vec![prod(&shape[..a])?, prod(&shape[a..])?];
                    let flat = self.fresh(&format!("{out}/flat"));
                    let soft = self.fresh(&format!("{out}/softmax"));
                    self.emit(
                        format!("{name}/flatten"),
                        Kind::Flatten { axis: a as i64 },
                        vec![x],
                        flat.clone(),
                        flat_shape.clone(),
                    )?;
                    self.emit(
                        name.clone(),
                        Kind::Softmax { axis: -1 },
                        vec![flat],
                        soft.clone(),
                        flat_shape,
                    )?;
                    let back = shape.iter().map(|&d| d as i64).collect();
                    self.emit(
                        format!("{name}/reshape"),
                        Kind::Reshape { shape: back },
                        vec![soft],
                        out,
                        shape,
                    )?;
                }
                Ok(())
            }
            "Flatten" => {
                self.attributes(node, &["axis"])?;
                let axis = node.attr_int("axis")?.unwrap_or(1);
                let v = self.input(node, 0, "input")?;
                let shape = match &v {
                    Val::Act { shape, .. } => shape,
                    Val::Const(c) => &c.shape,
                };
                let rank = shape.len() as i64;
                let a = normalize_axis(axis, rank, rank)?;
                let y = vec![prod(&shape[..a])?, prod(&shape[a..])?];
                match v {
                    Val::Act { name: x, .. } => {
                        self.emit(name, Kind::Flatten { axis }, vec![x], out, y)?;
                        Ok(())
                    }
                    Val::Const(c) => self.define(node, reshaped_const(&c, out, y)),
                }
            }
            "Reshape" => {
                let target: Vec<i64> = if self.opset < 5 {
                    self.attributes(node, &["shape"])?;
                    node.attr_ints("shape")?
                        .ok_or_else(|| Error::new("it has no `shape` attribute"))?
                        .to_vec()
                } else {
                    self.attributes(node, &["allowzero"])?;
                    match self.input(node, 1, "shape")? {
                        Val::Const(c) => match &c.data {
                            KData::I64(v) if c.shape.len() == 1 => v.as_ref().clone(),
                            data => bail!(
                                "its shape `{}` must be a 1-D integer tensor; it is {} of shape {}",
                                c.value,
                                if matches!(data, KData::I64(_)) {
                                    "an integer tensor"
                                } else {
                                    "a float tensor"
                                },
                                shape_str(&c.shape)
                            ),
                        },
                        Val::Act { name, .. } => bail!(
                            "its shape `{name}` is computed at run time; qbake imports Reshape with a constant shape"
                        ),
                    }
                };
                if node.attr_int("allowzero")?.unwrap_or(0) != 0 && target.contains(&0) {
                    bail!("allowzero = 1 with a 0 in shape {target:?} is not supported");
                }
                let v = self.input(node, 0, "data")?;
                let shape = match &v {
                    Val::Act { shape, .. } => shape,
                    Val::Const(c) => &c.shape,
                };
                let y = reshape(shape, &target)?;
                match v {
                    Val::Act { name: x, .. } => {
                        self.emit(name, Kind::Reshape { shape: target }, vec![x], out, y)?;
                        Ok(())
                    }
                    Val::Const(c) => self.define(node, reshaped_const(&c, out, y)),
                }
            }
            other => bail!(
                "qbake cannot import {other} yet (it imports {}; see docs/onnx.md)",
                SUPPORTED_OPS.join(", ")
            ),
        }
    }

    fn gemm(&mut self, node: &NodeProto, name: String, out: String) -> Result<(), Error> {
        self.attributes(node, &["alpha", "beta", "transA", "transB"])?;
        let alpha = node.attr_float("alpha")?.unwrap_or(1.0);
        let beta = node.attr_float("beta")?.unwrap_or(1.0);
        let trans_a = node.attr_int("transA")?.unwrap_or(0);
        let trans_b = node.attr_int("transB")?.unwrap_or(0);
        if trans_a != 0 {
            bail!("transA = {trans_a} is not supported (qbake imports Gemm with transA = 0)");
        }
        if !matches!(trans_b, 0 | 1) {
            bail!("transB = {trans_b}; it must be 0 or 1");
        }
        let (x, shape) = self.activation(node, 0, "A")?;
        let b = self.const_f32(node, 1, "B")?;
        let &[m, k] = shape.as_slice() else {
            bail!("A has shape {}; Gemm needs a 2-D A", shape_str(&shape));
        };
        let (bk, n) = match (b.shape.as_slice(), trans_b) {
            (&[k, n], 0) => (k, n),
            (&[n, k], _) => (k, n),
            _ => bail!(
                "B `{}` has shape {}; Gemm needs a 2-D B",
                b.value,
                shape_str(&b.shape)
            ),
        };
        if bk != k {
            bail!(
                "A has shape {} and B `{}` (transB = {trans_b}) has shape {}: they do not chain",
                shape_str(&shape),
                b.value,
                shape_str(&b.shape)
            );
        }
        if alpha != 1.0 {
            self.charge(b.len().saturating_mul(4), &name)?;
        }
        let weight = tref(&b, (alpha != 1.0).then_some((alpha, format!("{name}.weight"))));
        let bias = match self.optional_input(node, 2)? {
            None => None,
            Some(_) if beta == 0.0 => None,
            Some(_) => {
                let c = self.const_f32(node, 2, "C")?;
                // C broadcasts onto [M, N]; qbake's bias is one value per output.
                let per_output = c.shape.len() <= 2
                    && c.shape.iter().rev().skip(1).all(|&d| d == 1)
                    && c.shape.last().is_none_or(|&d| d == 1 || d == n);
                if !per_output {
                    bail!(
                        "C `{}` has shape {}; qbake imports a bias of one value per output ([{n}], [1, {n}] or a scalar)",
                        c.value,
                        shape_str(&c.shape)
                    );
                }
                Some(if beta != 1.0 || c.shape != [n] {
                    self.charge(n.saturating_mul(4), &name)?;
                    TRef {
                        initializer: None,
                        wanted: format!("{name}.bias"),
                        shape: vec![n],
                        data: Rc::new(broadcast_values(&c, n, beta)),
                    }
                } else {
                    tref(&c, None)
                })
            }
        };
        self.emit(
            name,
            Kind::Dense {
                weight,
                bias,
                transposed: trans_b == 0,
            },
            vec![x],
            out,
            vec![m, n],
        )?;
        Ok(())
    }

    /// Add or Mul: of two computed values of equal shape (Add only), or of a
    /// computed value and a constant that broadcasts onto it, written with
    /// its ONNX shape.
    fn binary(&mut self, node: &NodeProto, name: String, out: String, mul: bool) -> Result<(), Error> {
        self.attributes(node, &[])?;
        let a = self.input(node, 0, "A")?;
        let b = self.input(node, 1, "B")?;
        match (a, b) {
            (Val::Act { name: a, .. }, Val::Act { name: b, .. }) if mul => bail!(
                "it multiplies two computed values (`{a}` and `{b}`); Mul of two activations is not supported (qbake multiplies by a constant)"
            ),
            (Val::Act { name: a, shape: sa }, Val::Act { name: b, shape: sb }) => {
                if sa != sb {
                    bail!(
                        "it adds shapes {} and {}; qbake adds two computed values of equal shape (or a constant that broadcasts onto one)",
                        shape_str(&sa),
                        shape_str(&sb)
                    );
                }
                self.emit(name, Kind::Add, vec![a, b], out, sa)?;
                Ok(())
            }
            (Val::Act { name: x, shape }, Val::Const(c)) | (Val::Const(c), Val::Act { name: x, shape }) => {
                if !matches!(c.data, KData::F32(_)) {
                    bail!(
                        "constant `{}` is an integer tensor; qbake {} float values",
                        c.value,
                        if mul { "multiplies" } else { "adds" }
                    );
                }
                if !broadcasts_onto(&c.shape, &shape) {
                    bail!(
                        "constant `{}` of shape {} does not broadcast onto {} without changing its shape",
                        c.value,
                        shape_str(&c.shape),
                        shape_str(&shape)
                    );
                }
                let constant = tref(&c, None);
                let kind = if mul {
                    Kind::MulConst(constant)
                } else {
                    Kind::AddConst(constant)
                };
                self.emit(name, kind, vec![x], out, shape)?;
                Ok(())
            }
            (Val::Const(a), Val::Const(_)) => bail!(
                "both inputs are constants (`{}`, ...); qbake does not evaluate constant sub-graphs at import (fold them when exporting)",
                a.value
            ),
        }
    }

    /// Refuses a node whose outputs after the first are read.
    fn extra_outputs_unused(&self, node: &NodeProto, max: usize, what: &str) -> Result<(), Error> {
        if node.output.len() > max {
            bail!(
                "it has {} outputs; {} has at most {max}",
                node.output.len(),
                node.op()
            );
        }
        if let Some(o) = node
            .output
            .iter()
            .skip(1)
            .find(|o| !o.is_empty() && self.read.contains(o.as_str()))
        {
            bail!("its output `{o}` is used; {what}");
        }
        Ok(())
    }

    /// The window of Conv or a pool over `input` (`[height, width]`): from
    /// `strides`, `dilations` (`[1, 1]` unless `dilations`), `pads` and `auto_pad`.
    fn window(
        &self,
        node: &NodeProto,
        input: [usize; 2],
        kernel: [usize; 2],
        dilations: bool,
    ) -> Result<Window, Error> {
        let strides = pair(node, "strides")?;
        let dil = pair(node, "dilations")?;
        if !dilations && dil != [1, 1] {
            bail!(
                "dilations {dil:?} are not supported (qbake imports {} with dilations [1, 1])",
                node.op()
            );
        }
        let auto_pad = match node.attr_string("auto_pad")? {
            None => AutoPad::NotSet,
            Some(s) => AutoPad::parse(&s)?,
        };
        let pads = match node.attr_ints("pads")? {
            None => [0; 4],
            Some(p) if p.iter().any(|&v| v < 0) => {
                bail!("pads {p:?} have a negative value; qbake imports non-negative pads")
            }
            Some(&[t, l, b, r]) => [t, l, b, r].map(|v| v as usize),
            Some(p) => bail!(
                "pads {p:?} are not 4 values; qbake imports 2-D windows with pads [top, left, bottom, right]"
            ),
        };
        if auto_pad != AutoPad::NotSet && pads != [0; 4] {
            bail!("it has both auto_pad and explicit pads {pads:?}; ONNX allows one or the other");
        }
        window(input, kernel, strides, dil, pads, auto_pad)
    }

    fn conv(&mut self, node: &NodeProto, name: String, out: String) -> Result<(), Error> {
        self.attributes(
            node,
            &[
                "auto_pad",
                "dilations",
                "group",
                "kernel_shape",
                "pads",
                "strides",
            ],
        )?;
        let (x, shape) = self.activation(node, 0, "X")?;
        let w = self.const_f32(node, 1, "W")?;
        let (&[n, c, h, wd], &[o, cg, kh, kw]) = (shape.as_slice(), w.shape.as_slice()) else {
            bail!(
                "X has shape {} and W `{}` has shape {}; qbake imports 2-D convolutions (4-D X and W)",
                shape_str(&shape),
                w.value,
                shape_str(&w.shape)
            );
        };
        if let Some(ks) = node.attr_ints("kernel_shape")?
            && ks != [kh as i64, kw as i64]
        {
            bail!(
                "kernel_shape {ks:?} disagrees with W `{}` of shape {}, whose kernel is [{kh}, {kw}]",
                w.value,
                shape_str(&w.shape)
            );
        }
        if kh == 0 || kw == 0 {
            bail!(
                "W `{}` has shape {}: an empty kernel",
                w.value,
                shape_str(&w.shape)
            );
        }
        let group = node.attr_int("group")?.unwrap_or(1);
        let g = usize::try_from(group)
            .ok()
            .filter(|&g| g > 0)
            .ok_or_else(|| Error::new(format!("group = {group}; it must be positive")))?;
        if cg.checked_mul(g) != Some(c) || !o.is_multiple_of(g) {
            bail!(
                "X has shape {} and W `{}` has shape {}: with group = {group}, X's {c} channels must be W's dimension 1 times the group ({cg} x {group}) and the group must divide W's {o} outputs",
                shape_str(&shape),
                w.value,
                shape_str(&w.shape)
            );
        }
        let window = self.window(node, [h, wd], [kh, kw], true)?;
        let bias = match self.optional_input(node, 2)? {
            None => None,
            Some(_) => {
                let b = self.const_f32(node, 2, "B")?;
                if b.shape != [o] {
                    bail!(
                        "B `{}` has shape {}; Conv's bias has one value per output channel ([{o}])",
                        b.value,
                        shape_str(&b.shape)
                    );
                }
                Some(tref(&b, None))
            }
        };
        let y = vec![n, o, window.out[0], window.out[1]];
        let weight = tref(&w, None);
        self.emit(
            name,
            Kind::Conv {
                weight,
                bias,
                window,
                group: g,
            },
            vec![x],
            out,
            y,
        )?;
        Ok(())
    }

    fn batch_norm(&mut self, node: &NodeProto, name: String, out: String) -> Result<(), Error> {
        self.attributes(node, &["epsilon", "momentum", "training_mode", "spatial"])?;
        let training = node.attr_int("training_mode")?.unwrap_or(0);
        if training != 0 {
            bail!(
                "training_mode = {training} is not supported (qbake imports BatchNormalization in inference mode, training_mode = 0)"
            );
        }
        let spatial = node.attr_int("spatial")?.unwrap_or(1);
        if spatial != 1 {
            bail!(
                "spatial = {spatial} is not supported (qbake imports BatchNormalization with one statistic per channel, spatial = 1)"
            );
        }
        self.extra_outputs_unused(
            node,
            5,
            "qbake imports BatchNormalization in inference mode, without running statistics",
        )?;
        let epsilon = node.attr_float("epsilon")?.unwrap_or(1e-5);
        if !(epsilon.is_finite() && epsilon >= 0.0) {
            bail!("epsilon = {epsilon}; it must be a non-negative number");
        }
        let (x, shape) = self.activation(node, 0, "X")?;
        let Some(&c) = shape.get(1) else {
            bail!(
                "X has shape {}; BatchNormalization needs [N, C, ...]",
                shape_str(&shape)
            );
        };
        let mut per_channel = |i: usize, what: &str| -> Result<TRef, Error> {
            let t = self.const_f32(node, i, what)?;
            if t.shape != [c] {
                bail!(
                    "its {what} `{}` has shape {}; BatchNormalization takes one value per channel of X {} ([{c}])",
                    t.value,
                    shape_str(&t.shape),
                    shape_str(&shape)
                );
            }
            Ok(tref(&t, None))
        };
        let scale = per_channel(1, "scale")?;
        let bias = per_channel(2, "B")?;
        let mean = per_channel(3, "input_mean")?;
        let var = per_channel(4, "input_var")?;
        self.emit(
            name,
            Kind::BatchNorm {
                scale,
                bias,
                mean,
                var,
                epsilon,
            },
            vec![x],
            out,
            shape,
        )?;
        Ok(())
    }

    /// MaxPool (`max`) or AveragePool.
    fn pool(&mut self, node: &NodeProto, name: String, out: String, max: bool) -> Result<(), Error> {
        let op = node.op();
        if max {
            self.attributes(
                node,
                &[
                    "auto_pad",
                    "ceil_mode",
                    "dilations",
                    "kernel_shape",
                    "pads",
                    "storage_order",
                    "strides",
                ],
            )?;
            let order = node.attr_int("storage_order")?.unwrap_or(0);
            if order != 0 {
                bail!("storage_order = {order} is not supported (qbake's MaxPool has no Indices output)");
            }
            self.extra_outputs_unused(
                node,
                2,
                "qbake's MaxPool computes the values only, not their Indices",
            )?;
        } else {
            self.attributes(
                node,
                &[
                    "auto_pad",
                    "ceil_mode",
                    "count_include_pad",
                    "dilations",
                    "kernel_shape",
                    "pads",
                    "strides",
                ],
            )?;
        }
        let ceil = node.attr_int("ceil_mode")?.unwrap_or(0);
        if ceil != 0 {
            bail!("ceil_mode = {ceil} is not supported (qbake imports {op} with ceil_mode = 0)");
        }
        let (x, shape) = self.activation(node, 0, "X")?;
        let &[n, c, h, w] = shape.as_slice() else {
            bail!(
                "X has shape {}; qbake imports 2-D pools (a 4-D X)",
                shape_str(&shape)
            );
        };
        if node.attr("kernel_shape").is_none() {
            bail!("it has no kernel_shape");
        }
        let kernel = pair(node, "kernel_shape")?;
        let window = self.window(node, [h, w], kernel, max)?;
        // A window lying wholly in the padding would have no value to take.
        for i in 0..2 {
            let extent = window.extent(kernel, i);
            if window.pads[i] >= extent || window.pads[i + 2] >= extent {
                bail!(
                    "pads {:?} reach as far as the window ({extent} along axis {}): a window could lie wholly in the padding",
                    window.pads,
                    i + 2
                );
            }
        }
        let y = vec![n, c, window.out[0], window.out[1]];
        let kind = if max {
            Kind::MaxPool { kernel, window }
        } else {
            Kind::AveragePool {
                kernel,
                window,
                count_include_pad: node.attr_int("count_include_pad")?.unwrap_or(0) != 0,
            }
        };
        self.emit(name, kind, vec![x], out, y)?;
        Ok(())
    }

    fn pad(&mut self, node: &NodeProto, name: String, out: String) -> Result<(), Error> {
        let (mode, pads, value) = if self.opset < 11 {
            self.attributes(node, &["mode", "pads", "value"])?;
            let pads = node
                .attr_ints("pads")?
                .ok_or_else(|| Error::new("it has no `pads` attribute"))?
                .to_vec();
            (
                node.attr_string("mode")?,
                pads,
                node.attr_float("value")?.unwrap_or(0.0),
            )
        } else {
            self.attributes(node, &["mode"])?;
            if self.optional_input(node, 3)?.is_some() {
                bail!("its axes input is not supported (qbake imports Pad with pads for every axis)");
            }
            let pads = self.const_i64(node, 1, "pads")?;
            let value = match self.optional_input(node, 2)? {
                None => 0.0,
                Some(_) => {
                    let c = self.const_f32(node, 2, "constant_value")?;
                    match &c.data {
                        KData::F32(v) if v.len() == 1 => v[0],
                        _ => bail!(
                            "its constant_value `{}` has shape {}; it must be one value",
                            c.value,
                            shape_str(&c.shape)
                        ),
                    }
                }
            };
            (node.attr_string("mode")?, pads, value)
        };
        let mode = mode.unwrap_or_else(|| "constant".to_string());
        if mode != "constant" {
            bail!("mode `{mode}` is not supported (qbake imports Pad in constant mode)");
        }
        if !value.is_finite() {
            bail!("its value {value} is not finite");
        }
        let (x, shape) = self.activation(node, 0, "data")?;
        let rank = shape.len();
        if pads.len() != 2 * rank {
            bail!(
                "pads {pads:?} are not 2 x {rank} values for data of shape {}",
                shape_str(&shape)
            );
        }
        if pads.iter().any(|&p| p < 0) {
            bail!("pads {pads:?} have a negative value (cropping); qbake imports non-negative pads");
        }
        let y = shape
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                usize::try_from(pads[i])
                    .ok()
                    .and_then(|b| d.checked_add(b))
                    .zip(usize::try_from(pads[i + rank]).ok())
                    .and_then(|(v, e)| v.checked_add(e))
                    .ok_or_else(|| Error::new(format!("pads {pads:?} overflow")))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        self.emit(name, Kind::Pad { pads, value }, vec![x], out, y)?;
        Ok(())
    }

    /// Squeeze, or Unsqueeze (`unsqueeze`): a Reshape to the resulting shape,
    /// or, on a constant, the constant reshaped.
    fn squeeze(&mut self, node: &NodeProto, name: String, out: String, unsqueeze: bool) -> Result<(), Error> {
        let axes: Option<Vec<i64>> = if self.opset < 13 {
            self.attributes(node, &["axes"])?;
            node.attr_ints("axes")?.map(<[i64]>::to_vec)
        } else {
            self.attributes(node, &[])?;
            match self.optional_input(node, 1)? {
                None => None,
                Some(_) => Some(self.const_i64(node, 1, "axes")?),
            }
        };
        let v = self.input(node, 0, "data")?;
        let shape = match &v {
            Val::Act { shape, .. } => shape,
            Val::Const(c) => &c.shape,
        };
        let y = if unsqueeze {
            let axes = axes.ok_or_else(|| Error::new("it has no axes"))?;
            unsqueezed(shape, &axes)?
        } else {
            squeezed(shape, axes.as_deref())?
        };
        match v {
            Val::Act { name: x, shape } => {
                if y.is_empty() {
                    bail!(
                        "it squeezes {} to a scalar; qbake values have at least one dimension",
                        shape_str(&shape)
                    );
                }
                let target = y.iter().map(|&d| d as i64).collect();
                self.emit(name, Kind::Reshape { shape: target }, vec![x], out, y)?;
                Ok(())
            }
            Val::Const(c) => self.define(node, reshaped_const(&c, out, y)),
        }
    }

    fn clip(&mut self, node: &NodeProto, name: String, out: String) -> Result<(), Error> {
        let (min, max) = if self.opset < 11 {
            self.attributes(node, &["min", "max"])?;
            (node.attr_float("min")?, node.attr_float("max")?)
        } else {
            self.attributes(node, &[])?;
            let mut bound = |i: usize, what: &str| -> Result<Option<f32>, Error> {
                if self.optional_input(node, i)?.is_none() {
                    return Ok(None);
                }
                let c = self.const_f32(node, i, what)?;
                match &c.data {
                    KData::F32(v) if v.len() == 1 => Ok(Some(v[0])),
                    _ => bail!(
                        "its {what} `{}` has shape {}; Clip's bounds are scalars",
                        c.value,
                        shape_str(&c.shape)
                    ),
                }
            };
            (bound(1, "min")?, bound(2, "max")?)
        };
        let (x, shape) = self.activation(node, 0, "input")?;
        // Unbounded sides are left out (JSON has no infinity); the largest
        // finite f32, opset 6's default, is unbounded too.
        let min = min.filter(|&v| v != f32::NEG_INFINITY && v != f32::MIN);
        let max = max.filter(|&v| v != f32::INFINITY && v != f32::MAX);
        let bad = |v: Option<f32>| v.is_some_and(|v| !v.is_finite());
        if bad(min) || bad(max) || matches!((min, max), (Some(lo), Some(hi)) if lo > hi) {
            bail!("bounds min {min:?}, max {max:?} are not a range qbake can clip to");
        }
        self.emit(name, Kind::Clip { min, max }, vec![x], out, shape)?;
        Ok(())
    }
}

/// A 2-value attribute of positive values (`[height, width]`), `[1, 1]` when absent.
fn pair(node: &NodeProto, name: &str) -> Result<[usize; 2], Error> {
    match node.attr_ints(name)? {
        None => Ok([1, 1]),
        Some(&[a, b]) if a > 0 && b > 0 => Ok([a as usize, b as usize]),
        Some(v) => bail!("{name} {v:?} are not two positive values [height, width]"),
    }
}

/// A tensor reference to constant `c`, optionally scaled by `alpha` (then a
/// derived tensor under the given name).
fn tref(c: &Konst, scale: Option<(f32, String)>) -> TRef {
    let KData::F32(values) = &c.data else {
        unreachable!("callers check for f32");
    };
    match scale {
        None => TRef {
            initializer: c.initializer.clone(),
            wanted: c.value.clone(),
            shape: c.shape.clone(),
            data: Rc::clone(values),
        },
        Some((alpha, wanted)) => TRef {
            initializer: None,
            wanted,
            shape: c.shape.clone(),
            data: Rc::new(values.iter().map(|&v| alpha * v).collect()),
        },
    }
}

/// A per-output constant (one value, or `n`) as `n` values times `scale`.
fn broadcast_values(c: &Konst, n: usize, scale: f32) -> Vec<f32> {
    let KData::F32(v) = &c.data else {
        unreachable!("callers check for f32");
    };
    (0..n)
        .map(|j| scale * v[if v.len() == 1 { 0 } else { j }])
        .collect()
}

/// The product of `dims`, checked.
fn prod(dims: &[usize]) -> Result<usize, Error> {
    dims.iter()
        .try_fold(1usize, |p, &d| p.checked_mul(d))
        .ok_or_else(|| Error::new(format!("the size of shape {dims:?} overflows")))
}

fn reshaped_const(c: &Konst, value: String, shape: Vec<usize>) -> Val {
    Val::Const(Rc::new(Konst {
        initializer: None,
        value,
        shape,
        data: c.data.clone(),
    }))
}

/// A MatMul or Gemm with no bias whose only reader is the Add of a constant
/// with one value per output (shape `[N]`, or 1s then `N`, as `[1, N]`)
/// becomes one node with that bias, a `[N]` tensor.
fn fold_biases(nodes: Vec<QNode>, graph_output: &str) -> Vec<QNode> {
    let mut readers: HashMap<String, usize> = HashMap::new();
    for input in nodes.iter().flat_map(|n| &n.inputs) {
        *readers.entry(input.clone()).or_insert(0) += 1;
    }
    let producer: HashMap<String, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.output.clone(), i))
        .collect();
    let mut nodes: Vec<Option<QNode>> = nodes.into_iter().map(Some).collect();
    for i in 0..nodes.len() {
        let Some(QNode {
            kind: Kind::AddConst(c),
            inputs,
            ..
        }) = &nodes[i]
        else {
            continue;
        };
        let src = &inputs[0];
        let Some(&p) = producer.get(src) else {
            continue;
        };
        let Some((&n, ones)) = c.shape.split_last() else {
            continue;
        };
        let foldable = readers.get(src) == Some(&1)
            && src != graph_output
            && ones.iter().all(|&d| d == 1)
            && matches!(&nodes[p], Some(QNode { kind: Kind::Dense { bias: None, .. }, shape, .. })
                if shape.last() == Some(&n));
        if !foldable {
            continue;
        }
        let add = nodes[i].take().expect("matched above");
        let dense = nodes[p].as_mut().expect("matched above");
        if let (Kind::Dense { bias, .. }, Kind::AddConst(c)) = (&mut dense.kind, add.kind) {
            // The same values as a [N] tensor: an initializer of another
            // shape is written anew, under its name if that is free.
            *bias = Some(if c.shape.len() == 1 {
                c
            } else {
                TRef {
                    initializer: None,
                    shape: vec![n],
                    ..c
                }
            });
        }
        dense.output = add.output;
        dense.name = format!("{}+{}", dense.name, add.name);
    }
    nodes.into_iter().flatten().collect()
}

/// `base`, or `base#2`, `base#3`... : the first not in `taken`, which it joins.
fn unique(base: &str, taken: &mut HashSet<String>, suffixes: &mut HashMap<String, usize>) -> String {
    let mut name = base.to_string();
    if taken.contains(&name) {
        let n = suffixes.entry(base.to_string()).or_insert(1);
        loop {
            *n += 1;
            name = format!("{base}#{n}");
            if !taken.contains(&name) {
                break;
            }
        }
    }
    taken.insert(name.clone());
    name
}

/// Names the tensors (initializers keep their names; derived ones get fresh
/// ones), writes each once, and writes the graph document. The copies come
/// out of what is left of the memory `budget`.
fn finish(
    nodes: Vec<QNode>,
    input: (String, Vec<usize>),
    output: String,
    mut budget: usize,
) -> Result<Imported, Error> {
    let mut tensors: Vec<Tensor> = Vec::new();
    let mut taken: HashSet<String> = HashSet::new();
    let mut suffixes: HashMap<String, usize> = HashMap::new();
    // Written tensors by their values and shape: a constant read by many nodes is written once.
    let mut written: HashMap<(*const Vec<f32>, Vec<usize>), String> = HashMap::new();
    let refs: Vec<&TRef> = nodes
        .iter()
        .flat_map(|n| match &n.kind {
            Kind::Dense { weight, bias, .. } | Kind::Conv { weight, bias, .. } => {
                vec![Some(weight), bias.as_ref()]
            }
            Kind::BatchNorm {
                scale,
                bias,
                mean,
                var,
                ..
            } => vec![Some(scale), Some(bias), Some(mean), Some(var)],
            Kind::AddConst(c) | Kind::MulConst(c) => vec![Some(c)],
            _ => vec![],
        })
        .flatten()
        .collect();
    // Initializers first, so that their names are theirs.
    for t in refs.iter().filter(|t| t.initializer.is_some()) {
        taken.extend(t.initializer.clone());
    }
    let mut name_of = |t: &TRef, tensors: &mut Vec<Tensor>| -> Result<String, Error> {
        let key = (Rc::as_ptr(&t.data), t.shape.clone());
        if let Some(name) = written.get(&key) {
            return Ok(name.clone());
        }
        let name = match &t.initializer {
            Some(init) => init.clone(),
            None => unique(&t.wanted, &mut taken, &mut suffixes),
        };
        budget = budget.checked_sub(t.data.len() * 4).ok_or_else(|| {
            Error::new(format!(
                "writing tensor `{name}` would take more memory than the file's size justifies"
            ))
        })?;
        tensors.push(Tensor {
            name: name.clone(),
            shape: t.shape.clone(),
            data: t.data.as_ref().clone(),
        });
        written.insert(key, name.clone());
        Ok(name)
    };
    let mut docs = Vec::with_capacity(nodes.len());
    for node in &nodes {
        let mut doc = NodeDef {
            name: Some(node.name.clone()),
            inputs: node.inputs.clone(),
            output: node.output.clone(),
            ..NodeDef::default()
        };
        match &node.kind {
            Kind::Dense {
                weight,
                bias,
                transposed,
            } => {
                doc.op = if *transposed { "MatMul" } else { "Dense" }.into();
                doc.weight = Some(name_of(weight, &mut tensors)?);
                doc.bias = bias.as_ref().map(|b| name_of(b, &mut tensors)).transpose()?;
            }
            Kind::Add => doc.op = "Add".into(),
            Kind::AddConst(c) => {
                doc.op = "Add".into();
                doc.constant = Some(name_of(c, &mut tensors)?);
            }
            Kind::MulConst(c) => {
                doc.op = "Mul".into();
                doc.constant = Some(name_of(c, &mut tensors)?);
            }
            Kind::Conv {
                weight,
                bias,
                window,
                group,
            } => {
                doc.op = "Conv".into();
                doc.weight = Some(name_of(weight, &mut tensors)?);
                doc.bias = bias.as_ref().map(|b| name_of(b, &mut tensors)).transpose()?;
                write_window(&mut doc, window);
                doc.group = Some(*group as i64);
            }
            Kind::BatchNorm {
                scale,
                bias,
                mean,
                var,
                epsilon,
            } => {
                doc.op = "BatchNormalization".into();
                doc.scale = Some(name_of(scale, &mut tensors)?);
                doc.bias = Some(name_of(bias, &mut tensors)?);
                doc.mean = Some(name_of(mean, &mut tensors)?);
                doc.var = Some(name_of(var, &mut tensors)?);
                doc.epsilon = Some(*epsilon);
            }
            Kind::MaxPool { kernel, window } => {
                doc.op = "MaxPool".into();
                doc.kernel_shape = Some(ints(kernel));
                write_window(&mut doc, window);
            }
            Kind::AveragePool {
                kernel,
                window,
                count_include_pad,
            } => {
                doc.op = "AveragePool".into();
                doc.kernel_shape = Some(ints(kernel));
                write_window(&mut doc, window);
                // The format's AveragePool has no dilations (they are [1, 1]).
                doc.dilations = None;
                doc.count_include_pad = Some(*count_include_pad);
            }
            Kind::GlobalAveragePool => doc.op = "GlobalAveragePool".into(),
            Kind::Pad { pads, value } => {
                doc.op = "Pad".into();
                doc.pads = Some(pads.clone());
                doc.value = Some(*value);
            }
            Kind::Relu => doc.op = "Relu".into(),
            Kind::Clip { min, max } => {
                doc.op = "Clip".into();
                (doc.min, doc.max) = (*min, *max);
            }
            Kind::Softmax { axis } => {
                doc.op = "Softmax".into();
                doc.axis = Some(*axis);
            }
            Kind::Flatten { axis } => {
                doc.op = "Flatten".into();
                doc.axis = Some(*axis);
            }
            Kind::Reshape { shape } => {
                doc.op = "Reshape".into();
                doc.shape = Some(shape.clone());
            }
        }
        docs.push(doc);
    }
    let doc = GraphDef {
        version: crate::graph::VERSION,
        inputs: vec![InputDef {
            name: input.0,
            shape: input.1.iter().map(|&d| d as i64).collect(),
        }],
        outputs: vec![output],
        nodes: docs,
    };
    let graph_json =
        serde_json::to_string(&doc).map_err(|e| Error::new(format!("cannot write the graph: {e}")))?;
    Ok(Imported { tensors, graph_json })
}

fn ints(v: &[usize]) -> Vec<i64> {
    v.iter().map(|&d| d as i64).collect()
}

/// A window's strides, dilations and pads, explicit (`auto_pad` resolved).
fn write_window(doc: &mut NodeDef, window: &Window) {
    doc.strides = Some(ints(&window.strides));
    doc.dilations = Some(ints(&window.dilations));
    doc.pads = Some(ints(&window.pads));
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let items: Vec<String> = items.map(|s| format!("`{s}`")).collect();
    match items.as_slice() {
        [] => "none".to_string(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}
