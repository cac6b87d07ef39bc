//! Helpers shared by the GPU tests: getting an adapter (fail under CI, visible
//! skip otherwise), seeded inputs, and the one tolerance assertion.
#![allow(dead_code)]

use std::sync::OnceLock;

use wgpu_loss::{ContextOptions, GpuContext, F32_TOLERANCE};

/// Value every output buffer is filled with before a kernel runs: a finite,
/// implausible number, so an unwritten element fails the comparison.
pub const POISON: f32 = f32::from_bits(0x7EAD_BEEF);

fn make(options: ContextOptions) -> Option<GpuContext> {
    match GpuContext::with_options_blocking(ContextOptions {
        poison_outputs: Some(POISON),
        ..options
    }) {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("CI=true but no GPU adapter: {e}");
            }
            eprintln!(
                "SKIPPED (no GPU adapter: {e}). Install a software Vulkan device with \
                 `apt-get install mesa-vulkan-drivers` to run the GPU tests."
            );
            None
        }
    }
}

/// The shared context for this test binary, or `None` (after printing a skip line) outside CI.
pub fn gpu() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Option<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| make(ContextOptions::default())).as_ref()
}

/// A context whose storage bindings are capped at `bytes`, to force row windows on small inputs.
pub fn gpu_with_binding_cap(bytes: u64) -> Option<GpuContext> {
    make(ContextOptions {
        max_binding_bytes: Some(bytes),
        ..ContextOptions::default()
    })
}

/// SplitMix64: small, seeded, and the same on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit() as f32
    }
    /// Standard normal times `std`.
    pub fn normal(&mut self, std: f32) -> f32 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32 * std
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn vec_normal(&mut self, len: usize, std: f32) -> Vec<f32> {
        (0..len).map(|_| self.normal(std)).collect()
    }
}

/// Asserts `actual` matches `expected` under the crate's F32 tolerance, and
/// that nothing is left at the poison value. Prints index, actual, expected
/// and difference on failure.
#[track_caller]
pub fn assert_close(what: &str, actual: &[f32], expected: &[f64]) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: length {} != reference length {}",
        actual.len(),
        expected.len()
    );
    if let Some(i) = actual.iter().position(|v| v.to_bits() == POISON.to_bits()) {
        panic!("{what}: element {i} was never written (still holds the poison value)");
    }
    if let Some(m) = F32_TOLERANCE.first_mismatch(actual, expected) {
        panic!("{what}: {m} (tolerance {F32_TOLERANCE:?})");
    }
}
