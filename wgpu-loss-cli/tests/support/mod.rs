//! Helpers the command's test binaries share: the built `wgpu-loss`, an
//! int64 `.npy` writer, and the bitwise comparison that prints index,
//! actual, expected and difference.
#![allow(dead_code)] // Each test binary uses some of them.

use std::path::Path;

use assert_cmd::Command;
use npyz::WriterBuilder;

/// The built `wgpu-loss` binary, with a runtime dir for the Vulkan loader.
pub fn wgpu_loss() -> Command {
    let mut cmd = Command::cargo_bin("wgpu-loss").expect("binary is built");
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    cmd
}

/// Writes class indices as an int64 `.npy`.
pub fn write_i64(path: &Path, data: &[i64]) {
    let mut bytes = Vec::new();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[data.len() as u64])
        .writer(&mut bytes)
        .begin_nd()
        .expect("header");
    w.extend(data.iter().copied()).expect("data");
    w.finish().expect("finish");
    std::fs::write(path, bytes).expect("write");
}

/// Every value has the expected bits (NaN included).
#[track_caller]
pub fn same_bits(what: &str, actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            a.to_bits() == e.to_bits(),
            "{what}[{i}]: actual {a:e}, expected {e:e}, diff {:e}",
            (a - e).abs()
        );
    }
}
