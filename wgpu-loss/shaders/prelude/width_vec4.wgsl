// vec4 variant (`VecWidth::Vec4`): four columns per load, for rows whose
// length and offsets are multiples of four.
const VW: u32 = 4u;
alias vec_t = vec4<f32>;
alias vec_u = vec4<u32>;
const LANE: vec_u = vec4<u32>(0u, 1u, 2u, 3u);
fn hmax(v: vec4<f32>) -> f32 { return max(max(v.x, v.y), max(v.z, v.w)); }
fn hsum(v: vec4<f32>) -> f32 { return (v.x + v.y) + (v.z + v.w); }
fn lane(v: vec4<f32>, k: u32) -> f32 { return v[k]; }
fn vec_of(a: f32, b: f32, c: f32, d: f32) -> vec_t { return vec4<f32>(a, b, c, d); }
fn ulane(v: vec_u, k: u32) -> u32 { return v[k]; }
// Matrix arrays hold one vector per element (see `width_vec4_gathered.wgsl`).
const GATHER: bool = false;
const EDGED: bool = false;
fn lane_at(src: u32, i: u32, k: u32) -> u32 { return src + i; }
fn fvec_at(src: u32, i: u32) -> u32 { return src + i; }
const FSTEP: u32 = 0u;
const MSTRIDE: u32 = 1u;
const MSTEP: u32 = 0u;
alias fvec_t = vec4<f32>;
fn fvec(a: fvec_t, b: fvec_t, c: fvec_t, d: fvec_t) -> vec_t { return a; }
// Elements of an `fvec_t`, and element k of one.
const FW: u32 = 4u;
fn flane(v: fvec_t, k: u32) -> f32 { return v[k]; }
