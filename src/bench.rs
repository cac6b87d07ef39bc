//! Measurement of the crate's ops: the GPU kernels on resident buffers, the
//! GPU end to end (upload, compute, readback), the CPU, and a copy kernel on
//! the same adapter as the bandwidth yardstick. Used by `wgpu-loss bench` and
//! the criterion benches.
//!
//! Traffic is counted ideally: every input read once, every output written
//! once. GB/s is that count divided by the median time.

use std::time::{Duration, Instant};

use crate::context::GpuContext;
use crate::cpu::reference;
use crate::error::{Error, Result};
use crate::kernels::Storage;
use crate::ops::cross_entropy::{CrossEntropyProblem, GradMode};
use crate::ops::softmax::SoftmaxOp;
use crate::ops::{Base, MatrixArg, Params, RowLaunch, WholeArg};
use crate::{CrossEntropyOptions, Kernel};

/// An op as the benchmark (and the command line) names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BenchOp {
    /// Row-wise softmax.
    Softmax,
    /// Row-wise log-softmax.
    LogSoftmax,
    /// Row-wise logsumexp.
    Logsumexp,
    /// Cross-entropy loss and gradient (`mean`).
    CrossEntropy,
    /// Cross-entropy loss only (`mean`).
    CrossEntropyLoss,
}

impl BenchOp {
    /// Every op, in report order.
    pub const ALL: [BenchOp; 5] = [
        BenchOp::Softmax,
        BenchOp::LogSoftmax,
        BenchOp::Logsumexp,
        BenchOp::CrossEntropy,
        BenchOp::CrossEntropyLoss,
    ];

    /// Command-line name.
    pub fn name(self) -> &'static str {
        match self {
            BenchOp::Softmax => "softmax",
            BenchOp::LogSoftmax => "log-softmax",
            BenchOp::Logsumexp => "logsumexp",
            BenchOp::CrossEntropy => "cross-entropy",
            BenchOp::CrossEntropyLoss => "cross-entropy-loss",
        }
    }

    /// Parses a command-line name.
    pub fn from_name(name: &str) -> Option<BenchOp> {
        BenchOp::ALL.into_iter().find(|op| op.name() == name)
    }

    /// Ideal bytes moved: inputs read once, outputs written once (f32 logits, i32 targets).
    pub fn ideal_bytes(self, rows: usize, cols: usize) -> u64 {
        let (n, c) = (rows as u64, cols as u64);
        match self {
            BenchOp::Softmax | BenchOp::LogSoftmax => 8 * n * c,
            BenchOp::Logsumexp => 4 * n * c + 4 * n,
            BenchOp::CrossEntropy => 8 * n * c + 4 * n,
            BenchOp::CrossEntropyLoss => 4 * n * c + 4 * n,
        }
    }

    fn softmax_op(self) -> Option<SoftmaxOp> {
        match self {
            BenchOp::Softmax => Some(SoftmaxOp::Softmax),
            BenchOp::LogSoftmax => Some(SoftmaxOp::LogSoftmax),
            BenchOp::Logsumexp => Some(SoftmaxOp::Logsumexp),
            _ => None,
        }
    }
}

/// Seeded inputs for a benchmark: logits ~ N(0, 2) (from a fixed LCG) and targets.
pub struct BenchInput {
    /// Rows.
    pub rows: usize,
    /// Columns (classes).
    pub cols: usize,
    /// `[rows, cols]` logits.
    pub logits: Vec<f32>,
    /// One class index per row.
    pub targets: Vec<i64>,
}

impl BenchInput {
    /// Deterministic inputs of the given shape.
    pub fn new(rows: usize, cols: usize) -> Result<Self> {
        if cols == 0 {
            return Err(Error::ZeroCols);
        }
        let len = rows
            .checked_mul(cols)
            .ok_or(Error::ShapeOverflow { rows, cols })?;
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        // Sum of four uniforms: roughly normal, cheap enough for a billion values.
        let logits = (0..len)
            .map(|_| (next() + next() + next() + next() - 2.0) * 3.5)
            .collect();
        let targets = (0..rows)
            .map(|_| ((next() * cols as f32) as usize).min(cols - 1) as i64)
            .collect();
        Ok(Self {
            rows,
            cols,
            logits,
            targets,
        })
    }
}

/// Median of durations (upper median for even counts).
pub fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// An op's inputs and outputs resident on the device, ready to be re-run.
pub struct ResidentOp<'a> {
    ctx: &'a GpuContext,
    op: BenchOp,
    rows: usize,
    cols: usize,
    input: wgpu::Buffer,
    output: wgpu::Buffer,
    problem: Option<CrossEntropyProblem<'static>>,
}

impl<'a> ResidentOp<'a> {
    /// Uploads `input` for `op`.
    pub fn new(ctx: &'a GpuContext, op: BenchOp, input: &BenchInput) -> Result<Self> {
        let (rows, cols) = (input.rows, input.cols);
        ctx.scoped("bench upload", || {
            let problem = match op {
                BenchOp::CrossEntropy | BenchOp::CrossEntropyLoss => {
                    Some(ctx.cross_entropy_problem(
                        &input.targets,
                        cols,
                        &CrossEntropyOptions::default(),
                    )?)
                }
                _ => None,
            };
            let out_elems = match op {
                BenchOp::Logsumexp | BenchOp::CrossEntropyLoss => rows,
                _ => rows * cols,
            };
            Ok(Self {
                ctx,
                op,
                rows,
                cols,
                input: ctx.scratch_with("bench input", &input.logits),
                output: ctx.scratch("bench output", out_elems as u64 * 4),
                problem,
            })
        })
    }

    /// Runs the op's kernels once and waits for them; returns the wall time
    /// from submit to completion.
    pub fn run(&self) -> Result<Duration> {
        let ctx = self.ctx;
        ctx.scoped(self.op.name(), || {
            let mut encoder = ctx.encoder(self.op.name());
            if let Some(op) = self.op.softmax_op() {
                let (kernel, out_binding) = match op {
                    SoftmaxOp::Softmax => (Kernel::SoftmaxForward, 5),
                    SoftmaxOp::LogSoftmax => (Kernel::LogSoftmaxForward, 5),
                    SoftmaxOp::Logsumexp => (Kernel::LogsumexpForward, 6),
                };
                let mut matrices = vec![MatrixArg {
                    binding: 1,
                    buffer: &self.input,
                    offset: 0,
                    base: Base::A,
                    storage: Storage::F32,
                }];
                let mut whole = Vec::new();
                if out_binding == 5 {
                    matrices.push(MatrixArg {
                        binding: 5,
                        buffer: &self.output,
                        offset: 0,
                        base: Base::Out,
                        storage: Storage::F32,
                    });
                } else {
                    whole.push(WholeArg::new(6, &self.output));
                }
                ctx.encode_rows(
                    &mut encoder,
                    RowLaunch {
                        kernel,
                        rows: self.rows,
                        cols: self.cols,
                        matrices: &matrices,
                        whole: &whole,
                        params: Params::default(),
                    },
                )?;
            } else if let Some(p) = &self.problem {
                let mode = if self.op == BenchOp::CrossEntropy {
                    GradMode::Separate
                } else {
                    GradMode::None
                };
                ctx.encode_cross_entropy_denominator(&mut encoder, p)?;
                ctx.encode_cross_entropy_rows(
                    &mut encoder,
                    p,
                    mode,
                    (&self.input, 0),
                    None,
                    Some((&self.output, 0)),
                    (0, self.rows),
                    Storage::F32,
                )?;
                ctx.encode_cross_entropy_reduce(&mut encoder, p, WholeArg::new(7, &p.result))?;
            }
            let start = Instant::now();
            ctx.submit_and_wait(encoder)?;
            Ok(start.elapsed())
        })
    }
}

/// Copies `elems` f32 values between two resident buffers with the copy kernel.
pub struct CopyKernel<'a> {
    ctx: &'a GpuContext,
    elems: usize,
    src: wgpu::Buffer,
    dst: wgpu::Buffer,
}

impl<'a> CopyKernel<'a> {
    /// Allocates source and destination of `elems` f32 each.
    pub fn new(ctx: &'a GpuContext, elems: usize) -> Self {
        Self {
            ctx,
            elems,
            src: ctx.scratch("copy src", elems as u64 * 4),
            dst: ctx.scratch("copy dst", elems as u64 * 4),
        }
    }

    /// Bytes moved per run (read + write).
    pub fn bytes(&self) -> u64 {
        8 * self.elems as u64
    }

    /// One copy, submit to completion.
    pub fn run(&self) -> Result<Duration> {
        self.ctx.scoped("copy", || {
            let mut encoder = self.ctx.encoder("copy");
            self.ctx
                .encode_copy(&mut encoder, &self.src, &self.dst, self.elems)?;
            let start = Instant::now();
            self.ctx.submit_and_wait(encoder)?;
            Ok(start.elapsed())
        })
    }
}

/// The op through the host API: upload, compute, readback. Returns the main output.
pub async fn run_end_to_end(ctx: &GpuContext, op: BenchOp, input: &BenchInput) -> Result<Vec<f32>> {
    let (rows, cols) = (input.rows, input.cols);
    match (op.softmax_op(), op) {
        (Some(sop), _) => ctx.softmax_family(sop, &input.logits, rows, cols).await,
        (None, BenchOp::CrossEntropy) => Ok(ctx
            .cross_entropy(&input.logits, &input.targets, cols, &Default::default())
            .await?
            .grad
            .unwrap_or_default()),
        _ => Ok(ctx
            .cross_entropy_loss(&input.logits, &input.targets, cols, &Default::default())
            .await?
            .loss),
    }
}

/// The op on the CPU (the f64 reference until a fast CPU path exists), as the
/// same main output the GPU path returns.
pub fn run_cpu(op: BenchOp, input: &BenchInput) -> Result<Vec<f64>> {
    let (rows, cols) = (input.rows, input.cols);
    match op {
        BenchOp::Softmax => reference::softmax(&input.logits, rows, cols),
        BenchOp::LogSoftmax => reference::log_softmax(&input.logits, rows, cols),
        BenchOp::Logsumexp => reference::logsumexp(&input.logits, rows, cols),
        BenchOp::CrossEntropy => {
            Ok(
                reference::cross_entropy(&input.logits, &input.targets, cols, &Default::default())?
                    .grad,
            )
        }
        BenchOp::CrossEntropyLoss => {
            Ok(
                reference::cross_entropy(&input.logits, &input.targets, cols, &Default::default())?
                    .loss,
            )
        }
    }
}

/// Single-threaded CPU copy bandwidth over `elems` f32 (bytes read + written per second).
pub fn cpu_copy_gbps(elems: usize, iters: usize) -> f64 {
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
