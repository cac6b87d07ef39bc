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
    /// family and the row losses, on adapters with `SHADER_F16` (arithmetic
    /// stays f32).
    F16,
    /// 32-bit signed integer (class indices).
    I32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            DType::F16 => 2,
            DType::F32 | DType::I32 => 4,
        }
    }

    /// The kernels' storage type for a float matrix of this dtype.
    pub(crate) fn storage(self) -> crate::kernels::Storage {
        match self {
            DType::F16 => crate::kernels::Storage::F16,
            _ => crate::kernels::Storage::F32,
        }
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
        let end = view.offset.checked_add(bytes.div_ceil(4) * 4);
        if end.is_none_or(|end| end > view.buffer.size()) {
            return Err(Error::InvalidView {
                name,
                problem: format!(
                    "bytes {}..{} run past the end of its {}-byte buffer",
                    view.offset,
                    view.offset.saturating_add(view.bytes()),
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

/// The tensors of one loss evaluation on the GPU, for the `encode_*` loss calls.
///
/// Shapes, with `N` rows and `C` classes / columns:
/// - `input`: f32 `[N, C]` logits (probabilities for binary cross-entropy);
///   the row losses also take f16 logits, with an f16 `grad`;
/// - `target`: i32 `[N, 1]` class indices (cross-entropy with index targets,
///   multiclass focal) or f32 `[N, C]` (probability and binary targets);
/// - `weight`: f32 with `C` elements (class weights, or per-class `α` for
///   multiclass focal), or `[N, C]` for the binary losses;
/// - `pos_weight`: f32 with `C` elements (BCE with logits only);
/// - `loss`: f32 `[N, 1]` (row losses) or `[N, C]` (element losses) for
///   `Reduction::None`, else `[2, 1]` holding `[loss, z-loss part]`;
/// - `grad`: f32 `[N, C]`; for cross-entropy with index targets it may be
///   `input` itself (the gradient overwrites the logits);
/// - `lse`: f32 `[N, 1]`, each row's logsumexp (row losses only).
///
/// Data in views is not checked on the host (it never leaves the GPU): a
/// class-index target outside `[0, C)` that is not `ignore_index` makes its
/// row's loss and gradient NaN, and the `mean` NaN.
#[derive(Clone, Copy, Debug)]
pub struct LossViews<'a> {
    /// Logits or probabilities.
    pub input: GpuTensor<'a>,
    /// Targets.
    pub target: GpuTensor<'a>,
    /// Optional weights (class weights, per-class alpha, or binary weights).
    pub weight: Option<GpuTensor<'a>>,
    /// Optional positive-class weights (BCE with logits).
    pub pos_weight: Option<GpuTensor<'a>>,
    /// Loss output.
    pub loss: GpuTensor<'a>,
    /// Optional gradient output.
    pub grad: Option<GpuTensor<'a>>,
    /// Optional per-row logsumexp output.
    pub lse: Option<GpuTensor<'a>>,
}

impl<'a> LossViews<'a> {
    /// Views with only the required tensors; add the optional ones with struct update syntax.
    pub fn new(input: GpuTensor<'a>, target: GpuTensor<'a>, loss: GpuTensor<'a>) -> Self {
        Self {
            input,
            target,
            weight: None,
            pos_weight: None,
            loss,
            grad: None,
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
