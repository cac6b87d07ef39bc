//! Cross-entropy with class-index targets on the GPU against the f64
//! reference: every option combination, awkward shapes, hand-computed
//! cases, invalid inputs and determinism.

mod common;

use common::{assert_close, gpu, gpu_with_binding_cap, Rng};
use wgpu_loss::reference;
use wgpu_loss::{CrossEntropyOptions, Error, GpuContext, Reduction};

struct Case {
    logits: Vec<f32>,
    targets: Vec<i64>,
    weight: Vec<f32>,
}

/// Random logits (std 3, every fourth row shifted by +1e4), targets with about
/// one row in six set to `ignore_index`, and weights in [0.1, 2).
fn case(rng: &mut Rng, rows: usize, classes: usize, ignore_index: i64) -> Case {
    let mut logits = rng.vec_normal(rows * classes, 3.0);
    for r in (0..rows).step_by(4) {
        logits[r * classes..(r + 1) * classes]
            .iter_mut()
            .for_each(|v| *v += 1e4);
    }
    let targets = (0..rows)
        .map(|_| {
            if rng.below(6) == 0 {
                ignore_index
            } else {
                rng.below(classes) as i64
            }
        })
        .collect();
    let weight = (0..classes).map(|_| rng.uniform(0.1, 2.0)).collect();
    Case {
        logits,
        targets,
        weight,
    }
}

/// Runs loss + gradient, loss-only and in-place, and checks all three against the reference.
fn check(ctx: &GpuContext, c: &Case, classes: usize, opts: &CrossEntropyOptions<'_>, tag: &str) {
    let want = reference::cross_entropy(&c.logits, &c.targets, classes, opts).unwrap();
    let got = wgpu_loss::block_on(ctx.cross_entropy(
        &c.logits,
        &c.targets,
        classes,
        opts,
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap();
    assert_close(&format!("{tag} loss"), &got.loss, &want.loss);
    assert_close(&format!("{tag} z_loss"), &got.z_loss, &want.z_loss);
    assert_close(&format!("{tag} lse"), &got.lse, &want.lse);
    assert_close(
        &format!("{tag} grad"),
        got.grad.as_deref().unwrap(),
        &want.grad,
    );

    let loss_only = wgpu_loss::block_on(ctx.cross_entropy(
        &c.logits,
        &c.targets,
        classes,
        opts,
        wgpu_loss::Request::Loss,
    ))
    .unwrap();
    assert!(loss_only.grad.is_none());
    assert_eq!(
        loss_only.loss, got.loss,
        "{tag}: loss-only mode gives the same loss bits"
    );

    let ip = wgpu_loss::block_on(ctx.cross_entropy(
        &c.logits,
        &c.targets,
        classes,
        opts,
        wgpu_loss::Request::LossAndGradInPlace,
    ))
    .unwrap();
    assert_eq!(ip.loss, got.loss, "{tag}: in-place loss");
    assert!(
        ip.grad
            .as_deref()
            .unwrap()
            .iter()
            .zip(got.grad.as_deref().unwrap())
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{tag}: in-place gradient equals the separate gradient bitwise"
    );
}

#[test]
fn every_combination_of_weight_ignore_smoothing_reduction() {
    let Some(ctx) = gpu() else { return };
    let (rows, classes) = (37, 1000);
    for (seed, ignore_index) in [(1, -100i64), (2, 3)] {
        let mut rng = Rng::new(seed);
        let c = case(&mut rng, rows, classes, ignore_index);
        for weighted in [false, true] {
            for smoothing in [0.0, 0.1, 1.0] {
                for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
                    let opts = CrossEntropyOptions {
                        weight: weighted.then_some(c.weight.as_slice()),
                        ignore_index,
                        label_smoothing: smoothing,
                        reduction,
                        ..Default::default()
                    };
                    let tag = format!(
                        "ignore_index={ignore_index} weighted={weighted} eps={smoothing} {reduction:?}"
                    );
                    check(ctx, &c, classes, &opts, &tag);
                }
            }
        }
    }
}

#[test]
fn z_loss_softcap_and_grad_scale() {
    let Some(ctx) = gpu() else { return };
    let (rows, classes) = (29, 515);
    let mut rng = Rng::new(3);
    let mut c = case(&mut rng, rows, classes, -100);
    // Softcap tests want logits near the cap, not shifted by 1e4.
    c.logits = rng.vec_normal(rows * classes, 20.0);
    for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
        for (z, cap, scale, weighted) in [
            (1e-4, None, 1.0, false),
            (1e-2, None, 0.5, true),
            (0.0, Some(30.0), 1.0, false),
            (1e-3, Some(15.0), 4.0, true),
        ] {
            let opts = CrossEntropyOptions {
                weight: weighted.then_some(c.weight.as_slice()),
                label_smoothing: 0.05,
                reduction,
                z_loss: z,
                softcap: cap,
                grad_scale: scale,
                ..Default::default()
            };
            check(
                ctx,
                &c,
                classes,
                &opts,
                &format!("{reduction:?} z={z} cap={cap:?} scale={scale}"),
            );
        }
    }
    // The z-loss part is returned separately and is inside the total.
    let opts = CrossEntropyOptions {
        z_loss: 1e-2,
        ..Default::default()
    };
    let with = wgpu_loss::block_on(ctx.cross_entropy(
        &c.logits,
        &c.targets,
        classes,
        &opts,
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap();
    let without = wgpu_loss::block_on(ctx.cross_entropy(
        &c.logits,
        &c.targets,
        classes,
        &CrossEntropyOptions::default(),
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap();
    assert!(with.z_loss[0] > 0.0);
    let diff = (with.loss[0] - without.loss[0] - with.z_loss[0]).abs();
    assert!(
        diff <= 1e-5 * with.loss[0].abs(),
        "total = ce + z: diff {diff}"
    );
}

#[test]
fn awkward_shapes() {
    let Some(ctx) = gpu() else { return };
    for (i, (rows, classes)) in [
        (5, 1),
        (9, 3),
        (4, 257),
        (3, 4099),
        // The class weights span more reduction blocks than the rows.
        (3, 16_385),
        (8, 50_257),
        (4, 131_072),
        (2, 1_000_003),
        (70_001, 5),
    ]
    .into_iter()
    .enumerate()
    {
        let mut rng = Rng::new(40 + i as u64);
        let c = case(&mut rng, rows, classes, -100);
        for (reduction, eps) in [(Reduction::Mean, 0.0), (Reduction::Sum, 0.1)] {
            let opts = CrossEntropyOptions {
                weight: Some(&c.weight[..]),
                label_smoothing: eps,
                reduction,
                z_loss: 1e-4,
                ..Default::default()
            };
            let want = reference::cross_entropy(&c.logits, &c.targets, classes, &opts).unwrap();
            let got = wgpu_loss::block_on(ctx.cross_entropy(
                &c.logits,
                &c.targets,
                classes,
                &opts,
                wgpu_loss::Request::LossAndGrad,
            ))
            .unwrap();
            let tag = format!("[{rows}, {classes}] {reduction:?}");
            assert_close(&format!("{tag} loss"), &got.loss, &want.loss);
            assert_close(
                &format!("{tag} grad"),
                got.grad.as_deref().unwrap(),
                &want.grad,
            );
            assert_close(&format!("{tag} lse"), &got.lse, &want.lse);
        }
    }
}

#[test]
fn row_windows_on_a_small_binding_cap() {
    let Some(ctx) = gpu_with_binding_cap(8192) else {
        return;
    };
    for (rows, classes) in [(300, 7), (64, 100), (40, 256)] {
        let mut rng = Rng::new(rows as u64);
        let c = case(&mut rng, rows, classes, -100);
        let opts = CrossEntropyOptions {
            weight: Some(&c.weight[..]),
            label_smoothing: 0.2,
            z_loss: 1e-3,
            ..Default::default()
        };
        check(
            &ctx,
            &c,
            classes,
            &opts,
            &format!("windows [{rows}, {classes}]"),
        );
    }
}

#[test]
fn hand_computed_classics() {
    let Some(ctx) = gpu() else { return };
    // Probabilities [0.775, 0.116, 0.039, 0.070], true class 0: -ln 0.775 = 0.25489.
    let logits: Vec<f32> = [0.775f32, 0.116, 0.039, 0.070]
        .iter()
        .map(|p| p.ln())
        .collect();
    let out = wgpu_loss::block_on(ctx.cross_entropy(
        &logits,
        &[0i32],
        4,
        &CrossEntropyOptions::default(),
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap();
    assert!((out.loss[0] - 0.25489).abs() < 1e-4, "{}", out.loss[0]);
    // Two independent events with probabilities 1/2 and 1/6 (two-class rows):
    // -ln(1/2) - ln(1/6) = 2.4849 under `sum`.
    let logits = [
        (0.5f32).ln(),
        (0.5f32).ln(),
        (1.0f32 / 6.0).ln(),
        (5.0f32 / 6.0).ln(),
    ];
    let out = wgpu_loss::block_on(ctx.cross_entropy(
        &logits,
        &[0i64, 0],
        2,
        &CrossEntropyOptions {
            reduction: Reduction::Sum,
            ..Default::default()
        },
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap();
    assert!((out.loss[0] - 2.4849).abs() < 1e-4, "{}", out.loss[0]);
    // Gradient of the mean at row 0 is (p - onehot) / 2.
    let g = out.grad.unwrap();
    assert!(
        (g[0] - (0.5 - 1.0)).abs() < 1e-6 && (g[1] - 0.5).abs() < 1e-6,
        "{g:?}"
    );
}

#[test]
fn mean_with_every_row_ignored_is_nan_and_zero_gradient() {
    let Some(ctx) = gpu() else { return };
    let out = wgpu_loss::block_on(ctx.cross_entropy(
        &[1.0f32, 2.0, 3.0, 4.0],
        &[-100i64, -100],
        2,
        &Default::default(),
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap();
    assert!(out.loss[0].is_nan());
    assert_eq!(out.grad.unwrap(), vec![0.0; 4]);
    let empty = wgpu_loss::block_on(ctx.cross_entropy(
        &[] as &[f32],
        &[] as &[i64],
        3,
        &Default::default(),
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap();
    assert!(empty.loss[0].is_nan(), "N = 0 under mean is NaN");
    let sum = wgpu_loss::block_on(ctx.cross_entropy(
        &[] as &[f32],
        &[] as &[i64],
        3,
        &CrossEntropyOptions {
            reduction: Reduction::Sum,
            ..Default::default()
        },
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap();
    assert_eq!(sum.loss, vec![0.0]);
}

#[test]
fn i32_and_i64_targets_agree() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(5);
    let c = case(&mut rng, 10, 33, -100);
    let t32: Vec<i32> = c.targets.iter().map(|&t| t as i32).collect();
    let a = wgpu_loss::block_on(ctx.cross_entropy(
        &c.logits,
        &c.targets,
        33,
        &Default::default(),
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap();
    let b = wgpu_loss::block_on(ctx.cross_entropy(
        &c.logits,
        &t32,
        33,
        &Default::default(),
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap();
    assert_eq!(a, b);
}

#[test]
fn invalid_inputs_are_errors() {
    let Some(ctx) = gpu() else { return };
    let x = vec![0.0f32; 12];
    let run = |targets: &[i64], opts: &CrossEntropyOptions<'_>| {
        wgpu_loss::block_on(ctx.cross_entropy(
            &x,
            targets,
            4,
            opts,
            wgpu_loss::Request::LossAndGrad,
        ))
        .unwrap_err()
    };
    match run(&[0, 4, 1], &Default::default()) {
        Error::TargetOutOfRange {
            row,
            target,
            classes,
            ignore_index,
        } => {
            assert_eq!((row, target, classes, ignore_index), (1, 4, 4, -100));
        }
        e => panic!("{e}"),
    }
    assert!(matches!(
        run(&[0, -1, 1], &Default::default()),
        Error::TargetOutOfRange { row: 1, .. }
    ));
    assert!(matches!(
        run(&[0, 1], &Default::default()),
        Error::LengthMismatch { .. }
    ));
    let bad_len = [1.0f32; 3];
    assert!(matches!(
        run(
            &[0, 1, 2],
            &CrossEntropyOptions {
                weight: Some(&bad_len[..]),
                ..Default::default()
            }
        ),
        Error::LengthMismatch {
            expected: 4,
            actual: 3,
            ..
        }
    ));
    for w in [-1.0f32, f32::NAN, f32::INFINITY] {
        let weight = [1.0, 1.0, w, 1.0];
        assert!(matches!(
            run(
                &[0, 1, 2],
                &CrossEntropyOptions {
                    weight: Some(&weight[..]),
                    ..Default::default()
                }
            ),
            Error::InvalidWeight { index: 2, .. }
        ));
    }
    for eps in [-0.1f32, 1.5, f32::NAN] {
        assert!(matches!(
            run(
                &[0, 1, 2],
                &CrossEntropyOptions {
                    label_smoothing: eps,
                    ..Default::default()
                }
            ),
            Error::InvalidOption {
                name: "label_smoothing",
                ..
            }
        ));
    }
    for cap in [0.0f32, -3.0, f32::NAN] {
        assert!(matches!(
            run(
                &[0, 1, 2],
                &CrossEntropyOptions {
                    softcap: Some(cap),
                    ..Default::default()
                }
            ),
            Error::InvalidOption {
                name: "softcap",
                ..
            }
        ));
    }
    assert!(matches!(
        run(
            &[0, 1, 2],
            &CrossEntropyOptions {
                z_loss: -1.0,
                ..Default::default()
            }
        ),
        Error::InvalidOption { name: "z_loss", .. }
    ));
    let err = run(&[0, 7, 1], &Default::default()).to_string();
    assert!(
        err.contains("row 1") && err.contains("target 7") && err.contains("[0, 4)"),
        "{err}"
    );
}

#[test]
fn ten_runs_are_bitwise_identical() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(6);
    let c = case(&mut rng, 300, 2000, -100);
    let opts = CrossEntropyOptions {
        weight: Some(&c.weight[..]),
        label_smoothing: 0.1,
        z_loss: 1e-4,
        ..Default::default()
    };
    let first = wgpu_loss::block_on(ctx.cross_entropy(
        &c.logits,
        &c.targets,
        2000,
        &opts,
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap();
    for _ in 0..9 {
        let again = wgpu_loss::block_on(ctx.cross_entropy(
            &c.logits,
            &c.targets,
            2000,
            &opts,
            wgpu_loss::Request::LossAndGrad,
        ))
        .unwrap();
        assert_eq!(first.loss[0].to_bits(), again.loss[0].to_bits());
        let (a, b) = (
            first.grad.as_deref().unwrap(),
            again.grad.as_deref().unwrap(),
        );
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

/// Found by the property tests: the softcap slope 1 - tanh² cancels once tanh
/// saturates; the kernel computes sech² from exp instead.
#[test]
fn softcap_gradient_stays_accurate_where_tanh_saturates() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(77);
    let (rows, cols) = (64, 300);
    // Every |x / c| in [8, 12]: every slope is below 1e-6, so the gradient's
    // scale is set by the slopes themselves and 1 - tanh² (t rounds to 1)
    // would be off by 10% to 100%.
    let x: Vec<f32> = (0..rows * cols)
        .map(|_| {
            let v = rng.uniform(40.0, 60.0);
            if rng.below(2) == 0 {
                v
            } else {
                -v
            }
        })
        .collect();
    let t: Vec<i64> = (0..rows).map(|_| rng.below(cols) as i64).collect();
    let opts = CrossEntropyOptions {
        softcap: Some(5.0),
        reduction: Reduction::Sum,
        ..Default::default()
    };
    let gpu = wgpu_loss::block_on(ctx.cross_entropy(
        &x,
        &t,
        cols,
        &opts,
        wgpu_loss::Request::LossAndGrad,
    ))
    .expect("gpu");
    let reference = reference::cross_entropy(&x, &t, cols, &opts).expect("reference");
    assert_close(
        "saturated softcap grad",
        gpu.grad.as_deref().unwrap_or_default(),
        &reference.grad,
    );
}

/// The weighted `mean` denominator `D = Σ w[y_i]` over 2^22 rows: a plain
/// f32 sum per lane drifted by about 1e-4 relative; compensated, the mean
/// loss holds to 1e-6 of the f64 reference (issue 17).
#[test]
fn weighted_mean_over_millions_of_rows_keeps_its_denominator() {
    let Some(ctx) = gpu() else { return };
    let (rows, classes) = (1usize << 22, 2);
    let mut rng = Rng::new(1721);
    let logits: Vec<f32> = (0..rows * classes)
        .map(|_| rng.uniform(-1.0, 1.0))
        .collect();
    let targets: Vec<i64> = (0..rows).map(|i| (i % classes) as i64).collect();
    let weight = [0.3f32; 2];
    let opts = CrossEntropyOptions {
        weight: Some(&weight[..]),
        ..Default::default()
    };
    let want = reference::cross_entropy(&logits, &targets, classes, &opts).unwrap();
    let got = wgpu_loss::block_on(ctx.cross_entropy(
        &logits,
        &targets,
        classes,
        &opts,
        wgpu_loss::Request::Loss,
    ))
    .unwrap();
    let (g, w) = (f64::from(got.loss[0]), want.loss[0]);
    assert!(
        (g - w).abs() <= 1e-6 * w.abs(),
        "mean loss {g} against the reference's {w}: relative difference {:e}",
        (g - w).abs() / w.abs()
    );
}

/// Every row loss splits rows (issue 17, item 3). The in-place gradient: a partial pass,
/// `ce_loss` writing each row's results while the logits are whole, then
/// each chunk overwriting its own logits. The host API takes that kernel
/// for class-index targets; forced here with a GPU-like tuning that splits
/// every row of these shapes, every option on. (The race the `ce_loss` pass
/// avoids, a chunk reading its row's target logit after another chunk's
/// workgroup overwrote it, needs workgroups running at once; lavapipe runs
/// a row's chunks in order, so it cannot show it.)
#[test]
fn split_rows_of_every_row_loss_match_the_reference() {
    let Some(ctx) = common::gpu_with_tuning(common::splitting_tuning()) else {
        return;
    };
    let mut rng = Rng::new(4242);
    for (rows, classes) in [(1, 1000), (3, 4099), (5, 300), (2, 20_000)] {
        assert!(
            ctx.describe_row_plan(rows, classes).contains("rows split"),
            "{rows}x{classes}: {}",
            ctx.describe_row_plan(rows, classes)
        );
        let logits = rng.vec_normal(rows * classes, 3.0);
        let targets: Vec<i64> = (0..rows)
            .map(|i| {
                if i == 2 {
                    -100
                } else {
                    rng.below(classes) as i64
                }
            })
            .collect();
        let weight: Vec<f32> = (0..classes).map(|_| rng.uniform(0.2, 2.0)).collect();
        let opts = CrossEntropyOptions {
            weight: Some(&weight[..]),
            label_smoothing: 0.1,
            z_loss: 1e-3,
            softcap: Some(8.0),
            ..Default::default()
        };
        let want = reference::cross_entropy(&logits, &targets, classes, &opts).unwrap();
        let got = wgpu_loss::block_on(ctx.cross_entropy(
            &logits,
            &targets,
            classes,
            &opts,
            wgpu_loss::Request::LossAndGrad,
        ))
        .unwrap();
        let tag = format!("split in-place {rows}x{classes}");
        assert_loss_and_grad(&tag, &got, &want);
        // Probability targets split too (`ce_soft_partial`: statistics and
        // both target sums per chunk).
        let probs: Vec<f32> = rng.prob_rows(rows, classes);
        let want = reference::cross_entropy_probs(&logits, &probs, classes, &opts).unwrap();
        let got = wgpu_loss::block_on(ctx.cross_entropy_probs(
            &logits,
            &probs,
            classes,
            &opts,
            wgpu_loss::Request::LossAndGrad,
        ))
        .unwrap();
        let tag = format!("split probability targets {rows}x{classes}");
        assert_loss_and_grad(&tag, &got, &want);
        // And focal loss (`ce_partial`'s statistics).
        let focal = wgpu_loss::FocalOptions {
            alpha: Some(&weight[..]),
            gamma: 1.5,
            ..Default::default()
        };
        let want = reference::focal_loss(&logits, &targets, classes, &focal).unwrap();
        let got = wgpu_loss::block_on(ctx.focal_loss(
            &logits,
            &targets,
            classes,
            &focal,
            wgpu_loss::Request::LossAndGrad,
        ))
        .unwrap();
        let tag = format!("split focal {rows}x{classes}");
        assert_loss_and_grad(&tag, &got, &want);
    }
}

/// The loss and the gradient of `got` against the reference's, one tolerance.
fn assert_loss_and_grad(
    tag: &str,
    got: &wgpu_loss::CrossEntropyOutput,
    want: &reference::CrossEntropyReference,
) {
    assert_close(&format!("{tag} loss"), &got.loss, &want.loss);
    assert_close(
        &format!("{tag} grad"),
        got.grad.as_deref().expect("a gradient"),
        &want.grad,
    );
}

/// Rows held in registers (issue 17; on the CPU table up to 256 columns
/// since the fifth session, on the GPU table up to 32768) keep exp(x - max)
/// in their registers, and a row with an infinite or NaN logit gets its
/// NaNs by a select where the streaming path's exp((x - m) - lse) puts
/// them: at +inf entries of a row whose max is +inf, everywhere in a row of
/// only -inf or holding NaN; finite entries beside a +inf get 0. Separate
/// and in place, with and without a softcap (which bounds every logit), on
/// both tables, against the reference: NaN must meet NaN.
#[test]
fn held_rows_with_infinite_or_nan_logits_match_the_reference() {
    let Some(own) = gpu() else { return };
    let gpu_table =
        common::gpu_with_tuning(wgpu_loss::RowTuning::default().fitted_to(own.limits()));
    let tables: Vec<&GpuContext> = std::iter::once(own).chain(gpu_table.as_ref()).collect();
    let mut rng = Rng::new(9090);
    for ctx in tables {
        for classes in [5, 32, 128, 256, 1000] {
            let rows = 6;
            let mut x = rng.vec_normal(rows * classes, 2.0);
            x[classes + 3] = f32::INFINITY; // row 1: one +inf
            x[2 * classes + 1] = f32::INFINITY; // row 2: two +inf
            x[2 * classes + classes - 1] = f32::INFINITY;
            x[3 * classes..4 * classes].fill(f32::NEG_INFINITY); // row 3: only -inf
            x[4 * classes + classes / 2] = f32::NAN; // row 4: a NaN
            x[5 * classes] = f32::NEG_INFINITY; // row 5: one -inf, finite max
            let t: Vec<i64> = (0..rows).map(|_| rng.below(classes) as i64).collect();
            for softcap in [None, Some(5.0)] {
                let opts = CrossEntropyOptions {
                    reduction: Reduction::None,
                    softcap,
                    ..Default::default()
                };
                let want = reference::cross_entropy(&x, &t, classes, &opts).unwrap();
                let tag = format!(
                    "{} [{rows}, {classes}] softcap {softcap:?}",
                    ctx.adapter_name()
                );
                for request in [
                    wgpu_loss::Request::LossAndGrad,
                    wgpu_loss::Request::LossAndGradInPlace,
                ] {
                    let got =
                        wgpu_loss::block_on(ctx.cross_entropy(&x, &t, classes, &opts, request))
                            .unwrap();
                    assert_close(&format!("{tag} {request:?} loss"), &got.loss, &want.loss);
                    assert_close(
                        &format!("{tag} {request:?} grad"),
                        got.grad.as_deref().unwrap(),
                        &want.grad,
                    );
                }
            }
        }
    }
}

/// On the GPU table, rows that are not whole vec4s may span one vector
/// past the registers of 1024 lanes (8193 at 32767 and 32769 f32 columns,
/// at some phases): still held, that vector read again on each pass
/// (`HELD_SLOTS` in common.wgsl). Each row's last logit is large, so that
/// the max and the sums depend on that vector; without a softcap, with one
/// that leaves it the largest, and with weights, smoothing and z-loss; into
/// a gradient of its own and in place.
#[test]
fn held_rows_one_vector_past_the_registers_match_the_reference() {
    let Some(ctx) = common::gpu_with_tuning(wgpu_loss::RowTuning::default()) else {
        return;
    };
    let mut rng = Rng::new(32_767);
    for classes in [32_767, 32_769] {
        let rows = 5;
        let plan = ctx.describe_row_plan(rows, classes);
        assert!(
            plan.contains("held in registers"),
            "{rows}x{classes}: {plan}"
        );
        let mut x = rng.vec_normal(rows * classes, 4.0);
        for r in 0..rows {
            x[r * classes + classes - 1] = 30.0;
        }
        let t: Vec<i64> = (0..rows).map(|_| rng.below(classes) as i64).collect();
        let w: Vec<f32> = (0..classes).map(|_| rng.uniform(0.2, 2.0)).collect();
        for opts in [
            CrossEntropyOptions {
                reduction: Reduction::None,
                ..Default::default()
            },
            CrossEntropyOptions {
                reduction: Reduction::None,
                softcap: Some(20.0),
                ..Default::default()
            },
            CrossEntropyOptions {
                weight: Some(&w[..]),
                label_smoothing: 0.1,
                z_loss: 1e-3,
                reduction: Reduction::None,
                ..Default::default()
            },
        ] {
            let want = reference::cross_entropy(&x, &t, classes, &opts).unwrap();
            for request in [
                wgpu_loss::Request::LossAndGrad,
                wgpu_loss::Request::LossAndGradInPlace,
            ] {
                let got = wgpu_loss::block_on(ctx.cross_entropy(&x, &t, classes, &opts, request))
                    .unwrap();
                let tag = format!(
                    "[{rows}, {classes}] softcap {:?} smoothing {} {request:?}",
                    opts.softcap, opts.label_smoothing
                );
                assert_close(&format!("{tag} loss"), &got.loss, &want.loss);
                assert_close(
                    &format!("{tag} grad"),
                    got.grad.as_deref().unwrap(),
                    &want.grad,
                );
            }
        }
    }
}

/// A reduction of at most one block (4096 rows) finishes in its partial
/// pass, with no fold recorded; one more row makes a second block and a
/// fold. The fold of blocks whose second holds only an ignored row adds
/// zeros, so both give the same bits: loss, `mean` denominator, gradient.
#[test]
fn single_block_reductions_finish_in_the_partial_pass_with_the_folds_bits() {
    let Some(ctx) = common::own_gpu() else {
        return;
    };
    let classes = 24;
    let mut rng = Rng::new(77);
    let c = case(&mut rng, 4097, classes, -100);
    let mut targets = c.targets.clone();
    targets[4096] = -100;
    for (reduction, eps, weight) in [
        (Reduction::Mean, 0.0, None),
        (Reduction::Mean, 0.1, Some(&c.weight[..])),
        (Reduction::Sum, 0.0, None),
    ] {
        let opts = CrossEntropyOptions {
            weight,
            label_smoothing: eps,
            reduction,
            z_loss: 1e-4,
            ..Default::default()
        };
        let run = |rows: usize| {
            ctx.record_plan(|| {
                wgpu_loss::block_on(ctx.cross_entropy(
                    &c.logits[..rows * classes],
                    &targets[..rows],
                    classes,
                    &opts,
                    wgpu_loss::Request::LossAndGrad,
                ))
                .unwrap()
            })
        };
        let ((one, one_plan), (two, two_plan)) = (run(4096), run(4097));
        let kernels = |p: &[wgpu_loss::Dispatch]| p.iter().map(|d| d.kernel).collect::<Vec<_>>();
        let tag = format!("{reduction:?} smoothing {eps} weights {}", weight.is_some());
        for fold in ["ce_reduce", "ce_denominator"] {
            let wanted = reduction == Reduction::Mean || fold == "ce_reduce";
            assert!(
                !kernels(&one_plan).contains(&fold),
                "{tag}: {:?}",
                kernels(&one_plan)
            );
            assert_eq!(
                kernels(&two_plan).contains(&fold),
                wanted,
                "{tag}: {:?}",
                kernels(&two_plan)
            );
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&one.loss), bits(&two.loss), "{tag}: loss");
        assert_eq!(bits(&one.z_loss), bits(&two.z_loss), "{tag}: z-loss");
        let (g1, g2) = (one.grad.unwrap(), two.grad.unwrap());
        assert_eq!(bits(&g1), bits(&g2[..4096 * classes]), "{tag}: gradient");
        let want = reference::cross_entropy(
            &c.logits[..4096 * classes],
            &targets[..4096],
            classes,
            &opts,
        )
        .unwrap();
        assert_close(&format!("{tag} loss"), &one.loss, &want.loss);
    }
}

/// An infinite row loss (the target's logit is -inf) makes `sum` and
/// `mean` infinite, as PyTorch's are, not NaN: the compensated sums carry
/// nothing from an infinite partial (inf - inf would be NaN). With one
/// reduction block (37 rows) and with several and a fold (5000 rows).
#[test]
fn an_infinite_row_loss_reduces_to_infinity_not_nan() {
    let Some(ctx) = gpu() else { return };
    let classes = 16;
    for rows in [37, 5000] {
        let mut rng = Rng::new(88 + rows as u64);
        let mut x = rng.vec_normal(rows * classes, 1.0);
        let t: Vec<i64> = (0..rows).map(|r| (r % classes) as i64).collect();
        x[3 * classes + 3] = f32::NEG_INFINITY; // row 3's target logit
        for reduction in [Reduction::Sum, Reduction::Mean] {
            let opts = CrossEntropyOptions {
                reduction,
                z_loss: 1e-4,
                ..Default::default()
            };
            let want = reference::cross_entropy(&x, &t, classes, &opts).unwrap();
            assert!(want.loss[0].is_infinite(), "{}", want.loss[0]);
            let got = wgpu_loss::block_on(ctx.cross_entropy(
                &x,
                &t,
                classes,
                &opts,
                wgpu_loss::Request::Loss,
            ))
            .unwrap();
            let tag = format!("{rows} rows {reduction:?}");
            assert_close(&format!("{tag} loss"), &got.loss, &want.loss);
            assert_close(&format!("{tag} z-loss"), &got.z_loss, &want.z_loss);
        }
    }
}
