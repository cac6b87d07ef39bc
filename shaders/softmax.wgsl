// Row-wise softmax, log-softmax and logsumexp, with their backward passes.
// One workgroup per row; every matrix is row-major [rows, cols].

@group(0) @binding(1) var<storage, read> mat_a: array<mat_t>;      // x (forward, lse backward) or y (backward)
@group(0) @binding(2) var<storage, read> mat_b: array<mat_t>;      // dy (softmax / log-softmax backward)
@group(0) @binding(3) var<storage, read> row_a: array<f32>;        // lse per row (lse backward)
@group(0) @binding(4) var<storage, read> row_b: array<f32>;        // dy per row (lse backward)
@group(0) @binding(5) var<storage, read_write> mat_out: array<mat_t>;
@group(0) @binding(6) var<storage, read_write> row_out: array<f32>;

fn x_row_stat(src: u32, n: u32, tid: u32) -> RowStat {
    var st = stat_empty();
    for (var i = tid; i < n; i += WG) {
        st = stat_push(st, vec_t(mat_a[src + i]));
    }
    return wg_reduce_stat(tid, st);
}

// y = exp((x - m) - log s): subtracting the max first keeps x - m exact for large offsets.
@compute @workgroup_size(WG)
fn softmax_forward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(wid, nwg);
    if (row >= params.rows) { return; }
    let n = params.cols / VW;
    let src = params.base_a / VW + row * n;
    let dst = params.base_out / VW + row * n;
    let st = x_row_stat(src, n, lid.x);
    let ls = log(st.s);
    // PyTorch: a row that holds NaN or +inf, or only -inf, is NaN throughout.
    let ok = is_finite(st.m + ls);
    for (var i = lid.x; i < n; i += WG) {
        let y = exp((vec_t(mat_a[src + i]) - vec_t(st.m)) - vec_t(ls));
        mat_out[dst + i] = mat_t(select(vec_t(nan()), y, ok));
    }
}

@compute @workgroup_size(WG)
fn log_softmax_forward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(wid, nwg);
    if (row >= params.rows) { return; }
    let n = params.cols / VW;
    let src = params.base_a / VW + row * n;
    let dst = params.base_out / VW + row * n;
    let st = x_row_stat(src, n, lid.x);
    let ls = log(st.s);
    let ok = is_finite(st.m + ls);
    for (var i = lid.x; i < n; i += WG) {
        let y = (vec_t(mat_a[src + i]) - vec_t(st.m)) - vec_t(ls);
        mat_out[dst + i] = mat_t(select(vec_t(nan()), y, ok));
    }
}

@compute @workgroup_size(WG)
fn logsumexp_forward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(wid, nwg);
    if (row >= params.rows) { return; }
    let n = params.cols / VW;
    let src = params.base_a / VW + row * n;
    let st = x_row_stat(src, n, lid.x);
    if (lid.x == 0u) {
        row_out[params.row_base + row] = st.m + log(st.s);
    }
}

// dx = y * (dy - sum(dy * y)), with y the softmax output.
@compute @workgroup_size(WG)
fn softmax_backward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(wid, nwg);
    if (row >= params.rows) { return; }
    let n = params.cols / VW;
    let src_y = params.base_a / VW + row * n;
    let src_dy = params.base_b / VW + row * n;
    let dst = params.base_out / VW + row * n;
    var acc = 0.0;
    for (var i = lid.x; i < n; i += WG) {
        acc += hsum(vec_t(mat_a[src_y + i]) * vec_t(mat_b[src_dy + i]));
    }
    let dot = wg_reduce_sum(lid.x, acc);
    for (var i = lid.x; i < n; i += WG) {
        mat_out[dst + i] = mat_t(vec_t(mat_a[src_y + i]) * (vec_t(mat_b[src_dy + i]) - vec_t(dot)));
    }
}

// dx = dy - exp(y) * sum(dy), with y the log-softmax output.
@compute @workgroup_size(WG)
fn log_softmax_backward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(wid, nwg);
    if (row >= params.rows) { return; }
    let n = params.cols / VW;
    let src_y = params.base_a / VW + row * n;
    let src_dy = params.base_b / VW + row * n;
    let dst = params.base_out / VW + row * n;
    var acc = 0.0;
    for (var i = lid.x; i < n; i += WG) {
        acc += hsum(vec_t(mat_b[src_dy + i]));
    }
    let total = wg_reduce_sum(lid.x, acc);
    for (var i = lid.x; i < n; i += WG) {
        mat_out[dst + i] = mat_t(vec_t(mat_b[src_dy + i]) - exp(vec_t(mat_a[src_y + i])) * vec_t(total));
    }
}

// dx = dy_row * exp(x - lse_row).
@compute @workgroup_size(WG)
fn logsumexp_backward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = row_of(wid, nwg);
    if (row >= params.rows) { return; }
    let n = params.cols / VW;
    let src = params.base_a / VW + row * n;
    let dst = params.base_out / VW + row * n;
    let lse = row_a[params.row_base + row];
    let g = row_b[params.row_base + row];
    for (var i = lid.x; i < n; i += WG) {
        mat_out[dst + i] = mat_t(vec_t(g) * exp(vec_t(mat_a[src + i]) - vec_t(lse)));
    }
}
