// Scalar variant (`VecWidth::Scalar`): one f32 per load, any row length.
const VW: u32 = 1u;
alias vec_t = f32;
alias vec_u = u32;
const LANE: vec_u = 0u;
fn hmax(v: f32) -> f32 { return v; }
fn hsum(v: f32) -> f32 { return v; }
fn lane(v: f32, k: u32) -> f32 { return v; }
fn vec_of(a: f32, b: f32, c: f32, d: f32) -> vec_t { return a; }
fn ulane(v: vec_u, k: u32) -> u32 { return v; }
// Matrix arrays hold one vector per element (see `width_vec4_gathered.wgsl`).
const GATHER: bool = false;
const EDGED: bool = false;
fn lane_at(src: u32, i: u32, k: u32) -> u32 { return src + i; }
fn fvec_at(src: u32, i: u32) -> u32 { return src + i; }
const FSTEP: u32 = 0u;
const MSTRIDE: u32 = 1u;
const MSTEP: u32 = 0u;
alias fvec_t = f32;
fn fvec(a: fvec_t, b: fvec_t, c: fvec_t, d: fvec_t) -> vec_t { return a; }
// Elements of an `fvec_t`, and element k of one.
const FW: u32 = 1u;
fn flane(v: fvec_t, k: u32) -> f32 { return v; }
