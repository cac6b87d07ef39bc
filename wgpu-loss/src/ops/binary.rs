//! GPU host code of the element-wise losses (binary cross-entropy on
//! probabilities or logits, sigmoid focal loss); the definitions and
//! formulas are in [`crate::loss::binary`].
//!
//! Each workgroup sums its elements' losses in a fixed order and one final
//! workgroup sums those partials in a fixed order: bitwise reproducible.

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernels::flags::binary::{
    FLAG_ALPHA, FLAG_POS_WEIGHT, FLAG_WEIGHT_COLS, FLAG_WEIGHT_FULL, FLAG_WRITE_GRAD,
    FLAG_WRITE_LOSS,
};
use crate::kernels::slot::binary as bin;
use crate::kernels::Slot;
use crate::kernels::{Kernel, Storage, VecWidth};
use crate::loss::binary::{
    BinaryCall, BinaryLossOptions, BinaryOp, LossOutput, SigmoidFocalOptions,
};
use crate::loss::{Reduction, Request};
use crate::ops::{Base, MatrixArg, Params, RowLaunch, WholeArg};
use crate::pool::Scratch;
use crate::tensor::{spec, BinaryViews, DType, GpuTensor, LossViews};

fn kernel_of(op: BinaryOp) -> Kernel {
    match op {
        BinaryOp::Probabilities => Kernel::BceProbElements,
        BinaryOp::Logits => Kernel::BceLogitsElements,
        BinaryOp::SigmoidFocal => Kernel::SigmoidFocalElements,
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
        let unused: Vec<Scratch> = (0..4).map(|_| self.scratch("unused", 16)).collect();
        fn matrix(binding: Slot, (buffer, offset): MatrixRef<'_>, base: Base) -> MatrixArg<'_> {
            MatrixArg {
                binding,
                buffer,
                offset,
                base,
                storage: Storage::F32,
            }
        }
        let mut matrices = vec![
            matrix(bin::INPUTS, ops.x, Base::A),
            matrix(bin::TARGETS, ops.y, Base::B),
        ];
        let mut whole = vec![WholeArg::new(bin::PARTIALS, ops.partials)];
        match ops.weight {
            WeightArg::PerElement(w) => matrices.push(matrix(bin::WEIGHT, w, Base::C)),
            WeightArg::PerColumn(w) => whole.push(w),
            WeightArg::None => whole.push(WholeArg::new(bin::WEIGHT, &unused[0])),
        }
        whole.push(
            ops.pos_weight
                .unwrap_or(WholeArg::new(bin::POS_WEIGHT, &unused[1])),
        );
        match ops.loss {
            Some(l) => matrices.push(matrix(bin::LOSS_OUT, l, Base::Out)),
            None => whole.push(WholeArg::new(bin::LOSS_OUT, &unused[2])),
        }
        match ops.grad {
            Some(g) => matrices.push(matrix(bin::GRAD, g, Base::D)),
            None => whole.push(WholeArg::new(bin::GRAD, &unused[3])),
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

    /// Records the fixed-order sum of `groups` partials into `result` ([loss,
    /// 0]): a blocked reduction, so no workgroup walks all of them.
    fn encode_binary_reduce(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        partials: &wgpu::Buffer,
        result: WholeArg<'_>,
        groups: u64,
        params: Params,
    ) -> Result<()> {
        self.encode_blocked_reduction(
            encoder,
            (Kernel::BinaryReducePartial, Kernel::BinaryReduce),
            VecWidth::Scalar,
            &[WholeArg::new(bin::PARTIALS, partials)],
            &[result],
            Params {
                total_rows: u32::try_from(groups).map_err(|_| Error::TooLarge {
                    what: "partial sums",
                    requested: groups,
                    limit_name: "u32 workgroups",
                    limit: u64::from(u32::MAX),
                })?,
                ..params
            },
            // One (sum, 0, 0, 0) record per element-kernel workgroup.
            (groups as usize, 16),
        )
    }

    async fn binary_run(&self, call: BinaryCall<'_>, with_grad: bool) -> Result<LossOutput> {
        self.check_errors().await?;
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
            (None, Some(w)) => WeightArg::PerColumn(WholeArg::new(bin::WEIGHT, w)),
            (None, None) => WeightArg::None,
        };
        let params = binary_params(&call, &kind, with_grad, (rows, cols));
        let kernel = kernel_of(call.op);
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
            let (loss_staging, grad_staging, groups) = self
                .scoped(kernel.entry_point(), || {
                    let x = self.upload("inputs", &call.inputs[span.clone()]);
                    let y = self.upload("targets", &call.targets[span.clone()]);
                    let w_full = per_element.map(|w| self.upload("weight", &w[span.clone()]));
                    let loss_buf = write_loss.then(|| self.output("loss", n * cols));
                    let grad_buf = with_grad.then(|| self.output("grad", n * cols));
                    let weight = match (&w_full, &column_weight_buf) {
                        (Some(w), _) => WeightArg::PerElement((w, 0)),
                        (None, Some(w)) => WeightArg::PerColumn(WholeArg::new(bin::WEIGHT, w)),
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
                            pos_weight: pos_weight_buf
                                .as_ref()
                                .map(|b| WholeArg::new(bin::POS_WEIGHT, b)),
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
                })
                .await?;
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
            let staging = self
                .scoped("binary_reduce", || {
                    let mut encoder = self.encoder("binary_reduce");
                    self.encode_binary_reduce(
                        &mut encoder,
                        &partials,
                        WholeArg::new(bin::RESULT, &result),
                        groups_done,
                        params,
                    )?;
                    let staging = self.stage(&mut encoder, &result, 8);
                    self.queue.submit([encoder.finish()]);
                    Ok(staging)
                })
                .await?;
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
        self.scoped_now(kernel_of(call.op).entry_point(), || {
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
        if matches!(views.input.dtype, DType::F16 | DType::BF16) {
            return Err(Error::InvalidView {
                name: "input",
                problem: format!(
                    "is {:?}; the element-wise losses take f32 (16-bit floats are for the softmax family and row losses)",
                    views.input.dtype
                ),
            });
        }
        self.check_view(&views.input, spec("input", DType::F32, rows, cols))?;
        self.check_view(&views.target, spec("targets", DType::F32, rows, cols))?;
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
                WeightArg::PerColumn(WholeArg::view(bin::WEIGHT, w))
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
                Some(WholeArg::view(bin::POS_WEIGHT, pw))
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
        let mut inputs = vec![("input", &views.input), ("targets", &views.target)];
        inputs.extend(views.weight.iter().map(|w| ("weight", w)));
        inputs.extend(views.pos_weight.iter().map(|w| ("pos_weight", w)));
        crate::tensor::reject_partial_overlap(("loss", &views.loss), &inputs)?;
        if let Some(g) = &views.grad {
            crate::tensor::reject_partial_overlap(("grad", g), &inputs)?;
            // Two outputs: the loss must not share the gradient's bytes at all.
            if g.shares_bytes(&views.loss) {
                return Err(Error::InvalidView {
                    name: "loss",
                    problem: "shares bytes with `grad`".into(),
                });
            }
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
            kernel_of(call.op),
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
                WholeArg::view(bin::RESULT, &views.loss),
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

    /// Records binary cross-entropy on probabilities into `encoder` (weights,
    /// `C` or `N·C` of them, a view in the options). Values in views are not
    /// range-checked on the host.
    pub fn encode_binary_cross_entropy(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &BinaryViews<'_>,
        options: &BinaryLossOptions<'_, GpuTensor<'_>>,
    ) -> Result<()> {
        self.encode_bce(encoder, views, options, BinaryOp::Probabilities)
    }

    /// Records binary cross-entropy with logits into `encoder` (`pos_weight`,
    /// `C` of them, a view in the options).
    pub fn encode_binary_cross_entropy_with_logits(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &BinaryViews<'_>,
        options: &BinaryLossOptions<'_, GpuTensor<'_>>,
    ) -> Result<()> {
        self.encode_bce(encoder, views, options, BinaryOp::Logits)
    }

    fn encode_bce(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &BinaryViews<'_>,
        options: &BinaryLossOptions<'_, GpuTensor<'_>>,
        op: BinaryOp,
    ) -> Result<()> {
        let call = Self::view_call(op, options.reduction, options.grad_scale, 0.0, 0.0);
        call.validate_scalars()?;
        let views = views.merged(options.weight.copied(), options.pos_weight.copied());
        self.encode_binary(encoder, &views, call)
    }

    /// Records torchvision's sigmoid focal loss into `encoder`.
    pub fn encode_sigmoid_focal_loss(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &BinaryViews<'_>,
        options: &SigmoidFocalOptions,
    ) -> Result<()> {
        let call = Self::view_call(
            BinaryOp::SigmoidFocal,
            options.reduction,
            options.grad_scale,
            options.alpha,
            options.gamma,
        );
        call.validate_scalars()?;
        self.encode_binary(encoder, &views.merged(None, None), call)
    }
}

impl GpuContext {
    /// Binary cross-entropy on probabilities `probs`, `[N, C]` with `C = cols`.
    /// See [`crate::loss::binary`]; `request` says whether the gradient is
    /// computed (in place is the same as a separate gradient here).
    pub async fn binary_cross_entropy(
        &self,
        probs: &[f32],
        targets: &[f32],
        cols: usize,
        options: &BinaryLossOptions<'_>,
        request: Request,
    ) -> Result<LossOutput> {
        let call = host_call(BinaryOp::Probabilities, probs, targets, cols, options);
        self.binary_run(call, request.wants_grad()).await
    }

    /// Binary cross-entropy with logits, `[N, C]` with `C = cols`. See
    /// [`crate::loss::binary`].
    ///
    /// ```
    /// # fn main() -> Result<(), wgpu_loss::Error> {
    /// use wgpu_loss::{block_on, BinaryLossOptions, GpuContext, Request};
    /// let ctx = block_on(GpuContext::new())?;
    /// let options = BinaryLossOptions::default(); // mean
    /// let out = block_on(ctx.binary_cross_entropy_with_logits(
    ///     &[0.0, 2.0], &[1.0, 0.0], 2, &options, Request::Loss))?;
    /// let expected = (2f32.ln() + (1.0 + 2f32.exp()).ln()) / 2.0;
    /// assert!((out.loss[0] - expected).abs() < 1e-6);
    /// assert!(out.grad.is_none());
    /// # Ok(()) }
    /// ```
    pub async fn binary_cross_entropy_with_logits(
        &self,
        logits: &[f32],
        targets: &[f32],
        cols: usize,
        options: &BinaryLossOptions<'_>,
        request: Request,
    ) -> Result<LossOutput> {
        let call = host_call(BinaryOp::Logits, logits, targets, cols, options);
        self.binary_run(call, request.wants_grad()).await
    }

    /// torchvision's sigmoid focal loss on logits, `[N, C]` with `C = cols`.
    /// See [`crate::loss::binary`].
    pub async fn sigmoid_focal_loss(
        &self,
        logits: &[f32],
        targets: &[f32],
        cols: usize,
        options: &SigmoidFocalOptions,
        request: Request,
    ) -> Result<LossOutput> {
        let call = BinaryCall {
            op: BinaryOp::SigmoidFocal,
            inputs: logits,
            targets,
            cols,
            weight: None,
            pos_weight: None,
            reduction: options.reduction,
            grad_scale: options.grad_scale,
            alpha: options.alpha,
            gamma: options.gamma,
        };
        self.binary_run(call, request.wants_grad()).await
    }
}

/// A host call of one of the BCE losses.
fn host_call<'a>(
    op: BinaryOp,
    inputs: &'a [f32],
    targets: &'a [f32],
    cols: usize,
    options: &BinaryLossOptions<'a>,
) -> BinaryCall<'a> {
    BinaryCall {
        op,
        inputs,
        targets,
        cols,
        weight: options.weight,
        pos_weight: options.pos_weight,
        reduction: options.reduction,
        grad_scale: options.grad_scale,
        alpha: 0.0,
        gamma: 0.0,
    }
}
