// Gathered vec4 variant (`VecWidth::Vec4Gathered`): four columns per vector
// from four scalar loads, for rows that are not whole vec4s (an odd C) where
// the edged variant does not apply (matrices at different offsets modulo 4,
// or a kernel that stores into its input). The arithmetic stays four-wide.
// Vectors split a row as the edged variant's do: vector i holds columns
// 4i - p .. 4i - p + 3, p the row's phase in matrix A (`row_phase`), so
// both give the same bits. Matrix arrays hold scalars; lanes outside the
// row are masked (`masked`, `lane_in_row` in common.wgsl), and stores go
// lane by lane, so no row touches another's elements.
const VW: u32 = 4u;
alias vec_t = vec4<f32>;
alias vec_u = vec4<u32>;
const LANE: vec_u = vec4<u32>(0u, 1u, 2u, 3u);
fn hmax(v: vec4<f32>) -> f32 { return max(max(v.x, v.y), max(v.z, v.w)); }
fn hsum(v: vec4<f32>) -> f32 { return (v.x + v.y) + (v.z + v.w); }
fn lane(v: vec4<f32>, k: u32) -> f32 { return v[k]; }
fn vec_of(a: f32, b: f32, c: f32, d: f32) -> vec_t { return vec4<f32>(a, b, c, d); }
fn ulane(v: vec_u, k: u32) -> u32 { return v[k]; }
const GATHER: bool = true;
const EDGED: bool = false;
// Lane k of vector i of a row that starts at element `src`, and the first
// element of an f32 side array's vector i (head lanes wrap around, and are
// masked or never stored).
fn lane_at(src: u32, i: u32, k: u32) -> u32 { return src + i * VW + k - row_phase; }
fn fvec_at(src: u32, i: u32) -> u32 { return src + i * VW - row_phase; }
const FSTEP: u32 = 1u;
const MSTRIDE: u32 = 4u;
const MSTEP: u32 = 1u;
// f32 matrices that are not `mat_t` (probability targets) are scalar arrays too.
alias fvec_t = f32;
fn fvec(a: fvec_t, b: fvec_t, c: fvec_t, d: fvec_t) -> vec_t { return vec4<f32>(a, b, c, d); }
// Elements of an `fvec_t`, and element k of one.
const FW: u32 = 1u;
fn flane(v: fvec_t, k: u32) -> f32 { return v; }
