//! The sliding window of the ONNX Conv and pools, as a pure function, with
//! `auto_pad` resolved to explicit pads. (Broadcasting, Squeeze and
//! Unsqueeze are the planner's rules too: `crate::graph`.)
//!
//! Sizes come from the file: every sum and product is checked.

use crate::error::{Error, bail};

/// ONNX's `auto_pad` attribute of Conv and the pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoPad {
    /// Explicit `pads` (default zeros).
    NotSet,
    /// No padding.
    Valid,
    /// Output size `ceil(input / stride)`; an odd total pad puts the extra one at the end.
    SameUpper,
    /// As `SameUpper`, the extra pad at the beginning.
    SameLower,
}

impl AutoPad {
    pub fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "NOTSET" => AutoPad::NotSet,
            "VALID" => AutoPad::Valid,
            "SAME_UPPER" => AutoPad::SameUpper,
            "SAME_LOWER" => AutoPad::SameLower,
            other => bail!("auto_pad `{other}` is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER"),
        })
    }
}

/// A 2-D sliding window, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    /// `[top, left, bottom, right]`, ONNX's `[x1_begin, x2_begin, x1_end, x2_end]`.
    pub pads: [usize; 4],
    /// The output's `[height, width]`.
    pub out: [usize; 2],
}

impl Window {
    /// The span of the dilated kernel along spatial axis `i`: `d (k - 1) + 1`.
    pub fn extent(&self, kernel: [usize; 2], i: usize) -> usize {
        self.dilations[i] * (kernel[i] - 1) + 1
    }
}

/// The window of a kernel `kernel` sliding over `input` (`[height, width]`).
/// `strides`, `dilations` and `kernel` are positive (the caller checks);
/// `pads` are used only when `auto_pad` is `NotSet`. The output size is ONNX's
/// `floor((in + begin + end - extent) / stride) + 1`.
pub fn window(
    input: [usize; 2],
    kernel: [usize; 2],
    strides: [usize; 2],
    dilations: [usize; 2],
    pads: [usize; 4],
    auto_pad: AutoPad,
) -> Result<Window, Error> {
    let overflow = || {
        Error::new(format!(
            "the window of kernel {kernel:?} (dilations {dilations:?}) overflows"
        ))
    };
    let mut resolved = pads;
    let mut out = [0; 2];
    for i in 0..2 {
        let extent = kernel[i]
            .checked_sub(1)
            .and_then(|k| k.checked_mul(dilations[i]))
            .and_then(|e| e.checked_add(1))
            .ok_or_else(overflow)?;
        match auto_pad {
            AutoPad::NotSet => {}
            AutoPad::Valid => (resolved[i], resolved[i + 2]) = (0, 0),
            AutoPad::SameUpper | AutoPad::SameLower => {
                let o = input[i].div_ceil(strides[i]);
                let need = (o - 1)
                    .checked_mul(strides[i])
                    .and_then(|v| v.checked_add(extent))
                    .ok_or_else(overflow)?;
                let total = need.saturating_sub(input[i]);
                let (small, large) = (total / 2, total - total / 2);
                (resolved[i], resolved[i + 2]) = if auto_pad == AutoPad::SameUpper {
                    (small, large)
                } else {
                    (large, small)
                };
            }
        }
        let padded = input[i]
            .checked_add(resolved[i])
            .and_then(|v| v.checked_add(resolved[i + 2]))
            .ok_or_else(overflow)?;
        if padded < extent {
            bail!(
                "the input is {input:?} with pads {resolved:?}: smaller than the kernel's extent {extent} along axis {}",
                i + 2
            );
        }
        out[i] = (padded - extent) / strides[i] + 1;
    }
    Ok(Window {
        strides,
        dilations,
        pads: resolved,
        out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(input: [usize; 2], kernel: [usize; 2], auto_pad: AutoPad) -> Window {
        window(input, kernel, [2, 2], [1, 1], [0; 4], auto_pad).unwrap()
    }

    #[test]
    fn same_padding_puts_the_odd_pad_at_the_end_for_upper_and_the_beginning_for_lower() {
        // 8 (even), kernel 3, stride 2: output 4, total pad 1.
        // 7 (odd), kernel 4, stride 2: output 4, total pad 3.
        let up = same([8, 7], [3, 4], AutoPad::SameUpper);
        assert_eq!(up.pads, [0, 1, 1, 2]);
        assert_eq!(up.out, [4, 4]);
        let low = same([8, 7], [3, 4], AutoPad::SameLower);
        assert_eq!(low.pads, [1, 2, 0, 1]);
        assert_eq!(low.out, [4, 4]);
        // 7 (odd), kernel 3: total pad 2, symmetric.
        assert_eq!(same([7, 7], [3, 3], AutoPad::SameUpper).pads, [1, 1, 1, 1]);
        // A kernel smaller than the stride may need no pad at all.
        assert_eq!(same([8, 8], [1, 1], AutoPad::SameLower).pads, [0; 4]);
    }

    #[test]
    fn explicit_and_valid_windows() {
        let w = window([5, 6], [3, 3], [1, 2], [2, 1], [1, 0, 1, 1], AutoPad::NotSet).unwrap();
        // Height: 5 + 2 - 5 + 1 = 3; width: (6 + 1 - 3) / 2 + 1 = 3.
        assert_eq!(w.out, [3, 3]);
        let v = window([5, 6], [3, 3], [1, 1], [1, 1], [9; 4], AutoPad::Valid).unwrap();
        assert_eq!((v.pads, v.out), ([0; 4], [3, 4]));
        assert!(window([2, 2], [3, 3], [1, 1], [1, 1], [0; 4], AutoPad::NotSet).is_err());
        assert!(window([2, 2], [usize::MAX, 3], [1, 1], [2, 1], [0; 4], AutoPad::NotSet).is_err());
    }
}
