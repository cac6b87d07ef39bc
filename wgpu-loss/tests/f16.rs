//! f16 logits and gradients through GPU views: f16 storage, f32 arithmetic,
//! checked against the f64 reference on the same f16-rounded inputs.

mod common;

use common::{assert_close, assert_within, gpu, read_bytes, Arena, Rng, POISON};
use half::f16;
use wgpu_loss::reference;
use wgpu_loss::{
    CrossEntropyOptions, CrossEntropyViews, Error, GpuContext, GpuTensor, GradOutput, Reduction,
    SoftmaxOp, F16_TOLERANCE,
};

fn to_f16(x: &[f32]) -> Vec<f16> {
    x.iter().map(|&v| f16::from_f32(v)).collect()
}

fn widen(x: &[f16]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

fn read_f16(ctx: &GpuContext, a: &Arena, offset: u64, elems: usize) -> Vec<f32> {
    let bytes = read_bytes(ctx, &a.buffer, offset, elems as u64 * 2);
    widen(bytemuck::cast_slice(&bytes[..elems * 2]))
}

/// Room for an f16 output, filled with f16 poison so an unwritten element shows.
fn reserve_f16(ctx: &GpuContext, a: &mut Arena, elems: usize) -> u64 {
    a.put(ctx, &vec![f16::from_f32(POISON); elems.max(2)])
}

fn has_f16(ctx: &GpuContext) -> bool {
    ctx.features().contains(wgpu::Features::SHADER_F16)
}

#[test]
fn softmax_family_in_f16() {
    let Some(ctx) = gpu() else { return };
    if !has_f16(ctx) {
        eprintln!("SKIPPED f16 kernels: adapter {} lacks SHADER_F16 (the Unsupported error is tested below)", ctx.adapter_name());
        return;
    }
    for (i, (rows, cols)) in [(13, 1000), (9, 257), (4, 1)].into_iter().enumerate() {
        let mut rng = Rng::new(110 + i as u64);
        let x = to_f16(&rng.vec_normal(rows * cols, 3.0));
        let dy = to_f16(&rng.vec_normal(rows * cols, 1.0));
        let (xf, dyf) = (widen(&x), widen(&dy));
        let mut a = Arena::new(ctx, (rows * cols * 16 + rows * 8) as u64);
        let (xo, dyo) = (a.put(ctx, &x), a.put(ctx, &dy));
        let (yo, lyo, g1o, g2o) = (
            reserve_f16(ctx, &mut a, rows * cols),
            reserve_f16(ctx, &mut a, rows * cols),
            reserve_f16(ctx, &mut a, rows * cols),
            reserve_f16(ctx, &mut a, rows * cols),
        );
        let lseo = a.reserve(rows);
        let m = |o| GpuTensor::f16_matrix(&a.buffer, o, rows, cols);
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        ctx.encode_softmax(&mut enc, SoftmaxOp::Softmax, &m(xo), &m(yo))
            .unwrap();
        ctx.encode_softmax(&mut enc, SoftmaxOp::LogSoftmax, &m(xo), &m(lyo))
            .unwrap();
        ctx.encode_softmax(
            &mut enc,
            SoftmaxOp::Logsumexp,
            &m(xo),
            &GpuTensor::f32_vector(&a.buffer, lseo, rows),
        )
        .unwrap();
        ctx.queue().submit([enc.finish()]);
        let tag = format!("[{rows}, {cols}]");
        let y = read_f16(ctx, &a, yo, rows * cols);
        assert_within(
            &format!("f16 softmax {tag}"),
            &y,
            &reference::softmax(&xf, rows, cols).unwrap(),
            F16_TOLERANCE,
        );
        let ly = read_f16(ctx, &a, lyo, rows * cols);
        assert_within(
            &format!("f16 log_softmax {tag}"),
            &ly,
            &reference::log_softmax(&xf, rows, cols).unwrap(),
            F16_TOLERANCE,
        );
        // logsumexp of f16 inputs is an f32 output: the f32 tolerance applies.
        let lse = common::read(ctx, &a.buffer, lseo, rows);
        assert_close(
            &format!("f16-input logsumexp {tag}"),
            &lse,
            &reference::logsumexp(&xf, rows, cols).unwrap(),
        );

        let mut enc = ctx.device().create_command_encoder(&Default::default());
        ctx.encode_softmax_backward(&mut enc, &m(yo), &m(dyo), &m(g1o))
            .unwrap();
        ctx.encode_log_softmax_backward(&mut enc, &m(lyo), &m(dyo), &m(g2o))
            .unwrap();
        ctx.queue().submit([enc.finish()]);
        let g1 = read_f16(ctx, &a, g1o, rows * cols);
        assert_within(
            &format!("f16 softmax backward {tag}"),
            &g1,
            &reference::softmax_backward(&y, &dyf, rows, cols).unwrap(),
            F16_TOLERANCE,
        );
        let g2 = read_f16(ctx, &a, g2o, rows * cols);
        assert_within(
            &format!("f16 log_softmax backward {tag}"),
            &g2,
            &reference::log_softmax_backward(&ly, &dyf, rows, cols).unwrap(),
            F16_TOLERANCE,
        );
    }
}

#[test]
fn cross_entropy_with_f16_logits_and_gradient() {
    let Some(ctx) = gpu() else { return };
    if !has_f16(ctx) {
        eprintln!(
            "SKIPPED f16 kernels: adapter {} lacks SHADER_F16",
            ctx.adapter_name()
        );
        return;
    }
    for (i, (rows, classes)) in [(21, 512), (7, 1001)].into_iter().enumerate() {
        let mut rng = Rng::new(120 + i as u64);
        let x = to_f16(&rng.vec_normal(rows * classes, 3.0));
        let xf = widen(&x);
        let t: Vec<i32> = (0..rows)
            .map(|r| {
                if r == 2 {
                    -100
                } else {
                    rng.below(classes) as i32
                }
            })
            .collect();
        for (in_place, reduction) in [
            (false, Reduction::Mean),
            (true, Reduction::Sum),
            (false, Reduction::None),
        ] {
            let mut a = Arena::new(ctx, (rows * classes * 8 + rows * 16) as u64);
            let (xo, to) = (a.put(ctx, &x), a.put(ctx, &t));
            let go = if in_place {
                xo
            } else {
                reserve_f16(ctx, &mut a, rows * classes)
            };
            let loss_len = if reduction == Reduction::None {
                rows
            } else {
                2
            };
            let lo = a.reserve(loss_len);
            let opts = CrossEntropyOptions {
                label_smoothing: 0.1,
                z_loss: 1e-4,
                reduction,
                ..Default::default()
            };
            let views = CrossEntropyViews {
                logits: GpuTensor::f16_matrix(&a.buffer, xo, rows, classes),
                targets: GpuTensor::i32_vector(&a.buffer, to, rows),
                loss: GpuTensor::f32_vector(&a.buffer, lo, loss_len),
                grad: GradOutput::Into(GpuTensor::f16_matrix(&a.buffer, go, rows, classes)),
                lse: None,
            };
            let mut enc = ctx.device().create_command_encoder(&Default::default());
            ctx.encode_cross_entropy(&mut enc, &views, &opts.with_weight(None))
                .unwrap();
            ctx.queue().submit([enc.finish()]);
            let t64: Vec<i64> = t.iter().map(|&v| i64::from(v)).collect();
            let want = reference::cross_entropy(&xf, &t64, classes, &opts).unwrap();
            let tag =
                format!("f16 cross-entropy [{rows}, {classes}] in_place={in_place} {reduction:?}");
            let loss = common::read(ctx, &a.buffer, lo, loss_len);
            assert_close(&format!("{tag} loss"), &loss[..want.loss.len()], &want.loss);
            let g = read_f16(ctx, &a, go, rows * classes);
            assert_within(&format!("{tag} grad"), &g, &want.grad, F16_TOLERANCE);
        }
    }
}

#[test]
fn f16_without_shader_f16_is_unsupported_not_a_panic() {
    let Some(shared) = gpu() else { return };
    // A device created without SHADER_F16, as an embedding program might have.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("adapter");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .expect("device");
    let ctx = GpuContext::from_device(device, queue);
    assert!(!ctx.features().contains(wgpu::Features::SHADER_F16));
    let _ = shared;
    let mut a = Arena::new(&ctx, 4096);
    let xo = a.put(&ctx, &to_f16(&[0.5; 32]));
    let yo = a.reserve(32);
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    let x = GpuTensor::f16_matrix(&a.buffer, xo, 4, 8);
    let y = GpuTensor::f16_matrix(&a.buffer, yo, 4, 8);
    match ctx.encode_softmax(&mut enc, SoftmaxOp::Softmax, &x, &y) {
        Err(e @ Error::Unsupported { .. }) => assert!(e.to_string().contains("SHADER_F16"), "{e}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

/// The host API takes `half::f16` slices where the adapter has `SHADER_F16`.
#[test]
fn host_api_takes_f16_slices() {
    let Some(ctx) = gpu() else { return };
    if !has_f16(ctx) {
        eprintln!(
            "SKIPPED f16 host API: adapter {} lacks SHADER_F16",
            ctx.adapter_name()
        );
        return;
    }
    let (rows, cols) = (5, 33);
    let mut rng = Rng::new(130);
    let x = to_f16(&rng.vec_normal(rows * cols, 2.0));
    let xf = widen(&x);
    let y = wgpu_loss::block_on(ctx.log_softmax(&x, rows, cols)).unwrap();
    assert_within(
        "host f16 log_softmax",
        &y,
        &reference::log_softmax(&xf, rows, cols).unwrap(),
        F16_TOLERANCE,
    );
    let t: Vec<i64> = (0..rows).map(|_| rng.below(cols) as i64).collect();
    let opts = CrossEntropyOptions::default();
    let out = wgpu_loss::block_on(ctx.cross_entropy(
        &x,
        &t,
        cols,
        &opts,
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap();
    let want = reference::cross_entropy(&xf, &t, cols, &opts).unwrap();
    assert_close("host f16 cross-entropy loss", &out.loss, &want.loss);
    assert_within(
        "host f16 cross-entropy grad",
        &out.grad.unwrap(),
        &want.grad,
        F16_TOLERANCE,
    );
}
