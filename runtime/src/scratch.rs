//! Per-thread buffers the ops reuse from call to call (im2col rows,
//! quantized activations), so that once each has grown to the largest size
//! a model needs, a forward pass on one thread allocates nothing.

use crate::alloc::AlignedVec;
use crate::hybrid::{PanelParams, QuantizedRows};
use std::cell::RefCell;
use std::thread::LocalKey;

thread_local! {
    /// im2col rows of a convolution.
    pub(crate) static COLS: RefCell<AlignedVec> = const { RefCell::new(AlignedVec::new()) };
    /// A band's pointwise outputs in `ops::pointwise_depthwise`.
    pub(crate) static BAND: RefCell<AlignedVec> = const { RefCell::new(AlignedVec::new()) };
    /// One channel part's taps and outputs in `ops::pointwise_depthwise`.
    pub(crate) static CHANNEL_PART: RefCell<AlignedVec> = const { RefCell::new(AlignedVec::new()) };
    /// One group's outputs of a grouped convolution.
    pub(crate) static GROUP_OUT: RefCell<AlignedVec> = const { RefCell::new(AlignedVec::new()) };
    /// The parts of a GEMM split by panels of output channels.
    pub(crate) static PANEL_PARTS: RefCell<AlignedVec> = const { RefCell::new(AlignedVec::new()) };
    /// Zeros, for a missing bias.
    pub(crate) static ZEROS: RefCell<AlignedVec> = const { RefCell::new(AlignedVec::new()) };
    /// A block of quantized activation rows as u8 `q + 128` (the VNNI kernel's operand).
    pub(crate) static OFFSET_ROWS: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The per-channel constants of a hybrid GEMM's panels.
    pub(crate) static PANEL_PARAMS: RefCell<Vec<PanelParams>> = const { RefCell::new(Vec::new()) };
    /// The activations of a hybrid GEMM, quantized.
    pub(crate) static ROWS: RefCell<QuantizedRows> = RefCell::new(QuantizedRows::default());
}

/// Runs `f` on the thread's buffer `key`. A buffer already in use on this
/// thread gives a fresh one: no op nests itself, but on rayon's pool a
/// thread waiting inside an op's join may run another forward's op
/// meanwhile.
fn with_buffer<B: Default, R>(key: &'static LocalKey<RefCell<B>>, f: impl FnOnce(&mut B) -> R) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut B::default()),
    })
}

/// Runs `f` on `len` values of the thread's buffer `key` ([`with_buffer`]),
/// grown as needed; their contents are whatever was left there.
pub(crate) fn with_f32<R>(
    key: &'static LocalKey<RefCell<AlignedVec>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    with_buffer(key, |buf| {
        if buf.len() < len {
            buf.resize(len);
        }
        f(&mut buf[..len])
    })
}

/// `len` zeros.
pub(crate) fn with_zeros<R>(len: usize, f: impl FnOnce(&[f32]) -> R) -> R {
    with_f32(&ZEROS, len, |z| {
        z.fill(0.0);
        f(z)
    })
}

/// [`with_f32`] for a buffer of any `T`.
pub(crate) fn with_vec<T: Clone + Default, R>(
    key: &'static LocalKey<RefCell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> R,
) -> R {
    with_buffer(key, |buf| {
        if buf.len() < len {
            buf.resize(len, T::default());
        }
        f(&mut buf[..len])
    })
}

/// Runs `f` on the thread's quantized-rows buffer ([`with_buffer`]).
pub(crate) fn with_rows<R>(f: impl FnOnce(&mut QuantizedRows) -> R) -> R {
    with_buffer(&ROWS, f)
}

/// Runs `f` on a baked model's per-thread scratch `key`: one buffer per
/// length in `slots`, allocated on the thread's first call. The generated
/// `forward` calls this.
///
/// If this thread is already inside a forward of the same model, the call
/// gets fresh buffers of its own (allocated for it): that happens when the
/// model runs on rayon's pool with threads, because a thread waiting for
/// an op's parts may run another call's forward meanwhile.
pub fn with_scratch<R>(
    key: &'static LocalKey<RefCell<Vec<AlignedVec>>>,
    slots: &[usize],
    f: impl FnOnce(&mut [AlignedVec]) -> R,
) -> R {
    let fill = || {
        slots
            .iter()
            .map(|&len| AlignedVec::zeroed(len))
            .collect::<Vec<_>>()
    };
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            if scratch.is_empty() {
                *scratch = fill();
            }
            f(&mut scratch)
        }
        Err(_) => f(&mut fill()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static MODEL: RefCell<Vec<AlignedVec>> = const { RefCell::new(Vec::new()) };
    }

    /// A forward inside a forward of the same model (rayon ran another
    /// call's job on this thread) gets buffers of its own; the outer one's
    /// are untouched, and kept for the thread's next call.
    #[test]
    fn a_nested_call_gets_fresh_buffers() {
        let outer = with_scratch(&MODEL, &[3, 5], |outer| {
            outer[0].fill(1.0);
            let inner = with_scratch(&MODEL, &[3, 5], |inner| {
                assert_eq!(inner.len(), 2);
                assert!(inner[0].iter().all(|&v| v == 0.0));
                inner[0].fill(2.0);
                inner[0].as_ptr()
            });
            assert_ne!(inner, outer[0].as_ptr());
            assert!(outer[0].iter().all(|&v| v == 1.0));
            outer[0].as_ptr()
        });
        let again = with_scratch(&MODEL, &[3, 5], |s| {
            assert!(s[0].iter().all(|&v| v == 1.0));
            s[0].as_ptr()
        });
        assert_eq!(again, outer);
    }
}
