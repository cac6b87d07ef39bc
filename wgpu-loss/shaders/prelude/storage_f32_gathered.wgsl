// f32 matrices, gathered vec4 (`Storage::F32`, `VecWidth::Vec4Gathered`):
// scalar arrays, four elements to a vector.
alias mat_t = f32;
fn unpack_mat(w: mat_t) -> vec_t { return vec_t(w); }
fn pack_mat(v: vec_t) -> mat_t { return v.x; }
fn mat_vec(a: mat_t, b: mat_t, c: mat_t, d: mat_t, j: u32) -> vec_t { return vec4<f32>(a, b, c, d); }
fn mat_lane(v: vec_t, k: u32) -> mat_t { return v[k]; }
// Array index of element (or vector) e, and whether matrices may be stored.
fn mat_index(e: u32) -> u32 { return e; }
const MAT_STORES: bool = true;
// Edged rows' merge (`storage_f32.wgsl`); gathered rows never merge.
fn mat_merge(old: mat_t, fresh: mat_t, keep_fresh: vec_u) -> mat_t { return fresh; }
