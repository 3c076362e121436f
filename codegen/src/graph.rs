//! The `qbake.graph` document: its schema, its validation, and the plan the
//! emitter follows (steps in execution order, activations fused).

use crate::error::{Error, bail};
use crate::read::ModelFile;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The schema version this reader understands.
pub const VERSION: u32 = 1;

/// The graph document (docs/format.md): read from model files, and written
/// by the ONNX importer.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GraphDef {
    pub version: u32,
    pub inputs: Vec<InputDef>,
    pub outputs: Vec<String>,
    pub nodes: Vec<NodeDef>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InputDef {
    pub name: String,
    pub shape: Vec<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub op: String,
    pub inputs: Vec<String>,
    pub output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bias: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub constant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub axis: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<i64>>,
    /// Squeeze / Unsqueeze: the axes removed or inserted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub axes: Option<Vec<i64>>,
    /// BatchNormalization: `scale` (gamma), `bias` (beta), `mean`, `var` tensors, `epsilon`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub var: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f32>,
    /// Conv and pools: `[h, w]` strides and dilations, pads `[top, left,
    /// bottom, right]` (ONNX order), `group` (Conv), `kernel_shape` (pools).
    /// Pad: `pads` is ONNX's `[begin of each axis..., end of each axis...]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strides: Option<Vec<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dilations: Option<Vec<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pads: Option<Vec<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_shape: Option<Vec<i64>>,
    /// AveragePool: whether padding counts in the divisor (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_include_pad: Option<bool>,
    /// Pad: the constant padded with (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f32>,
}

/// An activation fused into a step.
#[derive(Debug, Clone, PartialEq)]
pub enum Act {
    None,
    Relu,
    Clip {
        min: f32,
        max: f32,
    },
    /// `Clip` with an upper bound per channel (the last axis of the value
    /// as stored): tensor `max` of the plan, `[channels]`. Cross-layer
    /// equalization makes these of the `Clip`s whose channels it scales.
    ClipChannels {
        min: f32,
        max: String,
    },
}

/// How a value's elements are stored. Shapes are always the graph's
/// (ONNX's, NCHW); a 4-D value stored `Nhwc` keeps each pixel's channels
/// contiguous, which is what convolutions and pools read and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    Plain,
    Nhwc,
}

/// The geometry of a 2-D convolution or pool over NHWC data: the
/// runtime's `qbake::conv::Conv2d`, one definition in `qbake-format`.
pub use qbake_format::Conv2d as ConvGeom;

/// The reduction of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Average { count_include_pad: bool },
}

/// One step of the forward pass. Weight tensors are matrices `[rows, cols]`
/// in [`Plan::tensors`], one row per output channel, already in the order
/// the kernels read; constants are in the storage layout of the value they
/// apply to, a suffix of its storage shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `y = act(x W^T + b)`, `W` `[N, K]`.
    Dense {
        weight: String,
        bias: Option<String>,
        act: Act,
    },
    /// A convolution with one group; `weight` `[out_c, kh * kw * in_c]`, columns `(i, j, c)`.
    Conv {
        geom: ConvGeom,
        weight: String,
        bias: Option<String>,
        act: Act,
    },
    /// A convolution of `groups` groups, one weight each, `[out_c / groups, kh * kw * in_c / groups]`.
    GroupedConv {
        geom: ConvGeom,
        weights: Vec<String>,
        bias: Option<String>,
        act: Act,
    },
    /// One filter per channel; `weight` `[channels, kh * kw]`.
    Depthwise {
        geom: ConvGeom,
        weight: String,
        bias: Option<String>,
        act: Act,
    },
    Pool {
        geom: ConvGeom,
        kind: PoolKind,
    },
    GlobalAveragePool {
        batch: usize,
        pixels: usize,
        channels: usize,
    },
    /// Constant padding of an NHWC value's two spatial dimensions.
    Pad {
        batch: usize,
        h: usize,
        w: usize,
        c: usize,
        pads: [usize; 4],
        value: f32,
    },
    /// `y = act(a + b)`, same shapes and layouts.
    Add {
        act: Act,
    },
    /// `y = act(x + c)`.
    AddConstant {
        constant: String,
        act: Act,
    },
    /// `y = act(x * c)`.
    MulConstant {
        constant: String,
        act: Act,
    },
    /// A lone `Relu` or `Clip`.
    Activation(Act),
    /// Softmax over the middle axis of `[outer, len, inner]`.
    Softmax {
        outer: usize,
        len: usize,
        inner: usize,
    },
    /// The same buffer under another shape or layout.
    Alias,
    /// NCHW to NHWC.
    ToNhwc {
        batch: usize,
        channels: usize,
        pixels: usize,
    },
    /// NHWC to NCHW.
    ToNchw {
        batch: usize,
        pixels: usize,
        channels: usize,
    },
}

impl Op {
    /// The fused activation, for ops that have one.
    pub fn act(&self) -> Option<&Act> {
        match self {
            Op::Dense { act, .. }
            | Op::Conv { act, .. }
            | Op::GroupedConv { act, .. }
            | Op::Depthwise { act, .. }
            | Op::Add { act }
            | Op::AddConstant { act, .. }
            | Op::MulConstant { act, .. } => Some(act),
            _ => None,
        }
    }

    /// The fused activation, for ops that have one, to change it.
    pub fn act_mut(&mut self) -> Option<&mut Act> {
        match self {
            Op::Dense { act, .. }
            | Op::Conv { act, .. }
            | Op::GroupedConv { act, .. }
            | Op::Depthwise { act, .. }
            | Op::Add { act }
            | Op::AddConstant { act, .. }
            | Op::MulConstant { act, .. } => Some(act),
            _ => None,
        }
    }

    /// The tensors the op reads: weight matrices first, then biases,
    /// constants and per-channel activation bounds.
    pub fn tensors(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.weights();
        match self {
            Op::Dense { bias, .. }
            | Op::Conv { bias, .. }
            | Op::GroupedConv { bias, .. }
            | Op::Depthwise { bias, .. } => names.extend(bias.as_deref()),
            Op::AddConstant { constant, .. } | Op::MulConstant { constant, .. } => names.push(constant),
            _ => {}
        }
        if let Some(Act::ClipChannels { max, .. }) = self.act() {
            names.push(max);
        }
        names
    }

    /// The weight matrices the op reads (the tensors that get quantized).
    pub fn weights(&self) -> Vec<&str> {
        match self {
            Op::Dense { weight, .. } | Op::Conv { weight, .. } | Op::Depthwise { weight, .. } => {
                vec![weight]
            }
            Op::GroupedConv { weights, .. } => weights.iter().map(String::as_str).collect(),
            _ => vec![],
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The node's name, or `op#index` when it has none; `a+b` when nodes were folded or fused.
    pub name: String,
    /// The op as written in the graph (before folding), for docs.
    pub op_name: String,
    pub op: Op,
    pub inputs: Vec<usize>,
    pub output: usize,
    /// For a layer with a batch normalization folded in last: the
    /// distribution of its output before the activation, per channel, as
    /// that normalization describes it (bias correction uses it).
    pub bn: Option<Normal>,
}

/// Per channel, a normal distribution: `mean` and `std`.
#[derive(Debug, Clone, PartialEq)]
pub struct Normal {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub name: String,
    /// The graph's shape (NCHW for images), whatever the layout.
    pub shape: Vec<usize>,
    pub len: usize,
    pub layout: Layout,
}

/// A float tensor of the plan: read from the file, possibly reordered or
/// with batch normalization folded in.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Arc<[f32]>,
}

/// A validated graph, ready to bake: values (index 0 is the input), the
/// steps that compute the output in execution order, and the tensors they
/// read.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub values: Vec<Value>,
    pub steps: Vec<Step>,
    pub output: usize,
    pub tensors: HashMap<String, Tensor>,
}

impl Plan {
    pub fn input(&self) -> &Value {
        &self.values[0]
    }

    /// A tensor a step names.
    pub fn tensor(&self, name: &str) -> &Tensor {
        &self.tensors[name]
    }

    /// For each step, whether it is a 1x1 convolution that runs inside the
    /// next step, the depthwise convolution that alone reads its output:
    /// one call to `qbake::ops::pointwise_depthwise`, band by band, so
    /// that the 1x1 output (an expansion, six times its input) never exists
    /// whole and has no buffer. One pass over the steps.
    pub fn fused_into_next(&self) -> Vec<bool> {
        let mut reads = vec![0usize; self.values.len()];
        for step in &self.steps {
            for &v in &step.inputs {
                reads[v] += 1;
            }
        }
        let pair = |step: &Step, next: &Step| {
            matches!(&step.op, Op::Conv { geom, .. } if geom.is_pointwise())
                && matches!(next.op, Op::Depthwise { .. })
                && next.inputs == [step.output]
                && step.output != self.output
                && reads[step.output] == 1
        };
        let mut fused: Vec<bool> = self.steps.windows(2).map(|w| pair(&w[0], &w[1])).collect();
        fused.push(false);
        fused.truncate(self.steps.len());
        fused
    }

    /// The weights of depthwise convolutions: baked beside a cache of f32
    /// taps, which their kernel reads instead of the 8-bit bytes.
    pub fn depthwise_weights(&self) -> HashSet<&str> {
        self.steps
            .iter()
            .filter_map(|s| match &s.op {
                Op::Depthwise { weight, .. } => Some(weight.as_str()),
                _ => None,
            })
            .collect()
    }
}

/// Reads, validates and plans the graph of `file`.
pub fn plan(file: &ModelFile) -> Result<Plan, Error> {
    let Some(json) = file.graph_json() else {
        bail!(
            "the file has no `{}` metadata, so qbake does not know the computation; import the model from ONNX with `cargo xtask import`, or add the graph as described in docs/format.md",
            crate::read::GRAPH_KEY
        );
    };
    plan_graph(&parse(json)?, file)
}

/// Parses a `qbake.graph` document into its schema (nothing is checked
/// against a file yet: that is [`plan_graph`]).
pub fn parse(json: &str) -> Result<GraphDef, Error> {
    serde_json::from_str(json).map_err(|e| {
        let cut = if e.is_eof() {
            " (the document ends before it is complete: is it truncated?)"
        } else {
            ""
        };
        Error::new(format!(
            "`{}` is not a valid graph: {e}{cut}",
            crate::read::GRAPH_KEY
        ))
    })
}

/// Validates `def` against the tensors of `file` and plans it.
pub fn plan_graph(def: &GraphDef, file: &ModelFile) -> Result<Plan, Error> {
    if def.version != VERSION {
        bail!(
            "graph version {} is not supported; this qbake reads version {VERSION}",
            def.version
        );
    }
    let [input] = def.inputs.as_slice() else {
        bail!(
            "the graph has {} inputs; qbake models take exactly one",
            def.inputs.len()
        );
    };
    let [output_name] = def.outputs.as_slice() else {
        bail!(
            "the graph has {} outputs; qbake models give exactly one",
            def.outputs.len()
        );
    };
    let input_shape = dims(&input.shape, &format!("input `{}`", input.name))?;

    // Who produces each value.
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, node) in def.nodes.iter().enumerate() {
        if node.output == input.name || producer.insert(&node.output, i).is_some() {
            bail!(
                "value `{}` is produced twice (node `{}`)",
                node.output,
                node_name(node, i)
            );
        }
    }
    for (i, node) in def.nodes.iter().enumerate() {
        for v in &node.inputs {
            if *v != input.name && !producer.contains_key(v.as_str()) {
                bail!(
                    "node `{}` reads `{v}`, which is neither the graph input nor any node's output",
                    node_name(node, i)
                );
            }
        }
    }
    if *output_name == input.name {
        bail!("the graph output `{output_name}` is its input; there is nothing to compute");
    }
    let Some(&out_node) = producer.get(output_name.as_str()) else {
        bail!("no node produces the graph output `{output_name}`");
    };

    // Only the nodes the output depends on, in an order where each runs after its inputs.
    let order = execution_order(def, &producer, out_node)?;
    // How many nodes read each value (a node reading it twice counts once);
    // the graph output counts as a reader. Folding needs a value read once.
    let mut readers: HashMap<&str, usize> = HashMap::from([(output_name.as_str(), 1)]);
    for &i in &order {
        let inputs = &def.nodes[i].inputs;
        for (j, v) in inputs.iter().enumerate() {
            if !inputs[..j].contains(v) {
                *readers.entry(v).or_insert(0) += 1;
            }
        }
    }
    let mut planner = crate::plan::Planner::new(file, &input.name, input_shape, readers);
    for i in order {
        let node = &def.nodes[i];
        let name = node_name(node, i);
        planner.node(node, &name).map_err(|e| in_node(&name, e))?;
    }
    let mut plan = planner.finish(output_name);
    fuse_activations(&mut plan);
    Ok(plan)
}

/// `e`, prefixed with the node it concerns.
pub(crate) fn in_node(name: &str, e: Error) -> Error {
    Error::new(format!("node `{name}`: {e}"))
}

fn node_name(node: &NodeDef, index: usize) -> String {
    node.name
        .clone()
        .unwrap_or_else(|| format!("{}#{index}", node.op))
}

/// Depth-first from the output node; a node met again while still open is a cycle.
fn execution_order(
    def: &GraphDef,
    producer: &HashMap<&str, usize>,
    out_node: usize,
) -> Result<Vec<usize>, Error> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; def.nodes.len()];
    let mut order = Vec::new();
    // (node, next input to visit); an explicit stack, so deep graphs cannot overflow ours.
    let mut stack = vec![(out_node, 0usize)];
    mark[out_node] = Mark::Open;
    while let Some(&mut (node, ref mut next)) = stack.last_mut() {
        let inputs = &def.nodes[node].inputs;
        if *next == inputs.len() {
            mark[node] = Mark::Done;
            order.push(node);
            stack.pop();
            continue;
        }
        let v = &inputs[*next];
        *next += 1;
        let Some(&p) = producer.get(v.as_str()) else {
            continue;
        };
        match mark[p] {
            Mark::Done => {}
            Mark::Open => {
                let start = stack.iter().position(|&(n, _)| n == p).unwrap_or(0);
                let cycle: Vec<String> = stack[start..]
                    .iter()
                    .map(|&(n, _)| format!("`{}`", node_name(&def.nodes[n], n)))
                    .collect();
                bail!("the graph has a cycle through nodes {}", cycle.join(" -> "));
            }
            Mark::New => {
                mark[p] = Mark::Open;
                stack.push((p, 0));
            }
        }
    }
    Ok(order)
}

pub(crate) fn checked_product(dims: &[usize]) -> Option<usize> {
    // Elements must also fit an f32 buffer's byte size.
    dims.iter()
        .try_fold(1usize, |p, &d| p.checked_mul(d))
        .filter(|&n| n.checked_mul(4).is_some_and(|b| b <= isize::MAX as usize))
}

/// A declared shape: positive dimensions whose product fits.
pub(crate) fn dims(shape: &[i64], what: &str) -> Result<Vec<usize>, Error> {
    if shape.is_empty() {
        bail!("{what} has an empty shape; give at least one dimension");
    }
    let dims: Vec<usize> = shape
        .iter()
        .map(|&d| usize::try_from(d).ok().filter(|&d| d > 0))
        .collect::<Option<_>>()
        .ok_or_else(|| Error::new(format!("{what} has shape {shape:?}; dimensions must be positive")))?;
    checked_product(&dims)
        .ok_or_else(|| Error::new(format!("{what} has shape {shape:?}, whose size overflows")))?;
    Ok(dims)
}

/// An ONNX axis (negative counts from the end) as an index in `0..=max`.
pub(crate) fn normalize_axis(axis: i64, rank: i64, max: i64) -> Result<usize, Error> {
    let a = if axis < 0 { axis + rank } else { axis };
    if !(0..=max).contains(&a) {
        bail!("axis {axis} is out of range for rank {rank}");
    }
    Ok(a as usize)
}

/// Whether a constant of shape `c` broadcasts onto `x` by ONNX's
/// unidirectional rules: aligned at the end, each of its dimensions 1 or
/// `x`'s, and no more of them than `x` has (so `x`'s shape is unchanged).
pub(crate) fn broadcasts_onto(c: &[usize], x: &[usize]) -> bool {
    c.len() <= x.len()
        && c.iter()
            .rev()
            .zip(x.iter().rev())
            .all(|(&d, &xd)| d == 1 || d == xd)
}

/// ONNX axes (negative ones count from the end of a shape of rank `rank`),
/// normalized and checked for range and repeats.
fn normalize_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, Error> {
    let r = rank as i64;
    let mut out = Vec::with_capacity(axes.len().min(rank));
    for &a in axes {
        let n = if a < 0 { a + r } else { a };
        if !(0..r).contains(&n) {
            bail!("axis {a} is out of range for rank {rank}");
        }
        let n = n as usize;
        if out.contains(&n) {
            bail!("axes {axes:?} name axis {n} twice");
        }
        out.push(n);
    }
    Ok(out)
}

/// Squeeze's output shape: `x` without the `axes` (each of size 1), or
/// without every dimension of size 1 when `axes` is `None`.
pub(crate) fn squeezed(x: &[usize], axes: Option<&[i64]>) -> Result<Vec<usize>, Error> {
    let Some(axes) = axes else {
        return Ok(x.iter().copied().filter(|&d| d != 1).collect());
    };
    let axes = normalize_axes(axes, x.len())?;
    if let Some(&a) = axes.iter().find(|&&a| x[a] != 1) {
        bail!(
            "it squeezes axis {a} of shape {x:?}, which has size {}, not 1",
            x[a]
        );
    }
    Ok(x.iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect())
}

/// Unsqueeze's output shape: `x` with dimensions of size 1 inserted at
/// `axes`, positions in the output.
pub(crate) fn unsqueezed(x: &[usize], axes: &[i64]) -> Result<Vec<usize>, Error> {
    let rank = x
        .len()
        .checked_add(axes.len())
        .filter(|&r| r <= x.len() + 64)
        .ok_or_else(|| Error::new(format!("axes {axes:?} are too many")))?;
    let axes = normalize_axes(axes, rank)?;
    let mut rest = x.iter();
    Ok((0..rank)
        .map(|i| {
            if axes.contains(&i) {
                1
            } else {
                *rest.next().expect("rank is x's plus the axes")
            }
        })
        .collect())
}

/// ONNX Reshape's output shape: `0` copies the input dimension, one `-1` is inferred.
pub(crate) fn reshape(x: &[usize], target: &[i64]) -> Result<Vec<usize>, Error> {
    let total = checked_product(x).ok_or_else(|| Error::new(format!("the size of shape {x:?} overflows")))?;
    let mut infer = None;
    // The target comes from the file: no capacity it cannot justify.
    let mut shape = Vec::with_capacity(target.len().min(x.len() + 64));
    for (i, &d) in target.iter().enumerate() {
        shape.push(match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                1
            }
            0 => *x.get(i).ok_or_else(|| {
                Error::new(format!(
                    "shape {target:?} copies dimension {i}, but the input has rank {}",
                    x.len()
                ))
            })?,
            d if d > 0 => {
                usize::try_from(d).map_err(|_| Error::new(format!("shape {target:?} is too large")))?
            }
            _ => bail!("shape {target:?} is invalid (at most one -1, no other negatives)"),
        });
    }
    let known = checked_product(&shape).ok_or_else(|| Error::new(format!("shape {target:?} overflows")))?;
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            bail!("cannot reshape {x:?} into {target:?}");
        }
        shape[i] = total / known;
    } else if known != total {
        bail!("cannot reshape {x:?} ({total} values) into {target:?} ({known} values)");
    }
    Ok(shape)
}

/// Folds a lone `Relu`/`Clip` into the step that produces its input (a
/// GEMM, convolution or elementwise op with no activation yet), when nothing
/// else reads that input. One pass, linear in the steps: a hostile graph of
/// a million chained activations must not stall the compiler.
fn fuse_activations(plan: &mut Plan) {
    // How many steps read each value (a step reading it twice counts once).
    let mut readers = vec![0usize; plan.values.len()];
    for step in &plan.steps {
        for (i, &v) in step.inputs.iter().enumerate() {
            if !step.inputs[..i].contains(&v) {
                readers[v] += 1;
            }
        }
    }
    let mut fused: Vec<Step> = Vec::with_capacity(plan.steps.len());
    // The position in `fused` of the step that produces each value.
    let mut producer: Vec<Option<usize>> = vec![None; plan.values.len()];
    for step in std::mem::take(&mut plan.steps) {
        if let Op::Activation(act) = &step.op {
            let src = step.inputs[0];
            let into = producer[src].filter(|&p| {
                readers[src] == 1 && src != plan.output && fused[p].op.act() == Some(&Act::None)
            });
            if let Some(p) = into {
                let target = &mut fused[p];
                *target.op.act_mut().expect("checked above") = act.clone();
                target.output = step.output;
                target.name = format!("{}+{}", target.name, step.name);
                producer[step.output] = Some(p);
                continue;
            }
        }
        producer[step.output] = Some(fused.len());
        fused.push(step);
    }
    plan.steps = fused;
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::{Dtype, TensorView};

    fn plan_of(nodes: &str) -> Plan {
        let bytes: Vec<u8> = (0..16).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let graph = format!(
            r#"{{"version":1,"inputs":[{{"name":"x","shape":[1,4]}}],"outputs":["out"],"nodes":[{nodes}]}}"#
        );
        let metadata = HashMap::from([(crate::read::GRAPH_KEY.to_string(), graph)]);
        let view = TensorView::new(Dtype::F32, vec![4, 4], &bytes).unwrap();
        let file = safetensors::serialize([("w", view)], Some(metadata)).unwrap();
        plan(&ModelFile::from_bytes(&file).unwrap()).unwrap()
    }

    fn summary(plan: &Plan) -> Vec<(String, Op)> {
        plan.steps
            .iter()
            .map(|s| (s.name.clone(), s.op.clone()))
            .collect()
    }

    #[test]
    fn activations_fuse_into_their_only_reader_once() {
        let plan = plan_of(
            r#"{"name":"d","op":"Dense","inputs":["x"],"output":"h","weight":"w"},
               {"name":"r1","op":"Relu","inputs":["h"],"output":"h1"},
               {"name":"r2","op":"Relu","inputs":["h1"],"output":"h2"},
               {"name":"a","op":"Add","inputs":["h2","h2"],"output":"s"},
               {"name":"c","op":"Clip","inputs":["s"],"output":"sc","min":0,"max":6},
               {"name":"e","op":"Dense","inputs":["sc"],"output":"t","weight":"w"},
               {"name":"r3","op":"Relu","inputs":["t"],"output":"t1"},
               {"name":"b","op":"Add","inputs":["t","t1"],"output":"out"}"#,
        );
        let dense = |act| Op::Dense {
            weight: "w".into(),
            bias: None,
            act,
        };
        let (relu, relu6) = (|| Act::Relu, Act::Clip { min: 0.0, max: 6.0 });
        assert_eq!(
            summary(&plan),
            [
                // r1 into d; r2 stays (its producer has an activation now).
                ("d+r1".to_string(), dense(relu())),
                ("r2".into(), Op::Activation(relu())),
                ("a+c".into(), Op::Add { act: relu6 }),
                // t has two readers: r3 stays.
                ("e".into(), dense(Act::None)),
                ("r3".into(), Op::Activation(relu())),
                ("b".into(), Op::Add { act: Act::None }),
            ]
        );
        // Each step reads what the one before it wrote, under the fused names.
        assert_eq!(plan.values[plan.steps[1].inputs[0]].name, "h1");
        assert_eq!(plan.values[plan.steps[2].inputs[0]].name, "h2");
        assert_eq!(plan.values[plan.steps[3].inputs[0]].name, "sc");
        assert_eq!(plan.values[plan.output].name, "out");
    }

    #[test]
    fn broadcasting_and_squeezing() {
        assert!(broadcasts_onto(&[4, 1, 1], &[1, 4, 5, 5]));
        assert!(broadcasts_onto(&[1, 4, 1, 1], &[1, 4, 5, 5]));
        assert!(broadcasts_onto(&[], &[1, 4]));
        assert!(!broadcasts_onto(&[4], &[1, 4, 5, 5]));
        assert!(!broadcasts_onto(&[1, 1, 4, 5, 5], &[1, 4, 5, 5]));
        assert_eq!(squeezed(&[1, 8, 1, 1], Some(&[2, -1])).unwrap(), [1, 8]);
        assert_eq!(squeezed(&[1, 8, 1, 1], None).unwrap(), [8]);
        assert!(squeezed(&[1, 8], Some(&[1])).is_err());
        assert!(squeezed(&[1, 1], Some(&[0, -2])).is_err());
        assert_eq!(unsqueezed(&[8], &[0, -1]).unwrap(), [1, 8, 1]);
        assert_eq!(unsqueezed(&[2, 3], &[1]).unwrap(), [2, 1, 3]);
        assert!(unsqueezed(&[2], &[3]).is_err());
    }
}
