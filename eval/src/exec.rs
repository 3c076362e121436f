//! A planned model run step by step through the runtime's ops, from weights
//! baked in memory: what the generated `forward` computes, with every
//! intermediate value kept.

use qbake::{
    Activation, DepthwiseWeight, DequantCache, Exec, FloatWeight, Kernels, QuantParams, QuantWeight,
    TapsCache, Weight, ops,
};
use qbake_codegen::graph::{Act, Op, Plan, PoolKind, Step};
use qbake_codegen::quantize::{Baked, Storage};
use std::collections::HashMap;
use std::time::Instant;

/// A model ready to run: its plan and its baked tensors as runtime statics.
///
/// The runtime's weights borrow `'static` data (baked models hold
/// constants); here they are leaked, once per model loaded, which suits a
/// measuring tool that loads a model and exits.
pub struct Executor {
    plan: Plan,
    weights: HashMap<String, &'static Weight>,
    depthwise: HashMap<String, &'static DepthwiseWeight>,
    floats: HashMap<String, &'static [f32]>,
}

fn leak<T: ?Sized>(b: Box<T>) -> &'static T {
    Box::leak(b)
}

fn weight(w: &qbake_codegen::quantize::BakedWeight) -> Weight {
    let name: &'static str = leak(w.name.clone().into_boxed_str());
    match &w.storage {
        Storage::U8 { data, params } => {
            let field = |f: fn(&qbake_codegen::quantize::QParams) -> f32| -> &'static [f32] {
                leak(params.iter().map(f).collect::<Vec<_>>().into_boxed_slice())
            };
            Weight::U8(QuantWeight {
                name,
                rows: w.rows,
                cols: w.cols,
                packed: leak(qbake::format::pack_b_s8(data, w.rows, w.cols).into_boxed_slice()),
                s8_sums: leak(qbake::format::s8_row_sums(data, w.rows, w.cols).into_boxed_slice()),
                s8_negative_sums: leak(
                    qbake::format::s8_negative_sums(data, w.rows, w.cols).into_boxed_slice(),
                ),
                params: QuantParams {
                    min: field(|p| p.min),
                    max: field(|p| p.max),
                    scale: field(|p| p.scale),
                    zero_point: leak(
                        params
                            .iter()
                            .map(|p| p.zero_point)
                            .collect::<Vec<_>>()
                            .into_boxed_slice(),
                    ),
                },
                cache: DequantCache::new(),
            })
        }
        Storage::F32(values) => Weight::F32(FloatWeight::from_values(name, w.rows, w.cols, values)),
    }
}

impl Executor {
    pub fn new(plan: Plan, baked: &Baked) -> Self {
        let depthwise_names = plan.depthwise_weights();
        let (mut weights, mut depthwise) = (HashMap::new(), HashMap::new());
        for w in &baked.weights {
            if depthwise_names.contains(w.name.as_str()) {
                let dw = DepthwiseWeight {
                    weight: weight(w),
                    taps: TapsCache::new(),
                };
                depthwise.insert(w.name.clone(), leak(Box::new(dw)));
            } else {
                weights.insert(w.name.clone(), leak(Box::new(weight(w))));
            }
        }
        let floats = baked
            .floats
            .iter()
            .map(|f| (f.name.clone(), leak(f.values.clone().into_boxed_slice())))
            .collect();
        Executor {
            plan,
            weights,
            depthwise,
            floats,
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    fn act(&self, a: &Act) -> Activation {
        match *a {
            Act::None => Activation::None,
            Act::Relu => Activation::Relu,
            Act::Clip { min, max } => Activation::Clip { min, max },
            Act::ClipChannels { min, ref max } => Activation::ClipChannels {
                min,
                max: self.floats[max],
            },
        }
    }

    /// Every value for `input`, indexed like `plan().values`, in its storage
    /// layout (empty for values no step computes), as `kernels` computes them.
    pub fn run_all(&self, kernels: Kernels, input: &[f32]) -> Vec<Vec<f32>> {
        let plan = &self.plan;
        assert_eq!(input.len(), plan.input().len, "input has the wrong size");
        let exec = Exec::new(kernels);
        let mut values: Vec<Vec<f32>> = vec![Vec::new(); plan.values.len()];
        values[0] = input.to_vec();
        for step in &plan.steps {
            let mut y = vec![0.0f32; plan.values[step.output].len];
            self.step(&exec, step, &values, &mut y);
            values[step.output] = y;
        }
        values
    }

    /// The seconds each step takes, in plan order: the fastest of `rounds`
    /// passes over the whole model, step after step as the generated
    /// `forward` runs them (so each finds the caches as the steps before
    /// left them), after one pass that fills the weight caches.
    ///
    /// With `fused`, a 1x1 convolution that the generated `forward` runs
    /// inside the depthwise one after it ([`Plan::fused_into_next`]) is
    /// timed as it runs there: the pair's time is the depthwise step's, and
    /// the 1x1 step's is 0. Without, each step runs on its own.
    ///
    /// With threads, the passes run as a forward does (`Exec::run`: on the
    /// pool, so each op splits from inside it).
    pub fn time_steps(
        &self,
        kernels: Kernels,
        threads: usize,
        input: &[f32],
        rounds: usize,
        fused: bool,
    ) -> Vec<f64> {
        let mut values = self.run_all(kernels, input);
        let exec = Exec { kernels, threads };
        let steps = &self.plan.steps;
        let into_next = self.plan.fused_into_next();
        let mut best = vec![f64::INFINITY; steps.len()];
        exec.run(|| {
            for _ in 0..rounds {
                for (i, step) in steps.iter().enumerate() {
                    let mut y = std::mem::take(&mut values[step.output]);
                    let start = Instant::now();
                    match i.checked_sub(1) {
                        _ if fused && into_next[i] => {}
                        Some(p) if fused && into_next[p] => {
                            self.pointwise_depthwise(&exec, &steps[p], step, &values, &mut y)
                        }
                        _ => self.step(&exec, step, &values, &mut y),
                    }
                    best[i] = best[i].min(start.elapsed().as_secs_f64());
                    values[step.output] = y;
                }
            }
        });
        for (i, best) in best.iter_mut().enumerate() {
            if fused && into_next[i] {
                *best = 0.0;
            }
        }
        best
    }

    /// A 1x1 convolution and the depthwise one after it, as one op.
    fn pointwise_depthwise(
        &self,
        exec: &Exec,
        pointwise: &Step,
        depthwise: &Step,
        values: &[Vec<f32>],
        y: &mut [f32],
    ) {
        let float = |name: &Option<String>| name.as_ref().map(|b| self.floats[b]);
        let (
            Op::Conv {
                weight: pw,
                bias: pb,
                act: pa,
                ..
            },
            Op::Depthwise {
                geom: g,
                weight,
                bias,
                act: a,
            },
        ) = (&pointwise.op, &depthwise.op)
        else {
            unreachable!("`fused_into_next` pairs a 1x1 convolution with a depthwise one")
        };
        let x = &values[pointwise.inputs[0]];
        let (pw, pa) = (self.weights[pw], self.act(pa));
        ops::pointwise_depthwise(
            exec,
            x,
            pw,
            float(pb),
            pa,
            g,
            self.depthwise[weight],
            float(bias),
            self.act(a),
            y,
        )
    }

    /// One step's op, from `values` into `y`.
    fn step(&self, exec: &Exec, step: &Step, values: &[Vec<f32>], y: &mut [f32]) {
        let x = &values[step.inputs[0]];
        let float = |name: &Option<String>| name.as_ref().map(|b| self.floats[b]);
        match &step.op {
            Op::Dense { weight, bias, act: a } => {
                ops::dense(exec, x, self.weights[weight], float(bias), self.act(a), y)
            }
            Op::Conv {
                geom: g,
                weight,
                bias,
                act: a,
            } => ops::conv2d(exec, x, g, self.weights[weight], float(bias), self.act(a), y),
            Op::GroupedConv {
                geom: g,
                weights,
                bias,
                act: a,
            } => {
                let ws: Vec<&Weight> = weights.iter().map(|w| self.weights[w]).collect();
                ops::grouped_conv2d(exec, x, g, &ws, float(bias), self.act(a), y)
            }
            Op::Depthwise {
                geom: g,
                weight,
                bias,
                act: a,
            } => ops::depthwise_conv2d(exec, x, g, self.depthwise[weight], float(bias), self.act(a), y),
            Op::Pool { geom: g, kind } => match kind {
                PoolKind::Max => ops::max_pool(x, g, y),
                PoolKind::Average { count_include_pad } => ops::average_pool(x, g, *count_include_pad, y),
            },
            Op::GlobalAveragePool {
                batch,
                pixels,
                channels,
            } => ops::global_average_pool(x, *batch, *pixels, *channels, y),
            Op::Pad {
                batch,
                h,
                w,
                c,
                pads,
                value,
            } => ops::pad_nhwc(x, *batch, *h, *w, *c, *pads, *value, y),
            Op::Add { act: a } => ops::add(exec, x, &values[step.inputs[1]], self.act(a), y),
            Op::AddConstant { constant, act: a } => {
                ops::add_constant(x, self.floats[constant], self.act(a), y)
            }
            Op::MulConstant { constant, act: a } => {
                ops::mul_constant(x, self.floats[constant], self.act(a), y)
            }
            Op::Activation(a) => ops::activate(x, self.act(a), y),
            Op::Softmax { outer, len, inner } => ops::softmax(x, *outer, *len, *inner, y),
            Op::Alias => y.copy_from_slice(x),
            Op::ToNhwc {
                batch,
                channels,
                pixels,
            } => ops::nchw_to_nhwc(x, *batch, *channels, *pixels, y),
            Op::ToNchw {
                batch,
                pixels,
                channels,
            } => ops::nhwc_to_nchw(x, *batch, *pixels, *channels, y),
        }
    }
}
