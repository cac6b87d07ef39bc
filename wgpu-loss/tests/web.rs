//! The browser suite: every op family on the browser's WebGPU adapter in
//! headless Chromium, against the f64 reference under the crate's tolerance,
//! outputs poisoned first. `scripts/test.sh` runs it:
//! `cargo test --target wasm32-unknown-unknown -p wgpu-loss --test web`.
//!
//! Natively this file compiles to nothing.
#![cfg(target_arch = "wasm32")]

use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};
use wgpu_loss::{
    reference, BinaryLossOptions, ContextOptions, CrossEntropyOptions, CrossEntropyViews, Error,
    FocalOptions, GpuContext, GpuTensor, GradOutput, Reduction, Request, SigmoidFocalOptions,
    SoftmaxOp, Tolerance, F16_TOLERANCE, F32_TOLERANCE,
};

wasm_bindgen_test_configure!(run_in_browser);

/// The value every output buffer holds before a kernel runs.
const POISON: f32 = f32::from_bits(0x7EAD_BEEF);

/// A context on the browser's adapter, outputs poisoned. Without an adapter
/// the test fails when built with `CI=true` (read at compile time: a page
/// has no environment), and prints a skip line otherwise.
async fn gpu() -> Option<GpuContext> {
    match GpuContext::with_options(ContextOptions {
        poison_outputs: Some(POISON),
        ..Default::default()
    })
    .await
    {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            if matches!(option_env!("CI"), Some("true") | Some("1")) {
                panic!("CI=true but no WebGPU adapter in the browser: {e}");
            }
            console_log!("SKIPPED (no WebGPU adapter: {e}); Chromium needs --enable-unsafe-webgpu");
            None
        }
    }
}

/// SplitMix64, as the native tests use.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32) / (1u64 << 24) as f32
    }
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
    fn vec(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform(-scale, scale)).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

#[track_caller]
fn assert_within(what: &str, actual: &[f32], expected: &[f64], tol: Tolerance) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    if let Some(i) = actual.iter().position(|v| v.to_bits() == POISON.to_bits()) {
        panic!("{what}: element {i} was never written (still holds the poison value)");
    }
    if let Some(m) = tol.first_mismatch(actual, expected) {
        panic!("{what}: {m}");
    }
}

#[track_caller]
fn assert_close(what: &str, actual: &[f32], expected: &[f64]) {
    assert_within(what, actual, expected, F32_TOLERANCE);
}

/// Short rows, rows past one 256-invocation workgroup, an odd C, one column.
const SHAPES: [(usize, usize); 5] = [(3, 7), (5, 1000), (2, 4099), (300, 33), (4, 1)];

#[wasm_bindgen_test]
async fn softmax_family_and_backward_passes() {
    let Some(ctx) = gpu().await else { return };
    let mut rng = Rng(11);
    for (rows, cols) in SHAPES {
        let x = rng.vec(rows * cols, 6.0);
        let dy = rng.vec(rows * cols, 1.0);
        let dl = rng.vec(rows, 1.0);
        let tag = format!("{rows}x{cols}");
        let y = ctx.softmax(&x, rows, cols).await.expect("softmax");
        assert_close(
            &format!("softmax {tag}"),
            &y,
            &reference::softmax(&x, rows, cols).unwrap(),
        );
        let ly = ctx.log_softmax(&x, rows, cols).await.expect("log_softmax");
        let want = reference::log_softmax(&x, rows, cols).unwrap();
        assert_close(&format!("log_softmax {tag}"), &ly, &want);
        let lse = ctx.logsumexp(&x, rows, cols).await.expect("logsumexp");
        assert_close(
            &format!("logsumexp {tag}"),
            &lse,
            &reference::logsumexp(&x, rows, cols).unwrap(),
        );

        let max_abs = |v: &[f32]| v.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
        let dx = ctx
            .softmax_backward(&y, &dy, rows, cols)
            .await
            .expect("backward");
        let want = reference::softmax_backward(&y, &dy, rows, cols).unwrap();
        if let Some(m) =
            F32_TOLERANCE.first_mismatch_at_scale(&dx, &want, max_abs(&y) * max_abs(&dy))
        {
            panic!("softmax backward {tag}: {m}");
        }
        let dx = ctx
            .log_softmax_backward(&ly, &dy, rows, cols)
            .await
            .expect("backward");
        let want = reference::log_softmax_backward(&ly, &dy, rows, cols).unwrap();
        if let Some(m) =
            F32_TOLERANCE.first_mismatch_at_scale(&dx, &want, max_abs(&dy) * cols as f64)
        {
            panic!("log-softmax backward {tag}: {m}");
        }
        let dx = ctx
            .logsumexp_backward(&x, &lse, &dl, rows, cols)
            .await
            .expect("backward");
        let want = reference::logsumexp_backward(&x, &lse, &dl, rows, cols).unwrap();
        assert_close(&format!("logsumexp backward {tag}"), &dx, &want);
    }
}

#[wasm_bindgen_test]
async fn cross_entropy_with_every_option_and_probability_targets() {
    let Some(ctx) = gpu().await else { return };
    let mut rng = Rng(12);
    for (rows, cols) in SHAPES {
        let x = rng.vec(rows * cols, 5.0);
        let mut t: Vec<i64> = (0..rows).map(|_| rng.below(cols) as i64).collect();
        t[rows / 2] = -100;
        let w: Vec<f32> = (0..cols).map(|_| rng.uniform(0.1, 2.0)).collect();
        let mut q: Vec<f32> = (0..rows * cols).map(|_| rng.unit()).collect();
        for row in q.chunks_mut(cols) {
            let s: f32 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s.max(1e-6));
        }
        let option_sets = [
            CrossEntropyOptions::default(),
            CrossEntropyOptions {
                weight: Some(&w[..]),
                label_smoothing: 0.1,
                reduction: Reduction::Sum,
                ..Default::default()
            },
            CrossEntropyOptions {
                z_loss: 1e-3,
                softcap: Some(4.0),
                reduction: Reduction::None,
                grad_scale: 0.5,
                ..Default::default()
            },
        ];
        for (k, opts) in option_sets.iter().enumerate() {
            let tag = format!("{rows}x{cols} options {k}");
            let want = reference::cross_entropy(&x, &t, cols, opts).unwrap();
            for request in [
                Request::LossAndGrad,
                Request::LossAndGradInPlace,
                Request::Loss,
            ] {
                let got = ctx
                    .cross_entropy(&x, &t, cols, opts, request)
                    .await
                    .expect("ce");
                assert_close(&format!("ce loss {tag} {request:?}"), &got.loss, &want.loss);
                assert_close(&format!("ce lse {tag} {request:?}"), &got.lse, &want.lse);
                match got.grad {
                    Some(g) => assert_close(&format!("ce grad {tag} {request:?}"), &g, &want.grad),
                    None => assert_eq!(request, Request::Loss, "{tag}: a gradient was asked for"),
                }
            }
            let soft = CrossEntropyOptions {
                ignore_index: -100,
                ..*opts
            };
            let want = reference::cross_entropy_probs(&x, &q, cols, &soft).unwrap();
            let got = ctx
                .cross_entropy_probs(&x, &q, cols, &soft, Request::LossAndGrad)
                .await
                .expect("probability targets");
            assert_close(&format!("probs loss {tag}"), &got.loss, &want.loss);
            assert_close(
                &format!("probs grad {tag}"),
                got.grad.as_deref().unwrap(),
                &want.grad,
            );
        }
    }
}

#[wasm_bindgen_test]
async fn binary_losses_and_both_focal_losses() {
    let Some(ctx) = gpu().await else { return };
    let mut rng = Rng(13);
    for (rows, cols) in SHAPES {
        let n = rows * cols;
        let x = rng.vec(n, 6.0);
        let p: Vec<f32> = (0..n).map(|_| rng.uniform(0.01, 0.99)).collect();
        let y: Vec<f32> = (0..n).map(|_| rng.unit().round()).collect();
        let w: Vec<f32> = (0..cols).map(|_| rng.uniform(0.1, 2.0)).collect();
        let pw: Vec<f32> = (0..cols).map(|_| rng.uniform(0.5, 3.0)).collect();
        let tag = format!("{rows}x{cols}");
        let bo = BinaryLossOptions {
            weight: Some(&w[..]),
            reduction: Reduction::None,
            ..Default::default()
        };
        let got = ctx
            .binary_cross_entropy(&p, &y, cols, &bo, Request::LossAndGrad)
            .await
            .expect("bce");
        let want = reference::binary_cross_entropy(&p, &y, cols, &bo).unwrap();
        assert_close(&format!("bce loss {tag}"), &got.loss, &want.loss);
        assert_close(
            &format!("bce grad {tag}"),
            got.grad.as_deref().unwrap(),
            &want.grad,
        );
        let lo = BinaryLossOptions {
            pos_weight: Some(&pw[..]),
            ..bo
        };
        let got = ctx
            .binary_cross_entropy_with_logits(&x, &y, cols, &lo, Request::LossAndGrad)
            .await
            .expect("bce with logits");
        let want = reference::binary_cross_entropy_with_logits(&x, &y, cols, &lo).unwrap();
        assert_close(&format!("bce-logits loss {tag}"), &got.loss, &want.loss);
        assert_close(
            &format!("bce-logits grad {tag}"),
            got.grad.as_deref().unwrap(),
            &want.grad,
        );

        let so = SigmoidFocalOptions {
            reduction: Reduction::Mean,
            ..Default::default()
        };
        let got = ctx
            .sigmoid_focal_loss(&x, &y, cols, &so, Request::LossAndGrad)
            .await
            .expect("sigmoid focal");
        let want = reference::sigmoid_focal_loss(&x, &y, cols, &so).unwrap();
        assert_close(&format!("sigmoid focal loss {tag}"), &got.loss, &want.loss);
        assert_close(
            &format!("sigmoid focal grad {tag}"),
            got.grad.as_deref().unwrap(),
            &want.grad,
        );

        let t: Vec<i64> = (0..rows).map(|_| rng.below(cols) as i64).collect();
        let alpha: Vec<f32> = (0..cols).map(|_| rng.uniform(0.1, 1.0)).collect();
        let fo = FocalOptions {
            alpha: Some(&alpha[..]),
            gamma: 1.5,
            ..Default::default()
        };
        let got = ctx
            .focal_loss(&x, &t, cols, &fo, Request::LossAndGrad)
            .await
            .expect("focal");
        let want = reference::focal_loss(&x, &t, cols, &fo).unwrap();
        assert_close(&format!("focal loss {tag}"), &got.loss, &want.loss);
        assert_close(
            &format!("focal grad {tag}"),
            got.grad.as_deref().unwrap(),
            &want.grad,
        );
    }
}

/// Copies `len` f32 out of `buffer`, awaiting the mapping (the browser
/// resolves it from its event loop).
async fn read(ctx: &GpuContext, buffer: &wgpu::Buffer, offset: u64, len: usize) -> Vec<f32> {
    let size = (len as u64 * 4).max(4);
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
    ctx.queue().submit([enc.finish()]);
    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = sender.send(r);
    });
    receiver.receive().await.expect("callback").expect("mapped");
    let out =
        bytemuck::pod_collect_to_vec(&staging.get_mapped_range(..).expect("range")[..len * 4]);
    staging.unmap();
    out
}

/// The encode API, into the caller's encoder over the caller's buffer: the
/// same bits as the host API, gradient in place, class weights as a view.
#[wasm_bindgen_test]
async fn the_encode_api_records_into_the_callers_encoder() {
    let Some(ctx) = gpu().await else { return };
    let (rows, cols) = (300, 257);
    let mut rng = Rng(14);
    let x = rng.vec(rows * cols, 4.0);
    let t: Vec<i32> = (0..rows).map(|_| rng.below(cols) as i32).collect();
    let w: Vec<f32> = (0..cols).map(|_| rng.uniform(0.5, 1.5)).collect();
    let align = u64::from(ctx.limits().min_storage_buffer_offset_alignment);
    let place = |bytes: u64| bytes.div_ceil(align) * align;
    // Logits, targets, the loss pair and the class weights, one after another.
    let xo = 0;
    let to = xo + place(x.len() as u64 * 4);
    let lo = to + place(t.len() as u64 * 4);
    let wo = lo + place(8);
    let size = wo + place(w.len() as u64 * 4);
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("caller's buffer"),
        size,
        usage,
        mapped_at_creation: false,
    });
    ctx.queue()
        .write_buffer(&buffer, xo, bytemuck::cast_slice(&x));
    ctx.queue()
        .write_buffer(&buffer, to, bytemuck::cast_slice(&t));
    ctx.queue()
        .write_buffer(&buffer, lo, bytemuck::cast_slice(&[POISON, POISON]));
    ctx.queue()
        .write_buffer(&buffer, wo, bytemuck::cast_slice(&w));
    let weight = GpuTensor::f32_vector(&buffer, wo, cols);
    let options: CrossEntropyOptions<'_> = CrossEntropyOptions {
        label_smoothing: 0.05,
        ..Default::default()
    };
    let views = CrossEntropyViews {
        logits: GpuTensor::f32_matrix(&buffer, xo, rows, cols),
        targets: GpuTensor::i32_vector(&buffer, to, rows),
        loss: GpuTensor::f32_vector(&buffer, lo, 2),
        grad: GradOutput::InPlace,
        lse: None,
    };
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    ctx.encode_cross_entropy(&mut encoder, &views, &options.with_weight(Some(&weight)))
        .expect("encode");
    ctx.queue().submit([encoder.finish()]);
    ctx.check_errors().await.expect("no device error");
    let loss = read(&ctx, &buffer, lo, 2).await;
    let grad = read(&ctx, &buffer, xo, rows * cols).await;
    let host_options = options.with_weight(Some(&w[..]));
    let host = ctx
        .cross_entropy(&x, &t, cols, &host_options, Request::LossAndGrad)
        .await
        .expect("host");
    assert_eq!(
        loss[0].to_bits(),
        host.loss[0].to_bits(),
        "encode and host loss bits"
    );
    let host_grad = host.grad.expect("grad");
    assert!(
        grad.iter()
            .zip(&host_grad)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "encode and host gradient bits"
    );
    let t64: Vec<i64> = t.iter().map(|&v| i64::from(v)).collect();
    let want = reference::cross_entropy(&x, &t64, cols, &host_options).unwrap();
    assert_close("encoded loss", &loss[..1], &want.loss);
    assert_close("encoded grad", &grad, &want.grad);

    // The same call prepared once and encoded again on fresh logits (the
    // gradient is in place): the same bits, nothing created by the replay.
    let step = ctx
        .prepare(|encoder| {
            ctx.encode_cross_entropy(encoder, &views, &options.with_weight(Some(&weight)))
        })
        .expect("prepare");
    ctx.queue()
        .write_buffer(&buffer, xo, bytemuck::cast_slice(&x));
    let made = ctx.encode_buffers_created();
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    step.encode(&mut encoder);
    ctx.queue().submit([encoder.finish()]);
    ctx.check_errors().await.expect("no device error");
    assert_eq!(
        ctx.encode_buffers_created(),
        made,
        "the replay created something"
    );
    let replayed = read(&ctx, &buffer, xo, rows * cols).await;
    assert!(
        replayed
            .iter()
            .zip(&host_grad)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "prepared and host gradient bits"
    );
}

/// Bad input is the crate's `Error`, not a panic or a console exception.
#[wasm_bindgen_test]
async fn bad_input_comes_back_as_the_crates_error() {
    let Some(ctx) = gpu().await else { return };
    let e = ctx
        .cross_entropy(
            &[0.0; 6],
            &[0i64, 3],
            3,
            &Default::default(),
            Request::LossAndGrad,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::TargetOutOfRange {
                row: 1,
                target: 3,
                ..
            }
        ),
        "{e}"
    );
    let e = ctx.softmax(&[0.0; 5], 2, 3).await.unwrap_err();
    assert!(
        matches!(
            e,
            Error::LengthMismatch {
                expected: 6,
                actual: 5,
                ..
            }
        ),
        "{e}"
    );
    let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 256,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let x = GpuTensor::f32_matrix(&buffer, 4, 2, 3);
    let out = GpuTensor::f32_matrix(&buffer, 0, 2, 3);
    let e = ctx
        .encode_softmax(&mut encoder, SoftmaxOp::Softmax, &x, &out)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidView { name: "x", .. }), "{e}");
    // The context is still usable.
    let y = ctx.softmax(&[0.0, 0.0], 1, 2).await.expect("softmax");
    assert_eq!(y, vec![0.5, 0.5]);
}

/// f16 storage in the browser, which needs no `shader-f16` (the software
/// adapter Chromium ships has none): f16 is packed into `u32` words.
#[wasm_bindgen_test]
async fn f16_softmax_and_cross_entropy_without_shader_f16() {
    let Some(ctx) = gpu().await else { return };
    let (rows, cols) = (4, 300);
    let x: Vec<f32> = Rng(15).vec(rows * cols, 3.0);
    let bits: Vec<u16> = x.iter().map(|&v| f16_bits(v)).collect();
    let xr: Vec<f32> = bits.iter().map(|&b| f16_value(b)).collect();
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 2 * 4096,
        usage,
        mapped_at_creation: false,
    });
    ctx.queue()
        .write_buffer(&buffer, 0, bytemuck::cast_slice(&bits));
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    ctx.encode_softmax(
        &mut encoder,
        SoftmaxOp::Softmax,
        &GpuTensor::f16_matrix(&buffer, 0, rows, cols),
        &GpuTensor::f16_matrix(&buffer, 4096, rows, cols),
    )
    .expect("encode");
    ctx.queue().submit([encoder.finish()]);
    let raw = read(&ctx, &buffer, 4096, rows * cols / 2).await;
    let out: Vec<f32> = bytemuck::cast_slice::<f32, u16>(&raw)
        .iter()
        .map(|&b| f16_value(b))
        .collect();
    assert_within(
        "f16 softmax",
        &out,
        &reference::softmax(&xr, rows, cols).unwrap(),
        F16_TOLERANCE,
    );
    // Cross-entropy with an f16 gradient at an odd C (edged rows, packed
    // words shared by neighbouring rows), through the host API.
    let (rows, classes) = (7, 301);
    let x: Vec<wgpu_loss::half::f16> = Rng(16)
        .vec(rows * classes, 3.0)
        .iter()
        .map(|&v| wgpu_loss::half::f16::from_f32(v))
        .collect();
    let xr: Vec<f32> = x.iter().map(|v| v.to_f32()).collect();
    let t: Vec<i64> = (0..rows as i64)
        .map(|r| (r * 43) % classes as i64)
        .collect();
    let opts = CrossEntropyOptions {
        label_smoothing: 0.1,
        ..Default::default()
    };
    let out = ctx
        .cross_entropy(&x, &t, classes, &opts, wgpu_loss::Request::LossAndGrad)
        .await
        .expect("f16 cross-entropy");
    let want = reference::cross_entropy(&xr, &t, classes, &opts).unwrap();
    assert_within(
        "f16 cross-entropy grad",
        &out.grad.expect("grad"),
        &want.grad,
        F16_TOLERANCE,
    );
}

/// f32 to f16 bits, round to nearest even (normal range only, enough here).
fn f16_bits(v: f32) -> u16 {
    let b = v.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    if exp <= 0 {
        return sign;
    }
    let mant = b & 0x7f_ffff;
    let mut h = (exp as u32) << 10 | (mant >> 13);
    let rest = mant & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        h += 1;
    }
    sign | h as u16
}

fn f16_value(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let mant = f32::from(h & 0x3ff);
    match exp {
        0 => sign * mant * 2f32.powi(-24),
        _ => sign * (1.0 + mant / 1024.0) * 2f32.powi(exp - 15),
    }
}

/// [`assert_within`] at the product rule's scale (`tolerance::LinearScales`).
#[track_caller]
fn assert_within_at(what: &str, actual: &[f32], expected: &[f64], scale: f64, tol: Tolerance) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    if let Some(i) = actual.iter().position(|v| v.to_bits() == POISON.to_bits()) {
        panic!("{what}: element {i} was never written (still holds the poison value)");
    }
    if let Some(m) = tol.first_mismatch_at_scale(actual, expected, scale) {
        panic!("{what}: {m} (product scale {scale:e})");
    }
}

/// The fused linear + cross-entropy in the browser, the language-model head
/// of a training step that never leaves the page: through the host API in
/// f32 with every gradient, a workspace of a few rows (many chunks), shapes
/// that fill no tile, and the options Gemma-style heads use; then through
/// the encode API with bf16 hidden states, classifier and gradients (packed
/// words: no feature needed), all against the f64 reference.
#[wasm_bindgen_test]
async fn fused_linear_cross_entropy_in_f32_and_bf16() {
    use wgpu_loss::half::bf16;
    use wgpu_loss::tolerance::LinearScales;
    use wgpu_loss::{
        LinearCrossEntropyOptions, LinearCrossEntropyOutput, LinearCrossEntropyViews, LinearGrads,
        LinearShape, BF16_TOLERANCE,
    };
    let Some(ctx) = gpu().await else { return };
    let (rows, d, v) = (37, 19, 301);
    let shape = LinearShape {
        rows,
        hidden: d,
        classes: v,
    };
    let mut rng = Rng(17);
    let h0 = rng.vec(rows * d, 1.0);
    let w0 = rng.vec(v * d, 0.5);
    let b = rng.vec(v, 0.1);
    let t: Vec<i64> = (0..rows)
        .map(|r| {
            if r % 7 == 3 {
                -100
            } else {
                rng.below(v) as i64
            }
        })
        .collect();
    let loss = CrossEntropyOptions {
        label_smoothing: 0.1,
        z_loss: 1e-3,
        softcap: Some(30.0),
        ..Default::default()
    };
    let check =
        |what: &str, h: &[f32], w: &[f32], out: &LinearCrossEntropyOutput, grad_tol: Tolerance| {
            let r = reference::linear_cross_entropy(h, w, Some(&b), &t, shape, &loss).unwrap();
            let s = LinearScales::of(h, w, Some(&b), shape, &loss, &r);
            let f32_at = |name: &str, a: &[f32], e: &[f64], scale: f64| {
                assert_within_at(&format!("{what} {name}"), a, e, scale, F32_TOLERANCE)
            };
            f32_at("loss", &out.loss, &r.loss, s.loss);
            f32_at("lse", &out.lse, &r.lse, s.lse);
            f32_at(
                "grad_bias",
                out.grad_bias.as_deref().unwrap(),
                &r.grad_bias,
                s.grad_bias,
            );
            assert_within_at(
                &format!("{what} grad_hidden"),
                out.grad_hidden.as_deref().unwrap(),
                &r.grad_hidden,
                s.grad_hidden,
                grad_tol,
            );
            assert_within_at(
                &format!("{what} grad_classifier"),
                out.grad_classifier.as_deref().unwrap(),
                &r.grad_classifier,
                s.grad_classifier,
                grad_tol,
            );
        };
    let options = LinearCrossEntropyOptions {
        loss,
        workspace_bytes: Some(6 * v as u64 * 4),
        ..Default::default()
    };
    let out = ctx
        .linear_cross_entropy(&h0, &w0, Some(&b), &t, shape, &options, LinearGrads::ALL)
        .await
        .expect("fused linear + cross-entropy");
    check("f32 host API", &h0, &w0, &out, F32_TOLERANCE);

    // bf16 H, W, dH and dW in one buffer of the page's own, each at a
    // 256-byte-aligned offset; bias, targets, loss, lse and db in f32.
    let to_bf16 =
        |x: &[f32]| -> Vec<u16> { x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect() };
    let widen =
        |x: &[u16]| -> Vec<f32> { x.iter().map(|&b| bf16::from_bits(b).to_f32()).collect() };
    let (hb, wb) = (to_bf16(&h0), to_bf16(&w0));
    let (h, w) = (widen(&hb), widen(&wb));
    let t32: Vec<i32> = t.iter().map(|&x| x as i32).collect();
    let at = |bytes: usize| bytes.div_ceil(256) as u64 * 256;
    let (ho, wo) = (0, at(hb.len() * 2));
    let bo = wo + at(wb.len() * 2);
    let to = bo + at(v * 4);
    let lo = to + at(rows * 4);
    let lseo = lo + 256;
    let dho = lseo + at(rows * 4);
    let dwo = dho + at(rows * d * 2);
    let dbo = dwo + at(v * d * 2);
    let size = dbo + at(v * 4);
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let buffer = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("bf16 head"),
        size,
        usage,
        mapped_at_creation: false,
    });
    // Every output starts as bf16 NaN pairs (f32 outputs as NaN too).
    let poison = vec![0x7FC1_7FC1u32; size as usize / 4];
    ctx.queue()
        .write_buffer(&buffer, 0, bytemuck::cast_slice(&poison));
    let put = |offset: u64, halves: &[u16]| {
        let mut words = vec![0u32; halves.len().div_ceil(2)];
        bytemuck::cast_slice_mut::<u32, u16>(&mut words)[..halves.len()].copy_from_slice(halves);
        ctx.queue()
            .write_buffer(&buffer, offset, bytemuck::cast_slice(&words));
    };
    put(ho, &hb);
    put(wo, &wb);
    ctx.queue()
        .write_buffer(&buffer, bo, bytemuck::cast_slice(&b));
    ctx.queue()
        .write_buffer(&buffer, to, bytemuck::cast_slice(&t32));
    let views = LinearCrossEntropyViews {
        hidden: GpuTensor::bf16_matrix(&buffer, ho, rows, d),
        classifier: GpuTensor::bf16_matrix(&buffer, wo, v, d),
        bias: Some(GpuTensor::f32_vector(&buffer, bo, v)),
        targets: GpuTensor::i32_vector(&buffer, to, rows),
        loss: GpuTensor::f32_vector(&buffer, lo, 2),
        lse: Some(GpuTensor::f32_vector(&buffer, lseo, rows)),
        grad_hidden: Some(GpuTensor::bf16_matrix(&buffer, dho, rows, d)),
        grad_classifier: Some(GpuTensor::bf16_matrix(&buffer, dwo, v, d)),
        grad_bias: Some(GpuTensor::f32_vector(&buffer, dbo, v)),
    };
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    let encode_options = LinearCrossEntropyOptions {
        loss: loss.with_weight(None),
        workspace_bytes: options.workspace_bytes,
        ..Default::default()
    };
    ctx.encode_linear_cross_entropy(&mut encoder, &views, &encode_options)
        .expect("encode bf16");
    ctx.queue().submit([encoder.finish()]);
    let halves = |words: Vec<f32>, n: usize| -> Vec<f32> {
        widen(&bytemuck::cast_slice::<f32, u16>(&words)[..n])
    };
    let loss_pair = read(&ctx, &buffer, lo, 2).await;
    let out = LinearCrossEntropyOutput {
        loss: vec![loss_pair[0]],
        z_loss: vec![loss_pair[1]],
        lse: read(&ctx, &buffer, lseo, rows).await,
        grad_hidden: Some(halves(
            read(&ctx, &buffer, dho, (rows * d).div_ceil(2)).await,
            rows * d,
        )),
        grad_classifier: Some(halves(
            read(&ctx, &buffer, dwo, (v * d).div_ceil(2)).await,
            v * d,
        )),
        grad_bias: Some(read(&ctx, &buffer, dbo, v).await),
    };
    check("bf16 encode API", &h, &w, &out, BF16_TOLERANCE);
}
