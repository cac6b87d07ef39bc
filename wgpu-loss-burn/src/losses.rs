//! The crate's losses on burn tensors.

use burn::tensor::{DType, Int, IntDType, Shape, Tensor};
use wgpu_loss::{
    BinaryLossOptions, BinaryViews, CrossEntropyOptions, CrossEntropyViews, FocalOptions,
    FocalViews, GradOutput, LinearCrossEntropyOptions, LinearCrossEntropyViews, ProbTargetViews,
    Reduction, SigmoidFocalOptions,
};

use crate::autodiff::differentiable;
use crate::bridge::{
    fuse, resolve_float, resolve_int, unwrap_float, unwrap_int, Fused, Launch, Unwrapped,
};
use crate::Error;

/// A float tensor that only feeds the loss (class weights, probability
/// targets): its primitive, with any autodiff tracking dropped.
fn constant<const D: usize>(tensor: &Tensor<D>, name: &'static str) -> Result<Fused, Error> {
    let (unwrapped, _) = unwrap_float(tensor.clone().into_dispatch(), name)?;
    Ok(match unwrapped {
        Unwrapped::Plain(p) => p,
        Unwrapped::Tracked(t) => t.into_primitive(),
    })
}

/// Refuses a float tensor whose dtype burn's device cannot hold: burn
/// still hands out such a tensor (a bf16 cast where CubeCL compiles WGSL,
/// which has no bf16), but the kernel that should fill it never ran.
fn check_storable<const D: usize>(tensor: &Tensor<D>, name: &'static str) -> Result<(), Error> {
    let dtype = tensor.dtype();
    if tensor.device().supports_dtype(dtype) {
        Ok(())
    } else {
        Err(Error::DType {
            tensor: name,
            found: format!("{dtype:?}, which burn's device cannot store"),
        })
    }
}

/// Class indices as the kernels read them: i32.
fn class_indices(targets: Tensor<1, Int>) -> Result<Fused, Error> {
    let targets = if targets.dtype() == DType::I32 {
        targets
    } else {
        targets.cast(IntDType::I32)
    };
    unwrap_int(targets.into_dispatch(), "targets")
}

fn check_len(name: &'static str, len: usize, expected: usize, what: &str) -> Result<(), Error> {
    if len == expected {
        Ok(())
    } else {
        Err(Error::Shape(format!(
            "`{name}` has {len} elements; {what} needs {expected}"
        )))
    }
}

/// The loss tensor's length: one per row (or element) for `Reduction::None`,
/// else the loss and its z-loss part, of which the caller keeps the first.
fn loss_len(reduction: Reduction, per_row: usize) -> usize {
    match reduction {
        Reduction::None => per_row,
        Reduction::Mean | Reduction::Sum => 2,
    }
}

/// Wraps the op's output tensor: the per-row losses as they are, a reduced
/// loss as its first element (`[1]`, as burn's losses return it).
fn loss_tensor(out: burn::backend::DispatchTensor, reduction: Reduction) -> Tensor<1> {
    let loss = Tensor::<1>::from_dispatch(out);
    match reduction {
        Reduction::None => loss,
        Reduction::Mean | Reduction::Sum => loss.narrow(0, 0, 1),
    }
}

/// Cross-entropy with class-index targets, PyTorch's `cross_entropy`:
/// `logits` `[N, C]` (f32, f16 or bf16, where burn's device can store it)
/// and `targets` `[N]` (any int dtype;
/// i32 is read as it is, others are cast once on the device). Class weights,
/// if any, are a `[C]` float tensor in `options.weight`.
///
/// Returns `[N]` row losses for `Reduction::None`, else `[1]`. On an
/// autodiff device the loss is tracked, and its gradient with respect to
/// `logits` is the crate's fused one (see the crate docs for when it is
/// computed). Class weights get no gradient.
///
/// ```
/// # fn main() -> Result<(), wgpu_loss_burn::Error> {
/// use burn::tensor::{Int, Tensor};
/// use wgpu_loss_burn::{cross_entropy, CrossEntropyOptions, SharedDevice};
/// let shared = SharedDevice::from_burn()?;
/// let device = shared.device().clone().autodiff();
/// let logits = Tensor::<2>::from_floats([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], &device).require_grad();
/// let targets = Tensor::<1, Int>::from_ints([0, 2], &device);
/// let loss = cross_entropy(logits.clone(), targets, &CrossEntropyOptions::default())?;
/// let grads = loss.backward();
/// let dlogits = logits.grad(&grads).expect("logits are tracked");
/// // Each row of softmax minus one-hot sums to zero.
/// let row_sums = dlogits.sum_dim(1).into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
/// assert!(row_sums.iter().all(|s| s.abs() < 1e-6));
/// # Ok(()) }
/// ```
pub fn cross_entropy(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    options: &CrossEntropyOptions<'_, Tensor<1>>,
) -> Result<Tensor<1>, Error> {
    options.validate_scalars()?;
    let [n, c] = logits.dims();
    check_indices(&logits, &targets)?;
    let weight = per_class(options.weight, c, "weight")?;
    let operands = vec![
        Some(Operand::Indices(class_indices(targets)?, "targets")),
        weight,
    ];
    let reduction = options.reduction;
    let len = loss_len(reduction, n);
    let rows = (len, Shape::new([n, 1]));
    run_loss(
        logits,
        "logits",
        operands,
        reduction,
        rows,
        |l, encoder, s| {
            let views = CrossEntropyViews {
                logits: l.view(s.input, n, c)?,
                targets: l.view(s.operand(0)?, n, 1)?,
                loss: l.view(s.loss, len, 1)?,
                grad: match s.grad {
                    Some(g) => GradOutput::Into(l.view(g, n, c)?),
                    None => GradOutput::None,
                },
                lse: None,
            };
            let weight = s.operands[1].map(|w| l.view(w, c, 1)).transpose()?;
            let options = options.with_weight(weight.as_ref());
            Ok(l.context.encode_cross_entropy(encoder, &views, &options)?)
        },
    )
}

/// Cross-entropy with probability targets (`targets` `[N, C]`, f32), as
/// PyTorch's `cross_entropy` with a float target. The gradient is with
/// respect to `logits`; the targets are constants.
pub fn cross_entropy_probs(
    logits: Tensor<2>,
    targets: Tensor<2>,
    options: &CrossEntropyOptions<'_, Tensor<1>>,
) -> Result<Tensor<1>, Error> {
    options.validate_scalars()?;
    let [n, c] = logits.dims();
    check_same_shape(&logits, &targets, "probability targets")?;
    let weight = per_class(options.weight, c, "weight")?;
    let targets = Operand::Floats(constant(&targets, "targets")?, "targets");
    let operands = vec![Some(targets), weight];
    let reduction = options.reduction;
    let len = loss_len(reduction, n);
    let rows = (len, Shape::new([n, 1]));
    run_loss(
        logits,
        "logits",
        operands,
        reduction,
        rows,
        |l, encoder, s| {
            let views = ProbTargetViews {
                logits: l.view(s.input, n, c)?,
                targets: l.view(s.operand(0)?, n, c)?,
                loss: l.view(s.loss, len, 1)?,
                grad: s.grad.map(|g| l.view(g, n, c)).transpose()?,
                lse: None,
            };
            let weight = s.operands[1].map(|w| l.view(w, c, 1)).transpose()?;
            let options = options.with_weight(weight.as_ref());
            Ok(l.context
                .encode_cross_entropy_probs(encoder, &views, &options)?)
        },
    )
}

/// The multiclass focal loss on class-index targets; per-class `α`, if
/// any, is a `[C]` float tensor in `options.alpha`.
pub fn focal_loss(
    logits: Tensor<2>,
    targets: Tensor<1, Int>,
    options: &FocalOptions<'_, Tensor<1>>,
) -> Result<Tensor<1>, Error> {
    options.validate_scalars()?;
    let [n, c] = logits.dims();
    check_indices(&logits, &targets)?;
    let alpha = per_class(options.alpha, c, "alpha")?;
    let operands = vec![
        Some(Operand::Indices(class_indices(targets)?, "targets")),
        alpha,
    ];
    let reduction = options.reduction;
    let len = loss_len(reduction, n);
    let rows = (len, Shape::new([n, 1]));
    run_loss(
        logits,
        "logits",
        operands,
        reduction,
        rows,
        |l, encoder, s| {
            let views = FocalViews {
                logits: l.view(s.input, n, c)?,
                targets: l.view(s.operand(0)?, n, 1)?,
                loss: l.view(s.loss, len, 1)?,
                grad: s.grad.map(|g| l.view(g, n, c)).transpose()?,
                lse: None,
            };
            let alpha = s.operands[1].map(|a| l.view(a, c, 1)).transpose()?;
            let options = FocalOptions {
                alpha: alpha.as_ref(),
                gamma: options.gamma,
                ignore_index: options.ignore_index,
                reduction: options.reduction,
                grad_scale: options.grad_scale,
            };
            Ok(l.context.encode_focal_loss(encoder, &views, &options)?)
        },
    )
}

/// Which element-wise binary loss.
#[derive(Clone, Copy)]
enum Binary<'o> {
    Probabilities(&'o BinaryLossOptions<'o, Tensor<1>>),
    Logits(&'o BinaryLossOptions<'o, Tensor<1>>),
    SigmoidFocal(&'o SigmoidFocalOptions),
}

/// Binary cross-entropy on probabilities `input` `[N, C]` against targets
/// in `[0, 1]` of the same shape. `options.weight` holds `C` or `N·C`
/// weights. Returns `[N·C]` element losses for `Reduction::None`, else `[1]`.
pub fn binary_cross_entropy(
    input: Tensor<2>,
    targets: Tensor<2>,
    options: &BinaryLossOptions<'_, Tensor<1>>,
) -> Result<Tensor<1>, Error> {
    binary(input, targets, Binary::Probabilities(options))
}

/// Binary cross-entropy with logits (PyTorch's
/// `binary_cross_entropy_with_logits`), with `weight` (`C` or `N·C`) and
/// `pos_weight` (`C`) in the options.
pub fn binary_cross_entropy_with_logits(
    logits: Tensor<2>,
    targets: Tensor<2>,
    options: &BinaryLossOptions<'_, Tensor<1>>,
) -> Result<Tensor<1>, Error> {
    binary(logits, targets, Binary::Logits(options))
}

/// torchvision's `sigmoid_focal_loss`.
pub fn sigmoid_focal_loss(
    logits: Tensor<2>,
    targets: Tensor<2>,
    options: &SigmoidFocalOptions,
) -> Result<Tensor<1>, Error> {
    binary(logits, targets, Binary::SigmoidFocal(options))
}

fn binary(input: Tensor<2>, targets: Tensor<2>, op: Binary<'_>) -> Result<Tensor<1>, Error> {
    let [n, c] = input.dims();
    check_same_shape(&input, &targets, "binary targets")?;
    let (reduction, weight, pos_weight) = match op {
        Binary::Probabilities(o) | Binary::Logits(o) => (o.reduction, o.weight, o.pos_weight),
        Binary::SigmoidFocal(o) => (o.reduction, None, None),
    };
    if let Some(w) = weight {
        let len = w.dims()[0];
        if len != c && len != n * c {
            return Err(Error::Shape(format!(
                "`weight` has {len} elements; binary weights are C = {c} or N·C = {}",
                n * c
            )));
        }
    }
    let weight = weight
        .map(|w| Ok::<_, Error>(Operand::Floats(constant(w, "weight")?, "weight")))
        .transpose()?;
    let pos_weight = per_class(pos_weight, c, "pos_weight")?;
    let targets = Operand::Floats(constant(&targets, "targets")?, "targets");
    let operands = vec![Some(targets), weight, pos_weight];
    let len = loss_len(reduction, n * c);
    let elements = (len, Shape::new([n, c]));
    run_loss(
        input,
        "input",
        operands,
        reduction,
        elements,
        |l, encoder, s| {
            // Element losses are `[N, C]`; a reduced loss is `[2, 1]`.
            let loss = match reduction {
                Reduction::None => l.view(s.loss, n, c)?,
                Reduction::Mean | Reduction::Sum => l.view(s.loss, len, 1)?,
            };
            let views = BinaryViews {
                input: l.view(s.input, n, c)?,
                targets: l.view(s.operand(0)?, n, c)?,
                loss,
                grad: s.grad.map(|g| l.view(g, n, c)).transpose()?,
            };
            let weight = s.operands[1]
                .map(|w| l.view(w, l.elements(w), 1))
                .transpose()?;
            let pos_weight = s.operands[2].map(|p| l.view(p, c, 1)).transpose()?;
            match op {
                Binary::Probabilities(o) | Binary::Logits(o) => {
                    let options = BinaryLossOptions {
                        weight: weight.as_ref(),
                        pos_weight: pos_weight.as_ref(),
                        reduction: o.reduction,
                        grad_scale: o.grad_scale,
                    };
                    if matches!(op, Binary::Logits(_)) {
                        l.context
                            .encode_binary_cross_entropy_with_logits(encoder, &views, &options)?;
                    } else {
                        l.context
                            .encode_binary_cross_entropy(encoder, &views, &options)?;
                    }
                }
                Binary::SigmoidFocal(o) => {
                    l.context.encode_sigmoid_focal_loss(encoder, &views, o)?
                }
            }
            Ok(())
        },
    )
}

/// A tensor a loss only reads, named for errors.
enum Operand {
    /// i32 class indices.
    Indices(Fused, &'static str),
    /// Floats: probability or binary targets, weights.
    Floats(Fused, &'static str),
}

/// Where one call's tensors were pinned, for its encode closure.
struct Slots {
    input: usize,
    /// One per operand given, `None` where the operand was absent.
    operands: Vec<Option<usize>>,
    loss: usize,
    grad: Option<usize>,
}

impl Slots {
    /// An operand the loss always has.
    fn operand(&self, index: usize) -> Result<usize, Error> {
        self.operands
            .get(index)
            .copied()
            .flatten()
            .ok_or_else(|| Error::Burn(format!("operand {index} was not pinned")))
    }
}

/// What every row and element loss does around its one encode call: the
/// input's autodiff, pinning the input and `operands`, the outputs (the
/// loss `[len]` in f32, the gradient like the input when wanted), and
/// wrapping the loss for burn. `upstream` is the shape the upstream
/// gradient of unreduced losses takes to broadcast over the `[N, C]`
/// gradient: `[N, 1]` for row losses, `[N, C]` for element losses.
/// `encode` records the crate's op.
fn run_loss(
    input: Tensor<2>,
    name: &'static str,
    operands: Vec<Option<Operand>>,
    reduction: Reduction,
    (len, upstream): (usize, Shape),
    encode: impl FnOnce(&Launch, &mut wgpu::CommandEncoder, &Slots) -> Result<(), Error>,
) -> Result<Tensor<1>, Error> {
    let [n, c] = input.dims();
    check_storable(&input, name)?;
    let per_row = (reduction == Reduction::None).then_some(upstream);
    let unwrapped = unwrap_float(input.into_dispatch(), name)?;
    let out = differentiable([unwrapped], per_row, |[input], [want_grad]| {
        let input = resolve_float(input);
        let dtype = input.dtype;
        let mut launch = Launch::on(&input, name)?;
        let input = launch.input(input, name)?;
        let operands = operands
            .into_iter()
            .map(|operand| {
                operand
                    .map(|operand| match operand {
                        Operand::Indices(t, name) => launch.input(resolve_int(t), name),
                        Operand::Floats(t, name) => launch.input(resolve_float(t), name),
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let loss = launch.output(Shape::new([len]), DType::F32, "loss")?;
        let grad = want_grad
            .then(|| launch.output(Shape::new([n, c]), dtype, "grad"))
            .transpose()?;
        let slots = Slots {
            input,
            operands,
            loss,
            grad,
        };
        let ((), tensors) = launch.run(|l, encoder| encode(l, encoder, &slots))?;
        let loss = fuse(tensors[slots.loss].clone())?;
        let grad = slots.grad.map(|g| fuse(tensors[g].clone())).transpose()?;
        Ok((loss, [grad]))
    })?;
    Ok(loss_tensor(out, reduction))
}

/// Class-index targets: one per row of `logits`.
fn check_indices(logits: &Tensor<2>, targets: &Tensor<1, Int>) -> Result<(), Error> {
    check_len(
        "targets",
        targets.dims()[0],
        logits.dims()[0],
        "one class index per row of `logits`",
    )
}

/// Targets of the input's shape.
fn check_same_shape(input: &Tensor<2>, targets: &Tensor<2>, what: &str) -> Result<(), Error> {
    if input.dims() == targets.dims() {
        Ok(())
    } else {
        Err(Error::Shape(format!(
            "`targets` is {:?}; {what} have the input's shape {:?}",
            targets.dims(),
            input.dims()
        )))
    }
}

/// An optional per-class tensor of `classes` values, as a float operand.
fn per_class(
    tensor: Option<&Tensor<1>>,
    classes: usize,
    name: &'static str,
) -> Result<Option<Operand>, Error> {
    tensor
        .map(|t| {
            check_len(
                name,
                t.dims()[0],
                classes,
                "one value per class (column of the input)",
            )?;
            Ok(Operand::Floats(constant(t, name)?, name))
        })
        .transpose()
}

/// Cross-entropy on `hidden · classifierᵀ + bias` without the `[N, V]`
/// logits in memory: hidden `[N, D]`, classifier `[V, D]` (the layout of
/// burn's and PyTorch's linear weight), bias `[V]`, targets `[N]`. `hidden` and `classifier` are f32 or f16 (the same);
/// `bias` is f32. On an autodiff device, the gradients with respect to the
/// tracked ones among `hidden`, `classifier` and `bias` come from the same
/// fused call as the loss. Gradients through a `Reduction::None` loss are
/// refused ([`Error::Unsupported`]): a per-row upstream gradient would have
/// to enter the classifier's gradient inside the product.
pub fn linear_cross_entropy(
    hidden: Tensor<2>,
    classifier: Tensor<2>,
    bias: Option<Tensor<1>>,
    targets: Tensor<1, Int>,
    options: &LinearCrossEntropyOptions<'_, Tensor<1>>,
) -> Result<Tensor<1>, Error> {
    options.loss.validate_scalars()?;
    let [n, d] = hidden.dims();
    let [v, dc] = classifier.dims();
    check_storable(&hidden, "hidden")?;
    check_storable(&classifier, "classifier")?;
    if dc != d {
        return Err(Error::Shape(format!(
            "`classifier` is [{v}, {dc}] and `hidden` is [{n}, {d}]: their second dimensions differ"
        )));
    }
    check_len(
        "targets",
        targets.dims()[0],
        n,
        "one class index per row of `hidden`",
    )?;
    if let Some(b) = &bias {
        check_len(
            "bias",
            b.dims()[0],
            v,
            "one bias per class (row of `classifier`)",
        )?;
    }
    if let Some(w) = options.loss.weight {
        check_len(
            "weight",
            w.dims()[0],
            v,
            "one weight per class (row of `classifier`)",
        )?;
    }
    let reduction = options.loss.reduction;
    let weight = options
        .loss
        .weight
        .map(|w| constant(w, "weight"))
        .transpose()?;
    let targets = class_indices(targets)?;
    let hidden = unwrap_float(hidden.into_dispatch(), "hidden")?;
    let classifier = unwrap_float(classifier.into_dispatch(), "classifier")?;
    let per_row = (reduction == Reduction::None).then(|| Shape::new([n, 1]));
    let run =
        |primitives: Vec<Fused>, wanted: Vec<bool>| -> Result<(Fused, Vec<Option<Fused>>), Error> {
            if reduction == Reduction::None && wanted.iter().any(|w| *w) {
                return Err(Error::Unsupported(
                    "gradients of linear_cross_entropy through a Reduction::None loss \
                 (use Mean or Sum; a per-row upstream gradient would enter dW inside the product)"
                        .into(),
                ));
            }
            let mut primitives = primitives.into_iter();
            let (Some(h), Some(w)) = (primitives.next(), primitives.next()) else {
                return Err(Error::Burn("linear_cross_entropy lost an input".into()));
            };
            let b = primitives.next();
            let h = resolve_float(h);
            let dtype = h.dtype;
            let mut launch = Launch::on(&h, "hidden")?;
            let hi = launch.input(h, "hidden")?;
            let wi = launch.input(resolve_float(w), "classifier")?;
            let bi = b
                .map(|b| launch.input(resolve_float(b), "bias"))
                .transpose()?;
            let ti = launch.input(resolve_int(targets), "targets")?;
            let cwi = weight
                .map(|cw| launch.input(resolve_float(cw), "weight"))
                .transpose()?;
            let len = loss_len(reduction, n);
            let lo = launch.output(Shape::new([len]), DType::F32, "loss")?;
            let want = |i: usize| wanted.get(i).copied().unwrap_or(false);
            let dhi = want(0)
                .then(|| launch.output(Shape::new([n, d]), dtype, "grad_hidden"))
                .transpose()?;
            let dwi = want(1)
                .then(|| launch.output(Shape::new([v, d]), dtype, "grad_classifier"))
                .transpose()?;
            let dbi = want(2)
                .then(|| launch.output(Shape::new([v]), DType::F32, "grad_bias"))
                .transpose()?;
            let ((), tensors) = launch.run(|l, encoder| {
                let views = LinearCrossEntropyViews {
                    hidden: l.view(hi, n, d)?,
                    classifier: l.view(wi, v, d)?,
                    bias: bi.map(|b| l.view(b, v, 1)).transpose()?,
                    targets: l.view(ti, n, 1)?,
                    loss: l.view(lo, len, 1)?,
                    lse: None,
                    grad_hidden: dhi.map(|g| l.view(g, n, d)).transpose()?,
                    grad_classifier: dwi.map(|g| l.view(g, v, d)).transpose()?,
                    grad_bias: dbi.map(|g| l.view(g, v, 1)).transpose()?,
                };
                let weight = cwi.map(|w| l.view(w, v, 1)).transpose()?;
                let options = LinearCrossEntropyOptions {
                    loss: options.loss.with_weight(weight.as_ref()),
                    workspace_bytes: options.workspace_bytes,
                    parameter_grads: options.parameter_grads,
                };
                l.context
                    .encode_linear_cross_entropy(encoder, &views, &options)?;
                Ok(())
            })?;
            let loss = fuse(tensors[lo].clone())?;
            let grads = [dhi, dwi, dbi]
                .into_iter()
                .take(wanted.len())
                .map(|g| g.map(|g| fuse(tensors[g].clone())).transpose())
                .collect::<Result<_, _>>()?;
            Ok((loss, grads))
        };
    let out = match bias {
        None => differentiable([hidden, classifier], per_row, |p, w| {
            let (loss, grads) = run(p.into(), w.into())?;
            let mut grads = grads.into_iter();
            Ok((loss, [grads.next().flatten(), grads.next().flatten()]))
        })?,
        Some(bias) => {
            let bias = unwrap_float(bias.into_dispatch(), "bias")?;
            differentiable([hidden, classifier, bias], per_row, |p, w| {
                let (loss, grads) = run(p.into(), w.into())?;
                let mut grads = grads.into_iter();
                Ok((
                    loss,
                    [
                        grads.next().flatten(),
                        grads.next().flatten(),
                        grads.next().flatten(),
                    ],
                ))
            })?
        }
    };
    Ok(loss_tensor(out, reduction))
}
