//! The traffic plan (`GpuContext::record_plan`): every dispatch an encode
//! call records, with the bytes it moves, held to issue 17's bounds on the
//! GPU table (forced on lavapipe): cross-entropy loss + gradient with every
//! option within 1.05 times the ideal bytes for C <= 32768 (f32) and
//! C <= 65536 (f16, bf16), and no pass of one workgroup walking more than
//! 65,536 items.

mod common;

use common::{gpu_with_tuning, Arena, Rng};
use wgpu_loss::{
    CrossEntropyOptions, CrossEntropyViews, DType, Dispatch, GpuContext, GpuTensor, GradOutput,
    Reduction, RowTuning,
};

/// Records cross-entropy with index targets over `[rows, cols]` f32 logits,
/// and returns the plan and the ideal bytes (logits read once, gradient
/// written once, targets, weights and the losses once).
fn cross_entropy_plan(
    ctx: &GpuContext,
    shape: (usize, usize),
    grad: bool,
    options: &CrossEntropyOptions<'_, [f32]>,
) -> (Vec<Dispatch>, u64) {
    cross_entropy_plan_of(ctx, shape, DType::F32, grad, options)
}

/// [`cross_entropy_plan`] with logits and gradient stored as `dtype`.
fn cross_entropy_plan_of(
    ctx: &GpuContext,
    (rows, cols): (usize, usize),
    dtype: DType,
    grad: bool,
    options: &CrossEntropyOptions<'_, [f32]>,
) -> (Vec<Dispatch>, u64) {
    let mut rng = Rng::new(400 + cols as u64);
    let n = rows * cols;
    let mut a = Arena::new(ctx, (n * 8 + rows * 16 + cols * 4) as u64 + 4096);
    let x = rng.vec_normal(n, 2.0);
    let xo = match dtype {
        DType::F32 => a.put(ctx, &x),
        DType::F16 => a.put(
            ctx,
            &x.iter()
                .map(|&v| half::f16::from_f32(v))
                .collect::<Vec<_>>(),
        ),
        DType::BF16 => a.put(
            ctx,
            &x.iter()
                .map(|&v| half::bf16::from_f32(v))
                .collect::<Vec<_>>(),
        ),
        DType::I32 => panic!("no i32 logits"),
    };
    let t: Vec<i32> = (0..rows)
        .map(|r| {
            if r % 7 == 3 {
                -100
            } else {
                rng.below(cols) as i32
            }
        })
        .collect();
    let to = a.put(ctx, &t);
    let weights: Vec<f32> = (0..cols).map(|_| rng.uniform(0.5, 2.0)).collect();
    let wo = a.put(ctx, &weights);
    let go = a.reserve(n);
    let reduced = options.reduction != Reduction::None;
    let loss_len = if reduced { 2 } else { rows };
    let lo = a.reserve(loss_len);
    let matrix_view = |offset| match dtype {
        DType::F32 => GpuTensor::f32_matrix(&a.buffer, offset, rows, cols),
        DType::F16 => GpuTensor::f16_matrix(&a.buffer, offset, rows, cols),
        DType::BF16 => GpuTensor::bf16_matrix(&a.buffer, offset, rows, cols),
        DType::I32 => panic!("no i32 logits"),
    };
    let w = GpuTensor::f32_vector(&a.buffer, wo, cols);
    let views = CrossEntropyViews {
        logits: matrix_view(xo),
        targets: GpuTensor::i32_vector(&a.buffer, to, rows),
        loss: GpuTensor::f32_vector(&a.buffer, lo, loss_len),
        grad: if grad {
            GradOutput::Into(matrix_view(go))
        } else {
            GradOutput::None
        },
        lse: None,
    };
    let gpu_options = options.with_weight(options.weight.map(|_| &w));
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    let (result, plan) =
        ctx.record_plan(|| ctx.encode_cross_entropy(&mut enc, &views, &gpu_options));
    result.expect("encodes");
    ctx.queue().submit([enc.finish()]);
    let matrix = n as u64 * dtype.size();
    let ideal = matrix * (1 + u64::from(grad))
        + rows as u64 * 4
        + if options.weight.is_some() {
            cols as u64 * 4
        } else {
            0
        }
        + loss_len as u64 * 4;
    (plan, ideal)
}

fn total(plan: &[Dispatch]) -> u64 {
    plan.iter().map(|d| d.bytes_read + d.bytes_written).sum()
}

fn table(plan: &[Dispatch]) -> String {
    plan.iter()
        .map(|d| {
            format!(
                "  {:<28} {:>8} workgroups {:>10} items/wg {:>12} B read {:>12} B written\n",
                d.kernel, d.workgroups, d.items_per_workgroup, d.bytes_read, d.bytes_written
            )
        })
        .collect()
}

fn every_option(weights: &[f32]) -> CrossEntropyOptions<'_> {
    CrossEntropyOptions {
        weight: Some(weights),
        label_smoothing: 0.1,
        z_loss: 1e-4,
        softcap: Some(30.0),
        reduction: Reduction::Mean,
        ..Default::default()
    }
}

#[test]
fn loss_and_gradient_with_every_option_move_at_most_1_05_times_the_ideal_bytes_on_the_gpu_table() {
    let Some(ctx) = gpu_with_tuning(RowTuning::default()) else {
        return;
    };
    let w = [1.0f32];
    for (rows, cols) in [
        (256, 32768),
        // Not whole vec4s: rows of some phases span 8193 vectors at 32766,
        // 32767 and 32769, one past the registers of 1024 lanes
        // (`HELD_SLOTS`; 32765 spans at most 8192); 32769 is past the
        // issue's bound, held all the same.
        (256, 32767),
        (256, 32766),
        (256, 32765),
        (256, 32769),
        (512, 4096),
        (1024, 1000),
        (2048, 128),
        (64, 8),
    ] {
        for (what, options) in [
            ("every option", every_option(&w)),
            ("no option", CrossEntropyOptions::default()),
        ] {
            let (plan, ideal) = cross_entropy_plan(&ctx, (rows, cols), true, &options);
            // Besides the matrices, each row's results go to scratch (16
            // bytes) and back for the reduction (16), and the denominator
            // pass reads its target again (4): 36 bytes a row, 3.5% of the
            // ideal at C = 128, more than 5% below C = 90 (the last shape).
            let allowed = 1.05 * ideal as f64 + if cols < 128 { 36.0 * rows as f64 } else { 0.0 };
            let ratio = total(&plan) as f64 / ideal as f64;
            assert!(
                total(&plan) as f64 <= allowed,
                "[{rows}, {cols}] {what}: {ratio:.3} times the ideal {ideal} bytes\n{}",
                table(&plan)
            );
        }
    }
}

/// f16 and bf16 rows of up to 65536 columns are held on the GPU table (16
/// packed vectors a lane of 1024), whole or edged (GPT-2's 50257 classes):
/// read once, within 1.05 times the ideal bytes, every option included.
#[test]
fn sixteen_bit_rows_of_up_to_65536_columns_are_read_once_on_the_gpu_table() {
    let Some(ctx) = gpu_with_tuning(RowTuning::default()) else {
        return;
    };
    let w = [1.0f32];
    for dtype in [DType::BF16, DType::F16] {
        // 64 rows at least: the class weights' vector (4 bytes a class) is
        // read once more by the denominator pass, 1/rows of the ideal.
        for (rows, cols) in [
            (64, 65_536),
            (64, 65_535),
            (64, 65_534),
            (64, 50_257),
            (64, 32_769),
            (1024, 20_001),
        ] {
            for (what, options) in [
                ("every option", every_option(&w)),
                ("no option", CrossEntropyOptions::default()),
            ] {
                let (plan, ideal) =
                    cross_entropy_plan_of(&ctx, (rows, cols), dtype, true, &options);
                let ratio = total(&plan) as f64 / ideal as f64;
                assert!(
                    ratio <= 1.05,
                    "{dtype:?} [{rows}, {cols}] {what}: {ratio:.3} times the ideal {ideal} bytes\n{}",
                    table(&plan)
                );
            }
        }
    }
}

/// The same plan on lavapipe's CPU table, whose lanes stream a row twice
/// (statistics, then gradient): 12 bytes for 8 ideal, which the plan shows.
/// (The bound above is not a property of any table.)
#[test]
fn streamed_rows_show_their_second_read() {
    let Some(ctx) = gpu_with_tuning(RowTuning::for_adapter(wgpu::DeviceType::Cpu, None)) else {
        return;
    };
    let (plan, ideal) = cross_entropy_plan(&ctx, (64, 32768), true, &Default::default());
    let ratio = total(&plan) as f64 / ideal as f64;
    assert!(
        (1.45..=1.55).contains(&ratio),
        "{ratio:.3} times the ideal\n{}",
        table(&plan)
    );
    // The loss alone reads the logits once.
    let (plan, ideal) = cross_entropy_plan(&ctx, (64, 32768), false, &Default::default());
    let ratio = total(&plan) as f64 / ideal as f64;
    assert!(
        ratio <= 1.05,
        "{ratio:.3} times the ideal\n{}",
        table(&plan)
    );
}

/// Softmax and log-softmax backward read y and dy once where their rows
/// are held on the GPU table (softmax backward holds both, half the
/// registers each: 16384 f32 columns on 1024 lanes; log-softmax backward dy
/// alone: 32768): within 1.05 times the ideal bytes (y and dy read once, dx
/// written once). Past that they stream, and the plan shows the second read.
#[test]
fn backward_passes_of_held_rows_read_each_input_once_on_the_gpu_table() {
    let Some(ctx) = gpu_with_tuning(RowTuning::default()) else {
        return;
    };
    let mut rng = Rng::new(77);
    for (rows, cols, softmax_held, log_softmax_held) in [
        (2048, 128, true, true),
        (1024, 1000, true, true),
        (512, 4096, true, true),
        (256, 16_384, true, true),
        (256, 16_385, true, true),
        (256, 16_386, false, true),
        (256, 32_767, false, true),
        (256, 32_772, false, false),
    ] {
        let n = rows * cols;
        let y = rng.vec_normal(n, 1.0);
        let dy = rng.vec_normal(n, 1.0);
        let ideal = 3 * n as u64 * 4;
        for (op, held) in [("softmax", softmax_held), ("log-softmax", log_softmax_held)] {
            let (result, plan) = ctx.record_plan(|| {
                if op == "softmax" {
                    wgpu_loss::block_on(ctx.softmax_backward(&y, &dy, rows, cols))
                } else {
                    wgpu_loss::block_on(ctx.log_softmax_backward(&y, &dy, rows, cols))
                }
            });
            result.expect("runs");
            let ratio = total(&plan) as f64 / ideal as f64;
            let fits = if held { ratio <= 1.05 } else { ratio >= 1.3 };
            assert!(
                fits,
                "{op} backward [{rows}, {cols}], held {held}: {ratio:.3} times the ideal {ideal} bytes\n{}",
                table(&plan)
            );
        }
    }
}

#[test]
fn no_pass_of_one_workgroup_walks_more_than_65536_items_on_the_gpu_table() {
    let Some(ctx) = gpu_with_tuning(RowTuning::default()) else {
        return;
    };
    let w = [1.0f32];
    for (rows, cols) in [(1, 1_000_000), (4, 262_144), (1_048_576, 4), (300_000, 1)] {
        for grad in [false, true] {
            let (plan, _) = cross_entropy_plan(&ctx, (rows, cols), grad, &every_option(&w));
            for d in plan.iter().filter(|d| d.workgroups == 1) {
                assert!(
                    d.items_per_workgroup <= 65_536,
                    "[{rows}, {cols}] grad={grad}: {} walks {} items in one workgroup\n{}",
                    d.kernel,
                    d.items_per_workgroup,
                    table(&plan)
                );
            }
        }
    }
}

/// The plan is what was recorded: one dispatch per pass, in order, the
/// row kernel writing exactly the gradient's bytes, and nothing recorded
/// outside `record_plan`. 512 rows are one block of each blocked
/// reduction, which then finishes in its partial pass (no fold).
#[test]
fn the_plan_is_the_recorded_dispatches() {
    let Some(ctx) = gpu_with_tuning(RowTuning::default()) else {
        return;
    };
    let w = [1.0f32];
    let (rows, cols) = (512, 4096);
    let (plan, _) = cross_entropy_plan(&ctx, (rows, cols), true, &every_option(&w));
    let kernels: Vec<&str> = plan.iter().map(|d| d.kernel).collect();
    assert_eq!(
        kernels,
        [
            "ce_denominator_partial",
            "ce_loss_grad",
            "ce_reduce_partial"
        ],
        "{}",
        table(&plan)
    );
    let row_kernel = &plan[1];
    // Held rows: the logits read once, the gradient written once, plus the
    // targets, weights and row results.
    let matrix = (rows * cols * 4) as u64;
    assert_eq!(row_kernel.bytes_written, matrix + rows as u64 * 16);
    assert_eq!(
        row_kernel.bytes_read,
        matrix + rows as u64 * 4 + cols as u64 * 4
    );
    // A reduction of `sum` has no denominator pass; nothing is left recorded.
    let sum = CrossEntropyOptions {
        reduction: Reduction::Sum,
        ..Default::default()
    };
    let (plan, _) = cross_entropy_plan(&ctx, (rows, cols), false, &sum);
    let kernels: Vec<&str> = plan.iter().map(|d| d.kernel).collect();
    assert_eq!(kernels, ["ce_loss", "ce_reduce_partial"]);
    let (_, after) = ctx.record_plan(|| ());
    assert!(after.is_empty());
}
