//! Cross-layer equalization: the equalized plan computes the file's function,
//! its channel ranges are balanced, and per-tensor weights lose less.

mod support;

use qbake_codegen::Options;
use qbake_codegen::graph::{Act, Op, Plan};
use qbake_codegen::quantize;
use qbake_codegen::reference::Reference;
use std::path::PathBuf;
use support::Xorshift;

/// 1x1 conv (4 to 8) + ReLU6, 3x3 depthwise + ReLU6, 1x1 conv (8 to 5): a
/// MobileNet block whose batch norms were folded, leaving channels whose
/// ranges differ by two orders of magnitude.
fn block() -> (tempfile::TempDir, PathBuf) {
    block_scaled(&[0.02, 3.0, 0.4, 1.0])
}

/// [`block`] with the expansion's rows scaled by `expand_scales`, in turn.
fn block_scaled(expand_scales: &[f32]) -> (tempfile::TempDir, PathBuf) {
    let graph = serde_json::json!({
        "version": 1,
        "inputs": [{"name": "x", "shape": [1, 4, 6, 6]}],
        "outputs": ["y"],
        "nodes": [
            {"name": "expand", "op": "Conv", "inputs": ["x"], "output": "e", "weight": "expand.w",
             "bias": "expand.b", "activation": "relu6"},
            {"name": "dw", "op": "Conv", "inputs": ["e"], "output": "d", "weight": "dw.w", "bias": "dw.b",
             "group": 8, "pads": [1, 1, 1, 1], "activation": "relu6"},
            {"name": "project", "op": "Conv", "inputs": ["d"], "output": "y", "weight": "project.w",
             "bias": "project.b"}
        ]
    });
    let mut rng = Xorshift(0x853c_49e6_748f_ea9b);
    let expand = rng.rows(8, 4, expand_scales);
    let dw = rng.rows(8, 9, &[2.0, 0.05, 1.0, 0.3, 0.01, 1.5]);
    let project = rng.rows(5, 8, &[1.0, 0.2]);
    let (eb, db, pb) = (
        rng.rows(8, 1, &[0.5]),
        rng.rows(8, 1, &[0.5]),
        rng.rows(5, 1, &[0.5]),
    );
    support::model(
        graph,
        &[
            ("expand.w", &[8, 4, 1, 1], expand),
            ("expand.b", &[8], eb),
            ("dw.w", &[8, 1, 3, 3], dw),
            ("dw.b", &[8], db),
            ("project.w", &[5, 8, 1, 1], project),
            ("project.b", &[5], pb),
        ],
    )
}

fn inputs() -> Vec<Vec<f32>> {
    let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
    // Large enough that the ReLU6 bounds are reached.
    (0..8)
        .map(|_| (0..144).map(|_| 4.0 * rng.signed()).collect())
        .collect()
}

fn equalized() -> Options {
    Options {
        equalize: true,
        ..Options::default()
    }
}

fn weight<'a>(plan: &'a Plan, step: &str) -> &'a [f32] {
    let step = plan.steps.iter().find(|s| s.name.starts_with(step)).unwrap();
    match &step.op {
        Op::Conv { weight, .. } | Op::Depthwise { weight, .. } => &plan.tensor(weight).data,
        op => panic!("{op:?}"),
    }
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0, |m, v| m.max(v.abs()))
}

#[test]
fn the_equalized_plan_computes_the_same_function() {
    let (_dir, path) = block();
    let file = Reference::load(&path).unwrap();
    let eq = Reference::load_with(&path, &equalized()).unwrap();
    // ReLU6 became a clip per channel on both layers that feed another.
    let acts: Vec<(&str, bool)> = eq
        .plan()
        .steps
        .iter()
        .filter_map(|s| Some((s.name.as_str(), matches!(s.op.act()?, Act::ClipChannels { .. }))))
        .collect();
    assert_eq!(acts, [("expand", true), ("dw", true), ("project", false)]);
    let expanded = file
        .plan()
        .steps
        .iter()
        .find(|s| s.name == "expand")
        .unwrap()
        .output;
    let mut saturated = 0;
    for x in inputs() {
        let values = file.run_all(&x);
        // The expand layer's output reaches the bound: the clip matters.
        saturated += values[expanded].iter().filter(|&&v| v == 6.0).count();
        let (want, got) = (&values[file.plan().output], eq.run(&x));
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-6 * scale, "{g} vs {w}");
        }
    }
    assert!(saturated > 0, "no input reached the ReLU6 bound");
}

/// A classifier's head: 1x1 conv + ReLU6, global average pool, flatten,
/// fully connected. The pair is equalized through the pool and the reshape.
#[test]
fn pairs_reach_through_pools_and_reshapes() {
    let graph = serde_json::json!({
        "version": 1,
        "inputs": [{"name": "x", "shape": [1, 4, 3, 3]}],
        "outputs": ["y"],
        "nodes": [
            {"name": "head", "op": "Conv", "inputs": ["x"], "output": "h", "weight": "head.w", "bias": "head.b",
             "activation": "relu6"},
            {"name": "pool", "op": "GlobalAveragePool", "inputs": ["h"], "output": "p"},
            {"name": "flat", "op": "Flatten", "inputs": ["p"], "output": "f"},
            {"name": "fc", "op": "Dense", "inputs": ["f"], "output": "y", "weight": "fc.w", "bias": "fc.b"}
        ]
    });
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    let (head, fc) = (rng.rows(8, 4, &[0.01, 2.0, 0.3]), rng.rows(3, 8, &[1.0]));
    let (hb, fb) = (rng.rows(8, 1, &[0.5]), rng.rows(3, 1, &[0.5]));
    let (_dir, path) = support::model(
        graph,
        &[
            ("head.w", &[8, 4, 1, 1], head),
            ("head.b", &[8], hb),
            ("fc.w", &[3, 8], fc),
            ("fc.b", &[3], fb),
        ],
    );
    let (file, eq) = (
        Reference::load(&path).unwrap(),
        Reference::load_with(&path, &equalized()).unwrap(),
    );
    let head = eq.plan().steps.iter().find(|s| s.name == "head").unwrap();
    assert!(
        matches!(head.op.act(), Some(Act::ClipChannels { .. })),
        "{:?}",
        head.op
    );
    let (w, fc) = (weight(eq.plan(), "head"), eq.tensor("fc.w").unwrap());
    for c in 0..8 {
        let fc_col = max_abs(&(0..3).map(|o| fc[8 * o + c]).collect::<Vec<_>>());
        let head_row = max_abs(&w[4 * c..4 * c + 4]);
        assert!(
            (head_row / fc_col - 1.0).abs() < 1e-3,
            "channel {c}: {head_row} vs {fc_col}"
        );
    }
    for x in inputs() {
        let (want, got) = (file.run(&x[..36]), eq.run(&x[..36]));
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
        }
    }
}

#[test]
fn equalized_channels_have_the_same_range_in_both_layers() {
    let (_dir, path) = block();
    let eq = Reference::load_with(&path, &equalized()).unwrap();
    let (expand, dw, project) = (
        weight(eq.plan(), "expand"),
        weight(eq.plan(), "dw"),
        weight(eq.plan(), "project"),
    );
    for c in 0..8 {
        // expand's row c against dw's channel c; dw's channel c against project's column c.
        let expand_row = max_abs(&expand[4 * c..4 * c + 4]);
        let dw_row = max_abs(&dw[9 * c..9 * c + 9]);
        let project_col = max_abs(&(0..5).map(|o| project[8 * o + c]).collect::<Vec<_>>());
        for (a, b) in [(expand_row, dw_row), (dw_row, project_col)] {
            assert!((a / b - 1.0).abs() < 1e-3, "channel {c}: {a} vs {b}");
        }
    }
    // The file's ranges were far apart.
    let (_dir2, path) = block();
    let file = Reference::load(&path).unwrap();
    let ranges: Vec<f32> = (0..8)
        .map(|c| max_abs(&weight(file.plan(), "dw")[9 * c..9 * c + 9]))
        .collect();
    assert!(max_abs(&ranges) > 50.0 * ranges.iter().fold(f32::INFINITY, |m, &v| m.min(v)));
}

/// A dead channel (batch-norm folding left its weights ~1e-9 and its
/// output its bias) is left alone: dividing it by its tiny scale would
/// amplify a constant to the top of every activation row.
#[test]
fn dead_channels_are_not_equalized() {
    let scales = [0.02, 3.0, 0.4, 1e-9, 1.0, 2.0, 0.5, 0.3];
    let (_dir, path) = block_scaled(&scales);
    let (file, eq) = (
        Reference::load(&path).unwrap(),
        Reference::load_with(&path, &equalized()).unwrap(),
    );
    let (before, after) = (weight(file.plan(), "expand"), weight(eq.plan(), "expand"));
    assert_eq!(before[12..16], after[12..16], "the dead row moved");
    assert_eq!(
        file.tensor("expand.b").unwrap()[3],
        eq.tensor("expand.b").unwrap()[3]
    );
    let Some(Act::ClipChannels { max, .. }) = eq
        .plan()
        .steps
        .iter()
        .find(|s| s.name == "expand")
        .unwrap()
        .op
        .act()
    else {
        panic!("not equalized");
    };
    let bounds = eq.tensor(max).unwrap();
    assert_eq!(bounds[3], 6.0);
    // The live channels still were.
    assert!(bounds.iter().filter(|&&b| b != 6.0).count() >= 6, "{bounds:?}");
    for x in inputs() {
        let (want, got) = (file.run(&x), eq.run(&x));
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
        }
    }
}

/// Squared output error of the baked model (per-tensor u8) against the float one.
fn per_tensor_error(options: Options) -> f64 {
    let (_dir, path) = block();
    let float = Reference::load(&path).unwrap();
    let options = Options {
        per_channel: false,
        keep_float_below: 0,
        bias_correction: false,
        ..options
    };
    let mut baked = Reference::load_with(&path, &options).unwrap();
    let weights = quantize::bake(baked.plan(), &options).unwrap();
    baked.set_baked(&weights).unwrap();
    inputs()
        .iter()
        .map(|x| {
            let (want, got) = (float.run(x), baked.run(x));
            want.iter().zip(&got).map(|(w, g)| (w - g).powi(2)).sum::<f64>()
        })
        .sum()
}

#[test]
fn equalization_makes_per_tensor_weights_lose_less() {
    let plain = per_tensor_error(Options::default());
    let eq = per_tensor_error(equalized());
    assert!(eq * 10.0 < plain, "equalized {eq} vs plain {plain}");
}
