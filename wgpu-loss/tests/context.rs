//! Getting a device: adopting a caller's device, the adapter report, adapter
//! selection by name.

mod common;

use common::{assert_close, gpu, Rng};
use wgpu_loss::reference;
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
    let with_info =
        GpuContext::from_device_with_adapter(device.clone(), queue.clone(), adapter.get_info());
    assert_eq!(
        with_info.adapter_info().map(|i| i.name.clone()),
        Some(adapter.get_info().name)
    );
    assert_eq!(with_info.row_tuning(), shared.row_tuning());
    let ctx = GpuContext::from_device(device, queue);
    assert!(ctx.adapter_info().is_none());
    assert_eq!(ctx.adapter_name(), "caller's device");
    assert_eq!(
        ctx.limits().max_storage_buffer_binding_size,
        shared.limits().max_storage_buffer_binding_size
    );
    let mut rng = Rng::new(31);
    let x = rng.vec_normal(9 * 300, 2.0);
    let y = wgpu_loss::block_on(ctx.log_softmax(&x, 9, 300)).unwrap();
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
