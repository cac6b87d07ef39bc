//! Both product kernels against the f64 reference, whatever the adapter
//! would pick: `matmul` (GPUs: 64x64 tiles, 8x8 per invocation) and
//! `matmul_wide` (CPU adapters: 128x128 tiles, 16x16 per invocation), with
//! `matmul_wide_short` (64x128 tiles) for outputs of 64 to 127 rows. On
//! lavapipe the big products elsewhere run the wide kernels and the small
//! ones `matmul`; this test forces each on every shape: rows 1 and 65 take
//! `matmul_wide_short` when wide is forced, 130 and 257 `matmul_wide`. One test in its own binary: the kernel is chosen by
//! `WGPU_LOSS_MATMUL`, which is process-wide.

mod common;

use common::{gpu, gpu_with_binding_cap, Rng};
use wgpu_loss::reference;
use wgpu_loss::tolerance::{product_scale, LinearScales};
use wgpu_loss::{
    block_on, CrossEntropyOptions, LinearCrossEntropyOptions, LinearGrads, LinearShape,
    F32_TOLERANCE,
};

#[track_caller]
fn check(what: &str, actual: &[f32], expected: &[f64], scale: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    if let Some(m) = F32_TOLERANCE.first_mismatch_at_scale(actual, expected, scale) {
        panic!("{what}: {m} (product scale {scale:e})");
    }
}

#[test]
fn both_product_kernels_match_the_reference() {
    let Some(_) = gpu() else { return };
    // Shapes with partial tiles of both kernels in every dimension, one past
    // a 16 KiB binding (row windows), and 1x1x1.
    let shapes = [(1, 1, 1), (130, 37, 129), (65, 300, 200), (257, 19, 1000)];
    for kernel in ["tiled", "wide"] {
        std::env::set_var("WGPU_LOSS_MATMUL", kernel);
        for (i, &(rows, d, v)) in shapes.iter().enumerate() {
            let mut rng = Rng::new(300 + i as u64);
            let h = rng.vec_normal(rows * d, 1.0);
            let w = rng.vec_normal(v * d, 1.0 / (d as f32).sqrt());
            let b = rng.vec_normal(v, 0.5);
            let t: Vec<i64> = (0..rows).map(|_| rng.below(v) as i64).collect();
            let shape = LinearShape {
                rows,
                hidden: d,
                classes: v,
            };
            for (ctx_name, ctx) in [
                ("default", gpu()),
                ("16 KiB bindings", gpu_with_binding_cap(16 << 10).as_ref()),
            ] {
                let Some(ctx) = ctx else { continue };
                let what = format!("{kernel} {rows}x{d}x{v} {ctx_name}");
                let z = block_on(ctx.linear(&h, &w, Some(&b), shape)).expect("linear");
                let want = reference::linear(&h, &w, Some(&b), shape).expect("reference");
                let mut terms = 0.0f64;
                for n in 0..rows {
                    for c in 0..v {
                        let t: f64 = (0..d)
                            .map(|k| f64::from(h[n * d + k]).abs() * f64::from(w[c * d + k]).abs())
                            .sum();
                        terms = terms.max(t + f64::from(b[c]).abs());
                    }
                }
                let scale = product_scale(d, terms);
                check(&format!("{what} linear"), &z, &want, scale);
                let loss = CrossEntropyOptions {
                    label_smoothing: 0.1,
                    ..Default::default()
                };
                let options = LinearCrossEntropyOptions {
                    loss,
                    workspace_bytes: Some((64 * v * 4) as u64),
                    ..Default::default()
                };
                let out = block_on(ctx.linear_cross_entropy(
                    &h,
                    &w,
                    Some(&b),
                    &t,
                    shape,
                    &options,
                    LinearGrads::ALL,
                ))
                .expect("fused");
                let r = reference::linear_cross_entropy(&h, &w, Some(&b), &t, shape, &loss)
                    .expect("reference");
                let s = LinearScales::of(&h, &w, Some(&b), shape, &loss, &r);
                check(&format!("{what} loss"), &out.loss, &r.loss, s.loss);
                check(
                    &format!("{what} dH"),
                    out.grad_hidden.as_deref().unwrap_or_default(),
                    &r.grad_hidden,
                    s.grad_hidden,
                );
                check(
                    &format!("{what} dW"),
                    out.grad_classifier.as_deref().unwrap_or_default(),
                    &r.grad_classifier,
                    s.grad_classifier,
                );
                check(
                    &format!("{what} db"),
                    out.grad_bias.as_deref().unwrap_or_default(),
                    &r.grad_bias,
                    s.grad_bias,
                );
            }
        }
    }
    std::env::remove_var("WGPU_LOSS_MATMUL");
}
