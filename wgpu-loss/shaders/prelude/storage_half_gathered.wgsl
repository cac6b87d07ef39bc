// 16-bit matrices, gathered (`Storage::F16`, `Storage::Bf16`,
// `VecWidth::Vec4Gathered`): packed words read by element, for rows that are
// not whole vec4s and not edged (under 8 columns, or a last row ending past
// its buffer). Reads only: two invocations would store the two halves of one
// word, so kernels that store a matrix run on f32 copies (`half_widen` /
// `half_narrow`); here the stores are compiled out.
alias mat_t = u32;
fn unpack_mat(w: mat_t) -> vec_t { return vec_t(half_pair(w).x); }
fn pack_mat(v: vec_t) -> mat_t { return 0u; }
// Element e is the low half of word e / 2 when e is even, the high half when odd.
fn half_at(w: u32, e: u32) -> f32 { return half_pair(w)[e & 1u]; }
fn mat_vec(a: mat_t, b: mat_t, c: mat_t, d: mat_t, j: u32) -> vec_t {
    return vec4<f32>(half_at(a, j), half_at(b, j + 1u), half_at(c, j + 2u), half_at(d, j + 3u));
}
fn mat_lane(v: vec_t, k: u32) -> mat_t { return 0u; }
fn mat_index(e: u32) -> u32 { return e >> 1u; }
const MAT_STORES: bool = false;
// Edged rows' merge (`storage_f32.wgsl`); gathered rows never merge.
fn mat_merge(old: mat_t, fresh: mat_t, keep_fresh: vec_u) -> mat_t { return fresh; }
