//! Node by node, the graph document becomes steps of a [`Plan`]: each node
//! checked against its input shapes and the file's tensors, then mapped onto
//! the runtime's ops. Decisions made here, at compile time:
//!
//! - **layout**: 4-D values that convolutions and pools touch are stored
//!   NHWC; a layout change is a step of its own, inserted only where a value
//!   meets an op that needs the other layout (free when the two orders are
//!   the same, as for `[N, C, 1, 1]`);
//! - **folding**: a batch normalization, or a `Mul`/`Add` of a per-channel
//!   constant, whose input is a convolution's or GEMM's output read by
//!   nothing else, is folded into that layer's weights and bias, before they
//!   are quantized; a zero `Pad` read only by a convolution becomes its
//!   padding;
//! - **weights**: reordered into the matrices the kernels read (`[out_c, kh,
//!   kw, in_c]` rows for convolutions, `[N, K]` for every GEMM).

use crate::error::{Error, bail};
use crate::graph::{
    Act, ConvGeom, Layout, NodeDef, Normal, Op, Plan, PoolKind, Step, Tensor, Value, broadcasts_onto,
    checked_product, normalize_axis, reshape, squeezed, unsqueezed,
};
use crate::read::ModelFile;
use std::collections::HashMap;
use std::sync::Arc;

/// A constant broadcast onto a value is written out whole in the value's
/// layout when it is not already a suffix of it; larger than this (in
/// elements) is refused rather than allocated.
pub const MAX_BROADCAST_CONSTANT: usize = 1 << 22;

pub(crate) struct Planner<'f> {
    file: &'f ModelFile,
    values: Vec<Value>,
    steps: Vec<Step>,
    tensors: HashMap<String, Tensor>,
    /// How many steps name each tensor (a folded tensor used elsewhere is copied).
    uses: HashMap<String, usize>,
    /// The value of each graph value name.
    value_of: HashMap<String, usize>,
    /// The step that computes each value.
    producer: Vec<Option<usize>>,
    /// Layout changes made: a value read in both layouts is converted once.
    converted: HashMap<(usize, Layout), usize>,
    /// How many nodes read each graph value (the output counts as one).
    readers: HashMap<&'f str, usize>,
    /// File tensors read so far.
    loaded: HashMap<String, Arc<[f32]>>,
}

impl<'f> Planner<'f> {
    pub(crate) fn new(
        file: &'f ModelFile,
        input: &str,
        shape: Vec<usize>,
        readers: HashMap<&'f str, usize>,
    ) -> Self {
        Planner {
            file,
            values: vec![Value {
                name: input.to_string(),
                len: shape.iter().product(),
                shape,
                layout: Layout::Plain,
            }],
            steps: Vec::new(),
            tensors: HashMap::new(),
            uses: HashMap::new(),
            value_of: HashMap::from([(input.to_string(), 0)]),
            producer: vec![None],
            converted: HashMap::new(),
            readers,
            loaded: HashMap::new(),
        }
    }

    /// The plan computing `output` in its declared (plain) layout, with the
    /// steps nothing reads left out.
    pub(crate) fn finish(mut self, output: &str) -> Plan {
        let out = self.value_of[output];
        let out = self.want(out, Layout::Plain);
        let mut live = vec![false; self.values.len()];
        live[out] = true;
        let mut keep = vec![false; self.steps.len()];
        for (i, step) in self.steps.iter().enumerate().rev() {
            if live[step.output] {
                keep[i] = true;
                for &v in &step.inputs {
                    live[v] = true;
                }
            }
        }
        let steps: Vec<Step> = self
            .steps
            .into_iter()
            .zip(keep)
            .filter_map(|(s, k)| k.then_some(s))
            .collect();
        let used: std::collections::HashSet<&str> = steps.iter().flat_map(|s| s.op.tensors()).collect();
        self.tensors.retain(|name, _| used.contains(name.as_str()));
        Plan {
            values: self.values,
            steps,
            output: out,
            tensors: self.tensors,
        }
    }

    pub(crate) fn node(&mut self, node: &NodeDef, name: &str) -> Result<(), Error> {
        let op = node.op.as_str();
        let allowed: &[&str] = match op {
            "Dense" | "MatMul" => &["weight", "bias", "activation"],
            "Conv" => &[
                "weight",
                "bias",
                "activation",
                "strides",
                "dilations",
                "pads",
                "group",
            ],
            "BatchNormalization" => &["scale", "bias", "mean", "var", "epsilon"],
            "Add" => &["constant", "activation"],
            "Mul" => &["constant"],
            "Clip" => &["min", "max"],
            "Softmax" | "Flatten" => &["axis"],
            "Reshape" => &["shape"],
            "Squeeze" | "Unsqueeze" => &["axes"],
            "MaxPool" => &["kernel_shape", "strides", "dilations", "pads"],
            "AveragePool" => &["kernel_shape", "strides", "pads", "count_include_pad"],
            "Pad" => &["pads", "value"],
            "Relu" | "GlobalAveragePool" => &[],
            _ => bail!(
                "op `{op}` is not supported; the ops are Dense, MatMul, Conv, BatchNormalization, Add, Mul, Relu, Clip, Softmax, MaxPool, AveragePool, GlobalAveragePool, Pad, Flatten, Reshape, Squeeze and Unsqueeze"
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
            ("axes", node.axes.is_some()),
            ("scale", node.scale.is_some()),
            ("mean", node.mean.is_some()),
            ("var", node.var.is_some()),
            ("epsilon", node.epsilon.is_some()),
            ("strides", node.strides.is_some()),
            ("dilations", node.dilations.is_some()),
            ("pads", node.pads.is_some()),
            ("group", node.group.is_some()),
            ("kernel_shape", node.kernel_shape.is_some()),
            ("count_include_pad", node.count_include_pad.is_some()),
            ("value", node.value.is_some()),
        ];
        if let Some((attr, _)) = given.iter().find(|(a, g)| *g && !allowed.contains(a)) {
            bail!("`{attr}` does not apply to {op}");
        }
        let arity = if op == "Add" && node.constant.is_none() {
            2
        } else {
            1
        };
        if node.inputs.len() != arity {
            bail!("{op} takes {arity} input(s), got {}", node.inputs.len());
        }
        let x = self.value_of[node.inputs[0].as_str()];
        let shape = self.values[x].shape.clone();
        let rank = shape.len() as i64;
        match op {
            "Dense" | "MatMul" => self.dense(node, name, x),
            "Conv" => self.conv(node, name, x),
            "BatchNormalization" => self.batch_norm(node, name, x),
            "Add" if node.constant.is_none() => {
                let b = self.value_of[node.inputs[1].as_str()];
                if self.values[b].shape != shape {
                    bail!(
                        "Add of shapes {shape:?} and {:?}; they must be equal",
                        self.values[b].shape
                    );
                }
                let layout = self.values[x].layout;
                let b = self.want(b, layout);
                let act = activation_attr(node)?;
                self.push(node, name, Op::Add { act }, vec![x, b], shape, layout)
            }
            "Add" | "Mul" => {
                let c = node.constant.as_deref().expect("arity checked above");
                let (cshape, data) = self.file_tensor(c)?;
                let act = activation_attr(node)?;
                let mul = op == "Mul";
                if self.fold_constant(node, x, &cshape, &data, mul, c)? {
                    return Ok(());
                }
                let constant = self.storage_constant(c, &format!("{name}.constant"), &cshape, data, x)?;
                let layout = self.values[x].layout;
                let op = if mul {
                    Op::MulConstant { constant, act }
                } else {
                    Op::AddConstant { constant, act }
                };
                self.push(node, name, op, vec![x], shape, layout)
            }
            "Relu" => {
                let layout = self.values[x].layout;
                self.push(node, name, Op::Activation(Act::Relu), vec![x], shape, layout)
            }
            "Clip" => {
                let (min, max) = (
                    node.min.unwrap_or(f32::NEG_INFINITY),
                    node.max.unwrap_or(f32::INFINITY),
                );
                if min.is_nan() || max.is_nan() || min > max {
                    bail!("Clip needs min <= max, got min {min}, max {max}");
                }
                let layout = self.values[x].layout;
                let op = Op::Activation(Act::Clip { min, max });
                self.push(node, name, op, vec![x], shape, layout)
            }
            "Softmax" => {
                let a = normalize_axis(node.axis.unwrap_or(-1), rank, rank - 1)?;
                let x = self.want(x, Layout::Plain);
                let op = Op::Softmax {
                    outer: shape[..a].iter().product(),
                    len: shape[a],
                    inner: shape[a + 1..].iter().product(),
                };
                self.push(node, name, op, vec![x], shape, Layout::Plain)
            }
            "Flatten" => {
                let a = normalize_axis(node.axis.unwrap_or(1), rank, rank)?;
                let y = vec![shape[..a].iter().product(), shape[a..].iter().product()];
                self.alias(node, name, x, y)
            }
            "Reshape" => {
                let Some(target) = &node.shape else {
                    bail!("Reshape needs a `shape`");
                };
                let y = reshape(&shape, target)?;
                self.alias(node, name, x, y)
            }
            "Squeeze" => {
                let y = squeezed(&shape, node.axes.as_deref())?;
                // A qbake value has at least one dimension.
                let y = if y.is_empty() { vec![1] } else { y };
                self.alias(node, name, x, y)
            }
            "Unsqueeze" => {
                let Some(axes) = &node.axes else {
                    bail!("Unsqueeze needs `axes`");
                };
                let y = unsqueezed(&shape, axes)?;
                self.alias(node, name, x, y)
            }
            "MaxPool" | "AveragePool" => self.pool(node, name, x),
            "GlobalAveragePool" => {
                let [n, c, h, w] = four(&shape, op)?;
                let x = self.want(x, Layout::Nhwc);
                let op = Op::GlobalAveragePool {
                    batch: n,
                    pixels: h * w,
                    channels: c,
                };
                self.push(node, name, op, vec![x], vec![n, c, 1, 1], Layout::Nhwc)
            }
            "Pad" => self.pad(node, name, x),
            _ => unreachable!("ops are checked above"),
        }
    }

    fn dense(&mut self, node: &NodeDef, name: &str, x: usize) -> Result<(), Error> {
        let op = node.op.as_str();
        let transposed = op == "MatMul";
        let Some(weight) = &node.weight else {
            bail!("{op} needs a `weight` tensor");
        };
        let x = self.want(x, Layout::Plain);
        let shape = self.values[x].shape.clone();
        let (wshape, data) = self.file_tensor(weight)?;
        let (n, k) = match (wshape.as_slice(), transposed) {
            (&[n, k], false) => (n, k),
            (&[k, n], true) => (n, k),
            (s, _) => bail!("weight `{weight}` has shape {s:?}; {op} needs a 2-D weight"),
        };
        let layout = if transposed { "[K, N]" } else { "[N, K]" };
        if shape.last() != Some(&k) {
            // The other layout would chain: the weight suits the other op.
            let hint = match transposed {
                true if shape.last() == Some(&n) => "; as [N, K] it would chain: Dense takes that layout",
                false if shape.last() == Some(&n) => "; as [K, N] it would chain: MatMul takes that layout",
                _ => "",
            };
            bail!(
                "input shape {shape:?} does not chain with weight `{weight}` of shape {wshape:?} ({layout}): the input's last dimension must be {k}{hint}"
            );
        }
        let bias = self.bias(node, n)?;
        let data: Arc<[f32]> = if transposed {
            (0..n)
                .flat_map(|j| (0..k).map(move |i| (i, j)))
                .map(|(i, j)| data[i * n + j])
                .collect::<Vec<f32>>()
                .into()
        } else {
            data
        };
        let weight = self.add_tensor(weight, vec![n, k], data);
        let act = activation_attr(node)?;
        let mut y = shape;
        *y.last_mut().expect("rank >= 1") = n;
        self.push(
            node,
            name,
            Op::Dense { weight, bias, act },
            vec![x],
            y,
            Layout::Plain,
        )
    }

    /// The node's `bias`, checked to have `n` values.
    fn bias(&mut self, node: &NodeDef, n: usize) -> Result<Option<String>, Error> {
        let Some(bias) = &node.bias else {
            return Ok(None);
        };
        let (shape, data) = self.file_tensor(bias)?;
        if shape != [n] {
            bail!("bias `{bias}` has shape {shape:?}; expected [{n}]");
        }
        Ok(Some(self.add_tensor(bias, shape, data)))
    }

    fn conv(&mut self, node: &NodeDef, name: &str, x: usize) -> Result<(), Error> {
        let Some(weight) = &node.weight else {
            bail!("Conv needs a `weight` tensor");
        };
        let [_, c, _, _] = four(&self.values[x].shape, "Conv")?;
        let (wshape, data) = self.file_tensor(weight)?;
        let &[o, cg, kh, kw] = wshape.as_slice() else {
            bail!(
                "weight `{weight}` has shape {wshape:?}; Conv needs [out_channels, in_channels / group, kh, kw]"
            );
        };
        let groups = positive(node.group.unwrap_or(1), "group")?;
        if cg.checked_mul(groups) != Some(c) || !o.is_multiple_of(groups) {
            bail!(
                "weight `{weight}` of shape {wshape:?} with group {groups} does not fit an input of {c} channels: in_channels / group must be {}, and group must divide {o} outputs",
                c / groups.max(1)
            );
        }
        let mut pads = pads4(node.pads.as_deref())?;
        // A zero Pad read only by this convolution becomes its padding.
        let mut folded = None;
        let mut x = x;
        if let Some(p) = self.foldable_producer(&node.inputs[0], x)
            && let Op::Pad {
                pads: extra,
                value: 0.0,
                ..
            } = self.steps[p].op
        {
            for (a, b) in pads.iter_mut().zip(extra) {
                *a = a.checked_add(b).ok_or_else(|| Error::new("pads overflow"))?;
            }
            x = self.steps[p].inputs[0];
            folded = Some(self.steps[p].name.clone());
        }
        let [n, _, h, w] = four(&self.values[x].shape, "Conv")?;
        let geom = ConvGeom {
            batch: n,
            in_h: h,
            in_w: w,
            in_c: c,
            out_c: o,
            kh,
            kw,
            stride: pair(node.strides.as_deref(), "strides")?,
            dilation: pair(node.dilations.as_deref(), "dilations")?,
            pads,
            groups,
        };
        let (oh, ow) = out_dims(&geom)?;
        let bias = self.bias(node, o)?;
        let act = activation_attr(node)?;
        let x = self.want(x, Layout::Nhwc);
        let op = if groups == 1 {
            // [o, c, i, j] -> [o, i, j, c]: one row per output, a patch's channels contiguous.
            let mut m = Vec::with_capacity(data.len());
            for oc in 0..o {
                for i in 0..kh {
                    for j in 0..kw {
                        m.extend((0..c).map(|ci| data[((oc * c + ci) * kh + i) * kw + j]));
                    }
                }
            }
            let weight = self.add_tensor(weight, vec![o, kh * kw * c], m);
            Op::Conv {
                geom,
                weight,
                bias,
                act,
            }
        } else if groups == c && o == c {
            // [c, 1, i, j] is already one row of kh * kw taps per channel.
            let weight = self.add_tensor(weight, vec![c, kh * kw], data);
            Op::Depthwise {
                geom,
                weight,
                bias,
                act,
            }
        } else {
            let og = o / groups;
            let weights = (0..groups)
                .map(|g| {
                    let mut m = Vec::with_capacity(og * kh * kw * cg);
                    for oc in g * og..(g + 1) * og {
                        for i in 0..kh {
                            for j in 0..kw {
                                m.extend((0..cg).map(|ci| data[((oc * cg + ci) * kh + i) * kw + j]));
                            }
                        }
                    }
                    self.add_tensor(&format!("{weight}.group{g}"), vec![og, kh * kw * cg], m)
                })
                .collect();
            Op::GroupedConv {
                geom,
                weights,
                bias,
                act,
            }
        };
        let name = match folded {
            Some(pad) => format!("{pad}+{name}"),
            None => name.to_string(),
        };
        self.push(node, &name, op, vec![x], vec![n, o, oh, ow], Layout::Nhwc)
    }

    fn batch_norm(&mut self, node: &NodeDef, name: &str, x: usize) -> Result<(), Error> {
        let shape = self.values[x].shape.clone();
        if shape.len() < 2 {
            bail!("BatchNormalization needs an input of rank 2 or more (channels on axis 1), got {shape:?}");
        }
        let c = shape[1];
        let mut read = |field: &Option<String>, what: &str| -> Result<Arc<[f32]>, Error> {
            let Some(t) = field else {
                bail!("BatchNormalization needs a `{what}` tensor");
            };
            let (s, data) = self.file_tensor(t)?;
            if s.iter().product::<usize>() != c || s.iter().filter(|&&d| d != 1).count() > 1 {
                bail!("`{what}` tensor `{t}` has shape {s:?}; expected [{c}], one value per channel");
            }
            Ok(data)
        };
        let (gamma, beta) = (read(&node.scale, "scale")?, read(&node.bias, "bias")?);
        let (mean, var) = (read(&node.mean, "mean")?, read(&node.var, "var")?);
        let eps = f64::from(node.epsilon.unwrap_or(1e-5));
        // y = (x - mean) / sqrt(var + eps) * gamma + beta = x * s + t.
        let mut s = Vec::with_capacity(c);
        let mut t = Vec::with_capacity(c);
        for i in 0..c {
            let v = f64::from(var[i]) + eps;
            if v.is_nan() || v <= 0.0 {
                bail!("channel {i} has var + epsilon = {v}; it must be positive");
            }
            let si = f64::from(gamma[i]) / v.sqrt();
            s.push(si as f32);
            t.push((f64::from(beta[i]) - f64::from(mean[i]) * si) as f32);
        }
        let mut cshape = vec![1; shape.len() - 1];
        cshape[0] = c;
        let (s, t): (Arc<[f32]>, Arc<[f32]>) = (s.into(), t.into());
        // Over the data it was fitted on, the normalization's output is
        // beta on average, spread |gamma|.
        let normal = Normal {
            mean: beta.to_vec(),
            std: gamma.iter().map(|g| g.abs()).collect(),
        };
        if self.fold_affine(node, x, Some(&s), Some(&t), &cshape, Some(normal)) {
            return Ok(());
        }
        let layout = self.values[x].layout;
        let scale =
            self.storage_constant(&format!("{name}.scale"), &format!("{name}.scale"), &cshape, s, x)?;
        let shift =
            self.storage_constant(&format!("{name}.shift"), &format!("{name}.shift"), &cshape, t, x)?;
        let mid = self.push_value(&format!("{}/scaled", node.output), shape.clone(), layout);
        self.push_step(
            &format!("{name}/scale"),
            &node.op,
            Op::MulConstant {
                constant: scale,
                act: Act::None,
            },
            vec![x],
            mid,
        );
        self.push(
            node,
            name,
            Op::AddConstant {
                constant: shift,
                act: Act::None,
            },
            vec![mid],
            shape,
            layout,
        )
    }

    fn pool(&mut self, node: &NodeDef, name: &str, x: usize) -> Result<(), Error> {
        let op = node.op.as_str();
        let [n, c, h, w] = four(&self.values[x].shape, op)?;
        let Some(kernel) = &node.kernel_shape else {
            bail!("{op} needs `kernel_shape`");
        };
        let [kh, kw] = pair(Some(kernel), "kernel_shape")?;
        let geom = ConvGeom {
            batch: n,
            in_h: h,
            in_w: w,
            in_c: c,
            out_c: c,
            kh,
            kw,
            stride: pair(node.strides.as_deref(), "strides")?,
            dilation: pair(node.dilations.as_deref(), "dilations")?,
            pads: pads4(node.pads.as_deref())?,
            groups: 1,
        };
        let (oh, ow) = out_dims(&geom)?;
        // The window fits the padded input, so these spans cannot overflow.
        let [t, l, b, r] = geom.pads;
        let (span_h, span_w) = (geom.dilation[0] * (kh - 1) + 1, geom.dilation[1] * (kw - 1) + 1);
        if t.max(b) >= span_h || l.max(r) >= span_w {
            bail!(
                "pads {:?} reach as far as the {kh}x{kw} window: a window could lie wholly in the padding",
                geom.pads
            );
        }
        let kind = match op {
            "MaxPool" => PoolKind::Max,
            _ => PoolKind::Average {
                count_include_pad: node.count_include_pad.unwrap_or(false),
            },
        };
        let x = self.want(x, Layout::Nhwc);
        self.push(
            node,
            name,
            Op::Pool { geom, kind },
            vec![x],
            vec![n, c, oh, ow],
            Layout::Nhwc,
        )
    }

    fn pad(&mut self, node: &NodeDef, name: &str, x: usize) -> Result<(), Error> {
        let shape = self.values[x].shape.clone();
        let Some(pads) = &node.pads else {
            bail!("Pad needs `pads`");
        };
        let value = node.value.unwrap_or(0.0);
        if !value.is_finite() {
            bail!("Pad's value must be finite, got {value}");
        }
        let [n, c, h, w] = four(&shape, "Pad")?;
        let pads: Vec<usize> = pads
            .iter()
            .map(|&p| usize::try_from(p).ok())
            .collect::<Option<_>>()
            .filter(|p: &Vec<usize>| p.len() == 8)
            .ok_or_else(|| {
                Error::new(format!(
                    "pads {pads:?} must be 8 non-negative values for a 4-D input"
                ))
            })?;
        if [0, 1, 4, 5].iter().any(|&i| pads[i] != 0) {
            bail!("pads {pads:?} pad the batch or channel axis; qbake pads the two spatial axes");
        }
        let p = [pads[2], pads[3], pads[6], pads[7]];
        let grow = |d: usize, a: usize, b: usize| d.checked_add(a)?.checked_add(b);
        let (Some(oh), Some(ow)) = (grow(h, p[0], p[2]), grow(w, p[1], p[3])) else {
            bail!("pads {pads:?} overflow");
        };
        let x = self.want(x, Layout::Nhwc);
        let op = Op::Pad {
            batch: n,
            h,
            w,
            c,
            pads: p,
            value,
        };
        self.push(node, name, op, vec![x], vec![n, c, oh, ow], Layout::Nhwc)
    }

    /// Flatten, Reshape, Squeeze, Unsqueeze: the same elements in the graph's order.
    fn alias(&mut self, node: &NodeDef, name: &str, x: usize, shape: Vec<usize>) -> Result<(), Error> {
        let x = self.want(x, Layout::Plain);
        self.push(node, name, Op::Alias, vec![x], shape, Layout::Plain)
    }

    /// The step computing `v`, when `v` (graph name `input`) is read by this
    /// node alone and is not the graph output, so the node may change it.
    fn foldable_producer(&self, input: &str, v: usize) -> Option<usize> {
        (self.readers.get(input) == Some(&1))
            .then_some(self.producer[v])
            .flatten()
            .filter(|&p| self.steps[p].output == v)
    }

    /// Folds `x * c` or `x + c` into the layer that computes `x`, if it can.
    fn fold_constant(
        &mut self,
        node: &NodeDef,
        x: usize,
        cshape: &[usize],
        data: &Arc<[f32]>,
        mul: bool,
        cname: &str,
    ) -> Result<bool, Error> {
        check_broadcast(cname, cshape, &self.values[x].shape)?;
        let (s, t) = if mul {
            (Some(data), None)
        } else {
            (None, Some(data))
        };
        Ok(activation_attr(node)? == Act::None && self.fold_affine(node, x, s, t, cshape, None))
    }

    /// Folds `x * s + t` (per output channel, `s` and `t` in the graph's
    /// shape `cshape`) into the convolution or GEMM that computes `x`:
    /// `w' = w s`, `b' = b s + t`. `bn` is what a batch normalization says
    /// of the result. False when it cannot.
    fn fold_affine(
        &mut self,
        node: &NodeDef,
        x: usize,
        s: Option<&Arc<[f32]>>,
        t: Option<&Arc<[f32]>>,
        cshape: &[usize],
        bn: Option<Normal>,
    ) -> bool {
        let Some(p) = self.foldable_producer(&node.inputs[0], x) else {
            return false;
        };
        let step = &self.steps[p];
        if step.op.act() != Some(&Act::None) {
            return false;
        }
        let (channels, axis) = match &step.op {
            Op::Conv { geom, .. } | Op::GroupedConv { geom, .. } | Op::Depthwise { geom, .. } => {
                (geom.out_c, 1)
            }
            Op::Dense { .. } => {
                let shape = &self.values[x].shape;
                (shape[shape.len() - 1], shape.len() - 1)
            }
            _ => return false,
        };
        // Per channel: one value, or `channels` along the channel axis.
        let rank = self.values[x].shape.len();
        if cshape.len() > rank {
            return false;
        }
        let pad = rank - cshape.len();
        let per_channel = cshape
            .iter()
            .enumerate()
            .all(|(i, &d)| d == 1 || (i + pad == axis && d == channels));
        if !per_channel {
            return false;
        }
        let at = |v: &Arc<[f32]>, o: usize| f64::from(v[if v.len() == 1 { 0 } else { o }]);
        let mut step = self.steps[p].clone();
        let weights: Vec<String> = step.op.weights().iter().map(|w| w.to_string()).collect();
        let mut new_weights = Vec::with_capacity(weights.len());
        let rows_per = channels / weights.len();
        if let Some(s) = s {
            for (g, w) in weights.iter().enumerate() {
                let tensor = self.tensors[w].clone();
                let cols = tensor.shape[1];
                let data: Vec<f32> = tensor
                    .data
                    .chunks_exact(cols)
                    .enumerate()
                    .flat_map(|(r, row)| {
                        let f = at(s, g * rows_per + r);
                        row.iter().map(move |&v| (f64::from(v) * f) as f32)
                    })
                    .collect();
                new_weights.push(self.replace_tensor(w, tensor.shape, data));
            }
        } else {
            new_weights = weights;
        }
        let bias_name = match &step.op {
            Op::Dense { bias, .. }
            | Op::Conv { bias, .. }
            | Op::GroupedConv { bias, .. }
            | Op::Depthwise { bias, .. } => bias.clone(),
            _ => unreachable!("matched above"),
        };
        let old_bias: Vec<f64> = match &bias_name {
            Some(b) => self.tensors[b].data.iter().map(|&v| f64::from(v)).collect(),
            None => vec![0.0; channels],
        };
        let bias: Vec<f32> = (0..channels)
            .map(|o| (old_bias[o] * s.map_or(1.0, |s| at(s, o)) + t.map_or(0.0, |t| at(t, o))) as f32)
            .collect();
        let bias = Some(match &bias_name {
            Some(b) => self.replace_tensor(b, vec![channels], bias),
            None => self.add_tensor(&format!("{}.bias", step.name), vec![channels], bias),
        });
        match &mut step.op {
            Op::Dense { weight, bias: b, .. }
            | Op::Conv { weight, bias: b, .. }
            | Op::Depthwise { weight, bias: b, .. } => {
                *weight = new_weights.swap_remove(0);
                *b = bias;
            }
            Op::GroupedConv { weights, bias: b, .. } => {
                *weights = new_weights;
                *b = bias;
            }
            _ => unreachable!("matched above"),
        }
        for name in self.steps[p].op.tensors() {
            *self.uses.get_mut(name).expect("counted when pushed") -= 1;
        }
        for name in step.op.tensors() {
            *self.uses.entry(name.to_string()).or_insert(0) += 1;
        }
        step.name = format!("{}+{}", step.name, node.name.as_deref().unwrap_or(&node.op));
        // A normalization folded last describes the output; anything
        // folded after it changes the output it described.
        step.bn = bn;
        self.steps[p] = step;
        self.value_of.insert(node.output.clone(), x);
        true
    }

    /// Constant `c` (graph shape `cshape`) as a tensor in the storage layout
    /// of value `x`, whose storage shape it is a suffix of: unchanged when it
    /// already is one, else transposed to NHWC and broadcast out.
    fn storage_constant(
        &mut self,
        name: &str,
        derived: &str,
        cshape: &[usize],
        data: Arc<[f32]>,
        x: usize,
    ) -> Result<String, Error> {
        let value = &self.values[x];
        check_broadcast(name, cshape, &value.shape)?;
        let rank = value.shape.len();
        let mut padded = vec![1; rank - cshape.len()];
        padded.extend_from_slice(cshape);
        let (storage, cstore, data, permuted) = if value.layout == Layout::Nhwc {
            let nhwc = |s: &[usize]| vec![s[0], s[2], s[3], s[1]];
            let [a, b, c, d] = [padded[0], padded[1], padded[2], padded[3]];
            // Only a constant varying along both channels and pixels changes order.
            let permuted = b > 1 && c * d > 1;
            let data: Arc<[f32]> = if permuted {
                let mut out = Vec::with_capacity(data.len());
                for n in 0..a {
                    for p in 0..c * d {
                        out.extend((0..b).map(|ch| data[(n * b + ch) * c * d + p]));
                    }
                }
                out.into()
            } else {
                data
            };
            (nhwc(&value.shape), nhwc(&padded), data, permuted)
        } else {
            (value.shape.clone(), padded, data, false)
        };
        let start = cstore.iter().position(|&d| d != 1).unwrap_or(rank - 1);
        let suffix = storage[start..].to_vec();
        if cstore[start..] == suffix[..] {
            // The file's values in the file's order keep the file's name.
            let wanted = if permuted { derived } else { name };
            return Ok(self.add_tensor(wanted, suffix, data));
        }
        let total = checked_product(&suffix).filter(|&t| t <= MAX_BROADCAST_CONSTANT);
        let Some(total) = total else {
            bail!(
                "constant `{name}` of shape {cshape:?} broadcast onto {:?} would be a tensor of more than {MAX_BROADCAST_CONSTANT} values",
                value.shape
            );
        };
        // Row-major strides of the constant, 0 along its broadcast dimensions.
        let cs = &cstore[start..];
        let mut strides = vec![0usize; cs.len()];
        let mut s = 1;
        for i in (0..cs.len()).rev() {
            if cs[i] != 1 {
                strides[i] = s;
            }
            s *= cs[i];
        }
        let mut out = Vec::with_capacity(total);
        let mut idx = vec![0usize; suffix.len()];
        for _ in 0..total {
            out.push(data[idx.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>()]);
            for d in (0..suffix.len()).rev() {
                idx[d] += 1;
                if idx[d] < suffix[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(self.add_tensor(derived, suffix, out))
    }

    /// Value `v` in `layout`: itself, or a converted copy (made once).
    fn want(&mut self, v: usize, layout: Layout) -> usize {
        let value = &self.values[v];
        if value.layout == layout || value.shape.len() != 4 {
            return v;
        }
        if let Some(&c) = self.converted.get(&(v, layout)) {
            return c;
        }
        let (name, shape) = (value.name.clone(), value.shape.clone());
        let [n, c, h, w] = [shape[0], shape[1], shape[2], shape[3]];
        // With one channel, or one pixel, both orders are the same.
        let (op, suffix) = match layout {
            _ if c == 1 || h * w == 1 => (Op::Alias, if layout == Layout::Nhwc { "nhwc" } else { "nchw" }),
            Layout::Nhwc => (
                Op::ToNhwc {
                    batch: n,
                    channels: c,
                    pixels: h * w,
                },
                "nhwc",
            ),
            Layout::Plain => (
                Op::ToNchw {
                    batch: n,
                    pixels: h * w,
                    channels: c,
                },
                "nchw",
            ),
        };
        let out = self.push_value(&format!("{name}_{suffix}"), shape, layout);
        self.push_step(
            &format!("{name} to {}", suffix.to_uppercase()),
            "layout",
            op,
            vec![v],
            out,
        );
        self.converted.insert((v, layout), out);
        out
    }

    fn push(
        &mut self,
        node: &NodeDef,
        name: &str,
        op: Op,
        inputs: Vec<usize>,
        shape: Vec<usize>,
        layout: Layout,
    ) -> Result<(), Error> {
        if checked_product(&shape).is_none() {
            bail!("its output shape {shape:?} overflows");
        }
        let out = self.push_value(&node.output, shape, layout);
        self.push_step(name, &node.op, op, inputs, out);
        self.value_of.insert(node.output.clone(), out);
        Ok(())
    }

    fn push_value(&mut self, name: &str, shape: Vec<usize>, layout: Layout) -> usize {
        self.values.push(Value {
            name: name.to_string(),
            len: shape.iter().product(),
            shape,
            layout,
        });
        self.producer.push(None);
        self.values.len() - 1
    }

    fn push_step(&mut self, name: &str, op_name: &str, op: Op, inputs: Vec<usize>, output: usize) {
        for t in op.tensors() {
            *self.uses.entry(t.to_string()).or_insert(0) += 1;
        }
        self.producer[output] = Some(self.steps.len());
        self.steps.push(Step {
            name: name.to_string(),
            op_name: op_name.to_string(),
            op,
            inputs,
            output,
            bn: None,
        });
    }

    /// A file tensor's shape and values (read once), checked to have no zero dimension.
    fn file_tensor(&mut self, name: &str) -> Result<(Vec<usize>, Arc<[f32]>), Error> {
        let Some(info) = self.file.tensor(name) else {
            bail!("the file has no tensor `{name}`");
        };
        // An empty weight would give zero-sized values downstream, which no op computes.
        if info.shape.contains(&0) {
            bail!(
                "tensor `{name}` has shape {:?}; tensors must not have a zero dimension",
                info.shape
            );
        }
        let shape = info.shape.clone();
        if let Some(data) = self.loaded.get(name) {
            return Ok((shape, data.clone()));
        }
        let data: Arc<[f32]> = self.file.read_f32(name)?.into();
        self.loaded.insert(name.to_string(), data.clone());
        Ok((shape, data))
    }

    /// Registers a tensor under `wanted`, or under a fresh name when
    /// `wanted` already holds other values; returns the name.
    fn add_tensor(&mut self, wanted: &str, shape: Vec<usize>, data: impl Into<Arc<[f32]>>) -> String {
        let tensor = Tensor {
            shape,
            data: data.into(),
        };
        let mut name = wanted.to_string();
        let mut i = 1;
        loop {
            match self.tensors.get(&name) {
                None => {
                    self.tensors.insert(name.clone(), tensor);
                    return name;
                }
                Some(t) if *t == tensor => return name,
                Some(_) => {
                    i += 1;
                    name = format!("{wanted}#{i}");
                }
            }
        }
    }

    /// New values for tensor `name`, which one step (the caller's) uses:
    /// in place if no other step uses it, else under a fresh name.
    fn replace_tensor(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) -> String {
        if self.uses.get(name) == Some(&1) {
            self.tensors.insert(
                name.to_string(),
                Tensor {
                    shape,
                    data: data.into(),
                },
            );
            name.to_string()
        } else {
            self.add_tensor(name, shape, data)
        }
    }
}

fn activation_attr(node: &NodeDef) -> Result<Act, Error> {
    Ok(match node.activation.as_deref() {
        None | Some("none") => Act::None,
        Some("relu") => Act::Relu,
        Some("relu6") => Act::Clip { min: 0.0, max: 6.0 },
        Some(other) => {
            bail!("activation `{other}` is not one of \"none\", \"relu\", \"relu6\"")
        }
    })
}

/// ONNX unidirectional broadcasting: `c` stretches onto `x` without changing `x`'s shape.
fn check_broadcast(name: &str, c: &[usize], x: &[usize]) -> Result<(), Error> {
    if !broadcasts_onto(c, x) {
        bail!("constant `{name}` of shape {c:?} does not broadcast onto {x:?}");
    }
    Ok(())
}

fn four(shape: &[usize], op: &str) -> Result<[usize; 4], Error> {
    match *shape {
        [n, c, h, w] => Ok([n, c, h, w]),
        _ => bail!("{op} takes a 4-D input [N, C, H, W], got {shape:?}"),
    }
}

fn positive(v: i64, what: &str) -> Result<usize, Error> {
    usize::try_from(v)
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| Error::new(format!("`{what}` must be positive, got {v}")))
}

/// `[h, w]` strides, dilations or kernel sizes: positive, default 1.
fn pair(v: Option<&[i64]>, what: &str) -> Result<[usize; 2], Error> {
    match v {
        None => Ok([1, 1]),
        Some(&[a, b]) => Ok([positive(a, what)?, positive(b, what)?]),
        Some(v) => bail!("`{what}` has {} values; it takes 2 ([h, w])", v.len()),
    }
}

/// `[top, left, bottom, right]`, non-negative, default 0.
fn pads4(v: Option<&[i64]>) -> Result<[usize; 4], Error> {
    let Some(v) = v else {
        return Ok([0; 4]);
    };
    let p: Vec<usize> = v
        .iter()
        .map(|&p| usize::try_from(p).ok())
        .collect::<Option<_>>()
        .ok_or_else(|| Error::new(format!("`pads` {v:?} must be non-negative")))?;
    match *p.as_slice() {
        [t, l, b, r] => Ok([t, l, b, r]),
        _ => bail!(
            "`pads` has {} values; it takes 4 ([top, left, bottom, right])",
            p.len()
        ),
    }
}

fn out_dims(g: &ConvGeom) -> Result<(usize, usize), Error> {
    g.out_dims().ok_or_else(|| {
        Error::new(format!(
            "a {}x{} window (dilation {:?}) does not fit the {}x{} input padded by {:?}",
            g.kh, g.kw, g.dilation, g.in_h, g.in_w, g.pads
        ))
    })
}
