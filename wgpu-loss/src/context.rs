//! Getting a device, and what it can do.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::kernels::{Kernel, Launch, Pipeline, PipelineCache, Reduce, Spec, Variant};
use crate::tuning::{RowTuning, SubgroupSizes};

/// Options for [`GpuContext::with_options`]. Plain data; `Default` picks the
/// high-performance adapter and the adapter's own limits.
#[derive(Clone, Debug, Default)]
pub struct ContextOptions {
    /// Overrides the power preference; `None` means high performance unless
    /// `WGPU_POWER_PREF` says otherwise.
    pub power_preference: Option<wgpu::PowerPreference>,
    /// Caps the bytes bound per storage binding below the adapter's
    /// `max_storage_buffer_binding_size`. Large problems are then processed in
    /// more row windows; tests use it to exercise chunking on small inputs.
    pub max_binding_bytes: Option<u64>,
    /// Fill every output buffer the host API allocates with this value before
    /// the kernels run, so an element a kernel failed to write shows up as
    /// this value rather than as a plausible zero. A debugging aid; tests use it.
    pub poison_outputs: Option<f32>,
    /// Launch policy for the row kernels; `None` takes the table's pick for
    /// the adapter ([`RowTuning::for_adapter`]) with any fields that the
    /// `WGPU_LOSS_ROW_TUNING` environment variable sets. Checked against the
    /// device's limits when the context is created, as given (not fitted:
    /// see [`RowTuning::fitted_to`]).
    pub row_tuning: Option<RowTuning>,
}

/// Bytes bound per storage binding at most, whatever the adapter allows: keeps
/// every element index inside `u32` in the shaders.
const BINDING_CAP: u64 = 1 << 30;

/// A device and queue with the crate's pipelines cached on it. Cheap to share:
/// it is `Send + Sync`, and every method takes `&self`.
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    adapter_info: Option<wgpu::AdapterInfo>,
    limits: wgpu::Limits,
    features: wgpu::Features,
    binding_bytes: u64,
    pub(crate) poison: Option<f32>,
    row_tuning: RowTuning,
    subgroup_sizes: Option<SubgroupSizes>,
    pipelines: PipelineCache,
    pub(crate) pool: crate::pool::BufferPool,
    /// Scratch of the `encode_*` calls ([`crate::pool::Scratch`]).
    pub(crate) encode_pool: Arc<crate::pool::BufferPool>,
    /// Constant storage buffers by content (scalars a skipped pass would
    /// have written), which nothing writes: shared by every call.
    pub(crate) constants: crate::pool::UniformCache,
    /// Uniform buffers by content: written once at creation and never
    /// again, so any dispatch with the same parameters may share one.
    pub(crate) uniforms: crate::pool::UniformCache,
    /// Dispatches noted while [`GpuContext::record_plan`] runs.
    pub(crate) plan: crate::plan::PlanRecorder,
    /// Open [`GpuContext::prepare`] captures.
    pub(crate) captures: crate::prepared::Captures,
    /// Bound where a kernel's optional input (class weights) is absent.
    pub(crate) placeholder: wgpu::Buffer,
    /// Bound as the split-row records of a kernel whose rows are whole: a
    /// buffer of its own, since wgpu refuses one buffer in a read-only and a
    /// read-write binding of the same dispatch.
    pub(crate) placeholder_rw: wgpu::Buffer,
    /// Bound as the shared-vector records of a kernel whose rows are not
    /// edged: another buffer, since WebGPU refuses two read-write bindings
    /// of one buffer whose ranges overlap.
    pub(crate) placeholder_edges: wgpu::Buffer,
    /// Set by the device-lost callback (devices this crate created).
    lost: Arc<std::sync::Mutex<Option<String>>>,
    /// Error scopes an `encode_*` call popped but could not read yet.
    pub(crate) deferred: crate::scope::Deferred,
    /// Native: wakes the thread that polls the device while a mapping waits.
    #[cfg(not(target_arch = "wasm32"))]
    poller: Poller,
}

/// A thread that polls the device, blocking in `poll(wait)`, whenever a
/// buffer mapping is pending: what lets `map_async` resolve on native
/// without the awaiting future blocking or spinning. It ends when the
/// context is dropped.
#[cfg(not(target_arch = "wasm32"))]
struct Poller {
    /// Each request carries the sender the thread answers on once its poll
    /// has returned.
    wake: std::sync::Mutex<Option<std::sync::mpsc::Sender<PollDone>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[cfg(not(target_arch = "wasm32"))]
type PollDone = futures_intrusive::channel::shared::OneshotSender<()>;

#[cfg(not(target_arch = "wasm32"))]
impl Drop for Poller {
    /// Ends the thread before the context goes: a process that exits while
    /// the thread is still inside `poll` would tear the driver down under it.
    fn drop(&mut self) {
        match self.wake.lock() {
            Ok(mut wake) => drop(wake.take()),
            Err(poisoned) => drop(poisoned.into_inner().take()),
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Poller {
    fn start(device: wgpu::Device) -> Self {
        let (wake, requests) = std::sync::mpsc::channel::<PollDone>();
        // If no thread can be spawned the receiver is dropped, sending
        // fails, and `poll_until_idle` polls on the caller's thread instead.
        let thread = std::thread::Builder::new()
            .name("wgpu-loss poller".into())
            .spawn(move || {
                while let Ok(first) = requests.recv() {
                    // Requests that arrived meanwhile are served by this poll.
                    let waiting: Vec<PollDone> =
                        std::iter::once(first).chain(requests.try_iter()).collect();
                    // An error (a lost device) fails the mapping callbacks,
                    // which is how the waiting call learns of it.
                    let _ = device.poll(wgpu::PollType::wait_indefinitely());
                    // Answered only once `poll` has returned, so that no
                    // caller goes on (and perhaps exits the process) while
                    // this thread is still inside the driver.
                    for done in waiting {
                        let _ = done.send(());
                    }
                }
            });
        Self {
            wake: std::sync::Mutex::new(Some(wake)),
            thread: thread.ok(),
        }
    }
}

/// Features the kernels can use when the adapter has them.
fn wanted_features() -> wgpu::Features {
    wgpu::Features::SUBGROUP
        | wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
}

impl GpuContext {
    /// Picks an adapter and creates a device with the adapter's own limits.
    ///
    /// ```
    /// # fn main() -> Result<(), wgpu_loss::Error> {
    /// let ctx = wgpu_loss::block_on(wgpu_loss::GpuContext::new())?;
    /// println!("{}", ctx.describe());
    /// # Ok(()) }
    /// ```
    ///
    /// Honours `WGPU_BACKEND` (e.g. `vulkan`, `gl`), `WGPU_ADAPTER_NAME` (a
    /// case-insensitive substring of the adapter name) and `WGPU_POWER_PREF`.
    pub async fn new() -> Result<Self> {
        Self::with_options(ContextOptions::default()).await
    }

    /// [`GpuContext::new`] with explicit options.
    pub async fn with_options(options: ContextOptions) -> Result<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pick_adapter(&instance, &options).await?;
        let info = adapter.get_info();
        let features = adapter.features() & wanted_features();
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wgpu-loss"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::RequestDevice {
                adapter: info.name.clone(),
                reason: e.to_string(),
            })?;
        let mut ctx = Self::build(device, queue, Some(info), &options);
        if options.row_tuning.is_none() {
            ctx.row_tuning = RowTuning::with_env(ctx.row_tuning)?;
        }
        ctx.row_tuning.validate(&ctx.limits)?;
        // Our own device: record its loss so every later call fails fast with
        // the reason instead of waiting on work that will never finish.
        let lost = Arc::clone(&ctx.lost);
        ctx.device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut slot) = lost.lock() {
                *slot = Some(if message.is_empty() {
                    format!("{reason:?}")
                } else {
                    format!("{reason:?}: {message}")
                });
            }
        });
        Ok(ctx)
    }

    /// Adopts a device and queue the caller already has (the embedding case).
    /// The kernels use whatever limits and features that device was created with.
    /// The caller's device-lost callback is left alone; after a loss, calls
    /// fail with the error wgpu reports ([`Error::Gpu`] or [`Error::Readback`]).
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Self {
        Self::build(device, queue, None, &ContextOptions::default())
    }

    /// [`GpuContext::from_device`] for a device whose adapter the caller
    /// knows (another library's device, burn's for one): the adapter's info
    /// picks the kernels' tuning as [`GpuContext::new`] would (CPU adapters
    /// take different row launches and product tiles), where an adopted
    /// device without it gets the generic GPU tuning.
    pub fn from_device_with_adapter(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter: wgpu::AdapterInfo,
    ) -> Self {
        Self::build(device, queue, Some(adapter), &ContextOptions::default())
    }

    /// [`GpuContext::from_device_with_adapter`] with options, for an
    /// embedder who tunes the kernels on its own device: `row_tuning`
    /// (checked against the device's limits, as [`GpuContext::with_options`]
    /// checks it), `max_binding_bytes` and `poison_outputs` apply;
    /// `power_preference` has no adapter to pick and is ignored, and so is
    /// the `WGPU_LOSS_ROW_TUNING` variable. Without `row_tuning` the table
    /// picks by `adapter` (`None`: the generic GPU tuning).
    ///
    /// ```no_run
    /// # async fn run(device: wgpu::Device, queue: wgpu::Queue) -> wgpu_loss::Result<()> {
    /// // Never split rows across workgroups on this device.
    /// let tuning = wgpu_loss::RowTuning { split_vectors: 0, ..Default::default() };
    /// let options = wgpu_loss::ContextOptions { row_tuning: Some(tuning), ..Default::default() };
    /// let ctx = wgpu_loss::GpuContext::from_device_with_options(device, queue, None, options)?;
    /// # Ok(()) }
    /// ```
    pub fn from_device_with_options(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter: Option<wgpu::AdapterInfo>,
        options: ContextOptions,
    ) -> Result<Self> {
        let ctx = Self::build(device, queue, adapter, &options);
        ctx.row_tuning.validate(&ctx.limits)?;
        Ok(ctx)
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter_info: Option<wgpu::AdapterInfo>,
        options: &ContextOptions,
    ) -> Self {
        let limits = device.limits();
        let features = device.features();
        let align = u64::from(limits.min_storage_buffer_offset_alignment);
        let binding_bytes = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(options.max_binding_bytes.unwrap_or(u64::MAX))
            .min(BINDING_CAP)
            // Whole 16-byte vectors, and at least one aligned step to slide windows by.
            .max(align + 16)
            / 16
            * 16;
        // Subgroup reductions need the feature and known sizes (an adopted
        // device has no adapter info, so it uses workgroup-memory reductions).
        let subgroup_sizes = adapter_info
            .as_ref()
            .filter(|i| features.contains(wgpu::Features::SUBGROUP) && i.subgroup_min_size > 0)
            .map(|i| SubgroupSizes {
                min: i.subgroup_min_size,
                max: i.subgroup_max_size.max(i.subgroup_min_size),
            });
        let row_tuning = options.row_tuning.unwrap_or_else(|| {
            let device_type = adapter_info
                .as_ref()
                .map_or(wgpu::DeviceType::Other, |i| i.device_type);
            RowTuning::for_adapter(device_type, subgroup_sizes).fitted_to(&limits)
        });
        let placeholder = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-loss placeholder"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let placeholder_rw = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-loss split-row placeholder"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let placeholder_edges = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("wgpu-loss edged-row placeholder"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        Self {
            placeholder_rw,
            placeholder_edges,
            #[cfg(not(target_arch = "wasm32"))]
            poller: Poller::start(device.clone()),
            deferred: Default::default(),
            device,
            queue,
            adapter_info,
            limits,
            features,
            binding_bytes,
            poison: options.poison_outputs,
            row_tuning,
            subgroup_sizes,
            pipelines: PipelineCache::default(),
            pool: Default::default(),
            // Shared by reference count only: in the browser nothing here is
            // Send, and nothing needs to be (one thread).
            #[allow(clippy::arc_with_non_send_sync)]
            encode_pool: Arc::new(crate::pool::BufferPool::lent_to_encoders()),
            constants: Default::default(),
            uniforms: Default::default(),
            plan: Default::default(),
            captures: Default::default(),
            placeholder,
            lost: Arc::default(),
        }
    }

    /// `Err(DeviceLost)` once the device-lost callback has fired.
    pub(crate) fn check_not_lost(&self) -> Result<()> {
        let reason = match self.lost.lock() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        match reason {
            Some(reason) => Err(Error::DeviceLost {
                adapter: self.adapter_name().to_string(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Reports a device error that an earlier `encode_*` call recorded but
    /// could not read without waiting (see the crate docs, "Errors"), and
    /// whether the device was lost. Every host op calls it first; call it
    /// after submitting encoded work when no host op follows.
    pub async fn check_errors(&self) -> Result<()> {
        for (what, popped) in self.deferred.take() {
            if let Some(e) = popped.await {
                return Err(Error::Gpu {
                    kernel: what,
                    adapter: self.adapter_name().to_string(),
                    message: e.to_string(),
                });
            }
        }
        self.check_not_lost()
    }

    /// Resolves once the device has been polled until every submitted
    /// command and pending mapping is done (native: by the poller thread,
    /// without blocking the caller); in the browser the event loop does that
    /// itself and this returns at once.
    pub(crate) async fn poll_until_idle(&self) {
        #[cfg(not(target_arch = "wasm32"))]
        {
            let (done, finished) = futures_intrusive::channel::shared::oneshot_channel();
            let sent = match self.poller.wake.lock() {
                Ok(wake) => wake.as_ref().is_some_and(|w| w.send(done).is_ok()),
                Err(_) => false,
            };
            if sent {
                finished.receive().await;
            } else {
                // No poller thread: poll here rather than never resolve.
                let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
            }
        }
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Adapter name, backend, device type and driver; `None` for [`GpuContext::from_device`].
    pub fn adapter_info(&self) -> Option<&wgpu::AdapterInfo> {
        self.adapter_info.as_ref()
    }

    /// Adapter name, `"caller's device"` for an adopted device, or
    /// `"unnamed adapter"` where the backend gives no name (browsers hide it).
    pub fn adapter_name(&self) -> &str {
        match &self.adapter_info {
            Some(i) if !i.name.is_empty() => i.name.as_str(),
            Some(_) => "unnamed adapter",
            None => "caller's device",
        }
    }

    /// The limits the device was created with.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The features the device was created with.
    pub fn features(&self) -> wgpu::Features {
        self.features
    }

    /// Bytes bound per storage binding at most (the adapter's limit, capped
    /// by [`ContextOptions::max_binding_bytes`] and 1 GiB).
    pub fn max_binding_bytes(&self) -> u64 {
        self.binding_bytes
    }

    /// One paragraph: adapter, backend, device type, driver and the limits in force.
    pub fn describe(&self) -> String {
        let head = match &self.adapter_info {
            Some(i) => format!(
                "{} ({:?}, {:?}, driver {} {})",
                i.name, i.backend, i.device_type, i.driver, i.driver_info
            ),
            None => "caller's device".to_string(),
        };
        let l = &self.limits;
        format!(
            "{head}\n  max_storage_buffer_binding_size {} B, max_buffer_size {} B, binding window used {} B\n  \
             max_compute_workgroups_per_dimension {}, max_compute_invocations_per_workgroup {}, \
             max_compute_workgroup_storage_size {} B, min_storage_buffer_offset_alignment {}\n  \
             features: subgroup {}{}, timestamp-query {} (inside encoders {})",
            l.max_storage_buffer_binding_size,
            l.max_buffer_size,
            self.binding_bytes,
            l.max_compute_workgroups_per_dimension,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroup_storage_size,
            l.min_storage_buffer_offset_alignment,
            self.features.contains(wgpu::Features::SUBGROUP),
            match &self.adapter_info {
                Some(i) => format!(" (size {}..{})", i.subgroup_min_size, i.subgroup_max_size),
                None => String::new(),
            },
            self.features.contains(wgpu::Features::TIMESTAMP_QUERY),
            self.features
                .contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS),
        )
    }

    /// The launch policy of the row kernels on this device.
    pub fn row_tuning(&self) -> RowTuning {
        self.row_tuning
    }

    /// The device's subgroup sizes, where subgroup reductions are available.
    pub fn subgroup_sizes(&self) -> Option<SubgroupSizes> {
        self.subgroup_sizes
    }

    /// Launch shape and reduction mode of a row kernel over rows of `vecs` vectors.
    pub fn row_plan(&self, vecs: u64) -> (Launch, Reduce) {
        self.row_tuning.plan(
            vecs,
            self.subgroup_sizes,
            self.limits.max_compute_invocations_per_workgroup,
        )
    }

    /// How a row kernel of the softmax family or the row losses over `rows`
    /// rows of `cols` columns launches (four columns a vector), in one line: chunks per row
    /// where rows are split, threads per row (or chunk), rows (or chunks) per
    /// workgroup, workgroup size and reduction mode.
    pub fn describe_row_plan(&self, rows: usize, cols: usize) -> String {
        self.describe_row_plan_of(rows, cols, crate::DType::F32)
    }

    /// [`GpuContext::describe_row_plan`] for rows stored as `dtype` (whose
    /// lanes may hold more vectors when 16-bit: [`RowTuning::held_vectors`]).
    /// It describes the kernels that hold one matrix of a row; softmax
    /// backward holds two, half as many vectors of each
    /// ([`RowTuning::hold_pairs`]).
    pub fn describe_row_plan_of(&self, rows: usize, cols: usize, dtype: crate::DType) -> String {
        // Four columns a vector; where C is not a multiple of 4, rows are
        // edged or gathered and may span one vector more (`row_vectors`).
        let width = if cols.is_multiple_of(4) {
            crate::kernels::VecWidth::Vec4
        } else {
            crate::kernels::VecWidth::Vec4Edged
        };
        let vecs = width.row_vectors(cols);
        let held = self.row_tuning.held_vectors(dtype);
        let unheld = width.unheld_vectors();
        let splits = self
            .row_tuning
            .splits_holding(rows as u64, vecs, held, unheld);
        let (launch, reduce) = self.row_plan(vecs.div_ceil(u64::from(splits)));
        let (split, unit) = if splits > 1 {
            (format!("rows split in {splits} chunks; "), "chunk")
        } else {
            (String::new(), "row")
        };
        let chunk = vecs.div_ceil(u64::from(splits));
        let lanes = u64::from(launch.threads_per_row);
        let reads = if splits == 1 && crate::tuning::rows_held(chunk, unheld, lanes, held) {
            "held in registers (read once)"
        } else {
            "streamed"
        };
        format!(
            "{rows}x{cols}: {split}{} threads per {unit}, {} {unit}s per workgroup of {}, {reduce:?} reduction, {reads}",
            launch.threads_per_row,
            launch.rows_per_workgroup(),
            launch.workgroup_size
        )
    }

    /// The cached pipeline for a kernel variant, launch shape and options, built on first use.
    pub(crate) fn pipeline(
        &self,
        kernel: Kernel,
        variant: Variant,
        launch: Launch,
        spec: Spec,
    ) -> Result<Arc<Pipeline>> {
        if !kernel.family().accepts(variant) {
            return Err(crate::Error::Unsupported {
                what: "kernel variants outside their family's set (a bug in the crate)",
                adapter: self.adapter_name().to_string(),
                missing: "a shader variant for this width, storage and reduction",
            });
        }
        self.pipelines.get(
            &self.device,
            self.adapter_name(),
            &self.deferred,
            crate::kernels::PipelineKey {
                kernel,
                variant,
                launch,
                spec,
            },
        )
    }

    /// Buffers the host API holds in its pool: live, idle and created so far.
    /// A loop of calls of one shape stops creating buffers after its first call.
    pub fn pool_stats(&self) -> crate::pool::PoolStats {
        self.pool.stats()
    }

    /// Buffers the recording of kernels has created so far (the host API's
    /// pool aside, [`GpuContext::pool_stats`]): uniform buffers, shared by
    /// every dispatch with the same parameters, so a loop of `encode_*`
    /// calls of one shape stops creating them after its first call; and
    /// per-call scratch.
    pub fn encode_buffers_created(&self) -> crate::pool::EncodeBuffers {
        // Constant buffers count once, as the fresh buffers they are made of.
        self.uniforms
            .counts(self.encode_pool.stats().created_buffers)
    }

    /// Runs `f` and returns, with its result, every dispatch recorded on this
    /// context while it ran (from any thread), in recording order: the
    /// traffic plan of the encode calls `f` makes. Recordings may overlap
    /// (threads sharing a context, or one inside another): each gets every
    /// dispatch of its own span. Recording changes nothing that is encoded.
    ///
    /// ```
    /// # fn main() -> Result<(), wgpu_loss::Error> {
    /// use wgpu_loss::{block_on, GpuContext, GpuTensor, SoftmaxOp};
    /// let ctx = block_on(GpuContext::new())?;
    /// let usage = wgpu::BufferUsages::STORAGE;
    /// let buffer = |size| ctx.device().create_buffer(&wgpu::BufferDescriptor {
    ///     label: None, size, usage, mapped_at_creation: false,
    /// });
    /// let (x, y) = (buffer(64 * 1000 * 4), buffer(64 * 1000 * 4));
    /// let mut encoder = ctx.device().create_command_encoder(&Default::default());
    /// let (result, plan) = ctx.record_plan(|| {
    ///     ctx.encode_softmax(
    ///         &mut encoder,
    ///         SoftmaxOp::Softmax,
    ///         &GpuTensor::f32_matrix(&x, 0, 64, 1000),
    ///         &GpuTensor::f32_matrix(&y, 0, 64, 1000),
    ///     )
    /// });
    /// result?;
    /// assert_eq!(plan[0].kernel, "softmax_forward");
    /// // The output written once; the input read once or twice.
    /// assert_eq!(plan[0].bytes_written, 64 * 1000 * 4);
    /// assert!(plan[0].bytes_read >= 64 * 1000 * 4);
    /// # Ok(()) }
    /// ```
    pub fn record_plan<R>(&self, f: impl FnOnce() -> R) -> (R, Vec<crate::plan::Dispatch>) {
        let recording = self.plan.start();
        let result = f();
        (result, recording.take())
    }

    /// Records the dispatches of the `encode_*` calls `record` makes, once,
    /// into an encoder that is never submitted, and keeps them: the returned
    /// [`crate::Prepared`] encodes them into any encoder, as often as
    /// wanted, without creating a bind group, a uniform or a scratch buffer.
    /// For a loop that runs the same op on the same views every step (new
    /// data written into the same buffers), so that its steady state
    /// allocates nothing. Errors of `record` come back as they are; its
    /// value (what `encode_linear_cross_entropy` says of its scratch, say)
    /// is dropped: capture it in the closure to keep it.
    ///
    /// Only what is recorded into the encoder `record` is given is kept:
    /// not what other threads record on the context meanwhile, nor the work
    /// of a host API call made inside `record` (it records into encoders of
    /// its own and submits them at once).
    ///
    /// ```
    /// # fn main() -> Result<(), wgpu_loss::Error> {
    /// use wgpu_loss::{block_on, GpuContext, GpuTensor, SoftmaxOp};
    /// let ctx = block_on(GpuContext::new())?;
    /// let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    /// let buffer = |size| ctx.device().create_buffer(&wgpu::BufferDescriptor {
    ///     label: None, size, usage, mapped_at_creation: false,
    /// });
    /// let (x, y) = (buffer(8 * 100 * 4), buffer(8 * 100 * 4));
    /// let step = ctx.prepare(|encoder| {
    ///     ctx.encode_softmax(
    ///         encoder,
    ///         SoftmaxOp::Softmax,
    ///         &GpuTensor::f32_matrix(&x, 0, 8, 100),
    ///         &GpuTensor::f32_matrix(&y, 0, 8, 100),
    ///     )
    /// })?;
    /// let made = ctx.encode_buffers_created();
    /// for batch in 0..3 {
    ///     ctx.queue().write_buffer(&x, 0, bytemuck::cast_slice(&[batch as f32; 800]));
    ///     let mut encoder = ctx.device().create_command_encoder(&Default::default());
    ///     step.encode(&mut encoder);
    ///     ctx.queue().submit([encoder.finish()]);
    /// }
    /// // Nothing was created after the first recording.
    /// assert_eq!(ctx.encode_buffers_created(), made);
    /// # Ok(()) }
    /// ```
    pub fn prepare<R>(
        &self,
        record: impl FnOnce(&mut wgpu::CommandEncoder) -> Result<R>,
    ) -> Result<crate::Prepared> {
        let mut encoder = self.encoder("wgpu-loss prepare (never submitted)");
        let capture = self.captures.open(&encoder);
        record(&mut encoder)?;
        Ok(capture.finish())
    }

    /// Pipelines built so far. Repeated calls of the same op do not add to it.
    pub fn pipelines_built(&self) -> usize {
        self.pipelines.len()
    }
}

async fn pick_adapter(
    instance: &wgpu::Instance,
    options: &ContextOptions,
) -> Result<wgpu::Adapter> {
    if let Ok(wanted) = std::env::var("WGPU_ADAPTER_NAME") {
        // wgpu's own helper panics when nothing matches; match the same way, but return an error.
        let adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
        let needle = wanted.to_lowercase();
        let mut names = Vec::new();
        for adapter in adapters {
            let name = adapter.get_info().name;
            if name.to_lowercase().contains(&needle) {
                return Ok(adapter);
            }
            names.push(name);
        }
        return Err(Error::AdapterNotFound {
            wanted,
            found: names.join(", "),
        });
    }
    let power_preference = options
        .power_preference
        .or_else(wgpu::PowerPreference::from_env)
        .unwrap_or(wgpu::PowerPreference::HighPerformance);
    instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference,
            force_fallback_adapter: false,
            compatible_surface: None,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::NoAdapter {
            reason: e.to_string(),
        })
}

/// Every adapter wgpu finds with the backends `WGPU_BACKEND` allows.
pub async fn enumerate_adapters() -> Vec<wgpu::AdapterInfo> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    instance
        .enumerate_adapters(wgpu::Backends::all())
        .await
        .iter()
        .map(|a| a.get_info())
        .collect()
}
