// Row-segment reductions through workgroup memory (`Reduce::Workgroup`): the
// thread index of a row kernel, and `seg_sum` / `seg_max` / `seg_stat` over the
// `TPR` consecutive threads of one row. Works on every adapter.
struct Ids {
    @builtin(local_invocation_index) index: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
}
fn thread_of(ids: Ids) -> u32 { return ids.index; }
fn seg_sum(tid: u32, v: f32) -> f32 {
    let lead = tid - tid % TPR;
    wg_s[tid] = v;
    for (var stride = TPR / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (tid - lead < stride) { wg_s[tid] = wg_s[tid] + wg_s[tid + stride]; }
    }
    workgroupBarrier();
    let total = wg_s[lead];
    workgroupBarrier();
    return total;
}
fn seg_max(tid: u32, v: f32) -> f32 {
    let lead = tid - tid % TPR;
    wg_m[tid] = v;
    for (var stride = TPR / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (tid - lead < stride) { wg_m[tid] = max(wg_m[tid], wg_m[tid + stride]); }
    }
    workgroupBarrier();
    let total = wg_m[lead];
    workgroupBarrier();
    return total;
}
// One merged tree for (max, sum): half the barriers of a max tree then a sum tree.
fn seg_stat(tid: u32, acc: RowAcc) -> RowStat {
    let st = stat_of(acc);
    let lead = tid - tid % TPR;
    wg_m[tid] = st.m;
    wg_s[tid] = st.s;
    for (var stride = TPR / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (tid - lead < stride) {
            let r = stat_merge(RowStat(wg_m[tid], wg_s[tid]), RowStat(wg_m[tid + stride], wg_s[tid + stride]));
            wg_m[tid] = r.m;
            wg_s[tid] = r.s;
        }
    }
    workgroupBarrier();
    let total = RowStat(wg_m[lead], wg_s[lead]);
    workgroupBarrier();
    return total;
}
