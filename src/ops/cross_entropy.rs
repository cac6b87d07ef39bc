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
use crate::kernels::{Kernel, Storage, VecWidth};
use crate::ops::{
    check_gamma, check_grad_scale, check_matrix, check_values, Base, MatrixArg, Operand, Params,
    Reduction, RowLaunch, WholeArg,
};
use crate::tensor::{spec, DType, LossViews};

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
        check_grad_scale(self.grad_scale)?;
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

/// Which row-wise loss a problem computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowLoss {
    /// Cross-entropy with class-index targets.
    IndexTargets,
    /// Cross-entropy with probability targets.
    ProbTargets,
    /// Multiclass (softmax) focal loss.
    Focal,
}

impl RowLoss {
    fn kernel(self, mode: GradMode) -> Kernel {
        match (self, mode) {
            (RowLoss::IndexTargets, GradMode::None) => Kernel::CrossEntropyLoss,
            (RowLoss::IndexTargets, GradMode::Separate) => Kernel::CrossEntropyLossGrad,
            (RowLoss::IndexTargets, GradMode::InPlace) => Kernel::CrossEntropyLossGradInPlace,
            (RowLoss::ProbTargets, GradMode::None) => Kernel::CrossEntropySoftLoss,
            // The host API offers in-place only for index targets.
            (RowLoss::ProbTargets, _) => Kernel::CrossEntropySoftLossGrad,
            (RowLoss::Focal, GradMode::None) => Kernel::FocalLoss,
            (RowLoss::Focal, _) => Kernel::FocalLossGrad,
        }
    }
}

pub(crate) const FLAG_WEIGHTS: u32 = 1;
const FLAG_SOFTCAP: u32 = 2;
const FLAG_MEAN_BY_COUNT: u32 = 4;
const FLAG_EXPORT_LOSS: u32 = 8;
const FLAG_EXPORT_LSE: u32 = 16;

/// The device-side state of one row-loss problem, apart from the logits (and
/// probability targets): validated targets and weights, and the scalar and
/// per-row outputs.
pub(crate) struct CrossEntropyProblem<'a> {
    kind: RowLoss,
    pub(crate) classes: usize,
    pub(crate) reduction: Reduction,
    params: Params,
    width: VecWidth,
    targets: Operand<'a>,
    weights: Option<Operand<'a>>,
    scalars: wgpu::Buffer,
    pub(crate) row_out: wgpu::Buffer,
    pub(crate) result: wgpu::Buffer,
}

/// Checks probability targets: finite and non-negative. The error names the element.
fn check_prob_targets(probs: &[f32], classes: usize) -> Result<()> {
    check_values(
        "probability targets",
        probs,
        classes,
        |q| q.is_finite() && q >= 0.0,
        "probability targets must be finite and non-negative",
    )
}

/// The encode API takes weights as views; a host slice there is a mistake to report.
pub(crate) fn reject_host_weights(name: &'static str, given: bool) -> Result<()> {
    if given {
        return Err(Error::InvalidOption {
            name,
            value: f64::NAN,
            reason:
                "encode_* calls take weights as a GPU view (LossViews::weight), not a host slice",
        });
    }
    Ok(())
}

/// `ignore_index` as the kernels compare it against i32 targets on the GPU.
fn gpu_ignore_index(ignore_index: i64) -> Result<i32> {
    i32::try_from(ignore_index).map_err(|_| Error::InvalidOption {
        name: "ignore_index",
        value: ignore_index as f64,
        reason: "GPU-resident targets are i32, so ignore_index must fit in i32",
    })
}

/// Kernel parameters of cross-entropy options (targets and weights aside).
fn cross_entropy_params(options: &CrossEntropyOptions<'_>) -> Params {
    Params {
        ignore_index: IGNORED_ROW,
        flags: if options.softcap.is_some() {
            FLAG_SOFTCAP
        } else {
            0
        },
        smoothing: options.label_smoothing,
        z_loss: options.z_loss,
        softcap: options.softcap.unwrap_or(1.0),
        grad_scale: options.grad_scale,
        reduction: options.reduction.code(),
        ..Params::default()
    }
}

/// Validates a probability-target problem and returns its row count.
pub(crate) fn soft_rows(
    logits: &[f32],
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

/// Options and targets of a probability-target problem (host data).
pub(crate) fn check_soft_options(
    probs: &[f32],
    classes: usize,
    options: &CrossEntropyOptions<'_>,
) -> Result<()> {
    options.validate(classes)?;
    check_no_ignore_index(options)?;
    check_prob_targets(probs, classes)
}

/// PyTorch: "ignore_index is not supported for floating point target".
fn check_no_ignore_index(options: &CrossEntropyOptions<'_>) -> Result<()> {
    if options.ignore_index >= 0 {
        return Err(Error::InvalidOption {
            name: "ignore_index",
            value: options.ignore_index as f64,
            reason: "ignore_index is not supported with probability targets (leave it negative)",
        });
    }
    Ok(())
}

/// Options of [`GpuContext::focal_loss`] (multiclass, softmax); `Default` is
/// `gamma = 2`, no `alpha`, `ignore_index = -100`, `mean`.
#[derive(Clone, Copy, Debug)]
pub struct FocalOptions<'a> {
    /// Per-class `α`, length `C`, each in `[0, 1]`. `None`: all 1.
    pub alpha: Option<&'a [f32]>,
    /// Focusing parameter `γ ≥ 0`; `γ = 0` without `α` is cross-entropy.
    pub gamma: f32,
    /// Rows whose target equals this contribute nothing. Default -100.
    pub ignore_index: i64,
    /// How row losses are combined; `mean` divides by the count of kept rows.
    pub reduction: Reduction,
    /// Multiplies the returned gradient. Default 1.
    pub grad_scale: f32,
}

impl Default for FocalOptions<'_> {
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

impl FocalOptions<'_> {
    /// Checks every option against `C = classes`.
    pub fn validate(&self, classes: usize) -> Result<()> {
        if let Some(a) = self.alpha {
            if a.len() != classes {
                return Err(Error::LengthMismatch {
                    what: "alpha (one per class)",
                    expected: classes,
                    actual: a.len(),
                });
            }
            if let Some(&v) = a.iter().find(|v| !(0.0..=1.0).contains(*v)) {
                return Err(Error::InvalidOption {
                    name: "alpha",
                    value: f64::from(v),
                    reason: "each per-class alpha must be in [0, 1]",
                });
            }
        }
        check_gamma(self.gamma)?;
        check_grad_scale(self.grad_scale)?;
        Ok(())
    }
}

impl GpuContext {
    /// Uploads what a row-loss problem needs besides the logits.
    pub(crate) fn row_loss_problem<'a>(
        &self,
        kind: RowLoss,
        targets: Operand<'a>,
        rows: usize,
        classes: usize,
        weight: Option<Operand<'a>>,
        mut params: Params,
    ) -> Result<CrossEntropyProblem<'a>> {
        self.check_single_workgroup_passes(rows, classes)?;
        self.check_whole_binding("per-row loss buffer (16 bytes per row)", rows as u64 * 16)?;
        self.check_whole_binding("targets (4 bytes per row)", rows as u64 * 4)?;
        self.check_whole_binding("class weights", classes as u64 * 4)?;
        params.cols = u32::try_from(classes).map_err(|_| Error::TooLarge {
            what: "class count",
            requested: classes as u64,
            limit_name: "u32 columns",
            limit: u64::from(u32::MAX),
        })?;
        params.total_rows = u32::try_from(rows).map_err(|_| Error::TooLarge {
            what: "row count",
            requested: rows as u64,
            limit_name: "u32 rows",
            limit: u64::from(u32::MAX),
        })?;
        if weight.is_some() {
            params.flags |= FLAG_WEIGHTS;
        }
        let scalars = if kind == RowLoss::ProbTargets {
            // Probability targets: `mean` divides by N; nothing to count on the GPU.
            self.scratch_with("ce scalars", &[rows as f32, rows as f32, 0.0, 0.0])
        } else {
            self.scratch("ce scalars", 16)
        };
        Ok(CrossEntropyProblem {
            kind,
            classes,
            reduction: Reduction::from_code(params.reduction),
            params,
            // The weights vector is read with the row kernels' vector width.
            width: VecWidth::for_layout(classes, &[0]),
            targets,
            weights: weight,
            scalars,
            row_out: self.scratch_output("ce row out", rows * 4),
            result: self.scratch_output("ce result", 4),
        })
    }

    /// Validates index targets and options and uploads everything but the logits.
    pub(crate) fn cross_entropy_problem<T: ClassIndex>(
        &self,
        targets: &[T],
        classes: usize,
        options: &CrossEntropyOptions<'_>,
    ) -> Result<CrossEntropyProblem<'static>> {
        if classes == 0 {
            return Err(Error::ZeroCols);
        }
        options.validate(classes)?;
        let targets = checked_targets(targets, classes, options.ignore_index)?;
        let params = cross_entropy_params(options);
        let rows = targets.len();
        self.row_loss_problem(
            RowLoss::IndexTargets,
            Operand::Owned(self.scratch_with("targets", &targets)),
            rows,
            classes,
            options
                .weight
                .map(|w| Operand::Owned(self.scratch_with("weight", w))),
            params,
        )
    }

    /// Records the `mean` denominator / kept-row count / weight total pass
    /// (nothing for probability targets, whose denominator is `N`).
    pub(crate) fn encode_cross_entropy_denominator(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        p: &CrossEntropyProblem<'_>,
    ) -> Result<()> {
        if p.kind == RowLoss::ProbTargets {
            return Ok(());
        }
        self.encode_single(
            encoder,
            Kernel::CrossEntropyDenominator,
            p.width,
            &[
                p.targets.arg(2),
                p.weights
                    .as_ref()
                    .map_or(WholeArg::new(3, &self.placeholder), |w| w.arg(3)),
                WholeArg::new(4, &p.scalars),
            ],
            p.params,
        )
    }

    /// Records the per-row kernel over rows `row0..row0 + n`, whose logits
    /// (and probability targets) start at element 0 of their buffers and whose
    /// gradient goes to `grad`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode_cross_entropy_rows(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        p: &CrossEntropyProblem<'_>,
        mode: GradMode,
        logits: (&wgpu::Buffer, u64),
        probs: Option<(&wgpu::Buffer, u64)>,
        grad: Option<(&wgpu::Buffer, u64)>,
        (row0, n): (usize, usize),
        storage: Storage,
    ) -> Result<()> {
        let mut matrices = vec![MatrixArg {
            binding: 1,
            buffer: logits.0,
            offset: logits.1,
            base: Base::A,
            storage,
        }];
        if let Some((buffer, offset)) = probs {
            matrices.push(MatrixArg {
                binding: 8,
                buffer,
                offset,
                base: Base::B,
                storage: Storage::F32,
            });
        }
        if let (GradMode::Separate, Some((buffer, offset))) = (mode, grad) {
            matrices.push(MatrixArg {
                binding: 6,
                buffer,
                offset,
                base: Base::Out,
                storage,
            });
        }
        let mut whole = Vec::with_capacity(4);
        if p.kind != RowLoss::ProbTargets {
            whole.push(p.targets.arg(2));
        }
        whole.push(
            p.weights
                .as_ref()
                .map_or(WholeArg::new(3, &self.placeholder), |w| w.arg(3)),
        );
        whole.push(WholeArg::new(4, &p.scalars));
        whole.push(WholeArg::new(5, &p.row_out));
        self.encode_rows(
            encoder,
            RowLaunch {
                kernel: p.kind.kernel(mode),
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
        p: &CrossEntropyProblem<'_>,
        result: WholeArg<'_>,
    ) -> Result<()> {
        if p.reduction == Reduction::None {
            return Ok(());
        }
        self.encode_single(
            encoder,
            Kernel::CrossEntropyReduce,
            p.width,
            &[
                WholeArg::new(4, &p.scalars),
                WholeArg::new(5, &p.row_out),
                result,
            ],
            p.params,
        )
    }

    /// Runs a row-loss problem through the host API: denominator, row kernel
    /// over host chunks of the logits, reduction, readback.
    async fn row_loss_run(
        &self,
        problem: &CrossEntropyProblem<'_>,
        logits: &[f32],
        probs: Option<&[f32]>,
        mode: GradMode,
    ) -> Result<CrossEntropyOutput> {
        self.check_not_lost()?;
        let classes = problem.classes;
        let rows = logits.len() / classes;
        self.scoped("ce_denominator", || {
            let mut encoder = self.encoder("ce_denominator");
            self.encode_cross_entropy_denominator(&mut encoder, problem)?;
            self.queue.submit([encoder.finish()]);
            Ok(())
        })?;
        let kernel = problem.kind.kernel(mode);
        let mut grad = Vec::new();
        let chunk_rows = if rows == 0 {
            1
        } else {
            self.rows_per_window(classes)?
        };
        let mut r0 = 0;
        while r0 < rows {
            let n = chunk_rows.min(rows - r0);
            let span = r0 * classes..(r0 + n) * classes;
            let staging = self.scoped(kernel.entry_point(), || {
                let logits_buf = self.upload("logits", &logits[span.clone()]);
                let probs_buf = probs.map(|q| self.upload("probability targets", &q[span.clone()]));
                let grad_buf =
                    (mode == GradMode::Separate).then(|| self.output("grad", n * classes));
                let mut encoder = self.encoder(kernel.entry_point());
                self.encode_cross_entropy_rows(
                    &mut encoder,
                    problem,
                    mode,
                    (&logits_buf, 0),
                    probs_buf.as_deref().map(|b| (b, 0)),
                    grad_buf.as_deref().map(|b| (b, 0)),
                    (r0, n),
                    Storage::F32,
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
            self.encode_cross_entropy_reduce(
                &mut encoder,
                problem,
                WholeArg::new(7, &problem.result),
            )?;
            let row_staging = self.stage(&mut encoder, &problem.row_out, rows as u64 * 16);
            let result_staging = self.stage(&mut encoder, &problem.result, 8);
            self.queue.submit([encoder.finish()]);
            Ok((row_staging, result_staging))
        })?;
        let per_row = self.read_back::<[f32; 4]>(&row_staging, rows).await?;
        let reduced = self.read_back::<f32>(&result_staging, 2).await?;
        let lse = per_row.iter().map(|r| r[2]).collect();
        let (loss, z_loss) = match problem.reduction {
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

    async fn cross_entropy_run<T: ClassIndex>(
        &self,
        logits: &[f32],
        targets: &[T],
        classes: usize,
        options: &CrossEntropyOptions<'_>,
        mode: GradMode,
    ) -> Result<CrossEntropyOutput> {
        self.check_not_lost()?;
        check_matrix("logits", logits.len(), targets.len(), classes)?;
        let problem = self.cross_entropy_problem(targets, classes, options)?;
        self.row_loss_run(&problem, logits, None, mode).await
    }

    async fn soft_cross_entropy_run(
        &self,
        logits: &[f32],
        probs: &[f32],
        classes: usize,
        options: &CrossEntropyOptions<'_>,
        mode: GradMode,
    ) -> Result<CrossEntropyOutput> {
        self.check_not_lost()?;
        let rows = soft_rows(logits, probs, classes, options)?;
        let params = cross_entropy_params(options);
        let problem = self.row_loss_problem(
            RowLoss::ProbTargets,
            Operand::Owned(self.scratch("no index targets", 16)),
            rows,
            classes,
            options
                .weight
                .map(|w| Operand::Owned(self.scratch_with("weight", w))),
            params,
        )?;
        self.row_loss_run(&problem, logits, Some(probs), mode).await
    }

    async fn focal_run<T: ClassIndex>(
        &self,
        logits: &[f32],
        targets: &[T],
        classes: usize,
        options: &FocalOptions<'_>,
        mode: GradMode,
    ) -> Result<CrossEntropyOutput> {
        self.check_not_lost()?;
        check_matrix("logits", logits.len(), targets.len(), classes)?;
        options.validate(classes)?;
        let targets = checked_targets(targets, classes, options.ignore_index)?;
        let params = Params {
            ignore_index: IGNORED_ROW,
            flags: FLAG_MEAN_BY_COUNT,
            gamma: options.gamma,
            grad_scale: options.grad_scale,
            reduction: options.reduction.code(),
            ..Params::default()
        };
        let problem = self.row_loss_problem(
            RowLoss::Focal,
            Operand::Owned(self.scratch_with("targets", &targets)),
            targets.len(),
            classes,
            options
                .alpha
                .map(|a| Operand::Owned(self.scratch_with("alpha", a))),
            params,
        )?;
        self.row_loss_run(&problem, logits, None, mode).await
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

    /// Cross-entropy with probability targets `q` (`[N, C]`, like the logits):
    /// `q' = (1-ε)·q + ε/C`, `l_i = -Σ_c w[c]·q'_ic·log p_ic` (+ z-loss),
    /// `mean` divides by `N`; gradient `g_ij = p_ij·Σ_c w[c]·q'_ic - w[j]·q'_ij`
    /// (divided by `N` for `mean`), through the softcap when one is set.
    /// Targets need not sum to 1; negative or non-finite targets are an error.
    pub async fn cross_entropy_probs(
        &self,
        logits: &[f32],
        probs: &[f32],
        classes: usize,
        options: &CrossEntropyOptions<'_>,
    ) -> Result<CrossEntropyOutput> {
        self.soft_cross_entropy_run(logits, probs, classes, options, GradMode::Separate)
            .await
    }

    /// [`GpuContext::cross_entropy_probs`], blocking.
    pub fn cross_entropy_probs_blocking(
        &self,
        logits: &[f32],
        probs: &[f32],
        classes: usize,
        options: &CrossEntropyOptions<'_>,
    ) -> Result<CrossEntropyOutput> {
        pollster::block_on(self.cross_entropy_probs(logits, probs, classes, options))
    }

    /// [`GpuContext::cross_entropy_probs`] without the gradient.
    pub async fn cross_entropy_probs_loss(
        &self,
        logits: &[f32],
        probs: &[f32],
        classes: usize,
        options: &CrossEntropyOptions<'_>,
    ) -> Result<CrossEntropyOutput> {
        self.soft_cross_entropy_run(logits, probs, classes, options, GradMode::None)
            .await
    }

    /// [`GpuContext::cross_entropy_probs_loss`], blocking.
    pub fn cross_entropy_probs_loss_blocking(
        &self,
        logits: &[f32],
        probs: &[f32],
        classes: usize,
        options: &CrossEntropyOptions<'_>,
    ) -> Result<CrossEntropyOutput> {
        pollster::block_on(self.cross_entropy_probs_loss(logits, probs, classes, options))
    }

    /// Multiclass (softmax) focal loss and its gradient:
    /// `l_i = -α[y_i]·(1 - p_{i,y_i})^γ·log p_{i,y_i}`, zero on ignored rows;
    /// `mean` divides by the count of kept rows. With `q = 1 - p_y` and
    /// `lp = log p_y` the gradient is `g_ij = F_i·(p_ij - [j = y_i])`,
    /// `F_i = α[y_i]·(q^γ - γ·q^(γ-1)·p_y·lp)`, from `∂p_y/∂x_j = p_y([j = y] - p_j)`
    /// and `∂lp/∂x_j = [j = y] - p_j`. The output's `lse` holds each row's logsumexp.
    pub async fn focal_loss<T: ClassIndex>(
        &self,
        logits: &[f32],
        targets: &[T],
        classes: usize,
        options: &FocalOptions<'_>,
    ) -> Result<CrossEntropyOutput> {
        self.focal_run(logits, targets, classes, options, GradMode::Separate)
            .await
    }

    /// [`GpuContext::focal_loss`], blocking.
    pub fn focal_loss_blocking<T: ClassIndex>(
        &self,
        logits: &[f32],
        targets: &[T],
        classes: usize,
        options: &FocalOptions<'_>,
    ) -> Result<CrossEntropyOutput> {
        pollster::block_on(self.focal_loss(logits, targets, classes, options))
    }

    /// [`GpuContext::focal_loss`] without the gradient.
    pub async fn focal_loss_only<T: ClassIndex>(
        &self,
        logits: &[f32],
        targets: &[T],
        classes: usize,
        options: &FocalOptions<'_>,
    ) -> Result<CrossEntropyOutput> {
        self.focal_run(logits, targets, classes, options, GradMode::None)
            .await
    }

    /// [`GpuContext::focal_loss_only`], blocking.
    pub fn focal_loss_only_blocking<T: ClassIndex>(
        &self,
        logits: &[f32],
        targets: &[T],
        classes: usize,
        options: &FocalOptions<'_>,
    ) -> Result<CrossEntropyOutput> {
        pollster::block_on(self.focal_loss_only(logits, targets, classes, options))
    }

    /// Checks the views of a row loss and records denominator, row kernel,
    /// reduction and export into `encoder`, inside error scopes so a wgpu
    /// validation error comes back as `Err`. Nothing is submitted.
    fn encode_row_loss(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &LossViews<'_>,
        kind: RowLoss,
        params: Params,
    ) -> Result<()> {
        self.scoped(kind.kernel(GradMode::Separate).entry_point(), || {
            self.encode_row_loss_checked(encoder, views, kind, params)
        })
    }

    fn encode_row_loss_checked(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &LossViews<'_>,
        kind: RowLoss,
        mut params: Params,
    ) -> Result<()> {
        let (rows, classes) = (views.input.rows, views.input.cols);
        if classes == 0 {
            return Err(Error::ZeroCols);
        }
        if rows == 0 {
            return Err(Error::InvalidView {
                name: "input",
                problem: "has no rows; there is nothing to encode".into(),
            });
        }
        let dtype = if views.input.dtype == DType::F16 {
            DType::F16
        } else {
            DType::F32
        };
        self.check_view(&views.input, spec("input", dtype, rows, classes))?;
        match kind {
            RowLoss::ProbTargets => {
                self.check_view(&views.target, spec("target", DType::F32, rows, classes))?
            }
            _ => self.check_view(&views.target, spec("target", DType::I32, rows, 1))?,
        }
        if let Some(w) = &views.weight {
            self.check_view(w, spec("weight", DType::F32, w.rows, w.cols))?;
            if w.len() != classes {
                return Err(Error::InvalidView {
                    name: "weight",
                    problem: format!(
                        "has {} elements, expected one per class ({classes})",
                        w.len()
                    ),
                });
            }
        }
        if views.pos_weight.is_some() {
            return Err(Error::InvalidView {
                name: "pos_weight",
                problem: "is only used by binary cross-entropy with logits".into(),
            });
        }
        let reduced = Reduction::from_code(params.reduction) != Reduction::None;
        let loss_rows = if reduced { 2 } else { rows };
        self.check_view(&views.loss, spec("loss", DType::F32, loss_rows, 1))?;
        self.check_whole_binding("loss", views.loss.bytes())?;
        if let Some(l) = &views.lse {
            self.check_view(l, spec("lse", DType::F32, rows, 1))?;
            self.check_whole_binding("lse", l.bytes())?;
        }
        if kind != RowLoss::ProbTargets {
            self.check_whole_binding("target", views.target.bytes())?;
        }
        let mode = match &views.grad {
            None => GradMode::None,
            Some(g) => {
                self.check_view(g, spec("grad", dtype, rows, classes))?;
                let same_buffer = g.buffer == views.input.buffer;
                if same_buffer && g.offset == views.input.offset {
                    if kind != RowLoss::IndexTargets {
                        return Err(Error::InvalidView {
                            name: "grad",
                            problem:
                                "may alias the input only for cross-entropy with index targets"
                                    .into(),
                        });
                    }
                    GradMode::InPlace
                } else {
                    let (a, b) = (views.input.offset, g.offset);
                    if same_buffer && a < b + g.bytes() && b < a + views.input.bytes() {
                        return Err(Error::InvalidView {
                            name: "grad",
                            problem: "partly overlaps the input".into(),
                        });
                    }
                    GradMode::Separate
                }
            }
        };
        if views.lse.is_some() {
            params.flags |= FLAG_EXPORT_LSE;
        }
        if !reduced {
            params.flags |= FLAG_EXPORT_LOSS;
        }
        let targets = match kind {
            RowLoss::ProbTargets => Operand::Owned(self.scratch("no index targets", 16)),
            _ => Operand::View(views.target),
        };
        let problem = self.row_loss_problem(
            kind,
            targets,
            rows,
            classes,
            views.weight.map(Operand::View),
            params,
        )?;
        self.encode_cross_entropy_denominator(encoder, &problem)?;
        let offset = |v: &crate::tensor::GpuTensor<'_>| v.offset_elems();
        self.encode_cross_entropy_rows(
            encoder,
            &problem,
            mode,
            (views.input.buffer, offset(&views.input)),
            (kind == RowLoss::ProbTargets).then(|| (views.target.buffer, offset(&views.target))),
            views.grad.as_ref().map(|g| (g.buffer, offset(g))),
            (0, rows),
            dtype.storage(),
        )?;
        if reduced {
            self.encode_cross_entropy_reduce(encoder, &problem, WholeArg::view(7, &views.loss))?;
        }
        if params.flags & (FLAG_EXPORT_LOSS | FLAG_EXPORT_LSE) != 0 {
            let unused_loss = self.scratch("unused", 16);
            let unused_lse = self.scratch("unused", 16);
            let loss = if reduced {
                WholeArg::new(9, &unused_loss)
            } else {
                WholeArg::view(9, &views.loss)
            };
            let lse = views
                .lse
                .as_ref()
                .map_or(WholeArg::new(10, &unused_lse), |l| WholeArg::view(10, l));
            self.encode_single(
                encoder,
                Kernel::CrossEntropyExport,
                VecWidth::Scalar,
                &[WholeArg::new(5, &problem.row_out), loss, lse],
                problem.params,
            )?;
        }
        Ok(())
    }

    /// Records cross-entropy with class-index targets (`views.target`: i32
    /// `[N, 1]`) into `encoder` without submitting or waiting: loss into
    /// `views.loss`, gradient into `views.grad` (which may be `views.input`
    /// itself, for the in-place form) and logsumexp into `views.lse`. Class
    /// weights come from `views.weight`; `options.weight` must be `None`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use wgpu::util::DeviceExt;
    /// use wgpu_loss::{CrossEntropyOptions, GpuContext, GpuTensor, LossViews};
    /// let ctx = GpuContext::new_blocking()?;
    /// let dev = ctx.device();
    /// let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    /// let logits = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
    ///     label: None, contents: bytemuck::cast_slice(&[2.0f32, 0.0, 0.0, 1.0]), usage: storage });
    /// let targets = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
    ///     label: None, contents: bytemuck::cast_slice(&[0i32, 1]), usage: storage });
    /// let loss = dev.create_buffer(&wgpu::BufferDescriptor {
    ///     label: None, size: 8, usage: storage, mapped_at_creation: false });
    /// let mut encoder = dev.create_command_encoder(&Default::default());
    /// let views = LossViews {
    ///     grad: Some(GpuTensor::f32_matrix(&logits, 0, 2, 2)), // in place
    ///     ..LossViews::new(
    ///         GpuTensor::f32_matrix(&logits, 0, 2, 2),
    ///         GpuTensor::i32_vector(&targets, 0, 2),
    ///         GpuTensor::f32_vector(&loss, 0, 2),
    ///     )
    /// };
    /// ctx.encode_cross_entropy(&mut encoder, &views, &CrossEntropyOptions::default())?;
    /// ctx.queue().submit([encoder.finish()]);
    /// # Ok(()) }
    /// ```
    pub fn encode_cross_entropy(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &LossViews<'_>,
        options: &CrossEntropyOptions<'_>,
    ) -> Result<()> {
        reject_host_weights("weight", options.weight.is_some())?;
        options.validate(views.input.cols)?;
        let mut params = cross_entropy_params(options);
        params.ignore_index = gpu_ignore_index(options.ignore_index)?;
        self.encode_row_loss(encoder, views, RowLoss::IndexTargets, params)
    }

    /// Records cross-entropy with probability targets (`views.target`: f32
    /// `[N, C]`) into `encoder`; see [`GpuContext::cross_entropy_probs`] for
    /// the formulas and [`GpuContext::encode_cross_entropy`] for the views.
    pub fn encode_cross_entropy_probs(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &LossViews<'_>,
        options: &CrossEntropyOptions<'_>,
    ) -> Result<()> {
        reject_host_weights("weight", options.weight.is_some())?;
        options.validate(views.input.cols)?;
        check_no_ignore_index(options)?;
        self.encode_row_loss(
            encoder,
            views,
            RowLoss::ProbTargets,
            cross_entropy_params(options),
        )
    }

    /// Records the multiclass focal loss (`views.target`: i32 `[N, 1]`,
    /// per-class `α` in `views.weight`) into `encoder`; see
    /// [`GpuContext::focal_loss`]. `options.alpha` must be `None`.
    pub fn encode_focal_loss(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &LossViews<'_>,
        options: &FocalOptions<'_>,
    ) -> Result<()> {
        reject_host_weights("alpha", options.alpha.is_some())?;
        options.validate(views.input.cols)?;
        let params = Params {
            ignore_index: gpu_ignore_index(options.ignore_index)?,
            flags: FLAG_MEAN_BY_COUNT,
            gamma: options.gamma,
            grad_scale: options.grad_scale,
            reduction: options.reduction.code(),
            ..Params::default()
        };
        self.encode_row_loss(encoder, views, RowLoss::Focal, params)
    }
}
