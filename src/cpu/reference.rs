//! The f64 reference: a readable mirror of each shader's maths, accumulating
//! in f64, with the same PyTorch edge semantics. Slow on purpose; it is the oracle.

use crate::error::Result;
use crate::ops::cross_entropy::{checked_targets, ClassIndex, CrossEntropyOptions, IGNORED_ROW};
use crate::ops::{check_matrix, Reduction};

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
/// formulas in [`crate::ops::cross_entropy`] (f64 input lets finite
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
                let t = (x[j] / cv).tanh();
                g *= 1.0 - t * t;
            }
            grad[i * classes + j] = g;
        }
    }
    let (loss, z_loss) = match options.reduction {
        Reduction::None => (
            ce_rows.iter().zip(&z_rows).map(|(a, b)| a + b).collect(),
            z_rows,
        ),
        Reduction::Sum => {
            let zs: f64 = z_rows.iter().sum();
            (vec![ce_rows.iter().sum::<f64>() + zs], vec![zs])
        }
        Reduction::Mean => {
            let zs = if z > 0.0 {
                z_rows.iter().sum::<f64>() / kept_count
            } else {
                0.0
            };
            (vec![ce_rows.iter().sum::<f64>() / denom + zs], vec![zs])
        }
    };
    Ok(CrossEntropyReference {
        loss,
        z_loss,
        lse: lse_rows,
        grad,
    })
}
