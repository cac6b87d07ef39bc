//! The CPU side of `bench --op linear-cross-entropy`: the same chunked
//! algorithm as the GPU op (a chunk of rows' logits, the fast CPU
//! cross-entropy on it, then the gradient products) with `matrixmultiply`'s
//! sgemm for the products, split across cores with rayon.

use rayon::prelude::*;
use wgpu_loss::{CrossEntropyOptions, LinearShape, Reduction};

use crate::Result;

/// A strided matrix operand: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
struct Strided {
    ptr: usize,
    rs: isize,
    cs: isize,
}

fn of(x: &[f32], rs: usize, cs: usize) -> Strided {
    Strided {
        ptr: x.as_ptr() as usize,
        rs: rs as isize,
        cs: cs as isize,
    }
}

/// `c = beta·c + a·b` (`m x k` times `k x n`), the larger of `m` and `n`
/// split across rayon's threads; each thread writes its own block of `c`.
#[allow(clippy::too_many_arguments)]
fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: Strided,
    b: Strided,
    beta: f32,
    c: &mut [f32],
    c_rs: usize,
) {
    let threads = rayon::current_num_threads().max(1);
    let c_ptr = c.as_mut_ptr() as usize;
    let split_m = m >= n;
    let len = if split_m { m } else { n };
    let per = len.div_ceil(threads).max(1);
    (0..len.div_ceil(per)).into_par_iter().for_each(|part| {
        let start = part * per;
        let count = per.min(len - start);
        let (mm, nn) = if split_m { (count, n) } else { (m, count) };
        let (ai, bj, ci) = if split_m {
            (start as isize * a.rs, 0, start * c_rs)
        } else {
            (0, start as isize * b.cs, start)
        };
        // SAFETY: the pointers come from slices that outlive this call and
        // hold every element the strides reach for these (m, k, n); each
        // part writes a disjoint block of `c` (rows or columns `start..`).
        unsafe {
            matrixmultiply::sgemm(
                mm,
                k,
                nn,
                1.0,
                (a.ptr as *const f32).offset(ai),
                a.rs,
                a.cs,
                (b.ptr as *const f32).offset(bj),
                b.rs,
                b.cs,
                beta,
                (c_ptr as *mut f32).add(ci),
                c_rs as isize,
                1,
            );
        }
    });
}

/// `(dH, dW, db)`.
pub type LinearGradients = (Vec<f32>, Vec<f32>, Vec<f32>);

/// The fused loss on the CPU with default options (`mean`, no weights):
/// returns the loss and, with `grads`, `(dH, dW, db)`.
pub fn linear_cross_entropy_cpu(
    hidden: &[f32],
    classifier: &[f32],
    bias: &[f32],
    targets: &[i32],
    shape: LinearShape,
    chunk_rows: usize,
    grads: bool,
) -> Result<(f32, Option<LinearGradients>)> {
    let LinearShape {
        rows,
        hidden: d,
        classes: v,
    } = shape;
    shape.check(hidden.len(), classifier.len(), Some(bias.len()))?;
    let chunk = chunk_rows.clamp(1, rows.max(1));
    let mut z = vec![0.0f32; chunk * v];
    let mut g = if grads {
        vec![0.0f32; chunk * v]
    } else {
        Vec::new()
    };
    let mut dh = if grads {
        vec![0.0f32; rows * d]
    } else {
        Vec::new()
    };
    let mut dw = if grads {
        vec![0.0f32; v * d]
    } else {
        Vec::new()
    };
    let mut db = if grads { vec![0.0f32; v] } else { Vec::new() };
    // Sum per chunk, gradient scaled by the global mean's 1/N.
    let options = CrossEntropyOptions {
        reduction: Reduction::Sum,
        grad_scale: 1.0 / rows as f32,
        ..Default::default()
    };
    let mut total = 0.0f64;
    for r0 in (0..rows).step_by(chunk) {
        let n = chunk.min(rows - r0);
        let zc = &mut z[..n * v];
        for row in zc.chunks_mut(v) {
            row.copy_from_slice(bias);
        }
        let h = &hidden[r0 * d..(r0 + n) * d];
        gemm(n, d, v, of(h, d, 1), of(classifier, 1, d), 1.0, zc, v);
        let gc = grads.then(|| &mut g[..n * v]);
        let out = crate::cpu_fast::cross_entropy_into(zc, &targets[r0..r0 + n], v, &options, gc)?;
        total += f64::from(out.loss[0]);
        if grads {
            let gc = &g[..n * v];
            gemm(
                n,
                v,
                d,
                of(gc, v, 1),
                of(classifier, d, 1),
                0.0,
                &mut dh[r0 * d..(r0 + n) * d],
                d,
            );
            let beta = if r0 == 0 { 0.0 } else { 1.0 };
            gemm(v, n, d, of(gc, 1, v), of(h, d, 1), beta, &mut dw, d);
            db.par_iter_mut().enumerate().for_each(|(c, acc)| {
                let s: f32 = (0..n).map(|r| gc[r * v + c]).sum();
                *acc = if r0 == 0 { s } else { *acc + s };
            });
        }
    }
    Ok(((total / rows as f64) as f32, grads.then_some((dh, dw, db))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the f64 reference on a small problem in three chunks.
    #[test]
    fn matches_the_reference() {
        let shape = LinearShape {
            rows: 7,
            hidden: 5,
            classes: 11,
        };
        let h: Vec<f32> = (0..35).map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0).collect();
        let w: Vec<f32> = (0..55).map(|i| ((i * 5 % 17) as f32 - 8.0) / 8.0).collect();
        let b: Vec<f32> = (0..11).map(|i| i as f32 * 0.1).collect();
        let t: Vec<i32> = vec![0, 3, 10, 5, 5, 1, 9];
        let (loss, g) = linear_cross_entropy_cpu(&h, &w, &b, &t, shape, 3, true).expect("cpu");
        let r = wgpu_loss::reference::linear_cross_entropy(
            &h,
            &w,
            Some(&b),
            &t,
            shape,
            &CrossEntropyOptions::default(),
        )
        .expect("reference");
        assert!(
            (f64::from(loss) - r.loss[0]).abs() < 1e-5,
            "loss {loss} vs {}",
            r.loss[0]
        );
        let (dh, dw, db) = g.expect("grads");
        for (name, got, want) in [
            ("dH", dh, r.grad_hidden),
            ("dW", dw, r.grad_classifier),
            ("db", db, r.grad_bias),
        ] {
            for (i, (a, e)) in got.iter().zip(&want).enumerate() {
                assert!((f64::from(*a) - e).abs() < 1e-5, "{name}[{i}]: {a} vs {e}");
            }
        }
    }
}
