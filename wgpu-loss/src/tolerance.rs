//! The one tolerance policy every test comparison with the f64 reference
//! uses (`wgpu-loss bench` reports [`max_abs_error`] instead of a verdict).
//!
//! An f32 result `a` matches the reference `e` when
//! - both are NaN, or both are the same infinity, or
//! - `|a - e| <= ATOL · S + RTOL · |e|`, where `S` is the largest finite `|e|`
//!   in the compared tensor (so absolute error is judged against the tensor's scale).
//!
//! NaN never matches a number, and a number never matches NaN. A difference
//! below the smallest normal f32 (2^-126) always matches: an f32 result
//! cannot express it, and GPUs may flush such values to zero.
//!
//! Where a kernel's output is a difference of terms much larger than the
//! output itself, `S` is the size of those terms instead
//! ([`Tolerance::first_mismatch_at_scale`]): softmax backward computes
//! `y ⊙ (dy - Σ y·dy)`, and in a saturated row (`y_max` within f32's epsilon
//! of 1) that difference is far below `|dy|`, so no f32 kernel can resolve it
//! more finely than `eps · max|y| · max|dy|`. Tests pass that scale for the
//! backward passes and nothing else.

/// Matrix products (`linear`, the fused linear + cross-entropy). An f32
/// sum of `K` products, in any fixed order, differs from the exact sum by at
/// most `K·u·T` and in practice by about `√K·u·T`, where `u = 2^-24` and `T`
/// is the sum of the terms' magnitudes `Σ|a_k·b_k|`. A result computed from
/// such a product is therefore compared at scale `S` of at least
/// [`product_scale`]`(K, T')`, where `T'` is `T` carried through to that
/// result (times the result's sensitivity to the product: for a loss, the
/// weight on the row; for a gradient product, the magnitude of what it is
/// multiplied with). This is the rule's only growth with `K`; the pair
/// stays the output's: [`F32_TOLERANCE`], or [`F16_TOLERANCE`] /
/// [`BF16_TOLERANCE`] for gradients stored in 16 bits (the product's
/// inputs, rounded to 16 bits, are what the reference sees).
pub const PRODUCT_ULPS: f64 = 16.0;

/// The scale `S` at which a result downstream of a product of depth
/// `depth` and term magnitude `terms` is compared (see [`PRODUCT_ULPS`]):
/// `F32_TOLERANCE.atol · S = PRODUCT_ULPS · √depth · 2^-24 · terms`.
pub fn product_scale(depth: usize, terms: f64) -> f64 {
    PRODUCT_ULPS * (depth.max(1) as f64).sqrt() * f64::from(f32::EPSILON) / 2.0 * terms
        / F32_TOLERANCE.atol
}

/// The comparison scale `S` of each output of the fused linear +
/// cross-entropy, by the [`PRODUCT_ULPS`] rule: the logits' error (a
/// product of depth `D`, term magnitude `T_z`) carried through the loss and
/// the gradients, plus the gradient products' own (depth `V` for `dH`, `N`
/// for `dW` and `db`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinearScales {
    /// For the loss (one value, or one per row).
    pub loss: f64,
    /// For each row's lse.
    pub lse: f64,
    /// For `dH`.
    pub grad_hidden: f64,
    /// For `dW`.
    pub grad_classifier: f64,
    /// For `db`.
    pub grad_bias: f64,
}

impl LinearScales {
    /// The scales for one problem, from its inputs and its f64 reference.
    pub fn of(
        hidden: &[f32],
        classifier: &[f32],
        bias: Option<&[f32]>,
        shape: crate::loss::linear_cross_entropy::LinearShape,
        options: &crate::CrossEntropyOptions<'_>,
        reference: &crate::reference::LinearCrossEntropyReference,
    ) -> LinearScales {
        let (rows, d, v) = (shape.rows, shape.hidden, shape.classes);
        let finite_max =
            |it: &mut dyn Iterator<Item = f64>| it.filter(|x| x.is_finite()).fold(0.0f64, f64::max);
        // T_z: the largest Σ_d |h·w| + |b| over every logit.
        let tz = finite_max(&mut (0..rows * v).map(|i| {
            let (n, c) = (i / v, i % v);
            (0..d)
                .map(|k| {
                    f64::from(hidden[n * d + k]).abs() * f64::from(classifier[c * d + k]).abs()
                })
                .sum::<f64>()
                + bias.map_or(0.0, |b| f64::from(b[c]).abs())
        }));
        let wmax = options
            .weight
            .map_or(1.0, |w| finite_max(&mut w.iter().map(|x| f64::from(*x))));
        let lse_max = finite_max(&mut reference.lse.iter().map(|x| x.abs()));
        // A logit error δ moves lse and a row loss by at most 2δ (times the
        // weight, and 2·z·|lse| more with z-loss); `sum` adds N rows of it.
        let rows_in_sum = if options.reduction == crate::Reduction::Sum {
            rows as f64
        } else {
            1.0
        };
        let loss_sens =
            2.0 * wmax * (1.0 + 2.0 * f64::from(options.z_loss) * lse_max) * rows_in_sum;
        let g = &reference.grad_logits;
        let g_row =
            finite_max(&mut (0..rows).map(|n| g[n * v..(n + 1) * v].iter().map(|x| x.abs()).sum()));
        let g_col = finite_max(&mut (0..v).map(|c| (0..rows).map(|n| g[n * v + c].abs()).sum()));
        let max_abs = |x: &[f32]| finite_max(&mut x.iter().map(|v| f64::from(*v).abs()));
        let (wm, hm) = (max_abs(classifier), max_abs(hidden));
        // G moves by about 2δ·|G| per element when a logit moves by δ.
        let carried = |sum_g: f64, other: f64| product_scale(d, tz * 2.0 * sum_g * other);
        LinearScales {
            loss: product_scale(d, tz * loss_sens),
            lse: product_scale(d, tz),
            grad_hidden: carried(g_row, wm) + product_scale(v, g_row * wm),
            grad_classifier: carried(g_col, hm) + product_scale(rows, g_col * hm),
            grad_bias: carried(g_col, 1.0) + product_scale(rows, g_col),
        }
    }
}

/// `f32::MIN_POSITIVE` (2^-126): the floor of every allowed difference.
pub const SMALLEST_NORMAL_F32: f64 = 1.1754943508222875e-38;

/// Absolute/relative tolerance pair.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Allowed error as a fraction of the tensor's largest finite magnitude.
    pub atol: f64,
    /// Allowed error as a fraction of the element's own magnitude.
    pub rtol: f64,
}

/// The tolerance for f32 kernels (GPU and fast CPU) against the f64 reference.
///
/// `atol` is 4e-6 of the tensor's scale: Vulkan lets `exp(x)` be off by
/// `3 + 2|x|` ULP, 31 ULP ≈ 3.7e-6 relative at `|x| = 14 ≈ ln 10^6`, the
/// log-probabilities of a million-class row. (It was 1e-6 until the property
/// tests met a 838,353-class row whose gradients all sit near `1/C`.)
pub const F32_TOLERANCE: Tolerance = Tolerance {
    atol: 4e-6,
    rtol: 1e-4,
};

/// The tolerance for f16-stored outputs (f32 arithmetic, f16 inputs and
/// outputs) against the f64 reference on the same f16-rounded inputs: one
/// f16 rounding is a relative error of at most 2^-11 ≈ 4.9e-4.
pub const F16_TOLERANCE: Tolerance = Tolerance {
    atol: 1e-3,
    rtol: 2e-3,
};

/// The tolerance for bf16-stored outputs (f32 arithmetic, bf16 inputs and
/// outputs) against the f64 reference on the same bf16-rounded inputs: bf16
/// keeps 8 significant bits, so one rounding is a relative error of at most
/// 2^-8 ≈ 3.9e-3; the bounds are [`F16_TOLERANCE`]'s multiples of it.
pub const BF16_TOLERANCE: Tolerance = Tolerance {
    atol: 8e-3,
    rtol: 1.6e-2,
};

/// The first element that fails the tolerance.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    /// Flat index.
    pub index: usize,
    /// Value under test.
    pub actual: f32,
    /// Reference value.
    pub expected: f64,
    /// `|actual - expected|` (NaN where one side is NaN).
    pub diff: f64,
    /// The error allowed at this element.
    pub allowed: f64,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "index {}: actual {:e}, expected {:e}, diff {:e}, allowed {:e}",
            self.index, self.actual, self.expected, self.diff, self.allowed
        )
    }
}

/// Largest finite `|e|` in `expected` (the `S` of the policy).
pub fn scale_of(expected: &[f64]) -> f64 {
    expected
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f64, |m, v| m.max(v.abs()))
}

impl Tolerance {
    /// The first mismatch, or `None` when every element matches. Lengths must agree;
    /// a length difference is reported as a mismatch at the first missing index.
    pub fn first_mismatch(&self, actual: &[f32], expected: &[f64]) -> Option<Mismatch> {
        self.first_mismatch_at_scale(actual, expected, 0.0)
    }

    /// [`Tolerance::first_mismatch`] with `S` at least `terms_scale`: the
    /// magnitude of the terms the kernel combined (see the module docs).
    pub fn first_mismatch_at_scale(
        &self,
        actual: &[f32],
        expected: &[f64],
        terms_scale: f64,
    ) -> Option<Mismatch> {
        let scale = scale_of(expected).max(terms_scale);
        for (index, (&a, &e)) in actual.iter().zip(expected).enumerate() {
            // Below the smallest normal f32 nothing is expressible (GPUs may
            // flush denormals to zero): such differences are not errors.
            let allowed = (self.atol * scale + self.rtol * e.abs()).max(SMALLEST_NORMAL_F32);
            let a64 = f64::from(a);
            let ok = if e.is_nan() || a.is_nan() {
                e.is_nan() && a.is_nan()
            } else if e.is_infinite() || a.is_infinite() {
                a64 == e
            } else {
                (a64 - e).abs() <= allowed
            };
            if !ok {
                return Some(Mismatch {
                    index,
                    actual: a,
                    expected: e,
                    diff: (a64 - e).abs(),
                    allowed,
                });
            }
        }
        if actual.len() != expected.len() {
            let index = actual.len().min(expected.len());
            return Some(Mismatch {
                index,
                actual: actual.get(index).copied().unwrap_or(f32::NAN),
                expected: expected.get(index).copied().unwrap_or(f64::NAN),
                diff: f64::NAN,
                allowed: 0.0,
            });
        }
        None
    }
}

/// Largest `|a - e|` over elements where both are finite (for reports).
pub fn max_abs_error(actual: &[f32], expected: &[f64]) -> f64 {
    actual
        .iter()
        .zip(expected)
        .filter(|(a, e)| a.is_finite() && e.is_finite())
        .fold(0.0, |m, (&a, &e)| m.max((f64::from(a) - e).abs()))
}
