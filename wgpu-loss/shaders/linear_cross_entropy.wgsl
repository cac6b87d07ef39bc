// Fused linear + cross-entropy, the parts that are not matrix products
// (`linear.wgsl` makes each chunk of logits z = H W^T + b in a workspace).
// Kernels, in dispatch order for one chunk of rows of one vocabulary shard
// [shard_start, shard_start + cols):
//   lce_records    (one workgroup per row)  the row's record over the shard
//   lce_merge      (one invocation per row) every shard's record -> row loss, lse
//   lce_grad       (one workgroup per row)  logits -> their gradient, in place
//   lce_bias_grad  (one invocation per column) column sums -> bias gradient
// With x' = softcap(x), a shard k's record of row i is two vec4s:
//   (m_k, s_k, t_k, q_k), (W_k, r_k, f_k, 0)
// m_k = max x', s_k = sum exp(x' - m_k), t_k = x'[y] if y is in the shard
// (f_k = 1) else 0 (f_k = 0), r_k = the shard's first x' (0 if not finite),
// q_k = sum_c w[c] (x'_c - r_k), W_k = sum_c w[c]. The merge folds them in
// shard order: lse = logsumexp over shards, and the smoothing sum
//   sum_c w[c] (lse - x'_c) = sum_k (W_k (lse - r_k) - q_k).
// Row i's loss is cross_entropy.wgsl's:
//   ce_i = (1-eps) w[y] (lse - x'[y]) + (eps/C) sum_c w[c] (lse - x'_c),  z_i = z lse^2

@group(0) @binding(1) var<storage, read_write> logits: array<f32>;    // the chunk workspace [rows, cols]
@group(0) @binding(2) var<storage, read> targets: array<i32>;         // [N], global rows
@group(0) @binding(3) var<storage, read> weights: array<f32>;         // [C] class weights, global classes
@group(0) @binding(4) var<storage, read> scalars: array<f32>;         // [D, kept rows, W, 0] (ce_denominator)
// [shards][rows][2] from vec4 `base_b`, its first row being row `base_d`
@group(0) @binding(5) var<storage, read_write> records: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> row_out: array<vec4<f32>>; // per row (ce, z, lse, 0)
@group(0) @binding(7) var<storage, read_write> lse_out: array<f32>;   // per row lse
@group(0) @binding(8) var<storage, read> lse_in: array<f32>;          // per row lse (merged)
@group(0) @binding(9) var<storage, read_write> bias_grad: array<f32>; // [cols] at base_out

const FLAG_WEIGHTS: u32 = 1u;
const FLAG_SOFTCAP: u32 = 2u;
const FLAG_ACCUMULATE: u32 = 4u;
const REDUCTION_MEAN: u32 = 1u;

fn has_weights() -> bool { return (params.flags & FLAG_WEIGHTS) != 0u; }

fn weight_of(j: u32) -> f32 {
    if (has_weights()) { return weights[j]; }
    return 1.0;
}

fn capped(v: f32) -> f32 {
    if ((params.flags & FLAG_SOFTCAP) == 0u) { return v; }
    return softcap_value(v, params.softcap);
}

fn cap_slope(v: f32) -> f32 {
    if ((params.flags & FLAG_SOFTCAP) == 0u) { return 1.0; }
    return softcap_slope(v, params.softcap);
}

// A target outside [0, C) that is not ignore_index makes its row NaN.
fn target_valid(t: i32) -> bool { return t >= 0 && u32(t) < params.classes; }

@compute @workgroup_size(WG)
fn lce_records(ids: Ids) {
    let tid = thread_of(ids);
    let row = row_of(ids.wid, ids.nwg);
    let live = row < params.rows;
    let src = params.base_a + min(row, params.rows - 1u) * params.cols;
    // Sums are taken relative to the shard's first logit so that a large
    // common offset cancels before summation instead of after.
    let r0 = capped(logits[src]);
    let r = select(0.0, r0, is_finite(r0));
    var acc = stat_empty();
    var q = bsum_empty();
    var wk = bsum_empty();
    let smoothing = params.smoothing > 0.0;
    for (var c = tid; c < params.cols; c = c + WG) {
        let v = capped(logits[src + c]);
        acc = stat_push(acc, v);
        if (smoothing) {
            let w = weight_of(params.shard_start + c);
            q = bsum_push(q, w * (v - r));
            wk = bsum_push(wk, w);
        }
    }
    let st = seg_stat(tid, acc);
    var qs = 0.0;
    var ws = f32(params.cols);
    if (smoothing) {
        qs = seg_sum(tid, bsum_total(q));
        if (has_weights()) { ws = seg_sum(tid, bsum_total(wk)); }
    }
    if (tid == 0u && live) {
        let g = params.row_base + row;
        let t = targets[g];
        var tv = 0.0;
        var found = 0.0;
        if (t != params.ignore_index && t >= i32(params.shard_start)
            && u32(t) - params.shard_start < params.cols) {
            tv = capped(logits[src + (u32(t) - params.shard_start)]);
            found = 1.0;
        }
        let at = params.base_b + 2u * (g - params.base_d);
        records[at] = vec4<f32>(st.m, st.s, tv, qs);
        records[at + 1u] = vec4<f32>(ws, r, found, 0.0);
    }
}

@compute @workgroup_size(WG)
fn lce_merge(ids: Ids) {
    let i = row_of(ids.wid, ids.nwg) * WG + thread_of(ids);
    if (i >= params.rows) { return; }
    let g = params.row_base + i;
    let n = params.total_rows;
    var st = RowStat(neg_inf(), 0.0);
    var xy = 0.0;
    var found = 0.0;
    for (var k = 0u; k < params.shards; k = k + 1u) {
        let at = params.base_b + 2u * (k * n + g - params.base_d);
        let a = records[at];
        let b = records[at + 1u];
        st = stat_merge(st, RowStat(a.x, a.y));
        if (b.z != 0.0) { xy = a.z; }
        found = found + b.z;
    }
    let ls = log(st.s);
    let lse = st.m + ls;
    let t = targets[g];
    let eps = params.smoothing;
    var ce = 0.0;
    var z = 0.0;
    if (t != params.ignore_index) {
        if (!target_valid(t) || found != 1.0) {
            ce = nan();
        } else {
            ce = (1.0 - eps) * weight_of(u32(t)) * ((st.m - xy) + ls);
            if (eps > 0.0) {
                var smoothing_sum = 0.0;
                for (var k = 0u; k < params.shards; k = k + 1u) {
                    let at = params.base_b + 2u * (k * n + g - params.base_d);
                    let a = records[at];
                    let b = records[at + 1u];
                    smoothing_sum = smoothing_sum + (b.x * ((st.m - b.y) + ls) - a.w);
                }
                ce = ce + (eps / f32(params.classes)) * smoothing_sum;
            }
            if (params.z_loss > 0.0) {
                z = params.z_loss * lse * lse;
            }
        }
    }
    row_out[g] = vec4<f32>(ce, z, lse, 0.0);
    lse_out[g] = lse;
}

// g_j = s_ce [(1-eps) w[y] (p_j - [j = y]) + (eps/C) (W p_j - w[j])] + s_z 2 z lse p_j,
// times the softcap slope; zero on ignored rows (loss/cross_entropy.rs).
@compute @workgroup_size(WG)
fn lce_grad(ids: Ids) {
    let tid = thread_of(ids);
    let row = row_of(ids.wid, ids.nwg);
    if (row >= params.rows) { return; }
    let g = params.row_base + row;
    let src = params.base_a + row * params.cols;
    let t = targets[g];
    if (t == params.ignore_index) {
        for (var c = tid; c < params.cols; c = c + WG) { logits[src + c] = 0.0; }
        return;
    }
    let eps = params.smoothing;
    let mean = params.reduction == REDUCTION_MEAN;
    let k_ce = select(params.grad_scale, params.grad_scale / scalars[0], mean);
    let k_z = select(params.grad_scale, params.grad_scale / scalars[1], mean);
    let lse = lse_in[g];
    let valid = target_valid(t);
    let y = u32(max(t, 0));
    // b (p - [j = y]) + d p - e w[j]: at the target, where p is near 1,
    // p - 1 is exact.
    let b = select(nan(), k_ce * (1.0 - eps) * weight_of(y), valid);
    var d = 0.0;
    var e = 0.0;
    if (eps > 0.0) {
        d = k_ce * eps * scalars[2] / f32(params.classes);
        e = k_ce * eps / f32(params.classes);
    }
    if (params.z_loss > 0.0) {
        d = d + k_z * 2.0 * params.z_loss * lse;
    }
    for (var c = tid; c < params.cols; c = c + WG) {
        let x = logits[src + c];
        let j = params.shard_start + c;
        let p = exp(capped(x) - lse);
        let onehot = select(0.0, 1.0, j == y);
        var gr = b * (p - onehot) + d * p;
        if (e != 0.0) { gr = gr - e * weight_of(j); }
        logits[src + c] = gr * cap_slope(x);
    }
}

// Column sums of the gradient chunk in row order, Kahan-compensated, added
// to (or, for the first chunk, written into) the bias gradient.
@compute @workgroup_size(WG)
fn lce_bias_grad(ids: Ids) {
    let c = row_of(ids.wid, ids.nwg) * WG + thread_of(ids);
    if (c >= params.cols) { return; }
    var s = 0.0;
    var comp = 0.0;
    for (var r = 0u; r < params.rows; r = r + 1u) {
        let y = logits[params.base_a + r * params.cols + c] - comp;
        let t = s + y;
        comp = (t - s) - y;
        s = t;
    }
    let o = params.base_out + c;
    if ((params.flags & FLAG_ACCUMULATE) != 0u) {
        bias_grad[o] = bias_grad[o] + s;
    } else {
        bias_grad[o] = s;
    }
}
