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
/// `logits` `[N, C]` (f32, f16 or bf16) and `targets` `[N]` (any int dtype;
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
    check_storable(&logits, "logits")?;
    check_len(
        "targets",
        targets.dims()[0],
        n,
        "one class index per row of `logits`",
    )?;
    if let Some(w) = options.weight {
        check_len(
            "weight",
            w.dims()[0],
            c,
            "one weight per class (column of `logits`)",
        )?;
    }
    let weight = options.weight.map(|w| constant(w, "weight")).transpose()?;
    let targets = class_indices(targets)?;
    let reduction = options.reduction;
    let per_row = (reduction == Reduction::None).then(|| Shape::new([n, 1]));
    let input = unwrap_float(logits.into_dispatch(), "logits")?;
    let out = differentiable([input], per_row, |[logits], [want_grad]| {
        let logits = resolve_float(logits);
        let dtype = logits.dtype;
        let mut launch = Launch::on(&logits, "logits")?;
        let li = launch.input(logits, "logits")?;
        let ti = launch.input(resolve_int(targets), "targets")?;
        let wi = weight
            .map(|w| launch.input(resolve_float(w), "weight"))
            .transpose()?;
        let len = loss_len(reduction, n);
        let lo = launch.output(Shape::new([len]), DType::F32, "loss")?;
        let go = if want_grad {
            Some(launch.output(Shape::new([n, c]), dtype, "grad")?)
        } else {
            None
        };
        let ((), tensors) = launch.run(|l, encoder| {
            let views = CrossEntropyViews {
                logits: l.view(li, n, c)?,
                targets: l.view(ti, n, 1)?,
                loss: l.view(lo, len, 1)?,
                grad: match go {
                    Some(g) => GradOutput::Into(l.view(g, n, c)?),
                    None => GradOutput::None,
                },
                lse: None,
            };
            let weight = wi.map(|w| l.view(w, c, 1)).transpose()?;
            let options = options.with_weight(weight.as_ref());
            l.context.encode_cross_entropy(encoder, &views, &options)?;
            Ok(())
        })?;
        let loss = fuse(tensors[lo].clone());
        let grad = go.map(|g| fuse(tensors[g].clone()));
        Ok((loss, [grad]))
    })?;
    Ok(loss_tensor(out, reduction))
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
    check_storable(&logits, "logits")?;
    if targets.dims() != [n, c] {
        return Err(Error::Shape(format!(
            "`targets` is {:?}; probability targets have the logits' shape [{n}, {c}]",
            targets.dims()
        )));
    }
    if let Some(w) = options.weight {
        check_len(
            "weight",
            w.dims()[0],
            c,
            "one weight per class (column of `logits`)",
        )?;
    }
    let weight = options.weight.map(|w| constant(w, "weight")).transpose()?;
    let targets = constant(&targets, "targets")?;
    let reduction = options.reduction;
    let per_row = (reduction == Reduction::None).then(|| Shape::new([n, 1]));
    let input = unwrap_float(logits.into_dispatch(), "logits")?;
    let out = differentiable([input], per_row, |[logits], [want_grad]| {
        let logits = resolve_float(logits);
        let dtype = logits.dtype;
        let mut launch = Launch::on(&logits, "logits")?;
        let li = launch.input(logits, "logits")?;
        let ti = launch.input(resolve_float(targets), "targets")?;
        let wi = weight
            .map(|w| launch.input(resolve_float(w), "weight"))
            .transpose()?;
        let len = loss_len(reduction, n);
        let lo = launch.output(Shape::new([len]), DType::F32, "loss")?;
        let go = if want_grad {
            Some(launch.output(Shape::new([n, c]), dtype, "grad")?)
        } else {
            None
        };
        let ((), tensors) = launch.run(|l, encoder| {
            let views = ProbTargetViews {
                logits: l.view(li, n, c)?,
                targets: l.view(ti, n, c)?,
                loss: l.view(lo, len, 1)?,
                grad: go.map(|g| l.view(g, n, c)).transpose()?,
                lse: None,
            };
            let weight = wi.map(|w| l.view(w, c, 1)).transpose()?;
            let options = options.with_weight(weight.as_ref());
            l.context
                .encode_cross_entropy_probs(encoder, &views, &options)?;
            Ok(())
        })?;
        let loss = fuse(tensors[lo].clone());
        let grad = go.map(|g| fuse(tensors[g].clone()));
        Ok((loss, [grad]))
    })?;
    Ok(loss_tensor(out, reduction))
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
    check_storable(&logits, "logits")?;
    check_len(
        "targets",
        targets.dims()[0],
        n,
        "one class index per row of `logits`",
    )?;
    if let Some(a) = options.alpha {
        check_len(
            "alpha",
            a.dims()[0],
            c,
            "one alpha per class (column of `logits`)",
        )?;
    }
    let alpha = options.alpha.map(|a| constant(a, "alpha")).transpose()?;
    let targets = class_indices(targets)?;
    let reduction = options.reduction;
    let per_row = (reduction == Reduction::None).then(|| Shape::new([n, 1]));
    let input = unwrap_float(logits.into_dispatch(), "logits")?;
    let out = differentiable([input], per_row, |[logits], [want_grad]| {
        let logits = resolve_float(logits);
        let dtype = logits.dtype;
        let mut launch = Launch::on(&logits, "logits")?;
        let li = launch.input(logits, "logits")?;
        let ti = launch.input(resolve_int(targets), "targets")?;
        let ai = alpha
            .map(|a| launch.input(resolve_float(a), "alpha"))
            .transpose()?;
        let len = loss_len(reduction, n);
        let lo = launch.output(Shape::new([len]), DType::F32, "loss")?;
        let go = if want_grad {
            Some(launch.output(Shape::new([n, c]), dtype, "grad")?)
        } else {
            None
        };
        let ((), tensors) = launch.run(|l, encoder| {
            let views = FocalViews {
                logits: l.view(li, n, c)?,
                targets: l.view(ti, n, 1)?,
                loss: l.view(lo, len, 1)?,
                grad: go.map(|g| l.view(g, n, c)).transpose()?,
                lse: None,
            };
            let alpha = ai.map(|a| l.view(a, c, 1)).transpose()?;
            let options = FocalOptions {
                alpha: alpha.as_ref(),
                gamma: options.gamma,
                ignore_index: options.ignore_index,
                reduction: options.reduction,
                grad_scale: options.grad_scale,
            };
            l.context.encode_focal_loss(encoder, &views, &options)?;
            Ok(())
        })?;
        let loss = fuse(tensors[lo].clone());
        let grad = go.map(|g| fuse(tensors[g].clone()));
        Ok((loss, [grad]))
    })?;
    Ok(loss_tensor(out, reduction))
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
    check_storable(&input, "input")?;
    if targets.dims() != [n, c] {
        return Err(Error::Shape(format!(
            "`targets` is {:?}; it needs the input's shape [{n}, {c}]",
            targets.dims()
        )));
    }
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
    if let Some(p) = pos_weight {
        check_len("pos_weight", p.dims()[0], c, "one weight per column")?;
    }
    let weight = weight.map(|w| constant(w, "weight")).transpose()?;
    let pos_weight = pos_weight.map(|p| constant(p, "pos_weight")).transpose()?;
    let targets = constant(&targets, "targets")?;
    let elements = n * c;
    let per_row = (reduction == Reduction::None).then(|| Shape::new([n, c]));
    let input = unwrap_float(input.into_dispatch(), "input")?;
    let out = differentiable([input], per_row, |[input], [want_grad]| {
        let input = resolve_float(input);
        let dtype = input.dtype;
        let mut launch = Launch::on(&input, "input")?;
        let ii = launch.input(input, "input")?;
        let ti = launch.input(resolve_float(targets), "targets")?;
        let wi = weight
            .map(|w| launch.input(resolve_float(w), "weight"))
            .transpose()?;
        let pi = pos_weight
            .map(|p| launch.input(resolve_float(p), "pos_weight"))
            .transpose()?;
        let len = loss_len(reduction, elements);
        let lo = launch.output(Shape::new([len]), DType::F32, "loss")?;
        let go = if want_grad {
            Some(launch.output(Shape::new([n, c]), dtype, "grad")?)
        } else {
            None
        };
        let ((), tensors) = launch.run(|l, encoder| {
            // Element losses are `[N, C]`; a reduced loss is `[2, 1]`.
            let loss = match reduction {
                Reduction::None => l.view(lo, n, c)?,
                Reduction::Mean | Reduction::Sum => l.view(lo, len, 1)?,
            };
            let views = BinaryViews {
                input: l.view(ii, n, c)?,
                targets: l.view(ti, n, c)?,
                loss,
                grad: go.map(|g| l.view(g, n, c)).transpose()?,
            };
            let weight = wi.map(|w| l.view(w, l.elements(w), 1)).transpose()?;
            let pos_weight = pi.map(|p| l.view(p, c, 1)).transpose()?;
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
                    l.context.encode_sigmoid_focal_loss(encoder, &views, o)?;
                }
            }
            Ok(())
        })?;
        let loss = fuse(tensors[lo].clone());
        let grad = go.map(|g| fuse(tensors[g].clone()));
        Ok((loss, [grad]))
    })?;
    let loss = loss_tensor(out, reduction);
    Ok(loss)
}

/// The gradients [`linear_cross_entropy`] returns through autodiff, and the
/// shapes it checks: hidden `[N, D]`, classifier `[V, D]`, bias `[V]`.
///
/// Cross-entropy on `hidden · classifierᵀ + bias` without the `[N, V]`
/// logits in memory. `hidden` and `classifier` are f32 or f16 (the same);
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
            let loss = fuse(tensors[lo].clone());
            let grads = [dhi, dwi, dbi]
                .into_iter()
                .take(wanted.len())
                .map(|g| g.map(|g| fuse(tensors[g].clone())))
                .collect();
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
