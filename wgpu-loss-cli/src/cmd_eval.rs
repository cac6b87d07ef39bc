//! `wgpu-loss eval`: one op or loss on array files, results as `.npy`.
//!
//! Everything is read and checked, and the op has run, before the first
//! output is written; outputs go to temporary names and are renamed into
//! place together, so a failure leaves no partial results.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use wgpu_loss::{Error as LossError, Reduction};
use wgpu_loss_cli::io::{read_array, write_npy_bytes, Array, ArrayData};
use wgpu_loss_cli::problem::{Op, Problem, Settings, Target};
use wgpu_loss_cli::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ReductionArg {
    None,
    Mean,
    Sum,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DeviceArg {
    /// The chosen GPU adapter.
    Gpu,
    /// The fast f32 CPU path on every core.
    Cpu,
    /// The f64 CPU reference, the oracle (results rounded to f32; slow).
    Reference,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// softmax, log-softmax, logsumexp, cross-entropy, binary-cross-entropy, bce-with-logits,
    /// sigmoid-focal, focal or linear-cross-entropy (cross-entropy-loss and
    /// linear-cross-entropy-loss: the loss alone, no gradients).
    #[arg(value_name = "OP")]
    pub(crate) op: String,
    /// Logits (probabilities for binary-cross-entropy; hidden states [N, D] for
    /// linear-cross-entropy): .npy, or FILE.safetensors[:TENSOR].
    #[arg(long, value_name = "X.npy")]
    pub(crate) input: String,
    /// linear-cross-entropy: the classifier weight [V, D] (nn.Linear's layout), .npy or
    /// FILE.safetensors:TENSOR (e.g. model.safetensors:lm_head.weight).
    #[arg(long, value_name = "W.npy")]
    pub(crate) classifier: Option<String>,
    /// linear-cross-entropy: the classifier bias [V].
    #[arg(long, value_name = "B.npy")]
    pub(crate) bias: Option<String>,
    /// linear-cross-entropy: bytes of logits held at once on the GPU [default: 32 MiB, or 64 rows if more].
    #[arg(long, value_name = "BYTES")]
    pub(crate) workspace_bytes: Option<u64>,
    /// Targets: class indices [N] (int) or probabilities [N, C] (float) for cross-entropy;
    /// class indices for focal; float labels of the input's shape for the binary losses.
    #[arg(long, value_name = "T.npy")]
    pub(crate) target: Option<String>,
    /// Class weights [C] (cross-entropy), per-class alpha [C] (focal), or binary weights
    /// ([C], per column, or the input's shape).
    #[arg(long, value_name = "W.npy")]
    pub(crate) weight: Option<String>,
    /// Positive-class weights [C] (bce-with-logits).
    #[arg(long, value_name = "P.npy")]
    pub(crate) pos_weight: Option<String>,
    /// Upstream gradient: the output's shape for the softmax family (writes grad.npy, the
    /// vector-Jacobian product); one value scaling the gradient for a mean or sum loss.
    #[arg(long, value_name = "G.npy")]
    pub(crate) grad_output: Option<String>,
    /// Reduction of the loss [default: mean].
    #[arg(long, value_enum)]
    pub(crate) reduction: Option<ReductionArg>,
    /// Target value ignored by cross-entropy and focal [default: -100].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) ignore_index: Option<i64>,
    /// Label smoothing in [0, 1] (cross-entropy) [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) label_smoothing: Option<f32>,
    /// z-loss weight (cross-entropy) [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) z_loss: Option<f32>,
    /// Logit softcap c > 0 (cross-entropy) [default: none].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) softcap: Option<f32>,
    /// Alpha: sigmoid-focal's class balance (-1 disables) [default: 0.25]; for focal, one
    /// alpha for every class [default: none].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) alpha: Option<f32>,
    /// Focusing parameter gamma >= 0 (focal losses) [default: 2].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) gamma: Option<f32>,
    /// Where to compute.
    #[arg(long, value_enum, default_value = "gpu")]
    pub(crate) device: DeviceArg,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
}

/// A file argument and what was read from it.
pub(crate) struct Input {
    pub(crate) flag: &'static str,
    pub(crate) arg: String,
    pub(crate) array: Array,
}

impl Input {
    pub(crate) fn read(flag: &'static str, arg: &str) -> Result<Input, String> {
        let array = read_array(arg).map_err(|e| format!("--{flag} {e}"))?;
        Ok(Input {
            flag,
            arg: arg.to_string(),
            array,
        })
    }

    pub(crate) fn problem(&self, text: impl std::fmt::Display) -> String {
        format!("--{} {}: {text}", self.flag, self.arg)
    }

    /// Takes the values out (they move into the problem; the shape stays for messages).
    pub(crate) fn floats(&mut self) -> Result<Vec<f32>, String> {
        match &mut self.array.data {
            ArrayData::F32(v) => Ok(std::mem::take(v)),
            ArrayData::I64(_) => Err(self.problem(format!(
                "has dtype {}; expected a float array",
                self.array.file_dtype
            ))),
        }
    }

    pub(crate) fn shape(&self) -> &[usize] {
        &self.array.shape
    }

    pub(crate) fn expect_shape(&self, expected: &[usize], why: &str) -> Result<(), String> {
        if self.shape() != expected {
            return Err(self.problem(format!(
                "has shape {:?}, expected {expected:?} ({why})",
                self.shape()
            )));
        }
        Ok(())
    }
}

pub(crate) fn read_optional(
    flag: &'static str,
    arg: &Option<String>,
) -> Result<Option<Input>, String> {
    arg.as_deref().map(|a| Input::read(flag, a)).transpose()
}

pub fn run(args: &EvalArgs) -> Result<ExitCode, String> {
    if let Some(request) = super::cmd_eval_linear::request_of(&args.op) {
        return super::cmd_eval_linear::run(args, request);
    }
    for (flag, given) in [
        ("classifier", args.classifier.is_some()),
        ("bias", args.bias.is_some()),
        ("workspace-bytes", args.workspace_bytes.is_some()),
    ] {
        if given {
            return Err(format!(
                "--{flag} applies to linear-cross-entropy only, not {}",
                args.op
            ));
        }
    }
    let op = Op::from_name(&args.op)
        .ok_or_else(|| format!("unknown op {:?}; expected one of {}", args.op, Op::names()))?;
    let settings = settings(args);
    let mut input = Input::read("input", &args.input)?;
    let mut target = read_optional("target", &args.target)?;
    let mut weight = read_optional("weight", &args.weight)?;
    let mut pos_weight = read_optional("pos-weight", &args.pos_weight)?;
    let mut grad_output = read_optional("grad-output", &args.grad_output)?;

    // What applies to this op comes first: `softmax --weight w.npy` should
    // say the weight does not apply, not that its shape is wrong.
    let skeleton = Problem {
        target: target.as_ref().map(|_| Target::Values(Vec::new())),
        weight: weight.as_ref().map(|_| Vec::new()),
        pos_weight: pos_weight.as_ref().map(|_| Vec::new()),
        grad_output: grad_output.as_ref().map(|_| vec![1.0]),
        settings,
        ..Problem::new(op, 0, 0, Vec::new())
    };
    skeleton.validate().map_err(|e| blame(&e, &[], None))?;

    let shape = input.shape().to_vec();
    let (rows, cols) = matrix_shape(op, &input)?;
    let x = input.floats()?;
    let mut problem = Problem {
        settings,
        ..Problem::new(op, rows, cols, x)
    };
    if let Some(t) = &mut target {
        problem.target = Some(target_for(op, t, &shape)?);
    }
    if let Some(w) = &mut weight {
        let values = w.floats()?;
        if op.is_elementwise() {
            if w.shape() != [cols] && w.shape() != shape.as_slice() {
                return Err(w.problem(format!(
                    "has shape {:?}; expected [{cols}] (one per column) or the input's shape {shape:?}",
                    w.shape()
                )));
            }
        } else {
            w.expect_shape(&[cols], "one weight per class")?;
        }
        problem.weight = Some(values);
    }
    if let Some(p) = &mut pos_weight {
        p.expect_shape(&[cols], "one weight per column of the input")?;
        problem.pos_weight = Some(p.floats()?);
    }
    if let Some(g) = &mut grad_output {
        let values = g.floats()?;
        match op {
            Op::Softmax | Op::LogSoftmax => g.expect_shape(&shape, "the output's shape")?,
            Op::Logsumexp => g.expect_shape(&shape[..shape.len() - 1], "the output's shape")?,
            _ if values.len() != 1 => {
                return Err(g.problem(format!(
                    "has shape {:?}; a loss takes one upstream gradient value (with --reduction mean or sum)",
                    g.shape()
                )))
            }
            _ => {}
        }
        problem.grad_output = Some(values);
    }
    let named: Vec<&Input> = [
        Some(&input),
        target.as_ref(),
        weight.as_ref(),
        pos_weight.as_ref(),
        grad_output.as_ref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    problem
        .validate()
        .map_err(|e| blame(&e, &named, Some(&problem)))?;

    let outputs = match args.device {
        DeviceArg::Gpu => {
            let ctx = super::gpu_context()
                .map_err(|e| format!("{e} (or run on the CPU with --device cpu)"))?;
            problem.run_gpu_sync(&ctx)
        }
        DeviceArg::Cpu => problem.run_fast(),
        DeviceArg::Reference => problem
            .run_reference()
            .map(|o| wgpu_loss_cli::problem::Outputs {
                output: o.output.into_iter().map(|v| v as f32).collect(),
                grad: o.grad.map(|g| g.into_iter().map(|v| v as f32).collect()),
            }),
    };
    let outputs = outputs.map_err(|e| blame(&e, &named, Some(&problem)))?;

    let (name, out_shape) = match op {
        Op::Softmax | Op::LogSoftmax => ("output.npy", shape.clone()),
        Op::Logsumexp => ("output.npy", shape[..shape.len() - 1].to_vec()),
        _ if problem.settings.reduction != Reduction::None => ("loss.npy", Vec::new()),
        _ if op.is_elementwise() => ("loss.npy", shape.clone()),
        _ => ("loss.npy", vec![rows]),
    };
    let mut files = vec![(name, out_shape, outputs.output)];
    if let Some(grad) = outputs.grad {
        files.push(("grad.npy", shape.clone(), grad));
    }
    write_outputs(&args.out, &files)?;
    // Notes only once everything succeeded: a failure stays one line.
    for input in &named {
        if input.array.was_narrowed() {
            eprintln!(
                "note: --{} {}: float64 values rounded to float32",
                input.flag, input.arg
            );
        }
    }
    for (name, shape, data) in &files {
        let path = args.out.join(name);
        match data.as_slice() {
            [v] if shape.is_empty() => println!("{}: {v}", path.display()),
            _ => println!("{}: float32 {shape:?}", path.display()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn settings(args: &EvalArgs) -> Settings {
    let d = Settings::default();
    Settings {
        reduction: match args.reduction {
            None => d.reduction,
            Some(ReductionArg::None) => Reduction::None,
            Some(ReductionArg::Mean) => Reduction::Mean,
            Some(ReductionArg::Sum) => Reduction::Sum,
        },
        ignore_index: args.ignore_index.unwrap_or(d.ignore_index),
        label_smoothing: args.label_smoothing.unwrap_or(d.label_smoothing),
        z_loss: args.z_loss.unwrap_or(d.z_loss),
        softcap: args.softcap,
        alpha: args.alpha,
        gamma: args.gamma.unwrap_or(d.gamma),
    }
}

/// `[rows, cols]` the op sees: the last axis is the row (softmax family,
/// element-wise losses); row losses take exactly `[N, C]`.
fn matrix_shape(op: Op, input: &Input) -> Result<(usize, usize), String> {
    let shape = input.shape();
    if op.is_row_loss() {
        let [n, c] = shape else {
            return Err(input.problem(format!(
                "has shape {shape:?}; {} takes logits of shape [N, C]",
                op.name()
            )));
        };
        if *c == 0 || *n == 0 {
            return Err(input.problem(format!("has shape {shape:?}; N and C must be at least 1")));
        }
        return Ok((*n, *c));
    }
    let cols = match shape.last() {
        Some(&c) => c,
        None if op.is_elementwise() => 1,
        None => {
            return Err(input.problem(format!(
                "is 0-d; {} works along the last axis of an array of rank >= 1",
                op.name()
            )))
        }
    };
    if cols == 0 || input.array.is_empty() {
        return Err(input.problem(format!("has shape {shape:?}, which holds no elements")));
    }
    Ok((input.array.len() / cols, cols))
}

fn target_for(op: Op, t: &mut Input, input_shape: &[usize]) -> Result<Target, String> {
    let data = std::mem::replace(&mut t.array.data, ArrayData::F32(Vec::new()));
    match (data, op) {
        (_, Op::Softmax | Op::LogSoftmax | Op::Logsumexp) => {
            Err(t.problem(format!("{} takes no target", op.name())))
        }
        (ArrayData::I64(classes), _) if op.is_row_loss() => {
            t.expect_shape(&input_shape[..1], "one class index per row of the input")?;
            Ok(Target::Classes(classes))
        }
        (ArrayData::F32(values), Op::CrossEntropy | Op::CrossEntropyLoss) => {
            t.expect_shape(
                input_shape,
                "probability targets have the input's shape [N, C]",
            )?;
            Ok(Target::Values(values))
        }
        (ArrayData::F32(_), _) if op.is_row_loss() => Err(t.problem(format!(
            "has dtype {}; {} takes integer class indices",
            t.array.file_dtype,
            op.name()
        ))),
        (ArrayData::F32(values), _) => {
            t.expect_shape(input_shape, "binary targets have the input's shape")?;
            Ok(Target::Values(values))
        }
        (ArrayData::I64(_), _) => Err(t.problem(format!(
            "has dtype {}; {} takes float targets (0..1)",
            t.array.file_dtype,
            op.name()
        ))),
    }
}

/// Names the file or option behind a library error.
fn blame(e: &Error, inputs: &[&Input], problem: Option<&Problem>) -> String {
    let flag = |name: &str| inputs.iter().find(|i| i.flag == name);
    let e = match e {
        Error::NotApplicable { what, op } => {
            return format!("--{} does not apply to {op}", what.replace('_', "-"))
        }
        Error::Missing { what, op } => return format!("{op} needs --{}", what.replace('_', "-")),
        Error::Loss(e) => e,
        other => return other.to_string(),
    };
    let owner = match e {
        LossError::TargetOutOfRange { .. } => flag("target"),
        LossError::InvalidWeight { index, value } => {
            // Class weights and pos_weight share the error; see whose value it is.
            let holds = |w: Option<&Vec<f32>>| {
                w.and_then(|w| w.get(*index))
                    .is_some_and(|v| v.to_bits() == value.to_bits())
            };
            match problem {
                Some(p) if holds(p.weight.as_ref()) => flag("weight"),
                Some(p) if holds(p.pos_weight.as_ref()) => flag("pos-weight"),
                _ => flag("weight").or(flag("pos-weight")),
            }
        }
        LossError::InvalidValue { what, .. } if what.contains("target") => flag("target"),
        LossError::InvalidValue { what, .. } if what.contains("weight") => {
            flag("weight").or(flag("pos-weight"))
        }
        LossError::InvalidValue { .. } => flag("input"),
        // Focal's per-class alpha comes from --weight when that file is given.
        LossError::InvalidOption { name: "alpha", .. } if flag("weight").is_some() => {
            flag("weight")
        }
        // A loss's one-value grad-output becomes its grad_scale.
        LossError::InvalidOption {
            name: "grad_scale", ..
        } => flag("grad-output"),
        LossError::InvalidOption { name, .. } => {
            return format!("--{}: {e}", name.replace('_', "-"))
        }
        _ => None,
    };
    match owner {
        Some(i) => i.problem(e),
        None => e.to_string(),
    }
}

/// Every file `eval` writes into `--out`.
const OUTPUT_NAMES: [&str; 5] = [
    "output.npy",
    "loss.npy",
    "grad.npy",
    "grad_classifier.npy",
    "grad_bias.npy",
];

/// Writes every output under a temporary name, then renames them all into
/// place. A failure while writing removes the temporaries and leaves nothing;
/// the renames themselves are best effort (a rename failing after another
/// succeeded, e.g. the folder vanishing, leaves the files renamed so far).
pub(crate) fn write_outputs(
    dir: &Path,
    files: &[(&str, Vec<usize>, Vec<f32>)],
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("--out {}: {e}", dir.display()))?;
    let mut written: Vec<(PathBuf, PathBuf)> = Vec::new();
    let cleanup = |written: &[(PathBuf, PathBuf)]| {
        for (tmp, _) in written {
            std::fs::remove_file(tmp).ok();
        }
    };
    for (name, shape, data) in files {
        let path = dir.join(name);
        let tmp = wgpu_loss_cli::io::temporary_name(&path);
        let bytes = write_npy_bytes(shape, data).map_err(|e| e.to_string());
        let result = bytes.and_then(|b| {
            std::fs::write(&tmp, b).map_err(|e| format!("--out {}: {e}", path.display()))
        });
        if let Err(e) = result {
            std::fs::remove_file(&tmp).ok();
            cleanup(&written);
            return Err(e);
        }
        written.push((tmp, path));
    }
    for (tmp, path) in &written {
        if let Err(e) = std::fs::rename(tmp, path) {
            cleanup(&written);
            return Err(format!("--out {}: {e}", path.display()));
        }
    }
    // eval owns these names in DIR: one an earlier run wrote and this one did
    // not (grad.npy after a run without --grad-output) would be stale.
    for name in OUTPUT_NAMES {
        if !files.iter().any(|(n, _, _)| *n == name) {
            std::fs::remove_file(dir.join(name)).ok();
        }
    }
    Ok(())
}
