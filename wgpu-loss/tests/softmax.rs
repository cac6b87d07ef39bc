//! Softmax family on the GPU against the f64 reference, over awkward shapes,
//! offsets, masked entries, NaN rows, row windows and dispatch splits.

mod common;

use common::{assert_close, gpu, gpu_with_binding_cap, Rng};
use wgpu_loss::reference;
use wgpu_loss::{Error, GpuContext};

/// Random logits: normal(0, 3), some rows shifted by ±1e4, some entries masked
/// to -inf, and a NaN in every seventh row.
fn logits(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
    let mut x = rng.vec_normal(rows * cols, 3.0);
    for r in 0..rows {
        let row = &mut x[r * cols..(r + 1) * cols];
        match r % 4 {
            1 => row.iter_mut().for_each(|v| *v += 1e4),
            2 => row.iter_mut().for_each(|v| *v -= 1e4),
            _ => {}
        }
        if cols > 1 && r % 3 == 0 {
            for _ in 0..cols.div_ceil(8) {
                row[rng.below(cols)] = f32::NEG_INFINITY;
            }
        }
        if r % 7 == 5 {
            row[rng.below(cols)] = f32::NAN;
        }
    }
    x
}

/// Every forward and backward op at one shape, checked against the reference.
fn check_all_ops(ctx: &GpuContext, rows: usize, cols: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let x = logits(&mut rng, rows, cols);
    let tag = format!("[{rows}, {cols}]");

    let y = wgpu_loss::block_on(ctx.softmax(&x, rows, cols)).unwrap();
    assert_close(
        &format!("softmax {tag}"),
        &y,
        &reference::softmax(&x, rows, cols).unwrap(),
    );
    let ly = wgpu_loss::block_on(ctx.log_softmax(&x, rows, cols)).unwrap();
    assert_close(
        &format!("log_softmax {tag}"),
        &ly,
        &reference::log_softmax(&x, rows, cols).unwrap(),
    );
    let lse = wgpu_loss::block_on(ctx.logsumexp(&x, rows, cols)).unwrap();
    assert_close(
        &format!("logsumexp {tag}"),
        &lse,
        &reference::logsumexp(&x, rows, cols).unwrap(),
    );

    // Backward passes take finite forward outputs: use an unmasked input.
    let x = rng.vec_normal(rows * cols, 2.0);
    let dy = rng.vec_normal(rows * cols, 1.0);
    let y = wgpu_loss::block_on(ctx.softmax(&x, rows, cols)).unwrap();
    let dx = wgpu_loss::block_on(ctx.softmax_backward(&y, &dy, rows, cols)).unwrap();
    assert_close(
        &format!("softmax_backward {tag}"),
        &dx,
        &reference::softmax_backward(&y, &dy, rows, cols).unwrap(),
    );
    let ly = wgpu_loss::block_on(ctx.log_softmax(&x, rows, cols)).unwrap();
    let dx = wgpu_loss::block_on(ctx.log_softmax_backward(&ly, &dy, rows, cols)).unwrap();
    assert_close(
        &format!("log_softmax_backward {tag}"),
        &dx,
        &reference::log_softmax_backward(&ly, &dy, rows, cols).unwrap(),
    );
    let lse = wgpu_loss::block_on(ctx.logsumexp(&x, rows, cols)).unwrap();
    let dl = rng.vec_normal(rows, 1.0);
    let dx = wgpu_loss::block_on(ctx.logsumexp_backward(&x, &lse, &dl, rows, cols)).unwrap();
    assert_close(
        &format!("logsumexp_backward {tag}"),
        &dx,
        &reference::logsumexp_backward(&x, &lse, &dl, rows, cols).unwrap(),
    );
}

#[test]
fn awkward_column_counts() {
    let Some(ctx) = gpu() else { return };
    for (i, cols) in [1, 2, 3, 4, 5, 255, 256, 257, 1024, 4099, 100_003]
        .into_iter()
        .enumerate()
    {
        check_all_ops(ctx, 7, cols, 100 + i as u64);
    }
}

#[test]
fn a_million_columns() {
    let Some(ctx) = gpu() else { return };
    check_all_ops(ctx, 2, 1_000_003, 7);
    check_all_ops(ctx, 1, 1_048_576, 8);
}

/// On the GPU table an f32 row of 1024 lanes is held in registers up to
/// 8192 vectors a row, and a row that is not whole vec4s may span one more
/// (`HELD_SLOTS` in common.wgsl): 32767 and 32769 columns start at every
/// phase across 5 rows, so some rows span 8193 vectors, the last of them
/// read again rather than held. Held, and every op against the reference;
/// then the forward ops with a large logit in each row's last column, so
/// that the max and the sum depend on that vector (a random one's share of
/// the sum hides within the tolerance).
#[test]
fn rows_one_vector_past_the_registers_are_held_on_the_gpu_table() {
    let Some(ctx) = common::gpu_with_tuning(wgpu_loss::RowTuning::default()) else {
        return;
    };
    for (i, cols) in [32_767, 32_769].into_iter().enumerate() {
        let rows = 5;
        let plan = ctx.describe_row_plan(rows, cols);
        assert!(plan.contains("held in registers"), "{rows}x{cols}: {plan}");
        check_all_ops(&ctx, rows, cols, 500 + i as u64);
        let mut rng = Rng::new(600 + i as u64);
        let mut x = rng.vec_normal(rows * cols, 2.0);
        for r in 0..rows {
            x[r * cols + cols - 1] = 30.0;
        }
        let y = wgpu_loss::block_on(ctx.softmax(&x, rows, cols)).unwrap();
        assert_close(
            &format!("softmax [{rows}, {cols}], large last logits"),
            &y,
            &reference::softmax(&x, rows, cols).unwrap(),
        );
        let ly = wgpu_loss::block_on(ctx.log_softmax(&x, rows, cols)).unwrap();
        assert_close(
            &format!("log_softmax [{rows}, {cols}], large last logits"),
            &ly,
            &reference::log_softmax(&x, rows, cols).unwrap(),
        );
    }
}

/// The backward passes hold rows too: softmax backward y and dy (half the
/// registers each: 16384 f32 columns on 1024 lanes), log-softmax backward
/// dy alone (32768), one vector more where a row is not whole vec4s. On the
/// GPU table, held and streamed lengths, with a large logit in each row's
/// last column so that the dot product and the sum depend on the last
/// vector (which some rows hold past the registers): against the reference.
#[test]
fn backward_passes_of_held_rows_match_the_reference() {
    let Some(ctx) = common::gpu_with_tuning(wgpu_loss::RowTuning::default()) else {
        return;
    };
    let mut rng = Rng::new(16_383);
    let rows = 5;
    for cols in [1000, 4096, 16_383, 16_385, 32_767, 40_000] {
        let mut x = rng.vec_normal(rows * cols, 2.0);
        for r in 0..rows {
            x[r * cols + cols - 1] = 30.0;
        }
        let narrow = |v: Vec<f64>| v.into_iter().map(|e| e as f32).collect::<Vec<f32>>();
        let y = narrow(reference::softmax(&x, rows, cols).unwrap());
        let ly = narrow(reference::log_softmax(&x, rows, cols).unwrap());
        let dy = rng.vec_normal(rows * cols, 1.0);
        let dx = wgpu_loss::block_on(ctx.softmax_backward(&y, &dy, rows, cols)).unwrap();
        // Saturated rows: compared at the scale of the terms (the tolerance
        // policy's rule for softmax backward).
        let max_abs = |v: &[f32]| v.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
        let want = reference::softmax_backward(&y, &dy, rows, cols).unwrap();
        if let Some(m) =
            wgpu_loss::F32_TOLERANCE.first_mismatch_at_scale(&dx, &want, max_abs(&y) * max_abs(&dy))
        {
            panic!("softmax_backward [{rows}, {cols}]: {m}");
        }
        let dx = wgpu_loss::block_on(ctx.log_softmax_backward(&ly, &dy, rows, cols)).unwrap();
        assert_close(
            &format!("log_softmax_backward [{rows}, {cols}]"),
            &dx,
            &reference::log_softmax_backward(&ly, &dy, rows, cols).unwrap(),
        );
    }
}

#[test]
fn rows_past_the_dispatch_limit() {
    let Some(ctx) = gpu() else { return };
    assert!(70_001 > ctx.limits().max_compute_workgroups_per_dimension as usize);
    check_all_ops(ctx, 70_001, 3, 9);
    check_all_ops(ctx, 70_001, 4, 10);
}

#[test]
fn row_windows_on_a_small_binding_cap() {
    // 4 KiB bindings: a few rows per window, so every op runs as many windows
    // and host chunks, with windows starting at unaligned element offsets.
    let Some(ctx) = gpu_with_binding_cap(4096) else {
        return;
    };
    assert_eq!(ctx.max_binding_bytes(), 4096);
    for (cols, rows) in [(1, 3000), (7, 500), (12, 400), (250, 37), (1000, 9)] {
        check_all_ops(&ctx, rows, cols, cols as u64);
    }
    // One row that cannot fit in a binding is an error naming the sizes.
    let err = wgpu_loss::block_on(ctx.softmax(&vec![0.0; 2000], 1, 2000)).unwrap_err();
    match err {
        Error::RowTooLarge {
            cols,
            row_bytes,
            limit,
        } => {
            assert_eq!((cols, row_bytes, limit), (2000, 8000, 4096));
        }
        other => panic!("expected RowTooLarge, got {other}"),
    }
}

#[test]
fn data_larger_than_one_binding() {
    let Some(ctx) = gpu() else { return };
    let cols = 32_768;
    let rows = (ctx.max_binding_bytes() as usize / (cols * 4)) + 3;
    let mut rng = Rng::new(11);
    let x = rng.vec_normal(rows * cols, 2.0);
    let y = wgpu_loss::block_on(ctx.softmax(&x, rows, cols)).unwrap();
    assert_close(
        "softmax over several bindings",
        &y,
        &reference::softmax(&x, rows, cols).unwrap(),
    );
}

#[test]
fn pytorch_edge_semantics() {
    let Some(ctx) = gpu() else { return };
    let inf = f32::INFINITY;
    let x = [
        1234.0,
        0.0,
        3.0,
        -inf,
        -inf,
        -inf,
        f32::NAN,
        1.0,
        inf,
        0.0,
        5.0,
        5.0,
    ];
    let y = wgpu_loss::block_on(ctx.softmax(&x, 6, 2)).unwrap();
    assert_eq!(&y[0..2], &[1.0, 0.0], "[1234, 0] gives [1, 0]");
    assert_eq!(&y[2..4], &[1.0, 0.0], "-inf gets probability 0");
    assert!(
        y[4..10].iter().all(|v| v.is_nan()),
        "all -inf, NaN and +inf rows are NaN: {y:?}"
    );
    assert_eq!(
        &y[10..12],
        &[0.5, 0.5],
        "the NaN row leaves other rows alone"
    );
    let ly = wgpu_loss::block_on(ctx.log_softmax(&x, 6, 2)).unwrap();
    assert_eq!(ly[3], f32::NEG_INFINITY);
    assert!(ly[4..10].iter().all(|v| v.is_nan()));
    let lse = wgpu_loss::block_on(ctx.logsumexp(&x, 6, 2)).unwrap();
    assert_eq!(lse[0], 1234.0);
    assert_eq!(lse[2], f32::NEG_INFINITY, "all -inf row");
    assert!(lse[3].is_nan(), "NaN row");
    assert_eq!(lse[4], inf, "+inf row, as torch.logsumexp");
    assert_close(
        "edge logsumexp",
        &lse,
        &reference::logsumexp(&x, 6, 2).unwrap(),
    );
}

#[test]
fn adding_ten_thousand_changes_nothing() {
    let Some(ctx) = gpu() else { return };
    let (rows, cols) = (5, 1000);
    let mut rng = Rng::new(12);
    // Multiples of 2^-10 with |x| < 8: x + 1e4 is exact in f32.
    let x: Vec<f32> = (0..rows * cols)
        .map(|_| (rng.uniform(-8.0, 8.0) * 1024.0).round() / 1024.0)
        .collect();
    let shifted: Vec<f32> = x.iter().map(|v| v + 1e4).collect();
    let y = wgpu_loss::block_on(ctx.softmax(&x, rows, cols)).unwrap();
    let ys = wgpu_loss::block_on(ctx.softmax(&shifted, rows, cols)).unwrap();
    let y64: Vec<f64> = y.iter().map(|&v| f64::from(v)).collect();
    assert_close("softmax(x + 1e4) vs softmax(x)", &ys, &y64);
    let ly = wgpu_loss::block_on(ctx.log_softmax(&x, rows, cols)).unwrap();
    let lys = wgpu_loss::block_on(ctx.log_softmax(&shifted, rows, cols)).unwrap();
    let ly64: Vec<f64> = ly.iter().map(|&v| f64::from(v)).collect();
    assert_close("log_softmax(x + 1e4) vs log_softmax(x)", &lys, &ly64);
}

#[test]
fn bad_shapes_are_errors() {
    let Some(ctx) = gpu() else { return };
    assert!(matches!(
        wgpu_loss::block_on(ctx.softmax(&[1.0; 5], 2, 3)),
        Err(Error::LengthMismatch {
            expected: 6,
            actual: 5,
            ..
        })
    ));
    assert!(matches!(
        wgpu_loss::block_on(ctx.softmax(&[] as &[f32], 3, 0)),
        Err(Error::ZeroCols)
    ));
    assert!(matches!(
        wgpu_loss::block_on(ctx.softmax_backward(&[1.0; 6], &[1.0; 5], 2, 3)),
        Err(Error::LengthMismatch { what: "dy", .. })
    ));
    assert!(matches!(
        wgpu_loss::block_on(ctx.logsumexp_backward(&[1.0; 6], &[1.0; 2], &[1.0; 3], 2, 3)),
        Err(Error::LengthMismatch { what: "dy", .. })
    ));
    assert!(matches!(
        wgpu_loss::block_on(ctx.softmax(&[] as &[f32], usize::MAX, 2)),
        Err(Error::ShapeOverflow { .. })
    ));
    // Zero rows is an empty result, not an error.
    assert_eq!(
        wgpu_loss::block_on(ctx.softmax(&[] as &[f32], 0, 3)).unwrap(),
        Vec::<f32>::new()
    );
    assert_eq!(
        wgpu_loss::block_on(ctx.logsumexp(&[] as &[f32], 0, 3)).unwrap(),
        Vec::<f32>::new()
    );
}

#[test]
fn pipelines_are_built_once() {
    let Some(ctx) = gpu_with_binding_cap(1 << 20) else {
        return;
    };
    let x = vec![0.5f32; 64];
    wgpu_loss::block_on(ctx.softmax(&x, 4, 16)).unwrap();
    let built = ctx.pipelines_built();
    for _ in 0..5 {
        wgpu_loss::block_on(ctx.softmax(&x, 4, 16)).unwrap();
    }
    assert_eq!(
        ctx.pipelines_built(),
        built,
        "repeated calls must reuse the cached pipeline"
    );
}

#[test]
fn results_are_bitwise_reproducible() {
    let Some(ctx) = gpu() else { return };
    let mut rng = Rng::new(13);
    let x = rng.vec_normal(16 * 5000, 4.0);
    let first = wgpu_loss::block_on(ctx.log_softmax(&x, 16, 5000)).unwrap();
    for _ in 0..9 {
        let again = wgpu_loss::block_on(ctx.log_softmax(&x, 16, 5000)).unwrap();
        assert!(first
            .iter()
            .zip(&again)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

/// The backward passes split rows too (issue 17, item 3): softmax and
/// log-softmax backward take each chunk's sum (of `y·dy`, of `dy`) from a
/// partial pass; logsumexp backward needs nothing of the rest of its row.
/// Forced with a GPU-like tuning that splits every row of these shapes.
#[test]
fn backward_passes_of_split_rows_match_the_reference() {
    let Some(ctx) = common::gpu_with_tuning(common::splitting_tuning()) else {
        return;
    };
    let mut rng = Rng::new(977);
    for (rows, cols) in [(1, 1000), (3, 4099), (2, 20_000)] {
        assert!(
            ctx.describe_row_plan(rows, cols).contains("rows split"),
            "{}",
            ctx.describe_row_plan(rows, cols)
        );
        let x = rng.vec_normal(rows * cols, 2.0);
        let dy = rng.vec_normal(rows * cols, 1.0);
        let tag = format!("split {rows}x{cols}");
        let y: Vec<f32> = reference::softmax(&x, rows, cols)
            .unwrap()
            .iter()
            .map(|&v| v as f32)
            .collect();
        let want = reference::softmax_backward(&y, &dy, rows, cols).unwrap();
        let got = wgpu_loss::block_on(ctx.softmax_backward(&y, &dy, rows, cols)).unwrap();
        assert_close(&format!("{tag} softmax backward"), &got, &want);
        let ly: Vec<f32> = reference::log_softmax(&x, rows, cols)
            .unwrap()
            .iter()
            .map(|&v| v as f32)
            .collect();
        let want = reference::log_softmax_backward(&ly, &dy, rows, cols).unwrap();
        let got = wgpu_loss::block_on(ctx.log_softmax_backward(&ly, &dy, rows, cols)).unwrap();
        assert_close(&format!("{tag} log-softmax backward"), &got, &want);
        let lse: Vec<f32> = reference::logsumexp(&x, rows, cols)
            .unwrap()
            .iter()
            .map(|&v| v as f32)
            .collect();
        let dlse = rng.vec_normal(rows, 1.0);
        let want = reference::logsumexp_backward(&x, &lse, &dlse, rows, cols).unwrap();
        let got = wgpu_loss::block_on(ctx.logsumexp_backward(&x, &lse, &dlse, rows, cols)).unwrap();
        assert_close(&format!("{tag} logsumexp backward"), &got, &want);
    }
}
