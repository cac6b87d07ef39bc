// Plain copy: the bandwidth yardstick that `bench` reports every kernel against;
// and the 16-bit staging conversions.
@group(0) @binding(1) var<storage, read> src: array<vec_t>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec_t>;
@group(0) @binding(3) var<storage, read_write> packed: array<u32>;   // 16-bit pairs, low half first
@group(0) @binding(4) var<storage, read_write> wide: array<f32>;

// One vector per invocation; the grid is 2-D so large copies stay under the dispatch limit.
@compute @workgroup_size(WG)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i < params.cols / VW) {
        dst[params.base_out / VW + i] = src[params.base_a / VW + i];
    }
}

// 16-bit matrices (f16 with FLAG_F16, else bf16) whose rows are not whole
// vec4s and are not edged (under 8 columns, say) run the f32 kernels on an
// f32 copy: `half_widen` before, `half_narrow` after; `half_narrow` also
// narrows the matrix product's f32 results into 16-bit tensors. Elements
// [base_out, base_out + cols) of `packed` are elements [base_a, base_a +
// cols) of `wide`. One invocation owns one whole word, so the two halves of
// a word are never written by two invocations, and a half outside the range
// keeps its bits.
const FLAG_F16: u32 = 1u;

fn half_word(wid: vec3<u32>, nwg: vec3<u32>, tid: u32) -> u32 {
    return params.base_out / 2u + row_of(wid, nwg) * WG + tid;
}

fn half_in_range(e: u32) -> bool {
    return e >= params.base_out && e - params.base_out < params.cols;
}

fn half_values(word: u32) -> vec2<f32> {
    if ((params.flags & FLAG_F16) != 0u) { return f16_pair(word); }
    return bf16_pair(word);
}

// The 16-bit pattern of x, in the low half.
fn half_pattern(x: f32) -> u32 {
    let b = vec4<u32>(bitcast<u32>(x));
    if ((params.flags & FLAG_F16) != 0u) { return f16_bits(b).x; }
    return bf16_bits(b).x;
}

@compute @workgroup_size(WG)
fn half_widen(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = half_word(wid, nwg, tid);
    if (w * 2u >= params.base_out + params.cols) { return; }
    let pair = half_values(packed[w]);
    let e0 = w * 2u;
    if (half_in_range(e0)) { wide[params.base_a + e0 - params.base_out] = pair.x; }
    if (half_in_range(e0 + 1u)) { wide[params.base_a + e0 + 1u - params.base_out] = pair.y; }
}

@compute @workgroup_size(WG)
fn half_narrow(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = half_word(wid, nwg, tid);
    if (w * 2u >= params.base_out + params.cols) { return; }
    var word = packed[w];
    let e0 = w * 2u;
    if (half_in_range(e0)) {
        word = (word & 0xffff0000u) | half_pattern(wide[params.base_a + e0 - params.base_out]);
    }
    if (half_in_range(e0 + 1u)) {
        word = (word & 0xffffu) | (half_pattern(wide[params.base_a + e0 + 1u - params.base_out]) << 16u);
    }
    packed[w] = word;
}
