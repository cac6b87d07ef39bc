//! `wgpu-loss info`.

use std::process::ExitCode;

pub fn run() -> Result<ExitCode, String> {
    let adapters = wgpu_loss::block_on(wgpu_loss::enumerate_adapters());
    println!("adapters found: {}", adapters.len());
    for a in &adapters {
        println!(
            "  - {} ({:?}, {:?}, driver {} {}, subgroup size {}..{})",
            a.name,
            a.backend,
            a.device_type,
            a.driver,
            a.driver_info,
            a.subgroup_min_size,
            a.subgroup_max_size
        );
    }
    let ctx = super::gpu_context()?;
    println!("chosen: {}", ctx.describe());
    println!(
        "  kernel timer in bench: {}; element-wise and single-workgroup kernels: workgroup size {}",
        wgpu_loss_cli::bench::timer_kind(&ctx),
        wgpu_loss::tuning::WORKGROUP_SIZE
    );
    println!(
        "  row kernels: {:?} ({}; override with WGPU_LOSS_ROW_TUNING)",
        ctx.row_tuning(),
        match std::env::var("WGPU_LOSS_ROW_TUNING") {
            Ok(spec) => format!("table pick, then WGPU_LOSS_ROW_TUNING={spec:?}"),
            Err(_) => "the table's pick for this adapter".to_string(),
        }
    );
    for (rows, cols) in [
        (65_536, 100),
        (4096, 1000),
        (4096, 32_768),
        (64, 262_144),
        (1, 1_000_001),
    ] {
        println!("    {}", ctx.describe_row_plan(rows, cols));
    }
    // A 16-bit vocabulary past 32768 columns: held packed on GPUs.
    println!(
        "    bf16 {}",
        ctx.describe_row_plan_of(4096, 50_257, wgpu_loss::DType::BF16)
    );
    Ok(ExitCode::SUCCESS)
}
