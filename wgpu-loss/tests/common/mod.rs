//! Helpers shared by the GPU tests: getting an adapter (fail under CI, visible
//! skip otherwise), seeded inputs, and the one tolerance assertion.
#![allow(dead_code)]

use std::sync::OnceLock;

use wgpu::util::DeviceExt;
use wgpu_loss::{ContextOptions, GpuContext, Tolerance, F32_TOLERANCE};

/// Value every output buffer is filled with before a kernel runs: a finite,
/// implausible number, so an unwritten element fails the comparison.
pub const POISON: f32 = f32::from_bits(0x7EAD_BEEF);

fn make(options: ContextOptions) -> Option<GpuContext> {
    match wgpu_loss::block_on(GpuContext::with_options(ContextOptions {
        poison_outputs: Some(POISON),
        ..options
    })) {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("CI=true but no GPU adapter: {e}");
            }
            eprintln!(
                "SKIPPED (no GPU adapter: {e}). Install a software Vulkan device with \
                 `apt-get install mesa-vulkan-drivers` to run the GPU tests."
            );
            None
        }
    }
}

/// The shared context for this test binary, or `None` (after printing a skip line) outside CI.
pub fn gpu() -> Option<&'static GpuContext> {
    static CTX: OnceLock<Option<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| make(ContextOptions::default())).as_ref()
}

/// A context of its own, for tests whose traffic plans
/// (`GpuContext::record_plan`) must not see other tests' dispatches.
pub fn own_gpu() -> Option<GpuContext> {
    make(ContextOptions::default())
}

/// A context whose storage bindings are capped at `bytes`, to force row windows on small inputs.
pub fn gpu_with_binding_cap(bytes: u64) -> Option<GpuContext> {
    make(ContextOptions {
        max_binding_bytes: Some(bytes),
        ..ContextOptions::default()
    })
}

/// A context with `tuning` as its row tuning (GPU-like tunings forced on
/// lavapipe), outputs poisoned like every test context.
pub fn gpu_with_tuning(tuning: wgpu_loss::RowTuning) -> Option<GpuContext> {
    make(ContextOptions {
        row_tuning: Some(tuning),
        ..ContextOptions::default()
    })
}

/// The GPU table with every row of more than 64 vectors split (chunks of 64,
/// or more where the occupancy rule asks, down to 16): tests of split rows.
/// At most 4 lanes a row, so that only rows of up to 32 vectors are held
/// whole (which are never split).
pub fn splitting_tuning() -> wgpu_loss::RowTuning {
    wgpu_loss::RowTuning {
        max_threads_per_row: 4,
        split_vectors: 64,
        split_rows_below: 1_000_000,
        occupancy_workgroups: 512,
        min_split_vectors: 16,
        ..wgpu_loss::RowTuning::default()
    }
}

/// SplitMix64: small, seeded, and the same on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit() as f32
    }
    /// Standard normal times `std`.
    pub fn normal(&mut self, std: f32) -> f32 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32 * std
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// `rows` rows of `cols` probabilities (uniform draws, each row scaled to sum to 1).
    pub fn prob_rows(&mut self, rows: usize, cols: usize) -> Vec<f32> {
        let raw: Vec<f32> = (0..rows * cols).map(|_| self.uniform(0.0, 1.0)).collect();
        raw.chunks(cols)
            .flat_map(|r| {
                let total: f32 = r.iter().sum();
                r.iter().map(move |v| v / total)
            })
            .collect()
    }

    pub fn vec_normal(&mut self, len: usize, std: f32) -> Vec<f32> {
        (0..len).map(|_| self.normal(std)).collect()
    }
}

/// Asserts `actual` matches `expected` under the crate's F32 tolerance, and
/// that nothing is left at the poison value. Prints index, actual, expected
/// and difference on failure.
#[track_caller]
pub fn assert_close(what: &str, actual: &[f32], expected: &[f64]) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: length {} != reference length {}",
        actual.len(),
        expected.len()
    );
    if let Some(i) = actual.iter().position(|v| v.to_bits() == POISON.to_bits()) {
        panic!("{what}: element {i} was never written (still holds the poison value)");
    }
    assert_within(what, actual, expected, F32_TOLERANCE);
}

/// [`assert_close`] under an explicit tolerance (f16 outputs).
#[track_caller]
pub fn assert_within(what: &str, actual: &[f32], expected: &[f64], tol: Tolerance) {
    if let Some(i) = actual.iter().position(|v| v.to_bits() == POISON.to_bits()) {
        panic!("{what}: element {i} was never written (still holds the poison value)");
    }
    if let Some(m) = tol.first_mismatch(actual, expected) {
        panic!("{what}: {m} (tolerance {tol:?})");
    }
}

pub const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// One buffer holding several tensors, each at an aligned offset, the rest poisoned.
pub struct Arena {
    pub buffer: wgpu::Buffer,
    align: u64,
    next: u64,
}

impl Arena {
    pub fn new(ctx: &GpuContext, bytes: u64) -> Self {
        let align = u64::from(ctx.limits().min_storage_buffer_offset_alignment);
        let size = bytes.div_ceil(align) * align + 16 * align;
        let poison = vec![POISON; size as usize / 4];
        let buffer = ctx
            .device()
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("arena"),
                contents: bytemuck::cast_slice(&poison),
                usage: USAGE,
            });
        // Start one alignment step in, so no tensor sits at offset 0.
        Self {
            buffer,
            align,
            next: align,
        }
    }
    /// Places `data` (or poison, for outputs) and returns its byte offset.
    pub fn put<T: bytemuck::Pod>(&mut self, ctx: &GpuContext, data: &[T]) -> u64 {
        let offset = self.next;
        let mut bytes = bytemuck::cast_slice::<T, u8>(data).to_vec();
        bytes.resize(bytes.len().div_ceil(4) * 4, 0); // write_buffer moves whole words
        ctx.queue().write_buffer(&self.buffer, offset, &bytes);
        self.next += (std::mem::size_of_val(data) as u64)
            .max(4)
            .div_ceil(self.align)
            * self.align;
        offset
    }
    pub fn reserve(&mut self, elems: usize) -> u64 {
        let offset = self.next;
        self.next += (elems as u64 * 4).max(4).div_ceil(self.align) * self.align;
        offset
    }
}

/// Reads `elems` f32 values at byte `offset` of `buffer`.
pub fn read(ctx: &GpuContext, buffer: &wgpu::Buffer, offset: u64, elems: usize) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(&read_bytes(ctx, buffer, offset, elems as u64 * 4))
}

/// Reads `bytes` bytes at `offset` of `buffer` (copied out through a staging buffer).
pub fn read_bytes(ctx: &GpuContext, buffer: &wgpu::Buffer, offset: u64, bytes: u64) -> Vec<u8> {
    let size = bytes.max(4).div_ceil(4) * 4;
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
    ctx.queue().submit([enc.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |r| r.expect("map"));
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("poll");
    staging.get_mapped_range(..).expect("mapped")[..bytes as usize].to_vec()
}

/// A 16-bit cross-entropy gradient's plan: rows of 8 columns or more are
/// stored packed, in place (`ce_edges` merges the words rows share where C
/// is odd, and nothing is staged); under 8 columns the gradient is staged
/// through f32 (`half_widen`, `half_narrow`). For odd C only.
#[track_caller]
pub fn assert_gradient_staged_only_under_8_columns(
    tag: &str,
    classes: usize,
    plan: &[wgpu_loss::Dispatch],
) {
    let ran = |k: &str| plan.iter().any(|d| d.kernel == k);
    let staged = ran("half_widen") && ran("half_narrow");
    let merged = ran("ce_edges");
    if classes >= 8 {
        assert!(
            !staged && merged,
            "{tag}: the gradient was staged: {plan:?}"
        );
    } else {
        assert!(
            staged && !merged,
            "{tag}: the gradient was not staged: {plan:?}"
        );
    }
}
