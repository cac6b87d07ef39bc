//! bf16 logits and gradients through GPU views: bf16 storage on every
//! adapter, f32 arithmetic, checked against the f64 reference on the same
//! bf16-rounded inputs. Rows of whole vec4s run the packed kernels; other
//! layouts (odd C) run the f32 kernels between `half_widen` and `half_narrow`.

mod common;

use common::{
    assert_close, assert_within, gpu, gpu_with_binding_cap, gpu_with_tuning, read_bytes, Arena, Rng,
};
use half::bf16;
use wgpu_loss::reference;
use wgpu_loss::{
    CrossEntropyOptions, CrossEntropyViews, DType, Error, FocalOptions, FocalViews, GpuContext,
    GpuTensor, GradOutput, ProbTargetViews, Reduction, RowTuning, SoftmaxOp, BF16_TOLERANCE,
};

/// A quiet NaN: an output element the kernels never wrote fails every comparison.
const BF16_POISON: bf16 = bf16::from_bits(0x7FC1);

fn to_bf16(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

fn widen(x: &[bf16]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}

fn read_bf16_bits(ctx: &GpuContext, a: &Arena, offset: u64, elems: usize) -> Vec<bf16> {
    let bytes = read_bytes(ctx, &a.buffer, offset, elems as u64 * 2);
    bytemuck::cast_slice::<u8, u16>(&bytes[..elems * 2])
        .iter()
        .map(|&b| bf16::from_bits(b))
        .collect()
}

fn read_bf16(ctx: &GpuContext, a: &Arena, offset: u64, elems: usize) -> Vec<f32> {
    widen(&read_bf16_bits(ctx, a, offset, elems))
}

/// Room for a bf16 output and one element past it, all poison: the element
/// past the end must survive (an odd-length view ends mid-word).
fn reserve_bf16(ctx: &GpuContext, a: &mut Arena, elems: usize) -> u64 {
    a.put(ctx, &vec![BF16_POISON; elems + 1])
}

fn assert_guard_kept(ctx: &GpuContext, a: &Arena, offset: u64, elems: usize, what: &str) {
    let past = read_bf16_bits(ctx, a, offset, elems + 1)[elems];
    assert_eq!(
        past.to_bits(),
        BF16_POISON.to_bits(),
        "{what}: the bf16 element past the view (index {elems}) was overwritten"
    );
}

/// Shapes: whole vec4s (packed kernels) and odd or short rows (staged).
const SHAPES: [(usize, usize); 5] = [(13, 1000), (9, 257), (4, 1), (3, 4), (5, 3)];

fn softmax_family_in_bf16_on(ctx: &GpuContext, shapes: &[(usize, usize)], seed: u64) {
    for (i, &(rows, cols)) in shapes.iter().enumerate() {
        let mut rng = Rng::new(seed + i as u64);
        let x = to_bf16(&rng.vec_normal(rows * cols, 3.0));
        let dy = to_bf16(&rng.vec_normal(rows * cols, 1.0));
        let (xf, dyf) = (widen(&x), widen(&dy));
        let n = rows * cols;
        let mut a = Arena::new(ctx, (n * 16 + rows * 8) as u64);
        let (xo, dyo) = (a.put(ctx, &x), a.put(ctx, &dy));
        let (yo, lyo, g1o, g2o, g3o) = (
            reserve_bf16(ctx, &mut a, n),
            reserve_bf16(ctx, &mut a, n),
            reserve_bf16(ctx, &mut a, n),
            reserve_bf16(ctx, &mut a, n),
            reserve_bf16(ctx, &mut a, n),
        );
        let lseo = a.reserve(rows);
        let go = a.put(ctx, &rng.vec_normal(rows, 1.0));
        let m = |o| GpuTensor::bf16_matrix(&a.buffer, o, rows, cols);
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
        let y = read_bf16(ctx, &a, yo, n);
        assert_within(
            &format!("bf16 softmax {tag}"),
            &y,
            &reference::softmax(&xf, rows, cols).unwrap(),
            BF16_TOLERANCE,
        );
        let ly = read_bf16(ctx, &a, lyo, n);
        assert_within(
            &format!("bf16 log_softmax {tag}"),
            &ly,
            &reference::log_softmax(&xf, rows, cols).unwrap(),
            BF16_TOLERANCE,
        );
        // logsumexp of bf16 inputs is an f32 output: the f32 tolerance applies.
        let lse = common::read(ctx, &a.buffer, lseo, rows);
        assert_close(
            &format!("bf16-input logsumexp {tag}"),
            &lse,
            &reference::logsumexp(&xf, rows, cols).unwrap(),
        );

        let g = common::read(ctx, &a.buffer, go, rows);
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        ctx.encode_softmax_backward(&mut enc, &m(yo), &m(dyo), &m(g1o))
            .unwrap();
        ctx.encode_log_softmax_backward(&mut enc, &m(lyo), &m(dyo), &m(g2o))
            .unwrap();
        ctx.encode_logsumexp_backward(
            &mut enc,
            &m(xo),
            &GpuTensor::f32_vector(&a.buffer, lseo, rows),
            &GpuTensor::f32_vector(&a.buffer, go, rows),
            &m(g3o),
        )
        .unwrap();
        ctx.queue().submit([enc.finish()]);
        let g1 = read_bf16(ctx, &a, g1o, n);
        assert_within(
            &format!("bf16 softmax backward {tag}"),
            &g1,
            &reference::softmax_backward(&y, &dyf, rows, cols).unwrap(),
            BF16_TOLERANCE,
        );
        let g2 = read_bf16(ctx, &a, g2o, n);
        assert_within(
            &format!("bf16 log_softmax backward {tag}"),
            &g2,
            &reference::log_softmax_backward(&ly, &dyf, rows, cols).unwrap(),
            BF16_TOLERANCE,
        );
        let g3 = read_bf16(ctx, &a, g3o, n);
        assert_within(
            &format!("bf16 logsumexp backward {tag}"),
            &g3,
            &reference::logsumexp_backward(&xf, &lse, &g, rows, cols).unwrap(),
            BF16_TOLERANCE,
        );
        for (o, what) in [
            (yo, "softmax"),
            (lyo, "log_softmax"),
            (g1o, "softmax backward"),
            (g2o, "log_softmax backward"),
            (g3o, "logsumexp backward"),
        ] {
            assert_guard_kept(ctx, &a, o, n, &format!("bf16 {what} {tag}"));
        }
    }
}

#[test]
fn softmax_family_in_bf16() {
    let Some(ctx) = gpu() else { return };
    softmax_family_in_bf16_on(ctx, &SHAPES, 210);
}

/// Staged rows across binding windows: a window of an odd C starts mid-word,
/// so the widen and narrow kernels meet a half that belongs to the window before.
#[test]
fn staged_bf16_rows_across_binding_windows() {
    let Some(ctx) = gpu_with_binding_cap(64 * 1024) else {
        return;
    };
    softmax_family_in_bf16_on(&ctx, &[(171, 257), (40, 1001)], 230);
}

#[test]
fn cross_entropy_with_bf16_logits_and_gradient() {
    let Some(ctx) = gpu() else { return };
    cross_entropy_in_bf16_on(ctx, &[(21, 512), (7, 1001), (6, 3)], 240);
}

/// The GPU table, forced: rows held in registers (read once) and rows split
/// into chunks with a partial pass, packed and staged.
#[test]
fn held_and_split_bf16_rows() {
    let Some(ctx) = gpu_with_tuning(RowTuning::default()) else {
        return;
    };
    softmax_family_in_bf16_on(&ctx, &[(5, 2048), (3, 2047)], 250);
    cross_entropy_in_bf16_on(&ctx, &[(5, 2048), (3, 2047)], 252);
    // Rows of up to 65536 16-bit columns are held too (16 packed vectors on
    // each of 1024 lanes), whole and edged: read once.
    // 65535 columns: the second row spans 16385 vectors, one past the
    // registers, read again (`HELD_SLOTS`).
    let long = [(2, 65_536), (2, 50_257), (2, 65_535)];
    for (rows, cols) in long {
        let plan = ctx.describe_row_plan_of(rows, cols, DType::BF16);
        assert!(plan.contains("held in registers"), "{rows}x{cols}: {plan}");
    }
    softmax_family_in_bf16_on(&ctx, &long, 257);
    cross_entropy_in_bf16_on(&ctx, &long, 258);
    probs_and_focal_in_bf16_on(&ctx, &long, 259);
    let Some(ctx) = gpu_with_tuning(common::splitting_tuning()) else {
        return;
    };
    for (rows, cols) in [(3, 8192), (2, 8191)] {
        let plan = ctx.describe_row_plan(rows, cols);
        assert!(plan.contains("rows split"), "{rows}x{cols}: {plan}");
    }
    softmax_family_in_bf16_on(&ctx, &[(3, 8192), (2, 8191)], 254);
    cross_entropy_in_bf16_on(&ctx, &[(3, 8192), (2, 8191)], 256);
}

fn cross_entropy_in_bf16_on(ctx: &GpuContext, shapes: &[(usize, usize)], seed: u64) {
    for (i, &(rows, classes)) in shapes.iter().enumerate() {
        let mut rng = Rng::new(seed + i as u64);
        let x = to_bf16(&rng.vec_normal(rows * classes, 3.0));
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
        for (in_place, reduction, softcap) in [
            (false, Reduction::Mean, None),
            (true, Reduction::Sum, None),
            (false, Reduction::None, Some(5.0)),
            (true, Reduction::Mean, Some(5.0)),
        ] {
            let n = rows * classes;
            let mut a = Arena::new(ctx, (n * 8 + rows * 16) as u64);
            let (xo, to) = (a.put(ctx, &x), a.put(ctx, &t));
            let go = if in_place {
                xo
            } else {
                reserve_bf16(ctx, &mut a, n)
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
                softcap,
                reduction,
                ..Default::default()
            };
            let views = CrossEntropyViews {
                logits: GpuTensor::bf16_matrix(&a.buffer, xo, rows, classes),
                targets: GpuTensor::i32_vector(&a.buffer, to, rows),
                loss: GpuTensor::f32_vector(&a.buffer, lo, loss_len),
                grad: if in_place {
                    GradOutput::InPlace
                } else {
                    GradOutput::Into(GpuTensor::bf16_matrix(&a.buffer, go, rows, classes))
                },
                lse: None,
            };
            let mut enc = ctx.device().create_command_encoder(&Default::default());
            ctx.encode_cross_entropy(&mut enc, &views, &opts.with_weight(None))
                .unwrap();
            ctx.queue().submit([enc.finish()]);
            let t64: Vec<i64> = t.iter().map(|&v| i64::from(v)).collect();
            let want = reference::cross_entropy(&xf, &t64, classes, &opts).unwrap();
            let tag = format!(
                "bf16 cross-entropy [{rows}, {classes}] in_place={in_place} {reduction:?} softcap={softcap:?}"
            );
            // The loss is f32, computed from the bf16 logits: the f32 tolerance applies.
            let loss = common::read(ctx, &a.buffer, lo, loss_len);
            assert_close(&format!("{tag} loss"), &loss[..want.loss.len()], &want.loss);
            let g = read_bf16(ctx, &a, go, n);
            assert_within(&format!("{tag} grad"), &g, &want.grad, BF16_TOLERANCE);
            if !in_place {
                assert_guard_kept(ctx, &a, go, n, &tag);
            }
        }
    }
}

#[test]
fn probability_targets_and_focal_loss_with_bf16_logits() {
    let Some(ctx) = gpu() else { return };
    probs_and_focal_in_bf16_on(ctx, &[(11, 256), (5, 77)], 260);
}

fn probs_and_focal_in_bf16_on(ctx: &GpuContext, shapes: &[(usize, usize)], seed: u64) {
    for (i, &(rows, classes)) in shapes.iter().enumerate() {
        let mut rng = Rng::new(seed + i as u64);
        let n = rows * classes;
        let x = to_bf16(&rng.vec_normal(n, 2.0));
        let xf = widen(&x);
        let q = rng.prob_rows(rows, classes);
        let t: Vec<i32> = (0..rows).map(|_| rng.below(classes) as i32).collect();
        let mut a = Arena::new(ctx, (n * 12 + rows * 16) as u64);
        let (xo, qo, to) = (a.put(ctx, &x), a.put(ctx, &q), a.put(ctx, &t));
        let (gpo, gfo) = (reserve_bf16(ctx, &mut a, n), reserve_bf16(ctx, &mut a, n));
        let (lpo, lfo) = (a.reserve(rows), a.reserve(rows));
        let logits = GpuTensor::bf16_matrix(&a.buffer, xo, rows, classes);
        let ce = CrossEntropyOptions {
            label_smoothing: 0.05,
            reduction: Reduction::None,
            ..Default::default()
        };
        let focal = FocalOptions::<GpuTensor> {
            gamma: 2.0,
            reduction: Reduction::None,
            ..Default::default()
        };
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        ctx.encode_cross_entropy_probs(
            &mut enc,
            &ProbTargetViews {
                logits,
                targets: GpuTensor::f32_matrix(&a.buffer, qo, rows, classes),
                loss: GpuTensor::f32_vector(&a.buffer, lpo, rows),
                grad: Some(GpuTensor::bf16_matrix(&a.buffer, gpo, rows, classes)),
                lse: None,
            },
            &ce.with_weight(None),
        )
        .unwrap();
        ctx.encode_focal_loss(
            &mut enc,
            &FocalViews {
                logits,
                targets: GpuTensor::i32_vector(&a.buffer, to, rows),
                loss: GpuTensor::f32_vector(&a.buffer, lfo, rows),
                grad: Some(GpuTensor::bf16_matrix(&a.buffer, gfo, rows, classes)),
                lse: None,
            },
            &focal,
        )
        .unwrap();
        ctx.queue().submit([enc.finish()]);
        let tag = format!("bf16 [{rows}, {classes}]");
        let want = reference::cross_entropy_probs(&xf, &q, classes, &ce).unwrap();
        assert_close(
            &format!("{tag} probability-target loss"),
            &common::read(ctx, &a.buffer, lpo, rows),
            &want.loss,
        );
        assert_within(
            &format!("{tag} probability-target grad"),
            &read_bf16(ctx, &a, gpo, n),
            &want.grad,
            BF16_TOLERANCE,
        );
        let t64: Vec<i64> = t.iter().map(|&v| i64::from(v)).collect();
        let want = reference::focal_loss(
            &xf,
            &t64,
            classes,
            &FocalOptions {
                alpha: None,
                gamma: focal.gamma,
                ignore_index: focal.ignore_index,
                reduction: focal.reduction,
                grad_scale: focal.grad_scale,
            },
        )
        .unwrap();
        assert_close(
            &format!("{tag} focal loss"),
            &common::read(ctx, &a.buffer, lfo, rows),
            &want.loss,
        );
        assert_within(
            &format!("{tag} focal grad"),
            &read_bf16(ctx, &a, gfo, n),
            &want.grad,
            BF16_TOLERANCE,
        );
    }
}

/// Stores round to nearest even: nearly every element equals the f64
/// reference rounded to bf16 (truncation would match about half of them),
/// and none is more than one bf16 step away. Both the packed kernels
/// (C = 1024) and the staged ones (C = 1023) store.
#[test]
fn bf16_stores_round_to_nearest_even() {
    let Some(ctx) = gpu() else { return };
    for cols in [1024, 1023] {
        let rows = 16;
        let n = rows * cols;
        let mut rng = Rng::new(280 + cols as u64);
        let x = to_bf16(&rng.vec_normal(n, 2.0));
        let mut a = Arena::new(ctx, (n * 8) as u64);
        let xo = a.put(ctx, &x);
        let yo = reserve_bf16(ctx, &mut a, n);
        let m = |o| GpuTensor::bf16_matrix(&a.buffer, o, rows, cols);
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        ctx.encode_softmax(&mut enc, SoftmaxOp::LogSoftmax, &m(xo), &m(yo))
            .unwrap();
        ctx.queue().submit([enc.finish()]);
        let got = read_bf16_bits(ctx, &a, yo, n);
        let want = reference::log_softmax(&widen(&x), rows, cols).unwrap();
        let mut exact = 0;
        for (i, (g, &w)) in got.iter().zip(&want).enumerate() {
            let nearest = bf16::from_f64(w);
            let steps = (i32::from(g.to_bits() as i16) - i32::from(nearest.to_bits() as i16)).abs();
            assert!(
                steps <= 1,
                "C={cols} index {i}: actual {g}, expected {w:e} (nearest bf16 {nearest}), {steps} steps apart"
            );
            exact += usize::from(steps == 0);
        }
        assert!(
            exact * 100 >= n * 97,
            "C={cols}: only {exact} of {n} elements are the nearest bf16 to the reference"
        );
    }
}

#[test]
fn bf16_is_refused_where_no_kernel_takes_it() {
    let Some(ctx) = gpu() else { return };
    let mut a = Arena::new(ctx, 4096);
    let xo = a.put(ctx, &to_bf16(&[0.5; 32]));
    let to = a.put(ctx, &[0.5f32; 32]);
    let lo = a.reserve(2);
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    let views = wgpu_loss::BinaryViews {
        input: GpuTensor::bf16_matrix(&a.buffer, xo, 4, 8),
        targets: GpuTensor::f32_matrix(&a.buffer, to, 4, 8),
        loss: GpuTensor::f32_vector(&a.buffer, lo, 2),
        grad: None,
    };
    match ctx.encode_binary_cross_entropy_with_logits(&mut enc, &views, &Default::default()) {
        Err(e @ Error::InvalidView { .. }) => assert!(e.to_string().contains("BF16"), "{e}"),
        other => panic!("expected InvalidView naming BF16, got {other:?}"),
    }
}

/// The host API takes `half::bf16` slices: the GPU stores and writes bf16,
/// and matrix results come back widened to f32.
#[test]
fn host_api_takes_bf16_slices() {
    let Some(ctx) = gpu() else { return };
    for (i, (rows, cols)) in [(6, 64), (5, 33), (9, 8), (9, 7)].into_iter().enumerate() {
        let mut rng = Rng::new(300 + i as u64);
        let n = rows * cols;
        let x = to_bf16(&rng.vec_normal(n, 2.0));
        let dy = to_bf16(&rng.vec_normal(n, 1.0));
        let (xf, dyf) = (widen(&x), widen(&dy));
        let tag = format!("host bf16 [{rows}, {cols}]");
        let y = wgpu_loss::block_on(ctx.softmax(&x, rows, cols)).unwrap();
        assert_within(
            &format!("{tag} softmax"),
            &y,
            &reference::softmax(&xf, rows, cols).unwrap(),
            BF16_TOLERANCE,
        );
        let lse = wgpu_loss::block_on(ctx.logsumexp(&x, rows, cols)).unwrap();
        assert_close(
            &format!("{tag} logsumexp"),
            &lse,
            &reference::logsumexp(&xf, rows, cols).unwrap(),
        );
        let y16 = to_bf16(&y);
        let g = wgpu_loss::block_on(ctx.softmax_backward(&y16, &dy, rows, cols)).unwrap();
        assert_within(
            &format!("{tag} softmax backward"),
            &g,
            &reference::softmax_backward(&widen(&y16), &dyf, rows, cols).unwrap(),
            BF16_TOLERANCE,
        );
        let t: Vec<i64> = (0..rows).map(|_| rng.below(cols) as i64).collect();
        let opts = CrossEntropyOptions {
            label_smoothing: 0.1,
            ..Default::default()
        };
        for request in [
            wgpu_loss::Request::LossAndGrad,
            wgpu_loss::Request::LossAndGradInPlace,
        ] {
            let out = wgpu_loss::block_on(ctx.cross_entropy(&x, &t, cols, &opts, request)).unwrap();
            let want = reference::cross_entropy(&xf, &t, cols, &opts).unwrap();
            assert_close(&format!("{tag} {request:?} loss"), &out.loss, &want.loss);
            assert_within(
                &format!("{tag} {request:?} grad"),
                &out.grad.unwrap(),
                &want.grad,
                BF16_TOLERANCE,
            );
        }
        let focal = FocalOptions::default();
        let out = wgpu_loss::block_on(ctx.focal_loss(
            &x,
            &t,
            cols,
            &focal,
            wgpu_loss::Request::LossAndGrad,
        ))
        .unwrap();
        let want = reference::focal_loss(&xf, &t, cols, &focal).unwrap();
        assert_close(&format!("{tag} focal loss"), &out.loss, &want.loss);
        assert_within(
            &format!("{tag} focal grad"),
            &out.grad.unwrap(),
            &want.grad,
            BF16_TOLERANCE,
        );
    }
}

/// bf16 rows that are not whole vec4s run in place, with no f32 copy (as
/// the plan shows: no `half_widen`): kernels that store no matrix (losses
/// alone, logsumexp) at any C; kernels that store a gradient where rows
/// are edged (C >= 8: whole packed words stored, the words rows share
/// merged by `ce_edges`), staged through f32 below that. (Windows that
/// start mid-word: logsumexp in `staged_bf16_rows_across_binding_windows`.)
#[test]
fn bf16_rows_of_an_odd_c_are_read_in_place_by_loss_only_kernels() {
    let Some(ctx) = gpu_with_binding_cap(16 * 1024) else {
        return;
    };
    for (i, (rows, classes)) in [(9, 257), (6, 3), (7, 1001), (20, 13)]
        .into_iter()
        .enumerate()
    {
        let mut rng = Rng::new(320 + i as u64);
        let n = rows * classes;
        let x = to_bf16(&rng.vec_normal(n, 2.0));
        let xf = widen(&x);
        let t: Vec<i64> = (0..rows)
            .map(|r| {
                if r == 1 {
                    -100
                } else {
                    rng.below(classes) as i64
                }
            })
            .collect();
        let q = rng.prob_rows(rows, classes);
        let tag = format!("bf16 loss only [{rows}, {classes}]");
        let ce = CrossEntropyOptions {
            label_smoothing: 0.1,
            z_loss: 1e-4,
            reduction: Reduction::None,
            ..Default::default()
        };
        let (out, plan) = ctx.record_plan(|| {
            wgpu_loss::block_on(ctx.cross_entropy(&x, &t, classes, &ce, wgpu_loss::Request::Loss))
        });
        let want = reference::cross_entropy(&xf, &t, classes, &ce).unwrap();
        assert_close(
            &format!("{tag} cross-entropy"),
            &out.unwrap().loss,
            &want.loss,
        );
        assert!(
            !plan.iter().any(|d| d.kernel == "half_widen"),
            "{tag}: the loss alone staged the logits: {plan:?}"
        );
        let focal = FocalOptions {
            reduction: Reduction::None,
            ..Default::default()
        };
        let out =
            wgpu_loss::block_on(ctx.focal_loss(&x, &t, classes, &focal, wgpu_loss::Request::Loss));
        let want = reference::focal_loss(&xf, &t, classes, &focal).unwrap();
        assert_close(&format!("{tag} focal"), &out.unwrap().loss, &want.loss);
        let soft = CrossEntropyOptions {
            reduction: Reduction::None,
            ..Default::default()
        };
        let out = wgpu_loss::block_on(ctx.cross_entropy_probs(
            &x,
            &q,
            classes,
            &soft,
            wgpu_loss::Request::Loss,
        ));
        let want = reference::cross_entropy_probs(&xf, &q, classes, &soft).unwrap();
        assert_close(
            &format!("{tag} probability targets"),
            &out.unwrap().loss,
            &want.loss,
        );
        let lse = wgpu_loss::block_on(ctx.logsumexp(&x, rows, classes)).unwrap();
        assert_close(
            &format!("{tag} logsumexp"),
            &lse,
            &reference::logsumexp(&xf, rows, classes).unwrap(),
        );
        // With the gradient, the kernel stores bf16: in place where edged.
        let (out, plan) = ctx.record_plan(|| {
            wgpu_loss::block_on(ctx.cross_entropy(
                &x,
                &t,
                classes,
                &ce,
                wgpu_loss::Request::LossAndGrad,
            ))
        });
        let out = out.unwrap();
        let want = reference::cross_entropy(&xf, &t, classes, &ce).unwrap();
        assert_within(
            &format!("{tag} grad"),
            &out.grad.unwrap(),
            &want.grad,
            BF16_TOLERANCE,
        );
        common::assert_gradient_staged_only_under_8_columns(&tag, classes, &plan);
    }
}
