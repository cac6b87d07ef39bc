//! Helpers for the burn tests: the one shared device (fail under CI, visible
//! skip otherwise), seeded inputs, burn tensors to host vectors, and the
//! crate's tolerance rule with index, actual, expected and difference.
#![allow(dead_code)]

use std::sync::OnceLock;

use burn::tensor::{Device, Tensor};
use wgpu_loss::Tolerance;
use wgpu_loss_burn::SharedDevice;

/// burn's wgpu device shared with wgpu-loss, once per test binary (burn
/// brings a runtime up once per process).
pub fn shared() -> Option<&'static SharedDevice> {
    static SHARED: OnceLock<Option<SharedDevice>> = OnceLock::new();
    SHARED
        .get_or_init(|| match SharedDevice::from_burn() {
            Ok(shared) => Some(shared),
            Err(e) => {
                if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                    panic!("CI=true but burn found no wgpu adapter: {e}");
                }
                eprintln!(
                    "SKIPPED (no wgpu adapter for burn: {e}). Install a software Vulkan \
                     device with `apt-get install mesa-vulkan-drivers` to run these tests."
                );
                None
            }
        })
        .as_ref()
}

/// Plain and autodiff forms of the shared device.
pub fn devices() -> Option<(Device, Device)> {
    let shared = shared()?;
    let plain = shared.device().clone();
    Some((plain.clone(), plain.autodiff()))
}

/// A small seeded generator (SplitMix64), so that inputs differ per test
/// and repeat per run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
    pub fn floats(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

/// Asserts `actual` is within `tolerance` of `expected`, printing the first
/// mismatch (index, actual, expected, difference, allowed).
pub fn assert_close(what: &str, actual: &[f32], expected: &[f64], tolerance: Tolerance) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    if let Some(m) = tolerance.first_mismatch(actual, expected) {
        panic!("{what}: {m}");
    }
}

/// [`assert_close`] on a loss and on its gradient, named `what loss` and
/// `what grad`.
pub fn assert_loss_and_grad(
    what: &str,
    (loss, grad): (&[f32], &[f32]),
    (expected_loss, expected_grad): (&[f64], &[f64]),
    tolerance: Tolerance,
) {
    assert_close(&format!("{what} loss"), loss, expected_loss, tolerance);
    assert_close(&format!("{what} grad"), grad, expected_grad, tolerance);
}

pub fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|x| f64::from(*x)).collect()
}

/// Largest finite `|x|`.
pub fn max_abs(v: &[f32]) -> f64 {
    v.iter()
        .filter(|x| x.is_finite())
        .fold(0.0f64, |m, x| m.max(f64::from(x.abs())))
}
