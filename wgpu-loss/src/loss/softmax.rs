//! Row-wise softmax, log-softmax and logsumexp with their backward passes.
//!
//! For a row `x` of length `C` (PyTorch semantics, `dim = -1`):
//! - `softmax(x)_j = exp(x_j - lse(x))`, `log_softmax(x)_j = x_j - lse(x)`,
//!   `lse(x) = log Σ_j exp(x_j)`, computed as `m + log Σ exp(x_j - m)` with `m = max x`.
//! - softmax backward (from the output `y`): `dx = y ⊙ (dy - Σ_j dy_j y_j)`.
//! - log-softmax backward (from the output `y`): `dx = dy - exp(y) Σ_j dy_j`.
//! - logsumexp backward (from `x`, its output `lse` and `dy`, one per row): `dx = dy · exp(x - lse)`.
//!
//! Edge cases follow PyTorch: `-inf` entries get probability 0; a row of only
//! `-inf` gives NaN for softmax / log-softmax and `-inf` for logsumexp; a row
//! holding NaN is NaN throughout (logsumexp NaN); a row holding `+inf` (and no
//! NaN) gives `+inf` for logsumexp and NaN for softmax / log-softmax.

/// Which softmax-family op.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SoftmaxOp {
    /// Row-wise softmax.
    Softmax,
    /// Row-wise log-softmax.
    LogSoftmax,
    /// Row-wise log-sum-exp (one value per row).
    Logsumexp,
}
