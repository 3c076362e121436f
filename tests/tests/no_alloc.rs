//! Once warm, a forward pass on one thread allocates nothing: activations
//! live in the model's per-thread scratch (sized at compile time) and the
//! ops reuse per-thread buffers for im2col rows and quantized activations.
//! Counted by a global allocator; this binary has this one test, so no other
//! thread allocates while it counts.

use qbake::Kernels;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

mod conv_ops {
    qbake::quantized_model!("../models/conv_ops.safetensors", keep_float_below = 0);
}
mod conv_ops_f32 {
    // Small weights kept f32: the float weight and depthwise paths.
    qbake::quantized_model!("../models/conv_ops.safetensors");
}
mod all_ops {
    qbake::quantized_model!("../models/all_ops.safetensors");
}

/// Allocations made by the third call of `forward` (the first two warm the
/// caches and buffers).
fn steady_state_allocations(mut forward: impl FnMut()) -> usize {
    forward();
    forward();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    forward();
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn a_warm_forward_pass_allocates_nothing() {
    for kernels in [Kernels::Dequant, Kernels::Hybrid] {
        let input = [[[[0.5f32; 10]; 11]; 3]; 1];
        let mut output = [[0.0f32; 10]; 1];
        let model = conv_ops::Model::new(kernels);
        let n = steady_state_allocations(|| model.forward_into(&input, &mut output));
        assert_eq!(n, 0, "conv_ops {kernels:?}");
        let model = conv_ops_f32::Model::new(kernels);
        let n = steady_state_allocations(|| model.forward_into(&input, &mut output));
        assert_eq!(n, 0, "conv_ops with f32 weights {kernels:?}");

        let input = [[0.25f32; 16]; 2];
        let mut output = [[0.0f32; 24]; 2];
        let model = all_ops::Model::new(kernels);
        let n = steady_state_allocations(|| model.forward_into(&input, &mut output));
        assert_eq!(n, 0, "all_ops {kernels:?}");
    }
    // The counter counts: a forward that returns a Box allocates it.
    let model = all_ops::Model::new(Kernels::Hybrid);
    assert!(steady_state_allocations(|| drop(model.forward(&[[0.25; 16]; 2]))) >= 1);
}
