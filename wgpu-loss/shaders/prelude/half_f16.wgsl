// f16 elements (`Storage::F16`) for the 16-bit storage preludes
// (`storage_half_*.wgsl`): packed `u32` words, so no `enable f16` and no
// `SHADER_F16`; the conversions live in common.wgsl.
fn half_pair(w: u32) -> vec2<f32> { return f16_pair(w); }
fn half_bits(b: vec4<u32>) -> vec4<u32> { return f16_bits(b); }
