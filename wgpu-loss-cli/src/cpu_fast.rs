//! The fast CPU path: f32, rows in parallel on every core (rayon), and inner
//! loops written so the compiler vectorises them (fixed-width lane arrays,
//! no branches, an `exp` from a polynomial instead of libm's call). It is what
//! `wgpu-loss bench` races against the GPU, and it is held to the same
//! tolerance against the f64 reference as the GPU kernels.
//!
//! Each row: one pass for the max, one that writes `e_j = exp(x_j - m)` (into
//! the output, or only sums it) while summing in f64 blocks, one that scales
//! in place. The row is read from memory once; the later passes find it in
//! cache for any row up to a few hundred thousand columns. Results do not
//! depend on the number of threads: every row is computed by one thread in a
//! fixed order, and the final sums run over rows in order.
//!
//! ```
//! # fn main() -> Result<(), wgpu_loss::Error> {
//! let x = [1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5];
//! let y = wgpu_loss_cli::cpu_fast::softmax(&x, 2, 3)?;
//! let reference = wgpu_loss::reference::softmax(&x, 2, 3)?;
//! assert!(wgpu_loss::F32_TOLERANCE.first_mismatch(&y, &reference).is_none());
//! # Ok(()) }
//! ```

use rayon::prelude::*;

use wgpu_loss::loss::binary::{BinaryCall, BinaryOp};
use wgpu_loss::loss::{check_matrix, checked_targets, ClassIndex, Reduction, IGNORED_ROW};
use wgpu_loss::{CrossEntropyOptions, CrossEntropyOutput, FocalOptions, Result};

/// Lanes of the inner loops: 8 f32 fill one AVX register, two SSE ones.
const LANES: usize = 8;
/// Elements summed in f32 lanes before the partial sum moves to f64.
const BLOCK: usize = 1024;
/// Elements handed to one rayon task at least: small rows are batched, but a
/// few long rows still spread over every core.
const MIN_ELEMS_PER_TASK: usize = 1 << 14;

fn min_rows(cols: usize) -> usize {
    (MIN_ELEMS_PER_TASK / cols.max(1)).max(1)
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Round-to-nearest by adding 1.5 · 2^23 (no `round` instruction needed).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// `exp(x)` for `x <= 0` (the only arguments a max-shifted softmax makes),
/// in branch-free arithmetic the compiler vectorises: Cephes' degree-6
/// polynomial on `[-ln2/2, ln2/2]` times `2^k` built from its bits. About 2
/// ulp; 0 below -87.3 (where the true value is denormal), NaN for NaN.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    let xc = x.max(-87.3);
    // kf = k + 1.5 · 2^23 with k = round(x / ln 2): its low mantissa bits hold
    // k, so 2^k comes from integer arithmetic on the bits (no float-to-int
    // conversion, which would not vectorise as well).
    let kf = xc * LOG2E + ROUND_MAGIC;
    let k = kf - ROUND_MAGIC;
    let r = xc - k * LN2_HI - k * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let p = p * r * r + r + 1.0;
    let ki = kf.to_bits().wrapping_sub(ROUND_MAGIC.to_bits());
    let two_k = f32::from_bits(ki.wrapping_add(127) << 23);
    let v = p * two_k;
    // NaN stays NaN (max(NaN, c) is c, so look at x itself); far below 0 is 0.
    let v = if x < -87.3 { 0.0 } else { v };
    if x.is_nan() {
        x
    } else {
        v
    }
}

#[inline(always)]
fn row_max_portable(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for k in 0..LANES {
            lanes[k] = if c[k] > lanes[k] { c[k] } else { lanes[k] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in chunks.remainder().iter().chain(&lanes) {
        m = if v > m { v } else { m };
    }
    m
}

/// Whether this CPU runs the AVX2 + FMA copies of the hot loops (checked once).
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The same loop compiled for AVX2 (8 lanes per instruction instead of SSE2's
/// 4). Same operations in the same order, so the same bits as the portable
/// copy: Rust never fuses a multiply and an add on its own.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_sum_avx2(x: &[f32], m: f32, out: Option<&mut [f32]>) -> f64 {
    exp_sum_portable(x, m, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_max_avx2(x: &[f32]) -> f32 {
    row_max_portable(x)
}

/// `Σ exp(x_j - m)` (f32 lanes within a block, f64 across blocks), writing
/// each term to `out` when given.
fn exp_sum(x: &[f32], m: f32, out: Option<&mut [f32]>) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time just above).
        return unsafe { exp_sum_avx2(x, m, out) };
    }
    exp_sum_portable(x, m, out)
}

/// Maximum of a row (NaN entries are skipped here; they turn the sum NaN).
fn row_max(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA (checked at run time just above).
        return unsafe { row_max_avx2(x) };
    }
    row_max_portable(x)
}

#[inline(always)]
fn exp_sum_portable(x: &[f32], m: f32, mut out: Option<&mut [f32]>) -> f64 {
    let mut total = 0.0f64;
    for (b, block) in x.chunks(BLOCK).enumerate() {
        let mut lanes = [0.0f32; LANES];
        let start = b * BLOCK;
        match out.as_deref_mut() {
            Some(out) => {
                let dst = &mut out[start..start + block.len()];
                let mut src = block.chunks_exact(LANES);
                let mut d = dst.chunks_exact_mut(LANES);
                for (s, o) in (&mut src).zip(&mut d) {
                    for k in 0..LANES {
                        let e = exp_nonpositive(s[k] - m);
                        o[k] = e;
                        lanes[k] += e;
                    }
                }
                for (s, o) in src.remainder().iter().zip(d.into_remainder()) {
                    let e = exp_nonpositive(s - m);
                    *o = e;
                    lanes[0] += e;
                }
            }
            None => {
                let mut src = block.chunks_exact(LANES);
                for s in &mut src {
                    for k in 0..LANES {
                        lanes[k] += exp_nonpositive(s[k] - m);
                    }
                }
                for s in src.remainder() {
                    lanes[0] += exp_nonpositive(s - m);
                }
            }
        }
        total += lanes.iter().map(|&v| f64::from(v)).sum::<f64>();
    }
    total
}

/// `log Σ exp` of a row from its max and shifted sum, with the reference's
/// rules: NaN if any NaN, the max itself if it is infinite. (With a finite
/// max, a NaN entry has already made the sum NaN; only an infinite max needs
/// the row looked at again.)
fn lse_of(row: &[f32], m: f32, s: f64) -> f32 {
    if m.is_infinite() {
        if row.iter().any(|v| v.is_nan()) {
            f32::NAN
        } else {
            m
        }
    } else {
        (f64::from(m) + s.ln()) as f32
    }
}

fn for_rows(out: &mut [f32], x: &[f32], cols: usize, f: impl Fn(&[f32], &mut [f32]) + Sync) {
    out.par_chunks_mut(cols)
        .zip(x.par_chunks(cols))
        .with_min_len(min_rows(cols))
        .for_each(|(o, r)| f(r, o));
}

/// Row-wise softmax of `[rows, cols]` `x`.
pub fn softmax(x: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; x.len()];
    softmax_into(x, rows, cols, &mut out)?;
    Ok(out)
}

/// [`softmax`] into a caller's buffer of `rows · cols` values (no allocation,
/// no page faults on a buffer that is reused).
pub fn softmax_into(x: &[f32], rows: usize, cols: usize, out: &mut [f32]) -> Result<()> {
    check_matrix("x", x.len(), rows, cols)?;
    check_matrix("out", out.len(), rows, cols)?;
    for_rows(out, x, cols, |r, o| {
        let m = row_max(r);
        let inv = (1.0 / exp_sum(r, m, Some(o))) as f32;
        o.iter_mut().for_each(|v| *v *= inv);
    });
    Ok(())
}

/// Row-wise log-softmax of `[rows, cols]` `x`.
pub fn log_softmax(x: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; x.len()];
    log_softmax_into(x, rows, cols, &mut out)?;
    Ok(out)
}

/// [`log_softmax`] into a caller's buffer of `rows · cols` values.
pub fn log_softmax_into(x: &[f32], rows: usize, cols: usize, out: &mut [f32]) -> Result<()> {
    check_matrix("x", x.len(), rows, cols)?;
    check_matrix("out", out.len(), rows, cols)?;
    for_rows(out, x, cols, |r, o| {
        let m = row_max(r);
        // (x - m) - ls, never x - (m + ls): with large logits the rounding of
        // m + ls would be as large as the result (as in the shader).
        let ls = exp_sum(r, m, None).ln() as f32;
        o.iter_mut().zip(r).for_each(|(v, &xv)| *v = (xv - m) - ls);
    });
    Ok(())
}

/// Row-wise logsumexp of `[rows, cols]` `x` (`rows` values).
pub fn logsumexp(x: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
    check_matrix("x", x.len(), rows, cols)?;
    Ok(x.par_chunks(cols)
        .with_min_len(min_rows(cols))
        .map(|r| {
            let m = row_max(r);
            lse_of(r, m, exp_sum(r, m, None))
        })
        .collect())
}

/// `c · tanh(v / c)` and its slope `sech²(v / c)`, from one `exp` of a
/// non-positive argument.
#[inline(always)]
fn softcap_and_slope(v: f32, c: f32) -> (f32, f32) {
    let u = v / c;
    let e = exp_nonpositive(-2.0 * u.abs());
    let t = (1.0 - e) / (1.0 + e);
    let d = 1.0 + e;
    (c * t.copysign(u), 4.0 * e / (d * d))
}

/// Per-row results of cross-entropy before the reduction.
struct RowResult {
    ce: f64,
    z: f64,
    lse: f32,
}

/// Cross-entropy with class-index targets and every option of
/// [`CrossEntropyOptions`], loss and (when `with_grad`) gradient, in f32 with
/// f64 row sums; same shapes as [`wgpu_loss::GpuContext::cross_entropy`].
pub fn cross_entropy<T: ClassIndex>(
    logits: &[f32],
    targets: &[T],
    classes: usize,
    options: &CrossEntropyOptions<'_>,
    with_grad: bool,
) -> Result<CrossEntropyOutput> {
    let mut grad = if with_grad {
        vec![0.0f32; logits.len()]
    } else {
        Vec::new()
    };
    let out = cross_entropy_into(
        logits,
        targets,
        classes,
        options,
        with_grad.then_some(&mut grad[..]),
    )?;
    Ok(CrossEntropyOutput {
        grad: with_grad.then_some(grad),
        ..out
    })
}

/// [`cross_entropy`] writing the gradient, when asked for, into a caller's
/// buffer of `N · C` values; the returned `grad` is `None`.
pub fn cross_entropy_into<T: ClassIndex>(
    logits: &[f32],
    targets: &[T],
    classes: usize,
    options: &CrossEntropyOptions<'_>,
    grad: Option<&mut [f32]>,
) -> Result<CrossEntropyOutput> {
    let rows = targets.len();
    check_matrix("logits", logits.len(), rows, classes)?;
    if let Some(g) = &grad {
        check_matrix("grad", g.len(), rows, classes)?;
    }
    options.validate(classes)?;
    let targets = checked_targets(targets, classes, options.ignore_index)?;
    let weight = options.weight;
    let w_of = |j: usize| weight.map_or(1.0f32, |w| w[j]);
    let w_total: f64 = weight.map_or(classes as f64, |w| w.iter().map(|&v| f64::from(v)).sum());
    let eps = options.label_smoothing;
    let z = options.z_loss;
    let cap = options.softcap;
    let kept_count = targets.iter().filter(|&&t| t != IGNORED_ROW).count() as f64;
    let denom: f64 = targets
        .iter()
        .filter(|&&t| t != IGNORED_ROW)
        .map(|&t| f64::from(w_of(t as usize)))
        .sum();
    let scale = f64::from(options.grad_scale);
    let (s_ce, s_z) = match options.reduction {
        Reduction::Mean => (scale / denom, scale / kept_count),
        _ => (scale, scale),
    };
    let c = classes as f64;
    let row = |i: usize, x: &[f32], g: Option<&mut [f32]>| -> RowResult {
        // The logits the loss sees: softcapped into the gradient buffer (or a
        // scratch row) first, so the passes below read one slice.
        let mut scratch = Vec::new();
        let (xs, mut g): (&[f32], Option<&mut [f32]>) = match (cap, g) {
            (None, g) => (x, g),
            (Some(cv), Some(g)) => {
                g.iter_mut()
                    .zip(x)
                    .for_each(|(o, &v)| *o = softcap_and_slope(v, cv).0);
                scratch.extend_from_slice(g);
                (&scratch[..], Some(g))
            }
            (Some(cv), None) => {
                scratch.extend(x.iter().map(|&v| softcap_and_slope(v, cv).0));
                (&scratch[..], None)
            }
        };
        let m = row_max(xs);
        let s = exp_sum(xs, m, g.as_deref_mut());
        let lse = lse_of(xs, m, s);
        // In f64 from m and ln s, not from the f32-rounded lse: the loss is
        // lse - x_y, and with large logits that rounding is the whole error.
        let lse64 = if lse.is_finite() {
            f64::from(m) + s.ln()
        } else {
            f64::from(lse)
        };
        let t = targets[i];
        if t == IGNORED_ROW {
            if let Some(g) = g {
                g.fill(0.0);
            }
            return RowResult {
                ce: 0.0,
                z: 0.0,
                lse,
            };
        }
        let y = t as usize;
        let wy = f64::from(w_of(y));
        let mut ce = (1.0 - f64::from(eps)) * wy * (lse64 - f64::from(xs[y]));
        if eps > 0.0 {
            let wx: f64 = match weight {
                Some(w) => xs
                    .iter()
                    .zip(w)
                    .map(|(&v, &wj)| f64::from(v) * f64::from(wj))
                    .sum(),
                None => xs.iter().map(|&v| f64::from(v)).sum(),
            };
            ce += f64::from(eps) / c * (lse64 * w_total - wx);
        }
        let zr = if z > 0.0 {
            f64::from(z) * lse64 * lse64
        } else {
            0.0
        };
        let finite_row = lse.is_finite();
        if let (Some(g), false) = (g.as_deref_mut(), finite_row) {
            // A row with NaN or infinite logits: the reference's formula term
            // by term, p_j = exp(x_j - lse), so NaN and 0 land where it puts them.
            for (j, v) in g.iter_mut().enumerate() {
                let p = (f64::from(xs[j]) - lse64).exp();
                let onehot = if j == y { 1.0 } else { 0.0 };
                let mut gj = s_ce * (1.0 - f64::from(eps)) * wy * (p - onehot);
                if eps > 0.0 {
                    gj += s_ce * f64::from(eps) / c * (w_total * p - f64::from(w_of(j)));
                }
                if z > 0.0 {
                    gj += s_z * 2.0 * f64::from(z) * lse64 * p;
                }
                if let Some(cv) = cap {
                    gj *= f64::from(softcap_and_slope(x[j], cv).1);
                }
                *v = gj as f32;
            }
        } else if let Some(g) = g {
            // g_j = p_j · A - B · w_j - [j = y] · C, then times the softcap slope.
            // A = C + D: C the plain cross-entropy part, D the smoothing and z parts.
            let c_ce = s_ce * (1.0 - f64::from(eps)) * wy;
            let d = s_ce * f64::from(eps) / c * w_total + s_z * 2.0 * f64::from(z) * lse64;
            let e_y = f64::from(g[y]);
            let a = ((c_ce + d) / s) as f32;
            let b = (s_ce * f64::from(eps) / c) as f32;
            match weight {
                Some(w) => g
                    .iter_mut()
                    .zip(w)
                    .for_each(|(v, &wj)| *v = *v * a - b * wj),
                None => g.iter_mut().for_each(|v| *v = *v * a - b),
            }
            // At the target p is near 1: C (p - 1) + D p in f64, not A p - C,
            // which would keep only the digits of D that survive in A.
            let p_y = e_y / s;
            g[y] = (c_ce * (p_y - 1.0) + d * p_y - f64::from(b) * f64::from(w_of(y))) as f32;
            if let Some(cv) = cap {
                g.iter_mut()
                    .zip(x)
                    .for_each(|(v, &xv)| *v *= softcap_and_slope(xv, cv).1);
            }
        }
        RowResult { ce, z: zr, lse }
    };
    let results: Vec<RowResult> = if let Some(grad) = grad {
        grad.par_chunks_mut(classes)
            .zip(logits.par_chunks(classes))
            .enumerate()
            .with_min_len(min_rows(classes))
            .map(|(i, (g, x))| row(i, x, Some(g)))
            .collect()
    } else {
        logits
            .par_chunks(classes)
            .enumerate()
            .with_min_len(min_rows(classes))
            .map(|(i, x)| row(i, x, None))
            .collect()
    };
    // Reduced in row order on one thread: the same bits for any thread count.
    let ce_sum: f64 = results.iter().map(|r| r.ce).sum();
    let z_sum: f64 = results.iter().map(|r| r.z).sum();
    let (loss, z_loss) = match options.reduction {
        Reduction::None => (
            results.iter().map(|r| (r.ce + r.z) as f32).collect(),
            results.iter().map(|r| r.z as f32).collect(),
        ),
        Reduction::Sum => (vec![(ce_sum + z_sum) as f32], vec![z_sum as f32]),
        Reduction::Mean => {
            let zm = if z > 0.0 { z_sum / kept_count } else { 0.0 };
            (vec![(ce_sum / denom + zm) as f32], vec![zm as f32])
        }
    };
    Ok(CrossEntropyOutput {
        loss,
        z_loss,
        lse: results.iter().map(|r| r.lse).collect(),
        grad: None,
    })
}

/// Multiclass (softmax) focal loss `l_i = -α[y] (1 - p_y)^γ log p_y` and,
/// when `with_grad`, its gradient `F (p_j - [j = y])` with
/// `F = α[y] (q^γ - γ q^(γ-1) p_y log p_y)`, `q = 1 - p_y`: the reference's
/// formulas with the row pass in f32 (one max pass, one `exp` pass that leaves
/// `exp(x - m)` in the gradient buffer, one scaling pass) and the per-row
/// scalars in f64; same shapes as [`wgpu_loss::GpuContext::focal_loss`].
pub fn focal_loss<T: ClassIndex>(
    logits: &[f32],
    targets: &[T],
    classes: usize,
    options: &FocalOptions<'_>,
    with_grad: bool,
) -> Result<CrossEntropyOutput> {
    let rows = targets.len();
    check_matrix("logits", logits.len(), rows, classes)?;
    options.validate(classes)?;
    let targets = checked_targets(targets, classes, options.ignore_index)?;
    let alpha_of = |j: usize| f64::from(options.alpha.map_or(1.0f32, |a| a[j]));
    let gamma = f64::from(options.gamma);
    let kept = targets.iter().filter(|&&t| t != IGNORED_ROW).count() as f64;
    let k = match options.reduction {
        Reduction::Mean => f64::from(options.grad_scale) / kept,
        _ => f64::from(options.grad_scale),
    };
    let row = |i: usize, x: &[f32], g: Option<&mut [f32]>| -> (f64, f32) {
        let m = row_max(x);
        let mut g = g;
        let s = exp_sum(x, m, g.as_deref_mut());
        let lse = lse_of(x, m, s);
        let t = targets[i];
        if t == IGNORED_ROW {
            if let Some(g) = g {
                g.fill(0.0);
            }
            return (0.0, lse);
        }
        let y = t as usize;
        let lse64 = if lse.is_finite() {
            f64::from(m) + s.ln()
        } else {
            f64::from(lse)
        };
        let lp = f64::from(x[y]) - lse64;
        let p = lp.exp();
        // 1 - p without cancellation when p is close to 1; a NaN row stays NaN.
        let q = if lp.is_nan() {
            f64::NAN
        } else {
            (-lp.exp_m1()).max(0.0)
        };
        let a = alpha_of(y);
        let (loss, f) = if gamma == 0.0 {
            (-a * lp, a)
        } else if q == 0.0 {
            (0.0, 0.0)
        } else {
            (
                -a * q.powf(gamma) * lp,
                a * (q.powf(gamma) - gamma * q.powf(gamma - 1.0) * p * lp),
            )
        };
        if let Some(g) = g {
            let kf = k * f;
            if lse.is_finite() {
                // g holds exp(x - m); p_j = that / s.
                let scale = (kf / s) as f32;
                g.iter_mut().for_each(|v| *v *= scale);
                g[y] -= kf as f32;
            } else {
                // NaN or infinite logits: term by term, as the reference.
                for (j, v) in g.iter_mut().enumerate() {
                    let onehot = if j == y { 1.0 } else { 0.0 };
                    *v = (kf * ((f64::from(x[j]) - lse64).exp() - onehot)) as f32;
                }
            }
        }
        (loss, lse)
    };
    let results: Vec<(f64, f32)> = if with_grad {
        let mut grad = vec![0.0f32; logits.len()];
        let results = grad
            .par_chunks_mut(classes)
            .zip(logits.par_chunks(classes))
            .enumerate()
            .with_min_len(min_rows(classes))
            .map(|(i, (g, x))| row(i, x, Some(g)))
            .collect();
        return Ok(CrossEntropyOutput {
            grad: Some(grad),
            ..focal_output(results, options.reduction, kept)
        });
    } else {
        logits
            .par_chunks(classes)
            .enumerate()
            .with_min_len(min_rows(classes))
            .map(|(i, x)| row(i, x, None))
            .collect()
    };
    Ok(focal_output(results, options.reduction, kept))
}

/// Softmax backward from the output `y`: `dx = y ⊙ (dy - Σ dy ⊙ y)` per row.
pub fn softmax_backward(y: &[f32], dy: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
    backward_rows(y, dy, rows, cols, |yr, dr, o| {
        let dot: f64 = yr.iter().zip(dr).map(|(&a, &b)| f64::from(a * b)).sum();
        let dot = dot as f32;
        o.iter_mut()
            .zip(yr.iter().zip(dr))
            .for_each(|(v, (&yv, &dv))| *v = yv * (dv - dot));
    })
}

/// Log-softmax backward from the output `y`: `dx = dy - exp(y) Σ dy` per row.
pub fn log_softmax_backward(y: &[f32], dy: &[f32], rows: usize, cols: usize) -> Result<Vec<f32>> {
    backward_rows(y, dy, rows, cols, |yr, dr, o| {
        let total = dr.iter().map(|&d| f64::from(d)).sum::<f64>() as f32;
        o.iter_mut()
            .zip(yr.iter().zip(dr))
            .for_each(|(v, (&yv, &dv))| *v = dv - yv.exp() * total);
    })
}

/// Logsumexp backward: `dx = dy_i · exp(x - lse_i)`, one `lse` and `dy` per row.
pub fn logsumexp_backward(
    x: &[f32],
    lse: &[f32],
    dy: &[f32],
    rows: usize,
    cols: usize,
) -> Result<Vec<f32>> {
    check_matrix("x", x.len(), rows, cols)?;
    check_matrix("lse", lse.len(), rows, 1)?;
    check_matrix("dy", dy.len(), rows, 1)?;
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(cols)
        .zip(x.par_chunks(cols))
        .enumerate()
        .with_min_len(min_rows(cols))
        .for_each(|(i, (o, r))| {
            let (l, d) = (lse[i], dy[i]);
            o.iter_mut()
                .zip(r)
                .for_each(|(v, &xv)| *v = d * (xv - l).exp());
        });
    Ok(out)
}

/// A backward pass over matching rows of `y` and `dy`, rows in parallel.
fn backward_rows(
    y: &[f32],
    dy: &[f32],
    rows: usize,
    cols: usize,
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) -> Result<Vec<f32>> {
    check_matrix("y", y.len(), rows, cols)?;
    check_matrix("dy", dy.len(), rows, cols)?;
    let mut out = vec![0.0f32; y.len()];
    out.par_chunks_mut(cols)
        .zip(y.par_chunks(cols).zip(dy.par_chunks(cols)))
        .with_min_len(min_rows(cols))
        .for_each(|(o, (yr, dr))| f(yr, dr, o));
    Ok(out)
}

/// Cross-entropy with probability targets (`[N, C]` like the logits); the
/// formulas are in `wgpu_loss::loss::cross_entropy`. Rows in parallel, each
/// summed in f64; `with_grad` adds the gradient.
pub fn cross_entropy_probs(
    logits: &[f32],
    probs: &[f32],
    classes: usize,
    options: &CrossEntropyOptions<'_>,
    with_grad: bool,
) -> Result<CrossEntropyOutput> {
    let rows = wgpu_loss::loss::cross_entropy::soft_rows(logits, probs, classes, options)?;
    let c = classes as f64;
    let w_of = |j: usize| f64::from(options.weight.map_or(1.0f32, |w| w[j]));
    let eps = f64::from(options.label_smoothing);
    let z = f64::from(options.z_loss);
    let n = rows as f64;
    let scale = match options.reduction {
        Reduction::Mean => f64::from(options.grad_scale) / n,
        _ => f64::from(options.grad_scale),
    };
    let mut grad = if with_grad {
        vec![0.0f32; logits.len()]
    } else {
        Vec::new()
    };
    // Per row: (cross-entropy part, z part, lse).
    let row = |x: &[f32], q: &[f32], g: Option<&mut [f32]>| -> (f64, f64, f32) {
        let capped: Vec<(f32, f32)> = x
            .iter()
            .map(|&v| match options.softcap {
                Some(cap) => softcap_and_slope(v, cap),
                None => (v, 1.0),
            })
            .collect();
        let xc: Vec<f32> = capped.iter().map(|p| p.0).collect();
        let m = row_max(&xc);
        let sum = exp_sum(&xc, m, None);
        let lse = lse_of(&xc, m, sum);
        let ls = sum.ln();
        let qp = |j: usize| (1.0 - eps) * f64::from(q[j]) + eps / c;
        // log p_j as (x_j - m) - ln s, which keeps the digits of large logits.
        let logp = |j: usize| f64::from(xc[j] - m) - ls;
        let b: f64 = (0..x.len()).map(|j| w_of(j) * qp(j)).sum();
        let ce = -(0..x.len()).map(|j| w_of(j) * qp(j) * logp(j)).sum::<f64>();
        let lse64 = f64::from(lse);
        let zr = if z > 0.0 { z * lse64 * lse64 } else { 0.0 };
        if let Some(g) = g {
            for (j, gj) in g.iter_mut().enumerate() {
                let p = logp(j).exp();
                let mut v = scale * (p * b - w_of(j) * qp(j));
                if z > 0.0 {
                    v += scale * 2.0 * z * lse64 * p;
                }
                *gj = (v * f64::from(capped[j].1)) as f32;
            }
        }
        (ce, zr, lse)
    };
    let results: Vec<(f64, f64, f32)> = if with_grad {
        grad.par_chunks_mut(classes)
            .zip(logits.par_chunks(classes).zip(probs.par_chunks(classes)))
            .with_min_len(min_rows(classes))
            .map(|(g, (x, q))| row(x, q, Some(g)))
            .collect()
    } else {
        logits
            .par_chunks(classes)
            .zip(probs.par_chunks(classes))
            .with_min_len(min_rows(classes))
            .map(|(x, q)| row(x, q, None))
            .collect()
    };
    // Reduced in row order on one thread: the same bits for any thread count.
    let ce_sum: f64 = results.iter().map(|r| r.0).sum();
    let z_sum: f64 = results.iter().map(|r| r.1).sum();
    let (loss, z_loss) = match options.reduction {
        Reduction::None => (
            results.iter().map(|r| (r.0 + r.1) as f32).collect(),
            results.iter().map(|r| r.1 as f32).collect(),
        ),
        Reduction::Sum => (vec![(ce_sum + z_sum) as f32], vec![z_sum as f32]),
        Reduction::Mean => (
            vec![(ce_sum / n + z_sum / n) as f32],
            vec![(z_sum / n) as f32],
        ),
    };
    Ok(CrossEntropyOutput {
        loss,
        z_loss,
        lse: results.iter().map(|r| r.2).collect(),
        grad: with_grad.then_some(grad),
    })
}

/// Row losses reduced in row order on one thread (the same bits for any thread count).
fn focal_output(results: Vec<(f64, f32)>, reduction: Reduction, kept: f64) -> CrossEntropyOutput {
    let sum: f64 = results.iter().map(|r| r.0).sum();
    let loss = match reduction {
        Reduction::None => results.iter().map(|r| r.0 as f32).collect(),
        Reduction::Sum => vec![sum as f32],
        Reduction::Mean => vec![(sum / kept) as f32],
    };
    let z_loss = vec![0.0; loss.len()];
    CrossEntropyOutput {
        loss,
        z_loss,
        lse: results.iter().map(|r| r.1).collect(),
        grad: None,
    }
}

/// Elements per chunk of the element-wise losses: fixed (not derived from the
/// thread count), so the chunk sums, added in order, give the same bits for
/// any number of threads.
const ELEMENT_CHUNK: usize = 1 << 14;

/// `(sigmoid(x), sigmoid(-x))`, each from `exp(-|x|)` (as the shader does):
/// `1 - p` as a difference loses its digits once `p` is near 1.
fn sigmoid_pair_f32(x: f32) -> (f32, f32) {
    let e = (-x.abs()).exp();
    let (big, small) = (1.0 / (1.0 + e), e / (1.0 + e));
    if x >= 0.0 {
        (big, small)
    } else {
        (small, big)
    }
}

/// `(1 - y) x + (1 + (pw - 1) y) softplus(-x)` as `(1 - y) softplus(x) +
/// pw y softplus(-x)`: no cancellation; infinite `x` keeps the literal form
/// (PyTorch's `0 · inf` is NaN), as in the shader.
fn logit_loss_f32(x: f32, y: f32, pw: f32) -> f32 {
    let l1 = (-x.abs()).exp().ln_1p();
    let sp_pos = x.max(0.0) + l1;
    let sp_neg = (-x).max(0.0) + l1;
    if x.is_infinite() {
        (1.0 - y) * x + (1.0 + (pw - 1.0) * y) * sp_neg
    } else {
        (1.0 - y) * sp_pos + pw * y * sp_neg
    }
}

/// One element of an element-wise loss, the shader's formulas in f32.
#[inline(always)]
fn binary_element(call: &BinaryCall<'_>, x: f32, y: f32, w: f32, pw: f32) -> (f32, f32) {
    match call.op {
        BinaryOp::Probabilities => {
            let lp = x.ln().max(-100.0);
            // log1p(-p), as PyTorch: 1 - p rounds to 1 below p = 2^-24.
            let l1p = (-x).ln_1p().max(-100.0);
            (
                -w * (y * lp + (1.0 - y) * l1p),
                w * (x - y) / (x * (1.0 - x)).max(1e-12),
            )
        }
        BinaryOp::Logits => {
            let (p, pc) = sigmoid_pair_f32(x);
            (
                w * logit_loss_f32(x, y, pw),
                w * ((1.0 - y) * p - pw * y * pc),
            )
        }
        BinaryOp::SigmoidFocal => {
            let (p, pc) = sigmoid_pair_f32(x);
            let ce = logit_loss_f32(x, y, 1.0);
            let (mut l, mut g) = (ce, (1.0 - y) * p - y * pc);
            let gamma = call.gamma;
            if gamma != 0.0 {
                let q = y * pc + (1.0 - y) * p;
                let qg = if q == 0.0 { 0.0 } else { q.powf(gamma) };
                let s = p * pc;
                let slope = if q == 0.0 || s == 0.0 {
                    0.0
                } else {
                    gamma * q.powf(gamma - 1.0) * (2.0 * y - 1.0) * s * ce
                };
                l = ce * qg;
                g = g * qg - slope;
            }
            if call.alpha >= 0.0 {
                let a = call.alpha * y + (1.0 - call.alpha) * (1.0 - y);
                l *= a;
                g *= a;
            }
            (l, g)
        }
    }
}

/// The element-wise losses on every core: chunks of [`ELEMENT_CHUNK`]
/// elements in parallel, chunk sums in f64 added in order.
fn binary_run(call: BinaryCall<'_>, with_grad: bool) -> Result<wgpu_loss::LossOutput> {
    call.validate()?;
    let n = call.inputs.len();
    let cols = call.cols;
    let full_weight = call.weight.filter(|w| w.len() == n);
    let col_weight = call.weight.filter(|w| w.len() != n);
    let reduce = call.reduction != Reduction::None;
    let denom = if call.reduction == Reduction::Mean {
        n as f64
    } else {
        1.0
    };
    let scale = (f64::from(call.grad_scale) / denom) as f32;
    let mut loss = if reduce { Vec::new() } else { vec![0.0f32; n] };
    let mut grad = if with_grad {
        vec![0.0f32; n]
    } else {
        Vec::new()
    };
    let call = &call;
    // Every buffer is chunked the same way, so chunk k covers these elements.
    let chunk_sum = |start: usize, mut l: Option<&mut [f32]>, mut g: Option<&mut [f32]>| -> f64 {
        let mut total = 0.0f64;
        for k in 0..ELEMENT_CHUNK.min(n - start) {
            let i = start + k;
            let w = match (full_weight, col_weight) {
                (Some(w), _) => w[i],
                (None, Some(w)) => w[i % cols],
                _ => 1.0,
            };
            let pw = call.pos_weight.map_or(1.0, |p| p[i % cols]);
            let (li, gi) = binary_element(call, call.inputs[i], call.targets[i], w, pw);
            total += f64::from(li);
            if let Some(l) = l.as_deref_mut() {
                l[k] = li;
            }
            if let Some(g) = g.as_deref_mut() {
                g[k] = gi * scale;
            }
        }
        total
    };
    let starts = (0..n).step_by(ELEMENT_CHUNK);
    let sums: Vec<f64> = match (reduce, with_grad) {
        (true, true) => grad
            .par_chunks_mut(ELEMENT_CHUNK)
            .zip(starts.collect::<Vec<_>>())
            .map(|(g, s)| chunk_sum(s, None, Some(g)))
            .collect(),
        (true, false) => starts
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|s| chunk_sum(s, None, None))
            .collect(),
        (false, true) => loss
            .par_chunks_mut(ELEMENT_CHUNK)
            .zip(grad.par_chunks_mut(ELEMENT_CHUNK))
            .zip(starts.collect::<Vec<_>>())
            .map(|((l, g), s)| chunk_sum(s, Some(l), Some(g)))
            .collect(),
        (false, false) => loss
            .par_chunks_mut(ELEMENT_CHUNK)
            .zip(starts.collect::<Vec<_>>())
            .map(|(l, s)| chunk_sum(s, Some(l), None))
            .collect(),
    };
    if reduce {
        loss = vec![(sums.iter().sum::<f64>() / denom) as f32];
    }
    Ok(wgpu_loss::LossOutput {
        loss,
        grad: with_grad.then_some(grad),
    })
}

/// Binary cross-entropy on probabilities `[N, C]` (`C = cols`), in f32 on every core.
pub fn binary_cross_entropy(
    probs: &[f32],
    targets: &[f32],
    cols: usize,
    options: &wgpu_loss::BinaryLossOptions<'_>,
    with_grad: bool,
) -> Result<wgpu_loss::LossOutput> {
    binary_run(
        BinaryCall {
            op: BinaryOp::Probabilities,
            inputs: probs,
            targets,
            cols,
            weight: options.weight,
            pos_weight: options.pos_weight,
            reduction: options.reduction,
            grad_scale: options.grad_scale,
            alpha: 0.0,
            gamma: 0.0,
        },
        with_grad,
    )
}

/// Binary cross-entropy on logits `[N, C]` with `pos_weight`, in f32 on every core.
pub fn binary_cross_entropy_with_logits(
    logits: &[f32],
    targets: &[f32],
    cols: usize,
    options: &wgpu_loss::BinaryLossOptions<'_>,
    with_grad: bool,
) -> Result<wgpu_loss::LossOutput> {
    binary_run(
        BinaryCall {
            op: BinaryOp::Logits,
            inputs: logits,
            targets,
            cols,
            weight: options.weight,
            pos_weight: options.pos_weight,
            reduction: options.reduction,
            grad_scale: options.grad_scale,
            alpha: 0.0,
            gamma: 0.0,
        },
        with_grad,
    )
}

/// torchvision's sigmoid focal loss on logits `[N, C]`, in f32 on every core.
pub fn sigmoid_focal_loss(
    logits: &[f32],
    targets: &[f32],
    cols: usize,
    options: &wgpu_loss::SigmoidFocalOptions,
    with_grad: bool,
) -> Result<wgpu_loss::LossOutput> {
    binary_run(
        BinaryCall {
            op: BinaryOp::SigmoidFocal,
            inputs: logits,
            targets,
            cols,
            weight: None,
            pos_weight: None,
            reduction: options.reduction,
            grad_scale: options.grad_scale,
            alpha: options.alpha,
            gamma: options.gamma,
        },
        with_grad,
    )
}
