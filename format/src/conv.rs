//! The geometry of a convolution or pool: the planner computes it and the
//! generated code writes it as a literal; the kernels read it.

use std::ops::Range;

/// A 2-D convolution or pool over NHWC data (ONNX semantics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub batch: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub in_c: usize,
    pub out_c: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// `[top, left, bottom, right]`, ONNX's `[x1_begin, x2_begin, x1_end, x2_end]`.
    pub pads: [usize; 4],
    pub groups: usize,
}

/// `floor((input + pads - dilation (k - 1) - 1) / stride) + 1`, or `None`
/// when the window does not fit (or a size overflows).
fn out_dim(
    input: usize,
    pad0: usize,
    pad1: usize,
    k: usize,
    stride: usize,
    dilation: usize,
) -> Option<usize> {
    let span = dilation.checked_mul(k.checked_sub(1)?)?.checked_add(1)?;
    let padded = input.checked_add(pad0)?.checked_add(pad1)?;
    Some(padded.checked_sub(span)?.checked_div(stride)? + 1)
}

impl Conv2d {
    /// The output's height and width, or `None` when the window does not fit.
    pub fn out_dims(&self) -> Option<(usize, usize)> {
        let [t, l, b, r] = self.pads;
        Some((
            out_dim(self.in_h, t, b, self.kh, self.stride[0], self.dilation[0])?,
            out_dim(self.in_w, l, r, self.kw, self.stride[1], self.dilation[1])?,
        ))
    }

    pub fn out_h(&self) -> usize {
        self.out_dims().expect("a checked geometry").0
    }

    pub fn out_w(&self) -> usize {
        self.out_dims().expect("a checked geometry").1
    }

    /// Why this geometry is not a valid convolution, if it is not.
    pub fn check(&self) -> Result<(), String> {
        let sizes = [
            self.batch,
            self.in_h,
            self.in_w,
            self.in_c,
            self.out_c,
            self.kh,
            self.kw,
            self.groups,
        ];
        if sizes.contains(&0) || self.stride.contains(&0) || self.dilation.contains(&0) {
            return Err(format!("{self:?}: sizes, strides and dilations must be positive"));
        }
        if !self.in_c.is_multiple_of(self.groups) || !self.out_c.is_multiple_of(self.groups) {
            return Err(format!(
                "{} groups do not divide {} inputs and {} outputs",
                self.groups, self.in_c, self.out_c
            ));
        }
        if self.out_dims().is_none() {
            return Err(format!(
                "a {}x{} kernel does not fit a padded {}x{} input",
                self.kh, self.kw, self.in_h, self.in_w
            ));
        }
        Ok(())
    }

    /// Output pixels: rows of the GEMM.
    pub fn out_pixels(&self) -> usize {
        let (h, w) = self.out_dims().expect("a checked geometry");
        self.batch * h * w
    }

    /// Inputs per output of one group: `kh * kw * in_c / groups`.
    pub fn patch_len(&self) -> usize {
        self.kh * self.kw * self.in_c / self.groups
    }

    pub fn is_depthwise(&self) -> bool {
        self.groups == self.in_c && self.out_c == self.in_c
    }

    /// A 1x1, stride-1, unpadded convolution: the input already is the GEMM's matrix.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.pads == [0; 4] && self.groups == 1
    }

    /// The input pixel `(ih, iw)` that tap `(i, j)` of output `(oh, ow)` reads, if inside.
    #[inline]
    pub fn tap(&self, oh: usize, ow: usize, i: usize, j: usize) -> Option<(usize, usize)> {
        let ih = self.tap_row(oh, i)?;
        let iw = (ow * self.stride[1] + j * self.dilation[1]).checked_sub(self.pads[1])?;
        (iw < self.in_w).then_some((ih, iw))
    }

    /// The geometry of output rows `rows` of each image alone, and the
    /// input rows they read: the same outputs, from a slice of the input
    /// that holds only those rows (the padding above and below becomes the
    /// rows cut away, or stays padding). `None` when `rows` is empty or
    /// past the output, or when its windows fall wholly in the padding.
    pub fn band(&self, rows: Range<usize>) -> Option<(Conv2d, Range<usize>)> {
        if rows.is_empty() || rows.end > self.out_dims()?.0 {
            return None;
        }
        let (s, top) = (self.stride[0], self.pads[0]);
        let span = self.dilation[0] * (self.kh - 1) + 1;
        // The padded rows the band's windows cover, from `top` rows above
        // the input: `first..last`.
        let first = rows.start * s;
        let last = (rows.end - 1) * s + span;
        let inputs = first.saturating_sub(top).min(self.in_h)..last.saturating_sub(top).min(self.in_h);
        if inputs.is_empty() {
            return None;
        }
        let sub = Conv2d {
            in_h: inputs.len(),
            pads: [
                top + inputs.start - first,
                self.pads[1],
                last - top - inputs.end,
                self.pads[3],
            ],
            ..*self
        };
        debug_assert_eq!(sub.out_dims().map(|d| d.0), Some(rows.len()));
        Some((sub, inputs))
    }

    /// The input row that kernel row `i` of output row `oh` reads, if inside.
    #[inline]
    pub fn tap_row(&self, oh: usize, i: usize) -> Option<usize> {
        let ih = (oh * self.stride[0] + i * self.dilation[0]).checked_sub(self.pads[0])?;
        (ih < self.in_h).then_some(ih)
    }
}

#[cfg(test)]
mod tests {
    use super::Conv2d;

    /// Every band of every small geometry: as many output rows as asked,
    /// each kernel row reading the same input row (shifted to the band's
    /// first input row) or the padding, as in the whole geometry; `None`
    /// exactly when no window of the band reaches the input.
    #[test]
    fn band_reads_the_rows_the_whole_geometry_reads() {
        for in_h in 1..7 {
            for kh in 1..4 {
                for stride in 1..4 {
                    for dilation in 1..3 {
                        for pads in [
                            [0, 0, 0, 0],
                            [1, 0, 1, 0],
                            [2, 0, 0, 0],
                            [0, 0, 3, 0],
                            [5, 0, 1, 0],
                        ] {
                            let g = Conv2d {
                                batch: 1,
                                in_h,
                                in_w: 2,
                                in_c: 1,
                                out_c: 1,
                                kh,
                                kw: 1,
                                stride: [stride, 1],
                                dilation: [dilation, 1],
                                pads,
                                groups: 1,
                            };
                            if g.check().is_err() {
                                continue;
                            }
                            let oh_n = g.out_h();
                            assert!(g.band(0..0).is_none() && g.band(0..oh_n + 1).is_none());
                            for r0 in 0..oh_n {
                                for r1 in r0 + 1..=oh_n {
                                    let reads =
                                        (r0..r1).any(|oh| (0..kh).any(|i| g.tap_row(oh, i).is_some()));
                                    let Some((sub, inputs)) = g.band(r0..r1) else {
                                        assert!(!reads, "{g:?} {r0}..{r1}");
                                        continue;
                                    };
                                    assert!(sub.check().is_ok() && inputs.end <= in_h, "{g:?} {r0}..{r1}");
                                    assert_eq!(sub.out_h(), r1 - r0);
                                    for oh in r0..r1 {
                                        for i in 0..kh {
                                            let got = sub.tap_row(oh - r0, i).map(|ih| ih + inputs.start);
                                            assert_eq!(
                                                got,
                                                g.tap_row(oh, i),
                                                "{g:?} {r0}..{r1} row {oh} tap {i}"
                                            );
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
