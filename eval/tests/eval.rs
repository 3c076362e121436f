//! The executor computes what the generated `forward` computes, bit for
//! bit, and the report measures it.

use qbake::Kernels;
use qbake_codegen::Options;
use qbake_codegen::quantize;
use qbake_codegen::reference::Reference;
use qbake_eval::exec::Executor;
use std::path::{Path, PathBuf};

mod conv_ops {
    qbake::quantized_model!("../../tests/models/conv_ops.safetensors", keep_float_below = 0);
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models/conv_ops.safetensors")
}

fn inputs(n: usize) -> Vec<Vec<f32>> {
    let mut s = 0x2545_f491u64;
    (0..n)
        .map(|_| {
            (0..330)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
                })
                .collect()
        })
        .collect()
}

fn options() -> Options {
    Options {
        keep_float_below: 0,
        ..Options::default()
    }
}

#[test]
fn the_executor_is_the_generated_forward() {
    let plan = Reference::load(&fixture()).unwrap().plan().clone();
    let baked = quantize::bake(&plan, &options()).unwrap();
    let executor = Executor::new(plan.clone(), &baked);
    for x in inputs(5) {
        for kernels in [Kernels::Dequant, Kernels::Hybrid] {
            let mut input = qbake::boxed_zeroed::<conv_ops::Input>();
            input
                .as_flattened_mut()
                .as_flattened_mut()
                .as_flattened_mut()
                .copy_from_slice(&x);
            let compiled = conv_ops::Model::new(kernels).forward(&input);
            let dynamic = &executor.run_all(kernels, &x)[plan.output];
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(compiled.as_flattened()), bits(dynamic), "{kernels:?}");
        }
    }
}

#[test]
fn the_report_measures_agreement_and_each_layer() {
    let inputs = inputs(6);
    let labels: Vec<usize> = (0..6).map(|i| i % 10).collect();
    let mut calls = 0;
    let report = qbake_eval::evaluate(&fixture(), &options(), &inputs, Some(&labels), |done, total| {
        calls += 1;
        assert!(done <= total && total == 6);
    })
    .unwrap();
    assert_eq!((report.inputs, calls), (6, 6));
    assert!(report.float_accuracy.is_some());
    for family in &report.families {
        assert!(
            family.cosine_min > 0.99 && family.cosine_min <= family.cosine_mean,
            "{family:?}"
        );
        assert!(family.top5_agreement >= family.top1_agreement);
        // One row per computing step, worst first, each quantized weight's SQNR given.
        let sqnr: Vec<f64> = family
            .layers
            .iter()
            .map(|l| l.output_sqnr_db.unwrap_or(f64::INFINITY))
            .collect();
        assert!(sqnr.windows(2).all(|w| w[0] <= w[1]), "{sqnr:?}");
        assert!(
            family
                .layers
                .iter()
                .any(|l| l.step == "pad0+conv1+bn1+relu6" && l.weight_sqnr_db.is_some())
        );
    }
    // Dequant's outputs differ from float by the weights alone; with the
    // activations rounded to 8 bits too, Hybrid's final output is no closer.
    let out_sqnr = |f: usize| {
        report.families[f]
            .layers
            .iter()
            .find(|l| l.step == "softmax")
            .unwrap()
            .output_sqnr_db
            .unwrap()
    };
    assert!(
        out_sqnr(0) >= out_sqnr(1) - 1.0,
        "{} vs {}",
        out_sqnr(0),
        out_sqnr(1)
    );
    // Wrong sizes are errors, not panics.
    let err = qbake_eval::evaluate(&fixture(), &options(), &[vec![0.0; 3]], None, |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("the model takes 330"), "{err}");
}

/// Reports on parts of the inputs, merged, are the report on all of them:
/// agreements, cosines, misses (numbered among all inputs) and each
/// layer's SQNR from the summed energies.
#[test]
fn merged_parts_are_the_whole_report() {
    let inputs = inputs(7);
    let labels: Vec<usize> = (0..7).map(|i| (i * 3) % 10).collect();
    let run = |range: std::ops::Range<usize>| {
        qbake_eval::evaluate(
            &fixture(),
            &options(),
            &inputs[range.clone()],
            Some(&labels[range]),
            |_, _| {},
        )
        .unwrap()
    };
    let whole = run(0..7);
    let merged = qbake_eval::Report::merge(&[run(0..2), run(2..3), run(3..7)]).unwrap();
    assert_eq!(merged.inputs, 7);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + b.abs());
    assert!(close(
        merged.float_accuracy.unwrap(),
        whole.float_accuracy.unwrap()
    ));
    for (m, w) in merged.families.iter().zip(&whole.families) {
        assert_eq!(m.kernels, w.kernels);
        assert!(close(m.top1_agreement, w.top1_agreement) && close(m.top5_agreement, w.top5_agreement));
        assert!(close(m.accuracy.unwrap(), w.accuracy.unwrap()));
        assert!(close(m.cosine_mean, w.cosine_mean) && m.cosine_min == w.cosine_min);
        let misses = |f: &qbake_eval::FamilyReport| f.misses.iter().map(|m| m.input).collect::<Vec<_>>();
        assert_eq!(misses(m), misses(w));
        assert_eq!(m.layers.len(), w.layers.len());
        for l in &w.layers {
            let got = m.layers.iter().find(|g| g.step == l.step).unwrap();
            match (got.output_sqnr_db, l.output_sqnr_db) {
                (Some(a), Some(b)) => assert!(close(a, b), "{}: {a} vs {b}", l.step),
                (a, b) => assert_eq!(a, b, "{}", l.step),
            }
        }
    }
    assert!(qbake_eval::Report::merge(&[]).is_none());
}
