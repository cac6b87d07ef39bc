//! Categorical cross-entropy with class-index targets, as PyTorch's
//! `F.cross_entropy`, plus z-loss and logit softcap.
//!
//! Logits `x` are `[N, C]` row-major f32, targets `y` are `N` class indices,
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
//!   times `1 - tanh²(x_ij/c)` with a softcap, where `W = Σ_c w[c]`,
//!   `s_ce = grad_scale / D` and `s_z = grad_scale / K` for `mean`, and both
//!   `grad_scale` otherwise (for `none`: the gradient of `Σ_i (l_i + z_i)`).
//!
//! Kernels: one workgroup-wide pass computes `D`, `K`, `W`; one workgroup per
//! row computes `(max, sum)` online, the row loss, and then writes the gradient
//! from a second read of the row (loss-only mode reads the logits once and
//! writes nothing of size `N·C`); one workgroup sums the row losses in a fixed
//! order. No float atomics and no readback in between: results are bitwise
//! reproducible on a given adapter.

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernels::{Kernel, VecWidth};
use crate::ops::{check_matrix, Base, MatrixArg, Params, Reduction, RowLaunch, WholeArg};

/// Options of [`GpuContext::cross_entropy`]; `Default` is PyTorch's default.
#[derive(Clone, Copy, Debug)]
pub struct CrossEntropyOptions<'a> {
    /// Class weights, length `C`, finite and non-negative. `None`: all 1.
    pub weight: Option<&'a [f32]>,
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

impl Default for CrossEntropyOptions<'_> {
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

impl CrossEntropyOptions<'_> {
    /// Checks every option against `C = classes`.
    pub fn validate(&self, classes: usize) -> Result<()> {
        if let Some(w) = self.weight {
            if w.len() != classes {
                return Err(Error::LengthMismatch {
                    what: "weight (one per class)",
                    expected: classes,
                    actual: w.len(),
                });
            }
            if let Some((index, &value)) = w
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite() || **v < 0.0)
            {
                return Err(Error::InvalidWeight { index, value });
            }
        }
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
        if !self.grad_scale.is_finite() {
            return Err(Error::InvalidOption {
                name: "grad_scale",
                value: f64::from(self.grad_scale),
                reason: "must be finite",
            });
        }
        Ok(())
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

/// GPU-side marker for ignored rows: never a valid class index.
pub(crate) const IGNORED_ROW: i32 = -1;

/// Checks every target and converts to the kernel's `i32` form, with ignored
/// rows as [`IGNORED_ROW`]. The error names the first bad row.
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

/// Result of [`GpuContext::cross_entropy`].
#[derive(Clone, Debug, PartialEq)]
pub struct CrossEntropyOutput {
    /// `none`: `l_i + z_i` per row (`N` values); `mean` / `sum`: one value.
    pub loss: Vec<f32>,
    /// The z-loss part of `loss`, same shape (zeros when `z_loss = 0`).
    pub z_loss: Vec<f32>,
    /// `logsumexp` of each row's (softcapped) logits, `N` values, ignored rows included.
    pub lse: Vec<f32>,
    /// Gradient w.r.t. the logits, `[N, C]`; `None` in loss-only mode.
    pub grad: Option<Vec<f32>>,
}

/// What the per-row kernel writes besides row losses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GradMode {
    /// Loss only: logits read once, nothing of size `N·C` written.
    None,
    /// Gradient into its own buffer.
    Separate,
    /// Gradient over the logits buffer.
    InPlace,
}

impl GradMode {
    fn kernel(self) -> Kernel {
        match self {
            GradMode::None => Kernel::CrossEntropyLoss,
            GradMode::Separate => Kernel::CrossEntropyLossGrad,
            GradMode::InPlace => Kernel::CrossEntropyLossGradInPlace,
        }
    }
}

const FLAG_WEIGHTS: u32 = 1;
const FLAG_SOFTCAP: u32 = 2;

/// The device-side state of one cross-entropy problem, apart from the logits:
/// validated targets and weights, and the scalar and per-row outputs.
pub(crate) struct CrossEntropyProblem {
    pub(crate) classes: usize,
    pub(crate) reduction: Reduction,
    params: Params,
    width: VecWidth,
    targets: wgpu::Buffer,
    weights: Option<wgpu::Buffer>,
    scalars: wgpu::Buffer,
    pub(crate) row_out: wgpu::Buffer,
    pub(crate) result: wgpu::Buffer,
}

impl GpuContext {
    /// Validates targets and options and uploads everything but the logits.
    pub(crate) fn cross_entropy_problem<T: ClassIndex>(
        &self,
        targets: &[T],
        classes: usize,
        options: &CrossEntropyOptions<'_>,
    ) -> Result<CrossEntropyProblem> {
        let rows = targets.len();
        if classes == 0 {
            return Err(Error::ZeroCols);
        }
        options.validate(classes)?;
        let targets = checked_targets(targets, classes, options.ignore_index)?;
        self.check_whole_binding("per-row loss buffer (16 bytes per row)", rows as u64 * 16)?;
        self.check_whole_binding("targets (4 bytes per row)", rows as u64 * 4)?;
        self.check_whole_binding("class weights", classes as u64 * 4)?;
        let total_rows = u32::try_from(rows).map_err(|_| Error::TooLarge {
            what: "row count",
            requested: rows as u64,
            limit_name: "u32 rows",
            limit: u64::from(u32::MAX),
        })?;
        let mut flags = 0;
        if options.weight.is_some() {
            flags |= FLAG_WEIGHTS;
        }
        if options.softcap.is_some() {
            flags |= FLAG_SOFTCAP;
        }
        let params = Params {
            cols: classes as u32,
            ignore_index: IGNORED_ROW,
            flags,
            total_rows,
            smoothing: options.label_smoothing,
            z_loss: options.z_loss,
            softcap: options.softcap.unwrap_or(1.0),
            grad_scale: options.grad_scale,
            reduction: options.reduction.code(),
            ..Params::default()
        };
        Ok(CrossEntropyProblem {
            classes,
            reduction: options.reduction,
            params,
            // The weights vector is read with the row kernels' vector width.
            width: VecWidth::for_layout(classes, &[0]),
            targets: self.upload("targets", &targets),
            weights: options.weight.map(|w| self.upload("weight", w)),
            scalars: self.storage("ce scalars", 16),
            row_out: self.output("ce row out", rows * 4),
            result: self.output("ce result", 4),
        })
    }

    /// Records the `mean` denominator / kept-row count / weight total pass.
    pub(crate) fn encode_cross_entropy_denominator(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        p: &CrossEntropyProblem,
    ) -> Result<()> {
        self.encode_single(
            encoder,
            Kernel::CrossEntropyDenominator,
            p.width,
            &[
                WholeArg {
                    binding: 2,
                    buffer: &p.targets,
                },
                WholeArg {
                    binding: 3,
                    buffer: p.weights.as_ref().unwrap_or(&self.placeholder),
                },
                WholeArg {
                    binding: 4,
                    buffer: &p.scalars,
                },
            ],
            p.params,
        )
    }

    /// Records the per-row kernel over rows `row0..row0 + n`, whose logits
    /// start at element 0 of `logits` (and whose gradient goes to `grad`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode_cross_entropy_rows(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        p: &CrossEntropyProblem,
        mode: GradMode,
        logits: &wgpu::Buffer,
        grad: Option<&wgpu::Buffer>,
        row0: usize,
        n: usize,
    ) -> Result<()> {
        let mut matrices = vec![MatrixArg {
            binding: 1,
            buffer: logits,
            offset: 0,
            base: Base::A,
        }];
        if let (GradMode::Separate, Some(g)) = (mode, grad) {
            matrices.push(MatrixArg {
                binding: 6,
                buffer: g,
                offset: 0,
                base: Base::Out,
            });
        }
        let whole = [
            WholeArg {
                binding: 2,
                buffer: &p.targets,
            },
            WholeArg {
                binding: 3,
                buffer: p.weights.as_ref().unwrap_or(&self.placeholder),
            },
            WholeArg {
                binding: 4,
                buffer: &p.scalars,
            },
            WholeArg {
                binding: 5,
                buffer: &p.row_out,
            },
        ];
        self.encode_rows(
            encoder,
            RowLaunch {
                kernel: mode.kernel(),
                rows: n,
                cols: p.classes,
                matrices: &matrices,
                whole: &whole,
                params: Params {
                    row_base: row0 as u32,
                    ..p.params
                },
            },
        )
    }

    /// Records the fixed-order reduction of row losses (nothing for `none`).
    pub(crate) fn encode_cross_entropy_reduce(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        p: &CrossEntropyProblem,
    ) -> Result<()> {
        if p.reduction == Reduction::None {
            return Ok(());
        }
        self.encode_single(
            encoder,
            Kernel::CrossEntropyReduce,
            p.width,
            &[
                WholeArg {
                    binding: 4,
                    buffer: &p.scalars,
                },
                WholeArg {
                    binding: 5,
                    buffer: &p.row_out,
                },
                WholeArg {
                    binding: 7,
                    buffer: &p.result,
                },
            ],
            p.params,
        )
    }

    async fn cross_entropy_run<T: ClassIndex>(
        &self,
        logits: &[f32],
        targets: &[T],
        classes: usize,
        options: &CrossEntropyOptions<'_>,
        mode: GradMode,
    ) -> Result<CrossEntropyOutput> {
        let rows = targets.len();
        check_matrix("logits", logits.len(), rows, classes)?;
        let problem = self.cross_entropy_problem(targets, classes, options)?;
        self.scoped("ce_denominator", || {
            let mut encoder = self.encoder("ce_denominator");
            self.encode_cross_entropy_denominator(&mut encoder, &problem)?;
            self.queue.submit([encoder.finish()]);
            Ok(())
        })?;

        let mut grad = Vec::new();
        let chunk_rows = if rows == 0 {
            1
        } else {
            self.rows_per_window(classes)?
        };
        let mut r0 = 0;
        while r0 < rows {
            let n = chunk_rows.min(rows - r0);
            let chunk = &logits[r0 * classes..(r0 + n) * classes];
            let staging = self.scoped(mode.kernel().entry_point(), || {
                let logits_buf = self.upload("logits", chunk);
                let grad_buf =
                    (mode == GradMode::Separate).then(|| self.output("grad", n * classes));
                let mut encoder = self.encoder(mode.kernel().entry_point());
                self.encode_cross_entropy_rows(
                    &mut encoder,
                    &problem,
                    mode,
                    &logits_buf,
                    grad_buf.as_ref(),
                    r0,
                    n,
                )?;
                let written = match mode {
                    GradMode::None => None,
                    GradMode::Separate => grad_buf.as_ref(),
                    GradMode::InPlace => Some(&logits_buf),
                };
                let staging =
                    written.map(|b| self.stage(&mut encoder, b, (n * classes) as u64 * 4));
                self.queue.submit([encoder.finish()]);
                Ok(staging)
            })?;
            if let Some(staging) = staging {
                grad.extend(self.read_back::<f32>(&staging, n * classes).await?);
            }
            r0 += n;
        }

        let (row_staging, result_staging) = self.scoped("ce_reduce", || {
            let mut encoder = self.encoder("ce_reduce");
            self.encode_cross_entropy_reduce(&mut encoder, &problem)?;
            let row_staging = self.stage(&mut encoder, &problem.row_out, rows as u64 * 16);
            let result_staging = self.stage(&mut encoder, &problem.result, 8);
            self.queue.submit([encoder.finish()]);
            Ok((row_staging, result_staging))
        })?;
        let per_row = self.read_back::<[f32; 4]>(&row_staging, rows).await?;
        let reduced = self.read_back::<f32>(&result_staging, 2).await?;
        let lse = per_row.iter().map(|r| r[2]).collect();
        let (loss, z_loss) = match options.reduction {
            Reduction::None => (
                per_row.iter().map(|r| r[0] + r[1]).collect(),
                per_row.iter().map(|r| r[1]).collect(),
            ),
            _ => (vec![reduced[0]], vec![reduced[1]]),
        };
        Ok(CrossEntropyOutput {
            loss,
            z_loss,
            lse,
            grad: (mode != GradMode::None).then_some(grad),
        })
    }

    /// Cross-entropy loss and its gradient w.r.t. the `[N, C]` logits
    /// (`N = targets.len()`, `C = classes`). See the module docs for the formulas.
    pub async fn cross_entropy<T: ClassIndex>(
        &self,
        logits: &[f32],
        targets: &[T],
        classes: usize,
        options: &CrossEntropyOptions<'_>,
    ) -> Result<CrossEntropyOutput> {
        self.cross_entropy_run(logits, targets, classes, options, GradMode::Separate)
            .await
    }

    /// [`GpuContext::cross_entropy`], blocking.
    ///
    /// ```
    /// # fn main() -> Result<(), wgpu_loss::Error> {
    /// use wgpu_loss::{CrossEntropyOptions, GpuContext};
    /// let ctx = GpuContext::new_blocking()?;
    /// // Probabilities [0.775, 0.116, 0.039, 0.070] as logits, true class 0.
    /// let logits: Vec<f32> = [0.775f32, 0.116, 0.039, 0.070].iter().map(|p| p.ln()).collect();
    /// let out = ctx.cross_entropy_blocking(&logits, &[0i64], 4, &CrossEntropyOptions::default())?;
    /// assert!((out.loss[0] - 0.25489).abs() < 1e-4);
    /// # Ok(()) }
    /// ```
    pub fn cross_entropy_blocking<T: ClassIndex>(
        &self,
        logits: &[f32],
        targets: &[T],
        classes: usize,
        options: &CrossEntropyOptions<'_>,
    ) -> Result<CrossEntropyOutput> {
        pollster::block_on(self.cross_entropy(logits, targets, classes, options))
    }

    /// Cross-entropy loss only: reads the logits once and writes nothing of size `N·C`.
    pub async fn cross_entropy_loss<T: ClassIndex>(
        &self,
        logits: &[f32],
        targets: &[T],
        classes: usize,
        options: &CrossEntropyOptions<'_>,
    ) -> Result<CrossEntropyOutput> {
        self.cross_entropy_run(logits, targets, classes, options, GradMode::None)
            .await
    }

    /// [`GpuContext::cross_entropy_loss`], blocking.
    pub fn cross_entropy_loss_blocking<T: ClassIndex>(
        &self,
        logits: &[f32],
        targets: &[T],
        classes: usize,
        options: &CrossEntropyOptions<'_>,
    ) -> Result<CrossEntropyOutput> {
        pollster::block_on(self.cross_entropy_loss(logits, targets, classes, options))
    }

    /// Cross-entropy with the gradient written over `logits` (the GPU kernel
    /// also overwrites its logits buffer, saving `N·C·4` bytes of device memory).
    /// The returned output's `grad` is `None`: the gradient is in `logits`.
    /// On error `logits` is left as it was.
    pub async fn cross_entropy_in_place<T: ClassIndex>(
        &self,
        logits: &mut [f32],
        targets: &[T],
        classes: usize,
        options: &CrossEntropyOptions<'_>,
    ) -> Result<CrossEntropyOutput> {
        let mut out = self
            .cross_entropy_run(logits, targets, classes, options, GradMode::InPlace)
            .await?;
        if let Some(grad) = out.grad.take() {
            logits.copy_from_slice(&grad);
        }
        Ok(out)
    }

    /// [`GpuContext::cross_entropy_in_place`], blocking.
    pub fn cross_entropy_in_place_blocking<T: ClassIndex>(
        &self,
        logits: &mut [f32],
        targets: &[T],
        classes: usize,
        options: &CrossEntropyOptions<'_>,
    ) -> Result<CrossEntropyOutput> {
        pollster::block_on(self.cross_entropy_in_place(logits, targets, classes, options))
    }
}
