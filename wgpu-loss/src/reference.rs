//! The f64 reference: a readable mirror of each shader's maths, accumulating
//! in f64, with the same PyTorch edge semantics. Slow on purpose; it is the oracle.
//!
//! It depends on the loss definitions ([`crate::loss`]) and nothing else of
//! the crate: the oracle shares no code with what it checks.

use crate::error::Result;
use crate::loss::binary::{BinaryCall, BinaryLossOptions, BinaryOp, SigmoidFocalOptions};
use crate::loss::cross_entropy::{
    check_soft_options, soft_rows, CrossEntropyOptions, FocalOptions,
};
use crate::loss::linear_cross_entropy::LinearShape;
use crate::loss::{check_matrix, checked_targets, ClassIndex, Reduction, IGNORED_ROW};

/// `logsumexp` of one row, PyTorch semantics: NaN if any NaN, `+inf` if any
/// `+inf`, `-inf` if every entry is `-inf`, else `m + ln Σ exp(x - m)`.
pub fn row_logsumexp(x: &[f64]) -> f64 {
    if x.iter().any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m.is_infinite() {
        return m;
    }
    m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

fn widen(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

fn map_rows(
    x: &[f32],
    rows: usize,
    cols: usize,
    f: impl Fn(&[f64], &mut Vec<f64>),
) -> Result<Vec<f64>> {
    check_matrix("x", x.len(), rows, cols)?;
    let mut out = Vec::with_capacity(x.len());
    for r in x.chunks(cols) {
        f(&widen(r), &mut out);
    }
    Ok(out)
}

/// Row-wise softmax; rows whose logsumexp is not finite are NaN.
pub fn softmax(x: &[f32], rows: usize, cols: usize) -> Result<Vec<f64>> {
    map_rows(x, rows, cols, |r, out| {
        let lse = row_logsumexp(r);
        out.extend(r.iter().map(|v| {
            if lse.is_finite() {
                (v - lse).exp()
            } else {
                f64::NAN
            }
        }));
    })
}

/// Row-wise log-softmax; rows whose logsumexp is not finite are NaN.
pub fn log_softmax(x: &[f32], rows: usize, cols: usize) -> Result<Vec<f64>> {
    map_rows(x, rows, cols, |r, out| {
        let lse = row_logsumexp(r);
        out.extend(
            r.iter()
                .map(|v| if lse.is_finite() { v - lse } else { f64::NAN }),
        );
    })
}

/// Row-wise logsumexp, one value per row.
pub fn logsumexp(x: &[f32], rows: usize, cols: usize) -> Result<Vec<f64>> {
    map_rows(x, rows, cols, |r, out| out.push(row_logsumexp(r)))
}

/// Softmax backward from the output `y`: `dx = y (dy - Σ dy y)`.
pub fn softmax_backward(y: &[f32], dy: &[f32], rows: usize, cols: usize) -> Result<Vec<f64>> {
    check_matrix("y", y.len(), rows, cols)?;
    check_matrix("dy", dy.len(), rows, cols)?;
    let mut out = Vec::with_capacity(y.len());
    for (yr, dr) in y.chunks(cols).zip(dy.chunks(cols)) {
        let (yr, dr) = (widen(yr), widen(dr));
        let dot: f64 = yr.iter().zip(&dr).map(|(a, b)| a * b).sum();
        out.extend(yr.iter().zip(&dr).map(|(y, d)| y * (d - dot)));
    }
    Ok(out)
}

/// Log-softmax backward from the output `y`: `dx = dy - exp(y) Σ dy`.
pub fn log_softmax_backward(y: &[f32], dy: &[f32], rows: usize, cols: usize) -> Result<Vec<f64>> {
    check_matrix("y", y.len(), rows, cols)?;
    check_matrix("dy", dy.len(), rows, cols)?;
    let mut out = Vec::with_capacity(y.len());
    for (yr, dr) in y.chunks(cols).zip(dy.chunks(cols)) {
        let (yr, dr) = (widen(yr), widen(dr));
        let total: f64 = dr.iter().sum();
        out.extend(yr.iter().zip(&dr).map(|(y, d)| d - y.exp() * total));
    }
    Ok(out)
}

/// Logsumexp backward: `dx = dy_i exp(x - lse_i)`.
pub fn logsumexp_backward(
    x: &[f32],
    lse: &[f32],
    dy: &[f32],
    rows: usize,
    cols: usize,
) -> Result<Vec<f64>> {
    check_matrix("x", x.len(), rows, cols)?;
    check_matrix("lse", lse.len(), rows, 1)?;
    check_matrix("dy", dy.len(), rows, 1)?;
    let mut out = Vec::with_capacity(x.len());
    for (i, r) in x.chunks(cols).enumerate() {
        let (l, d) = (f64::from(lse[i]), f64::from(dy[i]));
        out.extend(r.iter().map(|&v| d * (f64::from(v) - l).exp()));
    }
    Ok(out)
}

/// The reference's cross-entropy result, in f64. Same shapes as
/// [`crate::CrossEntropyOutput`]; `grad` is always computed.
#[derive(Clone, Debug)]
pub struct CrossEntropyReference {
    /// `none`: `l_i + z_i` per row; otherwise one value.
    pub loss: Vec<f64>,
    /// The z-loss part of `loss`.
    pub z_loss: Vec<f64>,
    /// logsumexp of each row's softcapped logits.
    pub lse: Vec<f64>,
    /// Gradient of the returned loss (of `Σ_i` for `none`) times `grad_scale`.
    pub grad: Vec<f64>,
}

/// Cross-entropy with class-index targets, f32 inputs; see [`cross_entropy_f64`].
pub fn cross_entropy<T: ClassIndex>(
    logits: &[f32],
    targets: &[T],
    classes: usize,
    options: &CrossEntropyOptions<'_>,
) -> Result<CrossEntropyReference> {
    cross_entropy_f64(&widen(logits), targets, classes, options)
}

/// Cross-entropy with class-index targets on f64 logits, straight from the
/// formulas in [`crate::loss::cross_entropy`] (f64 input lets finite
/// differences probe it).
pub fn cross_entropy_f64<T: ClassIndex>(
    logits: &[f64],
    targets: &[T],
    classes: usize,
    options: &CrossEntropyOptions<'_>,
) -> Result<CrossEntropyReference> {
    let rows = targets.len();
    check_matrix("logits", logits.len(), rows, classes)?;
    options.validate(classes)?;
    let targets = checked_targets(targets, classes, options.ignore_index)?;
    let c = classes as f64;
    let w: Vec<f64> = match options.weight {
        Some(w) => widen(w),
        None => vec![1.0; classes],
    };
    let w_total: f64 = w.iter().sum();
    let eps = f64::from(options.label_smoothing);
    let z = f64::from(options.z_loss);
    let scale = f64::from(options.grad_scale);
    let cap = options.softcap.map(f64::from);

    let kept: Vec<bool> = targets.iter().map(|&t| t != IGNORED_ROW).collect();
    let kept_count = kept.iter().filter(|&&k| k).count() as f64;
    let denom: f64 = targets
        .iter()
        .filter(|&&t| t != IGNORED_ROW)
        .map(|&t| w[t as usize])
        .sum();
    let (s_ce, s_z) = match options.reduction {
        Reduction::Mean => (scale / denom, scale / kept_count),
        _ => (scale, scale),
    };

    let mut ce_rows = vec![0.0; rows];
    let mut z_rows = vec![0.0; rows];
    let mut lse_rows = vec![0.0; rows];
    let mut grad = vec![0.0; rows * classes];
    for i in 0..rows {
        let x = &logits[i * classes..(i + 1) * classes];
        let xc: Vec<f64> = match cap {
            Some(c) => x.iter().map(|v| c * (v / c).tanh()).collect(),
            None => x.to_vec(),
        };
        let lse = row_logsumexp(&xc);
        lse_rows[i] = lse;
        if !kept[i] {
            continue;
        }
        let y = targets[i] as usize;
        let lp: Vec<f64> = xc.iter().map(|v| v - lse).collect();
        let p: Vec<f64> = lp.iter().map(|v| v.exp()).collect();
        let mut ce = (1.0 - eps) * w[y] * -lp[y];
        if eps > 0.0 {
            ce += eps / c * (0..classes).map(|j| w[j] * -lp[j]).sum::<f64>();
        }
        ce_rows[i] = ce;
        if z > 0.0 {
            z_rows[i] = z * lse * lse;
        }
        for j in 0..classes {
            let onehot = if j == y { 1.0 } else { 0.0 };
            let mut g = s_ce * (1.0 - eps) * w[y] * (p[j] - onehot);
            if eps > 0.0 {
                g += s_ce * eps / c * (w_total * p[j] - w[j]);
            }
            if z > 0.0 {
                g += s_z * 2.0 * z * lse * p[j];
            }
            if let Some(cv) = cap {
                g *= softcap_slope(x[j], cv);
            }
            grad[i * classes + j] = g;
        }
    }
    let (loss, z_loss) = reduce_rows(
        options.reduction,
        &ce_rows,
        &z_rows,
        denom,
        kept_count,
        z > 0.0,
    );
    Ok(CrossEntropyReference {
        loss,
        z_loss,
        lse: lse_rows,
        grad,
    })
}

/// `d/dv c·tanh(v/c) = sech²(v/c) = 4e / (1 + e)²` with `e = exp(-2|v/c|)`:
/// `1 - tanh²` would be exactly 0 once tanh rounds to 1 (|v/c| > ~19 in f64).
fn softcap_slope(v: f64, c: f64) -> f64 {
    let e = (-2.0 * (v / c).abs()).exp();
    4.0 * e / ((1.0 + e) * (1.0 + e))
}

fn softcapped(x: &[f64], cap: Option<f64>) -> Vec<f64> {
    match cap {
        Some(c) => x.iter().map(|v| c * (v / c).tanh()).collect(),
        None => x.to_vec(),
    }
}

/// Cross-entropy with probability targets on f32 logits; see [`cross_entropy_probs_f64`].
pub fn cross_entropy_probs(
    logits: &[f32],
    probs: &[f32],
    classes: usize,
    options: &CrossEntropyOptions<'_>,
) -> Result<CrossEntropyReference> {
    soft_rows(logits, probs, classes, options)?;
    cross_entropy_probs_f64(&widen(logits), probs, classes, options)
}

/// Cross-entropy with probability targets `q`: `q' = (1-ε)q + ε/C`,
/// `l_i = -Σ_c w[c] q'_ic lp_ic` (+ `z lse²`), `mean` over `N`; gradient
/// `p_ij Σ_c w[c] q'_ic - w[j] q'_ij` (+ `2 z lse p_ij`), through the softcap.
pub fn cross_entropy_probs_f64(
    logits: &[f64],
    probs: &[f32],
    classes: usize,
    options: &CrossEntropyOptions<'_>,
) -> Result<CrossEntropyReference> {
    if classes == 0 {
        return Err(crate::Error::ZeroCols);
    }
    let rows = logits.len() / classes;
    check_matrix("logits", logits.len(), rows, classes)?;
    check_matrix("probability targets", probs.len(), rows, classes)?;
    check_soft_options(probs, classes, options)?;
    let c = classes as f64;
    let w: Vec<f64> = options.weight.map_or(vec![1.0; classes], widen);
    let eps = f64::from(options.label_smoothing);
    let z = f64::from(options.z_loss);
    let cap = options.softcap.map(f64::from);
    let n = rows as f64;
    let s = match options.reduction {
        Reduction::Mean => f64::from(options.grad_scale) / n,
        _ => f64::from(options.grad_scale),
    };
    let (mut ce_rows, mut z_rows, mut lse_rows) =
        (vec![0.0; rows], vec![0.0; rows], vec![0.0; rows]);
    let mut grad = vec![0.0; rows * classes];
    for i in 0..rows {
        let x = &logits[i * classes..(i + 1) * classes];
        let xc = softcapped(x, cap);
        let lse = row_logsumexp(&xc);
        lse_rows[i] = lse;
        let q: Vec<f64> = probs[i * classes..(i + 1) * classes]
            .iter()
            .map(|&v| (1.0 - eps) * f64::from(v) + eps / c)
            .collect();
        let b: f64 = (0..classes).map(|j| w[j] * q[j]).sum();
        ce_rows[i] = -(0..classes)
            .map(|j| w[j] * q[j] * (xc[j] - lse))
            .sum::<f64>();
        if z > 0.0 {
            z_rows[i] = z * lse * lse;
        }
        for j in 0..classes {
            let p = (xc[j] - lse).exp();
            let mut g = s * (p * b - w[j] * q[j]);
            if z > 0.0 {
                g += s * 2.0 * z * lse * p;
            }
            if let Some(cv) = cap {
                g *= softcap_slope(x[j], cv);
            }
            grad[i * classes + j] = g;
        }
    }
    let (loss, z_loss) = reduce_rows(options.reduction, &ce_rows, &z_rows, n, n, z > 0.0);
    Ok(CrossEntropyReference {
        loss,
        z_loss,
        lse: lse_rows,
        grad,
    })
}

/// Row losses and z-losses reduced as the kernels do: `mean` divides the
/// losses by `d` and the z-losses by `k`.
fn reduce_rows(
    reduction: Reduction,
    ce: &[f64],
    z: &[f64],
    d: f64,
    k: f64,
    has_z: bool,
) -> (Vec<f64>, Vec<f64>) {
    match reduction {
        Reduction::None => (ce.iter().zip(z).map(|(a, b)| a + b).collect(), z.to_vec()),
        Reduction::Sum => {
            let zs: f64 = z.iter().sum();
            (vec![ce.iter().sum::<f64>() + zs], vec![zs])
        }
        Reduction::Mean => {
            let zs = if has_z {
                z.iter().sum::<f64>() / k
            } else {
                0.0
            };
            (vec![ce.iter().sum::<f64>() / d + zs], vec![zs])
        }
    }
}

/// Multiclass focal loss on f32 logits; see [`focal_loss_f64`].
pub fn focal_loss<T: ClassIndex>(
    logits: &[f32],
    targets: &[T],
    classes: usize,
    options: &FocalOptions<'_>,
) -> Result<CrossEntropyReference> {
    focal_loss_f64(&widen(logits), targets, classes, options)
}

/// Multiclass focal loss `l_i = -α[y] (1-p_y)^γ log p_y`, `mean` over kept
/// rows, gradient `F (p_j - [j = y])` with `F = α[y] (q^γ - γ q^(γ-1) p_y log p_y)`.
pub fn focal_loss_f64<T: ClassIndex>(
    logits: &[f64],
    targets: &[T],
    classes: usize,
    options: &FocalOptions<'_>,
) -> Result<CrossEntropyReference> {
    let rows = targets.len();
    check_matrix("logits", logits.len(), rows, classes)?;
    options.validate(classes)?;
    let targets = checked_targets(targets, classes, options.ignore_index)?;
    let alpha: Vec<f64> = options.alpha.map_or(vec![1.0; classes], widen);
    let gamma = f64::from(options.gamma);
    let kept = targets.iter().filter(|&&t| t != IGNORED_ROW).count() as f64;
    let k = match options.reduction {
        Reduction::Mean => f64::from(options.grad_scale) / kept,
        _ => f64::from(options.grad_scale),
    };
    let mut rows_loss = vec![0.0; rows];
    let mut lse_rows = vec![0.0; rows];
    let mut grad = vec![0.0; rows * classes];
    for i in 0..rows {
        let x = &logits[i * classes..(i + 1) * classes];
        let lse = row_logsumexp(x);
        lse_rows[i] = lse;
        if targets[i] == IGNORED_ROW {
            continue;
        }
        let y = targets[i] as usize;
        let lp = x[y] - lse;
        let p = lp.exp();
        // 1 - p without cancellation when p is close to 1; a NaN row stays NaN
        // (f64::max would make it 0 and the loss 0).
        let q = if lp.is_nan() {
            f64::NAN
        } else {
            (-lp.exp_m1()).max(0.0)
        };
        let a = alpha[y];
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
        rows_loss[i] = loss;
        for j in 0..classes {
            let onehot = if j == y { 1.0 } else { 0.0 };
            grad[i * classes + j] = k * f * ((x[j] - lse).exp() - onehot);
        }
    }
    let zeros = vec![0.0; rows];
    let (loss, z_loss) = reduce_rows(options.reduction, &rows_loss, &zeros, kept, kept, false);
    Ok(CrossEntropyReference {
        loss,
        z_loss,
        lse: lse_rows,
        grad,
    })
}

/// Result of an element-wise loss reference.
#[derive(Clone, Debug)]
pub struct LossReference {
    /// `none`: one loss per element; otherwise one value.
    pub loss: Vec<f64>,
    /// Gradient of the returned loss (of the sum for `none`) times `grad_scale`.
    pub grad: Vec<f64>,
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn softplus_neg(x: f64) -> f64 {
    (-x).max(0.0) + (-x.abs()).exp().ln_1p()
}

/// The element-wise losses in f64, straight from the formulas in
/// [`crate::loss::binary`]; `call.inputs` is ignored in favour of `x`.
fn binary_f64(call: &BinaryCall<'_>, x: &[f64]) -> LossReference {
    let cols = call.cols;
    let n = x.len();
    let weight = |i: usize| -> f64 {
        match call.weight {
            Some(w) if w.len() == n => f64::from(w[i]),
            Some(w) => f64::from(w[i % cols]),
            None => 1.0,
        }
    };
    let pos_weight = |i: usize| call.pos_weight.map_or(1.0, |pw| f64::from(pw[i % cols]));
    let gamma = f64::from(call.gamma);
    let alpha = f64::from(call.alpha);
    let mut loss = vec![0.0; n];
    let mut grad = vec![0.0; n];
    for i in 0..n {
        let (xi, y) = (x[i], f64::from(call.targets[i]));
        let (l, g) = match call.op {
            BinaryOp::Probabilities => {
                let w = weight(i);
                let lp = xi.ln().max(-100.0);
                // log1p(-p), as PyTorch: ln(1 - p) loses p's digits below 2^-53.
                let l1p = (-xi).ln_1p().max(-100.0);
                (
                    -w * (y * lp + (1.0 - y) * l1p),
                    w * (xi - y) / (xi * (1.0 - xi)).max(1e-12),
                )
            }
            BinaryOp::Logits => {
                let (w, pw) = (weight(i), pos_weight(i));
                let coef = 1.0 + (pw - 1.0) * y;
                (
                    w * ((1.0 - y) * xi + coef * softplus_neg(xi)),
                    w * (coef * sigmoid(xi) - pw * y),
                )
            }
            BinaryOp::SigmoidFocal => {
                let p = sigmoid(xi);
                let ce = (1.0 - y) * xi + softplus_neg(xi);
                let (mut l, mut g) = (ce, p - y);
                if gamma != 0.0 {
                    let q = (1.0 - (p * y + (1.0 - p) * (1.0 - y))).max(0.0);
                    let qg = if q == 0.0 { 0.0 } else { q.powf(gamma) };
                    let s = p * (1.0 - p);
                    let slope = if q == 0.0 || s == 0.0 {
                        0.0
                    } else {
                        gamma * q.powf(gamma - 1.0) * (2.0 * y - 1.0) * s * ce
                    };
                    l = ce * qg;
                    g = (p - y) * qg - slope;
                }
                if alpha >= 0.0 {
                    let a = alpha * y + (1.0 - alpha) * (1.0 - y);
                    l *= a;
                    g *= a;
                }
                (l, g)
            }
        };
        loss[i] = l;
        grad[i] = g;
    }
    let denom = if call.reduction == Reduction::Mean {
        n as f64
    } else {
        1.0
    };
    let scale = f64::from(call.grad_scale) / denom;
    grad.iter_mut().for_each(|g| *g *= scale);
    let loss = match call.reduction {
        Reduction::None => loss,
        _ => vec![loss.iter().sum::<f64>() / denom],
    };
    LossReference { loss, grad }
}

fn binary_checked(call: BinaryCall<'_>, x: &[f64]) -> Result<LossReference> {
    call.validate()?;
    Ok(binary_f64(&call, x))
}

/// Binary cross-entropy on probabilities (`[N, C]`, `C = cols`).
pub fn binary_cross_entropy(
    probs: &[f32],
    targets: &[f32],
    cols: usize,
    options: &BinaryLossOptions<'_>,
) -> Result<LossReference> {
    binary_cross_entropy_f64(&widen(probs), targets, cols, options)
}

/// [`binary_cross_entropy`] on f64 probabilities (for finite differences).
pub fn binary_cross_entropy_f64(
    probs: &[f64],
    targets: &[f32],
    cols: usize,
    options: &BinaryLossOptions<'_>,
) -> Result<LossReference> {
    let narrow: Vec<f32> = probs.iter().map(|&v| v as f32).collect();
    binary_checked(
        BinaryCall {
            op: BinaryOp::Probabilities,
            inputs: &narrow,
            targets,
            cols,
            weight: options.weight,
            pos_weight: options.pos_weight,
            reduction: options.reduction,
            grad_scale: options.grad_scale,
            alpha: 0.0,
            gamma: 0.0,
        },
        probs,
    )
}

/// Binary cross-entropy with logits (`[N, C]`, `C = cols`).
pub fn binary_cross_entropy_with_logits(
    logits: &[f32],
    targets: &[f32],
    cols: usize,
    options: &BinaryLossOptions<'_>,
) -> Result<LossReference> {
    binary_cross_entropy_with_logits_f64(&widen(logits), targets, cols, options)
}

/// [`binary_cross_entropy_with_logits`] on f64 logits.
pub fn binary_cross_entropy_with_logits_f64(
    logits: &[f64],
    targets: &[f32],
    cols: usize,
    options: &BinaryLossOptions<'_>,
) -> Result<LossReference> {
    let narrow: Vec<f32> = logits.iter().map(|&v| v as f32).collect();
    binary_checked(
        BinaryCall {
            op: BinaryOp::Logits,
            inputs: &narrow,
            targets,
            cols,
            weight: options.weight,
            pos_weight: options.pos_weight,
            reduction: options.reduction,
            grad_scale: options.grad_scale,
            alpha: 0.0,
            gamma: 0.0,
        },
        logits,
    )
}

/// torchvision's sigmoid focal loss on logits (`[N, C]`, `C = cols`).
pub fn sigmoid_focal_loss(
    logits: &[f32],
    targets: &[f32],
    cols: usize,
    options: &SigmoidFocalOptions,
) -> Result<LossReference> {
    sigmoid_focal_loss_f64(&widen(logits), targets, cols, options)
}

/// [`sigmoid_focal_loss`] on f64 logits.
pub fn sigmoid_focal_loss_f64(
    logits: &[f64],
    targets: &[f32],
    cols: usize,
    options: &SigmoidFocalOptions,
) -> Result<LossReference> {
    let narrow: Vec<f32> = logits.iter().map(|&v| v as f32).collect();
    binary_checked(
        BinaryCall {
            op: BinaryOp::SigmoidFocal,
            inputs: &narrow,
            targets,
            cols,
            weight: None,
            pos_weight: None,
            reduction: options.reduction,
            grad_scale: options.grad_scale,
            alpha: options.alpha,
            gamma: options.gamma,
        },
        logits,
    )
}

/// `z = H·Wᵀ + b` in f64 ([`crate::loss::linear_cross_entropy`]): `[N, V]`.
pub fn linear(
    hidden: &[f32],
    classifier: &[f32],
    bias: Option<&[f32]>,
    shape: LinearShape,
) -> Result<Vec<f64>> {
    shape.check(hidden.len(), classifier.len(), bias.map(<[f32]>::len))?;
    let LinearShape {
        rows,
        hidden: d,
        classes: v,
    } = shape;
    let mut z = vec![0.0; rows * v];
    for n in 0..rows {
        let h = &hidden[n * d..(n + 1) * d];
        for c in 0..v {
            let w = &classifier[c * d..(c + 1) * d];
            let dot: f64 = h
                .iter()
                .zip(w)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            z[n * v + c] = dot + bias.map_or(0.0, |b| f64::from(b[c]));
        }
    }
    Ok(z)
}

/// The reference's fused linear + cross-entropy, in f64: an explicit matrix
/// product, then [`cross_entropy_f64`], then the three gradient products.
#[derive(Clone, Debug)]
pub struct LinearCrossEntropyReference {
    /// As [`CrossEntropyReference::loss`].
    pub loss: Vec<f64>,
    /// As [`CrossEntropyReference::z_loss`].
    pub z_loss: Vec<f64>,
    /// Each row's logsumexp.
    pub lse: Vec<f64>,
    /// `dH = G·W`, `[N, D]`.
    pub grad_hidden: Vec<f64>,
    /// `dW = Gᵀ·H`, `[V, D]`.
    pub grad_classifier: Vec<f64>,
    /// `db = Σ_n G[n, ·]`, `[V]`.
    pub grad_bias: Vec<f64>,
    /// The logits `z`, `[N, V]`.
    pub logits: Vec<f64>,
    /// `G = ∂loss/∂z`, `[N, V]`.
    pub grad_logits: Vec<f64>,
}

/// Fused linear + cross-entropy on f32 inputs; see [`LinearCrossEntropyReference`].
pub fn linear_cross_entropy<T: ClassIndex>(
    hidden: &[f32],
    classifier: &[f32],
    bias: Option<&[f32]>,
    targets: &[T],
    shape: LinearShape,
    options: &CrossEntropyOptions<'_>,
) -> Result<LinearCrossEntropyReference> {
    let logits = linear(hidden, classifier, bias, shape)?;
    let LinearShape {
        rows,
        hidden: d,
        classes: v,
    } = shape;
    check_matrix("targets", targets.len(), rows, 1)?;
    let ce = cross_entropy_f64(&logits, targets, v, options)?;
    let g = &ce.grad;
    let mut grad_hidden = vec![0.0; rows * d];
    let mut grad_classifier = vec![0.0; v * d];
    let mut grad_bias = vec![0.0; v];
    for n in 0..rows {
        for c in 0..v {
            let gv = g[n * v + c];
            if gv == 0.0 {
                continue;
            }
            grad_bias[c] += gv;
            for k in 0..d {
                grad_hidden[n * d + k] += gv * f64::from(classifier[c * d + k]);
                grad_classifier[c * d + k] += gv * f64::from(hidden[n * d + k]);
            }
        }
    }
    Ok(LinearCrossEntropyReference {
        loss: ce.loss,
        z_loss: ce.z_loss,
        lse: ce.lse,
        grad_hidden,
        grad_classifier,
        grad_bias,
        logits,
        grad_logits: ce.grad,
    })
}
