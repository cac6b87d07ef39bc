//! The backward step every loss here shares.
//!
//! The forward pass of a tracked call asks the crate's kernel for the loss
//! and its gradients together (one read of the logits, one write of the
//! gradient, as Liger-Kernel does), at an upstream gradient of 1. The
//! backward step only scales them by the upstream gradient burn hands it:
//! - a reduced loss (`Mean`, `Sum`): the upstream gradient is one number.
//!   It is read (4 bytes, which waits for the forward work) and the saved
//!   gradients are returned as they are when it is 1 (what `loss.backward()`
//!   gives), or scaled by burn's fused elementwise kernel otherwise;
//! - per-row losses (`Reduction::None`): each row's gradient is multiplied
//!   by that row's upstream gradient, on the device, with no read.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::{Cube, DispatchAutodiffContext, DispatchTensor, TensorMetadata};
use burn::tensor::{GradientCheckpointingStrategy, Shape, Slice};

use crate::bridge::{wrap_plain, wrap_tracked, Fused, Tracked, Unwrapped};
use crate::Error;

/// What the backward step scales: the gradients the forward pass computed,
/// one per differentiable input (`None` where that input is untracked or
/// its gradient was not asked for).
#[derive(Clone, Debug)]
pub(crate) struct SavedGrads {
    grads: Vec<Option<Fused>>,
    /// For an unreduced loss: the shape its upstream gradient takes to
    /// broadcast over the gradients (`[N, 1]` for row losses, `[N, C]` for
    /// element losses).
    per_row: Option<Shape>,
}

#[derive(Debug)]
struct ScaleSavedGrads;

impl<const N: usize> Backward<Cube, N> for ScaleSavedGrads {
    type State = SavedGrads;

    fn backward(self, ops: Ops<SavedGrads, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = grads.consume::<Cube>(&ops.node);
        let scale = Scale::of(upstream, ops.state.per_row);
        for (parent, grad) in ops.parents.iter().zip(ops.state.grads) {
            if let (Some(parent), Some(grad)) = (parent, grad) {
                grads.register::<Cube>(parent.id, scale.apply(grad));
            }
        }
    }
}

enum Scale {
    One,
    Host(f32),
    /// The upstream gradient on the device: shaped to broadcast over the
    /// gradients for unreduced losses (`[N, 1]` or `[N, C]`), the one value
    /// otherwise.
    Device(Fused),
}

impl Scale {
    fn of(upstream: Fused, per_row: Option<Shape>) -> Self {
        if let Some(shape) = per_row {
            return Scale::Device(Cube::float_reshape(upstream, shape));
        }
        // The loss's first element is the loss; the rest are its parts.
        let first = Cube::float_slice(upstream, &[Slice::from(0..1)]);
        let read = burn::tensor::read_sync(Cube::float_into_data(first.clone()));
        match read.ok().and_then(|data| data.try_to_vec::<f32>().ok()) {
            Some(v) if v.first() == Some(&1.0) => Scale::One,
            Some(v) if !v.is_empty() => Scale::Host(v[0]),
            // A value that cannot be read is applied on the device instead.
            _ => Scale::Device(first),
        }
    }

    fn apply(&self, grad: Fused) -> Fused {
        match self {
            Scale::One => grad,
            Scale::Host(v) => Cube::float_mul_scalar(grad, (*v).into()),
            Scale::Device(s) => {
                let rank = grad.shape().num_dims();
                let s = s.clone();
                // [rows, 1] broadcasts over a [rows, C] gradient as it is; a
                // single value is given the gradient's rank.
                let s = if s.shape().num_dims() == rank {
                    s
                } else {
                    Cube::float_reshape(s, Shape::from(vec![1; rank]))
                };
                Cube::float_mul(grad, s)
            }
        }
    }
}

/// Runs a loss whose differentiable inputs are `inputs` (burn's float
/// tensors, tracked or not). `compute` gets their primitives and whether
/// gradients are wanted, and returns the loss and, when wanted, one gradient
/// per input. `per_row` is the shape the upstream gradient of an unreduced
/// loss takes to broadcast over the gradients.
pub(crate) fn differentiable<const N: usize>(
    inputs: [(Unwrapped, DispatchAutodiffContext); N],
    per_row: Option<Shape>,
    compute: impl FnOnce([Fused; N], [bool; N]) -> Result<(Fused, [Option<Fused>; N]), Error>,
) -> Result<DispatchTensor, Error> {
    let context = inputs
        .iter()
        .fold(DispatchAutodiffContext::Disabled, |acc, (_, c)| {
            acc.merge(*c)
        });
    let any_tracked = inputs
        .iter()
        .any(|(u, _)| matches!(u, Unwrapped::Tracked(_)));
    if !any_tracked {
        let primitives = inputs.map(|(u, _)| match u {
            Unwrapped::Plain(p) => p,
            Unwrapped::Tracked(t) => t.into_primitive(),
        });
        let (loss, _) = compute(primitives, [false; N])?;
        return Ok(wrap_plain(loss));
    }
    let tracked: [Tracked; N] = inputs.map(|(u, _)| match u {
        Unwrapped::Plain(p) => Tracked::new(p),
        Unwrapped::Tracked(t) => t,
    });
    let strategy = match context {
        DispatchAutodiffContext::Enabled(s) => s,
        DispatchAutodiffContext::Disabled => GradientCheckpointingStrategy::Disabled,
    };
    let out = match strategy {
        GradientCheckpointingStrategy::Balanced => {
            record::<BalancedCheckpointing, N>(tracked, per_row, compute)?
        }
        GradientCheckpointingStrategy::Disabled => {
            record::<NoCheckpointing, N>(tracked, per_row, compute)?
        }
    };
    let context = match context {
        DispatchAutodiffContext::Disabled => {
            DispatchAutodiffContext::Enabled(GradientCheckpointingStrategy::Disabled)
        }
        enabled => enabled,
    };
    Ok(wrap_tracked(out, context))
}

fn record<C: CheckpointStrategy, const N: usize>(
    inputs: [Tracked; N],
    per_row: Option<Shape>,
    compute: impl FnOnce([Fused; N], [bool; N]) -> Result<(Fused, [Option<Fused>; N]), Error>,
) -> Result<Tracked, Error> {
    let wanted = inputs.each_ref().map(|t| t.is_tracked());
    let parts = inputs.map(|t| t.into_parts());
    let (primitives, guards): (Vec<Fused>, Vec<_>) = parts.into_iter().unzip();
    let guards: [_; N] = guards
        .try_into()
        .map_err(|_| Error::Burn("input count changed".into()))?;
    let primitives: [Fused; N] = primitives
        .try_into()
        .map_err(|_| Error::Burn("input count changed".into()))?;
    // Compute-bound: the saved gradients are kept, never recomputed.
    match ScaleSavedGrads
        .prepare::<C>(guards)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (loss, grads) = compute(primitives, wanted)?;
            let state = SavedGrads {
                grads: grads.into_iter().collect(),
                per_row,
            };
            Ok(prep.finish(state, loss))
        }
        OpsKind::UnTracked(prep) => {
            let (loss, _) = compute(primitives, [false; N])?;
            Ok(prep.finish(loss))
        }
    }
}
