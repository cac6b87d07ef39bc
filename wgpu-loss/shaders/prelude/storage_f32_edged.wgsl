// f32 matrices, edged (`Storage::F32`, `VecWidth::Vec4Edged`): input
// matrices (`src_t`) are the buffer's aligned vec4s, output matrices
// (`mat_t`) scalars, stored lane by lane. Kernels that store into an input
// matrix (cross-entropy's in-place gradient) are never built edged: the host
// gathers them (their stores here are compiled out).
alias mat_t = f32;
alias src_t = vec4<f32>;
fn unpack_mat(w: mat_t) -> vec_t { return vec_t(w); }
fn pack_mat(v: vec_t) -> mat_t { return v.x; }
fn mat_vec(a: src_t, b: src_t, c: src_t, d: src_t, j: u32) -> vec_t { return a; }
fn mat_lane(v: vec_t, k: u32) -> mat_t { return v[k]; }
fn pack_src(v: vec_t) -> src_t { return v; }
fn src_lane(v: vec_t, k: u32) -> src_t { return v; }
// Array index of element (or vector) e, and whether matrices may be stored.
fn mat_index(e: u32) -> u32 { return e; }
const MAT_STORES: bool = true;
