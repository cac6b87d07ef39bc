//! Views of a caller's `wgpu::Buffer` as tensors, for the `encode_*` calls
//! that record into the caller's command encoder without leaving the GPU.

use crate::context::GpuContext;
use crate::error::{Error, Result};

/// Element type of a tensor in a GPU buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 16-bit float: logits, probabilities and gradients of the softmax
    /// family and the row losses, and the fused linear + cross-entropy's
    /// hidden states and classifier, on every adapter (packed two to a
    /// `u32` word, so no `SHADER_F16` is needed; arithmetic stays f32;
    /// stores round to nearest even). Rows are handled as for `BF16`.
    F16,
    /// bfloat16 (the top half of an f32): logits, probabilities and
    /// gradients of the softmax family and the row losses, on every adapter
    /// (unpacked from `u32` words; arithmetic stays f32; stores round to
    /// nearest even). Rows whose length or offset is not a multiple of 4
    /// are read in place where the kernel stores no matrix (a loss alone,
    /// logsumexp), and otherwise run through f32 staging copies, which cost
    /// about three times the bytes.
    BF16,
    /// 32-bit signed integer (class indices).
    I32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
        }
    }

    /// The kernels' storage type for a float matrix of this dtype.
    pub(crate) fn storage(self) -> crate::kernels::Storage {
        match self {
            DType::F16 => crate::kernels::Storage::F16,
            DType::BF16 => crate::kernels::Storage::Bf16,
            _ => crate::kernels::Storage::F32,
        }
    }
}

/// An element type the host API takes matrices in (logits, probabilities,
/// upstream gradients): `f32`, [`half::bf16`] or [`half::f16`] (every
/// adapter: no shader feature is needed). The GPU stores the matrices,
/// and writes matrix results, in this type; arithmetic is f32 either way, and
/// results come back widened to f32 (exactly).
pub trait HostFloat: bytemuck::Pod + Send + Sync + sealed::Sealed {
    /// How the GPU stores matrices of this type.
    const DTYPE: DType;
    /// The value as f32 (exact for all three types).
    fn widen(self) -> f32;
    /// `v` in this type, rounded to nearest even (exact for `f32`).
    fn round_from(v: f32) -> Self;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
}

impl HostFloat for f32 {
    const DTYPE: DType = DType::F32;
    fn widen(self) -> f32 {
        self
    }
    fn round_from(v: f32) -> Self {
        v
    }
}

impl HostFloat for half::bf16 {
    const DTYPE: DType = DType::BF16;
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn round_from(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
}

impl HostFloat for half::f16 {
    const DTYPE: DType = DType::F16;
    fn widen(self) -> f32 {
        self.to_f32()
    }
    fn round_from(v: f32) -> Self {
        half::f16::from_f32(v)
    }
}

/// A row-major `[rows, cols]` tensor stored in `buffer` from byte `offset`.
/// A vector is `[len, 1]`.
#[derive(Clone, Copy, Debug)]
pub struct GpuTensor<'a> {
    /// The buffer holding the data (needs `STORAGE` usage).
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of element 0; a multiple of the device's
    /// `min_storage_buffer_offset_alignment`.
    pub offset: u64,
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Element type.
    pub dtype: DType,
}

impl<'a> GpuTensor<'a> {
    /// An f32 matrix view.
    pub fn f32_matrix(buffer: &'a wgpu::Buffer, offset: u64, rows: usize, cols: usize) -> Self {
        Self {
            buffer,
            offset,
            rows,
            cols,
            dtype: DType::F32,
        }
    }

    /// An f32 vector view of `len` elements.
    pub fn f32_vector(buffer: &'a wgpu::Buffer, offset: u64, len: usize) -> Self {
        Self::f32_matrix(buffer, offset, len, 1)
    }

    /// An i32 vector view of `len` elements (class-index targets).
    pub fn i32_vector(buffer: &'a wgpu::Buffer, offset: u64, len: usize) -> Self {
        Self {
            buffer,
            offset,
            rows: len,
            cols: 1,
            dtype: DType::I32,
        }
    }

    /// Elements in the view.
    pub fn len(&self) -> usize {
        self.rows.saturating_mul(self.cols)
    }

    /// Whether the view holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the view covers.
    pub fn bytes(&self) -> u64 {
        (self.len() as u64).saturating_mul(self.dtype.size())
    }

    /// An f16 matrix view.
    pub fn f16_matrix(buffer: &'a wgpu::Buffer, offset: u64, rows: usize, cols: usize) -> Self {
        Self {
            dtype: DType::F16,
            ..Self::f32_matrix(buffer, offset, rows, cols)
        }
    }

    /// A bf16 matrix view: bf16 bit patterns, two per 4-byte word, element 0
    /// in the low half (little-endian order, as `half::bf16` slices and
    /// safetensors' BF16 lay them out).
    pub fn bf16_matrix(buffer: &'a wgpu::Buffer, offset: u64, rows: usize, cols: usize) -> Self {
        Self {
            dtype: DType::BF16,
            ..Self::f32_matrix(buffer, offset, rows, cols)
        }
    }

    /// Offset of element 0 in elements.
    pub(crate) fn offset_elems(&self) -> u64 {
        self.offset / self.dtype.size()
    }
}

/// What a kernel needs of one view.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ViewSpec {
    pub name: &'static str,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
}

impl GpuTensor<'_> {
    /// Whether the two views share bytes of one buffer without being the
    /// same view (same offset, same byte count): what a kernel cannot
    /// write through, since its threads would race. Identical views are the
    /// in-place form.
    pub(crate) fn overlaps_partly(&self, other: &GpuTensor<'_>) -> bool {
        self.shares_bytes(other) && !(self.offset == other.offset && self.bytes() == other.bytes())
    }

    /// Whether the two views have any byte of one buffer in common.
    pub(crate) fn shares_bytes(&self, other: &GpuTensor<'_>) -> bool {
        let (a, b) = (self.offset, other.offset);
        let (na, nb) = (self.bytes().max(1), other.bytes().max(1));
        self.buffer == other.buffer && a < b.saturating_add(nb) && b < a.saturating_add(na)
    }
}

/// `Err(InvalidView)` naming `written` if it partly overlaps any of `read`.
pub(crate) fn reject_partial_overlap(
    written: (&'static str, &GpuTensor<'_>),
    read: &[(&'static str, &GpuTensor<'_>)],
) -> Result<()> {
    for &(name, input) in read {
        if written.1.overlaps_partly(input) {
            return Err(Error::InvalidView {
                name: written.0,
                problem: format!(
                    "partly overlaps `{name}`; an output must be its own bytes, or exactly the input's view (in place)"
                ),
            });
        }
    }
    Ok(())
}

impl GpuContext {
    /// Checks a view against what a kernel needs: dtype, shape, offset
    /// alignment, bounds and `STORAGE` usage. Every error names the view.
    pub(crate) fn check_view(&self, view: &GpuTensor<'_>, spec: ViewSpec) -> Result<()> {
        let name = spec.name;
        let Some(bytes) = (view.rows as u64)
            .checked_mul(view.cols as u64)
            .and_then(|n| n.checked_mul(view.dtype.size()))
        else {
            return Err(Error::InvalidView {
                name,
                problem: format!(
                    "shape [{}, {}] overflows a byte count",
                    view.rows, view.cols
                ),
            });
        };
        if view.dtype != spec.dtype {
            return Err(Error::InvalidView {
                name,
                problem: format!("has dtype {:?}, expected {:?}", view.dtype, spec.dtype),
            });
        }
        if (view.rows, view.cols) != (spec.rows, spec.cols) {
            return Err(Error::InvalidView {
                name,
                problem: format!(
                    "has shape [{}, {}], expected [{}, {}]",
                    view.rows, view.cols, spec.rows, spec.cols
                ),
            });
        }
        let align = u64::from(self.limits().min_storage_buffer_offset_alignment);
        if !view.offset.is_multiple_of(align) {
            return Err(Error::InvalidView {
                name,
                problem: format!(
                    "offset {} is not a multiple of min_storage_buffer_offset_alignment ({align})",
                    view.offset
                ),
            });
        }
        // Bindings are whole 4-byte words, so an f16 view needs its last word in the buffer.
        let words = bytes.div_ceil(4) * 4;
        let end = view.offset.checked_add(words);
        if end.is_none_or(|end| end > view.buffer.size()) {
            let rounded = if words == bytes {
                String::new()
            } else {
                format!(" (its {bytes} bytes rounded up to whole 4-byte words, as bound)")
            };
            return Err(Error::InvalidView {
                name,
                problem: format!(
                    "bytes {}..{}{rounded} run past the end of its {}-byte buffer",
                    view.offset,
                    view.offset.saturating_add(words),
                    view.buffer.size()
                ),
            });
        }
        if !view.buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(Error::InvalidView {
                name,
                problem: format!("buffer usage {:?} lacks STORAGE", view.buffer.usage()),
            });
        }
        Ok(())
    }
}

/// Where an `encode_*` loss call writes the gradient: the encode API's form
/// of [`crate::Request`].
#[derive(Clone, Copy, Debug, Default)]
pub enum GradOutput<'a> {
    /// No gradient: the loss only ([`crate::Request::Loss`]).
    #[default]
    None,
    /// Into this view, of the input's shape and dtype
    /// ([`crate::Request::LossAndGrad`]). It must not partly overlap the input.
    Into(GpuTensor<'a>),
    /// Over the logits ([`crate::Request::LossAndGradInPlace`]).
    InPlace,
}

impl<'a> GradOutput<'a> {
    fn view(self, input: GpuTensor<'a>) -> Option<GpuTensor<'a>> {
        match self {
            GradOutput::None => None,
            GradOutput::Into(v) => Some(v),
            GradOutput::InPlace => Some(input),
        }
    }
}

/// The tensors of cross-entropy with class-index targets on the GPU
/// ([`GpuContext::encode_cross_entropy`]), `N` rows of `C` classes. Class
/// weights, if any, are a view in the options.
///
/// Data in views is not checked on the host (it never leaves the GPU): a
/// target outside `[0, C)` that is not `ignore_index` makes its row's loss
/// and gradient NaN, and the `mean` NaN.
#[derive(Clone, Copy, Debug)]
pub struct CrossEntropyViews<'a> {
    /// f32, f16 or bf16 `[N, C]` logits.
    pub logits: GpuTensor<'a>,
    /// i32 `[N, 1]` class indices.
    pub targets: GpuTensor<'a>,
    /// f32 `[N, 1]` row losses for `Reduction::None`, else `[2, 1]`: the loss
    /// and its z-loss part.
    pub loss: GpuTensor<'a>,
    /// Where the gradient goes, if anywhere.
    pub grad: GradOutput<'a>,
    /// Optional f32 `[N, 1]`: each row's logsumexp.
    pub lse: Option<GpuTensor<'a>>,
}

/// The tensors of cross-entropy with probability targets
/// ([`GpuContext::encode_cross_entropy_probs`]).
#[derive(Clone, Copy, Debug)]
pub struct ProbTargetViews<'a> {
    /// f32, f16 or bf16 `[N, C]` logits.
    pub logits: GpuTensor<'a>,
    /// f32 `[N, C]` target probabilities.
    pub targets: GpuTensor<'a>,
    /// As [`CrossEntropyViews::loss`].
    pub loss: GpuTensor<'a>,
    /// Optional gradient, `[N, C]` like the logits.
    pub grad: Option<GpuTensor<'a>>,
    /// Optional f32 `[N, 1]`: each row's logsumexp.
    pub lse: Option<GpuTensor<'a>>,
}

/// The tensors of the multiclass focal loss ([`GpuContext::encode_focal_loss`]).
#[derive(Clone, Copy, Debug)]
pub struct FocalViews<'a> {
    /// f32, f16 or bf16 `[N, C]` logits.
    pub logits: GpuTensor<'a>,
    /// i32 `[N, 1]` class indices.
    pub targets: GpuTensor<'a>,
    /// f32 `[N, 1]` row losses for `Reduction::None`, else `[2, 1]` (the
    /// second value is 0).
    pub loss: GpuTensor<'a>,
    /// Optional gradient, `[N, C]` like the logits.
    pub grad: Option<GpuTensor<'a>>,
    /// Optional f32 `[N, 1]`: each row's logsumexp.
    pub lse: Option<GpuTensor<'a>>,
}

/// The tensors of an element-wise loss (binary cross-entropy on
/// probabilities or logits, sigmoid focal loss), all f32. Weights and
/// `pos_weight`, if any, are views in the options.
#[derive(Clone, Copy, Debug)]
pub struct BinaryViews<'a> {
    /// `[N, C]` probabilities or logits.
    pub input: GpuTensor<'a>,
    /// `[N, C]` targets in `[0, 1]`.
    pub targets: GpuTensor<'a>,
    /// `[N, C]` element losses for `Reduction::None`, else `[2, 1]`: the
    /// loss, then 0 (the layout of the row losses' `[loss, z-loss part]`).
    pub loss: GpuTensor<'a>,
    /// Optional gradient, `[N, C]`.
    pub grad: Option<GpuTensor<'a>>,
}

/// One loss evaluation's tensors, whichever loss: what the per-op view
/// structs and their options' weight views become inside the crate.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LossViews<'a> {
    pub input: GpuTensor<'a>,
    pub target: GpuTensor<'a>,
    pub weight: Option<GpuTensor<'a>>,
    pub pos_weight: Option<GpuTensor<'a>>,
    pub loss: GpuTensor<'a>,
    pub grad: Option<GpuTensor<'a>>,
    pub lse: Option<GpuTensor<'a>>,
}

impl<'a> CrossEntropyViews<'a> {
    pub(crate) fn merged(&self, weight: Option<GpuTensor<'a>>) -> LossViews<'a> {
        LossViews {
            input: self.logits,
            target: self.targets,
            weight,
            pos_weight: None,
            loss: self.loss,
            grad: self.grad.view(self.logits),
            lse: self.lse,
        }
    }
}

impl<'a> ProbTargetViews<'a> {
    pub(crate) fn merged(&self, weight: Option<GpuTensor<'a>>) -> LossViews<'a> {
        CrossEntropyViews {
            logits: self.logits,
            targets: self.targets,
            loss: self.loss,
            grad: self.grad.map_or(GradOutput::None, GradOutput::Into),
            lse: self.lse,
        }
        .merged(weight)
    }
}

impl<'a> FocalViews<'a> {
    /// `alpha` takes the weights' place: the kernels read it as per-class weights.
    pub(crate) fn merged(&self, alpha: Option<GpuTensor<'a>>) -> LossViews<'a> {
        CrossEntropyViews {
            logits: self.logits,
            targets: self.targets,
            loss: self.loss,
            grad: self.grad.map_or(GradOutput::None, GradOutput::Into),
            lse: self.lse,
        }
        .merged(alpha)
    }
}

impl<'a> BinaryViews<'a> {
    pub(crate) fn merged(
        &self,
        weight: Option<GpuTensor<'a>>,
        pos_weight: Option<GpuTensor<'a>>,
    ) -> LossViews<'a> {
        LossViews {
            input: self.input,
            target: self.targets,
            weight,
            pos_weight,
            loss: self.loss,
            grad: self.grad,
            lse: None,
        }
    }
}

pub(crate) fn spec(name: &'static str, dtype: DType, rows: usize, cols: usize) -> ViewSpec {
    ViewSpec {
        name,
        dtype,
        rows,
        cols,
    }
}
