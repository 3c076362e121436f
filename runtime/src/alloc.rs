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

/// Zeroed f32s whose first value is 64-byte aligned, so that no 32-byte
/// vector load or store at a multiple of 8 values crosses a cache line.
/// The allocator aligns a `Vec<f32>` to 16 bytes only: half of such
/// accesses would split. This is the buffer a baked model computes in.
#[derive(Debug, Default)]
pub struct AlignedVec {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

/// The alignment of [`AlignedVec`], in bytes.
pub const ALIGN: usize = 64;

impl AlignedVec {
    /// No values, no allocation.
    pub const fn new() -> Self {
        AlignedVec {
            buf: Vec::new(),
            start: 0,
            len: 0,
        }
    }

    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let mut v = AlignedVec::new();
        v.resize(len);
        v
    }

    /// Makes the length `len`. Past the capacity it reallocates, and then
    /// every value is zero; otherwise the values keep their contents.
    pub fn resize(&mut self, len: usize) {
        let slack = ALIGN / 4 - 1;
        if self.buf.len() < len + slack {
            self.buf = vec![0.0; len + slack];
            // align_offset can only fail for a zero-sized type or a foreign
            // address space; for f32 heap memory it is at most 15.
            self.start = self.buf.as_ptr().align_offset(ALIGN).min(slack);
        }
        self.len = len;
    }
}

impl std::ops::Deref for AlignedVec {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
}

/// A copy of the values in a buffer aligned in its turn (a derived clone
/// would copy the offset, which the new allocation need not share).
impl Clone for AlignedVec {
    fn clone(&self) -> Self {
        let mut v = AlignedVec::zeroed(self.len);
        v.copy_from_slice(self);
        v
    }
}

/// Equal when the values are (wherever each buffer's alignment put them).
impl PartialEq for AlignedVec {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl std::ops::DerefMut for AlignedVec {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_vec_is_aligned_zeroed_and_sized() {
        for len in [0, 1, 15, 16, 1000, 1 << 20] {
            let mut v = AlignedVec::zeroed(len);
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.0));
            if len > 0 {
                assert_eq!(v.as_ptr() as usize % ALIGN, 0, "{len}");
            }
            v.iter_mut().for_each(|x| *x = 1.0);
            v.resize(len / 2);
            assert_eq!(v.len(), len / 2);
            assert_eq!(v.as_ptr() as usize % ALIGN, 0);
            v.resize(len + 100);
            assert_eq!(v.len(), len + 100);
            assert_eq!(v.as_ptr() as usize % ALIGN, 0);
            v.iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
            let copy = v.clone();
            assert_eq!(copy, v);
            assert_eq!(copy.as_ptr() as usize % ALIGN, 0);
        }
    }

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
