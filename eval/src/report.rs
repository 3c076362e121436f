//! The measurements of `cargo xtask eval`.

use crate::exec::Executor;
use qbake::Kernels;
use qbake_codegen::quantize::{self, Storage};
use qbake_codegen::reference::Reference;
use qbake_codegen::{Error, Options};
use serde::Serialize;
use std::path::Path;

/// One kernel family against float.
#[derive(Debug, Clone, Serialize)]
pub struct FamilyReport {
    pub kernels: String,
    /// Inputs whose top-1 is float's, in percent.
    pub top1_agreement: f64,
    /// Inputs whose top 5 contain float's top-1, in percent.
    pub top5_agreement: f64,
    /// Accuracy against the labels, in percent, when labels were given.
    pub accuracy: Option<f64>,
    pub cosine_mean: f64,
    pub cosine_min: f64,
    /// The inputs whose top-1 is not float's, in input order.
    pub misses: Vec<Miss>,
    /// Each step's output against float, worst first.
    pub layers: Vec<LayerReport>,
}

/// An input on which a family's top-1 is not float's.
#[derive(Debug, Clone, Serialize)]
pub struct Miss {
    /// Its index among the inputs.
    pub input: usize,
    /// How far apart the float model's top two outputs are: a miss on a near
    /// tie says less than one where float was sure.
    pub float_margin: f64,
}

/// One step of the model: how far its output is from float's.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub step: String,
    pub op: String,
    /// Signal-to-noise ratio of the step's output against float over all
    /// inputs, in dB (`None` when exact).
    pub output_sqnr_db: Option<f64>,
    /// The SQNR of the weight it multiplies by, as baked, when it has one.
    pub weight_sqnr_db: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub inputs: usize,
    /// The float model's accuracy against the labels, in percent.
    pub float_accuracy: Option<f64>,
    pub families: Vec<FamilyReport>,
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap_or(0)
}

/// The largest output minus the second largest.
fn margin(v: &[f64]) -> f64 {
    let best = argmax(v);
    let second = v
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .fold(f64::NEG_INFINITY, |m, (_, &x)| m.max(x));
    v[best] - second
}

fn top5(v: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    order.truncate(5);
    order
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * y).sum();
    let na = a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let nb = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if na == 0.0 && nb == 0.0 {
        1.0
    } else {
        dot / (na * nb)
    }
}

fn db(signal: f64, noise: f64) -> Option<f64> {
    (noise > 0.0).then(|| 10.0 * (signal / noise).log10())
}

/// Bakes `model` with `options`, runs the float reference and both kernel
/// families on every input (flattened, in the model's input shape), and
/// compares. `progress(done, total)` is called after each input.
pub fn evaluate(
    model: &Path,
    options: &Options,
    inputs: &[Vec<f32>],
    labels: Option<&[usize]>,
    progress: impl FnMut(usize, usize),
) -> Result<Report, Error> {
    let reference = Reference::load_with(model, options)?;
    evaluate_loaded(
        &model.display().to_string(),
        &reference,
        options,
        inputs,
        labels,
        progress,
    )
}

/// [`evaluate`] for a model already loaded (whose plan gave the caller the
/// input shape, say), named `model` in the report.
pub fn evaluate_loaded(
    model: &str,
    reference: &Reference,
    options: &Options,
    inputs: &[Vec<f32>],
    labels: Option<&[usize]>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Report, Error> {
    let plan = reference.plan().clone();
    let baked = quantize::bake(&plan, options)?;
    let executor = Executor::new(plan.clone(), &baked);
    let families = [Kernels::Dequant, Kernels::Hybrid];
    let len = plan.input().len;
    if let Some(bad) = inputs.iter().position(|x| x.len() != len) {
        return Err(Error::new(format!(
            "input {bad} has {} values; the model takes {len} ({:?})",
            inputs[bad].len(),
            plan.input().shape
        )));
    }
    if let Some(labels) = labels
        && labels.len() != inputs.len()
    {
        return Err(Error::new(format!(
            "{} labels for {} inputs",
            labels.len(),
            inputs.len()
        )));
    }
    // Per family: agreements, cosines, correct answers, and per value the
    // float signal and error energies.
    struct Acc {
        top1: usize,
        top5: usize,
        misses: Vec<Miss>,
        correct: usize,
        cosines: Vec<f64>,
        signal: Vec<f64>,
        noise: Vec<f64>,
    }
    let mut accs: Vec<Acc> = families
        .iter()
        .map(|_| Acc {
            top1: 0,
            top5: 0,
            misses: Vec::new(),
            correct: 0,
            cosines: Vec::new(),
            signal: vec![0.0; plan.values.len()],
            noise: vec![0.0; plan.values.len()],
        })
        .collect();
    let mut float_correct = 0;
    for (i, input) in inputs.iter().enumerate() {
        let float = reference.run_all(input);
        let want = &float[plan.output];
        let label = labels.map(|l| l[i]);
        if label == Some(argmax(want)) {
            float_correct += 1;
        }
        for (acc, &kernels) in accs.iter_mut().zip(&families) {
            let got = executor.run_all(kernels, input);
            let out = &got[plan.output];
            let top = top5(out);
            acc.top1 += usize::from(top[0] == argmax(want));
            if top[0] != argmax(want) {
                acc.misses.push(Miss {
                    input: i,
                    float_margin: margin(want),
                });
            }
            acc.top5 += usize::from(top.contains(&argmax(want)));
            acc.correct += usize::from(label == Some(top[0]));
            acc.cosines.push(cosine(out, want));
            for (v, (g, f)) in got.iter().zip(&float).enumerate() {
                for (&g, &f) in g.iter().zip(f) {
                    acc.signal[v] += f * f;
                    acc.noise[v] += (f64::from(g) - f).powi(2);
                }
            }
        }
        progress(i + 1, inputs.len());
    }
    let n = inputs.len().max(1) as f64;
    let pct = |k: usize| 100.0 * k as f64 / n;
    let weight_sqnr = |name: &str| {
        baked
            .weights
            .iter()
            .find(|w| w.name == name)
            .and_then(|w| match w.storage {
                Storage::U8 { .. } => Some(w.sqnr_db),
                Storage::F32(_) => None,
            })
    };
    let families = accs
        .into_iter()
        .zip(families)
        .map(|(acc, kernels)| {
            let mut layers: Vec<LayerReport> = plan
                .steps
                .iter()
                .filter(|s| !matches!(s.op, qbake_codegen::graph::Op::Alias))
                .map(|s| LayerReport {
                    step: s.name.clone(),
                    op: s.op_name.clone(),
                    output_sqnr_db: db(acc.signal[s.output], acc.noise[s.output]),
                    weight_sqnr_db: s.op.weights().first().and_then(|w| weight_sqnr(w)),
                })
                .collect();
            layers.sort_by(|a, b| {
                let key = |l: &LayerReport| l.output_sqnr_db.unwrap_or(f64::INFINITY);
                key(a).total_cmp(&key(b))
            });
            FamilyReport {
                kernels: format!("{kernels:?}"),
                top1_agreement: pct(acc.top1),
                top5_agreement: pct(acc.top5),
                accuracy: labels.map(|_| pct(acc.correct)),
                cosine_mean: acc.cosines.iter().sum::<f64>() / n,
                cosine_min: acc.cosines.iter().copied().fold(f64::INFINITY, f64::min),
                misses: acc.misses,
                layers,
            }
        })
        .collect();
    Ok(Report {
        model: model.to_string(),
        inputs: inputs.len(),
        float_accuracy: labels.map(|_| pct(float_correct)),
        families,
    })
}
