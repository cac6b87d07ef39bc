//! `wgpu-loss eval`: one op or loss on array files, results as `.npy`,
//! streamed in windows of rows under a memory budget ([`wgpu_loss_cli::stream`]).
//!
//! Shapes, options and class-index targets are checked before anything is
//! computed; the disk must have room for every output before the first is
//! created. Outputs go to temporary names, written as the windows finish,
//! and are renamed into place only when the whole run succeeded, so a
//! failure (a bad value in a late window, a full disk, Ctrl-C) leaves none.
//! `mean` and `sum` fold the per-row losses in row order in f64 over the
//! whole file, with the whole file's denominator, so any window size gives
//! the same bits.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use wgpu_loss::Error as LossError;
use wgpu_loss_cli::io::{read_array, Array, ArrayData, ArrayFile, Element, NpyWriter};
use wgpu_loss_cli::problem::{Op, Outputs, Problem, Settings, Target};
use wgpu_loss_cli::stream::{self, OutputFiles, RowFold, StreamIn, StreamOut, Window};
use wgpu_loss_cli::Error;

use crate::cmd_options::LossOptionArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DeviceArg {
    /// The chosen GPU adapter.
    Gpu,
    /// The fast f32 CPU path on every core.
    Cpu,
    /// The f64 CPU reference, the oracle (results rounded to f32; slow).
    Reference,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OutputDtype {
    /// The input's: float16, float32 or float64 (bfloat16 inputs give float32: .npy has no bfloat16).
    Input,
    /// float32 whatever the input.
    F32,
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
    #[command(flatten)]
    pub(crate) options: LossOptionArgs,
    /// Where to compute.
    #[arg(long, value_enum, default_value = "gpu")]
    pub(crate) device: DeviceArg,
    /// Output folder (created if missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
    /// Bytes of windows held at once (host buffers, and GPU buffers, which are host memory
    /// on a CPU adapter); files of any size stream through in windows of rows. Arrays read
    /// whole (class-index targets, weights) count toward it; linear-cross-entropy's
    /// classifier, its gradient and the logits workspace do not [default: 536870912 (512 MiB)].
    #[arg(long, value_name = "BYTES")]
    pub(crate) memory_budget: Option<u64>,
    /// The loss alone: the input is read once and no gradient is written.
    #[arg(long)]
    pub(crate) no_grad: bool,
    /// Element type of the output files.
    #[arg(long, value_enum, default_value = "input")]
    pub(crate) output_dtype: OutputDtype,
    /// Print a final JSON summary line: rows, bytes read and written, seconds, GB/s, windows.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `--FLAG ARG: text`: a problem with a file argument.
fn named_problem(flag: &str, arg: &str, text: impl std::fmt::Display) -> String {
    format!("--{flag} {arg}: {text}")
}

/// An error naming the file argument when `shape` is not `expected`.
fn check_shape(
    flag: &str,
    arg: &str,
    shape: &[usize],
    expected: &[usize],
    why: &str,
) -> Result<(), String> {
    if shape != expected {
        return Err(named_problem(
            flag,
            arg,
            format!("has shape {shape:?}, expected {expected:?} ({why})"),
        ));
    }
    Ok(())
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
        named_problem(self.flag, &self.arg, text)
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
        check_shape(self.flag, &self.arg, self.shape(), expected, why)
    }
}

pub(crate) fn read_optional(
    flag: &'static str,
    arg: &Option<String>,
) -> Result<Option<Input>, String> {
    arg.as_deref().map(|a| Input::read(flag, a)).transpose()
}

/// A streamed file argument: the file opened for windowed reads, and how
/// the command line named it (for messages).
pub(crate) struct Streamed {
    pub(crate) flag: &'static str,
    pub(crate) arg: String,
    pub(crate) file: ArrayFile,
}

impl Streamed {
    pub(crate) fn open(flag: &'static str, arg: &str) -> Result<Streamed, String> {
        let file = ArrayFile::open(arg).map_err(|e| format!("--{flag} {e}"))?;
        Ok(Streamed {
            flag,
            arg: arg.to_string(),
            file,
        })
    }

    pub(crate) fn open_optional(
        flag: &'static str,
        arg: &Option<String>,
    ) -> Result<Option<Streamed>, String> {
        arg.as_deref().map(|a| Streamed::open(flag, a)).transpose()
    }

    pub(crate) fn problem(&self, text: impl std::fmt::Display) -> String {
        named_problem(self.flag, &self.arg, text)
    }

    pub(crate) fn shape(&self) -> &[usize] {
        &self.file.shape
    }

    /// Every value as f32 (small arrays: weights, one grad-output value).
    pub(crate) fn all_floats(&mut self) -> Result<Vec<f32>, String> {
        let n = self.file.len();
        self.file
            .read_f32(0, n)
            .map_err(|e| format!("--{} {e}", self.flag))
    }

    /// Every value as i64 (class-index targets).
    pub(crate) fn all_ints(&mut self) -> Result<Vec<i64>, String> {
        let n = self.file.len();
        self.file
            .read_i64(0, n)
            .map_err(|e| format!("--{} {e}", self.flag))
    }

    pub(crate) fn expect_shape(&self, expected: &[usize], why: &str) -> Result<(), String> {
        check_shape(self.flag, &self.arg, self.shape(), expected, why)
    }

    pub(crate) fn as_input(&self) -> Input {
        Input {
            flag: self.flag,
            arg: self.arg.clone(),
            array: wgpu_loss_cli::io::Array {
                shape: self.file.shape.clone(),
                data: ArrayData::F32(Vec::new()),
                file_dtype: self.file.element.name(),
                source: self.file.source.clone(),
            },
        }
    }
}

/// The element type outputs are written in.
pub(crate) fn output_element(args: &EvalArgs, input: Element) -> Element {
    match args.output_dtype {
        OutputDtype::Input => input.output(),
        OutputDtype::F32 => Element::F32,
    }
}

/// Creates the output folder and checks that `outputs` fit on its disk.
pub(crate) fn prepare_out(
    dir: &Path,
    outputs: &[(&str, Vec<usize>)],
    element: Element,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("--out {}: {e}", dir.display()))?;
    let needed = outputs
        .iter()
        .map(|(_, shape)| NpyWriter::file_bytes(shape, element))
        .sum();
    stream::space_problem(dir, needed, stream::available_bytes(dir))
}

/// Opens the streamed outputs under temporary names.
pub(crate) fn create_outputs(
    dir: &Path,
    files: &mut OutputFiles,
    outputs: &[(&str, Vec<usize>, usize)],
    element: Element,
) -> Result<Vec<StreamOut>, String> {
    outputs
        .iter()
        .map(|(name, shape, row_len)| {
            let tmp = files.temporary(&dir.join(name));
            Ok(StreamOut {
                writer: NpyWriter::create(&tmp, shape, element).map_err(|e| e.to_string())?,
                row_len: *row_len,
            })
        })
        .collect()
}

/// Finishes streamed outputs and writes the small ones whole.
pub(crate) fn finish_outputs(
    dir: &Path,
    files: &mut OutputFiles,
    streamed: Vec<StreamOut>,
    whole: &[(&str, Vec<usize>, Vec<f32>)],
    element: Element,
) -> Result<(), String> {
    for out in streamed {
        out.writer.finish().map_err(|e| e.to_string())?;
    }
    for (name, shape, values) in whole {
        let tmp = files.temporary(&dir.join(name));
        let mut w = NpyWriter::create(&tmp, shape, element).map_err(|e| e.to_string())?;
        w.append(values).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Removes outputs an earlier run wrote that this one did not (eval owns
/// these names in `--out`: a grad.npy from a run with gradients would be stale).
pub(crate) fn remove_stale(dir: &Path, written: &[&str]) {
    for name in OUTPUT_NAMES {
        if !written.contains(&name) {
            std::fs::remove_file(dir.join(name)).ok();
        }
    }
}

/// Prints what was written (and `--json`'s summary).
pub(crate) fn report(
    args: &EvalArgs,
    written: &[(&str, Vec<usize>)],
    scalar: Option<f32>,
    element: Element,
    progress: &stream::Progress,
    windows: usize,
    window_rows: usize,
) {
    for (name, shape) in written {
        let path = args.out.join(name);
        match scalar {
            Some(v) if shape.is_empty() => println!("{}: {v}", path.display()),
            _ => println!("{}: {} {shape:?}", path.display(), element.name()),
        }
    }
    if args.json {
        println!("{}", progress.json(windows, window_rows));
    }
}

/// Bytes per row the pipeline holds: each streamed input twice as f32 (the
/// window being read and the one being computed), once as file bytes, and
/// on the device; each output on the device, in a staging buffer, and twice
/// on the host (the window computed and the one being written). Device
/// buffers count twice: the library's host API keeps them pooled in
/// power-of-two size classes (measured: 1.2 to 1.4 times the budget's
/// bytes when they counted once; see BENCHMARKS.md).
pub(crate) fn bytes_per_row(inputs: &[(usize, Element)], outputs: &[usize]) -> u64 {
    let i: u64 = inputs
        .iter()
        .map(|&(len, e)| len as u64 * (2 * 4 + e.size() as u64 + 2 * 4))
        .sum();
    let o: u64 = outputs
        .iter()
        .map(|&len| len as u64 * (2 * 4 + 2 * 4 + 2 * 4))
        .sum();
    i + o
}

/// Most rows in one window, whatever the budget: the library's
/// single-workgroup passes walk a window's rows (lavapipe bounds their loops).
pub(crate) const MAX_WINDOW_ROWS: usize = 1 << 22;

/// Windows `[first, first + rows)` of `rows` rows, `window` each.
pub(crate) fn plan_windows(rows: usize, window: usize) -> Vec<(usize, usize)> {
    let window = window.max(1);
    (0..rows)
        .step_by(window)
        .map(|first| (first, window.min(rows - first)))
        .collect()
}

/// The GPU context for a streamed run of `rows` rows. The library splits
/// long rows across workgroups when a call has fewer than
/// `split_rows_below` rows; a window is a call, so the whole file decides:
/// with at least that many rows no window splits, as one window would not.
/// Splitting for occupancy (`occupancy_workgroups`) gives a call of fewer
/// rows more chunks, so windows of different sizes would split differently
/// (and round differently): streamed runs split by `split_vectors` alone.
pub(crate) fn stream_context(rows: usize) -> Result<wgpu_loss::GpuContext, String> {
    let ctx = super::gpu_context()?;
    let tuning = ctx.row_tuning();
    let whole_file_unsplit =
        tuning.split_rows_below != 0 && rows >= tuning.split_rows_below as usize;
    if tuning.occupancy_workgroups == 0 && !whole_file_unsplit {
        return Ok(ctx);
    }
    drop(ctx);
    let options = wgpu_loss::ContextOptions {
        row_tuning: Some(wgpu_loss::RowTuning {
            split_rows_below: if whole_file_unsplit {
                0
            } else {
                tuning.split_rows_below
            },
            occupancy_workgroups: 0,
            ..tuning
        }),
        ..Default::default()
    };
    wgpu_loss::block_on(wgpu_loss::GpuContext::with_options(options)).map_err(|e| e.to_string())
}

/// Where a window's library error happened in the whole file: rows and
/// elements are counted from the window's first row.
fn shift_error(e: Error, first: usize, cols: usize, weight_streamed: bool) -> Error {
    let e = match e {
        Error::Loss(e) => e,
        other => return other,
    };
    Error::Loss(match e {
        LossError::TargetOutOfRange {
            row,
            target,
            classes,
            ignore_index,
        } => LossError::TargetOutOfRange {
            row: row + first,
            target,
            classes,
            ignore_index,
        },
        LossError::InvalidValue {
            what,
            row,
            col,
            value,
            reason,
        } => LossError::InvalidValue {
            what,
            row: row + first,
            col,
            value,
            reason,
        },
        LossError::InvalidWeight { index, value } if weight_streamed => LossError::InvalidWeight {
            index: index + first * cols,
            value,
        },
        other => other,
    })
}

/// `eval` of every op but the fused linear + cross-entropy
/// (`cmd_eval_linear`, which `main` sends its names to).
pub fn run(args: &EvalArgs) -> Result<ExitCode, String> {
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
    let input = Streamed::open("input", &args.input)?;
    let mut target = Streamed::open_optional("target", &args.target)?;
    let mut weight = Streamed::open_optional("weight", &args.weight)?;
    let mut pos_weight = Streamed::open_optional("pos-weight", &args.pos_weight)?;
    let mut grad_output = Streamed::open_optional("grad-output", &args.grad_output)?;

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
    if args.no_grad && op.softmax_op().is_some() && grad_output.is_some() {
        return Err("--no-grad and --grad-output: the softmax family's gradient is what --grad-output asks for; give one of them".into());
    }

    let shape = input.shape().to_vec();
    let (rows, cols) = matrix_shape(op, &input)?;
    if !input.file.element.is_float() {
        return Err(input.problem(format!(
            "has dtype {}; expected a float array",
            input.file.element.name()
        )));
    }
    // Small arrays are read whole; arrays of the input's shape stream with it.
    let mut streamed_in = vec![(input.flag, cols)];
    let mut classes: Option<Vec<i64>> = None;
    let mut target_streamed = false;
    if let Some(t) = &mut target {
        match (t.file.element.is_float(), op) {
            (_, Op::Softmax | Op::LogSoftmax | Op::Logsumexp) => {
                return Err(t.problem(format!("{} takes no target", op.name())))
            }
            (false, _) if op.is_row_loss() => {
                t.expect_shape(&shape[..1], "one class index per row of the input")?;
                classes = Some(t.all_ints()?);
            }
            (true, Op::CrossEntropy | Op::CrossEntropyLoss) => {
                t.expect_shape(&shape, "probability targets have the input's shape [N, C]")?;
                target_streamed = true;
            }
            (true, _) if op.is_row_loss() => {
                return Err(t.problem(format!(
                    "has dtype {}; {} takes integer class indices",
                    t.file.element.name(),
                    op.name()
                )))
            }
            (true, _) => {
                t.expect_shape(&shape, "binary targets have the input's shape")?;
                target_streamed = true;
            }
            (false, _) => {
                return Err(t.problem(format!(
                    "has dtype {}; {} takes float targets (0..1)",
                    t.file.element.name(),
                    op.name()
                )))
            }
        }
    }
    if target_streamed {
        streamed_in.push(("target", cols));
    }
    let mut class_weight: Option<Vec<f32>> = None;
    let mut weight_streamed = false;
    if let Some(w) = &mut weight {
        if op.is_elementwise() {
            if w.shape() == shape.as_slice() && shape != [cols] {
                weight_streamed = true;
            } else if w.shape() == [cols] {
                class_weight = Some(w.all_floats()?);
            } else {
                return Err(w.problem(format!(
                    "has shape {:?}; expected [{cols}] (one per column) or the input's shape {shape:?}",
                    w.shape()
                )));
            }
        } else {
            w.expect_shape(&[cols], "one weight per class")?;
            class_weight = Some(w.all_floats()?);
        }
    }
    if weight_streamed {
        streamed_in.push(("weight", cols));
    }
    let pos = match &mut pos_weight {
        Some(p) => {
            p.expect_shape(&[cols], "one weight per column of the input")?;
            Some(p.all_floats()?)
        }
        None => None,
    };
    let mut upstream = 1.0f32;
    let mut grad_streamed = None;
    if let Some(g) = &mut grad_output {
        match op {
            Op::Softmax | Op::LogSoftmax => {
                g.expect_shape(&shape, "the output's shape")?;
                grad_streamed = Some(cols);
            }
            Op::Logsumexp => {
                g.expect_shape(&shape[..shape.len() - 1], "the output's shape")?;
                grad_streamed = Some(1);
            }
            _ if g.file.len() != 1 => {
                return Err(g.problem(format!(
                    "has shape {:?}; a loss takes one upstream gradient value (with --reduction mean or sum)",
                    g.shape()
                )))
            }
            _ => upstream = g.all_floats()?[0],
        }
    }
    if let Some(len) = grad_streamed {
        streamed_in.push(("grad-output", len));
    }
    let named: Vec<Input> = [
        Some(&input),
        target.as_ref(),
        weight.as_ref(),
        pos_weight.as_ref(),
        grad_output.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(Streamed::as_input)
    .collect();
    let named: Vec<&Input> = named.iter().collect();

    // The whole problem's checks that need no logits: applicability, and
    // every class-index target (the `mean` denominator needs them all).
    let whole = Problem {
        target: match (&classes, target_streamed) {
            (Some(c), _) => Some(Target::Classes(c.clone())),
            (None, true) => Some(Target::Values(Vec::new())),
            _ => None,
        },
        weight: class_weight.clone().or(weight_streamed.then(Vec::new)),
        pos_weight: pos.clone(),
        grad_output: grad_output.as_ref().map(|_| vec![upstream]),
        settings,
        ..Problem::new(op, rows, cols, Vec::new())
    };
    whole
        .validate()
        .map_err(|e| blame(&e, &named, Some(&whole)))?;
    if let Some(c) = &classes {
        if let Some((row, &t)) = c
            .iter()
            .enumerate()
            .find(|(_, &t)| t != settings.ignore_index && !(0..cols as i64).contains(&t))
        {
            let e = Error::Loss(LossError::TargetOutOfRange {
                row,
                target: t,
                classes: cols,
                ignore_index: settings.ignore_index,
            });
            return Err(blame(&e, &named, None));
        }
    }

    // Every window runs as the plan says, with the whole file's `mean`
    // denominators; `mean` and `sum` fold the row losses in row order.
    let plan = whole.window_plan(!args.no_grad);
    drop(whole);
    let (reduced, wants_grad, run) = (plan.reduced, plan.run.grad, plan.run);

    // Outputs: (name, shape, values per row) streamed; a reduced loss whole at the end.
    let element = output_element(args, input.file.element);
    let (out_name, out_shape, out_row) = match op {
        Op::Softmax | Op::LogSoftmax => ("output.npy", shape.clone(), cols),
        Op::Logsumexp => ("output.npy", shape[..shape.len() - 1].to_vec(), 1),
        _ if reduced => ("loss.npy", Vec::new(), 0),
        _ if op.is_elementwise() => ("loss.npy", shape.clone(), cols),
        _ => ("loss.npy", vec![rows], 1),
    };
    let mut streamed_out: Vec<(&str, Vec<usize>, usize)> = Vec::new();
    if !reduced {
        streamed_out.push((out_name, out_shape.clone(), out_row));
    }
    if wants_grad {
        streamed_out.push(("grad.npy", shape.clone(), cols));
    }
    let mut all_out: Vec<(&str, Vec<usize>)> = streamed_out
        .iter()
        .map(|(n, s, _)| (*n, s.clone()))
        .collect();
    if reduced {
        all_out.insert(0, (out_name, Vec::new()));
    }

    // Windows under the budget.
    let ctx = match args.device {
        DeviceArg::Gpu => Some(
            stream_context(rows)
                .map_err(|e| format!("{e} (or run on the CPU with --device cpu)"))?,
        ),
        _ => None,
    };
    let elements: Vec<(usize, Element)> = streamed_in
        .iter()
        .map(|&(flag, len)| {
            let e = match flag {
                "input" => input.file.element,
                "target" => target.as_ref().map_or(Element::F32, |t| t.file.element),
                "weight" => weight.as_ref().map_or(Element::F32, |t| t.file.element),
                _ => grad_output
                    .as_ref()
                    .map_or(Element::F32, |t| t.file.element),
            };
            (len, e)
        })
        .collect();
    let out_lens: Vec<usize> = streamed_out.iter().map(|o| o.2).collect();
    let per_row = bytes_per_row(&elements, &out_lens);
    let resident = classes.as_ref().map_or(0, |c| c.len() as u64 * 8)
        + (cols as u64 * 4) * (u64::from(class_weight.is_some()) + u64::from(pos.is_some()));
    let budget = args.memory_budget.unwrap_or(stream::DEFAULT_MEMORY_BUDGET);
    // Windows of whole fours of rows: a row that is not whole vec4s is split
    // into vectors by its offset modulo 4, which then stays what it is in
    // one window of every row, so any windows give that window's bits.
    let window = stream::window_rows(rows, per_row, budget, resident, 4)?.min(MAX_WINDOW_ROWS);
    let windows = plan_windows(rows, window);

    prepare_out(&args.out, &all_out, element)?;
    let mut files = OutputFiles::default();
    let outputs = create_outputs(&args.out, &mut files, &streamed_out, element)?;
    // 16-bit logits stay 16-bit on the GPU (every adapter takes both):
    // half the bytes of widening them.
    let gpu_dtype = match input.file.element {
        Element::Bf16 => wgpu_loss::DType::BF16,
        Element::F16 => wgpu_loss::DType::F16,
        _ => wgpu_loss::DType::F32,
    };
    let mut inputs = vec![StreamIn {
        file: input.file,
        row_len: cols,
    }];
    if target_streamed {
        if let Some(t) = target.take() {
            inputs.push(StreamIn {
                file: t.file,
                row_len: cols,
            });
        }
    }
    if weight_streamed {
        if let Some(w) = weight.take() {
            inputs.push(StreamIn {
                file: w.file,
                row_len: cols,
            });
        }
    }
    if let Some(len) = grad_streamed {
        if let Some(g) = grad_output.take() {
            inputs.push(StreamIn {
                file: g.file,
                row_len: len,
            });
        }
    }
    let read_bytes: u64 = elements
        .iter()
        .map(|&(len, e)| (len * e.size()) as u64)
        .sum();
    let write_bytes: u64 = out_lens
        .iter()
        .map(|&len| (len * element.size()) as u64)
        .sum();
    let mut progress = stream::Progress::new(rows, read_bytes + write_bytes);
    let mut fold = RowFold::default();
    let interrupted = stream::interrupt_flag();
    let outputs = stream::run_pipeline(
        &windows,
        inputs,
        outputs,
        &mut progress,
        interrupted,
        |w: Window| {
            let mut values = w.inputs.into_iter();
            let x = values.next().unwrap_or_default();
            let mut problem = Problem {
                settings: plan.settings,
                pos_weight: pos.clone(),
                weight: class_weight.clone(),
                gpu_dtype,
                ..Problem::new(op, w.rows, cols, x)
            };
            if let Some(c) = &classes {
                problem.target = Some(Target::Classes(c[w.first..w.first + w.rows].to_vec()));
            }
            if target_streamed {
                problem.target = Some(Target::Values(values.next().unwrap_or_default()));
            }
            if weight_streamed {
                problem.weight = Some(values.next().unwrap_or_default());
            }
            if grad_streamed.is_some() {
                let g = values.next().unwrap_or_default();
                // Softmax and log-softmax backward take grad-output in the
                // logits' type (logsumexp's stays f32); f16 (unlike bf16) has
                // too little range for every f32, and an infinity there would
                // make NaN gradients.
                if ctx.is_some()
                    && gpu_dtype == wgpu_loss::DType::F16
                    && matches!(op, Op::Softmax | Op::LogSoftmax)
                {
                    if let Some(i) = g
                        .iter()
                        .position(|&v| v.is_finite() && half::f16::from_f32(v).is_infinite())
                    {
                        return Err(format!(
                            "{}: value {} at row {}, column {} is beyond f16's range (+-65504), \
                             and with f16 logits the gradient takes grad-output as f16; \
                             give the logits as f32, or scale grad-output",
                            args.grad_output.as_deref().unwrap_or("--grad-output"),
                            g[i],
                            w.first + i / cols,
                            i % cols
                        ));
                    }
                }
                problem.grad_output = Some(g);
            }
            let outputs = match &ctx {
                Some(ctx) => problem.run_gpu_sync_with(ctx, run),
                None if args.device == DeviceArg::Cpu => problem.run_fast_with(run),
                None => problem.run_reference_with(run).map(|o| {
                    // The fold takes the f64 values; the files f32.
                    if reduced {
                        fold.add(o.output.iter().copied());
                    }
                    Outputs {
                        output: o.output.iter().map(|&v| v as f32).collect(),
                        grad: o.grad.map(|g| g.into_iter().map(|v| v as f32).collect()),
                    }
                }),
            };
            let outputs = outputs
                .map_err(|e| shift_error(e, w.first, cols, weight_streamed))
                .map_err(|e| blame(&e, &named, Some(&problem)))?;
            if reduced && args.device != DeviceArg::Reference {
                fold.add(outputs.output.iter().map(|&v| f64::from(v)));
            }
            let mut out = Vec::new();
            if !reduced {
                out.push(outputs.output);
            }
            if wants_grad {
                out.push(outputs.grad.unwrap_or_default());
            }
            Ok(out)
        },
    )?;
    let loss = fold.result(plan.denominator) as f32;
    let whole_out: Vec<(&str, Vec<usize>, Vec<f32>)> = if reduced {
        vec![(out_name, Vec::new(), vec![loss])]
    } else {
        Vec::new()
    };
    finish_outputs(&args.out, &mut files, outputs, &whole_out, element)?;
    files.commit()?;
    let names: Vec<&str> = all_out.iter().map(|(n, _)| *n).collect();
    remove_stale(&args.out, &names);
    // Notes only once everything succeeded: a failure stays one line.
    for i in &named {
        if i.array.was_narrowed() {
            eprintln!(
                "note: --{} {}: float64 values rounded to float32",
                i.flag, i.arg
            );
        }
    }
    report(
        args,
        &all_out,
        reduced.then_some(loss),
        element,
        &progress,
        windows.len(),
        window,
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn settings(args: &EvalArgs) -> Settings {
    args.options.settings()
}

/// `[rows, cols]` the op sees: the last axis is the row (softmax family,
/// element-wise losses); row losses take exactly `[N, C]`.
fn matrix_shape(op: Op, input: &Streamed) -> Result<(usize, usize), String> {
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
    if cols == 0 || input.file.is_empty() {
        return Err(input.problem(format!("has shape {shape:?}, which holds no elements")));
    }
    Ok((input.file.len() / cols, cols))
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
