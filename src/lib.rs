//! WGSL compute kernels for softmax, log-sum-exp and cross-entropy losses,
//! with their gradients, on any GPU that wgpu reaches, checked against an f64
//! CPU reference.
//!
//! ```
//! # fn main() -> Result<(), wgpu_loss::Error> {
//! use wgpu_loss::{CrossEntropyOptions, GpuContext, Reduction};
//! let ctx = GpuContext::new_blocking()?;
//! let logits = [2.0f32, 0.5, -1.0, 0.0, 0.0, 3.0];
//! let out = ctx.cross_entropy_blocking(&logits, &[0i64, 2], 3, &CrossEntropyOptions {
//!     reduction: Reduction::Sum,
//!     ..Default::default()
//! })?;
//! let reference = wgpu_loss::cpu::reference::cross_entropy(&logits, &[0i64, 2], 3, &CrossEntropyOptions {
//!     reduction: Reduction::Sum,
//!     ..Default::default()
//! })?;
//! assert!((f64::from(out.loss[0]) - reference.loss[0]).abs() < 1e-5);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod bench;
pub mod context;
pub mod cpu;
pub mod error;
pub mod io;
pub mod kernels;
pub mod ops;
pub mod pool;
pub mod problem;
pub mod tensor;
pub mod tolerance;
pub mod tuning;

pub use context::{enumerate_adapters, ContextOptions, GpuContext};
pub use error::{Error, Result};
pub use kernels::Kernel;
pub use ops::binary::{BinaryLossOptions, LossOutput, SigmoidFocalOptions};
pub use ops::cross_entropy::{ClassIndex, CrossEntropyOptions, CrossEntropyOutput, FocalOptions};
pub use ops::softmax::SoftmaxOp;
pub use ops::Reduction;
pub use pool::PoolStats;
pub use tensor::{DType, GpuTensor, LossViews};
pub use tolerance::{Tolerance, F16_TOLERANCE, F32_TOLERANCE};
pub use tuning::RowTuning;
