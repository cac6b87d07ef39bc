//! burn's `CrossEntropyLoss` against this crate's `cross_entropy`, forward
//! and backward through burn's autodiff, on the same adapter in the same
//! run, with burn's default features (fusion and autotune):
//!
//! ```sh
//! cargo bench -p wgpu-loss-burn --bench burn_cross_entropy [-- ROWSxCOLS ...]
//! ```
//!
//! The timed region is the same for both: from logits already on the device
//! to the loss and the logits' gradient on the device. It starts after a
//! device sync and ends with a read of the loss and of one gradient element
//! (which makes fusion run everything that produces them) and a device sync.
//! Each side runs once untimed (kernel compilation, autotune), then
//! `RUNS` timed; the median is reported. The rate counts ideal bytes: the
//! logits read once and the gradient written once, `8·N·C` for f32.

use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Distribution, Int, Tensor};
use wgpu_loss_burn::{cross_entropy, CrossEntropyOptions, SharedDevice};

const RUNS: usize = 5;
const SHAPES: [(usize, usize); 3] = [(4096, 1000), (1024, 32000), (256, 128000)];

fn finish(device: &Device, loss: Tensor<1>, grad: Tensor<2>) {
    let loss = loss.into_data();
    let probe = grad.slice([0..1, 0..1]).into_data();
    std::hint::black_box((loss, probe));
    device.sync().expect("device sync");
}

fn median_ms(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2] * 1e3
}

fn time(mut step: impl FnMut()) -> f64 {
    step();
    let runs = (0..RUNS)
        .map(|_| {
            let t0 = Instant::now();
            step();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    median_ms(runs)
}

/// The library's copy kernel over `elems` f32 values on the shared device, ms.
fn copy_ms(shared: &SharedDevice, elems: usize) -> f64 {
    let ctx = shared.context();
    let device = ctx.device();
    let buffer = |label| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: elems as u64 * 4,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let (src, dst) = (buffer("copy source"), buffer("copy destination"));
    time(|| {
        let mut encoder = device.create_command_encoder(&Default::default());
        ctx.encode_copy(&mut encoder, &src, &dst, elems)
            .expect("copy kernel");
        ctx.queue().submit([encoder.finish()]);
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("device idle");
    })
}

fn parse(arg: &str) -> Option<(usize, usize)> {
    let (r, c) = arg.split_once(['x', 'X'])?;
    Some((r.parse().ok()?, c.parse().ok()?))
}

fn main() {
    let shapes: Vec<(usize, usize)> = {
        let given: Vec<_> = std::env::args().skip(1).filter_map(|a| parse(&a)).collect();
        if given.is_empty() {
            SHAPES.to_vec()
        } else {
            given
        }
    };
    let shared = match SharedDevice::from_burn() {
        Ok(shared) => shared,
        Err(e) => {
            eprintln!("SKIPPED (no wgpu adapter for burn: {e})");
            return;
        }
    };
    let device = shared.device().clone().autodiff();
    println!("adapter: {}", shared.context().describe());
    println!(
        "{:>14}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>8}  {:>8}",
        "shape",
        "burn ms",
        "ours ms",
        "copy ms",
        "burn GB/s",
        "ours GB/s",
        "copy GB/s",
        "ours/copy",
        "speedup"
    );
    for (n, c) in shapes {
        let logits = Tensor::<2>::random([n, c], Distribution::Uniform(-4.0, 4.0), &device);
        let targets = Tensor::<1, Int>::random([n], Distribution::Uniform(0.0, c as f64), &device);
        device.sync().expect("device sync");
        let ce = CrossEntropyLossConfig::new().init(&device);
        let burn_ms = time(|| {
            let x = logits.clone().detach().require_grad();
            let loss = ce.forward(x.clone(), targets.clone());
            let grad = x.grad(&loss.backward()).expect("burn's gradient");
            finish(&device, loss, grad);
        });
        let options = CrossEntropyOptions::default();
        let ours_ms = time(|| {
            let x = logits.clone().detach().require_grad();
            let loss = cross_entropy(x.clone(), targets.clone(), &options).expect("our loss");
            let grad = x.grad(&loss.backward()).expect("our gradient");
            finish(&device, loss, grad);
        });
        let copy_ms = copy_ms(&shared, n * c);
        let bytes = 8.0 * n as f64 * c as f64;
        let rate = |ms: f64| bytes / (ms * 1e-3) / 1e9;
        println!(
            "{:>14}  {:>9.2}  {:>9.2}  {:>9.2}  {:>9.2}  {:>9.2}  {:>9.2}  {:>8.2}  {:>7.1}x",
            format!("{n}x{c}"),
            burn_ms,
            ours_ms,
            copy_ms,
            rate(burn_ms),
            rate(ours_ms),
            rate(copy_ms),
            copy_ms / ours_ms,
            burn_ms / ours_ms
        );
    }
}
