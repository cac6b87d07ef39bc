//! The other direction: this crate creates the wgpu device and hands it to
//! burn (`SharedDevice::new_wgpu`, through burn's `WgpuSetup`), next to
//! burn's own default device in the same process.

mod common;

use burn::tensor::{Int, Tensor, TensorData};
use wgpu_loss::{reference, F32_TOLERANCE};
use wgpu_loss_burn::{cross_entropy, CrossEntropyOptions, Error, SharedDevice};

#[test]
fn a_device_of_ours_handed_to_burn_runs_the_losses() {
    // Under CI the adapter must exist; the helper fails or skips as usual.
    let Some(burns) = common::shared() else {
        return;
    };
    let ours = SharedDevice::new_wgpu().expect("our device, registered with burn");
    let device = ours.device().clone().autodiff();
    let (n, c) = (23, 77);
    let mut rng = common::Rng::new(3);
    let logits = rng.floats(n * c, -3.0, 3.0);
    let targets: Vec<i64> = (0..n).map(|_| rng.below(c) as i64).collect();
    let x = Tensor::<2>::from_data(TensorData::new(logits.clone(), [n, c]), &device).require_grad();
    let y = Tensor::<1, Int>::from_data(TensorData::new(targets.clone(), [n]), &device);
    let options = CrossEntropyOptions::<Tensor<1>>::default();
    let loss = cross_entropy(x.clone(), y.clone(), &options).expect("loss on our device");
    let grad = common::host(x.grad(&loss.backward()).expect("gradient"));
    let expected =
        reference::cross_entropy(&logits, &targets, c, &options.with_weight::<[f32]>(None))
            .expect("reference");
    common::assert_close(
        "loss",
        &common::host(loss),
        &expected.loss[..1],
        F32_TOLERANCE,
    );
    common::assert_close("grad", &grad, &expected.grad, F32_TOLERANCE);

    // Class weights on burn's default device, logits on ours: refused by name.
    let weight = Tensor::<1>::from_floats(vec![1.0f32; c].as_slice(), burns.device());
    let options = CrossEntropyOptions {
        weight: Some(&weight),
        ..Default::default()
    };
    let err = cross_entropy(x.detach(), y, &options).expect_err("tensors on two devices");
    assert!(
        matches!(
            err,
            Error::DeviceMismatch {
                tensor: "weight",
                ..
            }
        ),
        "{err}"
    );
}
