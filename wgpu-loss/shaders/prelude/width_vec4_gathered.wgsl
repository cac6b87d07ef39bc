// Gathered vec4 variant (`VecWidth::Vec4Gathered`): four columns per vector
// from four scalar loads, for rows whose length or start is not a multiple
// of four (an odd C): the arithmetic stays four-wide where the scalar
// variant would walk one column at a time. Matrix arrays hold scalars:
// vector i of a row is its elements 4i .. 4i + 3 (`MSTRIDE`, `MSTEP`), the
// lanes of a row's last vector past its end are masked (`masked`,
// `lane_in_row` in common.wgsl), and stores go lane by lane, so no row
// touches another's elements.
const VW: u32 = 4u;
alias vec_t = vec4<f32>;
alias vec_u = vec4<u32>;
const LANE: vec_u = vec4<u32>(0u, 1u, 2u, 3u);
fn hmax(v: vec4<f32>) -> f32 { return max(max(v.x, v.y), max(v.z, v.w)); }
fn hsum(v: vec4<f32>) -> f32 { return (v.x + v.y) + (v.z + v.w); }
fn lane(v: vec4<f32>, k: u32) -> f32 { return v[k]; }
const GATHER: bool = true;
const MSTRIDE: u32 = 4u;
const MSTEP: u32 = 1u;
// f32 matrices that are not `mat_t` (probability targets) are scalar arrays too.
alias fvec_t = f32;
fn fvec(a: fvec_t, b: fvec_t, c: fvec_t, d: fvec_t) -> vec_t { return vec4<f32>(a, b, c, d); }
// Elements of an `fvec_t`, and element k of one.
const FW: u32 = 1u;
fn flane(v: fvec_t, k: u32) -> f32 { return v; }
