// f16 matrices, vec4 loads (`Storage::F16`, `VecWidth::Vec4`): loads
// convert to f32 arithmetic, stores convert back. Needs `SHADER_F16`.
enable f16;
alias mat_t = vec4<f16>;
fn unpack_mat(w: mat_t) -> vec_t { return vec_t(w); }
fn pack_mat(v: vec_t) -> mat_t { return mat_t(v); }
fn mat_vec(a: mat_t, b: mat_t, c: mat_t, d: mat_t, j: u32) -> vec_t { return vec_t(a); }
fn mat_lane(v: vec_t, k: u32) -> mat_t { return mat_t(v); }
// Array index of element (or vector) e, and whether matrices may be stored.
fn mat_index(e: u32) -> u32 { return e; }
const MAT_STORES: bool = true;
// `fresh` where `keep_fresh` is set, else `old`, by the bits (edged rows' shared vectors).
fn mat_merge(old: mat_t, fresh: mat_t, keep_fresh: vec_u) -> mat_t { return select(old, fresh, keep_fresh != vec_u(0u)); }
