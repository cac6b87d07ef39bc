// 16-bit matrices read one element at a time (`VecWidth::Scalar`): the
// matrix product's f16 and bf16 operands (`linear.wgsl`), packed two to a `u32` word,
// low half first. Element e is half e & 1 of word e / 2 (`mat_index`,
// `mat_scalar`). The row kernels never take this variant (`Family::accepts`).
alias mat_t = u32;
fn unpack_mat(w: mat_t) -> vec_t { return vec_t(half_pair(w).x); }
fn pack_mat(v: vec_t) -> mat_t { return 0u; }
fn mat_vec(a: mat_t, b: mat_t, c: mat_t, d: mat_t, j: u32) -> vec_t { return vec_t(half_pair(a)[j & 1u]); }
fn mat_lane(v: vec_t, k: u32) -> mat_t { return 0u; }
fn mat_index(e: u32) -> u32 { return e >> 1u; }
// Element e of the matrix, from the word `mat_index(e)` names.
fn mat_scalar(w: mat_t, e: u32) -> vec_t { return vec_t(half_pair(w)[e & 1u]); }
const MAT_STORES: bool = false;
fn mat_merge(old: mat_t, fresh: mat_t, keep_fresh: vec_u) -> mat_t { return fresh; }
