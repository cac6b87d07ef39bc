// Categorical cross-entropy with class-index targets, PyTorch semantics plus
// z-loss and logit softcap. Kernels, in dispatch order:
//   ce_denominator_partial, ce_denominator  (blocks, then a fold: `fold_records`)
//                   D = sum of w[y_i] over kept rows, kept-row count, W = sum of w;
//                   only where `mean` or weighted smoothing reads them
//   ce_loss / ce_loss_grad / ce_loss_grad_in_place  (TPR threads per row, `seg_of`)
//   ce_reduce_partial, ce_reduce  (blocks, then a fold)  row losses -> mean / sum
// Row i's loss, with x' = softcap(x), lse = logsumexp(x'), eps = label smoothing:
//   ce_i = (1-eps) w[y] (lse - x'[y]) + (eps/C) (W lse - sum_c w[c] x'[c]),  z_i = z lse^2

@group(0) @binding(1) var<storage, read_write> logits: array<mat_t>;   // read_write so the in-place kernel can overwrite it
@group(0) @binding(2) var<storage, read> targets: array<i32>;
@group(0) @binding(3) var<storage, read> weights: array<fvec_t>;
@group(0) @binding(4) var<storage, read_write> scalars: array<f32>;    // [D, kept rows, W, 0]
@group(0) @binding(5) var<storage, read_write> row_out: array<vec4<f32>>; // per row (ce, z, lse, 0)
@group(0) @binding(6) var<storage, read_write> grad: array<mat_t>;
@group(0) @binding(7) var<storage, read_write> result: array<f32>;     // [total loss, z-loss part]
@group(0) @binding(8) var<storage, read> soft_targets: array<fvec_t>;   // probability targets [N, C] (base_b)
@group(0) @binding(9) var<storage, read_write> loss_rows: array<f32>;  // exported per-row loss (ce + z)
@group(0) @binding(10) var<storage, read_write> lse_rows: array<f32>;  // exported per-row logsumexp

const FLAG_WEIGHTS: u32 = 1u;
const FLAG_SOFTCAP: u32 = 2u;
const FLAG_MEAN_BY_COUNT: u32 = 4u;
const FLAG_EXPORT_LOSS: u32 = 8u;
const FLAG_EXPORT_LSE: u32 = 16u;
const REDUCTION_MEAN: u32 = 1u;

var<workgroup> wg_count: array<u32, WG>;

fn has_weights() -> bool { return spec_or(SPEC_WEIGHTS, (params.flags & FLAG_WEIGHTS) != 0u); }
fn has_softcap() -> bool { return spec_or(SPEC_SOFTCAP, (params.flags & FLAG_SOFTCAP) != 0u); }
fn has_smoothing() -> bool { return spec_or(SPEC_SMOOTHING, params.smoothing > 0.0); }
fn has_z_loss() -> bool { return spec_or(SPEC_Z_LOSS, params.z_loss > 0.0); }

fn class_weight(j: u32) -> f32 {
    if (has_weights()) { return flane(weights[j / FW], j % FW); }
    return 1.0;
}

// Targets that live on the GPU are not checked by the host: a target outside
// [0, C) that is not ignore_index makes its row's loss and gradient NaN.
fn target_valid(t: i32) -> bool { return t >= 0 && u32(t) < params.cols; }

// The weights of vector i's columns (0 outside the row).
fn class_weights(i: u32) -> vec_t {
    if (has_weights()) {
        if (GATHER || EDGED) {
            // Columns shifted by the row's phase: four weights by column,
            // each index kept inside the array.
            let c = min(col_of(i), vec_u(params.cols - 1u));
            return masked(vec_of(class_weight(ulane(c, 0u)), class_weight(ulane(c, 1u)), class_weight(ulane(c, 2u)), class_weight(ulane(c, 3u))), i, 0.0);
        }
        return fvec(weights[i], weights[i], weights[i], weights[i]);
    }
    return vec_t(1.0);
}

// Matrix accessors (see `row_src` in common.wgsl). A gathered row's last
// vector reads up to three elements of the next row, which that row's
// workgroup may be overwriting (in place); those lanes are masked or never
// stored, so the values read there do not matter.
fn load_logits(src: u32, i: u32) -> vec_t {
    let j = vec_at(src, i);
    return mat_vec(logits[mat_index(j)], logits[mat_index(j + MSTEP)], logits[mat_index(j + 2u * MSTEP)], logits[mat_index(j + 3u * MSTEP)], j);
}

fn load_soft_targets(src: u32, i: u32) -> vec_t {
    let j = fvec_at(src, i);
    return fvec(soft_targets[j], soft_targets[j + FSTEP], soft_targets[j + 2u * FSTEP], soft_targets[j + 3u * FSTEP]);
}

// Gathered rows store lane by lane, never outside the row; edged rows
// store whole vectors, and their shared first and last ones through
// `edge_vecs` (`edge_slot` in common.wgsl).
fn store_logits(dst: u32, i: u32, v: vec_t) {
    let slot = edge_slot(i);
    if (slot != NOT_EDGE) {
        edge_vecs[slot] = v;
    } else {
        store_logits_whole(dst, i, v);
    }
}

fn store_logits_whole(dst: u32, i: u32, v: vec_t) {
    if (!MAT_STORES) { return; }
    if (GATHER) {
        for (var k = 0u; k < VW; k++) {
            if (lane_in_row(i, k)) { logits[mat_index(lane_at(dst, i, k))] = mat_lane(v, k); }
        }
    } else {
        logits[vec_at(dst, i)] = pack_mat(v);
    }
}

fn store_grad(dst: u32, i: u32, v: vec_t) {
    let slot = edge_slot(i);
    if (slot != NOT_EDGE) {
        edge_vecs[slot] = v;
    } else {
        store_grad_whole(dst, i, v);
    }
}

// A vector that is not shared (`loop_start` in common.wgsl).
fn store_grad_whole(dst: u32, i: u32, v: vec_t) {
    if (!MAT_STORES) { return; }
    if (GATHER) {
        for (var k = 0u; k < VW; k++) {
            if (lane_in_row(i, k)) { grad[mat_index(lane_at(dst, i, k))] = mat_lane(v, k); }
        }
    } else {
        grad[vec_at(dst, i)] = pack_mat(v);
    }
}

fn capped(v: vec_t) -> vec_t {
    if (!has_softcap()) { return v; }
    return softcap_value(v, params.softcap);
}

fn cap_slope(v: vec_t) -> vec_t {
    if (!has_softcap()) { return vec_t(1.0); }
    return softcap_slope(v, params.softcap);
}

// D, the kept rows and W over one block of rows and classes (see `fold_records`).
@compute @workgroup_size(WG)
fn ce_denominator_partial(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let tid = lid.x;
    let g = row_of(wid, nwg);
    let first = g * WG * params.fold_span + tid;
    // D = Σ w[y_i] over kept rows, compensated (Neumaier): a plain f32 sum of
    // millions of weights drifts by 1e-4.
    var d = 0.0;
    var d_carry = 0.0;
    var kept = 0u;
    for (var j = 0u; j < params.fold_span; j++) {
        let i = first + j * WG;
        if (i >= params.total_rows) { break; }
        let t = targets[i];
        if (t != params.ignore_index) {
            kept += 1u;
            neumaier(&d, &d_carry, select(nan(), class_weight(u32(t)), target_valid(t)));
        }
    }
    d += d_carry;
    var w = 0.0;
    if (has_weights()) {
        for (var j = 0u; j < params.fold_span; j++) {
            let c = first + j * WG;
            if (c >= row_vecs()) { break; }
            w += hsum(class_weights(c));
        }
    }
    let kept_total = wg_reduce_count(tid, kept);
    let d_total = wg_reduce_sum(tid, d);
    let w_total = wg_reduce_sum(tid, w);
    if (tid == 0u) {
        if (single_block(nwg)) {
            ce_denominator_finish(d_total + 0.0, kept_total, w_total + 0.0);
        } else {
            // At most WG fold_span <= 2^17 rows: the count is exact in f32.
            chunk_stats[g] = vec4<f32>(d_total, f32(kept_total), w_total, 0.0);
        }
    }
}

// scalars = [D, kept rows, W, 0] from the totals of every block.
fn ce_denominator_finish(d_total: f32, kept_total: u32, w_total: f32) {
    // Without weights (or for focal loss, whose mean is over kept rows) D is
    // the kept-row count, exact as an integer.
    let by_count = !has_weights() || (params.flags & FLAG_MEAN_BY_COUNT) != 0u;
    scalars[0] = select(d_total, f32(kept_total), by_count);
    scalars[1] = f32(kept_total);
    scalars[2] = select(f32(params.cols), w_total, has_weights());
    scalars[3] = 0.0;
}

// Folds the blocks' records into scalars = [D, kept rows, W, 0].
@compute @workgroup_size(WG)
fn ce_denominator(@builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    var d = 0.0;
    var d_carry = 0.0;
    var kept = 0u;
    var w = 0.0;
    var w_carry = 0.0;
    // Blocks cover the rows, and the class weights' vectors where there are weights.
    let n = fold_records(select(params.total_rows, max(params.total_rows, row_vecs()), has_weights()));
    for (var g = tid; g < n; g += WG) {
        let r = chunk_stats[g];
        neumaier(&d, &d_carry, r.x);
        kept += u32(r.y);
        neumaier(&w, &w_carry, r.z);
    }
    let kept_total = wg_reduce_count(tid, kept);
    let d_total = wg_reduce_sum(tid, d + d_carry);
    let w_total = wg_reduce_sum(tid, w + w_carry);
    if (tid == 0u) {
        ce_denominator_finish(d_total, kept_total, w_total);
    }
}

// Fixed-order tree sum of one u32 per invocation.
fn wg_reduce_count(tid: u32, v: u32) -> u32 {
    wg_count[tid] = v;
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (tid < stride) { wg_count[tid] = wg_count[tid] + wg_count[tid + stride]; }
    }
    workgroupBarrier();
    let total = wg_count[0];
    workgroupBarrier();
    return total;
}

struct CeRow {
    m: f32,        // max of x'
    ls: f32,       // log sum exp(x' - m)
    label: i32,       // target class (IGNORED_ROW marker on ignored rows)
    ignored: bool,
    ce: f32,
    z: f32,
}

struct CeChunk { st: RowStat, wsum: f32 }

// Statistics of this segment's (capped) logits and, with smoothing, the
// weighted sum of (x' - r) over them.
fn ce_chunk(seg: Seg, src: u32, r: f32) -> CeChunk {
    var acc = stat_empty();
    var wacc = bsum_empty();
    let smoothing = has_smoothing();
    if (!smoothing && !has_softcap()) {
        // The common case, without the per-vector option tests.
        for (var i = seg.first + seg.lane; i < seg.end; i += TPR) {
            acc = stat_push(acc, masked(load_logits(src, i), i, neg_inf()));
        }
    } else if (!has_softcap() && !has_weights()) {
        // Smoothing alone, without the per-vector option tests: the sum of
        // (x - r) in a vector accumulator, folded every STAT_BLOCK vectors
        // (measured on lavapipe: 162 -> 122 ms for the loss at 4096x32768).
        var wv = vec_t(0.0);
        var wk = 0u;
        for (var i = seg.first + seg.lane; i < seg.end; i += TPR) {
            let v = load_logits(src, i);
            acc = stat_push(acc, masked(v, i, neg_inf()));
            wv += masked(v - vec_t(r), i, 0.0);
            wk += 1u;
            if (wk == STAT_BLOCK) {
                wacc = bsum_push(wacc, hsum(wv));
                wv = vec_t(0.0);
                wk = 0u;
            }
        }
        wacc = bsum_push(wacc, hsum(wv));
    } else if (!has_weights()) {
        // Softcap without class weights: the same, on capped logits. (A
        // branch inside the loop instead of two loops costs lavapipe 40%.)
        var wv = vec_t(0.0);
        var wk = 0u;
        for (var i = seg.first + seg.lane; i < seg.end; i += TPR) {
            let v = softcap_value(load_logits(src, i), params.softcap);
            acc = stat_push(acc, masked(v, i, neg_inf()));
            wv += masked(v - vec_t(r), i, 0.0);
            wk += 1u;
            if (wk == STAT_BLOCK) {
                wacc = bsum_push(wacc, hsum(wv));
                wv = vec_t(0.0);
                wk = 0u;
            }
        }
        wacc = bsum_push(wacc, hsum(wv));
    } else {
        for (var i = seg.first + seg.lane; i < seg.end; i += TPR) {
            let v = capped(load_logits(src, i));
            acc = stat_push(acc, masked(v, i, neg_inf()));
            if (smoothing) {
                wacc = bsum_push(wacc, hsum(masked(class_weights(i) * (v - vec_t(r)), i, 0.0)));
            }
        }
    }
    let st = seg_stat(seg.tid, acc);
    var wsum = 0.0;
    if (smoothing) {
        wsum = seg_sum(seg.tid, bsum_total(wacc));
    }
    return CeChunk(st, wsum);
}

// The smoothing sum's reference logit: x'[0] of the row, or 0 if not finite.
fn ce_reference(src: u32) -> f32 {
    let r0 = lane(capped(load_logits(src, vec_of_col(0u))), lane_of_col(0u));
    return select(0.0, r0, is_finite(r0));
}

// First pass over split rows: each chunk's statistics and smoothing sum.
@compute @workgroup_size(WG)
fn ce_partial(ids: Ids) {
    let seg = seg_of(ids);
    let src = row_src(params.base_a, min(seg.row, params.rows - 1u));
    let cs = ce_chunk(seg, src, ce_reference(src));
    write_partial(seg, cs.st, cs.wsum);
}

fn ce_row(seg: Seg) -> CeRow {
    let row = min(seg.row, params.rows - 1u);
    let src = row_src(params.base_a, row);
    // The smoothing sum is taken relative to a reference logit so that a large
    // common offset cancels before summation instead of after.
    let r = ce_reference(src);
    var st: RowStat;
    var wsum = 0.0;
    if (split_rows()) {
        let p = merged_partials(row);
        st = RowStat(p.x, p.y);
        wsum = p.z;
    } else {
        let cs = ce_chunk(seg, src, r);
        st = cs.st;
        wsum = cs.wsum;
    }
    return ce_finish(seg, st, wsum, r);
}

// A split row's statistics from its chunks' records alone, without reading
// the logits (no loss: `ce_loss` computed it).
fn ce_row_merged(seg: Seg) -> CeRow {
    let row = min(seg.row, params.rows - 1u);
    let p = merged_partials(row);
    let t = targets[params.row_base + row];
    return CeRow(p.x, log(p.y), t, t == params.ignore_index, 0.0, 0.0);
}

// Row loss from the row's statistics (and smoothing sum relative to `r`).
fn ce_finish(seg: Seg, st: RowStat, wsum: f32, r: f32) -> CeRow {
    let row = min(seg.row, params.rows - 1u);
    let src = row_src(params.base_a, row);
    let t = targets[params.row_base + row];
    let eps = params.smoothing;
    let smoothing = has_smoothing();
    let ls = log(st.s);
    let lse = st.m + ls;
    let ignored = t == params.ignore_index;
    var ce = 0.0;
    var z = 0.0;
    if (!ignored && !target_valid(t)) {
        ce = nan();
    } else if (!ignored) {
        let y = u32(t);
        let xy = lane(capped(load_logits(src, vec_of_col(y))), lane_of_col(y));
        ce = (1.0 - eps) * class_weight(y) * ((st.m - xy) + ls);
        if (smoothing) {
            ce += (eps / f32(params.cols)) * (scalars[2] * ((st.m - r) + ls) - wsum);
        }
        if (has_z_loss()) {
            z = params.z_loss * lse * lse;
        }
    }
    return CeRow(st.m, ls, t, ignored, ce, z);
}

// a = b + d: b is the plain cross-entropy part, d the smoothing and z-loss parts.
struct GradCoef { a: f32, b: f32, c: f32, d: f32 }

// g_j = (a p_j - b [j = y] - c w_j) * softcap slope, zero on ignored rows.
fn grad_coef(rs: CeRow) -> GradCoef {
    if (rs.ignored) { return GradCoef(0.0, 0.0, 0.0, 0.0); }
    if (!target_valid(rs.label)) { return GradCoef(nan(), nan(), nan(), nan()); }
    let eps = params.smoothing;
    let mean = params.reduction == REDUCTION_MEAN;
    let k_ce = select(params.grad_scale, params.grad_scale / scalars[0], mean);
    let k_z = select(params.grad_scale, params.grad_scale / scalars[1], mean);
    let wy = class_weight(u32(rs.label));
    let b = k_ce * (1.0 - eps) * wy;
    var c = 0.0;
    var d = 0.0;
    if (has_smoothing()) {
        d += k_ce * eps * scalars[2] / f32(params.cols);
        c = k_ce * eps / f32(params.cols);
    }
    if (has_z_loss()) {
        d += k_z * 2.0 * params.z_loss * (rs.m + rs.ls);
    }
    return GradCoef(b + d, b, c, d);
}

// a p - b [j = y] as b (p - [j = y]) + d p: at the target, where p is near 1,
// p - 1 is exact and a - b would keep only the digits of d that survive in a.
fn grad_core(k: GradCoef, p: vec_t, onehot: vec_t) -> vec_t {
    return vec_t(k.b) * (p - onehot) + vec_t(k.d) * p;
}

fn grad_at(rs: CeRow, k: GradCoef, i: u32, x: vec_t) -> vec_t {
    // With a softcap, its value and slope share one exp.
    var cx = x;
    var slope = vec_t(1.0);
    if (has_softcap()) {
        let both = softcap_both(x, params.softcap);
        cx = both.value;
        slope = both.slope;
    }
    let p = exp((cx - vec_t(rs.m)) - vec_t(rs.ls));
    return grad_from_p(rs, k, i, p, slope);
}

// g = (a p - b [j = y] - c w) * slope, zero on ignored rows.
fn grad_from_p(rs: CeRow, k: GradCoef, i: u32, p: vec_t, slope: vec_t) -> vec_t {
    let onehot = select(vec_t(0.0), vec_t(1.0), col_of(i) == vec_u(u32(max(rs.label, 0))));
    var g = grad_core(k, p, onehot);
    if (k.c != 0.0) {
        g -= vec_t(k.c) * class_weights(i);
    }
    return select(g * slope, vec_t(0.0), rs.ignored);
}

// Lane 0 of each active row writes the row's results.
fn write_row(seg: Seg, rs: CeRow) {
    if (row_writer(seg)) {
        row_out[params.row_base + seg.row] = vec4<f32>(rs.ce, rs.z, rs.m + rs.ls, 0.0);
    }
}

@compute @workgroup_size(WG)
fn ce_loss(ids: Ids) {
    let seg = seg_of(ids);
    write_row(seg, ce_row(seg));
}

// A held row: every lane's vectors of it read once into registers (only
// the raw logits: a GPU holding 1024 invocations per workgroup has 64
// registers each), the capped values, max and smoothing sum from them;
// without a softcap each f32 register then keeps exp(x - m), so the
// gradient takes one exp per element, not two (16-bit registers keep the
// packed logits: `HOLD_KEEPS_F32`). The registers are the caller's array
// (as softmax's `load_held`). Serves every option.
struct HeldStats { total: f32, rs: CeRow, k: GradCoef }

fn ce_held_row(seg: Seg, h: ptr<function, array<held_t, HOLD>>) -> HeldStats {
    let src = row_src(params.base_a, min(seg.row, params.rows - 1u));
    let smoothing = has_smoothing();
    // The smoothing sum relative to the row's first logit, as `ce_chunk`.
    var r = 0.0;
    if (smoothing) { r = ce_reference(src); }
    var mx = neg_inf();
    var wacc = bsum_empty();
    for (var k = 0u; k < HOLD; k = k + 1u) {
        let i = held_index(seg, k);
        if (i < seg.end) {
            let x = load_logits(src, i);
            (*h)[k] = hold(x);
            let xc = capped(x);
            mx = max(mx, hmax(masked(xc, i, neg_inf())));
            if (smoothing) {
                wacc = bsum_push(wacc, hsum(masked(class_weights(i) * (xc - vec_t(r)), i, 0.0)));
            }
        }
    }
    // The vector past the registers (`unheld_vec`), read on each pass.
    let u = unheld_vec(seg);
    if (u != NOT_EDGE) {
        let xc = capped(load_logits(src, u));
        mx = max(mx, hmax(masked(xc, u, neg_inf())));
        if (smoothing) {
            wacc = bsum_push(wacc, hsum(masked(class_weights(u) * (xc - vec_t(r)), u, 0.0)));
        }
    }
    let m = seg_max(seg.tid, mx);
    let wsum = seg_sum(seg.tid, bsum_total(wacc));
    let keep_exp = !has_softcap() && HOLD_KEEPS_F32;
    var s = 0.0;
    for (var k = 0u; k < HOLD; k = k + 1u) {
        let i = held_index(seg, k);
        if (i < seg.end) {
            let e = exp_from_max(masked(capped(unhold((*h)[k])), i, neg_inf()), m);
            s += hsum(e);
            if (keep_exp) { (*h)[k] = hold(e); }
        }
    }
    if (u != NOT_EDGE) { s += hsum(exp_from_max(masked(capped(load_logits(src, u)), u, neg_inf()), m)); }
    var hs: HeldStats;
    hs.total = seg_sum(seg.tid, s);
    hs.rs = ce_finish(seg, RowStat(m, hs.total), wsum, r);
    write_row(seg, hs.rs);
    hs.k = grad_coef(hs.rs);
    return hs;
}

// The gradient of a held vector (row vector `i`), from its register `v`:
// exp(x - m) without a softcap where f32 registers keep it, else the raw
// logit (a softcap's value and slope come from one exp).
// p = exp(x' - m) / s. A row with NaN or infinite logits gets its NaNs
// where the streaming path's
// p = exp((x' - m) - log s) puts them: at the elements equal to an
// infinite max (there exp(x' - m) is exactly 1; elsewhere 0); a NaN max
// makes s NaN, so the whole row. A select, not a branch: lavapipe runs
// both sides of a branch whose lanes disagree.
// `kept`: v is exp(x - m) (f32 registers keep it), not the raw logits.
fn held_grad(hs: HeldStats, v: vec_t, i: u32, kept: bool) -> vec_t {
    // exp(x' - m) is at most 1, so a finite row compares against 2: never.
    let nan_at = vec_t(select(2.0, 1.0, !is_finite(hs.rs.m + hs.rs.ls)));
    if (has_softcap()) {
        let both = softcap_both(v, params.softcap);
        let e = exp_from_max(both.value, hs.rs.m);
        let p = select(e / vec_t(hs.total), vec_t(nan()), e == nan_at);
        return grad_from_p(hs.rs, hs.k, i, p, both.slope);
    }
    var e = v;
    if (!kept) { e = exp_from_max(masked(v, i, neg_inf()), hs.rs.m); }
    let p = select(e / vec_t(hs.total), vec_t(nan()), e == nan_at);
    return grad_from_p(hs.rs, hs.k, i, p, vec_t(1.0));
}

// Entry points branch only on what every lane agrees on (the launch, the
// options) and never `return` from inside a branch: lavapipe runs the code
// past such a return, and both sides of a branch whose lanes disagree,
// under masks. A per-row branch around the gradient loops made
// cross-entropy 4 to 5x slower than softmax at 1048576x32 there.
@compute @workgroup_size(WG)
fn ce_loss_grad(ids: Ids) {
    let seg = seg_of(ids);
    if (holds_rows()) {
        var h: array<held_t, HOLD>;
        let hs = ce_held_row(seg, &h);
        let dst = row_src(params.base_out, seg.row);
        for (var j = 0u; j < HOLD; j = j + 1u) {
            let i = held_index(seg, j);
            if (i < seg.end) {
                store_grad(dst, i, held_grad(hs, unhold(h[j]), i, HOLD_KEEPS_F32));
            }
        }
        let u = unheld_vec(seg);
        if (u != NOT_EDGE) {
            let src = row_src(params.base_a, seg.row);
            store_grad(dst, u, held_grad(hs, load_logits(src, u), u, false));
        }
    } else {
        let rs = ce_row(seg);
        write_row(seg, rs);
        let k = grad_coef(rs);
        let src = row_src(params.base_a, seg.row);
        let dst = row_src(params.base_out, seg.row);
        // The target's vector, by its owner, before any store (in place, the
        // loops below overwrite it).
        let yv = vec_of_col(u32(max(rs.label, 0)));
        let owns_y = yv >= seg.first && yv < seg.end && (yv - seg.first) % TPR == seg.lane;
        var xy = vec_t(0.0);
        if (owns_y) { xy = load_logits(src, yv); }
        for (var i = loop_start(seg); i < loop_stop(seg); i += TPR) {
            store_grad_whole(dst, i, streamed_grad(rs, k, i, load_logits(src, i)));
        }
        for (var e = 0u; e < 2u; e++) {
            let i = shared_vec(seg, e);
            if (i != NOT_EDGE) { store_grad(dst, i, streamed_grad(rs, k, i, load_logits(src, i))); }
        }
        // The fast paths leave out the one-hot term: the owner rewrites the
        // target's vector (same invocation, so after its own store).
        if (grad_path() != GRAD_GENERAL && owns_y) { store_grad(dst, yv, grad_at(rs, k, yv, xy)); }
    }
}

// How a streamed row's gradient is computed, chosen from the options alone
// (the same for every lane, fixed when the pipeline is built): without class weights
// and smoothing together, g = a p - c everywhere but the target's vector,
// through the softcap's slope if any; an ignored row's coefficients are
// all 0, and a select (not a branch) makes its gradient exactly 0.
const GRAD_GENERAL: u32 = 0u;
const GRAD_PLAIN: u32 = 1u;
const GRAD_SOFTCAP: u32 = 2u;

fn grad_path() -> u32 {
    if (has_weights() && has_smoothing()) { return GRAD_GENERAL; }
    return select(GRAD_PLAIN, GRAD_SOFTCAP, has_softcap());
}

// The gradient of streamed vector `i` (logits `x`) by the row's path. The
// path depends on the options alone, which the pipeline is built for
// (`spec_or`), so the compiler keeps one of the three.
fn streamed_grad(rs: CeRow, k: GradCoef, i: u32, x: vec_t) -> vec_t {
    let path = grad_path();
    if (path == GRAD_SOFTCAP) { return grad_softcap(rs, k, x); }
    if (path == GRAD_PLAIN) { return grad_plain(rs, k, x); }
    return grad_at(rs, k, i, x);
}

fn grad_plain(rs: CeRow, k: GradCoef, x: vec_t) -> vec_t {
    let g = vec_t(k.a) * exp((x - vec_t(rs.m)) - vec_t(rs.ls)) - vec_t(k.c);
    return select(g, vec_t(0.0), rs.ignored);
}

// The softcap's value and slope from one exp.
fn grad_softcap(rs: CeRow, k: GradCoef, x: vec_t) -> vec_t {
    let both = softcap_both(x, params.softcap);
    let p = exp((both.value - vec_t(rs.m)) - vec_t(rs.ls));
    return select((vec_t(k.a) * p - vec_t(k.c)) * both.slope, vec_t(0.0), rs.ignored);
}

@compute @workgroup_size(WG)
fn ce_loss_grad_in_place(ids: Ids) {
    let seg = seg_of(ids);
    if (holds_rows()) {
        var h: array<held_t, HOLD>;
        let hs = ce_held_row(seg, &h);
        let src = row_src(params.base_a, seg.row);
        // Every thread's reads of the row (its vectors, x[0], x[y]) precede
        // this barrier; the row is written from the registers after it.
        storageBarrier();
        workgroupBarrier();
        for (var j = 0u; j < HOLD; j = j + 1u) {
            let i = held_index(seg, j);
            if (i < seg.end) {
                store_logits(src, i, held_grad(hs, unhold(h[j]), i, HOLD_KEEPS_F32));
            }
        }
        // No other lane writes this vector (a shared one goes to `edge_vecs`).
        let u = unheld_vec(seg);
        if (u != NOT_EDGE) { store_logits(src, u, held_grad(hs, load_logits(src, u), u, false)); }
    } else {
        var rs: CeRow;
        if (split_rows()) {
            // `ce_loss` wrote the row's results before this pass; reading the
            // row's target or first logit here would race with the chunks of
            // other workgroups overwriting them.
            rs = ce_row_merged(seg);
        } else {
            rs = ce_row(seg);
            write_row(seg, rs);
        }
        let k = grad_coef(rs);
        let src = row_src(params.base_a, seg.row);
        // Every thread's reads of this row in ce_row (x[0], x[y], the stats pass)
        // precede this barrier; storageBarrier orders them against the writes below.
        storageBarrier();
        workgroupBarrier();
        // As `ce_loss_grad`, so that both give the same bits.
        let yv = vec_of_col(u32(max(rs.label, 0)));
        let owns_y = yv >= seg.first && yv < seg.end && (yv - seg.first) % TPR == seg.lane;
        var xy = vec_t(0.0);
        if (owns_y) { xy = load_logits(src, yv); }
        for (var i = loop_start(seg); i < loop_stop(seg); i += TPR) {
            store_logits_whole(src, i, streamed_grad(rs, k, i, load_logits(src, i)));
        }
        for (var e = 0u; e < 2u; e++) {
            let i = shared_vec(seg, e);
            if (i != NOT_EDGE) { store_logits(src, i, streamed_grad(rs, k, i, load_logits(src, i))); }
        }
        if (grad_path() != GRAD_GENERAL && owns_y) { store_logits(src, yv, grad_at(rs, k, yv, xy)); }
    }
}

// Compensated sums of one block of row losses (ce, z) (see `fold_records`).
@compute @workgroup_size(WG)
fn ce_reduce_partial(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let tid = lid.x;
    let g = row_of(wid, nwg);
    let first = g * WG * params.fold_span + tid;
    var ce = 0.0;
    var ce_c = 0.0;
    var z = 0.0;
    var z_c = 0.0;
    for (var j = 0u; j < params.fold_span; j++) {
        let i = first + j * WG;
        if (i >= params.total_rows) { break; }
        let v = row_out[i];
        neumaier(&ce, &ce_c, v.x);
        neumaier(&z, &z_c, v.y);
    }
    let ce_total = wg_reduce_sum(tid, ce + ce_c);
    let z_total = wg_reduce_sum(tid, z + z_c);
    if (tid == 0u && single_block(nwg)) {
        ce_reduce_finish(ce_total + 0.0, z_total + 0.0);
    } else if (tid == 0u) {
        chunk_stats[g] = vec4<f32>(ce_total, z_total, 0.0, 0.0);
    }
}

// Folds the blocks' sums into result = [loss, z-loss part], mean or sum.
@compute @workgroup_size(WG)
fn ce_reduce(@builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    var ce = 0.0;
    var ce_c = 0.0;
    var z = 0.0;
    var z_c = 0.0;
    let n = fold_records(params.total_rows);
    for (var g = tid; g < n; g += WG) {
        let r = chunk_stats[g];
        neumaier(&ce, &ce_c, r.x);
        neumaier(&z, &z_c, r.y);
    }
    let ce_total = wg_reduce_sum(tid, ce + ce_c);
    let z_total = wg_reduce_sum(tid, z + z_c);
    if (tid == 0u) {
        ce_reduce_finish(ce_total, z_total);
    }
}

// result = [loss, z-loss part] from the totals of every block.
fn ce_reduce_finish(ce_total: f32, z_total: f32) {
    var ce_part = ce_total;
    var z_part = z_total;
    if (params.reduction == REDUCTION_MEAN) {
        ce_part = ce_total / scalars[0];
        z_part = select(0.0, z_total / scalars[1], has_z_loss());
    }
    result[0] = ce_part + z_part;
    result[1] = z_part;
}

// ---- Probability targets: q' = (1-eps) q + eps/C, l_i = -sum_c w[c] q'_c lp_c (+ z lse^2),
// g_j = s (p_j B - w_j q'_j) + s_z 2 z lse p_j with B = sum_c w[c] q'_c; mean divides by N
// (the host stores N in scalars[0] and scalars[1]).

struct SoftRow { m: f32, ls: f32, b: f32, ce: f32, z: f32 }

fn soft_q(i: u32, q: vec_t) -> vec_t {
    let eps = params.smoothing;
    return vec_t(1.0 - eps) * q + vec_t(eps / f32(params.cols));
}

// This segment's statistics of x' and its sums A = sum w q' (x' - r) and
// B = sum w q' (r: the row's first capped logit, so that a large common
// offset cancels before summation).
struct SoftChunk { st: RowStat, a: f32, b: f32, r: f32 }

fn soft_chunk(seg: Seg) -> SoftChunk {
    let row = min(seg.row, params.rows - 1u);
    let src = row_src(params.base_a, row);
    let qsrc = row_src(params.base_b, row);
    let r = ce_reference(src);
    var acc = stat_empty();
    var a_acc = bsum_empty();
    var b_acc = bsum_empty();
    for (var i = seg.first + seg.lane; i < seg.end; i += TPR) {
        let v = capped(load_logits(src, i));
        acc = stat_push(acc, masked(v, i, neg_inf()));
        let wq = class_weights(i) * soft_q(i, load_soft_targets(qsrc, i));
        a_acc = bsum_push(a_acc, hsum(masked(wq * (v - vec_t(r)), i, 0.0)));
        b_acc = bsum_push(b_acc, hsum(masked(wq, i, 0.0)));
    }
    let st = seg_stat(seg.tid, acc);
    let a = seg_sum(seg.tid, bsum_total(a_acc));
    let b = seg_sum(seg.tid, bsum_total(b_acc));
    return SoftChunk(st, a, b, r);
}

// First pass over split rows with probability targets: each chunk's
// statistics and its sums A and B.
@compute @workgroup_size(WG)
fn ce_soft_partial(ids: Ids) {
    let seg = seg_of(ids);
    let c = soft_chunk(seg);
    write_partial2(seg, c.st, c.a, c.b);
}

fn soft_row(seg: Seg) -> SoftRow {
    var c: SoftChunk;
    if (split_rows()) {
        // Every chunk took A relative to the same r, the row's first logit.
        let row = min(seg.row, params.rows - 1u);
        let p = merged_partials(row);
        c = SoftChunk(RowStat(p.x, p.y), p.z, p.w, ce_reference(row_src(params.base_a, row)));
    } else {
        c = soft_chunk(seg);
    }
    return soft_finish(c);
}

// The row's loss from its statistics and sums A and B (relative to r).
fn soft_finish(c: SoftChunk) -> SoftRow {
    let st = c.st;
    let ls = log(st.s);
    let lse = st.m + ls;
    var z = 0.0;
    if (has_z_loss()) {
        z = params.z_loss * lse * lse;
    }
    return SoftRow(st.m, ls, c.b, c.b * ((st.m - c.r) + ls) - c.a, z);
}

// A held row with probability targets: the logits read once into
// registers; the targets twice (for A and B, then for the gradient), since
// holding them too would take twice the registers.
fn soft_held_grad(seg: Seg) {
    let row = min(seg.row, params.rows - 1u);
    let src = row_src(params.base_a, row);
    let qsrc = row_src(params.base_b, row);
    let dst = row_src(params.base_out, seg.row);
    let r = ce_reference(src);
    var x: array<held_t, HOLD>;
    var mx = neg_inf();
    var a_acc = bsum_empty();
    var b_acc = bsum_empty();
    for (var j = 0u; j < HOLD; j = j + 1u) {
        let i = held_index(seg, j);
        if (i < seg.end) {
            let xv = load_logits(src, i);
            x[j] = hold(xv);
            let v = capped(xv);
            mx = max(mx, hmax(masked(v, i, neg_inf())));
            let wq = class_weights(i) * soft_q(i, load_soft_targets(qsrc, i));
            a_acc = bsum_push(a_acc, hsum(masked(wq * (v - vec_t(r)), i, 0.0)));
            b_acc = bsum_push(b_acc, hsum(masked(wq, i, 0.0)));
        }
    }
    // The vector past the registers (`unheld_vec`), read on each pass.
    let u = unheld_vec(seg);
    if (u != NOT_EDGE) {
        let v = capped(load_logits(src, u));
        mx = max(mx, hmax(masked(v, u, neg_inf())));
        let wq = class_weights(u) * soft_q(u, load_soft_targets(qsrc, u));
        a_acc = bsum_push(a_acc, hsum(masked(wq * (v - vec_t(r)), u, 0.0)));
        b_acc = bsum_push(b_acc, hsum(masked(wq, u, 0.0)));
    }
    let m = seg_max(seg.tid, mx);
    let a = seg_sum(seg.tid, bsum_total(a_acc));
    let b = seg_sum(seg.tid, bsum_total(b_acc));
    var s = 0.0;
    for (var j = 0u; j < HOLD; j = j + 1u) {
        let i = held_index(seg, j);
        if (i < seg.end) { s += hsum(exp_from_max(masked(capped(unhold(x[j])), i, neg_inf()), m)); }
    }
    if (u != NOT_EDGE) { s += hsum(exp_from_max(masked(capped(load_logits(src, u)), u, neg_inf()), m)); }
    let total = seg_sum(seg.tid, s);
    let rs = soft_finish(SoftChunk(RowStat(m, total), a, b, r));
    write_soft_row(seg, rs);
    let k = soft_grad_scale();
    let kz = soft_z_scale(rs);
    for (var j = 0u; j < HOLD; j = j + 1u) {
        let i = held_index(seg, j);
        if (i < seg.end) {
            store_grad(dst, i, soft_held_vec(rs, k, kz, total, qsrc, i, unhold(x[j])));
        }
    }
    if (u != NOT_EDGE) { store_grad(dst, u, soft_held_vec(rs, k, kz, total, qsrc, u, load_logits(src, u))); }
}

// The gradient of held vector i from its raw logits `x`.
fn soft_held_vec(rs: SoftRow, k: f32, kz: f32, total: f32, qsrc: u32, i: u32, x: vec_t) -> vec_t {
    var cx = x;
    var slope = vec_t(1.0);
    if (has_softcap()) {
        let both = softcap_both(cx, params.softcap);
        cx = both.value;
        slope = both.slope;
    }
    var p = exp_from_max(cx, rs.m) / vec_t(total);
    if (!is_finite(rs.m + rs.ls)) { p = exp((cx - vec_t(rs.m)) - vec_t(rs.ls)); }
    let g = vec_t(k) * (vec_t(rs.b) * p - class_weights(i) * soft_q(i, load_soft_targets(qsrc, i))) + vec_t(kz) * p;
    return g * slope;
}

fn soft_grad_scale() -> f32 {
    return select(params.grad_scale, params.grad_scale / scalars[0], params.reduction == REDUCTION_MEAN);
}

// The z-loss part apart from k (B p - w q'): where p = q' (C = 1, or a
// perfect fit) that difference is 0 exactly and the z part keeps its digits.
fn soft_z_scale(rs: SoftRow) -> f32 {
    if (!has_z_loss()) { return 0.0; }
    let mean = params.reduction == REDUCTION_MEAN;
    return select(params.grad_scale, params.grad_scale / scalars[1], mean) * 2.0 * params.z_loss * (rs.m + rs.ls);
}

fn write_soft_row(seg: Seg, rs: SoftRow) {
    if (row_writer(seg)) {
        row_out[params.row_base + seg.row] = vec4<f32>(rs.ce, rs.z, rs.m + rs.ls, 0.0);
    }
}

@compute @workgroup_size(WG)
fn ce_soft_loss(ids: Ids) {
    let seg = seg_of(ids);
    write_soft_row(seg, soft_row(seg));
}

@compute @workgroup_size(WG)
fn ce_soft_loss_grad(ids: Ids) {
    let seg = seg_of(ids);
    if (holds_rows()) {
        soft_held_grad(seg);
    } else {
        soft_streamed_grad(seg);
    }
}

fn soft_streamed_grad(seg: Seg) {
    let rs = soft_row(seg);
    write_soft_row(seg, rs);
    let k = soft_grad_scale();
    let kz = soft_z_scale(rs);
    let src = row_src(params.base_a, seg.row);
    let qsrc = row_src(params.base_b, seg.row);
    let dst = row_src(params.base_out, seg.row);
    for (var i = loop_start(seg); i < loop_stop(seg); i += TPR) {
        store_grad_whole(dst, i, soft_streamed_vec(rs, k, kz, src, qsrc, i));
    }
    for (var e = 0u; e < 2u; e++) {
        let i = shared_vec(seg, e);
        if (i != NOT_EDGE) { store_grad(dst, i, soft_streamed_vec(rs, k, kz, src, qsrc, i)); }
    }
}

fn soft_streamed_vec(rs: SoftRow, k: f32, kz: f32, src: u32, qsrc: u32, i: u32) -> vec_t {
    let x = load_logits(src, i);
    let p = exp((capped(x) - vec_t(rs.m)) - vec_t(rs.ls));
    let g = vec_t(k) * (vec_t(rs.b) * p - class_weights(i) * soft_q(i, load_soft_targets(qsrc, i))) + vec_t(kz) * p;
    return g * cap_slope(x);
}

// ---- Multiclass (softmax) focal loss: l_i = -alpha[y] (1 - p_y)^gamma log p_y, zero on ignored
// rows, mean over kept rows. With q = 1 - p_y and lp = log p_y:
//   dl/dx_j = F (p_j - [j = y]),  F = alpha[y] (q^gamma - gamma q^(gamma-1) p_y lp)
// (from d p_y/dx_j = p_y ([j = y] - p_j) and d lp/dx_j = [j = y] - p_j). The per-class alpha
// rides in the `weights` binding.

// exp(x) - 1 without cancellation near 0: WGSL has no expm1. It gives the
// focal factor 1 - p_y accurately when p_y is close to 1. Near 0 a Taylor
// series to x^9 (relative error below 1e-11 for |x| < 1/4), using no log:
// Kahan's (u - 1) x / log(u) divides by log(u) near u = 1, where Vulkan lets
// log be off by 2^-21 absolute, as large as the value itself. Past 1/4,
// exp(x) - 1 loses nothing that matters.
fn expm1_accurate(x: f32) -> f32 {
    var t = 1.0 / 362880.0;
    t = t * x + 1.0 / 40320.0;
    t = t * x + 1.0 / 5040.0;
    t = t * x + 1.0 / 720.0;
    t = t * x + 1.0 / 120.0;
    t = t * x + 1.0 / 24.0;
    t = t * x + 1.0 / 6.0;
    t = t * x + 0.5;
    let series = x + x * x * t;
    return select(exp(x) - 1.0, series, abs(x) < 0.25);
}

struct FocalRow { m: f32, ls: f32, label: i32, ignored: bool, loss: f32, f: f32 }

fn focal_row(seg: Seg) -> FocalRow {
    let row = min(seg.row, params.rows - 1u);
    let src = row_src(params.base_a, row);
    var st: RowStat;
    if (split_rows()) {
        // The chunks' statistics from `ce_partial` (no smoothing, no softcap).
        let p = merged_partials(row);
        st = RowStat(p.x, p.y);
    } else {
        var acc = stat_empty();
        for (var i = seg.first + seg.lane; i < seg.end; i += TPR) {
            acc = stat_push(acc, masked(load_logits(src, i), i, neg_inf()));
        }
        st = seg_stat(seg.tid, acc);
    }
    return focal_finish(seg, st);
}

// The row's loss and gradient factor from its statistics.
fn focal_finish(seg: Seg, st: RowStat) -> FocalRow {
    let row = min(seg.row, params.rows - 1u);
    let src = row_src(params.base_a, row);
    let t = targets[params.row_base + row];
    let ls = log(st.s);
    let ignored = t == params.ignore_index;
    var loss = 0.0;
    var f = 0.0;
    if (!ignored && !target_valid(t)) {
        loss = nan();
        f = nan();
    } else if (!ignored) {
        let y = u32(t);
        let lp = (lane(load_logits(src, vec_of_col(y)), lane_of_col(y)) - st.m) - ls;
        let p = exp(lp);
        // max() would turn a NaN row (NaN or inf - inf in the logits) into q = 0 and
        // a loss of 0; keep the NaN so the row reports it.
        let q_raw = -expm1_accurate(lp);
        let q = select(max(q_raw, 0.0), q_raw, is_nan(q_raw));
        let a = class_weight(y);
        let gamma = params.gamma;
        if (gamma == 0.0) {
            loss = -a * lp;
            f = a;
        } else if (q == 0.0) {
            loss = 0.0;
            f = 0.0;
        } else {
            let qg = pow(q, gamma);
            loss = -a * qg * lp;
            f = a * (qg - gamma * pow(q, gamma - 1.0) * p * lp);
        }
    }
    return FocalRow(st.m, ls, t, ignored, loss, f);
}

fn write_focal_row(seg: Seg, rs: FocalRow) {
    if (row_writer(seg)) {
        row_out[params.row_base + seg.row] = vec4<f32>(rs.loss, 0.0, rs.m + rs.ls, 0.0);
    }
}

@compute @workgroup_size(WG)
fn focal_loss(ids: Ids) {
    let seg = seg_of(ids);
    write_focal_row(seg, focal_row(seg));
}

fn focal_grad_scale(rs: FocalRow) -> f32 {
    return select(params.grad_scale, params.grad_scale / scalars[0], params.reduction == REDUCTION_MEAN) * rs.f;
}

@compute @workgroup_size(WG)
fn focal_loss_grad(ids: Ids) {
    let seg = seg_of(ids);
    let src = row_src(params.base_a, seg.row);
    let dst = row_src(params.base_out, seg.row);
    let y = vec_u(u32(max(targets[params.row_base + min(seg.row, params.rows - 1u)], 0)));
    if (holds_rows()) {
        // The row read once into registers, as `ce_held_row`.
        var x: array<held_t, HOLD>;
        var mx = neg_inf();
        for (var j = 0u; j < HOLD; j = j + 1u) {
            let i = held_index(seg, j);
            if (i < seg.end) {
                let v = load_logits(src, i);
                x[j] = hold(v);
                mx = max(mx, hmax(masked(v, i, neg_inf())));
            }
        }
        // The vector past the registers (`unheld_vec`), read on each pass.
        let u = unheld_vec(seg);
        if (u != NOT_EDGE) { mx = max(mx, hmax(masked(load_logits(src, u), u, neg_inf()))); }
        let m = seg_max(seg.tid, mx);
        var s = 0.0;
        // f32 registers keep exp(x - m): one exp per element, as `ce_held_row`.
        for (var j = 0u; j < HOLD; j = j + 1u) {
            let i = held_index(seg, j);
            if (i < seg.end) {
                let e = exp_from_max(masked(unhold(x[j]), i, neg_inf()), m);
                s += hsum(e);
                if (HOLD_KEEPS_F32) { x[j] = hold(e); }
            }
        }
        if (u != NOT_EDGE) { s += hsum(exp_from_max(masked(load_logits(src, u), u, neg_inf()), m)); }
        let total = seg_sum(seg.tid, s);
        let rs = focal_finish(seg, RowStat(m, total));
        write_focal_row(seg, rs);
        let k = focal_grad_scale(rs);
        // A non-finite row's NaNs by a select, as `held_grad`.
        let nan_at = vec_t(select(2.0, 1.0, !is_finite(rs.m + rs.ls)));
        for (var j = 0u; j < HOLD; j = j + 1u) {
            let i = held_index(seg, j);
            if (i < seg.end) {
                var e = unhold(x[j]);
                if (!HOLD_KEEPS_F32) { e = exp_from_max(masked(e, i, neg_inf()), m); }
                store_grad(dst, i, focal_held_vec(rs, k, total, nan_at, y, i, e));
            }
        }
        if (u != NOT_EDGE) {
            let e = exp_from_max(masked(load_logits(src, u), u, neg_inf()), m);
            store_grad(dst, u, focal_held_vec(rs, k, total, nan_at, y, u, e));
        }
    } else {
        focal_streamed_grad(seg, src, dst, y);
    }
}

// The gradient of held vector i from e = exp(x - m).
fn focal_held_vec(rs: FocalRow, k: f32, total: f32, nan_at: vec_t, y: vec_u, i: u32, e: vec_t) -> vec_t {
    let p = select(e / vec_t(total), vec_t(nan()), e == nan_at);
    let onehot = select(vec_t(0.0), vec_t(1.0), col_of(i) == y);
    return select(vec_t(k) * (p - onehot), vec_t(0.0), rs.ignored);
}

fn focal_streamed_grad(seg: Seg, src: u32, dst: u32, y: vec_u) {
    let rs = focal_row(seg);
    write_focal_row(seg, rs);
    let k = focal_grad_scale(rs);
    for (var i = loop_start(seg); i < loop_stop(seg); i += TPR) {
        store_grad_whole(dst, i, focal_streamed_vec(rs, k, src, y, i));
    }
    for (var e = 0u; e < 2u; e++) {
        let i = shared_vec(seg, e);
        if (i != NOT_EDGE) { store_grad(dst, i, focal_streamed_vec(rs, k, src, y, i)); }
    }
}

fn focal_streamed_vec(rs: FocalRow, k: f32, src: u32, y: vec_u, i: u32) -> vec_t {
    let p = exp((load_logits(src, i) - vec_t(rs.m)) - vec_t(rs.ls));
    let onehot = select(vec_t(0.0), vec_t(1.0), col_of(i) == y);
    return select(vec_t(k) * (p - onehot), vec_t(0.0), rs.ignored);
}

// Copies per-row results out of the internal row buffer into the caller's
// buffers (encode API): loss_rows[i] = ce_i + z_i, lse_rows[i] = lse_i, one
// row per invocation.
@compute @workgroup_size(WG)
fn ce_export(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = row_of(wid, nwg) * WG + lid.x;
    if (i >= params.total_rows) { return; }
    let v = row_out[i];
    if ((params.flags & FLAG_EXPORT_LOSS) != 0u) { loss_rows[i] = v.x + v.y; }
    if ((params.flags & FLAG_EXPORT_LSE) != 0u) { lse_rows[i] = v.z; }
}

// Edged rows' shared vectors into the gradient (see `edge_stores`).
@compute @workgroup_size(WG)
fn ce_edges(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let r = min(edge_row(wid, nwg, lid), params.rows - 1u);
    let e = edge_stores(r, row_src(params.base_out, r));
    if (edge_row(wid, nwg, lid) < params.rows && MAT_STORES) {
        if ((e.merge & 1u) != 0u) { grad[e.first] = mat_merge(grad[e.first], pack_mat(e.first_v), e.keep_first); }
        if ((e.merge & 2u) != 0u) { grad[e.last] = mat_merge(grad[e.last], pack_mat(e.last_v), e.keep_last); }
    }
}

// The same, in place: into the logits.
@compute @workgroup_size(WG)
fn ce_edges_in_place(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let r = min(edge_row(wid, nwg, lid), params.rows - 1u);
    let e = edge_stores(r, row_src(params.base_a, r));
    if (edge_row(wid, nwg, lid) < params.rows && MAT_STORES) {
        if ((e.merge & 1u) != 0u) { logits[e.first] = mat_merge(logits[e.first], pack_mat(e.first_v), e.keep_first); }
        if ((e.merge & 2u) != 0u) { logits[e.last] = mat_merge(logits[e.last], pack_mat(e.last_v), e.keep_last); }
    }
}
