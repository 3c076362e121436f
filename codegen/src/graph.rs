//! The `qbake.graph` document: its schema, its validation, and the plan the
//! emitter follows (steps in execution order, activations fused).

use crate::error::{Error, bail};
use crate::read::ModelFile;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

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
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    None,
    Relu,
    Clip { min: f32, max: f32 },
}

/// One step of the forward pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `y = act(x W^T + b)`; `weight` is `[N, K]`, or `[K, N]` when `transposed` (MatMul).
    Dense {
        weight: String,
        bias: Option<String>,
        transposed: bool,
        act: Act,
    },
    /// `y = act(a + b)`, same shapes.
    Add { act: Act },
    /// `y = act(x + c)`, `c` broadcast over the leading dimensions.
    AddConstant { constant: String, act: Act },
    /// A lone `Relu` or `Clip`.
    Activation(Act),
    /// Softmax over the middle axis of `[outer, len, inner]`.
    Softmax { outer: usize, len: usize, inner: usize },
    /// Flatten or Reshape: the same buffer under another shape.
    Alias,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The node's name, or `op#index` when it has none.
    pub name: String,
    /// The op as written in the graph (before fusion), for docs.
    pub op_name: String,
    pub op: Op,
    pub inputs: Vec<usize>,
    pub output: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub name: String,
    pub shape: Vec<usize>,
    pub len: usize,
}

/// A validated graph, ready to bake: values (index 0 is the input) and the
/// steps that compute the output, in execution order.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub values: Vec<Value>,
    pub steps: Vec<Step>,
    pub output: usize,
}

impl Plan {
    pub fn input(&self) -> &Value {
        &self.values[0]
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

    let mut values = vec![Value {
        name: input.name.clone(),
        len: input_shape.iter().product(),
        shape: input_shape,
    }];
    let mut value_of: HashMap<&str, usize> = HashMap::from([(input.name.as_str(), 0)]);
    let mut steps = Vec::with_capacity(order.len());
    for i in order {
        let node = &def.nodes[i];
        let name = node_name(node, i);
        let inputs: Vec<usize> = node.inputs.iter().map(|v| value_of[v.as_str()]).collect();
        let shapes: Vec<&[usize]> = inputs.iter().map(|&v| values[v].shape.as_slice()).collect();
        let (op, shape) = check_node(node, &name, &shapes, file)?;
        let len = checked_product(&shape)
            .ok_or_else(|| Error::new(format!("node `{name}`: its output shape {shape:?} overflows")))?;
        values.push(Value {
            name: node.output.clone(),
            shape,
            len,
        });
        value_of.insert(&node.output, values.len() - 1);
        steps.push(Step {
            name,
            op_name: node.op.clone(),
            op,
            inputs,
            output: values.len() - 1,
        });
    }
    let mut plan = Plan {
        output: value_of[output_name.as_str()],
        values,
        steps,
    };
    fuse_activations(&mut plan);
    Ok(plan)
}

/// `e`, prefixed with the node it concerns.
fn in_node(name: &str, e: Error) -> Error {
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

fn checked_product(dims: &[usize]) -> Option<usize> {
    // Elements must also fit an f32 buffer's byte size.
    dims.iter()
        .try_fold(1usize, |p, &d| p.checked_mul(d))
        .filter(|&n| n.checked_mul(4).is_some_and(|b| b <= isize::MAX as usize))
}

/// A declared shape: positive dimensions whose product fits.
fn dims(shape: &[i64], what: &str) -> Result<Vec<usize>, Error> {
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

/// Checks one node against its input shapes and the file; returns its op and output shape.
fn check_node(
    node: &NodeDef,
    name: &str,
    shapes: &[&[usize]],
    file: &ModelFile,
) -> Result<(Op, Vec<usize>), Error> {
    let op = node.op.as_str();
    let allowed: &[&str] = match op {
        "Dense" | "MatMul" => &["weight", "bias", "activation"],
        "Add" => &["constant", "activation"],
        "Clip" => &["min", "max"],
        "Softmax" | "Flatten" => &["axis"],
        "Reshape" => &["shape"],
        "Relu" => &[],
        _ => bail!(
            "node `{name}` has op `{op}`, which qbake does not support; the ops are Dense, MatMul, Add, Relu, Clip, Softmax, Flatten and Reshape"
        ),
    };
    let given = [
        ("weight", node.weight.is_some()),
        ("bias", node.bias.is_some()),
        ("constant", node.constant.is_some()),
        ("activation", node.activation.is_some()),
        ("min", node.min.is_some()),
        ("max", node.max.is_some()),
        ("axis", node.axis.is_some()),
        ("shape", node.shape.is_some()),
    ];
    if let Some((attr, _)) = given.iter().find(|(a, g)| *g && !allowed.contains(a)) {
        bail!("node `{name}`: `{attr}` does not apply to {op}");
    }
    let arity = if op == "Add" && node.constant.is_none() {
        2
    } else {
        1
    };
    if shapes.len() != arity {
        bail!("node `{name}`: {op} takes {arity} input(s), got {}", shapes.len());
    }
    let x = shapes[0];
    let rank = x.len() as i64;
    Ok(match op {
        "Dense" | "MatMul" => {
            let transposed = op == "MatMul";
            let Some(weight) = &node.weight else {
                bail!("node `{name}`: {op} needs a `weight` tensor");
            };
            let w = tensor(file, name, weight)?;
            let (n, k) = match (w.shape.as_slice(), transposed) {
                (&[n, k], false) => (n, k),
                (&[k, n], true) => (n, k),
                (s, _) => bail!("node `{name}`: weight `{weight}` has shape {s:?}; {op} needs a 2-D weight"),
            };
            let layout = if transposed { "[K, N]" } else { "[N, K]" };
            if x.last() != Some(&k) {
                // The other layout would chain: the weight suits the other op.
                let hint = match transposed {
                    true if x.last() == Some(&n) => "; as [N, K] it would chain: Dense takes that layout",
                    false if x.last() == Some(&n) => "; as [K, N] it would chain: MatMul takes that layout",
                    _ => "",
                };
                bail!(
                    "node `{name}`: input shape {x:?} does not chain with weight `{weight}` of shape {:?} ({layout}): the input's last dimension must be {k}{hint}",
                    w.shape
                );
            }
            if let Some(bias) = &node.bias {
                let b = tensor(file, name, bias)?;
                if b.shape != [n] {
                    bail!(
                        "node `{name}`: bias `{bias}` has shape {:?}; expected [{n}]",
                        b.shape
                    );
                }
            }
            let act = activation_attr(node, name)?;
            let mut shape = x.to_vec();
            *shape.last_mut().unwrap() = n;
            (
                Op::Dense {
                    weight: weight.clone(),
                    bias: node.bias.clone(),
                    transposed,
                    act,
                },
                shape,
            )
        }
        "Add" => {
            let act = activation_attr(node, name)?;
            match &node.constant {
                None => {
                    if shapes[0] != shapes[1] {
                        bail!(
                            "node `{name}`: Add of shapes {:?} and {:?}; they must be equal",
                            shapes[0],
                            shapes[1]
                        );
                    }
                    (Op::Add { act }, x.to_vec())
                }
                Some(c) => {
                    let t = tensor(file, name, c)?;
                    let lead = t.shape.iter().take_while(|&&d| d == 1).count();
                    let suffix = &t.shape[lead.min(t.shape.len().saturating_sub(1))..];
                    if suffix.len() > x.len() || !x.ends_with(suffix) {
                        bail!(
                            "node `{name}`: constant `{c}` of shape {:?} does not broadcast onto {x:?}",
                            t.shape
                        );
                    }
                    (
                        Op::AddConstant {
                            constant: c.clone(),
                            act,
                        },
                        x.to_vec(),
                    )
                }
            }
        }
        "Relu" => (Op::Activation(Act::Relu), x.to_vec()),
        "Clip" => {
            let (min, max) = (
                node.min.unwrap_or(f32::NEG_INFINITY),
                node.max.unwrap_or(f32::INFINITY),
            );
            if min.is_nan() || max.is_nan() || min > max {
                bail!("node `{name}`: Clip needs min <= max, got min {min}, max {max}");
            }
            (Op::Activation(Act::Clip { min, max }), x.to_vec())
        }
        "Softmax" => {
            let axis = node.axis.unwrap_or(-1);
            let a = normalize_axis(axis, rank, rank - 1).map_err(|e| in_node(name, e))?;
            let outer = x[..a].iter().product();
            let inner = x[a + 1..].iter().product();
            (
                Op::Softmax {
                    outer,
                    len: x[a],
                    inner,
                },
                x.to_vec(),
            )
        }
        "Flatten" => {
            let a = normalize_axis(node.axis.unwrap_or(1), rank, rank).map_err(|e| in_node(name, e))?;
            (Op::Alias, vec![x[..a].iter().product(), x[a..].iter().product()])
        }
        "Reshape" => {
            let Some(target) = &node.shape else {
                bail!("node `{name}`: Reshape needs a `shape`");
            };
            (Op::Alias, reshape(x, target).map_err(|e| in_node(name, e))?)
        }
        _ => unreachable!("ops are checked above"),
    })
}

fn tensor<'f>(file: &'f ModelFile, node: &str, name: &str) -> Result<&'f crate::read::TensorInfo, Error> {
    let t = file.tensor(name).ok_or_else(|| {
        Error::new(format!(
            "node `{node}` names tensor `{name}`, which the file does not have"
        ))
    })?;
    // An empty weight would give zero-sized values downstream, which no op computes.
    if t.shape.contains(&0) {
        bail!(
            "node `{node}`: tensor `{name}` has shape {:?}; tensors must not have a zero dimension",
            t.shape
        );
    }
    Ok(t)
}

fn activation_attr(node: &NodeDef, name: &str) -> Result<Act, Error> {
    Ok(match node.activation.as_deref() {
        None | Some("none") => Act::None,
        Some("relu") => Act::Relu,
        Some("relu6") => Act::Clip { min: 0.0, max: 6.0 },
        Some(other) => {
            bail!("node `{name}`: activation `{other}` is not one of \"none\", \"relu\", \"relu6\"")
        }
    })
}

/// An ONNX axis (negative counts from the end) as an index in `0..=max`.
pub(crate) fn normalize_axis(axis: i64, rank: i64, max: i64) -> Result<usize, Error> {
    let a = if axis < 0 { axis + rank } else { axis };
    if !(0..=max).contains(&a) {
        bail!("axis {axis} is out of range for rank {rank}");
    }
    Ok(a as usize)
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

/// Folds a lone `Relu`/`Clip` into the Dense or Add that produces its input,
/// when nothing else reads that input. One pass, linear in the steps: a
/// hostile graph of a million chained activations must not stall the compiler.
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
        if let Op::Activation(act) = step.op {
            let src = step.inputs[0];
            let into = producer[src].filter(|&p| {
                readers[src] == 1
                    && src != plan.output
                    && matches!(
                        fused[p].op,
                        Op::Dense { act: Act::None, .. }
                            | Op::Add { act: Act::None }
                            | Op::AddConstant { act: Act::None, .. }
                    )
            });
            if let Some(p) = into {
                let target = &mut fused[p];
                match &mut target.op {
                    Op::Dense { act: a, .. } | Op::Add { act: a } | Op::AddConstant { act: a, .. } => {
                        *a = act
                    }
                    _ => unreachable!("checked above"),
                }
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
            transposed: false,
            act,
        };
        let relu = Act::Relu;
        let relu6 = Act::Clip { min: 0.0, max: 6.0 };
        assert_eq!(
            summary(&plan),
            [
                // r1 into d; r2 stays (its producer has an activation now).
                ("d+r1".to_string(), dense(relu)),
                ("r2".into(), Op::Activation(relu)),
                ("a+c".into(), Op::Add { act: relu6 }),
                // t has two readers: r3 stays.
                ("e".into(), dense(Act::None)),
                ("r3".into(), Op::Activation(relu)),
                ("b".into(), Op::Add { act: Act::None }),
            ]
        );
        // Each step reads what the one before it wrote, under the fused names.
        assert_eq!(plan.values[plan.steps[1].inputs[0]].name, "h1");
        assert_eq!(plan.values[plan.steps[2].inputs[0]].name, "h2");
        assert_eq!(plan.values[plan.steps[3].inputs[0]].name, "sc");
        assert_eq!(plan.values[plan.output].name, "out");
    }
}
