//! Runs a short version of `examples/train_linear.rs` and checks that the loss falls.

mod common;

#[path = "../examples/train_linear.rs"]
mod train_linear;

#[test]
fn training_on_the_gpu_lowers_the_loss() {
    let Some(ctx) = common::gpu() else { return };
    let losses = train_linear::train(ctx, 60).expect("training runs");
    let (first, last) = (losses[0].1, losses[losses.len() - 1].1);
    // Four balanced classes start at ln 4 = 1.386 with zero weights.
    assert!((first - 4f32.ln()).abs() < 0.05, "first loss {first}");
    assert!(
        last < 0.25 * first,
        "loss fell only from {first} to {last}: {losses:?}"
    );
    assert!(
        losses.windows(2).all(|w| w[1].1 <= w[0].1 + 1e-3),
        "loss not falling steadily: {losses:?}"
    );
}
