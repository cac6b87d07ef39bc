//! f16 logits and gradients through GPU views: f16 storage packed two to a
//! `u32` word on every adapter (no `SHADER_F16`), f32 arithmetic, checked
//! against the f64 reference on the same f16-rounded inputs. Whole vec4
//! rows and edged rows (odd C of 8 or more) run the packed kernels; rows
//! under 8 columns run the f32 kernels between `half_widen` and `half_narrow`.

mod common;

use common::{
    assert_close, assert_within, gpu, gpu_with_binding_cap, gpu_with_tuning, read_bytes, Arena, Rng,
};
use half::f16;
use wgpu_loss::reference;
use wgpu_loss::{
    CrossEntropyOptions, CrossEntropyViews, GpuContext, GpuTensor, GradOutput, Reduction,
    RowTuning, SoftmaxOp, F16_TOLERANCE,
};

/// A NaN with a payload no kernel writes: an output element left unwritten
/// fails every comparison, and one past a view must keep these bits.
const F16_POISON: f16 = f16::from_bits(0x7E01);

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

/// Room for an f16 output and one element past it, all poison: the element
/// past the end must survive (an odd-length view ends mid-word).
fn reserve_f16(ctx: &GpuContext, a: &mut Arena, elems: usize) -> u64 {
    a.put(ctx, &vec![F16_POISON; elems + 1])
}

fn assert_guard_kept(ctx: &GpuContext, a: &Arena, offset: u64, elems: usize, what: &str) {
    let bytes = read_bytes(ctx, &a.buffer, offset, (elems as u64 + 1) * 2);
    let past = bytemuck::cast_slice::<u8, u16>(&bytes[..(elems + 1) * 2])[elems];
    assert_eq!(
        past,
        F16_POISON.to_bits(),
        "{what}: the f16 element past the view (index {elems}) was overwritten"
    );
}

/// Shapes: whole vec4s, edged odd rows, and short rows (staged).
const SHAPES: [(usize, usize); 6] = [(13, 1000), (9, 257), (6, 9), (4, 1), (3, 4), (5, 3)];

#[test]
fn softmax_family_in_f16() {
    let Some(ctx) = gpu() else { return };
    softmax_family_in_f16_on(ctx, &SHAPES, 110);
}

/// Staged rows across binding windows: a window of an odd C starts mid-word,
/// so the widen and narrow kernels meet a half that belongs to the window before.
#[test]
fn staged_f16_rows_across_binding_windows() {
    let Some(ctx) = gpu_with_binding_cap(64 * 1024) else {
        return;
    };
    softmax_family_in_f16_on(&ctx, &[(171, 257), (40, 1001), (301, 5)], 115);
    cross_entropy_in_f16_on(&ctx, &[(301, 5)], 117);
}

/// The GPU table, forced: rows held in registers (read once) and rows split
/// into chunks with a partial pass, whole and edged.
#[test]
fn held_and_split_f16_rows() {
    let Some(ctx) = gpu_with_tuning(RowTuning::default()) else {
        return;
    };
    softmax_family_in_f16_on(&ctx, &[(5, 2048), (3, 2047)], 150);
    cross_entropy_in_f16_on(&ctx, &[(5, 2048), (3, 2047)], 152);
    // Rows of up to 65536 16-bit columns are held too (16 packed vectors on
    // each of 1024 lanes), whole and edged: read once.
    // 65535 columns: the second row spans 16385 vectors, one past the
    // registers, read again (`HELD_SLOTS`).
    let long = [(2, 65_536), (2, 40_001), (2, 65_535)];
    for (rows, cols) in long {
        let plan = ctx.describe_row_plan_of(rows, cols, wgpu_loss::DType::F16);
        assert!(plan.contains("held in registers"), "{rows}x{cols}: {plan}");
    }
    softmax_family_in_f16_on(&ctx, &long, 157);
    cross_entropy_in_f16_on(&ctx, &long, 158);
    let Some(ctx) = gpu_with_tuning(common::splitting_tuning()) else {
        return;
    };
    for (rows, cols) in [(3, 8192), (2, 8191)] {
        let plan = ctx.describe_row_plan(rows, cols);
        assert!(plan.contains("rows split"), "{rows}x{cols}: {plan}");
    }
    softmax_family_in_f16_on(&ctx, &[(3, 8192), (2, 8191)], 154);
    cross_entropy_in_f16_on(&ctx, &[(3, 8192), (2, 8191)], 156);
}

fn softmax_family_in_f16_on(ctx: &GpuContext, shapes: &[(usize, usize)], seed: u64) {
    for (i, &(rows, cols)) in shapes.iter().enumerate() {
        let mut rng = Rng::new(seed + i as u64);
        let x = to_f16(&rng.vec_normal(rows * cols, 3.0));
        let dy = to_f16(&rng.vec_normal(rows * cols, 1.0));
        let (xf, dyf) = (widen(&x), widen(&dy));
        let mut a = Arena::new(ctx, (rows * cols * 16 + rows * 8 + 64) as u64);
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
        for (o, what) in [(yo, "softmax"), (lyo, "log_softmax")] {
            assert_guard_kept(ctx, &a, o, rows * cols, &format!("f16 {what} {tag}"));
        }
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
        for (o, what) in [(g1o, "softmax backward"), (g2o, "log_softmax backward")] {
            assert_guard_kept(ctx, &a, o, rows * cols, &format!("f16 {what} {tag}"));
        }
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
    cross_entropy_in_f16_on(ctx, &[(21, 512), (7, 1001), (6, 3)], 120);
}

fn cross_entropy_in_f16_on(ctx: &GpuContext, shapes: &[(usize, usize)], seed: u64) {
    for (i, &(rows, classes)) in shapes.iter().enumerate() {
        let mut rng = Rng::new(seed + i as u64);
        let x = to_f16(&rng.vec_normal(rows * classes, 3.0));
        let xf = widen(&x);
        let t: Vec<i32> = (0..rows)
            .map(|r| {
                if r == 2 % rows {
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
            let mut a = Arena::new(ctx, (rows * classes * 8 + rows * 16 + 64) as u64);
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
            if !in_place {
                assert_guard_kept(ctx, &a, go, rows * classes, &tag);
            }
            let g = read_f16(ctx, &a, go, rows * classes);
            assert_within(&format!("{tag} grad"), &g, &want.grad, F16_TOLERANCE);
        }
    }
}

/// f16 needs no shader feature: on a device created without `SHADER_F16`
/// (as an embedding program might have), the softmax family and
/// cross-entropy run on f16 views and match the reference.
#[test]
fn f16_runs_without_shader_f16() {
    if gpu().is_none() {
        return;
    }
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
    softmax_family_in_f16_on(&ctx, &[(4, 8), (6, 9), (5, 3)], 140);
    cross_entropy_in_f16_on(&ctx, &[(4, 8), (6, 9)], 142);
}

/// The host API takes `half::f16` slices.
#[test]
fn host_api_takes_f16_slices() {
    let Some(ctx) = gpu() else { return };
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

/// f16 gradients of an odd C of 8 or more are stored packed, in place (the
/// plan shows `ce_edges` and no staging); under 8 columns they are staged
/// through f32 (`half_widen`, `half_narrow`). Both match the reference.
#[test]
fn f16_gradients_are_staged_only_under_8_columns() {
    let Some(ctx) = common::own_gpu() else { return };
    for (rows, classes) in [(7, 9), (5, 1001), (6, 3)] {
        let mut rng = Rng::new(160 + classes as u64);
        let x = to_f16(&rng.vec_normal(rows * classes, 2.0));
        let xf = widen(&x);
        let t: Vec<i64> = (0..rows).map(|_| rng.below(classes) as i64).collect();
        let opts = CrossEntropyOptions::default();
        let (out, plan) = ctx.record_plan(|| {
            wgpu_loss::block_on(ctx.cross_entropy(
                &x,
                &t,
                classes,
                &opts,
                wgpu_loss::Request::LossAndGrad,
            ))
        });
        let out = out.unwrap();
        let want = reference::cross_entropy(&xf, &t, classes, &opts).unwrap();
        let tag = format!("f16 [{rows}, {classes}]");
        assert_within(
            &format!("{tag} grad"),
            &out.grad.unwrap(),
            &want.grad,
            F16_TOLERANCE,
        );
        common::assert_gradient_staged_only_under_8_columns(&tag, classes, &plan);
    }
}
