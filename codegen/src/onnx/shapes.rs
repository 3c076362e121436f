//! Shape rules of the ONNX ops the importer maps, as pure functions: the
//! sliding window of Conv and the pools (with `auto_pad` resolved to explicit
//! pads), unidirectional broadcasting, Squeeze and Unsqueeze.
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

/// Whether a constant of shape `c` broadcasts onto `x` by ONNX's
/// unidirectional rules: aligned at the end, each of its dimensions 1 or
/// `x`'s, and no more of them than `x` has (so `x`'s shape is unchanged).
pub fn broadcasts_onto(c: &[usize], x: &[usize]) -> bool {
    c.len() <= x.len()
        && c.iter()
            .rev()
            .zip(x.iter().rev())
            .all(|(&d, &xd)| d == 1 || d == xd)
}

/// ONNX axes (negative ones count from the end of a shape of rank `rank`),
/// normalized and checked for range and repeats.
fn normalize_axes(axes: &[i64], rank: usize) -> Result<Vec<usize>, Error> {
    let r = rank as i64;
    let mut out = Vec::with_capacity(axes.len().min(rank));
    for &a in axes {
        let n = if a < 0 { a + r } else { a };
        if !(0..r).contains(&n) {
            bail!("axis {a} is out of range for rank {rank}");
        }
        let n = n as usize;
        if out.contains(&n) {
            bail!("axes {axes:?} name axis {n} twice");
        }
        out.push(n);
    }
    Ok(out)
}

/// Squeeze's output shape: `x` without the `axes` (each of size 1), or
/// without every dimension of size 1 when `axes` is `None`.
pub fn squeezed(x: &[usize], axes: Option<&[i64]>) -> Result<Vec<usize>, Error> {
    let Some(axes) = axes else {
        return Ok(x.iter().copied().filter(|&d| d != 1).collect());
    };
    let axes = normalize_axes(axes, x.len())?;
    if let Some(&a) = axes.iter().find(|&&a| x[a] != 1) {
        bail!(
            "it squeezes axis {a} of shape {x:?}, which has size {}, not 1",
            x[a]
        );
    }
    Ok(x.iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &d)| d)
        .collect())
}

/// Unsqueeze's output shape: `x` with dimensions of size 1 inserted at
/// `axes`, positions in the output.
pub fn unsqueezed(x: &[usize], axes: &[i64]) -> Result<Vec<usize>, Error> {
    let rank = x
        .len()
        .checked_add(axes.len())
        .filter(|&r| r <= x.len() + 64)
        .ok_or_else(|| Error::new(format!("axes {axes:?} are too many")))?;
    let axes = normalize_axes(axes, rank)?;
    let mut rest = x.iter();
    Ok((0..rank)
        .map(|i| {
            if axes.contains(&i) {
                1
            } else {
                *rest.next().expect("rank is x's plus the axes")
            }
        })
        .collect())
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

    #[test]
    fn broadcasting_and_squeezing() {
        assert!(broadcasts_onto(&[4, 1, 1], &[1, 4, 5, 5]));
        assert!(broadcasts_onto(&[1, 4, 1, 1], &[1, 4, 5, 5]));
        assert!(broadcasts_onto(&[], &[1, 4]));
        assert!(!broadcasts_onto(&[4], &[1, 4, 5, 5]));
        assert!(!broadcasts_onto(&[1, 1, 4, 5, 5], &[1, 4, 5, 5]));
        assert_eq!(squeezed(&[1, 8, 1, 1], Some(&[2, -1])).unwrap(), [1, 8]);
        assert_eq!(squeezed(&[1, 8, 1, 1], None).unwrap(), [8]);
        assert!(squeezed(&[1, 8], Some(&[1])).is_err());
        assert!(squeezed(&[1, 1], Some(&[0, -2])).is_err());
        assert_eq!(unsqueezed(&[8], &[0, -1]).unwrap(), [1, 8, 1]);
        assert_eq!(unsqueezed(&[2, 3], &[1]).unwrap(), [2, 1, 3]);
        assert!(unsqueezed(&[2], &[3]).is_err());
    }
}
