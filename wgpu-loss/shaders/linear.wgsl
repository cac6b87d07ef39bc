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
    return mat_scalar(lhs[mat_index(i)], i);
}

fn load_b(k: u32, n: u32) -> f32 {
    if (k >= params.inner || n >= params.cols) { return 0.0; }
    let i = params.base_b + k * params.rhs_row + n * params.rhs_col;
    return mat_scalar(rhs[mat_index(i)], i);
}

// Vector `v` of each tile: k `v / 16`, rows (columns) 4·(v % 16) .. +3 of
// the k-slice at `k0`. Invocation `tid` (of 64) stages vectors tid + 64·s,
// s = 0..3, in a loop: written out four times, Chromium's WebGPU (Tint's
// SPIR-V on SwiftShader) took minutes to build the pipeline and its GPU
// process was killed; the loop builds in well under a second (BENCHMARKS.md, "In the
// browser: the product's pipeline").
fn stage_one(v: u32, m0: u32, n0: u32, k0: u32) {
    let k = k0 + v / 16u;
    let q = (v % 16u) * 4u;
    tile_a[v] = vec4<f32>(
        load_a(m0 + q, k), load_a(m0 + q + 1u, k), load_a(m0 + q + 2u, k), load_a(m0 + q + 3u, k));
    tile_b[v] = vec4<f32>(
        load_b(k, n0 + q), load_b(k, n0 + q + 1u), load_b(k, n0 + q + 2u), load_b(k, n0 + q + 3u));
}

fn stage(tid: u32, m0: u32, n0: u32, k0: u32) {
    for (var s = 0u; s < 4u; s = s + 1u) {
        stage_one(tid + 64u * s, m0, n0, k0);
    }
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

// The multiply-adds of a tile's 16 k are written out: lavapipe stops an
// invocation's loops after 65535 iterations in all, so the loops are the
// tile loop, one iteration per 16 k (the host keeps `inner` <= 2^19 per
// dispatch), and the staging loop of four (a product of k = 300001 in one
// dispatch is exact: tests/linear.rs).
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

// The product for CPU adapters (lavapipe, SwiftShader, WARP): a 128x128
// output tile per workgroup of 64 invocations, 16x16 outputs each, A and B
// staged 128x16 at a time in 16 KiB of workgroup memory. On a SIMD CPU
// the accumulators are vectors in registers and on the stack, so the
// largest block per invocation wins: 16x16 reached burn's autotuned product
// on lavapipe where 8x8 reached half of it (BENCHMARKS.md). A GPU would
// spill 256 accumulators per invocation: `matmul` serves GPUs.
// `matmul_wide_short` below covers outputs of 64 to 127 rows.

// [TILE_K][128 / 4] vectors each: a k-slice of A or B is 32 contiguous vec4s.
var<workgroup> wide_a: array<vec4<f32>, 512>;
var<workgroup> wide_b: array<vec4<f32>, 512>;

// Vector `v` of tile A: k `v / 32`, rows 4·(v % 32) .. +3.
fn wide_stage_a(v: u32, m0: u32, k0: u32) {
    let k = k0 + v / 32u;
    let q = (v % 32u) * 4u;
    wide_a[v] = vec4<f32>(
        load_a(m0 + q, k), load_a(m0 + q + 1u, k), load_a(m0 + q + 2u, k), load_a(m0 + q + 3u, k));
}

// Vector `v` of tile B: k `v / 32`, columns 4·(v % 32) .. +3.
fn wide_stage_b(v: u32, n0: u32, k0: u32) {
    let k = k0 + v / 32u;
    let q = (v % 32u) * 4u;
    wide_b[v] = vec4<f32>(
        load_b(k, n0 + q), load_b(k, n0 + q + 1u), load_b(k, n0 + q + 2u), load_b(k, n0 + q + 3u));
}

// Invocation `tid` (of 64) stages A and B vectors tid + 64·s, s = 0..7
// (written out: see the loop note below).
fn wide_stage(tid: u32, m0: u32, n0: u32, k0: u32) {
    wide_stage_a(tid, m0, k0); wide_stage_a(tid + 64u, m0, k0); wide_stage_a(tid + 128u, m0, k0);
    wide_stage_a(tid + 192u, m0, k0); wide_stage_a(tid + 256u, m0, k0); wide_stage_a(tid + 320u, m0, k0);
    wide_stage_a(tid + 384u, m0, k0); wide_stage_a(tid + 448u, m0, k0);
    wide_stage_b(tid, n0, k0); wide_stage_b(tid + 64u, n0, k0); wide_stage_b(tid + 128u, n0, k0);
    wide_stage_b(tid + 192u, n0, k0); wide_stage_b(tid + 256u, n0, k0); wide_stage_b(tid + 320u, n0, k0);
    wide_stage_b(tid + 384u, n0, k0); wide_stage_b(tid + 448u, n0, k0);
}

// Four rows `a` times the 16 columns `b` into acc from index `r0` (4 per row).
fn wide_mac4(acc: ptr<function, array<vec4<f32>, 64>>, r0: u32, a: vec4<f32>, b: array<vec4<f32>, 4>) {
    (*acc)[r0] = fma(vec4<f32>(a.x), b[0], (*acc)[r0]);
    (*acc)[r0 + 1u] = fma(vec4<f32>(a.x), b[1], (*acc)[r0 + 1u]);
    (*acc)[r0 + 2u] = fma(vec4<f32>(a.x), b[2], (*acc)[r0 + 2u]);
    (*acc)[r0 + 3u] = fma(vec4<f32>(a.x), b[3], (*acc)[r0 + 3u]);
    (*acc)[r0 + 4u] = fma(vec4<f32>(a.y), b[0], (*acc)[r0 + 4u]);
    (*acc)[r0 + 5u] = fma(vec4<f32>(a.y), b[1], (*acc)[r0 + 5u]);
    (*acc)[r0 + 6u] = fma(vec4<f32>(a.y), b[2], (*acc)[r0 + 6u]);
    (*acc)[r0 + 7u] = fma(vec4<f32>(a.y), b[3], (*acc)[r0 + 7u]);
    (*acc)[r0 + 8u] = fma(vec4<f32>(a.z), b[0], (*acc)[r0 + 8u]);
    (*acc)[r0 + 9u] = fma(vec4<f32>(a.z), b[1], (*acc)[r0 + 9u]);
    (*acc)[r0 + 10u] = fma(vec4<f32>(a.z), b[2], (*acc)[r0 + 10u]);
    (*acc)[r0 + 11u] = fma(vec4<f32>(a.z), b[3], (*acc)[r0 + 11u]);
    (*acc)[r0 + 12u] = fma(vec4<f32>(a.w), b[0], (*acc)[r0 + 12u]);
    (*acc)[r0 + 13u] = fma(vec4<f32>(a.w), b[1], (*acc)[r0 + 13u]);
    (*acc)[r0 + 14u] = fma(vec4<f32>(a.w), b[2], (*acc)[r0 + 14u]);
    (*acc)[r0 + 15u] = fma(vec4<f32>(a.w), b[3], (*acc)[r0 + 15u]);
}

// One k of the tile: a 16x16 outer product into `acc` (row i: acc[4i .. 4i + 3]).
fn wide_mac(kk: u32, tx: u32, ty: u32, acc: ptr<function, array<vec4<f32>, 64>>) {
    let o = kk * 32u + tx * 4u;
    let b = array<vec4<f32>, 4>(wide_b[o], wide_b[o + 1u], wide_b[o + 2u], wide_b[o + 3u]);
    wide_mac4(acc, 0u, wide_a[kk * 32u + ty * 4u], b);
    wide_mac4(acc, 16u, wide_a[kk * 32u + ty * 4u + 1u], b);
    wide_mac4(acc, 32u, wide_a[kk * 32u + ty * 4u + 2u], b);
    wide_mac4(acc, 48u, wide_a[kk * 32u + ty * 4u + 3u], b);
}

// The staging and k loops are written out: lavapipe stops an invocation's
// loops after 65535 iterations in all, so the only loop over k is the tile
// loop, one iteration per 16 k (the host keeps `inner` <= 2^19 per dispatch).
@compute @workgroup_size(64)
fn matmul_wide(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let m0 = wid.y * 128u;
    let n0 = wid.x * 128u;
    let tx = tid % 8u;
    let ty = tid / 8u;
    var acc: array<vec4<f32>, 64>;
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
    acc[16] = vec4<f32>(0.0);
    acc[17] = vec4<f32>(0.0);
    acc[18] = vec4<f32>(0.0);
    acc[19] = vec4<f32>(0.0);
    acc[20] = vec4<f32>(0.0);
    acc[21] = vec4<f32>(0.0);
    acc[22] = vec4<f32>(0.0);
    acc[23] = vec4<f32>(0.0);
    acc[24] = vec4<f32>(0.0);
    acc[25] = vec4<f32>(0.0);
    acc[26] = vec4<f32>(0.0);
    acc[27] = vec4<f32>(0.0);
    acc[28] = vec4<f32>(0.0);
    acc[29] = vec4<f32>(0.0);
    acc[30] = vec4<f32>(0.0);
    acc[31] = vec4<f32>(0.0);
    acc[32] = vec4<f32>(0.0);
    acc[33] = vec4<f32>(0.0);
    acc[34] = vec4<f32>(0.0);
    acc[35] = vec4<f32>(0.0);
    acc[36] = vec4<f32>(0.0);
    acc[37] = vec4<f32>(0.0);
    acc[38] = vec4<f32>(0.0);
    acc[39] = vec4<f32>(0.0);
    acc[40] = vec4<f32>(0.0);
    acc[41] = vec4<f32>(0.0);
    acc[42] = vec4<f32>(0.0);
    acc[43] = vec4<f32>(0.0);
    acc[44] = vec4<f32>(0.0);
    acc[45] = vec4<f32>(0.0);
    acc[46] = vec4<f32>(0.0);
    acc[47] = vec4<f32>(0.0);
    acc[48] = vec4<f32>(0.0);
    acc[49] = vec4<f32>(0.0);
    acc[50] = vec4<f32>(0.0);
    acc[51] = vec4<f32>(0.0);
    acc[52] = vec4<f32>(0.0);
    acc[53] = vec4<f32>(0.0);
    acc[54] = vec4<f32>(0.0);
    acc[55] = vec4<f32>(0.0);
    acc[56] = vec4<f32>(0.0);
    acc[57] = vec4<f32>(0.0);
    acc[58] = vec4<f32>(0.0);
    acc[59] = vec4<f32>(0.0);
    acc[60] = vec4<f32>(0.0);
    acc[61] = vec4<f32>(0.0);
    acc[62] = vec4<f32>(0.0);
    acc[63] = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < params.inner; k0 = k0 + 16u) {
        wide_stage(tid, m0, n0, k0);
        workgroupBarrier();
        wide_mac(0u, tx, ty, &acc); wide_mac(1u, tx, ty, &acc); wide_mac(2u, tx, ty, &acc); wide_mac(3u, tx, ty, &acc);
        wide_mac(4u, tx, ty, &acc); wide_mac(5u, tx, ty, &acc); wide_mac(6u, tx, ty, &acc); wide_mac(7u, tx, ty, &acc);
        wide_mac(8u, tx, ty, &acc); wide_mac(9u, tx, ty, &acc); wide_mac(10u, tx, ty, &acc); wide_mac(11u, tx, ty, &acc);
        wide_mac(12u, tx, ty, &acc); wide_mac(13u, tx, ty, &acc); wide_mac(14u, tx, ty, &acc); wide_mac(15u, tx, ty, &acc);
        workgroupBarrier();
    }
    store_row(m0 + ty * 16u + 0u, n0 + tx * 16u + 0u, acc[0]);
    store_row(m0 + ty * 16u + 0u, n0 + tx * 16u + 4u, acc[1]);
    store_row(m0 + ty * 16u + 0u, n0 + tx * 16u + 8u, acc[2]);
    store_row(m0 + ty * 16u + 0u, n0 + tx * 16u + 12u, acc[3]);
    store_row(m0 + ty * 16u + 1u, n0 + tx * 16u + 0u, acc[4]);
    store_row(m0 + ty * 16u + 1u, n0 + tx * 16u + 4u, acc[5]);
    store_row(m0 + ty * 16u + 1u, n0 + tx * 16u + 8u, acc[6]);
    store_row(m0 + ty * 16u + 1u, n0 + tx * 16u + 12u, acc[7]);
    store_row(m0 + ty * 16u + 2u, n0 + tx * 16u + 0u, acc[8]);
    store_row(m0 + ty * 16u + 2u, n0 + tx * 16u + 4u, acc[9]);
    store_row(m0 + ty * 16u + 2u, n0 + tx * 16u + 8u, acc[10]);
    store_row(m0 + ty * 16u + 2u, n0 + tx * 16u + 12u, acc[11]);
    store_row(m0 + ty * 16u + 3u, n0 + tx * 16u + 0u, acc[12]);
    store_row(m0 + ty * 16u + 3u, n0 + tx * 16u + 4u, acc[13]);
    store_row(m0 + ty * 16u + 3u, n0 + tx * 16u + 8u, acc[14]);
    store_row(m0 + ty * 16u + 3u, n0 + tx * 16u + 12u, acc[15]);
    store_row(m0 + ty * 16u + 4u, n0 + tx * 16u + 0u, acc[16]);
    store_row(m0 + ty * 16u + 4u, n0 + tx * 16u + 4u, acc[17]);
    store_row(m0 + ty * 16u + 4u, n0 + tx * 16u + 8u, acc[18]);
    store_row(m0 + ty * 16u + 4u, n0 + tx * 16u + 12u, acc[19]);
    store_row(m0 + ty * 16u + 5u, n0 + tx * 16u + 0u, acc[20]);
    store_row(m0 + ty * 16u + 5u, n0 + tx * 16u + 4u, acc[21]);
    store_row(m0 + ty * 16u + 5u, n0 + tx * 16u + 8u, acc[22]);
    store_row(m0 + ty * 16u + 5u, n0 + tx * 16u + 12u, acc[23]);
    store_row(m0 + ty * 16u + 6u, n0 + tx * 16u + 0u, acc[24]);
    store_row(m0 + ty * 16u + 6u, n0 + tx * 16u + 4u, acc[25]);
    store_row(m0 + ty * 16u + 6u, n0 + tx * 16u + 8u, acc[26]);
    store_row(m0 + ty * 16u + 6u, n0 + tx * 16u + 12u, acc[27]);
    store_row(m0 + ty * 16u + 7u, n0 + tx * 16u + 0u, acc[28]);
    store_row(m0 + ty * 16u + 7u, n0 + tx * 16u + 4u, acc[29]);
    store_row(m0 + ty * 16u + 7u, n0 + tx * 16u + 8u, acc[30]);
    store_row(m0 + ty * 16u + 7u, n0 + tx * 16u + 12u, acc[31]);
    store_row(m0 + ty * 16u + 8u, n0 + tx * 16u + 0u, acc[32]);
    store_row(m0 + ty * 16u + 8u, n0 + tx * 16u + 4u, acc[33]);
    store_row(m0 + ty * 16u + 8u, n0 + tx * 16u + 8u, acc[34]);
    store_row(m0 + ty * 16u + 8u, n0 + tx * 16u + 12u, acc[35]);
    store_row(m0 + ty * 16u + 9u, n0 + tx * 16u + 0u, acc[36]);
    store_row(m0 + ty * 16u + 9u, n0 + tx * 16u + 4u, acc[37]);
    store_row(m0 + ty * 16u + 9u, n0 + tx * 16u + 8u, acc[38]);
    store_row(m0 + ty * 16u + 9u, n0 + tx * 16u + 12u, acc[39]);
    store_row(m0 + ty * 16u + 10u, n0 + tx * 16u + 0u, acc[40]);
    store_row(m0 + ty * 16u + 10u, n0 + tx * 16u + 4u, acc[41]);
    store_row(m0 + ty * 16u + 10u, n0 + tx * 16u + 8u, acc[42]);
    store_row(m0 + ty * 16u + 10u, n0 + tx * 16u + 12u, acc[43]);
    store_row(m0 + ty * 16u + 11u, n0 + tx * 16u + 0u, acc[44]);
    store_row(m0 + ty * 16u + 11u, n0 + tx * 16u + 4u, acc[45]);
    store_row(m0 + ty * 16u + 11u, n0 + tx * 16u + 8u, acc[46]);
    store_row(m0 + ty * 16u + 11u, n0 + tx * 16u + 12u, acc[47]);
    store_row(m0 + ty * 16u + 12u, n0 + tx * 16u + 0u, acc[48]);
    store_row(m0 + ty * 16u + 12u, n0 + tx * 16u + 4u, acc[49]);
    store_row(m0 + ty * 16u + 12u, n0 + tx * 16u + 8u, acc[50]);
    store_row(m0 + ty * 16u + 12u, n0 + tx * 16u + 12u, acc[51]);
    store_row(m0 + ty * 16u + 13u, n0 + tx * 16u + 0u, acc[52]);
    store_row(m0 + ty * 16u + 13u, n0 + tx * 16u + 4u, acc[53]);
    store_row(m0 + ty * 16u + 13u, n0 + tx * 16u + 8u, acc[54]);
    store_row(m0 + ty * 16u + 13u, n0 + tx * 16u + 12u, acc[55]);
    store_row(m0 + ty * 16u + 14u, n0 + tx * 16u + 0u, acc[56]);
    store_row(m0 + ty * 16u + 14u, n0 + tx * 16u + 4u, acc[57]);
    store_row(m0 + ty * 16u + 14u, n0 + tx * 16u + 8u, acc[58]);
    store_row(m0 + ty * 16u + 14u, n0 + tx * 16u + 12u, acc[59]);
    store_row(m0 + ty * 16u + 15u, n0 + tx * 16u + 0u, acc[60]);
    store_row(m0 + ty * 16u + 15u, n0 + tx * 16u + 4u, acc[61]);
    store_row(m0 + ty * 16u + 15u, n0 + tx * 16u + 8u, acc[62]);
    store_row(m0 + ty * 16u + 15u, n0 + tx * 16u + 12u, acc[63]);
}

// `matmul_wide_short`: `matmul_wide` over 64x128 tiles, 32 invocations of
// 16x16, for outputs of 64 to 127 rows (the fused op's 64-row chunks, a 32
// MiB workspace at V = 131072, would leave half of a 128-row tile idle). Its
// own staging and multiply-add functions, which take the workgroup size
// `wg` (32) as an argument. llvmpipe's compile time and speed turned on
// how this is written (BENCHMARKS.md): sharing these functions with
// `matmul_wide` made it 10 to 20 % slower; writing 32 in as a literal, or
// dropping the B guard below (never taken at wg = 32), took the compile
// from 0.6 s to 24 s; so did leaving the accumulators to WGSL's implicit
// zeroing (`wide_zero`), and passing `WG` as a pipeline constant.

// Vector `v` of the (2·wg)-row tile A: k `v / (wg / 2)`, rows
// 4·(v % (wg / 2)) .. +3.
fn short_stage_a(v: u32, m0: u32, k0: u32, wg: u32) {
    let k = k0 + v / (wg / 2u);
    let q = (v % (wg / 2u)) * 4u;
    wide_a[v] = vec4<f32>(
        load_a(m0 + q, k), load_a(m0 + q + 1u, k), load_a(m0 + q + 2u, k), load_a(m0 + q + 3u, k));
}

// Vector `v` of tile B: k `v / 32`, columns 4·(v % 32) .. +3.
fn short_stage_b(v: u32, n0: u32, k0: u32) {
    if (v >= 512u) { return; }
    let k = k0 + v / 32u;
    let q = (v % 32u) * 4u;
    wide_b[v] = vec4<f32>(
        load_b(k, n0 + q), load_b(k, n0 + q + 1u), load_b(k, n0 + q + 2u), load_b(k, n0 + q + 3u));
}

// Invocation `tid` (of wg) stages A vectors tid + wg·s, s = 0..7 (8·wg in
// all), and B vectors tid + wg·s below 512, s = 0..15 (written out, as in
// `matmul_wide`).
fn short_stage(tid: u32, m0: u32, n0: u32, k0: u32, wg: u32) {
    short_stage_a(tid, m0, k0, wg); short_stage_a(tid + 1u * wg, m0, k0, wg); short_stage_a(tid + 2u * wg, m0, k0, wg); short_stage_a(tid + 3u * wg, m0, k0, wg);
    short_stage_a(tid + 4u * wg, m0, k0, wg); short_stage_a(tid + 5u * wg, m0, k0, wg); short_stage_a(tid + 6u * wg, m0, k0, wg); short_stage_a(tid + 7u * wg, m0, k0, wg);
    short_stage_b(tid, n0, k0); short_stage_b(tid + 1u * wg, n0, k0); short_stage_b(tid + 2u * wg, n0, k0); short_stage_b(tid + 3u * wg, n0, k0);
    short_stage_b(tid + 4u * wg, n0, k0); short_stage_b(tid + 5u * wg, n0, k0); short_stage_b(tid + 6u * wg, n0, k0); short_stage_b(tid + 7u * wg, n0, k0);
    short_stage_b(tid + 8u * wg, n0, k0); short_stage_b(tid + 9u * wg, n0, k0); short_stage_b(tid + 10u * wg, n0, k0); short_stage_b(tid + 11u * wg, n0, k0);
    short_stage_b(tid + 12u * wg, n0, k0); short_stage_b(tid + 13u * wg, n0, k0); short_stage_b(tid + 14u * wg, n0, k0); short_stage_b(tid + 15u * wg, n0, k0);
}

// One k of the (2·wg)-row tile: a 16x16 outer product into `acc`.
fn short_mac(kk: u32, tx: u32, ty: u32, acc: ptr<function, array<vec4<f32>, 64>>, wg: u32) {
    let o = kk * 32u + tx * 4u;
    let b = array<vec4<f32>, 4>(wide_b[o], wide_b[o + 1u], wide_b[o + 2u], wide_b[o + 3u]);
    let a = kk * (wg / 2u) + ty * 4u;
    wide_mac4(acc, 0u, wide_a[a], b);
    wide_mac4(acc, 16u, wide_a[a + 1u], b);
    wide_mac4(acc, 32u, wide_a[a + 2u], b);
    wide_mac4(acc, 48u, wide_a[a + 3u], b);
}

// The staging and k loops are written out: lavapipe stops an invocation's
// loops after 65535 iterations in all, so the only loop over k is the tile
// loop, one iteration per 16 k (the host keeps `inner` <= 2^19 per dispatch).
@compute @workgroup_size(32)
fn matmul_wide_short(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    let m0 = wid.y * 64u;
    let n0 = wid.x * 128u;
    let tx = tid % 8u;
    let ty = tid / 8u;
    var acc: array<vec4<f32>, 64>;
    wide_zero(&acc);
    for (var k0 = 0u; k0 < params.inner; k0 = k0 + 16u) {
        short_stage(tid, m0, n0, k0, 32u);
        workgroupBarrier();
        short_mac(0u, tx, ty, &acc, 32u); short_mac(1u, tx, ty, &acc, 32u); short_mac(2u, tx, ty, &acc, 32u); short_mac(3u, tx, ty, &acc, 32u);
        short_mac(4u, tx, ty, &acc, 32u); short_mac(5u, tx, ty, &acc, 32u); short_mac(6u, tx, ty, &acc, 32u); short_mac(7u, tx, ty, &acc, 32u);
        short_mac(8u, tx, ty, &acc, 32u); short_mac(9u, tx, ty, &acc, 32u); short_mac(10u, tx, ty, &acc, 32u); short_mac(11u, tx, ty, &acc, 32u);
        short_mac(12u, tx, ty, &acc, 32u); short_mac(13u, tx, ty, &acc, 32u); short_mac(14u, tx, ty, &acc, 32u); short_mac(15u, tx, ty, &acc, 32u);
        workgroupBarrier();
    }
    wide_store(&acc, m0, n0, tx, ty);
}

// Zeroes the accumulators one constant index at a time (see
// `matmul_wide_short`).
fn wide_zero(acc: ptr<function, array<vec4<f32>, 64>>) {
    (*acc)[0] = vec4<f32>(0.0);
    (*acc)[1] = vec4<f32>(0.0);
    (*acc)[2] = vec4<f32>(0.0);
    (*acc)[3] = vec4<f32>(0.0);
    (*acc)[4] = vec4<f32>(0.0);
    (*acc)[5] = vec4<f32>(0.0);
    (*acc)[6] = vec4<f32>(0.0);
    (*acc)[7] = vec4<f32>(0.0);
    (*acc)[8] = vec4<f32>(0.0);
    (*acc)[9] = vec4<f32>(0.0);
    (*acc)[10] = vec4<f32>(0.0);
    (*acc)[11] = vec4<f32>(0.0);
    (*acc)[12] = vec4<f32>(0.0);
    (*acc)[13] = vec4<f32>(0.0);
    (*acc)[14] = vec4<f32>(0.0);
    (*acc)[15] = vec4<f32>(0.0);
    (*acc)[16] = vec4<f32>(0.0);
    (*acc)[17] = vec4<f32>(0.0);
    (*acc)[18] = vec4<f32>(0.0);
    (*acc)[19] = vec4<f32>(0.0);
    (*acc)[20] = vec4<f32>(0.0);
    (*acc)[21] = vec4<f32>(0.0);
    (*acc)[22] = vec4<f32>(0.0);
    (*acc)[23] = vec4<f32>(0.0);
    (*acc)[24] = vec4<f32>(0.0);
    (*acc)[25] = vec4<f32>(0.0);
    (*acc)[26] = vec4<f32>(0.0);
    (*acc)[27] = vec4<f32>(0.0);
    (*acc)[28] = vec4<f32>(0.0);
    (*acc)[29] = vec4<f32>(0.0);
    (*acc)[30] = vec4<f32>(0.0);
    (*acc)[31] = vec4<f32>(0.0);
    (*acc)[32] = vec4<f32>(0.0);
    (*acc)[33] = vec4<f32>(0.0);
    (*acc)[34] = vec4<f32>(0.0);
    (*acc)[35] = vec4<f32>(0.0);
    (*acc)[36] = vec4<f32>(0.0);
    (*acc)[37] = vec4<f32>(0.0);
    (*acc)[38] = vec4<f32>(0.0);
    (*acc)[39] = vec4<f32>(0.0);
    (*acc)[40] = vec4<f32>(0.0);
    (*acc)[41] = vec4<f32>(0.0);
    (*acc)[42] = vec4<f32>(0.0);
    (*acc)[43] = vec4<f32>(0.0);
    (*acc)[44] = vec4<f32>(0.0);
    (*acc)[45] = vec4<f32>(0.0);
    (*acc)[46] = vec4<f32>(0.0);
    (*acc)[47] = vec4<f32>(0.0);
    (*acc)[48] = vec4<f32>(0.0);
    (*acc)[49] = vec4<f32>(0.0);
    (*acc)[50] = vec4<f32>(0.0);
    (*acc)[51] = vec4<f32>(0.0);
    (*acc)[52] = vec4<f32>(0.0);
    (*acc)[53] = vec4<f32>(0.0);
    (*acc)[54] = vec4<f32>(0.0);
    (*acc)[55] = vec4<f32>(0.0);
    (*acc)[56] = vec4<f32>(0.0);
    (*acc)[57] = vec4<f32>(0.0);
    (*acc)[58] = vec4<f32>(0.0);
    (*acc)[59] = vec4<f32>(0.0);
    (*acc)[60] = vec4<f32>(0.0);
    (*acc)[61] = vec4<f32>(0.0);
    (*acc)[62] = vec4<f32>(0.0);
    (*acc)[63] = vec4<f32>(0.0);
}

// Invocation (tx, ty)'s 16x16 block, row i in acc[4i .. 4i + 3].
fn wide_store(acc: ptr<function, array<vec4<f32>, 64>>, m0: u32, n0: u32, tx: u32, ty: u32) {
    store_row(m0 + ty * 16u + 0u, n0 + tx * 16u + 0u, (*acc)[0]);
    store_row(m0 + ty * 16u + 0u, n0 + tx * 16u + 4u, (*acc)[1]);
    store_row(m0 + ty * 16u + 0u, n0 + tx * 16u + 8u, (*acc)[2]);
    store_row(m0 + ty * 16u + 0u, n0 + tx * 16u + 12u, (*acc)[3]);
    store_row(m0 + ty * 16u + 1u, n0 + tx * 16u + 0u, (*acc)[4]);
    store_row(m0 + ty * 16u + 1u, n0 + tx * 16u + 4u, (*acc)[5]);
    store_row(m0 + ty * 16u + 1u, n0 + tx * 16u + 8u, (*acc)[6]);
    store_row(m0 + ty * 16u + 1u, n0 + tx * 16u + 12u, (*acc)[7]);
    store_row(m0 + ty * 16u + 2u, n0 + tx * 16u + 0u, (*acc)[8]);
    store_row(m0 + ty * 16u + 2u, n0 + tx * 16u + 4u, (*acc)[9]);
    store_row(m0 + ty * 16u + 2u, n0 + tx * 16u + 8u, (*acc)[10]);
    store_row(m0 + ty * 16u + 2u, n0 + tx * 16u + 12u, (*acc)[11]);
    store_row(m0 + ty * 16u + 3u, n0 + tx * 16u + 0u, (*acc)[12]);
    store_row(m0 + ty * 16u + 3u, n0 + tx * 16u + 4u, (*acc)[13]);
    store_row(m0 + ty * 16u + 3u, n0 + tx * 16u + 8u, (*acc)[14]);
    store_row(m0 + ty * 16u + 3u, n0 + tx * 16u + 12u, (*acc)[15]);
    store_row(m0 + ty * 16u + 4u, n0 + tx * 16u + 0u, (*acc)[16]);
    store_row(m0 + ty * 16u + 4u, n0 + tx * 16u + 4u, (*acc)[17]);
    store_row(m0 + ty * 16u + 4u, n0 + tx * 16u + 8u, (*acc)[18]);
    store_row(m0 + ty * 16u + 4u, n0 + tx * 16u + 12u, (*acc)[19]);
    store_row(m0 + ty * 16u + 5u, n0 + tx * 16u + 0u, (*acc)[20]);
    store_row(m0 + ty * 16u + 5u, n0 + tx * 16u + 4u, (*acc)[21]);
    store_row(m0 + ty * 16u + 5u, n0 + tx * 16u + 8u, (*acc)[22]);
    store_row(m0 + ty * 16u + 5u, n0 + tx * 16u + 12u, (*acc)[23]);
    store_row(m0 + ty * 16u + 6u, n0 + tx * 16u + 0u, (*acc)[24]);
    store_row(m0 + ty * 16u + 6u, n0 + tx * 16u + 4u, (*acc)[25]);
    store_row(m0 + ty * 16u + 6u, n0 + tx * 16u + 8u, (*acc)[26]);
    store_row(m0 + ty * 16u + 6u, n0 + tx * 16u + 12u, (*acc)[27]);
    store_row(m0 + ty * 16u + 7u, n0 + tx * 16u + 0u, (*acc)[28]);
    store_row(m0 + ty * 16u + 7u, n0 + tx * 16u + 4u, (*acc)[29]);
    store_row(m0 + ty * 16u + 7u, n0 + tx * 16u + 8u, (*acc)[30]);
    store_row(m0 + ty * 16u + 7u, n0 + tx * 16u + 12u, (*acc)[31]);
    store_row(m0 + ty * 16u + 8u, n0 + tx * 16u + 0u, (*acc)[32]);
    store_row(m0 + ty * 16u + 8u, n0 + tx * 16u + 4u, (*acc)[33]);
    store_row(m0 + ty * 16u + 8u, n0 + tx * 16u + 8u, (*acc)[34]);
    store_row(m0 + ty * 16u + 8u, n0 + tx * 16u + 12u, (*acc)[35]);
    store_row(m0 + ty * 16u + 9u, n0 + tx * 16u + 0u, (*acc)[36]);
    store_row(m0 + ty * 16u + 9u, n0 + tx * 16u + 4u, (*acc)[37]);
    store_row(m0 + ty * 16u + 9u, n0 + tx * 16u + 8u, (*acc)[38]);
    store_row(m0 + ty * 16u + 9u, n0 + tx * 16u + 12u, (*acc)[39]);
    store_row(m0 + ty * 16u + 10u, n0 + tx * 16u + 0u, (*acc)[40]);
    store_row(m0 + ty * 16u + 10u, n0 + tx * 16u + 4u, (*acc)[41]);
    store_row(m0 + ty * 16u + 10u, n0 + tx * 16u + 8u, (*acc)[42]);
    store_row(m0 + ty * 16u + 10u, n0 + tx * 16u + 12u, (*acc)[43]);
    store_row(m0 + ty * 16u + 11u, n0 + tx * 16u + 0u, (*acc)[44]);
    store_row(m0 + ty * 16u + 11u, n0 + tx * 16u + 4u, (*acc)[45]);
    store_row(m0 + ty * 16u + 11u, n0 + tx * 16u + 8u, (*acc)[46]);
    store_row(m0 + ty * 16u + 11u, n0 + tx * 16u + 12u, (*acc)[47]);
    store_row(m0 + ty * 16u + 12u, n0 + tx * 16u + 0u, (*acc)[48]);
    store_row(m0 + ty * 16u + 12u, n0 + tx * 16u + 4u, (*acc)[49]);
    store_row(m0 + ty * 16u + 12u, n0 + tx * 16u + 8u, (*acc)[50]);
    store_row(m0 + ty * 16u + 12u, n0 + tx * 16u + 12u, (*acc)[51]);
    store_row(m0 + ty * 16u + 13u, n0 + tx * 16u + 0u, (*acc)[52]);
    store_row(m0 + ty * 16u + 13u, n0 + tx * 16u + 4u, (*acc)[53]);
    store_row(m0 + ty * 16u + 13u, n0 + tx * 16u + 8u, (*acc)[54]);
    store_row(m0 + ty * 16u + 13u, n0 + tx * 16u + 12u, (*acc)[55]);
    store_row(m0 + ty * 16u + 14u, n0 + tx * 16u + 0u, (*acc)[56]);
    store_row(m0 + ty * 16u + 14u, n0 + tx * 16u + 4u, (*acc)[57]);
    store_row(m0 + ty * 16u + 14u, n0 + tx * 16u + 8u, (*acc)[58]);
    store_row(m0 + ty * 16u + 14u, n0 + tx * 16u + 12u, (*acc)[59]);
    store_row(m0 + ty * 16u + 15u, n0 + tx * 16u + 0u, (*acc)[60]);
    store_row(m0 + ty * 16u + 15u, n0 + tx * 16u + 4u, (*acc)[61]);
    store_row(m0 + ty * 16u + 15u, n0 + tx * 16u + 8u, (*acc)[62]);
    store_row(m0 + ty * 16u + 15u, n0 + tx * 16u + 12u, (*acc)[63]);
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
