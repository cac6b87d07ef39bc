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
