//! The non-finite input policy (README, "Non-finite inputs"), op by op and row
//! by row: NaN and ±inf in logits reach the outputs the way PyTorch's
//! formulas take them, never as a silently finite number; non-finite
//! targets and weights are errors naming the row or index. GPU and reference
//! must also agree element by element (NaN with NaN, inf with inf).

#[path = "../../wgpu-loss/tests/common/mod.rs"]
mod common;

use common::gpu;
use wgpu_loss::{Error, Reduction, F32_TOLERANCE};
use wgpu_loss_cli::problem::{Op, Outputs, Problem, Settings, Target};
use wgpu_loss_cli::Error as CliError;

const INF: f32 = f32::INFINITY;
const NAN: f32 = f32::NAN;
const COLS: usize = 4;

/// Row 0 finite, 1 has a NaN, 2 a +inf, 3 a -inf (a mask), 4 is all -inf.
fn logits() -> Vec<f32> {
    [
        [1.0, 2.0, 3.0, 4.0],
        [1.0, NAN, 3.0, 4.0],
        [1.0, INF, 3.0, 4.0],
        [1.0, -INF, 3.0, 4.0],
        [-INF; 4],
    ]
    .concat()
}

const ROWS: usize = 5;

fn run(p: &Problem) -> Outputs<f32> {
    let ctx = gpu().expect("checked by the caller");
    let gpu = p.run_gpu_sync(ctx).expect("GPU runs");
    let reference = p.run_reference().expect("reference runs");
    if let Some(m) = F32_TOLERANCE.first_mismatch(&gpu.output, &reference.output) {
        panic!("{} output: {m}", p.op.name());
    }
    if let (Some(g), Some(r)) = (&gpu.grad, &reference.grad) {
        if let Some(m) = F32_TOLERANCE.first_mismatch(g, r) {
            panic!("{} grad: {m}", p.op.name());
        }
    }
    gpu
}

fn row(v: &[f32], i: usize) -> &[f32] {
    &v[i * COLS..(i + 1) * COLS]
}

fn all(v: &[f32], f: impl Fn(f32) -> bool) -> bool {
    v.iter().all(|&x| f(x))
}

fn per_row(op: Op) -> Problem {
    let mut p = Problem::new(op, ROWS, COLS, logits());
    if op.is_row_loss() {
        p.target = Some(Target::Classes(vec![0; ROWS]));
        p.settings.reduction = Reduction::None;
    }
    p
}

#[test]
fn softmax_family_rows() {
    if gpu().is_none() {
        return;
    }
    for op in [Op::Softmax, Op::LogSoftmax] {
        let out = run(&per_row(op)).output;
        let name = op.name();
        assert!(all(row(&out, 0), f32::is_finite), "{name}: finite row");
        assert!(all(row(&out, 1), f32::is_nan), "{name}: NaN row is all NaN");
        assert!(
            all(row(&out, 2), f32::is_nan),
            "{name}: +inf row is NaN (inf - inf)"
        );
        let masked = row(&out, 3);
        let zero = if op == Op::Softmax { 0.0 } else { -INF };
        assert_eq!(masked[1], zero, "{name}: a -inf entry is masked out");
        assert!(masked[0].is_finite() && masked[2].is_finite() && masked[3].is_finite());
        assert!(
            all(row(&out, 4), f32::is_nan),
            "{name}: all -inf row is NaN"
        );
    }
    let lse = run(&per_row(Op::Logsumexp)).output;
    assert!(lse[0].is_finite() && lse[1].is_nan() && lse[3].is_finite());
    assert_eq!(
        (lse[2], lse[4]),
        (INF, -INF),
        "logsumexp of +inf / all -inf rows"
    );
    // Backward through a masked entry gives it no gradient.
    let p = Problem {
        grad_output: Some(vec![1.0; ROWS * COLS]),
        ..per_row(Op::LogSoftmax)
    };
    let grad = run(&p).grad.expect("backward");
    assert!(all(row(&grad, 0), f32::is_finite));
    assert!(all(row(&grad, 1), f32::is_nan), "NaN row: NaN gradient");
}

#[test]
fn row_losses_rows() {
    if gpu().is_none() {
        return;
    }
    for op in [Op::CrossEntropy, Op::Focal] {
        let name = op.name();
        let out = run(&per_row(op));
        let (loss, grad) = (out.output, out.grad.expect("grad"));
        assert!(
            loss[0].is_finite() && all(row(&grad, 0), f32::is_finite),
            "{name}"
        );
        assert!(
            loss[1].is_nan() && all(row(&grad, 1), f32::is_nan),
            "{name}: NaN row"
        );
        assert_eq!(loss[2], INF, "{name}: a +inf rival logit makes p_y = 0");
        assert!(loss[3].is_finite(), "{name}: masked row");
        assert_eq!(
            row(&grad, 3)[1],
            0.0,
            "{name}: masked entry has no gradient"
        );
        assert!(
            loss[4].is_nan() && all(row(&grad, 4), f32::is_nan),
            "{name}: all -inf row"
        );
        // No silent skipping: one NaN row makes the mean NaN ...
        let mean = run(&Problem {
            settings: Settings::default(),
            ..per_row(op)
        });
        assert!(mean.output[0].is_nan(), "{name}: mean over a NaN row");
        // ... unless that row is ignored, which PyTorch excludes entirely.
        let p = Problem {
            input: logits()[..2 * COLS].to_vec(),
            rows: 2,
            target: Some(Target::Classes(vec![0, -100])),
            settings: Settings::default(),
            ..per_row(op)
        };
        let ignored = run(&p);
        assert!(ignored.output[0].is_finite(), "{name}: ignored NaN row");
        assert!(
            row(ignored.grad.as_deref().unwrap_or_default(), 1) == [0.0; 4],
            "{name}: ignored row has zero gradient"
        );
    }
}

#[test]
fn elementwise_losses_elements() {
    if gpu().is_none() {
        return;
    }
    for op in [Op::BceWithLogits, Op::SigmoidFocal] {
        let name = op.name();
        let p = Problem {
            target: Some(Target::Values(vec![1.0; ROWS * COLS])),
            settings: Settings {
                reduction: Reduction::None,
                ..Settings::default()
            },
            ..Problem::new(op, ROWS, COLS, logits())
        };
        let out = run(&p);
        let (loss, grad) = (out.output, out.grad.expect("grad"));
        assert!(all(row(&loss, 0), f32::is_finite), "{name}");
        // Only the NaN element is NaN.
        assert!(
            loss[COLS + 1].is_nan() && grad[COLS + 1].is_nan(),
            "{name}: NaN element"
        );
        assert!(
            loss[COLS].is_finite() && loss[COLS + 2].is_finite(),
            "{name}: neighbours"
        );
        // An infinite logit: PyTorch's formula (1 - y)·x + log(1 + e^-x) meets
        // 0·inf, so the loss is NaN, as in PyTorch; the gradient
        // sigmoid(x) - y stays finite.
        assert!(loss[2 * COLS + 1].is_nan(), "{name}: +inf logit, target 1");
        assert_eq!(grad[2 * COLS + 1], 0.0, "{name}: +inf logit, target 1");
        assert!(loss[3 * COLS + 1].is_nan(), "{name}: -inf logit, target 1");
        assert!(
            grad[3 * COLS + 1].is_finite(),
            "{name}: -inf logit, target 1"
        );
    }
}

#[test]
fn non_finite_targets_and_weights_are_errors_naming_the_place() {
    if gpu().is_none() {
        return;
    }
    let ctx = gpu().expect("checked");
    let x = vec![0.5f32; 8];
    for bad in [NAN, INF, -INF] {
        let mut t = vec![0.25f32; 8];
        t[5] = bad;
        for op in [
            Op::CrossEntropy,
            Op::BinaryCrossEntropy,
            Op::BceWithLogits,
            Op::SigmoidFocal,
        ] {
            let p = Problem {
                target: Some(Target::Values(t.clone())),
                ..Problem::new(op, 2, 4, x.clone())
            };
            match p.run_gpu_sync(ctx) {
                Err(CliError::Loss(Error::InvalidValue { row: 1, col: 1, .. })) => {}
                other => panic!("{} target {bad}: {other:?}", op.name()),
            }
        }
        let w = vec![1.0, bad, 1.0, 1.0];
        for op in [Op::CrossEntropy, Op::BinaryCrossEntropy, Op::BceWithLogits] {
            let target = if op == Op::CrossEntropy {
                Target::Classes(vec![0, 1])
            } else {
                Target::Values(vec![0.25; 8])
            };
            let p = Problem {
                target: Some(target),
                weight: Some(w.clone()),
                ..Problem::new(op, 2, 4, x.clone())
            };
            match p.run_gpu_sync(ctx) {
                Err(CliError::Loss(Error::InvalidWeight { index: 1, .. })) => {}
                other => panic!("{} weight {bad}: {other:?}", op.name()),
            }
        }
        let p = Problem {
            target: Some(Target::Values(vec![0.25; 8])),
            pos_weight: Some(w.clone()),
            ..Problem::new(Op::BceWithLogits, 2, 4, x.clone())
        };
        assert!(matches!(
            p.run_gpu_sync(ctx),
            Err(CliError::Loss(Error::InvalidWeight { index: 1, .. }))
        ));
        let p = Problem {
            target: Some(Target::Classes(vec![0, 1])),
            weight: Some(w),
            ..Problem::new(Op::Focal, 2, 4, x.clone())
        };
        assert!(matches!(
            p.run_gpu_sync(ctx),
            Err(CliError::Loss(Error::InvalidOption { name: "alpha", .. }))
        ));
        // Probabilities for BCE must lie in [0, 1]: non-finite ones are errors too.
        let mut probs = vec![0.5f32; 8];
        probs[6] = bad;
        let p = Problem {
            input: probs,
            target: Some(Target::Values(vec![0.25; 8])),
            ..Problem::new(Op::BinaryCrossEntropy, 2, 4, x.clone())
        };
        assert!(matches!(
            p.run_gpu_sync(ctx),
            Err(CliError::Loss(Error::InvalidValue { row: 1, col: 2, .. }))
        ));
    }
}
