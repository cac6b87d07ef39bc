//! Runs a short version of `examples/lm_head.rs` and checks that the loss falls.

mod common;

#[path = "../examples/lm_head.rs"]
mod lm_head;

#[test]
fn the_fused_head_learns() {
    let Some(ctx) = common::gpu() else { return };
    let losses = lm_head::train(ctx, 40).expect("training runs");
    let (first, last) = (losses[0].1, losses[losses.len() - 1].1);
    // A zero head over 1000 tokens starts at ln 1000 = 6.908.
    assert!((first - 1000f32.ln()).abs() < 1e-3, "first loss {first}");
    assert!(
        last < 0.5 * first,
        "loss fell only from {first} to {last}: {losses:?}"
    );
    assert!(
        losses.windows(2).all(|w| w[1].1 < w[0].1),
        "loss not falling at every report: {losses:?}"
    );
}

/// The example prepares its loss once, so a longer run creates nothing
/// more than a shorter one: no buffer, uniform or bind group per step
/// (`the_fused_head_learns` checks that the replays compute).
#[test]
fn the_prepared_head_creates_nothing_per_step() {
    let Some(ctx) = common::own_gpu() else {
        return;
    };
    // A first run makes the uniforms, which later runs share by content.
    lm_head::train(&ctx, 2).expect("training runs");
    let made_by = |steps| {
        let before = ctx.encode_buffers_created();
        lm_head::train(&ctx, steps).expect("training runs");
        let after = ctx.encode_buffers_created();
        (
            after.uniforms - before.uniforms,
            after.scratch - before.scratch,
            after.bind_groups - before.bind_groups,
        )
    };
    let (short, long) = (made_by(3), made_by(25));
    assert!(short.2 > 0, "preparing made its bind groups: {short:?}");
    assert_eq!(
        short, long,
        "3 steps against 25: (uniforms, scratch, bind groups) created"
    );
}
