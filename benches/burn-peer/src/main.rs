//! burn-peer: times burn 0.22.1's wgpu-backend matrix product (fusion and
//! autotune on, as burn ships) as the peer yardstick for our own WGSL matmul.
//!
//! Usage:
//!   burn-peer [MxKxN ...] [--big] [--linear-ce NxDxV]
//!
//! For each shape, A [M, K] and B [K, N] are random f32 tensors on burn's
//! default wgpu device; C = A.matmul(B) runs once as a warm-up (autotune picks
//! its kernel there), then three timed runs. Each timed region ends with a
//! read-back of C[0..1, 0..1] and a device sync, so it covers the GPU work.
//! With no shape given, 1024x512x8192 is timed; `--big` adds 4096x1024x32768.
//!
//! `--linear-ce NxDxV` also times forward + backward of logits = H·Wᵀ
//! (H [N, D], W [V, D]) through burn's CrossEntropyLoss on an autodiff device:
//! three products (logits, dH, dW), 6·N·D·V flops.

use std::process::ExitCode;
use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, DeviceKind, Distribution, FloatDType, Int, IntDType, Tensor};

const TIMED_RUNS: usize = 3;
const DEFAULT_SHAPE: [usize; 3] = [1024, 512, 8192];
const BIG_SHAPE: [usize; 3] = [4096, 1024, 32768];

const USAGE: &str = "usage: burn-peer [MxKxN ...] [--big] [--linear-ce NxDxV]

  MxKxN             matmul shapes to time (A is [M, K], B is [K, N]);
                    default 1024x512x8192
  --big             also time 4096x1024x32768
  --linear-ce NxDxV also time forward+backward of a linear layer (H [N, D],
                    W [V, D], logits = H.W^T) with burn's CrossEntropyLoss
                    through Autodiff

Environment: CUBECL_WGPU_DEFAULT_DEVICE (e.g. DiscreteGpu(0)) overrides which
adapter burn's default wgpu device picks.";

fn parse_triple(s: &str) -> Result<[usize; 3], String> {
    let parts: Vec<&str> = s.split(['x', 'X']).collect();
    if parts.len() != 3 {
        return Err(format!("bad shape {s:?}: expected AxBxC, e.g. 1024x512x8192"));
    }
    let mut out = [0usize; 3];
    for (slot, p) in out.iter_mut().zip(&parts) {
        *slot = p
            .trim()
            .parse()
            .map_err(|_| format!("bad shape {s:?}: {p:?} is not a positive integer"))?;
        if *slot == 0 {
            return Err(format!("bad shape {s:?}: dimensions must be positive"));
        }
    }
    Ok(out)
}

struct Args {
    shapes: Vec<[usize; 3]>,
    linear_ce: Option<[usize; 3]>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut shapes = Vec::new();
    let mut big = false;
    let mut linear_ce = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--big" => big = true,
            "--linear-ce" => {
                let v = it
                    .next()
                    .ok_or_else(|| "--linear-ce needs a shape NxDxV".to_string())?;
                linear_ce = Some(parse_triple(&v)?);
            }
            s if s.starts_with("--linear-ce=") => {
                linear_ce = Some(parse_triple(&s["--linear-ce=".len()..])?);
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s:?}")),
            s => shapes.push(parse_triple(s)?),
        }
    }
    if shapes.is_empty() {
        shapes.push(DEFAULT_SHAPE);
    }
    if big {
        shapes.push(BIG_SHAPE);
    }
    Ok(Some(Args { shapes, linear_ce }))
}

/// The adapter burn's default wgpu device resolves to, found the way cubecl
/// resolves `DefaultDevice` (a high-performance adapter request on a fresh
/// instance), through the exact wgpu version burn re-exports. Burn does not
/// hand its adapter info out through the high-level `Device`, so this is a
/// second, short-lived instance; "default" if that fails.
fn adapter_name() -> String {
    use burn::tensor::wgpu::wgpu;
    let override_note = std::env::var("CUBECL_WGPU_DEFAULT_DEVICE")
        .map(|v| format!(" [CUBECL_WGPU_DEFAULT_DEVICE={v}, may differ]"))
        .unwrap_or_default();
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
        ..Default::default()
    }));
    match adapter {
        Ok(adapter) => {
            let info = adapter.get_info();
            format!("{} ({:?}){override_note}", info.name, info.backend)
        }
        Err(_) => format!("default{override_note}"),
    }
}

/// End of a timed region: read back one element of `t` (this needs every op
/// producing `t` to have run, fused or not) and wait for the device to drain.
/// `t` is borrowed, so the full tensor stays alive: the product cannot be
/// narrowed to the element read.
fn finish(device: &Device, t: &Tensor<2>) {
    let probe = t.clone().slice([0..1, 0..1]).into_data();
    std::hint::black_box(probe);
    device.sync().expect("device sync failed");
}

fn median_ms(mut secs: Vec<f64>) -> f64 {
    secs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    secs[secs.len() / 2] * 1e3
}

fn fmt_runs(secs: &[f64]) -> String {
    secs.iter()
        .map(|s| format!("{:.3}", s * 1e3))
        .collect::<Vec<_>>()
        .join(", ")
}

fn bench_matmul(device: &Device, [m, k, n]: [usize; 3], adapter: &str) {
    let a = Tensor::<2>::random([m, k], Distribution::Uniform(-1.0, 1.0), device);
    let b = Tensor::<2>::random([k, n], Distribution::Uniform(-1.0, 1.0), device);
    // The inputs exist on the device before any clock starts.
    device.sync().expect("device sync failed");

    // Warm-up: kernel compilation and autotune happen here.
    let t0 = Instant::now();
    let c = a.clone().matmul(b.clone());
    finish(device, &c);
    let warm = t0.elapsed().as_secs_f64();
    drop(c);

    let mut runs = Vec::with_capacity(TIMED_RUNS);
    for _ in 0..TIMED_RUNS {
        let t0 = Instant::now();
        let c = a.clone().matmul(b.clone());
        finish(device, &c);
        runs.push(t0.elapsed().as_secs_f64());
        drop(c);
    }

    let flops = 2.0 * m as f64 * k as f64 * n as f64;
    let med = median_ms(runs.clone());
    println!(
        "burn-wgpu matmul {m}x{k}x{n}: median {med:.3} ms, {:.1} GFLOP/s (2*M*K*N flops), adapter: {adapter}",
        flops / (med * 1e-3) / 1e9
    );
    eprintln!(
        "  warm-up {:.1} ms; timed runs [{}] ms",
        warm * 1e3,
        fmt_runs(&runs)
    );
}

fn bench_linear_ce(device: &Device, [n, d, v]: [usize; 3], adapter: &str) {
    let ad = device.clone().autodiff();
    let ce = CrossEntropyLossConfig::new().init(&ad);
    let h = Tensor::<2>::random([n, d], Distribution::Uniform(-1.0, 1.0), &ad).require_grad();
    let w = Tensor::<2>::random([v, d], Distribution::Uniform(-0.05, 0.05), &ad).require_grad();
    let targets =
        Tensor::<1, Int>::random([n], Distribution::Uniform(0.0, (v - 1) as f64), &ad);
    ad.sync().expect("device sync failed");

    // One step: forward, loss, backward, and wait for both gradients.
    let step = || -> f32 {
        let logits = h.clone().matmul(w.clone().transpose());
        let loss = ce.forward(logits, targets.clone());
        let grads = loss.backward();
        let gh = h.grad(&grads).expect("no gradient for H");
        let gw = w.grad(&grads).expect("no gradient for W");
        finish(&ad, &gh);
        finish(&ad, &gw);
        loss.into_data().to_vec::<f32>().map(|v| v[0]).unwrap_or(f32::NAN)
    };

    let t0 = Instant::now();
    let _ = step();
    let warm = t0.elapsed().as_secs_f64();

    let mut runs = Vec::with_capacity(TIMED_RUNS);
    let mut loss = f32::NAN;
    for _ in 0..TIMED_RUNS {
        let t0 = Instant::now();
        loss = step();
        runs.push(t0.elapsed().as_secs_f64());
    }

    let flops = 6.0 * n as f64 * d as f64 * v as f64;
    let med = median_ms(runs.clone());
    println!(
        "burn-wgpu linear+CE fwd+bwd {n}x{d}x{v}: median {med:.3} ms, {:.1} GFLOP/s (6*N*D*V flops), loss {loss:.4} (ln V = {:.4}), adapter: {adapter}",
        flops / (med * 1e-3) / 1e9,
        (v as f64).ln()
    );
    eprintln!(
        "  warm-up {:.1} ms; timed runs [{}] ms",
        warm * 1e3,
        fmt_runs(&runs)
    );
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("burn-peer: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let adapter = adapter_name();

    // Burn's default wgpu device; pin the default dtypes to f32/i32 (as
    // burn's own benches do) before any tensor touches it.
    let mut device = Device::wgpu(DeviceKind::DefaultDevice);
    if let Err(e) = device.configure((FloatDType::F32, IntDType::I32)) {
        eprintln!("burn-peer: note: could not pin dtypes ({e:?}); using device defaults");
    }

    for shape in &args.shapes {
        bench_matmul(&device, *shape, &adapter);
    }
    if let Some(shape) = args.linear_ce {
        bench_linear_ce(&device, shape, &adapter);
    }
    ExitCode::SUCCESS
}
