//! Times the three matrix products of one chunk of the fused linear +
//! cross-entropy's gradient pass, each alone, at equal multiply-adds:
//!
//! - logits `Z = H·Wᵀ` (`rows` tall, `D` deep),
//! - `dH = G·W` (`rows` tall, `V` deep),
//! - `dW += Gᵀ·H` (`V` tall, `rows` deep),
//!
//! so that a chunk's rows (64 or 128) can be compared with a full-size
//! product (`rows` = N). BENCHMARKS.md uses it to say where the fused
//! gradient pass loses time on an adapter.
//!
//! ```text
//! cargo run --release -p wgpu-loss --example chunk_products -- ROWS V D
//! ```
use std::time::Instant;
use wgpu::util::DeviceExt;
use wgpu_loss::{block_on, Accumulate, GpuContext, GpuTensor, Layout, MatmulOptions, MatmulViews};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let &[rows, v, d] = sizes.as_slice() else {
        return Err("usage: chunk_products ROWS V D".into());
    };
    let ctx = block_on(GpuContext::new())?;
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    let filled = |n: usize| {
        let data: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        ctx.device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(&data),
                usage,
            })
    };
    let (h, w, g) = (filled(rows * d), filled(v * d), filled(rows * v));
    let (dh, dw) = (filled(rows * d), filled(v * d));
    let backend = ctx.adapter_info().map(|i| i.backend);
    println!(
        "adapter: {} ({backend:?}); rows {rows}, V {v}, D {d}; median of 3",
        ctx.adapter_name()
    );
    let time = |name: &str, views: MatmulViews<'_>, options: MatmulOptions| {
        let mut times = Vec::new();
        for _ in 0..3 {
            let mut encoder = ctx.device().create_command_encoder(&Default::default());
            ctx.encode_matmul(&mut encoder, &views, &options)?;
            let start = Instant::now();
            ctx.queue().submit([encoder.finish()]);
            ctx.device().poll(wgpu::PollType::wait_indefinitely())?;
            times.push(start.elapsed().as_secs_f64());
        }
        block_on(ctx.check_errors())?;
        times.sort_by(f64::total_cmp);
        let gflops = 2.0 * (rows * v * d) as f64 / times[1] / 1e9;
        println!("{name:28} {:9.3} s {gflops:7.2} GFLOP/s", times[1]);
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let m = |b, r, c| GpuTensor::f32_matrix(b, 0, r, c);
    time(
        "logits H·Wt",
        MatmulViews {
            a: m(&h, rows, d),
            b: m(&w, v, d),
            out: m(&g, rows, v),
        },
        MatmulOptions {
            b: Layout::Transposed,
            ..Default::default()
        },
    )?;
    time(
        "dH += G·W",
        MatmulViews {
            a: m(&g, rows, v),
            b: m(&w, v, d),
            out: m(&dh, rows, d),
        },
        MatmulOptions {
            accumulate: Accumulate::Add,
            ..Default::default()
        },
    )?;
    time(
        "dW += Gt·H",
        MatmulViews {
            a: m(&g, rows, v),
            b: m(&h, rows, d),
            out: m(&dw, v, d),
        },
        MatmulOptions {
            a: Layout::Transposed,
            accumulate: Accumulate::Add,
            ..Default::default()
        },
    )?;
    Ok(())
}
