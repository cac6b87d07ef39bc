//! `bench`'s options (issue 17: `eval`'s option names, random weights where
//! `eval` takes a file, in-place gradients) reach every path it times: the
//! resident GPU op, the fast CPU path and the f64 reference agree under
//! them, they change the result, and a sample of rows stands as it does in
//! the whole problem with ignored rows and class weights.

#[path = "../../wgpu-loss/tests/common/mod.rs"]
mod common;

use common::{assert_close, gpu};
use wgpu_loss::{DType, Reduction};
use wgpu_loss_cli::bench::{
    self, BenchInput, BenchOptions, CpuFastOp, GradPlacement, Op, ResidentOp,
};
use wgpu_loss_cli::problem::Settings;

fn every_option(reduction: Reduction, grad: GradPlacement) -> BenchOptions {
    BenchOptions {
        settings: Settings {
            reduction,
            ignore_index: 3,
            label_smoothing: 0.1,
            z_loss: 1e-3,
            softcap: Some(20.0),
            alpha: None,
            gamma: 1.5,
        },
        random_weight: true,
        random_pos_weight: true,
        grad,
    }
}

#[test]
fn every_path_runs_with_the_options() {
    let Some(ctx) = gpu() else { return };
    let (rows, cols) = (37, 301);
    for (reduction, grad) in [
        (Reduction::Mean, GradPlacement::Separate),
        (Reduction::Sum, GradPlacement::InPlace),
        (Reduction::None, GradPlacement::Separate),
    ] {
        let options = every_option(reduction, grad);
        let input = BenchInput::new(rows, cols)
            .expect("shape")
            .with_options(options);
        let plain = BenchInput::new(rows, cols).expect("shape");
        for op in Op::ALL {
            let tag = format!("{} {reduction:?} {grad:?}", op.name());
            let expected = bench::run_cpu(op, &input).expect("reference");
            let resident = ResidentOp::new(ctx, op, &input, DType::F32).expect("upload");
            resident.run().expect("runs");
            let gpu_result = resident.read_main().expect("reads");
            assert_close(&format!("{tag} gpu-kernel"), &gpu_result, &expected);
            let end_to_end =
                wgpu_loss::block_on(bench::run_end_to_end(ctx, op, &input)).expect("runs");
            assert_close(&format!("{tag} gpu-end-to-end"), &end_to_end, &expected);
            let fast = CpuFastOp::new(op, &input)
                .expect("a fast path")
                .run()
                .expect("runs");
            assert_close(&format!("{tag} cpu"), &fast, &expected);
            if op.softmax_op().is_none() {
                let default = bench::run_cpu(op, &plain).expect("reference");
                assert!(
                    default.len() != expected.len()
                        || default
                            .iter()
                            .zip(&expected)
                            .any(|(a, b)| (a - b).abs() > 1e-6),
                    "{tag}: the options changed nothing"
                );
            }
        }
    }
}

/// A sample's reference is the first rows as they stand in the whole
/// problem: with ignored rows and class weights, the `mean` denominator is
/// the whole problem's weight of kept rows, not its row count.
#[test]
fn a_sample_of_rows_keeps_the_whole_problems_denominator() {
    let input = BenchInput::new(500, 40)
        .expect("shape")
        .with_options(every_option(Reduction::Mean, GradPlacement::Separate));
    for op in Op::ALL {
        let whole = bench::run_cpu(op, &input).expect("reference");
        match bench::run_cpu_sample(op, &input, 9).expect("sample") {
            None => assert_eq!(op, Op::CrossEntropyLoss, "only the one mean has no sample"),
            Some(sample) => {
                assert!(!sample.is_empty(), "{}", op.name());
                // The window plan carries the scale 1 / D (and z D / K) as
                // f32: a rounding of ~6e-8 relative; a wrong denominator is
                // off by percents.
                for (i, (s, w)) in sample.iter().zip(&whole).enumerate() {
                    assert!(
                        (s - w).abs() <= 2e-7 * w.abs() + 1e-15,
                        "{} index {i}: actual {s:e}, expected {w:e}, difference {:e}",
                        op.name(),
                        (s - w).abs()
                    );
                }
            }
        }
    }
}
