//! Measurement of the crate's ops: the GPU kernels on resident buffers, the
//! GPU end to end (upload, compute, readback), the CPU, and a copy kernel on
//! the same adapter as the bandwidth yardstick. Used by `wgpu-loss bench` and
//! the criterion benches.
//!
//! Traffic is counted ideally: every input read once, every output written
//! once ([`Op::ideal_bytes`]). GB/s is that count divided by the median time.
//! Kernel times come from GPU timestamp queries where the device has them
//! (`TIMESTAMP_QUERY_INSIDE_ENCODERS`), else from submit-to-done wall time.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::gpu;
use crate::problem::{Problem, Settings, Target};
use wgpu_loss::GpuContext;
use wgpu_loss::{BinaryViews, CrossEntropyViews, DType, FocalViews, GpuTensor, GradOutput};
use wgpu_loss::{FocalOptions, Reduction};

pub use crate::problem::Op;

/// Where cross-entropy's gradient goes in a benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GradPlacement {
    /// A buffer of its own.
    #[default]
    Separate,
    /// Over the logits (`GradOutput::InPlace`; cross-entropy with class
    /// indices only, the one loss with an in-place kernel).
    InPlace,
}

/// The options a benchmark runs its ops with: `eval`'s settings (each op
/// takes those that apply to it, [`Settings::for_op`]), and seeded random
/// values where `eval` would take a file.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BenchOptions {
    /// Scalar options.
    pub settings: Settings,
    /// Random weights in [0.1, 2): class weights `[C]` (cross-entropy),
    /// per-class alpha `[C]` (focal), per-column weights `[C]` (binary
    /// cross-entropy and BCE with logits).
    pub random_weight: bool,
    /// Random `pos_weight` `[C]` in [0.5, 3) (BCE with logits).
    pub random_pos_weight: bool,
    /// Cross-entropy's gradient over its logits or apart.
    pub grad: GradPlacement,
}

/// Seeded inputs for a benchmark: logits ~ N(0, 2) (from a fixed LCG), class
/// targets, 0/1 labels, and the probabilities `sigmoid(logits)`.
pub struct BenchInput {
    /// Rows.
    pub rows: usize,
    /// Columns (classes).
    pub cols: usize,
    /// `[rows, cols]` logits.
    pub logits: Vec<f32>,
    /// One class index per row.
    pub classes: Vec<i64>,
    /// `[rows, cols]` binary labels (0 or 1).
    pub labels: Vec<f32>,
    /// The options every op runs with ([`BenchInput::with_options`]).
    pub options: BenchOptions,
    /// `[C]` random weights, when the options ask for them.
    weight: Option<Vec<f32>>,
    /// `[C]` random `pos_weight`, when the options ask for it.
    pos_weight: Option<Vec<f32>>,
}

impl BenchInput {
    /// Deterministic inputs of the given shape.
    pub fn new(rows: usize, cols: usize) -> Result<Self> {
        if cols == 0 {
            return Err(wgpu_loss::Error::ZeroCols.into());
        }
        let len = rows
            .checked_mul(cols)
            .ok_or(wgpu_loss::Error::ShapeOverflow { rows, cols })?;
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        // Sum of four uniforms: roughly normal, cheap enough for a billion values.
        let logits: Vec<f32> = (0..len)
            .map(|_| (next() + next() + next() + next() - 2.0) * 3.5)
            .collect();
        let classes = (0..rows)
            .map(|_| ((next() * cols as f32) as usize).min(cols - 1) as i64)
            .collect();
        let labels = (0..len)
            .map(|_| if next() < 0.3 { 1.0 } else { 0.0 })
            .collect();
        Ok(Self {
            rows,
            cols,
            logits,
            classes,
            labels,
            options: BenchOptions::default(),
            weight: None,
            pos_weight: None,
        })
    }

    /// These inputs under `options`, their random weights drawn from a
    /// seeded generator of their own (the same for every run).
    pub fn with_options(mut self, options: BenchOptions) -> Self {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut uniform = |lo: f32, hi: f32| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            lo + (hi - lo) * ((state >> 40) as f32 / (1u64 << 24) as f32)
        };
        let cols = self.cols;
        self.weight = options
            .random_weight
            .then(|| (0..cols).map(|_| uniform(0.1, 2.0)).collect());
        self.pos_weight = options
            .random_pos_weight
            .then(|| (0..cols).map(|_| uniform(0.5, 3.0)).collect());
        self.options = options;
        self
    }

    /// `op`'s problem on these inputs with no input values: the targets,
    /// weights and settings, for [`Problem::window_plan`] and the options.
    fn problem_meta(&self, op: Op, rows: usize) -> Problem {
        let rows = rows.min(self.rows);
        let target = if op.is_elementwise() {
            Some(Target::Values(self.labels[..rows * self.cols].to_vec()))
        } else if op.softmax_op().is_none() {
            Some(Target::Classes(self.classes[..rows].to_vec()))
        } else {
            None
        };
        let weight = match op {
            Op::CrossEntropy
            | Op::CrossEntropyLoss
            | Op::Focal
            | Op::BinaryCrossEntropy
            | Op::BceWithLogits => self.weight.clone(),
            _ => None,
        };
        let settings = self.options.settings.for_op(op);
        Problem {
            target,
            // Focal takes alpha one way or the other, not both.
            weight: if op == Op::Focal && settings.alpha.is_some() {
                None
            } else {
                weight
            },
            pos_weight: (op == Op::BceWithLogits)
                .then(|| self.pos_weight.clone())
                .flatten(),
            settings,
            ..Problem::new(op, rows, self.cols, Vec::new())
        }
    }

    /// `sigmoid(logits)`: the input of binary cross-entropy on probabilities.
    pub fn probabilities(&self) -> Vec<f32> {
        self.logits.iter().map(|&x| probability(x)).collect()
    }

    /// Ideal bytes `op` moves on these inputs with their options
    /// ([`Op::ideal_bytes`], plus weights `[C]` read and per-row or
    /// per-element losses written under reduction `none`).
    pub fn ideal_bytes(&self, op: Op, elem: u64) -> u64 {
        let meta = self.problem_meta(op, 0);
        let (n, c) = (self.rows as u64, self.cols as u64);
        let weights = [
            meta.weight.is_some() || (op == Op::Focal && meta.settings.alpha.is_some()),
            meta.pos_weight.is_some(),
        ]
        .iter()
        .filter(|&&w| w)
        .count() as u64;
        let losses = match meta.settings.reduction {
            Reduction::None if op.is_elementwise() => n * c,
            Reduction::None if op.softmax_op().is_none() => n,
            _ => 0,
        };
        op.ideal_bytes(self.rows, self.cols, elem) + 4 * c * weights + 4 * losses
    }

    /// `op` on these inputs with their options, as a [`Problem`].
    pub fn problem(&self, op: Op) -> Problem {
        self.problem_rows(op, self.rows)
    }

    /// [`BenchInput::problem`] on the first `rows` rows alone.
    pub fn problem_rows(&self, op: Op, rows: usize) -> Problem {
        let rows = rows.min(self.rows);
        let logits = &self.logits[..rows * self.cols];
        Problem {
            input: if op == Op::BinaryCrossEntropy {
                logits.iter().map(|&x| probability(x)).collect()
            } else {
                logits.to_vec()
            },
            ..self.problem_meta(op, rows)
        }
    }
}

/// `sigmoid(x)`, rounded to f32.
fn probability(x: f32) -> f32 {
    (1.0 / (1.0 + f64::from(-x).exp())) as f32
}

/// Median of durations (upper median for even counts).
pub fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// Times GPU work with two timestamp queries written around it.
struct GpuTimer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    period_ns: f64,
}

impl GpuTimer {
    /// `None` when the device cannot write timestamps between commands.
    fn new(ctx: &GpuContext) -> Option<Self> {
        let needed =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        if !ctx.features().contains(needed) {
            return None;
        }
        let device = ctx.device();
        let buffer = |label, usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        Some(Self {
            queries: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("wgpu-loss bench timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolve: buffer(
                "wgpu-loss timestamp resolve",
                wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            ),
            period_ns: f64::from(ctx.queue().get_timestamp_period()),
        })
    }

    /// Records `work` between two timestamps, runs it, and returns the GPU time.
    fn time(
        &self,
        ctx: &GpuContext,
        label: &str,
        work: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<()>,
    ) -> Result<Duration> {
        let mut encoder = gpu::encoder(ctx, label);
        encoder.write_timestamp(&self.queries, 0);
        work(&mut encoder)?;
        encoder.write_timestamp(&self.queries, 1);
        encoder.resolve_query_set(&self.queries, 0..2, &self.resolve, 0);
        gpu::submit_and_wait(ctx, encoder)?;
        let ticks: Vec<u64> = gpu::read(ctx, &self.resolve, 2)?;
        let ns = ticks[1].saturating_sub(ticks[0]) as f64 * self.period_ns;
        Ok(Duration::from_nanos(ns as u64))
    }
}

/// Runs `work` once and returns its time: GPU timestamps when `timer` is
/// there, else wall time from submit to completion.
fn timed_run(
    ctx: &GpuContext,
    timer: Option<&GpuTimer>,
    label: &str,
    work: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<()>,
) -> Result<Duration> {
    gpu::scoped(ctx, label, || match timer {
        Some(timer) => timer.time(ctx, label, work),
        None => {
            let mut encoder = gpu::encoder(ctx, label);
            work(&mut encoder)?;
            let start = Instant::now();
            gpu::submit_and_wait(ctx, encoder)?;
            Ok(start.elapsed())
        }
    })
}

/// What timed the kernels: `"timestamps"` or `"wall"`.
pub fn timer_kind(ctx: &GpuContext) -> &'static str {
    if GpuTimer::new(ctx).is_some() {
        "timestamps"
    } else {
        "wall"
    }
}

/// An op's inputs and outputs resident on the device, ready to be re-run
/// through the crate's `encode_*` calls.
pub struct ResidentOp<'a> {
    ctx: &'a GpuContext,
    op: Op,
    dtype: DType,
    rows: usize,
    cols: usize,
    input: wgpu::Buffer,
    target: Option<wgpu::Buffer>,
    output: wgpu::Buffer,
    /// Values in `output`: the loss and its z-loss part when `reduced`,
    /// else one per row (row losses) or element (binary losses).
    output_len: usize,
    reduced: bool,
    grad: Option<wgpu::Buffer>,
    /// The op's targets, weights and settings (no input values).
    meta: Problem,
    /// `meta`'s weights (class weights, per-class or uniform alpha, binary
    /// weights) and `pos_weight`, on the device.
    weight: Option<wgpu::Buffer>,
    pos_weight: Option<wgpu::Buffer>,
    /// The input as uploaded, to restore it before the checked run of an
    /// in-place gradient.
    input_values: Vec<f32>,
    timer: Option<GpuTimer>,
}

/// `values` rounded to a 16-bit `dtype` (F16 or BF16), as bit patterns.
fn half_bits(values: &[f32], dtype: DType) -> Vec<u16> {
    match dtype {
        DType::BF16 => values
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect(),
        _ => values
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect(),
    }
}

impl<'a> ResidentOp<'a> {
    /// Uploads `input` for `op` with logits (and gradient) stored as `dtype`
    /// (`F32`, `F16` or `BF16`; both 16-bit types are offered for the
    /// softmax family and the row losses, on every adapter).
    pub fn new(ctx: &'a GpuContext, op: Op, input: &BenchInput, dtype: DType) -> Result<Self> {
        let (rows, cols) = (input.rows, input.cols);
        if dtype == DType::I32 || (dtype != DType::F32 && op.is_elementwise()) {
            return Err(wgpu_loss::Error::Unsupported {
                what: "this dtype for this op",
                adapter: ctx.adapter_name().to_string(),
                missing: "a 16-bit path (binary losses take f32)",
            }
            .into());
        }
        let elems = rows * cols;
        let problem = input.problem(op);
        gpu::scoped(ctx, "bench upload", || {
            let input_buffer = match dtype {
                DType::F16 | DType::BF16 => {
                    gpu::buffer_with(ctx, "bench input", &half_bits(&problem.input, dtype))
                }
                _ => gpu::buffer_with(ctx, "bench input", &problem.input),
            };
            let target = match &problem.target {
                None => None,
                Some(Target::Classes(c)) => {
                    let c: Vec<i32> = c.iter().map(|&v| v as i32).collect();
                    Some(gpu::buffer_with(ctx, "bench targets", &c))
                }
                Some(Target::Values(v)) => Some(gpu::buffer_with(ctx, "bench targets", v)),
            };
            let reduced = problem.settings.reduction != Reduction::None;
            let (out_bytes, output_len) = match op {
                Op::Softmax | Op::LogSoftmax => (elems as u64 * dtype.size(), elems),
                Op::Logsumexp => (rows as u64 * 4, rows),
                // The reduced loss (and its z-loss part).
                _ if reduced => (16, 2),
                _ if op.is_elementwise() => (elems as u64 * 4, elems),
                _ => (rows as u64 * 4, rows),
            };
            let in_place = op == Op::CrossEntropy && input.options.grad == GradPlacement::InPlace;
            let grad = (op.softmax_op().is_none() && op != Op::CrossEntropyLoss && !in_place)
                .then(|| gpu::buffer(ctx, "bench grad", elems as u64 * dtype.size()));
            let uniform_alpha = problem.uniform_alpha().filter(|_| op == Op::Focal);
            let weight = problem
                .weight
                .as_deref()
                .or(uniform_alpha.as_deref())
                .map(|w| gpu::buffer_with(ctx, "bench weight", w));
            let pos_weight = problem
                .pos_weight
                .as_deref()
                .map(|w| gpu::buffer_with(ctx, "bench pos_weight", w));
            Ok(Self {
                ctx,
                op,
                dtype,
                rows,
                cols,
                input: input_buffer,
                target,
                output: gpu::buffer(ctx, "bench output", out_bytes),
                output_len,
                reduced,
                grad,
                weight,
                pos_weight,
                input_values: if in_place {
                    problem.input.clone()
                } else {
                    Vec::new()
                },
                meta: Problem {
                    input: Vec::new(),
                    ..problem
                },
                timer: GpuTimer::new(ctx),
            })
        })
    }

    fn encode(&self, encoder: &mut wgpu::CommandEncoder) -> Result<()> {
        let ctx = self.ctx;
        let input = GpuTensor {
            buffer: &self.input,
            offset: 0,
            rows: self.rows,
            cols: self.cols,
            dtype: self.dtype,
        };
        if let Some(sop) = self.op.softmax_op() {
            let out = match self.op {
                Op::Logsumexp => GpuTensor::f32_vector(&self.output, 0, self.rows),
                _ => GpuTensor {
                    buffer: &self.output,
                    ..input
                },
            };
            return Ok(ctx.encode_softmax(encoder, sop, &input, &out)?);
        }
        let Some(target_buffer) = &self.target else {
            return Err(Error::Missing {
                what: "target",
                op: self.op.name(),
            });
        };
        let target = if self.op.is_elementwise() {
            GpuTensor::f32_matrix(target_buffer, 0, self.rows, self.cols)
        } else {
            GpuTensor::i32_vector(target_buffer, 0, self.rows)
        };
        let grad = self.grad.as_ref().map(|g| GpuTensor { buffer: g, ..input });
        let loss = if self.op.is_elementwise() && !self.reduced {
            GpuTensor::f32_matrix(&self.output, 0, self.rows, self.cols)
        } else {
            GpuTensor::f32_vector(&self.output, 0, self.output_len)
        };
        let binary = BinaryViews {
            input,
            targets: target,
            loss,
            grad,
        };
        let weight = self
            .weight
            .as_ref()
            .map(|w| GpuTensor::f32_vector(w, 0, self.cols));
        let pos_weight = self
            .pos_weight
            .as_ref()
            .map(|w| GpuTensor::f32_vector(w, 0, self.cols));
        let meta = &self.meta;
        let encoded = match self.op {
            Op::CrossEntropy | Op::CrossEntropyLoss => {
                let grad = match (grad, self.op) {
                    (Some(g), _) => GradOutput::Into(g),
                    (None, Op::CrossEntropy) => GradOutput::InPlace,
                    (None, _) => GradOutput::None,
                };
                let views = CrossEntropyViews {
                    logits: input,
                    targets: target,
                    loss,
                    grad,
                    lse: None,
                };
                let options = meta.ce_options(1.0).with_weight(weight.as_ref());
                ctx.encode_cross_entropy(encoder, &views, &options)
            }
            Op::Focal => {
                let views = FocalViews {
                    logits: input,
                    targets: target,
                    loss,
                    grad,
                    lse: None,
                };
                let host = meta.focal_options(&None, 1.0);
                let options = FocalOptions {
                    alpha: weight.as_ref(),
                    gamma: host.gamma,
                    ignore_index: host.ignore_index,
                    reduction: host.reduction,
                    grad_scale: host.grad_scale,
                };
                ctx.encode_focal_loss(encoder, &views, &options)
            }
            Op::BinaryCrossEntropy => {
                let options = meta.binary_options(1.0).with_weights(weight.as_ref(), None);
                ctx.encode_binary_cross_entropy(encoder, &binary, &options)
            }
            Op::BceWithLogits => {
                let options = meta
                    .binary_options(1.0)
                    .with_weights(weight.as_ref(), pos_weight.as_ref());
                ctx.encode_binary_cross_entropy_with_logits(encoder, &binary, &options)
            }
            _ => ctx.encode_sigmoid_focal_loss(encoder, &binary, &meta.sigmoid_focal_options(1.0)),
        };
        Ok(encoded?)
    }

    /// Runs the op's kernels once and returns their time (GPU timestamps
    /// where the device has them, else submit-to-done wall time).
    pub fn run(&self) -> Result<Duration> {
        timed_run(self.ctx, self.timer.as_ref(), self.op.name(), |e| {
            self.encode(e)
        })
    }

    /// Reads back the op's main result as f32: the gradient for losses that
    /// have one, else the output (a reduced loss is one value).
    /// An in-place gradient has overwritten the logits by then: they are
    /// uploaded again and the op runs once more before the read.
    pub fn read_main(&self) -> Result<Vec<f32>> {
        let ctx = self.ctx;
        let in_place = self.grad.is_none() && self.op == Op::CrossEntropy;
        if in_place {
            match self.dtype {
                DType::F16 | DType::BF16 => ctx.queue().write_buffer(
                    &self.input,
                    0,
                    bytemuck::cast_slice(&half_bits(&self.input_values, self.dtype)),
                ),
                _ => ctx.queue().write_buffer(
                    &self.input,
                    0,
                    bytemuck::cast_slice(&self.input_values),
                ),
            }
            self.run()?;
        }
        let (buffer, len, dtype) = match (&self.grad, self.op) {
            (Some(g), _) => (g, self.rows * self.cols, self.dtype),
            (None, Op::CrossEntropy) => (&self.input, self.rows * self.cols, self.dtype),
            (None, Op::Logsumexp) => (&self.output, self.rows, DType::F32),
            (None, Op::Softmax | Op::LogSoftmax) => {
                (&self.output, self.rows * self.cols, self.dtype)
            }
            // The reduced loss (not its z-loss part), or every row's.
            (None, _) if self.reduced => (&self.output, 1, DType::F32),
            (None, _) => (&self.output, self.output_len, DType::F32),
        };
        Ok(match dtype {
            DType::F16 => {
                let bits: Vec<u16> = gpu::read(ctx, buffer, len)?;
                bits.into_iter()
                    .map(|b| half::f16::from_bits(b).to_f32())
                    .collect()
            }
            DType::BF16 => {
                let bits: Vec<u16> = gpu::read(ctx, buffer, len)?;
                bits.into_iter()
                    .map(|b| half::bf16::from_bits(b).to_f32())
                    .collect()
            }
            _ => gpu::read(ctx, buffer, len)?,
        })
    }
}

/// Copies `elems` f32 values between two resident buffers with the copy kernel.
pub struct CopyKernel<'a> {
    ctx: &'a GpuContext,
    elems: usize,
    src: wgpu::Buffer,
    dst: wgpu::Buffer,
    timer: Option<GpuTimer>,
}

impl<'a> CopyKernel<'a> {
    /// Allocates source and destination of `elems` f32 each; a size past the
    /// device's `max_buffer_size` is an error, not wgpu's panic.
    pub fn new(ctx: &'a GpuContext, elems: usize) -> Result<Self> {
        let bytes = (elems as u64).saturating_mul(4);
        let limit = ctx.limits().max_buffer_size;
        if bytes > limit {
            return Err(wgpu_loss::Error::TooLarge {
                what: "copy kernel buffer",
                requested: bytes,
                limit_name: "max_buffer_size",
                limit,
            }
            .into());
        }
        gpu::scoped(ctx, "copy allocation", || {
            Ok(Self {
                ctx,
                elems,
                src: gpu::buffer(ctx, "copy src", bytes),
                dst: gpu::buffer(ctx, "copy dst", bytes),
                timer: GpuTimer::new(ctx),
            })
        })
    }

    /// Bytes moved per run (read + write).
    pub fn bytes(&self) -> u64 {
        8 * self.elems as u64
    }

    /// One copy, timed like [`ResidentOp::run`].
    pub fn run(&self) -> Result<Duration> {
        timed_run(self.ctx, self.timer.as_ref(), "copy", |e| {
            Ok(self.ctx.encode_copy(e, &self.src, &self.dst, self.elems)?)
        })
    }
}

/// The op's main result from [`crate::problem::Outputs`]: the gradient when
/// there is one, else the output.
pub fn main_result<T>(outputs: crate::problem::Outputs<T>) -> Vec<T> {
    outputs.grad.unwrap_or(outputs.output)
}

/// The op through the host API: upload, compute, readback. Returns the main result.
pub async fn run_end_to_end(ctx: &GpuContext, op: Op, input: &BenchInput) -> Result<Vec<f32>> {
    Ok(main_result(input.problem(op).run_gpu(ctx).await?))
}

/// The op on the f64 reference, as the same main result the GPU path returns
/// (the oracle for every path's error).
pub fn run_cpu(op: Op, input: &BenchInput) -> Result<Vec<f64>> {
    Ok(main_result(input.problem(op).run_reference()?))
}

/// The reference's main result for the first `rows` rows alone, as those
/// rows stand in the whole problem's result (for sizes where the whole
/// reference takes longer than the kernels): the rows run as one of `eval`'s
/// windows ([`Problem::window_plan`]), so a loss's gradient is scaled by the
/// whole problem's `mean` denominator, whatever rows are ignored or
/// weighted. `None` where a sample says nothing of the result:
/// `cross-entropy-loss`'s one reduced loss.
pub fn run_cpu_sample(op: Op, input: &BenchInput, rows: usize) -> Result<Option<Vec<f64>>> {
    if rows >= input.rows {
        return run_cpu(op, input).map(Some);
    }
    let whole = input.problem_meta(op, input.rows);
    let plan = whole.window_plan(true);
    if op == Op::CrossEntropyLoss && plan.reduced {
        return Ok(None);
    }
    let sample = Problem {
        settings: plan.settings,
        ..input.problem_rows(op, rows)
    };
    Ok(Some(main_result(sample.run_reference_with(plan.run)?)))
}

/// An op on the fast multi-threaded f32 CPU path ([`crate::cpu_fast`]) with
/// its output buffer allocated once, so repeated runs time the computation
/// the way [`ResidentOp`] times the GPU's.
pub struct CpuFastOp<'a> {
    op: Op,
    input: &'a BenchInput,
    /// The op's targets, weights and settings (no input values).
    meta: Problem,
    uniform_alpha: Option<Vec<f32>>,
    out: Vec<f32>,
    /// `sigmoid(logits)`, the input of binary cross-entropy on probabilities.
    probs: Vec<f32>,
}

impl<'a> CpuFastOp<'a> {
    /// The fast path for `op` (every op has one); `Option` so that a caller
    /// can fall back to the reference for an op the fast path lacks.
    pub fn new(op: Op, input: &'a BenchInput) -> Option<Self> {
        let len = match op {
            Op::Softmax | Op::LogSoftmax | Op::CrossEntropy => input.logits.len(),
            Op::Logsumexp | Op::CrossEntropyLoss => 0,
            Op::BinaryCrossEntropy | Op::BceWithLogits | Op::SigmoidFocal | Op::Focal => 0,
        };
        let meta = input.problem_meta(op, input.rows);
        Some(Self {
            op,
            input,
            uniform_alpha: meta.uniform_alpha(),
            meta,
            // Touched once here, so later runs do not pay the page faults.
            out: vec![1.0f32; len],
            probs: if op == Op::BinaryCrossEntropy {
                input.probabilities()
            } else {
                Vec::new()
            },
        })
    }

    /// Runs the op once; returns its main result (the gradient, the output,
    /// or the loss).
    pub fn run(&mut self) -> Result<Vec<f32>> {
        let small = self.run_in_place()?;
        Ok(small.unwrap_or_else(|| self.out.clone()))
    }

    /// Runs the op once and returns only the time.
    pub fn time(&mut self) -> Result<Duration> {
        let start = Instant::now();
        self.run_in_place()?;
        Ok(start.elapsed())
    }

    /// Writes a full-size result into the held buffer (`None`), or returns a
    /// per-row one (`Some`).
    fn run_in_place(&mut self) -> Result<Option<Vec<f32>>> {
        use crate::cpu_fast as fast;
        let input = self.input;
        let (x, rows, cols) = (&input.logits[..], input.rows, input.cols);
        let meta = &self.meta;
        let opts = meta.ce_options(1.0);
        let out = &mut self.out;
        Ok(match self.op {
            Op::Softmax => fast::softmax_into(x, rows, cols, out).map(|()| None)?,
            Op::LogSoftmax => fast::log_softmax_into(x, rows, cols, out).map(|()| None)?,
            Op::Logsumexp => Some(fast::logsumexp(x, rows, cols)?),
            Op::CrossEntropy => {
                fast::cross_entropy_into(x, &input.classes, cols, &opts, Some(out))?;
                None
            }
            Op::CrossEntropyLoss => {
                Some(fast::cross_entropy_into(x, &input.classes, cols, &opts, None)?.loss)
            }
            // The element-wise losses return their gradient (a fresh buffer).
            Op::BinaryCrossEntropy => {
                fast::binary_cross_entropy(
                    &self.probs,
                    &input.labels,
                    cols,
                    &meta.binary_options(1.0),
                    true,
                )?
                .grad
            }
            Op::BceWithLogits => {
                fast::binary_cross_entropy_with_logits(
                    x,
                    &input.labels,
                    cols,
                    &meta.binary_options(1.0),
                    true,
                )?
                .grad
            }
            Op::SigmoidFocal => {
                fast::sigmoid_focal_loss(
                    x,
                    &input.labels,
                    cols,
                    &meta.sigmoid_focal_options(1.0),
                    true,
                )?
                .grad
            }
            Op::Focal => {
                let opts = meta.focal_options(&self.uniform_alpha, 1.0);
                fast::focal_loss(x, &input.classes, cols, &opts, true)?.grad
            }
        })
    }
}

/// All-core CPU copy bandwidth over `elems` f32 (bytes read + written per
/// second): the yardstick for the fast CPU path's rows.
pub fn cpu_copy_gbps(elems: usize, iters: usize) -> f64 {
    use rayon::prelude::*;
    let src = vec![1.0f32; elems];
    let mut dst = vec![0.0f32; elems];
    let chunk = (elems / rayon::current_num_threads().max(1)).max(1 << 14);
    let mut times = Vec::new();
    for _ in 0..iters.max(1) + 1 {
        let start = Instant::now();
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(std::hint::black_box(s)));
        std::hint::black_box(&mut dst);
        times.push(start.elapsed());
    }
    gbps(8 * elems as u64, median(times))
}

/// Single-threaded CPU copy bandwidth over `elems` f32.
pub fn cpu_copy_gbps_one_thread(elems: usize, iters: usize) -> f64 {
    let src = vec![1.0f32; elems];
    let mut dst = vec![0.0f32; elems];
    let mut times = Vec::new();
    for _ in 0..iters.max(1) + 1 {
        let start = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        times.push(start.elapsed());
    }
    gbps(8 * elems as u64, median(times))
}

/// Bytes per nanosecond = GB/s.
pub fn gbps(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64().max(1e-12) / 1e9
}
