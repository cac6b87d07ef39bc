//! Blocking helpers the command uses around a [`GpuContext`]: it is a
//! native program that waits for its GPU work, so it may block where the
//! library must not. Device errors come back as the library's
//! `Error::Gpu` naming what was recorded.

use wgpu_loss::{DType, GpuContext, GpuTensor};

use crate::error::Result;

const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Runs `f` inside validation and out-of-memory error scopes, waiting for them.
pub fn scoped<T>(ctx: &GpuContext, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let device = ctx.device();
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let out = f();
    let oom = pollster::block_on(oom.pop());
    let validation = pollster::block_on(validation.pop());
    let out = out?;
    if let Some(e) = oom.or(validation) {
        return Err(wgpu_loss::Error::Gpu {
            kernel: what.to_string(),
            adapter: ctx.adapter_name().to_string(),
            message: e.to_string(),
        }
        .into());
    }
    Ok(out)
}

/// `x` in a new storage buffer as `dtype` elements: f32 as they are, f16
/// or bf16 rounded to nearest even and packed two to a word (element 0 in
/// the low half), padded to whole words.
pub fn buffer_in(ctx: &GpuContext, label: &str, x: &[f32], dtype: DType) -> wgpu::Buffer {
    let halves: Vec<u16> = match dtype {
        DType::F16 => x
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect(),
        DType::BF16 => x
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_bits())
            .collect(),
        _ => return buffer_with(ctx, label, x),
    };
    let mut words = vec![0u32; halves.len().div_ceil(2)];
    bytemuck::cast_slice_mut::<u32, u16>(&mut words)[..halves.len()].copy_from_slice(&halves);
    buffer_with(ctx, label, &words)
}

/// A `[rows, cols]` view of `dtype` elements (f32, f16 or bf16) starting at
/// element `first` of `buffer`.
pub fn matrix(
    buffer: &wgpu::Buffer,
    dtype: DType,
    first: usize,
    rows: usize,
    cols: usize,
) -> GpuTensor<'_> {
    let offset = first as u64 * dtype.size();
    match dtype {
        DType::F16 => GpuTensor::f16_matrix(buffer, offset, rows, cols),
        DType::BF16 => GpuTensor::bf16_matrix(buffer, offset, rows, cols),
        _ => GpuTensor::f32_matrix(buffer, offset, rows, cols),
    }
}

/// A storage buffer of at least `bytes` bytes (whole 16-byte words).
pub fn buffer(ctx: &GpuContext, label: &str, bytes: u64) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(16).div_ceil(16) * 16,
        usage: STORAGE,
        mapped_at_creation: false,
    })
}

/// A storage buffer holding `data`.
pub fn buffer_with<T: bytemuck::Pod>(ctx: &GpuContext, label: &str, data: &[T]) -> wgpu::Buffer {
    let buffer = buffer(ctx, label, std::mem::size_of_val(data) as u64);
    if !data.is_empty() {
        ctx.queue()
            .write_buffer(&buffer, 0, bytemuck::cast_slice(data));
    }
    buffer
}

/// A command encoder.
pub fn encoder(ctx: &GpuContext, label: &str) -> wgpu::CommandEncoder {
    ctx.device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(label) })
}

/// Submits `encoder` and blocks until the device has finished it.
pub fn submit_and_wait(ctx: &GpuContext, encoder: wgpu::CommandEncoder) -> Result<()> {
    ctx.queue().submit([encoder.finish()]);
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| wgpu_loss::Error::Readback {
            adapter: ctx.adapter_name().to_string(),
            message: e.to_string(),
        })?;
    pollster::block_on(ctx.check_errors())?;
    Ok(())
}

/// Copies the first `len` values of `T` out of `buffer` (any `COPY_SRC` buffer).
pub fn read<T: bytemuck::Pod>(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    len: usize,
) -> Result<Vec<T>> {
    let bytes = (len * std::mem::size_of::<T>()) as u64;
    let size = bytes.max(4).div_ceil(4) * 4;
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("wgpu-loss-cli readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = encoder(ctx, "readback");
    enc.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
    submit_and_wait(ctx, enc)?;
    let (sender, receiver) = std::sync::mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = sender.send(r);
    });
    let failed = |message: String| wgpu_loss::Error::Readback {
        adapter: ctx.adapter_name().to_string(),
        message,
    };
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| failed(e.to_string()))?;
    match receiver.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(failed(e.to_string()).into()),
        Err(_) => return Err(failed("map callback dropped".into()).into()),
    }
    let out = match staging.get_mapped_range(..) {
        Ok(view) => Ok(bytemuck::pod_collect_to_vec(&view[..bytes as usize])),
        Err(e) => Err(failed(e.to_string()).into()),
    };
    staging.unmap();
    out
}
