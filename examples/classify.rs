//! Classifies a photo with EfficientNet-Lite0 (ImageNet-1k, the MobileNetV2
//! family), imported from ONNX and baked to 8 bits at compile time, in both
//! kernel families, beside the float reference.
//!
//! `cargo run --release --example classify -- [IMAGE]` (default: the cat
//! photo in `models/photos/chelsea.png`; any PNG or JPEG works).

use qbake::Kernels;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod efficientnet {
    qbake::quantized_model!("../models/efficientnet_lite0.onnx");
}

const LABELS: &str = include_str!("../models/imagenet_labels.txt");
const SIDE: u32 = 224;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (path, shown) = match std::env::args_os().nth(1) {
        Some(arg) => (PathBuf::from(&arg), arg.to_string_lossy().into_owned()),
        None => (
            root.join("models/photos/chelsea.png"),
            "models/photos/chelsea.png".into(),
        ),
    };
    let image = image::open(&path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let input = preprocess(&image.to_rgb8());
    let labels: Vec<&str> = LABELS.lines().collect();
    println!("{shown}, EfficientNet-Lite0 (ImageNet), baked from models/efficientnet_lite0.onnx");

    let reference = qbake_codegen::reference::Reference::load(&root.join("models/efficientnet_lite0.onnx"))?;
    let float: Vec<f32> = reference
        .run(input.as_flattened().as_flattened().as_flattened())
        .iter()
        .map(|&v| v as f32)
        .collect();
    print_top5("float reference (f64)", &float, &labels, None);

    for kernels in [Kernels::Dequant, Kernels::Hybrid] {
        let model = efficientnet::Model::new(kernels);
        let mut out = qbake::boxed_zeroed::<efficientnet::Output>();
        // The first call fills the dequant cache; time the ones after it.
        model.forward_into(&input, &mut out);
        let runs = 10;
        let start = Instant::now();
        for _ in 0..runs {
            model.forward_into(&input, &mut out);
        }
        let ms = start.elapsed().as_secs_f64() * 1000.0 / runs as f64;
        print_top5(
            &format!("8-bit, {kernels:?}"),
            out.as_flattened(),
            &labels,
            Some((ms, &float)),
        );
    }
    Ok(())
}

/// RGB to the model's input: a centered square crop of 87.5 % of the short
/// side resized to 224 (EfficientNet's evaluation crop; a 224x224 image is
/// taken as already cropped), then `(x - 127) / 128`, NCHW.
fn preprocess(rgb: &image::RgbImage) -> Box<efficientnet::Input> {
    let rgb = if rgb.dimensions() == (SIDE, SIDE) {
        rgb.clone()
    } else {
        let (w, h) = rgb.dimensions();
        let side = (w.min(h) as f64 * 0.875).round().max(1.0) as u32;
        let crop = image::imageops::crop_imm(rgb, (w - side) / 2, (h - side) / 2, side, side).to_image();
        image::imageops::resize(&crop, SIDE, SIDE, image::imageops::FilterType::CatmullRom)
    };
    let mut input = qbake::boxed_zeroed::<efficientnet::Input>();
    for (x, y, pixel) in rgb.enumerate_pixels() {
        for c in 0..3 {
            input[0][c][y as usize][x as usize] = (f32::from(pixel[c]) - 127.0) / 128.0;
        }
    }
    input
}

fn print_top5(what: &str, logits: &[f32], labels: &[&str], timing: Option<(f64, &[f32])>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    match timing {
        Some((ms, float)) => println!(
            "\n{what}: {ms:.1} ms per image, cosine to float {:.5}",
            cosine(logits, float)
        ),
        None => println!("\n{what}:"),
    }
    for &i in &order[..5] {
        println!("  {:>6.2}%  {i:>4} {}", 100.0 * exp[i] / sum, labels[i]);
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}
