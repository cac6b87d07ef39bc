//! `wgpu-loss`: adapter information and GPU-against-CPU benchmarks.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use wgpu_loss::bench::{self, BenchInput, BenchOp, CopyKernel, ResidentOp};
use wgpu_loss::tolerance::max_abs_error;
use wgpu_loss::GpuContext;

#[derive(Parser)]
#[command(
    name = "wgpu-loss",
    version,
    about = "Softmax and cross-entropy kernels on any GPU wgpu reaches, against an f64 CPU reference"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every adapter wgpu finds, the one that would be chosen, and its limits and features.
    Info,
    /// GPU against CPU, side by side: kernel time, end-to-end time, CPU time, GB/s and % of copy bandwidth.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Ops to run (repeatable): softmax, log-softmax, logsumexp, cross-entropy, cross-entropy-loss.
    #[arg(long = "op")]
    ops: Vec<String>,
    /// Rows (with --cols: one shape instead of the default sweep).
    #[arg(long)]
    rows: Option<usize>,
    /// Columns / classes.
    #[arg(long)]
    cols: Option<usize>,
    /// Timed GPU kernel runs per measurement (after one warm-up).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Element type. Only f32 is implemented so far.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// One JSON object per line and measurement instead of a table.
    #[arg(long)]
    json: bool,
}

/// Default sweep: small / medium / large-vocabulary shapes, under a minute on lavapipe.
const DEFAULT_SHAPES: [(usize, usize); 3] = [(4096, 1000), (512, 32_768), (16, 262_144)];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => info(),
        Command::Bench(args) => run_bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wgpu-loss: {e}");
            ExitCode::FAILURE
        }
    }
}

fn info() -> Result<(), String> {
    let adapters = wgpu_loss::enumerate_adapters();
    println!("adapters found: {}", adapters.len());
    for a in &adapters {
        println!(
            "  - {} ({:?}, {:?}, driver {} {})",
            a.name, a.backend, a.device_type, a.driver, a.driver_info
        );
    }
    match GpuContext::new_blocking() {
        Ok(ctx) => {
            println!("chosen: {}", ctx.describe());
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

struct Row {
    op: &'static str,
    rows: usize,
    cols: usize,
    path: &'static str,
    adapter: String,
    median_ms: f64,
    gbps: f64,
    copy_gbps: f64,
    max_abs_err: Option<f64>,
    speedup: Option<f64>,
}

impl Row {
    fn pct(&self) -> f64 {
        100.0 * self.gbps / self.copy_gbps
    }

    fn json(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:e}"));
        format!(
            "{{\"op\":\"{}\",\"rows\":{},\"cols\":{},\"dtype\":\"f32\",\"path\":\"{}\",\"adapter\":{:?},\
             \"median_ms\":{:.6},\"gbps\":{:.4},\"copy_gbps\":{:.4},\"pct_of_copy\":{:.2},\"max_abs_err\":{},\"speedup_vs_cpu\":{}}}",
            self.op,
            self.rows,
            self.cols,
            self.path,
            self.adapter,
            self.median_ms,
            self.gbps,
            self.copy_gbps,
            self.pct(),
            opt(self.max_abs_err),
            opt(self.speedup),
        )
    }
}

fn run_bench(args: &BenchArgs) -> Result<(), String> {
    if args.dtype != "f32" {
        return Err(format!(
            "--dtype {}: only f32 is implemented so far",
            args.dtype
        ));
    }
    let ops: Vec<BenchOp> = if args.ops.is_empty() {
        BenchOp::ALL.to_vec()
    } else {
        args.ops
            .iter()
            .map(|name| {
                BenchOp::from_name(name).ok_or_else(|| {
                    let names: Vec<_> = BenchOp::ALL.iter().map(|o| o.name()).collect();
                    format!(
                        "--op {name}: unknown op; expected one of {}",
                        names.join(", ")
                    )
                })
            })
            .collect::<Result<_, _>>()?
    };
    let shapes = match (args.rows, args.cols) {
        (Some(r), Some(c)) if r > 0 && c > 0 => vec![(r, c)],
        (None, None) => DEFAULT_SHAPES.to_vec(),
        _ => return Err("--rows and --cols go together, both at least 1".into()),
    };
    let iters = args.iters.max(1);
    let ctx = match GpuContext::new_blocking() {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            eprintln!(
                "No GPU adapter: {e}\nOn a machine without a GPU, `apt-get install mesa-vulkan-drivers` \
                 provides lavapipe, a software Vulkan device. Benchmarking the CPU only."
            );
            None
        }
    };
    let adapter = ctx
        .as_ref()
        .map_or("none".to_string(), |c| c.adapter_name().to_string());
    if !args.json {
        println!("adapter: {adapter}; CPU path: f64 reference (single thread); median of {iters} GPU runs after warm-up");
        println!(
            "{:<19} {:>14} {:<15} {:>11} {:>9} {:>9} {:>8} {:>9} {:>10}",
            "op", "shape", "path", "median ms", "GB/s", "copy GB/s", "% copy", "vs CPU", "max err"
        );
    }
    for &(rows, cols) in &shapes {
        let input = BenchInput::new(rows, cols).map_err(|e| e.to_string())?;
        let elems = rows * cols;
        let cpu_copy = bench::cpu_copy_gbps(elems, 3);
        let gpu_copy = match &ctx {
            Some(ctx) => {
                let copy = CopyKernel::new(ctx, elems);
                copy.run().map_err(|e| e.to_string())?;
                let times = (0..iters)
                    .map(|_| copy.run())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                Some(bench::gbps(copy.bytes(), bench::median(times)))
            }
            None => None,
        };
        for &op in &ops {
            let bytes = op.ideal_bytes(rows, cols);
            let cpu_start = Instant::now();
            let expected = bench::run_cpu(op, &input).map_err(|e| e.to_string())?;
            let cpu_time = cpu_start.elapsed();
            let mut out = Vec::new();
            if let (Some(ctx), Some(copy_gbps)) = (&ctx, gpu_copy) {
                let resident = ResidentOp::new(ctx, op, &input).map_err(|e| e.to_string())?;
                resident.run().map_err(|e| e.to_string())?;
                let times = (0..iters)
                    .map(|_| resident.run())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let kernel = bench::median(times);
                drop(resident);
                let mut e2e_times = Vec::new();
                let mut result = Vec::new();
                for _ in 0..3 {
                    let start = Instant::now();
                    result = pollster::block_on(bench::run_end_to_end(ctx, op, &input))
                        .map_err(|e| e.to_string())?;
                    e2e_times.push(start.elapsed());
                }
                let e2e = bench::median(e2e_times);
                let err = max_abs_error(&result, &expected);
                for (path, t) in [("gpu-kernel", kernel), ("gpu-end-to-end", e2e)] {
                    out.push(Row {
                        op: op.name(),
                        rows,
                        cols,
                        path,
                        adapter: adapter.clone(),
                        median_ms: t.as_secs_f64() * 1e3,
                        gbps: bench::gbps(bytes, t),
                        copy_gbps,
                        max_abs_err: Some(err),
                        speedup: Some(cpu_time.as_secs_f64() / t.as_secs_f64()),
                    });
                }
            }
            out.push(Row {
                op: op.name(),
                rows,
                cols,
                path: "cpu",
                adapter: "cpu".into(),
                median_ms: cpu_time.as_secs_f64() * 1e3,
                gbps: bench::gbps(bytes, cpu_time),
                copy_gbps: cpu_copy,
                max_abs_err: Some(0.0),
                speedup: None,
            });
            for row in out {
                if args.json {
                    println!("{}", row.json());
                } else {
                    println!(
                        "{:<19} {:>14} {:<15} {:>11.3} {:>9.2} {:>9.2} {:>7.1}% {:>9} {:>10}",
                        row.op,
                        format!("{}x{}", row.rows, row.cols),
                        row.path,
                        row.median_ms,
                        row.gbps,
                        row.copy_gbps,
                        row.pct(),
                        row.speedup.map_or("-".into(), |s| format!("{s:.1}x")),
                        row.max_abs_err.map_or("-".into(), |e| format!("{e:.1e}")),
                    );
                }
            }
        }
    }
    Ok(())
}
