//! GPU host code of cross-entropy (class-index and probability targets)
//! and the multiclass focal loss; the definitions and formulas are in
//! [`crate::loss::cross_entropy`].
//!
//! Kernels: a blocked reduction (many workgroups over blocks of rows and
//! classes, then one workgroup folding at most 32768 block records) computes
//! `D`, `K`, `W` where `mean` or weighted smoothing reads them; one workgroup
//! per row computes `(max, sum)` online, the row loss, and then writes the
//! gradient from a second read of the row (loss-only mode reads the logits
//! once and writes nothing of size `N·C`); a second blocked reduction sums
//! the row losses. Every sum runs in a fixed order, with no float atomics and
//! no readback in between: results are bitwise reproducible on a given
//! adapter.

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernels::flags::cross_entropy::{
    FLAG_EXPORT_LOSS, FLAG_EXPORT_LSE, FLAG_MEAN_BY_COUNT, FLAG_SOFTCAP, FLAG_WEIGHTS,
};
use crate::kernels::slot::cross_entropy as ce;
use crate::kernels::{Kernel, Storage, VecWidth, WORKGROUP_SIZE};
use crate::loss::cross_entropy::{
    soft_rows, CrossEntropyOptions, CrossEntropyOutput, FocalOptions,
};
use crate::loss::{check_matrix, checked_targets, ClassIndex, Reduction, Request, IGNORED_ROW};
use crate::ops::{Base, MatrixArg, Operand, Params, RowLaunch, WholeArg};
use crate::pool::Scratch;
use crate::tensor::{
    spec, CrossEntropyViews, DType, FocalViews, GpuTensor, HostFloat, LossViews, ProbTargetViews,
};

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
    /// Only index targets have an in-place kernel; the others write their
    /// gradient into a buffer of its own when asked for it in place.
    fn mode(self, requested: GradMode) -> GradMode {
        match (self, requested) {
            (RowLoss::IndexTargets, _) | (_, GradMode::None) => requested,
            _ => GradMode::Separate,
        }
    }

    fn kernel(self, mode: GradMode) -> Kernel {
        match (self, mode) {
            (RowLoss::IndexTargets, GradMode::None) => Kernel::CrossEntropyLoss,
            (RowLoss::IndexTargets, GradMode::Separate) => Kernel::CrossEntropyLossGrad,
            (RowLoss::IndexTargets, GradMode::InPlace) => Kernel::CrossEntropyLossGradInPlace,
            (RowLoss::ProbTargets, GradMode::None) => Kernel::CrossEntropySoftLoss,
            (RowLoss::ProbTargets, _) => Kernel::CrossEntropySoftLossGrad,
            (RowLoss::Focal, GradMode::None) => Kernel::FocalLoss,
            (RowLoss::Focal, _) => Kernel::FocalLossGrad,
        }
    }
}

/// The device-side state of one row-loss problem, apart from the logits (and
/// probability targets): validated targets and weights, and the scalar and
/// per-row outputs.
pub(crate) struct CrossEntropyProblem<'a> {
    kind: RowLoss,
    pub(crate) classes: usize,
    pub(crate) reduction: Reduction,
    pub(crate) params: Params,
    width: VecWidth,
    targets: Operand<'a>,
    weights: Option<Operand<'a>>,
    pub(crate) scalars: Scratch,
    pub(crate) row_out: Scratch,
    pub(crate) result: Scratch,
}

/// How a row-loss problem's scratch is used, which decides where it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Submits {
    /// Recorded into one encoder by one `encode_*` call: the encode pool's
    /// reuse rule holds (each buffer written before it is read, in passes
    /// that run together).
    One,
    /// Written by one submission and read by a later one (the host API):
    /// pooled scratch could be overwritten in between by another caller's
    /// encoder that used the same buffer, so these buffers are the call's own.
    Several,
}

/// Whether the denominator pass runs: where `mean` (the denominator and the
/// kept rows) or weighted label smoothing (the weight total) reads it.
fn runs_denominator(kind: RowLoss, reduction: u32, weighted: bool, smoothing: f32) -> bool {
    kind != RowLoss::ProbTargets
        && (Reduction::from_code(reduction) == Reduction::Mean || (weighted && smoothing > 0.0))
}

/// `ignore_index` as the kernels compare it against i32 targets on the GPU.
pub(crate) fn gpu_ignore_index(ignore_index: i64) -> Result<i32> {
    i32::try_from(ignore_index).map_err(|_| Error::InvalidOption {
        name: "ignore_index",
        value: ignore_index as f64,
        reason: "GPU-resident targets are i32, so ignore_index must fit in i32",
    })
}

/// The row kernel's output mode for a host request: in place where the
/// loss has an in-place kernel (index targets; [`RowLoss::kernel`] maps the
/// others to their separate-buffer kernel).
fn grad_mode(request: Request) -> GradMode {
    match request {
        Request::Loss => GradMode::None,
        Request::LossAndGrad => GradMode::Separate,
        Request::LossAndGradInPlace => GradMode::InPlace,
    }
}

/// Kernel parameters of focal options; `ignore_index` as the kernel compares it.
fn focal_params<W: ?Sized>(options: &FocalOptions<'_, W>, ignore_index: i32) -> Params {
    Params {
        ignore_index,
        flags: FLAG_MEAN_BY_COUNT,
        gamma: options.gamma,
        grad_scale: options.grad_scale,
        reduction: options.reduction.code(),
        ..Params::default()
    }
}

/// Kernel parameters of cross-entropy options (targets and weights aside).
pub(crate) fn cross_entropy_params<W: ?Sized>(options: &CrossEntropyOptions<'_, W>) -> Params {
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

impl GpuContext {
    /// `elems` f32 of a problem's scratch, poisoned like outputs.
    fn problem_scratch(&self, submits: Submits, label: &str, elems: usize) -> Scratch {
        match submits {
            Submits::One => self.scratch_output(label, elems),
            Submits::Several => Scratch::shared(self.fresh_output(label, elems)),
        }
    }

    /// Uploads what a row-loss problem needs besides the logits. `submits`:
    /// how the problem's scratch (scalars, row results, result) lives.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn row_loss_problem<'a>(
        &self,
        submits: Submits,
        kind: RowLoss,
        targets: Operand<'a>,
        rows: usize,
        classes: usize,
        weight: Option<Operand<'a>>,
        mut params: Params,
    ) -> Result<CrossEntropyProblem<'a>> {
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
            self.constant_buffer("ce scalars", &[rows as f32, rows as f32, 0.0, 0.0])
        } else if runs_denominator(kind, params.reduction, weight.is_some(), params.smoothing) {
            // The denominator pass writes all four.
            self.problem_scratch(submits, "ce scalars", 4)
        } else {
            // What the denominator pass would write where it does not run
            // (`encode_cross_entropy_denominator`): W = C without weights.
            self.constant_buffer("ce scalars", &[0.0, 0.0, classes as f32, 0.0])
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
            row_out: self.problem_scratch(submits, "ce row out", rows * 4),
            result: self.problem_scratch(submits, "ce result", 4),
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
            Submits::Several,
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

    /// Records the `mean` denominator / kept-row count / weight total pass,
    /// a blocked reduction over the rows and classes, where something reads
    /// them: `mean` (the denominator and the kept rows) or label smoothing
    /// with class weights (their total; without weights the host wrote `C`).
    /// Nothing for probability targets, whose denominator is `N`.
    pub(crate) fn encode_cross_entropy_denominator(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        p: &CrossEntropyProblem<'_>,
    ) -> Result<()> {
        if !runs_denominator(
            p.kind,
            p.params.reduction,
            p.weights.is_some(),
            p.params.smoothing,
        ) {
            return Ok(());
        }
        let rows = p.params.total_rows as usize;
        self.encode_blocked_reduction(
            encoder,
            (
                Kernel::CrossEntropyDenominatorPartial,
                Kernel::CrossEntropyDenominator,
            ),
            p.width,
            &[
                p.targets.arg(ce::TARGETS),
                p.weights
                    .as_ref()
                    .map_or(WholeArg::new(ce::WEIGHTS, &self.placeholder), |w| {
                        w.arg(ce::WEIGHTS)
                    }),
            ],
            &[WholeArg::new(ce::SCALARS, &p.scalars)],
            p.params,
            // Targets per row (class weights are in cache), and blocks that
            // cover the weights' vectors where there are weights (as the
            // fold's `fold_records` counts them).
            (
                if p.weights.is_some() {
                    rows.max(p.classes.div_ceil(p.width.lanes()))
                } else {
                    rows
                },
                4,
            ),
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
            binding: ce::LOGITS,
            buffer: logits.0,
            offset: logits.1,
            base: Base::A,
            storage,
        }];
        if let Some((buffer, offset)) = probs {
            matrices.push(MatrixArg {
                binding: ce::SOFT_TARGETS,
                buffer,
                offset,
                base: Base::B,
                storage: Storage::F32,
            });
        }
        if let (GradMode::Separate, Some((buffer, offset))) = (mode, grad) {
            matrices.push(MatrixArg {
                binding: ce::GRAD,
                buffer,
                offset,
                base: Base::Out,
                storage,
            });
        }
        let mut whole = Vec::with_capacity(4);
        if p.kind != RowLoss::ProbTargets {
            whole.push(p.targets.arg(ce::TARGETS));
        }
        whole.push(
            p.weights
                .as_ref()
                .map_or(WholeArg::new(ce::WEIGHTS, &self.placeholder), |w| {
                    w.arg(ce::WEIGHTS)
                }),
        );
        whole.push(WholeArg::new(ce::SCALARS, &p.scalars));
        whole.push(WholeArg::new(ce::ROW_OUT, &p.row_out));
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
        self.encode_blocked_reduction(
            encoder,
            (
                Kernel::CrossEntropyReducePartial,
                Kernel::CrossEntropyReduce,
            ),
            p.width,
            &[WholeArg::new(ce::ROW_OUT, &p.row_out)],
            &[WholeArg::new(ce::SCALARS, &p.scalars), result],
            p.params,
            (p.params.total_rows as usize, 16),
        )
    }

    /// Records `ce_export` (one row per invocation) with `args` (row results,
    /// loss rows, lse rows) and `params`' export flags.
    pub(crate) fn encode_cross_entropy_export(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        p: &CrossEntropyProblem<'_>,
        args: &[WholeArg<'_>],
        params: Params,
    ) -> Result<()> {
        let rows = p.params.total_rows as usize;
        self.encode_grid(
            encoder,
            Kernel::CrossEntropyExport,
            VecWidth::Scalar,
            args,
            params,
            self.grid(rows.div_ceil(WORKGROUP_SIZE as usize))?,
            crate::plan::Traffic {
                items_per_workgroup: u64::from(WORKGROUP_SIZE),
                bytes_read: rows as u64 * 16,
                bytes_written: rows as u64 * 4 * args.len().saturating_sub(1) as u64,
                load_bytes: 0,
            },
        )
    }

    /// Runs a row-loss problem through the host API: denominator, row kernel
    /// over host chunks of the logits, reduction, readback.
    async fn row_loss_run<F: HostFloat>(
        &self,
        problem: &CrossEntropyProblem<'_>,
        logits: &[F],
        probs: Option<&[f32]>,
        mode: GradMode,
    ) -> Result<CrossEntropyOutput> {
        let mode = problem.kind.mode(mode);
        let classes = problem.classes;
        let rows = logits.len() / classes;
        self.scoped("ce_denominator", || {
            let mut encoder = self.encoder("ce_denominator");
            self.encode_cross_entropy_denominator(&mut encoder, problem)?;
            self.queue.submit([encoder.finish()]);
            Ok(())
        })
        .await?;
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
            let staging = self
                .scoped(kernel.entry_point(), || {
                    let logits_buf = self.upload("logits", &logits[span.clone()]);
                    let probs_buf =
                        probs.map(|q| self.upload("probability targets", &q[span.clone()]));
                    let grad_buf = (mode == GradMode::Separate)
                        .then(|| self.matrix_output("grad", n * classes, F::DTYPE));
                    let mut encoder = self.encoder(kernel.entry_point());
                    self.encode_cross_entropy_rows(
                        &mut encoder,
                        problem,
                        mode,
                        (&logits_buf, 0),
                        probs_buf.as_deref().map(|b| (b, 0)),
                        grad_buf.as_deref().map(|b| (b, 0)),
                        (r0, n),
                        F::DTYPE.storage(),
                    )?;
                    let written = match mode {
                        GradMode::None => None,
                        GradMode::Separate => grad_buf.as_ref(),
                        GradMode::InPlace => Some(&logits_buf),
                    };
                    let staging = written.map(|b| {
                        self.stage(&mut encoder, b, (n * classes) as u64 * F::DTYPE.size())
                    });
                    self.queue.submit([encoder.finish()]);
                    Ok(staging)
                })
                .await?;
            if let Some(staging) = staging {
                grad.extend(self.read_back_widened::<F>(&staging, n * classes).await?);
            }
            r0 += n;
        }

        let (row_staging, result_staging) = self
            .scoped("ce_reduce", || {
                let mut encoder = self.encoder("ce_reduce");
                self.encode_cross_entropy_reduce(
                    &mut encoder,
                    problem,
                    WholeArg::new(ce::RESULT, &problem.result),
                )?;
                let row_staging = self.stage(&mut encoder, &problem.row_out, rows as u64 * 16);
                let result_staging = self.stage(&mut encoder, &problem.result, 8);
                self.queue.submit([encoder.finish()]);
                Ok((row_staging, result_staging))
            })
            .await?;
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

    /// Cross-entropy with class-index targets: `N = targets.len()` rows of
    /// `C = classes` logits, `[N, C]` row-major. See
    /// [`crate::loss::cross_entropy`] for the formulas; `request` says whether
    /// the gradient is computed ([`Request`]).
    ///
    /// ```
    /// # fn main() -> Result<(), wgpu_loss::Error> {
    /// use wgpu_loss::{block_on, CrossEntropyOptions, GpuContext, Request};
    /// let ctx = block_on(GpuContext::new())?;
    /// // Probabilities [0.775, 0.116, 0.039, 0.070] as logits, true class 0.
    /// let logits: Vec<f32> = [0.775f32, 0.116, 0.039, 0.070].iter().map(|p| p.ln()).collect();
    /// let options = CrossEntropyOptions::default();
    /// let out = block_on(ctx.cross_entropy(&logits, &[0i64], 4, &options, Request::LossAndGrad))?;
    /// assert!((out.loss[0] - 0.25489).abs() < 1e-4);
    /// assert_eq!(out.grad.map(|g| g.len()), Some(4));
    /// # Ok(()) }
    /// ```
    pub async fn cross_entropy<T: ClassIndex, F: HostFloat>(
        &self,
        logits: &[F],
        targets: &[T],
        classes: usize,
        options: &CrossEntropyOptions<'_>,
        request: Request,
    ) -> Result<CrossEntropyOutput> {
        self.check_errors().await?;
        check_matrix("logits", logits.len(), targets.len(), classes)?;
        let problem = self.cross_entropy_problem(targets, classes, options)?;
        self.row_loss_run(&problem, logits, None, grad_mode(request))
            .await
    }

    /// Cross-entropy with probability targets `probs`, `[N, C]` like the
    /// logits (`C = classes`). See [`crate::loss::cross_entropy`].
    pub async fn cross_entropy_probs<F: HostFloat>(
        &self,
        logits: &[F],
        probs: &[f32],
        classes: usize,
        options: &CrossEntropyOptions<'_>,
        request: Request,
    ) -> Result<CrossEntropyOutput> {
        self.check_errors().await?;
        let rows = soft_rows(logits, probs, classes, options)?;
        let params = cross_entropy_params(options);
        let problem = self.row_loss_problem(
            Submits::Several,
            RowLoss::ProbTargets,
            Operand::Owned(self.placeholder.clone()),
            rows,
            classes,
            options
                .weight
                .map(|w| Operand::Owned(self.scratch_with("weight", w))),
            params,
        )?;
        self.row_loss_run(&problem, logits, Some(probs), grad_mode(request))
            .await
    }

    /// The multiclass (softmax) focal loss with class-index targets. See
    /// [`crate::loss::cross_entropy`]; the output's `lse` holds each row's
    /// logsumexp and its `z_loss` is zeros.
    pub async fn focal_loss<T: ClassIndex, F: HostFloat>(
        &self,
        logits: &[F],
        targets: &[T],
        classes: usize,
        options: &FocalOptions<'_>,
        request: Request,
    ) -> Result<CrossEntropyOutput> {
        self.check_errors().await?;
        check_matrix("logits", logits.len(), targets.len(), classes)?;
        options.validate(classes)?;
        let targets = checked_targets(targets, classes, options.ignore_index)?;
        let params = focal_params(options, IGNORED_ROW);
        let problem = self.row_loss_problem(
            Submits::Several,
            RowLoss::Focal,
            Operand::Owned(self.scratch_with("targets", &targets)),
            targets.len(),
            classes,
            options
                .alpha
                .map(|a| Operand::Owned(self.scratch_with("alpha", a))),
            params,
        )?;
        self.row_loss_run(&problem, logits, None, grad_mode(request))
            .await
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
        self.scoped_now(kind.kernel(GradMode::Separate).entry_point(), || {
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
                name: "logits",
                problem: "has no rows; there is nothing to encode".into(),
            });
        }
        let dtype = match views.input.dtype {
            DType::F16 | DType::BF16 => views.input.dtype,
            _ => DType::F32,
        };
        self.check_view(&views.input, spec("logits", dtype, rows, classes))?;
        match kind {
            RowLoss::ProbTargets => {
                self.check_view(&views.target, spec("targets", DType::F32, rows, classes))?
            }
            _ => self.check_view(&views.target, spec("targets", DType::I32, rows, 1))?,
        }
        if let Some(w) = &views.weight {
            let name = if kind == RowLoss::Focal {
                "alpha"
            } else {
                "weight"
            };
            self.check_view(w, spec(name, DType::F32, w.rows, w.cols))?;
            if w.len() != classes {
                return Err(Error::InvalidView {
                    name,
                    problem: format!(
                        "has {} elements, expected one per class ({classes})",
                        w.len()
                    ),
                });
            }
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
            self.check_whole_binding("targets", views.target.bytes())?;
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
                                "may alias the logits only for cross-entropy with index targets"
                                    .into(),
                        });
                    }
                    GradMode::InPlace
                } else {
                    crate::tensor::reject_partial_overlap(
                        ("grad", g),
                        &[("logits", &views.input)],
                    )?;
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
            RowLoss::ProbTargets => Operand::Owned(self.placeholder.clone()),
            _ => Operand::View(views.target),
        };
        let problem = self.row_loss_problem(
            Submits::One,
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
            self.encode_cross_entropy_reduce(
                encoder,
                &problem,
                WholeArg::view(ce::RESULT, &views.loss),
            )?;
        }
        if params.flags & (FLAG_EXPORT_LOSS | FLAG_EXPORT_LSE) != 0 {
            let unused_loss = self.scratch("unused", 16);
            let unused_lse = self.scratch("unused", 16);
            let loss = if reduced {
                WholeArg::new(ce::LOSS_ROWS, &unused_loss)
            } else {
                WholeArg::view(ce::LOSS_ROWS, &views.loss)
            };
            let lse = views
                .lse
                .as_ref()
                .map_or(WholeArg::new(ce::LSE_ROWS, &unused_lse), |l| {
                    WholeArg::view(ce::LSE_ROWS, l)
                });
            self.encode_cross_entropy_export(
                encoder,
                &problem,
                &[WholeArg::new(ce::ROW_OUT, &problem.row_out), loss, lse],
                problem.params,
            )?;
        }
        Ok(())
    }

    /// Records cross-entropy with class-index targets into `encoder` without
    /// submitting or waiting: loss into `views.loss`, the gradient where
    /// `views.grad` says, logsumexp into `views.lse`. Class weights are a
    /// view in the options. See [`crate::loss::cross_entropy`] for the
    /// formulas and the crate docs ("Errors") for how device errors come back.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use wgpu::util::DeviceExt;
    /// use wgpu_loss::{block_on, CrossEntropyOptions, CrossEntropyViews, GpuContext, GpuTensor, GradOutput};
    /// let ctx = block_on(GpuContext::new())?;
    /// let dev = ctx.device();
    /// let storage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    /// let logits = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
    ///     label: None, contents: bytemuck::cast_slice(&[2.0f32, 0.0, 0.0, 1.0]), usage: storage });
    /// let targets = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
    ///     label: None, contents: bytemuck::cast_slice(&[0i32, 1]), usage: storage });
    /// let loss = dev.create_buffer(&wgpu::BufferDescriptor {
    ///     label: None, size: 8, usage: storage, mapped_at_creation: false });
    /// let mut encoder = dev.create_command_encoder(&Default::default());
    /// let views = CrossEntropyViews {
    ///     logits: GpuTensor::f32_matrix(&logits, 0, 2, 2),
    ///     targets: GpuTensor::i32_vector(&targets, 0, 2),
    ///     loss: GpuTensor::f32_vector(&loss, 0, 2),
    ///     grad: GradOutput::InPlace,
    ///     lse: None,
    /// };
    /// ctx.encode_cross_entropy(&mut encoder, &views, &CrossEntropyOptions::default())?;
    /// ctx.queue().submit([encoder.finish()]);
    /// block_on(ctx.check_errors())?;
    /// # Ok(()) }
    /// ```
    pub fn encode_cross_entropy(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &CrossEntropyViews<'_>,
        options: &CrossEntropyOptions<'_, GpuTensor<'_>>,
    ) -> Result<()> {
        options.validate_scalars()?;
        let mut params = cross_entropy_params(options);
        params.ignore_index = gpu_ignore_index(options.ignore_index)?;
        let views = views.merged(options.weight.copied());
        self.encode_row_loss(encoder, &views, RowLoss::IndexTargets, params)
    }

    /// Records cross-entropy with probability targets into `encoder`; see
    /// [`GpuContext::encode_cross_entropy`].
    pub fn encode_cross_entropy_probs(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &ProbTargetViews<'_>,
        options: &CrossEntropyOptions<'_, GpuTensor<'_>>,
    ) -> Result<()> {
        options.validate_scalars()?;
        options.check_no_ignore_index()?;
        let views = views.merged(options.weight.copied());
        self.encode_row_loss(
            encoder,
            &views,
            RowLoss::ProbTargets,
            cross_entropy_params(options),
        )
    }

    /// Records the multiclass focal loss into `encoder` (per-class `α` a
    /// view in the options); see [`GpuContext::encode_cross_entropy`].
    pub fn encode_focal_loss(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &FocalViews<'_>,
        options: &FocalOptions<'_, GpuTensor<'_>>,
    ) -> Result<()> {
        options.validate_scalars()?;
        let params = focal_params(options, gpu_ignore_index(options.ignore_index)?);
        let views = views.merged(options.alpha.copied());
        self.encode_row_loss(encoder, &views, RowLoss::Focal, params)
    }
}
