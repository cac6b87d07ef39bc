//! The fast CPU path against the f64 reference, under the same tolerance as
//! the GPU: awkward shapes, every cross-entropy option, non-finite rows, and
//! the same bits whatever the number of threads. Needs no GPU.

#[path = "../../wgpu-loss/tests/common/mod.rs"]
mod common;

use common::{assert_close, gpu, Rng};
use wgpu_loss::reference;
use wgpu_loss::{CrossEntropyOptions, Reduction, F32_TOLERANCE};
use wgpu_loss_cli::cpu_fast as fast;

const SHAPES: [(usize, usize); 8] = [
    (1, 1),
    (3, 7),
    (5, 1000),
    (2, 4099),
    (3000, 5),
    (64, 33),
    (1, 300_001),
    (1, 1_048_576),
];

fn check(what: &str, actual: &[f32], expected: &[f64]) {
    if let Some(m) = F32_TOLERANCE.first_mismatch(actual, expected) {
        panic!("{what}: {m}");
    }
}

#[test]
fn softmax_family_matches_the_reference() {
    let mut rng = Rng::new(501);
    for (rows, cols) in SHAPES {
        for scale in [1.0, 30.0] {
            let x = rng.vec_normal(rows * cols, scale);
            let what = format!("{rows}x{cols} scale {scale}");
            check(
                &format!("softmax {what}"),
                &fast::softmax(&x, rows, cols).expect("fast"),
                &reference::softmax(&x, rows, cols).expect("ref"),
            );
            check(
                &format!("log_softmax {what}"),
                &fast::log_softmax(&x, rows, cols).expect("fast"),
                &reference::log_softmax(&x, rows, cols).expect("ref"),
            );
            check(
                &format!("logsumexp {what}"),
                &fast::logsumexp(&x, rows, cols).expect("fast"),
                &reference::logsumexp(&x, rows, cols).expect("ref"),
            );
        }
    }
}

#[test]
fn cross_entropy_matches_the_reference_for_every_option() {
    let mut rng = Rng::new(502);
    for (rows, cols) in SHAPES {
        let x = rng.vec_normal(rows * cols, 4.0);
        let mut t: Vec<i64> = (0..rows).map(|_| rng.below(cols) as i64).collect();
        if rows > 2 {
            t[1] = -100;
        }
        let w: Vec<f32> = (0..cols).map(|_| rng.uniform(0.1, 2.0)).collect();
        let option_sets = [
            CrossEntropyOptions::default(),
            CrossEntropyOptions {
                weight: Some(&w[..]),
                label_smoothing: 0.1,
                reduction: Reduction::Sum,
                ..Default::default()
            },
            CrossEntropyOptions {
                z_loss: 1e-3,
                softcap: Some(5.0),
                reduction: Reduction::None,
                grad_scale: 0.5,
                ..Default::default()
            },
            CrossEntropyOptions {
                weight: Some(&w[..]),
                label_smoothing: 0.3,
                z_loss: 1e-4,
                softcap: Some(30.0),
                ..Default::default()
            },
        ];
        for (k, opts) in option_sets.iter().enumerate() {
            let what = format!("{rows}x{cols} options #{k}");
            let f = fast::cross_entropy(&x, &t, cols, opts, true).expect("fast");
            let r = reference::cross_entropy(&x, &t, cols, opts).expect("ref");
            check(&format!("loss {what}"), &f.loss, &r.loss);
            check(&format!("z_loss {what}"), &f.z_loss, &r.z_loss);
            check(&format!("lse {what}"), &f.lse, &r.lse);
            check(
                &format!("grad {what}"),
                f.grad.as_deref().unwrap_or_default(),
                &r.grad,
            );
            let loss_only = fast::cross_entropy(&x, &t, cols, opts, false).expect("fast");
            assert!(loss_only.grad.is_none());
            assert_eq!(
                loss_only.loss, f.loss,
                "{what}: loss-only equals loss + grad"
            );
        }
    }
}

#[test]
fn non_finite_rows_follow_the_reference() {
    let inf = f32::INFINITY;
    let x: Vec<f32> = [
        [1.0, 2.0, 3.0, 4.0],
        [1.0, f32::NAN, 3.0, 4.0],
        [1.0, inf, 3.0, 4.0],
        [1.0, -inf, 3.0, 4.0],
        [-inf; 4],
    ]
    .concat();
    let (rows, cols) = (5, 4);
    check(
        "softmax",
        &fast::softmax(&x, rows, cols).expect("fast"),
        &reference::softmax(&x, rows, cols).expect("ref"),
    );
    check(
        "log_softmax",
        &fast::log_softmax(&x, rows, cols).expect("fast"),
        &reference::log_softmax(&x, rows, cols).expect("ref"),
    );
    check(
        "logsumexp",
        &fast::logsumexp(&x, rows, cols).expect("fast"),
        &reference::logsumexp(&x, rows, cols).expect("ref"),
    );
    let t = vec![0i64; rows];
    for opts in [
        CrossEntropyOptions {
            reduction: Reduction::None,
            ..Default::default()
        },
        CrossEntropyOptions {
            reduction: Reduction::None,
            z_loss: 1e-3,
            label_smoothing: 0.1,
            ..Default::default()
        },
    ] {
        let f = fast::cross_entropy(&x, &t, cols, &opts, true).expect("fast");
        let r = reference::cross_entropy(&x, &t, cols, &opts).expect("ref");
        check("ce loss", &f.loss, &r.loss);
        check("ce grad", f.grad.as_deref().unwrap_or_default(), &r.grad);
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut rng = Rng::new(503);
    let (rows, cols) = (777, 1001);
    let x = rng.vec_normal(rows * cols, 3.0);
    let t: Vec<i64> = (0..rows).map(|_| rng.below(cols) as i64).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        pool.install(|| {
            let ce = fast::cross_entropy(&x, &t, cols, &Default::default(), true).expect("ce");
            let sm = fast::softmax(&x, rows, cols).expect("softmax");
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            (
                bits(&ce.loss),
                bits(ce.grad.as_deref().unwrap_or_default()),
                bits(&sm),
            )
        })
    };
    assert!(run(1) == run(3), "1 and 3 threads disagree");
}

#[test]
fn the_polynomial_exp_is_within_a_few_ulp() {
    let mut worst = 0.0f64;
    let mut x = -87.0f32;
    while x <= 0.0 {
        let got = f64::from(fast::exp_nonpositive(x));
        let want = f64::from(x).exp();
        worst = worst.max(((got - want) / want).abs());
        x += 0.001_3;
    }
    assert!(
        worst < 4.0 * f64::from(f32::EPSILON),
        "worst relative error {worst:e}"
    );
    assert_eq!(fast::exp_nonpositive(f32::NEG_INFINITY), 0.0);
    assert_eq!(fast::exp_nonpositive(-100.0), 0.0);
    assert!(fast::exp_nonpositive(f32::NAN).is_nan());
    assert_eq!(fast::exp_nonpositive(0.0), 1.0);
}

#[test]
fn element_wise_losses_match_the_reference() {
    use wgpu_loss::{BinaryLossOptions, SigmoidFocalOptions};
    let mut rng = Rng::new(504);
    for (rows, cols) in [(1, 1), (3, 7), (5, 1000), (2, 40_099), (3000, 5)] {
        let n = rows * cols;
        let x = rng.vec_normal(n, 4.0);
        let probs: Vec<f32> = (0..n).map(|_| rng.uniform(0.0, 1.0)).collect();
        let y: Vec<f32> = (0..n).map(|_| rng.uniform(0.0, 1.0)).collect();
        let w_col: Vec<f32> = (0..cols).map(|_| rng.uniform(0.0, 2.0)).collect();
        let w_full: Vec<f32> = (0..n).map(|_| rng.uniform(0.0, 2.0)).collect();
        let pos: Vec<f32> = (0..cols).map(|_| rng.uniform(0.5, 3.0)).collect();
        for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
            let what = format!("{rows}x{cols} {reduction:?}");
            let opts = BinaryLossOptions {
                weight: Some(&w_col[..]),
                reduction,
                ..Default::default()
            };
            let f = fast::binary_cross_entropy(&probs, &y, cols, &opts, true).expect("fast");
            let r = reference::binary_cross_entropy(&probs, &y, cols, &opts).expect("ref");
            check(&format!("bce loss {what}"), &f.loss, &r.loss);
            check(
                &format!("bce grad {what}"),
                f.grad.as_deref().unwrap_or_default(),
                &r.grad,
            );
            let opts = BinaryLossOptions {
                weight: Some(&w_full[..]),
                pos_weight: Some(&pos[..]),
                reduction,
                grad_scale: 0.5,
            };
            let f =
                fast::binary_cross_entropy_with_logits(&x, &y, cols, &opts, true).expect("fast");
            let r = reference::binary_cross_entropy_with_logits(&x, &y, cols, &opts).expect("ref");
            check(&format!("bce-logits loss {what}"), &f.loss, &r.loss);
            check(
                &format!("bce-logits grad {what}"),
                f.grad.as_deref().unwrap_or_default(),
                &r.grad,
            );
            for (alpha, gamma) in [(0.25, 2.0), (-1.0, 0.0), (0.5, 1.5)] {
                let opts = SigmoidFocalOptions {
                    alpha,
                    gamma,
                    reduction,
                    grad_scale: 1.0,
                };
                let f = fast::sigmoid_focal_loss(&x, &y, cols, &opts, true).expect("fast");
                let r = reference::sigmoid_focal_loss(&x, &y, cols, &opts).expect("ref");
                check(
                    &format!("focal loss {what} a{alpha} g{gamma}"),
                    &f.loss,
                    &r.loss,
                );
                check(
                    &format!("focal grad {what} a{alpha} g{gamma}"),
                    f.grad.as_deref().unwrap_or_default(),
                    &r.grad,
                );
                let loss_only = fast::sigmoid_focal_loss(&x, &y, cols, &opts, false).expect("fast");
                assert_eq!(
                    loss_only.loss, f.loss,
                    "{what}: loss-only equals loss + grad"
                );
            }
        }
    }
    // Bad options are the same errors as the GPU's.
    assert!(fast::binary_cross_entropy(&[1.5], &[0.0], 1, &Default::default(), true).is_err());
}

/// Found in review: rounding m + ln s to f32 before subtracting x cost the
/// whole result once the logits sit around 10^4.
#[test]
fn large_offset_logits_keep_their_precision() {
    let mut rng = Rng::new(505);
    let (rows, cols) = (16, 300);
    for offset in [2048.0f32, 10_000.0, -30_000.0] {
        let x: Vec<f32> = rng
            .vec_normal(rows * cols, 2.0)
            .iter()
            .map(|v| v + offset)
            .collect();
        let t: Vec<i64> = (0..rows).map(|_| rng.below(cols) as i64).collect();
        check(
            &format!("log_softmax offset {offset}"),
            &fast::log_softmax(&x, rows, cols).expect("fast"),
            &reference::log_softmax(&x, rows, cols).expect("ref"),
        );
        for opts in [
            CrossEntropyOptions {
                reduction: Reduction::None,
                ..Default::default()
            },
            CrossEntropyOptions {
                reduction: Reduction::None,
                label_smoothing: 0.2,
                z_loss: 1e-6,
                ..Default::default()
            },
        ] {
            let f = fast::cross_entropy(&x, &t, cols, &opts, true).expect("fast");
            let r = reference::cross_entropy(&x, &t, cols, &opts).expect("ref");
            check(&format!("ce loss offset {offset}"), &f.loss, &r.loss);
            check(
                &format!("ce grad offset {offset}"),
                f.grad.as_deref().unwrap_or_default(),
                &r.grad,
            );
        }
    }
}

#[test]
fn multiclass_focal_matches_the_reference() {
    use wgpu_loss::FocalOptions;
    let mut rng = Rng::new(506);
    for (rows, cols) in SHAPES {
        let x = rng.vec_normal(rows * cols, 4.0);
        let mut t: Vec<i64> = (0..rows).map(|_| rng.below(cols) as i64).collect();
        if rows > 2 {
            t[1] = -100;
        }
        let alpha: Vec<f32> = (0..cols).map(|_| rng.uniform(0.1, 1.0)).collect();
        for (k, opts) in [
            FocalOptions::default(),
            FocalOptions {
                gamma: 0.0,
                reduction: Reduction::Sum,
                ..Default::default()
            },
            FocalOptions {
                alpha: Some(&alpha[..]),
                gamma: 0.5,
                reduction: Reduction::None,
                grad_scale: 0.5,
                ..Default::default()
            },
        ]
        .iter()
        .enumerate()
        {
            let what = format!("focal {rows}x{cols} options #{k}");
            let f = fast::focal_loss(&x, &t, cols, opts, true).expect("fast");
            let r = reference::focal_loss(&x, &t, cols, opts).expect("ref");
            check(&format!("loss {what}"), &f.loss, &r.loss);
            check(&format!("lse {what}"), &f.lse, &r.lse);
            check(
                &format!("grad {what}"),
                f.grad.as_deref().unwrap_or_default(),
                &r.grad,
            );
            let loss_only = fast::focal_loss(&x, &t, cols, opts, false).expect("fast");
            assert!(loss_only.grad.is_none());
            assert_eq!(
                loss_only.loss, f.loss,
                "{what}: loss-only equals loss + grad"
            );
        }
    }
    // Non-finite rows follow the reference too. (A row with p_y within 1e-7
    // of 1 is past f32: its exp sum rounds to 1, so 1 - p_y is 0 in any f32
    // pass, this one and the GPU's.)
    let inf = f32::INFINITY;
    let x: Vec<f32> = [
        [3.0, 0.0, 0.0, 0.0],
        [1.0, f32::NAN, 3.0, 4.0],
        [1.0, inf, 3.0, 4.0],
        [-inf; 4],
    ]
    .concat();
    let t = vec![0i64; 4];
    let opts = FocalOptions {
        reduction: Reduction::None,
        ..Default::default()
    };
    let f = fast::focal_loss(&x, &t, 4, &opts, true).expect("fast");
    let r = reference::focal_loss(&x, &t, 4, &opts).expect("ref");
    check("focal non-finite loss", &f.loss, &r.loss);
    check(
        "focal non-finite grad",
        f.grad.as_deref().unwrap_or_default(),
        &r.grad,
    );
}

/// Found in review: with hard labels and confident predictions, `1 - p` and
/// `(1 - y) x + softplus(-x)` cancel in f32. GPU and fast CPU path must keep
/// the reference's digits there.
#[test]
fn confident_predictions_with_hard_labels_keep_their_digits() {
    use wgpu_loss::{BinaryLossOptions, Reduction, SigmoidFocalOptions};
    use wgpu_loss_cli::cpu_fast as fast;
    let Some(ctx) = gpu() else { return };
    let (rows, cols) = (8, 64);
    let n = rows * cols;
    // |x| in [6, 14], labels agreeing with the sign (tiny losses and
    // gradients everywhere, so the tolerance's scale is tiny too).
    let mut rng = Rng::new(808);
    let x: Vec<f32> = (0..n)
        .map(|_| {
            let v = rng.uniform(6.0, 14.0);
            if rng.below(2) == 0 {
                v
            } else {
                -v
            }
        })
        .collect();
    let y: Vec<f32> = x.iter().map(|&v| if v > 0.0 { 1.0 } else { 0.0 }).collect();
    let pos: Vec<f32> = (0..cols).map(|_| rng.uniform(0.5, 2.0)).collect();
    let opts = BinaryLossOptions {
        pos_weight: Some(&pos[..]),
        reduction: Reduction::None,
        ..Default::default()
    };
    let r = reference::binary_cross_entropy_with_logits(&x, &y, cols, &opts).expect("ref");
    let g = wgpu_loss::block_on(ctx.binary_cross_entropy_with_logits(
        &x,
        &y,
        cols,
        &opts,
        wgpu_loss::Request::LossAndGrad,
    ))
    .expect("gpu");
    assert_close("bce-logits loss", &g.loss, &r.loss);
    assert_close(
        "bce-logits grad",
        g.grad.as_deref().unwrap_or_default(),
        &r.grad,
    );
    let f = fast::binary_cross_entropy_with_logits(&x, &y, cols, &opts, true).expect("fast");
    assert_close("fast bce-logits loss", &f.loss, &r.loss);
    assert_close(
        "fast bce-logits grad",
        f.grad.as_deref().unwrap_or_default(),
        &r.grad,
    );
    for gamma in [0.0, 2.0] {
        let opts = SigmoidFocalOptions {
            gamma,
            ..Default::default()
        };
        let r = reference::sigmoid_focal_loss(&x, &y, cols, &opts).expect("ref");
        let g = wgpu_loss::block_on(ctx.sigmoid_focal_loss(
            &x,
            &y,
            cols,
            &opts,
            wgpu_loss::Request::LossAndGrad,
        ))
        .expect("gpu");
        assert_close("sigmoid-focal loss", &g.loss, &r.loss);
        assert_close(
            "sigmoid-focal grad",
            g.grad.as_deref().unwrap_or_default(),
            &r.grad,
        );
        let f = fast::sigmoid_focal_loss(&x, &y, cols, &opts, true).expect("fast");
        assert_close("fast sigmoid-focal loss", &f.loss, &r.loss);
        assert_close(
            "fast sigmoid-focal grad",
            f.grad.as_deref().unwrap_or_default(),
            &r.grad,
        );
    }
}

/// The backward passes `eval --device cpu` runs, against the reference on
/// the same forward output (the GPU tests' rule: the cancelling terms set
/// the scale of softmax and log-softmax backward).
#[test]
fn softmax_family_backward_matches_the_reference() {
    let mut rng = Rng::new(503);
    let max_abs = |v: &[f32]| v.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
    for (rows, cols) in SHAPES {
        let x = rng.vec_normal(rows * cols, 3.0);
        let dy = rng.vec_normal(rows * cols, 1.0);
        let dl = rng.vec_normal(rows, 1.0);
        let what = format!("{rows}x{cols}");
        let y = fast::softmax(&x, rows, cols).expect("fast");
        let got = fast::softmax_backward(&y, &dy, rows, cols).expect("fast");
        let want = reference::softmax_backward(&y, &dy, rows, cols).expect("ref");
        let terms = max_abs(&y) * max_abs(&dy);
        if let Some(m) = F32_TOLERANCE.first_mismatch_at_scale(&got, &want, terms) {
            panic!("softmax backward {what}: {m}");
        }
        let ly = fast::log_softmax(&x, rows, cols).expect("fast");
        let got = fast::log_softmax_backward(&ly, &dy, rows, cols).expect("fast");
        let want = reference::log_softmax_backward(&ly, &dy, rows, cols).expect("ref");
        let terms = max_abs(&dy) * cols as f64;
        if let Some(m) = F32_TOLERANCE.first_mismatch_at_scale(&got, &want, terms) {
            panic!("log-softmax backward {what}: {m}");
        }
        let lse = fast::logsumexp(&x, rows, cols).expect("fast");
        check(
            &format!("logsumexp backward {what}"),
            &fast::logsumexp_backward(&x, &lse, &dl, rows, cols).expect("fast"),
            &reference::logsumexp_backward(&x, &lse, &dl, rows, cols).expect("ref"),
        );
    }
    // Shapes are checked like everywhere else.
    assert!(fast::softmax_backward(&[0.5; 4], &[1.0; 3], 2, 2).is_err());
}

/// Probability targets on the fast path, every option, loss and gradient.
#[test]
fn probability_targets_match_the_reference() {
    let mut rng = Rng::new(504);
    for (rows, cols) in SHAPES {
        if rows * cols > 1 << 19 {
            continue; // the f64 reference dominates; long rows are covered above
        }
        let x = rng.vec_normal(rows * cols, 4.0);
        let mut q: Vec<f32> = (0..rows * cols).map(|_| rng.uniform(0.0, 1.0)).collect();
        for row in q.chunks_mut(cols) {
            let s: f32 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s);
        }
        let w: Vec<f32> = (0..cols).map(|_| rng.uniform(0.1, 2.0)).collect();
        let option_sets = [
            CrossEntropyOptions::default(),
            CrossEntropyOptions {
                weight: Some(&w[..]),
                label_smoothing: 0.2,
                reduction: Reduction::Sum,
                ..Default::default()
            },
            CrossEntropyOptions {
                z_loss: 1e-3,
                softcap: Some(5.0),
                reduction: Reduction::None,
                grad_scale: 0.5,
                ..Default::default()
            },
        ];
        for (k, opts) in option_sets.iter().enumerate() {
            let what = format!("{rows}x{cols} options {k}");
            let f = fast::cross_entropy_probs(&x, &q, cols, opts, true).expect("fast");
            let r = reference::cross_entropy_probs(&x, &q, cols, opts).expect("ref");
            check(&format!("loss {what}"), &f.loss, &r.loss);
            check(&format!("z-loss {what}"), &f.z_loss, &r.z_loss);
            check(&format!("lse {what}"), &f.lse, &r.lse);
            check(
                &format!("grad {what}"),
                f.grad.as_deref().unwrap_or_default(),
                &r.grad,
            );
            let loss_only = fast::cross_entropy_probs(&x, &q, cols, opts, false).expect("fast");
            assert!(loss_only.grad.is_none());
            assert_eq!(
                loss_only.loss, f.loss,
                "{what}: loss-only gives the same bits"
            );
        }
    }
    // Bad targets are the same error as on the GPU, naming the element.
    let e = fast::cross_entropy_probs(
        &[0.0; 4],
        &[0.5, -0.5, 0.5, 0.5],
        2,
        &Default::default(),
        true,
    )
    .unwrap_err();
    assert!(
        matches!(e, wgpu_loss::Error::InvalidValue { row: 0, col: 1, .. }),
        "{e}"
    );
}

/// BCE on probabilities as PyTorch computes it, `log1p(-p)`: f32's `1 - p`
/// is 1 below p = 2^-24 and the term vanished (issue 17).
#[test]
fn bce_on_tiny_probabilities_keeps_the_log1p_term() {
    let mut rng = Rng::new(1718);
    let p: Vec<f32> = (0..1000)
        .map(|_| 10f32.powf(rng.uniform(-12.0, -7.0)))
        .collect();
    let y = vec![0.0f32; p.len()];
    let opts = wgpu_loss::BinaryLossOptions {
        reduction: Reduction::None,
        ..Default::default()
    };
    let f = fast::binary_cross_entropy(&p, &y, 10, &opts, true).expect("fast");
    let r = reference::binary_cross_entropy(&p, &y, 10, &opts).expect("ref");
    check("bce loss, tiny p", &f.loss, &r.loss);
    check(
        "bce grad, tiny p",
        f.grad.as_deref().unwrap_or_default(),
        &r.grad,
    );
}
