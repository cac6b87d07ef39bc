//! The crate's one error type.

/// Everything that can go wrong in `wgpu-loss`. Variants carry the numbers a
/// caller needs to act: the requested size, the limit, the row, the target.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No adapter could be found at all.
    #[error("no GPU adapter found ({reason}); on a machine without a GPU install Mesa's software Vulkan device: `apt-get install mesa-vulkan-drivers`")]
    NoAdapter {
        /// What wgpu said.
        reason: String,
    },
    /// `WGPU_ADAPTER_NAME` was set but names no adapter.
    #[error("WGPU_ADAPTER_NAME={wanted:?} matches no adapter; adapters found: [{found}]")]
    AdapterNotFound {
        /// The requested name (matched case-insensitively as a substring).
        wanted: String,
        /// Names of the adapters that do exist.
        found: String,
    },
    /// The adapter refused to create a device.
    #[error("could not create a device on adapter {adapter:?}: {reason}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// What wgpu said.
        reason: String,
    },
    /// A slice's length does not match the shape it was given with.
    #[error("{what}: expected {expected} elements, got {actual}")]
    LengthMismatch {
        /// Which argument.
        what: &'static str,
        /// Elements the shape implies.
        expected: usize,
        /// Elements given.
        actual: usize,
    },
    /// A shape whose element or byte count does not fit in `usize`/`u64`.
    #[error("shape [{rows}, {cols}] is too large to address")]
    ShapeOverflow {
        /// Rows requested.
        rows: usize,
        /// Columns requested.
        cols: usize,
    },
    /// A row-wise op needs at least one column.
    #[error("cols must be at least 1 (got 0)")]
    ZeroCols,
    /// One row does not fit in a single storage binding.
    #[error("one row of {cols} columns needs {row_bytes} bytes, more than the adapter's max_storage_buffer_binding_size of {limit} bytes (less alignment slack)")]
    RowTooLarge {
        /// Columns per row.
        cols: usize,
        /// Bytes one row needs.
        row_bytes: u64,
        /// The binding limit in force.
        limit: u64,
    },
    /// A row so long that each invocation of the device's largest workgroup
    /// would walk more than [`crate::tuning::MAX_VECTORS_PER_THREAD`] vectors.
    #[error("rows of {cols} columns need {per_invocation} vectors per invocation even with {threads} invocations per row; the limit is {limit} (lavapipe stops longer loops)")]
    RowTooLong {
        /// Columns per row.
        cols: usize,
        /// Invocations per row used.
        threads: u32,
        /// Vectors each would walk.
        per_invocation: u64,
        /// The bound.
        limit: u64,
    },
    /// A whole-problem buffer exceeds an adapter limit.
    #[error(
        "{what} needs {requested} bytes, more than the adapter's {limit_name} of {limit} bytes"
    )]
    TooLarge {
        /// Which buffer.
        what: &'static str,
        /// Bytes requested.
        requested: u64,
        /// Name of the wgpu limit.
        limit_name: &'static str,
        /// Value of that limit.
        limit: u64,
    },
    /// A class-index target outside `[0, classes)` that is not `ignore_index`.
    #[error("row {row}: target {target} is outside [0, {classes}) and is not ignore_index ({ignore_index})")]
    TargetOutOfRange {
        /// Row index.
        row: usize,
        /// The target found there.
        target: i64,
        /// Number of classes `C`.
        classes: usize,
        /// The ignore index in force.
        ignore_index: i64,
    },
    /// A class weight that is negative, NaN or infinite.
    #[error("weight[{index}] = {value}: class weights must be finite and non-negative")]
    InvalidWeight {
        /// Class index.
        index: usize,
        /// The weight found there.
        value: f32,
    },
    /// An input value outside its domain (a probability outside `[0, 1]`,
    /// a negative or non-finite probability target, ...).
    #[error("{what}[row {row}, column {col}] = {value}: {reason}")]
    InvalidValue {
        /// Which input.
        what: &'static str,
        /// Row of the bad value.
        row: usize,
        /// Column of the bad value.
        col: usize,
        /// The value found.
        value: f32,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A GPU tensor view that does not fit what the op needs (dtype, shape,
    /// offset alignment, bounds, buffer usage).
    #[error("tensor view `{name}` {problem}")]
    InvalidView {
        /// Which argument.
        name: &'static str,
        /// What is wrong, with the numbers.
        problem: String,
    },
    /// A vocabulary shard that is empty or reaches past the vocabulary.
    #[error("shard [{start}, {end}) is not a non-empty range inside [0, {classes}) classes")]
    InvalidShard {
        /// First class of the shard.
        start: usize,
        /// One past its last class.
        end: usize,
        /// Classes in the vocabulary.
        classes: usize,
    },
    /// The fused linear + cross-entropy's workspace cannot hold one row of logits.
    #[error("workspace of {bytes} bytes is too small for one row of {classes} f32 logits ({needed} bytes); raise workspace_bytes")]
    WorkspaceTooSmall {
        /// Workspace bytes asked for (after the binding-size cap).
        bytes: u64,
        /// Bytes one row needs.
        needed: u64,
        /// Classes in the shard.
        classes: usize,
    },
    /// An option value outside its domain.
    #[error("option {name} = {value} is invalid: {reason}")]
    InvalidOption {
        /// Option name.
        name: &'static str,
        /// The value given.
        value: f64,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A row-tuning spec (`WGPU_LOSS_ROW_TUNING`) that cannot be parsed.
    #[error("row tuning {spec:?}: {reason}")]
    InvalidTuning {
        /// The spec as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The adapter lacks something an op needs.
    #[error("{what} are not supported on adapter {adapter:?}: it lacks {missing}")]
    Unsupported {
        /// What was asked for.
        what: &'static str,
        /// Adapter name.
        adapter: String,
        /// The missing feature or limit.
        missing: &'static str,
    },
    /// wgpu reported a validation or out-of-memory error while running a kernel.
    #[error("GPU error in {kernel} on adapter {adapter:?}: {message}")]
    Gpu {
        /// Kernel (or step) that was running.
        kernel: String,
        /// Adapter name.
        adapter: String,
        /// wgpu's message.
        message: String,
    },
    /// The device was lost (driver reset, `Device::destroy`, unplugged GPU);
    /// the context cannot be used again; make a new one.
    #[error("the device on adapter {adapter:?} was lost ({reason}); create a new context")]
    DeviceLost {
        /// Adapter name.
        adapter: String,
        /// What wgpu reported.
        reason: String,
    },
    /// Reading results back failed (mapping, device loss, poll error).
    #[error("reading results back from adapter {adapter:?} failed: {message}")]
    Readback {
        /// Adapter name.
        adapter: String,
        /// What failed.
        message: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
