/// The kernel family a model runs with. Both read the same baked bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernels {
    /// Weights dequantized to f32 once, on first use, then float kernels.
    Dequant,
    /// Activations quantized to 8 bits per call; i32 products with the 8-bit weights.
    Hybrid,
}

/// How a model's ops run: the kernel family and the intra-op thread budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exec {
    pub kernels: Kernels,
    /// Threads a GEMM (fully connected layer, convolution) may use; see
    /// [`crate::parallel`]. Other ops run on the calling thread.
    pub threads: usize,
}

impl Exec {
    pub const fn new(kernels: Kernels) -> Self {
        Exec { kernels, threads: 1 }
    }

    /// Runs one forward pass, `f`. With threads, on one of qbake's pool
    /// threads ([`crate::parallel::run`]): each op then splits from
    /// inside the pool, where a join hands one part to another pool thread
    /// and runs the other in place, rather than each op waking the pool
    /// from outside and sleeping until it is done. Called from inside the
    /// pool, it runs in place.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if self.threads > 1 {
            crate::parallel::run(self.threads, f)
        } else {
            f()
        }
    }
}
