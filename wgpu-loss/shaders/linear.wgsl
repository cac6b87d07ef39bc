// Tiled matrix product, the `linear` op and the three products of the fused
// linear + cross-entropy (logits, dH, dW):
//   out[m, n] = (out[m, n] if FLAG_ACCUMULATE) + sum_k A(m, k) B(k, n) (+ bias[n] if FLAG_BIAS)
// with A, B and out addressed through strides, so one kernel serves H W^T,
// dZ W and dZ^T H without transposing anything in memory:
//   A(m, k) = lhs[base_a + m * lhs_row + k * lhs_col]   (lhs_f32 with FLAG_LHS_F32)
//   B(k, n) = rhs[base_b + k * rhs_row + n * rhs_col]
//   out[base_out + m * out_row + n]
// A 64x64 output tile per workgroup of 64 invocations, 8x8 outputs each,
// f32 accumulation over k in ascending order (so results are reproducible),
// with 64x16 tiles of A and B staged in 8 KiB of workgroup memory. The
// accumulators are only ever indexed by constants: an index that varies
// (a loop over the outputs at the end) keeps a private array in memory on
// llvmpipe, and every multiply-add then loads and stores it (measured: 8x8
// went from 0.5x to 1.42x the 4x4 kernel when its stores were written out).

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

// Vector `v` of each tile: k `v / 16`, rows (columns) 4·(v % 16) .. +3 of
// the k-slice at `k0`. Invocation `tid` (of 64) stages vectors tid + 64·s,
// s = 0..3 (written out: see the loop note below).
fn stage_one(v: u32, m0: u32, n0: u32, k0: u32) {
    let k = k0 + v / 16u;
    let q = (v % 16u) * 4u;
    tile_a[v] = vec4<f32>(
        load_a(m0 + q, k), load_a(m0 + q + 1u, k), load_a(m0 + q + 2u, k), load_a(m0 + q + 3u, k));
    tile_b[v] = vec4<f32>(
        load_b(k, n0 + q), load_b(k, n0 + q + 1u), load_b(k, n0 + q + 2u), load_b(k, n0 + q + 3u));
}

fn stage(tid: u32, m0: u32, n0: u32, k0: u32) {
    stage_one(tid, m0, n0, k0);
    stage_one(tid + 64u, m0, n0, k0);
    stage_one(tid + 128u, m0, n0, k0);
    stage_one(tid + 192u, m0, n0, k0);
}

// One k of the tile: an 8x8 outer product into `acc` (row i: acc[2i], acc[2i + 1]).
fn mac(kk: u32, tx: u32, ty: u32, acc: ptr<function, array<vec4<f32>, 16>>) {
    let a0 = tile_a[kk * 16u + ty * 2u];
    let a1 = tile_a[kk * 16u + ty * 2u + 1u];
    let b0 = tile_b[kk * 16u + tx * 2u];
    let b1 = tile_b[kk * 16u + tx * 2u + 1u];
    (*acc)[0] = fma(vec4<f32>(a0.x), b0, (*acc)[0]);
    (*acc)[1] = fma(vec4<f32>(a0.x), b1, (*acc)[1]);
    (*acc)[2] = fma(vec4<f32>(a0.y), b0, (*acc)[2]);
    (*acc)[3] = fma(vec4<f32>(a0.y), b1, (*acc)[3]);
    (*acc)[4] = fma(vec4<f32>(a0.z), b0, (*acc)[4]);
    (*acc)[5] = fma(vec4<f32>(a0.z), b1, (*acc)[5]);
    (*acc)[6] = fma(vec4<f32>(a0.w), b0, (*acc)[6]);
    (*acc)[7] = fma(vec4<f32>(a0.w), b1, (*acc)[7]);
    (*acc)[8] = fma(vec4<f32>(a1.x), b0, (*acc)[8]);
    (*acc)[9] = fma(vec4<f32>(a1.x), b1, (*acc)[9]);
    (*acc)[10] = fma(vec4<f32>(a1.y), b0, (*acc)[10]);
    (*acc)[11] = fma(vec4<f32>(a1.y), b1, (*acc)[11]);
    (*acc)[12] = fma(vec4<f32>(a1.z), b0, (*acc)[12]);
    (*acc)[13] = fma(vec4<f32>(a1.z), b1, (*acc)[13]);
    (*acc)[14] = fma(vec4<f32>(a1.w), b0, (*acc)[14]);
    (*acc)[15] = fma(vec4<f32>(a1.w), b1, (*acc)[15]);
}

// The staging and k loops are written out: lavapipe stops an invocation's
// loops after 65535 iterations in all, so the only loop over k is the tile
// loop, one iteration per 16 k (the host keeps `inner` <= 2^19 per dispatch).
@compute @workgroup_size(64)
fn matmul(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let m0 = wid.y * TILE_M;
    let n0 = wid.x * TILE_N;
    let tx = tid % 8u;
    let ty = tid / 8u;
    var acc: array<vec4<f32>, 16>;
    acc[0] = vec4<f32>(0.0);
    acc[1] = vec4<f32>(0.0);
    acc[2] = vec4<f32>(0.0);
    acc[3] = vec4<f32>(0.0);
    acc[4] = vec4<f32>(0.0);
    acc[5] = vec4<f32>(0.0);
    acc[6] = vec4<f32>(0.0);
    acc[7] = vec4<f32>(0.0);
    acc[8] = vec4<f32>(0.0);
    acc[9] = vec4<f32>(0.0);
    acc[10] = vec4<f32>(0.0);
    acc[11] = vec4<f32>(0.0);
    acc[12] = vec4<f32>(0.0);
    acc[13] = vec4<f32>(0.0);
    acc[14] = vec4<f32>(0.0);
    acc[15] = vec4<f32>(0.0);

    for (var k0 = 0u; k0 < params.inner; k0 = k0 + TILE_K) {
        stage(tid, m0, n0, k0);
        workgroupBarrier();
        mac(0u, tx, ty, &acc); mac(1u, tx, ty, &acc); mac(2u, tx, ty, &acc); mac(3u, tx, ty, &acc);
        mac(4u, tx, ty, &acc); mac(5u, tx, ty, &acc); mac(6u, tx, ty, &acc); mac(7u, tx, ty, &acc);
        mac(8u, tx, ty, &acc); mac(9u, tx, ty, &acc); mac(10u, tx, ty, &acc); mac(11u, tx, ty, &acc);
        mac(12u, tx, ty, &acc); mac(13u, tx, ty, &acc); mac(14u, tx, ty, &acc); mac(15u, tx, ty, &acc);
        workgroupBarrier();
    }
    store_row(m0 + ty * 8u + 0u, n0 + tx * 8u, acc[0]);
    store_row(m0 + ty * 8u + 0u, n0 + tx * 8u + 4u, acc[1]);
    store_row(m0 + ty * 8u + 1u, n0 + tx * 8u, acc[2]);
    store_row(m0 + ty * 8u + 1u, n0 + tx * 8u + 4u, acc[3]);
    store_row(m0 + ty * 8u + 2u, n0 + tx * 8u, acc[4]);
    store_row(m0 + ty * 8u + 2u, n0 + tx * 8u + 4u, acc[5]);
    store_row(m0 + ty * 8u + 3u, n0 + tx * 8u, acc[6]);
    store_row(m0 + ty * 8u + 3u, n0 + tx * 8u + 4u, acc[7]);
    store_row(m0 + ty * 8u + 4u, n0 + tx * 8u, acc[8]);
    store_row(m0 + ty * 8u + 4u, n0 + tx * 8u + 4u, acc[9]);
    store_row(m0 + ty * 8u + 5u, n0 + tx * 8u, acc[10]);
    store_row(m0 + ty * 8u + 5u, n0 + tx * 8u + 4u, acc[11]);
    store_row(m0 + ty * 8u + 6u, n0 + tx * 8u, acc[12]);
    store_row(m0 + ty * 8u + 6u, n0 + tx * 8u + 4u, acc[13]);
    store_row(m0 + ty * 8u + 7u, n0 + tx * 8u, acc[14]);
    store_row(m0 + ty * 8u + 7u, n0 + tx * 8u + 4u, acc[15]);
}

fn store_one(m: u32, n: u32, value: f32) {
    if (m >= params.rows || n >= params.cols) { return; }
    let o = params.base_out + m * params.out_row + n;
    var v = value;
    if ((params.flags & FLAG_BIAS) != 0u) { v = v + bias[params.base_c + n]; }
    if ((params.flags & FLAG_ACCUMULATE) != 0u) { v = out[o] + v; }
    out[o] = v;
}

fn store_row(m: u32, n: u32, v: vec4<f32>) {
    store_one(m, n, v.x);
    store_one(m, n + 1u, v.y);
    store_one(m, n + 2u, v.z);
    store_one(m, n + 3u, v.w);
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
