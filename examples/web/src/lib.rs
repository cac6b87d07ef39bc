//! The demo page's Rust side: cross-entropy loss and gradient on random
//! logits in the browser, checked against the f64 reference, timed next to
//! a copy kernel on the same adapter. `index.html` calls `run`.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen::prelude::*;
use wgpu_loss::{
    reference, CrossEntropyOptions, CrossEntropyViews, GpuContext, GpuTensor, GradOutput, Request,
};

/// Timed runs of each kernel (after one warm-up).
const ITERS: usize = 10;

/// Runs the demo at `rows` x `cols` and returns its report as JSON: the
/// adapter, the loss, the largest gradient error against the f64 reference
/// (the reference runs on at most `check_rows` rows), and the kernel's and
/// the copy kernel's time and GB/s.
#[wasm_bindgen]
pub async fn run(rows: usize, cols: usize, check_rows: usize) -> Result<String, JsValue> {
    let err = |e: wgpu_loss::Error| JsValue::from_str(&e.to_string());
    if rows == 0 || cols == 0 {
        return Err(JsValue::from_str("rows and cols must be at least 1"));
    }
    let ctx = GpuContext::new().await.map_err(err)?;
    let mut seed = 0x5eed_u64;
    let mut next = move || {
        seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let logits: Vec<f32> = (0..rows * cols)
        .map(|_| ((next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0)
        .collect();
    let targets: Vec<i32> = (0..rows).map(|_| (next() % cols as u64) as i32).collect();
    let options = CrossEntropyOptions::default();

    // Loss and gradient through the host API, checked on a sample of rows.
    let out = ctx
        .cross_entropy(&logits, &targets, cols, &options, Request::LossAndGrad)
        .await
        .map_err(err)?;
    let grad = out.grad.unwrap_or_default();
    let checked = check_rows.clamp(1, rows);
    let targets64: Vec<i64> = targets[..checked].iter().map(|&t| i64::from(t)).collect();
    let want = reference::cross_entropy(
        &logits[..checked * cols],
        &targets64,
        cols,
        &CrossEntropyOptions {
            reduction: wgpu_loss::Reduction::Sum,
            ..Default::default()
        },
    )
    .map_err(err)?;
    // The sample was reduced with `sum`: the full call's `mean` gradient is that over N.
    let max_grad_error = grad[..checked * cols]
        .iter()
        .zip(&want.grad)
        .map(|(&g, &w)| (f64::from(g) - w / rows as f64).abs())
        .fold(0.0f64, f64::max);

    // Kernel time on resident buffers through the encode API, and a copy
    // kernel over the same number of elements, timed the same way.
    let elems = rows * cols;
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let buffer = |bytes: usize| {
        ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (bytes.max(16) as u64).div_ceil(16) * 16,
            usage,
            mapped_at_creation: false,
        })
    };
    let (x, t, g, l) = (
        buffer(elems * 4),
        buffer(rows * 4),
        buffer(elems * 4),
        buffer(8),
    );
    ctx.queue()
        .write_buffer(&x, 0, bytemuck::cast_slice(&logits));
    ctx.queue()
        .write_buffer(&t, 0, bytemuck::cast_slice(&targets));
    let views = CrossEntropyViews {
        logits: GpuTensor::f32_matrix(&x, 0, rows, cols),
        targets: GpuTensor::i32_vector(&t, 0, rows),
        loss: GpuTensor::f32_vector(&l, 0, 2),
        grad: GradOutput::Into(GpuTensor::f32_matrix(&g, 0, rows, cols)),
        lse: None,
    };
    let encode_options = options.with_weight(None);
    let kernel_ms = time(&ctx, &l, |e| {
        ctx.encode_cross_entropy(e, &views, &encode_options)
    })
    .await
    .map_err(err)?;
    let copy_ms = time(&ctx, &l, |e| ctx.encode_copy(e, &x, &g, elems))
        .await
        .map_err(err)?;
    // Ideal bytes: logits read once, gradient written once, targets read.
    let kernel_bytes = (8 * elems + 4 * rows) as f64;
    let copy_bytes = (8 * elems) as f64;
    let gbps = |bytes: f64, ms: f64| bytes / (ms * 1e6);
    let info = ctx.adapter_info();
    Ok(format!(
        "{{\"adapter\":{:?},\"backend\":{:?},\"rows\":{rows},\"cols\":{cols},\"loss\":{},\
         \"max_grad_error\":{max_grad_error:e},\"checked_rows\":{checked},\
         \"kernel_ms\":{kernel_ms:.4},\"kernel_gbps\":{:.4},\"copy_ms\":{copy_ms:.4},\
         \"copy_gbps\":{:.4},\"pct_of_copy\":{:.2}}}",
        ctx.adapter_name(),
        info.map(|i| format!("{:?}", i.backend)).unwrap_or_default(),
        out.loss[0],
        gbps(kernel_bytes, kernel_ms),
        gbps(copy_bytes, copy_ms),
        100.0 * gbps(kernel_bytes, kernel_ms) / gbps(copy_bytes, copy_ms),
    ))
}

/// Milliseconds per run of `work`: one warm-up, then [`ITERS`] runs in one
/// submission, timed from submit to a completed readback of `sync`.
async fn time(
    ctx: &GpuContext,
    sync: &wgpu::Buffer,
    work: impl Fn(&mut wgpu::CommandEncoder) -> wgpu_loss::Result<()>,
) -> wgpu_loss::Result<f64> {
    let mut warm = ctx.device().create_command_encoder(&Default::default());
    work(&mut warm)?;
    ctx.queue().submit([warm.finish()]);
    wait(ctx, sync).await;
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    for _ in 0..ITERS {
        work(&mut encoder)?;
    }
    let start = now();
    ctx.queue().submit([encoder.finish()]);
    wait(ctx, sync).await;
    ctx.check_errors().await?;
    Ok((now() - start) / ITERS as f64)
}

/// Waits until the queue has run everything submitted, by reading 4 bytes back.
async fn wait(ctx: &GpuContext, sync: &wgpu::Buffer) {
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(sync, 0, &staging, 0, 4);
    ctx.queue().submit([encoder.finish()]);
    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = sender.send(r);
    });
    let _ = receiver.receive().await;
}

fn now() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .map_or(0.0, |p| p.now())
}
