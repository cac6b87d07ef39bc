// Row-wise softmax, log-softmax and logsumexp, with their backward passes.
// Each row belongs to TPR threads of a workgroup (`seg_of`); every matrix is
// row-major [rows, cols].

@group(0) @binding(1) var<storage, read> mat_a: array<mat_t>;      // x (forward, lse backward) or y (backward)
@group(0) @binding(2) var<storage, read> mat_b: array<mat_t>;      // dy (softmax / log-softmax backward)
@group(0) @binding(3) var<storage, read> row_a: array<f32>;        // lse per row (lse backward)
@group(0) @binding(4) var<storage, read> row_b: array<f32>;        // dy per row (lse backward)
@group(0) @binding(5) var<storage, read_write> mat_out: array<mat_t>;

// Matrix accessors (see `row_src` in common.wgsl). A gathered row's last
// vector reads up to three elements of the next row, which that row's
// workgroup may be overwriting (in place); those lanes are masked or never
// stored, so the values read there do not matter.
fn load_mat_a(src: u32, i: u32) -> vec_t {
    let j = vec_at(src, i);
    return mat_vec(mat_a[mat_index(j)], mat_a[mat_index(j + MSTEP)], mat_a[mat_index(j + 2u * MSTEP)], mat_a[mat_index(j + 3u * MSTEP)], j);
}

fn load_mat_b(src: u32, i: u32) -> vec_t {
    let j = vec_at(src, i);
    return mat_vec(mat_b[mat_index(j)], mat_b[mat_index(j + MSTEP)], mat_b[mat_index(j + 2u * MSTEP)], mat_b[mat_index(j + 3u * MSTEP)], j);
}

// Gathered rows store lane by lane, never outside the row; edged rows
// store whole vectors, and their shared first and last ones through
// `edge_vecs` (`edge_slot` in common.wgsl).
fn store_mat_out(dst: u32, i: u32, v: vec_t) {
    let slot = edge_slot(i);
    if (slot != NOT_EDGE) {
        edge_vecs[slot] = v;
    } else {
        store_mat_out_whole(dst, i, v);
    }
}

// A vector that is not shared (`loop_start` in common.wgsl).
fn store_mat_out_whole(dst: u32, i: u32, v: vec_t) {
    if (!MAT_STORES) { return; }
    if (GATHER) {
        for (var k = 0u; k < VW; k++) {
            if (lane_in_row(i, k)) { mat_out[mat_index(lane_at(dst, i, k))] = mat_lane(v, k); }
        }
    } else {
        mat_out[vec_at(dst, i)] = pack_mat(v);
    }
}
@group(0) @binding(6) var<storage, read_write> row_out: array<f32>;

// Statistics of this segment's vectors.
fn x_chunk_stat(seg: Seg, src: u32) -> RowStat {
    var acc = stat_empty();
    for (var i = seg.first + seg.lane; i < seg.end; i += TPR) {
        acc = stat_push(acc, masked(load_mat_a(src, i), i, neg_inf()));
    }
    return seg_stat(seg.tid, acc);
}

// Statistics of the whole row: this segment's, or a split row's merged chunks.
fn x_row_stat(seg: Seg, src: u32) -> RowStat {
    if (split_rows()) {
        let p = merged_partials(min(seg.row, params.rows - 1u));
        return RowStat(p.x, p.y);
    }
    return x_chunk_stat(seg, src);
}

// First pass over split rows (softmax, log-softmax and logsumexp forward).
@compute @workgroup_size(WG)
fn softmax_partial(ids: Ids) {
    let seg = seg_of(ids);
    let src = row_src(params.base_a, seg.row);
    write_partial(seg, x_chunk_stat(seg, src), 0.0);
}

// A held row's max: its lanes' vectors loaded into `h` (lanes outside the
// row as -inf), reduced over the segment.
fn load_held(seg: Seg, src: u32, h: ptr<function, array<held_t, HOLD>>) -> f32 {
    var mx = neg_inf();
    for (var k = 0u; k < HOLD; k = k + 1u) {
        let i = held_index(seg, k);
        if (i < seg.end) {
            let v = masked(load_mat_a(src, i), i, neg_inf());
            (*h)[k] = hold(v);
            mx = max(mx, hmax(v));
        }
    }
    let u = unheld_vec(seg);
    if (u != NOT_EDGE) { mx = max(mx, hmax(unheld_x(src, u))); }
    return seg_max(seg.tid, mx);
}

// The held row's vector past the registers (`unheld_vec`), read again, as
// `load_held` would have held it.
fn unheld_x(src: u32, u: u32) -> vec_t { return masked(load_mat_a(src, u), u, neg_inf()); }

// y = exp((x - m) - log s): subtracting the max first keeps x - m exact for large offsets.
// Held rows: y = exp(x - m) / s, from registers.
@compute @workgroup_size(WG)
fn softmax_forward(ids: Ids) {
    let seg = seg_of(ids);
    let src = row_src(params.base_a, seg.row);
    let dst = row_src(params.base_out, seg.row);
    if (holds_rows()) {
        var h: array<held_t, HOLD>;
        let m = load_held(seg, src, &h);
        var s = 0.0;
        for (var k = 0u; k < HOLD; k = k + 1u) {
            if (held_index(seg, k) < seg.end) {
                let e = exp_from_max(unhold(h[k]), m);
                s += hsum(e);
                if (HOLD_KEEPS_F32) { h[k] = hold(e); }
            }
        }
        let u = unheld_vec(seg);
        if (u != NOT_EDGE) { s += hsum(exp_from_max(unheld_x(src, u), m)); }
        let total = seg_sum(seg.tid, s);
        let ok = is_finite(m + log(total));
        for (var k = 0u; k < HOLD; k = k + 1u) {
            let i = held_index(seg, k);
            if (i < seg.end) {
                var e = unhold(h[k]);
                if (!HOLD_KEEPS_F32) { e = exp_from_max(e, m); }
                store_mat_out(dst, i, select(vec_t(nan()), e / vec_t(total), ok));
            }
        }
        if (u != NOT_EDGE) {
            store_mat_out(dst, u, select(vec_t(nan()), exp_from_max(unheld_x(src, u), m) / vec_t(total), ok));
        }
    } else {
        let st = x_row_stat(seg, src);
        let ls = log(st.s);
        // PyTorch: a row that holds NaN or +inf, or only -inf, is NaN throughout.
        let ok = is_finite(st.m + ls);
        for (var i = loop_start(seg); i < loop_stop(seg); i += TPR) {
            store_mat_out_whole(dst, i, select(vec_t(nan()), exp((load_mat_a(src, i) - vec_t(st.m)) - vec_t(ls)), ok));
        }
        for (var e = 0u; e < 2u; e++) {
            let i = shared_vec(seg, e);
            if (i != NOT_EDGE) { store_mat_out(dst, i, select(vec_t(nan()), exp((load_mat_a(src, i) - vec_t(st.m)) - vec_t(ls)), ok)); }
        }
    }
}

@compute @workgroup_size(WG)
fn log_softmax_forward(ids: Ids) {
    let seg = seg_of(ids);
    let src = row_src(params.base_a, seg.row);
    let dst = row_src(params.base_out, seg.row);
    if (holds_rows()) {
        var h: array<held_t, HOLD>;
        let m = load_held(seg, src, &h);
        var s = 0.0;
        for (var k = 0u; k < HOLD; k = k + 1u) {
            if (held_index(seg, k) < seg.end) {
                s += hsum(exp_from_max(unhold(h[k]), m));
            }
        }
        let u = unheld_vec(seg);
        if (u != NOT_EDGE) { s += hsum(exp_from_max(unheld_x(src, u), m)); }
        let ls = log(seg_sum(seg.tid, s));
        let ok = is_finite(m + ls);
        for (var k = 0u; k < HOLD; k = k + 1u) {
            let i = held_index(seg, k);
            if (i < seg.end) {
                store_mat_out(dst, i, select(vec_t(nan()), (unhold(h[k]) - vec_t(m)) - vec_t(ls), ok));
            }
        }
        if (u != NOT_EDGE) {
            store_mat_out(dst, u, select(vec_t(nan()), (unheld_x(src, u) - vec_t(m)) - vec_t(ls), ok));
        }
    } else {
        let st = x_row_stat(seg, src);
        let ls = log(st.s);
        let ok = is_finite(st.m + ls);
        for (var i = loop_start(seg); i < loop_stop(seg); i += TPR) {
            store_mat_out_whole(dst, i, select(vec_t(nan()), (load_mat_a(src, i) - vec_t(st.m)) - vec_t(ls), ok));
        }
        for (var e = 0u; e < 2u; e++) {
            let i = shared_vec(seg, e);
            if (i != NOT_EDGE) { store_mat_out(dst, i, select(vec_t(nan()), (load_mat_a(src, i) - vec_t(st.m)) - vec_t(ls), ok)); }
        }
    }
}

@compute @workgroup_size(WG)
fn logsumexp_forward(ids: Ids) {
    let seg = seg_of(ids);
    let src = row_src(params.base_a, seg.row);
    let st = x_row_stat(seg, src);
    if (row_writer(seg)) {
        row_out[params.row_base + seg.row] = st.m + log(st.s);
    }
}

// This segment's sum of y dy (softmax backward).
fn dot_y_dy(seg: Seg) -> f32 {
    let src_y = row_src(params.base_a, seg.row);
    let src_dy = row_src(params.base_b, seg.row);
    var acc = bsum_empty();
    for (var i = seg.first + seg.lane; i < seg.end; i += TPR) {
        acc = bsum_push(acc, hsum(masked(load_mat_a(src_y, i) * load_mat_b(src_dy, i), i, 0.0)));
    }
    return seg_sum(seg.tid, bsum_total(acc));
}

// First pass over split rows of softmax backward: each chunk's sum of y dy.
@compute @workgroup_size(WG)
fn softmax_backward_partial(ids: Ids) {
    let seg = seg_of(ids);
    write_partial(seg, RowStat(0.0, 0.0), dot_y_dy(seg));
}

// Vectors a lane holds of each of y and dy in softmax backward: the
// registers of HOLD vectors, shared.
const HOLD_PAIR: u32 = HOLD / 2u;

// dx = y * (dy - sum(dy * y)), with y the softmax output. Held rows keep
// y and dy in registers (half of HOLD each, `holds_rows_of`): each read
// once, the dot product summed in the streamed path's order (the same
// bits on the same launch).
@compute @workgroup_size(WG)
fn softmax_backward(ids: Ids) {
    let seg = seg_of(ids);
    let src_y = row_src(params.base_a, seg.row);
    let src_dy = row_src(params.base_b, seg.row);
    let dst = row_src(params.base_out, seg.row);
    if (holds_rows_of(HOLD_PAIR)) {
        softmax_backward_held(seg, src_y, src_dy, dst);
    } else {
        softmax_backward_streamed(seg, src_y, src_dy, dst);
    }
}

fn softmax_backward_held(seg: Seg, src_y: u32, src_dy: u32, dst: u32) {
    var hy: array<held_t, HOLD_PAIR>;
    var hd: array<held_t, HOLD_PAIR>;
    var acc = bsum_empty();
    for (var k = 0u; k < HOLD_PAIR; k = k + 1u) {
        let i = held_index(seg, k);
        if (i < seg.end) {
            let y = load_mat_a(src_y, i);
            let dy = load_mat_b(src_dy, i);
            hy[k] = hold(y);
            hd[k] = hold(dy);
            acc = bsum_push(acc, hsum(masked(y * dy, i, 0.0)));
        }
    }
    // The vector past the registers (`unheld_vec_of`), read again.
    let u = unheld_vec_of(seg, HOLD_PAIR);
    if (u != NOT_EDGE) { acc = bsum_push(acc, hsum(masked(load_mat_a(src_y, u) * load_mat_b(src_dy, u), u, 0.0))); }
    let dot = seg_sum(seg.tid, bsum_total(acc));
    for (var k = 0u; k < HOLD_PAIR; k = k + 1u) {
        let i = held_index(seg, k);
        if (i < seg.end) {
            store_mat_out(dst, i, unhold(hy[k]) * (unhold(hd[k]) - vec_t(dot)));
        }
    }
    if (u != NOT_EDGE) { store_mat_out(dst, u, load_mat_a(src_y, u) * (load_mat_b(src_dy, u) - vec_t(dot))); }
}

fn softmax_backward_streamed(seg: Seg, src_y: u32, src_dy: u32, dst: u32) {
    var dot: f32;
    if (split_rows()) {
        dot = merged_partials(min(seg.row, params.rows - 1u)).z;
    } else {
        dot = dot_y_dy(seg);
    }
    for (var i = loop_start(seg); i < loop_stop(seg); i += TPR) {
        store_mat_out_whole(dst, i, load_mat_a(src_y, i) * (load_mat_b(src_dy, i) - vec_t(dot)));
    }
    for (var e = 0u; e < 2u; e++) {
        let i = shared_vec(seg, e);
        if (i != NOT_EDGE) { store_mat_out(dst, i, load_mat_a(src_y, i) * (load_mat_b(src_dy, i) - vec_t(dot))); }
    }
}

// This segment's sum of dy (log-softmax backward).
fn sum_dy(seg: Seg) -> f32 {
    let src_dy = row_src(params.base_b, seg.row);
    var acc = bsum_empty();
    for (var i = seg.first + seg.lane; i < seg.end; i += TPR) {
        acc = bsum_push(acc, hsum(masked(load_mat_b(src_dy, i), i, 0.0)));
    }
    return seg_sum(seg.tid, bsum_total(acc));
}

// First pass over split rows of log-softmax backward: each chunk's sum of dy.
@compute @workgroup_size(WG)
fn log_softmax_backward_partial(ids: Ids) {
    let seg = seg_of(ids);
    write_partial(seg, RowStat(0.0, 0.0), sum_dy(seg));
}

// dx = dy - exp(y) * sum(dy), with y the log-softmax output. Held rows
// keep dy in registers for the sum, then read y once: every input read
// once, the sum in the streamed path's order (the same bits on the same
// launch).
@compute @workgroup_size(WG)
fn log_softmax_backward(ids: Ids) {
    let seg = seg_of(ids);
    let src_y = row_src(params.base_a, seg.row);
    let src_dy = row_src(params.base_b, seg.row);
    let dst = row_src(params.base_out, seg.row);
    if (holds_rows()) {
        log_softmax_backward_held(seg, src_y, src_dy, dst);
    } else {
        log_softmax_backward_streamed(seg, src_y, src_dy, dst);
    }
}

fn log_softmax_backward_held(seg: Seg, src_y: u32, src_dy: u32, dst: u32) {
    var h: array<held_t, HOLD>;
    var acc = bsum_empty();
    for (var k = 0u; k < HOLD; k = k + 1u) {
        let i = held_index(seg, k);
        if (i < seg.end) {
            let dy = load_mat_b(src_dy, i);
            h[k] = hold(dy);
            acc = bsum_push(acc, hsum(masked(dy, i, 0.0)));
        }
    }
    // The vector past the registers (`unheld_vec`), read again.
    let u = unheld_vec(seg);
    if (u != NOT_EDGE) { acc = bsum_push(acc, hsum(masked(load_mat_b(src_dy, u), u, 0.0))); }
    let total = seg_sum(seg.tid, bsum_total(acc));
    for (var k = 0u; k < HOLD; k = k + 1u) {
        let i = held_index(seg, k);
        if (i < seg.end) {
            store_mat_out(dst, i, unhold(h[k]) - exp(load_mat_a(src_y, i)) * vec_t(total));
        }
    }
    if (u != NOT_EDGE) { store_mat_out(dst, u, load_mat_b(src_dy, u) - exp(load_mat_a(src_y, u)) * vec_t(total)); }
}

fn log_softmax_backward_streamed(seg: Seg, src_y: u32, src_dy: u32, dst: u32) {
    var total: f32;
    if (split_rows()) {
        total = merged_partials(min(seg.row, params.rows - 1u)).z;
    } else {
        total = sum_dy(seg);
    }
    for (var i = loop_start(seg); i < loop_stop(seg); i += TPR) {
        store_mat_out_whole(dst, i, load_mat_b(src_dy, i) - exp(load_mat_a(src_y, i)) * vec_t(total));
    }
    for (var e = 0u; e < 2u; e++) {
        let i = shared_vec(seg, e);
        if (i != NOT_EDGE) { store_mat_out(dst, i, load_mat_b(src_dy, i) - exp(load_mat_a(src_y, i)) * vec_t(total)); }
    }
}

// dx = dy_row * exp(x - lse_row).
@compute @workgroup_size(WG)
fn logsumexp_backward(ids: Ids) {
    let seg = seg_of(ids);
    let src = row_src(params.base_a, seg.row);
    let dst = row_src(params.base_out, seg.row);
    let at = params.row_base + min(seg.row, params.rows - 1u);
    let lse = row_a[at];
    let g = row_b[at];
    for (var i = loop_start(seg); i < loop_stop(seg); i += TPR) {
        store_mat_out_whole(dst, i, vec_t(g) * exp(load_mat_a(src, i) - vec_t(lse)));
    }
    for (var e = 0u; e < 2u; e++) {
        let i = shared_vec(seg, e);
        if (i != NOT_EDGE) { store_mat_out(dst, i, vec_t(g) * exp(load_mat_a(src, i) - vec_t(lse))); }
    }
}

// Edged rows' shared vectors into the output (see `edge_stores`).
@compute @workgroup_size(WG)
fn softmax_edges(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let r = min(edge_row(wid, nwg, lid), params.rows - 1u);
    let e = edge_stores(r, row_src(params.base_out, r));
    if (edge_row(wid, nwg, lid) < params.rows && MAT_STORES) {
        if ((e.merge & 1u) != 0u) { mat_out[e.first] = mat_merge(mat_out[e.first], pack_mat(e.first_v), e.keep_first); }
        if ((e.merge & 2u) != 0u) { mat_out[e.last] = mat_merge(mat_out[e.last], pack_mat(e.last_v), e.keep_last); }
    }
}
