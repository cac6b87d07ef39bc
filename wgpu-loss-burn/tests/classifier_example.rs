//! Runs a short version of `examples/burn_classifier.rs` and checks that
//! burn's model, trained with this crate's loss, learns.

mod common;

#[path = "../examples/burn_classifier.rs"]
#[allow(dead_code)]
mod burn_classifier;

#[test]
fn the_burn_classifier_learns_with_our_loss() {
    let Some(shared) = common::shared() else {
        return;
    };
    let losses = burn_classifier::train(shared, 60).expect("training runs");
    let (first, last) = (losses[0].1, losses[losses.len() - 1].1);
    // Eight classes from a fresh model: near ln 8 = 2.08.
    assert!((first - 8f32.ln()).abs() < 0.5, "first loss {first}");
    assert!(
        last < 0.5 * first,
        "loss fell only from {first} to {last}: {losses:?}"
    );
}
