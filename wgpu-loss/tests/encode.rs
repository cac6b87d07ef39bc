//! The encode API: views of caller buffers, recorded into the caller's
//! encoder. Results must equal the host API's bitwise; bad views must be
//! errors that name the view.

mod common;

use common::{assert_close, gpu, read, Arena, Rng, USAGE};
use wgpu_loss::{
    BinaryLossOptions, BinaryViews, CrossEntropyOptions, CrossEntropyViews, Error, FocalOptions,
    FocalViews, GpuContext, GpuTensor, GradOutput, ProbTargetViews, Reduction, SigmoidFocalOptions,
    SoftmaxOp,
};

fn submit(ctx: &GpuContext, enc: wgpu::CommandEncoder) {
    ctx.queue().submit([enc.finish()]);
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn softmax_family_encode_equals_host_bitwise() {
    let Some(ctx) = gpu() else { return };
    let (rows, cols) = (37, 1001);
    let mut rng = Rng::new(81);
    let x = rng.vec_normal(rows * cols, 3.0);
    let dy = rng.vec_normal(rows * cols, 1.0);
    let dl = rng.vec_normal(rows, 1.0);
    let mut a = Arena::new(ctx, (rows * cols * 4 * 8 + rows * 16) as u64);
    let xo = a.put(ctx, &x);
    let dyo = a.put(ctx, &dy);
    let dlo = a.put(ctx, &dl);
    let (yo, lyo, lseo, g1, g2, g3) = (
        a.reserve(rows * cols),
        a.reserve(rows * cols),
        a.reserve(rows),
        a.reserve(rows * cols),
        a.reserve(rows * cols),
        a.reserve(rows * cols),
    );
    let m = |o| GpuTensor::f32_matrix(&a.buffer, o, rows, cols);
    let v = |o| GpuTensor::f32_vector(&a.buffer, o, rows);
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    ctx.encode_softmax(&mut enc, SoftmaxOp::Softmax, &m(xo), &m(yo))
        .unwrap();
    ctx.encode_softmax(&mut enc, SoftmaxOp::LogSoftmax, &m(xo), &m(lyo))
        .unwrap();
    ctx.encode_softmax(&mut enc, SoftmaxOp::Logsumexp, &m(xo), &v(lseo))
        .unwrap();
    ctx.encode_softmax_backward(&mut enc, &m(yo), &m(dyo), &m(g1))
        .unwrap();
    ctx.encode_log_softmax_backward(&mut enc, &m(lyo), &m(dyo), &m(g2))
        .unwrap();
    ctx.encode_logsumexp_backward(&mut enc, &m(xo), &v(lseo), &v(dlo), &m(g3))
        .unwrap();
    submit(ctx, enc);
    let y = wgpu_loss::block_on(ctx.softmax(&x, rows, cols)).unwrap();
    let ly = wgpu_loss::block_on(ctx.log_softmax(&x, rows, cols)).unwrap();
    let lse = wgpu_loss::block_on(ctx.logsumexp(&x, rows, cols)).unwrap();
    assert_eq!(
        bits(&read(ctx, &a.buffer, yo, rows * cols)),
        bits(&y),
        "softmax"
    );
    assert_eq!(
        bits(&read(ctx, &a.buffer, lyo, rows * cols)),
        bits(&ly),
        "log_softmax"
    );
    assert_eq!(
        bits(&read(ctx, &a.buffer, lseo, rows)),
        bits(&lse),
        "logsumexp"
    );
    let host = wgpu_loss::block_on(ctx.softmax_backward(&y, &dy, rows, cols)).unwrap();
    assert_eq!(
        bits(&read(ctx, &a.buffer, g1, rows * cols)),
        bits(&host),
        "softmax backward"
    );
    let host = wgpu_loss::block_on(ctx.log_softmax_backward(&ly, &dy, rows, cols)).unwrap();
    assert_eq!(
        bits(&read(ctx, &a.buffer, g2, rows * cols)),
        bits(&host),
        "log_softmax backward"
    );
    let host = wgpu_loss::block_on(ctx.logsumexp_backward(&x, &lse, &dl, rows, cols)).unwrap();
    assert_eq!(
        bits(&read(ctx, &a.buffer, g3, rows * cols)),
        bits(&host),
        "logsumexp backward"
    );
}

#[test]
fn row_losses_encode_equal_host_bitwise() {
    let Some(ctx) = gpu() else { return };
    let (rows, classes) = (29, 515);
    let mut rng = Rng::new(82);
    let x = rng.vec_normal(rows * classes, 3.0);
    let t: Vec<i32> = (0..rows)
        .map(|r| {
            if r % 5 == 1 {
                -100
            } else {
                rng.below(classes) as i32
            }
        })
        .collect();
    let w: Vec<f32> = (0..classes).map(|_| rng.uniform(0.1, 2.0)).collect();
    let q: Vec<f32> = (0..rows * classes)
        .map(|_| rng.uniform(0.0, 0.01))
        .collect();
    let alpha: Vec<f32> = w.iter().map(|v| v / 2.0).collect();
    for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
        let loss_len = if reduction == Reduction::None {
            rows
        } else {
            2
        };
        let mut a = Arena::new(ctx, (rows * classes * 4 * 6) as u64);
        let (xo, to, wo, qo) = (
            a.put(ctx, &x),
            a.put(ctx, &t),
            a.put(ctx, &w),
            a.put(ctx, &q),
        );
        let ao = a.put(ctx, &alpha);
        let (lo, go, so) = (a.reserve(rows), a.reserve(rows * classes), a.reserve(rows));
        let (lo2, go2, lo3, go3) = (
            a.reserve(rows),
            a.reserve(rows * classes),
            a.reserve(rows),
            a.reserve(rows * classes),
        );
        let logits = GpuTensor::f32_matrix(&a.buffer, xo, rows, classes);
        let targets = GpuTensor::i32_vector(&a.buffer, to, rows);
        let views = CrossEntropyViews {
            logits,
            targets,
            loss: GpuTensor::f32_vector(&a.buffer, lo, loss_len),
            grad: GradOutput::Into(GpuTensor::f32_matrix(&a.buffer, go, rows, classes)),
            lse: Some(GpuTensor::f32_vector(&a.buffer, so, rows)),
        };
        let weight_view = GpuTensor::f32_vector(&a.buffer, wo, classes);
        let ce = CrossEntropyOptions {
            label_smoothing: 0.1,
            z_loss: 1e-3,
            softcap: Some(20.0),
            reduction,
            ..Default::default()
        };
        let ce_views: CrossEntropyOptions<'_, GpuTensor<'_>> = ce.with_weight(Some(&weight_view));
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        ctx.encode_cross_entropy(&mut enc, &views, &ce_views)
            .unwrap();
        let probs = ProbTargetViews {
            logits,
            targets: GpuTensor::f32_matrix(&a.buffer, qo, rows, classes),
            loss: GpuTensor::f32_vector(&a.buffer, lo2, loss_len),
            grad: Some(GpuTensor::f32_matrix(&a.buffer, go2, rows, classes)),
            lse: None,
        };
        ctx.encode_cross_entropy_probs(&mut enc, &probs, &ce_views)
            .unwrap();
        let focal = FocalViews {
            logits,
            targets,
            loss: GpuTensor::f32_vector(&a.buffer, lo3, loss_len),
            grad: Some(GpuTensor::f32_matrix(&a.buffer, go3, rows, classes)),
            lse: None,
        };
        let alpha_view = GpuTensor::f32_vector(&a.buffer, ao, classes);
        let fo = FocalOptions {
            reduction,
            gamma: 1.5,
            ..Default::default()
        };
        let fo_views = FocalOptions {
            alpha: Some(&alpha_view),
            reduction,
            gamma: 1.5,
            ..Default::default()
        };
        ctx.encode_focal_loss(&mut enc, &focal, &fo_views).unwrap();
        submit(ctx, enc);

        let host = wgpu_loss::block_on(ctx.cross_entropy(
            &x,
            &t,
            classes,
            &CrossEntropyOptions {
                weight: Some(&w),
                ..ce
            },
            wgpu_loss::Request::LossAndGrad,
        ))
        .unwrap();
        let loss = read(ctx, &a.buffer, lo, loss_len);
        assert_eq!(
            bits(&loss[..host.loss.len()]),
            bits(&host.loss),
            "ce loss {reduction:?}"
        );
        if reduction != Reduction::None {
            assert_eq!(loss[1].to_bits(), host.z_loss[0].to_bits(), "ce z part");
        }
        assert_eq!(
            bits(&read(ctx, &a.buffer, go, rows * classes)),
            bits(host.grad.as_deref().unwrap()),
            "ce grad"
        );
        assert_eq!(
            bits(&read(ctx, &a.buffer, so, rows)),
            bits(&host.lse),
            "ce lse"
        );

        let host = wgpu_loss::block_on(ctx.cross_entropy_probs(
            &x,
            &q,
            classes,
            &CrossEntropyOptions {
                weight: Some(&w),
                ..ce
            },
            wgpu_loss::Request::LossAndGrad,
        ))
        .unwrap();
        assert_eq!(
            bits(&read(ctx, &a.buffer, lo2, loss_len)[..host.loss.len()]),
            bits(&host.loss),
            "probs loss"
        );
        assert_eq!(
            bits(&read(ctx, &a.buffer, go2, rows * classes)),
            bits(host.grad.as_deref().unwrap()),
            "probs grad"
        );

        let host = wgpu_loss::block_on(ctx.focal_loss(
            &x,
            &t,
            classes,
            &FocalOptions {
                alpha: Some(&alpha),
                ..fo
            },
            wgpu_loss::Request::LossAndGrad,
        ))
        .unwrap();
        assert_eq!(
            bits(&read(ctx, &a.buffer, lo3, loss_len)[..host.loss.len()]),
            bits(&host.loss),
            "focal loss"
        );
        assert_eq!(
            bits(&read(ctx, &a.buffer, go3, rows * classes)),
            bits(host.grad.as_deref().unwrap()),
            "focal grad"
        );
    }
}

#[test]
fn in_place_cross_entropy_through_views() {
    let Some(ctx) = gpu() else { return };
    let (rows, classes) = (9, 100);
    let mut rng = Rng::new(83);
    let x = rng.vec_normal(rows * classes, 2.0);
    let t: Vec<i32> = (0..rows).map(|_| rng.below(classes) as i32).collect();
    let mut a = Arena::new(ctx, (rows * classes * 8) as u64);
    let (xo, to, lo) = (a.put(ctx, &x), a.put(ctx, &t), a.reserve(2));
    let logits = GpuTensor::f32_matrix(&a.buffer, xo, rows, classes);
    let views = CrossEntropyViews {
        logits,
        targets: GpuTensor::i32_vector(&a.buffer, to, rows),
        loss: GpuTensor::f32_vector(&a.buffer, lo, 2),
        grad: GradOutput::InPlace,
        lse: None,
    };
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    ctx.encode_cross_entropy(&mut enc, &views, &Default::default())
        .unwrap();
    // Recorded, not submitted: the buffer still holds the logits.
    assert_eq!(
        bits(&read(ctx, &a.buffer, xo, rows * classes)),
        bits(&x),
        "encode must not submit"
    );
    submit(ctx, enc);
    let host = wgpu_loss::block_on(ctx.cross_entropy(
        &x,
        &t,
        classes,
        &Default::default(),
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap();
    assert_eq!(
        bits(&read(ctx, &a.buffer, xo, rows * classes)),
        bits(host.grad.as_deref().unwrap())
    );
    assert_eq!(
        read(ctx, &a.buffer, lo, 1)[0].to_bits(),
        host.loss[0].to_bits()
    );
}

#[test]
fn binary_losses_encode_equal_host_bitwise() {
    let Some(ctx) = gpu() else { return };
    let (rows, cols) = (40, 13);
    let n = rows * cols;
    let mut rng = Rng::new(84);
    let p: Vec<f32> = (0..n).map(|_| rng.uniform(0.0, 1.0)).collect();
    let x = rng.vec_normal(n, 5.0);
    let y: Vec<f32> = (0..n).map(|_| rng.uniform(0.0, 1.0)).collect();
    let wc: Vec<f32> = (0..cols).map(|_| rng.uniform(0.0, 2.0)).collect();
    let wf: Vec<f32> = (0..n).map(|_| rng.uniform(0.0, 2.0)).collect();
    let pw: Vec<f32> = (0..cols).map(|_| rng.uniform(0.5, 2.0)).collect();
    for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
        let loss_len = if reduction == Reduction::None { n } else { 2 };
        for full_weight in [false, true] {
            let mut a = Arena::new(ctx, (n * 4 * 12) as u64);
            let (po, xo, yo, wco, wfo, pwo) = (
                a.put(ctx, &p),
                a.put(ctx, &x),
                a.put(ctx, &y),
                a.put(ctx, &wc),
                a.put(ctx, &wf),
                a.put(ctx, &pw),
            );
            let outs: Vec<(u64, u64)> = (0..3)
                .map(|_| (a.reserve(loss_len), a.reserve(n)))
                .collect();
            let weight = if full_weight {
                GpuTensor::f32_matrix(&a.buffer, wfo, rows, cols)
            } else {
                GpuTensor::f32_vector(&a.buffer, wco, cols)
            };
            let shape = if reduction == Reduction::None {
                (rows, cols)
            } else {
                (2, 1)
            };
            let buf = &a.buffer;
            let base = |input, (lo, go): (u64, u64)| BinaryViews {
                input: GpuTensor::f32_matrix(buf, input, rows, cols),
                targets: GpuTensor::f32_matrix(buf, yo, rows, cols),
                loss: GpuTensor::f32_matrix(buf, lo, shape.0, shape.1),
                grad: Some(GpuTensor::f32_matrix(buf, go, rows, cols)),
            };
            let pos_weight = GpuTensor::f32_vector(&a.buffer, pwo, cols);
            let bo = BinaryLossOptions {
                weight: Some(&weight),
                reduction,
                grad_scale: 2.0,
                ..Default::default()
            };
            let bo_logits = BinaryLossOptions {
                pos_weight: Some(&pos_weight),
                ..bo
            };
            let so = SigmoidFocalOptions {
                reduction,
                ..Default::default()
            };
            let mut enc = ctx.device().create_command_encoder(&Default::default());
            ctx.encode_binary_cross_entropy(&mut enc, &base(po, outs[0]), &bo)
                .unwrap();
            ctx.encode_binary_cross_entropy_with_logits(&mut enc, &base(xo, outs[1]), &bo_logits)
                .unwrap();
            ctx.encode_sigmoid_focal_loss(&mut enc, &base(xo, outs[2]), &so)
                .unwrap();
            submit(ctx, enc);
            let w = if full_weight {
                wf.as_slice()
            } else {
                wc.as_slice()
            };
            let hosts = [
                wgpu_loss::block_on(ctx.binary_cross_entropy(
                    &p,
                    &y,
                    cols,
                    &bo.with_weights(Some(w), None),
                    wgpu_loss::Request::LossAndGrad,
                ))
                .unwrap(),
                wgpu_loss::block_on(ctx.binary_cross_entropy_with_logits(
                    &x,
                    &y,
                    cols,
                    &bo.with_weights(Some(w), Some(&pw)),
                    wgpu_loss::Request::LossAndGrad,
                ))
                .unwrap(),
                wgpu_loss::block_on(ctx.sigmoid_focal_loss(
                    &x,
                    &y,
                    cols,
                    &so,
                    wgpu_loss::Request::LossAndGrad,
                ))
                .unwrap(),
            ];
            for (i, host) in hosts.iter().enumerate() {
                let (lo, go) = outs[i];
                let tag = format!("binary loss {i} {reduction:?} full_weight={full_weight}");
                assert_eq!(
                    bits(&read(ctx, &a.buffer, lo, loss_len)[..host.loss.len()]),
                    bits(&host.loss),
                    "{tag}"
                );
                assert_eq!(
                    bits(&read(ctx, &a.buffer, go, n)),
                    bits(host.grad.as_deref().unwrap()),
                    "{tag} grad"
                );
            }
        }
    }
}

#[test]
fn out_of_range_gpu_targets_give_nan_not_garbage() {
    let Some(ctx) = gpu() else { return };
    let (rows, classes) = (4, 10);
    let x = vec![0.5f32; rows * classes];
    let t = [1i32, 10, -5, 3];
    let mut a = Arena::new(ctx, 4096);
    let (xo, to, lo, go) = (
        a.put(ctx, &x),
        a.put(ctx, &t),
        a.reserve(rows),
        a.reserve(rows * classes),
    );
    let views = CrossEntropyViews {
        logits: GpuTensor::f32_matrix(&a.buffer, xo, rows, classes),
        targets: GpuTensor::i32_vector(&a.buffer, to, rows),
        loss: GpuTensor::f32_vector(&a.buffer, lo, rows),
        grad: GradOutput::Into(GpuTensor::f32_matrix(&a.buffer, go, rows, classes)),
        lse: None,
    };
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    let opts = CrossEntropyOptions {
        reduction: Reduction::None,
        ..Default::default()
    };
    ctx.encode_cross_entropy(&mut enc, &views, &opts).unwrap();
    submit(ctx, enc);
    let loss = read(ctx, &a.buffer, lo, rows);
    assert!(
        (loss[0] - 10f32.ln()).abs() < 1e-5 && (loss[3] - 10f32.ln()).abs() < 1e-5,
        "{loss:?}"
    );
    assert!(
        loss[1].is_nan() && loss[2].is_nan(),
        "bad targets give NaN rows: {loss:?}"
    );
    let g = read(ctx, &a.buffer, go, rows * classes);
    assert!(g[classes..3 * classes].iter().all(|v| v.is_nan()));
    assert!(g[..classes]
        .iter()
        .chain(&g[3 * classes..])
        .all(|v| v.is_finite()));
}

#[test]
fn bad_views_are_errors_that_name_the_view() {
    let Some(ctx) = gpu() else { return };
    let align = u64::from(ctx.limits().min_storage_buffer_offset_alignment);
    let buf = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4096,
        usage: USAGE,
        mapped_at_creation: false,
    });
    let no_storage = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 4096,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let x = GpuTensor::f32_matrix(&buf, 0, 4, 8);
    let out = GpuTensor::f32_matrix(&buf, 2 * align.max(128), 4, 8);
    let check = |r: Result<(), Error>, name: &str, needle: &str| match r {
        Err(Error::InvalidView { name: n, problem }) => {
            assert_eq!(n, name, "{problem}");
            assert!(problem.contains(needle), "{name}: {problem}");
        }
        other => panic!("expected InvalidView for {name}, got {other:?}"),
    };
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    let misaligned = GpuTensor::f32_matrix(&buf, 4, 4, 8);
    check(
        ctx.encode_softmax(&mut enc, SoftmaxOp::Softmax, &misaligned, &out),
        "x",
        "min_storage_buffer_offset_alignment",
    );
    let past_end = GpuTensor::f32_matrix(&buf, 4096 - align, 4, 8);
    check(
        ctx.encode_softmax(&mut enc, SoftmaxOp::Softmax, &x, &past_end),
        "output",
        "past the end",
    );
    // 45 f16 values fill the 90 bytes of a buffer, but they bind as 23
    // words (92 bytes): past the end, and the message says so in words.
    let odd = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 90,
        usage: USAGE,
        mapped_at_creation: false,
    });
    let f16_out = GpuTensor::f16_matrix(&buf, 0, 5, 9);
    check(
        ctx.encode_softmax(
            &mut enc,
            SoftmaxOp::Softmax,
            &GpuTensor::f16_matrix(&odd, 0, 5, 9),
            &f16_out,
        ),
        "x",
        "bytes 0..92 (its 90 bytes rounded up to whole 4-byte words, as bound) run past the end of its 90-byte buffer",
    );
    let bad_usage = GpuTensor::f32_matrix(&no_storage, 0, 4, 8);
    check(
        ctx.encode_softmax(&mut enc, SoftmaxOp::Softmax, &bad_usage, &out),
        "x",
        "STORAGE",
    );
    let wrong_shape = GpuTensor::f32_matrix(&buf, 2 * align.max(128), 4, 7);
    check(
        ctx.encode_softmax(&mut enc, SoftmaxOp::Softmax, &x, &wrong_shape),
        "output",
        "shape",
    );
    let targets_f32 = GpuTensor::f32_vector(&buf, 2 * align.max(128), 4);
    let loss = GpuTensor::f32_vector(&buf, 4 * align.max(128), 2);
    let ce_views = |targets, grad| CrossEntropyViews {
        logits: x,
        targets,
        loss,
        grad,
        lse: None,
    };
    check(
        ctx.encode_cross_entropy(
            &mut enc,
            &ce_views(targets_f32, GradOutput::None),
            &Default::default(),
        ),
        "targets",
        "dtype",
    );
    let targets = GpuTensor::i32_vector(&buf, 2 * align.max(128), 4);
    let overlapping = GpuTensor::f32_matrix(&buf, align, 4, 8);
    check(
        ctx.encode_cross_entropy(
            &mut enc,
            &ce_views(targets, GradOutput::Into(overlapping)),
            &Default::default(),
        ),
        "grad",
        "overlaps",
    );
    // Class weights on the encode path are a view: one of the wrong length is named.
    let short_weight = GpuTensor::f32_vector(&buf, 6 * align.max(128), 7);
    check(
        ctx.encode_cross_entropy(
            &mut enc,
            &ce_views(targets, GradOutput::None),
            &CrossEntropyOptions {
                weight: Some(&short_weight),
                ..Default::default()
            },
        ),
        "weight",
        "one per class",
    );
    let e = ctx
        .encode_cross_entropy(
            &mut enc,
            &ce_views(targets, GradOutput::None),
            &CrossEntropyOptions {
                ignore_index: 1 << 40,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidOption {
                name: "ignore_index",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn review_regressions_are_errors_not_panics() {
    let Some(ctx) = gpu() else { return };
    let buf = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 1 << 16,
        usage: USAGE,
        mapped_at_creation: false,
    });
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    // A shape whose byte count overflows is an error naming the view.
    let huge = GpuTensor::f32_matrix(&buf, 0, 1 << 62, 4);
    let out = GpuTensor::f32_matrix(&buf, 0, 1 << 62, 4);
    assert!(matches!(
        ctx.encode_softmax(&mut enc, SoftmaxOp::Softmax, &huge, &out),
        Err(Error::InvalidView { name: "x", .. })
    ));
    // The sigmoid focal loss takes no weights: `BinaryViews` and
    // `SigmoidFocalOptions` have no field for one, so that is a type error now.
    // An in-place gradient is offered by index-target cross-entropy only:
    // probability targets refuse a gradient view that is the logits.
    let x = GpuTensor::f32_matrix(&buf, 0, 4, 8);
    let l2 = GpuTensor::f32_vector(&buf, 12288, 2);
    let q = GpuTensor::f32_matrix(&buf, 4096, 4, 8);
    let e = ctx
        .encode_cross_entropy_probs(
            &mut enc,
            &ProbTargetViews {
                logits: x,
                targets: q,
                loss: l2,
                grad: Some(x),
                lse: None,
            },
            &Default::default(),
        )
        .unwrap_err();
    assert!(matches!(e, Error::InvalidView { name: "grad", .. }), "{e}");
    // Probability targets refuse a non-negative ignore_index on the encode path too.
    let e = ctx
        .encode_cross_entropy_probs(
            &mut enc,
            &ProbTargetViews {
                logits: x,
                targets: q,
                loss: l2,
                grad: None,
                lse: None,
            },
            &CrossEntropyOptions {
                ignore_index: 0,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidOption {
                name: "ignore_index",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn per_row_views_past_the_binding_limit_are_errors() {
    let Some(ctx) = common::gpu_with_binding_cap(4096) else {
        return;
    };
    let buf = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 1 << 16,
        usage: USAGE,
        mapped_at_creation: false,
    });
    let (rows, cols) = (2000, 1);
    let x = GpuTensor::f32_matrix(&buf, 0, rows, cols);
    let lse = GpuTensor::f32_vector(&buf, 16384, rows);
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    let e = ctx
        .encode_softmax(&mut enc, SoftmaxOp::Logsumexp, &x, &lse)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::TooLarge {
                requested: 8000,
                ..
            }
        ),
        "{e}"
    );
}

/// An output that shares some bytes of an input races with it: the softmax
/// family and the binary losses refuse it, naming the view, as cross-entropy
/// did (issue 17). The same view for input and output is the in-place form,
/// and gives the right answer.
#[test]
fn partly_overlapping_outputs_are_refused_and_in_place_works() {
    let Some(ctx) = gpu() else { return };
    let (rows, cols) = (6, 64);
    let mut rng = Rng::new(1720);
    let x = rng.vec_normal(rows * cols, 2.0);
    let mut a = Arena::new(ctx, (rows * cols * 4 * 4) as u64);
    let xo = a.put(ctx, &x);
    let _spare = a.reserve(rows * cols);
    let align = u64::from(ctx.limits().min_storage_buffer_offset_alignment);
    let input = GpuTensor::f32_matrix(&a.buffer, xo, rows, cols);
    let shifted = GpuTensor::f32_matrix(&a.buffer, xo + align, rows, cols);
    let expect_overlap = |r: Result<(), Error>, name: &str| match r {
        Err(Error::InvalidView { name: n, problem }) => {
            assert_eq!(n, name, "{problem}");
            assert!(problem.contains("overlaps"), "{problem}");
        }
        other => panic!("expected InvalidView for {name}, got {other:?}"),
    };
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    expect_overlap(
        ctx.encode_softmax(&mut enc, SoftmaxOp::Softmax, &input, &shifted),
        "output",
    );
    expect_overlap(
        ctx.encode_softmax_backward(&mut enc, &input, &shifted, &input),
        "output",
    );
    let targets = GpuTensor::f32_matrix(&a.buffer, xo, rows, cols);
    let loss = GpuTensor::f32_vector(&a.buffer, xo + (rows * cols * 4) as u64 + align, 2);
    let binary = BinaryViews {
        input,
        targets,
        loss,
        grad: Some(shifted),
    };
    expect_overlap(
        ctx.encode_binary_cross_entropy_with_logits(&mut enc, &binary, &Default::default()),
        "grad",
    );
    // In place: softmax over the logits themselves.
    ctx.encode_softmax(&mut enc, SoftmaxOp::Softmax, &input, &input)
        .expect("identical views are the in-place form");
    submit(ctx, enc);
    let y = read(ctx, &a.buffer, xo, rows * cols);
    common::assert_close(
        "in-place softmax",
        &y,
        &wgpu_loss::reference::softmax(&x, rows, cols).expect("reference"),
    );
}

/// On the GPU table rows of up to 8192 columns are held in registers and
/// read once (issue 17, item 2): with every option now (softcap, smoothing,
/// z-loss, weights, an ignored row), into a gradient view of its own and in
/// place. Forced on lavapipe with the GPU table's tuning.
#[test]
fn held_rows_serve_every_option_in_both_gradient_modes() {
    if gpu().is_none() {
        return;
    }
    let table = wgpu_loss::RowTuning::default();
    let whole_rows = wgpu_loss::RowTuning {
        split_vectors: 0,
        ..table
    };
    let mut rng = Rng::new(8192);
    // Held on these tunings: each lane holds at most 8 of its row's vectors
    // (vec4, or scalar for 301), and no row is split; 32768 columns take
    // 1024 lanes.
    for (tuning, rows, classes) in [
        (table, 64, 1000),
        (table, 7, 301),
        (table, 1030, 2000),
        (table, 1100, 8192),
        (whole_rows, 3, 32_768),
        (whole_rows, 5, 20_000),
        // Rows of every phase, some spanning 8193 vectors: one past the
        // registers, read again (`HELD_SLOTS`).
        (table, 5, 32_767),
    ] {
        let Some(ctx) = &common::gpu_with_tuning(tuning) else {
            return;
        };
        let mut x = rng.vec_normal(rows * classes, 4.0);
        big_last_logits(&mut x, rows, classes);
        let t: Vec<i32> = (0..rows)
            .map(|i| {
                if i == 3 {
                    -100
                } else {
                    rng.below(classes) as i32
                }
            })
            .collect();
        let w: Vec<f32> = (0..classes).map(|_| rng.uniform(0.2, 2.0)).collect();
        let host_options = CrossEntropyOptions {
            weight: Some(&w[..]),
            label_smoothing: 0.1,
            z_loss: 1e-3,
            softcap: Some(6.0),
            ..Default::default()
        };
        let want = wgpu_loss::reference::cross_entropy(&x, &t, classes, &host_options).unwrap();
        let mut a = Arena::new(
            ctx,
            (rows * classes * 12 + classes * 4 + rows * 4) as u64 + 4096,
        );
        let (xo, to, wo, lo) = (a.put(ctx, &x), a.put(ctx, &t), a.put(ctx, &w), a.reserve(2));
        let go = a.reserve(rows * classes);
        let weight = GpuTensor::f32_vector(&a.buffer, wo, classes);
        let options = host_options.with_weight(Some(&weight));
        for in_place in [false, true] {
            let logits = GpuTensor::f32_matrix(&a.buffer, xo, rows, classes);
            let grad_view = GpuTensor::f32_matrix(&a.buffer, go, rows, classes);
            let views = CrossEntropyViews {
                logits,
                targets: GpuTensor::i32_vector(&a.buffer, to, rows),
                loss: GpuTensor::f32_vector(&a.buffer, lo, 2),
                grad: if in_place {
                    GradOutput::InPlace
                } else {
                    GradOutput::Into(grad_view)
                },
                lse: None,
            };
            let mut enc = ctx.device().create_command_encoder(&Default::default());
            ctx.encode_cross_entropy(&mut enc, &views, &options)
                .unwrap();
            submit(ctx, enc);
            let tag = format!("held {rows}x{classes} in place {in_place}");
            assert_close(
                &format!("{tag} loss"),
                &read(ctx, &a.buffer, lo, 1),
                &want.loss,
            );
            let at = if in_place { xo } else { go };
            assert_close(
                &format!("{tag} grad"),
                &read(ctx, &a.buffer, at, rows * classes),
                &want.grad,
            );
        }
    }
}

/// Uniform buffers are shared by content (issue 17, item 6, in part): a loop
/// of `encode_*` calls of one shape creates them on its first call only;
/// scratch is still made per call.
#[test]
fn repeated_encode_calls_create_no_new_buffers() {
    // A context of its own: the counters are the context's, and other tests
    // of this binary record on the shared one at the same time.
    let Some(ctx) = &common::own_gpu() else {
        return;
    };
    let (rows, classes) = (33, 1000);
    let mut rng = Rng::new(606);
    let x = rng.vec_normal(rows * classes, 2.0);
    let t: Vec<i32> = (0..rows).map(|_| rng.below(classes) as i32).collect();
    let mut a = Arena::new(ctx, (rows * classes * 8 + rows * 4) as u64 + 4096);
    let (xo, to, lo) = (a.put(ctx, &x), a.put(ctx, &t), a.reserve(2));
    let go = a.reserve(rows * classes);
    let views = CrossEntropyViews {
        logits: GpuTensor::f32_matrix(&a.buffer, xo, rows, classes),
        targets: GpuTensor::i32_vector(&a.buffer, to, rows),
        loss: GpuTensor::f32_vector(&a.buffer, lo, 2),
        grad: GradOutput::Into(GpuTensor::f32_matrix(&a.buffer, go, rows, classes)),
        lse: None,
    };
    let step = || {
        let before = ctx.encode_buffers_created();
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        ctx.encode_cross_entropy(&mut enc, &views, &Default::default())
            .unwrap();
        submit(ctx, enc);
        let after = ctx.encode_buffers_created();
        (
            after.uniforms - before.uniforms,
            after.scratch - before.scratch,
        )
    };
    let first = step();
    let (loss_1, grad_1) = (read(ctx, &a.buffer, lo, 1), read(ctx, &a.buffer, go, 8));
    for i in 0..3 {
        let (uniforms, scratch) = step();
        assert_eq!(
            uniforms,
            0,
            "call {}: new uniform buffers (first call: {first:?})",
            i + 2
        );
        assert_eq!(
            scratch,
            0,
            "call {}: new scratch buffers (first call: {first:?})",
            i + 2
        );
    }
    assert!(first.0 > 0, "the first call made its uniforms: {first:?}");
    // Shared uniforms and pooled scratch give the same results.
    assert_eq!(bits(&read(ctx, &a.buffer, lo, 1)), bits(&loss_1));
    assert_eq!(bits(&read(ctx, &a.buffer, go, 8)), bits(&grad_1));
}

/// Steady state for every path that makes scratch: `sum` (constant
/// scalars), split rows (partial records, on a splitting tuning), a binary
/// loss (partial sums), bf16 rows of an odd C edged (their shared vectors)
/// and, at C < 8, staged through f32. Two encoders
/// recorded before either is submitted, and submitted in reverse order, share
/// the pooled scratch and still give the results of one call alone.
#[test]
fn pooled_scratch_is_reused_across_encoders_in_any_submission_order() {
    let Some(ctx) = &common::gpu_with_tuning(common::splitting_tuning()) else {
        return;
    };
    let (rows, classes) = (5, 1001);
    let mut rng = Rng::new(607);
    let x = rng.vec_normal(rows * classes, 2.0);
    let x2 = rng.vec_normal(rows * classes, 2.0);
    let t: Vec<i32> = (0..rows).map(|_| rng.below(classes) as i32).collect();
    let xb: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let y01: Vec<f32> = (0..rows * classes).map(|_| rng.uniform(0.0, 1.0)).collect();
    let mut a = Arena::new(ctx, (rows * classes * 24 + rows * 8) as u64 + 8192);
    let (xo, x2o, to, bo, yo) = (
        a.put(ctx, &x),
        a.put(ctx, &x2),
        a.put(ctx, &t),
        a.put(ctx, &xb),
        a.put(ctx, &y01),
    );
    let (l1, l2, lb, lbf) = (a.reserve(2), a.reserve(2), a.reserve(2), a.reserve(2));
    let (go, gbo) = (a.reserve(rows * classes), a.reserve(rows * classes));
    // Rows of 5: short enough to stage.
    let x5: Vec<half::bf16> = (0..rows * 5)
        .map(|_| half::bf16::from_f32(rng.normal(2.0)))
        .collect();
    let t5: Vec<i32> = (0..rows).map(|_| rng.below(5) as i32).collect();
    let (b5o, t5o, g5o, l5o) = (
        a.put(ctx, &x5),
        a.put(ctx, &t5),
        a.reserve(rows * 5),
        a.reserve(2),
    );
    let sum = CrossEntropyOptions::<GpuTensor> {
        reduction: Reduction::Sum,
        ..Default::default()
    };
    let ce = |enc: &mut wgpu::CommandEncoder, xo: u64, lo: u64| {
        let views = CrossEntropyViews {
            logits: GpuTensor::f32_matrix(&a.buffer, xo, rows, classes),
            targets: GpuTensor::i32_vector(&a.buffer, to, rows),
            loss: GpuTensor::f32_vector(&a.buffer, lo, 2),
            grad: GradOutput::None,
            lse: None,
        };
        ctx.encode_cross_entropy(enc, &views, &sum).unwrap();
    };
    let others = |enc: &mut wgpu::CommandEncoder| {
        let bf16 = CrossEntropyViews {
            logits: GpuTensor::bf16_matrix(&a.buffer, bo, rows, classes),
            targets: GpuTensor::i32_vector(&a.buffer, to, rows),
            loss: GpuTensor::f32_vector(&a.buffer, lbf, 2),
            grad: GradOutput::Into(GpuTensor::bf16_matrix(&a.buffer, gbo, rows, classes)),
            lse: None,
        };
        ctx.encode_cross_entropy(enc, &bf16, &Default::default())
            .unwrap();
        let staged = CrossEntropyViews {
            logits: GpuTensor::bf16_matrix(&a.buffer, b5o, rows, 5),
            targets: GpuTensor::i32_vector(&a.buffer, t5o, rows),
            loss: GpuTensor::f32_vector(&a.buffer, l5o, 2),
            grad: GradOutput::Into(GpuTensor::bf16_matrix(&a.buffer, g5o, rows, 5)),
            lse: None,
        };
        ctx.encode_cross_entropy(enc, &staged, &Default::default())
            .unwrap();
        let binary = BinaryViews {
            input: GpuTensor::f32_matrix(&a.buffer, xo, rows, classes),
            targets: GpuTensor::f32_matrix(&a.buffer, yo, rows, classes),
            loss: GpuTensor::f32_vector(&a.buffer, lb, 2),
            grad: Some(GpuTensor::f32_matrix(&a.buffer, go, rows, classes)),
        };
        ctx.encode_binary_cross_entropy_with_logits(enc, &binary, &Default::default())
            .unwrap();
    };
    // Results of each call alone.
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    ce(&mut enc, xo, l1);
    others(&mut enc);
    submit(ctx, enc);
    // Every loss of the first encoder: cross-entropy, bf16 (edged and
    // staged), binary.
    let losses_1 = || {
        [
            bits(&read(ctx, &a.buffer, l1, 1)),
            bits(&read(ctx, &a.buffer, lbf, 1)),
            bits(&read(ctx, &a.buffer, l5o, 1)),
            bits(&read(ctx, &a.buffer, lb, 1)),
        ]
    };
    let alone_1 = losses_1();
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    ce(&mut enc, x2o, l2);
    submit(ctx, enc);
    let alone_2 = read(ctx, &a.buffer, l2, 1);
    let before = ctx.encode_buffers_created();
    for _ in 0..3 {
        let mut first = ctx.device().create_command_encoder(&Default::default());
        ce(&mut first, xo, l1);
        others(&mut first);
        let mut second = ctx.device().create_command_encoder(&Default::default());
        ce(&mut second, x2o, l2);
        ctx.queue().submit([second.finish()]);
        ctx.queue().submit([first.finish()]);
        ctx.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .unwrap();
        assert_eq!(losses_1(), alone_1);
        assert_eq!(bits(&read(ctx, &a.buffer, l2, 1)), bits(&alone_2));
    }
    let after = ctx.encode_buffers_created();
    // Bind groups are made per call (`GpuContext::prepare` avoids them).
    assert_eq!(
        (after.uniforms, after.scratch),
        (before.uniforms, before.scratch),
        "steady state created buffers"
    );
    assert!(ctx.describe_row_plan(rows, classes).contains("rows split"));
}

/// Rows of more than 32764 columns that are not whole vec4s: a large
/// logit in each row's last column, which some rows hold in the vector past
/// the registers (`HELD_SLOTS`), so that its max and its share of the sums
/// decide the results (a small one's share hides within the tolerance).
fn big_last_logits(x: &mut [f32], rows: usize, classes: usize) {
    if classes > 32_764 && !classes.is_multiple_of(4) {
        for r in 0..rows {
            x[r * classes + classes - 1] = 30.0;
        }
    }
}

/// A held row loss against the reference, and the bytes its row kernel
/// `kernel` reads in the plan: `expected(dispatches)`.
fn check_held(
    tag: &str,
    got: wgpu_loss::CrossEntropyOutput,
    want: &wgpu_loss::reference::CrossEntropyReference,
    plan: &[wgpu_loss::Dispatch],
    kernel: &str,
    expected: impl Fn(usize) -> u64,
) {
    assert_close(&format!("{tag} loss"), &got.loss, &want.loss);
    assert_close(
        &format!("{tag} grad"),
        &got.grad.expect("gradient"),
        &want.grad,
    );
    let dispatches: Vec<_> = plan.iter().filter(|d| d.kernel == kernel).collect();
    let read: u64 = dispatches.iter().map(|d| d.bytes_read).sum();
    let expected = expected(dispatches.len());
    assert!(
        !dispatches.is_empty() && read == expected,
        "{tag}: {kernel} reads {read} bytes, {expected} expected: {plan:?}"
    );
}

/// Multiclass focal loss holds its rows too (issue 17, item 2): read once
/// on the GPU table, with per-class alpha, an ignored row and a row holding
/// +inf (the fallback that puts NaN where the streaming path does). The
/// plan's bytes are the host's count; `kernel_tests` holds that count to
/// the shader's held path.
#[test]
fn held_rows_serve_focal_loss() {
    if gpu().is_none() {
        return;
    }
    let table = wgpu_loss::RowTuning::default();
    let whole_rows = wgpu_loss::RowTuning {
        split_vectors: 0,
        ..table
    };
    let mut rng = Rng::new(8193);
    for (tuning, rows, classes) in [
        (table, 64, 1000),
        (table, 7, 301),
        (table, 1100, 8192),
        (whole_rows, 3, 32_768),
        // Every row spans 8193 vectors, one past the registers (at 32767
        // only rows 1 and 2 would, which +inf and the ignored target make
        // special).
        (table, 5, 32_769),
    ] {
        let Some(ctx) = &common::gpu_with_tuning(tuning) else {
            return;
        };
        let mut x = rng.vec_normal(rows * classes, 4.0);
        big_last_logits(&mut x, rows, classes);
        x[classes + 5] = f32::INFINITY;
        let t: Vec<i64> = (0..rows)
            .map(|i| {
                if i == 2 {
                    -100
                } else {
                    rng.below(classes) as i64
                }
            })
            .collect();
        let alpha: Vec<f32> = (0..classes).map(|_| rng.uniform(0.2, 2.0)).collect();
        let options = wgpu_loss::FocalOptions {
            alpha: Some(&alpha[..]),
            gamma: 2.0,
            reduction: wgpu_loss::Reduction::None,
            ..Default::default()
        };
        let want = wgpu_loss::reference::focal_loss(&x, &t, classes, &options).unwrap();
        let (got, plan) = ctx.record_plan(|| {
            wgpu_loss::block_on(ctx.focal_loss(
                &x,
                &t,
                classes,
                &options,
                wgpu_loss::Request::LossAndGrad,
            ))
        });
        let tag = format!("held focal {rows}x{classes}");
        // The logits once, the targets, and alpha once per dispatch.
        let matrix = (rows * classes * 4) as u64;
        check_held(
            &tag,
            got.unwrap(),
            &want,
            &plan,
            "focal_loss_grad",
            |dispatches| matrix + rows as u64 * 4 + (dispatches * classes * 4) as u64,
        );
    }
}

/// Threads that record encode calls into encoders of their own, each
/// submitting when it likes, share the pooled scratch and still get the
/// bits of a single thread (split rows, `mean`: records, partials and the
/// denominator's scalars all pooled).
#[test]
fn threads_recording_encode_calls_share_pooled_scratch_safely() {
    let Some(ctx) = &common::gpu_with_tuning(common::splitting_tuning()) else {
        return;
    };
    let (rows, classes) = (6, 777);
    let run = |seed: u64, iterations: usize| -> Vec<Vec<u32>> {
        let mut rng = Rng::new(seed);
        let x = rng.vec_normal(rows * classes, 2.0);
        let t: Vec<i32> = (0..rows).map(|_| rng.below(classes) as i32).collect();
        let mut a = Arena::new(ctx, (rows * classes * 8 + rows * 4) as u64 + 4096);
        let (xo, to, lo) = (a.put(ctx, &x), a.put(ctx, &t), a.reserve(2));
        let go = a.reserve(rows * classes);
        let views = CrossEntropyViews {
            logits: GpuTensor::f32_matrix(&a.buffer, xo, rows, classes),
            targets: GpuTensor::i32_vector(&a.buffer, to, rows),
            loss: GpuTensor::f32_vector(&a.buffer, lo, 2),
            grad: GradOutput::Into(GpuTensor::f32_matrix(&a.buffer, go, rows, classes)),
            lse: None,
        };
        let options = CrossEntropyOptions::<GpuTensor> {
            label_smoothing: 0.1,
            ..Default::default()
        };
        (0..iterations)
            .map(|_| {
                let mut enc = ctx.device().create_command_encoder(&Default::default());
                ctx.encode_cross_entropy(&mut enc, &views, &options)
                    .unwrap();
                submit(ctx, enc);
                [
                    bits(&read(ctx, &a.buffer, lo, 2)),
                    bits(&read(ctx, &a.buffer, go, rows * classes)),
                ]
                .concat()
            })
            .collect()
    };
    let alone: Vec<Vec<u32>> = (0..4).map(|i| run(700 + i, 1).remove(0)).collect();
    std::thread::scope(|s| {
        for (i, want) in alone.iter().enumerate() {
            s.spawn(move || {
                for (k, got) in run(700 + i as u64, 40).iter().enumerate() {
                    assert!(
                        got == want,
                        "thread {i}, iteration {k}: bits differ from one thread alone"
                    );
                }
            });
        }
    });
}

/// Probability targets hold their logits too (issue 17, item 2): the logits
/// read once on the GPU table, the targets twice, every option on, an
/// infinite logit in one row.
#[test]
fn held_rows_serve_probability_targets() {
    if gpu().is_none() {
        return;
    }
    let table = wgpu_loss::RowTuning::default();
    let mut rng = Rng::new(8194);
    for (rows, classes) in [(64, 1000), (7, 301), (300, 8192), (5, 32_767)] {
        let Some(ctx) = &common::gpu_with_tuning(table) else {
            return;
        };
        let mut x = rng.vec_normal(rows * classes, 4.0);
        big_last_logits(&mut x, rows, classes);
        x[classes + 5] = f32::INFINITY;
        let probs: Vec<f32> = rng.prob_rows(rows, classes);
        let w: Vec<f32> = (0..classes).map(|_| rng.uniform(0.2, 2.0)).collect();
        let options = CrossEntropyOptions {
            weight: Some(&w[..]),
            label_smoothing: 0.1,
            z_loss: 1e-3,
            softcap: Some(6.0),
            reduction: Reduction::None,
            ..Default::default()
        };
        let want =
            wgpu_loss::reference::cross_entropy_probs(&x, &probs, classes, &options).unwrap();
        let (got, plan) = ctx.record_plan(|| {
            wgpu_loss::block_on(ctx.cross_entropy_probs(
                &x,
                &probs,
                classes,
                &options,
                wgpu_loss::Request::LossAndGrad,
            ))
        });
        let tag = format!("held probability targets {rows}x{classes}");
        // Logits once, targets twice, weights once per dispatch.
        let matrix = (rows * classes * 4) as u64;
        check_held(
            &tag,
            got.unwrap(),
            &want,
            &plan,
            "ce_soft_loss_grad",
            |dispatches| 3 * matrix + (dispatches * classes * 4) as u64,
        );
    }
}

/// Rows that are not whole vec4s run gathered (four scalar loads a vector,
/// the last vector's lanes past C masked, stores lane by lane). Forced into
/// small binding windows, so that a window starts mid-row of the buffer's
/// alignment, with every cross-entropy option, an infinite logit in a
/// row's last column, in place, and softmax with its backward pass: each
/// against the reference, and the element after the last row untouched.
#[test]
fn gathered_rows_in_windows_that_start_mid_vector() {
    let Some(shared) = gpu() else { return };
    // 64 usable bytes a window (16 floats) for the small C, after the
    // alignment slack and 16 bytes for an edged window's last vector; the
    // per-row arrays (16 bytes a row) are bound whole, so the binding also
    // caps the rows: at least 6 on any adapter.
    let small = u64::from(shared.limits().min_storage_buffer_offset_alignment) + 80;
    let mut rng = Rng::new(4343);
    for (cap, rows, classes) in [
        (small, 6, 3),
        (small, 6, 5),
        (small, 6, 7),
        (small, 6, 13),
        (16 * 1024, 37, 1),
        (16 * 1024, 7, 1001),
    ] {
        let Some(ctx) = &common::gpu_with_binding_cap(cap) else {
            return;
        };
        let n = rows * classes;
        let mut x = rng.vec_normal(n, 3.0);
        x[classes - 1] = f32::INFINITY;
        if rows > 2 {
            x[2 * classes - 1] = f32::NEG_INFINITY;
        }
        let dy = rng.vec_normal(n, 1.0);
        let t: Vec<i32> = (0..rows)
            .map(|i| {
                if i == 4 {
                    -100
                } else {
                    rng.below(classes) as i32
                }
            })
            .collect();
        let w: Vec<f32> = (0..classes).map(|_| rng.uniform(0.2, 2.0)).collect();
        let mut a = Arena::new(ctx, (n * 24 + rows * 8 + classes * 4) as u64 + 8192);
        let (xo, dyo, to, wo) = (
            a.put(ctx, &x),
            a.put(ctx, &dy),
            a.put(ctx, &t),
            a.put(ctx, &w),
        );
        // One element more than each output, to see that nothing writes past it.
        let (go, yo, dxo, lo) = (
            a.reserve(n + 1),
            a.reserve(n + 1),
            a.reserve(n + 1),
            a.reserve(2),
        );
        let weight = GpuTensor::f32_vector(&a.buffer, wo, classes);
        let host_options = CrossEntropyOptions {
            weight: Some(&w[..]),
            label_smoothing: 0.1,
            z_loss: 1e-3,
            softcap: Some(6.0),
            ..Default::default()
        };
        let want = wgpu_loss::reference::cross_entropy(&x, &t, classes, &host_options).unwrap();
        let m = |o| GpuTensor::f32_matrix(&a.buffer, o, rows, classes);
        let views = CrossEntropyViews {
            logits: m(xo),
            targets: GpuTensor::i32_vector(&a.buffer, to, rows),
            loss: GpuTensor::f32_vector(&a.buffer, lo, 2),
            grad: GradOutput::Into(m(go)),
            lse: None,
        };
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        let (result, plan) = ctx.record_plan(|| {
            ctx.encode_cross_entropy(&mut enc, &views, &host_options.with_weight(Some(&weight)))
        });
        result.unwrap();
        ctx.encode_softmax(&mut enc, SoftmaxOp::Softmax, &m(xo), &m(yo))
            .unwrap();
        submit(ctx, enc);
        let tag = format!("gathered {rows}x{classes}");
        // One row-kernel dispatch per binding window.
        let windows = plan.iter().filter(|d| d.kernel == "ce_loss_grad").count();
        assert!(
            windows > 1 || cap != small,
            "{tag}: one window; the test wants windows that start mid-row"
        );
        assert_close(
            &format!("{tag} loss"),
            &read(ctx, &a.buffer, lo, 1),
            &want.loss,
        );
        let g = read(ctx, &a.buffer, go, n + 1);
        assert_close(&format!("{tag} grad"), &g[..n], &want.grad);
        let y = read(ctx, &a.buffer, yo, n + 1);
        assert_close(
            &format!("{tag} softmax"),
            &y[..n],
            &wgpu_loss::reference::softmax(&x, rows, classes).unwrap(),
        );
        for (out, what) in [(&g, "grad"), (&y, "softmax")] {
            assert_eq!(
                out[n].to_bits(),
                common::POISON.to_bits(),
                "{tag}: {what} wrote past its last row"
            );
        }
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        ctx.encode_softmax_backward(&mut enc, &m(yo), &m(dyo), &m(dxo))
            .unwrap();
        submit(ctx, enc);
        let y32: Vec<f32> = y[..n].to_vec();
        assert_close(
            &format!("{tag} softmax backward"),
            &read(ctx, &a.buffer, dxo, n),
            &wgpu_loss::reference::softmax_backward(&y32, &dy, rows, classes).unwrap(),
        );
        // In place: the gradient over the logits.
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        let in_place = CrossEntropyViews {
            grad: GradOutput::InPlace,
            ..views
        };
        ctx.encode_cross_entropy(
            &mut enc,
            &in_place,
            &host_options.with_weight(Some(&weight)),
        )
        .unwrap();
        submit(ctx, enc);
        assert_close(
            &format!("{tag} in-place grad"),
            &read(ctx, &a.buffer, xo, n),
            &want.grad,
        );
    }
}

/// The row kernel's loads, in bytes, from a plan (`Dispatch::load_bytes`).
/// The load widths of a kernel's dispatches in a plan, in order.
fn load_bytes_of(plan: &[wgpu_loss::Dispatch], kernel: &str) -> Vec<u64> {
    let loads: Vec<u64> = plan
        .iter()
        .filter(|d| d.kernel == kernel)
        .map(|d| d.load_bytes)
        .collect();
    assert!(!loads.is_empty(), "no {kernel} in the plan: {plan:?}");
    loads
}

/// Rows that are not whole vec4s (an odd C: each row at another phase of
/// the buffer's vec4s) are read edged, 16-byte loads of the buffer's own
/// vec4s, where every matrix's last vector lies inside its buffer, and
/// gathered, four scalar loads, where one would run past its end: in
/// buffers of exactly the data, the last row, after every other row ran
/// edged. Both split a row into the same vectors, so they give the same
/// bits; the plan says which ran. The last rows' phases here are 0 to 3.
/// Every cross-entropy option, and the softmax.
#[test]
fn edged_and_gathered_rows_give_the_same_bits() {
    let Some(ctx) = &common::own_gpu() else {
        return;
    };
    let mut rng = Rng::new(5151);
    for (rows, classes) in [(9, 1001), (6, 9), (7, 13), (3, 50257), (6, 1003)] {
        // The data is not whole vec4s, so an exact buffer ends mid-vector.
        assert!((rows * classes) % 4 != 0);
        let n = rows * classes;
        let x = rng.vec_normal(n, 3.0);
        let t: Vec<i32> = (0..rows)
            .map(|i| {
                if i == 1 {
                    -100
                } else {
                    rng.below(classes) as i32
                }
            })
            .collect();
        let w: Vec<f32> = (0..classes).map(|_| rng.uniform(0.2, 2.0)).collect();
        let host_options = CrossEntropyOptions {
            weight: Some(&w[..]),
            label_smoothing: 0.1,
            z_loss: 1e-3,
            softcap: Some(6.0),
            ..Default::default()
        };
        let want = wgpu_loss::reference::cross_entropy(&x, &t, classes, &host_options).unwrap();
        let want_y = wgpu_loss::reference::softmax(&x, rows, classes).unwrap();
        // Edged: views in an arena, one element of room after each output.
        let mut a = Arena::new(ctx, (n as u64 + 8) * 4 * 5 + 8192);
        let (xo, to, wo, lo) = (a.put(ctx, &x), a.put(ctx, &t), a.put(ctx, &w), a.reserve(2));
        let (go, yo) = (a.reserve(n + 1), a.reserve(n + 1));
        // The last row gathered: a buffer each, exactly the data.
        let exact = |label, bytes: &[u8]| {
            use wgpu::util::DeviceExt;
            ctx.device()
                .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some(label),
                    contents: bytes,
                    usage: USAGE,
                })
        };
        let poison = vec![common::POISON; n];
        let (xb, gb, yb) = (
            exact("logits", bytemuck::cast_slice(&x)),
            exact("grad", bytemuck::cast_slice(&poison)),
            exact("softmax", bytemuck::cast_slice(&poison)),
        );
        let weight = GpuTensor::f32_vector(&a.buffer, wo, classes);
        let options = host_options.with_weight(Some(&weight));
        let m = |b, o| GpuTensor::f32_matrix(b, o, rows, classes);
        let mut got = Vec::new();
        for (loads, (x_view, g_view, y_view)) in [
            (
                vec![16],
                (m(&a.buffer, xo), m(&a.buffer, go), m(&a.buffer, yo)),
            ),
            (vec![16, 4], (m(&xb, 0), m(&gb, 0), m(&yb, 0))),
        ] {
            let tag = format!("{rows}x{classes}, loads of {loads:?} bytes");
            let views = CrossEntropyViews {
                logits: x_view,
                targets: GpuTensor::i32_vector(&a.buffer, to, rows),
                loss: GpuTensor::f32_vector(&a.buffer, lo, 2),
                grad: GradOutput::Into(g_view),
                lse: None,
            };
            let mut enc = ctx.device().create_command_encoder(&Default::default());
            let (result, plan) = ctx.record_plan(|| {
                ctx.encode_cross_entropy(&mut enc, &views, &options)?;
                ctx.encode_softmax(&mut enc, SoftmaxOp::Softmax, &x_view, &y_view)
            });
            result.unwrap();
            submit(ctx, enc);
            assert_eq!(load_bytes_of(&plan, "ce_loss_grad"), loads, "{tag}");
            assert_eq!(load_bytes_of(&plan, "softmax_forward"), loads, "{tag}");
            let loss = read(ctx, &a.buffer, lo, 1);
            let g = read(ctx, g_view.buffer, g_view.offset, n);
            let y = read(ctx, y_view.buffer, y_view.offset, n);
            assert_close(&format!("{tag} loss"), &loss, &want.loss);
            assert_close(&format!("{tag} grad"), &g, &want.grad);
            assert_close(&format!("{tag} softmax"), &y, &want_y);
            got.push((bits(&loss), bits(&g), bits(&y)));
        }
        let tag = format!("{rows}x{classes}");
        for (o, what) in [(go, "grad"), (yo, "softmax")] {
            let past = read(ctx, &a.buffer, o + n as u64 * 4, 1)[0];
            assert_eq!(
                past.to_bits(),
                common::POISON.to_bits(),
                "{tag}: edged {what} wrote past its last row"
            );
        }
        assert!(got[0].0 == got[1].0, "{tag}: loss, edged against gathered");
        assert!(got[0].1 == got[1].1, "{tag}: grad, edged against gathered");
        assert!(
            got[0].2 == got[1].2,
            "{tag}: softmax, edged against gathered"
        );
    }
}

/// `GpuContext::prepare`: cross-entropy (odd C, so edged rows and their
/// edges pass; smoothing, z-loss and softcap), softmax and the matrix
/// product, recorded once and encoded
/// again for three batches written into the same buffers. Each replay
/// creates no bind group, uniform or scratch buffer, matches the reference
/// on that batch's data, and equals the same calls encoded afresh, bit for
/// bit.
#[test]
fn prepared_dispatches_replay_new_data_without_creating_anything() {
    use wgpu_loss::{reference, LinearShape, LinearViews, F32_TOLERANCE};
    let Some(ctx) = &common::own_gpu() else {
        return;
    };
    let (rows, classes, d) = (37, 1001, 24);
    let mut a = Arena::new(
        ctx,
        (rows * classes * 4 * 4 + rows * d * 8 + classes * d * 4) as u64 + 65536,
    );
    let mut rng = Rng::new(707);
    let t: Vec<i32> = (0..rows).map(|_| rng.below(classes) as i32).collect();
    let to = a.put(ctx, &t);
    let (xo, go, yo, lo) = (
        a.reserve(rows * classes),
        a.reserve(rows * classes),
        a.reserve(rows * classes),
        a.reserve(2),
    );
    let (ho, wo, zo) = (
        a.reserve(rows * d),
        a.reserve(classes * d),
        a.reserve(rows * classes),
    );
    let m = |o| GpuTensor::f32_matrix(&a.buffer, o, rows, classes);
    let opts = CrossEntropyOptions {
        label_smoothing: 0.1,
        z_loss: 1e-4,
        softcap: Some(20.0),
        ..Default::default()
    };
    let ce = CrossEntropyViews {
        logits: m(xo),
        targets: GpuTensor::i32_vector(&a.buffer, to, rows),
        loss: GpuTensor::f32_vector(&a.buffer, lo, 2),
        grad: GradOutput::Into(m(go)),
        lse: None,
    };
    let linear = LinearViews {
        input: GpuTensor::f32_matrix(&a.buffer, ho, rows, d),
        weight: GpuTensor::f32_matrix(&a.buffer, wo, classes, d),
        bias: None,
        output: m(zo),
    };
    let record = |enc: &mut wgpu::CommandEncoder| {
        ctx.encode_cross_entropy(enc, &ce, &opts.with_weight(None))?;
        ctx.encode_softmax(enc, SoftmaxOp::Softmax, &m(xo), &m(yo))?;
        ctx.encode_linear(enc, &linear)
    };
    let step = ctx.prepare(record).unwrap();
    // Another thread recording on the context meanwhile is not captured,
    // nor a host API call inside the closure.
    let other = ctx
        .prepare(|enc| {
            ctx.encode_softmax(enc, SoftmaxOp::Softmax, &m(xo), &m(yo))?;
            wgpu_loss::block_on(ctx.log_softmax(&[0.5f32; 24], 3, 8))?;
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut enc = ctx.device().create_command_encoder(&Default::default());
                    ctx.encode_linear(&mut enc, &linear).unwrap();
                });
            });
            Ok(())
        })
        .unwrap();
    let alone = ctx
        .prepare(|enc| ctx.encode_softmax(enc, SoftmaxOp::Softmax, &m(xo), &m(yo)))
        .unwrap();
    assert_eq!(other.kernels(), alone.kernels());
    assert!(!other.kernels().iter().any(|k| k.starts_with("matmul")));
    assert!(
        step.kernels().contains(&"ce_edges") && step.kernels().contains(&"softmax_forward"),
        "{:?}",
        step.kernels()
    );
    let outputs = [
        (go, rows * classes),
        (yo, rows * classes),
        (lo, 1),
        (zo, rows * classes),
    ];
    let poison = |a: &Arena| {
        for &(o, n) in &outputs {
            ctx.queue()
                .write_buffer(&a.buffer, o, bytemuck::cast_slice(&vec![common::POISON; n]));
        }
    };
    let read_all = |a: &Arena| -> Vec<Vec<f32>> {
        outputs
            .iter()
            .map(|&(o, n)| read(ctx, &a.buffer, o, n))
            .collect()
    };
    for batch in 0..3u64 {
        let mut rng = Rng::new(710 + batch);
        let x = rng.vec_normal(rows * classes, 3.0);
        let (h, w) = (
            rng.vec_normal(rows * d, 1.0),
            rng.vec_normal(classes * d, 1.0),
        );
        for (o, v) in [(xo, &x), (ho, &h), (wo, &w)] {
            ctx.queue()
                .write_buffer(&a.buffer, o, bytemuck::cast_slice(v));
        }
        poison(&a);
        let before = ctx.encode_buffers_created();
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        step.encode(&mut enc);
        submit(ctx, enc);
        assert_eq!(
            ctx.encode_buffers_created(),
            before,
            "batch {batch}: the replay created something"
        );
        let replayed = read_all(&a);
        let t64: Vec<i64> = t.iter().map(|&v| i64::from(v)).collect();
        let want = reference::cross_entropy(&x, &t64, classes, &opts).unwrap();
        assert_close(&format!("batch {batch} loss"), &replayed[2], &want.loss);
        common::assert_within(
            &format!("batch {batch} grad"),
            &replayed[0],
            &want.grad,
            F32_TOLERANCE,
        );
        common::assert_within(
            &format!("batch {batch} softmax"),
            &replayed[1],
            &reference::softmax(&x, rows, classes).unwrap(),
            F32_TOLERANCE,
        );
        let shape = LinearShape {
            rows,
            hidden: d,
            classes,
        };
        let terms = (0..rows * classes)
            .map(|i| {
                let (n, c) = (i / classes, i % classes);
                (0..d)
                    .map(|k| f64::from(h[n * d + k]).abs() * f64::from(w[c * d + k]).abs())
                    .sum::<f64>()
            })
            .fold(0.0, f64::max);
        let z_want = reference::linear(&h, &w, None, shape).unwrap();
        if let Some(m) = F32_TOLERANCE.first_mismatch_at_scale(
            &replayed[3],
            &z_want,
            wgpu_loss::tolerance::product_scale(d, terms),
        ) {
            panic!("batch {batch} linear: {m}");
        }
        // The same calls encoded afresh: the same bits, and one bind group
        // created per dispatch the prepared step replays.
        poison(&a);
        let before = ctx.encode_buffers_created();
        let mut enc = ctx.device().create_command_encoder(&Default::default());
        record(&mut enc).unwrap();
        submit(ctx, enc);
        assert_eq!(
            ctx.encode_buffers_created().bind_groups - before.bind_groups,
            step.kernels().len() as u64
        );
        for (i, (r, f)) in replayed.iter().zip(read_all(&a)).enumerate() {
            assert_eq!(
                bits(r),
                bits(&f),
                "batch {batch}, output {i}: replay differs from a fresh encode"
            );
        }
    }
}
