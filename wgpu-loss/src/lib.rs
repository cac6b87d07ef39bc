//! WGSL compute kernels for softmax, log-sum-exp and the cross-entropy
//! family of losses, with their gradients, on any GPU that wgpu reaches,
//! checked against an f64 CPU reference.
//!
//! ```
//! # fn main() -> Result<(), wgpu_loss::Error> {
//! use wgpu_loss::{block_on, reference, CrossEntropyOptions, GpuContext, Reduction, Request};
//! let ctx = block_on(GpuContext::new())?;
//! let logits = [2.0f32, 0.5, -1.0, 0.0, 0.0, 3.0];
//! let options = CrossEntropyOptions { reduction: Reduction::Sum, ..Default::default() };
//! let out = block_on(ctx.cross_entropy(&logits, &[0i64, 2], 3, &options, Request::LossAndGrad))?;
//! let expected = reference::cross_entropy(&logits, &[0i64, 2], 3, &options)?;
//! assert!((f64::from(out.loss[0]) - expected.loss[0]).abs() < 1e-5);
//! # Ok(()) }
//! ```
//!
//! # Where things are
//!
//! - [`loss`]: every loss's options, validation and formulas, with no GPU
//!   code. The GPU ops and the f64 [`mod@reference`] both depend on it and on
//!   nothing of each other.
//! - [`GpuContext`]: getting a device ([`GpuContext::new`],
//!   [`GpuContext::from_device`]) and running on it: one `async fn` per op on
//!   host slices, and `encode_*` calls that record into the caller's
//!   `CommandEncoder` over [`GpuTensor`] views of the caller's buffers.
//! - [`tolerance`]: the one rule every comparison with the reference uses.
//! - [`tuning`]: how row kernels launch on this adapter.
//!
//! `ARCHITECTURE.md` in the repository maps each loss to its definition,
//! WGSL, host code, reference and tests.
//!
//! # Language-model heads
//!
//! [`GpuContext::linear_cross_entropy`] (and `encode_linear_cross_entropy`)
//! computes cross-entropy on `H·Wᵀ + b` from the hidden states and the
//! classifier without the `[N, V]` logits in memory, with `dH`, `dW` and
//! `db`; [`GpuContext::shard_records`], [`GpuContext::merge_records`] and
//! [`GpuContext::shard_backward`] split it by vocabulary across devices.
//! [`GpuContext::linear`] and `encode_matmul` expose the product itself. See
//! [`loss::linear_cross_entropy`].
//!
//! # Requests
//!
//! Every loss takes the same three requests ([`Request`]): the loss only,
//! the loss and the gradient, or the gradient written over the input. The
//! encode API says the same through its views' `grad` field.
//!
//! # Async, and the one blocking helper
//!
//! Host ops are `async fn`s that await the buffer mapping and never block
//! inside: on native a thread of the context's polls the device while a
//! mapping is pending; in the browser the event loop resolves it. Native
//! programs without an executor wrap a call in [`block_on`].
//!
//! # Errors
//!
//! Everything the host can check (shapes, dtypes, offsets, bounds, options,
//! the data of host slices) is checked before anything is recorded, and
//! comes back as [`Error`] naming the problem. `encode_*` calls never wait:
//! they record inside wgpu error scopes and poll each scope once. On native
//! backends wgpu knows a validation or out-of-memory error at once, so the
//! `encode_*` call itself returns it. Where a backend answers later (the
//! browser's WebGPU), the error is reported by the next awaited call on the
//! same context: any host op, or [`GpuContext::check_errors`].
#![deny(missing_docs)]

mod context;
mod error;
mod kernels;
pub mod loss;
mod ops;
mod plan;
mod pool;
mod prepared;
pub mod reference;
mod scope;
mod tensor;
pub mod tolerance;
pub mod tuning;

pub use context::{enumerate_adapters, ContextOptions, GpuContext};
pub use error::{Error, Result};
/// The `half` crate, whose `bf16` and `f16` the host API takes ([`HostFloat`]).
pub use half;
pub use loss::binary::{BinaryLossOptions, LossOutput, SigmoidFocalOptions};
pub use loss::cross_entropy::{CrossEntropyOptions, CrossEntropyOutput, FocalOptions};
pub use loss::linear_cross_entropy::{
    LinearCrossEntropyOptions, LinearCrossEntropyOutput, LinearGrads, LinearShape, Shard,
    ShardRecord,
};
pub use loss::softmax::SoftmaxOp;
pub use loss::{ClassIndex, Reduction, Request};
pub use ops::linear::{
    Accumulate, Layout, LinearCrossEntropyViews, LinearViews, MatmulOptions, MatmulViews,
    MergeViews, ScratchUse, ShardBackwardViews, ShardGradients, ShardRecordViews,
};
pub use plan::Dispatch;
pub use pool::{EncodeBuffers, PoolStats};
pub use prepared::Prepared;
pub use tensor::{
    BinaryViews, CrossEntropyViews, DType, FocalViews, GpuTensor, GradOutput, HostFloat,
    ProbTargetViews,
};
pub use tolerance::{Tolerance, BF16_TOLERANCE, F16_TOLERANCE, F32_TOLERANCE};
pub use tuning::RowTuning;

/// Runs a future to completion on the calling thread: the one blocking
/// convenience, for native programs without an async executor.
///
/// ```
/// # fn main() -> Result<(), wgpu_loss::Error> {
/// let ctx = wgpu_loss::block_on(wgpu_loss::GpuContext::new())?;
/// let y = wgpu_loss::block_on(ctx.softmax(&[1234.0, 0.0, 1.0, 1.0], 2, 2))?;
/// assert_eq!(y[0], 1.0);
/// assert!((y[2] - 0.5).abs() < 1e-6);
/// # Ok(()) }
/// ```
#[cfg(not(target_arch = "wasm32"))]
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    pollster::block_on(future)
}
