//! Every convolutional op, baked and run in both kernel families, against
//! the float reference run with the baked weights (what the model computes,
//! rounding aside) and with the file's own.

use qbake::Kernels;
use qbake_codegen::Options;
use qbake_codegen::graph::Act;
use qbake_codegen::quantize;
use qbake_codegen::reference::Reference;
use std::path::{Path, PathBuf};

// Weights of fewer than 1024 values stay f32 by default: the first model
// runs most convolutions in float; the others quantize every weight.
mod default {
    qbake::quantized_model!("../models/conv_ops.safetensors");
}
mod all_u8 {
    qbake::quantized_model!("../models/conv_ops.safetensors", keep_float_below = 0);
}
mod all_u8_per_tensor {
    qbake::quantized_model!(
        "../models/conv_ops.safetensors",
        keep_float_below = 0,
        per_channel = false
    );
}

// Per-tensor again, with cross-layer equalization: conv1's ReLU6 becomes
// a clip per channel, and its channel ranges are traded with the depthwise
// convolution after it.
mod all_u8_equalized {
    qbake::quantized_model!(
        "../models/conv_ops.safetensors",
        keep_float_below = 0,
        per_channel = false,
        equalize = true
    );
}

fn path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/conv_ops.safetensors")
}

/// The reference with the baked (dequantized) weights in place of the file's.
fn baked_reference(options: &Options) -> Reference {
    let mut reference = Reference::load_with(&path(), options).unwrap();
    let baked = quantize::bake(reference.plan(), options).unwrap();
    reference.set_baked(&baked).unwrap();
    reference
}

fn inputs(count: usize) -> Vec<Vec<f32>> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..count)
        .map(|i| {
            // Some inputs far larger than the others, and one all zeros.
            let scale = [1.0, 0.01, 30.0, 0.0][i % 4];
            (0..330)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    scale * ((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
                })
                .collect()
        })
        .collect()
}

type Forward = fn(Kernels, usize, &[f32]) -> Vec<f32>;

macro_rules! forward {
    ($($m:ident)::+) => {
        |kernels: Kernels, threads: usize, x: &[f32]| -> Vec<f32> {
            let mut input = qbake::boxed_zeroed::<$($m)::+::Input>();
            input
                .as_flattened_mut()
                .as_flattened_mut()
                .as_flattened_mut()
                .copy_from_slice(x);
            let model = $($m)::+::Model::new(kernels).with_threads(threads);
            model.forward(&input).as_flattened().to_vec()
        }
    };
}

#[test]
fn both_families_compute_the_baked_model() {
    let u8_all = Options {
        keep_float_below: 0,
        ..Options::default()
    };
    let models: [(&str, Options, Forward); 4] = [
        ("default", Options::default(), forward!(default)),
        ("all u8", u8_all.clone(), forward!(all_u8)),
        (
            "all u8 per tensor",
            Options {
                per_channel: false,
                ..u8_all.clone()
            },
            forward!(all_u8_per_tensor),
        ),
        (
            "all u8 per tensor, equalized",
            Options {
                per_channel: false,
                equalize: true,
                ..u8_all
            },
            forward!(all_u8_equalized),
        ),
    ];
    let original = Reference::load(&path()).unwrap();
    for (what, options, forward) in models {
        let baked = baked_reference(&options);
        for x in inputs(12) {
            let want = baked.run(&x);
            let float = original.run(&x);
            for kernels in [Kernels::Dequant, Kernels::Hybrid] {
                let got = forward(kernels, 1, &x);
                // The output is a softmax: probabilities, compared absolutely.
                // Dequant differs from the f64 reference by f32 rounding;
                // Hybrid also rounds each activation row to 8 bits.
                let tol = if kernels == Kernels::Dequant { 1e-5 } else { 0.03 };
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(g) - w).abs() <= tol,
                        "{what} {kernels:?} [{i}]: {g} vs {w}\n{got:?}\n{want:?}"
                    );
                }
                // Against the file's own weights, quantization error included.
                let err = got
                    .iter()
                    .zip(&float)
                    .map(|(&g, &f)| (f64::from(g) - f).abs())
                    .fold(0.0, f64::max);
                assert!(err <= 0.06, "{what} {kernels:?}: {err} from the float model");
                // Threads split the work, never the arithmetic.
                assert_eq!(forward(kernels, 3, &x), got, "{what} {kernels:?} with 3 threads");
                // However many are asked for (nothing overflows).
                assert_eq!(
                    forward(kernels, usize::MAX, &x),
                    got,
                    "{what} {kernels:?} with usize::MAX threads"
                );
            }
        }
    }
}

/// The equalized model above is not the plain one under another name: its
/// first convolution's ReLU6 is bounded per channel, and its weights moved.
#[test]
fn equalization_rewrote_the_relu6_pair() {
    let options = Options {
        equalize: true,
        ..Options::default()
    };
    let (plain, eq) = (
        Reference::load(&path()).unwrap(),
        Reference::load_with(&path(), &options).unwrap(),
    );
    let clipped: Vec<&str> = eq
        .plan()
        .steps
        .iter()
        .filter(|s| matches!(s.op.act(), Some(Act::ClipChannels { .. })))
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(clipped.len(), 1, "{clipped:?}");
    assert!(clipped[0].starts_with("pad0+conv1"), "{clipped:?}");
    assert_ne!(plain.tensor("conv1.weight"), eq.tensor("conv1.weight"));
    assert_ne!(plain.tensor("dw.weight"), eq.tensor("dw.weight"));
}

/// Many threads running the same model at once each get their own scratch
/// and op buffers: every result is the one a lone thread computes.
#[test]
fn concurrent_forward_passes_do_not_share_buffers() {
    let inputs = inputs(8);
    for kernels in [Kernels::Dequant, Kernels::Hybrid] {
        let forward = forward!(all_u8);
        let want: Vec<Vec<f32>> = inputs.iter().map(|x| forward(kernels, 1, x)).collect();
        std::thread::scope(|s| {
            for t in 0..8 {
                let (inputs, want) = (&inputs, &want);
                s.spawn(move || {
                    for round in 0..25 {
                        let i = (t + round) % inputs.len();
                        assert_eq!(
                            forward(kernels, 1 + round % 2, &inputs[i]),
                            want[i],
                            "thread {t} round {round}"
                        );
                    }
                });
            }
        });
    }
}

mod with_reference {
    qbake::quantized_model!("../models/conv_ops.safetensors", reference = true);
}

/// `reference = true` also bakes the float model: it computes what the f64
/// reference computes from the file's weights, to f32 rounding, in both
/// families; the 8-bit model beside it is the usual one.
#[test]
fn the_baked_float_model_is_the_float_model() {
    let float = Reference::load(&path()).unwrap();
    let reference = forward!(with_reference::reference);
    let quantized = forward!(with_reference);
    let plain = forward!(default);
    for x in inputs(8) {
        let want = float.run(&x);
        for kernels in [Kernels::Dequant, Kernels::Hybrid] {
            let got = reference(kernels, 1, &x);
            for (&g, &w) in got.iter().zip(&want) {
                assert!((f64::from(g) - w).abs() <= 1e-5, "{kernels:?}: {g} vs {w}");
            }
            assert_eq!(quantized(kernels, 1, &x), plain(kernels, 1, &x));
        }
    }
    // Its weights are f32 bytes, not quantized.
    assert!(matches!(
        with_reference::reference::weights::CONV1_WEIGHT,
        qbake::Weight::F32(_)
    ));
}
