//! wgpu-loss inside burn: this crate's losses on burn's wgpu-backend
//! tensors, reading and writing burn's own buffers, with gradients through
//! burn's autodiff.
//!
//! ```
//! # fn main() -> Result<(), wgpu_loss_burn::Error> {
//! use burn::tensor::{Distribution, Int, Tensor};
//! use wgpu_loss_burn::{cross_entropy, CrossEntropyOptions, SharedDevice};
//!
//! // burn's wgpu device, shared with this crate's kernels.
//! let shared = SharedDevice::from_burn()?;
//! let device = shared.device().clone().autodiff();
//! let logits = Tensor::<2>::random([4, 10], Distribution::Default, &device).require_grad();
//! let targets = Tensor::<1, Int>::from_ints([1, 0, 9, 3], &device);
//! let options = CrossEntropyOptions { label_smoothing: 0.1, ..Default::default() };
//! let loss = cross_entropy(logits.clone(), targets, &options)?;
//! let grads = loss.backward();
//! let dlogits = logits.grad(&grads).expect("logits are tracked");
//! assert_eq!(dlogits.dims(), [4, 10]);
//! # Ok(()) }
//! ```
//!
//! # burn 0.22's tensors
//!
//! burn 0.22 chooses the backend at run time: a `Tensor<D>` belongs to a
//! [`burn::tensor::Device`], and autodiff is a property of the device
//! (`device.autodiff()`), not a backend type parameter. The functions here
//! take those tensors. They need tensors of burn's wgpu backend (fusion on
//! or off) on a device made through [`SharedDevice`]; anything else is an
//! [`Error`], never a wrong result.
//!
//! # No copies, and the order of work
//!
//! Each call resolves its inputs below burn's fusion layer (which runs the
//! fused graph that produces them), takes their wgpu buffers from CubeCL,
//! submits burn's queued work, then records this crate's kernels into one
//! encoder and submits it on the same queue. The outputs are allocated in
//! burn's memory pool and handed back to burn as ordinary tensors; burn's
//! later work is submitted after ours, so it sees the results. Nothing goes
//! through the host.
//!
//! Copies happen in two cases only, once, on the device:
//! - a tensor that is not contiguous (a transposed or strided view) is made
//!   contiguous by burn's own kernel;
//! - a tensor whose storage offset is not aligned for a binding is copied
//!   to a fresh allocation (through a small buffer of this crate's: a
//!   buffer copy cannot stay inside one of CubeCL's pages). burn's own
//!   tensors never need this: CubeCL binds its offsets too, so it keeps them
//!   aligned, and a slice comes back from fusion as a fresh allocation. An
//!   offset that is not even a multiple of 4 bytes is refused
//!   ([`Error::Unsupported`]).
//!
//! Tensors of a dtype burn's device cannot store are refused ([`Error::DType`]):
//! burn hands out a bf16 tensor where CubeCL compiles WGSL, which has no
//! bf16, but the kernel that should fill it never runs. f16 works where burn
//! can hold an f16 tensor (CubeCL asks for `shader-f16`); this crate's
//! kernels read and write f16 as packed words and need no feature.
//!
//! Class-index targets of any int dtype are read as i32; other int dtypes
//! are cast once.
//!
//! # Gradients
//!
//! On an autodiff device the loss is tracked. A tracked call asks the
//! kernel for the loss and the gradients in the same pass (one read of the
//! logits, one write of the gradient, as Liger-Kernel does), and the
//! backward step scales them by the upstream gradient:
//! - a reduced loss: the upstream gradient (one number) is read, which waits
//!   for the forward work; when it is 1, as `loss.backward()` gives, the
//!   saved gradient is used as it is, otherwise it is scaled on the device;
//! - `Reduction::None`: each row's gradient is multiplied by its upstream
//!   gradient on the device.
//!
//! The gradient is held from the forward pass to the backward step: the
//! memory of one more `[N, C]` tensor, the same as burn's own composition.
//! Targets, class weights and `pos_weight` are constants: they get no
//! gradient.
#![deny(missing_docs)]

mod autodiff;
mod bridge;
mod device;
mod losses;

pub use device::SharedDevice;
pub use losses::{
    binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, cross_entropy_probs,
    focal_loss, linear_cross_entropy, sigmoid_focal_loss,
};
/// The option structs, with their meaning in `wgpu_loss`; weights are
/// `Tensor<1>` here.
pub use wgpu_loss::{
    BinaryLossOptions, CrossEntropyOptions, FocalOptions, LinearCrossEntropyOptions, Reduction,
    SigmoidFocalOptions,
};

/// What can go wrong, naming the tensor and the problem.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The crate's own checks or kernels failed (bad options, a target
    /// outside `[0, C)`, a device error).
    #[error(transparent)]
    Loss(#[from] wgpu_loss::Error),
    /// The tensor is not a tensor of burn's wgpu backend.
    #[error("`{tensor}` is on {found}; wgpu-loss-burn needs burn's wgpu backend")]
    NotWgpu {
        /// The argument.
        tensor: &'static str,
        /// What it is instead.
        found: String,
    },
    /// The tensor's device was not made through [`SharedDevice`], so this
    /// crate has no context on its wgpu device.
    #[error(
        "`{tensor}` is on wgpu device {device}, which was not shared with wgpu-loss: \
         create it with SharedDevice::from_burn, from_setup or new_wgpu before burn uses it"
    )]
    UnsharedDevice {
        /// The argument.
        tensor: &'static str,
        /// The device.
        device: String,
    },
    /// Two tensors of one call are on different devices.
    #[error("`{tensor}` is on {found}, the other tensors on {expected}")]
    DeviceMismatch {
        /// The argument.
        tensor: &'static str,
        /// The first tensor's device.
        expected: String,
        /// This one's.
        found: String,
    },
    /// A dtype the kernels do not take.
    #[error("`{tensor}` is {found}; the kernels take f32, f16 or bf16 floats and i32 indices")]
    DType {
        /// The argument.
        tensor: &'static str,
        /// Its dtype.
        found: String,
    },
    /// Shapes that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A combination this crate does not compute.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// burn could not bring up or register the device.
    #[error("could not share the wgpu device with burn: {0}")]
    Init(String),
    /// burn failed underneath a call.
    #[error("burn failed: {0}")]
    Burn(String),
}
