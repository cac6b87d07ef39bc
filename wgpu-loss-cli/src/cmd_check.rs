//! `wgpu-loss check`: every op and loss on the chosen adapter against the f64
//! CPU reference, over awkward shapes and option sets, with a pass/fail table.

use std::process::ExitCode;

use wgpu_loss::tolerance::{max_abs_error, F32_TOLERANCE};
use wgpu_loss::Reduction;
use wgpu_loss_cli::problem::{Op, Outputs, Problem, Settings, Target};

#[derive(clap::Args)]
pub struct CheckArgs {
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Shapes: one element, sizes that are not multiples of the workgroup size or
/// of 4, a row past 256 · 1000, and many short rows.
const SHAPES: [(usize, usize); 5] = [(1, 1), (3, 7), (5, 1000), (2, 4099), (1, 300_001)];
const MANY_ROWS: (usize, usize) = (3000, 5);

/// SplitMix64: small, seeded, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }

    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.range(lo, hi)).collect()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Case {
    label: String,
    problem: Problem,
}

fn cases(seed: u64) -> Vec<Case> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut shapes = SHAPES.to_vec();
    shapes.push(MANY_ROWS);
    for op in Op::ALL {
        for &(rows, cols) in &shapes {
            for (label, problem) in variants(op, rows, cols, &mut rng) {
                out.push(Case {
                    label: format!("{:<21} {:>10} {label}", op.name(), format!("{rows}x{cols}")),
                    problem,
                });
            }
        }
    }
    out
}

fn variants(op: Op, rows: usize, cols: usize, rng: &mut Rng) -> Vec<(String, Problem)> {
    let n = rows * cols;
    let logits = rng.vec(n, -8.0, 8.0);
    let base = Problem::new(op, rows, cols, logits.clone());
    let classes: Vec<i64> = (0..rows).map(|_| rng.below(cols) as i64).collect();
    let labels = rng.vec(n, 0.0, 1.0);
    let with = |settings: Settings| Problem {
        settings,
        ..base.clone()
    };
    match op {
        Op::Softmax | Op::LogSoftmax => vec![(
            "forward + backward".into(),
            Problem {
                grad_output: Some(rng.vec(n, -1.0, 1.0)),
                ..base
            },
        )],
        Op::Logsumexp => vec![(
            "forward + backward".into(),
            Problem {
                grad_output: Some(rng.vec(rows, -1.0, 1.0)),
                ..base
            },
        )],
        Op::CrossEntropy | Op::CrossEntropyLoss => {
            let mut ignored = classes.clone();
            ignored[rows / 2] = 7;
            let soft: Vec<f32> = {
                let raw = rng.vec(n, 0.0, 1.0);
                raw.chunks(cols)
                    .flat_map(|r| {
                        let s: f32 = r.iter().sum();
                        r.iter().map(move |v| v / s).collect::<Vec<_>>()
                    })
                    .collect()
            };
            vec![
                (
                    "index targets".into(),
                    Problem {
                        target: Some(Target::Classes(classes.clone())),
                        ..base.clone()
                    },
                ),
                (
                    "weights, ignore_index 7, smoothing 0.1, sum".into(),
                    Problem {
                        target: Some(Target::Classes(ignored)),
                        weight: Some(rng.vec(cols, 0.1, 2.0)),
                        ..with(Settings {
                            ignore_index: 7,
                            label_smoothing: 0.1,
                            reduction: Reduction::Sum,
                            ..Settings::default()
                        })
                    },
                ),
                (
                    "z-loss 1e-3, softcap 5, none".into(),
                    Problem {
                        target: Some(Target::Classes(classes.clone())),
                        ..with(Settings {
                            z_loss: 1e-3,
                            softcap: Some(5.0),
                            reduction: Reduction::None,
                            ..Settings::default()
                        })
                    },
                ),
                (
                    "probability targets, smoothing 0.2".into(),
                    Problem {
                        target: Some(Target::Values(soft)),
                        ..with(Settings {
                            label_smoothing: 0.2,
                            ..Settings::default()
                        })
                    },
                ),
            ]
        }
        Op::Focal => vec![
            (
                "gamma 2, alpha 0.25".into(),
                Problem {
                    target: Some(Target::Classes(classes.clone())),
                    ..with(Settings {
                        alpha: Some(0.25),
                        ..Settings::default()
                    })
                },
            ),
            (
                "gamma 0.5, per-class alpha, none".into(),
                Problem {
                    target: Some(Target::Classes(classes)),
                    weight: Some(rng.vec(cols, 0.0, 1.0)),
                    ..with(Settings {
                        gamma: 0.5,
                        reduction: Reduction::None,
                        ..Settings::default()
                    })
                },
            ),
        ],
        Op::BinaryCrossEntropy => vec![(
            "probabilities, column weights".into(),
            Problem {
                input: rng.vec(n, 0.01, 0.99),
                target: Some(Target::Values(labels)),
                weight: Some(rng.vec(cols, 0.0, 2.0)),
                ..base
            },
        )],
        Op::BceWithLogits => vec![(
            "pos_weight, sum".into(),
            Problem {
                target: Some(Target::Values(labels)),
                pos_weight: Some(rng.vec(cols, 0.5, 3.0)),
                ..with(Settings {
                    reduction: Reduction::Sum,
                    ..Settings::default()
                })
            },
        )],
        Op::SigmoidFocal => vec![
            (
                "alpha 0.25, gamma 2, none".into(),
                Problem {
                    target: Some(Target::Values(labels.clone())),
                    ..with(Settings {
                        reduction: Reduction::None,
                        ..Settings::default()
                    })
                },
            ),
            (
                "no alpha, gamma 0, mean".into(),
                Problem {
                    target: Some(Target::Values(labels)),
                    ..with(Settings {
                        alpha: Some(-1.0),
                        gamma: 0.0,
                        ..Settings::default()
                    })
                },
            ),
        ],
    }
}

/// The fused linear + cross-entropy on awkward shapes and option sets:
/// `(label, Ok(max error) or Err(what failed))`.
fn linear_checks(ctx: &wgpu_loss::GpuContext, rng: &mut Rng) -> Vec<(String, Result<f64, String>)> {
    use wgpu_loss::tolerance::LinearScales;
    use wgpu_loss::{CrossEntropyOptions, LinearCrossEntropyOptions, LinearGrads, LinearShape};
    let mut out = Vec::new();
    for (rows, d, v) in [(1, 1, 1), (7, 13, 301), (33, 5, 4099), (3, 3, 300_001)] {
        let shape = LinearShape {
            rows,
            hidden: d,
            classes: v,
        };
        let h = rng.vec(rows * d, -1.0, 1.0);
        let w = rng.vec(v * d, -1.0, 1.0);
        let b = rng.vec(v, -0.5, 0.5);
        let weights = rng.vec(v, 0.1, 2.0);
        let t: Vec<i64> = (0..rows).map(|_| rng.below(v) as i64).collect();
        let option_sets = [
            ("mean".to_string(), CrossEntropyOptions::default()),
            (
                "weights, smoothing 0.1, softcap 5, z-loss, sum".to_string(),
                CrossEntropyOptions {
                    weight: Some(&weights[..]),
                    label_smoothing: 0.1,
                    softcap: Some(5.0),
                    z_loss: 1e-3,
                    reduction: Reduction::Sum,
                    ..Default::default()
                },
            ),
        ];
        for (label, loss) in option_sets {
            let options = LinearCrossEntropyOptions {
                loss,
                ..Default::default()
            };
            let verdict = (|| -> Result<f64, String> {
                let gpu = wgpu_loss::block_on(ctx.linear_cross_entropy(
                    &h,
                    &w,
                    Some(&b),
                    &t,
                    shape,
                    &options,
                    LinearGrads::ALL,
                ))
                .map_err(|e| format!("GPU error: {e}"))?;
                let r =
                    wgpu_loss::reference::linear_cross_entropy(&h, &w, Some(&b), &t, shape, &loss)
                        .map_err(|e| format!("reference error: {e}"))?;
                let s = LinearScales::of(&h, &w, Some(&b), shape, &loss, &r);
                let mut worst = 0.0f64;
                for (name, a, e, scale) in [
                    ("loss", Some(&gpu.loss), &r.loss, s.loss),
                    (
                        "grad_hidden",
                        gpu.grad_hidden.as_ref(),
                        &r.grad_hidden,
                        s.grad_hidden,
                    ),
                    (
                        "grad_classifier",
                        gpu.grad_classifier.as_ref(),
                        &r.grad_classifier,
                        s.grad_classifier,
                    ),
                    (
                        "grad_bias",
                        gpu.grad_bias.as_ref(),
                        &r.grad_bias,
                        s.grad_bias,
                    ),
                ] {
                    let a = a.ok_or_else(|| format!("{name} missing"))?;
                    if let Some(m) = F32_TOLERANCE.first_mismatch_at_scale(a, e, scale) {
                        return Err(format!("{name} {m}"));
                    }
                    worst = worst.max(max_abs_error(a, e));
                }
                Ok(worst)
            })();
            out.push((
                format!(
                    "{:<21} {:>10} {label}",
                    "linear-cross-entropy",
                    format!("{rows}x{d}x{v}")
                ),
                verdict,
            ));
        }
    }
    out
}

/// `Ok(max error)` or `Err(what failed)`.
fn compare(gpu: &Outputs<f32>, reference: &Outputs<f64>) -> Result<f64, String> {
    let mut worst = 0.0f64;
    let pairs = [
        ("output", Some(&gpu.output), Some(&reference.output)),
        ("grad", gpu.grad.as_ref(), reference.grad.as_ref()),
    ];
    for (name, actual, expected) in pairs {
        match (actual, expected) {
            (Some(a), Some(e)) => {
                if let Some(m) = F32_TOLERANCE.first_mismatch(a, e) {
                    return Err(format!("{name} {m}"));
                }
                worst = worst.max(max_abs_error(a, e));
            }
            (None, None) => {}
            _ => {
                return Err(format!(
                    "{name}: GPU and reference disagree on whether it exists"
                ))
            }
        }
    }
    Ok(worst)
}

pub fn run(args: &CheckArgs) -> Result<ExitCode, String> {
    let ctx = super::gpu_context()?;
    println!("adapter: {}", ctx.adapter_name());
    println!("row tuning: {:?}", ctx.row_tuning());
    for (rows, cols) in SHAPES.iter().chain([&MANY_ROWS]) {
        println!("  {}", ctx.describe_row_plan(*rows, *cols));
    }
    println!(
        "tolerance: |gpu - f64 reference| <= {:e} * max|reference| + {:e} * |reference|, per element",
        F32_TOLERANCE.atol, F32_TOLERANCE.rtol
    );
    let cases = cases(args.seed);
    let progress = indicatif::ProgressBar::new(cases.len() as u64);
    let mut failures = 0usize;
    for case in &cases {
        let verdict = match (
            case.problem.run_gpu_sync(&ctx),
            case.problem.run_reference(),
        ) {
            (Ok(gpu), Ok(reference)) => compare(&gpu, &reference),
            (Err(e), _) => Err(format!("GPU error: {e}")),
            (_, Err(e)) => Err(format!("reference error: {e}")),
        };
        progress.suspend(|| match &verdict {
            Ok(err) => println!("PASS  {}  max err {err:.1e}", case.label),
            Err(why) => println!("FAIL  {}  {why}", case.label),
        });
        failures += usize::from(verdict.is_err());
        progress.inc(1);
    }
    // Same adapter, same input: bitwise the same result.
    let repeat = &cases
        .iter()
        .find(|c| c.problem.op == Op::CrossEntropy && c.problem.cols == 4099)
        .map(|c| c.problem.clone());
    if let Some(problem) = repeat {
        let a = problem.run_gpu_sync(&ctx).map_err(|e| e.to_string())?;
        let b = problem.run_gpu_sync(&ctx).map_err(|e| e.to_string())?;
        let same = |x: &[f32], y: &[f32]| {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        };
        let ok = same(&a.output, &b.output)
            && same(
                a.grad.as_deref().unwrap_or_default(),
                b.grad.as_deref().unwrap_or_default(),
            );
        progress.suspend(|| {
            println!(
                "{}  cross-entropy 2x4099 run twice: bitwise identical",
                if ok { "PASS" } else { "FAIL" }
            )
        });
        failures += usize::from(!ok);
    }
    let linear = linear_checks(&ctx, &mut Rng(args.seed ^ 0x11CE));
    for (label, verdict) in &linear {
        progress.suspend(|| match verdict {
            Ok(err) => println!("PASS  {label}  max err {err:.1e}"),
            Err(why) => println!("FAIL  {label}  {why}"),
        });
        failures += usize::from(verdict.is_err());
    }
    progress.finish_and_clear();
    let total = cases.len() + 1 + linear.len();
    if failures == 0 {
        println!("all {total} checks passed on {}", ctx.adapter_name());
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "{failures} of {total} checks FAILED on {}",
            ctx.adapter_name()
        );
        Ok(ExitCode::FAILURE)
    }
}
