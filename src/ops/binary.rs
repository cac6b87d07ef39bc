//! Element-wise losses over `[N, C]` (binary and multi-label): binary
//! cross-entropy on probabilities, binary cross-entropy with logits, and
//! torchvision's sigmoid focal loss. Formulas (PyTorch / torchvision):
//!
//! - **BCE on probabilities** `p ∈ [0, 1]`, targets `y ∈ [0, 1]`:
//!   `l = -w·(y·max(log p, -100) + (1-y)·max(log(1-p), -100))`,
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
//! Each workgroup sums its elements' losses in a fixed order and one final
//! workgroup sums those partials in a fixed order: bitwise reproducible.

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernels::{Kernel, Storage, VecWidth};
use crate::ops::cross_entropy::reject_host_weights;
use crate::ops::{
    check_gamma, check_grad_scale, check_matrix, check_values, Base, MatrixArg, Params, Reduction,
    RowLaunch, WholeArg,
};
use crate::tensor::{spec, DType, LossViews};

/// Options of the BCE losses; `Default` is PyTorch's (`mean`, no weights).
#[derive(Clone, Copy, Debug)]
pub struct BinaryLossOptions<'a> {
    /// Weights: length `C` (one per column) or `N·C` (one per element); finite, ≥ 0.
    pub weight: Option<&'a [f32]>,
    /// Positive-class weights, length `C`, finite, ≥ 0 (with logits only).
    pub pos_weight: Option<&'a [f32]>,
    /// How element losses are combined. Default [`Reduction::Mean`].
    pub reduction: Reduction,
    /// Multiplies the returned gradient. Default 1.
    pub grad_scale: f32,
}

impl Default for BinaryLossOptions<'_> {
    fn default() -> Self {
        Self {
            weight: None,
            pos_weight: None,
            reduction: Reduction::Mean,
            grad_scale: 1.0,
        }
    }
}

/// Options of [`GpuContext::sigmoid_focal_loss`]; `Default` is torchvision's
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
pub(crate) enum BinaryOp {
    Probabilities,
    Logits,
    SigmoidFocal,
}

impl BinaryOp {
    fn kernel(self) -> Kernel {
        match self {
            BinaryOp::Probabilities => Kernel::BceProbElements,
            BinaryOp::Logits => Kernel::BceLogitsElements,
            BinaryOp::SigmoidFocal => Kernel::SigmoidFocalElements,
        }
    }
}

const FLAG_WEIGHT_COLS: u32 = 1;
const FLAG_WEIGHT_FULL: u32 = 2;
const FLAG_POS_WEIGHT: u32 = 4;
const FLAG_WRITE_LOSS: u32 = 8;
const FLAG_WRITE_GRAD: u32 = 16;
const FLAG_ALPHA: u32 = 32;

/// One element-wise loss call, validated.
pub(crate) struct BinaryCall<'a> {
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

fn check_weights(w: &[f32]) -> Result<()> {
    match w.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
        Some(index) => Err(Error::InvalidWeight {
            index,
            value: w[index],
        }),
        None => Ok(()),
    }
}

impl BinaryCall<'_> {
    /// Checks shapes, values and options; returns the row count.
    pub(crate) fn validate(&self) -> Result<usize> {
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
        check_grad_scale(self.grad_scale)?;
        Ok(rows)
    }
}

/// A matrix operand: buffer and element offset.
type MatrixRef<'a> = (&'a wgpu::Buffer, u64);

/// Where an element-wise launch's weights come from.
enum WeightArg<'a> {
    None,
    PerColumn(WholeArg<'a>),
    PerElement(MatrixRef<'a>),
}

/// Operands of one element-wise launch.
struct BinaryOperands<'a> {
    x: MatrixRef<'a>,
    y: MatrixRef<'a>,
    weight: WeightArg<'a>,
    pos_weight: Option<WholeArg<'a>>,
    loss: Option<MatrixRef<'a>>,
    grad: Option<MatrixRef<'a>>,
    partials: &'a wgpu::Buffer,
}

/// Kernel parameters of an element-wise loss; `rows` are the whole problem's.
fn binary_params(
    call: &BinaryCall<'_>,
    weight: &WeightArg<'_>,
    with_grad: bool,
    (rows, cols): (usize, usize),
) -> Params {
    let mut flags = 0;
    match weight {
        WeightArg::None => {}
        WeightArg::PerColumn(_) => flags |= FLAG_WEIGHT_COLS,
        WeightArg::PerElement(_) => flags |= FLAG_WEIGHT_FULL,
    }
    if call.pos_weight.is_some() {
        flags |= FLAG_POS_WEIGHT;
    }
    if call.reduction == Reduction::None {
        flags |= FLAG_WRITE_LOSS;
    }
    if with_grad {
        flags |= FLAG_WRITE_GRAD;
    }
    if call.op == BinaryOp::SigmoidFocal && call.alpha >= 0.0 {
        flags |= FLAG_ALPHA;
    }
    let mean = call.reduction == Reduction::Mean;
    Params {
        flags,
        alpha: call.alpha,
        gamma: call.gamma,
        grad_scale: call.grad_scale,
        reduction: call.reduction.code(),
        denominator: if mean { (rows * cols) as f32 } else { 1.0 },
        ..Params::default()
    }
}

impl GpuContext {
    /// Records one element-wise launch over `rows` rows; `params.row_base` is
    /// the index of its first partial sum. Returns the workgroups launched.
    fn encode_binary_elements(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel,
        rows: usize,
        cols: usize,
        ops: BinaryOperands<'_>,
        params: Params,
    ) -> Result<u64> {
        // Unused bindings still need a buffer each (one read-only, one writable use apiece).
        let unused: Vec<wgpu::Buffer> = (0..4).map(|_| self.scratch("unused", 16)).collect();
        fn matrix(binding: u32, (buffer, offset): MatrixRef<'_>, base: Base) -> MatrixArg<'_> {
            MatrixArg {
                binding,
                buffer,
                offset,
                base,
                storage: Storage::F32,
            }
        }
        let mut matrices = vec![matrix(1, ops.x, Base::A), matrix(2, ops.y, Base::B)];
        let mut whole = vec![WholeArg::new(7, ops.partials)];
        match ops.weight {
            WeightArg::PerElement(w) => matrices.push(matrix(3, w, Base::C)),
            WeightArg::PerColumn(w) => whole.push(w),
            WeightArg::None => whole.push(WholeArg::new(3, &unused[0])),
        }
        whole.push(ops.pos_weight.unwrap_or(WholeArg::new(4, &unused[1])));
        match ops.loss {
            Some(l) => matrices.push(matrix(5, l, Base::Out)),
            None => whole.push(WholeArg::new(5, &unused[2])),
        }
        match ops.grad {
            Some(g) => matrices.push(matrix(6, g, Base::D)),
            None => whole.push(WholeArg::new(6, &unused[3])),
        }
        self.encode_elements(
            encoder,
            RowLaunch {
                kernel,
                rows,
                cols,
                matrices: &matrices,
                whole: &whole,
                params,
            },
        )
    }

    /// Records the fixed-order sum of `groups` partials into `result` ([loss, 0]).
    fn encode_binary_reduce(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        partials: &wgpu::Buffer,
        result: WholeArg<'_>,
        groups: u64,
        params: Params,
    ) -> Result<()> {
        self.encode_single(
            encoder,
            Kernel::BinaryReduce,
            VecWidth::Scalar,
            &[WholeArg::new(7, partials), result],
            Params {
                total_rows: u32::try_from(groups).map_err(|_| Error::TooLarge {
                    what: "partial sums",
                    requested: groups,
                    limit_name: "u32 workgroups",
                    limit: u64::from(u32::MAX),
                })?,
                ..params
            },
        )
    }

    async fn binary_run(&self, call: BinaryCall<'_>, with_grad: bool) -> Result<LossOutput> {
        self.check_not_lost()?;
        let rows = call.validate()?;
        let cols = call.cols;
        let total_groups = self.element_groups(rows, cols, VecWidth::for_layout(cols, &[0]))?;
        self.check_whole_binding("partial sums", total_groups * 4)?;
        let per_element = call.weight.filter(|w| w.len() != cols || rows == 1);
        let column_weight_buf = call
            .weight
            .filter(|w| w.len() == cols && rows != 1)
            .map(|w| self.upload("weight", w));
        let pos_weight_buf = call.pos_weight.map(|w| self.upload("pos_weight", w));
        let kind = match (&per_element, &column_weight_buf) {
            (Some(_), _) => WeightArg::PerElement((&self.placeholder, 0)),
            (None, Some(w)) => WeightArg::PerColumn(WholeArg::new(3, w)),
            (None, None) => WeightArg::None,
        };
        let params = binary_params(&call, &kind, with_grad, (rows, cols));
        let kernel = call.op.kernel();
        let partials = self.output("partial sums", total_groups as usize);
        let result = self.output("binary result", 2);
        let write_loss = call.reduction == Reduction::None;
        let mut loss = Vec::new();
        let mut grad = Vec::new();
        let mut groups_done = 0u64;
        let chunk_rows = if rows == 0 {
            1
        } else {
            self.rows_per_window(cols)?
        };
        let mut r0 = 0;
        while r0 < rows {
            let n = chunk_rows.min(rows - r0);
            let span = r0 * cols..(r0 + n) * cols;
            let (loss_staging, grad_staging, groups) = self.scoped(kernel.entry_point(), || {
                let x = self.upload("inputs", &call.inputs[span.clone()]);
                let y = self.upload("targets", &call.targets[span.clone()]);
                let w_full = per_element.map(|w| self.upload("weight", &w[span.clone()]));
                let loss_buf = write_loss.then(|| self.output("loss", n * cols));
                let grad_buf = with_grad.then(|| self.output("grad", n * cols));
                let weight = match (&w_full, &column_weight_buf) {
                    (Some(w), _) => WeightArg::PerElement((w, 0)),
                    (None, Some(w)) => WeightArg::PerColumn(WholeArg::new(3, w)),
                    (None, None) => WeightArg::None,
                };
                let mut encoder = self.encoder(kernel.entry_point());
                let groups = self.encode_binary_elements(
                    &mut encoder,
                    kernel,
                    n,
                    cols,
                    BinaryOperands {
                        x: (&x, 0),
                        y: (&y, 0),
                        weight,
                        pos_weight: pos_weight_buf.as_ref().map(|b| WholeArg::new(4, b)),
                        loss: loss_buf.as_deref().map(|b| (b, 0)),
                        grad: grad_buf.as_deref().map(|b| (b, 0)),
                        partials: &partials,
                    },
                    Params {
                        row_base: groups_done as u32,
                        ..params
                    },
                )?;
                let bytes = (n * cols) as u64 * 4;
                let loss_staging = loss_buf
                    .as_ref()
                    .map(|b| self.stage(&mut encoder, b, bytes));
                let grad_staging = grad_buf
                    .as_ref()
                    .map(|b| self.stage(&mut encoder, b, bytes));
                self.queue.submit([encoder.finish()]);
                Ok((loss_staging, grad_staging, groups))
            })?;
            if let Some(s) = loss_staging {
                loss.extend(self.read_back::<f32>(&s, n * cols).await?);
            }
            if let Some(s) = grad_staging {
                grad.extend(self.read_back::<f32>(&s, n * cols).await?);
            }
            groups_done += groups;
            r0 += n;
        }
        if !write_loss {
            let staging = self.scoped("binary_reduce", || {
                let mut encoder = self.encoder("binary_reduce");
                self.encode_binary_reduce(
                    &mut encoder,
                    &partials,
                    WholeArg::new(8, &result),
                    groups_done,
                    params,
                )?;
                let staging = self.stage(&mut encoder, &result, 8);
                self.queue.submit([encoder.finish()]);
                Ok(staging)
            })?;
            loss = self.read_back::<f32>(&staging, 1).await?;
        }
        Ok(LossOutput {
            loss,
            grad: with_grad.then_some(grad),
        })
    }

    /// Checks the views of an element-wise loss and records it into
    /// `encoder`, inside error scopes so a wgpu validation error comes back as `Err`.
    fn encode_binary(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &LossViews<'_>,
        call: BinaryCall<'_>,
    ) -> Result<()> {
        self.scoped(call.op.kernel().entry_point(), || {
            self.encode_binary_checked(encoder, views, call)
        })
    }

    fn encode_binary_checked(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &LossViews<'_>,
        call: BinaryCall<'_>,
    ) -> Result<()> {
        let (rows, cols) = (views.input.rows, views.input.cols);
        if cols == 0 {
            return Err(Error::ZeroCols);
        }
        if rows == 0 {
            return Err(Error::InvalidView {
                name: "input",
                problem: "has no rows; there is nothing to encode".into(),
            });
        }
        if views.input.dtype == DType::F16 {
            return Err(Error::InvalidView {
                name: "input",
                problem: "is f16; the element-wise losses take f32 (f16 is for the softmax family and row losses)".into(),
            });
        }
        self.check_view(&views.input, spec("input", DType::F32, rows, cols))?;
        self.check_view(&views.target, spec("target", DType::F32, rows, cols))?;
        let weight = match &views.weight {
            None => WeightArg::None,
            Some(_) if call.op == BinaryOp::SigmoidFocal => {
                return Err(Error::InvalidView {
                    name: "weight",
                    problem: "is not used by the sigmoid focal loss (torchvision takes no weights)"
                        .into(),
                })
            }
            Some(w) if w.len() == cols && rows != 1 => {
                self.check_view(w, spec("weight", DType::F32, w.rows, w.cols))?;
                WeightArg::PerColumn(WholeArg::view(3, w))
            }
            Some(w) => {
                self.check_view(w, spec("weight", DType::F32, rows, cols))?;
                WeightArg::PerElement((w.buffer, w.offset_elems()))
            }
        };
        let pos_weight = match &views.pos_weight {
            Some(pw) if call.op == BinaryOp::Logits => {
                self.check_view(pw, spec("pos_weight", DType::F32, pw.rows, pw.cols))?;
                if pw.len() != cols {
                    return Err(Error::InvalidView {
                        name: "pos_weight",
                        problem: format!(
                            "has {} elements, expected one per column ({cols})",
                            pw.len()
                        ),
                    });
                }
                Some(WholeArg::view(4, pw))
            }
            Some(_) => {
                return Err(Error::InvalidView {
                    name: "pos_weight",
                    problem: "is only used by binary cross-entropy with logits".into(),
                })
            }
            None => None,
        };
        if views.lse.is_some() {
            return Err(Error::InvalidView {
                name: "lse",
                problem: "is only produced by the softmax-based row losses".into(),
            });
        }
        let reduced = call.reduction != Reduction::None;
        if let WeightArg::PerColumn(_) = weight {
            self.check_whole_binding("weight", cols as u64 * 4)?;
        }
        if reduced {
            self.check_view(&views.loss, spec("loss", DType::F32, 2, 1))?;
        } else {
            self.check_view(&views.loss, spec("loss", DType::F32, rows, cols))?;
        }
        if let Some(g) = &views.grad {
            self.check_view(g, spec("grad", DType::F32, rows, cols))?;
        }
        // The scalar count bounds every layout the views' offsets may select.
        let groups = self.element_groups(rows, cols, VecWidth::Scalar)?;
        self.check_whole_binding("partial sums", groups * 4)?;
        let partials = self.scratch("partial sums", groups * 4);
        let mut params = binary_params(&call, &weight, views.grad.is_some(), (rows, cols));
        if pos_weight.is_some() {
            params.flags |= FLAG_POS_WEIGHT;
        }
        let done = self.encode_binary_elements(
            encoder,
            call.op.kernel(),
            rows,
            cols,
            BinaryOperands {
                x: (views.input.buffer, views.input.offset_elems()),
                y: (views.target.buffer, views.target.offset_elems()),
                weight,
                pos_weight,
                loss: (!reduced).then(|| (views.loss.buffer, views.loss.offset_elems())),
                grad: views.grad.as_ref().map(|g| (g.buffer, g.offset_elems())),
                partials: &partials,
            },
            params,
        )?;
        if reduced {
            self.encode_binary_reduce(
                encoder,
                &partials,
                WholeArg::view(8, &views.loss),
                done,
                params,
            )?;
        }
        Ok(())
    }

    /// The call description of a view-based launch (its data is on the GPU).
    fn view_call(
        op: BinaryOp,
        reduction: Reduction,
        grad_scale: f32,
        alpha: f32,
        gamma: f32,
    ) -> BinaryCall<'static> {
        BinaryCall {
            op,
            inputs: &[],
            targets: &[],
            cols: 0,
            weight: None,
            pos_weight: None,
            reduction,
            grad_scale,
            alpha,
            gamma,
        }
    }

    /// Records binary cross-entropy on probabilities into `encoder`
    /// (`views.target` f32 `[N, C]`; `views.weight` with `C` or `N·C`
    /// elements). Values in views are not range-checked on the host.
    pub fn encode_binary_cross_entropy(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &LossViews<'_>,
        options: &BinaryLossOptions<'_>,
    ) -> Result<()> {
        check_view_options(options)?;
        let call = Self::view_call(
            BinaryOp::Probabilities,
            options.reduction,
            options.grad_scale,
            0.0,
            0.0,
        );
        self.encode_binary(encoder, views, call)
    }

    /// Records binary cross-entropy with logits into `encoder`
    /// (`views.pos_weight` with `C` elements).
    pub fn encode_binary_cross_entropy_with_logits(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &LossViews<'_>,
        options: &BinaryLossOptions<'_>,
    ) -> Result<()> {
        check_view_options(options)?;
        let call = Self::view_call(
            BinaryOp::Logits,
            options.reduction,
            options.grad_scale,
            0.0,
            0.0,
        );
        self.encode_binary(encoder, views, call)
    }

    /// Records torchvision's sigmoid focal loss into `encoder`.
    pub fn encode_sigmoid_focal_loss(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &LossViews<'_>,
        options: &SigmoidFocalOptions,
    ) -> Result<()> {
        // Option checks are the same as the host path's; the data is on the GPU.
        BinaryCall {
            op: BinaryOp::SigmoidFocal,
            inputs: &[0.0],
            targets: &[0.0],
            cols: 1,
            weight: None,
            pos_weight: None,
            reduction: options.reduction,
            grad_scale: options.grad_scale,
            alpha: options.alpha,
            gamma: options.gamma,
        }
        .validate()?;
        let call = Self::view_call(
            BinaryOp::SigmoidFocal,
            options.reduction,
            options.grad_scale,
            options.alpha,
            options.gamma,
        );
        self.encode_binary(encoder, views, call)
    }
}

/// Options for a view-based BCE call: weights come from the views, and the
/// gradient scale must be finite.
fn check_view_options(options: &BinaryLossOptions<'_>) -> Result<()> {
    reject_host_weights("weight", options.weight.is_some())?;
    reject_host_weights("pos_weight", options.pos_weight.is_some())?;
    check_grad_scale(options.grad_scale)
}

impl GpuContext {
    /// Binary cross-entropy on probabilities `probs` (`[N, C]`, `C = cols`) and its gradient.
    pub async fn binary_cross_entropy(
        &self,
        probs: &[f32],
        targets: &[f32],
        cols: usize,
        opts: &BinaryLossOptions<'_>,
    ) -> Result<LossOutput> {
        self.binary_run(
            BinaryCall {
                op: BinaryOp::Probabilities,
                inputs: probs,
                targets,
                cols,
                weight: opts.weight,
                pos_weight: opts.pos_weight,
                reduction: opts.reduction,
                grad_scale: opts.grad_scale,
                alpha: 0.0,
                gamma: 0.0,
            },
            true,
        )
        .await
    }

    /// [`GpuContext::binary_cross_entropy`], blocking.
    pub fn binary_cross_entropy_blocking(
        &self,
        probs: &[f32],
        targets: &[f32],
        cols: usize,
        opts: &BinaryLossOptions<'_>,
    ) -> Result<LossOutput> {
        pollster::block_on(self.binary_cross_entropy(probs, targets, cols, opts))
    }

    /// Binary cross-entropy on probabilities `probs` (`[N, C]`, `C = cols`). Loss only: nothing of size `N·C` is written unless the reduction is `none`.
    pub async fn binary_cross_entropy_loss(
        &self,
        probs: &[f32],
        targets: &[f32],
        cols: usize,
        opts: &BinaryLossOptions<'_>,
    ) -> Result<LossOutput> {
        self.binary_run(
            BinaryCall {
                op: BinaryOp::Probabilities,
                inputs: probs,
                targets,
                cols,
                weight: opts.weight,
                pos_weight: opts.pos_weight,
                reduction: opts.reduction,
                grad_scale: opts.grad_scale,
                alpha: 0.0,
                gamma: 0.0,
            },
            false,
        )
        .await
    }

    /// [`GpuContext::binary_cross_entropy_loss`], blocking.
    pub fn binary_cross_entropy_loss_blocking(
        &self,
        probs: &[f32],
        targets: &[f32],
        cols: usize,
        opts: &BinaryLossOptions<'_>,
    ) -> Result<LossOutput> {
        pollster::block_on(self.binary_cross_entropy_loss(probs, targets, cols, opts))
    }

    /// Binary cross-entropy with logits (`[N, C]`, `C = cols`) and its gradient.
    pub async fn binary_cross_entropy_with_logits(
        &self,
        logits: &[f32],
        targets: &[f32],
        cols: usize,
        opts: &BinaryLossOptions<'_>,
    ) -> Result<LossOutput> {
        self.binary_run(
            BinaryCall {
                op: BinaryOp::Logits,
                inputs: logits,
                targets,
                cols,
                weight: opts.weight,
                pos_weight: opts.pos_weight,
                reduction: opts.reduction,
                grad_scale: opts.grad_scale,
                alpha: 0.0,
                gamma: 0.0,
            },
            true,
        )
        .await
    }

    /// [`GpuContext::binary_cross_entropy_with_logits`], blocking.
    pub fn binary_cross_entropy_with_logits_blocking(
        &self,
        logits: &[f32],
        targets: &[f32],
        cols: usize,
        opts: &BinaryLossOptions<'_>,
    ) -> Result<LossOutput> {
        pollster::block_on(self.binary_cross_entropy_with_logits(logits, targets, cols, opts))
    }

    /// Binary cross-entropy with logits (`[N, C]`, `C = cols`). Loss only: nothing of size `N·C` is written unless the reduction is `none`.
    pub async fn binary_cross_entropy_with_logits_loss(
        &self,
        logits: &[f32],
        targets: &[f32],
        cols: usize,
        opts: &BinaryLossOptions<'_>,
    ) -> Result<LossOutput> {
        self.binary_run(
            BinaryCall {
                op: BinaryOp::Logits,
                inputs: logits,
                targets,
                cols,
                weight: opts.weight,
                pos_weight: opts.pos_weight,
                reduction: opts.reduction,
                grad_scale: opts.grad_scale,
                alpha: 0.0,
                gamma: 0.0,
            },
            false,
        )
        .await
    }

    /// [`GpuContext::binary_cross_entropy_with_logits_loss`], blocking.
    pub fn binary_cross_entropy_with_logits_loss_blocking(
        &self,
        logits: &[f32],
        targets: &[f32],
        cols: usize,
        opts: &BinaryLossOptions<'_>,
    ) -> Result<LossOutput> {
        pollster::block_on(self.binary_cross_entropy_with_logits_loss(logits, targets, cols, opts))
    }

    /// torchvision's sigmoid focal loss on logits (`[N, C]`, `C = cols`) and its gradient.
    pub async fn sigmoid_focal_loss(
        &self,
        logits: &[f32],
        targets: &[f32],
        cols: usize,
        opts: &SigmoidFocalOptions,
    ) -> Result<LossOutput> {
        self.binary_run(
            BinaryCall {
                op: BinaryOp::SigmoidFocal,
                inputs: logits,
                targets,
                cols,
                weight: None,
                pos_weight: None,
                reduction: opts.reduction,
                grad_scale: opts.grad_scale,
                alpha: opts.alpha,
                gamma: opts.gamma,
            },
            true,
        )
        .await
    }

    /// [`GpuContext::sigmoid_focal_loss`], blocking.
    pub fn sigmoid_focal_loss_blocking(
        &self,
        logits: &[f32],
        targets: &[f32],
        cols: usize,
        opts: &SigmoidFocalOptions,
    ) -> Result<LossOutput> {
        pollster::block_on(self.sigmoid_focal_loss(logits, targets, cols, opts))
    }

    /// torchvision's sigmoid focal loss on logits (`[N, C]`, `C = cols`). Loss only: nothing of size `N·C` is written unless the reduction is `none`.
    pub async fn sigmoid_focal_loss_only(
        &self,
        logits: &[f32],
        targets: &[f32],
        cols: usize,
        opts: &SigmoidFocalOptions,
    ) -> Result<LossOutput> {
        self.binary_run(
            BinaryCall {
                op: BinaryOp::SigmoidFocal,
                inputs: logits,
                targets,
                cols,
                weight: None,
                pos_weight: None,
                reduction: opts.reduction,
                grad_scale: opts.grad_scale,
                alpha: opts.alpha,
                gamma: opts.gamma,
            },
            false,
        )
        .await
    }

    /// [`GpuContext::sigmoid_focal_loss_only`], blocking.
    pub fn sigmoid_focal_loss_only_blocking(
        &self,
        logits: &[f32],
        targets: &[f32],
        cols: usize,
        opts: &SigmoidFocalOptions,
    ) -> Result<LossOutput> {
        pollster::block_on(self.sigmoid_focal_loss_only(logits, targets, cols, opts))
    }
}
