// f32 matrices (`Storage::F32`): loads and stores are `vec_t` as they are.
alias mat_t = vec_t;
fn unpack_mat(w: mat_t) -> vec_t { return w; }
fn pack_mat(v: vec_t) -> mat_t { return v; }
// One vector from the array elements `vec_at` names (all four the same element
// unless gathered), and lane k of a vector as an array element.
fn mat_vec(a: mat_t, b: mat_t, c: mat_t, d: mat_t, j: u32) -> vec_t { return a; }
fn mat_lane(v: vec_t, k: u32) -> mat_t { return v; }
// Array index of element (or vector) e, and whether matrices may be stored.
fn mat_index(e: u32) -> u32 { return e; }
// Element e of the matrix, from the element `mat_index(e)` names (the matrix
// product reads scalars: `linear.wgsl`, scalar width only).
fn mat_scalar(w: mat_t, e: u32) -> vec_t { return w; }
const MAT_STORES: bool = true;
// `fresh` where `keep_fresh` is set, else `old`, by the bits (edged rows' shared vectors).
fn mat_merge(old: mat_t, fresh: mat_t, keep_fresh: vec_u) -> mat_t { return select(old, fresh, keep_fresh != vec_u(0u)); }
