//! Every shader, kernel and entry point of the crate, each kernel's interface
//! (bindings, flags, uniform layout) declared once, and the cache that builds
//! each compute pipeline once.
//!
//! # How a shader is composed
//!
//! Each op family is one WGSL file in `shaders/`. A compiled variant
//! ([`Variant`]) is that file with preludes from `shaders/prelude/` in front,
//! concatenated in this order:
//!
//! 1. the storage prelude: for f16 and bf16 their element conversions
//!    (`half_f16.wgsl`, `half_bf16.wgsl`: `half_pair`, `half_bits`), then
//!    `storage_*.wgsl`: `mat_t`, the matrices' array element (16-bit types
//!    are packed into `u32` words, so no variant needs `enable f16`), and
//!    the conversions the kernels' accessors use (`mat_vec`, `mat_lane`,
//!    `mat_index`, `mat_scalar`, `MAT_STORES`),
//!    and the hold prelude (`hold_*.wgsl`, [`Hold`]): how a row read once
//!    is held in registers (`HOLD`, `held_t`, `hold`, `unhold`);
//! 2. the width prelude (`width_*.wgsl`): `VW`, `vec_t`, the horizontal
//!    helpers, and how matrix arrays hold vectors (`GATHER`, `EDGED`,
//!    `MSTRIDE`, `MSTEP`: one vector per element, or four scalars per
//!    vector; edged rows start at their phase in an aligned vector);
//! 3. the reduction prelude (`reduce_*.wgsl`): the entry points' `Ids`,
//!    `thread_of` and the row-segment reductions `seg_sum` / `seg_max` / `seg_stat`;
//! 4. `shaders/common.wgsl`: `Params`, the split-row records and the online
//!    softmax statistics every family shares;
//! 5. the family's own file.
//!
//! The [`Aliasing::Shared`] variant then turns every `var<storage, read>` into
//! `read_write`. Launch shape (`WG`, `TPR`) is set through pipeline-overridable
//! constants, not text. Nothing else edits shader text.
//!
//! `naga_oil` (which does support naga 30) was considered: it would add its
//! own dependencies to every embedder's build, and the browser backend takes
//! WGSL text, so its naga IR output would need `wgsl-out` to go back to text.
//! A dozen fixed preludes, concatenated, do not need a module system.
//!
//! # One declaration per interface
//!
//! [`Kernel::bindings`] states, per entry point, each binding's number, WGSL
//! name and access, from the constants in [`slot`]; host code binds through
//! the same constants. [`flags`] declares the bits and codes the kernels read
//! from `Params`, and [`Params`] the uniform. A unit test reads every shader
//! variant with naga's reflection and holds the WGSL to all three.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Invocations per workgroup for every row kernel.
pub const WORKGROUP_SIZE: u32 = 256;

/// An op family: one WGSL file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// `shaders/softmax.wgsl`: softmax, log-softmax, logsumexp and their backward passes.
    Softmax,
    /// `shaders/cross_entropy.wgsl`: cross-entropy with class-index targets.
    CrossEntropy,
    /// `shaders/binary.wgsl`: element-wise BCE (probabilities, logits) and sigmoid focal loss.
    Binary,
    /// `shaders/copy.wgsl`: the copy kernel used as the bandwidth yardstick.
    Copy,
    /// `shaders/linear.wgsl`: the tiled matrix product (`linear`, and the
    /// products of the fused linear + cross-entropy).
    Linear,
    /// `shaders/linear_cross_entropy.wgsl`: per-row records, their merge and
    /// the logit gradient of the fused linear + cross-entropy.
    LinearCrossEntropy,
}

const COMMON_SOURCE: &str = include_str!("../shaders/common.wgsl");

impl Family {
    /// All families.
    #[cfg(test)]
    pub const ALL: [Family; 6] = [
        Family::Softmax,
        Family::CrossEntropy,
        Family::Binary,
        Family::Copy,
        Family::Linear,
        Family::LinearCrossEntropy,
    ];

    /// File name under `shaders/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Family::Softmax => "softmax.wgsl",
            Family::CrossEntropy => "cross_entropy.wgsl",
            Family::Binary => "binary.wgsl",
            Family::Copy => "copy.wgsl",
            Family::Linear => "linear.wgsl",
            Family::LinearCrossEntropy => "linear_cross_entropy.wgsl",
        }
    }

    /// Whether this family compiles in `variant`. The matrix product and the
    /// fused linear + cross-entropy kernels load scalars through strides and
    /// reduce through workgroup memory; the fused kernels' logits are always
    /// the crate's own f32 workspace.
    pub fn accepts(self, variant: Variant) -> bool {
        // 16-bit row kernels take whole vec4s, edged or gathered rows (packed
        // words are stored whole or not at all), never scalar rows; only the
        // matrix product reads 16-bit scalars from their words.
        if variant.storage.is_half() && variant.width == VecWidth::Scalar && self != Family::Linear
        {
            return false;
        }
        // Gathered and edged rows: the two row-kernel files, whose matrices go through
        // accessors (`load_*`, `store_*`).
        if matches!(variant.width, VecWidth::Vec4Gathered | VecWidth::Vec4Edged)
            && !matches!(self, Family::Softmax | Family::CrossEntropy)
        {
            return false;
        }
        // Packed held rows: 16-bit vec4 rows of the two row-kernel files.
        if variant.hold == Hold::Packed
            && (!variant.storage.is_half()
                || variant.width == VecWidth::Scalar
                || !matches!(self, Family::Softmax | Family::CrossEntropy))
        {
            return false;
        }
        match self {
            Family::Linear => {
                variant.width == VecWidth::Scalar && variant.reduce == Reduce::Workgroup
            }
            Family::LinearCrossEntropy => {
                variant.width == VecWidth::Scalar
                    && variant.reduce == Reduce::Workgroup
                    && variant.storage == Storage::F32
            }
            _ => true,
        }
    }

    /// Every variant this family compiles in.
    #[cfg(test)]
    pub fn variants(self) -> Vec<Variant> {
        Variant::all()
            .into_iter()
            .filter(|&v| self.accepts(v))
            .collect()
    }

    fn body(self) -> &'static str {
        match self {
            Family::Softmax => include_str!("../shaders/softmax.wgsl"),
            Family::CrossEntropy => include_str!("../shaders/cross_entropy.wgsl"),
            Family::Binary => include_str!("../shaders/binary.wgsl"),
            Family::Copy => include_str!("../shaders/copy.wgsl"),
            Family::Linear => include_str!("../shaders/linear.wgsl"),
            Family::LinearCrossEntropy => include_str!("../shaders/linear_cross_entropy.wgsl"),
        }
    }
}

/// How many columns a kernel variant loads at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VecWidth {
    /// One `f32` per load: any row length.
    Scalar,
    /// One `vec4<f32>` per load: rows whose length and offsets are multiples of 4.
    Vec4,
    /// Four columns per vector from four scalar loads, for the softmax family
    /// and the row losses where rows are not whole vec4s (an odd C) and
    /// `Vec4Edged` does not apply: the arithmetic stays four-wide, and the
    /// vectors split a row as the edged variant's do, so both give the
    /// same bits.
    Vec4Gathered,
    /// The buffer's own aligned vec4s for rows that are not whole vec4s,
    /// of at least 8 columns, where every matrix of the kernel starts at
    /// the same offset modulo 4: one 16-byte load or store a vector (8 for
    /// 16-bit storage), the lanes of a row's first and last vectors that
    /// belong to its neighbours masked. Those two vectors are stored through
    /// `edge_vecs` and merged by the `*_edges` pass after the kernel.
    Vec4Edged,
}

impl VecWidth {
    /// Both widths.
    #[cfg(test)]
    pub const ALL: [VecWidth; 4] = [
        VecWidth::Scalar,
        VecWidth::Vec4,
        VecWidth::Vec4Gathered,
        VecWidth::Vec4Edged,
    ];

    /// Scalars per load.
    pub fn lanes(self) -> usize {
        match self {
            VecWidth::Scalar => 1,
            VecWidth::Vec4 | VecWidth::Vec4Gathered | VecWidth::Vec4Edged => 4,
        }
    }

    /// The most vectors a row of `cols` spans: a gathered or edged row may
    /// start mid-vector and so span one more than `cols / 4` rounded up.
    pub fn row_vectors(self, cols: usize) -> u64 {
        match self {
            VecWidth::Vec4Gathered | VecWidth::Vec4Edged => (cols as u64 + 3).div_ceil(4),
            w => (cols as u64).div_ceil(w.lanes() as u64),
        }
    }

    /// Vectors of a held row that may lie past its lanes' registers
    /// (`HELD_SLOTS - HOLD` in `common.wgsl`): a gathered or edged row that
    /// starts late in its first vector spans one more than C / 4 rounded
    /// up, and that last vector is read again on each pass instead of held.
    pub fn unheld_vectors(self) -> u64 {
        match self {
            VecWidth::Vec4Gathered | VecWidth::Vec4Edged => 1,
            VecWidth::Scalar | VecWidth::Vec4 => 0,
        }
    }

    /// Bytes one load of a matrix of `storage` moves at this width (the
    /// traffic plan's `load_bytes`): gathered bf16 loads the word its
    /// element sits in.
    pub fn load_bytes(self, storage: Storage) -> u64 {
        match (self, storage) {
            (VecWidth::Vec4 | VecWidth::Vec4Edged, s) => 4 * s.bytes(),
            (VecWidth::Vec4Gathered, Storage::F16 | Storage::Bf16) => 4,
            (_, s) => s.bytes(),
        }
    }

    /// The widest variant usable for rows of `cols` starting at the given element offsets.
    pub fn for_layout(cols: usize, offsets: &[u64]) -> VecWidth {
        if cols.is_multiple_of(4) && offsets.iter().all(|o| o.is_multiple_of(4)) {
            VecWidth::Vec4
        } else {
            VecWidth::Scalar
        }
    }

    /// `VW`, `vec_t` and the horizontal helpers for this width.
    fn prelude(self) -> &'static str {
        match self {
            VecWidth::Scalar => include_str!("../shaders/prelude/width_scalar.wgsl"),
            VecWidth::Vec4 => include_str!("../shaders/prelude/width_vec4.wgsl"),
            VecWidth::Vec4Gathered => include_str!("../shaders/prelude/width_vec4_gathered.wgsl"),
            VecWidth::Vec4Edged => include_str!("../shaders/prelude/width_vec4_edged.wgsl"),
        }
    }
}

/// How the threads that share a row combine their partial results.
///
/// Every mode reduces in a fixed order, so a given adapter gives bitwise
/// identical results run to run; the modes differ from each other in the last
/// bits (the order of the additions differs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduce {
    /// A tree in workgroup memory, one barrier per level. Works everywhere.
    Workgroup,
    /// `subgroupShuffleXor` butterflies inside one subgroup, no barrier at
    /// all. Needs `Features::SUBGROUP` and `threads_per_row` at most the
    /// adapter's smallest subgroup size.
    Subgroup,
    /// Butterflies inside each subgroup, then one pass through workgroup
    /// memory across the subgroups of a row (two barriers). Needs
    /// `Features::SUBGROUP` and `threads_per_row` a multiple of the adapter's
    /// largest subgroup size.
    SubgroupThenWorkgroup,
}

impl Reduce {
    /// Every mode.
    pub const ALL: [Reduce; 3] = [
        Reduce::Workgroup,
        Reduce::Subgroup,
        Reduce::SubgroupThenWorkgroup,
    ];

    /// Entry-point inputs and the row-segment reductions for this mode.
    fn prelude(self) -> &'static str {
        match self {
            Reduce::Workgroup => include_str!("../shaders/prelude/reduce_workgroup.wgsl"),
            Reduce::Subgroup => include_str!("../shaders/prelude/reduce_subgroup.wgsl"),
            Reduce::SubgroupThenWorkgroup => {
                include_str!("../shaders/prelude/reduce_subgroup_then_workgroup.wgsl")
            }
        }
    }
}

/// Pipeline-overridable launch constants of a row kernel: `WG` invocations
/// per workgroup, `TPR` of them per row, so `WG / TPR` rows per workgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Launch {
    /// Invocations per workgroup (`WG`).
    pub workgroup_size: u32,
    /// Invocations that share one row (`TPR`): a power of two dividing `workgroup_size`.
    pub threads_per_row: u32,
}

impl Launch {
    /// One workgroup of [`WORKGROUP_SIZE`] per row (and the shape of every
    /// kernel that is not a row kernel).
    pub const WHOLE_WORKGROUP: Launch = Launch {
        workgroup_size: WORKGROUP_SIZE,
        threads_per_row: WORKGROUP_SIZE,
    };

    /// Rows each workgroup handles.
    pub fn rows_per_workgroup(self) -> u32 {
        self.workgroup_size / self.threads_per_row.max(1)
    }

    /// Vectors each invocation walks in a row of `vecs` vectors.
    pub fn vectors_per_thread(self, vecs: u64) -> u64 {
        vecs.div_ceil(u64::from(self.threads_per_row.max(1)))
    }
}

/// Element type of the matrix operands (logits, probabilities, gradients) in memory.
/// Arithmetic and accumulation are f32 either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Storage {
    /// 32-bit floats.
    F32,
    /// IEEE 16-bit floats, packed two to a `u32` (needs no feature: no
    /// `enable f16`, no `SHADER_F16`). Stored as bf16 is.
    F16,
    /// bfloat16, packed two to a `u32` (needs no feature). Whole vec4s and
    /// edged rows load and store packed; gathered rows are read in place by
    /// kernels that store no matrix, and staged through f32 (`half_widen` /
    /// `half_narrow`) for kernels that do: two invocations would store the
    /// halves of one word.
    Bf16,
}

impl Storage {
    /// Every storage type.
    #[cfg(test)]
    pub const ALL: [Storage; 3] = [Storage::F32, Storage::F16, Storage::Bf16];

    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            Storage::F32 => 4,
            Storage::F16 | Storage::Bf16 => 2,
        }
    }

    /// Whether elements are 16 bits, packed two to a `u32` word.
    pub fn is_half(self) -> bool {
        matches!(self, Storage::F16 | Storage::Bf16)
    }

    /// The storage prelude for this type at this width: the 16-bit types'
    /// element conversions (`half_pair`, `half_bits`), then `mat_t` and the
    /// accessors the kernels use.
    fn prelude(self, width: VecWidth) -> [&'static str; 2] {
        let element = match self {
            Storage::F32 => "",
            Storage::F16 => include_str!("../shaders/prelude/half_f16.wgsl"),
            Storage::Bf16 => include_str!("../shaders/prelude/half_bf16.wgsl"),
        };
        let layout = match (self, width) {
            (Storage::F32, VecWidth::Vec4Gathered) => {
                include_str!("../shaders/prelude/storage_f32_gathered.wgsl")
            }
            (Storage::F32, _) => include_str!("../shaders/prelude/storage_f32.wgsl"),
            // The matrix product's 16-bit operands (no row kernel is scalar:
            // `Family::accepts`).
            (_, VecWidth::Scalar) => include_str!("../shaders/prelude/storage_half_scalar.wgsl"),
            // Edged rows hold whole vectors, as whole vec4 rows do.
            (_, VecWidth::Vec4 | VecWidth::Vec4Edged) => {
                include_str!("../shaders/prelude/storage_half_vec4.wgsl")
            }
            // Gathered 16-bit rows read packed words by element and store nothing.
            (_, VecWidth::Vec4Gathered) => {
                include_str!("../shaders/prelude/storage_half_gathered.wgsl")
            }
        };
        [element, layout]
    }
}

/// One compiled form of a shader family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    /// Columns per load.
    pub width: VecWidth,
    /// Read-only inputs, or all bindings read-write.
    pub aliasing: Aliasing,
    /// Matrix element type in memory.
    pub storage: Storage,
    /// How the threads of a row reduce.
    pub reduce: Reduce,
    /// How the row kernels hold a row they read once.
    pub hold: Hold,
}

impl Variant {
    /// Every variant.
    #[cfg(test)]
    pub fn all() -> Vec<Variant> {
        let mut out = Vec::new();
        for width in VecWidth::ALL {
            for aliasing in Aliasing::ALL {
                for storage in Storage::ALL {
                    for reduce in Reduce::ALL {
                        for hold in Hold::ALL {
                            out.push(Variant {
                                width,
                                aliasing,
                                storage,
                                reduce,
                                hold,
                            });
                        }
                    }
                }
            }
        }
        out
    }
}

/// Vectors a lane holds of an f32 row read once (`HOLD` in
/// `shaders/prelude/hold_f32.wgsl`): a whole row whose lanes get at most
/// this many is held in registers, which splitting would give up. 32 f32
/// registers a lane: 32768 columns on 1024 lanes.
pub const HELD_VECTORS: u64 = 8;

/// Vectors a lane holds of an f16 or bf16 row read once (`HOLD` in
/// `shaders/prelude/hold_packed.wgsl`): kept packed, two words a vector,
/// so the same 32 registers as [`HELD_VECTORS`] f32 vectors hold 65536
/// columns on 1024 lanes (issue 17: rows of 65536 16-bit columns read once).
pub const HELD_VECTORS_HALF: u64 = 16;

/// How a row kernel holds a row it reads once (`holds_rows` in
/// `shaders/common.wgsl`), in registers: the hold prelude
/// (`shaders/prelude/hold_*.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hold {
    /// Up to 8 f32 vectors a lane (32768 columns on 1024 lanes), which may
    /// keep exp(x - m): every storage type.
    F32,
    /// Up to 16 vectors a lane of f16 or bf16, packed as stored (two words
    /// a vector: the registers of 8 f32 vectors), so rows of 65536 columns
    /// on 1024 lanes are read once; exp(x - m) is recomputed.
    Packed,
}

impl Hold {
    /// Both.
    #[cfg(test)]
    pub const ALL: [Hold; 2] = [Hold::F32, Hold::Packed];

    /// Vectors a lane holds (`HOLD`).
    pub fn vectors(self) -> u64 {
        match self {
            Hold::F32 => HELD_VECTORS,
            Hold::Packed => HELD_VECTORS_HALF,
        }
    }

    fn prelude(self) -> &'static str {
        match self {
            Hold::F32 => include_str!("../shaders/prelude/hold_f32.wgsl"),
            Hold::Packed => include_str!("../shaders/prelude/hold_packed.wgsl"),
        }
    }
}

/// Whether a dispatch binds one buffer both as an input and as an output.
///
/// wgpu forbids a buffer in a read-only and a read-write binding of the same
/// dispatch, even at disjoint ranges. Tensors that share a buffer (the encode
/// API allows it) therefore use a variant whose storage bindings are all
/// `read_write`; separate buffers keep read-only inputs, which compilers can
/// load through read-only caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Aliasing {
    /// Inputs and outputs live in different buffers: inputs are read-only.
    Separate,
    /// Some input shares a buffer with an output: every storage binding is read-write.
    Shared,
}

impl Aliasing {
    /// Both modes.
    #[cfg(test)]
    pub const ALL: [Aliasing; 2] = [Aliasing::Separate, Aliasing::Shared];
}

/// The full WGSL source of one family in one variant, as compiled.
pub fn shader_source(family: Family, variant: Variant) -> String {
    let Variant {
        width,
        aliasing,
        storage,
        reduce,
        hold,
    } = variant;
    let [element, layout] = storage.prelude(width);
    let source = format!(
        "{element}{layout}{}// {} ({width:?}, {aliasing:?}, {storage:?}, {reduce:?}, {hold:?} variant)\n{}\n{}\n{}\n{}",
        hold.prelude(),
        family.file_name(),
        width.prelude(),
        reduce.prelude(),
        COMMON_SOURCE,
        family.body()
    );
    match aliasing {
        Aliasing::Separate => source,
        Aliasing::Shared => source.replace("var<storage, read>", "var<storage, read_write>"),
    }
}

/// One binding of group 0: its number and the name the WGSL gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub index: u32,
    pub name: &'static str,
}

const fn slot_at(index: u32, name: &'static str) -> Slot {
    Slot { index, name }
}

/// Every binding of every family, declared once: [`Kernel::bindings`] and
/// the host code that binds buffers use these, and a unit test holds each
/// shader's `@binding`s to them.
pub(crate) mod slot {
    use super::{slot_at, Slot};

    /// The uniform (`common.wgsl`).
    pub const PARAMS: Slot = slot_at(0, "params");
    /// Split-row records (`common.wgsl`).
    pub const CHUNK_STATS: Slot = slot_at(11, "chunk_stats");
    /// Edged rows' shared vectors (`common.wgsl`).
    pub const EDGE_VECS: Slot = slot_at(12, "edge_vecs");

    /// `softmax.wgsl`.
    pub mod softmax {
        use super::{slot_at, Slot};
        pub const MAT_A: Slot = slot_at(1, "mat_a");
        pub const MAT_B: Slot = slot_at(2, "mat_b");
        pub const ROW_A: Slot = slot_at(3, "row_a");
        pub const ROW_B: Slot = slot_at(4, "row_b");
        pub const MAT_OUT: Slot = slot_at(5, "mat_out");
        pub const ROW_OUT: Slot = slot_at(6, "row_out");
    }

    /// `cross_entropy.wgsl`.
    pub mod cross_entropy {
        use super::{slot_at, Slot};
        pub const LOGITS: Slot = slot_at(1, "logits");
        pub const TARGETS: Slot = slot_at(2, "targets");
        pub const WEIGHTS: Slot = slot_at(3, "weights");
        pub const SCALARS: Slot = slot_at(4, "scalars");
        pub const ROW_OUT: Slot = slot_at(5, "row_out");
        pub const GRAD: Slot = slot_at(6, "grad");
        pub const RESULT: Slot = slot_at(7, "result");
        pub const SOFT_TARGETS: Slot = slot_at(8, "soft_targets");
        pub const LOSS_ROWS: Slot = slot_at(9, "loss_rows");
        pub const LSE_ROWS: Slot = slot_at(10, "lse_rows");
    }

    /// `binary.wgsl`.
    pub mod binary {
        use super::{slot_at, Slot};
        pub const INPUTS: Slot = slot_at(1, "inputs");
        pub const TARGETS: Slot = slot_at(2, "targets");
        pub const WEIGHT: Slot = slot_at(3, "weight");
        pub const POS_WEIGHT: Slot = slot_at(4, "pos_weight");
        pub const LOSS_OUT: Slot = slot_at(5, "loss_out");
        pub const GRAD: Slot = slot_at(6, "grad");
        pub const PARTIALS: Slot = slot_at(7, "partials");
        pub const RESULT: Slot = slot_at(8, "result");
    }

    /// `copy.wgsl`.
    pub mod copy {
        use super::{slot_at, Slot};
        pub const SRC: Slot = slot_at(1, "src");
        pub const DST: Slot = slot_at(2, "dst");
        pub const PACKED: Slot = slot_at(3, "packed");
        pub const WIDE: Slot = slot_at(4, "wide");
    }

    /// `linear.wgsl`.
    pub mod linear {
        use super::{slot_at, Slot};
        pub const LHS: Slot = slot_at(1, "lhs");
        pub const LHS_F32: Slot = slot_at(2, "lhs_f32");
        pub const RHS: Slot = slot_at(3, "rhs");
        pub const BIAS: Slot = slot_at(4, "bias");
        pub const OUT: Slot = slot_at(5, "out");
    }

    /// `linear_cross_entropy.wgsl`.
    pub mod linear_cross_entropy {
        use super::{slot_at, Slot};
        pub const LOGITS: Slot = slot_at(1, "logits");
        pub const TARGETS: Slot = slot_at(2, "targets");
        pub const WEIGHTS: Slot = slot_at(3, "weights");
        pub const SCALARS: Slot = slot_at(4, "scalars");
        pub const RECORDS: Slot = slot_at(5, "records");
        pub const ROW_OUT: Slot = slot_at(6, "row_out");
        pub const LSE_OUT: Slot = slot_at(7, "lse_out");
        pub const LSE_IN: Slot = slot_at(8, "lse_in");
        pub const BIAS_GRAD: Slot = slot_at(9, "bias_grad");
    }
}

/// The bits of `Params::flags` and the codes of `Params::reduction` and the
/// binary op, declared once; a unit test holds each shader's `const`s of the
/// same names to these values.
pub(crate) mod flags {
    /// `Params::reduction` for [`crate::Reduction::None`].
    pub const REDUCTION_NONE: u32 = 0;
    /// ... for [`crate::Reduction::Mean`] (`REDUCTION_MEAN` in the WGSL).
    pub const REDUCTION_MEAN: u32 = 1;
    /// ... for [`crate::Reduction::Sum`].
    pub const REDUCTION_SUM: u32 = 2;

    impl crate::loss::Reduction {
        /// The code the kernels read from `Params::reduction`.
        pub(crate) fn code(self) -> u32 {
            match self {
                crate::loss::Reduction::None => REDUCTION_NONE,
                crate::loss::Reduction::Mean => REDUCTION_MEAN,
                crate::loss::Reduction::Sum => REDUCTION_SUM,
            }
        }

        pub(crate) fn from_code(code: u32) -> Self {
            match code {
                REDUCTION_NONE => crate::loss::Reduction::None,
                REDUCTION_SUM => crate::loss::Reduction::Sum,
                _ => crate::loss::Reduction::Mean,
            }
        }
    }

    /// `cross_entropy.wgsl`.
    pub mod cross_entropy {
        pub const FLAG_WEIGHTS: u32 = 1;
        pub const FLAG_SOFTCAP: u32 = 2;
        pub const FLAG_MEAN_BY_COUNT: u32 = 4;
        pub const FLAG_EXPORT_LOSS: u32 = 8;
        pub const FLAG_EXPORT_LSE: u32 = 16;
        /// Every constant of the file, by its WGSL name.
        #[cfg(test)]
        pub const ALL: &[(&str, u32)] = &[
            ("FLAG_WEIGHTS", FLAG_WEIGHTS),
            ("FLAG_SOFTCAP", FLAG_SOFTCAP),
            ("FLAG_MEAN_BY_COUNT", FLAG_MEAN_BY_COUNT),
            ("FLAG_EXPORT_LOSS", FLAG_EXPORT_LOSS),
            ("FLAG_EXPORT_LSE", FLAG_EXPORT_LSE),
            ("REDUCTION_MEAN", super::REDUCTION_MEAN),
        ];
    }

    /// `copy.wgsl`.
    pub mod copy {
        /// `half_widen` / `half_narrow`: the packed words are f16, not bf16.
        pub const FLAG_F16: u32 = 1;
        /// Every constant of the file, by its WGSL name.
        #[cfg(test)]
        pub const ALL: &[(&str, u32)] = &[("FLAG_F16", FLAG_F16)];
    }

    /// `linear.wgsl`.
    pub mod linear {
        pub const FLAG_LHS_F32: u32 = 1;
        pub const FLAG_BIAS: u32 = 2;
        pub const FLAG_ACCUMULATE: u32 = 4;
        /// Every constant of the file, by its WGSL name.
        #[cfg(test)]
        pub const ALL: &[(&str, u32)] = &[
            ("FLAG_LHS_F32", FLAG_LHS_F32),
            ("FLAG_BIAS", FLAG_BIAS),
            ("FLAG_ACCUMULATE", FLAG_ACCUMULATE),
        ];
    }

    /// `linear_cross_entropy.wgsl`.
    pub mod linear_cross_entropy {
        pub const FLAG_WEIGHTS: u32 = 1;
        pub const FLAG_SOFTCAP: u32 = 2;
        pub const FLAG_ACCUMULATE: u32 = 4;
        /// Every constant of the file, by its WGSL name.
        #[cfg(test)]
        pub const ALL: &[(&str, u32)] = &[
            ("FLAG_WEIGHTS", FLAG_WEIGHTS),
            ("FLAG_SOFTCAP", FLAG_SOFTCAP),
            ("FLAG_ACCUMULATE", FLAG_ACCUMULATE),
            ("REDUCTION_MEAN", super::REDUCTION_MEAN),
        ];
    }

    /// `common.wgsl`: the option bits of a pipeline's `SPEC_KNOWN` and
    /// `SPEC_ON` overrides ([`super::Spec`]).
    pub mod spec {
        pub const SPEC_WEIGHTS: u32 = 1;
        pub const SPEC_SOFTCAP: u32 = 2;
        pub const SPEC_SMOOTHING: u32 = 4;
        pub const SPEC_Z_LOSS: u32 = 8;
        /// The binary losses' `params.gamma != 0` (sigmoid focal).
        pub const SPEC_GAMMA: u32 = 16;
        /// The binary losses' flags sit this far up.
        pub const SPEC_BINARY_SHIFT: u32 = 8;
        /// Row kernels with a held path: known off where the host's plan
        /// streams the rows (`Spec::streamed_unless`), so the held path is compiled out.
        pub const SPEC_HELD: u32 = 32;
        /// Every constant, by its WGSL name.
        #[cfg(test)]
        pub const ALL: &[(&str, u32)] = &[
            ("SPEC_WEIGHTS", SPEC_WEIGHTS),
            ("SPEC_SOFTCAP", SPEC_SOFTCAP),
            ("SPEC_SMOOTHING", SPEC_SMOOTHING),
            ("SPEC_Z_LOSS", SPEC_Z_LOSS),
            ("SPEC_GAMMA", SPEC_GAMMA),
            ("SPEC_BINARY_SHIFT", SPEC_BINARY_SHIFT),
            ("SPEC_HELD", SPEC_HELD),
        ];
    }

    /// `binary.wgsl`.
    pub mod binary {
        pub const FLAG_WEIGHT_COLS: u32 = 1;
        pub const FLAG_WEIGHT_FULL: u32 = 2;
        pub const FLAG_POS_WEIGHT: u32 = 4;
        pub const FLAG_WRITE_LOSS: u32 = 8;
        pub const FLAG_WRITE_GRAD: u32 = 16;
        pub const FLAG_ALPHA: u32 = 32;
        /// Every flag above.
        pub const ALL_FLAGS: u32 = 63;
        /// Every constant of the file, by its WGSL name.
        #[cfg(test)]
        pub const ALL: &[(&str, u32)] = &[
            ("FLAG_WEIGHT_COLS", FLAG_WEIGHT_COLS),
            ("FLAG_WEIGHT_FULL", FLAG_WEIGHT_FULL),
            ("FLAG_POS_WEIGHT", FLAG_POS_WEIGHT),
            ("FLAG_WRITE_LOSS", FLAG_WRITE_LOSS),
            ("FLAG_WRITE_GRAD", FLAG_WRITE_GRAD),
            ("FLAG_ALPHA", FLAG_ALPHA),
            ("REDUCTION_MEAN", super::REDUCTION_MEAN),
        ];
    }
}

/// Declares the uniform struct and the list of its fields with their byte
/// offsets, from one field list, so the layout test compares the WGSL
/// `struct Params` with exactly what the host writes.
macro_rules! uniform_struct {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
        pub(crate) struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }
        impl $name {
            /// `(name, byte offset)` of every field, in order.
            #[cfg(test)]
            pub(crate) const FIELDS: &'static [(&'static str, usize)] =
                &[$((stringify!($field), std::mem::offset_of!($name, $field)),)*];
        }
    };
}

uniform_struct! {
    /// The uniform every kernel reads (`struct Params` in `shaders/common.wgsl`).
    Params {
        rows: u32,
        cols: u32,
        base_a: u32,
        base_b: u32,
        base_out: u32,
        row_base: u32,
        ignore_index: i32,
        flags: u32,
        total_rows: u32,
        smoothing: f32,
        z_loss: f32,
        softcap: f32,
        grad_scale: f32,
        reduction: u32,
        base_c: u32,
        base_d: u32,
        alpha: f32,
        gamma: f32,
        denominator: f32,
        /// Chunks per row of a split row kernel (0 or 1: whole rows).
        splits: u32,
        /// Matrix products: the summed dimension `k`.
        inner: u32,
        /// Matrix products: element strides of `A(m, k)` along `m` and `k`,
        /// of `B(k, n)` along `k` and `n`, and of the output along `m`.
        lhs_row: u32,
        lhs_col: u32,
        rhs_row: u32,
        rhs_col: u32,
        out_row: u32,
        /// Fused linear + cross-entropy: the shard's first class, the class
        /// count `C` of the whole vocabulary, and the shards a merge folds.
        shard_start: u32,
        classes: u32,
        shards: u32,
        /// Blocked reductions: items each lane of a `*_partial` pass walks
        /// (`ops::fold_plan`).
        fold_span: u32,
    }
}

/// How a kernel uses a binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    Uniform,
    Read,
    ReadWrite,
}

use Access::{Read, ReadWrite, Uniform};

/// Every compute kernel: a family and an entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `softmax_forward`
    SoftmaxForward,
    /// `log_softmax_forward`
    LogSoftmaxForward,
    /// `logsumexp_forward`
    LogsumexpForward,
    /// `softmax_backward`
    SoftmaxBackward,
    /// `log_softmax_backward`
    LogSoftmaxBackward,
    /// `logsumexp_backward`
    LogsumexpBackward,
    /// `ce_denominator_partial`: the denominator's sums over one block of rows
    /// and classes.
    CrossEntropyDenominatorPartial,
    /// `ce_denominator`: the blocks folded into the `mean` denominator,
    /// kept-row count and weight total.
    CrossEntropyDenominator,
    /// `ce_loss`: row losses only, logits read once.
    CrossEntropyLoss,
    /// `ce_loss_grad`: row losses and the gradient.
    CrossEntropyLossGrad,
    /// `ce_loss_grad_in_place`: row losses, gradient written over the logits.
    CrossEntropyLossGradInPlace,
    /// `ce_reduce_partial`: compensated sums of one block of row losses.
    CrossEntropyReducePartial,
    /// `ce_reduce`: the blocks folded into `mean` or `sum`.
    CrossEntropyReduce,
    /// `ce_soft_loss`: row losses with probability targets.
    CrossEntropySoftLoss,
    /// `ce_soft_loss_grad`: row losses and gradient with probability targets.
    CrossEntropySoftLossGrad,
    /// `focal_loss`: multiclass (softmax) focal loss per row.
    FocalLoss,
    /// `focal_loss_grad`: multiclass focal loss per row and its gradient.
    FocalLossGrad,
    /// `bce_prob_elements`: binary cross-entropy on probabilities.
    BceProbElements,
    /// `bce_logits_elements`: binary cross-entropy with logits.
    BceLogitsElements,
    /// `sigmoid_focal_elements`: torchvision's sigmoid focal loss.
    SigmoidFocalElements,
    /// `binary_reduce_partial`: compensated sums of one block of the
    /// element-wise kernels' partial sums.
    BinaryReducePartial,
    /// `binary_reduce`: the blocks folded into `mean` or `sum`.
    BinaryReduce,
    /// `ce_export`: per-row losses and logsumexp into a caller's buffers.
    CrossEntropyExport,
    /// `copy`: the bandwidth yardstick.
    Copy,
    /// `matmul`: the tiled matrix product (GPUs: 64x64 tiles, 8x8 per invocation).
    Matmul,
    /// `matmul_wide`: the same product for CPU adapters (128x128 tiles, 16x16 per invocation).
    MatmulWide,
    /// `matmul_wide_short`: `matmul_wide` with 64x128 tiles, for outputs of 64 to 127 rows.
    MatmulWideShort,
    /// `lce_records`: per-row records of a shard's logits chunk.
    LinearCrossEntropyRecords,
    /// `lce_merge`: per-row records of every shard into row losses and lse.
    LinearCrossEntropyMerge,
    /// `lce_grad`: logits chunk into their gradient, in place.
    LinearCrossEntropyGrad,
    /// `lce_bias_grad`: column sums of a logit-gradient chunk (the bias gradient).
    LinearCrossEntropyBiasGrad,
    /// `softmax_partial`: per-chunk statistics of split rows (softmax,
    /// log-softmax and logsumexp forward).
    SoftmaxPartial,
    /// `ce_partial`: per-chunk statistics of split rows (cross-entropy with
    /// class-index targets, and focal loss).
    CrossEntropyPartial,
    /// `ce_soft_partial`: per-chunk statistics of split rows with
    /// probability targets.
    CrossEntropySoftPartial,
    /// `softmax_backward_partial`: per-chunk sums of `y·dy` of split rows.
    SoftmaxBackwardPartial,
    /// `log_softmax_backward_partial`: per-chunk sums of `dy` of split rows.
    LogSoftmaxBackwardPartial,
    /// `half_widen`: an f16 or bf16 window into f32 scratch (16-bit rows
    /// that are neither whole vec4s nor edged).
    HalfWiden,
    /// `half_narrow`: f32 values into an f16 or bf16 window, rounded to
    /// nearest even (staged rows, and the matrix product's 16-bit results).
    HalfNarrow,
    /// `softmax_edges`: edged rows' shared vectors into the softmax family's output.
    SoftmaxEdges,
    /// `ce_edges`: edged rows' shared vectors into the gradient.
    CrossEntropyEdges,
    /// `ce_edges_in_place`: edged rows' shared vectors into the logits (in place).
    CrossEntropyEdgesInPlace,
}

impl Kernel {
    /// Every kernel.
    #[cfg(test)]
    pub const ALL: [Kernel; 41] = [
        Kernel::SoftmaxForward,
        Kernel::LogSoftmaxForward,
        Kernel::LogsumexpForward,
        Kernel::SoftmaxBackward,
        Kernel::LogSoftmaxBackward,
        Kernel::LogsumexpBackward,
        Kernel::CrossEntropyDenominatorPartial,
        Kernel::CrossEntropyDenominator,
        Kernel::CrossEntropyLoss,
        Kernel::CrossEntropyLossGrad,
        Kernel::CrossEntropyLossGradInPlace,
        Kernel::CrossEntropyReducePartial,
        Kernel::CrossEntropyReduce,
        Kernel::CrossEntropySoftLoss,
        Kernel::CrossEntropySoftLossGrad,
        Kernel::FocalLoss,
        Kernel::FocalLossGrad,
        Kernel::BceProbElements,
        Kernel::BceLogitsElements,
        Kernel::SigmoidFocalElements,
        Kernel::BinaryReducePartial,
        Kernel::BinaryReduce,
        Kernel::CrossEntropyExport,
        Kernel::Copy,
        Kernel::SoftmaxPartial,
        Kernel::CrossEntropyPartial,
        Kernel::CrossEntropySoftPartial,
        Kernel::SoftmaxBackwardPartial,
        Kernel::LogSoftmaxBackwardPartial,
        Kernel::Matmul,
        Kernel::MatmulWide,
        Kernel::MatmulWideShort,
        Kernel::LinearCrossEntropyRecords,
        Kernel::LinearCrossEntropyMerge,
        Kernel::LinearCrossEntropyGrad,
        Kernel::LinearCrossEntropyBiasGrad,
        Kernel::HalfWiden,
        Kernel::HalfNarrow,
        Kernel::SoftmaxEdges,
        Kernel::CrossEntropyEdges,
        Kernel::CrossEntropyEdgesInPlace,
    ];

    /// The shader file this kernel lives in.
    pub fn family(self) -> Family {
        use Kernel::*;
        match self {
            SoftmaxForward
            | LogSoftmaxForward
            | LogsumexpForward
            | SoftmaxBackward
            | LogSoftmaxBackward
            | LogsumexpBackward
            | SoftmaxPartial
            | SoftmaxBackwardPartial
            | LogSoftmaxBackwardPartial
            | SoftmaxEdges => Family::Softmax,
            CrossEntropyDenominatorPartial
            | CrossEntropyDenominator
            | CrossEntropyLoss
            | CrossEntropyLossGrad
            | CrossEntropyLossGradInPlace
            | CrossEntropyReducePartial
            | CrossEntropyReduce
            | CrossEntropySoftLoss
            | CrossEntropySoftLossGrad
            | FocalLoss
            | FocalLossGrad
            | CrossEntropyExport
            | CrossEntropyPartial
            | CrossEntropySoftPartial
            | CrossEntropyEdges
            | CrossEntropyEdgesInPlace => Family::CrossEntropy,
            BceProbElements | BceLogitsElements | SigmoidFocalElements | BinaryReducePartial
            | BinaryReduce => Family::Binary,
            Copy | HalfWiden | HalfNarrow => Family::Copy,
            Matmul | MatmulWide | MatmulWideShort => Family::Linear,
            LinearCrossEntropyRecords
            | LinearCrossEntropyMerge
            | LinearCrossEntropyGrad
            | LinearCrossEntropyBiasGrad => Family::LinearCrossEntropy,
        }
    }

    /// WGSL entry point name.
    pub fn entry_point(self) -> &'static str {
        use Kernel::*;
        match self {
            SoftmaxForward => "softmax_forward",
            LogSoftmaxForward => "log_softmax_forward",
            LogsumexpForward => "logsumexp_forward",
            SoftmaxBackward => "softmax_backward",
            LogSoftmaxBackward => "log_softmax_backward",
            LogsumexpBackward => "logsumexp_backward",
            CrossEntropyDenominatorPartial => "ce_denominator_partial",
            CrossEntropyDenominator => "ce_denominator",
            CrossEntropyLoss => "ce_loss",
            CrossEntropyLossGrad => "ce_loss_grad",
            CrossEntropyLossGradInPlace => "ce_loss_grad_in_place",
            CrossEntropyReducePartial => "ce_reduce_partial",
            CrossEntropyReduce => "ce_reduce",
            CrossEntropySoftLoss => "ce_soft_loss",
            CrossEntropySoftLossGrad => "ce_soft_loss_grad",
            FocalLoss => "focal_loss",
            FocalLossGrad => "focal_loss_grad",
            BceProbElements => "bce_prob_elements",
            BceLogitsElements => "bce_logits_elements",
            SigmoidFocalElements => "sigmoid_focal_elements",
            BinaryReducePartial => "binary_reduce_partial",
            BinaryReduce => "binary_reduce",
            CrossEntropyExport => "ce_export",
            Copy => "copy",
            HalfWiden => "half_widen",
            HalfNarrow => "half_narrow",
            SoftmaxPartial => "softmax_partial",
            CrossEntropyPartial => "ce_partial",
            CrossEntropySoftPartial => "ce_soft_partial",
            SoftmaxBackwardPartial => "softmax_backward_partial",
            LogSoftmaxBackwardPartial => "log_softmax_backward_partial",
            Matmul => "matmul",
            MatmulWide => "matmul_wide",
            MatmulWideShort => "matmul_wide_short",
            LinearCrossEntropyRecords => "lce_records",
            LinearCrossEntropyMerge => "lce_merge",
            LinearCrossEntropyGrad => "lce_grad",
            LinearCrossEntropyBiasGrad => "lce_bias_grad",
            SoftmaxEdges => "softmax_edges",
            CrossEntropyEdges => "ce_edges",
            CrossEntropyEdgesInPlace => "ce_edges_in_place",
        }
    }

    /// The passes before this kernel when rows are split across workgroups
    /// (empty for kernels that always take whole rows): the partial pass of
    /// each chunk's statistics, and for the in-place gradient `ce_loss`,
    /// which writes each row's results while the logits are still whole
    /// (the in-place kernel's chunks overwrite the logits that a row's loss
    /// reads, its target's and first, from other workgroups).
    pub fn split_passes(self) -> &'static [Kernel] {
        use Kernel::*;
        match self {
            SoftmaxForward | LogSoftmaxForward | LogsumexpForward => &[SoftmaxPartial],
            CrossEntropyLoss | CrossEntropyLossGrad => &[CrossEntropyPartial],
            CrossEntropyLossGradInPlace => &[CrossEntropyPartial, CrossEntropyLoss],
            FocalLoss | FocalLossGrad => &[CrossEntropyPartial],
            CrossEntropySoftLoss | CrossEntropySoftLossGrad => &[CrossEntropySoftPartial],
            SoftmaxBackward => &[SoftmaxBackwardPartial],
            LogSoftmaxBackward => &[LogSoftmaxBackwardPartial],
            _ => &[],
        }
    }

    /// Whether rows of this kernel may be split into chunks over
    /// workgroups: those with passes before them, and `logsumexp_backward`,
    /// whose elements need nothing of the rest of their row.
    pub fn splits_rows(self) -> bool {
        !self.split_passes().is_empty() || self == Kernel::LogsumexpBackward
    }

    /// Whether the kernel's entry point has a held path (`holds_rows_of`
    /// in `common.wgsl`): rows read once from registers where they fit.
    pub fn has_held_path(self) -> bool {
        use Kernel::*;
        matches!(
            self,
            SoftmaxForward
                | LogSoftmaxForward
                | SoftmaxBackward
                | LogSoftmaxBackward
                | CrossEntropyLossGrad
                | CrossEntropyLossGradInPlace
                | CrossEntropySoftLossGrad
                | FocalLossGrad
        )
    }

    /// Matrices a row kernel holds in registers on its held path, which
    /// share a lane's `HOLD` vectors: softmax backward holds y and dy
    /// (`HOLD_PAIR` each, `holds_rows_of` in `softmax.wgsl`), the others
    /// one matrix. Its launch gives each row lanes enough for that.
    pub fn held_matrices(self) -> u64 {
        if self == Kernel::SoftmaxBackward {
            2
        } else {
            1
        }
    }

    /// The pass that stores edged rows' shared vectors (`edge_stores` in
    /// `common.wgsl`) into the matrix at `slot`, for a kernel that writes it.
    pub(crate) fn edges_into(slot: Slot) -> Option<Kernel> {
        if slot == slot::softmax::MAT_OUT {
            Some(Kernel::SoftmaxEdges)
        } else if slot == slot::cross_entropy::GRAD {
            Some(Kernel::CrossEntropyEdges)
        } else if slot == slot::cross_entropy::LOGITS {
            Some(Kernel::CrossEntropyEdgesInPlace)
        } else {
            None
        }
    }

    /// Whether `slot` is an input (bound read-only unless aliasing).
    pub(crate) fn reads(self, slot: Slot) -> bool {
        self.bindings()
            .iter()
            .any(|&(b, access)| b == slot && access == Access::Read)
    }

    /// Whether this entry point stores into `slot`. Cross-entropy's logits
    /// are declared read-write for the in-place kernel, but only it writes them.
    pub(crate) fn writes(self, slot: Slot) -> bool {
        self.bindings()
            .iter()
            .any(|&(b, access)| b == slot && access == Access::ReadWrite)
            && (slot != slot::cross_entropy::LOGITS
                || matches!(
                    self,
                    Kernel::CrossEntropyLossGradInPlace | Kernel::CrossEntropyEdgesInPlace
                ))
    }

    /// Whether `slot` is a matrix this entry point (and its split passes)
    /// only stores into, so that nothing in it needs loading first.
    pub(crate) fn stores_only(self, slot: Slot) -> bool {
        self.writes(slot) && (slot == slot::cross_entropy::GRAD || slot == slot::softmax::MAT_OUT)
    }

    /// How many times one dispatch reads each element of the matrix bound at
    /// `slot`, as the shader's loops do (the traffic plan, `src/plan.rs`).
    /// `held`: rows whose lanes hold their share in registers
    /// (`holds_rows()` in `common.wgsl`), read once by the kernels that have
    /// that path (a held row's vector past the registers, `unheld_vec`, is
    /// read twice more and not counted: at most 32 bytes a row); `split`:
    /// rows in chunks, whose statistics come from the partial pass's
    /// records, so the pass reads the row only to write.
    pub(crate) fn matrix_reads(self, slot: Slot, held: bool, split: bool) -> u64 {
        use Kernel::*;
        if self.stores_only(slot) {
            return 0;
        }
        // Statistics, then the output, from memory; once from registers or records.
        let stats_then_output = if held || split { 1 } else { 2 };
        match self {
            SoftmaxForward
            | LogSoftmaxForward
            | CrossEntropyLossGrad
            | CrossEntropyLossGradInPlace
            | FocalLossGrad
            | SoftmaxBackward => stats_then_output,
            // Probability targets hold the logits, not the targets;
            // log-softmax backward holds dy for its sum, and reads y once.
            CrossEntropySoftLossGrad if slot == slot::cross_entropy::LOGITS => stats_then_output,
            LogSoftmaxBackward if slot == slot::softmax::MAT_B => stats_then_output,
            // No held path: a row's sums, then its output.
            CrossEntropySoftLossGrad => 2 - u64::from(split),
            // Loss or statistic only: a split row's come from the records.
            LogsumexpForward | CrossEntropyLoss | CrossEntropySoftLoss | FocalLoss => {
                1 - u64::from(split)
            }
            _ => 1,
        }
    }

    /// Bytes per row `(read, written)` of a per-row binding of a row kernel
    /// (the traffic plan): targets and per-row inputs in, row results out.
    pub(crate) fn row_bytes(self, slot: Slot) -> (u64, u64) {
        use slot::{cross_entropy as ce, softmax as sm};
        if slot == ce::TARGETS || slot == sm::ROW_A || slot == sm::ROW_B {
            (4, 0)
        } else if slot == ce::ROW_OUT {
            (0, 16)
        } else if slot == sm::ROW_OUT {
            (0, 4)
        } else {
            (0, 0)
        }
    }

    /// The bindings of group 0 this entry point uses, as the shader declares them.
    pub(crate) fn bindings(self) -> &'static [(Slot, Access)] {
        use slot::{
            binary as bin, copy, cross_entropy as ce, linear as mm, linear_cross_entropy as lce,
            softmax as sm, CHUNK_STATS, EDGE_VECS, PARAMS,
        };
        use Kernel::*;
        match self {
            SoftmaxEdges => &[
                (PARAMS, Uniform),
                (sm::MAT_OUT, ReadWrite),
                (EDGE_VECS, ReadWrite),
            ],
            CrossEntropyEdges => &[
                (PARAMS, Uniform),
                (ce::GRAD, ReadWrite),
                (EDGE_VECS, ReadWrite),
            ],
            CrossEntropyEdgesInPlace => &[
                (PARAMS, Uniform),
                (ce::LOGITS, ReadWrite),
                (EDGE_VECS, ReadWrite),
            ],
            SoftmaxForward | LogSoftmaxForward => &[
                (PARAMS, Uniform),
                (sm::MAT_A, Read),
                (sm::MAT_OUT, ReadWrite),
                (EDGE_VECS, ReadWrite),
                (CHUNK_STATS, ReadWrite),
            ],
            LogsumexpForward => &[
                (PARAMS, Uniform),
                (sm::MAT_A, Read),
                (sm::ROW_OUT, ReadWrite),
                (CHUNK_STATS, ReadWrite),
            ],
            SoftmaxPartial => &[
                (PARAMS, Uniform),
                (sm::MAT_A, Read),
                (CHUNK_STATS, ReadWrite),
            ],
            SoftmaxBackward | LogSoftmaxBackward => &[
                (PARAMS, Uniform),
                (sm::MAT_A, Read),
                (sm::MAT_B, Read),
                (sm::MAT_OUT, ReadWrite),
                (EDGE_VECS, ReadWrite),
                (CHUNK_STATS, ReadWrite),
            ],
            SoftmaxBackwardPartial => &[
                (PARAMS, Uniform),
                (sm::MAT_A, Read),
                (sm::MAT_B, Read),
                (CHUNK_STATS, ReadWrite),
            ],
            LogSoftmaxBackwardPartial => &[
                (PARAMS, Uniform),
                (sm::MAT_B, Read),
                (CHUNK_STATS, ReadWrite),
            ],
            LogsumexpBackward => &[
                (PARAMS, Uniform),
                (sm::MAT_A, Read),
                (sm::ROW_A, Read),
                (sm::ROW_B, Read),
                (sm::MAT_OUT, ReadWrite),
                (EDGE_VECS, ReadWrite),
            ],
            // A partial pass that is its reduction's only block finishes it
            // (`single_block`): it binds what the fold writes.
            CrossEntropyDenominatorPartial => &[
                (PARAMS, Uniform),
                (ce::TARGETS, Read),
                (ce::WEIGHTS, Read),
                (ce::SCALARS, ReadWrite),
                (CHUNK_STATS, ReadWrite),
            ],
            CrossEntropyDenominator => &[
                (PARAMS, Uniform),
                (ce::SCALARS, ReadWrite),
                (CHUNK_STATS, ReadWrite),
            ],
            CrossEntropySoftLoss => &[
                (PARAMS, Uniform),
                (ce::LOGITS, ReadWrite),
                (ce::WEIGHTS, Read),
                (ce::ROW_OUT, ReadWrite),
                (ce::SOFT_TARGETS, Read),
                (CHUNK_STATS, ReadWrite),
            ],
            CrossEntropySoftPartial => &[
                (PARAMS, Uniform),
                (ce::LOGITS, ReadWrite),
                (ce::WEIGHTS, Read),
                (ce::SOFT_TARGETS, Read),
                (CHUNK_STATS, ReadWrite),
            ],
            CrossEntropySoftLossGrad => &[
                (PARAMS, Uniform),
                (ce::LOGITS, ReadWrite),
                (ce::WEIGHTS, Read),
                (ce::SCALARS, ReadWrite),
                (ce::ROW_OUT, ReadWrite),
                (ce::GRAD, ReadWrite),
                (EDGE_VECS, ReadWrite),
                (ce::SOFT_TARGETS, Read),
                (CHUNK_STATS, ReadWrite),
            ],
            BceProbElements | BceLogitsElements | SigmoidFocalElements => &[
                (PARAMS, Uniform),
                (bin::INPUTS, Read),
                (bin::TARGETS, Read),
                (bin::WEIGHT, Read),
                (bin::POS_WEIGHT, Read),
                (bin::LOSS_OUT, ReadWrite),
                (bin::GRAD, ReadWrite),
                (bin::PARTIALS, ReadWrite),
            ],
            BinaryReducePartial => &[
                (PARAMS, Uniform),
                (bin::PARTIALS, ReadWrite),
                (bin::RESULT, ReadWrite),
                (CHUNK_STATS, ReadWrite),
            ],
            BinaryReduce => &[
                (PARAMS, Uniform),
                (bin::RESULT, ReadWrite),
                (CHUNK_STATS, ReadWrite),
            ],
            CrossEntropyExport => &[
                (PARAMS, Uniform),
                (ce::ROW_OUT, ReadWrite),
                (ce::LOSS_ROWS, ReadWrite),
                (ce::LSE_ROWS, ReadWrite),
            ],
            CrossEntropyLoss => &[
                (PARAMS, Uniform),
                (ce::LOGITS, ReadWrite),
                (ce::TARGETS, Read),
                (ce::WEIGHTS, Read),
                (ce::SCALARS, ReadWrite),
                (ce::ROW_OUT, ReadWrite),
                (CHUNK_STATS, ReadWrite),
            ],
            CrossEntropyLossGradInPlace => &[
                (PARAMS, Uniform),
                (ce::LOGITS, ReadWrite),
                (ce::TARGETS, Read),
                (ce::WEIGHTS, Read),
                (ce::SCALARS, ReadWrite),
                (ce::ROW_OUT, ReadWrite),
                (CHUNK_STATS, ReadWrite),
                (EDGE_VECS, ReadWrite),
            ],
            FocalLoss => &[
                (PARAMS, Uniform),
                (ce::LOGITS, ReadWrite),
                (ce::TARGETS, Read),
                (ce::WEIGHTS, Read),
                (ce::ROW_OUT, ReadWrite),
                (CHUNK_STATS, ReadWrite),
            ],
            CrossEntropyPartial => &[
                (PARAMS, Uniform),
                (ce::LOGITS, ReadWrite),
                (ce::WEIGHTS, Read),
                (CHUNK_STATS, ReadWrite),
            ],
            CrossEntropyLossGrad => &[
                (PARAMS, Uniform),
                (ce::LOGITS, ReadWrite),
                (ce::TARGETS, Read),
                (ce::WEIGHTS, Read),
                (ce::SCALARS, ReadWrite),
                (ce::ROW_OUT, ReadWrite),
                (ce::GRAD, ReadWrite),
                (EDGE_VECS, ReadWrite),
                (CHUNK_STATS, ReadWrite),
            ],
            FocalLossGrad => &[
                (PARAMS, Uniform),
                (ce::LOGITS, ReadWrite),
                (ce::TARGETS, Read),
                (ce::WEIGHTS, Read),
                (ce::SCALARS, ReadWrite),
                (ce::ROW_OUT, ReadWrite),
                (ce::GRAD, ReadWrite),
                (EDGE_VECS, ReadWrite),
                (CHUNK_STATS, ReadWrite),
            ],
            CrossEntropyReducePartial => &[
                (PARAMS, Uniform),
                (ce::ROW_OUT, ReadWrite),
                (ce::SCALARS, ReadWrite),
                (ce::RESULT, ReadWrite),
                (CHUNK_STATS, ReadWrite),
            ],
            CrossEntropyReduce => &[
                (PARAMS, Uniform),
                (ce::SCALARS, ReadWrite),
                (ce::RESULT, ReadWrite),
                (CHUNK_STATS, ReadWrite),
            ],
            Copy => &[(PARAMS, Uniform), (copy::SRC, Read), (copy::DST, ReadWrite)],
            HalfWiden | HalfNarrow => &[
                (PARAMS, Uniform),
                (copy::PACKED, ReadWrite),
                (copy::WIDE, ReadWrite),
            ],
            Matmul | MatmulWide | MatmulWideShort => &[
                (PARAMS, Uniform),
                (mm::LHS, Read),
                (mm::LHS_F32, Read),
                (mm::RHS, Read),
                (mm::BIAS, Read),
                (mm::OUT, ReadWrite),
            ],
            LinearCrossEntropyRecords => &[
                (PARAMS, Uniform),
                (lce::LOGITS, ReadWrite),
                (lce::TARGETS, Read),
                (lce::WEIGHTS, Read),
                (lce::RECORDS, ReadWrite),
            ],
            LinearCrossEntropyMerge => &[
                (PARAMS, Uniform),
                (lce::TARGETS, Read),
                (lce::WEIGHTS, Read),
                (lce::RECORDS, ReadWrite),
                (lce::ROW_OUT, ReadWrite),
                (lce::LSE_OUT, ReadWrite),
            ],
            LinearCrossEntropyGrad => &[
                (PARAMS, Uniform),
                (lce::LOGITS, ReadWrite),
                (lce::TARGETS, Read),
                (lce::WEIGHTS, Read),
                (lce::SCALARS, Read),
                (lce::LSE_IN, Read),
            ],
            LinearCrossEntropyBiasGrad => &[
                (PARAMS, Uniform),
                (lce::LOGITS, ReadWrite),
                (lce::BIAS_GRAD, ReadWrite),
            ],
        }
    }
}

/// Vectors each invocation of an element-wise kernel walks (`EV` in
/// `binary.wgsl`), in a fixed order.
pub(crate) const ELEMENT_VECTORS: u32 = 8;

/// Options a pipeline is built for (the `SPEC_KNOWN` / `SPEC_ON` overrides
/// in `common.wgsl`): an option whose bit is in `known` is fixed at `on`'s
/// bit, and the compiler drops the code of the other case; an option not
/// in `known` is read from the uniform when the kernel runs. Why: lavapipe
/// runs both sides of a branch on the uniform under masks, so the code of
/// every absent option cost time (cross-entropy 2.9x slower than the kernel
/// built for its options at 1048576x32; BENCHMARKS.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Spec {
    pub known: u32,
    pub on: u32,
}

impl Spec {
    /// Options read when the kernel runs.
    pub(crate) const GENERIC: Spec = Spec { known: 0, on: 0 };

    /// What `kernel` is built for when it runs with `params`: the
    /// cross-entropy family's options (class weights or per-class alpha,
    /// softcap, label smoothing, z-loss) and the binary losses' flags and
    /// `gamma != 0`, fixed; the binary reductions and other families read
    /// theirs (they have none worth a pipeline of its own).
    pub(crate) fn for_kernel(kernel: Kernel, params: &Params) -> Spec {
        use flags::cross_entropy::{FLAG_SOFTCAP, FLAG_WEIGHTS};
        use flags::spec::*;
        let bit = |on: bool, b: u32| if on { b } else { 0 };
        let element_wise = matches!(
            kernel,
            Kernel::BceProbElements | Kernel::BceLogitsElements | Kernel::SigmoidFocalElements
        );
        if element_wise {
            // Its flags, shifted clear of the cross-entropy bits, and gamma.
            let all = flags::binary::ALL_FLAGS;
            return Spec {
                known: all << SPEC_BINARY_SHIFT | SPEC_GAMMA,
                on: (params.flags & all) << SPEC_BINARY_SHIFT
                    | bit(params.gamma != 0.0, SPEC_GAMMA),
            };
        }
        if kernel.family() != Family::CrossEntropy {
            return Spec::GENERIC;
        }
        Spec {
            known: SPEC_WEIGHTS | SPEC_SOFTCAP | SPEC_SMOOTHING | SPEC_Z_LOSS,
            on: bit(params.flags & FLAG_WEIGHTS != 0, SPEC_WEIGHTS)
                | bit(params.flags & FLAG_SOFTCAP != 0, SPEC_SOFTCAP)
                | bit(params.smoothing > 0.0, SPEC_SMOOTHING)
                | bit(params.z_loss > 0.0, SPEC_Z_LOSS),
        }
    }
}

impl Spec {
    /// `self` for a dispatch of `kernel` whose rows the host's plan says
    /// are not held (`held` false): where the kernel has a held path,
    /// built with it compiled out (`SPEC_HELD` known off). Where `held` is
    /// true the shader still decides (`holds_rows_of`), so a plan that
    /// wrongly said held would cost bytes, never results.
    pub(crate) fn streamed_unless(self, kernel: Kernel, held: bool) -> Spec {
        if held || !kernel.has_held_path() {
            return self;
        }
        Spec {
            known: self.known | flags::spec::SPEC_HELD,
            on: self.on & !flags::spec::SPEC_HELD,
        }
    }
}

/// A built pipeline and the bind group layout it was built with.
pub(crate) struct Pipeline {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
}

/// What a pipeline is built for: one per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PipelineKey {
    pub kernel: Kernel,
    pub variant: Variant,
    pub launch: Launch,
    pub spec: Spec,
}

/// Builds each pipeline on first use and keeps it.
#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<(Family, Variant), wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
}

impl PipelineCache {
    /// Number of pipelines built so far (tests check that calls do not rebuild).
    pub(crate) fn len(&self) -> usize {
        self.pipelines.lock().map(|p| p.len()).unwrap_or(0)
    }

    pub(crate) fn get(
        &self,
        device: &wgpu::Device,
        adapter: &str,
        deferred: &crate::scope::Deferred,
        key: PipelineKey,
    ) -> Result<Arc<Pipeline>> {
        let PipelineKey {
            kernel,
            variant,
            launch,
            spec,
        } = key;
        let poisoned = || Error::Gpu {
            kernel: kernel.entry_point().to_string(),
            adapter: adapter.to_string(),
            message: "pipeline cache lock poisoned by a panic on another thread".into(),
        };
        let mut pipelines = self.pipelines.lock().map_err(|_| poisoned())?;
        if let Some(p) = pipelines.get(&key) {
            return Ok(p.clone());
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let built = {
            let mut modules = self.modules.lock().map_err(|_| poisoned())?;
            let module = modules
                .entry((kernel.family(), variant))
                .or_insert_with(|| {
                    device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(kernel.family().file_name()),
                        source: wgpu::ShaderSource::Wgsl(
                            shader_source(kernel.family(), variant).into(),
                        ),
                    })
                })
                .clone();
            build_pipeline(device, &module, kernel, variant.aliasing, launch, spec)
        };
        // Known at once on native; in the browser a broken pipeline is
        // reported by the next awaited call instead.
        let what = || {
            format!(
                "building {} ({variant:?}, {launch:?}, {spec:?})",
                kernel.entry_point()
            )
        };
        let error = match crate::scope::pop_now(scope.pop()) {
            Ok(error) => error,
            Err(pending) => {
                deferred.push(what(), pending);
                None
            }
        };
        if let Some(err) = error {
            // Drop the module too: a broken module must not be cached.
            if let Ok(mut modules) = self.modules.lock() {
                modules.remove(&(kernel.family(), variant));
            }
            return Err(Error::Gpu {
                kernel: what(),
                adapter: adapter.to_string(),
                message: err.to_string(),
            });
        }
        let built = Arc::new(built);
        pipelines.insert(key, built.clone());
        Ok(built)
    }
}

fn build_pipeline(
    device: &wgpu::Device,
    module: &wgpu::ShaderModule,
    kernel: Kernel,
    aliasing: Aliasing,
    launch: Launch,
    spec: Spec,
) -> Pipeline {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
        .bindings()
        .iter()
        .map(|&(slot, access)| wgpu::BindGroupLayoutEntry {
            binding: slot.index,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: match access {
                    Access::Uniform => wgpu::BufferBindingType::Uniform,
                    Access::Read => wgpu::BufferBindingType::Storage {
                        read_only: aliasing == Aliasing::Separate,
                    },
                    Access::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(kernel.entry_point()),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(kernel.entry_point()),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(kernel.entry_point()),
        layout: Some(&pipeline_layout),
        module,
        entry_point: Some(kernel.entry_point()),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &[
                ("WG", f64::from(launch.workgroup_size)),
                ("TPR", f64::from(launch.threads_per_row)),
                ("SPEC_KNOWN", f64::from(spec.known)),
                ("SPEC_ON", f64::from(spec.on)),
            ],
            // Every kernel writes workgroup memory before reading it; zeroing it
            // first costs a loop and a barrier per workgroup (measurable on lavapipe).
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    Pipeline { pipeline, layout }
}

#[cfg(test)]
#[path = "kernel_tests.rs"]
mod tests;
