// Plain copy: the bandwidth yardstick that `bench` reports every kernel against.
@group(0) @binding(1) var<storage, read> src: array<vec_t>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec_t>;

// One vector per invocation; the grid is 2-D so large copies stay under the dispatch limit.
@compute @workgroup_size(WG)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * WG;
    if (i < params.cols / VW) {
        dst[params.base_out / VW + i] = src[params.base_a / VW + i];
    }
}
