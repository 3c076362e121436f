//! `cargo xtask eval`: a model's accuracy in both kernel families against
//! its float self (qbake-eval), on given inputs or on photos.

use qbake_codegen::{Calibration, Options};
use qbake_eval::{Report, photos};
use std::error::Error;
use std::io::Write;
use std::path::{Path, PathBuf};

const USAGE: &str = "usage: cargo xtask eval --model M.safetensors|M.onnx (--inputs X.safetensors [--tensor NAME] | --photos DIR --mean M --scale S) [options]

  --inputs FILE      a safetensors file whose tensor (--tensor NAME, or its only one) is [N, input shape...]
  --photos DIR       every PNG/JPEG in DIR, squared and resized to the model's input, with 22
                     crops and mirrorings of each; input = (pixel - mean) / scale, NCHW RGB
  --variants V       with --photos: standard (the 22 above, default) or dense (56 each:
                     crops of 6/7, 5/7 and 4/7 of the side on a 3 x 3 grid, and mirrored)
  --labels FILE      one class index per line, per input (per photo variant, in order)
  --output NAME      ONNX models: the graph output to measure
  --per-channel B    true (default) or false
  --keep-float-below N
  --bias-correction B  true (default) or false
  --equalize B       false (default) or true
  --balanced-rounding B  true (default) or false
  --compensated-rounding B  true (default) or false
  --mse-ranges B     true (default) or false
  --calibration P    inputs measured for bias correction's means and compensated rounding's
                     correlations: a safetensors file of inputs, a
                     directory of photos (22 variants each, same --mean and --scale; keep them apart
                     from the photos measured, or the figures flatter the model), `synthetic`
                     (what image models get by default), `none`, or `held-out` (with --photos:
                     each photo measured with calibration from the others' 22 variants, one bake
                     per photo; NAME_123.png is NAME.png's photo)
  --json             the report as JSON on stdout";

/// Inputs, flattened, and a name for each.
type Named = (Vec<String>, Vec<Vec<f32>>);

pub fn run(root: &Path, args: &[String]) -> Result<(), Box<dyn Error>> {
    if cfg!(debug_assertions) {
        // The f64 reference and the kernels, unoptimized, would take minutes per input.
        return crate::bench_latency::run_release(root, "eval", args, args.iter().any(|a| a == "--json"));
    }
    let mut model = None;
    let mut inputs_file = None;
    let mut tensor = None;
    let mut photos_dir = None;
    let (mut mean, mut scale) = (None, None);
    let mut labels_file = None;
    let mut json = false;
    let mut dense = None;
    let mut options = Options::default();
    let mut calibration = None;
    let mut args = args.iter();
    let value = |args: &mut std::slice::Iter<String>, flag: &str| -> Result<String, Box<dyn Error>> {
        args.next()
            .cloned()
            .ok_or_else(|| format!("{flag} takes a value\n\n{USAGE}").into())
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--model" => model = Some(PathBuf::from(value(&mut args, arg)?)),
            "--inputs" => inputs_file = Some(PathBuf::from(value(&mut args, arg)?)),
            "--tensor" => tensor = Some(value(&mut args, arg)?),
            "--photos" => photos_dir = Some(PathBuf::from(value(&mut args, arg)?)),
            "--mean" => mean = Some(value(&mut args, arg)?.parse::<f32>()?),
            "--scale" => scale = Some(value(&mut args, arg)?.parse::<f32>()?),
            "--labels" => labels_file = Some(PathBuf::from(value(&mut args, arg)?)),
            "--output" => options.output = Some(value(&mut args, arg)?),
            "--per-channel" => options.per_channel = value(&mut args, arg)?.parse()?,
            "--keep-float-below" => options.keep_float_below = value(&mut args, arg)?.parse()?,
            "--bias-correction" => options.bias_correction = value(&mut args, arg)?.parse()?,
            "--equalize" => options.equalize = value(&mut args, arg)?.parse()?,
            "--balanced-rounding" => options.balanced_rounding = value(&mut args, arg)?.parse()?,
            "--compensated-rounding" => options.compensated_rounding = value(&mut args, arg)?.parse()?,
            "--mse-ranges" => options.mse_ranges = value(&mut args, arg)?.parse()?,
            "--calibration" => calibration = Some(PathBuf::from(value(&mut args, arg)?)),
            "--json" => json = true,
            "--variants" => {
                dense = match value(&mut args, arg)?.as_str() {
                    "standard" => Some(false),
                    "dense" => Some(true),
                    other => {
                        return Err(
                            format!("--variants is standard or dense, not `{other}`\n\n{USAGE}").into(),
                        );
                    }
                }
            }
            other => return Err(format!("unknown argument `{other}`\n\n{USAGE}").into()),
        }
    }
    let model = model.ok_or_else(|| format!("--model is required\n\n{USAGE}"))?;
    let reference = qbake_codegen::reference::Reference::load_with(&model, &options)
        .map_err(|e| format!("{}: {e}", model.display()))?;
    let shape = reference.plan().input().shape.clone();
    if calibration.as_deref() == Some(Path::new("held-out")) {
        let args = (photos_dir, (mean, scale), dense, inputs_file, labels_file);
        let (report, names, folds) = held_out_report(root, &model, &reference, &options, args)?;
        if !json {
            println!("held out: each of {folds} photos measured with calibration from the others' variants");
        }
        return show(&report, &names, json);
    }
    let (mut written, mut stated_options) = (None, None);
    if let Some(path) = calibration {
        options.calibration = if path.as_os_str() == "synthetic" {
            Calibration::Synthetic
        } else if path.as_os_str() == "none" {
            Calibration::Off
        } else if path.is_dir() {
            let (Some(mean), Some(scale)) = (mean, scale) else {
                return Err(format!("--calibration DIR needs --mean and --scale\n\n{USAGE}").into());
            };
            let (_, inputs) = from_photos(&path, &shape, mean, scale, false)?;
            let file = calibration_file(root);
            write_inputs(&file, &shape, &inputs)?;
            written = Some(file.clone());
            let photos = format!("{:?} (22 variants of each photo)", path.display().to_string());
            stated_options = Some(stated(&options, &photos));
            Calibration::Inputs(file)
        } else {
            Calibration::Inputs(path)
        };
    }
    let (names, inputs) = match (inputs_file, photos_dir) {
        (Some(_), None) if dense.is_some() => {
            return Err(format!("--variants applies to --photos, not to --inputs\n\n{USAGE}").into());
        }
        (Some(file), None) => from_tensor(&file, tensor.as_deref(), &shape)?,
        (None, Some(dir)) => {
            let (Some(mean), Some(scale)) = (mean, scale) else {
                return Err(format!("--photos needs --mean and --scale\n\n{USAGE}").into());
            };
            from_photos(&dir, &shape, mean, scale, dense.unwrap_or(false))?
        }
        _ => return Err(format!("give --inputs or --photos\n\n{USAGE}").into()),
    };
    let labels = labels_file.map(|f| read_labels(&f)).transpose()?;
    let mut stderr = std::io::stderr();
    let mut shown = usize::MAX;
    let name = model.display().to_string();
    let report = qbake_eval::evaluate_loaded(
        &name,
        &reference,
        &options,
        &inputs,
        labels.as_deref(),
        |done, total| {
            // Redrawn when the bar grows, not per input: a log stays short.
            let filled = 30 * done / total;
            if filled != shown || done == total {
                shown = filled;
                let _ = write!(stderr, "\r  [{:<30}] {done}/{total} inputs", "#".repeat(filled));
                if done == total {
                    let _ = writeln!(stderr);
                }
            }
        },
    );
    if let Some(file) = written {
        let _ = std::fs::remove_file(file);
    }
    let mut report = report?;
    // The photos, not the temporary file they were written to.
    if let Some(options) = stated_options {
        report.options = options;
    }
    show(&report, &names, json)
}

/// `options` as a report states them, with the calibration as the user
/// gave it where the code generator saw something else (a temporary file).
fn stated(options: &Options, calibration: &str) -> String {
    let options = Options {
        calibration: Calibration::Auto,
        ..options.clone()
    };
    options
        .to_string()
        .replacen("calibration = auto", &format!("calibration = {calibration}"), 1)
}

/// The report as JSON on stdout, or as tables.
fn show(report: &Report, names: &[String], json: bool) -> Result<(), Box<dyn Error>> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print_report(report, names);
    }
    Ok(())
}

/// Where calibration photos are written for the code generator, which
/// reads calibration inputs from a file: one per process, removed once
/// baked.
fn calibration_file(root: &Path) -> PathBuf {
    root.join(format!(
        "target/qbake-eval/calibration-{}.safetensors",
        std::process::id()
    ))
}

/// Writes `inputs` as one F32 tensor `[N, shape...]` (calibration inputs
/// for the code generator).
fn write_inputs(file: &Path, shape: &[usize], inputs: &[Vec<f32>]) -> Result<(), Box<dyn Error>> {
    let bytes: Vec<u8> = inputs.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
    let mut batch = vec![inputs.len()];
    batch.extend(shape);
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, batch, &bytes)?;
    std::fs::create_dir_all(file.parent().unwrap_or(Path::new(".")))?;
    safetensors::serialize_to_file([("inputs", view)], None, file)?;
    Ok(())
}

/// The rows of a tensor as inputs of `shape`.
fn from_tensor(file: &Path, name: Option<&str>, shape: &[usize]) -> Result<Named, Box<dyn Error>> {
    let (name, inputs) = qbake_codegen::calibration::read_inputs(file, name, shape).map_err(|e| {
        let hint = if e.message().contains("tensors") {
            ": choose one with --tensor"
        } else {
            ""
        };
        format!("{}: {e}{hint}", file.display())
    })?;
    let names = (0..inputs.len()).map(|i| format!("{name}[{i}]")).collect();
    Ok((names, inputs))
}

fn from_photos(
    dir: &Path,
    shape: &[usize],
    mean: f32,
    scale: f32,
    dense: bool,
) -> Result<Named, Box<dyn Error>> {
    let files = photo_files(dir)?;
    let named = photo_variants(&files, shape, mean, scale, dense)?;
    if named.1.is_empty() {
        return Err(format!("no PNG or JPEG files in {}", dir.display()).into());
    }
    Ok(named)
}

/// The PNG and JPEG files in `dir`, sorted.
fn photo_files(dir: &Path) -> Result<Vec<PathBuf>, Box<dyn Error>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| {
                ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().to_str().unwrap_or(""))
            })
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Each file squared and resized to the model's input, with its 22 crops
/// and mirrorings (56 if `dense`), as inputs `(pixel - mean) / scale`.
fn photo_variants(
    files: &[PathBuf],
    shape: &[usize],
    mean: f32,
    scale: f32,
    dense: bool,
) -> Result<Named, Box<dyn Error>> {
    let &[1, 3, h, w] = shape else {
        return Err(format!("--photos needs a model input of shape [1, 3, H, W], not {shape:?}").into());
    };
    if h != w {
        return Err(format!("--photos needs a square input, not {h}x{w}").into());
    }
    let (mut names, mut inputs) = (Vec::new(), Vec::new());
    for file in files {
        let img = image::open(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?
            .to_rgb8();
        let stem = file
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let square = photos::square(&img, h as u32);
        let variants = if dense {
            photos::dense_variants(&square)
        } else {
            photos::variants(&square)
        };
        for (variant, v) in variants {
            names.push(format!("{stem} {variant}"));
            inputs.push(photos::nchw(&v, mean, scale));
        }
    }
    Ok((names, inputs))
}

/// The photo a file shows: its name without the extension and without a
/// trailing `_<digits>` (`chelsea_160.png` is `chelsea.png` at another
/// size), so that no photo calibrates its own fold.
fn photo_of(file: &Path) -> String {
    let stem = file.file_stem().unwrap_or_default().to_string_lossy();
    match stem.rsplit_once('_') {
        Some((name, size))
            if !name.is_empty() && !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit()) =>
        {
            name.to_string()
        }
        _ => stem.into_owned(),
    }
}

/// The arguments `held_out_report` takes from the command line: `--photos`,
/// `--mean` and `--scale`, `--variants`, `--inputs`, `--labels`.
type HeldOutArgs = (
    Option<PathBuf>,
    (Option<f32>, Option<f32>),
    Option<bool>,
    Option<PathBuf>,
    Option<PathBuf>,
);

/// For each photo in `--photos`, a bake calibrated on every other photo's
/// 22 variants, measured on its own variants; the folds' reports merged
/// into one over all the inputs, with the inputs' names and the number of
/// folds.
fn held_out_report(
    root: &Path,
    model: &Path,
    reference: &qbake_codegen::reference::Reference,
    options: &Options,
    (photos_dir, (mean, scale), dense, inputs_file, labels_file): HeldOutArgs,
) -> Result<(Report, Vec<String>, usize), Box<dyn Error>> {
    let (Some(dir), None) = (photos_dir, inputs_file) else {
        return Err(format!("--calibration held-out takes --photos, not --inputs\n\n{USAGE}").into());
    };
    if labels_file.is_some() {
        return Err(format!(
            "--calibration held-out measures the photos fold by fold; it takes no --labels\n\n{USAGE}"
        )
        .into());
    }
    let (Some(mean), Some(scale)) = (mean, scale) else {
        return Err(format!("--photos needs --mean and --scale\n\n{USAGE}").into());
    };
    let shape = reference.plan().input().shape.clone();
    let files = photo_files(&dir)?;
    let mut folds: Vec<(String, Vec<PathBuf>)> = Vec::new();
    for file in files {
        let photo = photo_of(&file);
        match folds.iter_mut().find(|(p, _)| *p == photo) {
            Some((_, fold)) => fold.push(file),
            None => folds.push((photo, vec![file])),
        }
    }
    if folds.len() < 2 {
        return Err(format!(
            "--calibration held-out needs photos of two scenes or more in {}",
            dir.display()
        )
        .into());
    }
    let file = calibration_file(root);
    let (mut names, mut reports) = (Vec::new(), Vec::new());
    let mut stderr = std::io::stderr();
    for (i, (photo, own)) in folds.iter().enumerate() {
        let others: Vec<PathBuf> = folds
            .iter()
            .filter(|(p, _)| p != photo)
            .flat_map(|(_, f)| f.iter().cloned())
            .collect();
        let (_, calibration) = photo_variants(&others, &shape, mean, scale, false)?;
        let (fold_names, inputs) = photo_variants(own, &shape, mean, scale, dense.unwrap_or(false))?;
        write_inputs(&file, &shape, &calibration)?;
        let options = Options {
            calibration: Calibration::Inputs(file.clone()),
            ..options.clone()
        };
        let report = qbake_eval::evaluate_loaded(
            &model.display().to_string(),
            reference,
            &options,
            &inputs,
            None,
            |done, total| {
                if done == total {
                    let _ = writeln!(
                        stderr,
                        "  fold {}/{} ({photo}): calibrated on {} inputs, measured {total}",
                        i + 1,
                        folds.len(),
                        calibration.len()
                    );
                }
            },
        );
        let _ = std::fs::remove_file(&file);
        reports.push(report?);
        names.extend(fold_names);
    }
    let mut report = qbake_eval::Report::merge(&reports).ok_or("the folds' reports differ in shape")?;
    report.options = stated(
        options,
        "held out (each photo on a bake calibrated on the others' 22 variants)",
    );
    Ok((report, names, folds.len()))
}

fn read_labels(file: &Path) -> Result<Vec<usize>, Box<dyn Error>> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().parse().map_err(|e| format!("label `{l}`: {e}").into()))
        .collect()
}

fn print_report(report: &Report, names: &[String]) {
    let first = names.first().map_or(String::new(), |n| format!(" ({n}, ...)"));
    println!("{}: {} inputs{first}", report.model, report.inputs);
    println!("baked with {}", report.options);
    if let Some(a) = report.float_accuracy {
        println!("float accuracy: {a:.2}%");
    }
    println!(
        "\n{:<8} {:>8} {:>8} {:>9} {:>11} {:>10}",
        "family", "top-1", "top-5", "accuracy", "cosine mean", "cosine min"
    );
    for f in &report.families {
        let acc = f.accuracy.map_or("-".to_string(), |a| format!("{a:.2}%"));
        println!(
            "{:<8} {:>7.2}% {:>7.2}% {acc:>9} {:>11.5} {:>10.5}",
            f.kernels, f.top1_agreement, f.top5_agreement, f.cosine_mean, f.cosine_min
        );
    }
    for f in &report.families {
        if f.misses.is_empty() {
            continue;
        }
        // With the float model's margin: a miss on a near tie says little.
        let shown: Vec<String> = f
            .misses
            .iter()
            .take(10)
            .map(|m| format!("{} ({:.3})", names[m.input], m.float_margin))
            .collect();
        let more = f.misses.len().saturating_sub(shown.len());
        let more = if more > 0 {
            format!(", {more} more")
        } else {
            String::new()
        };
        println!(
            "{} top-1 misses (float's top-2 margin): {}{more}",
            f.kernels,
            shown.join(", ")
        );
    }
    let db = |v: Option<f64>| v.map_or("exact".to_string(), |v| format!("{v:.1} dB"));
    for f in &report.families {
        println!(
            "\n{} per layer, worst first (output SQNR against float; weight SQNR as baked):",
            f.kernels
        );
        // The step's name last: names of folded steps run long.
        println!("  {:<20} {:>10} {:>10}  step", "op", "output", "weight");
        for l in f.layers.iter().take(12) {
            println!(
                "  {:<20} {:>10} {:>10}  {}",
                l.op,
                db(l.output_sqnr_db),
                l.weight_sqnr_db.map_or("-".into(), |v| format!("{v:.1} dB")),
                l.step,
            );
        }
        if f.layers.len() > 12 {
            println!("  ... {} more (--json lists all)", f.layers.len() - 12);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::{Dtype, TensorView};

    fn temp(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("qbake-eval-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn inputs_are_the_rows_of_a_tensor_of_the_input_shape() {
        let data: Vec<u8> = (0..12).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![3, 1, 4], &data).unwrap();
        let file = temp(
            "inputs.safetensors",
            &safetensors::serialize([("x", view)], None).unwrap(),
        );
        let (names, inputs) = from_tensor(&file, None, &[1, 4]).unwrap();
        assert_eq!(names, ["x[0]", "x[1]", "x[2]"]);
        assert_eq!(inputs[2], [8.0, 9.0, 10.0, 11.0]);
        let err = from_tensor(&file, None, &[1, 5]).unwrap_err().to_string();
        assert!(err.contains("not a batch of inputs of shape [1, 5]"), "{err}");
        assert!(from_tensor(&file, Some("y"), &[1, 4]).is_err());
        std::fs::remove_file(file).unwrap();
    }

    /// A held-out evaluation of a tiny image model on four files of three
    /// photos (one at two sizes): three folds, every variant of every file
    /// measured once, in fold order; and the arguments it refuses.
    #[test]
    fn held_out_folds_cover_every_photo_once() {
        let dir = std::env::temp_dir().join(format!("qbake-held-out-{}", std::process::id()));
        let photos = dir.join("photos");
        std::fs::create_dir_all(&photos).unwrap();
        let graph = serde_json::json!({
            "version": 1,
            "inputs": [{"name": "image", "shape": [1, 3, 8, 8]}],
            "outputs": ["y"],
            "nodes": [
                {"name": "conv", "op": "Conv", "inputs": ["image"], "output": "c", "weight": "conv.weight", "bias": "conv.bias", "pads": [1, 1, 1, 1], "activation": "relu"},
                {"name": "head", "op": "Conv", "inputs": ["c"], "output": "y", "weight": "head.weight"}
            ]
        });
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 37 + seed * 11) % 23) as f32 / 23.0 - 0.5)
                .collect()
        };
        let tensors = vec![
            (
                "conv.weight",
                crate::fixtures::f32s(&[8, 3, 3, 3], &values(216, 1)),
            ),
            ("conv.bias", crate::fixtures::f32s(&[8], &values(8, 2))),
            (
                "head.weight",
                crate::fixtures::f32s(&[4, 8, 1, 1], &values(32, 3)),
            ),
        ];
        crate::fixtures::write(&dir, "tiny_image.safetensors", tensors, Some(graph)).unwrap();
        for (i, name) in ["a.png", "a_16.png", "b.png", "c.png"].iter().enumerate() {
            let img = image::RgbImage::from_fn(12 + 4 * (i as u32 % 2), 12, |x, y| {
                image::Rgb([
                    (x * 20 + i as u32 * 40) as u8,
                    (y * 20) as u8,
                    ((x + y) * 9) as u8,
                ])
            });
            img.save(photos.join(name)).unwrap();
        }
        let model = dir.join("tiny_image.safetensors");
        let options = Options::default();
        let reference = qbake_codegen::reference::Reference::load_with(&model, &options).unwrap();
        let report = |args: HeldOutArgs| held_out_report(&dir, &model, &reference, &options, args);
        let photos_args = |dense| {
            (
                Some(photos.clone()),
                (Some(127.5), Some(127.5)),
                dense,
                None,
                None,
            )
        };
        let (merged, names, folds) = report(photos_args(None)).unwrap();
        assert_eq!((folds, merged.inputs, names.len()), (3, 88, 88));
        assert!(
            names[..44]
                .iter()
                .all(|n| n.starts_with("a ") || n.starts_with("a_16 ")),
            "{names:?}"
        );
        assert!(
            names[44..66].iter().all(|n| n.starts_with("b "))
                && names[66..].iter().all(|n| n.starts_with("c "))
        );
        assert_eq!(merged.families.len(), 2);
        // The report names the folds, not the temporary calibration file.
        assert!(
            merged.options.ends_with(
                "calibration = held out (each photo on a bake calibrated on the others' 22 variants)"
            ),
            "{}",
            merged.options
        );
        let err = |args: HeldOutArgs| report(args).unwrap_err().to_string();
        let (p, ms) = (Some(photos.clone()), (Some(127.5), Some(127.5)));
        assert!(err((p.clone(), ms, None, Some(dir.join("x.safetensors")), None)).contains("not --inputs"));
        assert!(err((p.clone(), ms, None, None, Some(dir.join("labels.txt")))).contains("no --labels"));
        assert!(err((p, (None, None), None, None, None)).contains("--mean and --scale"));
        for name in ["a_16.png", "b.png", "c.png"] {
            std::fs::remove_file(photos.join(name)).unwrap();
        }
        assert!(err(photos_args(None)).contains("two scenes or more"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A photo's files at several sizes are one fold; other underscores
    /// and names that are all digits stay as they are.
    #[test]
    fn a_photo_is_its_name_without_a_size() {
        let photo = |f: &str| photo_of(Path::new(f));
        assert_eq!(photo("dir/chelsea_160.png"), "chelsea");
        assert_eq!(photo("chelsea.png"), "chelsea");
        assert_eq!(photo("golden_retriever.jpg"), "golden_retriever");
        assert_eq!(photo("golden_retriever_224.jpg"), "golden_retriever");
        assert_eq!(photo("_160.png"), "_160");
        assert_eq!(photo("cat_.png"), "cat_");
        assert_eq!(photo("2024_01.png"), "2024");
    }

    #[test]
    fn calibration_photos_are_written_as_a_batch_of_inputs() {
        let inputs = vec![vec![1.0, -2.0, 3.5, 0.0], vec![0.25, 5.0, -1.0, 7.0]];
        let file = std::env::temp_dir().join(format!("qbake-eval-{}-calib.safetensors", std::process::id()));
        write_inputs(&file, &[1, 4], &inputs).unwrap();
        let (names, read) = from_tensor(&file, None, &[1, 4]).unwrap();
        assert_eq!(names, ["inputs[0]", "inputs[1]"]);
        assert_eq!(read, inputs);
        std::fs::remove_file(file).unwrap();
    }

    #[test]
    fn labels_are_one_index_per_line() {
        let file = temp("labels.txt", b"3\n\n 7 \n0\n");
        assert_eq!(read_labels(&file).unwrap(), [3, 7, 0]);
        std::fs::write(&file, "3\ncat\n").unwrap();
        assert!(
            read_labels(&file)
                .unwrap_err()
                .to_string()
                .contains("label `cat`")
        );
        std::fs::remove_file(file).unwrap();
    }
}
