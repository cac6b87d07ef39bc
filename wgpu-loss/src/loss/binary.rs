//! Element-wise losses over `[N, C]` (binary and multi-label): binary
//! cross-entropy on probabilities, binary cross-entropy with logits, and
//! torchvision's sigmoid focal loss. Formulas (PyTorch / torchvision):
//!
//! - **BCE on probabilities** `p ∈ [0, 1]`, targets `y ∈ [0, 1]`:
//!   `l = -w·(y·max(log p, -100) + (1-y)·max(log1p(-p), -100))`,
//!   gradient `w·(p - y) / max(p·(1-p), 1e-12)`.
//! - **BCE with logits** `x`: `l = w·((1-y)·x + (1 + (pw-1)·y)·softplus(-x))`
//!   with `softplus(-x) = max(-x, 0) + log1p(exp(-|x|))`, gradient
//!   `w·((1 + (pw-1)·y)·σ(x) - pw·y)`. `pos_weight` `pw` has one value per
//!   column; `weight` `w` is one per column (length `C`) or one per element.
//! - **Sigmoid focal loss**: `p = σ(x)`, `ce` = BCE with logits,
//!   `p_t = p·y + (1-p)·(1-y)`, `l = ce·(1-p_t)^γ`, times
//!   `α·y + (1-α)·(1-y)` when `α ≥ 0` (`α = -1` disables it). Gradient, with
//!   `q = 1 - p_t`: `a_t·[(p - y)·q^γ - γ·q^(γ-1)·(2y-1)·p(1-p)·ce]`
//!   (from `∂ce/∂x = p - y` and `∂p_t/∂x = (2y-1)·p(1-p)`); the second term is
//!   taken as 0 where `q = 0` or `p(1-p) = 0`, its limit for hard labels.
//!
//! Reductions: `none` (one loss per element), `sum`, `mean` (divides by `N·C`).
//! The gradient is of the returned loss (of the sum for `none`) times `grad_scale`.

use super::{check_gamma, check_grad_scale, check_matrix, check_values, check_weights, Reduction};
use crate::error::{Error, Result};

/// Options of the BCE losses; `Default` is PyTorch's (`mean`, no weights).
///
/// `W` is where the weights live: a host slice (`[f32]`, the default) for the
/// host API and the reference, a `GpuTensor` for the encode API.
#[derive(Debug)]
pub struct BinaryLossOptions<'a, W: ?Sized = [f32]> {
    /// Weights: length `C` (one per column) or `N·C` (one per element); finite, ≥ 0.
    pub weight: Option<&'a W>,
    /// Positive-class weights, length `C`, finite, ≥ 0 (with logits only).
    pub pos_weight: Option<&'a W>,
    /// How element losses are combined. Default [`Reduction::Mean`].
    pub reduction: Reduction,
    /// Multiplies the returned gradient. Default 1.
    pub grad_scale: f32,
}

impl<W: ?Sized> Clone for BinaryLossOptions<'_, W> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<W: ?Sized> Copy for BinaryLossOptions<'_, W> {}

impl<'a, W: ?Sized> BinaryLossOptions<'a, W> {
    /// The same options with the weights given as `weight` and `pos_weight`.
    pub fn with_weights<V: ?Sized>(
        &self,
        weight: Option<&'a V>,
        pos_weight: Option<&'a V>,
    ) -> BinaryLossOptions<'a, V> {
        BinaryLossOptions {
            weight,
            pos_weight,
            reduction: self.reduction,
            grad_scale: self.grad_scale,
        }
    }
}

impl<W: ?Sized> Default for BinaryLossOptions<'_, W> {
    fn default() -> Self {
        Self {
            weight: None,
            pos_weight: None,
            reduction: Reduction::Mean,
            grad_scale: 1.0,
        }
    }
}

/// Options of the sigmoid focal loss; `Default` is torchvision's
/// (`alpha = 0.25`, `gamma = 2`, reduction `none`).
#[derive(Clone, Copy, Debug)]
pub struct SigmoidFocalOptions {
    /// Class balance `α` in `[0, 1]`, or `-1` to disable it.
    pub alpha: f32,
    /// Focusing parameter `γ ≥ 0`.
    pub gamma: f32,
    /// How element losses are combined. Default [`Reduction::None`].
    pub reduction: Reduction,
    /// Multiplies the returned gradient. Default 1.
    pub grad_scale: f32,
}

impl Default for SigmoidFocalOptions {
    fn default() -> Self {
        Self {
            alpha: 0.25,
            gamma: 2.0,
            reduction: Reduction::None,
            grad_scale: 1.0,
        }
    }
}

/// Result of an element-wise loss.
#[derive(Clone, Debug, PartialEq)]
pub struct LossOutput {
    /// `none`: one loss per element (`N·C`); `mean` / `sum`: one value.
    pub loss: Vec<f32>,
    /// Gradient w.r.t. the input, `N·C`; `None` in loss-only mode.
    pub grad: Option<Vec<f32>>,
}

/// Which element-wise loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// Binary cross-entropy on probabilities.
    Probabilities,
    /// Binary cross-entropy with logits.
    Logits,
    /// torchvision's sigmoid focal loss.
    SigmoidFocal,
}

/// One element-wise loss call, validated.
#[allow(missing_docs)] // the fields are the options above, flattened
pub struct BinaryCall<'a> {
    pub op: BinaryOp,
    pub inputs: &'a [f32],
    pub targets: &'a [f32],
    pub cols: usize,
    pub weight: Option<&'a [f32]>,
    pub pos_weight: Option<&'a [f32]>,
    pub reduction: Reduction,
    pub grad_scale: f32,
    pub alpha: f32,
    pub gamma: f32,
}

impl BinaryCall<'_> {
    /// Checks shapes, values and options; returns the row count.
    pub fn validate(&self) -> Result<usize> {
        if self.cols == 0 {
            return Err(Error::ZeroCols);
        }
        let rows = self.inputs.len() / self.cols;
        let input_name = match self.op {
            BinaryOp::Probabilities => "input probabilities",
            _ => "logits",
        };
        check_matrix(input_name, self.inputs.len(), rows, self.cols)?;
        check_matrix("targets", self.targets.len(), rows, self.cols)?;
        if self.op == BinaryOp::Probabilities {
            check_values(
                input_name,
                self.inputs,
                self.cols,
                |p| (0.0..=1.0).contains(&p),
                "binary cross-entropy inputs must be probabilities in [0, 1]",
            )?;
        }
        check_values(
            "targets",
            self.targets,
            self.cols,
            |y| (0.0..=1.0).contains(&y),
            "binary targets must be in [0, 1]",
        )?;
        if let Some(w) = self.weight {
            if w.len() != self.cols && w.len() != self.inputs.len() {
                return Err(Error::LengthMismatch {
                    what: "weight (one per column, or one per element)",
                    expected: self.cols,
                    actual: w.len(),
                });
            }
            check_weights(w)?;
        }
        if let Some(pw) = self.pos_weight {
            if self.op != BinaryOp::Logits {
                return Err(Error::InvalidOption {
                    name: "pos_weight",
                    value: f64::NAN,
                    reason: "only binary cross-entropy with logits takes pos_weight",
                });
            }
            if pw.len() != self.cols {
                return Err(Error::LengthMismatch {
                    what: "pos_weight (one per column)",
                    expected: self.cols,
                    actual: pw.len(),
                });
            }
            check_weights(pw)?;
        }
        self.validate_scalars()?;
        Ok(rows)
    }

    /// Checks the scalar options alone (the encode API's data is on the GPU).
    pub fn validate_scalars(&self) -> Result<()> {
        if self.op == BinaryOp::SigmoidFocal {
            if !((0.0..=1.0).contains(&self.alpha) || self.alpha == -1.0) {
                return Err(Error::InvalidOption {
                    name: "alpha",
                    value: f64::from(self.alpha),
                    reason: "must be in [0, 1], or -1 to disable it",
                });
            }
            check_gamma(self.gamma)?;
        }
        check_grad_scale(self.grad_scale)
    }
}
