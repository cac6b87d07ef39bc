// Row-wise softmax, log-softmax and logsumexp, with their backward passes.
// Each row belongs to TPR threads of a workgroup (`seg_of`); every matrix is
// row-major [rows, cols].

@group(0) @binding(1) var<storage, read> mat_a: array<mat_t>;      // x (forward, lse backward) or y (backward)
@group(0) @binding(2) var<storage, read> mat_b: array<mat_t>;      // dy (softmax / log-softmax backward)
@group(0) @binding(3) var<storage, read> row_a: array<f32>;        // lse per row (lse backward)
@group(0) @binding(4) var<storage, read> row_b: array<f32>;        // dy per row (lse backward)
@group(0) @binding(5) var<storage, read_write> mat_out: array<mat_t>;
@group(0) @binding(6) var<storage, read_write> row_out: array<f32>;

// Statistics of this segment's vectors.
fn x_chunk_stat(seg: Seg, src: u32) -> RowStat {
    var acc = stat_empty();
    for (var i = seg.first + seg.lane; i < seg.end; i += TPR) {
        acc = stat_push(acc, unpack_mat(mat_a[src + i]));
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
    let src = params.base_a / VW + seg.row * (params.cols / VW);
    write_partial(seg, x_chunk_stat(seg, src), 0.0);
}

// A held row's max: its lanes' vectors loaded into `h`, reduced over the segment.
fn load_held(seg: Seg, src: u32, h: ptr<function, array<vec_t, HOLD>>) -> f32 {
    var mx = neg_inf();
    for (var k = 0u; k < HOLD; k = k + 1u) {
        let i = held_index(seg, k);
        if (i < seg.end) {
            (*h)[k] = unpack_mat(mat_a[src + i]);
            mx = max(mx, hmax((*h)[k]));
        }
    }
    return seg_max(seg.tid, mx);
}

// y = exp((x - m) - log s): subtracting the max first keeps x - m exact for large offsets.
// Held rows: y = exp(x - m) / s, from registers.
@compute @workgroup_size(WG)
fn softmax_forward(ids: Ids) {
    let seg = seg_of(ids);
    let n = params.cols / VW;
    let src = params.base_a / VW + seg.row * n;
    let dst = params.base_out / VW + seg.row * n;
    if (holds_rows()) {
        var h: array<vec_t, HOLD>;
        let m = load_held(seg, src, &h);
        var s = 0.0;
        for (var k = 0u; k < HOLD; k = k + 1u) {
            if (held_index(seg, k) < seg.end) {
                h[k] = exp_from_max(h[k], m);
                s += hsum(h[k]);
            }
        }
        let total = seg_sum(seg.tid, s);
        let ok = is_finite(m + log(total));
        for (var k = 0u; k < HOLD; k = k + 1u) {
            let i = held_index(seg, k);
            if (i < seg.end) {
                mat_out[dst + i] = pack_mat(select(vec_t(nan()), h[k] / vec_t(total), ok));
            }
        }
        return;
    }
    let st = x_row_stat(seg, src);
    let ls = log(st.s);
    // PyTorch: a row that holds NaN or +inf, or only -inf, is NaN throughout.
    let ok = is_finite(st.m + ls);
    for (var i = seg.first + seg.lane; i < seg.end; i += TPR) {
        let y = exp((unpack_mat(mat_a[src + i]) - vec_t(st.m)) - vec_t(ls));
        mat_out[dst + i] = pack_mat(select(vec_t(nan()), y, ok));
    }
}

@compute @workgroup_size(WG)
fn log_softmax_forward(ids: Ids) {
    let seg = seg_of(ids);
    let n = params.cols / VW;
    let src = params.base_a / VW + seg.row * n;
    let dst = params.base_out / VW + seg.row * n;
    if (holds_rows()) {
        var h: array<vec_t, HOLD>;
        let m = load_held(seg, src, &h);
        var s = 0.0;
        for (var k = 0u; k < HOLD; k = k + 1u) {
            if (held_index(seg, k) < seg.end) {
                s += hsum(exp_from_max(h[k], m));
            }
        }
        let ls = log(seg_sum(seg.tid, s));
        let ok = is_finite(m + ls);
        for (var k = 0u; k < HOLD; k = k + 1u) {
            let i = held_index(seg, k);
            if (i < seg.end) {
                mat_out[dst + i] = pack_mat(select(vec_t(nan()), (h[k] - vec_t(m)) - vec_t(ls), ok));
            }
        }
        return;
    }
    let st = x_row_stat(seg, src);
    let ls = log(st.s);
    let ok = is_finite(st.m + ls);
    for (var i = seg.first + seg.lane; i < seg.end; i += TPR) {
        let y = (unpack_mat(mat_a[src + i]) - vec_t(st.m)) - vec_t(ls);
        mat_out[dst + i] = pack_mat(select(vec_t(nan()), y, ok));
    }
}

@compute @workgroup_size(WG)
fn logsumexp_forward(ids: Ids) {
    let seg = seg_of(ids);
    let src = params.base_a / VW + seg.row * (params.cols / VW);
    let st = x_row_stat(seg, src);
    if (row_writer(seg)) {
        row_out[params.row_base + seg.row] = st.m + log(st.s);
    }
}

// This segment's sum of y dy (softmax backward).
fn dot_y_dy(seg: Seg) -> f32 {
    let n = params.cols / VW;
    let src_y = params.base_a / VW + seg.row * n;
    let src_dy = params.base_b / VW + seg.row * n;
    var acc = bsum_empty();
    for (var i = seg.first + seg.lane; i < seg.end; i += TPR) {
        acc = bsum_push(acc, hsum(unpack_mat(mat_a[src_y + i]) * unpack_mat(mat_b[src_dy + i])));
    }
    return seg_sum(seg.tid, bsum_total(acc));
}

// First pass over split rows of softmax backward: each chunk's sum of y dy.
@compute @workgroup_size(WG)
fn softmax_backward_partial(ids: Ids) {
    let seg = seg_of(ids);
    write_partial(seg, RowStat(0.0, 0.0), dot_y_dy(seg));
}

// dx = y * (dy - sum(dy * y)), with y the softmax output.
@compute @workgroup_size(WG)
fn softmax_backward(ids: Ids) {
    let seg = seg_of(ids);
    let n = params.cols / VW;
    let src_y = params.base_a / VW + seg.row * n;
    let src_dy = params.base_b / VW + seg.row * n;
    let dst = params.base_out / VW + seg.row * n;
    var dot: f32;
    if (split_rows()) {
        dot = merged_partials(min(seg.row, params.rows - 1u)).z;
    } else {
        dot = dot_y_dy(seg);
    }
    for (var i = seg.first + seg.lane; i < seg.end; i += TPR) {
        mat_out[dst + i] = pack_mat(unpack_mat(mat_a[src_y + i]) * (unpack_mat(mat_b[src_dy + i]) - vec_t(dot)));
    }
}

// This segment's sum of dy (log-softmax backward).
fn sum_dy(seg: Seg) -> f32 {
    let src_dy = params.base_b / VW + seg.row * (params.cols / VW);
    var acc = bsum_empty();
    for (var i = seg.first + seg.lane; i < seg.end; i += TPR) {
        acc = bsum_push(acc, hsum(unpack_mat(mat_b[src_dy + i])));
    }
    return seg_sum(seg.tid, bsum_total(acc));
}

// First pass over split rows of log-softmax backward: each chunk's sum of dy.
@compute @workgroup_size(WG)
fn log_softmax_backward_partial(ids: Ids) {
    let seg = seg_of(ids);
    write_partial(seg, RowStat(0.0, 0.0), sum_dy(seg));
}

// dx = dy - exp(y) * sum(dy), with y the log-softmax output.
@compute @workgroup_size(WG)
fn log_softmax_backward(ids: Ids) {
    let seg = seg_of(ids);
    let n = params.cols / VW;
    let src_y = params.base_a / VW + seg.row * n;
    let dst = params.base_out / VW + seg.row * n;
    var total: f32;
    if (split_rows()) {
        total = merged_partials(min(seg.row, params.rows - 1u)).z;
    } else {
        total = sum_dy(seg);
    }
    let src_dy = params.base_b / VW + seg.row * n;
    for (var i = seg.first + seg.lane; i < seg.end; i += TPR) {
        mat_out[dst + i] = pack_mat(unpack_mat(mat_b[src_dy + i]) - exp(unpack_mat(mat_a[src_y + i])) * vec_t(total));
    }
}

// dx = dy_row * exp(x - lse_row).
@compute @workgroup_size(WG)
fn logsumexp_backward(ids: Ids) {
    let seg = seg_of(ids);
    let n = params.cols / VW;
    let src = params.base_a / VW + seg.row * n;
    let dst = params.base_out / VW + seg.row * n;
    let at = params.row_base + min(seg.row, params.rows - 1u);
    let lse = row_a[at];
    let g = row_b[at];
    for (var i = seg.first + seg.lane; i < seg.end; i += TPR) {
        mat_out[dst + i] = pack_mat(vec_t(g) * exp(unpack_mat(mat_a[src + i]) - vec_t(lse)));
    }
}
