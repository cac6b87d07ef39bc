//! The crate's losses on burn tensors against burn's own `CrossEntropyLoss`
//! and autodiff (the options burn has), and against the f64 reference (the
//! options it lacks), on lavapipe or whatever adapter burn picks.

mod common;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Int, Tensor, TensorData};
use common::{assert_close, assert_loss_and_grad, devices, host, widen, Rng};
use wgpu_loss::{reference, F32_TOLERANCE};
use wgpu_loss_burn::{
    binary_cross_entropy_with_logits, cross_entropy, cross_entropy_probs, focal_loss,
    linear_cross_entropy, sigmoid_focal_loss, BinaryLossOptions, CrossEntropyOptions, Error,
    FocalOptions, LinearCrossEntropyOptions, Reduction, SigmoidFocalOptions,
};

fn matrix(values: &[f32], rows: usize, cols: usize, device: &burn::tensor::Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values.to_vec(), [rows, cols]), device)
}

fn indices(values: &[i64], device: &burn::tensor::Device) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

#[derive(Clone, Copy, Debug)]
enum BurnOption {
    Plain,
    Weights,
    Smoothing,
    Pad,
    All,
}

#[test]
fn cross_entropy_matches_burn_values_and_gradients() {
    let Some((_, ad)) = devices() else { return };
    // One column, odd sizes, GPT-2's vocabulary, rows past 65,535.
    let shapes = [(1, 1), (7, 5), (64, 1000), (5, 50257), (70_000, 3)];
    for (s, &(n, c)) in shapes.iter().enumerate() {
        for (o, option) in [
            BurnOption::Plain,
            BurnOption::Weights,
            BurnOption::Smoothing,
            BurnOption::Pad,
            BurnOption::All,
        ]
        .into_iter()
        .enumerate()
        {
            // With one class every row would be the pad token.
            if c == 1 && matches!(option, BurnOption::Pad | BurnOption::All) {
                continue;
            }
            let mut rng = Rng::new(1000 + 10 * s as u64 + o as u64);
            let logits = rng.floats(n * c, -4.0, 4.0);
            let targets: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
            let weights = rng.floats(c, 0.5, 2.0);
            let pad = targets[0];
            let (use_weights, smoothing, use_pad) = match option {
                BurnOption::Plain => (false, 0.0, false),
                BurnOption::Weights => (true, 0.0, false),
                BurnOption::Smoothing => (false, 0.1, false),
                BurnOption::Pad => (false, 0.0, true),
                BurnOption::All => (true, 0.1, true),
            };
            let what = format!("{n}x{c} {option:?}");

            // burn's composition, through its autodiff.
            let x = matrix(&logits, n, c, &ad).require_grad();
            let config = CrossEntropyLossConfig::new()
                .with_weights(use_weights.then(|| weights.clone()))
                .with_smoothing((smoothing > 0.0).then_some(smoothing))
                .with_pad_tokens(use_pad.then(|| vec![pad as usize]));
            let burn_loss = config.init(&ad).forward(x.clone(), indices(&targets, &ad));
            let burn_grads = burn_loss.backward();
            let burn_grad = host(x.grad(&burn_grads).expect("burn's gradient"));
            let burn_loss = host(burn_loss);

            // This crate's fused kernel, through the same autodiff.
            let y = matrix(&logits, n, c, &ad).require_grad();
            let weight = Tensor::<1>::from_floats(weights.as_slice(), &ad);
            let options = CrossEntropyOptions {
                weight: use_weights.then_some(&weight),
                label_smoothing: smoothing,
                ignore_index: if use_pad { pad } else { -100 },
                ..Default::default()
            };
            let loss = cross_entropy(y.clone(), indices(&targets, &ad), &options)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(loss.dims(), [1], "{what}: a reduced loss is [1], as burn's");
            let grads = loss.backward();
            let grad = host(y.grad(&grads).expect("our gradient"));
            let loss = host(loss);

            assert_loss_and_grad(
                &what,
                (&loss, &grad),
                (&widen(&burn_loss), &widen(&burn_grad)),
                F32_TOLERANCE,
            );
        }
    }
}

#[test]
fn options_burn_lacks_match_the_f64_reference() {
    let Some((_, ad)) = devices() else { return };
    let (n, c) = (37, 301);
    let mut rng = Rng::new(7);
    let logits = rng.floats(n * c, -6.0, 6.0);
    let mut targets: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    targets[3] = -100;
    let upstream = rng.floats(n, -2.0, 2.0);

    for (reduction, scale) in [
        (Reduction::Mean, 1.0f32),
        (Reduction::Sum, 3.0),
        (Reduction::None, 1.0),
    ] {
        let what = format!("z-loss + softcap + smoothing, {reduction:?}");
        let options = CrossEntropyOptions::<Tensor<1>> {
            label_smoothing: 0.05,
            z_loss: 1e-3,
            softcap: Some(15.0),
            reduction,
            ..Default::default()
        };
        let x = matrix(&logits, n, c, &ad).require_grad();
        let loss = cross_entropy(x.clone(), indices(&targets, &ad), &options).expect("loss");
        // A reduced loss scaled by 3 (a host-read upstream gradient that is
        // not 1); per-row losses weighted row by row (upstream on the device).
        let root = match reduction {
            Reduction::None => {
                (loss.clone() * Tensor::<1>::from_floats(upstream.as_slice(), &ad)).sum()
            }
            _ => loss.clone() * scale,
        };
        let grads = root.backward();
        let grad = host(x.grad(&grads).expect("gradient"));
        let loss = host(loss);

        let expected =
            reference::cross_entropy(&logits, &targets, c, &options.with_weight::<[f32]>(None))
                .expect("reference");
        let expected_grad: Vec<f64> = match reduction {
            Reduction::None => expected
                .grad
                .iter()
                .enumerate()
                .map(|(i, g)| g * f64::from(upstream[i / c]))
                .collect(),
            _ => expected.grad.iter().map(|g| g * f64::from(scale)).collect(),
        };
        let expected_loss = match reduction {
            Reduction::None => expected.loss.clone(),
            _ => expected.loss[..1].to_vec(),
        };
        assert_loss_and_grad(
            &what,
            (&loss, &grad),
            (&expected_loss, &expected_grad),
            F32_TOLERANCE,
        );
    }
}

#[test]
fn the_other_row_losses_match_the_f64_reference() {
    let Some((_, ad)) = devices() else { return };
    let (n, c) = (19, 45);
    let mut rng = Rng::new(11);
    let logits = rng.floats(n * c, -5.0, 5.0);
    let targets: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    let alpha = rng.floats(c, 0.1, 1.0);
    let binary_targets: Vec<f32> = (0..n * c)
        .map(|_| if rng.below(3) == 0 { 1.0 } else { 0.0 })
        .collect();
    let pos_weight = rng.floats(c, 0.5, 3.0);
    let mut probs = rng.floats(n * c, 0.0, 1.0);
    for row in probs.chunks_mut(c) {
        let s: f32 = row.iter().sum();
        row.iter_mut().for_each(|p| *p /= s);
    }

    // Multiclass focal loss with per-class alpha.
    let x = matrix(&logits, n, c, &ad).require_grad();
    let alpha_t = Tensor::<1>::from_floats(alpha.as_slice(), &ad);
    let options = FocalOptions {
        alpha: Some(&alpha_t),
        gamma: 2.0,
        reduction: Reduction::Mean,
        ..Default::default()
    };
    let loss = focal_loss(x.clone(), indices(&targets, &ad), &options).expect("focal");
    let grad = host(x.grad(&loss.backward()).expect("gradient"));
    let expected = reference::focal_loss(
        &logits,
        &targets,
        c,
        &FocalOptions {
            alpha: Some(alpha.as_slice()),
            gamma: 2.0,
            reduction: Reduction::Mean,
            ..Default::default()
        },
    )
    .expect("reference");
    assert_loss_and_grad(
        "focal",
        (&host(loss), &grad),
        (&expected.loss[..1], &expected.grad),
        F32_TOLERANCE,
    );

    // Probability targets.
    let x = matrix(&logits, n, c, &ad).require_grad();
    let options = CrossEntropyOptions::<Tensor<1>> {
        label_smoothing: 0.1,
        ..Default::default()
    };
    let loss = cross_entropy_probs(x.clone(), matrix(&probs, n, c, &ad), &options).expect("probs");
    let grad = host(x.grad(&loss.backward()).expect("gradient"));
    let expected =
        reference::cross_entropy_probs(&logits, &probs, c, &options.with_weight::<[f32]>(None))
            .expect("reference");
    assert_loss_and_grad(
        "probability-target",
        (&host(loss), &grad),
        (&expected.loss[..1], &expected.grad),
        F32_TOLERANCE,
    );

    // Binary cross-entropy with logits and pos_weight, element losses
    // weighted by an upstream gradient.
    let x = matrix(&logits, n, c, &ad).require_grad();
    let pw = Tensor::<1>::from_floats(pos_weight.as_slice(), &ad);
    let options = BinaryLossOptions {
        pos_weight: Some(&pw),
        reduction: Reduction::None,
        ..Default::default()
    };
    let loss =
        binary_cross_entropy_with_logits(x.clone(), matrix(&binary_targets, n, c, &ad), &options)
            .expect("bce");
    let upstream = rng.floats(n * c, -1.0, 1.0);
    let root = (loss.clone() * Tensor::<1>::from_floats(upstream.as_slice(), &ad)).sum();
    let grad = host(x.grad(&root.backward()).expect("gradient"));
    let expected = reference::binary_cross_entropy_with_logits(
        &logits,
        &binary_targets,
        c,
        &BinaryLossOptions {
            pos_weight: Some(pos_weight.as_slice()),
            reduction: Reduction::None,
            ..Default::default()
        },
    )
    .expect("reference");
    let expected_grad: Vec<f64> = expected
        .grad
        .iter()
        .zip(&upstream)
        .map(|(g, u)| g * f64::from(*u))
        .collect();
    assert_loss_and_grad(
        "bce-with-logits",
        (&host(loss), &grad),
        (&expected.loss, &expected_grad),
        F32_TOLERANCE,
    );

    // torchvision's sigmoid focal loss.
    let x = matrix(&logits, n, c, &ad).require_grad();
    let options = SigmoidFocalOptions {
        reduction: Reduction::Sum,
        ..Default::default()
    };
    let loss = sigmoid_focal_loss(x.clone(), matrix(&binary_targets, n, c, &ad), &options)
        .expect("sigmoid focal");
    let grad = host(x.grad(&loss.backward()).expect("gradient"));
    let expected =
        reference::sigmoid_focal_loss(&logits, &binary_targets, c, &options).expect("reference");
    assert_loss_and_grad(
        "sigmoid focal",
        (&host(loss), &grad),
        (&expected.loss[..1], &expected.grad),
        F32_TOLERANCE,
    );
}

#[test]
fn linear_cross_entropy_matches_burn_matmul_then_cross_entropy() {
    let Some((_, ad)) = devices() else { return };
    let (n, d, v) = (45, 70, 301);
    let mut rng = Rng::new(23);
    let hidden = rng.floats(n * d, -1.0, 1.0);
    let classifier = rng.floats(v * d, -0.2, 0.2);
    let bias = rng.floats(v, -0.5, 0.5);
    let targets: Vec<i64> = (0..n).map(|_| rng.below(v) as i64).collect();

    let (h, w) = (
        matrix(&hidden, n, d, &ad).require_grad(),
        matrix(&classifier, v, d, &ad).require_grad(),
    );
    let b = Tensor::<1>::from_floats(bias.as_slice(), &ad).require_grad();
    let logits = h.clone().matmul(w.clone().transpose()) + b.clone().unsqueeze::<2>();
    let burn_loss = CrossEntropyLossConfig::new()
        .init(&ad)
        .forward(logits, indices(&targets, &ad));
    let grads = burn_loss.backward();
    let burn = [
        host(h.grad(&grads).expect("dH")),
        host(w.grad(&grads).expect("dW")),
        host(b.grad(&grads).expect("db")),
    ];

    let (h, w) = (
        matrix(&hidden, n, d, &ad).require_grad(),
        matrix(&classifier, v, d, &ad).require_grad(),
    );
    let b = Tensor::<1>::from_floats(bias.as_slice(), &ad).require_grad();
    let loss = linear_cross_entropy(
        h.clone(),
        w.clone(),
        Some(b.clone()),
        indices(&targets, &ad),
        &LinearCrossEntropyOptions::default(),
    )
    .expect("linear cross-entropy");
    let grads = loss.backward();
    let ours = [
        host(h.grad(&grads).expect("dH")),
        host(w.grad(&grads).expect("dW")),
        host(b.grad(&grads).expect("db")),
    ];
    assert_close(
        "linear CE loss",
        &host(loss),
        &widen(&host(burn_loss)),
        F32_TOLERANCE,
    );
    for (name, (o, e)) in ["dH", "dW", "db"].iter().zip(ours.iter().zip(&burn)) {
        // Both sides are f32 products over D (or N) terms: the tolerance
        // policy's product rule, with burn's own rounding on the other side.
        let scale = wgpu_loss::tolerance::product_scale(d.max(n), common::max_abs(e) * 4.0);
        if let Some(m) = F32_TOLERANCE.first_mismatch_at_scale(o, &widen(e), scale) {
            panic!("linear CE {name}: {m}");
        }
    }
}

#[test]
fn strided_and_offset_tensors_give_the_contiguous_result() {
    let Some((_, ad)) = devices() else { return };
    let (n, c) = (33, 129);
    let mut rng = Rng::new(5);
    let logits = rng.floats(n * c, -3.0, 3.0);
    let targets: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    let options = CrossEntropyOptions::<Tensor<1>>::default();
    let expected =
        reference::cross_entropy(&logits, &targets, c, &options.with_weight::<[f32]>(None))
            .expect("reference");

    // A transposed view: stored [C, N], read as [N, C].
    let mut transposed = vec![0.0; n * c];
    for i in 0..n {
        for j in 0..c {
            transposed[j * n + i] = logits[i * c + j];
        }
    }
    let t = matrix(&transposed, c, n, &ad).require_grad();
    let loss =
        cross_entropy(t.clone().transpose(), indices(&targets, &ad), &options).expect("transposed");
    let grad_t = host(t.grad(&loss.backward()).expect("gradient"));
    assert_close(
        "transposed loss",
        &host(loss),
        &expected.loss[..1],
        F32_TOLERANCE,
    );
    let expected_t: Vec<f64> = (0..n * c)
        .map(|k| expected.grad[(k % n) * c + k / n])
        .collect();
    assert_close("transposed grad", &grad_t, &expected_t, F32_TOLERANCE);

    // Rows 1..=n of a taller matrix: a slice that starts one row in.
    let mut taller = rng.floats(c, -3.0, 3.0);
    taller.extend_from_slice(&logits);
    let tall = matrix(&taller, n + 1, c, &ad);
    let loss = cross_entropy(tall.narrow(0, 1, n), indices(&targets, &ad), &options)
        .expect("offset slice");
    assert_close(
        "offset-slice loss",
        &host(loss),
        &expected.loss[..1],
        F32_TOLERANCE,
    );
}

#[test]
fn burn_work_before_and_after_is_ordered_with_ours() {
    let Some((plain, _)) = devices() else { return };
    let (n, c) = (64, 257);
    let mut rng = Rng::new(9);
    let base = rng.floats(n * c, -2.0, 2.0);
    let targets: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    // Lazy, fusable burn work produces the logits; burn work consumes the loss.
    let logits = matrix(&base, n, c, &plain) * 1.5 - 0.25;
    let options = CrossEntropyOptions::<Tensor<1>> {
        reduction: Reduction::None,
        ..Default::default()
    };
    let loss = cross_entropy(logits, indices(&targets, &plain), &options).expect("loss");
    let doubled = host(loss * 2.0 + 1.0);

    let shifted: Vec<f32> = base.iter().map(|x| x * 1.5 - 0.25).collect();
    let expected =
        reference::cross_entropy(&shifted, &targets, c, &options.with_weight::<[f32]>(None))
            .expect("reference");
    let expected: Vec<f64> = expected.loss.iter().map(|l| 2.0 * l + 1.0).collect();
    assert_close("burn -> ours -> burn", &doubled, &expected, F32_TOLERANCE);
}

#[test]
fn results_are_bitwise_reproducible() {
    let Some((plain, _)) = devices() else { return };
    let (n, c) = (300, 1001);
    let mut rng = Rng::new(31);
    let logits = rng.floats(n * c, -8.0, 8.0);
    let targets: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    let options = CrossEntropyOptions::<Tensor<1>> {
        label_smoothing: 0.1,
        ..Default::default()
    };
    let run = || {
        host(
            cross_entropy(
                matrix(&logits, n, c, &plain),
                indices(&targets, &plain),
                &options,
            )
            .expect("loss"),
        )
    };
    let (a, b) = (run(), run());
    assert_eq!(a[0].to_bits(), b[0].to_bits(), "{a:?} vs {b:?}");
}

#[test]
fn bad_input_names_the_problem() {
    let Some((plain, _)) = devices() else { return };
    let logits = matrix(&[0.0; 12], 3, 4, &plain);
    let err = cross_entropy(
        logits.clone(),
        indices(&[0, 1], &plain),
        &CrossEntropyOptions::default(),
    )
    .expect_err("two targets for three rows");
    assert!(matches!(err, Error::Shape(_)), "{err}");
    assert!(
        err.to_string().contains("`targets` has 2 elements"),
        "{err}"
    );

    let weight = Tensor::<1>::from_floats([1.0, 2.0], &plain);
    let options = CrossEntropyOptions {
        weight: Some(&weight),
        ..Default::default()
    };
    let err = cross_entropy(logits.clone(), indices(&[0, 1, 2], &plain), &options)
        .expect_err("two weights for four classes");
    assert!(err.to_string().contains("`weight` has 2 elements"), "{err}");

    let options = CrossEntropyOptions::<Tensor<1>> {
        label_smoothing: 1.5,
        ..Default::default()
    };
    let err =
        cross_entropy(logits, indices(&[0, 1, 2], &plain), &options).expect_err("smoothing past 1");
    assert!(matches!(err, Error::Loss(_)), "{err}");
}

#[test]
fn targets_of_any_int_dtype_and_16_bit_logits() {
    let Some((_, ad)) = devices() else { return };
    let (n, c) = (41, 67);
    let mut rng = Rng::new(17);
    let logits = rng.floats(n * c, -3.0, 3.0);
    let targets: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    let options = CrossEntropyOptions::<Tensor<1>>::default();
    let expected =
        reference::cross_entropy(&logits, &targets, c, &options.with_weight::<[f32]>(None))
            .expect("reference");

    // i64 class indices are cast to i32 once, on the device.
    let wide = indices(&targets, &ad).cast(burn::tensor::IntDType::I64);
    assert_eq!(wide.dtype(), burn::tensor::DType::I64);
    let x = matrix(&logits, n, c, &ad).require_grad();
    let loss = cross_entropy(x.clone(), wide, &options).expect("i64 targets");
    let grad = host(x.grad(&loss.backward()).expect("gradient"));
    assert_loss_and_grad(
        "i64-target",
        (&host(loss), &grad),
        (&expected.loss[..1], &expected.grad),
        F32_TOLERANCE,
    );

    // f16 logits: an f16 gradient, as in PyTorch. (burn cannot make bf16
    // tensors where CubeCL compiles WGSL: WGSL has no bf16, and CubeCL's
    // cast kernel does not compile there.)
    let rounded: Vec<f32> = logits
        .iter()
        .map(|v| wgpu_loss::half::f16::from_f32(*v).to_f32())
        .collect();
    let expected =
        reference::cross_entropy(&rounded, &targets, c, &options.with_weight::<[f32]>(None))
            .expect("reference");
    let x = matrix(&logits, n, c, &ad)
        .cast(burn::tensor::FloatDType::F16)
        .require_grad();
    let loss = cross_entropy(x.clone(), indices(&targets, &ad), &options).expect("f16 logits");
    let grad = x.grad(&loss.backward()).expect("gradient");
    assert_eq!(
        grad.dtype(),
        burn::tensor::DType::F16,
        "the gradient keeps the logits' dtype"
    );
    assert_loss_and_grad(
        "f16",
        (&host(loss), &host(grad)),
        (&expected.loss[..1], &expected.grad),
        wgpu_loss::F16_TOLERANCE,
    );

    // A dtype burn's device cannot store is refused, not read.
    if !ad.supports_dtype(burn::tensor::DType::BF16) {
        let x = matrix(&logits, n, c, &ad).cast(burn::tensor::FloatDType::BF16);
        let err = cross_entropy(x, indices(&targets, &ad), &options)
            .expect_err("bf16 that burn cannot store");
        assert!(
            matches!(
                err,
                Error::DType {
                    tensor: "logits",
                    ..
                }
            ),
            "{err}"
        );
    } else {
        eprintln!("burn's device stores bf16 here: the refusal is not exercised");
    }
}

#[test]
fn gradient_checkpointing_gives_the_same_gradient() {
    let Some((plain, ad)) = devices() else { return };
    let balanced = plain.autodiff().gradient_checkpointing();
    let (n, c) = (29, 113);
    let mut rng = Rng::new(41);
    let logits = rng.floats(n * c, -4.0, 4.0);
    let targets: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    let options = CrossEntropyOptions::<Tensor<1>> {
        label_smoothing: 0.1,
        ..Default::default()
    };
    let grad_on = |device: &burn::tensor::Device| {
        // A burn op before ours, so that checkpointing has something to recompute.
        let x = matrix(&logits, n, c, device).require_grad();
        let loss = cross_entropy(x.clone().exp().log(), indices(&targets, device), &options)
            .expect("loss");
        host(x.grad(&loss.backward()).expect("gradient"))
    };
    let (plain_grad, checkpointed) = (grad_on(&ad), grad_on(&balanced));
    assert_close(
        "checkpointed grad",
        &checkpointed,
        &widen(&plain_grad),
        F32_TOLERANCE,
    );
}

#[test]
fn a_million_columns_and_no_rows() {
    let Some((plain, ad)) = devices() else { return };
    // Rows of a million classes, against the f64 reference (burn's own
    // gradient here has exact zeros where softmax is about 3e-6: it is not
    // a reference at this width).
    let (n, c) = (2, 1_000_000);
    let mut rng = Rng::new(43);
    let logits = rng.floats(n * c, -8.0, 8.0);
    let targets = vec![17i64, 999_999];
    let options = CrossEntropyOptions::<Tensor<1>>::default();
    let y = matrix(&logits, n, c, &ad).require_grad();
    let loss =
        cross_entropy(y.clone(), indices(&targets, &ad), &options).expect("a million columns");
    let grad = host(y.grad(&loss.backward()).expect("our gradient"));
    let expected =
        reference::cross_entropy(&logits, &targets, c, &options.with_weight::<[f32]>(None))
            .expect("reference");
    assert_loss_and_grad(
        "2x1000000",
        (&host(loss), &grad),
        (&expected.loss[..1], &expected.grad),
        F32_TOLERANCE,
    );

    // No rows: an empty per-row loss, or the library's answer for a mean
    // over nothing; never a panic.
    let empty = Tensor::<2>::zeros([0, 5], &plain);
    let none = CrossEntropyOptions::<Tensor<1>> {
        reduction: Reduction::None,
        ..Default::default()
    };
    match cross_entropy(empty.clone(), Tensor::<1, Int>::zeros([0], &plain), &none) {
        Ok(loss) => assert_eq!(loss.dims(), [0]),
        Err(e) => assert!(matches!(e, Error::Loss(_)), "{e}"),
    }
}
