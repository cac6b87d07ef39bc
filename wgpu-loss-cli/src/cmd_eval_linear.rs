//! `wgpu-loss eval linear-cross-entropy`: the fused linear + cross-entropy
//! from hidden states and a classifier weight, without the logits in memory
//! on the GPU. Writes `loss.npy`, and for the op with gradients `grad.npy`
//! (`dH`), `grad_classifier.npy` and, with a bias, `grad_bias.npy`.

use std::process::ExitCode;

use wgpu_loss::{
    reference, CrossEntropyOptions, LinearCrossEntropyOptions, LinearGrads, LinearShape, Reduction,
};
use wgpu_loss_cli::io::ArrayData;

use crate::cmd_eval::{read_optional, settings, write_outputs, DeviceArg, EvalArgs, Input};

/// The gradients an op name asks for, if it is one of this op's names.
pub(crate) fn request_of(op: &str) -> Option<LinearGrads> {
    match op {
        "linear-cross-entropy" => Some(LinearGrads::ALL),
        "linear-cross-entropy-loss" => Some(LinearGrads::NONE),
        _ => None,
    }
}

pub(crate) fn run(args: &EvalArgs, grads: LinearGrads) -> Result<ExitCode, String> {
    for (flag, given) in [
        ("pos-weight", args.pos_weight.is_some()),
        ("alpha", args.alpha.is_some()),
        ("gamma", args.gamma.is_some()),
    ] {
        if given {
            return Err(format!("--{flag} does not apply to {}", args.op));
        }
    }
    let Some(classifier_arg) = &args.classifier else {
        return Err(format!(
            "{} needs --classifier (the [V, D] weight)",
            args.op
        ));
    };
    let Some(target_arg) = &args.target else {
        return Err(format!("{} needs --target (class indices [N])", args.op));
    };
    let mut hidden = Input::read("input", &args.input)?;
    let mut classifier = Input::read("classifier", classifier_arg)?;
    let mut bias = read_optional("bias", &args.bias)?;
    let mut target = Input::read("target", target_arg)?;
    let mut weight = read_optional("weight", &args.weight)?;
    let mut grad_output = read_optional("grad-output", &args.grad_output)?;

    let [n, d] = *hidden.shape() else {
        return Err(hidden.problem(format!(
            "has shape {:?}; hidden states are [N, D]",
            hidden.shape()
        )));
    };
    let [v, dw] = *classifier.shape() else {
        return Err(classifier.problem(format!(
            "has shape {:?}; the classifier is [V, D] (nn.Linear's layout)",
            classifier.shape()
        )));
    };
    if dw != d {
        return Err(classifier.problem(format!("has {dw} columns; the hidden states have D = {d}")));
    }
    if n == 0 || d == 0 || v == 0 {
        return Err(hidden.problem(format!(
            "N = {n}, D = {d}, V = {v}: each must be at least 1"
        )));
    }
    let h = hidden.floats()?;
    let w = classifier.floats()?;
    let b = match &mut bias {
        Some(b) => {
            b.expect_shape(&[v], "one bias per class")?;
            Some(b.floats()?)
        }
        None => None,
    };
    target.expect_shape(&[n], "one class index per row of the hidden states")?;
    let targets = match std::mem::replace(&mut target.array.data, ArrayData::F32(Vec::new())) {
        ArrayData::I64(t) => t,
        ArrayData::F32(_) => {
            return Err(target.problem(format!(
                "has dtype {}; {} takes integer class indices",
                target.array.file_dtype, args.op
            )))
        }
    };
    let class_weights = match &mut weight {
        Some(wt) => {
            wt.expect_shape(&[v], "one weight per class")?;
            Some(wt.floats()?)
        }
        None => None,
    };
    let s = settings(args);
    let mut loss = CrossEntropyOptions {
        weight: class_weights.as_deref(),
        ignore_index: s.ignore_index,
        label_smoothing: s.label_smoothing,
        reduction: s.reduction,
        z_loss: s.z_loss,
        softcap: s.softcap,
        grad_scale: 1.0,
    };
    if let Some(g) = &mut grad_output {
        let values = g.floats()?;
        if values.len() != 1 || s.reduction == Reduction::None {
            return Err(g.problem(
                "a loss takes one upstream gradient value (with --reduction mean or sum)",
            ));
        }
        loss.grad_scale = values[0];
    }
    let shape = LinearShape {
        rows: n,
        hidden: d,
        classes: v,
    };
    let options = LinearCrossEntropyOptions {
        loss,
        workspace_bytes: args.workspace_bytes,
    };
    let blame = |e: wgpu_loss::Error| -> String {
        match e {
            wgpu_loss::Error::TargetOutOfRange { .. } => target.problem(e),
            wgpu_loss::Error::InvalidWeight { .. } => match &weight {
                Some(wt) => wt.problem(e),
                None => e.to_string(),
            },
            wgpu_loss::Error::InvalidOption { name, .. } => {
                format!("--{}: {e}", name.replace('_', "-"))
            }
            wgpu_loss::Error::WorkspaceTooSmall { .. } => format!("--workspace-bytes: {e}"),
            other => other.to_string(),
        }
    };
    let out = match args.device {
        DeviceArg::Gpu => {
            let ctx = crate::gpu_context()
                .map_err(|e| format!("{e} (or run on the CPU with --device reference)"))?;
            wgpu_loss::block_on(ctx.linear_cross_entropy(
                &h,
                &w,
                b.as_deref(),
                &targets,
                shape,
                &options,
                grads,
            ))
            .map_err(blame)?
        }
        DeviceArg::Reference => {
            let r = reference::linear_cross_entropy(&h, &w, b.as_deref(), &targets, shape, &loss)
                .map_err(blame)?;
            let narrow = |x: Vec<f64>| x.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
            let want = grads.any();
            wgpu_loss::LinearCrossEntropyOutput {
                loss: narrow(r.loss),
                z_loss: narrow(r.z_loss),
                lse: narrow(r.lse),
                grad_hidden: want.then(|| narrow(r.grad_hidden)),
                grad_classifier: want.then(|| narrow(r.grad_classifier)),
                grad_bias: (want && b.is_some()).then(|| narrow(r.grad_bias)),
            }
        }
        DeviceArg::Cpu => {
            return Err(format!(
                "{} runs on --device gpu or --device reference (the f64 oracle); \
                 `bench --op linear-cross-entropy` has its CPU timing",
                args.op
            ))
        }
    };
    let loss_shape = if s.reduction == Reduction::None {
        vec![n]
    } else {
        Vec::new()
    };
    let mut files = vec![("loss.npy", loss_shape, out.loss)];
    if let Some(g) = out.grad_hidden {
        files.push(("grad.npy", vec![n, d], g));
    }
    if let Some(g) = out.grad_classifier {
        files.push(("grad_classifier.npy", vec![v, d], g));
    }
    if let Some(g) = out.grad_bias {
        files.push(("grad_bias.npy", vec![v], g));
    }
    write_outputs(&args.out, &files)?;
    for (name, shape, data) in &files {
        let path = args.out.join(name);
        match data.as_slice() {
            [x] if shape.is_empty() => println!("{}: {x}", path.display()),
            _ => println!("{}: float32 {shape:?}", path.display()),
        }
    }
    Ok(ExitCode::SUCCESS)
}
