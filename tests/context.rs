//! Getting a device: adopting a caller's device, the adapter report, adapter
//! selection by name, and the command's smoke path.

mod common;

use std::process::Command;

use common::{assert_close, gpu, Rng};
use wgpu_loss::cpu::reference;
use wgpu_loss::GpuContext;

#[test]
fn adopts_a_callers_device_and_queue() {
    let Some(shared) = gpu() else { return };
    // Build a device the way an embedding program would, with the adapter's limits.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter =
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .expect("an adapter exists when the shared context does");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .expect("device");
    let ctx = GpuContext::from_device(device, queue);
    assert!(ctx.adapter_info().is_none());
    assert_eq!(ctx.adapter_name(), "caller's device");
    assert_eq!(
        ctx.limits().max_storage_buffer_binding_size,
        shared.limits().max_storage_buffer_binding_size
    );
    let mut rng = Rng::new(31);
    let x = rng.vec_normal(9 * 300, 2.0);
    let y = ctx.log_softmax_blocking(&x, 9, 300).unwrap();
    assert_close(
        "log_softmax on an adopted device",
        &y,
        &reference::log_softmax(&x, 9, 300).unwrap(),
    );
}

#[test]
fn context_reports_adapter_and_limits() {
    let Some(ctx) = gpu() else { return };
    let info = ctx.adapter_info().expect("new() records adapter info");
    let text = ctx.describe();
    assert!(text.contains(&info.name), "{text}");
    assert!(text.contains("max_storage_buffer_binding_size"), "{text}");
    // The adapter's own limits, not the 128 MiB / 256 MiB defaults, where the adapter has more.
    assert!(ctx.limits().max_buffer_size >= wgpu::Limits::default().max_buffer_size);
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<GpuContext>();
}

fn wgpu_loss() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wgpu-loss"));
    cmd.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    cmd
}

#[test]
fn an_adapter_name_that_matches_nothing_is_a_clear_error() {
    if gpu().is_none() {
        return;
    }
    let out = wgpu_loss()
        .arg("info")
        .env("WGPU_ADAPTER_NAME", "no-such-adapter-xyz")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-adapter-xyz") && stderr.contains("adapters found"),
        "{stderr}"
    );
}

#[test]
fn bench_json_on_a_tiny_shape_parses() {
    if gpu().is_none() {
        return;
    }
    let out = wgpu_loss()
        .args([
            "bench", "--rows", "8", "--cols", "100", "--iters", "2", "--json",
        ])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    // 5 ops x (gpu-kernel, gpu-end-to-end, cpu)
    assert_eq!(lines.len(), 15, "{stdout}");
    for line in lines {
        assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
        for field in [
            "\"op\":",
            "\"rows\":8",
            "\"cols\":100",
            "\"dtype\":\"f32\"",
            "\"path\":",
            "\"adapter\":",
            "\"median_ms\":",
            "\"gbps\":",
            "\"copy_gbps\":",
            "\"pct_of_copy\":",
            "\"max_abs_err\":",
        ] {
            assert!(line.contains(field), "{field} missing in {line}");
        }
    }
}
