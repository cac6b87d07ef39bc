//! Probability-target cross-entropy, multiclass focal loss, BCE (probabilities
//! and logits) and sigmoid focal loss on the GPU against the f64 reference,
//! their identities, and their invalid inputs.

mod common;

use common::{assert_close, gpu, gpu_with_binding_cap, Rng};
use wgpu_loss::reference;
use wgpu_loss::{
    BinaryLossOptions, CrossEntropyOptions, Error, FocalOptions, GpuContext, Reduction,
    SigmoidFocalOptions,
};

const REDUCTIONS: [Reduction; 3] = [Reduction::None, Reduction::Mean, Reduction::Sum];

/// Soft targets: random non-negative rows, most normalised, some not, with exact zeros.
fn soft_targets(rng: &mut Rng, rows: usize, classes: usize) -> Vec<f32> {
    let mut q = vec![0.0f32; rows * classes];
    for r in 0..rows {
        let row = &mut q[r * classes..(r + 1) * classes];
        for v in row.iter_mut() {
            *v = if rng.below(3) == 0 {
                0.0
            } else {
                rng.uniform(0.0, 1.0)
            };
        }
        let sum: f32 = row.iter().sum();
        if r % 5 != 4 && sum > 0.0 {
            row.iter_mut().for_each(|v| *v /= sum);
        }
    }
    q
}

#[test]
fn probability_targets_every_option() {
    let Some(ctx) = gpu() else { return };
    let (rows, classes) = (23, 301);
    let mut rng = Rng::new(51);
    let logits = rng.vec_normal(rows * classes, 3.0);
    let probs = soft_targets(&mut rng, rows, classes);
    let weight: Vec<f32> = (0..classes).map(|_| rng.uniform(0.1, 2.0)).collect();
    for weighted in [false, true] {
        for eps in [0.0f32, 0.2] {
            for reduction in REDUCTIONS {
                for (z, cap, scale) in [(0.0f32, None, 1.0f32), (1e-3, Some(4.0f32), 3.0)] {
                    let opts = CrossEntropyOptions {
                        weight: weighted.then_some(weight.as_slice()),
                        label_smoothing: eps,
                        reduction,
                        z_loss: z,
                        softcap: cap,
                        grad_scale: scale,
                        ..Default::default()
                    };
                    let tag = format!(
                        "probs weighted={weighted} eps={eps} {reduction:?} z={z} cap={cap:?}"
                    );
                    let want =
                        reference::cross_entropy_probs(&logits, &probs, classes, &opts).unwrap();
                    let got = wgpu_loss::block_on(ctx.cross_entropy_probs(
                        &logits,
                        &probs,
                        classes,
                        &opts,
                        wgpu_loss::Request::LossAndGrad,
                    ))
                    .unwrap();
                    assert_close(&format!("{tag} loss"), &got.loss, &want.loss);
                    assert_close(&format!("{tag} z"), &got.z_loss, &want.z_loss);
                    assert_close(&format!("{tag} lse"), &got.lse, &want.lse);
                    assert_close(
                        &format!("{tag} grad"),
                        got.grad.as_deref().unwrap(),
                        &want.grad,
                    );
                    let only = wgpu_loss::block_on(ctx.cross_entropy_probs(
                        &logits,
                        &probs,
                        classes,
                        &opts,
                        wgpu_loss::Request::Loss,
                    ))
                    .unwrap();
                    assert_eq!(only.loss, got.loss, "{tag}: loss-only mode");
                    assert!(only.grad.is_none());
                }
            }
        }
    }
}

#[test]
fn one_hot_probability_targets_equal_index_targets() {
    let Some(ctx) = gpu() else { return };
    let (rows, classes) = (17, 64);
    let mut rng = Rng::new(52);
    let logits = rng.vec_normal(rows * classes, 2.0);
    let targets: Vec<i64> = (0..rows).map(|_| rng.below(classes) as i64).collect();
    let mut one_hot = vec![0.0f32; rows * classes];
    for (r, &t) in targets.iter().enumerate() {
        one_hot[r * classes + t as usize] = 1.0;
    }
    let weight: Vec<f32> = (0..classes).map(|_| rng.uniform(0.5, 1.5)).collect();
    // Weighted `mean` differs by definition (sum of w[y] vs N), so weights go with `sum`.
    for (weighted, reduction) in [
        (false, Reduction::Mean),
        (true, Reduction::Sum),
        (false, Reduction::None),
    ] {
        let opts = CrossEntropyOptions {
            weight: weighted.then_some(weight.as_slice()),
            label_smoothing: 0.1,
            reduction,
            ..Default::default()
        };
        let index = wgpu_loss::block_on(ctx.cross_entropy(
            &logits,
            &targets,
            classes,
            &opts,
            wgpu_loss::Request::LossAndGrad,
        ))
        .unwrap();
        let soft = wgpu_loss::block_on(ctx.cross_entropy_probs(
            &logits,
            &one_hot,
            classes,
            &opts,
            wgpu_loss::Request::LossAndGrad,
        ))
        .unwrap();
        let as64 = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
        assert_close("one-hot loss", &soft.loss, &as64(&index.loss));
        assert_close(
            "one-hot grad",
            soft.grad.as_deref().unwrap(),
            &as64(index.grad.as_deref().unwrap()),
        );
    }
}

#[test]
fn multiclass_focal_every_option() {
    let Some(ctx) = gpu() else { return };
    let (rows, classes) = (31, 203);
    let mut rng = Rng::new(53);
    let logits = rng.vec_normal(rows * classes, 3.0);
    let targets: Vec<i64> = (0..rows)
        .map(|r| {
            if r % 6 == 2 {
                -100
            } else {
                rng.below(classes) as i64
            }
        })
        .collect();
    let alpha: Vec<f32> = (0..classes).map(|_| rng.uniform(0.0, 1.0)).collect();
    for with_alpha in [false, true] {
        for gamma in [0.0f32, 0.5, 2.0] {
            for reduction in REDUCTIONS {
                let opts = FocalOptions {
                    alpha: with_alpha.then_some(alpha.as_slice()),
                    gamma,
                    reduction,
                    grad_scale: 1.5,
                    ..Default::default()
                };
                let tag = format!("focal alpha={with_alpha} gamma={gamma} {reduction:?}");
                let want = reference::focal_loss(&logits, &targets, classes, &opts).unwrap();
                let got = wgpu_loss::block_on(ctx.focal_loss(
                    &logits,
                    &targets,
                    classes,
                    &opts,
                    wgpu_loss::Request::LossAndGrad,
                ))
                .unwrap();
                assert_close(&format!("{tag} loss"), &got.loss, &want.loss);
                assert_close(
                    &format!("{tag} grad"),
                    got.grad.as_deref().unwrap(),
                    &want.grad,
                );
                let only = wgpu_loss::block_on(ctx.focal_loss(
                    &logits,
                    &targets,
                    classes,
                    &opts,
                    wgpu_loss::Request::Loss,
                ))
                .unwrap();
                assert_eq!(only.loss, got.loss, "{tag}: loss-only mode");
            }
        }
    }
}

#[test]
fn focal_with_gamma_zero_is_cross_entropy() {
    let Some(ctx) = gpu() else { return };
    let (rows, classes) = (12, 100);
    let mut rng = Rng::new(54);
    let logits = rng.vec_normal(rows * classes, 2.0);
    let targets: Vec<i64> = (0..rows)
        .map(|r| {
            if r == 3 {
                -100
            } else {
                rng.below(classes) as i64
            }
        })
        .collect();
    for reduction in REDUCTIONS {
        let focal = wgpu_loss::block_on(ctx.focal_loss(
            &logits,
            &targets,
            classes,
            &FocalOptions {
                gamma: 0.0,
                reduction,
                ..Default::default()
            },
            wgpu_loss::Request::LossAndGrad,
        ))
        .unwrap();
        let ce = wgpu_loss::block_on(ctx.cross_entropy(
            &logits,
            &targets,
            classes,
            &CrossEntropyOptions {
                reduction,
                ..Default::default()
            },
            wgpu_loss::Request::LossAndGrad,
        ))
        .unwrap();
        let as64 = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
        assert_close(
            &format!("focal(gamma 0) loss {reduction:?}"),
            &focal.loss,
            &as64(&ce.loss),
        );
        assert_close(
            "focal(gamma 0) grad",
            focal.grad.as_deref().unwrap(),
            &as64(ce.grad.as_deref().unwrap()),
        );
    }
}

/// Probabilities with exact 0 and 1 entries, soft targets.
fn binary_case(rng: &mut Rng, n: usize, logits: bool) -> (Vec<f32>, Vec<f32>) {
    let x = (0..n)
        .map(|i| match (logits, i % 11) {
            (false, 0) => 0.0,
            (false, 1) => 1.0,
            (false, _) => rng.uniform(0.0, 1.0),
            (true, 0) => 100.0,
            (true, 1) => -100.0,
            (true, _) => rng.normal(4.0),
        })
        .collect();
    let y = (0..n)
        .map(|i| match i % 3 {
            0 => 0.0,
            1 => 1.0,
            _ => rng.uniform(0.0, 1.0),
        })
        .collect();
    (x, y)
}

fn check_binary(ctx: &GpuContext, rows: usize, cols: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let n = rows * cols;
    let col_w: Vec<f32> = (0..cols).map(|_| rng.uniform(0.0, 2.0)).collect();
    let full_w: Vec<f32> = (0..n).map(|_| rng.uniform(0.0, 2.0)).collect();
    let pos_w: Vec<f32> = (0..cols).map(|_| rng.uniform(0.5, 3.0)).collect();
    let (p, y) = binary_case(&mut rng, n, false);
    let (x, yl) = binary_case(&mut rng, n, true);
    for reduction in REDUCTIONS {
        for weight in [None, Some(col_w.as_slice()), Some(full_w.as_slice())] {
            let tag = format!(
                "[{rows}, {cols}] {reduction:?} weight={:?}",
                weight.map(|w| w.len())
            );
            let opts = BinaryLossOptions {
                weight,
                reduction,
                grad_scale: 2.0,
                ..Default::default()
            };
            let want = reference::binary_cross_entropy(&p, &y, cols, &opts).unwrap();
            let got = wgpu_loss::block_on(ctx.binary_cross_entropy(
                &p,
                &y,
                cols,
                &opts,
                wgpu_loss::Request::LossAndGrad,
            ))
            .unwrap();
            assert_close(&format!("bce {tag} loss"), &got.loss, &want.loss);
            assert_close(
                &format!("bce {tag} grad"),
                got.grad.as_deref().unwrap(),
                &want.grad,
            );
            let only = wgpu_loss::block_on(ctx.binary_cross_entropy(
                &p,
                &y,
                cols,
                &opts,
                wgpu_loss::Request::Loss,
            ))
            .unwrap();
            assert_eq!(only.loss, got.loss);
            for pos in [None, Some(pos_w.as_slice())] {
                let opts = BinaryLossOptions {
                    weight,
                    pos_weight: pos,
                    reduction,
                    grad_scale: 0.5,
                };
                let want =
                    reference::binary_cross_entropy_with_logits(&x, &yl, cols, &opts).unwrap();
                let got = wgpu_loss::block_on(ctx.binary_cross_entropy_with_logits(
                    &x,
                    &yl,
                    cols,
                    &opts,
                    wgpu_loss::Request::LossAndGrad,
                ))
                .unwrap();
                assert!(
                    got.loss.iter().all(|v| v.is_finite()),
                    "logits of ±100 give finite losses"
                );
                assert_close(
                    &format!("bce_logits {tag} pos={} loss", pos.is_some()),
                    &got.loss,
                    &want.loss,
                );
                assert_close(
                    &format!("bce_logits {tag} pos={} grad", pos.is_some()),
                    got.grad.as_deref().unwrap(),
                    &want.grad,
                );
            }
        }
        for (alpha, gamma) in [(0.25f32, 2.0f32), (-1.0, 2.0), (0.6, 0.5), (0.25, 0.0)] {
            let opts = SigmoidFocalOptions {
                alpha,
                gamma,
                reduction,
                grad_scale: 1.0,
            };
            let tag =
                format!("sigmoid_focal [{rows}, {cols}] {reduction:?} alpha={alpha} gamma={gamma}");
            let want = reference::sigmoid_focal_loss(&x, &yl, cols, &opts).unwrap();
            let got = wgpu_loss::block_on(ctx.sigmoid_focal_loss(
                &x,
                &yl,
                cols,
                &opts,
                wgpu_loss::Request::LossAndGrad,
            ))
            .unwrap();
            assert_close(&format!("{tag} loss"), &got.loss, &want.loss);
            assert_close(
                &format!("{tag} grad"),
                got.grad.as_deref().unwrap(),
                &want.grad,
            );
        }
    }
}

#[test]
fn binary_losses_every_option_and_shape() {
    let Some(ctx) = gpu() else { return };
    for (i, (rows, cols)) in [(1, 1), (7, 3), (5, 4), (9, 257), (3, 4099), (70_001, 3)]
        .into_iter()
        .enumerate()
    {
        check_binary(ctx, rows, cols, 60 + i as u64);
    }
}

#[test]
fn row_windows_on_a_small_binding_cap() {
    let Some(ctx) = gpu_with_binding_cap(4096) else {
        return;
    };
    check_binary(&ctx, 700, 5, 70);
    check_binary(&ctx, 300, 8, 71);
    let mut rng = Rng::new(72);
    let (rows, classes) = (90, 40);
    let logits = rng.vec_normal(rows * classes, 2.0);
    let probs = soft_targets(&mut rng, rows, classes);
    let opts = CrossEntropyOptions {
        label_smoothing: 0.1,
        ..Default::default()
    };
    let want = reference::cross_entropy_probs(&logits, &probs, classes, &opts).unwrap();
    let got = wgpu_loss::block_on(ctx.cross_entropy_probs(
        &logits,
        &probs,
        classes,
        &opts,
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap();
    assert_close(
        "windowed probs grad",
        got.grad.as_deref().unwrap(),
        &want.grad,
    );
    let targets: Vec<i64> = (0..rows).map(|_| rng.below(classes) as i64).collect();
    let want = reference::focal_loss(&logits, &targets, classes, &FocalOptions::default()).unwrap();
    let got = wgpu_loss::block_on(ctx.focal_loss(
        &logits,
        &targets,
        classes,
        &FocalOptions::default(),
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap();
    assert_close(
        "windowed focal grad",
        got.grad.as_deref().unwrap(),
        &want.grad,
    );
    assert_close("windowed focal loss", &got.loss, &want.loss);
}

#[test]
fn large_vocabulary_probability_targets_and_focal() {
    let Some(ctx) = gpu() else { return };
    let (rows, classes) = (3, 131_072);
    let mut rng = Rng::new(73);
    let logits = rng.vec_normal(rows * classes, 2.0);
    let probs = soft_targets(&mut rng, rows, classes);
    let opts = CrossEntropyOptions::default();
    let want = reference::cross_entropy_probs(&logits, &probs, classes, &opts).unwrap();
    let got = wgpu_loss::block_on(ctx.cross_entropy_probs(
        &logits,
        &probs,
        classes,
        &opts,
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap();
    assert_close("131072-class probs loss", &got.loss, &want.loss);
    assert_close(
        "131072-class probs grad",
        got.grad.as_deref().unwrap(),
        &want.grad,
    );
    let targets = [5i64, 131_071, 77];
    let want = reference::focal_loss(&logits, &targets, classes, &FocalOptions::default()).unwrap();
    let got = wgpu_loss::block_on(ctx.focal_loss(
        &logits,
        &targets,
        classes,
        &FocalOptions::default(),
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap();
    assert_close(
        "131072-class focal grad",
        got.grad.as_deref().unwrap(),
        &want.grad,
    );
}

#[test]
fn sigmoid_focal_with_gamma_zero_and_no_alpha_is_bce_with_logits() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(74);
    let (x, y) = binary_case(&mut rng, 40 * 7, true);
    for reduction in REDUCTIONS {
        let focal = wgpu_loss::block_on(ctx.sigmoid_focal_loss(
            &x,
            &y,
            7,
            &SigmoidFocalOptions {
                alpha: -1.0,
                gamma: 0.0,
                reduction,
                grad_scale: 1.0,
            },
            wgpu_loss::Request::LossAndGrad,
        ))
        .unwrap();
        let bce = wgpu_loss::block_on(ctx.binary_cross_entropy_with_logits(
            &x,
            &y,
            7,
            &BinaryLossOptions {
                reduction,
                ..Default::default()
            },
            wgpu_loss::Request::LossAndGrad,
        ))
        .unwrap();
        let as64 = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<_>>();
        assert_close("focal(0, -1) loss", &focal.loss, &as64(&bce.loss));
        assert_close(
            "focal(0, -1) grad",
            focal.grad.as_deref().unwrap(),
            &as64(bce.grad.as_deref().unwrap()),
        );
    }
}

#[test]
fn bitwise_reproducible_reductions() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(75);
    let (x, y) = binary_case(&mut rng, 1000 * 33, true);
    let opts = BinaryLossOptions::default();
    let first = wgpu_loss::block_on(ctx.binary_cross_entropy_with_logits(
        &x,
        &y,
        33,
        &opts,
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap();
    for _ in 0..5 {
        let again = wgpu_loss::block_on(ctx.binary_cross_entropy_with_logits(
            &x,
            &y,
            33,
            &opts,
            wgpu_loss::Request::LossAndGrad,
        ))
        .unwrap();
        assert_eq!(first.loss[0].to_bits(), again.loss[0].to_bits());
    }
}

#[test]
fn invalid_inputs_are_errors() {
    let Some(ctx) = gpu() else { return };
    let good = [0.5f32; 6];
    let d = BinaryLossOptions::default();
    let e = wgpu_loss::block_on(ctx.binary_cross_entropy(
        &[0.5, 1.5, 0.5, 0.5, 0.5, 0.5],
        &good,
        3,
        &d,
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidValue {
                what: "input probabilities",
                row: 0,
                col: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("[0, 1]"), "{e}");
    let e = wgpu_loss::block_on(ctx.binary_cross_entropy(
        &good,
        &[0.5, 0.5, 0.5, 0.5, f32::NAN, 0.5],
        3,
        &d,
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidValue {
                what: "targets",
                row: 1,
                col: 1,
                ..
            }
        ),
        "{e}"
    );
    let e = wgpu_loss::block_on(ctx.binary_cross_entropy_with_logits(
        &good,
        &[0.5f32; 5],
        3,
        &d,
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::LengthMismatch {
                what: "targets",
                ..
            }
        ),
        "{e}"
    );
    let neg = [1.0f32, -1.0, 1.0];
    let e = wgpu_loss::block_on(ctx.binary_cross_entropy_with_logits(
        &good,
        &good,
        3,
        &BinaryLossOptions {
            weight: Some(&neg[..]),
            ..d
        },
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap_err();
    assert!(matches!(e, Error::InvalidWeight { index: 1, .. }), "{e}");
    let e = wgpu_loss::block_on(ctx.binary_cross_entropy_with_logits(
        &good,
        &good,
        3,
        &BinaryLossOptions {
            pos_weight: Some(&neg[..]),
            ..d
        },
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap_err();
    assert!(matches!(e, Error::InvalidWeight { index: 1, .. }), "{e}");
    let e = wgpu_loss::block_on(ctx.binary_cross_entropy_with_logits(
        &good,
        &good,
        3,
        &BinaryLossOptions {
            weight: Some(&[1.0; 4]),
            ..d
        },
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap_err();
    assert!(matches!(e, Error::LengthMismatch { .. }), "{e}");
    let e = wgpu_loss::block_on(ctx.binary_cross_entropy(
        &good,
        &good,
        3,
        &BinaryLossOptions {
            pos_weight: Some(&[1.0; 3]),
            ..d
        },
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidOption {
                name: "pos_weight",
                ..
            }
        ),
        "{e}"
    );
    for (alpha, gamma, name) in [
        (1.5f32, 2.0f32, "alpha"),
        (-0.5, 2.0, "alpha"),
        (0.25, -1.0, "gamma"),
    ] {
        let e = wgpu_loss::block_on(ctx.sigmoid_focal_loss(
            &good,
            &good,
            3,
            &SigmoidFocalOptions {
                alpha,
                gamma,
                ..Default::default()
            },
            wgpu_loss::Request::LossAndGrad,
        ))
        .unwrap_err();
        assert!(
            matches!(e, Error::InvalidOption { name: n, .. } if n == name),
            "{e}"
        );
    }
    let logits = [0.0f32; 6];
    let e = wgpu_loss::block_on(ctx.cross_entropy_probs(
        &logits,
        &[0.5, 0.5, -0.1, 1.0, 0.0, 0.0],
        3,
        &Default::default(),
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidValue {
                what: "probability targets",
                row: 0,
                col: 2,
                ..
            }
        ),
        "{e}"
    );
    let e = wgpu_loss::block_on(ctx.cross_entropy_probs(
        &logits,
        &[0.5f32; 3],
        3,
        &Default::default(),
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap_err();
    assert!(matches!(e, Error::LengthMismatch { .. }), "{e}");
    let e = wgpu_loss::block_on(ctx.cross_entropy_probs(
        &logits,
        &good,
        3,
        &CrossEntropyOptions {
            ignore_index: 1,
            ..Default::default()
        },
        wgpu_loss::Request::LossAndGrad,
    ))
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
    let e = wgpu_loss::block_on(ctx.focal_loss(
        &logits,
        &[0i64, 1],
        3,
        &FocalOptions {
            gamma: -0.5,
            ..Default::default()
        },
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap_err();
    assert!(
        matches!(e, Error::InvalidOption { name: "gamma", .. }),
        "{e}"
    );
    // Per-class alpha are class weights: any finite value >= 0 (1.5 included,
    // see multiclass_focal_alpha_is_a_class_weight), but not a negative one.
    let bad_alpha = [0.5f32, -0.5, 0.5];
    let e = wgpu_loss::block_on(ctx.focal_loss(
        &logits,
        &[0i64, 1],
        3,
        &FocalOptions {
            alpha: Some(&bad_alpha[..]),
            ..Default::default()
        },
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap_err();
    assert!(
        matches!(e, Error::InvalidOption { name: "alpha", .. }),
        "{e}"
    );
    let e = wgpu_loss::block_on(ctx.focal_loss(
        &logits,
        &[0i64, 3],
        3,
        &FocalOptions::default(),
        wgpu_loss::Request::LossAndGrad,
    ))
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::TargetOutOfRange {
                row: 1,
                target: 3,
                ..
            }
        ),
        "{e}"
    );
}

/// PyTorch computes BCE's `log(1 - p)` as `log1p(-p)`. Below p = 2^-24,
/// `1 - p` rounds to 1 in f32 and the whole term of a y = 0 element went
/// with it: every loss here came back 0 (issue 17).
#[test]
fn bce_on_tiny_probabilities_keeps_the_log1p_term() {
    let Some(ctx) = gpu() else { return };
    let (rows, cols) = (16, 33);
    let mut rng = Rng::new(1717);
    // p from 1e-12 to 1e-7, and a few up to 0.3 to cross the series' range.
    let p: Vec<f32> = (0..rows * cols)
        .map(|i| {
            if i % 11 == 0 {
                rng.uniform(0.2, 0.3)
            } else {
                10f32.powf(rng.uniform(-12.0, -7.0))
            }
        })
        .collect();
    let y = vec![0.0f32; p.len()];
    let opts = BinaryLossOptions {
        reduction: Reduction::None,
        ..Default::default()
    };
    let want = reference::binary_cross_entropy(&p, &y, cols, &opts).expect("reference");
    let got = wgpu_loss::block_on(ctx.binary_cross_entropy(
        &p,
        &y,
        cols,
        &opts,
        wgpu_loss::Request::LossAndGrad,
    ))
    .expect("gpu");
    // Judged against the tiny elements alone, so that the few large ones do
    // not set the scale of the absolute tolerance.
    let tiny: Vec<usize> = (0..p.len()).filter(|i| i % 11 != 0).collect();
    let pick = |v: &[f32]| tiny.iter().map(|&i| v[i]).collect::<Vec<f32>>();
    let pick64 = |v: &[f64]| tiny.iter().map(|&i| v[i]).collect::<Vec<f64>>();
    assert_close("bce loss, tiny p", &pick(&got.loss), &pick64(&want.loss));
    assert_close("bce loss, all", &got.loss, &want.loss);
    assert_close("bce grad", got.grad.as_deref().unwrap(), &want.grad);
}

/// Multiclass focal's per-class alpha are class weights, so values past 1
/// are valid; they used to be refused with torchvision's [0, 1] rule, which
/// belongs to the sigmoid focal loss's single balance factor (issue 17).
#[test]
fn multiclass_focal_alpha_is_a_class_weight() {
    let Some(ctx) = gpu() else { return };
    let (rows, classes) = (20, 37);
    let mut rng = Rng::new(1719);
    let logits = rng.vec_normal(rows * classes, 3.0);
    let targets: Vec<i64> = (0..rows).map(|_| rng.below(classes) as i64).collect();
    let alpha: Vec<f32> = (0..classes).map(|_| rng.uniform(0.0, 3.0)).collect();
    assert!(alpha.iter().any(|&a| a > 1.0));
    let opts = FocalOptions {
        alpha: Some(&alpha[..]),
        gamma: 1.5,
        ..Default::default()
    };
    let want = reference::focal_loss(&logits, &targets, classes, &opts).expect("reference");
    let got = wgpu_loss::block_on(ctx.focal_loss(
        &logits,
        &targets,
        classes,
        &opts,
        wgpu_loss::Request::LossAndGrad,
    ))
    .expect("alpha past 1 is a valid class weight");
    assert_close("focal loss", &got.loss, &want.loss);
    assert_close("focal grad", got.grad.as_deref().unwrap(), &want.grad);
}

/// Sums over N run as blocked reductions (blocks of 4096 rows or partial
/// sums, then one fold): shapes with many blocks, a partial last block, and
/// every reduction, for cross-entropy's denominator and final sum and the
/// binary losses' sum.
#[test]
fn reductions_over_many_blocks_match_the_reference() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(4097);
    // 9 blocks of rows, the last of 1 row.
    let (rows, classes) = (8 * 4096 + 1, 5);
    let logits = rng.vec_normal(rows * classes, 2.0);
    let targets: Vec<i64> = (0..rows)
        .map(|i| {
            if i % 7 == 3 {
                -100
            } else {
                rng.below(classes) as i64
            }
        })
        .collect();
    let weight: Vec<f32> = (0..classes).map(|_| rng.uniform(0.1, 2.0)).collect();
    for reduction in REDUCTIONS {
        for smoothing in [0.0, 0.2] {
            let opts = CrossEntropyOptions {
                weight: Some(&weight[..]),
                label_smoothing: smoothing,
                reduction,
                z_loss: 1e-3,
                ..Default::default()
            };
            let tag =
                format!("cross-entropy [{rows}, {classes}] {reduction:?} smoothing {smoothing}");
            let want = reference::cross_entropy(&logits, &targets, classes, &opts).unwrap();
            let got = wgpu_loss::block_on(ctx.cross_entropy(
                &logits,
                &targets,
                classes,
                &opts,
                wgpu_loss::Request::LossAndGrad,
            ))
            .unwrap();
            assert_close(&format!("{tag} loss"), &got.loss, &want.loss);
            assert_close(
                &format!("{tag} grad"),
                got.grad.as_deref().unwrap(),
                &want.grad,
            );
        }
    }
    // 4.3M elements of 2049 columns (scalar loads, one partial sum per 256
    // elements): 16,807 partial sums, 5 blocks.
    let (rows, cols) = (2100, 2049);
    let (x, y) = binary_case(&mut rng, rows * cols, true);
    let w: Vec<f32> = (0..rows * cols).map(|_| rng.uniform(0.0, 2.0)).collect();
    for reduction in [Reduction::Mean, Reduction::Sum] {
        let opts = BinaryLossOptions {
            weight: Some(&w[..]),
            reduction,
            ..Default::default()
        };
        bce_logits_loss_matches_the_reference(
            ctx,
            (&x, &y, cols),
            &opts,
            &format!("bce_logits [{rows}, {cols}] {reduction:?} loss"),
        );
    }
}

/// The GPU's BCE-with-logits loss (no gradient) against the reference's,
/// which it returns.
fn bce_logits_loss_matches_the_reference(
    ctx: &wgpu_loss::GpuContext,
    (x, y, cols): (&[f32], &[f32], usize),
    opts: &BinaryLossOptions<'_>,
    tag: &str,
) -> Vec<f64> {
    let want = reference::binary_cross_entropy_with_logits(x, y, cols, opts).unwrap();
    let got = wgpu_loss::block_on(ctx.binary_cross_entropy_with_logits(
        x,
        y,
        cols,
        opts,
        wgpu_loss::Request::Loss,
    ))
    .unwrap();
    assert_close(tag, &got.loss, &want.loss);
    want.loss
}

/// An infinite element loss (logit +inf, target 0) makes `sum` and `mean`
/// infinite, as PyTorch's are, not NaN, whether the element partials fold
/// in one block or several.
#[test]
fn an_infinite_element_loss_reduces_to_infinity_not_nan() {
    let Some(ctx) = gpu() else { return };
    let cols = 64;
    for rows in [3, 20_000] {
        let mut rng = Rng::new(99 + rows as u64);
        let mut x = rng.vec_normal(rows * cols, 1.0);
        let y: Vec<f32> = (0..rows * cols).map(|i| (i % 2) as f32).collect();
        x[4] = f32::INFINITY; // target 0
        for reduction in [Reduction::Sum, Reduction::Mean] {
            let opts = BinaryLossOptions {
                reduction,
                ..Default::default()
            };
            let want = bce_logits_loss_matches_the_reference(
                ctx,
                (&x, &y, cols),
                &opts,
                &format!("{rows} rows {reduction:?}"),
            );
            assert!(want[0].is_infinite(), "{}", want[0]);
        }
    }
}
