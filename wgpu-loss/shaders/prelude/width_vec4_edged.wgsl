// Edged vec4 variant (`VecWidth::Vec4Edged`): rows that are not whole vec4s
// (an odd C), read and written as the buffer's own aligned vec4s. A row
// that starts at element s covers vectors floor(s / 4) .. of its matrices;
// the lanes of its first vector before s (its phase, s % 4, the same for
// every matrix of the row: the host checks the offsets) and of its last
// vector past its end belong to the neighbouring rows and are masked
// (`masked`, `col_of` in common.wgsl). So every load and store is one whole
// vector (16 bytes of f32, 8 of f16 or bf16), with the storage preludes of
// whole vec4 rows; the two vectors a row shares with its neighbours are
// stored through `edge_vecs` and merged by a pass after the kernel.
const VW: u32 = 4u;
alias vec_t = vec4<f32>;
alias vec_u = vec4<u32>;
const LANE: vec_u = vec4<u32>(0u, 1u, 2u, 3u);
fn hmax(v: vec4<f32>) -> f32 { return max(max(v.x, v.y), max(v.z, v.w)); }
fn hsum(v: vec4<f32>) -> f32 { return (v.x + v.y) + (v.z + v.w); }
fn lane(v: vec4<f32>, k: u32) -> f32 { return v[k]; }
fn vec_of(a: f32, b: f32, c: f32, d: f32) -> vec_t { return vec4<f32>(a, b, c, d); }
fn ulane(v: vec_u, k: u32) -> u32 { return v[k]; }
const GATHER: bool = false;
const EDGED: bool = true;
// Matrices hold one vector per element.
const MSTRIDE: u32 = 1u;
const MSTEP: u32 = 0u;
// f32 side arrays (probability targets, class weights) hold scalars: lane k
// of vector i of a row whose first vector is `src` is element 4 (src + i) + k.
fn lane_at(src: u32, i: u32, k: u32) -> u32 { return (src + i) * VW + k; }
fn fvec_at(src: u32, i: u32) -> u32 { return (src + i) * VW; }
const FSTEP: u32 = 1u;
alias fvec_t = f32;
fn fvec(a: fvec_t, b: fvec_t, c: fvec_t, d: fvec_t) -> vec_t { return vec4<f32>(a, b, c, d); }
// Elements of an `fvec_t`, and element k of one.
const FW: u32 = 1u;
fn flane(v: fvec_t, k: u32) -> f32 { return v; }
