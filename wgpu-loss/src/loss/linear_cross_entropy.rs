//! The `linear` op and the fused linear + cross-entropy: the loss of a
//! language-model head from the hidden states and the classifier weight,
//! without the logits in memory.
//!
//! # Linear
//!
//! Hidden states `H` `[N, D]`, weight `W` `[V, D]` (the layout of PyTorch's
//! `nn.Linear`), optional bias `b` `[V]`: `z = H·Wᵀ + b`, `[N, V]`,
//! `z[n, v] = Σ_d H[n, d]·W[v, d] + b[v]`.
//!
//! # Linear + cross-entropy
//!
//! The loss is [`crate::loss::cross_entropy`] with class-index targets on
//! `z = H·Wᵀ + b`, every [`CrossEntropyOptions`] field with its meaning there
//! (class weights, `ignore_index`, label smoothing, reduction, z-loss,
//! softcap, `grad_scale`). With `G = ∂loss/∂z` (that module's gradient):
//!
//! - `dH = G·W`, `[N, D]`;
//! - `dW = Gᵀ·H`, `[V, D]`;
//! - `db = Σ_n G[n, ·]`, `[V]`.
//!
//! The GPU op computes `z` one chunk of rows at a time into a workspace of
//! [`LinearCrossEntropyOptions::workspace_bytes`], reduces each chunk to
//! per-row records, and (for gradients) turns the chunk into `G` in place
//! and multiplies it out. What it allocates beyond its inputs and outputs is
//! the workspace, a 32-byte record per row of one chunk, and
//! [`BYTES_PER_ROW`] bytes per row (plus an f32 shadow of any f16 or
//! bf16 gradient): never `N·V`.
//!
//! # Vocabulary shards
//!
//! A shard `[v0, v1)` of the vocabulary ([`Shard`]) yields one record per row
//! ([`ShardRecord`]): the max `m` and the sum `s` of `exp(z' - m)` over the
//! shard, the target's (softcapped) logit if the target falls in it, and the
//! smoothing sums. The merge of every shard's records in shard order gives
//! `lse`, the row losses and the `mean` — Megatron's vocabulary-parallel
//! cross-entropy. Given the merged `lse`, each shard's backward pass gives
//! its `dW` and `db` rows and a partial `dH`; the caller sums the partial
//! `dH` over shards.

use super::cross_entropy::CrossEntropyOptions;
use crate::error::{Error, Result};

/// The automatic workspace: 32 MiB of f32 logits per chunk of rows, or
/// [`TILE_ROWS`] rows if those take more, capped by the device's binding size.
pub const DEFAULT_WORKSPACE_BYTES: u64 = 32 << 20;

/// Rows of the product kernel's output tile: chunks are whole multiples of
/// it where they can be (a chunk of fewer rows leaves part of every tile idle).
pub const TILE_ROWS: usize = 64;

/// Scratch bytes per row the fused op allocates besides the workspace and
/// one chunk's records: the row's `(ce, z, lse, 0)` and its lse.
pub const BYTES_PER_ROW: u64 = 16 + 4;

/// f32 values in one [`ShardRecord`].
pub const RECORD_FLOATS: usize = 8;

/// Options of the fused linear + cross-entropy.
///
/// `W` is where the class weights live, as in [`CrossEntropyOptions`].
#[derive(Debug)]
pub struct LinearCrossEntropyOptions<'a, W: ?Sized = [f32]> {
    /// The cross-entropy's options, with their meaning there.
    pub loss: CrossEntropyOptions<'a, W>,
    /// Bytes of f32 logits the op holds at once: a chunk of rows times the
    /// shard's classes, capped by the device's binding size, at least one
    /// row's worth. `None` (the default): [`DEFAULT_WORKSPACE_BYTES`] or
    /// [`TILE_ROWS`] rows, whichever is more.
    pub workspace_bytes: Option<u64>,
    /// How the parameter gradients `dW` and `db` reach their views:
    /// [`Accumulate::Overwrite`] (the default) writes them;
    /// [`Accumulate::Add`] adds them to what the views hold, for gradient
    /// accumulation over micro-batches (and `eval`'s windows), in the same
    /// order of additions as one call over all the rows when every call but
    /// the last covers whole chunks
    /// ([`crate::GpuContext::linear_cross_entropy_chunk_rows`]). `dH` is
    /// always written: its rows are the call's own.
    pub parameter_grads: Accumulate,
}

/// Whether a product (or a parameter gradient) overwrites its output or adds to it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Accumulate {
    /// `out = A·B`.
    #[default]
    Overwrite,
    /// `out += A·B` (gradient accumulation).
    Add,
}

impl<W: ?Sized> Clone for LinearCrossEntropyOptions<'_, W> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<W: ?Sized> Copy for LinearCrossEntropyOptions<'_, W> {}

impl<W: ?Sized> Default for LinearCrossEntropyOptions<'_, W> {
    fn default() -> Self {
        Self {
            loss: CrossEntropyOptions::default(),
            workspace_bytes: None,
            parameter_grads: Accumulate::Overwrite,
        }
    }
}

/// Which gradients a call computes. `NONE` is the loss alone, with no
/// gradient work at all; a frozen head leaves `classifier` and `bias` off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LinearGrads {
    /// `dH`, `[N, D]`.
    pub hidden: bool,
    /// `dW`, `[V, D]`.
    pub classifier: bool,
    /// `db`, `[V]` (only with a bias).
    pub bias: bool,
}

impl LinearGrads {
    /// The loss only.
    pub const NONE: LinearGrads = LinearGrads {
        hidden: false,
        classifier: false,
        bias: false,
    };
    /// Every gradient.
    pub const ALL: LinearGrads = LinearGrads {
        hidden: true,
        classifier: true,
        bias: true,
    };

    /// Whether any gradient is wanted.
    pub fn any(self) -> bool {
        self.hidden || self.classifier || self.bias
    }
}

/// The sizes of a linear (+ cross-entropy) problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    /// Rows `N` (tokens).
    pub rows: usize,
    /// Hidden size `D`.
    pub hidden: usize,
    /// Classes `V` (the whole vocabulary, or the shard's classes for a shard's `W`).
    pub classes: usize,
}

impl LinearShape {
    /// Checks host slices against the shape: `H` `[N, D]`, `W` `[V, D]`, `b` `[V]`.
    pub fn check(&self, hidden: usize, classifier: usize, bias: Option<usize>) -> Result<()> {
        if self.hidden == 0 {
            return Err(Error::InvalidOption {
                name: "hidden size",
                value: 0.0,
                reason: "must be at least 1",
            });
        }
        super::check_matrix("hidden", hidden, self.rows, self.hidden)?;
        super::check_matrix("classifier", classifier, self.classes, self.hidden)?;
        if let Some(len) = bias {
            if len != self.classes {
                return Err(Error::LengthMismatch {
                    what: "bias (one per class)",
                    expected: self.classes,
                    actual: len,
                });
            }
        }
        Ok(())
    }
}

/// A shard `[start, end)` of a vocabulary of `classes` classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// First class of the shard.
    pub start: usize,
    /// One past its last class.
    pub end: usize,
    /// Classes in the whole vocabulary.
    pub classes: usize,
}

impl Shard {
    /// The whole vocabulary as one shard.
    pub fn whole(classes: usize) -> Shard {
        Shard {
            start: 0,
            end: classes,
            classes,
        }
    }

    /// Classes in the shard.
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    /// Whether the shard holds no class.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A shard must be non-empty and inside `[0, classes)`.
    pub fn check(&self) -> Result<()> {
        if self.start >= self.end || self.end > self.classes {
            return Err(Error::InvalidShard {
                start: self.start,
                end: self.end,
                classes: self.classes,
            });
        }
        Ok(())
    }
}

/// One row's record over one vocabulary shard, as the GPU writes it (8 f32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ShardRecord {
    /// `m`: the largest (softcapped) logit of the row in the shard.
    pub max: f32,
    /// `s = Σ exp(z' - m)` over the shard.
    pub sum_exp: f32,
    /// The target's softcapped logit if the target is in the shard, else 0.
    pub target_logit: f32,
    /// `q = Σ_c w[c]·(z'_c - r)` over the shard, `r` = [`ShardRecord::reference`]
    /// (computed only with label smoothing, else 0).
    pub smoothing_sum: f32,
    /// `Σ_c w[c]` over the shard (its class count without weights).
    pub weight_sum: f32,
    /// `r`: the shard's first softcapped logit (0 if not finite).
    pub reference: f32,
    /// 1 if the target is in the shard, else 0.
    pub has_target: f32,
    /// Padding, 0.
    pub pad: f32,
}

/// Result of the fused op on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearCrossEntropyOutput {
    /// `none`: per-row losses; `mean` / `sum`: one value.
    pub loss: Vec<f32>,
    /// The z-loss part of `loss`, same shape.
    pub z_loss: Vec<f32>,
    /// Each row's logsumexp.
    pub lse: Vec<f32>,
    /// `dH`, `[N, D]`, if asked for.
    pub grad_hidden: Option<Vec<f32>>,
    /// `dW`, `[V, D]`, if asked for.
    pub grad_classifier: Option<Vec<f32>>,
    /// `db`, `[V]`, if asked for (and a bias was given).
    pub grad_bias: Option<Vec<f32>>,
}
