// f16 matrices, edged (`Storage::F16`, `VecWidth::Vec4Edged`): input
// matrices are aligned vec4<f16> (8-byte loads), output matrices scalar f16
// (2-byte stores, lane by lane). Needs `SHADER_F16`.
enable f16;
alias mat_t = f16;
alias src_t = vec4<f16>;
fn unpack_mat(w: mat_t) -> vec_t { return vec_t(f32(w)); }
fn pack_mat(v: vec_t) -> mat_t { return mat_t(v.x); }
fn mat_vec(a: src_t, b: src_t, c: src_t, d: src_t, j: u32) -> vec_t { return vec_t(a); }
fn mat_lane(v: vec_t, k: u32) -> mat_t { return mat_t(v[k]); }
fn pack_src(v: vec_t) -> src_t { return src_t(v); }
fn src_lane(v: vec_t, k: u32) -> src_t { return src_t(v); }
// Array index of element (or vector) e, and whether matrices may be stored.
fn mat_index(e: u32) -> u32 { return e; }
const MAT_STORES: bool = true;
