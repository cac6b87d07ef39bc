//! `wgpu-loss eval linear-cross-entropy`: the fused linear + cross-entropy
//! from hidden states and a classifier weight, without the logits in memory
//! on the GPU. Writes `loss.npy`, and for the op with gradients `grad.npy`
//! (`dH`), `grad_classifier.npy` and, with a bias, `grad_bias.npy`.
//!
//! The hidden states stream in windows of rows (a whole number of the
//! op's chunks, so `dW` and `db`, accumulated on the device across windows,
//! add in the same order as one call over every row); the classifier, its
//! gradient and the bias stay resident on the device. Hidden states and
//! classifier that are both f16 or both bf16 stay 16-bit there.

use std::process::ExitCode;

use wgpu_loss::{
    reference, Accumulate, CrossEntropyOptions, DType, GpuTensor, LinearCrossEntropyOptions,
    LinearCrossEntropyViews, LinearGrads, LinearShape, Reduction,
};
use wgpu_loss_cli::gpu;
use wgpu_loss_cli::io::Element;
use wgpu_loss_cli::problem::{Op, Problem, Target};
use wgpu_loss_cli::stream::{self, OutputFiles, RowFold, StreamIn, Window};

use crate::cmd_eval::{
    bytes_per_row, create_outputs, finish_outputs, output_element, plan_windows, prepare_out,
    remove_stale, report, settings, DeviceArg, EvalArgs, Input, Streamed, MAX_WINDOW_ROWS,
};

/// The gradients an op name asks for, if it is one of this op's names.
pub(crate) fn request_of(op: &str) -> Option<LinearGrads> {
    match op {
        "linear-cross-entropy" => Some(LinearGrads::ALL),
        "linear-cross-entropy-loss" => Some(LinearGrads::NONE),
        _ => None,
    }
}

pub(crate) fn run(args: &EvalArgs, grads: LinearGrads) -> Result<ExitCode, String> {
    let grads = if args.no_grad {
        LinearGrads::NONE
    } else {
        grads
    };
    for (flag, given) in [
        ("pos-weight", args.pos_weight.is_some()),
        ("alpha", args.options.alpha.is_some()),
        ("gamma", args.options.gamma.is_some()),
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
    if args.device == DeviceArg::Cpu {
        return Err(format!(
            "{} runs on --device gpu or --device reference (the f64 oracle); \
             `bench --op linear-cross-entropy` has its CPU timing",
            args.op
        ));
    }
    let hidden = Streamed::open("input", &args.input)?;
    let mut classifier = Input::read("classifier", classifier_arg)?;
    let mut bias = crate::cmd_eval::read_optional("bias", &args.bias)?;
    let mut target = Streamed::open("target", target_arg)?;
    let mut weight = crate::cmd_eval::read_optional("weight", &args.weight)?;
    let mut grad_output = crate::cmd_eval::read_optional("grad-output", &args.grad_output)?;

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
    if !hidden.file.element.is_float() {
        return Err(hidden.problem(format!(
            "has dtype {}; expected a float array",
            hidden.file.element.name()
        )));
    }
    // Hidden states and classifier both f16 or both bf16 (a model's own
    // dtype) stay 16-bit on the GPU: half the memory of widening them, and
    // the same results (the product widens each element exactly). Mixed
    // types run in f32, as everything else does.
    let gpu_dtype = match hidden.file.element {
        e if classifier.array.file_dtype != e.name() => DType::F32,
        Element::F16 => DType::F16,
        Element::Bf16 => DType::BF16,
        _ => DType::F32,
    };
    let w = classifier.floats()?;
    let b = match &mut bias {
        Some(b) => {
            b.expect_shape(&[v], "one bias per class")?;
            Some(b.floats()?)
        }
        None => None,
    };
    target.expect_shape(&[n], "one class index per row of the hidden states")?;
    if target.file.element.is_float() {
        return Err(target.problem(format!(
            "has dtype {}; {} takes integer class indices",
            target.file.element.name(),
            args.op
        )));
    }
    let targets = target.all_ints()?;
    let class_weights = match &mut weight {
        Some(wt) => {
            wt.expect_shape(&[v], "one weight per class")?;
            Some(wt.floats()?)
        }
        None => None,
    };
    let s = settings(args);
    let mut upstream = 1.0f32;
    if let Some(g) = &mut grad_output {
        let values = g.floats()?;
        if values.len() != 1 || s.reduction == Reduction::None {
            return Err(g.problem(
                "a loss takes one upstream gradient value (with --reduction mean or sum)",
            ));
        }
        upstream = values[0];
    }
    let loss = CrossEntropyOptions {
        weight: class_weights.as_deref(),
        ignore_index: s.ignore_index,
        label_smoothing: s.label_smoothing,
        reduction: s.reduction,
        z_loss: s.z_loss,
        softcap: s.softcap,
        grad_scale: upstream,
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
    // Options and targets of the whole problem, before anything runs.
    loss.validate_scalars().map_err(blame)?;
    if let Some(wt) = &class_weights {
        if let Some((index, &value)) = wt
            .iter()
            .enumerate()
            .find(|(_, x)| !x.is_finite() || **x < 0.0)
        {
            return Err(blame(wgpu_loss::Error::InvalidWeight { index, value }));
        }
    }
    if let Some((row, &t)) = targets
        .iter()
        .enumerate()
        .find(|(_, &t)| t != s.ignore_index && !(0..v as i64).contains(&t))
    {
        return Err(blame(wgpu_loss::Error::TargetOutOfRange {
            row,
            target: t,
            classes: v,
            ignore_index: s.ignore_index,
        }));
    }
    // Windows run as `eval`'s others do (`Problem::window_plan`): the
    // cross-entropy of the [N, V] logits, which are never formed.
    let plan = Problem {
        target: Some(Target::Classes(targets.clone())),
        weight: class_weights.clone(),
        grad_output: grad_output.is_some().then(|| vec![upstream]),
        settings: s,
        ..Problem::new(Op::CrossEntropy, n, v, Vec::new())
    }
    .window_plan(true);
    let reduced = plan.reduced;
    let mut window_loss = loss;
    window_loss.reduction = plan.settings.reduction;
    window_loss.z_loss = plan.settings.z_loss;
    window_loss.grad_scale = plan.run.grad_scale;
    let shape = LinearShape {
        rows: n,
        hidden: d,
        classes: v,
    };

    let ctx = match args.device {
        DeviceArg::Gpu => Some(
            crate::gpu_context()
                .map_err(|e| format!("{e} (or run on the CPU with --device reference)"))?,
        ),
        _ => None,
    };
    // Windows of whole chunks (see the module docs).
    let chunk = match &ctx {
        Some(ctx) => ctx
            .linear_cross_entropy_chunk_rows(shape, args.workspace_bytes)
            .map_err(blame)?,
        None => 1,
    };
    let want = grads.any();
    let element = output_element(args, hidden.file.element);
    let mut streamed_out: Vec<(&str, Vec<usize>, usize)> = Vec::new();
    if !reduced {
        streamed_out.push(("loss.npy", vec![n], 1));
    }
    if want {
        streamed_out.push(("grad.npy", vec![n, d], d));
    }
    let mut all_out: Vec<(&str, Vec<usize>)> = streamed_out
        .iter()
        .map(|(name, s, _)| (*name, s.clone()))
        .collect();
    if reduced {
        all_out.insert(0, ("loss.npy", Vec::new()));
    }
    if want {
        all_out.push(("grad_classifier.npy", vec![v, d]));
        if b.is_some() {
            all_out.push(("grad_bias.npy", vec![v]));
        }
    }
    let out_lens: Vec<usize> = streamed_out.iter().map(|o| o.2).collect();
    let per_row = bytes_per_row(&[(d, hidden.file.element)], &out_lens) + 8;
    let budget = args.memory_budget.unwrap_or(stream::DEFAULT_MEMORY_BUDGET);
    let window = stream::window_rows(n, per_row, budget, n as u64 * 8, chunk)?
        .min(MAX_WINDOW_ROWS / chunk * chunk);
    let windows = plan_windows(n, window);

    prepare_out(&args.out, &all_out, element)?;
    let mut files = OutputFiles::default();
    let outputs = create_outputs(&args.out, &mut files, &streamed_out, element)?;
    let mut progress = stream::Progress::new(
        n,
        (d * hidden.file.element.size()) as u64
            + out_lens
                .iter()
                .map(|&l| (l * element.size()) as u64)
                .sum::<u64>(),
    );
    let mut fold = RowFold::default();

    // Resident on the device: the classifier, bias, class weights, dW, db.
    let resident = ctx.as_ref().map(|ctx| {
        let w_buf = gpu::buffer_in(ctx, "classifier", &w, gpu_dtype);
        let b_buf = b.as_ref().map(|b| gpu::buffer_with(ctx, "bias", b));
        let cw_buf = class_weights
            .as_ref()
            .map(|cw| gpu::buffer_with(ctx, "class weights", cw));
        let dw_buf = want.then(|| gpu::buffer(ctx, "grad classifier", (v * d * 4) as u64));
        let db_buf = (want && b.is_some()).then(|| gpu::buffer(ctx, "grad bias", (v * 4) as u64));
        (w_buf, b_buf, cw_buf, dw_buf, db_buf)
    });
    // The reference's parameter gradients, summed over windows in f64.
    let mut ref_dw = vec![0.0f64; if want && ctx.is_none() { v * d } else { 0 }];
    let mut ref_db = vec![
        0.0f64;
        if want && ctx.is_none() && b.is_some() {
            v
        } else {
            0
        }
    ];
    // The GPU takes i32 targets: ignored rows carry an i32 ignore index.
    let gpu_ignore = i32::try_from(s.ignore_index).unwrap_or(i32::MIN);
    let inputs = vec![StreamIn {
        file: hidden.file,
        row_len: d,
    }];
    let outputs = stream::run_pipeline(
        &windows,
        inputs,
        outputs,
        &mut progress,
        stream::interrupt_flag(),
        |win: Window| {
            let h = win.inputs.into_iter().next().unwrap_or_default();
            let t = &targets[win.first..win.first + win.rows];
            let rows = win.rows;
            let (row_losses, dh) = match (&ctx, &resident) {
                (Some(ctx), Some((w_buf, b_buf, cw_buf, dw_buf, db_buf))) => {
                    let t32: Vec<i32> = t
                        .iter()
                        .map(|&x| {
                            if x == s.ignore_index {
                                gpu_ignore
                            } else {
                                x as i32
                            }
                        })
                        .collect();
                    let h_buf = gpu::buffer_in(ctx, "hidden window", &h, gpu_dtype);
                    let t_buf = gpu::buffer_with(ctx, "targets window", &t32);
                    let l_buf = gpu::buffer(ctx, "row losses", (rows * 4) as u64);
                    let dh_buf =
                        want.then(|| gpu::buffer(ctx, "grad hidden window", (rows * d * 4) as u64));
                    let cw_view = cw_buf.as_ref().map(|c| GpuTensor::f32_vector(c, 0, v));
                    let mut gpu_loss = window_loss.with_weight(cw_view.as_ref());
                    gpu_loss.ignore_index = i64::from(gpu_ignore);
                    let views = LinearCrossEntropyViews {
                        hidden: gpu::matrix(&h_buf, gpu_dtype, 0, rows, d),
                        classifier: gpu::matrix(w_buf, gpu_dtype, 0, v, d),
                        bias: b_buf.as_ref().map(|b| GpuTensor::f32_vector(b, 0, v)),
                        targets: GpuTensor::i32_vector(&t_buf, 0, rows),
                        loss: GpuTensor::f32_vector(&l_buf, 0, rows),
                        lse: None,
                        grad_hidden: dh_buf
                            .as_ref()
                            .map(|g| GpuTensor::f32_matrix(g, 0, rows, d)),
                        grad_classifier: dw_buf.as_ref().map(|g| GpuTensor::f32_matrix(g, 0, v, d)),
                        grad_bias: db_buf.as_ref().map(|g| GpuTensor::f32_vector(g, 0, v)),
                    };
                    let options = LinearCrossEntropyOptions {
                        loss: gpu_loss,
                        workspace_bytes: args.workspace_bytes,
                        parameter_grads: if win.first == 0 {
                            Accumulate::Overwrite
                        } else {
                            Accumulate::Add
                        },
                    };
                    let mut encoder = gpu::encoder(ctx, "linear_cross_entropy window");
                    ctx.encode_linear_cross_entropy(&mut encoder, &views, &options)
                        .map_err(blame)?;
                    gpu::submit_and_wait(ctx, encoder).map_err(|e| e.to_string())?;
                    let losses: Vec<f32> =
                        gpu::read(ctx, &l_buf, rows).map_err(|e| e.to_string())?;
                    let dh = match &dh_buf {
                        Some(g) => {
                            Some(gpu::read::<f32>(ctx, g, rows * d).map_err(|e| e.to_string())?)
                        }
                        None => None,
                    };
                    (
                        losses.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>(),
                        dh,
                    )
                }
                _ => {
                    let r = reference::linear_cross_entropy(
                        &h,
                        &w,
                        b.as_deref(),
                        t,
                        LinearShape {
                            rows,
                            hidden: d,
                            classes: v,
                        },
                        &window_loss,
                    )
                    .map_err(|e| {
                        blame(match e {
                            wgpu_loss::Error::TargetOutOfRange {
                                row,
                                target,
                                classes,
                                ignore_index,
                            } => wgpu_loss::Error::TargetOutOfRange {
                                row: row + win.first,
                                target,
                                classes,
                                ignore_index,
                            },
                            other => other,
                        })
                    })?;
                    if want {
                        ref_dw
                            .iter_mut()
                            .zip(&r.grad_classifier)
                            .for_each(|(a, x)| *a += x);
                        ref_db
                            .iter_mut()
                            .zip(&r.grad_bias)
                            .for_each(|(a, x)| *a += x);
                    }
                    // `none`: each row's loss holds its z-loss part.
                    let losses = r.loss;
                    let dh = want.then(|| r.grad_hidden.iter().map(|&x| x as f32).collect());
                    (losses, dh)
                }
            };
            let mut out = Vec::new();
            if reduced {
                fold.add(row_losses.iter().copied());
            } else {
                out.push(row_losses.iter().map(|&x| x as f32).collect());
            }
            if let Some(dh) = dh {
                out.push(dh);
            }
            Ok(out)
        },
    )?;
    let mut whole: Vec<(&str, Vec<usize>, Vec<f32>)> = Vec::new();
    let loss_value = fold.result(plan.denominator) as f32;
    if reduced {
        whole.push(("loss.npy", Vec::new(), vec![loss_value]));
    }
    if want {
        let (dw, db) = match (&ctx, &resident) {
            (Some(ctx), Some((_, _, _, Some(dw_buf), db_buf))) => (
                gpu::read::<f32>(ctx, dw_buf, v * d).map_err(|e| e.to_string())?,
                match db_buf {
                    Some(g) => Some(gpu::read::<f32>(ctx, g, v).map_err(|e| e.to_string())?),
                    None => None,
                },
            ),
            _ => (
                ref_dw.iter().map(|&x| x as f32).collect(),
                b.is_some()
                    .then(|| ref_db.iter().map(|&x| x as f32).collect()),
            ),
        };
        whole.push(("grad_classifier.npy", vec![v, d], dw));
        if let Some(db) = db {
            whole.push(("grad_bias.npy", vec![v], db));
        }
    }
    finish_outputs(&args.out, &mut files, outputs, &whole, element)?;
    files.commit()?;
    let names: Vec<&str> = all_out.iter().map(|(name, _)| *name).collect();
    remove_stale(&args.out, &names);
    report(
        args,
        &all_out,
        reduced.then_some(loss_value),
        element,
        &progress,
        windows.len(),
        window,
    );
    Ok(ExitCode::SUCCESS)
}
