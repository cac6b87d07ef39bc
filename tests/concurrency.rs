//! One context shared by several threads, and a long loop of calls that must
//! not grow the device's buffer count or the pool.

mod common;

use common::{gpu, gpu_with_binding_cap, Rng};
use wgpu_loss::{BinaryLossOptions, CrossEntropyOptions, GpuContext, Reduction};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// One of four different ops on fixed inputs; returns every number it produced.
fn run_op(ctx: &GpuContext, which: usize) -> Vec<f32> {
    let mut rng = Rng::new(90 + which as u64);
    let (rows, cols) = (33, 257);
    let x = rng.vec_normal(rows * cols, 3.0);
    let t: Vec<i64> = (0..rows).map(|_| rng.below(cols) as i64).collect();
    let y: Vec<f32> = (0..rows * cols).map(|_| rng.uniform(0.0, 1.0)).collect();
    match which {
        0 => ctx.softmax_blocking(&x, rows, cols).unwrap(),
        1 => {
            let opts = CrossEntropyOptions {
                label_smoothing: 0.1,
                ..Default::default()
            };
            let out = ctx.cross_entropy_blocking(&x, &t, cols, &opts).unwrap();
            [out.loss, out.grad.unwrap()].concat()
        }
        2 => {
            let out = ctx
                .binary_cross_entropy_with_logits_blocking(
                    &x,
                    &y,
                    cols,
                    &BinaryLossOptions::default(),
                )
                .unwrap();
            [out.loss, out.grad.unwrap()].concat()
        }
        _ => {
            let opts = CrossEntropyOptions {
                reduction: Reduction::None,
                z_loss: 1e-3,
                ..Default::default()
            };
            ctx.cross_entropy_loss_blocking(&x, &t, cols, &opts)
                .unwrap()
                .loss
        }
    }
}

#[test]
fn four_threads_share_one_context() {
    let Some(ctx) = gpu() else { return };
    let expected: Vec<Vec<u32>> = (0..4).map(|w| bits(&run_op(ctx, w))).collect();
    std::thread::scope(|s| {
        for (which, want) in expected.iter().enumerate() {
            s.spawn(move || {
                for i in 0..40 {
                    assert_eq!(
                        &bits(&run_op(ctx, which)),
                        want,
                        "thread {which}, iteration {i}"
                    );
                }
            });
        }
    });
}

#[test]
fn ten_thousand_calls_do_not_grow_memory() {
    // A context of its own, so the device's counters see only this loop.
    let Some(ctx) = gpu_with_binding_cap(u64::MAX) else {
        return;
    };
    let mut rng = Rng::new(99);
    let (rows, cols) = (8, 64);
    let x = rng.vec_normal(rows * cols, 2.0);
    let t: Vec<i32> = (0..rows).map(|_| rng.below(cols) as i32).collect();
    let call = |i: usize| {
        if i.is_multiple_of(2) {
            ctx.log_softmax_blocking(&x, rows, cols).unwrap();
        } else {
            ctx.cross_entropy_blocking(&x, &t, cols, &CrossEntropyOptions::default())
                .unwrap();
        }
    };
    for i in 0..100 {
        call(i);
    }
    let device_buffers = || ctx.device().get_internal_counters().hal.buffers.read();
    let after_warm_up = (device_buffers(), ctx.pool_stats());
    assert!(
        after_warm_up.0 > 0,
        "the counters feature must be on for this test to mean anything"
    );
    for i in 0..10_000 {
        call(i);
    }
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
}
