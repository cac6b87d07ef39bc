//! GPU host code of the `linear` op and the fused linear + cross-entropy;
//! the definitions are in [`crate::loss::linear_cross_entropy`].
//!
//! The fused op walks the rows in chunks that fit its workspace. For each
//! chunk: the tiled product `z = H·Wᵀ + b` of the chunk's rows and the
//! shard's classes into the workspace (`shaders/linear.wgsl`, one dispatch
//! per binding-sized segment of `W`), one record per row
//! (`lce_records`), then, unsharded, the merge into row losses and lse
//! (`lce_merge`) and, for gradients, the chunk turned into `G = ∂loss/∂z`
//! in place (`lce_grad`) and multiplied out: `dH += G·W_seg` per segment,
//! `dW_seg += Gᵀ·H_chunk`, `db += Σ_rows G` (`lce_bias_grad`). Chunks and
//! segments are visited in a fixed order and every sum runs in a fixed
//! order, so results are bitwise reproducible for a given adapter, input and
//! workspace size. The `mean` denominator comes from the targets alone
//! (`ce_denominator`), before any chunk, so it is global.
//!
//! A loss without gradients on a CPU adapter may instead walk the
//! vocabulary in parts through the same workspace, as shards, and merge
//! their records, so that chunks are tall enough for `matmul_wide`
//! (`lce_loss_part_classes`).

use crate::context::GpuContext;
use crate::error::{Error, Result};
use crate::kernels::flags::linear::{FLAG_ACCUMULATE, FLAG_BIAS, FLAG_LHS_F32};
use crate::kernels::flags::linear_cross_entropy as lce_flags;
use crate::kernels::slot::{cross_entropy as ce, linear as mm, linear_cross_entropy as lce};
use crate::kernels::{
    slot, Kernel, Launch, Reduce, Slot, Spec, Storage, Variant, VecWidth, WORKGROUP_SIZE,
};
use crate::loss::cross_entropy::{CrossEntropyOptions, CrossEntropyOutput};
use crate::loss::linear_cross_entropy::{
    LinearCrossEntropyOptions, LinearCrossEntropyOutput, LinearGrads, LinearShape, Shard,
    ShardRecord, RECORD_FLOATS,
};
use crate::loss::{check_matrix, checked_targets, ClassIndex, Reduction, IGNORED_ROW};
use crate::ops::cross_entropy::{cross_entropy_params, gpu_ignore_index, RowLoss};
use crate::ops::{Operand, Params, WholeArg};
use crate::tensor::{spec, DType, GpuTensor};

/// Most `k` one product dispatch sums: lavapipe stops an invocation's loops
/// after 65535 iterations, and the kernel's k loop takes 16 per iteration.
const MAX_INNER: usize = 1 << 19;

/// Rows per chunk at most: `lce_bias_grad` walks a chunk's rows in one loop.
const MAX_CHUNK_ROWS: usize = 32_768;

/// Output tile of the product kernel (`TILE_M`, `TILE_N` in `linear.wgsl`).
const TILE: usize = 64;
/// Output columns per workgroup of `matmul_wide` and `matmul_wide_short`
/// (linear.wgsl); `matmul`'s tile is [`TILE`] square.
const WIDE_COLS: usize = 128;
/// Output rows per workgroup of `matmul_wide`, for outputs of at least as
/// many rows; `matmul_wide_short` covers [`TILE`] rows.
const WIDE_TALL: usize = 128;
/// Multiply-adds below which a product takes `matmul` even on a CPU
/// adapter: llvmpipe compiles the written-out `matmul_wide` in about a
/// second per device, more than small products take (the library's linear
/// tests ran 42 s instead of 15 when every 64x128 output took it).
const WIDE_MIN_MACS: u64 = 1 << 28;

/// A product kernel and its output tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProductKernel {
    kernel: Kernel,
    tile_rows: usize,
    tile_cols: usize,
}

/// Scratch memory a fused call allocated on the device, beyond its inputs and
/// outputs: counted from the sizes of the buffers it created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScratchUse {
    /// Bytes of storage buffers the call created (workspace, records,
    /// per-row results, scalars).
    pub bytes: u64,
    /// Of which the logits workspace.
    pub workspace_bytes: u64,
    /// Rows per chunk the workspace held.
    pub chunk_rows: usize,
    /// Parts the vocabulary was walked in, one after another through the
    /// same workspace: 1, or more for a loss without gradients on a CPU
    /// adapter, where more rows per chunk fill the faster product kernel
    /// (see [`GpuContext::encode_linear_cross_entropy`]).
    pub vocabulary_parts: usize,
}

/// The tensors of [`GpuContext::encode_linear`]: `output = input·weightᵀ + bias`.
#[derive(Clone, Copy, Debug)]
pub struct LinearViews<'a> {
    /// f32, f16 or bf16 `[N, D]`.
    pub input: GpuTensor<'a>,
    /// `[V, D]`, the input's dtype.
    pub weight: GpuTensor<'a>,
    /// Optional f32 `[V, 1]`.
    pub bias: Option<GpuTensor<'a>>,
    /// f32 `[N, V]`.
    pub output: GpuTensor<'a>,
}

/// How a matrix operand of [`GpuContext::encode_matmul`] is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Layout {
    /// As the operand: `A` `[M, K]`, `B` `[K, N]`.
    #[default]
    RowMajor,
    /// As its transpose: `A` stored `[K, M]`, `B` stored `[N, K]` (the
    /// layout of `nn.Linear`'s weight as the `B` of `x·Wᵀ`).
    Transposed,
}

pub use crate::loss::linear_cross_entropy::Accumulate;

/// Options of [`GpuContext::encode_matmul`]: plain data, `Default` is
/// `out = A·B` with both operands row-major.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MatmulOptions {
    /// How `A` is stored.
    pub a: Layout,
    /// How `B` is stored.
    pub b: Layout,
    /// Overwrite or add to `out`.
    pub accumulate: Accumulate,
}

/// The tensors of [`GpuContext::encode_matmul`], `out = A·B`.
#[derive(Clone, Copy, Debug)]
pub struct MatmulViews<'a> {
    /// `A`, f32, f16 or bf16, stored as [`MatmulOptions::a`] says.
    pub a: GpuTensor<'a>,
    /// `B`, f32, f16 or bf16 (16-bit when `A` is, and then `A`'s type),
    /// stored as [`MatmulOptions::b`] says.
    pub b: GpuTensor<'a>,
    /// f32 `[M, N]`.
    pub out: GpuTensor<'a>,
}

/// The tensors of [`GpuContext::encode_linear_cross_entropy`]. Class weights,
/// if any, are a view in the options. Outputs must not share bytes with any
/// input or with each other.
#[derive(Clone, Copy, Debug)]
pub struct LinearCrossEntropyViews<'a> {
    /// f32, f16 or bf16 `[N, D]` hidden states.
    pub hidden: GpuTensor<'a>,
    /// `[V, D]` classifier weight, the hidden states' dtype.
    pub classifier: GpuTensor<'a>,
    /// Optional f32 `[V, 1]` bias.
    pub bias: Option<GpuTensor<'a>>,
    /// i32 `[N, 1]` class indices.
    pub targets: GpuTensor<'a>,
    /// f32 `[N, 1]` row losses for `Reduction::None`, else `[2, 1]`: the
    /// loss and its z-loss part.
    pub loss: GpuTensor<'a>,
    /// Optional f32 `[N, 1]`: each row's logsumexp.
    pub lse: Option<GpuTensor<'a>>,
    /// Optional `[N, D]`: `dH`. f32, or f16 or bf16 (accumulated in an f32 shadow
    /// the call allocates, then rounded once).
    pub grad_hidden: Option<GpuTensor<'a>>,
    /// Optional `[V, D]`: `dW`, f32, f16 or bf16 like `grad_hidden`.
    pub grad_classifier: Option<GpuTensor<'a>>,
    /// Optional `[V, 1]`: `db` (needs `bias`), f32, f16 or bf16 like
    /// `grad_hidden`.
    pub grad_bias: Option<GpuTensor<'a>>,
}

/// The tensors of [`GpuContext::encode_shard_records`]: one vocabulary
/// shard's forward pass.
#[derive(Clone, Copy, Debug)]
pub struct ShardRecordViews<'a> {
    /// f32, f16 or bf16 `[N, D]` hidden states.
    pub hidden: GpuTensor<'a>,
    /// The shard's rows of the classifier, `[v1 - v0, D]`.
    pub classifier: GpuTensor<'a>,
    /// The shard's bias, optional f32 `[v1 - v0, 1]`.
    pub bias: Option<GpuTensor<'a>>,
    /// i32 `[N, 1]` class indices (of the whole vocabulary).
    pub targets: GpuTensor<'a>,
    /// f32 `[N, 8]`: one [`ShardRecord`] per row.
    pub records: GpuTensor<'a>,
}

/// The tensors of [`GpuContext::encode_merge_records`].
#[derive(Clone, Copy, Debug)]
pub struct MergeViews<'a> {
    /// f32 `[S·N, 8]`: shard 0's `N` records, then shard 1's, in shard order.
    pub records: GpuTensor<'a>,
    /// i32 `[N, 1]` class indices.
    pub targets: GpuTensor<'a>,
    /// As [`LinearCrossEntropyViews::loss`].
    pub loss: GpuTensor<'a>,
    /// f32 `[N, 1]`: each row's logsumexp, what the backward passes take.
    pub lse: GpuTensor<'a>,
}

/// The tensors of [`GpuContext::encode_shard_backward`]: one shard's gradients.
#[derive(Clone, Copy, Debug)]
pub struct ShardBackwardViews<'a> {
    /// f32, f16 or bf16 `[N, D]` hidden states.
    pub hidden: GpuTensor<'a>,
    /// The shard's rows of the classifier, `[v1 - v0, D]`.
    pub classifier: GpuTensor<'a>,
    /// The shard's bias, optional f32 `[v1 - v0, 1]`.
    pub bias: Option<GpuTensor<'a>>,
    /// i32 `[N, 1]` class indices.
    pub targets: GpuTensor<'a>,
    /// f32 `[N, 1]`: the merged logsumexp of every row.
    pub lse: GpuTensor<'a>,
    /// Optional f32 `[N, D]`: this shard's part of `dH` (sum it over shards).
    pub grad_hidden: Option<GpuTensor<'a>>,
    /// Optional f32 `[v1 - v0, D]`: the shard's rows of `dW`.
    pub grad_classifier: Option<GpuTensor<'a>>,
    /// Optional f32 `[v1 - v0, 1]`: the shard's `db`.
    pub grad_bias: Option<GpuTensor<'a>>,
}

/// Gradients of one shard's backward pass on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardGradients {
    /// This shard's part of `dH`, `[N, D]`.
    pub grad_hidden: Option<Vec<f32>>,
    /// The shard's rows of `dW`, `[v1 - v0, D]`.
    pub grad_classifier: Option<Vec<f32>>,
    /// The shard's `db`, `[v1 - v0]`.
    pub grad_bias: Option<Vec<f32>>,
}

/// `elems` elements of a buffer from element `first`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    buffer: &'a wgpu::Buffer,
    first: u64,
    elems: u64,
}

/// One matrix product dispatch (see `linear.wgsl` for the addressing).
struct Product<'a> {
    lhs: Mat<'a>,
    /// `A` is f32 (the logit-gradient workspace) rather than `storage`.
    lhs_f32: bool,
    rhs: Mat<'a>,
    bias: Option<Mat<'a>>,
    out: Mat<'a>,
    storage: Storage,
    m: usize,
    n: usize,
    k: usize,
    lhs_row: usize,
    lhs_col: usize,
    rhs_row: usize,
    rhs_col: usize,
    out_row: usize,
    accumulate: bool,
}

/// What a pass over the chunks of a shard produces.
enum Work<'b> {
    /// The shard's records, into `records` (`[N, 8]`).
    Records { records: GpuTensor<'b> },
    /// The whole op on one device: records, merge, and the gradients asked for.
    Fused {
        lse: GpuTensor<'b>,
        grads: Grads<'b>,
    },
    /// A shard's gradients from the merged lse.
    Backward {
        lse: GpuTensor<'b>,
        grads: Grads<'b>,
    },
}

#[derive(Clone, Copy, Default)]
struct Grads<'b> {
    hidden: Option<GpuTensor<'b>>,
    classifier: Option<GpuTensor<'b>>,
    bias: Option<GpuTensor<'b>>,
}

impl Grads<'_> {
    fn any(&self) -> bool {
        self.hidden.is_some() || self.classifier.is_some() || self.bias.is_some()
    }
}

/// The inputs every pass reads.
struct Inputs<'b> {
    hidden: GpuTensor<'b>,
    classifier: GpuTensor<'b>,
    bias: Option<GpuTensor<'b>>,
    targets: GpuTensor<'b>,
    weights: Option<GpuTensor<'b>>,
    shard: Shard,
    params: Params,
    workspace_bytes: Option<u64>,
    /// `dW` and `db` add to their views (every chunk accumulates).
    add_parameter_grads: bool,
}

fn u32_of(v: usize, what: &'static str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::TooLarge {
        what,
        requested: v as u64,
        limit_name: "u32 indices",
        limit: u64::from(u32::MAX),
    })
}

/// The fused kernels' parameters for cross-entropy options.
fn lce_params<W: ?Sized>(
    options: &CrossEntropyOptions<'_, W>,
    ignore_index: i32,
    shard: Shard,
    rows: usize,
) -> Result<Params> {
    let mut flags = 0;
    if options.weight.is_some() {
        flags |= lce_flags::FLAG_WEIGHTS;
    }
    if options.softcap.is_some() {
        flags |= lce_flags::FLAG_SOFTCAP;
    }
    Ok(Params {
        ignore_index,
        flags,
        smoothing: options.label_smoothing,
        z_loss: options.z_loss,
        softcap: options.softcap.unwrap_or(1.0),
        grad_scale: options.grad_scale,
        reduction: options.reduction.code(),
        total_rows: u32_of(rows, "row count")?,
        shard_start: u32_of(shard.start, "shard start")?,
        classes: u32_of(shard.classes, "class count")?,
        shards: 1,
        ..Params::default()
    })
}

/// Gradients come back in f32, f16 or bf16 (16-bit ones from an f32 shadow).
fn grad_dtype(name: &'static str, v: &GpuTensor<'_>) -> Result<DType> {
    match v.dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(v.dtype),
        DType::I32 => Err(Error::InvalidView {
            name,
            problem: format!(
                "has dtype {:?}; these gradients are F32, F16 or BF16",
                v.dtype
            ),
        }),
    }
}

/// The view itself, or an f32 view of its shadow buffer where it has one.
fn in_f32<'a>(v: Option<GpuTensor<'a>>, shadow: &'a Option<wgpu::Buffer>) -> Option<GpuTensor<'a>> {
    match (v, shadow) {
        (Some(v), Some(b)) => Some(GpuTensor::f32_matrix(b, 0, v.rows, v.cols)),
        (v, _) => v,
    }
}

fn view_mat<'a>(v: &GpuTensor<'a>) -> Mat<'a> {
    Mat {
        buffer: v.buffer,
        first: v.offset_elems(),
        elems: v.len() as u64,
    }
}

impl Mat<'_> {
    /// `elems` elements from `first` elements further in.
    fn sub(&self, first: u64, elems: u64) -> Self {
        Mat {
            buffer: self.buffer,
            first: self.first + first,
            elems,
        }
    }
}

/// Any two of `views` (name, view) sharing bytes, as an error naming both.
fn reject_shared(
    outputs: &[(&'static str, GpuTensor<'_>)],
    inputs: &[(&'static str, GpuTensor<'_>)],
) -> Result<()> {
    for (i, (name, out)) in outputs.iter().enumerate() {
        for (other, v) in inputs.iter().chain(&outputs[i + 1..]) {
            if out.shares_bytes(v) {
                return Err(Error::InvalidView {
                    name,
                    problem: format!(
                        "shares bytes with `{other}`; outputs need bytes of their own"
                    ),
                });
            }
        }
    }
    Ok(())
}

impl GpuContext {
    /// The binding of `m` (elements of `bytes` each): its aligned byte range
    /// and the element offset of `m.first` inside it.
    fn window<'a>(&self, m: &Mat<'a>, bytes: u64) -> Result<(wgpu::BindingResource<'a>, u32)> {
        let ((offset, size), base) = self.window_range(m, bytes)?;
        Ok((
            wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: m.buffer,
                offset,
                size: wgpu::BufferSize::new(size),
            }),
            base,
        ))
    }

    /// The byte range `(offset, size)` that binds `m` (elements of `bytes`
    /// each), and the element index of its first element in that binding.
    fn window_range(&self, m: &Mat<'_>, bytes: u64) -> Result<((u64, u64), u32)> {
        let align = u64::from(self.limits().min_storage_buffer_offset_alignment);
        let start = m.first * bytes / align * align;
        let end = ((m.first + m.elems.max(1)) * bytes).div_ceil(4) * 4;
        let size = end - start;
        if size > self.max_binding_bytes() {
            return Err(Error::TooLarge {
                what: "bytes bound for one product operand",
                requested: size,
                limit_name: "max_storage_buffer_binding_size",
                limit: self.max_binding_bytes(),
            });
        }
        let base =
            u32::try_from((m.first * bytes - start) / bytes).map_err(|_| Error::TooLarge {
                what: "window offset",
                requested: m.first,
                limit_name: "u32 indices",
                limit: u64::from(u32::MAX),
            })?;
        Ok(((start, size), base))
    }

    fn variant(
        &self,
        kernel: Kernel,
        storage: Storage,
        bound: &[(Slot, &wgpu::Buffer)],
    ) -> Variant {
        Variant {
            width: VecWidth::Scalar,
            aliasing: crate::ops::aliasing(kernel, bound),
            storage,
            reduce: Reduce::Workgroup,
            hold: crate::kernels::Hold::F32,
        }
    }

    /// Records one bind group and dispatch of `groups` workgroups (a 2-D grid past the per-dimension limit).
    fn dispatch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel,
        variant: Variant,
        params: &Params,
        entries: Vec<(Slot, wgpu::BindingResource<'_>)>,
        groups: (u32, u32),
    ) -> Result<()> {
        let pipeline = self.pipeline(kernel, variant, Launch::WHOLE_WORKGROUP, Spec::GENERIC)?;
        let uniform = self.params_buffer(kernel.entry_point(), params);
        // The plan counts each bound operand once (tiles re-read from cache);
        // the products and the fused kernels load scalars.
        let mut traffic = crate::plan::Traffic {
            load_bytes: variant.width.load_bytes(variant.storage),
            ..Default::default()
        };
        for (s, resource) in &entries {
            if let wgpu::BindingResource::Buffer(b) = resource {
                let bytes = b.size.map_or(b.buffer.size() - b.offset, |n| n.get());
                if kernel.writes(*s) {
                    traffic.bytes_written += bytes;
                } else {
                    traffic.bytes_read += bytes;
                }
            }
        }
        let mut all = vec![wgpu::BindGroupEntry {
            binding: slot::PARAMS.index,
            resource: uniform.as_entire_binding(),
        }];
        all.extend(
            entries
                .into_iter()
                .map(|(s, resource)| wgpu::BindGroupEntry {
                    binding: s.index,
                    resource,
                }),
        );
        self.run_dispatch(encoder, kernel.entry_point(), &pipeline, &all, groups);
        self.plan.note(
            kernel.entry_point(),
            u64::from(groups.0) * u64::from(groups.1),
            traffic,
        );
        Ok(())
    }

    /// The product kernel for an `m x n` output over depth `k` on this
    /// adapter: on CPU adapters, when the output fills a 64x128 tile and the
    /// product has at least [`WIDE_MIN_MACS`] multiply-adds, `matmul_wide`
    /// (128x128 tiles) where `m` fills 128 rows and `matmul_wide_short`
    /// (64x128) below, the fused op's 64-row chunks (SIMD lanes keep big
    /// per-invocation blocks in registers and on the stack; BENCHMARKS.md:
    /// at burn's speed on lavapipe); `matmul` otherwise, and on GPUs, where 256
    /// accumulators per invocation would spill. `WGPU_LOSS_MATMUL=tiled|wide`
    /// picks the kernel whatever the shape (benchmarks, tests).
    pub(crate) fn matmul_kernel(&self, m: usize, n: usize, k: usize) -> ProductKernel {
        let tiled = ProductKernel {
            kernel: Kernel::Matmul,
            tile_rows: TILE,
            tile_cols: TILE,
        };
        let wide = || {
            if m >= WIDE_TALL {
                ProductKernel {
                    kernel: Kernel::MatmulWide,
                    tile_rows: WIDE_TALL,
                    tile_cols: WIDE_COLS,
                }
            } else {
                ProductKernel {
                    kernel: Kernel::MatmulWideShort,
                    tile_rows: TILE,
                    tile_cols: WIDE_COLS,
                }
            }
        };
        match std::env::var("WGPU_LOSS_MATMUL").as_deref() {
            Ok("tiled") => return tiled,
            Ok("wide") => return wide(),
            _ => {}
        }
        let cpu = self
            .adapter_info()
            .is_some_and(|i| i.device_type == wgpu::DeviceType::Cpu);
        let macs = (m as u64) * (n as u64) * (k as u64);
        if cpu && m >= TILE && n >= WIDE_COLS && macs >= WIDE_MIN_MACS {
            wide()
        } else {
            tiled
        }
    }

    /// Records a product of any size: blocks of `m`, `n` and `k` small
    /// enough that each operand's window fits one binding (and `k` within
    /// [`MAX_INNER`], the tile grid within the dispatch limit), `k` blocks
    /// accumulated in ascending order. `Mat::first` of each operand is the
    /// element at index (0, 0); `Mat::elems` is not used.
    fn encode_product(&self, encoder: &mut wgpu::CommandEncoder, p: &Product<'_>) -> Result<()> {
        if p.m == 0 || p.n == 0 {
            return Ok(());
        }
        let eb = p.storage.bytes();
        let lhs_bytes = if p.lhs_f32 { 4 } else { eb };
        let limit = |bytes: u64| (self.usable_binding() / bytes).max(1) as usize;
        let (la, lb, lo) = (limit(lhs_bytes), limit(eb), limit(4));
        let product = self.matmul_kernel(p.m, p.n, p.k);
        let kernel = product.kernel;
        let groups = self.limits().max_compute_workgroups_per_dimension as usize;
        let span = |rows: usize, rs: usize, cols: usize, cs: usize| {
            (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs + 1
        };
        let (mut mb, mut nb, mut kb) = (
            p.m.min(groups * product.tile_rows),
            p.n.min(groups * product.tile_cols),
            p.k.clamp(1, MAX_INNER),
        );
        // Halve whichever dimension drives an operand past its binding.
        loop {
            if span(mb, p.lhs_row, kb, p.lhs_col) > la {
                if (mb - 1) * p.lhs_row >= (kb - 1) * p.lhs_col {
                    mb = mb.div_ceil(2)
                } else {
                    kb = kb.div_ceil(2)
                }
            } else if span(kb, p.rhs_row, nb, p.rhs_col) > lb {
                if (kb - 1) * p.rhs_row >= (nb - 1) * p.rhs_col {
                    kb = kb.div_ceil(2)
                } else {
                    nb = nb.div_ceil(2)
                }
            } else if span(mb, p.out_row, nb, 1) > lo {
                if (mb - 1) * p.out_row >= nb - 1 {
                    mb = mb.div_ceil(2)
                } else {
                    nb = nb.div_ceil(2)
                }
            } else {
                break;
            }
        }
        let bound = [
            (
                mm::LHS,
                if p.lhs_f32 {
                    p.rhs.buffer
                } else {
                    p.lhs.buffer
                },
            ),
            (
                mm::LHS_F32,
                if p.lhs_f32 {
                    p.lhs.buffer
                } else {
                    &self.placeholder
                },
            ),
            (mm::RHS, p.rhs.buffer),
            (
                mm::BIAS,
                p.bias.as_ref().map_or(&self.placeholder, |b| b.buffer),
            ),
            (mm::OUT, p.out.buffer),
        ];
        let variant = self.variant(kernel, p.storage, &bound);
        for m0 in (0..p.m).step_by(mb) {
            let m = mb.min(p.m - m0);
            for n0 in (0..p.n).step_by(nb) {
                let n = nb.min(p.n - n0);
                let out = Mat {
                    buffer: p.out.buffer,
                    first: p.out.first + (m0 * p.out_row + n0) as u64,
                    elems: span(m, p.out_row, n, 1) as u64,
                };
                let (out_res, out_base) = self.window(&out, 4)?;
                let (bias_res, bias_base) = match &p.bias {
                    Some(b) => self.window(&b.sub(n0 as u64, n as u64), 4)?,
                    None => (self.placeholder.as_entire_binding(), 0),
                };
                for k0 in (0..p.k.max(1)).step_by(kb) {
                    let k = kb.min(p.k - k0.min(p.k));
                    let lhs = Mat {
                        buffer: p.lhs.buffer,
                        first: p.lhs.first + (m0 * p.lhs_row + k0 * p.lhs_col) as u64,
                        elems: span(m, p.lhs_row, k, p.lhs_col) as u64,
                    };
                    let rhs = Mat {
                        buffer: p.rhs.buffer,
                        first: p.rhs.first + (k0 * p.rhs_row + n0 * p.rhs_col) as u64,
                        elems: span(k, p.rhs_row, n, p.rhs_col) as u64,
                    };
                    let (lhs_res, lhs_base) = self.window(&lhs, lhs_bytes)?;
                    let (rhs_res, rhs_base) = self.window(&rhs, eb)?;
                    let mut flags = 0;
                    if p.lhs_f32 {
                        flags |= FLAG_LHS_F32;
                    }
                    if p.bias.is_some() && k0 == 0 {
                        flags |= FLAG_BIAS;
                    }
                    if p.accumulate || k0 > 0 {
                        flags |= FLAG_ACCUMULATE;
                    }
                    let params = Params {
                        rows: u32_of(m, "product rows")?,
                        cols: u32_of(n, "product columns")?,
                        inner: u32_of(k, "product depth")?,
                        base_a: lhs_base,
                        base_b: rhs_base,
                        base_c: bias_base,
                        base_out: out_base,
                        lhs_row: u32_of(p.lhs_row, "product stride")?,
                        lhs_col: u32_of(p.lhs_col, "product stride")?,
                        rhs_row: u32_of(p.rhs_row, "product stride")?,
                        rhs_col: u32_of(p.rhs_col, "product stride")?,
                        out_row: u32_of(p.out_row, "product stride")?,
                        flags,
                        ..Params::default()
                    };
                    // With A in f32 the mat_t binding is never read: it holds B's window.
                    let (lhs_binding, lhs_f32_binding) = if p.lhs_f32 {
                        (rhs_res.clone(), lhs_res)
                    } else {
                        (lhs_res, self.placeholder.as_entire_binding())
                    };
                    self.dispatch(
                        encoder,
                        kernel,
                        variant,
                        &params,
                        vec![
                            (mm::LHS, lhs_binding),
                            (mm::LHS_F32, lhs_f32_binding),
                            (mm::RHS, rhs_res),
                            (mm::BIAS, bias_res.clone()),
                            (mm::OUT, out_res.clone()),
                        ],
                        (
                            n.div_ceil(product.tile_cols) as u32,
                            m.div_ceil(product.tile_rows) as u32,
                        ),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Checks the views of a product `[N, D]·[V, D]ᵀ (+ [V])`: dtypes and
    /// shapes agree, and every view is in bounds.
    fn check_linear_inputs(
        &self,
        hidden: &GpuTensor<'_>,
        classifier: &GpuTensor<'_>,
        bias: Option<&GpuTensor<'_>>,
        names: (&'static str, &'static str, &'static str),
    ) -> Result<(LinearShape, Storage)> {
        let dtype = hidden.dtype;
        if dtype == DType::I32 {
            return Err(Error::InvalidView {
                name: names.0,
                problem: format!("has dtype {dtype:?}, expected F32, F16 or BF16"),
            });
        }
        let shape = LinearShape {
            rows: hidden.rows,
            hidden: hidden.cols,
            classes: classifier.rows,
        };
        if shape.hidden == 0 {
            return Err(Error::ZeroCols);
        }
        if shape.classes == 0 {
            return Err(Error::InvalidView {
                name: names.1,
                problem: "has no rows (classes)".into(),
            });
        }
        self.check_view(hidden, spec(names.0, dtype, shape.rows, shape.hidden))?;
        self.check_view(
            classifier,
            spec(names.1, dtype, shape.classes, shape.hidden),
        )?;
        if let Some(b) = bias {
            self.check_view(b, spec(names.2, DType::F32, shape.classes, 1))?;
        }
        Ok((shape, dtype.storage()))
    }

    /// Records `output = input·weightᵀ + bias` into `encoder`
    /// ([`crate::loss::linear_cross_entropy`]): a tiled product with f32
    /// accumulation, any sizes, operands larger than one binding processed
    /// in row blocks. Nothing is submitted.
    pub fn encode_linear(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &LinearViews<'_>,
    ) -> Result<()> {
        self.scoped_now("matmul", || self.encode_linear_checked(encoder, views))
    }

    fn encode_linear_checked(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &LinearViews<'_>,
    ) -> Result<()> {
        let (shape, storage) = self.check_linear_inputs(
            &views.input,
            &views.weight,
            views.bias.as_ref(),
            ("input", "weight", "bias"),
        )?;
        let LinearShape {
            rows,
            hidden: d,
            classes: v,
        } = shape;
        self.check_view(&views.output, spec("output", DType::F32, rows, v))?;
        let mut inputs = vec![("input", views.input), ("weight", views.weight)];
        if let Some(b) = views.bias {
            inputs.push(("bias", b));
        }
        reject_shared(&[("output", views.output)], &inputs)?;
        if rows == 0 {
            return Ok(());
        }
        self.encode_product(
            encoder,
            &Product {
                lhs: view_mat(&views.input),
                lhs_f32: false,
                rhs: view_mat(&views.weight),
                bias: views.bias.as_ref().map(view_mat),
                out: view_mat(&views.output),
                storage,
                m: rows,
                n: v,
                k: d,
                lhs_row: d,
                lhs_col: 1,
                rhs_row: 1,
                rhs_col: d,
                out_row: v,
                accumulate: false,
            },
        )
    }

    /// Records `out = A·B` (or `out += A·B`) into `encoder`: the tiled
    /// product behind `linear` and the fused loss, with either operand
    /// stored transposed, f32 accumulation, any sizes (operands larger than
    /// one binding in blocks). `A` may be f32 with `B` f16 or bf16; otherwise
    /// both share a dtype. Nothing is submitted.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use wgpu::util::DeviceExt;
    /// use wgpu_loss::{block_on, GpuContext, GpuTensor, Layout, MatmulOptions, MatmulViews};
    /// let ctx = block_on(GpuContext::new())?;
    /// let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    /// let init = |b: &[u8]| ctx.device().create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: b, usage });
    /// let g = init(bytemuck::cast_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])); // [2, 3]
    /// let h = init(bytemuck::cast_slice(&[1.0f32, 0.0, 0.0, 1.0])); // [2, 2]
    /// let out = init(&[0u8; 24]); // Gᵀ·H: [3, 2]
    /// let views = MatmulViews {
    ///     a: GpuTensor::f32_matrix(&g, 0, 2, 3),
    ///     b: GpuTensor::f32_matrix(&h, 0, 2, 2),
    ///     out: GpuTensor::f32_matrix(&out, 0, 3, 2),
    /// };
    /// let mut encoder = ctx.device().create_command_encoder(&Default::default());
    /// ctx.encode_matmul(&mut encoder, &views, &MatmulOptions { a: Layout::Transposed, ..Default::default() })?;
    /// ctx.queue().submit([encoder.finish()]);
    /// block_on(ctx.check_errors())?;
    /// # Ok(()) }
    /// ```
    pub fn encode_matmul(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &MatmulViews<'_>,
        options: &MatmulOptions,
    ) -> Result<()> {
        self.scoped_now("matmul", || {
            let (a, b) = (&views.a, &views.b);
            let (m, k, lhs_row, lhs_col) = match options.a {
                Layout::RowMajor => (a.rows, a.cols, a.cols, 1),
                Layout::Transposed => (a.cols, a.rows, 1, a.cols),
            };
            let (kb, n, rhs_row, rhs_col) = match options.b {
                Layout::RowMajor => (b.rows, b.cols, b.cols, 1),
                Layout::Transposed => (b.cols, b.rows, 1, b.cols),
            };
            if kb != k {
                return Err(Error::InvalidView {
                    name: "b",
                    problem: format!("has inner size {kb}, expected A's {k}"),
                });
            }
            let (storage, lhs_f32) = match (a.dtype, b.dtype) {
                (DType::F32, DType::F32) => (Storage::F32, false),
                (DType::F16, DType::F16) => (Storage::F16, false),
                (DType::BF16, DType::BF16) => (Storage::Bf16, false),
                (DType::F32, DType::F16) => (Storage::F16, true),
                (DType::F32, DType::BF16) => (Storage::Bf16, true),
                (da, db) => {
                    return Err(Error::InvalidView {
                        name: "a",
                        problem: format!(
                            "has dtype {da:?} with B {db:?}; supported: both F32, both F16, both BF16, or F32 A with a 16-bit B"
                        ),
                    })
                }
            };
            self.check_view(a, spec("a", a.dtype, a.rows, a.cols))?;
            self.check_view(b, spec("b", b.dtype, b.rows, b.cols))?;
            self.check_view(&views.out, spec("out", DType::F32, m, n))?;
            reject_shared(&[("out", views.out)], &[("a", *a), ("b", *b)])?;
            self.encode_product(
                encoder,
                &Product {
                    lhs: view_mat(a),
                    lhs_f32,
                    rhs: view_mat(b),
                    bias: None,
                    out: view_mat(&views.out),
                    storage,
                    m,
                    n,
                    k,
                    lhs_row,
                    lhs_col,
                    rhs_row,
                    rhs_col,
                    out_row: n,
                    accumulate: options.accumulate == Accumulate::Add,
                },
            )
        })
    }

    /// Bytes one window may span after the offset alignment's slack.
    fn usable_binding(&self) -> u64 {
        let align = u64::from(self.limits().min_storage_buffer_offset_alignment);
        self.max_binding_bytes().saturating_sub(align)
    }

    /// `z = H·Wᵀ + b` on host slices ([`crate::loss::linear_cross_entropy`]), `[N, V]` f32.
    ///
    /// ```
    /// # fn main() -> Result<(), wgpu_loss::Error> {
    /// use wgpu_loss::{block_on, GpuContext, LinearShape};
    /// let ctx = block_on(GpuContext::new())?;
    /// let shape = LinearShape { rows: 1, hidden: 2, classes: 3 };
    /// let z = block_on(ctx.linear(&[1.0, 2.0], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], Some(&[0.0, 0.0, 0.5]), shape))?;
    /// assert_eq!(z, vec![1.0, 2.0, 3.5]);
    /// # Ok(()) }
    /// ```
    pub async fn linear(
        &self,
        input: &[f32],
        weight: &[f32],
        bias: Option<&[f32]>,
        shape: LinearShape,
    ) -> Result<Vec<f32>> {
        self.check_errors().await?;
        shape.check(input.len(), weight.len(), bias.map(<[f32]>::len))?;
        let LinearShape {
            rows,
            hidden: d,
            classes: v,
        } = shape;
        let out_len = rows
            .checked_mul(v)
            .ok_or(Error::ShapeOverflow { rows, cols: v })?;
        let staging = self
            .scoped("matmul", || {
                let h = self.upload("input", input);
                let w = self.upload("weight", weight);
                let b = bias.map(|b| self.upload("bias", b));
                let out = self.output("output", out_len);
                let views = LinearViews {
                    input: GpuTensor::f32_matrix(&h, 0, rows, d),
                    weight: GpuTensor::f32_matrix(&w, 0, v, d),
                    bias: b.as_ref().map(|b| GpuTensor::f32_vector(b, 0, v)),
                    output: GpuTensor::f32_matrix(&out, 0, rows, v),
                };
                let mut encoder = self.encoder("linear");
                self.encode_linear_checked(&mut encoder, &views)?;
                let staging = self.stage(&mut encoder, &out, out_len as u64 * 4);
                self.queue.submit([encoder.finish()]);
                Ok(staging)
            })
            .await?;
        self.read_back(&staging, out_len).await
    }

    /// Rows per chunk and `W` rows per segment for a pass over `inputs`.
    fn lce_plan(&self, inputs: &Inputs<'_>) -> Result<(usize, usize)> {
        let (rows, d, vs) = (inputs.hidden.rows, inputs.hidden.cols, inputs.shard.len());
        self.lce_plan_of(
            rows,
            d,
            vs,
            inputs.hidden.dtype.size(),
            inputs.workspace_bytes,
        )
    }

    /// Rows per chunk of the fused linear + cross-entropy over `shape` with
    /// f32 hidden states and `workspace_bytes` (`None`: the default), on
    /// this device. Chunks of one call run in order and every chunk but the
    /// last has this many rows, so windows of a multiple of it, each a call
    /// with [`crate::Accumulate::Add`] parameter gradients, add `dW` and `db`
    /// in the same order as one call over every row.
    ///
    /// ```
    /// # fn main() -> Result<(), wgpu_loss::Error> {
    /// use wgpu_loss::{block_on, GpuContext, LinearShape};
    /// let ctx = block_on(GpuContext::new())?;
    /// let shape = LinearShape { rows: 1000, hidden: 64, classes: 32000 };
    /// let rows = ctx.linear_cross_entropy_chunk_rows(shape, Some(64 * 32000 * 4))?;
    /// assert_eq!(rows, 64);
    /// # Ok(()) }
    /// ```
    pub fn linear_cross_entropy_chunk_rows(
        &self,
        shape: LinearShape,
        workspace_bytes: Option<u64>,
    ) -> Result<usize> {
        Ok(self
            .lce_plan_of(shape.rows, shape.hidden, shape.classes, 4, workspace_bytes)?
            .0)
    }

    fn lce_plan_of(
        &self,
        rows: usize,
        d: usize,
        vs: usize,
        eb: u64,
        workspace_bytes: Option<u64>,
    ) -> Result<(usize, usize)> {
        let per_row = vs as u64 * 4;
        let wanted = workspace_bytes.unwrap_or_else(|| {
            crate::loss::linear_cross_entropy::DEFAULT_WORKSPACE_BYTES
                .max(per_row * crate::loss::linear_cross_entropy::TILE_ROWS as u64)
        });
        let cap = wanted.min(self.max_binding_bytes());
        if cap < per_row {
            return Err(Error::WorkspaceTooSmall {
                bytes: cap,
                needed: per_row,
                classes: vs,
            });
        }
        let usable = self.usable_binding();
        // H and dH windows of a chunk, W and dW windows of a segment.
        let by_hidden = usable / (d as u64 * eb.max(4));
        if by_hidden == 0 {
            return Err(Error::RowTooLarge {
                cols: d,
                row_bytes: d as u64 * 4,
                limit: self.max_binding_bytes(),
            });
        }
        let mut chunk = (cap / per_row)
            .min(by_hidden)
            .min(MAX_CHUNK_ROWS as u64)
            .min(rows.max(1) as u64) as usize;
        // Whole output tiles: 100 rows per chunk would run two tiles of 64
        // per column block where 64 rows run one.
        if chunk > TILE && chunk < rows {
            chunk = chunk / TILE * TILE;
        }
        let segment = (by_hidden as usize).min(vs);
        Ok((chunk, segment))
    }

    /// Records one pass (see the module docs). 16-bit gradient views get
    /// an f32 shadow that the chunks accumulate into, narrowed at the end.
    fn encode_lce_pass(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        inputs: &Inputs<'_>,
        work: &Work<'_>,
        lse_rows: Option<&crate::ops::cross_entropy::CrossEntropyProblem<'_>>,
        scratch: &mut ScratchUse,
    ) -> Result<()> {
        let grads = match work {
            Work::Fused { grads, .. } | Work::Backward { grads, .. } => *grads,
            Work::Records { .. } => Grads::default(),
        };
        if inputs.add_parameter_grads {
            for (name, g) in [
                ("grad_classifier", grads.classifier),
                ("grad_bias", grads.bias),
            ] {
                if let Some(g) = g.filter(|g| g.dtype.storage().is_half()) {
                    return Err(Error::InvalidView {
                        name,
                        problem: format!(
                            "is {:?}; parameter_grads: Add accumulates into f32 gradients only",
                            g.dtype
                        ),
                    });
                }
            }
        }
        let shadow = |v: Option<GpuTensor<'_>>| {
            v.filter(|v| v.dtype.storage().is_half())
                .map(|v| self.fresh_buffer("f32 shadow of a 16-bit gradient", v.len() as u64 * 4))
        };
        let (sh, sw, sb) = (
            shadow(grads.hidden),
            shadow(grads.classifier),
            shadow(grads.bias),
        );
        for b in [&sh, &sw, &sb].into_iter().flatten() {
            scratch.bytes += b.size();
        }
        let f32_grads = Grads {
            hidden: in_f32(grads.hidden, &sh),
            classifier: in_f32(grads.classifier, &sw),
            bias: in_f32(grads.bias, &sb),
        };
        let work = match work {
            Work::Records { records } => Work::Records { records: *records },
            Work::Fused { lse, .. } => Work::Fused {
                lse: *lse,
                grads: f32_grads,
            },
            Work::Backward { lse, .. } => Work::Backward {
                lse: *lse,
                grads: f32_grads,
            },
        };
        self.encode_lce_chunks(encoder, inputs, &work, lse_rows, scratch)?;
        for (s, v) in [
            (&sh, grads.hidden),
            (&sw, grads.classifier),
            (&sb, grads.bias),
        ] {
            if let (Some(s), Some(v)) = (s, v) {
                self.encode_narrow(encoder, s, &v)?;
            }
        }
        Ok(())
    }

    /// Records `dst = src` from an f32 buffer into an f16 or bf16 view, in windows
    /// (`half_narrow`: each invocation stores one whole packed word).
    fn encode_narrow(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        src: &wgpu::Buffer,
        dst: &GpuTensor<'_>,
    ) -> Result<()> {
        let total = dst.len() as u64;
        let per = (self.usable_binding() / 4).max(1);
        for e0 in (0..total).step_by(usize::try_from(per).unwrap_or(usize::MAX)) {
            let n = per.min(total - e0);
            let (src_range, src_base) = self.window_range(
                &Mat {
                    buffer: src,
                    first: e0,
                    elems: n,
                },
                4,
            )?;
            let (dst_range, dst_base) = self.window_range(&view_mat(dst).sub(e0, n), 2)?;
            self.encode_half_stage(
                encoder,
                Kernel::HalfNarrow,
                dst.dtype.storage(),
                (dst.buffer, dst_range, dst_base),
                (src, Some(src_range), src_base),
                n,
            )?;
        }
        Ok(())
    }

    /// Records the chunks of one pass (see the module docs).
    fn encode_lce_chunks(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        inputs: &Inputs<'_>,
        work: &Work<'_>,
        lse_rows: Option<&crate::ops::cross_entropy::CrossEntropyProblem<'_>>,
        scratch: &mut ScratchUse,
    ) -> Result<()> {
        let (chunk, _) = self.lce_plan(inputs)?;
        let workspace = self.fresh_buffer("lce workspace", (chunk * inputs.shard.len()) as u64 * 4);
        scratch.bytes += workspace.size();
        scratch.workspace_bytes = workspace.size();
        scratch.chunk_rows = chunk;
        self.encode_lce_pass_in(encoder, inputs, work, lse_rows, &workspace, scratch)
    }

    /// [`Self::encode_lce_pass`] in a workspace the caller holds (at least
    /// the plan's chunk of rows by the shard's classes).
    fn encode_lce_pass_in(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        inputs: &Inputs<'_>,
        work: &Work<'_>,
        lse_rows: Option<&crate::ops::cross_entropy::CrossEntropyProblem<'_>>,
        workspace: &wgpu::Buffer,
        scratch: &mut ScratchUse,
    ) -> Result<()> {
        let (rows, d, vs) = (inputs.hidden.rows, inputs.hidden.cols, inputs.shard.len());
        let (chunk, segment) = self.lce_plan(inputs)?;
        let storage = inputs.hidden.dtype.storage();
        let ws = Mat {
            buffer: workspace,
            first: 0,
            elems: (chunk * vs) as u64,
        };
        let fused_records = match work {
            Work::Fused { .. } => {
                // Records of one chunk: merged before the next chunk.
                let b = self.fresh_buffer("lce records", chunk as u64 * 32);
                scratch.bytes += b.size();
                Some(b)
            }
            _ => None,
        };
        let (h, w) = (view_mat(&inputs.hidden), view_mat(&inputs.classifier));
        let b = inputs.bias.as_ref().map(view_mat);
        let weights = inputs
            .weights
            .as_ref()
            .map_or(WholeArg::new(lce::WEIGHTS, &self.placeholder), |v| {
                WholeArg::view(lce::WEIGHTS, v)
            });
        let limit = self.limits().max_storage_buffer_binding_size;
        let targets = WholeArg::view(lce::TARGETS, &inputs.targets);
        for r0 in (0..rows).step_by(chunk) {
            let n = chunk.min(rows - r0);
            let used = (n - 1) * vs;
            // z = H_chunk · W_segᵀ + b_seg, segment by segment.
            for s0 in (0..vs).step_by(segment) {
                let seg = segment.min(vs - s0);
                self.encode_product(
                    encoder,
                    &Product {
                        lhs: h.sub((r0 * d) as u64, (n * d) as u64),
                        lhs_f32: false,
                        rhs: w.sub((s0 * d) as u64, (seg * d) as u64),
                        bias: b.map(|b| b.sub(s0 as u64, seg as u64)),
                        out: ws.sub(s0 as u64, (used + seg) as u64),
                        storage,
                        m: n,
                        n: seg,
                        k: d,
                        lhs_row: d,
                        lhs_col: 1,
                        rhs_row: 1,
                        rhs_col: d,
                        out_row: vs,
                        accumulate: false,
                    },
                )?;
            }
            let mut params = Params {
                rows: u32_of(n, "chunk rows")?,
                cols: u32_of(vs, "shard classes")?,
                row_base: u32_of(r0, "row index")?,
                ..inputs.params
            };
            let rows_grid = self.grid(n)?;
            let logits = (lce::LOGITS, workspace.as_entire_binding());
            // The records of this chunk's rows: a window of the caller's
            // view, or the chunk-sized scratch (base_d: the window's first row).
            params.base_d = params.row_base;
            let records_arg = match (work, &fused_records) {
                (Work::Records { records }, _) => {
                    let rows_view = view_mat(records)
                        .sub((r0 * RECORD_FLOATS) as u64, (n * RECORD_FLOATS) as u64);
                    let (res, base) = self.window(&rows_view, 4)?;
                    params.base_b = base / 4;
                    Some((records.buffer, res))
                }
                (Work::Fused { .. }, Some(buffer)) => {
                    params.base_b = 0;
                    Some((buffer, buffer.as_entire_binding()))
                }
                _ => None,
            };
            if let Some((records_buffer, records_res)) = &records_arg {
                let bound = [
                    (lce::LOGITS, workspace),
                    (lce::TARGETS, targets.buffer),
                    (lce::WEIGHTS, weights.buffer),
                    (lce::RECORDS, *records_buffer),
                ];
                let variant = self.variant(Kernel::LinearCrossEntropyRecords, Storage::F32, &bound);
                self.dispatch(
                    encoder,
                    Kernel::LinearCrossEntropyRecords,
                    variant,
                    &params,
                    vec![
                        logits.clone(),
                        (lce::TARGETS, targets.resource(limit)),
                        (lce::WEIGHTS, weights.resource(limit)),
                        (lce::RECORDS, records_res.clone()),
                    ],
                    rows_grid,
                )?;
            }
            let (lse, grads) = match work {
                Work::Records { .. } => continue,
                Work::Fused { lse, grads } => {
                    let (Some((records_buffer, records_res)), Some(problem)) =
                        (&records_arg, lse_rows)
                    else {
                        continue;
                    };
                    let lse_arg = WholeArg::view(lce::LSE_OUT, lse);
                    let row_out = WholeArg::new(lce::ROW_OUT, &problem.row_out);
                    let bound = [
                        (lce::TARGETS, targets.buffer),
                        (lce::WEIGHTS, weights.buffer),
                        (lce::RECORDS, *records_buffer),
                        (lce::ROW_OUT, row_out.buffer),
                        (lce::LSE_OUT, lse_arg.buffer),
                    ];
                    let variant =
                        self.variant(Kernel::LinearCrossEntropyMerge, Storage::F32, &bound);
                    self.dispatch(
                        encoder,
                        Kernel::LinearCrossEntropyMerge,
                        variant,
                        &params,
                        vec![
                            (lce::TARGETS, targets.resource(limit)),
                            (lce::WEIGHTS, weights.resource(limit)),
                            (lce::RECORDS, records_res.clone()),
                            (lce::ROW_OUT, row_out.resource(limit)),
                            (lce::LSE_OUT, lse_arg.resource(limit)),
                        ],
                        self.grid(n.div_ceil(WORKGROUP_SIZE as usize))?,
                    )?;
                    (lse, grads)
                }
                Work::Backward { lse, grads } => (lse, grads),
            };
            if !grads.any() {
                continue;
            }
            let Some(problem) = lse_rows else {
                continue;
            };
            // The chunk's logits become G = ∂loss/∂z, in place.
            let lse_arg = WholeArg::view(lce::LSE_IN, lse);
            let scalars = WholeArg::new(lce::SCALARS, &problem.scalars);
            let bound = [
                (lce::LOGITS, workspace),
                (lce::TARGETS, targets.buffer),
                (lce::WEIGHTS, weights.buffer),
                (lce::SCALARS, scalars.buffer),
                (lce::LSE_IN, lse_arg.buffer),
            ];
            let variant = self.variant(Kernel::LinearCrossEntropyGrad, Storage::F32, &bound);
            self.dispatch(
                encoder,
                Kernel::LinearCrossEntropyGrad,
                variant,
                &params,
                vec![
                    logits.clone(),
                    (lce::TARGETS, targets.resource(limit)),
                    (lce::WEIGHTS, weights.resource(limit)),
                    (lce::SCALARS, scalars.resource(limit)),
                    (lce::LSE_IN, lse_arg.resource(limit)),
                ],
                rows_grid,
            )?;
            for s0 in (0..vs).step_by(segment) {
                let seg = segment.min(vs - s0);
                let g = ws.sub(s0 as u64, (used + seg) as u64);
                if let Some(dh) = &grads.hidden {
                    // dH_chunk (+)= G_seg · W_seg
                    self.encode_product(
                        encoder,
                        &Product {
                            lhs: g,
                            lhs_f32: true,
                            rhs: w.sub((s0 * d) as u64, (seg * d) as u64),
                            bias: None,
                            out: view_mat(dh).sub((r0 * d) as u64, (n * d) as u64),
                            storage,
                            m: n,
                            n: d,
                            k: seg,
                            lhs_row: vs,
                            lhs_col: 1,
                            rhs_row: d,
                            rhs_col: 1,
                            out_row: d,
                            accumulate: s0 > 0,
                        },
                    )?;
                }
                if let Some(dw) = &grads.classifier {
                    // dW_seg (+)= G_segᵀ · H_chunk
                    self.encode_product(
                        encoder,
                        &Product {
                            lhs: g,
                            lhs_f32: true,
                            rhs: h.sub((r0 * d) as u64, (n * d) as u64),
                            bias: None,
                            out: view_mat(dw).sub((s0 * d) as u64, (seg * d) as u64),
                            storage,
                            m: seg,
                            n: d,
                            k: n,
                            lhs_row: 1,
                            lhs_col: vs,
                            rhs_row: d,
                            rhs_col: 1,
                            out_row: d,
                            accumulate: r0 > 0 || inputs.add_parameter_grads,
                        },
                    )?;
                }
            }
            if let Some(db) = &grads.bias {
                params.flags = if r0 > 0 || inputs.add_parameter_grads {
                    lce_flags::FLAG_ACCUMULATE
                } else {
                    0
                };
                let (res, base) = self.window(&view_mat(db), 4)?;
                params.base_out = base;
                let bound = [(lce::LOGITS, workspace), (lce::BIAS_GRAD, db.buffer)];
                let variant =
                    self.variant(Kernel::LinearCrossEntropyBiasGrad, Storage::F32, &bound);
                self.dispatch(
                    encoder,
                    Kernel::LinearCrossEntropyBiasGrad,
                    variant,
                    &params,
                    vec![logits.clone(), (lce::BIAS_GRAD, res)],
                    self.grid(vs.div_ceil(WORKGROUP_SIZE as usize))?,
                )?;
            }
        }
        Ok(())
    }

    /// Checks the inputs of a fused pass and its options, and gathers them.
    #[allow(clippy::too_many_arguments)]
    fn lce_inputs<'b>(
        &self,
        hidden: GpuTensor<'b>,
        classifier: GpuTensor<'b>,
        bias: Option<GpuTensor<'b>>,
        targets: GpuTensor<'b>,
        shard: Shard,
        options: &LinearCrossEntropyOptions<'_, GpuTensor<'b>>,
        ignore_index: i32,
    ) -> Result<Inputs<'b>> {
        options.loss.validate_scalars()?;
        shard.check()?;
        let (shape, _) = self.check_linear_inputs(
            &hidden,
            &classifier,
            bias.as_ref(),
            ("hidden", "classifier", "bias"),
        )?;
        if shape.classes != shard.len() {
            return Err(Error::InvalidView {
                name: "classifier",
                problem: format!(
                    "has {} rows, expected one per class of shard [{}, {}) ({})",
                    shape.classes,
                    shard.start,
                    shard.end,
                    shard.len()
                ),
            });
        }
        if shape.rows == 0 {
            return Err(Error::InvalidView {
                name: "hidden",
                problem: "has no rows; there is nothing to encode".into(),
            });
        }
        self.check_view(&targets, spec("targets", DType::I32, shape.rows, 1))?;
        self.check_whole_binding("targets", targets.bytes())?;
        let weights = options.loss.weight.copied();
        if let Some(wv) = &weights {
            self.check_view(wv, spec("weight", DType::F32, wv.rows, wv.cols))?;
            if wv.len() != shard.classes {
                return Err(Error::InvalidView {
                    name: "weight",
                    problem: format!(
                        "has {} elements, expected one per class ({})",
                        wv.len(),
                        shard.classes
                    ),
                });
            }
            self.check_whole_binding("class weights", wv.bytes())?;
        }
        let params = lce_params(&options.loss, ignore_index, shard, shape.rows)?;
        Ok(Inputs {
            hidden,
            classifier,
            bias,
            targets,
            weights,
            shard,
            params,
            workspace_bytes: options.workspace_bytes,
            add_parameter_grads: options.parameter_grads == Accumulate::Add,
        })
    }

    /// The `mean` denominator, kept-row count and weight total of the whole
    /// problem (`ce_denominator`), with its per-row loss buffer.
    fn lce_problem<'b>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        inputs: &Inputs<'b>,
        options: &CrossEntropyOptions<'_, GpuTensor<'b>>,
        scratch: &mut ScratchUse,
    ) -> Result<crate::ops::cross_entropy::CrossEntropyProblem<'b>> {
        let mut params = cross_entropy_params(options);
        params.ignore_index = inputs.params.ignore_index;
        // The fused op's host API submits in steps: the problem's own buffers.
        let problem = self.row_loss_problem(
            crate::ops::cross_entropy::Submits::Several,
            RowLoss::IndexTargets,
            Operand::View(inputs.targets),
            inputs.hidden.rows,
            inputs.shard.classes,
            inputs.weights.map(Operand::View),
            params,
        )?;
        scratch.bytes += problem.scalars.size() + problem.row_out.size() + problem.result.size();
        self.encode_cross_entropy_denominator(encoder, &problem)?;
        Ok(problem)
    }

    /// Records the fused linear + cross-entropy into `encoder`: the loss into
    /// `views.loss`, lse and the gradients wherever the views say, without
    /// the `[N, V]` logits in memory
    /// ([`crate::loss::linear_cross_entropy`]). Returns what the call
    /// allocated. Nothing is submitted.
    ///
    /// Without gradients, on a CPU adapter whose workspace holds fewer than
    /// 128 rows, the vocabulary is walked in parts through the same
    /// workspace and their records merged
    /// ([`ScratchUse::vocabulary_parts`]): the result is the same within the
    /// tolerance, not bit for bit the one-pass result.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use wgpu::util::DeviceExt;
    /// use wgpu_loss::{block_on, GpuContext, GpuTensor, LinearCrossEntropyOptions, LinearCrossEntropyViews};
    /// let ctx = block_on(GpuContext::new())?;
    /// let dev = ctx.device();
    /// let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC;
    /// let init = |bytes: &[u8]| dev.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: bytes, usage });
    /// let hidden = init(bytemuck::cast_slice(&[1.0f32, 0.0, 0.0, 1.0])); // N = 2, D = 2
    /// let classifier = init(bytemuck::cast_slice(&[1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0])); // V = 3
    /// let targets = init(bytemuck::cast_slice(&[0i32, 2]));
    /// let loss = init(&[0u8; 8]);
    /// let dh = init(&[0u8; 16]);
    /// let mut encoder = dev.create_command_encoder(&Default::default());
    /// let views = LinearCrossEntropyViews {
    ///     hidden: GpuTensor::f32_matrix(&hidden, 0, 2, 2),
    ///     classifier: GpuTensor::f32_matrix(&classifier, 0, 3, 2),
    ///     bias: None,
    ///     targets: GpuTensor::i32_vector(&targets, 0, 2),
    ///     loss: GpuTensor::f32_vector(&loss, 0, 2),
    ///     lse: None,
    ///     grad_hidden: Some(GpuTensor::f32_matrix(&dh, 0, 2, 2)),
    ///     grad_classifier: None,
    ///     grad_bias: None,
    /// };
    /// let used = ctx.encode_linear_cross_entropy(&mut encoder, &views, &LinearCrossEntropyOptions::default())?;
    /// ctx.queue().submit([encoder.finish()]);
    /// block_on(ctx.check_errors())?;
    /// assert!(used.workspace_bytes >= 3 * 4);
    /// # Ok(()) }
    /// ```
    pub fn encode_linear_cross_entropy(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &LinearCrossEntropyViews<'_>,
        options: &LinearCrossEntropyOptions<'_, GpuTensor<'_>>,
    ) -> Result<ScratchUse> {
        self.scoped_now("linear_cross_entropy", || {
            let ignore = gpu_ignore_index(options.loss.ignore_index)?;
            self.encode_lce_checked(encoder, views, options, ignore)
        })
    }

    fn encode_lce_checked(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &LinearCrossEntropyViews<'_>,
        options: &LinearCrossEntropyOptions<'_, GpuTensor<'_>>,
        ignore_index: i32,
    ) -> Result<ScratchUse> {
        let classes = views.classifier.rows;
        let inputs = self.lce_inputs(
            views.hidden,
            views.classifier,
            views.bias,
            views.targets,
            Shard::whole(classes),
            options,
            ignore_index,
        )?;
        let (rows, d) = (views.hidden.rows, views.hidden.cols);
        let reduced = options.loss.reduction != Reduction::None;
        self.check_view(
            &views.loss,
            spec("loss", DType::F32, if reduced { 2 } else { rows }, 1),
        )?;
        self.check_whole_binding("loss", views.loss.bytes())?;
        if let Some(l) = &views.lse {
            self.check_view(l, spec("lse", DType::F32, rows, 1))?;
        }
        self.check_whole_binding("lse (4 bytes per row)", rows as u64 * 4)?;
        if let Some(g) = &views.grad_hidden {
            self.check_view(
                g,
                spec("grad_hidden", grad_dtype("grad_hidden", g)?, rows, d),
            )?;
        }
        if let Some(g) = &views.grad_classifier {
            let dtype = grad_dtype("grad_classifier", g)?;
            self.check_view(g, spec("grad_classifier", dtype, classes, d))?;
        }
        if let Some(g) = &views.grad_bias {
            if views.bias.is_none() {
                return Err(Error::InvalidView {
                    name: "grad_bias",
                    problem: "given without a bias".into(),
                });
            }
            self.check_view(
                g,
                spec("grad_bias", grad_dtype("grad_bias", g)?, classes, 1),
            )?;
        }
        self.reject_lce_sharing(
            &[
                Some(("loss", views.loss)),
                views.lse.map(|v| ("lse", v)),
                views.grad_hidden.map(|v| ("grad_hidden", v)),
                views.grad_classifier.map(|v| ("grad_classifier", v)),
                views.grad_bias.map(|v| ("grad_bias", v)),
            ],
            &inputs,
        )?;
        let no_grads = views.grad_hidden.is_none()
            && views.grad_classifier.is_none()
            && views.grad_bias.is_none();
        if no_grads {
            if let Some(part) = self.lce_loss_part_classes(&inputs)? {
                return self.encode_lce_loss_in_parts(encoder, views, options, ignore_index, part);
            }
        }
        let mut scratch = ScratchUse {
            vocabulary_parts: 1,
            ..ScratchUse::default()
        };
        let problem = self.lce_problem(encoder, &inputs, &options.loss, &mut scratch)?;
        let lse_scratch;
        let lse = match views.lse {
            Some(l) => l,
            None => {
                lse_scratch = self.fresh_buffer("lce lse", rows as u64 * 4);
                scratch.bytes += lse_scratch.size();
                GpuTensor::f32_vector(&lse_scratch, 0, rows)
            }
        };
        let grads = Grads {
            hidden: views.grad_hidden,
            classifier: views.grad_classifier,
            bias: views.grad_bias,
        };
        self.encode_lce_pass(
            encoder,
            &inputs,
            &Work::Fused { lse, grads },
            Some(&problem),
            &mut scratch,
        )?;
        self.encode_row_results(encoder, &problem, &views.loss, reduced)?;
        Ok(scratch)
    }

    /// Classes per part when a loss without gradients should walk the
    /// vocabulary in parts: on a CPU adapter whose workspace holds fewer
    /// rows than `matmul_wide`'s 128-row tile (64 rows of a 131072-class
    /// vocabulary in the default 32 MiB), the same workspace holds 128 rows
    /// of part of the classes, and the chunk products take `matmul_wide`
    /// instead of `matmul_wide_short`, 20 to 30 % faster on lavapipe
    /// (BENCHMARKS.md). Each part's records are merged as vocabulary shards
    /// are ([`GpuContext::encode_merge_records`]). With gradients the parts
    /// would need the logits again after the merge (a fourth product), so
    /// they never split. Parts are whole 128-class blocks, which keeps the
    /// classifier and bias views aligned. `None`: one pass.
    fn lce_loss_part_classes(&self, inputs: &Inputs<'_>) -> Result<Option<usize>> {
        let (d, vs) = (inputs.hidden.cols, inputs.shard.len());
        // What the workspace holds, whatever this call's rows: the choice
        // must not depend on them, or `eval`'s windows of different sizes
        // would give different bits for the same row.
        let (chunk, _) = self.lce_plan_of(
            usize::MAX,
            d,
            vs,
            inputs.hidden.dtype.size(),
            inputs.workspace_bytes,
        )?;
        if chunk >= WIDE_TALL || self.matmul_kernel(chunk, vs, d).kernel != Kernel::MatmulWideShort
        {
            return Ok(None);
        }
        let part = (chunk * vs / WIDE_TALL) / WIDE_COLS * WIDE_COLS;
        let align = u64::from(self.limits().min_storage_buffer_offset_alignment).max(1);
        let eb = inputs.classifier.dtype.size();
        let aligned = (part as u64 * d as u64 * eb).is_multiple_of(align)
            && (part as u64 * 4).is_multiple_of(align);
        if part < WIDE_COLS
            || part >= vs
            || !aligned
            || self.matmul_kernel(WIDE_TALL, part, d).kernel != Kernel::MatmulWide
        {
            return Ok(None);
        }
        Ok(Some(part))
    }

    /// The loss (and lse) of [`Self::encode_lce_checked`] without gradients,
    /// the vocabulary walked in parts of `part` classes through one
    /// workspace, then merged ([`Self::lce_loss_part_classes`]).
    fn encode_lce_loss_in_parts(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &LinearCrossEntropyViews<'_>,
        options: &LinearCrossEntropyOptions<'_, GpuTensor<'_>>,
        ignore_index: i32,
        part: usize,
    ) -> Result<ScratchUse> {
        let (rows, d, classes) = (views.hidden.rows, views.hidden.cols, views.classifier.rows);
        let parts = classes.div_ceil(part);
        let (chunk, _) = self.lce_plan_of(
            usize::MAX,
            d,
            classes,
            views.hidden.dtype.size(),
            options.workspace_bytes,
        )?;
        // The workspace `lce_loss_part_classes` sized the parts by, or less
        // where this call has fewer rows than it holds.
        let bytes = (chunk * classes).min(rows * part) as u64 * 4;
        let workspace = self.fresh_buffer("lce workspace", bytes);
        let records = self.fresh_buffer("lce records", (parts * rows * RECORD_FLOATS) as u64 * 4);
        let lse_scratch;
        let lse = match views.lse {
            Some(l) => l,
            None => {
                lse_scratch = self.fresh_buffer("lce lse", rows as u64 * 4);
                GpuTensor::f32_vector(&lse_scratch, 0, rows)
            }
        };
        let mut scratch = ScratchUse {
            bytes: workspace.size() + records.size(),
            workspace_bytes: workspace.size(),
            chunk_rows: 0,
            vocabulary_parts: parts,
        };
        if views.lse.is_none() {
            // What was allocated (rounded up), as the one-pass path counts it.
            scratch.bytes += lse.buffer.size();
        }
        let eb = views.classifier.dtype.size();
        for p in 0..parts {
            let (v0, v1) = (p * part, ((p + 1) * part).min(classes));
            let classifier = GpuTensor {
                offset: views.classifier.offset + (v0 * d) as u64 * eb,
                rows: v1 - v0,
                ..views.classifier
            };
            let bias = views.bias.map(|b| GpuTensor {
                offset: b.offset + v0 as u64 * 4,
                rows: v1 - v0,
                ..b
            });
            let shard = Shard {
                start: v0,
                end: v1,
                classes,
            };
            let mut inputs = self.lce_inputs(
                views.hidden,
                classifier,
                bias,
                views.targets,
                shard,
                options,
                ignore_index,
            )?;
            inputs.workspace_bytes = Some(workspace.size());
            if p == 0 {
                // The full parts' chunk (the short last part may take more rows).
                scratch.chunk_rows = self.lce_plan(&inputs)?.0;
            }
            let records = GpuTensor {
                buffer: &records,
                offset: (p * rows * RECORD_FLOATS) as u64 * 4,
                rows,
                cols: RECORD_FLOATS,
                dtype: DType::F32,
            };
            self.encode_lce_pass_in(
                encoder,
                &inputs,
                &Work::Records { records },
                None,
                &workspace,
                &mut scratch,
            )?;
        }
        let merge = MergeViews {
            records: GpuTensor::f32_matrix(&records, 0, parts * rows, RECORD_FLOATS),
            targets: views.targets,
            loss: views.loss,
            lse,
        };
        scratch.bytes +=
            self.encode_merge(encoder, &merge, classes, parts, &options.loss, ignore_index)?;
        Ok(scratch)
    }

    /// Outputs must not share bytes with the inputs or with each other.
    fn reject_lce_sharing(
        &self,
        outputs: &[Option<(&'static str, GpuTensor<'_>)>],
        inputs: &Inputs<'_>,
    ) -> Result<()> {
        let outputs: Vec<(&'static str, GpuTensor<'_>)> =
            outputs.iter().flatten().copied().collect();
        let mut read = vec![
            ("hidden", inputs.hidden),
            ("classifier", inputs.classifier),
            ("targets", inputs.targets),
        ];
        if let Some(b) = inputs.bias {
            read.push(("bias", b));
        }
        if let Some(w) = inputs.weights {
            read.push(("weight", w));
        }
        reject_shared(&outputs, &read)
    }

    /// The loss from the per-row results: the fixed-order reduction into
    /// `loss` (`[2, 1]`), or the row losses exported into it (`[N, 1]`).
    fn encode_row_results(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        problem: &crate::ops::cross_entropy::CrossEntropyProblem<'_>,
        loss: &GpuTensor<'_>,
        reduced: bool,
    ) -> Result<()> {
        if reduced {
            return self.encode_cross_entropy_reduce(
                encoder,
                problem,
                WholeArg::view(ce::RESULT, loss),
            );
        }
        let unused = self.fresh_buffer("unused lse", 16);
        let mut params = problem.params;
        params.flags |= crate::kernels::flags::cross_entropy::FLAG_EXPORT_LOSS;
        self.encode_cross_entropy_export(
            encoder,
            problem,
            &[
                WholeArg::new(ce::ROW_OUT, &problem.row_out),
                WholeArg::view(ce::LOSS_ROWS, loss),
                WholeArg::new(ce::LSE_ROWS, &unused),
            ],
            params,
        )
    }

    /// Records one vocabulary shard's forward pass: a [`ShardRecord`] per
    /// row into `views.records`, for [`GpuContext::encode_merge_records`]
    /// after the caller has gathered every shard's records. Class weights
    /// (of the whole vocabulary), smoothing and softcap come from `options`;
    /// its reduction is the merge's business.
    pub fn encode_shard_records(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &ShardRecordViews<'_>,
        shard: Shard,
        options: &LinearCrossEntropyOptions<'_, GpuTensor<'_>>,
    ) -> Result<ScratchUse> {
        self.scoped_now("lce_records", || {
            let ignore = gpu_ignore_index(options.loss.ignore_index)?;
            let inputs = self.lce_inputs(
                views.hidden,
                views.classifier,
                views.bias,
                views.targets,
                shard,
                options,
                ignore,
            )?;
            let rows = views.hidden.rows;
            self.check_view(
                &views.records,
                spec("records", DType::F32, rows, RECORD_FLOATS),
            )?;
            self.reject_lce_sharing(&[Some(("records", views.records))], &inputs)?;
            let mut scratch = ScratchUse {
                vocabulary_parts: 1,
                ..ScratchUse::default()
            };
            self.encode_lce_pass(
                encoder,
                &inputs,
                &Work::Records {
                    records: views.records,
                },
                None,
                &mut scratch,
            )?;
            Ok(scratch)
        })
    }

    /// Records the merge of every shard's records (`[S·N, 8]`, shard order)
    /// into the loss and each row's lse. Class weights are those of the whole
    /// vocabulary, `classes` its size.
    pub fn encode_merge_records(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &MergeViews<'_>,
        classes: usize,
        options: &CrossEntropyOptions<'_, GpuTensor<'_>>,
    ) -> Result<()> {
        self.scoped_now("lce_merge", || {
            options.validate_scalars()?;
            let ignore = gpu_ignore_index(options.ignore_index)?;
            let rows = views.targets.rows;
            if rows == 0 || classes == 0 {
                return Err(Error::InvalidView {
                    name: "targets",
                    problem: "has no rows (or there are no classes); there is nothing to merge"
                        .into(),
                });
            }
            self.check_view(&views.targets, spec("targets", DType::I32, rows, 1))?;
            let shards = views.records.rows / rows;
            if shards == 0 || shards * rows != views.records.rows {
                return Err(Error::InvalidView {
                    name: "records",
                    problem: format!(
                        "has {} rows, expected a multiple of the {rows} targets (S shards x N rows)",
                        views.records.rows
                    ),
                });
            }
            self.check_view(
                &views.records,
                spec("records", DType::F32, shards * rows, RECORD_FLOATS),
            )?;
            self.check_whole_binding("records", views.records.bytes())?;
            let reduced = options.reduction != Reduction::None;
            self.check_view(
                &views.loss,
                spec("loss", DType::F32, if reduced { 2 } else { rows }, 1),
            )?;
            self.check_view(&views.lse, spec("lse", DType::F32, rows, 1))?;
            if let Some(wv) = &options.weight {
                self.check_view(wv, spec("weight", DType::F32, wv.rows, wv.cols))?;
                if wv.len() != classes {
                    return Err(Error::InvalidView {
                        name: "weight",
                        problem: format!(
                            "has {} elements, expected one per class ({classes})",
                            wv.len()
                        ),
                    });
                }
            }
            reject_shared(
                &[("loss", views.loss), ("lse", views.lse)],
                &[("records", views.records), ("targets", views.targets)],
            )?;
            self.encode_merge(encoder, views, classes, shards, options, ignore)
                .map(|_| ())
        })
    }

    /// The merge of [`Self::encode_merge_records`] on checked views; returns
    /// the bytes of scratch it allocated.
    fn encode_merge(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &MergeViews<'_>,
        classes: usize,
        shards: usize,
        options: &CrossEntropyOptions<'_, GpuTensor<'_>>,
        ignore: i32,
    ) -> Result<u64> {
        let rows = views.targets.rows;
        let reduced = options.reduction != Reduction::None;
        let shard = Shard::whole(classes);
        let mut params = lce_params(options, ignore, shard, rows)?;
        params.shards = u32_of(shards, "shards")?;
        let mut ce_params = cross_entropy_params(options);
        ce_params.ignore_index = ignore;
        // The fused op's host API submits in steps: the problem's own buffers.
        let problem = self.row_loss_problem(
            crate::ops::cross_entropy::Submits::Several,
            RowLoss::IndexTargets,
            Operand::View(views.targets),
            rows,
            classes,
            options.weight.copied().map(Operand::View),
            ce_params,
        )?;
        self.encode_cross_entropy_denominator(encoder, &problem)?;
        let limit = self.limits().max_storage_buffer_binding_size;
        let targets = WholeArg::view(lce::TARGETS, &views.targets);
        let weights = options
            .weight
            .as_ref()
            .map_or(WholeArg::new(lce::WEIGHTS, &self.placeholder), |v| {
                WholeArg::view(lce::WEIGHTS, v)
            });
        let records = WholeArg::view(lce::RECORDS, &views.records);
        let row_out = WholeArg::new(lce::ROW_OUT, &problem.row_out);
        let lse = WholeArg::view(lce::LSE_OUT, &views.lse);
        let bound = [
            (lce::TARGETS, targets.buffer),
            (lce::WEIGHTS, weights.buffer),
            (lce::RECORDS, records.buffer),
            (lce::ROW_OUT, row_out.buffer),
            (lce::LSE_OUT, lse.buffer),
        ];
        params.rows = u32_of(rows, "rows")?;
        let variant = self.variant(Kernel::LinearCrossEntropyMerge, Storage::F32, &bound);
        self.dispatch(
            encoder,
            Kernel::LinearCrossEntropyMerge,
            variant,
            &params,
            vec![
                (lce::TARGETS, targets.resource(limit)),
                (lce::WEIGHTS, weights.resource(limit)),
                (lce::RECORDS, records.resource(limit)),
                (lce::ROW_OUT, row_out.resource(limit)),
                (lce::LSE_OUT, lse.resource(limit)),
            ],
            self.grid(rows.div_ceil(WORKGROUP_SIZE as usize))?,
        )?;
        self.encode_row_results(encoder, &problem, &views.loss, reduced)?;
        Ok(problem.scalars.size() + problem.row_out.size() + problem.result.size())
    }

    /// Records one shard's backward pass from the merged lse: its `dW` rows,
    /// its `db` and its part of `dH` (which the caller sums over shards).
    /// Class weights are those of the whole vocabulary.
    pub fn encode_shard_backward(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        views: &ShardBackwardViews<'_>,
        shard: Shard,
        options: &LinearCrossEntropyOptions<'_, GpuTensor<'_>>,
    ) -> Result<ScratchUse> {
        self.scoped_now("lce_grad", || {
            let ignore = gpu_ignore_index(options.loss.ignore_index)?;
            let inputs = self.lce_inputs(
                views.hidden,
                views.classifier,
                views.bias,
                views.targets,
                shard,
                options,
                ignore,
            )?;
            let (rows, d) = (views.hidden.rows, views.hidden.cols);
            self.check_view(&views.lse, spec("lse", DType::F32, rows, 1))?;
            if let Some(g) = &views.grad_hidden {
                self.check_view(
                    g,
                    spec("grad_hidden", grad_dtype("grad_hidden", g)?, rows, d),
                )?;
            }
            if let Some(g) = &views.grad_classifier {
                let dtype = grad_dtype("grad_classifier", g)?;
                self.check_view(g, spec("grad_classifier", dtype, shard.len(), d))?;
            }
            if let Some(g) = &views.grad_bias {
                if views.bias.is_none() {
                    return Err(Error::InvalidView {
                        name: "grad_bias",
                        problem: "given without a bias".into(),
                    });
                }
                let dtype = grad_dtype("grad_bias", g)?;
                self.check_view(g, spec("grad_bias", dtype, shard.len(), 1))?;
            }
            self.reject_lce_sharing(
                &[
                    views.grad_hidden.map(|v| ("grad_hidden", v)),
                    views.grad_classifier.map(|v| ("grad_classifier", v)),
                    views.grad_bias.map(|v| ("grad_bias", v)),
                ],
                &inputs,
            )?;
            let mut scratch = ScratchUse {
                vocabulary_parts: 1,
                ..ScratchUse::default()
            };
            let problem = self.lce_problem(encoder, &inputs, &options.loss, &mut scratch)?;
            let grads = Grads {
                hidden: views.grad_hidden,
                classifier: views.grad_classifier,
                bias: views.grad_bias,
            };
            self.encode_lce_pass(
                encoder,
                &inputs,
                &Work::Backward {
                    lse: views.lse,
                    grads,
                },
                Some(&problem),
                &mut scratch,
            )?;
            Ok(scratch)
        })
    }

    /// The fused linear + cross-entropy on host slices: `hidden` `[N, D]`,
    /// `classifier` `[V, D]`, optional `bias` `[V]`, `N` targets; the
    /// gradients `grads` names. See [`crate::loss::linear_cross_entropy`].
    ///
    /// ```
    /// # fn main() -> Result<(), wgpu_loss::Error> {
    /// use wgpu_loss::{block_on, reference, GpuContext, LinearCrossEntropyOptions, LinearGrads, LinearShape};
    /// let ctx = block_on(GpuContext::new())?;
    /// let shape = LinearShape { rows: 2, hidden: 3, classes: 4 };
    /// let hidden = [0.5f32, -1.0, 2.0, 1.5, 0.25, -0.5];
    /// let classifier: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin()).collect();
    /// let options = LinearCrossEntropyOptions::default();
    /// let out = block_on(ctx.linear_cross_entropy(&hidden, &classifier, None, &[1i64, 3], shape, &options, LinearGrads::ALL))?;
    /// let expected = reference::linear_cross_entropy(&hidden, &classifier, None, &[1i64, 3], shape, &options.loss)?;
    /// assert!((f64::from(out.loss[0]) - expected.loss[0]).abs() < 1e-5);
    /// assert_eq!(out.grad_classifier.map(|g| g.len()), Some(12));
    /// # Ok(()) }
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub async fn linear_cross_entropy<T: ClassIndex>(
        &self,
        hidden: &[f32],
        classifier: &[f32],
        bias: Option<&[f32]>,
        targets: &[T],
        shape: LinearShape,
        options: &LinearCrossEntropyOptions<'_>,
        grads: LinearGrads,
    ) -> Result<LinearCrossEntropyOutput> {
        self.check_errors().await?;
        shape.check(hidden.len(), classifier.len(), bias.map(<[f32]>::len))?;
        check_matrix("targets", targets.len(), shape.rows, 1)?;
        options.loss.validate(shape.classes)?;
        let targets = checked_targets(targets, shape.classes, options.loss.ignore_index)?;
        let LinearShape {
            rows,
            hidden: d,
            classes: v,
        } = shape;
        let reduced = options.loss.reduction != Reduction::None;
        let loss_len = if reduced { 2 } else { rows };
        let want_bias = grads.bias && bias.is_some();
        let (stage_loss, stage_lse, stage_dh, stage_dw, stage_db) = self
            .scoped("linear_cross_entropy", || {
                let h = self.upload("hidden", hidden);
                let w = self.upload("classifier", classifier);
                let b = bias.map(|b| self.upload("bias", b));
                let t = self.upload("targets", &targets);
                let cw = options.loss.weight.map(|cw| self.upload("weight", cw));
                let loss = self.output("loss", loss_len);
                let lse = self.output("lse", rows);
                let dh = grads.hidden.then(|| self.output("grad_hidden", rows * d));
                let dw = grads
                    .classifier
                    .then(|| self.output("grad_classifier", v * d));
                let db = want_bias.then(|| self.output("grad_bias", v));
                let views = LinearCrossEntropyViews {
                    hidden: GpuTensor::f32_matrix(&h, 0, rows, d),
                    classifier: GpuTensor::f32_matrix(&w, 0, v, d),
                    bias: b.as_ref().map(|b| GpuTensor::f32_vector(b, 0, v)),
                    targets: GpuTensor::i32_vector(&t, 0, rows),
                    loss: GpuTensor::f32_vector(&loss, 0, loss_len),
                    lse: Some(GpuTensor::f32_vector(&lse, 0, rows)),
                    grad_hidden: dh.as_ref().map(|g| GpuTensor::f32_matrix(g, 0, rows, d)),
                    grad_classifier: dw.as_ref().map(|g| GpuTensor::f32_matrix(g, 0, v, d)),
                    grad_bias: db.as_ref().map(|g| GpuTensor::f32_vector(g, 0, v)),
                };
                let cw_view = cw.as_ref().map(|cw| GpuTensor::f32_vector(cw, 0, v));
                let gpu_options = LinearCrossEntropyOptions {
                    loss: options.loss.with_weight(cw_view.as_ref()),
                    workspace_bytes: options.workspace_bytes,
                    parameter_grads: options.parameter_grads,
                };
                let mut encoder = self.encoder("linear_cross_entropy");
                self.encode_lce_checked(&mut encoder, &views, &gpu_options, IGNORED_ROW)?;
                let s = |e: &mut wgpu::CommandEncoder, b: &wgpu::Buffer, n: usize| {
                    self.stage(e, b, n as u64 * 4)
                };
                let staged = (
                    s(&mut encoder, &loss, loss_len),
                    s(&mut encoder, &lse, rows),
                    dh.as_ref().map(|g| s(&mut encoder, g, rows * d)),
                    dw.as_ref().map(|g| s(&mut encoder, g, v * d)),
                    db.as_ref().map(|g| s(&mut encoder, g, v)),
                );
                self.queue.submit([encoder.finish()]);
                Ok(staged)
            })
            .await?;
        let loss: Vec<f32> = self.read_back(&stage_loss, loss_len).await?;
        let lse = self.read_back(&stage_lse, rows).await?;
        let grad_hidden = match stage_dh {
            Some(s) => Some(self.read_back(&s, rows * d).await?),
            None => None,
        };
        let grad_classifier = match stage_dw {
            Some(s) => Some(self.read_back(&s, v * d).await?),
            None => None,
        };
        let grad_bias = match stage_db {
            Some(s) => Some(self.read_back(&s, v).await?),
            None => None,
        };
        let (loss, z_loss) = if reduced {
            (vec![loss[0]], vec![loss[1]])
        } else {
            // The export wrote l_i + z_i; the z part is z·lse² on kept rows.
            let z = options.loss.z_loss;
            let z_rows = targets
                .iter()
                .zip(&lse)
                .map(|(&t, &l)| {
                    if t == IGNORED_ROW || z == 0.0 {
                        0.0
                    } else {
                        z * l * l
                    }
                })
                .collect();
            (loss, z_rows)
        };
        Ok(LinearCrossEntropyOutput {
            loss,
            z_loss,
            lse,
            grad_hidden,
            grad_classifier,
            grad_bias,
        })
    }

    /// One vocabulary shard's records on host slices: `classifier` and
    /// `bias` are the shard's rows; targets index the whole vocabulary of
    /// `shard.classes`; class weights in `options` are the whole vocabulary's.
    #[allow(clippy::too_many_arguments)]
    pub async fn shard_records<T: ClassIndex>(
        &self,
        hidden: &[f32],
        classifier: &[f32],
        bias: Option<&[f32]>,
        targets: &[T],
        hidden_size: usize,
        shard: Shard,
        options: &LinearCrossEntropyOptions<'_>,
    ) -> Result<Vec<ShardRecord>> {
        self.check_errors().await?;
        shard.check()?;
        let shape = LinearShape {
            rows: targets.len(),
            hidden: hidden_size,
            classes: shard.len(),
        };
        shape.check(hidden.len(), classifier.len(), bias.map(<[f32]>::len))?;
        options.loss.validate(shard.classes)?;
        let targets = checked_targets(targets, shard.classes, options.loss.ignore_index)?;
        let rows = shape.rows;
        let staging = self
            .scoped("lce_records", || {
                let h = self.upload("hidden", hidden);
                let w = self.upload("classifier", classifier);
                let b = bias.map(|b| self.upload("bias", b));
                let t = self.upload("targets", &targets);
                let cw = options.loss.weight.map(|cw| self.upload("weight", cw));
                let records = self.output("records", rows * RECORD_FLOATS);
                let views = ShardRecordViews {
                    hidden: GpuTensor::f32_matrix(&h, 0, rows, hidden_size),
                    classifier: GpuTensor::f32_matrix(&w, 0, shard.len(), hidden_size),
                    bias: b.as_ref().map(|b| GpuTensor::f32_vector(b, 0, shard.len())),
                    targets: GpuTensor::i32_vector(&t, 0, rows),
                    records: GpuTensor::f32_matrix(&records, 0, rows, RECORD_FLOATS),
                };
                let cw_view = cw
                    .as_ref()
                    .map(|cw| GpuTensor::f32_vector(cw, 0, shard.classes));
                let gpu_options = LinearCrossEntropyOptions {
                    loss: options.loss.with_weight(cw_view.as_ref()),
                    workspace_bytes: options.workspace_bytes,
                    parameter_grads: options.parameter_grads,
                };
                let mut encoder = self.encoder("lce_records");
                let inputs = self.lce_inputs(
                    views.hidden,
                    views.classifier,
                    views.bias,
                    views.targets,
                    shard,
                    &gpu_options,
                    IGNORED_ROW,
                )?;
                self.encode_lce_pass(
                    &mut encoder,
                    &inputs,
                    &Work::Records {
                        records: views.records,
                    },
                    None,
                    &mut ScratchUse::default(),
                )?;
                let staging = self.stage(&mut encoder, &records, (rows * RECORD_FLOATS) as u64 * 4);
                self.queue.submit([encoder.finish()]);
                Ok(staging)
            })
            .await?;
        self.read_back(&staging, rows).await
    }

    /// Merges every shard's records (in shard order) into the loss and each
    /// row's lse, on the host API: the output's `grad` is `None`.
    pub async fn merge_records<T: ClassIndex>(
        &self,
        records: &[Vec<ShardRecord>],
        targets: &[T],
        classes: usize,
        options: &CrossEntropyOptions<'_>,
    ) -> Result<CrossEntropyOutput> {
        self.check_errors().await?;
        options.validate(classes)?;
        let rows = targets.len();
        for (k, r) in records.iter().enumerate() {
            if r.len() != rows {
                return Err(Error::InvalidView {
                    name: "records",
                    problem: format!(
                        "shard {k} has {} records, expected {rows} (one per target)",
                        r.len()
                    ),
                });
            }
        }
        let targets = checked_targets(targets, classes, options.ignore_index)?;
        let flat: Vec<ShardRecord> = records.iter().flatten().copied().collect();
        let reduced = options.reduction != Reduction::None;
        let loss_len = if reduced { 2 } else { rows };
        let (stage_loss, stage_lse) = self
            .scoped("lce_merge", || {
                let r = self.upload("records", &flat);
                let t = self.upload("targets", &targets);
                let cw = options.weight.map(|cw| self.upload("weight", cw));
                let loss = self.output("loss", loss_len);
                let lse = self.output("lse", rows);
                let views = MergeViews {
                    records: GpuTensor::f32_matrix(&r, 0, flat.len(), RECORD_FLOATS),
                    targets: GpuTensor::i32_vector(&t, 0, rows),
                    loss: GpuTensor::f32_vector(&loss, 0, loss_len),
                    lse: GpuTensor::f32_vector(&lse, 0, rows),
                };
                let cw_view = cw.as_ref().map(|cw| GpuTensor::f32_vector(cw, 0, classes));
                let mut gpu_options = options.with_weight(cw_view.as_ref());
                gpu_options.ignore_index = i64::from(IGNORED_ROW);
                let mut encoder = self.encoder("lce_merge");
                self.encode_merge_records(&mut encoder, &views, classes, &gpu_options)?;
                let staged = (
                    self.stage(&mut encoder, &loss, loss_len as u64 * 4),
                    self.stage(&mut encoder, &lse, rows as u64 * 4),
                );
                self.queue.submit([encoder.finish()]);
                Ok(staged)
            })
            .await?;
        let loss: Vec<f32> = self.read_back(&stage_loss, loss_len).await?;
        let lse: Vec<f32> = self.read_back(&stage_lse, rows).await?;
        let z = options.z_loss;
        let (loss, z_loss) = if reduced {
            (vec![loss[0]], vec![loss[1]])
        } else {
            let z_rows = targets
                .iter()
                .zip(&lse)
                .map(|(&t, &l)| {
                    if t == IGNORED_ROW || z == 0.0 {
                        0.0
                    } else {
                        z * l * l
                    }
                })
                .collect();
            (loss, z_rows)
        };
        Ok(CrossEntropyOutput {
            loss,
            z_loss,
            lse,
            grad: None,
        })
    }

    /// One shard's backward pass on host slices, from the merged `lse`.
    #[allow(clippy::too_many_arguments)]
    pub async fn shard_backward<T: ClassIndex>(
        &self,
        hidden: &[f32],
        classifier: &[f32],
        bias: Option<&[f32]>,
        targets: &[T],
        lse: &[f32],
        hidden_size: usize,
        shard: Shard,
        options: &LinearCrossEntropyOptions<'_>,
        grads: LinearGrads,
    ) -> Result<ShardGradients> {
        self.check_errors().await?;
        shard.check()?;
        let shape = LinearShape {
            rows: targets.len(),
            hidden: hidden_size,
            classes: shard.len(),
        };
        shape.check(hidden.len(), classifier.len(), bias.map(<[f32]>::len))?;
        check_matrix("lse", lse.len(), shape.rows, 1)?;
        options.loss.validate(shard.classes)?;
        let targets = checked_targets(targets, shard.classes, options.loss.ignore_index)?;
        let (rows, d, vs) = (shape.rows, hidden_size, shard.len());
        let want_bias = grads.bias && bias.is_some();
        let (sh, sw, sb) = self
            .scoped("lce_grad", || {
                let h = self.upload("hidden", hidden);
                let w = self.upload("classifier", classifier);
                let b = bias.map(|b| self.upload("bias", b));
                let t = self.upload("targets", &targets);
                let l = self.upload("lse", lse);
                let cw = options.loss.weight.map(|cw| self.upload("weight", cw));
                let dh = grads.hidden.then(|| self.output("grad_hidden", rows * d));
                let dw = grads
                    .classifier
                    .then(|| self.output("grad_classifier", vs * d));
                let db = want_bias.then(|| self.output("grad_bias", vs));
                let views = ShardBackwardViews {
                    hidden: GpuTensor::f32_matrix(&h, 0, rows, d),
                    classifier: GpuTensor::f32_matrix(&w, 0, vs, d),
                    bias: b.as_ref().map(|b| GpuTensor::f32_vector(b, 0, vs)),
                    targets: GpuTensor::i32_vector(&t, 0, rows),
                    lse: GpuTensor::f32_vector(&l, 0, rows),
                    grad_hidden: dh.as_ref().map(|g| GpuTensor::f32_matrix(g, 0, rows, d)),
                    grad_classifier: dw.as_ref().map(|g| GpuTensor::f32_matrix(g, 0, vs, d)),
                    grad_bias: db.as_ref().map(|g| GpuTensor::f32_vector(g, 0, vs)),
                };
                let cw_view = cw
                    .as_ref()
                    .map(|cw| GpuTensor::f32_vector(cw, 0, shard.classes));
                let mut gpu_options = LinearCrossEntropyOptions {
                    loss: options.loss.with_weight(cw_view.as_ref()),
                    workspace_bytes: options.workspace_bytes,
                    parameter_grads: options.parameter_grads,
                };
                gpu_options.loss.ignore_index = i64::from(IGNORED_ROW);
                let mut encoder = self.encoder("lce_grad");
                self.encode_shard_backward(&mut encoder, &views, shard, &gpu_options)?;
                let s = |e: &mut wgpu::CommandEncoder, b: &wgpu::Buffer, n: usize| {
                    self.stage(e, b, n as u64 * 4)
                };
                let staged = (
                    dh.as_ref().map(|g| s(&mut encoder, g, rows * d)),
                    dw.as_ref().map(|g| s(&mut encoder, g, vs * d)),
                    db.as_ref().map(|g| s(&mut encoder, g, vs)),
                );
                self.queue.submit([encoder.finish()]);
                Ok(staged)
            })
            .await?;
        Ok(ShardGradients {
            grad_hidden: match sh {
                Some(s) => Some(self.read_back(&s, rows * d).await?),
                None => None,
            },
            grad_classifier: match sw {
                Some(s) => Some(self.read_back(&s, vs * d).await?),
                None => None,
            },
            grad_bias: match sb {
                Some(s) => Some(self.read_back(&s, vs).await?),
                None => None,
            },
        })
    }
}
