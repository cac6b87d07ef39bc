// bf16 matrices, edged (`Storage::Bf16`, `VecWidth::Vec4Edged`): input
// matrices are aligned pairs of packed words, four bf16 to an 8-byte load,
// for rows that are not whole vec4s. Reads only, as gathered bf16
// (`storage_bf16_gathered.wgsl`): kernels that store a bf16 matrix run on
// f32 copies, so the stores here are compiled out.
alias mat_t = u32;
alias src_t = vec2<u32>;
fn unpack_mat(w: mat_t) -> vec_t { return vec_t(bitcast<f32>(w << 16u)); }
fn pack_mat(v: vec_t) -> mat_t { return 0u; }
fn mat_vec(a: src_t, b: src_t, c: src_t, d: src_t, j: u32) -> vec_t {
    return vec4<f32>(
        bitcast<f32>(a.x << 16u), bitcast<f32>(a.x & 0xffff0000u),
        bitcast<f32>(a.y << 16u), bitcast<f32>(a.y & 0xffff0000u),
    );
}
fn mat_lane(v: vec_t, k: u32) -> mat_t { return 0u; }
fn pack_src(v: vec_t) -> src_t { return vec2<u32>(0u); }
fn src_lane(v: vec_t, k: u32) -> src_t { return vec2<u32>(0u); }
// Array index of element (or vector) e, and whether matrices may be stored.
fn mat_index(e: u32) -> u32 { return e; }
const MAT_STORES: bool = false;
