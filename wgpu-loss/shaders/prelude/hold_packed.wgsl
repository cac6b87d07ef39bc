// Held rows (`holds_rows` in common.wgsl), `Hold::Packed`: 16-bit rows held
// packed as they are stored, two words a vector (`held_t`), so 16 vectors
// take the registers of `hold_f32.wgsl`'s 8 and a row of 65536 columns fits
// 1024 lanes (issue 17). exp(x - m) is recomputed from them, never kept
// (`HOLD_KEEPS_F32`). Packing a value read from a 16-bit matrix is exact.
const HOLD: u32 = 16u;
alias held_t = vec2<u32>;
const HOLD_KEEPS_F32: bool = false;
fn hold(v: vec_t) -> held_t {
    let h = half_bits(bitcast<vec4<u32>>(v));
    return vec2<u32>(h.x | (h.y << 16u), h.z | (h.w << 16u));
}
fn unhold(h: held_t) -> vec_t { return vec4<f32>(half_pair(h.x), half_pair(h.y)); }
