//! Every shader, kernel and entry point of the crate, and the cache that builds
//! each compute pipeline once.
//!
//! Each op family is one WGSL file in `shaders/`. The host instantiates a file
//! in two variants, scalar (`f32` loads) and `vec4` (four columns per load,
//! used when the row length and offsets are multiples of four), by prepending
//! a short prelude; `shaders/common.wgsl` holds the online-softmax statistics
//! and workgroup reductions that every family shares.

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
}

const COMMON_SOURCE: &str = include_str!("../shaders/common.wgsl");

impl Family {
    /// All families.
    pub const ALL: [Family; 4] = [
        Family::Softmax,
        Family::CrossEntropy,
        Family::Binary,
        Family::Copy,
    ];

    /// File name under `shaders/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Family::Softmax => "softmax.wgsl",
            Family::CrossEntropy => "cross_entropy.wgsl",
            Family::Binary => "binary.wgsl",
            Family::Copy => "copy.wgsl",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Family::Softmax => include_str!("../shaders/softmax.wgsl"),
            Family::CrossEntropy => include_str!("../shaders/cross_entropy.wgsl"),
            Family::Binary => include_str!("../shaders/binary.wgsl"),
            Family::Copy => include_str!("../shaders/copy.wgsl"),
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
}

impl VecWidth {
    /// Both widths.
    pub const ALL: [VecWidth; 2] = [VecWidth::Scalar, VecWidth::Vec4];

    /// Scalars per load.
    pub fn lanes(self) -> usize {
        match self {
            VecWidth::Scalar => 1,
            VecWidth::Vec4 => 4,
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

    fn prelude(self, storage: Storage) -> String {
        let (enable, mat_t) = match (storage, self) {
            (Storage::F32, _) => ("", "vec_t"),
            (Storage::F16, VecWidth::Scalar) => ("enable f16;\n", "f16"),
            (Storage::F16, VecWidth::Vec4) => ("enable f16;\n", "vec4<f16>"),
        };
        let body = match self {
            VecWidth::Scalar => {
                "const VW: u32 = 1u;\nalias vec_t = f32;\nalias vec_u = u32;\n\
                 const LANE: vec_u = 0u;\n\
                 fn hmax(v: f32) -> f32 { return v; }\n\
                 fn hsum(v: f32) -> f32 { return v; }\n\
                 fn lane(v: f32, k: u32) -> f32 { return v; }\n"
            }
            VecWidth::Vec4 => {
                "const VW: u32 = 4u;\nalias vec_t = vec4<f32>;\nalias vec_u = vec4<u32>;\n\
                 const LANE: vec_u = vec4<u32>(0u, 1u, 2u, 3u);\n\
                 fn hmax(v: vec4<f32>) -> f32 { return max(max(v.x, v.y), max(v.z, v.w)); }\n\
                 fn hsum(v: vec4<f32>) -> f32 { return (v.x + v.y) + (v.z + v.w); }\n\
                 fn lane(v: vec4<f32>, k: u32) -> f32 { return v[k]; }\n"
            }
        };
        // Matrix storage type: loads convert to `vec_t` (f32 arithmetic), stores back.
        format!("{enable}{body}alias mat_t = {mat_t};\n")
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
            Reduce::Workgroup => REDUCE_WORKGROUP,
            Reduce::Subgroup => REDUCE_SUBGROUP,
            Reduce::SubgroupThenWorkgroup => REDUCE_SUBGROUP_THEN_WORKGROUP,
        }
    }
}

// The thread index of a row kernel, and segment reductions over the `TPR`
// threads of one row (`seg_sum`, `seg_max`). Threads of a row are `TPR`
// consecutive thread indices; subgroup modes number threads by subgroup so
// that a row never straddles subgroups unexpectedly.
const REDUCE_WORKGROUP: &str = r#"
struct Ids {
    @builtin(local_invocation_index) index: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
}
fn thread_of(ids: Ids) -> u32 { return ids.index; }
fn seg_sum(tid: u32, v: f32) -> f32 {
    let lead = tid - tid % TPR;
    wg_s[tid] = v;
    for (var stride = TPR / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (tid - lead < stride) { wg_s[tid] = wg_s[tid] + wg_s[tid + stride]; }
    }
    workgroupBarrier();
    let total = wg_s[lead];
    workgroupBarrier();
    return total;
}
fn seg_max(tid: u32, v: f32) -> f32 {
    let lead = tid - tid % TPR;
    wg_m[tid] = v;
    for (var stride = TPR / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (tid - lead < stride) { wg_m[tid] = max(wg_m[tid], wg_m[tid + stride]); }
    }
    workgroupBarrier();
    let total = wg_m[lead];
    workgroupBarrier();
    return total;
}
// One merged tree for (max, sum): half the barriers of a max tree then a sum tree.
fn seg_stat(tid: u32, acc: RowAcc) -> RowStat {
    let st = stat_of(acc);
    let lead = tid - tid % TPR;
    wg_m[tid] = st.m;
    wg_s[tid] = st.s;
    for (var stride = TPR / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (tid - lead < stride) {
            let r = stat_merge(RowStat(wg_m[tid], wg_s[tid]), RowStat(wg_m[tid + stride], wg_s[tid + stride]));
            wg_m[tid] = r.m;
            wg_s[tid] = r.s;
        }
    }
    workgroupBarrier();
    let total = RowStat(wg_m[lead], wg_s[lead]);
    workgroupBarrier();
    return total;
}
"#;

const REDUCE_SUBGROUP: &str = r#"
struct Ids {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
}
fn thread_of(ids: Ids) -> u32 { return ids.sg_id * ids.sg_size + ids.sg_lane; }
// Butterflies over aligned groups of TPR lanes: lanes i and i^k add the same
// two values (a + b == b + a exactly), so every lane ends with the same bits.
fn seg_sum(tid: u32, v: f32) -> f32 {
    var x = v;
    for (var k = 1u; k < TPR; k = k * 2u) { x = x + subgroupShuffleXor(x, k); }
    return x;
}
fn seg_max(tid: u32, v: f32) -> f32 {
    var x = v;
    for (var k = 1u; k < TPR; k = k * 2u) { x = max(x, subgroupShuffleXor(x, k)); }
    return x;
}
fn seg_stat(tid: u32, acc: RowAcc) -> RowStat {
    let st = stat_of(acc);
    let m = seg_max(tid, st.m);
    return RowStat(m, seg_sum(tid, st.s * rescale(st.m, m)));
}
"#;

const REDUCE_SUBGROUP_THEN_WORKGROUP: &str = r#"
struct Ids {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
}
var<private> sg_width: u32;
fn thread_of(ids: Ids) -> u32 {
    sg_width = ids.sg_size;
    return ids.sg_id * ids.sg_size + ids.sg_lane;
}
// Subgroup butterflies, then the row's subgroup totals folded in order.
fn seg_sum(tid: u32, v: f32) -> f32 {
    var x = v;
    for (var k = 1u; k < sg_width; k = k * 2u) { x = x + subgroupShuffleXor(x, k); }
    if (tid % sg_width == 0u) { wg_s[tid / sg_width] = x; }
    workgroupBarrier();
    let first = tid / TPR * (TPR / sg_width);
    var total = wg_s[first];
    for (var j = 1u; j < TPR / sg_width; j = j + 1u) { total = total + wg_s[first + j]; }
    workgroupBarrier();
    return total;
}
fn seg_max(tid: u32, v: f32) -> f32 {
    var x = v;
    for (var k = 1u; k < sg_width; k = k * 2u) { x = max(x, subgroupShuffleXor(x, k)); }
    if (tid % sg_width == 0u) { wg_m[tid / sg_width] = x; }
    workgroupBarrier();
    let first = tid / TPR * (TPR / sg_width);
    var total = wg_m[first];
    for (var j = 1u; j < TPR / sg_width; j = j + 1u) { total = max(total, wg_m[first + j]); }
    workgroupBarrier();
    return total;
}
fn seg_stat(tid: u32, acc: RowAcc) -> RowStat {
    let st = stat_of(acc);
    let m = seg_max(tid, st.m);
    return RowStat(m, seg_sum(tid, st.s * rescale(st.m, m)));
}
"#;

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
    /// 16-bit floats (needs the adapter's `SHADER_F16` feature).
    F16,
}

impl Storage {
    /// Both storage types.
    pub const ALL: [Storage; 2] = [Storage::F32, Storage::F16];

    /// Bytes per element.
    pub fn bytes(self) -> u64 {
        match self {
            Storage::F32 => 4,
            Storage::F16 => 2,
        }
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
}

impl Variant {
    /// Every variant.
    pub fn all() -> Vec<Variant> {
        let mut out = Vec::new();
        for width in VecWidth::ALL {
            for aliasing in Aliasing::ALL {
                for storage in Storage::ALL {
                    for reduce in Reduce::ALL {
                        out.push(Variant {
                            width,
                            aliasing,
                            storage,
                            reduce,
                        });
                    }
                }
            }
        }
        out
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
    pub const ALL: [Aliasing; 2] = [Aliasing::Separate, Aliasing::Shared];
}

/// The full WGSL source of one family in one variant, as compiled.
pub fn shader_source(family: Family, variant: Variant) -> String {
    let Variant {
        width,
        aliasing,
        storage,
        reduce,
    } = variant;
    let source = format!(
        "// {} ({width:?}, {aliasing:?}, {storage:?}, {reduce:?} variant)\n{}\n{}\n{}\n{}",
        family.file_name(),
        width.prelude(storage),
        reduce.prelude(),
        COMMON_SOURCE,
        family.body()
    );
    match aliasing {
        Aliasing::Separate => source,
        Aliasing::Shared => source.replace("var<storage, read>", "var<storage, read_write>"),
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
    /// `ce_denominator`: the `mean` denominator, kept-row count and weight total.
    CrossEntropyDenominator,
    /// `ce_loss`: row losses only, logits read once.
    CrossEntropyLoss,
    /// `ce_loss_grad`: row losses and the gradient.
    CrossEntropyLossGrad,
    /// `ce_loss_grad_in_place`: row losses, gradient written over the logits.
    CrossEntropyLossGradInPlace,
    /// `ce_reduce`: fixed-order sum of row losses into `mean` or `sum`.
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
    /// `binary_reduce`: fixed-order sum of the element-wise kernels' partial sums.
    BinaryReduce,
    /// `ce_export`: per-row losses and logsumexp into a caller's buffers.
    CrossEntropyExport,
    /// `copy`: the bandwidth yardstick.
    Copy,
    /// `softmax_partial`: per-chunk statistics of split rows (softmax,
    /// log-softmax and logsumexp forward).
    SoftmaxPartial,
    /// `ce_partial`: per-chunk statistics of split rows (cross-entropy with
    /// class-index targets).
    CrossEntropyPartial,
}

impl Kernel {
    /// Every kernel.
    pub const ALL: [Kernel; 23] = [
        Kernel::SoftmaxForward,
        Kernel::LogSoftmaxForward,
        Kernel::LogsumexpForward,
        Kernel::SoftmaxBackward,
        Kernel::LogSoftmaxBackward,
        Kernel::LogsumexpBackward,
        Kernel::CrossEntropyDenominator,
        Kernel::CrossEntropyLoss,
        Kernel::CrossEntropyLossGrad,
        Kernel::CrossEntropyLossGradInPlace,
        Kernel::CrossEntropyReduce,
        Kernel::CrossEntropySoftLoss,
        Kernel::CrossEntropySoftLossGrad,
        Kernel::FocalLoss,
        Kernel::FocalLossGrad,
        Kernel::BceProbElements,
        Kernel::BceLogitsElements,
        Kernel::SigmoidFocalElements,
        Kernel::BinaryReduce,
        Kernel::CrossEntropyExport,
        Kernel::Copy,
        Kernel::SoftmaxPartial,
        Kernel::CrossEntropyPartial,
    ];

    /// The shader file this kernel lives in.
    pub fn family(self) -> Family {
        use Kernel::*;
        match self {
            SoftmaxForward | LogSoftmaxForward | LogsumexpForward | SoftmaxBackward
            | LogSoftmaxBackward | LogsumexpBackward | SoftmaxPartial => Family::Softmax,
            CrossEntropyDenominator
            | CrossEntropyLoss
            | CrossEntropyLossGrad
            | CrossEntropyLossGradInPlace
            | CrossEntropyReduce
            | CrossEntropySoftLoss
            | CrossEntropySoftLossGrad
            | FocalLoss
            | FocalLossGrad
            | CrossEntropyExport
            | CrossEntropyPartial => Family::CrossEntropy,
            BceProbElements | BceLogitsElements | SigmoidFocalElements | BinaryReduce => {
                Family::Binary
            }
            Copy => Family::Copy,
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
            CrossEntropyDenominator => "ce_denominator",
            CrossEntropyLoss => "ce_loss",
            CrossEntropyLossGrad => "ce_loss_grad",
            CrossEntropyLossGradInPlace => "ce_loss_grad_in_place",
            CrossEntropyReduce => "ce_reduce",
            CrossEntropySoftLoss => "ce_soft_loss",
            CrossEntropySoftLossGrad => "ce_soft_loss_grad",
            FocalLoss => "focal_loss",
            FocalLossGrad => "focal_loss_grad",
            BceProbElements => "bce_prob_elements",
            BceLogitsElements => "bce_logits_elements",
            SigmoidFocalElements => "sigmoid_focal_elements",
            BinaryReduce => "binary_reduce",
            CrossEntropyExport => "ce_export",
            Copy => "copy",
            SoftmaxPartial => "softmax_partial",
            CrossEntropyPartial => "ce_partial",
        }
    }

    /// The first pass of this kernel when rows are split across workgroups:
    /// `None` for kernels that always take whole rows.
    pub fn partial_pass(self) -> Option<Kernel> {
        use Kernel::*;
        match self {
            SoftmaxForward | LogSoftmaxForward | LogsumexpForward => Some(SoftmaxPartial),
            CrossEntropyLoss | CrossEntropyLossGrad => Some(CrossEntropyPartial),
            _ => None,
        }
    }

    /// Whether `binding` is an input (bound read-only unless aliasing).
    pub(crate) fn reads(self, binding: u32) -> bool {
        self.bindings()
            .iter()
            .any(|&(b, access)| b == binding && access == Access::Read)
    }

    /// The bindings of group 0 this entry point uses, as the shader declares them.
    pub(crate) fn bindings(self) -> &'static [(u32, Access)] {
        use Kernel::*;
        match self {
            SoftmaxForward | LogSoftmaxForward => {
                &[(0, Uniform), (1, Read), (5, ReadWrite), (11, ReadWrite)]
            }
            LogsumexpForward => &[(0, Uniform), (1, Read), (6, ReadWrite), (11, ReadWrite)],
            SoftmaxPartial => &[(0, Uniform), (1, Read), (11, ReadWrite)],
            SoftmaxBackward | LogSoftmaxBackward => {
                &[(0, Uniform), (1, Read), (2, Read), (5, ReadWrite)]
            }
            LogsumexpBackward => &[
                (0, Uniform),
                (1, Read),
                (3, Read),
                (4, Read),
                (5, ReadWrite),
            ],
            CrossEntropyDenominator => &[(0, Uniform), (2, Read), (3, Read), (4, ReadWrite)],
            CrossEntropySoftLoss => &[
                (0, Uniform),
                (1, ReadWrite),
                (3, Read),
                (4, ReadWrite),
                (5, ReadWrite),
                (8, Read),
            ],
            CrossEntropySoftLossGrad => &[
                (0, Uniform),
                (1, ReadWrite),
                (3, Read),
                (4, ReadWrite),
                (5, ReadWrite),
                (6, ReadWrite),
                (8, Read),
            ],
            BceProbElements | BceLogitsElements | SigmoidFocalElements => &[
                (0, Uniform),
                (1, Read),
                (2, Read),
                (3, Read),
                (4, Read),
                (5, ReadWrite),
                (6, ReadWrite),
                (7, ReadWrite),
            ],
            BinaryReduce => &[(0, Uniform), (7, ReadWrite), (8, ReadWrite)],
            CrossEntropyExport => &[
                (0, Uniform),
                (5, ReadWrite),
                (9, ReadWrite),
                (10, ReadWrite),
            ],
            CrossEntropyLoss | CrossEntropyLossGradInPlace => &[
                (0, Uniform),
                (1, ReadWrite),
                (2, Read),
                (3, Read),
                (4, ReadWrite),
                (5, ReadWrite),
                (11, ReadWrite),
            ],
            FocalLoss => &[
                (0, Uniform),
                (1, ReadWrite),
                (2, Read),
                (3, Read),
                (4, ReadWrite),
                (5, ReadWrite),
            ],
            CrossEntropyPartial => &[(0, Uniform), (1, ReadWrite), (3, Read), (11, ReadWrite)],
            CrossEntropyLossGrad => &[
                (0, Uniform),
                (1, ReadWrite),
                (2, Read),
                (3, Read),
                (4, ReadWrite),
                (5, ReadWrite),
                (6, ReadWrite),
                (11, ReadWrite),
            ],
            FocalLossGrad => &[
                (0, Uniform),
                (1, ReadWrite),
                (2, Read),
                (3, Read),
                (4, ReadWrite),
                (5, ReadWrite),
                (6, ReadWrite),
            ],
            CrossEntropyReduce => &[(0, Uniform), (4, ReadWrite), (5, ReadWrite), (7, ReadWrite)],
            Copy => &[(0, Uniform), (1, Read), (2, ReadWrite)],
        }
    }
}

/// A built pipeline and the bind group layout it was built with.
pub(crate) struct Pipeline {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
}

/// Builds each (kernel, variant) pipeline on first use and keeps it.
#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<(Family, Variant), wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<(Kernel, Variant, Launch), Arc<Pipeline>>>,
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
        kernel: Kernel,
        variant: Variant,
        launch: Launch,
    ) -> Result<Arc<Pipeline>> {
        let poisoned = || Error::Gpu {
            kernel: kernel.entry_point().to_string(),
            adapter: adapter.to_string(),
            message: "pipeline cache lock poisoned by a panic on another thread".into(),
        };
        let mut pipelines = self.pipelines.lock().map_err(|_| poisoned())?;
        if let Some(p) = pipelines.get(&(kernel, variant, launch)) {
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
            build_pipeline(device, &module, kernel, variant.aliasing, launch)
        };
        if let Some(err) = pollster::block_on(scope.pop()) {
            // Drop the module too: a broken module must not be cached.
            if let Ok(mut modules) = self.modules.lock() {
                modules.remove(&(kernel.family(), variant));
            }
            return Err(Error::Gpu {
                kernel: format!(
                    "building {} ({variant:?}, {launch:?})",
                    kernel.entry_point()
                ),
                adapter: adapter.to_string(),
                message: err.to_string(),
            });
        }
        let built = Arc::new(built);
        pipelines.insert((kernel, variant, launch), built.clone());
        Ok(built)
    }
}

fn build_pipeline(
    device: &wgpu::Device,
    module: &wgpu::ShaderModule,
    kernel: Kernel,
    aliasing: Aliasing,
    launch: Launch,
) -> Pipeline {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
        .bindings()
        .iter()
        .map(|&(binding, access)| wgpu::BindGroupLayoutEntry {
            binding,
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
            ],
            // Every kernel writes workgroup memory before reading it; zeroing it
            // first costs a loop and a barrier per workgroup (measurable on lavapipe).
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    Pipeline { pipeline, layout }
}
