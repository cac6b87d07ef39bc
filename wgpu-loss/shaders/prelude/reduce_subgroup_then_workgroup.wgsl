// Row-segment reductions by subgroup butterflies, then one pass through
// workgroup memory across the subgroups of a row (`Reduce::SubgroupThenWorkgroup`).
struct Ids {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
}
var<private> sg_width: u32;
fn thread_of(ids: Ids) -> u32 {
    sg_width = ids.sg_size;
    return ids.sg_id * ids.sg_size + ids.sg_lane;
}
// Subgroup butterflies, then the row's subgroup totals folded in order.
fn seg_sum(tid: u32, v: f32) -> f32 {
    var x = v;
    for (var k = 1u; k < sg_width; k = k * 2u) { x = x + subgroupShuffleXor(x, k); }
    if (tid % sg_width == 0u) { wg_s[tid / sg_width] = x; }
    workgroupBarrier();
    let first = tid / TPR * (TPR / sg_width);
    var total = wg_s[first];
    for (var j = 1u; j < TPR / sg_width; j = j + 1u) { total = total + wg_s[first + j]; }
    workgroupBarrier();
    return total;
}
fn seg_max(tid: u32, v: f32) -> f32 {
    var x = v;
    for (var k = 1u; k < sg_width; k = k * 2u) { x = max(x, subgroupShuffleXor(x, k)); }
    if (tid % sg_width == 0u) { wg_m[tid / sg_width] = x; }
    workgroupBarrier();
    let first = tid / TPR * (TPR / sg_width);
    var total = wg_m[first];
    for (var j = 1u; j < TPR / sg_width; j = j + 1u) { total = max(total, wg_m[first + j]); }
    workgroupBarrier();
    return total;
}
fn seg_stat(tid: u32, acc: RowAcc) -> RowStat {
    let st = stat_of(acc);
    let m = seg_max(tid, st.m);
    return RowStat(m, seg_sum(tid, st.s * rescale(st.m, m)));
}
