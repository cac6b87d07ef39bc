//! `wgpu-loss`: adapter information, a correctness check, GPU-against-CPU
//! benchmarks, and evaluation of any op or loss on `.npy` / `.safetensors` files.

mod cmd_bench;
mod cmd_check;
mod cmd_eval;
mod cmd_eval_linear;
mod cmd_info;
mod cmd_options;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wgpu-loss",
    version,
    about = "Softmax and cross-entropy kernels on any GPU wgpu reaches, against an f64 CPU reference",
    after_help = "Adapter choice: WGPU_BACKEND (vulkan, metal, dx12, gl), WGPU_ADAPTER_NAME (substring), WGPU_POWER_PREF (low, high)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every adapter wgpu finds, the one that would be chosen, and its limits and features.
    Info,
    /// Runs every op and loss on the chosen adapter against the f64 CPU reference; exits non-zero on any failure.
    Check(cmd_check::CheckArgs),
    /// GPU against CPU, side by side: kernel time, end-to-end time, CPU time, GB/s and % of copy bandwidth.
    Bench(cmd_bench::BenchArgs),
    /// Evaluates one op or loss on .npy / .safetensors files and writes the results as .npy.
    Eval(cmd_eval::EvalArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => cmd_info::run(),
        Command::Check(args) => cmd_check::run(&args),
        Command::Bench(args) => cmd_bench::run(&args),
        Command::Eval(args) => match cmd_eval_linear::request_of(&args.op) {
            Some(grads) => cmd_eval_linear::run(&args, grads),
            None => cmd_eval::run(&args),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wgpu-loss: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The chosen adapter, or an error that says how to get one.
fn gpu_context() -> Result<wgpu_loss::GpuContext, String> {
    wgpu_loss::block_on(wgpu_loss::GpuContext::new()).map_err(|e| e.to_string())
}
