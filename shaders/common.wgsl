// Shared by every op family. The host prepends a variant prelude that defines
// `WG` (workgroup size), `VW` (vector width), `vec_t`/`vec_u` (f32 or vec4),
// `LANE` (lane offsets within a vector) and `hmax`/`hsum`/`lane`.

struct Params {
    rows: u32,          // rows in this dispatch window
    cols: u32,          // scalars per row
    base_a: u32,        // scalar offset of row 0 inside the bound window of matrix A
    base_b: u32,        // ... matrix B (second matrix input)
    base_out: u32,      // ... the output matrix
    row_base: u32,      // global index of this window's row 0, for per-row arrays
    ignore_index: i32,
    flags: u32,         // family-specific bit flags
    total_rows: u32,    // rows of the whole problem (reductions)
    smoothing: f32,
    z_loss: f32,
    softcap: f32,
    grad_scale: f32,
    reduction: u32,     // 0 none, 1 mean, 2 sum
    base_c: u32,        // ... matrix C (third matrix input)
    base_d: u32,        // ... matrix D (second output)
    alpha: f32,
    gamma: f32,
    denominator: f32,   // divisor of `mean` where the host knows it
    _pad: u32,
}

@group(0) @binding(0) var<uniform> params: Params;

fn neg_inf() -> f32 { return bitcast<f32>(0xff800000u); }
fn pos_inf() -> f32 { return bitcast<f32>(0x7f800000u); }
fn nan() -> f32 { return bitcast<f32>(0x7fc00000u); }
// By the bits, so no float optimisation can fold it away.
fn is_nan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
// NaN compares false, so NaN is not finite.
fn is_finite(v: f32) -> bool { return abs(v) <= 3.40282347e38; }

// Row index of this workgroup in a 2-D grid (x wraps at the dispatch limit).
fn row_of(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.x + wid.y * nwg.x; }

// Online softmax statistics: running max `m` and the sum `s` of exp(x - m).
// An element equal to the current max contributes exactly 1, which keeps an
// all -inf row at m = -inf (lse = -inf) and a row holding +inf at lse = +inf,
// as PyTorch's logsumexp does; a NaN anywhere makes `s` NaN.
struct RowStat { m: f32, s: f32 }

fn stat_empty() -> RowStat { return RowStat(neg_inf(), 0.0); }

fn rescale(m_old: f32, m_new: f32) -> f32 {
    return select(exp(m_old - m_new), 1.0, m_old == m_new);
}

fn stat_push(st: RowStat, v: vec_t) -> RowStat {
    let m_new = max(st.m, hmax(v));
    let e = select(exp(v - vec_t(m_new)), vec_t(1.0), v == vec_t(m_new));
    return RowStat(m_new, st.s * rescale(st.m, m_new) + hsum(e));
}

fn stat_merge(a: RowStat, b: RowStat) -> RowStat {
    let m = max(a.m, b.m);
    return RowStat(m, a.s * rescale(a.m, m) + b.s * rescale(b.m, m));
}

var<workgroup> wg_m: array<f32, WG>;
var<workgroup> wg_s: array<f32, WG>;

// Fixed-order tree reduction over the workgroup: deterministic on a given adapter.
fn wg_reduce_stat(tid: u32, st: RowStat) -> RowStat {
    wg_m[tid] = st.m;
    wg_s[tid] = st.s;
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (tid < stride) {
            let r = stat_merge(RowStat(wg_m[tid], wg_s[tid]), RowStat(wg_m[tid + stride], wg_s[tid + stride]));
            wg_m[tid] = r.m;
            wg_s[tid] = r.s;
        }
    }
    workgroupBarrier();
    let total = RowStat(wg_m[0], wg_s[0]);
    workgroupBarrier();
    return total;
}

fn wg_reduce_sum(tid: u32, v: f32) -> f32 {
    wg_s[tid] = v;
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (tid < stride) {
            wg_s[tid] = wg_s[tid] + wg_s[tid + stride];
        }
    }
    workgroupBarrier();
    let total = wg_s[0];
    workgroupBarrier();
    return total;
}
