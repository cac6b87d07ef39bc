//! Errors the crate can provoke on a real device: each comes back as an
//! `Err` naming what failed (kernel, size, limit, adapter), never a panic or
//! a hang, and the context stays usable where the device survives.
//!
//! Not provoked here: a real out-of-memory error. lavapipe's `max_buffer_size`
//! (2 GiB) is far below this machine's memory, so no single request can exhaust
//! it; the OutOfMemory error scope that would capture it is the same scope as
//! the validation one exercised below.

mod common;

use common::{gpu, Rng};
use wgpu_loss::{Error, GpuContext, GpuTensor, SoftmaxOp};

/// A device of our own with a small `max_buffer_size`, adopted through `from_device`.
fn small_device(max_buffer_size: u64) -> Option<GpuContext> {
    gpu()?;
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .expect("an adapter exists when gpu() found one");
    let limits = wgpu::Limits {
        max_buffer_size,
        max_storage_buffer_binding_size: max_buffer_size,
        ..adapter.limits()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("small"),
        required_limits: limits,
        ..Default::default()
    }))
    .expect("device with lower limits");
    Some(GpuContext::from_device(device, queue))
}

#[test]
fn a_request_past_max_buffer_size_names_size_and_limit_and_the_context_survives() {
    let Some(ctx) = small_device(1 << 20) else {
        return;
    };
    let mut rng = Rng::new(5);
    // 2 MiB of logits in one row: more than one buffer may hold.
    let cols = 1 << 19;
    let x = rng.vec_normal(cols, 1.0);
    let err = wgpu_loss::block_on(ctx.softmax(&x, 1, cols)).expect_err("too large");
    let msg = err.to_string();
    assert!(
        matches!(err, Error::RowTooLarge { .. } | Error::TooLarge { .. }),
        "{msg}"
    );
    assert!(msg.contains("2097152") && msg.contains("1048576"), "{msg}");
    // Many rows that together pass the limit are processed in windows instead.
    let (rows, small_cols) = (1024, 1024);
    let big = rng.vec_normal(rows * small_cols, 1.0);
    let y = wgpu_loss::block_on(ctx.softmax(&big, rows, small_cols))
        .expect("4 MiB in windows of at most 1 MiB");
    let expected = wgpu_loss::reference::softmax(&big, rows, small_cols).expect("reference");
    common::assert_close("windowed softmax after an error", &y, &expected);
}

#[test]
fn a_wgpu_validation_error_is_captured_and_names_the_kernel() {
    let Some(ctx) = gpu() else { return };
    let device = ctx.device();
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let make = |label| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: 4 * 64,
            usage,
            mapped_at_creation: false,
        })
    };
    let (x, y) = (make("x"), make("y"));
    // A destroyed buffer passes every host-side check; only wgpu can see it.
    x.destroy();
    let mut encoder = device.create_command_encoder(&Default::default());
    let result = ctx.encode_softmax(
        &mut encoder,
        SoftmaxOp::Softmax,
        &GpuTensor::f32_matrix(&x, 0, 4, 16),
        &GpuTensor::f32_matrix(&y, 0, 4, 16),
    );
    // Recording may succeed (wgpu defers the check to submit); the error then
    // surfaces when the caller submits. Either way, no panic, and the crate's
    // own calls keep working.
    if let Err(e) = &result {
        assert!(matches!(e, Error::Gpu { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("softmax") && msg.contains(ctx.adapter_name()),
            "{msg}"
        );
    } else {
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        ctx.queue().submit([encoder.finish()]);
        let error = pollster::block_on(scope.pop());
        assert!(
            error.is_some(),
            "submitting work on a destroyed buffer must fail"
        );
    }
    let ok = wgpu_loss::block_on(ctx.softmax(&[1.0, 2.0, 3.0], 1, 3)).expect("context usable");
    assert!((ok.iter().sum::<f32>() - 1.0).abs() < 1e-6);
}

#[test]
fn a_lost_device_is_an_error_not_a_panic_or_a_hang() {
    if gpu().is_none() {
        return;
    }
    let ctx = wgpu_loss::block_on(GpuContext::new()).expect("a second context");
    wgpu_loss::block_on(ctx.softmax(&[0.0, 1.0], 1, 2)).expect("works before");
    ctx.device().destroy();
    let err = wgpu_loss::block_on(ctx.softmax(&[0.0, 1.0], 1, 2))
        .expect_err("a destroyed device cannot compute");
    let msg = err.to_string();
    assert!(msg.contains(ctx.adapter_name()), "{msg}");
    assert!(matches!(err, Error::DeviceLost { .. }), "{msg}");
    // Every later call fails fast with the loss, whatever the op, and never
    // reaches wgpu's panicking default error handler.
    let again = wgpu_loss::block_on(ctx.cross_entropy(
        &[0.0, 1.0],
        &[1i64],
        2,
        &Default::default(),
        wgpu_loss::Request::LossAndGrad,
    ));
    assert!(matches!(again, Err(Error::DeviceLost { .. })), "{again:?}");
    let again = wgpu_loss::block_on(ctx.binary_cross_entropy(
        &[0.5],
        &[1.0],
        1,
        &Default::default(),
        wgpu_loss::Request::LossAndGrad,
    ));
    assert!(matches!(again, Err(Error::DeviceLost { .. })), "{again:?}");
}

#[test]
fn a_row_too_long_for_the_loop_bound_is_an_error_and_the_context_survives() {
    let Some(shared) = common::gpu() else { return };
    let _ = shared;
    // A device allowing 64 invocations per workgroup, so that a row too long
    // for them (four columns a vector) still fits in one binding.
    let lanes = 64u32;
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("adapter");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: wgpu::Limits {
            max_compute_invocations_per_workgroup: lanes,
            max_compute_workgroup_size_x: lanes,
            ..adapter.limits()
        },
        ..Default::default()
    }))
    .expect("device");
    // The CPU adapters' table with splitting off, so the row is one
    // workgroup's on any adapter (split, it would be cut into chunks).
    let tuning = wgpu_loss::RowTuning {
        split_vectors: 0,
        ..wgpu_loss::RowTuning::for_adapter(wgpu::DeviceType::Cpu, None).fitted_to(&device.limits())
    };
    let ctx = &GpuContext::from_device_with_options(
        device,
        queue,
        Some(adapter.get_info()),
        wgpu_loss::ContextOptions {
            row_tuning: Some(tuning),
            ..Default::default()
        },
    )
    .expect("the CPU table fits 64 invocations");
    let cols = (u64::from(lanes) * wgpu_loss::tuning::MAX_VECTORS_PER_THREAD * 4 + 1) as usize;
    assert!((cols as u64) * 4 <= ctx.max_binding_bytes());
    let x = vec![0.5f32; cols];
    let err = wgpu_loss::block_on(ctx.logsumexp(&x, 1, cols))
        .expect_err("too long for one workgroup's invocations");
    let msg = err.to_string();
    assert!(
        matches!(err, wgpu_loss::Error::RowTooLong { .. }) && msg.contains(&cols.to_string()),
        "{msg}"
    );
    let ok = wgpu_loss::block_on(ctx.logsumexp(&x[..1000], 1, 1000)).expect("still works");
    assert!((ok[0] - (0.5 + 1000f32.ln())).abs() < 1e-4, "{}", ok[0]);
}

/// The passes over all rows and classes (the `mean` denominator, the final
/// sum) used to run in one workgroup, which on a CPU adapter stops an
/// invocation's loops after 65535 iterations: past 65535 x 256 classes (or
/// rows) they were refused. They are blocked reductions now, whose single
/// workgroup folds at most 32768 records, so such a call computes.
#[test]
fn a_row_loss_past_one_workgroups_loop_bound_computes() {
    let Some(ctx) = common::gpu() else { return };
    // A multiple of 4, so the row kernel's lanes (vec4 loads) stay under
    // their own bound (`RowTooLong`).
    let classes = 65_535 * 256 + 4;
    if (classes as u64) * 4 > ctx.max_binding_bytes() {
        eprintln!("SKIPPED: a row of {classes} columns is past the binding limit");
        return;
    }
    let mut logits = vec![0.0f32; classes];
    logits[7] = 3.0;
    let weight = vec![0.5f32; classes];
    let options = wgpu_loss::CrossEntropyOptions {
        weight: Some(&weight[..]),
        label_smoothing: 0.25,
        ..Default::default()
    };
    let got = wgpu_loss::block_on(ctx.cross_entropy(
        &logits,
        &[7i32],
        classes,
        &options,
        wgpu_loss::Request::Loss,
    ))
    .expect("one row of 16.8M classes");
    let want = wgpu_loss::reference::cross_entropy(&logits, &[7i64], classes, &options)
        .expect("reference");
    common::assert_close("loss", &got.loss, &want.loss);
}
