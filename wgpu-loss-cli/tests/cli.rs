//! The `wgpu-loss` command, run as a built binary: `eval` on files written
//! here (compared with the library), every kind of bad input, `bench --json`,
//! `--plot`, `check` and `info`.

#[path = "../../wgpu-loss/tests/common/mod.rs"]
mod common;
mod support;

use std::path::{Path, PathBuf};

use common::{assert_close, gpu, Rng};
use npyz::WriterBuilder;
use support::{same_bits, wgpu_loss, write_i64};
use wgpu_loss::{CrossEntropyOptions, Reduction, F32_TOLERANCE};
use wgpu_loss_cli::io::{read_npy, write_npy, ArrayData};
use wgpu_loss_cli::problem::{Op, Problem, Target};

fn floats(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let a = read_npy(path).expect("output is a valid .npy");
    match a.data {
        ArrayData::F32(v) => (a.shape, v),
        ArrayData::I64(_) => panic!("{}: expected float32", path.display()),
    }
}

/// Runs `eval` and returns (success, stderr).
fn eval(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = wgpu_loss()
        .current_dir(dir)
        .arg("eval")
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn eval_cross_entropy_matches_the_library() {
    let Some(ctx) = gpu() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let (rows, cols) = (6, 37);
    let mut rng = Rng::new(61);
    let x = rng.vec_normal(rows * cols, 3.0);
    let t: Vec<i64> = (0..rows).map(|_| rng.below(cols) as i64).collect();
    let w: Vec<f32> = (0..cols).map(|_| rng.uniform(0.1, 2.0)).collect();
    write_npy(&dir.path().join("x.npy"), &[rows, cols], &x).expect("write x");
    write_i64(&dir.path().join("t.npy"), &t);
    write_npy(&dir.path().join("w.npy"), &[cols], &w).expect("write w");
    let (ok, stderr) = eval(
        dir.path(),
        &[
            "cross-entropy",
            "--input=x.npy",
            "--target=t.npy",
            "--weight=w.npy",
            "--label-smoothing=0.1",
            "--z-loss=0.001",
            "--out=out",
        ],
    );
    assert!(ok, "{stderr}");
    let opts = CrossEntropyOptions {
        weight: Some(&w[..]),
        label_smoothing: 0.1,
        z_loss: 1e-3,
        ..Default::default()
    };
    // eval streams: windows with reduction none and the whole file's mean
    // denominators, the row losses folded in row order (windows of any
    // multiple of 4 rows give the same bits; here four rows at a time).
    let lib = Problem {
        target: Some(Target::Classes(t.clone())),
        weight: Some(w.clone()),
        settings: wgpu_loss_cli::problem::Settings {
            label_smoothing: 0.1,
            z_loss: 1e-3,
            ..Default::default()
        },
        ..Problem::new(Op::CrossEntropy, rows, cols, x.clone())
    }
    .run_gpu_windows(ctx, 4)
    .expect("library");
    let (loss_shape, loss) = floats(&dir.path().join("out/loss.npy"));
    let (grad_shape, grad) = floats(&dir.path().join("out/grad.npy"));
    assert_eq!(loss_shape, Vec::<usize>::new(), "mean loss is 0-d");
    assert_eq!(grad_shape, vec![rows, cols]);
    same_bits("loss", &loss, &lib.output);
    same_bits("grad", &grad, lib.grad.as_deref().unwrap_or_default());

    // The same through the CPU reference: within the tolerance.
    let (ok, stderr) = eval(
        dir.path(),
        &[
            "cross-entropy",
            "--input=x.npy",
            "--target=t.npy",
            "--weight=w.npy",
            "--label-smoothing=0.1",
            "--z-loss=0.001",
            "--device=cpu",
            "--out=cpu",
        ],
    );
    assert!(ok, "{stderr}");
    let reference = wgpu_loss::reference::cross_entropy(&x, &t, cols, &opts).expect("ref");
    assert_close(
        "cpu loss",
        &floats(&dir.path().join("cpu/loss.npy")).1,
        &reference.loss,
    );
    assert_close(
        "cpu grad",
        &floats(&dir.path().join("cpu/grad.npy")).1,
        &reference.grad,
    );
}

#[test]
fn eval_every_op_round_trips_through_files() {
    let Some(ctx) = gpu() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let (rows, cols) = (5, 1001);
    let mut rng = Rng::new(62);
    let x = rng.vec_normal(rows * cols, 2.0);
    let probs: Vec<f32> = (0..rows * cols).map(|_| rng.uniform(0.02, 0.98)).collect();
    let labels: Vec<f32> = (0..rows * cols).map(|_| rng.uniform(0.0, 1.0)).collect();
    let classes: Vec<i64> = (0..rows).map(|_| rng.below(cols) as i64).collect();
    let dy = rng.vec_normal(rows * cols, 1.0);
    let dlse = rng.vec_normal(rows, 1.0);
    let pos: Vec<f32> = (0..cols).map(|_| rng.uniform(0.5, 2.0)).collect();
    let p = dir.path();
    write_npy(&p.join("x.npy"), &[rows, cols], &x).expect("x");
    write_npy(&p.join("probs.npy"), &[rows, cols], &probs).expect("probs");
    write_npy(&p.join("labels.npy"), &[rows, cols], &labels).expect("labels");
    write_i64(&p.join("classes.npy"), &classes);
    write_npy(&p.join("dy.npy"), &[rows, cols], &dy).expect("dy");
    write_npy(&p.join("dlse.npy"), &[rows], &dlse).expect("dlse");
    write_npy(&p.join("pos.npy"), &[cols], &pos).expect("pos");

    struct Case {
        args: &'static [&'static str],
        problem: Problem,
        output: (&'static str, Vec<usize>),
    }
    let base = |op| Problem::new(op, rows, cols, x.clone());
    let cases = vec![
        Case {
            args: &["softmax", "--input=x.npy", "--grad-output=dy.npy"],
            problem: Problem {
                grad_output: Some(dy.clone()),
                ..base(Op::Softmax)
            },
            output: ("output.npy", vec![rows, cols]),
        },
        Case {
            args: &["log-softmax", "--input=x.npy", "--grad-output=dy.npy"],
            problem: Problem {
                grad_output: Some(dy.clone()),
                ..base(Op::LogSoftmax)
            },
            output: ("output.npy", vec![rows, cols]),
        },
        Case {
            args: &["logsumexp", "--input=x.npy", "--grad-output=dlse.npy"],
            problem: Problem {
                grad_output: Some(dlse.clone()),
                ..base(Op::Logsumexp)
            },
            output: ("output.npy", vec![rows]),
        },
        Case {
            args: &[
                "binary-cross-entropy",
                "--input=probs.npy",
                "--target=labels.npy",
                "--reduction=sum",
            ],
            problem: Problem {
                input: probs.clone(),
                target: Some(Target::Values(labels.clone())),
                settings: wgpu_loss_cli::problem::Settings {
                    reduction: Reduction::Sum,
                    ..Default::default()
                },
                ..base(Op::BinaryCrossEntropy)
            },
            output: ("loss.npy", vec![]),
        },
        Case {
            args: &[
                "bce-with-logits",
                "--input=x.npy",
                "--target=labels.npy",
                "--pos-weight=pos.npy",
                "--reduction=none",
            ],
            problem: Problem {
                target: Some(Target::Values(labels.clone())),
                pos_weight: Some(pos.clone()),
                settings: wgpu_loss_cli::problem::Settings {
                    reduction: Reduction::None,
                    ..Default::default()
                },
                ..base(Op::BceWithLogits)
            },
            output: ("loss.npy", vec![rows, cols]),
        },
        Case {
            args: &[
                "sigmoid-focal",
                "--input=x.npy",
                "--target=labels.npy",
                "--gamma=1.5",
            ],
            problem: Problem {
                target: Some(Target::Values(labels.clone())),
                settings: wgpu_loss_cli::problem::Settings {
                    gamma: 1.5,
                    ..Default::default()
                },
                ..base(Op::SigmoidFocal)
            },
            output: ("loss.npy", vec![]),
        },
        Case {
            args: &[
                "focal",
                "--input=x.npy",
                "--target=classes.npy",
                "--alpha=0.5",
                "--reduction=none",
            ],
            problem: Problem {
                target: Some(Target::Classes(classes.clone())),
                settings: wgpu_loss_cli::problem::Settings {
                    alpha: Some(0.5),
                    reduction: Reduction::None,
                    ..Default::default()
                },
                ..base(Op::Focal)
            },
            output: ("loss.npy", vec![rows]),
        },
        Case {
            args: &["cross-entropy", "--input=x.npy", "--target=probs.npy"],
            problem: Problem {
                target: Some(Target::Values(probs.clone())),
                ..base(Op::CrossEntropy)
            },
            output: ("loss.npy", vec![]),
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let out = format!("--out=out{i}");
        let mut args = case.args.to_vec();
        args.push(&out);
        // Probability targets must sum to 1 per row for cross-entropy; the
        // library rejects anything else, and so must the command.
        let (ok, stderr) = eval(p, &args);
        // Four rows at a time: eval's one window gives the same bits.
        let lib = case.problem.run_gpu_windows(ctx, 4);
        match lib {
            Err(e) => {
                assert!(
                    !ok,
                    "{args:?}: the library refused ({e}) but eval succeeded"
                );
                continue;
            }
            Ok(lib) => {
                assert!(ok, "{args:?}: {stderr}");
                let dir = p.join(format!("out{i}"));
                let (shape, output) = floats(&dir.join(case.output.0));
                assert_eq!(shape, case.output.1, "{args:?}: output shape");
                same_bits(&format!("{args:?} output"), &output, &lib.output);
                let (gshape, grad) = floats(&dir.join("grad.npy"));
                assert_eq!(gshape, vec![rows, cols], "{args:?}: grad shape");
                same_bits(
                    &format!("{args:?} grad"),
                    &grad,
                    &lib.grad.unwrap_or_default(),
                );
                // `--device cpu` writes what the fast CPU path computes, and
                // that is within the tolerance of the reference.
                let out_cpu = format!("--out=cpu{i}");
                let mut cpu_args = case.args.to_vec();
                cpu_args.extend(["--device=cpu", out_cpu.as_str()]);
                let (ok, stderr) = eval(p, &cpu_args);
                assert!(ok, "{cpu_args:?}: {stderr}");
                let fast = case
                    .problem
                    .run_windows(3, |p, r| p.run_fast_with(r))
                    .expect("the fast path runs it");
                let dir = p.join(format!("cpu{i}"));
                let (_, output) = floats(&dir.join(case.output.0));
                same_bits(&format!("{cpu_args:?} output"), &output, &fast.output);
                let (_, grad) = floats(&dir.join("grad.npy"));
                let fast_grad = fast.grad.unwrap_or_default();
                same_bits(&format!("{cpu_args:?} grad"), &grad, &fast_grad);
                let reference = case.problem.run_reference().expect("reference");
                if let Some(m) = F32_TOLERANCE.first_mismatch(&output, &reference.output) {
                    panic!("{cpu_args:?} output against the reference: {m}");
                }
                if case.problem.op.softmax_op().is_none() {
                    let want = reference.grad.unwrap_or_default();
                    if let Some(m) = F32_TOLERANCE.first_mismatch(&fast_grad, &want) {
                        panic!("{cpu_args:?} grad against the reference: {m}");
                    }
                }
            }
        }
    }
}

#[test]
fn eval_reads_safetensors_and_other_dtypes() {
    let Some(_) = gpu() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path();
    let x: Vec<f32> = vec![2.0, 0.5, -1.0, 0.0, 0.0, 3.0];
    let t: Vec<i64> = vec![0, 2];
    let tensors = vec![
        (
            "logits".to_string(),
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![2, 3],
                bytemuck::cast_slice(&x),
            )
            .expect("view"),
        ),
        (
            "labels".to_string(),
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::I64,
                vec![2],
                bytemuck::cast_slice(&t),
            )
            .expect("view"),
        ),
    ];
    let bytes = safetensors::serialize(tensors, None).expect("serialize");
    std::fs::write(p.join("m.safetensors"), bytes).expect("write");
    let (ok, stderr) = eval(
        p,
        &[
            "cross-entropy",
            "--input=m.safetensors:logits",
            "--target=m.safetensors:labels",
            "--reduction=sum",
            "--out=st",
        ],
    );
    assert!(ok, "{stderr}");
    // f64 and f16 logits: a note for f64, same values (these are exact in f16).
    let f64_bytes = npy_bytes(&[2, 3], x.iter().map(|&v| f64::from(v)));
    std::fs::write(p.join("x64.npy"), f64_bytes).expect("write");
    write_i64(&p.join("t.npy"), &t);
    let (ok, stderr) = eval(
        p,
        &[
            "cross-entropy",
            "--input=x64.npy",
            "--target=t.npy",
            "--reduction=sum",
            "--out=f64",
        ],
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("float64 values rounded to float32"),
        "{stderr}"
    );
    let a = floats(&p.join("st/loss.npy")).1;
    let b = floats(&p.join("f64/loss.npy")).1;
    same_bits("safetensors vs f64 npy", &a, &b);
    let reference = wgpu_loss::reference::cross_entropy(
        &x,
        &t,
        3,
        &CrossEntropyOptions {
            reduction: Reduction::Sum,
            ..Default::default()
        },
    )
    .expect("reference");
    assert_close("safetensors loss", &a, &reference.loss);
}

/// An `.npy` file's bytes: `values` of `T`'s own dtype, in this shape.
fn npy_bytes<T: npyz::AutoSerialize>(
    shape: &[u64],
    values: impl IntoIterator<Item = T>,
) -> Vec<u8> {
    let mut b = Vec::new();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(shape)
        .writer(&mut b)
        .begin_nd()
        .expect("header");
    w.extend(values).expect("data");
    w.finish().expect("finish");
    b
}

/// Inputs shared by the bad-input cases.
fn bad_input_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path();
    let x: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin()).collect();
    write_npy(&p.join("x.npy"), &[4, 10], &x).expect("x");
    write_npy(&p.join("w3.npy"), &[3], &[1.0, 1.0, 1.0]).expect("w");
    write_npy(&p.join("w10.npy"), &[10], &[1.0; 10]).expect("w");
    let mut pneg = [1.0f32; 10];
    pneg[4] = -2.0;
    write_npy(&p.join("pneg.npy"), &[10], &pneg).expect("p");
    let labels: Vec<f32> = (0..40).map(|i| (i % 2) as f32).collect();
    write_npy(&p.join("labels.npy"), &[4, 10], &labels).expect("labels");
    let x64 = npy_bytes(&[4, 10], x.iter().map(|&v| f64::from(v)));
    std::fs::write(p.join("x64.npy"), x64).expect("write");
    // f16 logits, and an f32 grad-output with one value past f16's range.
    let x16 = npy_bytes(&[4, 10], x.iter().map(|&v| half::f16::from_f32(v)));
    std::fs::write(p.join("x16.npy"), x16).expect("write");
    let mut dy_big = vec![0.5f32; 40];
    dy_big[27] = 1e5;
    write_npy(&p.join("dy_big.npy"), &[4, 10], &dy_big).expect("dy");
    write_i64(&p.join("t.npy"), &[1, 0, 9, 3]);
    write_i64(&p.join("t_short.npy"), &[1, 0, 9]);
    write_i64(&p.join("t_range.npy"), &[1, 0, 10, 3]);
    std::fs::write(p.join("garbage.npy"), b"this is not an npy file at all").expect("write");
    let good = std::fs::read(p.join("x.npy")).expect("read");
    std::fs::write(p.join("truncated.npy"), &good[..good.len() - 7]).expect("write");
    let header = |dict: &str| {
        let mut text = dict.to_string();
        while !(10 + text.len() + 1).is_multiple_of(64) {
            text.push(' ');
        }
        text.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((text.len() as u16).to_le_bytes());
        b.extend(text.as_bytes());
        b
    };
    let mut huge =
        header("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }");
    huge.extend([0u8; 64]);
    std::fs::write(p.join("huge.npy"), huge).expect("write");
    let mut fortran = header("{'descr': '<f4', 'fortran_order': True, 'shape': (4, 10), }");
    fortran.extend(bytemuck::cast_slice::<f32, u8>(&x));
    std::fs::write(p.join("fortran.npy"), fortran).expect("write");
    let mut complex = header("{'descr': '<c8', 'fortran_order': False, 'shape': (4, 10), }");
    complex.extend([0u8; 320]);
    std::fs::write(p.join("complex.npy"), complex).expect("write");
    std::fs::write(
        p.join("bad.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7f{}",
    )
    .expect("write");
    dir
}

#[test]
fn bad_input_is_one_clear_line_and_no_output() {
    if gpu().is_none() {
        return;
    }
    let dir = bad_input_dir();
    let p = dir.path();
    // Each case: arguments, and words the message must contain.
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["cross-entropy", "--input=missing.npy", "--target=t.npy"],
            &["--input", "missing.npy"],
        ),
        (
            &["cross-entropy", "--input=garbage.npy", "--target=t.npy"],
            &["garbage.npy", "not a .npy file"],
        ),
        (
            &["cross-entropy", "--input=truncated.npy", "--target=t.npy"],
            &["truncated.npy", "truncated"],
        ),
        (
            &["cross-entropy", "--input=huge.npy", "--target=t.npy"],
            &["huge.npy", "overflows"],
        ),
        (
            &["cross-entropy", "--input=fortran.npy", "--target=t.npy"],
            &["fortran.npy", "Fortran"],
        ),
        (
            &["cross-entropy", "--input=complex.npy", "--target=t.npy"],
            &["complex.npy", "not supported"],
        ),
        (
            &["cross-entropy", "--input=bad.safetensors", "--target=t.npy"],
            &["bad.safetensors"],
        ),
        (
            &["cross-entropy", "--input=x.npy:logits", "--target=t.npy"],
            &["x.npy", "safetensors"],
        ),
        (
            &["cross-entropy", "--input=t.npy", "--target=t.npy"],
            &["--input t.npy", "[N, C]"],
        ),
        (
            &["cross-entropy", "--input=x.npy", "--target=t_short.npy"],
            &["--target t_short.npy", "[3]", "[4]"],
        ),
        (
            &["cross-entropy", "--input=x.npy", "--target=t_range.npy"],
            &["--target t_range.npy", "row 2", "10"],
        ),
        (
            &[
                "cross-entropy",
                "--input=x.npy",
                "--target=t.npy",
                "--weight=w3.npy",
            ],
            &["--weight w3.npy", "[3]", "[10]"],
        ),
        (
            &[
                "cross-entropy",
                "--input=x.npy",
                "--target=t.npy",
                "--label-smoothing=1.5",
            ],
            &["label_smoothing", "1.5"],
        ),
        (
            &[
                "cross-entropy",
                "--input=x.npy",
                "--target=t.npy",
                "--softcap=-1",
            ],
            &["softcap"],
        ),
        (
            &["focal", "--input=x.npy", "--target=t.npy", "--gamma=-2"],
            &["gamma"],
        ),
        (
            &["cross-entropy", "--input=x.npy"],
            &["cross-entropy needs --target"],
        ),
        (
            &["softmax", "--input=x.npy", "--z-loss=0.1"],
            &["--z-loss does not apply to softmax"],
        ),
        (
            &["bce-with-logits", "--input=x.npy", "--target=t.npy"],
            &["--target t.npy", "float targets"],
        ),
        (
            &["cross-entropy-but-not", "--input=x.npy"],
            &["unknown op", "cross-entropy"],
        ),
        // Found in review: negative values written with a space reach the range
        // check; applicability before shapes; the float64 note does not add a
        // second line to a failure; pos_weight's own file is named.
        (
            &["focal", "--input=x.npy", "--target=t.npy", "--gamma", "-2"],
            &["gamma", "-2"],
        ),
        (
            &[
                "cross-entropy",
                "--input=x.npy",
                "--target=t.npy",
                "--label-smoothing",
                "-0.1",
            ],
            &["label_smoothing"],
        ),
        (
            &["softmax", "--input=x16.npy", "--grad-output=dy_big.npy"],
            &["dy_big.npy", "100000", "row 2, column 7", "f16"],
        ),
        (
            &["log-softmax", "--input=x16.npy", "--grad-output=dy_big.npy"],
            &["dy_big.npy", "row 2, column 7"],
        ),
        (
            &["softmax", "--input=x.npy", "--weight=w3.npy"],
            &["--weight does not apply to softmax"],
        ),
        (
            &["cross-entropy", "--input=x64.npy", "--target=t_range.npy"],
            &["--target t_range.npy", "row 2"],
        ),
        (
            &[
                "bce-with-logits",
                "--input=x.npy",
                "--target=labels.npy",
                "--weight=w10.npy",
                "--pos-weight=pneg.npy",
            ],
            &["--pos-weight pneg.npy", "weight[4] = -2"],
        ),
    ];
    for (args, words) in cases {
        let out = p.join("out");
        std::fs::create_dir_all(&out).expect("out dir");
        // A result from an earlier run must survive a failed one untouched.
        std::fs::write(out.join("loss.npy"), b"earlier").expect("write");
        let mut full = args.to_vec();
        full.push("--out=out");
        let (ok, stderr) = eval(p, &full);
        assert!(!ok, "{args:?} succeeded");
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?}: not one line: {stderr}"
        );
        for w in *words {
            assert!(stderr.contains(w), "{args:?}: {w:?} missing from {stderr}");
        }
        let mut left: Vec<String> = std::fs::read_dir(&out)
            .expect("read out")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["loss.npy"], "{args:?} left files behind");
        assert_eq!(
            std::fs::read(out.join("loss.npy")).expect("read"),
            b"earlier"
        );
    }
}

#[test]
fn bench_json_on_a_tiny_shape_parses() {
    if gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let plot: PathBuf = dir.path().join("bench.svg");
    let out = wgpu_loss()
        .args([
            "bench", "--rows", "8", "--cols", "100", "--iters", "2", "--json",
        ])
        .args([
            "--op",
            "cross-entropy",
            "--op",
            "softmax",
            "--op",
            "bce-with-logits",
        ])
        .arg("--plot")
        .arg(&plot)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    // 3 ops x (gpu-kernel, gpu-end-to-end, cpu)
    assert_eq!(lines.len(), 9, "{stdout}");
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        for field in [
            "op",
            "rows",
            "cols",
            "dtype",
            "path",
            "adapter",
            "median_ms",
            "gbps",
            "copy_gbps",
            "pct_of_copy",
            "max_abs_err",
        ] {
            assert!(v.get(field).is_some(), "{field} missing in {line}");
        }
        assert_eq!(v["rows"], 8);
        assert_eq!(v["cols"], 100);
        assert_eq!(v["dtype"], "f32");
        let path = v["path"].as_str().unwrap_or_default();
        assert!(
            ["gpu-kernel", "gpu-end-to-end", "cpu"].contains(&path),
            "{line}"
        );
        assert!(v["gbps"].as_f64().is_some_and(|g| g > 0.0), "{line}");
        let err = v["max_abs_err"].as_f64().unwrap_or(f64::NAN);
        assert!(err < 1e-4, "GPU result far from the reference: {line}");
    }
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(
        svg.starts_with("<svg") && svg.contains("cross-entropy GPU"),
        "{svg:.200}"
    );
}

/// The gpu-kernel rows of `bench --json` with `args` (asserting it succeeds).
fn bench_gpu_rows(args: &[&str]) -> Vec<serde_json::Value> {
    let out = wgpu_loss()
        .args(["bench", "--rows", "4", "--iters", "1", "--json"])
        .args(args)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .filter(|v: &serde_json::Value| v["path"] == "gpu-kernel")
        .collect()
}

#[test]
fn bench_f16_runs() {
    if gpu().is_none() {
        return;
    }
    let rows = bench_gpu_rows(&[
        "--cols",
        "300",
        "--dtype",
        "f16",
        "--op",
        "cross-entropy",
        "--op",
        "log-softmax",
    ]);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for v in rows {
        assert_eq!(v["dtype"], "f16");
        // f16 storage: errors of f16 rounding, not of a broken kernel.
        assert!(v["max_abs_err"].as_f64().is_some_and(|e| e < 2e-2), "{v}");
    }
}

#[test]
fn bench_bf16_runs_on_every_adapter() {
    let Some(_) = gpu() else { return };
    // 300 columns run the packed kernels, 301 the staged ones.
    for cols in ["300", "301"] {
        let rows = bench_gpu_rows(&[
            "--cols",
            cols,
            "--dtype",
            "bf16",
            "--op",
            "cross-entropy",
            "--op",
            "log-softmax",
            "--op",
            "bce-with-logits",
        ]);
        // The binary losses have no bf16 path: their GPU rows are skipped.
        assert_eq!(rows.len(), 2, "{rows:?}");
        for v in rows {
            assert_eq!(v["dtype"], "bf16");
            // bf16 storage (8 significant bits) of inputs and outputs near
            // -8: errors of bf16 rounding, not of a broken kernel.
            assert!(v["max_abs_err"].as_f64().is_some_and(|e| e < 6e-2), "{v}");
        }
    }
}

/// `bench --plan` prints the dispatches recorded while each op runs once:
/// on the GPU table, cross-entropy with every option reads the logits once
/// and writes the gradient once; on the CPU table, streamed rows read twice.
#[test]
fn bench_plan_prints_the_recorded_dispatches_and_their_bytes() {
    let Some(_) = gpu() else { return };
    let plan = |tuning: &str| -> serde_json::Value {
        let out = wgpu_loss()
            .args([
                "bench",
                "--plan",
                "--tuning",
                tuning,
                "--json",
                "--rows",
                "64",
                "--cols",
                "32768",
                "--op",
                "cross-entropy",
                "--random-weight",
                "--label-smoothing",
                "0.1",
                "--z-loss",
                "1e-4",
                "--softcap",
                "30",
            ])
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim()).expect("one JSON line")
    };
    let gpu_plan = plan("gpu");
    let kernels: Vec<&str> = gpu_plan["dispatches"]
        .as_array()
        .expect("dispatches")
        .iter()
        .map(|d| d["kernel"].as_str().expect("kernel"))
        .collect();
    assert!(kernels.contains(&"ce_loss_grad"), "{gpu_plan}");
    let ratio = gpu_plan["ratio"].as_f64().expect("ratio");
    assert!(ratio <= 1.05, "{gpu_plan}");
    let cpu_ratio = plan("cpu")["ratio"].as_f64().expect("ratio");
    assert!((1.45..=1.55).contains(&cpu_ratio), "{cpu_ratio}");
    let out = wgpu_loss()
        .args(["bench", "--tuning", "gpu", "--rows", "2", "--cols", "4"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--plan"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bench_without_an_adapter_still_benches_the_cpu() {
    let out = wgpu_loss()
        .env("WGPU_ADAPTER_NAME", "no-such-adapter-xyz")
        .args([
            "bench", "--rows", "2", "--cols", "10", "--iters", "1", "--op", "softmax",
        ])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stderr.contains("No GPU adapter") && stderr.contains("mesa-vulkan-drivers"),
        "{stderr}"
    );
    assert!(stdout.contains(" cpu "), "{stdout}");
}

#[test]
fn check_passes_and_info_names_the_adapter() {
    let Some(ctx) = gpu() else { return };
    let out = wgpu_loss().arg("check").output().expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("checks passed") && !stdout.contains("FAIL"),
        "{stdout}"
    );
    let out = wgpu_loss().arg("info").output().expect("runs");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(ctx.adapter_name()), "{stdout}");
    assert!(
        stdout.contains("max_storage_buffer_binding_size"),
        "{stdout}"
    );
}

#[test]
fn an_adapter_name_that_matches_nothing_is_a_clear_error() {
    if gpu().is_none() {
        return;
    }
    let out = wgpu_loss()
        .arg("info")
        .env("WGPU_ADAPTER_NAME", "no-such-adapter-xyz")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-adapter-xyz") && stderr.contains("adapters found"),
        "{stderr}"
    );
}

#[test]
fn eval_leaves_no_stale_output_from_an_earlier_run() {
    if gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path();
    let x: Vec<f32> = (0..12).map(|i| i as f32 * 0.1).collect();
    write_npy(&p.join("x.npy"), &[3, 4], &x).expect("x");
    write_npy(&p.join("g.npy"), &[3, 4], &[1.0; 12]).expect("g");
    let (ok, stderr) = eval(
        p,
        &["softmax", "--input=x.npy", "--grad-output=g.npy", "--out=o"],
    );
    assert!(ok, "{stderr}");
    assert!(p.join("o/grad.npy").exists());
    let (ok, stderr) = eval(p, &["softmax", "--input=x.npy", "--out=o"]);
    assert!(ok, "{stderr}");
    assert!(p.join("o/output.npy").exists());
    assert!(
        !p.join("o/grad.npy").exists(),
        "grad.npy of the first run is stale"
    );
}

/// Big shapes (issue 17's bench flags): `--check-rows` checks a sample of
/// rows against the reference, scaled as they stand in the whole problem,
/// so the error stays at rounding level; `--no-reference` drops the error
/// column; `--no-end-to-end` drops that path.
#[test]
fn bench_checks_a_sample_of_rows_and_skips_what_it_is_told() {
    if gpu().is_none() {
        return;
    }
    let run = |extra: &[&str]| -> Vec<serde_json::Value> {
        let out = wgpu_loss()
            .args([
                "bench", "--rows", "64", "--cols", "300", "--iters", "1", "--json",
            ])
            .args(["--op", "cross-entropy", "--op", "cross-entropy-loss"])
            .args([
                "--op",
                "softmax",
                "--op",
                "bce-with-logits",
                "--op",
                "focal",
            ])
            .args(extra)
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    };
    let sampled = run(&["--check-rows", "3", "--no-end-to-end"]);
    assert_eq!(sampled.len(), 10, "5 ops x (gpu-kernel, cpu): {sampled:?}");
    for v in &sampled {
        assert_ne!(v["path"], "gpu-end-to-end", "{v}");
        let err = &v["max_abs_err"];
        if v["op"] == "cross-entropy-loss" {
            assert!(err.is_null(), "a sample says nothing of the one mean: {v}");
        } else {
            let e = err.as_f64().unwrap_or_else(|| panic!("an error for {v}"));
            // Gradients of a mean over 64 rows are ~1/64: a mis-scaled
            // sample would be off by that much, rounding is ~1e-9.
            assert!(e < 1e-6, "sampled error {e} in {v}");
        }
    }
    let unchecked = run(&["--no-reference"]);
    assert_eq!(unchecked.len(), 15, "5 ops x 3 paths");
    assert!(
        unchecked.iter().all(|v| v["max_abs_err"].is_null()),
        "{unchecked:?}"
    );
}

/// `eval linear-cross-entropy` writes the library's loss and three
/// gradients, the reference device agrees within the product rule, the
/// loss-only form writes no gradient, and bad shapes name their file.
#[test]
fn eval_linear_cross_entropy_matches_the_library() {
    use wgpu_loss::{LinearCrossEntropyOptions, LinearGrads, LinearShape};
    let Some(ctx) = gpu() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let (n, d, v) = (9, 5, 37);
    let mut rng = Rng::new(61);
    let h = rng.vec_normal(n * d, 1.0);
    let w = rng.vec_normal(v * d, 0.5);
    let b = rng.vec_normal(v, 0.1);
    let t: Vec<i64> = (0..n).map(|_| rng.below(v) as i64).collect();
    write_npy(&p.join("h.npy"), &[n, d], &h).expect("h");
    write_npy(&p.join("w.npy"), &[v, d], &w).expect("w");
    write_npy(&p.join("b.npy"), &[v], &b).expect("b");
    write_i64(&p.join("t.npy"), &t);
    let common_args = [
        "--input",
        "h.npy",
        "--classifier",
        "w.npy",
        "--bias",
        "b.npy",
        "--target",
        "t.npy",
        "--label-smoothing",
        "0.1",
    ];
    let (ok, err) = eval(
        p,
        &[
            &["linear-cross-entropy"][..],
            &common_args,
            &["--out", "gpu"],
        ]
        .concat(),
    );
    assert!(ok, "{err}");
    let options = LinearCrossEntropyOptions {
        loss: CrossEntropyOptions {
            label_smoothing: 0.1,
            ..Default::default()
        },
        ..Default::default()
    };
    let shape = LinearShape {
        rows: n,
        hidden: d,
        classes: v,
    };
    let lib = wgpu_loss::block_on(ctx.linear_cross_entropy(
        &h,
        &w,
        Some(&b),
        &t,
        shape,
        &options,
        LinearGrads::ALL,
    ))
    .expect("library");
    // eval folds the row losses (reduction none) in row order, in f64.
    let rows_only = LinearCrossEntropyOptions {
        loss: CrossEntropyOptions {
            label_smoothing: 0.1,
            reduction: Reduction::None,
            ..Default::default()
        },
        ..Default::default()
    };
    let row_losses = wgpu_loss::block_on(ctx.linear_cross_entropy(
        &h,
        &w,
        Some(&b),
        &t,
        shape,
        &rows_only,
        LinearGrads::NONE,
    ))
    .expect("library, row losses");
    let mean = row_losses.loss.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64;
    for (file, expected) in [
        ("loss.npy", vec![mean as f32]),
        ("grad.npy", lib.grad_hidden.clone().expect("dH")),
        (
            "grad_classifier.npy",
            lib.grad_classifier.clone().expect("dW"),
        ),
        ("grad_bias.npy", lib.grad_bias.clone().expect("db")),
    ] {
        same_bits(file, &floats(&p.join("gpu").join(file)).1, &expected);
    }
    let (ok, err) = eval(
        p,
        &[
            &["linear-cross-entropy"][..],
            &common_args,
            &["--device", "reference", "--out", "ref"],
        ]
        .concat(),
    );
    assert!(ok, "{err}");
    let (_, loss_ref) = floats(&p.join("ref").join("loss.npy"));
    assert!(
        (loss_ref[0] - lib.loss[0]).abs() < 1e-4,
        "reference {loss_ref:?} vs gpu {:?}",
        lib.loss
    );
    let (ok, err) = eval(
        p,
        &[
            &["linear-cross-entropy-loss"][..],
            &common_args,
            &["--out", "loss"],
        ]
        .concat(),
    );
    assert!(ok, "{err}");
    assert!(
        !p.join("loss").join("grad.npy").exists(),
        "loss-only wrote a gradient"
    );
    // The same classifier as a tensor of a safetensors file, as a model's
    // lm_head.weight would be: the same bits.
    let st = safetensors::serialize(
        vec![(
            "lm_head.weight".to_string(),
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![v, d],
                bytemuck::cast_slice(&w),
            )
            .expect("view"),
        )],
        None,
    )
    .expect("serialize");
    std::fs::write(p.join("model.safetensors"), st).expect("write");
    let (ok, err) = eval(
        p,
        &[
            "linear-cross-entropy",
            "--input",
            "h.npy",
            "--classifier",
            "model.safetensors:lm_head.weight",
            "--bias",
            "b.npy",
            "--target",
            "t.npy",
            "--label-smoothing",
            "0.1",
            "--out",
            "st",
        ],
    );
    assert!(ok, "{err}");
    same_bits(
        "safetensors classifier",
        &floats(&p.join("st").join("grad_classifier.npy")).1,
        &lib.grad_classifier.clone().expect("dW"),
    );
    // The classifier with the wrong hidden size names its file.
    write_npy(&p.join("w4.npy"), &[v, d - 1], &w[..v * (d - 1)]).expect("w4");
    let (ok, err) = eval(
        p,
        &[
            "linear-cross-entropy",
            "--input",
            "h.npy",
            "--classifier",
            "w4.npy",
            "--target",
            "t.npy",
            "--out",
            "bad",
        ],
    );
    assert!(
        !ok && err.contains("--classifier w4.npy") && err.contains("D = 5"),
        "{err}"
    );
    assert!(
        !p.join("bad").join("loss.npy").exists(),
        "a failed run wrote output"
    );
    // A workspace too small for one row names the option.
    let (ok, err) = eval(
        p,
        &[
            &["linear-cross-entropy"][..],
            &common_args,
            &["--workspace-bytes", "16", "--out", "bad"],
        ]
        .concat(),
    );
    assert!(
        !ok && err.contains("--workspace-bytes") && err.contains("148 bytes"),
        "{err}"
    );
}

/// `eval linear-cross-entropy` on hidden states and a classifier that are
/// both bf16 or both f16 tensors of a safetensors file keeps them 16-bit on
/// the GPU, with the results of the same values given as float32 files:
/// every output the same bits once rounded to the output file's type
/// (float32 for bf16 inputs, float16 for f16 ones).
#[test]
fn eval_linear_cross_entropy_on_16bit_heads() {
    if gpu().is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    let (n, d, v) = (11, 7, 45);
    let mut rng = Rng::new(63);
    let (h0, w0) = (rng.vec_normal(n * d, 1.0), rng.vec_normal(v * d, 0.5));
    let t: Vec<i64> = (0..n).map(|_| rng.below(v) as i64).collect();
    write_i64(&p.join("t.npy"), &t);
    for (dtype, name) in [
        (safetensors::Dtype::BF16, "bf16"),
        (safetensors::Dtype::F16, "f16"),
    ] {
        let bits = |x: &[f32]| -> Vec<u16> {
            x.iter()
                .map(|&v| match dtype {
                    safetensors::Dtype::BF16 => half::bf16::from_f32(v).to_bits(),
                    _ => half::f16::from_f32(v).to_bits(),
                })
                .collect()
        };
        let widen = |b: &[u16]| -> Vec<f32> {
            b.iter()
                .map(|&b| match dtype {
                    safetensors::Dtype::BF16 => half::bf16::from_bits(b).to_f32(),
                    _ => half::f16::from_bits(b).to_f32(),
                })
                .collect()
        };
        let (hb, wb) = (bits(&h0), bits(&w0));
        let st = safetensors::serialize(
            vec![
                (
                    "hidden".to_string(),
                    safetensors::tensor::TensorView::new(
                        dtype,
                        vec![n, d],
                        bytemuck::cast_slice(&hb),
                    )
                    .expect("view"),
                ),
                (
                    "lm_head.weight".to_string(),
                    safetensors::tensor::TensorView::new(
                        dtype,
                        vec![v, d],
                        bytemuck::cast_slice(&wb),
                    )
                    .expect("view"),
                ),
            ],
            None,
        )
        .expect("serialize");
        let model = format!("{name}.safetensors");
        std::fs::write(p.join(&model), st).expect("write");
        write_npy(&p.join("h32.npy"), &[n, d], &widen(&hb)).expect("h");
        write_npy(&p.join("w32.npy"), &[v, d], &widen(&wb)).expect("w");
        let options = ["--target", "t.npy", "--label-smoothing", "0.1"];
        let (h_arg, w_arg) = (format!("{model}:hidden"), format!("{model}:lm_head.weight"));
        let (ok, err) = eval(
            p,
            &[
                &[
                    "linear-cross-entropy",
                    "--input",
                    &h_arg,
                    "--classifier",
                    &w_arg,
                ][..],
                &options,
                &["--out", name],
            ]
            .concat(),
        );
        assert!(ok, "{name}: {err}");
        let (ok, err) = eval(
            p,
            &[
                &[
                    "linear-cross-entropy",
                    "--input",
                    "h32.npy",
                    "--classifier",
                    "w32.npy",
                ][..],
                &options,
                &["--out", "wide"],
            ]
            .concat(),
        );
        assert!(ok, "{name} as float32: {err}");
        for file in ["loss.npy", "grad.npy", "grad_classifier.npy"] {
            let wide = floats(&p.join("wide").join(file)).1;
            let expected: Vec<f32> = match dtype {
                safetensors::Dtype::F16 => wide
                    .iter()
                    .map(|&x| half::f16::from_f32(x).to_f32())
                    .collect(),
                _ => wide,
            };
            same_bits(
                &format!("{name} {file}"),
                &floats(&p.join(name).join(file)).1,
                &expected,
            );
        }
    }
}

/// `bench --op linear-cross-entropy` on a tiny shape: every path as JSON,
/// the memory line, `--loss-only` leaving out the gradient paths, and
/// `--dtype f16` / `bf16`.
#[test]
fn bench_linear_cross_entropy_reports_every_path() {
    if gpu().is_none() {
        return;
    }
    let run = |extra: &[&str]| {
        let out = wgpu_loss()
            .args([
                "bench",
                "--op",
                "linear-cross-entropy",
                "--rows",
                "9",
                "--cols",
                "70",
                "--hidden",
                "5",
                "--iters",
                "1",
                "--json",
            ])
            .args(extra)
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("each line is JSON"))
            .collect::<Vec<_>>()
    };
    let paths = |lines: &[serde_json::Value]| -> Vec<String> {
        lines
            .iter()
            .filter_map(|v| v["path"].as_str().map(str::to_string))
            .collect()
    };
    let all = run(&[]);
    assert_eq!(
        paths(&all),
        [
            "matmul",
            "fused-loss",
            "fused-loss-grads",
            "unfused-loss",
            "unfused-loss-grads",
            "cpu-loss",
            "cpu-loss-grads"
        ],
        "{all:?}"
    );
    for v in all.iter().filter(|v| v.get("path").is_some()) {
        assert!(v["gflops"].as_f64().is_some_and(|g| g > 0.0), "{v}");
    }
    let memory = all
        .iter()
        .find(|v| v.get("scratch_bytes").is_some())
        .expect("memory line");
    assert!(
        memory["workspace_bytes"]
            .as_u64()
            .is_some_and(|b| b >= 70 * 4),
        "{memory}"
    );
    let loss_only = run(&["--loss-only", "--no-cpu", "--no-unfused"]);
    assert_eq!(paths(&loss_only), ["matmul", "fused-loss"], "{loss_only:?}");
    // 16-bit hidden states and classifier (45 and 350 elements: odd counts
    // of packed halves); the run fails if its checked rows mismatch.
    for dtype in ["f16", "bf16"] {
        let lines = run(&["--dtype", dtype, "--check-rows", "9"]);
        assert_eq!(paths(&lines).len(), 7, "{dtype}: {lines:?}");
        for v in lines.iter().filter(|v| v.get("path").is_some()) {
            assert_eq!(v["dtype"].as_str(), Some(dtype), "{v}");
        }
    }
    // The options of this op are refused elsewhere.
    let out = wgpu_loss()
        .args([
            "bench", "--op", "softmax", "--rows", "2", "--cols", "3", "--hidden", "4",
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--hidden"));
}
