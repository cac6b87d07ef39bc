// Shared by every op family. The host prepends a variant prelude that defines
// `VW` (vector width), `vec_t`/`vec_u` (f32 or vec4), `LANE` (lane offsets
// within a vector), `hmax`/`hsum`/`lane`, and the reduction mode: the `Ids`
// entry-point inputs, `thread_of`, and the row-segment reductions `seg_sum`
// and `seg_stat`.

// Pipeline-overridable launch shape, set per adapter and row length by the host:
// WG invocations per workgroup, TPR of them per row (WG / TPR rows per workgroup).
override WG: u32 = 256u;
override TPR: u32 = 256u;

// Options a pipeline is built for (`Spec` in kernels.rs): where SPEC_KNOWN
// has an option's bit, SPEC_ON's bit says whether it is on, and the
// compiler drops the code of the other case; elsewhere the kernel reads the
// option from `params` when it runs. lavapipe runs both sides of a branch
// on the uniform, under masks, so absent options' code cost it time.
override SPEC_KNOWN: u32 = 0u;
override SPEC_ON: u32 = 0u;
const SPEC_WEIGHTS: u32 = 1u;
const SPEC_SOFTCAP: u32 = 2u;
const SPEC_SMOOTHING: u32 = 4u;
const SPEC_Z_LOSS: u32 = 8u;
const SPEC_GAMMA: u32 = 16u;         // binary.wgsl: gamma != 0
const SPEC_BINARY_SHIFT: u32 = 8u;   // binary.wgsl: its FLAG_ bits, this far up
const SPEC_HELD: u32 = 32u;          // row kernels: known off where the host streams the rows
fn spec_or(bit: u32, when_run: bool) -> bool {
    if ((SPEC_KNOWN & bit) != 0u) { return (SPEC_ON & bit) != 0u; }
    return when_run;
}

struct Params {
    rows: u32,          // rows in this dispatch window
    cols: u32,          // scalars per row
    base_a: u32,        // scalar offset of row 0 inside the bound window of matrix A
    base_b: u32,        // ... matrix B (second matrix input)
    base_out: u32,      // ... the output matrix
    row_base: u32,      // global index of this window's row 0, for per-row arrays
    ignore_index: i32,
    flags: u32,         // family-specific bit flags
    total_rows: u32,    // rows of the whole problem (reductions)
    smoothing: f32,
    z_loss: f32,
    softcap: f32,
    grad_scale: f32,
    reduction: u32,     // 0 none, 1 mean, 2 sum
    base_c: u32,        // ... matrix C (third matrix input)
    base_d: u32,        // ... matrix D (second output)
    alpha: f32,
    gamma: f32,
    denominator: f32,   // divisor of `mean` where the host knows it
    splits: u32,        // chunks per row (row kernels; 1 = whole rows)
    inner: u32,         // matrix products: the summed dimension k
    lhs_row: u32,       // ... element stride of A(m, k) along m
    lhs_col: u32,       // ... along k
    rhs_row: u32,       // ... of B(k, n) along k
    rhs_col: u32,       // ... along n
    out_row: u32,       // ... of the output along m
    shard_start: u32,   // fused linear + cross-entropy: the shard's first class
    classes: u32,       // ... the class count of the whole vocabulary
    shards: u32,        // ... shards a merge folds
    fold_span: u32,     // blocked reductions: items each lane of a `*_partial` pass walks
}

@group(0) @binding(0) var<uniform> params: Params;

// The bit patterns sit in private variables: WGSL makes a const-expression
// that evaluates to an infinity or NaN a shader-creation error (Chrome's Tint
// enforces it; naga does not), and a bitcast of a variable is not one.
var<private> NEG_INF_BITS: u32 = 0xff800000u;
var<private> POS_INF_BITS: u32 = 0x7f800000u;
var<private> NAN_BITS: u32 = 0x7fc00000u;
fn neg_inf() -> f32 { return bitcast<f32>(NEG_INF_BITS); }
fn pos_inf() -> f32 { return bitcast<f32>(POS_INF_BITS); }
fn nan() -> f32 { return bitcast<f32>(NAN_BITS); }
// By the bits, so no float optimisation can fold it away.
fn is_nan(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
// NaN compares false, so NaN is not finite.
// 3.40282346e38 rounds to f32::MAX; the usual 3.40282347e38 lies past it
// and Tint rejects a literal that f32 cannot represent.
fn is_finite(v: f32) -> bool { return abs(v) <= 3.40282346e38; }

// Logit softcap c·tanh(v/c), for cross-entropy and the fused linear +
// cross-entropy. tanh from exp(-2|v|): finite for every finite input (a naive
// tanh overflows).
fn tanh_stable(v: vec_t) -> vec_t {
    let e = exp(vec_t(-2.0) * abs(v));
    return sign(v) * (vec_t(1.0) - e) / (vec_t(1.0) + e);
}

fn softcap_value(v: vec_t, c: f32) -> vec_t {
    return vec_t(c) * tanh_stable(v / vec_t(c));
}

// d softcap(v) / dv = 1 - tanh^2(u) = sech^2(u) = 4e / (1 + e)^2 with u = v / c and
// e = exp(-2|u|). Not 1 - t*t: that cancels once tanh saturates (|u| > ~4) and
// loses most of its digits in f32.
fn softcap_slope(v: vec_t, c: f32) -> vec_t {
    let e = exp(vec_t(-2.0) * abs(v / vec_t(c)));
    let d = vec_t(1.0) + e;
    return vec_t(4.0) * e / (d * d);
}

// softcap(v) and its slope from one exp (the gradient pass needs both);
// c > 0, so sign(v / c) = sign(v).
struct Capped { value: vec_t, slope: vec_t }
fn softcap_both(v: vec_t, c: f32) -> Capped {
    let e = exp(vec_t(-2.0) * abs(v / vec_t(c)));
    let d = vec_t(1.0) + e;
    // The value as softcap_value computes it, to the bit.
    return Capped(vec_t(c) * (sign(v) * (vec_t(1.0) - e) / d), vec_t(4.0) * e / (d * d));
}

// Index of this workgroup in a 2-D grid (x wraps at the dispatch limit).
fn row_of(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.x + wid.y * nwg.x; }

// Whether a blocked reduction's partial pass is its only block: then it
// finishes the reduction itself and the host records no fold. Its totals
// are those the fold would compute from its one record (the fold adds only
// zeros to it, which turns -0 into +0: the finishing adds 0.0 too).
fn single_block(nwg: vec3<u32>) -> bool { return nwg.x * nwg.y == 1u; }

// Rows of a matrix array (the width preludes say how it holds vectors): the
// row `row` of a window starting at element `base` begins at array index
// `row_src(base, row)`, its vector i is at `vec_at(src, i)`, and it has
// `row_vecs()` vectors. Where gathered or edged, a row's vectors are matrix
// A's aligned ones: the lanes of its first vector before its start
// (`row_phase` of them) and of its last past its end are masked.
fn row_src(base: u32, row: u32) -> u32 {
    if (GATHER) { return base + row * params.cols; }
    if (EDGED) { return (base + row * params.cols) / VW; }
    return base / VW + row * (params.cols / VW);
}

// Lanes of the row's first vector that precede it in matrix A (gathered and
// edged rows; 0 otherwise), set by `seg_of` for the row this invocation
// works on. The host binds edged kernels only where every matrix of a row
// has the same phase; gathered loads take any matrix's elements by column.
var<private> row_phase: u32 = 0u;
// The row (of the window) this invocation works on, for `edge_slot`.
var<private> phase_row: u32 = 0u;
// The row's first and last vectors where they are shared (`edge_slot`), else NOT_EDGE.
var<private> head_edge: u32 = 0xffffffffu;
var<private> tail_edge: u32 = 0xffffffffu;

fn set_row_phase(row: u32) {
    if (GATHER || EDGED) {
        row_phase = (params.base_a + row * params.cols) % VW;
        phase_row = row;
        head_edge = select(NOT_EDGE, 0u, row_phase != 0u);
        tail_edge = select(NOT_EDGE, row_vecs() - 1u, (row_phase + params.cols) % VW != 0u);
    }
}

// Edged rows store whole vectors, but a row's first and last vectors share
// lanes with its neighbours (when its phase, or its end's, is not 0): a
// store of either would race with the neighbour's workgroup. Kernels put
// those two vectors here instead (`edge_slot`: [2 row] the first, [2 row +
// 1] the last, of the window's rows), and a pass after them (`*_edges`)
// merges each shared vector from both rows' records and stores it whole,
// one invocation a vector. The host keeps edged rows at least 8 columns
// long, so a vector holds lanes of at most two rows.
@group(0) @binding(12) var<storage, read_write> edge_vecs: array<vec_t>;

const NOT_EDGE: u32 = 0xffffffffu;

// Where vector i of the current row goes in `edge_vecs`, or NOT_EDGE.
fn edge_slot(i: u32) -> u32 {
    if (!EDGED) { return NOT_EDGE; }
    return select(select(NOT_EDGE, 2u * phase_row + 1u, i == tail_edge), 2u * phase_row, i == head_edge);
}

// Streamed stores: a lane's vectors of its segment without the row's shared
// ones, from `loop_start` while below `loop_stop`, TPR apart, stored whole
// (`store_*_whole`); then the shared ones that are this lane's
// (`shared_vec`, e = 0 the first, 1 the last), through `edge_slot`. One
// store a vector in the loop: lavapipe runs both sides of a branch, so a
// choice of store inside it cost two (4096x50257: 328 against 300 ms).
fn loop_start(seg: Seg) -> u32 {
    let s = seg.first + seg.lane;
    return select(s, s + TPR, s == head_edge);
}

fn loop_stop(seg: Seg) -> u32 {
    return select(seg.end, tail_edge, tail_edge >= seg.first && tail_edge < seg.end);
}

fn shared_vec(seg: Seg, e: u32) -> u32 {
    let v = select(head_edge, tail_edge, e == 1u);
    let mine = v != NOT_EDGE && v >= seg.first && v < seg.end && (v - seg.first) % TPR == seg.lane;
    return select(NOT_EDGE, v, mine);
}

// The shared vectors of window row r (a `*_edges` pass): its first, merged
// with row r - 1's last (or, for the window's first row, with what memory
// holds there: the previous window's last row, already final), and, for
// the window's last row, its last, merged with what memory holds past it.
// `first` and `last` are their indices, `first_v` and `last_v` their new
// values, `keep_first` and `keep_last` the lanes of those to store (the
// others keep their bits, `mat_merge`); `merge` says which vectors to
// store (bit 0 the first, bit 1 the last).
struct EdgeStores { first: u32, last: u32, first_v: vec_t, last_v: vec_t, keep_first: vec_u, keep_last: vec_u, merge: u32 }

fn edge_stores(r: u32, dst: u32) -> EdgeStores {
    set_row_phase(r);
    var e: EdgeStores;
    e.first = dst;
    e.last = dst + row_vecs() - 1u;
    e.merge = 0u;
    let end = (row_phase + params.cols) % VW;
    if (row_phase != 0u) {
        e.merge = 1u;
        // Lanes from row_phase on are row r's; below it, row r - 1's.
        e.first_v = edge_vecs[2u * r];
        e.keep_first = select(vec_u(0u), vec_u(1u), LANE >= vec_u(row_phase));
        if (r > 0u) {
            e.first_v = select(edge_vecs[2u * r - 1u], e.first_v, LANE >= vec_u(row_phase));
            e.keep_first = vec_u(1u);
        }
    }
    if (r + 1u == params.rows && end != 0u) {
        e.merge = e.merge | 2u;
        e.last_v = edge_vecs[2u * r + 1u];
        e.keep_last = select(vec_u(0u), vec_u(1u), LANE < vec_u(end));
    }
    return e;
}

// One invocation per row of the window (`*_edges`).
fn edge_row(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return row_of(wid, nwg) * WG + lid.x;
}

fn row_vecs() -> u32 { return (params.cols + row_phase + VW - 1u) / VW; }

// The most vectors any row of the dispatch has (rows differ by phase): what
// decides the held path, which must be the same for every row.
fn most_row_vecs() -> u32 { return (params.cols + select(0u, VW - 1u, GATHER || EDGED) + VW - 1u) / VW; }

fn vec_at(src: u32, i: u32) -> u32 { return src + i * MSTRIDE - select(0u, row_phase, GATHER); }

// The columns of vector i's lanes. Head lanes of an edged row wrap around to
// huge values, past every row's end.
fn col_of(i: u32) -> vec_u { return vec_u(i * VW) + LANE - vec_u(row_phase); }

// The vector, and the lane of it, that hold column c.
fn vec_of_col(c: u32) -> u32 { return (c + row_phase) / VW; }
fn lane_of_col(c: u32) -> u32 { return (c + row_phase) % VW; }

// `x` with the lanes of vector i that lie outside the row set to `fill`
// (only a gathered or edged row's first and last vectors have such lanes).
fn masked(x: vec_t, i: u32, fill: f32) -> vec_t {
    if (!GATHER && !EDGED) { return x; }
    return select(vec_t(fill), x, col_of(i) < vec_u(params.cols));
}

// Whether lane k of vector i is a column of the row.
fn lane_in_row(i: u32, k: u32) -> bool { return i * VW + k - row_phase < params.cols; }

// Blocked reductions over N items, so that no pass of one workgroup walks all
// of them: workgroup g of a `*_partial` pass owns items [g S, (g + 1) S),
// S = WG fold_span, lane t walks g S + t + j WG for j = 0 .. fold_span - 1,
// and it writes one record, chunk_stats[g]; then one workgroup folds the
// fold_records(N) records in order. The host keeps that count at most 32768
// (`ops::fold_plan`). Both orders are fixed, so results are reproducible.
fn fold_records(n: u32) -> u32 {
    let span = WG * params.fold_span;
    return max(n / span + select(0u, 1u, n % span != 0u), 1u);
}

// Neumaier's compensated step: adds v to the sum (*s, *c) (the true sum is *s + *c).
// Once the sum is infinite (or NaN) the carry keeps what it had: its step
// would compute inf - inf, and turn an infinite sum (an infinite row loss,
// an overflow) into NaN.
fn neumaier(s: ptr<function, f32>, c: ptr<function, f32>, v: f32) {
    let t = *s + v;
    let carry = select((v - t) + *s, (*s - t) + v, abs(*s) >= abs(v));
    *c += select(0.0, carry, abs(t) <= 3.4028234663852886e38);
    *s = t;
}

// Per-chunk statistics of split rows: (max, sum, extra sum, extra sum), one
// record per (row, chunk), written by a `*_partial` pass and merged in chunk
// order; also the blocks' records of blocked reductions (`fold_records`).
@group(0) @binding(11) var<storage, read_write> chunk_stats: array<vec4<f32>>;

// This thread's segment: TPR threads that own chunk `chunk` of row `row` (a
// whole row unless the host splits rows), the vectors [first, end) of it.
// Segments past the window stay in the workgroup's barriers but own no
// vectors (first = end = 0) and write nothing.
struct Seg { row: u32, chunk: u32, lane: u32, tid: u32, live: bool, first: u32, end: u32 }

fn seg_of(ids: Ids) -> Seg {
    let tid = thread_of(ids);
    let index = row_of(ids.wid, ids.nwg) * (WG / TPR) + tid / TPR;
    let splits = max(params.splits, 1u);
    let row = index / splits;
    let chunk = index % splits;
    let live = row < params.rows;
    set_row_phase(min(row, params.rows - 1u));
    let n = row_vecs();
    let per = (n + splits - 1u) / splits;
    let first = select(0u, min(chunk * per, n), live);
    let end = select(0u, min(first + per, n), live);
    return Seg(row, chunk, tid % TPR, tid, live, first, end);
}

// Whether this thread writes its row's per-row results.
fn row_writer(seg: Seg) -> bool { return seg.live && seg.lane == 0u && seg.chunk == 0u; }

fn split_rows() -> bool { return params.splits > 1u; }

// Single-read rows: when every lane's share of a (whole) row is at most HOLD
// vectors (the hold prelude's: 8 f32 vectors, or 16 packed 16-bit ones),
// kernels load the row into registers once, take the max, then
// exp(x - max) and its sum from the registers, and write their output from
// what is held: one read and one exp per element instead of two (f32) or
// one read and two exps (16-bit, whose registers keep the packed values).
// The test depends on the dispatch only, so a workgroup never mixes the
// two paths.
//
// A gathered or edged row (C not a multiple of 4) that starts late in its
// first vector spans one vector more than C / 4 rounded up: 8193 for
// 32766 f32 columns, one past the 8192 registers of 1024 lanes. Such a
// row is still held: HELD_SLOTS is one more than the registers, and the
// vector of slot HOLD (`unheld_vec`: only ever lane 0's, the row's last)
// has no register but is read from memory again on each pass, after the
// loops over the registers; 32 bytes more a row, against reading the
// whole row twice. Outside those loops, not as a ninth iteration: a loop
// with a memory load and a dynamic register index in it made lavapipe
// keep the registers in memory (cross-entropy at 1048576x127, 1.6x slower).
const HELD_SLOTS: u32 = HOLD + select(0u, 1u, GATHER || EDGED);

fn holds_rows() -> bool { return holds_rows_of(HOLD); }

// The same for kernels that hold two matrices of a row, `slots` vectors
// of each a lane (softmax backward: HOLD / 2).
// A pipeline built for streamed rows (SPEC_HELD known off: the host's
// plan says so) compiles the held path out: lavapipe ran softmax backward
// 1.2x slower with it present, unused.
fn holds_rows_of(slots: u32) -> bool {
    return spec_or(SPEC_HELD, !split_rows() && (most_row_vecs() - (HELD_SLOTS - HOLD) + TPR - 1u) / TPR <= slots);
}

// A lane's k-th held vector is the row's vector `held_index(seg, k)`.
fn held_index(seg: Seg, k: u32) -> u32 { return seg.first + seg.lane + k * TPR; }

// The vector of this lane's held slot HOLD, which has no register
// (`HELD_SLOTS`), or NOT_EDGE where the lane has none (always, for whole
// vec4 rows: compiled out).
fn unheld_vec(seg: Seg) -> u32 { return unheld_vec_of(seg, HOLD); }

// The same past `slots` held vectors a lane (`holds_rows_of`).
fn unheld_vec_of(seg: Seg, slots: u32) -> u32 {
    if (HELD_SLOTS == HOLD) { return NOT_EDGE; }
    let i = held_index(seg, slots);
    return select(NOT_EDGE, i, i < seg.end);
}

// exp(v - m), with elements equal to the max counted as exactly 1 (as
// `stat_push`: an all -inf row sums to its length, a +inf row to its count of +inf).
fn exp_from_max(v: vec_t, m: f32) -> vec_t {
    return select(exp(v - vec_t(m)), vec_t(1.0), v == vec_t(m));
}

// A split row's statistics and its two extra sums, merged from its chunks in
// order. Every segment of the row computes the same bits.
fn merged_partials(row: u32) -> vec4<f32> {
    var st = RowStat(neg_inf(), 0.0);
    var extra = 0.0;
    var extra2 = 0.0;
    for (var c = 0u; c < params.splits; c = c + 1u) {
        let p = chunk_stats[row * params.splits + c];
        st = stat_merge(st, RowStat(p.x, p.y));
        extra = extra + p.z;
        extra2 = extra2 + p.w;
    }
    return vec4<f32>(st.m, st.s, extra, extra2);
}

fn write_partial(seg: Seg, st: RowStat, extra: f32) {
    write_partial2(seg, st, extra, 0.0);
}

fn write_partial2(seg: Seg, st: RowStat, extra: f32, extra2: f32) {
    if (seg.live && seg.lane == 0u) {
        chunk_stats[seg.row * params.splits + seg.chunk] = vec4<f32>(st.m, st.s, extra, extra2);
    }
}

// Online softmax statistics: running max `m` and the sum `s` of exp(x - m).
// An element equal to the current max contributes exactly 1, which keeps an
// all -inf row at m = -inf (lse = -inf) and a row holding +inf at lse = +inf,
// as PyTorch's logsumexp does; a NaN anywhere makes `s` NaN.
struct RowStat { m: f32, s: f32 }

// One thread's running statistics. The sum is blocked: `b` gathers up to
// STAT_BLOCK vectors before it is added to `s`, so a thread that walks
// thousands of vectors (one subgroup per long row) rounds like a sum of
// hundreds, even when every term is the same value.
struct RowAcc { m: f32, s: f32, b: f32, k: u32 }
const STAT_BLOCK: u32 = 64u;

fn stat_empty() -> RowAcc { return RowAcc(neg_inf(), 0.0, 0.0, 0u); }

fn rescale(m_old: f32, m_new: f32) -> f32 {
    return select(exp(m_old - m_new), 1.0, m_old == m_new);
}

// Rescales only when the max grows, which after the first few vectors of a row
// is rare: one exp per element instead of one more per vector.
fn stat_push(acc: RowAcc, v: vec_t) -> RowAcc {
    var r = acc;
    let vm = hmax(v);
    if (vm > r.m) {
        let f = exp(r.m - vm);
        r.s = r.s * f;
        r.b = r.b * f;
        r.m = vm;
    }
    let e = select(exp(v - vec_t(r.m)), vec_t(1.0), v == vec_t(r.m));
    r.b = r.b + hsum(e);
    r.k = r.k + 1u;
    if (r.k == STAT_BLOCK) {
        r.s = r.s + r.b;
        r.b = 0.0;
        r.k = 0u;
    }
    return r;
}

fn stat_of(acc: RowAcc) -> RowStat { return RowStat(acc.m, acc.s + acc.b); }

// A lane's plain sum, blocked like RowAcc's (STAT_BLOCK terms per block).
struct BlockSum { s: f32, b: f32, k: u32 }

fn bsum_empty() -> BlockSum { return BlockSum(0.0, 0.0, 0u); }

fn bsum_push(acc: BlockSum, v: f32) -> BlockSum {
    var r = acc;
    r.b = r.b + v;
    r.k = r.k + 1u;
    if (r.k == STAT_BLOCK) {
        r.s = r.s + r.b;
        r.b = 0.0;
        r.k = 0u;
    }
    return r;
}

fn bsum_total(acc: BlockSum) -> f32 { return acc.s + acc.b; }

fn stat_merge(a: RowStat, b: RowStat) -> RowStat {
    let m = max(a.m, b.m);
    return RowStat(m, a.s * rescale(a.m, m) + b.s * rescale(b.m, m));
}

var<workgroup> wg_m: array<f32, WG>;
var<workgroup> wg_s: array<f32, WG>;

// Fixed-order tree over the whole workgroup (single-workgroup and element-wise
// kernels): deterministic on a given adapter.
fn wg_reduce_sum(tid: u32, v: f32) -> f32 {
    wg_s[tid] = v;
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        workgroupBarrier();
        if (tid < stride) {
            wg_s[tid] = wg_s[tid] + wg_s[tid + stride];
        }
    }
    workgroupBarrier();
    let total = wg_s[0];
    workgroupBarrier();
    return total;
}

// f32 bits to bf16 bits (in the low half), rounded to nearest even, as
// `half::bf16::from_f32` does: NaN stays NaN with its quiet bit set, and a
// value bf16 holds exactly keeps its bits.
fn bf16_bits(b: vec4<u32>) -> vec4<u32> {
    let nan = (b & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
    let rounded = (b + vec4<u32>(0x7fffu) + ((b >> vec4<u32>(16u)) & vec4<u32>(1u))) >> vec4<u32>(16u);
    return select(rounded, (b >> vec4<u32>(16u)) | vec4<u32>(0x40u), nan);
}

// The two bf16 of a packed word, low half first, as f32 (exact: a bf16 is
// the top half of an f32).
fn bf16_pair(w: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xffff0000u));
}

// f32 bits to f16 bits (in the low half), rounded to nearest even, as
// `half::f16::from_f32` does, in integer arithmetic: WGSL leaves the
// rounding of `f16(x)` and `pack2x16float` to the implementation, and gives
// `pack2x16float` no defined result past the f16 range. Past 65520 the
// result is infinity, NaN stays NaN (quiet, its payload's top bits kept),
// and below 2^-14 the value becomes a subnormal, rounded to nearest even too.
fn f16_bits(b: vec4<u32>) -> vec4<u32> {
    let a = b & vec4<u32>(0x7fffffffu);
    let sign = (b >> vec4<u32>(16u)) & vec4<u32>(0x8000u);
    // Normal f16: rebias the exponent (127 to 15) and round away 13 bits.
    let normal = (a - vec4<u32>(0x38000000u) + vec4<u32>(0xfffu) + ((a >> vec4<u32>(13u)) & vec4<u32>(1u)))
        >> vec4<u32>(13u);
    // Subnormal f16 (below 2^-14): the value in units of 2^-24 (exact: a
    // power-of-two scale), and `round` rounds half to even.
    let subnormal = vec4<u32>(round(min(bitcast<vec4<f32>>(a) * 16777216.0, vec4<f32>(2048.0))));
    var h = select(subnormal, normal, a >= vec4<u32>(0x38800000u));
    h = select(h, vec4<u32>(0x7c00u), a >= vec4<u32>(0x477ff000u));
    // NaN: quiet, with the top of its payload, as `half` keeps it.
    h = select(h, vec4<u32>(0x7e00u) | ((a >> vec4<u32>(13u)) & vec4<u32>(0x3ffu)), a > vec4<u32>(0x7f800000u));
    return sign | h;
}

// The two f16 of a packed word, low half first, as f32 (exact, subnormals
// included; no `enable f16` needed). Integer arithmetic and one exact
// subtraction, not `unpack2x16float`, which lavapipe runs an element at a time.
fn f16_pair(w: u32) -> vec2<f32> {
    let h = vec2<u32>(w & 0xffffu, w >> 16u);
    let shifted = (h & vec2<u32>(0x7fffu)) << vec2<u32>(13u);
    let exponent = shifted & vec2<u32>(0x0f800000u);
    // Rebias the exponent (15 to 127); infinity and NaN go to 255.
    var bits = shifted + vec2<u32>(0x38000000u);
    bits = select(bits, bits + vec2<u32>(0x38000000u), exponent == vec2<u32>(0x0f800000u));
    // Zero and subnormals: 2^-14 (1 + m / 1024) - 2^-14 = m 2^-24, exactly.
    let small = bitcast<vec2<f32>>(bits + vec2<u32>(0x00800000u)) - vec2<f32>(6.103515625e-05);
    let magnitude = select(bitcast<vec2<u32>>(bitcast<vec2<f32>>(bits)), bitcast<vec2<u32>>(small), exponent == vec2<u32>(0u));
    return bitcast<vec2<f32>>(magnitude | ((h & vec2<u32>(0x8000u)) << vec2<u32>(16u)));
}
