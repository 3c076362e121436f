//! The portable depthwise kernel.

use super::Conv2d;
use crate::ops::Activation;
use std::ops::Range;

/// Output rows `rows` (of `batch * out_h`) into `y`.
pub fn depthwise(
    x: &[f32],
    g: &Conv2d,
    taps: &[f32],
    bias: &[f32],
    act: Activation,
    rows: Range<usize>,
    y: &mut [f32],
) {
    let c = g.in_c;
    let (oh_n, ow_n) = (g.out_h(), g.out_w());
    let mut outs = y.chunks_exact_mut(c);
    for row in rows {
        let (b, oh) = (row / oh_n, row % oh_n);
        let image = &x[b * g.in_h * g.in_w * c..(b + 1) * g.in_h * g.in_w * c];
        {
            for ow in 0..ow_n {
                let out = outs.next().expect("sized by the caller");
                out.copy_from_slice(bias);
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let Some((ih, iw)) = g.tap(oh, ow, i, j) else {
                            continue;
                        };
                        let pixel = &image[(ih * g.in_w + iw) * c..][..c];
                        let w = &taps[(i * g.kw + j) * c..][..c];
                        for ((o, &v), &w) in out.iter_mut().zip(pixel).zip(w) {
                            *o += v * w;
                        }
                    }
                }
                for o in out.iter_mut() {
                    *o = act.apply(*o);
                }
            }
        }
    }
}
