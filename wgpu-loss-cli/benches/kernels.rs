//! Criterion benches: every op, GPU kernel-only (resident buffers, dispatch +
//! wait), GPU end to end (upload + compute + readback) and the CPU path, with
//! throughput in ideal bytes so criterion prints GB/s.
//!
//! `cargo bench` runs them on whatever adapter wgpu picks; with no adapter
//! only the CPU benches run (and a line says so).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wgpu_loss::{DType, GpuContext};
use wgpu_loss_cli::bench::{self, BenchInput, CopyKernel, CpuFastOp, Op, ResidentOp};

/// Small, medium and large-vocabulary shapes (issue 7's): many short rows, a
/// 32k vocabulary, few rows of a 256k vocabulary. On lavapipe the whole run
/// takes tens of minutes; filter with `cargo bench -- cross-entropy/` etc.
const SHAPES: [(usize, usize); 3] = [(4096, 1000), (4096, 32_768), (64, 262_144)];

/// Elements past which the f64 reference is not benched (seconds per call):
/// it is the oracle, not a contender.
const REFERENCE_MAX_ELEMENTS: usize = 1 << 24;

fn benches(c: &mut Criterion) {
    let ctx = match wgpu_loss::block_on(GpuContext::new()) {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            eprintln!("no GPU adapter ({e}): benching the CPU path only");
            None
        }
    };
    for (rows, cols) in SHAPES {
        let input = BenchInput::new(rows, cols).expect("bench shape is valid");
        let shape = format!("{rows}x{cols}");
        if let Some(ctx) = &ctx {
            let copy = CopyKernel::new(ctx, rows * cols).expect("copy buffers fit");
            let mut group = c.benchmark_group("copy");
            group.sample_size(10);
            group.throughput(Throughput::Bytes(copy.bytes()));
            group.bench_function(BenchmarkId::new("gpu-kernel", &shape), |b| {
                b.iter_custom(|n| {
                    (0..n)
                        .map(|_| copy.run().expect("copy runs"))
                        .sum::<Duration>()
                })
            });
            group.finish();
        }
        for op in Op::ALL {
            let mut group = c.benchmark_group(op.name());
            group.sample_size(10);
            group.throughput(Throughput::Bytes(op.ideal_bytes(rows, cols, 4)));
            if let Some(ctx) = &ctx {
                for dtype in [DType::F32, DType::F16] {
                    // f16 where the adapter and the op have it (binary losses are f32 only).
                    let Ok(resident) = ResidentOp::new(ctx, op, &input, dtype) else {
                        continue;
                    };
                    resident.run().expect("warm-up run");
                    let id = format!("gpu-kernel-{dtype:?}").to_lowercase();
                    group.throughput(Throughput::Bytes(op.ideal_bytes(rows, cols, dtype.size())));
                    group.bench_function(BenchmarkId::new(id, &shape), |b| {
                        b.iter_custom(|n| {
                            (0..n)
                                .map(|_| resident.run().expect("kernel runs"))
                                .sum::<Duration>()
                        })
                    });
                }
                group.throughput(Throughput::Bytes(op.ideal_bytes(rows, cols, 4)));
                group.bench_function(BenchmarkId::new("gpu-end-to-end", &shape), |b| {
                    b.iter(|| pollster::block_on(bench::run_end_to_end(ctx, op, &input)))
                });
            }
            if let Some(mut fast) = CpuFastOp::new(op, &input) {
                group.bench_function(BenchmarkId::new("cpu-fast", &shape), |b| {
                    b.iter_custom(|n| {
                        (0..n)
                            .map(|_| fast.time().expect("cpu runs"))
                            .sum::<Duration>()
                    })
                });
            }
            if rows * cols <= REFERENCE_MAX_ELEMENTS {
                group.bench_function(BenchmarkId::new("cpu-reference", &shape), |b| {
                    b.iter(|| bench::run_cpu(op, &input))
                });
            }
            group.finish();
        }
    }
}

criterion_group!(kernels, benches);
criterion_main!(kernels);
