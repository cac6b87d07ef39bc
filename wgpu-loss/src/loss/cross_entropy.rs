//! Categorical cross-entropy with class-index or probability targets, as
//! PyTorch's `F.cross_entropy`, plus z-loss and logit softcap; and the
//! multiclass (softmax) focal loss.
//!
//! # Class-index targets
//!
//! Logits `x` are `[N, C]` row-major, targets `y` are `N` class indices,
//! `w` optional class weights (`w = 1` when absent), `ε` label smoothing,
//! `I` the rows whose target is `ignore_index`. With `x' = c·tanh(x/c)` when a
//! softcap `c` is set (else `x' = x`), `p = softmax(x'_i)`, `lp = log p` and
//! `lse_i = logsumexp(x'_i)`:
//!
//! - row loss, 0 for rows in `I`:
//!   `l_i = (1-ε)·w[y_i]·(-lp[i,y_i]) + (ε/C)·Σ_c w[c]·(-lp[i,c])`
//! - z-loss, 0 for rows in `I`: `z_i = z·lse_i²` (not class-weighted)
//! - `none` → `l_i + z_i` per row; `sum` → `Σ l_i + Σ z_i`;
//!   `mean` → `Σ l_i / D + Σ z_i / K`, where `D = Σ_{i∉I} w[y_i]` (the count of
//!   kept rows without weights) and `K` is the count of kept rows. All rows
//!   ignored, or `N = 0`, under `mean` gives NaN, as PyTorch.
//! - gradient w.r.t. `x`, zero on rows in `I`:
//!   `g_ij = s_ce·[(1-ε)·w[y_i]·(p_ij - [j = y_i]) + (ε/C)·(W·p_ij - w[j])] + s_z·2z·lse_i·p_ij`,
//!   times `sech²(x_ij/c)` with a softcap, where `W = Σ_c w[c]`,
//!   `s_ce = grad_scale / D` and `s_z = grad_scale / K` for `mean`, and both
//!   `grad_scale` otherwise (for `none`: the gradient of `Σ_i (l_i + z_i)`).
//!
//! # Probability targets
//!
//! Targets `q` are `[N, C]` like the logits: `q' = (1-ε)·q + ε/C`,
//! `l_i = -Σ_c w[c]·q'_ic·log p_ic` (+ z-loss), `mean` divides by `N`;
//! gradient `g_ij = p_ij·Σ_c w[c]·q'_ic - w[j]·q'_ij` (divided by `N` for
//! `mean`), through the softcap when one is set. Targets need not sum to 1;
//! negative or non-finite targets are an error, and so is a non-negative
//! `ignore_index` (PyTorch: "ignore_index is not supported for floating point
//! target").
//!
//! # Multiclass focal loss
//!
//! `l_i = -α[y_i]·(1 - p_{i,y_i})^γ·log p_{i,y_i}`, zero on ignored rows;
//! `mean` divides by the count of kept rows. With `q = 1 - p_y` and
//! `lp = log p_y` the gradient is `g_ij = F_i·(p_ij - [j = y_i])`,
//! `F_i = α[y_i]·(q^γ - γ·q^(γ-1)·p_y·lp)`, from `∂p_y/∂x_j = p_y([j = y] - p_j)`
//! and `∂lp/∂x_j = [j = y] - p_j`.

use super::{check_gamma, check_grad_scale, check_matrix, check_values, check_weights, Reduction};
use crate::error::{Error, Result};

/// Options of cross-entropy (index or probability targets); `Default` is
/// PyTorch's default.
///
/// `W` is where the class weights live: a host slice (`[f32]`, the default)
/// for the host API and the reference, a `GpuTensor` for the encode API.
#[derive(Debug)]
pub struct CrossEntropyOptions<'a, W: ?Sized = [f32]> {
    /// Class weights, `C` of them, finite and non-negative. `None`: all 1.
    pub weight: Option<&'a W>,
    /// Rows whose target equals this contribute nothing. Default -100.
    pub ignore_index: i64,
    /// Label smoothing `ε` in `[0, 1]`. Default 0.
    pub label_smoothing: f32,
    /// How row losses are combined. Default [`Reduction::Mean`].
    pub reduction: Reduction,
    /// z-loss weight `z ≥ 0` (adds `z·lse²` per kept row). Default 0.
    pub z_loss: f32,
    /// Logit softcap `c > 0`: the loss sees `c·tanh(x/c)`. Default `None`.
    pub softcap: Option<f32>,
    /// Multiplies the returned gradient (loss scaling, accumulation). Default 1.
    pub grad_scale: f32,
}

impl<W: ?Sized> Clone for CrossEntropyOptions<'_, W> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<W: ?Sized> Copy for CrossEntropyOptions<'_, W> {}

impl<W: ?Sized> Default for CrossEntropyOptions<'_, W> {
    fn default() -> Self {
        Self {
            weight: None,
            ignore_index: -100,
            label_smoothing: 0.0,
            reduction: Reduction::Mean,
            z_loss: 0.0,
            softcap: None,
            grad_scale: 1.0,
        }
    }
}

impl<'a, W: ?Sized> CrossEntropyOptions<'a, W> {
    /// The same options with the class weights given as `weight`.
    pub fn with_weight<V: ?Sized>(&self, weight: Option<&'a V>) -> CrossEntropyOptions<'a, V> {
        CrossEntropyOptions {
            weight,
            ignore_index: self.ignore_index,
            label_smoothing: self.label_smoothing,
            reduction: self.reduction,
            z_loss: self.z_loss,
            softcap: self.softcap,
            grad_scale: self.grad_scale,
        }
    }

    /// Checks every option but the weights, which live wherever `W` says.
    pub fn validate_scalars(&self) -> Result<()> {
        let eps = self.label_smoothing;
        if !(0.0..=1.0).contains(&eps) {
            return Err(Error::InvalidOption {
                name: "label_smoothing",
                value: f64::from(eps),
                reason: "must be in [0, 1]",
            });
        }
        if !(self.z_loss.is_finite() && self.z_loss >= 0.0) {
            return Err(Error::InvalidOption {
                name: "z_loss",
                value: f64::from(self.z_loss),
                reason: "must be finite and >= 0",
            });
        }
        if let Some(c) = self.softcap {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::InvalidOption {
                    name: "softcap",
                    value: f64::from(c),
                    reason: "must be finite and > 0",
                });
            }
        }
        check_grad_scale(self.grad_scale)
    }

    /// PyTorch: "ignore_index is not supported for floating point target".
    pub(crate) fn check_no_ignore_index(&self) -> Result<()> {
        if self.ignore_index >= 0 {
            return Err(Error::InvalidOption {
                name: "ignore_index",
                value: self.ignore_index as f64,
                reason:
                    "ignore_index is not supported with probability targets (leave it negative)",
            });
        }
        Ok(())
    }
}

impl CrossEntropyOptions<'_> {
    /// Checks every option, host weights included, against `C = classes`.
    pub fn validate(&self, classes: usize) -> Result<()> {
        if let Some(w) = self.weight {
            if w.len() != classes {
                return Err(Error::LengthMismatch {
                    what: "weight (one per class)",
                    expected: classes,
                    actual: w.len(),
                });
            }
            check_weights(w)?;
        }
        self.validate_scalars()
    }
}

/// Validates a probability-target problem on the host and returns its row count.
pub fn soft_rows<F>(
    logits: &[F],
    probs: &[f32],
    classes: usize,
    options: &CrossEntropyOptions<'_>,
) -> Result<usize> {
    if classes == 0 {
        return Err(Error::ZeroCols);
    }
    let rows = logits.len() / classes;
    check_matrix("logits", logits.len(), rows, classes)?;
    check_matrix("probability targets", probs.len(), rows, classes)?;
    check_soft_options(probs, classes, options)?;
    Ok(rows)
}

/// The options and the target values of a probability-target problem.
pub fn check_soft_options(
    probs: &[f32],
    classes: usize,
    options: &CrossEntropyOptions<'_>,
) -> Result<()> {
    options.validate(classes)?;
    options.check_no_ignore_index()?;
    check_values(
        "probability targets",
        probs,
        classes,
        |q| q.is_finite() && q >= 0.0,
        "probability targets must be finite and non-negative",
    )
}

/// Result of a cross-entropy or multiclass focal call.
#[derive(Clone, Debug, PartialEq)]
pub struct CrossEntropyOutput {
    /// `none`: `l_i + z_i` per row (`N` values); `mean` / `sum`: one value.
    pub loss: Vec<f32>,
    /// The z-loss part of `loss`, same shape (zeros when `z_loss = 0`).
    pub z_loss: Vec<f32>,
    /// `logsumexp` of each row's (softcapped) logits, `N` values, ignored rows included.
    pub lse: Vec<f32>,
    /// Gradient w.r.t. the logits, `[N, C]`; `None` for [`super::Request::Loss`].
    pub grad: Option<Vec<f32>>,
}

/// Options of the multiclass (softmax) focal loss; `Default` is `gamma = 2`,
/// no `alpha`, `ignore_index = -100`, `mean`.
///
/// `W` is where the per-class `α` live, as for [`CrossEntropyOptions`].
#[derive(Debug)]
pub struct FocalOptions<'a, W: ?Sized = [f32]> {
    /// Per-class `α`, `C` of them: class weights, finite and `>= 0`. `None`: all 1.
    pub alpha: Option<&'a W>,
    /// Focusing parameter `γ ≥ 0`; `γ = 0` without `α` is cross-entropy.
    pub gamma: f32,
    /// Rows whose target equals this contribute nothing. Default -100.
    pub ignore_index: i64,
    /// How row losses are combined; `mean` divides by the count of kept rows.
    pub reduction: Reduction,
    /// Multiplies the returned gradient. Default 1.
    pub grad_scale: f32,
}

impl<W: ?Sized> Clone for FocalOptions<'_, W> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<W: ?Sized> Copy for FocalOptions<'_, W> {}

impl<W: ?Sized> Default for FocalOptions<'_, W> {
    fn default() -> Self {
        Self {
            alpha: None,
            gamma: 2.0,
            ignore_index: -100,
            reduction: Reduction::Mean,
            grad_scale: 1.0,
        }
    }
}

impl<W: ?Sized> FocalOptions<'_, W> {
    /// Checks every option but `alpha`.
    pub fn validate_scalars(&self) -> Result<()> {
        check_gamma(self.gamma)?;
        check_grad_scale(self.grad_scale)
    }
}

impl FocalOptions<'_> {
    /// Checks every option, host `alpha` included, against `C = classes`.
    pub fn validate(&self, classes: usize) -> Result<()> {
        if let Some(a) = self.alpha {
            if a.len() != classes {
                return Err(Error::LengthMismatch {
                    what: "alpha (one per class)",
                    expected: classes,
                    actual: a.len(),
                });
            }
            // Per-class alpha are class weights (torchvision's [0, 1] rule
            // is the sigmoid focal loss's, for its one balance factor).
            if let Some(&v) = a.iter().find(|v| !(v.is_finite() && **v >= 0.0)) {
                return Err(Error::InvalidOption {
                    name: "alpha",
                    value: f64::from(v),
                    reason: "each per-class alpha is a class weight: finite and >= 0",
                });
            }
        }
        self.validate_scalars()
    }
}
