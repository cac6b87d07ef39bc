//! The f64 reference checked against central finite differences, so that a
//! wrong gradient formula cannot hide behind a GPU kernel that copies it.
//! No GPU needed.

mod common;

use common::Rng;
use wgpu_loss::reference::{self, cross_entropy_f64, row_logsumexp};
use wgpu_loss::{CrossEntropyOptions, Reduction};

/// Step for central differences in f64: truncation error ~h², rounding ~eps/h.
const H: f64 = 1e-5;
/// Agreement required between an analytic gradient and its finite difference.
const FD_TOL: f64 = 1e-6;

fn assert_fd(what: &str, analytic: &[f64], f: impl Fn(&[f64]) -> f64, x: &[f64]) {
    let scale = analytic.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for i in 0..x.len() {
        let mut xp = x.to_vec();
        let mut xm = x.to_vec();
        xp[i] += H;
        xm[i] -= H;
        let fd = (f(&xp) - f(&xm)) / (2.0 * H);
        let diff = (fd - analytic[i]).abs();
        assert!(
            diff <= FD_TOL * scale,
            "{what}: index {i}: analytic {:e}, finite difference {fd:e}, diff {diff:e}",
            analytic[i]
        );
    }
}

#[test]
fn cross_entropy_gradient_matches_finite_differences_for_every_option() {
    let (rows, classes) = (4, 5);
    let mut rng = Rng::new(21);
    let x: Vec<f64> = (0..rows * classes)
        .map(|_| f64::from(rng.normal(2.0)))
        .collect();
    let weight: Vec<f32> = (0..classes).map(|_| rng.uniform(0.2, 2.0)).collect();
    for targets in [vec![0i64, 3, 4, 1], vec![2i64, -100, 0, -100]] {
        for weighted in [false, true] {
            for eps in [0.0f32, 0.3] {
                for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
                    for (z, cap, scale) in [(0.0f32, None, 1.0f32), (0.05, Some(3.0f32), 2.5)] {
                        let opts = CrossEntropyOptions {
                            weight: weighted.then_some(weight.as_slice()),
                            label_smoothing: eps,
                            reduction,
                            z_loss: z,
                            softcap: cap,
                            grad_scale: scale,
                            ..Default::default()
                        };
                        // The gradient is of grad_scale × (the returned loss, summed for `none`).
                        let objective = |x: &[f64]| {
                            let r = cross_entropy_f64(x, &targets, classes, &opts).unwrap();
                            f64::from(scale) * r.loss.iter().sum::<f64>()
                        };
                        let g = cross_entropy_f64(&x, &targets, classes, &opts)
                            .unwrap()
                            .grad;
                        let tag = format!(
                            "targets {targets:?} weighted={weighted} eps={eps} {reduction:?} z={z} cap={cap:?}"
                        );
                        assert_fd(&tag, &g, objective, &x);
                    }
                }
            }
        }
    }
}

#[test]
fn cross_entropy_reference_matches_textbook_values() {
    // -ln 0.775 = 0.25489 for probabilities [0.775, 0.116, 0.039, 0.070], class 0.
    let x: Vec<f32> = [0.775f32, 0.116, 0.039, 0.070]
        .iter()
        .map(|p| p.ln())
        .collect();
    let r = reference::cross_entropy(&x, &[0i64], 4, &Default::default()).unwrap();
    assert!((r.loss[0] - 0.25489).abs() < 5e-5, "{}", r.loss[0]);
    // Label smoothing with uniform logits: every class has -log p = ln C.
    let r = reference::cross_entropy(
        &[0.0f32; 8],
        &[1i64, 3],
        4,
        &CrossEntropyOptions {
            label_smoothing: 0.4,
            ..Default::default()
        },
    )
    .unwrap();
    assert!((r.loss[0] - 4f64.ln()).abs() < 1e-12);
    // Weighted mean divides by the weights of the targets, as PyTorch.
    let w = [1.0f32, 3.0];
    let r = reference::cross_entropy(
        &[0.0f32; 4],
        &[0i64, 1],
        2,
        &CrossEntropyOptions {
            weight: Some(&w[..]),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        (r.loss[0] - 2f64.ln()).abs() < 1e-12,
        "(1 + 3) ln 2 / (1 + 3)"
    );
}

#[test]
fn softmax_family_backward_matches_finite_differences() {
    let (rows, cols) = (3, 6);
    let mut rng = Rng::new(22);
    // f32-representable inputs so the f32-taking reference sees exactly x.
    let x32: Vec<f32> = (0..rows * cols).map(|_| rng.normal(1.5)).collect();
    let x: Vec<f64> = x32.iter().map(|&v| f64::from(v)).collect();
    let dy32: Vec<f32> = (0..rows * cols).map(|_| rng.normal(1.0)).collect();
    let dy: Vec<f64> = dy32.iter().map(|&v| f64::from(v)).collect();
    let dl32: Vec<f32> = (0..rows).map(|_| rng.normal(1.0)).collect();

    let rows_of = |x: &[f64]| x.chunks(cols).map(|r| r.to_vec()).collect::<Vec<_>>();
    let softmax_obj = |x: &[f64]| {
        rows_of(x)
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let l = row_logsumexp(r);
                r.iter()
                    .enumerate()
                    .map(|(j, v)| dy[i * cols + j] * (v - l).exp())
                    .sum::<f64>()
            })
            .sum::<f64>()
    };
    let log_softmax_obj = |x: &[f64]| {
        rows_of(x)
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let l = row_logsumexp(r);
                r.iter()
                    .enumerate()
                    .map(|(j, v)| dy[i * cols + j] * (v - l))
                    .sum::<f64>()
            })
            .sum::<f64>()
    };
    let lse_obj = |x: &[f64]| {
        rows_of(x)
            .iter()
            .enumerate()
            .map(|(i, r)| f64::from(dl32[i]) * row_logsumexp(r))
            .sum::<f64>()
    };
    // The backward passes take f32 forward outputs; their rounding (~1e-7) is below FD_TOL.
    let y: Vec<f32> = reference::softmax(&x32, rows, cols)
        .unwrap()
        .iter()
        .map(|&v| v as f32)
        .collect();
    let g = reference::softmax_backward(&y, &dy32, rows, cols).unwrap();
    assert_fd("softmax backward", &g, softmax_obj, &x);
    let ly: Vec<f32> = reference::log_softmax(&x32, rows, cols)
        .unwrap()
        .iter()
        .map(|&v| v as f32)
        .collect();
    let g = reference::log_softmax_backward(&ly, &dy32, rows, cols).unwrap();
    assert_fd("log_softmax backward", &g, log_softmax_obj, &x);
    let lse: Vec<f32> = reference::logsumexp(&x32, rows, cols)
        .unwrap()
        .iter()
        .map(|&v| v as f32)
        .collect();
    let g = reference::logsumexp_backward(&x32, &lse, &dl32, rows, cols).unwrap();
    assert_fd("logsumexp backward", &g, lse_obj, &x);
}

#[test]
fn reference_edge_semantics() {
    let inf = f64::INFINITY;
    assert_eq!(row_logsumexp(&[-inf, -inf]), -inf);
    assert_eq!(row_logsumexp(&[inf, 0.0]), inf);
    assert!(row_logsumexp(&[f64::NAN, 0.0]).is_nan());
    assert!((row_logsumexp(&[1e4, 1e4]) - (1e4 + 2f64.ln())).abs() < 1e-9);
}

#[test]
fn probability_target_and_focal_gradients_match_finite_differences() {
    use wgpu_loss::reference::{cross_entropy_probs_f64, focal_loss_f64};
    use wgpu_loss::FocalOptions;
    let (rows, classes) = (3, 5);
    let mut rng = Rng::new(23);
    let x: Vec<f64> = (0..rows * classes)
        .map(|_| f64::from(rng.normal(2.0)))
        .collect();
    let probs: Vec<f32> = (0..rows * classes).map(|_| rng.uniform(0.0, 0.5)).collect();
    let weight: Vec<f32> = (0..classes).map(|_| rng.uniform(0.2, 2.0)).collect();
    for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
        for (weighted, eps, z, cap) in [
            (false, 0.0f32, 0.0f32, None),
            (true, 0.2, 0.05, Some(3.0f32)),
        ] {
            let opts = CrossEntropyOptions {
                weight: weighted.then_some(weight.as_slice()),
                label_smoothing: eps,
                reduction,
                z_loss: z,
                softcap: cap,
                grad_scale: 1.5,
                ..Default::default()
            };
            let objective = |x: &[f64]| {
                1.5 * cross_entropy_probs_f64(x, &probs, classes, &opts)
                    .unwrap()
                    .loss
                    .iter()
                    .sum::<f64>()
            };
            let g = cross_entropy_probs_f64(&x, &probs, classes, &opts)
                .unwrap()
                .grad;
            assert_fd(
                &format!("probs {reduction:?} weighted={weighted}"),
                &g,
                objective,
                &x,
            );
        }
        let alpha: Vec<f32> = (0..classes).map(|_| rng.uniform(0.1, 1.0)).collect();
        for (with_alpha, gamma) in [(false, 0.0f32), (true, 0.5), (true, 2.0)] {
            let opts = FocalOptions {
                alpha: with_alpha.then_some(alpha.as_slice()),
                gamma,
                reduction,
                grad_scale: 2.0,
                ..Default::default()
            };
            let targets = [1i64, -100, 4];
            let objective = |x: &[f64]| {
                2.0 * focal_loss_f64(x, &targets, classes, &opts)
                    .unwrap()
                    .loss
                    .iter()
                    .sum::<f64>()
            };
            let g = focal_loss_f64(&x, &targets, classes, &opts).unwrap().grad;
            assert_fd(
                &format!("focal {reduction:?} gamma={gamma}"),
                &g,
                objective,
                &x,
            );
        }
    }
}

#[test]
fn binary_loss_gradients_match_finite_differences() {
    use wgpu_loss::reference::{
        binary_cross_entropy_f64, binary_cross_entropy_with_logits_f64, sigmoid_focal_loss_f64,
    };
    use wgpu_loss::{BinaryLossOptions, SigmoidFocalOptions};
    let (rows, cols) = (3, 4);
    let n = rows * cols;
    let mut rng = Rng::new(24);
    // Probabilities away from 0 and 1 so the step stays inside (0, 1).
    let p: Vec<f64> = (0..n).map(|_| f64::from(rng.uniform(0.05, 0.95))).collect();
    let x: Vec<f64> = (0..n).map(|_| f64::from(rng.normal(2.0))).collect();
    let y: Vec<f32> = (0..n)
        .map(|i| {
            if i % 3 == 2 {
                rng.uniform(0.0, 1.0)
            } else {
                (i % 2) as f32
            }
        })
        .collect();
    let col_w: Vec<f32> = (0..cols).map(|_| rng.uniform(0.2, 2.0)).collect();
    let full_w: Vec<f32> = (0..n).map(|_| rng.uniform(0.2, 2.0)).collect();
    let pos_w: Vec<f32> = (0..cols).map(|_| rng.uniform(0.5, 3.0)).collect();
    for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
        for weight in [None, Some(col_w.as_slice()), Some(full_w.as_slice())] {
            let opts = BinaryLossOptions {
                weight,
                reduction,
                grad_scale: 1.5,
                ..Default::default()
            };
            let sum = |v: Vec<f64>| 1.5 * v.iter().sum::<f64>();
            let g = binary_cross_entropy_f64(&p, &y, cols, &opts).unwrap().grad;
            assert_fd(
                &format!("bce {reduction:?}"),
                &g,
                |p| sum(binary_cross_entropy_f64(p, &y, cols, &opts).unwrap().loss),
                &p,
            );
            let opts = BinaryLossOptions {
                pos_weight: Some(&pos_w[..]),
                ..opts
            };
            let g = binary_cross_entropy_with_logits_f64(&x, &y, cols, &opts)
                .unwrap()
                .grad;
            assert_fd(
                &format!("bce_logits {reduction:?}"),
                &g,
                |x| {
                    sum(binary_cross_entropy_with_logits_f64(x, &y, cols, &opts)
                        .unwrap()
                        .loss)
                },
                &x,
            );
        }
        for (alpha, gamma) in [(0.25f32, 2.0f32), (-1.0, 0.0), (0.7, 0.5)] {
            let opts = SigmoidFocalOptions {
                alpha,
                gamma,
                reduction,
                grad_scale: 1.0,
            };
            let g = sigmoid_focal_loss_f64(&x, &y, cols, &opts).unwrap().grad;
            assert_fd(
                &format!("sigmoid focal {reduction:?} alpha={alpha} gamma={gamma}"),
                &g,
                |x| {
                    sigmoid_focal_loss_f64(x, &y, cols, &opts)
                        .unwrap()
                        .loss
                        .iter()
                        .sum::<f64>()
                },
                &x,
            );
        }
    }
}

#[test]
fn reference_validates_probability_target_options() {
    use wgpu_loss::reference::cross_entropy_probs_f64;
    let w = [1.0f32; 3];
    let r = cross_entropy_probs_f64(
        &[0.0; 8],
        &[0.25; 8],
        4,
        &CrossEntropyOptions {
            weight: Some(&w[..]),
            ..Default::default()
        },
    );
    assert!(
        matches!(r, Err(wgpu_loss::Error::LengthMismatch { .. })),
        "{r:?}"
    );
}
