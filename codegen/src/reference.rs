//! The float reference: a model run from its original f32 weights, in f64,
//! one graph step at a time. It is what quantized results are measured
//! against (tests, examples, `cargo xtask eval`), never what users ship.

use crate::error::Error;
use crate::graph::{self, Act, Op, Plan};
use crate::read::ModelFile;
use std::collections::HashMap;
use std::path::Path;

/// A model loaded for float evaluation.
pub struct Reference {
    plan: Plan,
    tensors: HashMap<String, Vec<f32>>,
}

impl Reference {
    pub fn load(path: &Path) -> Result<Self, Error> {
        let file = ModelFile::open(path)?;
        let plan = graph::plan(&file)?;
        let mut tensors = HashMap::new();
        for step in &plan.steps {
            let names = match &step.op {
                Op::Dense { weight, bias, .. } => vec![Some(weight), bias.as_ref()],
                Op::AddConstant { constant, .. } => vec![Some(constant)],
                _ => vec![],
            };
            for name in names.into_iter().flatten() {
                if !tensors.contains_key(name) {
                    tensors.insert(name.clone(), file.read_f32(name)?);
                }
            }
        }
        Ok(Reference { plan, tensors })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The original f32 values of a tensor the graph uses.
    pub fn tensor(&self, name: &str) -> Option<&[f32]> {
        self.tensors.get(name).map(Vec::as_slice)
    }

    /// Replaces a tensor's values, to ask what the model computes with other
    /// weights (the baked ones, say). The length must stay the same.
    pub fn set_tensor(&mut self, name: &str, values: Vec<f32>) -> Result<(), Error> {
        match self.tensors.get_mut(name) {
            Some(t) if t.len() == values.len() => {
                *t = values;
                Ok(())
            }
            Some(t) => Err(Error::new(format!(
                "tensor `{name}` has {} values, not {}",
                t.len(),
                values.len()
            ))),
            None => Err(Error::new(format!("the graph uses no tensor `{name}`"))),
        }
    }

    /// The output for `input` (flattened, in the declared shape).
    pub fn run(&self, input: &[f32]) -> Vec<f64> {
        self.run_all(input).swap_remove(self.plan.output)
    }

    /// Every value of the graph for `input`, indexed like `plan().values`
    /// (empty for values fused away).
    pub fn run_all(&self, input: &[f32]) -> Vec<Vec<f64>> {
        let plan = &self.plan;
        assert_eq!(input.len(), plan.input().len, "input has the wrong size");
        let mut values: Vec<Vec<f64>> = vec![Vec::new(); plan.values.len()];
        values[0] = input.iter().map(|&v| f64::from(v)).collect();
        for step in &plan.steps {
            let x = &values[step.inputs[0]];
            let y: Vec<f64> = match &step.op {
                Op::Dense {
                    weight,
                    bias,
                    transposed,
                    act,
                } => {
                    let w = &self.tensors[weight];
                    let k = plan.values[step.inputs[0]].shape.last().copied().unwrap_or(1);
                    let n = w.len() / k;
                    let b = bias.as_ref().map(|b| &self.tensors[b]);
                    let mut y = Vec::with_capacity(x.len() / k * n);
                    for row in x.chunks_exact(k) {
                        for j in 0..n {
                            let wj =
                                |i: usize| f64::from(if *transposed { w[i * n + j] } else { w[j * k + i] });
                            let dot: f64 = row.iter().enumerate().map(|(i, &v)| v * wj(i)).sum();
                            y.push(apply(*act, dot + b.map_or(0.0, |b| f64::from(b[j]))));
                        }
                    }
                    y
                }
                Op::Add { act } => {
                    let b = &values[step.inputs[1]];
                    x.iter().zip(b).map(|(a, b)| apply(*act, a + b)).collect()
                }
                Op::AddConstant { constant, act } => {
                    let c = &self.tensors[constant];
                    x.iter()
                        .enumerate()
                        .map(|(i, v)| apply(*act, v + f64::from(c[i % c.len()])))
                        .collect()
                }
                Op::Activation(act) => x.iter().map(|&v| apply(*act, v)).collect(),
                Op::Softmax { outer, len, inner } => softmax(x, *outer, *len, *inner),
                Op::Alias => x.clone(),
            };
            values[step.output] = y;
        }
        values
    }
}

fn apply(act: Act, v: f64) -> f64 {
    match act {
        Act::None => v,
        Act::Relu => v.max(0.0),
        Act::Clip { min, max } => v.max(f64::from(min)).min(f64::from(max)),
    }
}

fn softmax(x: &[f64], outer: usize, len: usize, inner: usize) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for o in 0..outer {
        for i in 0..inner {
            let at = |j: usize| o * len * inner + j * inner + i;
            let max = (0..len).map(|j| x[at(j)]).fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = (0..len).map(|j| (x[at(j)] - max).exp()).sum();
            for j in 0..len {
                y[at(j)] = (x[at(j)] - max).exp() / sum;
            }
        }
    }
    y
}
