// Element-wise losses over [N, C]: binary cross-entropy on probabilities, binary
// cross-entropy with logits, and torchvision's sigmoid focal loss. One vector of
// elements per invocation; each workgroup writes the fixed-order sum of its
// losses to `partials`, and `binary_reduce_partial` then `binary_reduce` sum
// the partials in a fixed order (blocks, then a fold: `fold_records`).
//   bce_prob:      l = -w (y max(log p, -100) + (1-y) max(log1p(-p), -100)),  g = w (p - y) / max(p (1-p), 1e-12)
//   bce_logits:    l = w ((1-y) x + (1 + (pw-1) y) softplus(-x)),             g = w ((1 + (pw-1) y) sigmoid(x) - pw y)
//   sigmoid_focal: l = a_t ce (1-p_t)^gamma, p = sigmoid(x), ce = bce_logits(x, y), p_t = p y + (1-p)(1-y),
//                  a_t = alpha y + (1-alpha)(1-y) when alpha >= 0 (else 1)
//                  g = a_t [(p - y)(1-p_t)^gamma - gamma (1-p_t)^(gamma-1) (2y-1) p (1-p) ce]

@group(0) @binding(1) var<storage, read> inputs: array<vec_t>;        // probabilities or logits (base_a)
@group(0) @binding(2) var<storage, read> targets: array<vec_t>;       // base_b
@group(0) @binding(3) var<storage, read> weight: array<vec_t>;        // per column [C], or per element (base_c)
@group(0) @binding(4) var<storage, read> pos_weight: array<vec_t>;    // per column [C]
@group(0) @binding(5) var<storage, read_write> loss_out: array<vec_t>; // per element, reduction none (base_out)
@group(0) @binding(6) var<storage, read_write> grad: array<vec_t>;     // base_d
@group(0) @binding(7) var<storage, read_write> partials: array<f32>;   // one per workgroup, global index row_base + group
@group(0) @binding(8) var<storage, read_write> result: array<f32>;

const FLAG_WEIGHT_COLS: u32 = 1u;
const FLAG_WEIGHT_FULL: u32 = 2u;
const FLAG_POS_WEIGHT: u32 = 4u;
const FLAG_WRITE_LOSS: u32 = 8u;
const FLAG_WRITE_GRAD: u32 = 16u;
const FLAG_ALPHA: u32 = 32u;
const REDUCTION_MEAN: u32 = 1u;

const OP_BCE_PROB: u32 = 0u;
const OP_BCE_LOGITS: u32 = 1u;
const OP_SIGMOID_FOCAL: u32 = 2u;

fn has(flag: u32) -> bool { return spec_or(flag << SPEC_BINARY_SHIFT, (params.flags & flag) != 0u); }

// Vectors each invocation walks (`ELEMENT_VECTORS` in kernels.rs): one
// workgroup sum, whose barriers cost lavapipe a switch of every
// invocation, serves WG * EV vectors.
const EV: u32 = 8u;

// Vector i of the window starts at column (i * VW) % C; C % VW == 0 keeps a vector inside one row.
fn column_vec(i: u32) -> u32 { return ((i * VW) % params.cols) / VW; }

fn weight_at(i: u32) -> vec_t {
    if (has(FLAG_WEIGHT_FULL)) { return weight[params.base_c / VW + i]; }
    if (has(FLAG_WEIGHT_COLS)) { return weight[column_vec(i)]; }
    return vec_t(1.0);
}

fn pos_weight_at(i: u32) -> vec_t {
    if (has(FLAG_POS_WEIGHT)) { return pos_weight[column_vec(i)]; }
    return vec_t(1.0);
}

// log(1 + u) for u in [-1/4, 1] (exp(-|x|), or -p for BCE): WGSL has no log1p, and
// Vulkan lets log() be off by 2^-21 absolute near 1, which is the whole value
// for small u (so Goldberg's log(v) u / (v - 1) fails on GPUs). Instead
// log(1 + u) = 2 atanh(s) with s = u / (2 + u), |s| <= 1/3, as a series to s^17:
// relative error below 1e-10 plus rounding, using no log at all.
fn log1p_unit(u: vec_t) -> vec_t {
    let s = u / (vec_t(2.0) + u);
    let s2 = s * s;
    var p = vec_t(1.0 / 17.0);
    p = p * s2 + vec_t(1.0 / 15.0);
    p = p * s2 + vec_t(1.0 / 13.0);
    p = p * s2 + vec_t(1.0 / 11.0);
    p = p * s2 + vec_t(1.0 / 9.0);
    p = p * s2 + vec_t(1.0 / 7.0);
    p = p * s2 + vec_t(1.0 / 5.0);
    p = p * s2 + vec_t(1.0 / 3.0);
    return vec_t(2.0) * s * (vec_t(1.0) + s2 * p);
}

// sigmoid(x) and sigmoid(-x) = 1 - sigmoid(x), each from exp(-|x|): 1 - p computed
// as a difference would lose its digits once p is near 1 (confident predictions).
struct Sig { p: vec_t, pc: vec_t }

fn sigmoid_pair(x: vec_t) -> Sig {
    let e = exp(-abs(x));
    let big = vec_t(1.0) / (vec_t(1.0) + e);
    let small = e / (vec_t(1.0) + e);
    let pos = x >= vec_t(0.0);
    return Sig(select(small, big, pos), select(big, small, pos));
}

// (1 - y) x + c softplus(-x) written as (1 - y) softplus(x) + c' softplus(-x): two
// non-negative terms, no cancellation (softplus(x) = x + softplus(-x)). Infinite x
// keeps PyTorch's literal formula, whose 0 * inf is NaN.
fn logit_loss(x: vec_t, y: vec_t, pw: vec_t) -> vec_t {
    let l1 = log1p_unit(exp(-abs(x)));
    let sp_pos = max(x, vec_t(0.0)) + l1;
    let sp_neg = max(-x, vec_t(0.0)) + l1;
    let stable = (vec_t(1.0) - y) * sp_pos + pw * y * sp_neg;
    let coef = vec_t(1.0) + (pw - vec_t(1.0)) * y;
    let literal = (vec_t(1.0) - y) * x + coef * sp_neg;
    return select(stable, literal, abs(x) == vec_t(pos_inf()));
}

struct Elem { loss: vec_t, grad: vec_t }

// log(1 - p) for p in [0, 1], as PyTorch's log1p(-p): below p = 1/4 the
// atanh series of log(1 + u) at u = -p (|s| <= 1/7), because 1 - p rounds
// to 1 for p < 2^-24 and takes the whole term with it; above, 1 - p is
// exact enough and log() is accurate away from 1.
fn log1m(p: vec_t) -> vec_t {
    return select(log(vec_t(1.0) - p), log1p_unit(-p), p < vec_t(0.25));
}

fn bce_prob(p: vec_t, y: vec_t, w: vec_t) -> Elem {
    let lp = max(log(p), vec_t(-100.0));
    let l1p = max(log1m(p), vec_t(-100.0));
    let loss = -w * (y * lp + (vec_t(1.0) - y) * l1p);
    let g = w * (p - y) / max(p * (vec_t(1.0) - p), vec_t(1e-12));
    return Elem(loss, g);
}

fn bce_logits(x: vec_t, y: vec_t, w: vec_t, pw: vec_t) -> Elem {
    let sg = sigmoid_pair(x);
    let loss = w * logit_loss(x, y, pw);
    // coef p - pw y with coef = 1 + (pw - 1) y, rearranged to avoid 1 - p.
    let g = w * ((vec_t(1.0) - y) * sg.p - pw * y * sg.pc);
    return Elem(loss, g);
}

fn sigmoid_focal(x: vec_t, y: vec_t) -> Elem {
    let sg = sigmoid_pair(x);
    let p = sg.p;
    let ce = logit_loss(x, y, vec_t(1.0));
    var loss = ce;
    var g = (vec_t(1.0) - y) * p - y * sg.pc;
    let gamma = params.gamma;
    if (spec_or(SPEC_GAMMA, gamma != 0.0)) {
        // q = 1 - p_t = y (1 - p) + (1 - y) p, without forming 1 - p_t.
        let q = y * sg.pc + (vec_t(1.0) - y) * p;
        let zero_q = q == vec_t(0.0);
        let qg = select(pow(q, vec_t(gamma)), vec_t(0.0), zero_q);
        let s = p * sg.pc;
        // Where sigmoid saturates (s == 0) or q == 0 the modulating factor's slope term vanishes.
        let slope = select(
            vec_t(gamma) * pow(q, vec_t(gamma - 1.0)) * (vec_t(2.0) * y - vec_t(1.0)) * s * ce,
            vec_t(0.0),
            zero_q | (s == vec_t(0.0)),
        );
        loss = ce * qg;
        g = g * qg - slope;
    }
    if (has(FLAG_ALPHA)) {
        let a = vec_t(params.alpha) * y + vec_t(1.0 - params.alpha) * (vec_t(1.0) - y);
        loss = loss * a;
        g = g * a;
    }
    return Elem(loss, g);
}

fn run_elements(op: u32, lid: vec3<u32>, wid: vec3<u32>, nwg: vec3<u32>) {
    let group = row_of(wid, nwg);
    let n = params.rows * (params.cols / VW);
    let groups = (n + WG * EV - 1u) / (WG * EV);
    var acc = 0.0;
    // No `return` before the barriers of the sum: lavapipe runs the code
    // past a return under masks anyway.
    if (group < groups) {
        for (var k = 0u; k < EV; k++) {
            let i = (group * EV + k) * WG + lid.x;
            if (i < n) {
                let x = inputs[params.base_a / VW + i];
                let y = targets[params.base_b / VW + i];
                var e: Elem;
                switch op {
                    case 0u: { e = bce_prob(x, y, weight_at(i)); }
                    case 1u: { e = bce_logits(x, y, weight_at(i), pos_weight_at(i)); }
                    default: { e = sigmoid_focal(x, y); }
                }
                if (has(FLAG_WRITE_LOSS)) {
                    loss_out[params.base_out / VW + i] = e.loss;
                }
                if (has(FLAG_WRITE_GRAD)) {
                    grad[params.base_d / VW + i] = e.grad * vec_t(params.grad_scale / params.denominator);
                }
                acc += hsum(e.loss);
            }
        }
    }
    let total = wg_reduce_sum(lid.x, acc);
    if (lid.x == 0u && group < groups) {
        partials[params.row_base + group] = total;
    }
}

@compute @workgroup_size(WG)
fn bce_prob_elements(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    run_elements(OP_BCE_PROB, lid, wid, nwg);
}

@compute @workgroup_size(WG)
fn bce_logits_elements(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    run_elements(OP_BCE_LOGITS, lid, wid, nwg);
}

@compute @workgroup_size(WG)
fn sigmoid_focal_elements(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    run_elements(OP_SIGMOID_FOCAL, lid, wid, nwg);
}

// Compensated sums of one block of the element kernels' `total_rows`
// partials (see `fold_records`).
@compute @workgroup_size(WG)
fn binary_reduce_partial(
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let tid = lid.x;
    let g = row_of(wid, nwg);
    let first = g * WG * params.fold_span + tid;
    var s = 0.0;
    var c = 0.0;
    for (var j = 0u; j < params.fold_span; j++) {
        let i = first + j * WG;
        if (i >= params.total_rows) { break; }
        neumaier(&s, &c, partials[i]);
    }
    let total = wg_reduce_sum(tid, s + c);
    if (tid == 0u && single_block(nwg)) {
        binary_reduce_finish(total + 0.0);
    } else if (tid == 0u) {
        chunk_stats[g] = vec4<f32>(total, 0.0, 0.0, 0.0);
    }
}

// Folds the blocks' sums into result = [loss, 0], mean or sum.
@compute @workgroup_size(WG)
fn binary_reduce(@builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.x;
    var s = 0.0;
    var c = 0.0;
    let n = fold_records(params.total_rows);
    for (var g = tid; g < n; g += WG) {
        neumaier(&s, &c, chunk_stats[g].x);
    }
    let total = wg_reduce_sum(tid, s + c);
    if (tid == 0u) {
        binary_reduce_finish(total);
    }
}

// result = [loss, 0] from the total of every block.
fn binary_reduce_finish(total: f32) {
    result[0] = select(total, total / params.denominator, params.reduction == REDUCTION_MEAN);
    result[1] = 0.0;
}
