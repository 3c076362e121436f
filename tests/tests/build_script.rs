//! The build-script path (`tests/build.rs` + `include_model!`) and the macro
//! bake the same file with the same options into the same API, the same
//! weights, and the same output bits for every input, in both kernel families.

use qbake::{Kernels, Weight};

/// Each model twice: `by_macro::NAME` and `by_build_script::NAME`, with the
/// options `build.rs` gives the same name.
mod by_macro {
    pub mod all_ops {
        qbake::quantized_model!("../models/all_ops.safetensors");
    }
    pub mod all_ops_per_tensor {
        qbake::quantized_model!(
            "../models/all_ops.safetensors",
            per_channel = false,
            keep_float_below = 500
        );
    }
    pub mod digits {
        qbake::quantized_model!("../../examples/models/digits.safetensors");
    }
    pub mod digits_per_tensor {
        qbake::quantized_model!(
            "../../examples/models/digits.safetensors",
            per_channel = false,
            keep_float_below = 1
        );
    }
}

mod by_build_script {
    pub mod all_ops {
        qbake::include_model!("all_ops");
    }
    pub mod all_ops_per_tensor {
        qbake::include_model!("all_ops_per_tensor");
    }
    pub mod digits {
        qbake::include_model!("digits");
    }
    pub mod digits_per_tensor {
        qbake::include_model!("digits_per_tensor");
    }
}

/// Same name, shape, parameters and bytes; quantized bytes 64-byte aligned.
/// Returns whether the weight is 8-bit.
fn same_weight(a: &Weight, b: &Weight) -> bool {
    match (a, b) {
        (Weight::U8(a), Weight::U8(b)) => {
            assert_eq!((a.name, a.rows, a.cols), (b.name, b.rows, b.cols));
            assert_eq!(a.packed, b.packed, "{}", a.name);
            assert!(!b.packed.is_empty());
            assert_eq!(
                b.packed.as_ptr() as usize % 64,
                0,
                "{} is not 64-byte aligned",
                b.name
            );
            assert_eq!(a.params.min, b.params.min);
            assert_eq!(a.params.max, b.params.max);
            assert_eq!(a.params.scale, b.params.scale);
            assert_eq!(a.params.zero_point, b.params.zero_point);
            true
        }
        (Weight::F32(a), Weight::F32(b)) => {
            assert_eq!((a.name, a.rows, a.cols), (b.name, b.rows, b.cols));
            assert_eq!(a.data, b.data, "{}", a.name);
            false
        }
        _ => panic!("one path quantized a weight the other kept in f32"),
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Inputs that exercise the arithmetic: zeros, one hot, huge, tiny, negative,
/// and random values at several scales.
fn inputs(len: usize) -> Vec<Vec<f32>> {
    let mut s = 0x0ddb_1a5e_5eed_0001_u64;
    let mut random = |scale: f32| -> Vec<f32> {
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                scale * ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
            })
            .collect()
    };
    let mut xs = vec![vec![0.0; len], vec![1e30; len], vec![-1e-30; len]];
    xs.extend((0..len).step_by(7).map(|i| {
        let mut x = vec![0.0; len];
        x[i] = 1.0;
        x
    }));
    for scale in [1e-3, 0.5, 1.0, 4.0, 1e3] {
        xs.extend((0..40).map(|_| random(scale)));
    }
    xs
}

/// Compares `by_macro::$m` with `by_build_script::$m`: shapes, the types
/// (an input of one is an input of the other), the listed weights, and the
/// outputs' bits.
macro_rules! same_model {
    ($m:ident, weights: [$($w:ident),*], floats: [$($f:ident),*], u8_weights: $n_u8:expr) => {{
        use by_build_script::$m as b;
        use by_macro::$m as m;
        assert_eq!(m::INPUT_SHAPE, b::INPUT_SHAPE);
        assert_eq!(m::OUTPUT_SHAPE, b::OUTPUT_SHAPE);
        let u8_weights = [$(same_weight(&m::weights::$w, &b::weights::$w)),*];
        assert_eq!(u8_weights.iter().filter(|&&q| q).count(), $n_u8, "8-bit weights of {}", stringify!($m));
        $(assert_eq!(bits(&m::weights::$f), bits(&b::weights::$f));)*
        let mut compared = 0;
        for kernels in [Kernels::Dequant, Kernels::Hybrid] {
            let (mm, bm) = (m::Model::new(kernels), b::Model::new(kernels));
            for x in inputs(m::INPUT_SHAPE.iter().product()) {
                let mut input: Box<m::Input> = qbake::boxed_zeroed();
                input.as_flattened_mut().copy_from_slice(&x);
                let want: Box<m::Output> = mm.forward(&input);
                let got: Box<b::Output> = bm.forward(&input);
                assert_eq!(
                    bits(want.as_flattened()),
                    bits(got.as_flattened()),
                    "{} {kernels:?} on {:?}",
                    stringify!($m),
                    &x[..4]
                );
                compared += 1;
            }
        }
        compared
    }};
}

#[test]
fn all_ops_is_the_same_by_both_paths() {
    // The Add of `shift` is folded into d4's bias at compile time. With
    // the default options one weight is large enough to quantize (4096
    // elements); all four per tensor below.
    let n = same_model!(all_ops, weights: [D1_WEIGHT, M2_WEIGHT, M3_WEIGHT, D4_WEIGHT],
        floats: [D1_BIAS, M2_BIAS, D4_BIAS], u8_weights: 1);
    assert!(n > 400, "{n} runs");
    same_model!(all_ops_per_tensor, weights: [D1_WEIGHT, M2_WEIGHT, M3_WEIGHT, D4_WEIGHT],
        floats: [D1_BIAS, M2_BIAS, D4_BIAS], u8_weights: 4);
}

#[test]
fn digits_is_the_same_by_both_paths() {
    same_model!(digits, weights: [FC1_WEIGHT, FC2_WEIGHT, FC3_WEIGHT],
        floats: [FC1_BIAS, FC2_BIAS, FC3_BIAS], u8_weights: 2);
    same_model!(digits_per_tensor, weights: [FC1_WEIGHT, FC2_WEIGHT, FC3_WEIGHT],
        floats: [FC1_BIAS, FC2_BIAS, FC3_BIAS], u8_weights: 3);
}

/// The build script tells cargo to rerun it when a model file changes, and
/// only then (cargo's default, any file of the package, no longer applies).
#[test]
fn the_build_script_reruns_when_a_model_changes() {
    let output = std::path::Path::new(env!("OUT_DIR")).with_file_name("output");
    let text = std::fs::read_to_string(&output).unwrap_or_else(|e| panic!("{}: {e}", output.display()));
    let watched: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("cargo::rerun-if-changed="))
        .collect();
    assert_eq!(watched.len(), 4, "{text}");
    for (i, model) in ["models/all_ops.safetensors", "examples/models/digits.safetensors"]
        .iter()
        .enumerate()
    {
        assert!(
            watched[2 * i].ends_with(model) && watched[2 * i + 1].ends_with(model),
            "{text}"
        );
        assert!(std::path::Path::new(watched[2 * i]).is_file());
    }
}
