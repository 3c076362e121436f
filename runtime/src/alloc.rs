use std::alloc::{Layout, alloc_zeroed, handle_alloc_error};

/// Types for which all-zero bytes are a valid value.
///
/// # Safety
/// Implement only for types whose every bit pattern of zeros is a valid value.
pub unsafe trait Zeroable: Sized {}

// SAFETY: 0x00000000 is +0.0.
unsafe impl Zeroable for f32 {}
// SAFETY: an array of zeroable elements is zeroable.
unsafe impl<T: Zeroable, const N: usize> Zeroable for [T; N] {}

/// A zeroed `Box<T>` built on the heap directly, so that large nested arrays
/// (a 224x224 image is 600 kB) never pass through the stack.
pub fn boxed_zeroed<T: Zeroable>() -> Box<T> {
    let layout = Layout::new::<T>();
    if layout.size() == 0 {
        // SAFETY: T is zeroable, and a zero-sized value needs no memory.
        return Box::new(unsafe { std::mem::zeroed() });
    }
    // SAFETY: the layout has a non-zero size; the memory is zeroed, which is a
    // valid T (Zeroable), and was allocated with T's layout, as Box expects.
    unsafe {
        let ptr = alloc_zeroed(layout);
        if ptr.is_null() {
            handle_alloc_error(layout);
        }
        Box::from_raw(ptr.cast::<T>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_arrays_are_zero_and_writable() {
        let mut b = boxed_zeroed::<[[[f32; 7]; 5]; 3]>();
        assert!(b.as_flattened().as_flattened().iter().all(|&v| v == 0.0));
        b[2][4][6] = 1.5;
        assert_eq!(b.as_flattened().as_flattened()[3 * 5 * 7 - 1], 1.5);
        let empty = boxed_zeroed::<[f32; 0]>();
        assert!(empty.is_empty());
    }
}
