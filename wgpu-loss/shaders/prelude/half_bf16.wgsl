// bf16 elements (`Storage::Bf16`) for the 16-bit storage preludes
// (`storage_half_*.wgsl`): the conversions live in common.wgsl.
fn half_pair(w: u32) -> vec2<f32> { return bf16_pair(w); }
fn half_bits(b: vec4<u32>) -> vec4<u32> { return bf16_bits(b); }
