//! The loss definitions: every op's options, their validation and the
//! formulas (in each submodule's docs), with no GPU code.
//!
//! Both sides of every check depend on this module and on nothing of each
//! other: the GPU ops (`crate::ops`, `shaders/`) and the f64 reference
//! ([`crate::reference`]).
//!
//! | family | definition | WGSL | GPU host code | reference |
//! |---|---|---|---|---|
//! | softmax, log-softmax, logsumexp | [`softmax`] | `shaders/softmax.wgsl` | `src/ops/softmax.rs` | [`crate::reference`] |
//! | cross-entropy (index and probability targets), multiclass focal | [`cross_entropy`] | `shaders/cross_entropy.wgsl` | `src/ops/cross_entropy.rs` | [`crate::reference`] |
//! | BCE (probabilities, logits), sigmoid focal | [`binary`] | `shaders/binary.wgsl` | `src/ops/binary.rs` | [`crate::reference`] |
//! | linear, fused linear + cross-entropy (and its vocabulary shards) | [`linear_cross_entropy`] | `shaders/linear.wgsl`, `shaders/linear_cross_entropy.wgsl` | `src/ops/linear.rs` | [`crate::reference`] |

pub mod binary;
pub mod cross_entropy;
pub mod linear_cross_entropy;
pub mod softmax;

use crate::error::{Error, Result};

/// How per-row (or per-element) losses are combined, as PyTorch's `reduction`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// One loss per row (per element for the binary losses).
    None,
    /// Sum of the losses divided by the op's denominator.
    #[default]
    Mean,
    /// Sum of the losses.
    Sum,
}

/// What a loss call computes. The same three words for every loss, on the
/// host API; the encode API says the same through its views' `grad` field
/// (absent, a separate view, or in place).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Request {
    /// The loss only: the input is read once and nothing of its size is written.
    Loss,
    /// The loss and the gradient with respect to the input.
    #[default]
    LossAndGrad,
    /// The loss and the gradient, the gradient written over the input's
    /// device buffer, which saves one `[N, C]` buffer of device memory. Ops
    /// with an in-place kernel (cross-entropy with class-index targets) use
    /// it; the others compute into a buffer of their own. The host API
    /// returns the gradient in the output's `grad` either way.
    LossAndGradInPlace,
}

impl Request {
    /// Whether a gradient is wanted.
    pub fn wants_grad(self) -> bool {
        self != Request::Loss
    }
}

/// A class-index target type accepted on the host: `i32` or `i64`.
pub trait ClassIndex: Copy {
    /// The index as `i64`.
    fn to_i64(self) -> i64;
}

impl ClassIndex for i32 {
    fn to_i64(self) -> i64 {
        i64::from(self)
    }
}

impl ClassIndex for i64 {
    fn to_i64(self) -> i64 {
        self
    }
}

/// Kernel-side marker for ignored rows: never a valid class index.
pub const IGNORED_ROW: i32 = -1;

/// Checks every target and converts to the kernels' `i32` form, with ignored
/// rows as `-1`. The error names the first bad row.
pub fn checked_targets<T: ClassIndex>(
    targets: &[T],
    classes: usize,
    ignore_index: i64,
) -> Result<Vec<i32>> {
    let c = i64::try_from(classes).unwrap_or(i64::MAX);
    if c > i64::from(i32::MAX) {
        return Err(Error::TooLarge {
            what: "class count",
            requested: classes as u64,
            limit_name: "i32 class indices",
            limit: i32::MAX as u64,
        });
    }
    targets
        .iter()
        .enumerate()
        .map(|(row, t)| {
            let t = t.to_i64();
            if t == ignore_index {
                Ok(IGNORED_ROW)
            } else if (0..c).contains(&t) {
                Ok(t as i32)
            } else {
                Err(Error::TargetOutOfRange {
                    row,
                    target: t,
                    classes,
                    ignore_index,
                })
            }
        })
        .collect()
}

/// An option check: an error naming the option, its value and the rule, unless `ok`.
pub(crate) fn require(
    ok: bool,
    name: &'static str,
    value: f32,
    reason: &'static str,
) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidOption {
            name,
            value: f64::from(value),
            reason,
        })
    }
}

/// `grad_scale` must be finite.
pub(crate) fn check_grad_scale(grad_scale: f32) -> Result<()> {
    require(
        grad_scale.is_finite(),
        "grad_scale",
        grad_scale,
        "must be finite",
    )
}

/// A focal `gamma` must be finite and non-negative.
pub(crate) fn check_gamma(gamma: f32) -> Result<()> {
    require(
        gamma.is_finite() && gamma >= 0.0,
        "gamma",
        gamma,
        "must be finite and >= 0",
    )
}

/// Weights (class weights, per-class alpha, BCE weights): finite and non-negative.
pub(crate) fn check_weights(w: &[f32]) -> Result<()> {
    match w.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
        Some(index) => Err(Error::InvalidWeight {
            index,
            value: w[index],
        }),
        None => Ok(()),
    }
}

/// The first value (in row-major order) that fails `ok`, as an error naming its row and column.
pub(crate) fn check_values(
    what: &'static str,
    values: &[f32],
    cols: usize,
    ok: impl Fn(f32) -> bool,
    reason: &'static str,
) -> Result<()> {
    match values.iter().position(|&v| !ok(v)) {
        Some(i) => Err(Error::InvalidValue {
            what,
            row: i / cols,
            col: i % cols,
            value: values[i],
            reason,
        }),
        None => Ok(()),
    }
}

/// `rows * cols`, checked, and the slice length it implies.
pub fn check_matrix(what: &'static str, len: usize, rows: usize, cols: usize) -> Result<()> {
    if cols == 0 {
        return Err(Error::ZeroCols);
    }
    let expected = rows
        .checked_mul(cols)
        .ok_or(Error::ShapeOverflow { rows, cols })?;
    if len != expected {
        return Err(Error::LengthMismatch {
            what,
            expected,
            actual: len,
        });
    }
    Ok(())
}
