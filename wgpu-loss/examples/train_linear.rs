//! Softmax regression trained entirely on the GPU.
//!
//! Each step records three things into one command encoder and submits once:
//! a compute pass for `logits = X·Wᵀ + b`, the crate's cross-entropy encode
//! call writing the mean-reduced gradient over the logits, and a compute pass
//! for the SGD update of `W` and `b`. Nothing is read back except the loss,
//! every few steps.
//!
//! `cargo run --release --example train_linear -- [steps]`

use wgpu::util::DeviceExt;
use wgpu_loss::{CrossEntropyOptions, CrossEntropyViews, GpuContext, GpuTensor, GradOutput};

const N: usize = 512; // samples
const D: usize = 8; // features
const K: usize = 4; // classes
const LEARNING_RATE: f32 = 0.5;
/// Steps between loss readbacks.
pub const REPORT_EVERY: usize = 10;

/// Synthetic, linearly separable data: four well-separated Gaussian clusters.
fn dataset() -> (Vec<f32>, Vec<i32>) {
    let mut state = 0x853c_49e6_748f_ea9bu64;
    let mut unit = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let centers: Vec<f32> = (0..K * D).map(|_| (unit() - 0.5) * 8.0).collect();
    let mut x = Vec::with_capacity(N * D);
    let mut y = Vec::with_capacity(N);
    for n in 0..N {
        let class = n % K;
        y.push(class as i32);
        for d in 0..D {
            x.push(centers[class * D + d] + (unit() - 0.5));
        }
    }
    (x, y)
}

fn shader() -> String {
    format!(
        r#"
const N: u32 = {N}u;
const D: u32 = {D}u;
const K: u32 = {K}u;
const LR: f32 = {LEARNING_RATE};
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> logits: array<f32>;

@compute @workgroup_size(64)
fn forward(@builtin(global_invocation_id) gid: vec3<u32>) {{
    let i = gid.x;
    if (i >= N * K) {{ return; }}
    let n = i / K;
    let k = i % K;
    var acc = b[k];
    for (var d = 0u; d < D; d++) {{ acc += x[n * D + d] * w[k * D + d]; }}
    logits[i] = acc;
}}

// `logits` now holds dL/dlogits (the crate wrote the gradient in place).
@compute @workgroup_size(64)
fn update(@builtin(global_invocation_id) gid: vec3<u32>) {{
    let i = gid.x;
    if (i < K * D) {{
        let k = i / D;
        let d = i % D;
        var g = 0.0;
        for (var n = 0u; n < N; n++) {{ g += logits[n * K + k] * x[n * D + d]; }}
        w[i] -= LR * g;
    }} else if (i < K * D + K) {{
        let k = i - K * D;
        var g = 0.0;
        for (var n = 0u; n < N; n++) {{ g += logits[n * K + k]; }}
        b[k] -= LR * g;
    }}
}}
"#
    )
}

/// Trains for `steps` steps; returns `(step, loss)` every [`REPORT_EVERY`] steps and at the end.
pub fn train(
    ctx: &GpuContext,
    steps: usize,
) -> Result<Vec<(usize, f32)>, Box<dyn std::error::Error>> {
    let device = ctx.device();
    let (x, y) = dataset();
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let init = |label, contents: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage,
        })
    };
    let x_buf = init("x", bytemuck::cast_slice(&x));
    let y_buf = init("targets", bytemuck::cast_slice(&y));
    let w_buf = init("w", bytemuck::cast_slice(&[0.0f32; K * D]));
    let b_buf = init("b", bytemuck::cast_slice(&[0.0f32; K]));
    let logits_buf = init("logits", bytemuck::cast_slice(&[0.0f32; N * K]));
    let loss_buf = init("loss", bytemuck::cast_slice(&[0.0f32; 2]));
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("loss readback"),
        size: 8,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });

    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("train_linear"),
        source: wgpu::ShaderSource::Wgsl(shader().into()),
    });
    let pipeline = |entry| {
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        })
    };
    let (forward, update) = (pipeline("forward"), pipeline("update"));
    let bind = |p: &wgpu::ComputePipeline| {
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &p.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: x_buf.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: w_buf.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: b_buf.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: logits_buf.as_entire_binding(),
                },
            ],
        })
    };
    let (forward_bg, update_bg) = (bind(&forward), bind(&update));

    let logits = GpuTensor::f32_matrix(&logits_buf, 0, N, K);
    let views = CrossEntropyViews {
        logits,
        targets: GpuTensor::i32_vector(&y_buf, 0, N),
        loss: GpuTensor::f32_vector(&loss_buf, 0, 2),
        grad: GradOutput::InPlace, // the gradient overwrites the logits
        lse: None,
    };
    let options = CrossEntropyOptions::default();
    let mut losses = Vec::new();
    for step in 1..=steps {
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&forward);
            pass.set_bind_group(0, &forward_bg, &[]);
            pass.dispatch_workgroups((N * K).div_ceil(64) as u32, 1, 1);
        }
        ctx.encode_cross_entropy(&mut encoder, &views, &options)?;
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&update);
            pass.set_bind_group(0, &update_bg, &[]);
            pass.dispatch_workgroups((K * D + K).div_ceil(64) as u32, 1, 1);
        }
        let report = step % REPORT_EVERY == 0 || step == steps || step == 1;
        if report {
            encoder.copy_buffer_to_buffer(&loss_buf, 0, &staging, 0, 8);
        }
        ctx.queue().submit([encoder.finish()]);
        if report {
            staging.map_async(wgpu::MapMode::Read, .., |_| {});
            device.poll(wgpu::PollType::wait_indefinitely())?;
            let loss = bytemuck::cast_slice::<u8, f32>(&staging.get_mapped_range(..)?)[0];
            staging.unmap();
            losses.push((step, loss));
        }
    }
    Ok(losses)
}

#[allow(dead_code)] // the test includes this file for `train` alone
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200);
    let ctx = wgpu_loss::block_on(GpuContext::new())?;
    println!(
        "training softmax regression ({N} samples, {D} features, {K} classes) on {}",
        ctx.adapter_name()
    );
    for (step, loss) in train(&ctx, steps)? {
        println!("step {step:>5}  loss {loss:.6}");
    }
    Ok(())
}
