//! `bench --op linear-cross-entropy`: the fused linear + cross-entropy
//! against the crate's own matrix product at the same shape, in the same
//! run, with the memory the op allocates next to what materialised logits
//! would take, and a sample of rows checked against the f64 reference.
//! Hidden states and classifier are f32, f16 or bf16 on the GPU (the
//! fused op's gradients in the same type); the reference and the CPU
//! column see the same rounded values.

use std::time::{Duration, Instant};

use wgpu_loss::tolerance::product_scale;
use wgpu_loss::DType;
use wgpu_loss::{
    CrossEntropyOptions, CrossEntropyViews, GpuContext, GpuTensor, GradOutput, Layout,
    LinearCrossEntropyOptions, LinearCrossEntropyViews, LinearShape, LinearViews, MatmulOptions,
    MatmulViews, ScratchUse, F32_TOLERANCE,
};

use crate::gpu::{buffer, buffer_in, buffer_with, encoder, matrix, read, submit_and_wait};
use crate::Result;

/// One timed path of the linear + cross-entropy bench.
#[derive(Clone, Debug)]
pub struct LinearTiming {
    /// `matmul`, `fused-loss` or `fused-loss-grads`.
    pub path: &'static str,
    /// Median wall time of the runs (submit to idle).
    pub median: Duration,
    /// Matrix-product flops of the path: `2·N·D·V` per product.
    pub flops: f64,
}

impl LinearTiming {
    /// GFLOP/s.
    pub fn gflops(&self) -> f64 {
        self.flops / self.median.as_secs_f64() / 1e9
    }
}

/// Everything one shape's bench measured.
#[derive(Clone, Debug)]
pub struct LinearReport {
    /// The shape.
    pub shape: LinearShape,
    /// Matrix product, fused loss, fused loss and gradients.
    pub timings: Vec<LinearTiming>,
    /// What the fused call with gradients allocated (counted from its buffers).
    pub scratch: ScratchUse,
    /// Bytes of the `[N, V]` f32 logits the unfused path holds (its
    /// gradient takes as much again unless written in place).
    pub logits_bytes: u64,
    /// Rows whose lse was checked, the largest error, and the error allowed.
    pub check: Option<(usize, f64, f64)>,
    /// The unfused path's bytes beyond inputs and outputs (the `[N, V]`
    /// logits, overwritten by their gradient, and a column of ones for
    /// `db`), or why it did not run.
    pub unfused_bytes: std::result::Result<u64, String>,
    /// The CPU's loss value, to compare with the GPU's.
    pub cpu_loss: Option<f32>,
}

fn median(mut t: Vec<Duration>) -> Duration {
    t.sort();
    t[t.len() / 2]
}

/// Seeded inputs: logits of a few units, as a trained head gives.
fn inputs(shape: LinearShape) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<i32>) {
    let mut state = 0x5EED_u64;
    let mut next = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let LinearShape {
        rows,
        hidden: d,
        classes: v,
    } = shape;
    let scale = 3.0 / (d as f32).sqrt();
    let h: Vec<f32> = (0..rows * d).map(|_| next()).collect();
    let w: Vec<f32> = (0..v * d).map(|_| next() * scale).collect();
    let b: Vec<f32> = (0..v).map(|_| next() * 0.1).collect();
    let t: Vec<i32> = (0..rows)
        .map(|_| (((next() + 1.0) * 0.5 * v as f32) as i32).clamp(0, v as i32 - 1))
        .collect();
    (h, w, b, t)
}

/// Times `encode` (recorded fresh each run) over a warm-up and `iters` runs.
fn time(
    ctx: &GpuContext,
    iters: usize,
    mut encode: impl FnMut(&mut wgpu::CommandEncoder) -> Result<()>,
) -> Result<Duration> {
    let mut times = Vec::with_capacity(iters);
    for i in 0..=iters {
        let mut enc = encoder(ctx, "bench linear");
        encode(&mut enc)?;
        let start = Instant::now();
        submit_and_wait(ctx, enc)?;
        if i > 0 {
            times.push(start.elapsed());
        }
    }
    Ok(median(times))
}

/// What to run besides the fused op and the matrix product.
#[derive(Clone, Copy, Debug)]
pub struct LinearBenchPlan {
    /// Storage type of the hidden states, the classifier and the fused
    /// op's gradients: F32, F16 or BF16.
    pub dtype: DType,
    /// Timed runs after a warm-up per path.
    pub iters: usize,
    /// Rows whose lse is checked against the f64 reference (0: none).
    pub check_rows: usize,
    /// The fused op's workspace (`None`: its default).
    pub workspace_bytes: Option<u64>,
    /// Also time the unfused GPU path (logits in memory).
    pub unfused: bool,
    /// Also time the CPU (sgemm + the fast cross-entropy, chunked).
    pub cpu: bool,
    /// Time the loss alone (no gradient paths).
    pub loss_only: bool,
}

impl Default for LinearBenchPlan {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            iters: 1,
            check_rows: 0,
            workspace_bytes: None,
            unfused: false,
            cpu: false,
            loss_only: false,
        }
    }
}

/// Rows per block of the yardstick's product: a multiple of the product's
/// 64-row tile whose H view starts at a multiple of the offset alignment for
/// rows of `row_bytes` (16-bit rows of an odd D are 2·D bytes: 64 rows would
/// leave the next block 128 bytes off a 256-byte alignment).
fn block_step(row_bytes: u64, align: u64) -> usize {
    let gcd = |mut a: u64, mut b: u64| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    let rows_for_alignment = align / gcd(align, row_bytes.max(1));
    let step = 64 / gcd(64, rows_for_alignment) * rows_for_alignment;
    usize::try_from(step).unwrap_or(usize::MAX)
}

/// `x` rounded to `dtype` (nearest even): the values the GPU holds.
fn round_to(x: &mut [f32], dtype: DType) {
    for v in x {
        *v = match dtype {
            DType::F16 => half::f16::from_f32(*v).to_f32(),
            DType::BF16 => half::bf16::from_f32(*v).to_f32(),
            _ => *v,
        };
    }
}

/// Runs the bench at one shape (see [`LinearBenchPlan`]).
pub fn bench_linear_cross_entropy(
    ctx: &GpuContext,
    shape: LinearShape,
    plan: LinearBenchPlan,
) -> Result<LinearReport> {
    let LinearBenchPlan {
        dtype,
        iters,
        check_rows,
        workspace_bytes,
        ..
    } = plan;
    let LinearShape {
        rows,
        hidden: d,
        classes: v,
    } = shape;
    // The reference and the CPU column see what the GPU holds.
    let (mut h, mut w, b, t) = inputs(shape);
    round_to(&mut h, dtype);
    round_to(&mut w, dtype);
    let hb = buffer_in(ctx, "hidden", &h, dtype);
    let wb = buffer_in(ctx, "classifier", &w, dtype);
    let bb = buffer_with(ctx, "bias", &b);
    let tb = buffer_with(ctx, "targets", &t);
    let product = 2.0 * rows as f64 * d as f64 * v as f64;
    let iters = iters.max(1);

    // The yardstick: the crate's product making the logits, in row blocks
    // through one output buffer of at most one binding (the whole [N, V]
    // may exceed the device's buffer limit).
    let by_binding = (ctx.max_binding_bytes() / (v as u64 * 4)) as usize;
    let step = block_step(
        d as u64 * dtype.size(),
        u64::from(ctx.limits().min_storage_buffer_offset_alignment),
    );
    let block = (by_binding / step * step).max(step).min(rows);
    let zb = buffer(ctx, "logits block", (block * v) as u64 * 4);
    let matmul = time(ctx, iters, |enc| {
        for r0 in (0..rows).step_by(block) {
            let n = block.min(rows - r0);
            ctx.encode_linear(
                enc,
                &LinearViews {
                    input: matrix(&hb, dtype, r0 * d, n, d),
                    weight: matrix(&wb, dtype, 0, v, d),
                    bias: Some(GpuTensor::f32_vector(&bb, 0, v)),
                    output: GpuTensor::f32_matrix(&zb, 0, n, v),
                },
            )?;
        }
        Ok(())
    })?;
    drop(zb);

    let options = LinearCrossEntropyOptions {
        workspace_bytes,
        ..Default::default()
    };
    let loss = buffer(ctx, "loss", 8);
    let lse = buffer(ctx, "lse", rows as u64 * 4);
    let views = LinearCrossEntropyViews {
        hidden: matrix(&hb, dtype, 0, rows, d),
        classifier: matrix(&wb, dtype, 0, v, d),
        bias: Some(GpuTensor::f32_vector(&bb, 0, v)),
        targets: GpuTensor::i32_vector(&tb, 0, rows),
        loss: GpuTensor::f32_vector(&loss, 0, 2),
        lse: Some(GpuTensor::f32_vector(&lse, 0, rows)),
        grad_hidden: None,
        grad_classifier: None,
        grad_bias: None,
    };
    let mut loss_scratch = ScratchUse::default();
    let fused_loss = time(ctx, iters, |enc| {
        loss_scratch = ctx.encode_linear_cross_entropy(enc, &views, &options)?;
        Ok(())
    })?;
    let check = if check_rows > 0 {
        let k = check_rows.min(rows);
        let got: Vec<f32> = read(ctx, &lse, k)?;
        let sample = LinearShape { rows: k, ..shape };
        let z = wgpu_loss::reference::linear(&h[..k * d], &w, Some(&b), sample)?;
        let mut worst = 0.0f64;
        let mut allowed = f64::INFINITY;
        for r in 0..k {
            let zr = &z[r * v..(r + 1) * v];
            let expected = wgpu_loss::reference::row_logsumexp(zr);
            let terms: f64 = (0..v)
                .map(|c| {
                    (0..d)
                        .map(|j| f64::from(h[r * d + j].abs()) * f64::from(w[c * d + j].abs()))
                        .sum::<f64>()
                        + f64::from(b[c].abs())
                })
                .fold(0.0, f64::max);
            let scale = product_scale(d, terms).max(expected.abs());
            allowed = allowed.min(F32_TOLERANCE.atol * scale + F32_TOLERANCE.rtol * expected.abs());
            worst = worst.max((f64::from(got[r]) - expected).abs());
        }
        Some((k, worst, allowed))
    } else {
        None
    };
    let mut timings = vec![
        LinearTiming {
            path: "matmul",
            median: matmul,
            flops: product,
        },
        LinearTiming {
            path: "fused-loss",
            median: fused_loss,
            flops: product,
        },
    ];
    let mut scratch = loss_scratch;
    if !plan.loss_only {
        // The gradients in the inputs' type, as a training step keeps them.
        let dh = buffer(ctx, "dH", (rows * d) as u64 * dtype.size());
        let dw = buffer(ctx, "dW", (v * d) as u64 * dtype.size());
        let db = buffer(ctx, "db", v as u64 * dtype.size());
        let grad_views = LinearCrossEntropyViews {
            grad_hidden: Some(matrix(&dh, dtype, 0, rows, d)),
            grad_classifier: Some(matrix(&dw, dtype, 0, v, d)),
            grad_bias: Some(matrix(&db, dtype, 0, v, 1)),
            ..views
        };
        let fused_grads = time(ctx, iters, |enc| {
            scratch = ctx.encode_linear_cross_entropy(enc, &grad_views, &options)?;
            Ok(())
        })?;
        timings.push(LinearTiming {
            path: "fused-loss-grads",
            median: fused_grads,
            flops: 3.0 * product,
        });
    }
    // The unfused path: logits in memory, cross-entropy's gradient over
    // them, two products for dH and dW and one against ones for db (f32
    // gradients: a product's output is f32).
    let logits_bytes = (rows * v) as u64 * 4;
    let unfused_bytes = if !plan.unfused {
        Err("not asked for".to_string())
    } else if logits_bytes > ctx.limits().max_buffer_size {
        Err(format!(
            "the logits ({:.1} MiB) exceed the adapter's max_buffer_size ({:.1} MiB)",
            logits_bytes as f64 / 1048576.0,
            ctx.limits().max_buffer_size as f64 / 1048576.0
        ))
    } else {
        let zb = buffer(ctx, "unfused logits", logits_bytes);
        let ones = buffer_with(ctx, "ones", &vec![1.0f32; rows]);
        let dh = buffer(ctx, "dH", (rows * d) as u64 * 4);
        let dw = buffer(ctx, "dW", (v * d) as u64 * 4);
        let db = buffer(ctx, "db", v as u64 * 4);
        let z = GpuTensor::f32_matrix(&zb, 0, rows, v);
        let ce = |grad| CrossEntropyViews {
            logits: z,
            targets: GpuTensor::i32_vector(&tb, 0, rows),
            loss: GpuTensor::f32_vector(&loss, 0, 2),
            grad,
            lse: None,
        };
        let forward = |enc: &mut wgpu::CommandEncoder| {
            ctx.encode_linear(
                enc,
                &LinearViews {
                    input: matrix(&hb, dtype, 0, rows, d),
                    weight: matrix(&wb, dtype, 0, v, d),
                    bias: Some(GpuTensor::f32_vector(&bb, 0, v)),
                    output: z,
                },
            )
        };
        let ce_options = CrossEntropyOptions::default();
        let unfused_loss = time(ctx, iters, |enc| {
            forward(enc)?;
            ctx.encode_cross_entropy(enc, &ce(GradOutput::None), &ce_options)?;
            Ok(())
        })?;
        timings.push(LinearTiming {
            path: "unfused-loss",
            median: unfused_loss,
            flops: product,
        });
        if !plan.loss_only {
            let unfused_grads = time(ctx, iters, |enc| {
                forward(enc)?;
                ctx.encode_cross_entropy(enc, &ce(GradOutput::InPlace), &ce_options)?;
                ctx.encode_matmul(
                    enc,
                    &MatmulViews {
                        a: z,
                        b: matrix(&wb, dtype, 0, v, d),
                        out: GpuTensor::f32_matrix(&dh, 0, rows, d),
                    },
                    &MatmulOptions::default(),
                )?;
                let transposed = MatmulOptions {
                    a: Layout::Transposed,
                    ..Default::default()
                };
                ctx.encode_matmul(
                    enc,
                    &MatmulViews {
                        a: z,
                        b: matrix(&hb, dtype, 0, rows, d),
                        out: GpuTensor::f32_matrix(&dw, 0, v, d),
                    },
                    &transposed,
                )?;
                ctx.encode_matmul(
                    enc,
                    &MatmulViews {
                        a: z,
                        b: GpuTensor::f32_matrix(&ones, 0, rows, 1),
                        out: GpuTensor::f32_matrix(&db, 0, v, 1),
                    },
                    &transposed,
                )?;
                Ok(())
            })?;
            timings.push(LinearTiming {
                path: "unfused-loss-grads",
                median: unfused_grads,
                flops: 3.0 * product,
            });
        }
        Ok(zb.size() + ones.size())
    };
    let mut cpu_loss = None;
    if plan.cpu {
        let chunk = scratch.chunk_rows.max(1);
        let mut run = |grads: bool| -> Result<Duration> {
            let start = Instant::now();
            let (l, _) =
                crate::cpu_linear::linear_cross_entropy_cpu(&h, &w, &b, &t, shape, chunk, grads)?;
            cpu_loss = Some(l);
            Ok(start.elapsed())
        };
        let loss_time = run(false)?;
        timings.push(LinearTiming {
            path: "cpu-loss",
            median: loss_time,
            flops: product,
        });
        if !plan.loss_only {
            let grads_time = run(true)?;
            timings.push(LinearTiming {
                path: "cpu-loss-grads",
                median: grads_time,
                flops: 3.0 * product,
            });
        }
    }
    Ok(LinearReport {
        shape,
        timings,
        scratch,
        logits_bytes,
        check,
        unfused_bytes,
        cpu_loss,
    })
}

#[cfg(test)]
mod tests {
    use super::block_step;

    #[test]
    fn blocks_start_on_the_offset_alignment() {
        for align in [4u64, 64, 256] {
            for d in [1u64, 5, 64, 255, 1024, 2049] {
                for size in [2u64, 4] {
                    let step = block_step(d * size, align) as u64;
                    assert_eq!(step % 64, 0, "d {d}, {size}-byte values, align {align}");
                    assert_eq!(
                        (step * d * size) % align,
                        0,
                        "d {d}, {size}-byte values, align {align}: step {step}"
                    );
                }
            }
        }
        // The case that failed: f16 rows of an odd D under 256-byte alignment.
        assert_eq!(block_step(5 * 2, 256), 128);
        assert_eq!(block_step(5 * 4, 256), 64);
    }
}
