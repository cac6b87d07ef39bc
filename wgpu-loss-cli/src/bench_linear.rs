//! `bench --op linear-cross-entropy`: the fused linear + cross-entropy
//! against the crate's own matrix product at the same shape, in the same
//! run, with the memory the op allocates next to what materialised logits
//! would take, and a sample of rows checked against the f64 reference.

use std::time::{Duration, Instant};

use wgpu_loss::tolerance::product_scale;
use wgpu_loss::{
    GpuContext, GpuTensor, LinearCrossEntropyOptions, LinearCrossEntropyViews, LinearShape,
    LinearViews, ScratchUse, F32_TOLERANCE,
};

use crate::gpu::{buffer, buffer_with, encoder, read, submit_and_wait};
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

/// Runs the bench at one shape: `iters` timed runs after a warm-up per
/// path; `check_rows` rows' lse against the f64 reference (0: none).
pub fn bench_linear_cross_entropy(
    ctx: &GpuContext,
    shape: LinearShape,
    iters: usize,
    check_rows: usize,
    workspace_bytes: Option<u64>,
) -> Result<LinearReport> {
    let LinearShape {
        rows,
        hidden: d,
        classes: v,
    } = shape;
    let (h, w, b, t) = inputs(shape);
    let hb = buffer_with(ctx, "hidden", &h);
    let wb = buffer_with(ctx, "classifier", &w);
    let bb = buffer_with(ctx, "bias", &b);
    let tb = buffer_with(ctx, "targets", &t);
    let product = 2.0 * rows as f64 * d as f64 * v as f64;
    let iters = iters.max(1);

    // The yardstick: the crate's product making the logits, in row blocks
    // through one output buffer of at most one binding (the whole [N, V]
    // may exceed the device's buffer limit).
    // Blocks of a multiple of 64 rows keep every block's H view aligned.
    let by_binding = (ctx.max_binding_bytes() / (v as u64 * 4)) as usize;
    let block = (by_binding / 64 * 64).max(64).min(rows);
    let zb = buffer(ctx, "logits block", (block * v) as u64 * 4);
    let matmul = time(ctx, iters, |enc| {
        for r0 in (0..rows).step_by(block) {
            let n = block.min(rows - r0);
            ctx.encode_linear(
                enc,
                &LinearViews {
                    input: GpuTensor::f32_matrix(&hb, (r0 * d) as u64 * 4, n, d),
                    weight: GpuTensor::f32_matrix(&wb, 0, v, d),
                    bias: Some(GpuTensor::f32_vector(&bb, 0, v)),
                    output: GpuTensor::f32_matrix(&zb, 0, n, v),
                },
            )?;
        }
        Ok(())
    })?;
    drop(zb);

    let options = LinearCrossEntropyOptions {
        workspace_bytes: workspace_bytes
            .unwrap_or(LinearCrossEntropyOptions::<[f32]>::default().workspace_bytes),
        ..Default::default()
    };
    let loss = buffer(ctx, "loss", 8);
    let lse = buffer(ctx, "lse", rows as u64 * 4);
    let views = LinearCrossEntropyViews {
        hidden: GpuTensor::f32_matrix(&hb, 0, rows, d),
        classifier: GpuTensor::f32_matrix(&wb, 0, v, d),
        bias: Some(GpuTensor::f32_vector(&bb, 0, v)),
        targets: GpuTensor::i32_vector(&tb, 0, rows),
        loss: GpuTensor::f32_vector(&loss, 0, 2),
        lse: Some(GpuTensor::f32_vector(&lse, 0, rows)),
        grad_hidden: None,
        grad_classifier: None,
        grad_bias: None,
    };
    let fused_loss = time(ctx, iters, |enc| {
        ctx.encode_linear_cross_entropy(enc, &views, &options)?;
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
    let dh = buffer(ctx, "dH", (rows * d) as u64 * 4);
    let dw = buffer(ctx, "dW", (v * d) as u64 * 4);
    let db = buffer(ctx, "db", v as u64 * 4);
    let grad_views = LinearCrossEntropyViews {
        grad_hidden: Some(GpuTensor::f32_matrix(&dh, 0, rows, d)),
        grad_classifier: Some(GpuTensor::f32_matrix(&dw, 0, v, d)),
        grad_bias: Some(GpuTensor::f32_vector(&db, 0, v)),
        ..views
    };
    let mut scratch = ScratchUse::default();
    let fused_grads = time(ctx, iters, |enc| {
        scratch = ctx.encode_linear_cross_entropy(enc, &grad_views, &options)?;
        Ok(())
    })?;
    Ok(LinearReport {
        shape,
        timings: vec![
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
            LinearTiming {
                path: "fused-loss-grads",
                median: fused_grads,
                flops: 3.0 * product,
            },
        ],
        scratch,
        logits_bytes: (rows * v) as u64 * 4,
        check,
    })
}
