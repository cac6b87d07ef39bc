//! One op or loss on host data, chosen at run time by name, on the GPU, the
//! fast CPU path or the f64 reference. This is what `wgpu-loss eval`, `check`
//! and `bench` run; a program that picks the loss from a config file can use
//! it the same way.
//!
//! ```
//! # fn main() -> Result<(), wgpu_loss_cli::Error> {
//! use wgpu_loss_cli::problem::{Op, Problem, Target};
//! let ctx = wgpu_loss::block_on(wgpu_loss::GpuContext::new())?;
//! let problem = Problem {
//!     target: Some(Target::Classes(vec![0, 2])),
//!     ..Problem::new(Op::CrossEntropy, 2, 3, vec![2.0, 0.5, -1.0, 0.0, 0.0, 3.0])
//! };
//! let gpu = wgpu_loss::block_on(problem.run_gpu(&ctx))?;
//! let reference = problem.run_reference()?;
//! assert!((f64::from(gpu.output[0]) - reference.output[0]).abs() < 1e-5);
//! assert_eq!(gpu.grad.map(|g| g.len()), Some(6));
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use wgpu_loss::reference;
use wgpu_loss::GpuContext;
use wgpu_loss::SoftmaxOp;
use wgpu_loss::{BinaryLossOptions, CrossEntropyOptions, FocalOptions, SigmoidFocalOptions};
use wgpu_loss::{DType, HostFloat, Reduction, Request};

/// An op or loss, by the name the command line uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Row-wise softmax (backward with a grad-output).
    Softmax,
    /// Row-wise log-softmax (backward with a grad-output).
    LogSoftmax,
    /// Row-wise logsumexp (backward with a grad-output).
    Logsumexp,
    /// Categorical cross-entropy and its gradient (index or probability targets).
    CrossEntropy,
    /// Categorical cross-entropy, loss only (the logits are read once).
    CrossEntropyLoss,
    /// Binary cross-entropy on probabilities, and its gradient.
    BinaryCrossEntropy,
    /// Binary cross-entropy on logits (with `pos_weight`), and its gradient.
    BceWithLogits,
    /// torchvision's sigmoid focal loss, and its gradient.
    SigmoidFocal,
    /// Multiclass (softmax) focal loss, and its gradient.
    Focal,
}

impl Op {
    /// Every op, in report order.
    pub const ALL: [Op; 9] = [
        Op::Softmax,
        Op::LogSoftmax,
        Op::Logsumexp,
        Op::CrossEntropy,
        Op::CrossEntropyLoss,
        Op::BinaryCrossEntropy,
        Op::BceWithLogits,
        Op::SigmoidFocal,
        Op::Focal,
    ];

    /// Command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Op::Softmax => "softmax",
            Op::LogSoftmax => "log-softmax",
            Op::Logsumexp => "logsumexp",
            Op::CrossEntropy => "cross-entropy",
            Op::CrossEntropyLoss => "cross-entropy-loss",
            Op::BinaryCrossEntropy => "binary-cross-entropy",
            Op::BceWithLogits => "bce-with-logits",
            Op::SigmoidFocal => "sigmoid-focal",
            Op::Focal => "focal",
        }
    }

    /// Parses a command-line name.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }

    /// Every name, comma-separated (for messages).
    pub fn names() -> String {
        Op::ALL.map(Op::name).join(", ")
    }

    /// The softmax-family op, if this is one.
    pub fn softmax_op(self) -> Option<SoftmaxOp> {
        match self {
            Op::Softmax => Some(SoftmaxOp::Softmax),
            Op::LogSoftmax => Some(SoftmaxOp::LogSoftmax),
            Op::Logsumexp => Some(SoftmaxOp::Logsumexp),
            _ => None,
        }
    }

    /// Row losses over `[N, C]` logits with class-index (or probability) targets.
    pub fn is_row_loss(self) -> bool {
        matches!(self, Op::CrossEntropy | Op::CrossEntropyLoss | Op::Focal)
    }

    /// Element-wise losses: one loss per input element.
    pub fn is_elementwise(self) -> bool {
        matches!(
            self,
            Op::BinaryCrossEntropy | Op::BceWithLogits | Op::SigmoidFocal
        )
    }

    /// Ideal bytes moved in the benchmark's setting (default options, index
    /// targets, no grad-output): every input read once, every output written
    /// once; `elem` is the bytes of one logit and gradient element (4 or 2).
    pub fn ideal_bytes(self, rows: usize, cols: usize, elem: u64) -> u64 {
        let (n, c) = (rows as u64, cols as u64);
        match self {
            Op::Softmax | Op::LogSoftmax => 2 * elem * n * c,
            Op::Logsumexp => elem * n * c + 4 * n,
            Op::CrossEntropy | Op::Focal => 2 * elem * n * c + 4 * n,
            Op::CrossEntropyLoss => elem * n * c + 4 * n,
            // Input and f32 target read, gradient written.
            Op::BinaryCrossEntropy | Op::BceWithLogits | Op::SigmoidFocal => {
                2 * elem * n * c + 4 * n * c
            }
        }
    }
}

/// Targets of a loss.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// One class index per row (cross-entropy, focal).
    Classes(Vec<i64>),
    /// Float targets: probabilities `[N, C]` for cross-entropy, `0..1`
    /// labels of the input's shape for the binary losses.
    Values(Vec<f32>),
}

/// Scalar options; `Default` is PyTorch's defaults (see `reduction` for
/// sigmoid focal loss).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// Reduction of the losses. Default `mean`, for every loss (the
    /// command's default too). torchvision's `sigmoid_focal_loss` defaults
    /// to `none`: set it to match that.
    pub reduction: Reduction,
    /// Cross-entropy and focal: target ignored. Default -100.
    pub ignore_index: i64,
    /// Cross-entropy: label smoothing. Default 0.
    pub label_smoothing: f32,
    /// Cross-entropy: z-loss weight. Default 0.
    pub z_loss: f32,
    /// Cross-entropy: logit softcap. Default none.
    pub softcap: Option<f32>,
    /// Sigmoid focal: `α` (default 0.25, `-1` disables); multiclass focal:
    /// the same `α` for every class (default none).
    pub alpha: Option<f32>,
    /// Focal losses: `γ`. Default 2.
    pub gamma: f32,
}

impl Settings {
    /// These settings with every field `op` does not take back at its
    /// default (what `bench` runs each op of a sweep with; `eval` refuses
    /// a field that differs, [`Problem::validate`]).
    pub fn for_op(self, op: Op) -> Settings {
        let d = Settings::default();
        let ce = matches!(op, Op::CrossEntropy | Op::CrossEntropyLoss);
        let focal = matches!(op, Op::Focal | Op::SigmoidFocal);
        Settings {
            reduction: if op.softmax_op().is_none() {
                self.reduction
            } else {
                d.reduction
            },
            ignore_index: if op.is_row_loss() {
                self.ignore_index
            } else {
                d.ignore_index
            },
            label_smoothing: if ce {
                self.label_smoothing
            } else {
                d.label_smoothing
            },
            z_loss: if ce { self.z_loss } else { d.z_loss },
            softcap: if ce { self.softcap } else { d.softcap },
            alpha: if focal { self.alpha } else { d.alpha },
            gamma: if focal { self.gamma } else { d.gamma },
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            reduction: Reduction::Mean,
            ignore_index: -100,
            label_smoothing: 0.0,
            z_loss: 0.0,
            softcap: None,
            alpha: None,
            gamma: 2.0,
        }
    }
}

/// One op on `[rows, cols]` row-major data with everything it needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// Which op.
    pub op: Op,
    /// Rows `N`.
    pub rows: usize,
    /// Columns / classes `C`.
    pub cols: usize,
    /// Logits (probabilities for binary cross-entropy), `N·C` values.
    pub input: Vec<f32>,
    /// Targets (losses only).
    pub target: Option<Target>,
    /// Class weights `[C]` (cross-entropy), per-class `α` `[C]` (focal), or
    /// binary weights `[C]` or `[N·C]`.
    pub weight: Option<Vec<f32>>,
    /// Positive-class weights `[C]` (BCE with logits).
    pub pos_weight: Option<Vec<f32>>,
    /// Softmax family: the upstream gradient (the output's shape), giving the
    /// vector-Jacobian product. Losses: one value with `mean`/`sum`, scaling
    /// the gradient.
    pub grad_output: Option<Vec<f32>>,
    /// Scalar options.
    pub settings: Settings,
    /// How the GPU stores the matrices (input, upstream gradient, matrix
    /// results) of the softmax family and the row losses: `F32`, or `F16` /
    /// `BF16` for logits read from f16 / bf16 files (exact, since the values
    /// came from those types; an f32 upstream gradient is rounded). Binary
    /// losses stay f32.
    pub gpu_dtype: DType,
}

/// How a problem runs: whether the gradient is computed, and its scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Run {
    /// The losses' `grad_scale`.
    pub grad_scale: f32,
    /// Compute the gradient (losses; the softmax family's backward runs
    /// whenever a grad-output is given).
    pub grad: bool,
}

/// How a problem runs in windows of rows (`eval`'s streaming), so that any
/// window size gives the same bits: every window runs with reduction `none`
/// and the whole problem's `mean` denominators, and `mean` / `sum` fold the
/// per-row (per-element) losses in row order in f64.
///
/// For `mean`, with `D` the loss denominator and `K` the z-loss's (the
/// loss definitions': kept rows, their class weights, or elements), each
/// window's gradient is scaled by `grad_output / D` and its z-loss weight
/// by `D / K`, since `Σl/D + z·Σlse²/K = (Σl + (z·D/K)·Σlse²)/D`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WindowPlan {
    /// Settings each window runs with.
    pub settings: Settings,
    /// How each window runs.
    pub run: Run,
    /// Whether per-row losses fold into one value (`mean` or `sum`).
    pub reduced: bool,
    /// What the folded sum is divided by: `D` for `mean`, else 1.
    pub denominator: f64,
}

/// What a problem produces.
#[derive(Clone, Debug, PartialEq)]
pub struct Outputs<T> {
    /// Softmax / log-softmax `N·C`, logsumexp `N`, or the loss: one value
    /// when reduced, else one per row (row losses) or per element (binary).
    pub output: Vec<T>,
    /// Gradient w.r.t. the input (`N·C`): the vector-Jacobian product for
    /// the softmax family (when a grad-output is given), the gradient of the
    /// returned loss (of the sum for `none`) for losses; `None` for loss-only.
    pub grad: Option<Vec<T>>,
}

impl Problem {
    /// A problem with no targets, weights or grad-output and default settings.
    pub fn new(op: Op, rows: usize, cols: usize, input: Vec<f32>) -> Self {
        Self {
            op,
            rows,
            cols,
            input,
            target: None,
            weight: None,
            pos_weight: None,
            grad_output: None,
            settings: Settings::default(),
            gpu_dtype: DType::F32,
        }
    }

    /// Checks that every part the op needs is there and that nothing it does
    /// not use was given. Shapes and values are checked by the ops themselves.
    pub fn validate(&self) -> Result<()> {
        let op = self.op.name();
        let s = &self.settings;
        let not_for = |what: &'static str| Error::NotApplicable { what, op };
        let needs_target = self.op.softmax_op().is_none();
        match (&self.target, needs_target) {
            (Some(_), false) => return Err(not_for("target")),
            (None, true) => return Err(Error::Missing { what: "target", op }),
            _ => {}
        }
        if self.weight.is_some() && self.op.softmax_op().is_some() {
            return Err(not_for("weight"));
        }
        if self.weight.is_some() && self.op == Op::SigmoidFocal {
            return Err(not_for("weight"));
        }
        if self.pos_weight.is_some() && self.op != Op::BceWithLogits {
            return Err(not_for("pos_weight"));
        }
        let kept = s.for_op(self.op);
        let bits = f32::to_bits;
        for (name, differs) in [
            ("reduction", kept.reduction != s.reduction),
            ("ignore_index", kept.ignore_index != s.ignore_index),
            // By the bits: a NaN the op takes is the option check's to name.
            (
                "label_smoothing",
                bits(kept.label_smoothing) != bits(s.label_smoothing),
            ),
            ("z_loss", bits(kept.z_loss) != bits(s.z_loss)),
            ("softcap", kept.softcap.map(bits) != s.softcap.map(bits)),
            ("alpha", kept.alpha.map(bits) != s.alpha.map(bits)),
            ("gamma", bits(kept.gamma) != bits(s.gamma)),
        ] {
            if differs {
                return Err(not_for(name));
            }
        }
        if self.op == Op::Focal && s.alpha.is_some() && self.weight.is_some() {
            return Err(wgpu_loss::Error::InvalidOption {
                name: "alpha",
                value: f64::from(s.alpha.unwrap_or_default()),
                reason: "focal takes alpha either as one value or per class as weights, not both",
            }
            .into());
        }
        if let Some(g) = &self.grad_output {
            if self.op.softmax_op().is_none() {
                if self.op == Op::CrossEntropyLoss {
                    return Err(not_for("grad_output"));
                }
                if g.len() != 1 || s.reduction == Reduction::None {
                    return Err(wgpu_loss::Error::InvalidOption {
                        name: "grad_output",
                        value: g.len() as f64,
                        reason: "a loss takes a grad-output only as one value, with reduction mean or sum",
                    }.into());
                }
            }
        }
        Ok(())
    }

    /// The loss's request: the loss only for `cross-entropy-loss`.
    fn request(&self) -> Request {
        if self.op == Op::CrossEntropyLoss {
            Request::Loss
        } else {
            Request::LossAndGrad
        }
    }

    /// `grad_scale` for losses: the one grad-output value, else 1.
    fn grad_scale(&self) -> f32 {
        match &self.grad_output {
            Some(g) if self.op.softmax_op().is_none() => g.first().copied().unwrap_or(1.0),
            _ => 1.0,
        }
    }

    fn classes(&self) -> Option<&[i64]> {
        match &self.target {
            Some(Target::Classes(t)) => Some(t),
            _ => None,
        }
    }

    fn values(&self) -> Result<&[f32]> {
        match &self.target {
            Some(Target::Values(v)) => Ok(v),
            _ => Err(Error::InvalidTargetKind {
                op: self.op.name(),
                expected: "float targets of the input's shape",
            }),
        }
    }

    pub(crate) fn ce_options(&self, grad_scale: f32) -> CrossEntropyOptions<'_> {
        let s = &self.settings;
        CrossEntropyOptions {
            weight: self.weight.as_deref(),
            ignore_index: s.ignore_index,
            label_smoothing: s.label_smoothing,
            reduction: s.reduction,
            z_loss: s.z_loss,
            softcap: s.softcap,
            grad_scale,
        }
    }

    pub(crate) fn uniform_alpha(&self) -> Option<Vec<f32>> {
        self.settings.alpha.map(|a| vec![a; self.cols])
    }

    pub(crate) fn focal_options<'a>(
        &'a self,
        uniform: &'a Option<Vec<f32>>,
        grad_scale: f32,
    ) -> FocalOptions<'a> {
        FocalOptions {
            alpha: self.weight.as_deref().or(uniform.as_deref()),
            gamma: self.settings.gamma,
            ignore_index: self.settings.ignore_index,
            reduction: self.settings.reduction,
            grad_scale,
        }
    }

    pub(crate) fn binary_options(&self, grad_scale: f32) -> BinaryLossOptions<'_> {
        BinaryLossOptions {
            weight: self.weight.as_deref(),
            pos_weight: self.pos_weight.as_deref(),
            reduction: self.settings.reduction,
            grad_scale,
        }
    }

    pub(crate) fn sigmoid_focal_options(&self, grad_scale: f32) -> SigmoidFocalOptions {
        SigmoidFocalOptions {
            alpha: self.settings.alpha.unwrap_or(0.25),
            gamma: self.settings.gamma,
            reduction: self.settings.reduction,
            grad_scale,
        }
    }

    /// What [`Problem::run_gpu`] and the others run: the gradient unless the
    /// op is loss-only, scaled by the one grad-output value.
    pub fn default_run(&self) -> Run {
        Run {
            grad_scale: self.grad_scale(),
            grad: self.request().wants_grad(),
        }
    }

    /// The plan of [`WindowPlan`] for this problem, its gradient computed
    /// when `grad` (and the op has one). Needs the class-index targets and
    /// class weights, not the input values.
    pub fn window_plan(&self, grad: bool) -> WindowPlan {
        let s = self.settings;
        let reduced = self.op.softmax_op().is_none() && s.reduction != Reduction::None;
        let (d, k) = match (self.classes(), self.op) {
            (Some(c), Op::CrossEntropy | Op::CrossEntropyLoss) => {
                let kept = c.iter().filter(|&&t| t != s.ignore_index);
                let k = kept.clone().count() as f64;
                let d = match &self.weight {
                    Some(w) => kept
                        .map(|&t| {
                            usize::try_from(t)
                                .ok()
                                .and_then(|t| w.get(t))
                                .map_or(0.0, |&x| f64::from(x))
                        })
                        .sum(),
                    None => k,
                };
                (d, k)
            }
            (Some(c), _) => {
                let k = c.iter().filter(|&&t| t != s.ignore_index).count() as f64;
                (k, k)
            }
            _ if self.op.is_elementwise() => (
                (self.rows * self.cols) as f64,
                (self.rows * self.cols) as f64,
            ),
            _ => (self.rows as f64, self.rows as f64),
        };
        let mut settings = s;
        let mut grad_scale = self.grad_scale();
        if reduced {
            settings.reduction = Reduction::None;
        }
        let mean = reduced && s.reduction == Reduction::Mean;
        if mean {
            grad_scale = (f64::from(grad_scale) / d) as f32;
            if k > 0.0 && s.z_loss != 0.0 {
                settings.z_loss = (f64::from(s.z_loss) * d / k) as f32;
            }
        }
        let grad = match self.op.softmax_op() {
            Some(_) => self.grad_output.is_some(),
            None => grad && self.request().wants_grad(),
        };
        WindowPlan {
            settings,
            run: Run { grad_scale, grad },
            reduced,
            denominator: if mean { d } else { 1.0 },
        }
    }

    /// Rows `first .. first + rows` of this problem as a problem of their
    /// own, with `settings` (a [`WindowPlan`]'s): the input, targets,
    /// per-element weights and the softmax family's grad-output are sliced;
    /// class weights and `pos_weight` are whole; a loss's grad-output is
    /// dropped (the plan's `run` carries its scale).
    pub fn window(&self, first: usize, rows: usize, settings: Settings) -> Problem {
        let c = self.cols;
        let elems = first * c..(first + rows) * c;
        let per_element_weight = self.op.is_elementwise()
            && self
                .weight
                .as_ref()
                .is_some_and(|w| w.len() == self.rows * c && self.rows > 1);
        Problem {
            op: self.op,
            rows,
            cols: c,
            input: self.input[elems.clone()].to_vec(),
            target: self.target.as_ref().map(|t| match t {
                Target::Classes(v) => Target::Classes(v[first..first + rows].to_vec()),
                Target::Values(v) => Target::Values(v[elems.clone()].to_vec()),
            }),
            weight: self.weight.as_ref().map(|w| {
                if per_element_weight {
                    w[elems.clone()].to_vec()
                } else {
                    w.clone()
                }
            }),
            pos_weight: self.pos_weight.clone(),
            grad_output: match (&self.grad_output, self.op) {
                (Some(g), Op::Logsumexp) => Some(g[first..first + rows].to_vec()),
                (Some(g), Op::Softmax | Op::LogSoftmax) => Some(g[elems].to_vec()),
                _ => None,
            },
            settings,
            gpu_dtype: self.gpu_dtype,
        }
    }

    /// The problem in windows of `window_rows` rows, each run by `run`
    /// (e.g. `|p, r| p.run_fast_with(r)`), as `eval` streams it
    /// ([`WindowPlan`]): the same bits for any window size on the CPU, and
    /// on the GPU for any multiple of 4 rows (a row that is not whole vec4s
    /// is split into vectors by its offset modulo 4, as `eval` keeps it).
    pub fn run_windows(
        &self,
        window_rows: usize,
        mut run: impl FnMut(&Problem, Run) -> Result<Outputs<f32>>,
    ) -> Result<Outputs<f32>> {
        self.validate()?;
        let plan = self.window_plan(true);
        let mut sum = 0.0f64;
        let mut output = Vec::new();
        let mut grad: Option<Vec<f32>> = None;
        for first in (0..self.rows).step_by(window_rows.max(1)) {
            let n = window_rows.max(1).min(self.rows - first);
            let o = run(&self.window(first, n, plan.settings), plan.run)?;
            if plan.reduced {
                o.output.iter().for_each(|&v| sum += f64::from(v));
            } else {
                output.extend(o.output);
            }
            if let Some(g) = o.grad {
                grad.get_or_insert_with(Vec::new).extend(g);
            }
        }
        if plan.reduced {
            output = vec![(sum / plan.denominator) as f32];
        }
        Ok(Outputs { output, grad })
    }

    /// [`Problem::run_windows`] on the GPU.
    pub fn run_gpu_windows(&self, ctx: &GpuContext, window_rows: usize) -> Result<Outputs<f32>> {
        self.run_windows(window_rows, |p, r| p.run_gpu_sync_with(ctx, r))
    }

    /// Runs the problem on the GPU.
    pub async fn run_gpu(&self, ctx: &GpuContext) -> Result<Outputs<f32>> {
        self.run_gpu_with(ctx, self.default_run()).await
    }

    /// Runs the problem on the GPU as `run` says (a window of a streamed
    /// problem: reduction `none`, the gradient scaled by the whole problem's
    /// `mean` denominator).
    pub async fn run_gpu_with(&self, ctx: &GpuContext, run: Run) -> Result<Outputs<f32>> {
        self.validate()?;
        match self.gpu_dtype {
            DType::BF16 if !self.op.is_elementwise() => {
                self.run_gpu_as::<half::bf16>(ctx, run).await
            }
            DType::F16 if !self.op.is_elementwise() => self.run_gpu_as::<half::f16>(ctx, run).await,
            _ => self.run_gpu_as::<f32>(ctx, run).await,
        }
    }

    /// [`Problem::run_gpu_with`] with the matrices stored on the GPU as `F`.
    async fn run_gpu_as<F: HostFloat>(&self, ctx: &GpuContext, run: Run) -> Result<Outputs<f32>> {
        let (rows, cols) = (self.rows, self.cols);
        let x = &as_host::<F>(&self.input)[..];
        if let Some(sop) = self.op.softmax_op() {
            let output = match sop {
                SoftmaxOp::Softmax => ctx.softmax(x, rows, cols).await?,
                SoftmaxOp::LogSoftmax => ctx.log_softmax(x, rows, cols).await?,
                SoftmaxOp::Logsumexp => ctx.logsumexp(x, rows, cols).await?,
            };
            let grad = match &self.grad_output {
                None => None,
                // The forward output came back widened from F: narrowing is exact.
                Some(dy) => Some(match sop {
                    SoftmaxOp::Softmax => {
                        ctx.softmax_backward(&as_host::<F>(&output), &as_host::<F>(dy), rows, cols)
                            .await?
                    }
                    SoftmaxOp::LogSoftmax => {
                        ctx.log_softmax_backward(
                            &as_host::<F>(&output),
                            &as_host::<F>(dy),
                            rows,
                            cols,
                        )
                        .await?
                    }
                    SoftmaxOp::Logsumexp => {
                        ctx.logsumexp_backward(x, &output, dy, rows, cols).await?
                    }
                }),
            };
            return Ok(Outputs { output, grad });
        }
        let request = if run.grad {
            Request::LossAndGrad
        } else {
            Request::Loss
        };
        let scale = run.grad_scale;
        let ce = |o: wgpu_loss::CrossEntropyOutput| Outputs {
            output: o.loss,
            grad: o.grad,
        };
        let el = |o: wgpu_loss::LossOutput| Outputs {
            output: o.loss,
            grad: o.grad,
        };
        Ok(match self.op {
            Op::CrossEntropy | Op::CrossEntropyLoss => {
                let opts = self.ce_options(scale);
                ce(match self.classes() {
                    Some(t) => ctx.cross_entropy(x, t, cols, &opts, request).await?,
                    None => {
                        ctx.cross_entropy_probs(x, self.values()?, cols, &opts, request)
                            .await?
                    }
                })
            }
            Op::Focal => {
                let uniform = self.uniform_alpha();
                let t = self.focal_targets()?;
                ce(ctx
                    .focal_loss(x, t, cols, &self.focal_options(&uniform, scale), request)
                    .await?)
            }
            Op::BinaryCrossEntropy => el(ctx
                .binary_cross_entropy(
                    &self.input,
                    self.values()?,
                    cols,
                    &self.binary_options(scale),
                    request,
                )
                .await?),
            Op::BceWithLogits => el(ctx
                .binary_cross_entropy_with_logits(
                    &self.input,
                    self.values()?,
                    cols,
                    &self.binary_options(scale),
                    request,
                )
                .await?),
            _ => el(ctx
                .sigmoid_focal_loss(
                    &self.input,
                    self.values()?,
                    cols,
                    &self.sigmoid_focal_options(scale),
                    request,
                )
                .await?),
        })
    }

    /// [`Problem::run_gpu`] on the calling thread (the command's form).
    pub fn run_gpu_sync(&self, ctx: &GpuContext) -> Result<Outputs<f32>> {
        wgpu_loss::block_on(self.run_gpu(ctx))
    }

    /// [`Problem::run_gpu_with`] on the calling thread.
    pub fn run_gpu_sync_with(&self, ctx: &GpuContext, run: Run) -> Result<Outputs<f32>> {
        wgpu_loss::block_on(self.run_gpu_with(ctx, run))
    }

    fn focal_targets(&self) -> Result<&[i64]> {
        self.classes().ok_or(Error::InvalidTargetKind {
            op: self.op.name(),
            expected: "one class index per row",
        })
    }

    /// Runs the problem on the fast multi-threaded f32 CPU path
    /// ([`crate::cpu_fast`]), which covers every op.
    pub fn run_fast(&self) -> Result<Outputs<f32>> {
        self.run_fast_with(self.default_run())
    }

    /// [`Problem::run_fast`] as `run` says (see [`Problem::run_gpu_with`]).
    pub fn run_fast_with(&self, run: Run) -> Result<Outputs<f32>> {
        use crate::cpu_fast as fast;
        self.validate()?;
        let (x, rows, cols) = (&self.input[..], self.rows, self.cols);
        if let Some(sop) = self.op.softmax_op() {
            let output = match sop {
                SoftmaxOp::Softmax => fast::softmax(x, rows, cols)?,
                SoftmaxOp::LogSoftmax => fast::log_softmax(x, rows, cols)?,
                SoftmaxOp::Logsumexp => fast::logsumexp(x, rows, cols)?,
            };
            let grad = match &self.grad_output {
                None => None,
                Some(dy) => Some(match sop {
                    SoftmaxOp::Softmax => fast::softmax_backward(&output, dy, rows, cols)?,
                    SoftmaxOp::LogSoftmax => fast::log_softmax_backward(&output, dy, rows, cols)?,
                    SoftmaxOp::Logsumexp => fast::logsumexp_backward(x, &output, dy, rows, cols)?,
                }),
            };
            return Ok(Outputs { output, grad });
        }
        let (with_grad, scale) = (run.grad, run.grad_scale);
        let ce = |o: wgpu_loss::CrossEntropyOutput| Outputs {
            output: o.loss,
            grad: o.grad,
        };
        let el = |o: wgpu_loss::LossOutput| Outputs {
            output: o.loss,
            grad: o.grad,
        };
        Ok(match self.op {
            Op::CrossEntropy | Op::CrossEntropyLoss => {
                let opts = self.ce_options(scale);
                ce(match self.classes() {
                    Some(t) => fast::cross_entropy(x, t, cols, &opts, with_grad)?,
                    None => fast::cross_entropy_probs(x, self.values()?, cols, &opts, with_grad)?,
                })
            }
            Op::Focal => {
                let uniform = self.uniform_alpha();
                let opts = self.focal_options(&uniform, scale);
                ce(fast::focal_loss(
                    x,
                    self.focal_targets()?,
                    cols,
                    &opts,
                    with_grad,
                )?)
            }
            Op::BinaryCrossEntropy => el(fast::binary_cross_entropy(
                x,
                self.values()?,
                cols,
                &self.binary_options(scale),
                with_grad,
            )?),
            Op::BceWithLogits => el(fast::binary_cross_entropy_with_logits(
                x,
                self.values()?,
                cols,
                &self.binary_options(scale),
                with_grad,
            )?),
            _ => el(fast::sigmoid_focal_loss(
                x,
                self.values()?,
                cols,
                &self.sigmoid_focal_options(scale),
                with_grad,
            )?),
        })
    }

    /// Runs the problem on the f64 CPU reference (the oracle).
    pub fn run_reference(&self) -> Result<Outputs<f64>> {
        self.run_reference_with(self.default_run())
    }

    /// [`Problem::run_reference`] as `run` says (see [`Problem::run_gpu_with`]).
    pub fn run_reference_with(&self, run: Run) -> Result<Outputs<f64>> {
        self.validate()?;
        let (x, rows, cols) = (&self.input[..], self.rows, self.cols);
        if let Some(sop) = self.op.softmax_op() {
            let output = match sop {
                SoftmaxOp::Softmax => reference::softmax(x, rows, cols)?,
                SoftmaxOp::LogSoftmax => reference::log_softmax(x, rows, cols)?,
                SoftmaxOp::Logsumexp => reference::logsumexp(x, rows, cols)?,
            };
            let grad = match &self.grad_output {
                None => None,
                Some(dy) => {
                    // The backward pass sees the forward output as stored (f32), as on the GPU.
                    let y: Vec<f32> = output.iter().map(|&v| v as f32).collect();
                    Some(match sop {
                        SoftmaxOp::Softmax => reference::softmax_backward(&y, dy, rows, cols)?,
                        SoftmaxOp::LogSoftmax => {
                            reference::log_softmax_backward(&y, dy, rows, cols)?
                        }
                        SoftmaxOp::Logsumexp => {
                            reference::logsumexp_backward(x, &y, dy, rows, cols)?
                        }
                    })
                }
            };
            return Ok(Outputs { output, grad });
        }
        let (full, scale) = (run.grad, run.grad_scale);
        let ce = |o: reference::CrossEntropyReference| Outputs {
            output: o.loss,
            grad: full.then_some(o.grad),
        };
        let el = |o: reference::LossReference| Outputs {
            output: o.loss,
            grad: full.then_some(o.grad),
        };
        Ok(match self.op {
            Op::CrossEntropy | Op::CrossEntropyLoss => {
                let opts = self.ce_options(scale);
                ce(match self.classes() {
                    Some(t) => reference::cross_entropy(x, t, cols, &opts)?,
                    None => reference::cross_entropy_probs(x, self.values()?, cols, &opts)?,
                })
            }
            Op::Focal => {
                let uniform = self.uniform_alpha();
                ce(reference::focal_loss(
                    x,
                    self.focal_targets()?,
                    cols,
                    &self.focal_options(&uniform, scale),
                )?)
            }
            Op::BinaryCrossEntropy => el(reference::binary_cross_entropy(
                x,
                self.values()?,
                cols,
                &self.binary_options(scale),
            )?),
            Op::BceWithLogits => el(reference::binary_cross_entropy_with_logits(
                x,
                self.values()?,
                cols,
                &self.binary_options(scale),
            )?),
            _ => el(reference::sigmoid_focal_loss(
                x,
                self.values()?,
                cols,
                &self.sigmoid_focal_options(scale),
            )?),
        })
    }
}

/// `values` as the host API's `F`: borrowed for f32, else rounded to nearest even.
fn as_host<F: HostFloat>(values: &[f32]) -> std::borrow::Cow<'_, [F]> {
    match bytemuck::try_cast_slice::<f32, F>(values) {
        Ok(same) if F::DTYPE == DType::F32 => std::borrow::Cow::Borrowed(same),
        _ => std::borrow::Cow::Owned(values.iter().map(|&v| F::round_from(v)).collect()),
    }
}
