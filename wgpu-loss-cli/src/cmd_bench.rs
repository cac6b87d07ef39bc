//! `wgpu-loss bench`: GPU against CPU on the same work, with the copy kernel
//! on the same adapter as the yardstick.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use wgpu_loss::tolerance::max_abs_error;
use wgpu_loss::{DType, GpuContext};
use wgpu_loss_cli::bench::{
    self, BenchInput, BenchOptions, CopyKernel, CpuFastOp, GradPlacement, Op, ResidentOp,
};

use crate::cmd_options::LossOptionArgs;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Ops to run (repeatable; the names `eval` takes, plus cross-entropy-loss for the loss alone).
    /// Default: all of them.
    #[arg(long = "op")]
    ops: Vec<String>,
    /// The full sweep (4096x1000, 4096x32768, 64x262144: about ten minutes
    /// on lavapipe) instead of the default one (2048x1000, 128x32768,
    /// 16x262144: about a minute).
    #[arg(long, conflicts_with_all = ["rows", "cols"])]
    full: bool,
    /// Rows (with --cols: one shape instead of the default sweep).
    #[arg(long)]
    rows: Option<usize>,
    /// Columns / classes.
    #[arg(long)]
    cols: Option<usize>,
    /// Hidden size D of `--op linear-cross-entropy` (with --rows N and --cols V).
    #[arg(long)]
    hidden: Option<usize>,
    /// linear-cross-entropy: bytes of logits the fused op holds at once [default: 32 MiB, or 64 rows if more].
    #[arg(long, value_name = "BYTES")]
    workspace_bytes: Option<u64>,
    /// linear-cross-entropy: skip the unfused GPU path (logits in memory).
    #[arg(long)]
    no_unfused: bool,
    /// linear-cross-entropy: skip the CPU (sgemm and the fast cross-entropy).
    #[arg(long)]
    no_cpu: bool,
    /// linear-cross-entropy: time the loss alone, no gradient paths.
    #[arg(long)]
    loss_only: bool,
    /// Timed GPU kernel runs per measurement, after one warm-up (median reported).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Storage type of logits and gradients on the GPU: f32, f16 or bf16
    /// (arithmetic stays f32; the binary losses are f32 only). For
    /// linear-cross-entropy: of the hidden states, the classifier and the
    /// fused op's gradients.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// One JSON object per line and measurement instead of a table.
    #[arg(long)]
    json: bool,
    /// Check only the first N rows of every result against the f64 reference
    /// (for sizes where the whole reference takes longer than the kernels).
    /// cross-entropy-loss's one mean then has no error column.
    #[arg(long, value_name = "N", conflicts_with = "no_reference")]
    check_rows: Option<usize>,
    /// Skip the f64 reference: no max err column.
    #[arg(long)]
    no_reference: bool,
    /// Skip the gpu-end-to-end path (upload, compute, readback).
    #[arg(long)]
    no_end_to_end: bool,
    /// Also draw GB/s against problem size, GPU and CPU, into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Loss options, as `eval` takes them; each op runs with those that
    /// apply to it.
    #[command(flatten)]
    options: LossOptionArgs,
    /// Random weights in [0.1, 2), seeded: class weights [C] (cross-entropy),
    /// per-class alpha [C] (focal), per-column weights [C] (binary-cross-entropy,
    /// bce-with-logits). Where `eval` takes --weight W.npy.
    #[arg(long)]
    random_weight: bool,
    /// Random pos_weight [C] in [0.5, 3), seeded (bce-with-logits).
    #[arg(long)]
    random_pos_weight: bool,
    /// cross-entropy: write the gradient over the logits (GradOutput::InPlace);
    /// other ops are unaffected.
    #[arg(long)]
    in_place: bool,
    /// Print the traffic plan instead of timing: each dispatch of each op
    /// (kernel, workgroups, items a workgroup walks, bytes read and written),
    /// recorded while the op runs once, and the total against the ideal bytes.
    #[arg(long)]
    plan: bool,
    /// With --plan: the row tuning to plan for, `gpu` (the GPU table, fitted
    /// to this device's limits) or `cpu` (the CPU adapters' table) [default:
    /// the adapter's own].
    #[arg(long, requires = "plan", value_name = "gpu|cpu")]
    tuning: Option<String>,
}

/// `bench --plan`: each op's dispatches, recorded while it runs once under
/// the tuning asked for, and their bytes against the ideal.
fn run_plan(
    args: &BenchArgs,
    ops: &[Op],
    shapes: &[(usize, usize)],
    options: BenchOptions,
    dtype: DType,
) -> Result<ExitCode, String> {
    let ctx = wgpu_loss::block_on(GpuContext::new())
        .map_err(|e| format!("{e}; bench --plan records what a GPU adapter runs"))?;
    let (tuning_name, ctx) = match args.tuning.as_deref() {
        None => ("the adapter's own", ctx),
        Some(name @ ("gpu" | "cpu")) => {
            let tuning = match name {
                "gpu" => wgpu_loss::RowTuning::default().fitted_to(ctx.limits()),
                _ => wgpu_loss::RowTuning::for_adapter(wgpu::DeviceType::Cpu, None),
            };
            drop(ctx);
            let options = wgpu_loss::ContextOptions {
                row_tuning: Some(tuning),
                ..Default::default()
            };
            let ctx = wgpu_loss::block_on(GpuContext::with_options(options))
                .map_err(|e| format!("--tuning {name}: {e}"))?;
            (if name == "gpu" { "gpu" } else { "cpu" }, ctx)
        }
        Some(other) => return Err(format!("--tuning {other}: expected gpu or cpu")),
    };
    if !args.json {
        println!(
            "adapter: {} ({}); tuning: {tuning_name}; dtype {}",
            ctx.adapter_name(),
            backend_of(Some(&ctx)),
            args.dtype
        );
    }
    for &(rows, cols) in shapes {
        let input = BenchInput::new(rows, cols)
            .map_err(|e| e.to_string())?
            .with_options(options);
        for &op in ops {
            if dtype != DType::F32 && op.is_elementwise() {
                if !args.json {
                    println!(
                        "\n{} {rows}x{cols}: no {} path for binary losses; nothing to plan",
                        op.name(),
                        args.dtype
                    );
                }
                continue;
            }
            let resident = ResidentOp::new(&ctx, op, &input, dtype).map_err(|e| e.to_string())?;
            let (result, plan) = ctx.record_plan(|| resident.run());
            result.map_err(|e| e.to_string())?;
            let ideal = input.ideal_bytes(op, dtype.size());
            let total: u64 = plan.iter().map(|d| d.bytes_read + d.bytes_written).sum();
            let ratio = total as f64 / ideal.max(1) as f64;
            if args.json {
                let dispatches: Vec<String> = plan
                    .iter()
                    .map(|d| {
                        format!(
                            "{{\"kernel\":\"{}\",\"workgroups\":{},\"items_per_workgroup\":{},\"bytes_read\":{},\"bytes_written\":{},\"load_bytes\":{}}}",
                            d.kernel, d.workgroups, d.items_per_workgroup, d.bytes_read, d.bytes_written, d.load_bytes
                        )
                    })
                    .collect();
                println!(
                    "{{\"op\":\"{}\",\"rows\":{rows},\"cols\":{cols},\"dtype\":\"{}\",\"tuning\":\"{tuning_name}\",\"dispatches\":[{}],\"bytes\":{total},\"ideal_bytes\":{ideal},\"ratio\":{ratio:.4}}}",
                    op.name(),
                    args.dtype,
                    dispatches.join(",")
                );
                continue;
            }
            println!("\n{} {rows}x{cols}", op.name());
            println!(
                "  {:<30} {:>10} {:>10} {:>12} {:>12} {:>7}",
                "kernel", "workgroups", "items/wg", "read MB", "written MB", "load B"
            );
            for d in &plan {
                println!(
                    "  {:<30} {:>10} {:>10} {:>12.3} {:>12.3} {:>7}",
                    d.kernel,
                    d.workgroups,
                    d.items_per_workgroup,
                    d.bytes_read as f64 / 1e6,
                    d.bytes_written as f64 / 1e6,
                    d.load_bytes
                );
            }
            println!(
                "  total {:.3} MB = {ratio:.3} x the ideal {:.3} MB",
                total as f64 / 1e6,
                ideal as f64 / 1e6
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--full`: issue 7's small / medium / large-vocabulary shapes, where the
/// README's targets are measured (about ten minutes on lavapipe, most of it
/// uploads and the f64 reference that fills `max err`).
const FULL_SHAPES: [(usize, usize); 3] = [(4096, 1000), (4096, 32_768), (64, 262_144)];

/// The default sweep: the same row lengths with fewer rows, so that the
/// README's first command finishes in about a minute on lavapipe.
const DEFAULT_SHAPES: [(usize, usize); 3] = [(2048, 1000), (128, 32_768), (16, 262_144)];

/// Timed runs of the fast CPU path per measurement (it takes milliseconds;
/// more samples steady the median).
const CPU_RUNS: usize = 9;

pub struct Row {
    pub op: &'static str,
    pub rows: usize,
    pub cols: usize,
    pub dtype: &'static str,
    pub path: &'static str,
    pub adapter: String,
    pub timer: &'static str,
    pub median_ms: f64,
    pub gbps: f64,
    pub copy_gbps: f64,
    pub max_abs_err: Option<f64>,
    pub speedup: Option<f64>,
    /// For `cpu` rows: `fast-f32` or `f64-reference`.
    pub cpu_impl: Option<&'static str>,
}

impl Row {
    fn pct(&self) -> f64 {
        100.0 * self.gbps / self.copy_gbps
    }

    fn json(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:e}"));
        format!(
            "{{\"op\":\"{}\",\"rows\":{},\"cols\":{},\"dtype\":\"{}\",\"path\":\"{}\",\"adapter\":{:?},\"timer\":\"{}\",\
             \"median_ms\":{:.6},\"gbps\":{:.4},\"copy_gbps\":{:.4},\"pct_of_copy\":{:.2},\"max_abs_err\":{},\"speedup_vs_cpu\":{},\"cpu_impl\":{}}}",
            self.op,
            self.rows,
            self.cols,
            self.dtype,
            self.path,
            self.adapter,
            self.timer,
            self.median_ms,
            self.gbps,
            self.copy_gbps,
            self.pct(),
            opt(self.max_abs_err),
            opt(self.speedup),
            self.cpu_impl.map_or("null".to_string(), |i| format!("\"{i}\"")),
        )
    }

    fn table_line(&self) -> String {
        format!(
            "{:<21} {:>14} {:<15} {:>11.3} {:>9.2} {:>9.2} {:>7.1}% {:>9} {:>10}",
            self.op,
            format!("{}x{}", self.rows, self.cols),
            self.path,
            self.median_ms,
            self.gbps,
            self.copy_gbps,
            self.pct(),
            self.speedup.map_or("-".into(), |s| {
                if s < 0.1 {
                    format!("{s:.3}x")
                } else {
                    format!("{s:.1}x")
                }
            }),
            self.max_abs_err.map_or("-".into(), |e| format!("{e:.1e}")),
        )
    }
}

/// The adapter's backend (Vulkan, Metal, Dx12, Gl), so that a reader can
/// tell lavapipe on Vulkan from llvmpipe through GL: the same name.
fn backend_of(ctx: Option<&GpuContext>) -> String {
    ctx.and_then(|c| c.adapter_info())
        .map_or("no GPU".into(), |i| format!("{:?}", i.backend))
}

fn parse_ops(names: &[String]) -> Result<Vec<Op>, String> {
    if names.is_empty() {
        return Ok(Op::ALL.to_vec());
    }
    names
        .iter()
        .map(|name| {
            Op::from_name(name)
                .ok_or_else(|| format!("--op {name}: unknown op; expected one of {}", Op::names()))
        })
        .collect()
}

pub fn run(args: &BenchArgs) -> Result<ExitCode, String> {
    if args.ops.iter().any(|o| o == "linear-cross-entropy") {
        return run_linear(args);
    }
    if args.hidden.is_some()
        || args.workspace_bytes.is_some()
        || args.no_unfused
        || args.no_cpu
        || args.loss_only
    {
        return Err(
            "--hidden, --workspace-bytes, --no-unfused, --no-cpu and --loss-only apply to --op linear-cross-entropy"
                .into(),
        );
    }
    let dtype = parse_dtype(&args.dtype)?;
    let ops = parse_ops(&args.ops)?;
    let options = BenchOptions {
        settings: args.options.settings(),
        random_weight: args.random_weight,
        random_pos_weight: args.random_pos_weight,
        grad: if args.in_place {
            GradPlacement::InPlace
        } else {
            GradPlacement::Separate
        },
    };
    let shapes = match (args.rows, args.cols) {
        (Some(r), Some(c)) if r > 0 && c > 0 => vec![(r, c)],
        (None, None) if args.full => FULL_SHAPES.to_vec(),
        (None, None) => DEFAULT_SHAPES.to_vec(),
        _ => return Err("--rows and --cols go together, both at least 1".into()),
    };
    if args.plan {
        return run_plan(args, &ops, &shapes, options, dtype);
    }
    if let Some(plot) = &args.plot {
        check_plot_path(plot)?;
    }
    let iters = args.iters.max(1);
    let ctx = match wgpu_loss::block_on(GpuContext::new()) {
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
    let timer = ctx.as_ref().map_or("wall", bench::timer_kind);
    let dtype_name = match dtype {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        _ => "f32",
    };
    if !args.json {
        println!(
            "adapter: {adapter} ({}); kernel timer: {timer}; dtype {dtype_name}; CPU: fast f32 path on {} threads \
             (median of {CPU_RUNS} after a warm-up); GPU: median of {iters} runs after a warm-up",
            backend_of(ctx.as_ref()),
            rayon::current_num_threads()
        );
        println!(
            "{:<21} {:>14} {:<15} {:>11} {:>9} {:>9} {:>8} {:>9} {:>10}",
            "op", "shape", "path", "median ms", "GB/s", "copy GB/s", "% copy", "vs CPU", "max err"
        );
    }
    let progress = ProgressBar::new((shapes.len() * ops.len()) as u64);
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut all_rows = Vec::new();
    for &(rows, cols) in &shapes {
        let input = BenchInput::new(rows, cols)
            .map_err(|e| e.to_string())?
            .with_options(options);
        let elems = rows * cols;
        progress.set_message(format!("{rows}x{cols}: copy yardstick"));
        let cpu_copy = bench::cpu_copy_gbps(elems, 3);
        let gpu_copy = match &ctx {
            Some(ctx) => Some(copy_gbps(ctx, elems, iters)?),
            None => None,
        };
        for &op in &ops {
            progress.set_message(format!("{rows}x{cols} {}", op.name()));
            let mut out = Vec::new();
            let cpu_bytes = input.ideal_bytes(op, 4);
            let ref_start = Instant::now();
            let expected = match (args.no_reference, args.check_rows) {
                (true, _) => Ok(None),
                (false, Some(k)) => bench::run_cpu_sample(op, &input, k.max(1)),
                (false, None) => bench::run_cpu(op, &input).map(Some),
            }
            .map_err(|e| e.to_string())?;
            let ref_time = ref_start.elapsed();
            let error_of = |result: &[f32]| expected.as_ref().map(|e| max_abs_error(result, e));
            // The fast path where it exists (warm-up, then the median of
            // CPU_RUNS), else the single f64 reference run just made.
            let (cpu_impl, cpu_time, cpu_err) = match CpuFastOp::new(op, &input) {
                Some(mut fast) => {
                    let result = fast.run().map_err(|e| e.to_string())?;
                    let times = (0..CPU_RUNS)
                        .map(|_| fast.time())
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| e.to_string())?;
                    ("fast-f32", bench::median(times), error_of(&result))
                }
                None => ("f64-reference", ref_time, expected.as_ref().map(|_| 0.0)),
            };
            let row = |path, median: std::time::Duration, bytes, copy, err, speedup| Row {
                op: op.name(),
                rows,
                cols,
                dtype: dtype_name,
                path,
                adapter: adapter.clone(),
                timer,
                median_ms: median.as_secs_f64() * 1e3,
                gbps: bench::gbps(bytes, median),
                copy_gbps: copy,
                max_abs_err: err,
                speedup,
                cpu_impl: None,
            };
            let skip_16bit = dtype != DType::F32 && op.is_elementwise();
            if let (Some(ctx), Some(copy), false) = (&ctx, gpu_copy, skip_16bit) {
                let speedup =
                    |t: std::time::Duration| Some(cpu_time.as_secs_f64() / t.as_secs_f64());
                let resident =
                    ResidentOp::new(ctx, op, &input, dtype).map_err(|e| e.to_string())?;
                resident.run().map_err(|e| e.to_string())?;
                let times = (0..iters)
                    .map(|_| resident.run())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let kernel = bench::median(times);
                let result = resident.read_main().map_err(|e| e.to_string())?;
                drop(resident);
                let err = error_of(&result);
                let bytes = input.ideal_bytes(op, dtype.size());
                out.push(row("gpu-kernel", kernel, bytes, copy, err, speedup(kernel)));
                if dtype == DType::F32 && !args.no_end_to_end {
                    let mut e2e_times = Vec::new();
                    let mut result = Vec::new();
                    for _ in 0..3 {
                        let start = Instant::now();
                        result = pollster::block_on(bench::run_end_to_end(ctx, op, &input))
                            .map_err(|e| e.to_string())?;
                        e2e_times.push(start.elapsed());
                    }
                    let e2e = bench::median(e2e_times);
                    out.push(row(
                        "gpu-end-to-end",
                        e2e,
                        bytes,
                        copy,
                        error_of(&result),
                        speedup(e2e),
                    ));
                }
            }
            let mut cpu_row = row("cpu", cpu_time, cpu_bytes, cpu_copy, cpu_err, None);
            cpu_row.adapter = format!("cpu ({cpu_impl}, {} threads)", rayon::current_num_threads());
            cpu_row.cpu_impl = Some(cpu_impl);
            cpu_row.timer = "wall";
            out.push(cpu_row);
            for r in out {
                progress.suspend(|| {
                    if args.json {
                        println!("{}", r.json());
                    } else {
                        println!("{}", r.table_line());
                    }
                });
                all_rows.push(r);
            }
            if skip_16bit && !args.json {
                progress.suspend(|| {
                    println!(
                        "{:<21} {:>14} (no {dtype_name} path for binary losses; GPU skipped)",
                        op.name(),
                        format!("{rows}x{cols}")
                    )
                });
            }
            progress.inc(1);
        }
    }
    progress.finish_and_clear();
    if let Some(plot) = &args.plot {
        draw_plot(plot, &all_rows, &adapter)?;
        if !args.json {
            println!("plot: {}", plot.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `--op linear-cross-entropy --rows N --cols V --hidden D`: the fused op
/// against the crate's matrix product at the same shape, in the same run.
fn run_linear(args: &BenchArgs) -> Result<ExitCode, String> {
    if args.ops.len() != 1 {
        return Err("--op linear-cross-entropy runs alone (give no other --op)".into());
    }
    if args.options.settings() != wgpu_loss_cli::problem::Settings::default()
        || args.random_weight
        || args.random_pos_weight
        || args.in_place
    {
        return Err(
            "--op linear-cross-entropy benches the default options; the loss options, --random-weight, --random-pos-weight and --in-place apply to the other ops"
                .into(),
        );
    }
    let (Some(rows), Some(classes), Some(hidden)) = (args.rows, args.cols, args.hidden) else {
        return Err("--op linear-cross-entropy needs --rows N, --cols V and --hidden D".into());
    };
    if rows == 0 || classes == 0 || hidden == 0 {
        return Err("--rows, --cols and --hidden must be at least 1".into());
    }
    let dtype = parse_dtype(&args.dtype)?;
    let ctx = wgpu_loss::block_on(GpuContext::new()).map_err(|e| {
        format!("{e}; bench --op linear-cross-entropy needs a GPU adapter (its CPU column runs beside the GPU paths); install mesa-vulkan-drivers for lavapipe")
    })?;
    let shape = wgpu_loss::LinearShape {
        rows,
        hidden,
        classes,
    };
    let check_rows = match (args.no_reference, args.check_rows) {
        (true, _) => 0,
        (false, Some(k)) => k,
        (false, None) => 4,
    };
    let plan = wgpu_loss_cli::bench_linear::LinearBenchPlan {
        dtype,
        iters: args.iters.max(1),
        check_rows,
        workspace_bytes: args.workspace_bytes,
        unfused: !args.no_unfused,
        cpu: !args.no_cpu,
        loss_only: args.loss_only,
    };
    let report = wgpu_loss_cli::bench_linear::bench_linear_cross_entropy(&ctx, shape, plan)
        .map_err(|e| e.to_string())?;
    let matmul = report.timings[0].median.as_secs_f64();
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    if !args.json {
        println!(
            "adapter: {} ({}); linear-cross-entropy N={rows} D={hidden} V={classes} {} (hidden states, classifier, fused gradients); wall time, median of {} after a warm-up",
            ctx.adapter_name(),
            backend_of(Some(&ctx)),
            args.dtype,
            args.iters.max(1)
        );
        println!(
            "{:<18} {:>11} {:>10} {:>10}",
            "path", "median ms", "GFLOP/s", "x matmul"
        );
    }
    for t in &report.timings {
        let ratio = t.median.as_secs_f64() / matmul;
        if args.json {
            println!(
                "{{\"op\":\"linear-cross-entropy\",\"rows\":{rows},\"hidden\":{hidden},\"classes\":{classes},\"dtype\":\"{}\",\"path\":\"{}\",\"median_ms\":{:.3},\"gflops\":{:.3},\"vs_matmul\":{:.3},\"adapter\":{:?}}}",
                args.dtype,
                t.path,
                t.median.as_secs_f64() * 1e3,
                t.gflops(),
                ratio,
                ctx.adapter_name()
            );
        } else {
            println!(
                "{:<18} {:>11.1} {:>10.2} {:>10.2}",
                t.path,
                t.median.as_secs_f64() * 1e3,
                t.gflops(),
                ratio
            );
        }
    }
    let s = report.scratch;
    let unfused = report.logits_bytes;
    let unfused_line = match &report.unfused_bytes {
        Ok(bytes) => format!(
            "the unfused path allocated {:.1} MiB (logits, their gradient in place, ones): {:.1}x the fused op's",
            mib(*bytes),
            *bytes as f64 / s.bytes.max(1) as f64
        ),
        Err(why) => format!(
            "the unfused path would hold {:.1} MiB of logits ({:.1}x the fused op's); not run: {why}",
            mib(unfused),
            unfused as f64 / s.bytes.max(1) as f64
        ),
    };
    let parts = if s.vocabulary_parts > 1 {
        format!(", the vocabulary in {} parts", s.vocabulary_parts)
    } else {
        String::new()
    };
    let line = format!(
        "memory: the fused op allocated {:.1} MiB (workspace {:.1} MiB, {} rows per chunk{parts}); {unfused_line}",
        mib(s.bytes),
        mib(s.workspace_bytes),
        s.chunk_rows,
    );
    if args.json {
        println!(
            "{{\"op\":\"linear-cross-entropy\",\"scratch_bytes\":{},\"workspace_bytes\":{},\"chunk_rows\":{},\"vocabulary_parts\":{},\"logits_bytes\":{unfused}}}",
            s.bytes, s.workspace_bytes, s.chunk_rows, s.vocabulary_parts
        );
    } else {
        println!("{line}");
    }
    if let (Some(cpu), false) = (report.cpu_loss, args.json) {
        println!("cpu: matrixmultiply sgemm + the fast f32 cross-entropy on {} threads, chunked as the GPU op; its loss {cpu}", rayon::current_num_threads());
    }
    if let Some((k, err, allowed)) = report.check {
        let verdict = if err <= allowed { "ok" } else { "MISMATCH" };
        if !args.json {
            println!("check: lse of the first {k} rows against the f64 reference: max err {err:.3e} (allowed {allowed:.3e}) {verdict}");
        }
        if err > allowed {
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn copy_gbps(ctx: &GpuContext, elems: usize, iters: usize) -> Result<f64, String> {
    let copy = CopyKernel::new(ctx, elems).map_err(|e| e.to_string())?;
    copy.run().map_err(|e| e.to_string())?;
    let times = (0..iters)
        .map(|_| copy.run())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok(bench::gbps(copy.bytes(), bench::median(times)))
}

/// Fails before any measuring if the plot could not be written.
fn check_plot_path(path: &std::path::Path) -> Result<(), String> {
    if path
        .extension()
        .is_none_or(|e| !e.eq_ignore_ascii_case("svg"))
    {
        return Err(format!(
            "--plot {}: the plot is SVG; name a .svg file",
            path.display()
        ));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "--plot {}: folder {} does not exist",
            path.display(),
            dir.display()
        ));
    }
    Ok(())
}

fn draw_plot(path: &std::path::Path, rows: &[Row], adapter: &str) -> Result<(), String> {
    use plotters::prelude::*;
    let fail = |e: String| format!("--plot {}: {e}", path.display());
    // Problem sizes in ascending order of elements; x is the position in that list.
    let mut shapes: Vec<(usize, usize)> = rows.iter().map(|r| (r.rows, r.cols)).collect();
    shapes.sort_by_key(|&(r, c)| (r * c, c));
    shapes.dedup();
    let x_of = |r: &Row| {
        shapes
            .iter()
            .position(|&s| s == (r.rows, r.cols))
            .unwrap_or(0) as f64
    };
    let mut ops: Vec<&str> = Vec::new();
    // (legend name, colour index, is GPU, points)
    type Series = (String, usize, bool, Vec<(f64, f64)>);
    let mut series: Vec<Series> = Vec::new();
    for r in rows.iter().filter(|r| r.path != "gpu-end-to-end") {
        if !ops.contains(&r.op) {
            ops.push(r.op);
        }
        let color = ops.iter().position(|o| *o == r.op).unwrap_or(0);
        let gpu = r.path != "cpu";
        let name = format!("{} {}", r.op, if gpu { "GPU" } else { "CPU" });
        let point = (x_of(r), r.gbps);
        match series.iter_mut().find(|s| s.0 == name) {
            Some(s) => s.3.push(point),
            None => series.push((name, color, gpu, vec![point])),
        }
    }
    let y_max = rows.iter().map(|r| r.gbps).fold(0.0, f64::max) * 1.15 + 1e-3;
    let x_max = shapes.len().saturating_sub(1) as f64 + 0.5;
    let label = |x: &f64| {
        let i = x.round();
        match shapes.get(i as usize) {
            Some(&(r, c)) if (x - i).abs() < 1e-6 && i >= 0.0 => {
                format!("{r}x{c} ({:.1}M)", (r * c) as f64 / 1e6)
            }
            _ => String::new(),
        }
    };
    let tmp = wgpu_loss_cli::io::temporary_name(path);
    {
        let root = SVGBackend::new(&tmp, (1100, 640)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("wgpu-loss bench: GB/s (ideal bytes), {adapter} vs CPU"),
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(-0.5..x_max + 2.5, 0.0..y_max)
            .map_err(|e| fail(e.to_string()))?;
        chart
            .configure_mesh()
            .x_labels(4 * shapes.len() + 12)
            .x_label_formatter(&label)
            .x_desc("problem size (rows x cols), ascending")
            .y_desc("GB/s")
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        for (name, color, gpu, mut points) in series {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let color = Palette99::pick(color).to_rgba();
            let style = color.stroke_width(if gpu { 3 } else { 1 });
            chart
                .draw_series(LineSeries::new(points, style))
                .map_err(|e| fail(e.to_string()))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(
                        vec![(x, y), (x + 16, y)],
                        color.stroke_width(if gpu { 3 } else { 1 }),
                    )
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        std::fs::remove_file(&tmp).ok();
        fail(e.to_string())
    })
}

/// `--dtype`'s value as a storage type.
fn parse_dtype(name: &str) -> Result<DType, String> {
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(format!("--dtype {other}: expected f32, f16 or bf16")),
    }
}
