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
    /// The float output's energy and the error's, summed over the inputs:
    /// what [`Report::merge`] adds up.
    #[serde(skip)]
    energies: (f64, f64),
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    /// The options the model was baked with, as the macro's arguments.
    pub options: String,
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

/// Lowest output SQNR first, exact ones last.
fn worst_first(layers: &mut [LayerReport]) {
    layers.sort_by(|a, b| {
        let key = |l: &LayerReport| l.output_sqnr_db.unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b))
    });
}

impl Report {
    /// Reports of one model on disjoint sets of inputs (the folds of a
    /// held-out evaluation, say) as one report on all of them, in order:
    /// agreements, accuracies and the mean cosine over every input, the
    /// lowest cosine, the misses numbered among all inputs, and each
    /// layer's SQNR from its energies summed over every input. `None` for
    /// no parts, or parts whose families or layers differ.
    pub fn merge(parts: &[Report]) -> Option<Report> {
        let first = parts.first()?;
        let inputs: usize = parts.iter().map(|p| p.inputs).sum();
        let n = inputs.max(1) as f64;
        // A percentage of each part's inputs, over all of them.
        let pooled = |each: &dyn Fn(&Report) -> Option<f64>| -> Option<f64> {
            parts
                .iter()
                .map(|p| each(p).map(|v| v * p.inputs as f64))
                .sum::<Option<f64>>()
                .map(|s| s / n)
        };
        let mut families = Vec::new();
        for (f, family) in first.families.iter().enumerate() {
            let of: Vec<&FamilyReport> = parts
                .iter()
                .map(|p| {
                    p.families
                        .get(f)
                        .filter(|g| g.kernels == family.kernels && g.layers.len() == family.layers.len())
                })
                .collect::<Option<_>>()?;
            let mut offset = 0;
            let mut misses = Vec::new();
            for (p, g) in parts.iter().zip(&of) {
                misses.extend(g.misses.iter().map(|m| Miss {
                    input: m.input + offset,
                    ..*m
                }));
                offset += p.inputs;
            }
            let mut layers = family.layers.clone();
            for layer in &mut layers {
                let mut energies = (0.0, 0.0);
                for g in &of {
                    let l = g.layers.iter().find(|l| l.step == layer.step)?;
                    energies.0 += l.energies.0;
                    energies.1 += l.energies.1;
                }
                layer.energies = energies;
                layer.output_sqnr_db = db(energies.0, energies.1);
            }
            worst_first(&mut layers);
            families.push(FamilyReport {
                kernels: family.kernels.clone(),
                top1_agreement: pooled(&|p| Some(p.families[f].top1_agreement))?,
                top5_agreement: pooled(&|p| Some(p.families[f].top5_agreement))?,
                accuracy: pooled(&|p| p.families[f].accuracy),
                cosine_mean: pooled(&|p| Some(p.families[f].cosine_mean))?,
                cosine_min: of.iter().map(|g| g.cosine_min).fold(f64::INFINITY, f64::min),
                misses,
                layers,
            });
        }
        Some(Report {
            model: first.model.clone(),
            options: first.options.clone(),
            inputs,
            float_accuracy: pooled(&|p| p.float_accuracy),
            families,
        })
    }
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
                    energies: (acc.signal[s.output], acc.noise[s.output]),
                })
                .collect();
            worst_first(&mut layers);
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
        options: options.to_string(),
        inputs: inputs.len(),
        float_accuracy: labels.map(|_| pct(float_correct)),
        families,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(inputs: usize, top1: f64, misses: &[usize], energies: (f64, f64), cosine_min: f64) -> Report {
        let layer = |step: &str, energies: (f64, f64)| LayerReport {
            step: step.into(),
            op: "Conv".into(),
            output_sqnr_db: db(energies.0, energies.1),
            weight_sqnr_db: Some(40.0),
            energies,
        };
        Report {
            model: "m".into(),
            options: "per_channel = true".into(),
            inputs,
            float_accuracy: None,
            families: vec![FamilyReport {
                kernels: "Hybrid".into(),
                top1_agreement: top1,
                top5_agreement: 100.0,
                accuracy: None,
                cosine_mean: 0.99,
                cosine_min,
                misses: misses
                    .iter()
                    .map(|&input| Miss {
                        input,
                        float_margin: 0.1,
                    })
                    .collect(),
                layers: vec![layer("a", energies), layer("b", (1.0, 0.0))],
            }],
        }
    }

    /// Misses are numbered among all inputs, percentages weighted by each
    /// part's inputs, SQNRs from the summed energies (not an average of
    /// dB), and parts of different shapes do not merge.
    #[test]
    fn merge_numbers_misses_and_pools_energies() {
        let merged = Report::merge(&[
            part(4, 50.0, &[1, 3], (100.0, 1.0), 0.9),
            part(2, 100.0, &[], (100.0, 9.0), 0.95),
            part(4, 75.0, &[0], (100.0, 0.0), 0.8),
        ])
        .unwrap();
        let f = &merged.families[0];
        assert_eq!(merged.inputs, 10);
        assert_eq!(f.misses.iter().map(|m| m.input).collect::<Vec<_>>(), [1, 3, 6]);
        assert!((f.top1_agreement - 70.0).abs() < 1e-12);
        assert_eq!(f.cosine_min, 0.8);
        // 300 over 10: 14.77 dB, where the mean of the parts' dB would be 20 and 10.5 (and exact).
        let a = f.layers.iter().find(|l| l.step == "a").unwrap();
        assert!((a.output_sqnr_db.unwrap() - 10.0 * 30f64.log10()).abs() < 1e-12);
        assert_eq!(f.layers.last().unwrap().step, "b", "exact layers last");
        let mut odd = part(1, 0.0, &[], (1.0, 1.0), 1.0);
        odd.families[0].layers.pop();
        assert!(Report::merge(&[part(1, 0.0, &[], (1.0, 1.0), 1.0), odd]).is_none());
    }
}
