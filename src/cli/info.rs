//! `wgpu-loss info`.

use std::process::ExitCode;

pub fn run() -> Result<ExitCode, String> {
    let adapters = wgpu_loss::enumerate_adapters();
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
        "  kernel timer in bench: {}; workgroup size {}",
        wgpu_loss::bench::timer_kind(&ctx),
        wgpu_loss::kernels::WORKGROUP_SIZE
    );
    Ok(ExitCode::SUCCESS)
}
