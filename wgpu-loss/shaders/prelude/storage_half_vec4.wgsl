// 16-bit matrices (`Storage::F16`, `Storage::Bf16`), four columns per 8-byte
// load (`VecWidth::Vec4`, and edged rows, `VecWidth::Vec4Edged`): two packed
// `u32` words, low half first (little-endian order), so neither type needs a
// shader feature. `half_pair` and `half_bits` (`half_f16.wgsl`,
// `half_bf16.wgsl`) convert; packing rounds to nearest even. Gathered rows
// are read by `storage_half_gathered.wgsl` in kernels that store no matrix,
// and otherwise staged through f32 by `half_widen` / `half_narrow`
// (`shaders/copy.wgsl`).
alias mat_t = vec2<u32>;
fn unpack_mat(w: mat_t) -> vec_t { return vec4<f32>(half_pair(w.x), half_pair(w.y)); }
fn pack_mat(v: vec_t) -> mat_t {
    let h = half_bits(bitcast<vec4<u32>>(v));
    return vec2<u32>(h.x | (h.y << 16u), h.z | (h.w << 16u));
}
fn mat_vec(a: mat_t, b: mat_t, c: mat_t, d: mat_t, j: u32) -> vec_t { return unpack_mat(a); }
fn mat_lane(v: vec_t, k: u32) -> mat_t { return pack_mat(v); }
// Array index of element (or vector) e, and whether matrices may be stored.
fn mat_index(e: u32) -> u32 { return e; }
const MAT_STORES: bool = true;
// `fresh` where `keep_fresh` is set, else `old`, by the bits (edged rows' shared
// vectors): each lane is a half of one of the two words.
fn mat_merge(old: mat_t, fresh: mat_t, keep_fresh: vec_u) -> mat_t {
    let m = select(vec4<u32>(0u), vec4<u32>(0xffffu), keep_fresh != vec4<u32>(0u));
    let mask = vec2<u32>(m.x | (m.y << 16u), m.z | (m.w << 16u));
    return (old & ~mask) | (fresh & mask);
}
