// Row-segment reductions by subgroup butterflies (`Reduce::Subgroup`): a row's
// `TPR` threads sit in one subgroup, numbered by subgroup so that a row never
// straddles subgroups; no barrier at all. Needs `Features::SUBGROUP`.
struct Ids {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
}
fn thread_of(ids: Ids) -> u32 { return ids.sg_id * ids.sg_size + ids.sg_lane; }
// Butterflies over aligned groups of TPR lanes: lanes i and i^k add the same
// two values (a + b == b + a exactly), so every lane ends with the same bits.
fn seg_sum(tid: u32, v: f32) -> f32 {
    var x = v;
    for (var k = 1u; k < TPR; k = k * 2u) { x = x + subgroupShuffleXor(x, k); }
    return x;
}
fn seg_max(tid: u32, v: f32) -> f32 {
    var x = v;
    for (var k = 1u; k < TPR; k = k * 2u) { x = max(x, subgroupShuffleXor(x, k)); }
    return x;
}
fn seg_stat(tid: u32, acc: RowAcc) -> RowStat {
    let st = stat_of(acc);
    let m = seg_max(tid, st.m);
    return RowStat(m, seg_sum(tid, st.s * rescale(st.m, m)));
}
