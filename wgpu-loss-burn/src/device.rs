//! One wgpu device, two libraries: burn's wgpu runtime and this crate's
//! [`GpuContext`] on the same `wgpu::Device` and `wgpu::Queue`.

use std::sync::{Arc, Mutex};

use burn::tensor::wgpu::WgpuSetup;
use burn::tensor::Device;
use burn_cubecl::CubeDevice;
use wgpu_loss::GpuContext;

use crate::Error;

/// Every device shared so far, so that the loss functions find the context
/// of a tensor's device. Devices are never unregistered: burn keeps its
/// runtimes for the life of the process too.
static SHARED: Mutex<Vec<(CubeDevice, Arc<GpuContext>)>> = Mutex::new(Vec::new());

pub(crate) fn context_for(device: &CubeDevice) -> Option<Arc<GpuContext>> {
    let shared = SHARED.lock().ok()?;
    shared
        .iter()
        .find(|(d, _)| d == device)
        .map(|(_, ctx)| Arc::clone(ctx))
}

/// A wgpu device that burn's wgpu backend and this crate's [`GpuContext`]
/// share: tensors made on [`SharedDevice::device`] (or its
/// [`autodiff`](Device::autodiff) form) can be given to this crate's losses,
/// which read and write their buffers in place.
///
/// Two ways to make one:
/// - [`SharedDevice::from_burn`]: burn brings up its wgpu device, and this
///   crate's context is built on burn's `wgpu::Device` and `wgpu::Queue`;
/// - [`SharedDevice::from_setup`]: the caller (or this crate, through
///   [`SharedDevice::new_wgpu`]) has the wgpu handles, and hands them to
///   burn through burn's `WgpuSetup` registration.
///
/// Either must run before burn has used that device: burn refuses to
/// reconfigure a runtime that is already up.
#[derive(Clone)]
pub struct SharedDevice {
    device: Device,
    context: Arc<GpuContext>,
}

impl std::fmt::Debug for SharedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDevice")
            .field("device", &self.device)
            .field("adapter", &self.context.describe())
            .finish()
    }
}

impl SharedDevice {
    /// Brings up burn's default wgpu device (burn's own adapter choice,
    /// `CUBECL_WGPU_DEFAULT_DEVICE` included) and builds this crate's
    /// context on the same device and queue.
    ///
    /// ```
    /// # fn main() -> Result<(), wgpu_loss_burn::Error> {
    /// let shared = wgpu_loss_burn::SharedDevice::from_burn()?;
    /// println!("{}", shared.context().describe());
    /// # Ok(()) }
    /// ```
    #[cfg(not(target_family = "wasm"))]
    pub fn from_burn() -> Result<Self, Error> {
        let (device, setup) = Device::wgpu_options()
            .init_with_setup()
            .map_err(|e| Error::Init(format!("{e:?}")))?;
        Self::register(device, &setup)
    }

    /// Registers wgpu handles the caller already has with burn (through
    /// burn's `WgpuSetup`) and builds this crate's context on them.
    pub fn from_setup(setup: WgpuSetup) -> Result<Self, Error> {
        let device = Device::wgpu_options()
            .setup(setup.clone())
            .init()
            .map_err(|e| Error::Init(format!("{e:?}")))?;
        Self::register(device, &setup)
    }

    /// This crate creates the device (the high-performance adapter, with the
    /// adapter's own limits and the features CubeCL's WGSL path asks for,
    /// less experimental ones) and hands it to burn:
    /// [`SharedDevice::from_setup`] on a device of our making.
    #[cfg(not(target_family = "wasm"))]
    pub fn new_wgpu() -> Result<Self, Error> {
        use burn::tensor::wgpu::wgpu;
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = wgpu_loss::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            ..Default::default()
        }))
        .map_err(|e| Error::Init(format!("no wgpu adapter: {e}")))?;
        let info = adapter.get_info();
        // What CubeCL's WGSL path asks for (its kernels use 64-bit integers
        // and more where the adapter has them), less the experimental
        // features, which need an unsafe opt-in this crate does not make.
        let features = adapter.features()
            - wgpu::Features::MAPPABLE_PRIMARY_BUFFERS
            - wgpu::Features::all_experimental_mask();
        let (device, queue) =
            wgpu_loss::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("wgpu-loss-burn"),
                required_features: features,
                required_limits: adapter.limits(),
                memory_hints: wgpu::MemoryHints::MemoryUsage,
                ..Default::default()
            }))
            .map_err(|e| Error::Init(format!("{}: {e}", info.name)))?;
        Self::from_setup(WgpuSetup {
            backend: info.backend,
            instance,
            adapter,
            device,
            queue,
        })
    }

    fn register(device: Device, setup: &WgpuSetup) -> Result<Self, Error> {
        let cube = match device.as_dispatch() {
            burn::backend::DispatchDevice::Cube(cube) => cube.clone(),
            #[allow(unreachable_patterns)]
            other => {
                return Err(Error::Init(format!(
                    "burn gave a non-wgpu device: {other:?}"
                )))
            }
        };
        let context = Arc::new(GpuContext::from_device_with_adapter(
            setup.device.clone(),
            setup.queue.clone(),
            setup.adapter.get_info(),
        ));
        let mut shared = SHARED
            .lock()
            .map_err(|_| Error::Init("the shared-device registry is poisoned".into()))?;
        shared.retain(|(d, _)| *d != cube);
        shared.push((cube, Arc::clone(&context)));
        Ok(Self { device, context })
    }

    /// burn's device: make tensors on it, or on `device().clone().autodiff()`
    /// to record gradients.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// This crate's context on the same wgpu device and queue, for its own
    /// ops on wgpu buffers.
    pub fn context(&self) -> &GpuContext {
        &self.context
    }
}
