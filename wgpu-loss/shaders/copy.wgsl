// Plain copy: the bandwidth yardstick that `bench` reports every kernel against;
// and the bf16 staging conversions.
@group(0) @binding(1) var<storage, read> src: array<vec_t>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec_t>;
@group(0) @binding(3) var<storage, read_write> packed: array<u32>;   // bf16 pairs, low half first
@group(0) @binding(4) var<storage, read_write> wide: array<f32>;

// One vector per invocation; the grid is 2-D so large copies stay under the dispatch limit.
@compute @workgroup_size(WG)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i < params.cols / VW) {
        dst[params.base_out / VW + i] = src[params.base_a / VW + i];
    }
}

// bf16 matrices whose rows are not whole vec4s (odd C, say) run the f32
// kernels on an f32 copy: `bf16_widen` before, `bf16_narrow` after. Elements
// [base_a, base_a + cols) of `packed` are elements [0, cols) of `wide`. One
// invocation owns one whole word, so the two halves of a word are never
// written by two invocations, and a half outside the range keeps its bits.
fn bf16_word(wid: vec3<u32>, nwg: vec3<u32>, tid: u32) -> u32 {
    return params.base_a / 2u + row_of(wid, nwg) * WG + tid;
}

fn bf16_in_range(e: u32) -> bool {
    return e >= params.base_a && e - params.base_a < params.cols;
}

@compute @workgroup_size(WG)
fn bf16_widen(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = bf16_word(wid, nwg, tid);
    if (w * 2u >= params.base_a + params.cols) { return; }
    let word = packed[w];
    if (bf16_in_range(w * 2u)) { wide[w * 2u - params.base_a] = bitcast<f32>(word << 16u); }
    if (bf16_in_range(w * 2u + 1u)) { wide[w * 2u + 1u - params.base_a] = bitcast<f32>(word & 0xffff0000u); }
}

@compute @workgroup_size(WG)
fn bf16_narrow(
    @builtin(local_invocation_index) tid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let w = bf16_word(wid, nwg, tid);
    if (w * 2u >= params.base_a + params.cols) { return; }
    var word = packed[w];
    let e0 = w * 2u;
    if (bf16_in_range(e0)) {
        word = (word & 0xffff0000u) | bf16_bits(vec4<u32>(bitcast<u32>(wide[e0 - params.base_a]))).x;
    }
    if (bf16_in_range(e0 + 1u)) {
        word = (word & 0xffffu) | (bf16_bits(vec4<u32>(bitcast<u32>(wide[e0 + 1u - params.base_a]))).x << 16u);
    }
    packed[w] = word;
}
