// Tiled matrix product, the `linear` op and the three products of the fused
// linear + cross-entropy (logits, dH, dW):
//   out[m, n] = (out[m, n] if FLAG_ACCUMULATE) + sum_k A(m, k) B(k, n) (+ bias[n] if FLAG_BIAS)
// with A, B and out addressed through strides, so one kernel serves H W^T,
// dZ W and dZ^T H without transposing anything in memory:
//   A(m, k) = lhs[base_a + m * lhs_row + k * lhs_col]   (lhs_f32 with FLAG_LHS_F32)
//   B(k, n) = rhs[base_b + k * rhs_row + n * rhs_col]
//   out[base_out + m * out_row + n]
// A 64x64 output tile per workgroup of 256 invocations, 4x4 outputs each,
// f32 accumulation over k in ascending order (so results are reproducible),
// with 64x16 tiles of A and B staged in 8 KiB of workgroup memory.

@group(0) @binding(1) var<storage, read> lhs: array<mat_t>;
@group(0) @binding(2) var<storage, read> lhs_f32: array<f32>;
@group(0) @binding(3) var<storage, read> rhs: array<mat_t>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

const FLAG_LHS_F32: u32 = 1u;
const FLAG_BIAS: u32 = 2u;
const FLAG_ACCUMULATE: u32 = 4u;

const TILE_M: u32 = 64u;
const TILE_N: u32 = 64u;
const TILE_K: u32 = 16u;

// [TILE_K][TILE_M / 4] and [TILE_K][TILE_N / 4] vectors: a k-slice of 64
// values is 16 contiguous vec4s, read whole by the multiply-add.
var<workgroup> tile_a: array<vec4<f32>, 256>;
var<workgroup> tile_b: array<vec4<f32>, 256>;

fn load_a(m: u32, k: u32) -> f32 {
    if (m >= params.rows || k >= params.inner) { return 0.0; }
    let i = params.base_a + m * params.lhs_row + k * params.lhs_col;
    if ((params.flags & FLAG_LHS_F32) != 0u) { return lhs_f32[i]; }
    return f32(lhs[i]);
}

fn load_b(k: u32, n: u32) -> f32 {
    if (k >= params.inner || n >= params.cols) { return 0.0; }
    return f32(rhs[params.base_b + k * params.rhs_row + n * params.rhs_col]);
}

// Invocation `tid` stages one vec4 of each tile: k `tid / 16`, rows (columns)
// 4·(tid % 16) .. +3 of the k-slice at `k0`.
fn stage(tid: u32, m0: u32, n0: u32, k0: u32) {
    let kk = tid / 16u;
    let q = (tid % 16u) * 4u;
    let k = k0 + kk;
    tile_a[tid] = vec4<f32>(
        load_a(m0 + q, k), load_a(m0 + q + 1u, k), load_a(m0 + q + 2u, k), load_a(m0 + q + 3u, k));
    tile_b[tid] = vec4<f32>(
        load_b(k, n0 + q), load_b(k, n0 + q + 1u), load_b(k, n0 + q + 2u), load_b(k, n0 + q + 3u));
}

// One k of the tile: a 4x4 outer product into `acc`.
fn mac(kk: u32, tx: u32, ty: u32, acc: ptr<function, array<vec4<f32>, 4>>) {
    let a = tile_a[kk * 16u + ty];
    let b = tile_b[kk * 16u + tx];
    (*acc)[0] = fma(vec4<f32>(a.x), b, (*acc)[0]);
    (*acc)[1] = fma(vec4<f32>(a.y), b, (*acc)[1]);
    (*acc)[2] = fma(vec4<f32>(a.z), b, (*acc)[2]);
    (*acc)[3] = fma(vec4<f32>(a.w), b, (*acc)[3]);
}

// The staging and k loops are written out: lavapipe stops an invocation's
// loops after 65535 iterations in all, so the only loop over k is the tile
// loop, one iteration per 16 k (the host keeps `inner` <= 2^19 per dispatch).
@compute @workgroup_size(WG)
fn matmul(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let m0 = wid.y * TILE_M;
    let n0 = wid.x * TILE_N;
    let tx = tid % 16u;
    let ty = tid / 16u;
    var acc: array<vec4<f32>, 4>;
    acc[0] = vec4<f32>(0.0);
    acc[1] = vec4<f32>(0.0);
    acc[2] = vec4<f32>(0.0);
    acc[3] = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < params.inner; k0 = k0 + TILE_K) {
        stage(tid, m0, n0, k0);
        workgroupBarrier();
        mac(0u, tx, ty, &acc); mac(1u, tx, ty, &acc); mac(2u, tx, ty, &acc); mac(3u, tx, ty, &acc);
        mac(4u, tx, ty, &acc); mac(5u, tx, ty, &acc); mac(6u, tx, ty, &acc); mac(7u, tx, ty, &acc);
        mac(8u, tx, ty, &acc); mac(9u, tx, ty, &acc); mac(10u, tx, ty, &acc); mac(11u, tx, ty, &acc);
        mac(12u, tx, ty, &acc); mac(13u, tx, ty, &acc); mac(14u, tx, ty, &acc); mac(15u, tx, ty, &acc);
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i = i + 1u) {
        let m = m0 + ty * 4u + i;
        if (m >= params.rows) { continue; }
        for (var j = 0u; j < 4u; j = j + 1u) {
            let n = n0 + tx * 4u + j;
            if (n >= params.cols) { continue; }
            let o = params.base_out + m * params.out_row + n;
            var v = acc[i][j];
            if ((params.flags & FLAG_BIAS) != 0u) { v = v + bias[params.base_c + n]; }
            if ((params.flags & FLAG_ACCUMULATE) != 0u) { v = out[o] + v; }
            out[o] = v;
        }
    }
}

// f32 results (accumulated in f32 across chunks) into an f16 tensor:
// out_mat[base_out + i] = lhs_f32[base_a + i] for i < cols.
@group(0) @binding(6) var<storage, read_write> out_mat: array<mat_t>;

@compute @workgroup_size(WG)
fn narrow(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let i = row_of(wid, nwg) * WG + tid;
    if (i >= params.cols) { return; }
    out_mat[params.base_out + i] = mat_t(lhs_f32[params.base_a + i]);
}
