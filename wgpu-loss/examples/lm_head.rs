//! A tiny language-model head trained on the GPU with the fused linear +
//! cross-entropy: the logits `H·Wᵀ + b` never exist in memory, only a
//! chunk of them at a time inside the op.
//!
//! Hidden states `H` are fixed features of `N` tokens; the targets come from
//! a hidden "teacher" head. The crate's `encode_linear_cross_entropy`
//! (loss, `dW`, `db`) is prepared once (`GpuContext::prepare`); each step
//! records it, with two SGD passes (`examples/lm_head_sgd.wgsl`), into one
//! command encoder and submits once, creating no buffer or bind group. Only
//! the loss is read back, every few steps.
//!
//! `cargo run --release --example lm_head -- [steps]`

use wgpu::util::DeviceExt;
use wgpu_loss::{GpuContext, GpuTensor, LinearCrossEntropyOptions, LinearCrossEntropyViews};

const N: usize = 256; // tokens
const D: usize = 32; // hidden size
const V: usize = 1000; // vocabulary
const LEARNING_RATE: f32 = 4.0;
/// Steps between loss readbacks.
pub const REPORT_EVERY: usize = 10;

fn uniform_stream(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// Hidden states and the teacher head's most likely token for each.
fn dataset() -> (Vec<f32>, Vec<i32>) {
    let mut next = uniform_stream(0x1A6E_5EED);
    let h: Vec<f32> = (0..N * D).map(|_| next() * 2.0).collect();
    let teacher: Vec<f32> = (0..V * D).map(|_| next()).collect();
    let targets = (0..N)
        .map(|n| {
            let logit = |v: usize| {
                (0..D)
                    .map(|d| h[n * D + d] * teacher[v * D + d])
                    .sum::<f32>()
            };
            (0..V)
                .max_by(|&a, &b| logit(a).total_cmp(&logit(b)))
                .unwrap_or(0) as i32
        })
        .collect();
    (h, targets)
}

/// Trains for `steps` steps; returns `(step, loss)` every [`REPORT_EVERY`] steps and at the end.
pub fn train(
    ctx: &GpuContext,
    steps: usize,
) -> Result<Vec<(usize, f32)>, Box<dyn std::error::Error>> {
    let device = ctx.device();
    let (h, y) = dataset();
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let init = |label, contents: &[u8]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage,
        })
    };
    let h_buf = init("hidden", bytemuck::cast_slice(&h));
    let y_buf = init("targets", bytemuck::cast_slice(&y));
    let w_buf = init("classifier", bytemuck::cast_slice(&vec![0.0f32; V * D]));
    let b_buf = init("bias", bytemuck::cast_slice(&[0.0f32; V]));
    let dw_buf = init(
        "grad classifier",
        bytemuck::cast_slice(&vec![0.0f32; V * D]),
    );
    let db_buf = init("grad bias", bytemuck::cast_slice(&[0.0f32; V]));
    let loss_buf = init("loss", bytemuck::cast_slice(&[0.0f32; 2]));
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("loss readback"),
        size: 8,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });

    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("lm_head_sgd"),
        source: wgpu::ShaderSource::Wgsl(include_str!("lm_head_sgd.wgsl").into()),
    });
    let sgd = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("sgd"),
        layout: None,
        module: &module,
        entry_point: Some("sgd"),
        compilation_options: Default::default(),
        cache: None,
    });
    let sgd_pass = |param: &wgpu::Buffer, grad: &wgpu::Buffer, len: usize| {
        let mut step = [0u8; 8];
        step[..4].copy_from_slice(&LEARNING_RATE.to_le_bytes());
        step[4..].copy_from_slice(&(len as u32).to_le_bytes());
        let uniform = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("sgd step"),
            contents: &step,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &sgd.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: uniform.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: param.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: grad.as_entire_binding(),
                },
            ],
        });
        (bind_group, len.div_ceil(256) as u32)
    };
    let updates = [
        sgd_pass(&w_buf, &dw_buf, V * D),
        sgd_pass(&b_buf, &db_buf, V),
    ];

    let views = LinearCrossEntropyViews {
        hidden: GpuTensor::f32_matrix(&h_buf, 0, N, D),
        classifier: GpuTensor::f32_matrix(&w_buf, 0, V, D),
        bias: Some(GpuTensor::f32_vector(&b_buf, 0, V)),
        targets: GpuTensor::i32_vector(&y_buf, 0, N),
        loss: GpuTensor::f32_vector(&loss_buf, 0, 2),
        lse: None,
        grad_hidden: None, // the features are frozen
        grad_classifier: Some(GpuTensor::f32_matrix(&dw_buf, 0, V, D)),
        grad_bias: Some(GpuTensor::f32_vector(&db_buf, 0, V)),
    };
    // A small workspace, so the op really walks the tokens in chunks.
    let options = LinearCrossEntropyOptions {
        workspace_bytes: Some(64 * V as u64 * 4),
        ..Default::default()
    };
    // Recorded once: every step replays the same dispatches over the same
    // buffers (the weights the SGD passes update), creating nothing.
    let loss_and_grads =
        ctx.prepare(|encoder| ctx.encode_linear_cross_entropy(encoder, &views, &options))?;
    let mut losses = Vec::new();
    for step in 1..=steps {
        let mut encoder = device.create_command_encoder(&Default::default());
        loss_and_grads.encode(&mut encoder);
        for (bind_group, groups) in &updates {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&sgd);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(*groups, 1, 1);
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
        .unwrap_or(100);
    let ctx = pollster::block_on(GpuContext::new())?;
    println!("adapter: {}", ctx.adapter_name());
    for (step, loss) in train(&ctx, steps)? {
        println!("step {step:>4}: loss {loss:.4}");
    }
    Ok(())
}
