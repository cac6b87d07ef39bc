//! One context shared by eight threads running different losses, and a long
//! loop of mixed calls that must not grow the device's buffer count, the
//! pool, or the time per call.

#[path = "../../wgpu-loss/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{gpu, gpu_with_binding_cap, Rng};
use wgpu_loss::{GpuContext, Reduction};
use wgpu_loss_cli::problem::{Op, Problem, Settings, Target};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Eight different ops and losses on fixed inputs of `rows x cols`.
fn problems(rows: usize, cols: usize) -> Vec<Problem> {
    let mut rng = Rng::new(90);
    let n = rows * cols;
    let x = rng.vec_normal(n, 3.0);
    let classes: Vec<i64> = (0..rows).map(|_| rng.below(cols) as i64).collect();
    let labels: Vec<f32> = (0..n).map(|_| rng.uniform(0.0, 1.0)).collect();
    let probs: Vec<f32> = (0..n).map(|_| rng.uniform(0.01, 0.99)).collect();
    let dy = rng.vec_normal(n, 1.0);
    let base = |op| Problem::new(op, rows, cols, x.clone());
    vec![
        base(Op::Softmax),
        Problem {
            grad_output: Some(dy),
            ..base(Op::LogSoftmax)
        },
        base(Op::Logsumexp),
        Problem {
            target: Some(Target::Classes(classes.clone())),
            settings: Settings {
                label_smoothing: 0.1,
                z_loss: 1e-3,
                ..Settings::default()
            },
            ..base(Op::CrossEntropy)
        },
        Problem {
            input: probs,
            target: Some(Target::Values(labels.clone())),
            ..base(Op::BinaryCrossEntropy)
        },
        Problem {
            target: Some(Target::Values(labels.clone())),
            pos_weight: Some(vec![2.0; cols]),
            settings: Settings {
                reduction: Reduction::Sum,
                ..Settings::default()
            },
            ..base(Op::BceWithLogits)
        },
        Problem {
            target: Some(Target::Values(labels)),
            settings: Settings {
                reduction: Reduction::None,
                ..Settings::default()
            },
            ..base(Op::SigmoidFocal)
        },
        Problem {
            target: Some(Target::Classes(classes)),
            settings: Settings {
                alpha: Some(0.25),
                ..Settings::default()
            },
            ..base(Op::Focal)
        },
    ]
}

/// Every number a problem produced, as bits.
fn run_bits(ctx: &GpuContext, p: &Problem) -> Vec<u32> {
    let out = p.run_gpu_sync(ctx).expect("op runs");
    [bits(&out.output), bits(&out.grad.unwrap_or_default())].concat()
}

#[test]
fn eight_threads_share_one_context_and_match_single_threaded_results() {
    let Some(ctx) = gpu() else { return };
    let problems = problems(33, 257);
    assert_eq!(problems.len(), 8);
    let expected: Vec<Vec<u32>> = problems.iter().map(|p| run_bits(ctx, p)).collect();
    std::thread::scope(|s| {
        for (which, (p, want)) in problems.iter().zip(&expected).enumerate() {
            s.spawn(move || {
                for i in 0..200 {
                    assert!(
                        &run_bits(ctx, p) == want,
                        "thread {which} ({}), iteration {i}: result differs from the single-threaded one",
                        p.op.name()
                    );
                }
            });
        }
    });
}

#[test]
fn ten_thousand_mixed_calls_keep_memory_and_time_per_call_flat() {
    // A context of its own, so the device's counters see only this loop.
    let Some(ctx) = gpu_with_binding_cap(u64::MAX) else {
        return;
    };
    let problems = problems(8, 64);
    let call = |i: usize| {
        problems[i % problems.len()]
            .run_gpu_sync(&ctx)
            .expect("op runs");
    };
    for i in 0..200 {
        call(i);
    }
    let device_buffers = || ctx.device().get_internal_counters().hal.buffers.read();
    let after_warm_up = (device_buffers(), ctx.pool_stats());
    assert!(
        after_warm_up.0 > 0,
        "the counters feature must be on for this test to mean anything"
    );
    // Median time per call over a block of 400 calls (every op 50 times).
    let block = |start: usize| {
        let mut times: Vec<Duration> = (start..start + 400)
            .map(|i| {
                let t = Instant::now();
                call(i);
                t.elapsed()
            })
            .collect();
        times.sort();
        times[times.len() / 2]
    };
    let early = block(0);
    for i in 0..9_200 {
        call(i);
    }
    let late = block(0);
    let after_loop = (device_buffers(), ctx.pool_stats());
    assert_eq!(
        after_loop.1.created_buffers, after_warm_up.1.created_buffers,
        "the pool created buffers after warm-up: {:?} -> {:?}",
        after_warm_up.1, after_loop.1
    );
    assert_eq!(after_loop.1.live_bytes, after_warm_up.1.live_bytes);
    // Per-call scratch and uniforms are freed by wgpu once their work is done;
    // allow the handful a single call holds, not growth with the loop.
    assert!(
        after_loop.0 <= after_warm_up.0 + 16,
        "live device buffers grew from {} to {}",
        after_warm_up.0,
        after_loop.0
    );
    // Growth, not speed: a leak or an ever-longer list shows up as a
    // multiple; machine noise on a median of 400 stays well under 3x.
    assert!(
        late <= early * 3 + Duration::from_micros(500),
        "median time per call grew from {early:?} to {late:?} over 10,000 calls"
    );
}
