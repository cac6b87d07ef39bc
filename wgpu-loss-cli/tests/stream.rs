//! `eval` streaming: windows of rows under `--memory-budget` give the same
//! bits as one window (loss and gradient files, every kind of streamed
//! input, the fused op's parameter gradients), outputs keep the input's
//! dtype, and a failure anywhere (a bad value in a late window, a truncated
//! input, a write that fails mid-way, Ctrl-C, too little disk) leaves no
//! output behind. The windowed readers and writer against the whole-file ones.

#[path = "../../wgpu-loss/tests/common/mod.rs"]
mod common;
mod support;

use std::path::Path;

use common::{gpu, Rng};
use support::{same_bits, wgpu_loss, write_i64};
use wgpu_loss::F32_TOLERANCE;
use wgpu_loss_cli::io::{
    read_array, read_npy, write_npy, ArrayData, ArrayFile, Element, NpyWriter,
};
use wgpu_loss_cli::problem::{Op, Problem, Settings, Target};

/// A `.npy` file's bytes with any type string (f16 and f64 inputs).
fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let mut header = NpyWriter::header(shape, Element::F32);
    // The header is written for '<f4'; swap the type string (same length).
    let at = header
        .windows(3)
        .position(|w| w == b"<f4")
        .expect("descr in header");
    header[at..at + 3].copy_from_slice(descr.as_bytes());
    header.extend_from_slice(data);
    header
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn eval(dir: &Path, args: &[&str]) -> Run {
    let out = wgpu_loss()
        .current_dir(dir)
        .arg("eval")
        .args(args)
        .output()
        .expect("runs");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn floats(path: &Path) -> Vec<f32> {
    match read_npy(path).expect("output is a valid .npy").data {
        ArrayData::F32(v) => v,
        ArrayData::I64(_) => panic!("{}: expected floats", path.display()),
    }
}

/// `--json`'s `windows` count.
fn windows_of(run: &Run) -> u64 {
    let line = run
        .stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in {:?}", run.stdout));
    let v: serde_json::Value = serde_json::from_str(line).expect("summary is JSON");
    for key in ["rows", "bytes", "seconds", "gb_per_s", "window_rows"] {
        assert!(v.get(key).is_some(), "summary lacks {key}: {line}");
    }
    v["windows"].as_u64().expect("windows")
}

/// Every file in `dir` (hidden temporaries included).
fn files_in(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Many small windows and one window write the same bits, for every kind
/// of streamed input: class-index targets with weights, smoothing and
/// z-loss (mean and sum), probability targets, per-element binary weights,
/// the softmax family's grad-output; on the GPU and (one case) the fast CPU
/// path. Each is also within the tolerance of the reference.
#[test]
fn windows_give_the_same_bits_as_one_window() {
    let Some(_) = gpu() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path();
    let (rows, cols) = (3001, 37);
    let mut rng = Rng::new(2001);
    let x = rng.vec_normal(rows * cols, 3.0);
    let mut t: Vec<i64> = (0..rows).map(|_| rng.below(cols) as i64).collect();
    for i in (0..rows).step_by(7) {
        t[i] = -100;
    }
    let w: Vec<f32> = (0..cols).map(|_| rng.uniform(0.1, 2.0)).collect();
    let probs: Vec<f32> = (0..rows * cols).map(|_| rng.uniform(0.0, 1.0)).collect();
    let labels: Vec<f32> = (0..rows * cols).map(|_| rng.uniform(0.0, 1.0)).collect();
    let ew: Vec<f32> = (0..rows * cols).map(|_| rng.uniform(0.0, 2.0)).collect();
    let dy = rng.vec_normal(rows * cols, 1.0);
    write_npy(&p.join("x.npy"), &[rows, cols], &x).expect("x");
    write_i64(&p.join("t.npy"), &t);
    write_npy(&p.join("w.npy"), &[cols], &w).expect("w");
    write_npy(&p.join("probs.npy"), &[rows, cols], &probs).expect("probs");
    write_npy(&p.join("labels.npy"), &[rows, cols], &labels).expect("labels");
    write_npy(&p.join("ew.npy"), &[rows, cols], &ew).expect("ew");
    write_npy(&p.join("dy.npy"), &[rows, cols], &dy).expect("dy");
    let ce = [
        "cross-entropy",
        "--input=x.npy",
        "--target=t.npy",
        "--weight=w.npy",
    ];
    let smooth = ["--label-smoothing=0.1", "--z-loss=0.01"];
    let cases: Vec<(Vec<&str>, Problem, &str)> = vec![
        (
            [&ce[..], &smooth[..]].concat(),
            Problem {
                target: Some(Target::Classes(t.clone())),
                weight: Some(w.clone()),
                settings: Settings {
                    label_smoothing: 0.1,
                    z_loss: 0.01,
                    ..Default::default()
                },
                ..Problem::new(Op::CrossEntropy, rows, cols, x.clone())
            },
            "loss.npy",
        ),
        (
            [&ce[..], &["--reduction=sum"][..]].concat(),
            Problem {
                target: Some(Target::Classes(t.clone())),
                weight: Some(w.clone()),
                settings: Settings {
                    reduction: wgpu_loss::Reduction::Sum,
                    ..Default::default()
                },
                ..Problem::new(Op::CrossEntropy, rows, cols, x.clone())
            },
            "loss.npy",
        ),
        (
            vec!["cross-entropy", "--input=x.npy", "--target=probs.npy"],
            Problem {
                target: Some(Target::Values(probs.clone())),
                ..Problem::new(Op::CrossEntropy, rows, cols, x.clone())
            },
            "loss.npy",
        ),
        (
            vec![
                "bce-with-logits",
                "--input=x.npy",
                "--target=labels.npy",
                "--weight=ew.npy",
            ],
            Problem {
                target: Some(Target::Values(labels.clone())),
                weight: Some(ew.clone()),
                ..Problem::new(Op::BceWithLogits, rows, cols, x.clone())
            },
            "loss.npy",
        ),
        (
            vec!["log-softmax", "--input=x.npy", "--grad-output=dy.npy"],
            Problem {
                grad_output: Some(dy.clone()),
                ..Problem::new(Op::LogSoftmax, rows, cols, x.clone())
            },
            "output.npy",
        ),
    ];
    for (i, (args, problem, output)) in cases.into_iter().enumerate() {
        // 4 KiB per row in the pipeline's model: a 300 KiB budget holds
        // under a hundred rows, so thirty-odd windows.
        let small = format!("--out=small{i}");
        let one = format!("--out=one{i}");
        let a = eval(
            p,
            &[
                &args[..],
                &[small.as_str(), "--memory-budget=300000", "--json"],
            ]
            .concat(),
        );
        assert!(a.ok, "{args:?}: {}", a.stderr);
        let b = eval(p, &[&args[..], &[one.as_str(), "--json"]].concat());
        assert!(b.ok, "{args:?}: {}", b.stderr);
        assert!(windows_of(&a) > 10, "{args:?}: {}", a.stdout);
        assert_eq!(windows_of(&b), 1, "{args:?}: {}", b.stdout);
        for name in [output, "grad.npy"] {
            let small = floats(&p.join(format!("small{i}")).join(name));
            let one = floats(&p.join(format!("one{i}")).join(name));
            same_bits(&format!("{args:?} {name}"), &small, &one);
        }
        if i == 0 {
            // The fast CPU path streams the same way.
            let a = eval(
                p,
                &[
                    &args[..],
                    &[
                        "--out=cpu_small",
                        "--device=cpu",
                        "--memory-budget=300000",
                        "--json",
                    ],
                ]
                .concat(),
            );
            assert!(a.ok, "{}", a.stderr);
            let b = eval(p, &[&args[..], &["--out=cpu_one", "--device=cpu"]].concat());
            assert!(b.ok, "{}", b.stderr);
            assert!(windows_of(&a) > 10, "{}", a.stdout);
            for name in [output, "grad.npy"] {
                same_bits(
                    &format!("cpu {name}"),
                    &floats(&p.join("cpu_small").join(name)),
                    &floats(&p.join("cpu_one").join(name)),
                );
            }
        }
        let reference = problem.run_reference().expect("reference");
        let out = floats(&p.join(format!("one{i}")).join(output));
        if let Some(m) = F32_TOLERANCE.first_mismatch(&out, &reference.output) {
            panic!("{args:?} {output} against the reference: {m}");
        }
        let grad = floats(&p.join(format!("one{i}")).join("grad.npy"));
        if let Some(m) = F32_TOLERANCE.first_mismatch(&grad, &reference.grad.unwrap_or_default()) {
            panic!("{args:?} grad.npy against the reference: {m}");
        }
    }
}

/// The fused op streams the hidden states: windows of whole chunks give the
/// loss, dH, dW and db of one window, bit for bit (dW and db accumulate on
/// the device in the same order), and the reference agrees within the
/// product rule's tolerance on the loss.
#[test]
fn linear_cross_entropy_windows_give_the_same_bits() {
    let Some(_) = gpu() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path();
    let (n, d, v) = (700, 24, 301);
    let mut rng = Rng::new(2002);
    let h = rng.vec_normal(n * d, 1.0);
    let w = rng.vec_normal(v * d, 0.3);
    let b = rng.vec_normal(v, 0.1);
    let t: Vec<i64> = (0..n).map(|_| rng.below(v) as i64).collect();
    write_npy(&p.join("h.npy"), &[n, d], &h).expect("h");
    write_npy(&p.join("w.npy"), &[v, d], &w).expect("w");
    write_npy(&p.join("b.npy"), &[v], &b).expect("b");
    write_i64(&p.join("t.npy"), &t);
    // 64-row chunks; a budget that holds two chunks of rows.
    let ws = format!("--workspace-bytes={}", 64 * v * 4);
    let args = [
        "linear-cross-entropy",
        "--input=h.npy",
        "--classifier=w.npy",
        "--bias=b.npy",
        "--target=t.npy",
        "--z-loss=0.001",
        ws.as_str(),
        "--json",
    ];
    let small = eval(
        p,
        &[&args[..], &["--out=small", "--memory-budget=110000"]].concat(),
    );
    assert!(small.ok, "{}", small.stderr);
    let one = eval(p, &[&args[..], &["--out=one"]].concat());
    assert!(one.ok, "{}", one.stderr);
    assert!(windows_of(&small) >= 3, "{}", small.stdout);
    assert_eq!(windows_of(&one), 1);
    for name in [
        "loss.npy",
        "grad.npy",
        "grad_classifier.npy",
        "grad_bias.npy",
    ] {
        same_bits(
            name,
            &floats(&p.join("small").join(name)),
            &floats(&p.join("one").join(name)),
        );
    }
    let reference = eval(
        p,
        &[
            &args[..],
            &["--out=ref", "--device=reference", "--memory-budget=110000"],
        ]
        .concat(),
    );
    assert!(reference.ok, "{}", reference.stderr);
    let (gpu_loss, ref_loss) = (
        floats(&p.join("one/loss.npy"))[0],
        floats(&p.join("ref/loss.npy"))[0],
    );
    assert!(
        (gpu_loss - ref_loss).abs() <= 1e-4 * ref_loss.abs(),
        "gpu {gpu_loss} vs reference {ref_loss}"
    );
}

/// Outputs take the input's dtype (f16 and f64; bf16 becomes f32, .npy
/// has no bfloat16), or f32 with `--output-dtype f32`; `--no-grad` writes
/// the same loss and no gradient.
#[test]
fn outputs_take_the_input_dtype_and_no_grad_writes_no_gradient() {
    let Some(_) = gpu() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path();
    let (rows, cols) = (5, 8);
    let x: Vec<f32> = (0..rows * cols)
        .map(|i| (i % 7) as f32 * 0.5 - 1.0)
        .collect();
    let t: Vec<i64> = (0..rows as i64).collect();
    let h16: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
    let f64s: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    std::fs::write(
        p.join("x16.npy"),
        npy_bytes("<f2", &[rows, cols], bytemuck::cast_slice(&h16)),
    )
    .expect("f16");
    std::fs::write(
        p.join("x64.npy"),
        npy_bytes("<f8", &[rows, cols], bytemuck::cast_slice(&f64s)),
    )
    .expect("f64");
    let bf: Vec<u16> = x
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_bits())
        .collect();
    write_16bit_logits(
        &p.join("m.safetensors"),
        safetensors::Dtype::BF16,
        &bf,
        rows,
        cols,
    );
    write_i64(&p.join("t.npy"), &t);
    let descr = |path: &Path| {
        let bytes = std::fs::read(path).expect("read");
        String::from_utf8_lossy(&bytes[10..40]).into_owned()
    };
    for (input, extra, want) in [
        ("x16.npy", None, "<f2"),
        ("x16.npy", Some("--output-dtype=f32"), "<f4"),
        ("x64.npy", None, "<f8"),
        ("m.safetensors:logits", None, "<f4"),
    ] {
        let mut args = vec![
            "cross-entropy",
            "--target=t.npy",
            "--reduction=none",
            "--out=o",
        ];
        let input_arg = format!("--input={input}");
        args.push(&input_arg);
        args.extend(extra);
        let r = eval(p, &args);
        assert!(r.ok, "{args:?}: {}", r.stderr);
        for name in ["loss.npy", "grad.npy"] {
            let d = descr(&p.join("o").join(name));
            assert!(
                d.contains(want),
                "{args:?} {name}: header {d:?}, want {want}"
            );
        }
        // The values (read back widened) are the f32 run's, rounded.
        let loss = floats(&p.join("o/loss.npy"));
        assert_eq!(loss.len(), rows);
        assert!(loss.iter().all(|v| v.is_finite() && *v > 0.0), "{loss:?}");
    }
    let with = eval(
        p,
        &[
            "cross-entropy",
            "--input=x64.npy",
            "--target=t.npy",
            "--out=g",
        ],
    );
    assert!(with.ok, "{}", with.stderr);
    let without = eval(
        p,
        &[
            "cross-entropy",
            "--input=x64.npy",
            "--target=t.npy",
            "--no-grad",
            "--out=n",
        ],
    );
    assert!(without.ok, "{}", without.stderr);
    same_bits(
        "no-grad loss",
        &floats(&p.join("n/loss.npy")),
        &floats(&p.join("g/loss.npy")),
    );
    assert!(!p.join("n/grad.npy").exists(), "--no-grad wrote a gradient");
}

/// A bad value in a late window fails naming the file and the row, after
/// earlier windows were written: nothing is left in --out, temporaries
/// included, and an earlier run's outputs are untouched.
#[test]
fn a_bad_row_in_a_late_window_leaves_no_output() {
    let Some(_) = gpu() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path();
    let (rows, cols) = (4000, 16);
    let mut rng = Rng::new(2003);
    let x = rng.vec_normal(rows * cols, 1.0);
    let mut labels: Vec<f32> = (0..rows * cols).map(|_| rng.uniform(0.0, 1.0)).collect();
    labels[3900 * cols + 5] = 1.5;
    write_npy(&p.join("x.npy"), &[rows, cols], &x).expect("x");
    write_npy(&p.join("labels.npy"), &[rows, cols], &labels).expect("labels");
    let r = eval(
        p,
        &[
            "bce-with-logits",
            "--input=x.npy",
            "--target=labels.npy",
            "--reduction=none",
            "--memory-budget=100000",
            "--out=o",
        ],
    );
    assert!(!r.ok, "a target of 1.5 was accepted");
    assert!(
        r.stderr.contains("labels.npy") && r.stderr.contains("3900"),
        "the error names the file and the row: {}",
        r.stderr
    );
    assert_eq!(files_in(&p.join("o")), Vec::<String>::new(), "{}", r.stderr);
}

/// A truncated input fails before anything is computed, naming the file.
#[test]
fn a_truncated_input_leaves_no_output() {
    let Some(_) = gpu() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path();
    let x = vec![0.5f32; 100 * 10];
    write_npy(&p.join("x.npy"), &[100, 10], &x).expect("x");
    let bytes = std::fs::read(p.join("x.npy")).expect("read");
    std::fs::write(p.join("cut.npy"), &bytes[..bytes.len() - 100]).expect("write");
    let r = eval(p, &["softmax", "--input=cut.npy", "--out=o"]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("cut.npy") && r.stderr.contains("truncated"),
        "{}",
        r.stderr
    );
    assert_eq!(files_in(&p.join("o")), Vec::<String>::new());
}

/// A write that fails mid-way (a file-size limit: the disk-full path)
/// leaves no output, and says which file.
#[cfg(unix)]
#[test]
fn a_write_failing_mid_way_leaves_no_output() {
    let Some(_) = gpu() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path();
    let (rows, cols) = (2000, 256);
    let x = Rng::new(2004).vec_normal(rows * cols, 1.0);
    write_npy(&p.join("x.npy"), &[rows, cols], &x).expect("x");
    let bin = assert_cmd::cargo::cargo_bin("wgpu-loss");
    // `ulimit -f` in 1 KiB blocks: 1 MiB, a half of output.npy. SIGXFSZ is
    // ignored so that the write fails with EFBIG instead of killing the process.
    let script = format!(
        "trap '' XFSZ; ulimit -f 1024; exec '{}' eval softmax --input=x.npy --memory-budget=2000000 --out=o",
        bin.display()
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(p)
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var_os("XDG_RUNTIME_DIR").unwrap_or_else(|| std::env::temp_dir().into()),
        )
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the write limit was not hit: {stderr}"
    );
    assert!(stderr.contains("output.npy"), "{stderr}");
    assert_eq!(files_in(&p.join("o")), Vec::<String>::new(), "{stderr}");
}

/// Ctrl-C (SIGINT) mid-run leaves no output, temporaries included.
#[cfg(unix)]
#[test]
fn ctrl_c_leaves_no_output() {
    let Some(_) = gpu() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path();
    let (rows, cols) = (20000, 512);
    let x = Rng::new(2005).vec_normal(rows * cols, 1.0);
    write_npy(&p.join("x.npy"), &[rows, cols], &x).expect("x");
    let bin = assert_cmd::cargo::cargo_bin("wgpu-loss");
    // The f64 reference in small windows: slow enough to be interrupted.
    let mut child = std::process::Command::new(bin)
        .args([
            "eval",
            "softmax",
            "--input=x.npy",
            "--device=reference",
            "--memory-budget=1000000",
            "--out=o",
        ])
        .current_dir(p)
        .env(
            "XDG_RUNTIME_DIR",
            std::env::var_os("XDG_RUNTIME_DIR").unwrap_or_else(|| std::env::temp_dir().into()),
        )
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawns");
    // Wait until the outputs exist (windows are being written).
    let started = std::time::Instant::now();
    while files_in(&p.join("o")).is_empty() {
        assert!(
            started.elapsed().as_secs() < 60,
            "eval never created its outputs"
        );
        if child.try_wait().expect("wait").is_some() {
            panic!("eval finished before it could be interrupted");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(sent, 0);
    let out = child.wait_with_output().expect("waits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(files_in(&p.join("o")), Vec::<String>::new(), "{stderr}");
}

/// Outputs larger than the free disk fail at once, naming the need: a
/// sparse 512 GiB input (no disk used) whose softmax would need as much.
#[cfg(unix)]
#[test]
fn too_little_disk_fails_before_writing() {
    let Some(_) = gpu() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path();
    let (rows, cols) = (1usize << 17, 1usize << 20); // 2^37 f32: 512 GiB
    let header = NpyWriter::header(&[rows, cols], Element::F32);
    let file = std::fs::File::create(p.join("huge.npy")).expect("create");
    use std::io::Write;
    (&file).write_all(&header).expect("header");
    file.set_len(header.len() as u64 + (rows * cols * 4) as u64)
        .expect("sparse file");
    let r = eval(p, &["softmax", "--input=huge.npy", "--out=o"]);
    assert!(!r.ok);
    assert!(
        r.stderr.contains("the outputs need") && r.stderr.contains("free"),
        "{}",
        r.stderr
    );
    assert_eq!(files_in(&p.join("o")), Vec::<String>::new());
}

/// `ArrayFile` windows read what the whole-file readers read, for every
/// dtype of both formats; `NpyWriter` writes what `read_npy` reads back and
/// refuses to finish short.
#[test]
fn windowed_reads_and_writes_match_the_whole_file_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path();
    let (rows, cols) = (13, 7);
    let x = Rng::new(2006).vec_normal(rows * cols, 2.0);
    let h16: Vec<half::f16> = x.iter().map(|&v| half::f16::from_f32(v)).collect();
    let f64s: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let i32s: Vec<i32> = (0..rows as i32).collect();
    let i64s: Vec<i64> = (0..rows as i64).map(|v| v * 3).collect();
    write_npy(&p.join("f32.npy"), &[rows, cols], &x).expect("f32");
    std::fs::write(
        p.join("f16.npy"),
        npy_bytes("<f2", &[rows, cols], bytemuck::cast_slice(&h16)),
    )
    .expect("f16");
    std::fs::write(
        p.join("f64.npy"),
        npy_bytes("<f8", &[rows, cols], bytemuck::cast_slice(&f64s)),
    )
    .expect("f64");
    std::fs::write(
        p.join("i32.npy"),
        npy_bytes("<i4", &[rows], bytemuck::cast_slice(&i32s)),
    )
    .expect("i32");
    write_i64(&p.join("i64.npy"), &i64s);
    let bf: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
    fn view(
        dtype: safetensors::Dtype,
        shape: Vec<usize>,
        bytes: &[u8],
    ) -> safetensors::tensor::TensorView<'_> {
        safetensors::tensor::TensorView::new(dtype, shape, bytes).expect("view")
    }
    let st = safetensors::serialize(
        vec![
            (
                "a".to_string(),
                view(
                    safetensors::Dtype::BF16,
                    vec![rows, cols],
                    bytemuck::cast_slice(&bf),
                ),
            ),
            (
                "b".to_string(),
                view(
                    safetensors::Dtype::F32,
                    vec![rows, cols],
                    bytemuck::cast_slice(&x),
                ),
            ),
            (
                "c".to_string(),
                view(
                    safetensors::Dtype::I64,
                    vec![rows],
                    bytemuck::cast_slice(&i64s),
                ),
            ),
        ],
        None,
    )
    .expect("serialize");
    std::fs::write(p.join("m.safetensors"), st).expect("write");
    let at = |name: &str| p.join(name).display().to_string();
    for arg in [
        at("f32.npy"),
        at("f16.npy"),
        at("f64.npy"),
        at("i32.npy"),
        at("i64.npy"),
        format!("{}:a", at("m.safetensors")),
        format!("{}:b", at("m.safetensors")),
        format!("{}:c", at("m.safetensors")),
    ] {
        let whole = read_array(&arg).expect("whole read");
        let mut file = ArrayFile::open(&arg).expect("open");
        assert_eq!(file.shape, whole.shape, "{arg}");
        let n = file.len();
        // Windows of 5 elements (not a row multiple) and one of everything.
        match &whole.data {
            ArrayData::F32(v) => {
                let mut got = Vec::new();
                for first in (0..n).step_by(5) {
                    got.extend(file.read_f32(first, 5.min(n - first)).expect("window"));
                }
                same_bits(&arg, &got, v);
                assert!(file.read_i64(0, 1).is_err(), "{arg}: ints from floats");
            }
            ArrayData::I64(v) => {
                let mut got = Vec::new();
                for first in (0..n).step_by(5) {
                    got.extend(file.read_i64(first, 5.min(n - first)).expect("window"));
                }
                assert_eq!(&got, v, "{arg}");
                assert!(file.read_f32(0, 1).is_err(), "{arg}: floats from ints");
            }
        }
        assert!(
            file.read_f32(n, 1).is_err() && file.read_i64(n, 1).is_err(),
            "{arg}: past the end"
        );
    }
    // The writer: f32, f16 and f64 files read back; a short file is refused.
    for element in [Element::F32, Element::F16, Element::F64] {
        let path = p.join("w.npy");
        let mut w = NpyWriter::create(&path, &[rows, cols], element).expect("create");
        for chunk in x.chunks(9) {
            w.append(chunk).expect("append");
        }
        w.finish().expect("finish");
        let back = floats(&path);
        let expect: Vec<f32> = match element {
            Element::F16 => h16.iter().map(|v| v.to_f32()).collect(),
            _ => x.clone(),
        };
        same_bits(&format!("{element:?} writer"), &back, &expect);
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len(),
            NpyWriter::file_bytes(&[rows, cols], element)
        );
    }
    let mut short =
        NpyWriter::create(&p.join("s.npy"), &[rows, cols], Element::F32).expect("create");
    short.append(&x[..10]).expect("append");
    assert!(short.finish().is_err(), "a short file finished");
    // 0-d arrays (a reduced loss).
    let mut scalar = NpyWriter::create(&p.join("0d.npy"), &[], Element::F32).expect("create");
    scalar.append(&[2.5]).expect("append");
    scalar.finish().expect("finish");
    let a = read_npy(&p.join("0d.npy")).expect("0-d");
    assert_eq!(a.shape, Vec::<usize>::new());
}

/// Runs `eval cross-entropy` (with `extra` options) under the row tuning
/// `spec` on a file of `rows x cols`, in windows of about 110 rows and in
/// one window, and checks that both give the same bits.
fn windows_give_one_windows_bits(
    spec: &str,
    (rows, cols): (usize, usize),
    extra: &[&str],
    seed: u64,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path();
    let mut rng = Rng::new(seed);
    let x = rng.vec_normal(rows * cols, 3.0);
    let t: Vec<i64> = (0..rows).map(|_| rng.below(cols) as i64).collect();
    write_npy(&p.join("x.npy"), &[rows, cols], &x).expect("x");
    write_i64(&p.join("t.npy"), &t);
    let run = |out: &str, budget: Option<&str>| {
        let mut cmd = wgpu_loss();
        cmd.current_dir(p)
            .env("WGPU_LOSS_ROW_TUNING", spec)
            .args([
                "eval",
                "cross-entropy",
                "--input=x.npy",
                "--target=t.npy",
                "--json",
            ])
            .args(extra)
            .arg(format!("--out={out}"));
        if let Some(b) = budget {
            cmd.arg(format!("--memory-budget={b}"));
        }
        let o = cmd.output().expect("runs");
        let r = Run {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        };
        assert!(r.ok, "{}", r.stderr);
        r
    };
    // About 13 KB per row in the model: 1.5 MB holds about 110 rows.
    let small = run("small", Some("1500000"));
    let one = run("one", None);
    assert!(windows_of(&small) > (rows / 110) as u64, "{}", small.stdout);
    assert_eq!(windows_of(&one), 1);
    for name in ["loss.npy", "grad.npy"] {
        same_bits(
            name,
            &floats(&p.join("small").join(name)),
            &floats(&p.join("one").join(name)),
        );
    }
}

/// On a GPU tuning that splits long rows of few-row calls across
/// workgroups (`split_rows_below`), windows of fewer rows than that still
/// give one window's bits: the whole file decides. Forced on lavapipe with
/// `WGPU_LOSS_ROW_TUNING`.
#[test]
fn windows_under_a_splitting_tuning_give_the_same_bits() {
    let Some(_) = gpu() else { return };
    windows_give_one_windows_bits(
        "split_vectors=16,split_rows_below=1024",
        (1500, 301),
        &[],
        2007,
    );
}

/// Splitting for occupancy gives a call of fewer rows more chunks (issue
/// 17), so windows of a file with fewer rows than `split_rows_below` would
/// split differently from one window; streamed runs split by
/// `split_vectors` alone and keep one window's bits.
#[test]
fn windows_under_an_occupancy_splitting_tuning_give_the_same_bits() {
    let Some(_) = gpu() else { return };
    // 300 rows in one call: 2 chunks; 110-row windows: 5.
    windows_give_one_windows_bits(
        "split_vectors=4096,split_rows_below=1024,occupancy_workgroups=512,min_split_vectors=16",
        (300, 301),
        &["--label-smoothing=0.1"],
        2017,
    );
}

/// A safetensors file holding one 16-bit tensor (`dtype` BF16 or F16),
/// `logits`, of `[rows, cols]`, from its bit patterns.
fn write_16bit_logits(
    path: &Path,
    dtype: safetensors::Dtype,
    bits: &[u16],
    rows: usize,
    cols: usize,
) {
    let st = safetensors::serialize(
        vec![(
            "logits".to_string(),
            safetensors::tensor::TensorView::new(
                dtype,
                vec![rows, cols],
                bytemuck::cast_slice(bits),
            )
            .expect("view"),
        )],
        None,
    )
    .expect("serialize");
    std::fs::write(path, st).expect("write");
}

/// BF16 and F16 logits stay 16-bit on the GPU: the gradient comes back as
/// values of that type (every one exact in it, which an f32 run's would not
/// be), written as f32 (`--output-dtype f32`), and within that type's
/// tolerance of the f64 reference; the loss is f32. C = 8 runs the packed
/// kernels, C = 9 edged rows, C = 7 the staged ones.
#[test]
fn eval_keeps_16bit_logits_16bit_on_the_gpu() {
    let Some(_) = gpu() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let p = dir.path();
    type Round = fn(f32) -> (u16, f32);
    let types: [(&str, safetensors::Dtype, Round, wgpu_loss::Tolerance); 2] = [
        (
            "bf16",
            safetensors::Dtype::BF16,
            |v| {
                let h = half::bf16::from_f32(v);
                (h.to_bits(), h.to_f32())
            },
            wgpu_loss::BF16_TOLERANCE,
        ),
        (
            "f16",
            safetensors::Dtype::F16,
            |v| {
                let h = half::f16::from_f32(v);
                (h.to_bits(), h.to_f32())
            },
            wgpu_loss::F16_TOLERANCE,
        ),
    ];
    for (name, dtype, round, tolerance) in types {
        for cols in [8usize, 9, 7] {
            let rows = 9;
            let x: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37)
                .collect();
            let (bits, xr): (Vec<u16>, Vec<f32>) = x.iter().map(|&v| round(v)).unzip();
            let t: Vec<i64> = (0..rows as i64).map(|r| r % cols as i64).collect();
            write_16bit_logits(&p.join("m.safetensors"), dtype, &bits, rows, cols);
            write_i64(&p.join("t.npy"), &t);
            let out = format!("--out=o{name}{cols}");
            let r = eval(
                p,
                &[
                    "cross-entropy",
                    "--input=m.safetensors:logits",
                    "--target=t.npy",
                    "--reduction=none",
                    "--output-dtype=f32",
                    &out,
                ],
            );
            assert!(r.ok, "{}", r.stderr);
            let options = wgpu_loss::CrossEntropyOptions {
                reduction: wgpu_loss::Reduction::None,
                ..Default::default()
            };
            let want =
                wgpu_loss::reference::cross_entropy(&xr, &t, cols, &options).expect("reference");
            let loss = floats(&p.join(format!("o{name}{cols}/loss.npy")));
            if let Some(m) = wgpu_loss::F32_TOLERANCE.first_mismatch(&loss, &want.loss) {
                panic!("{name} C={cols} loss: {m}");
            }
            let grad = floats(&p.join(format!("o{name}{cols}/grad.npy")));
            if let Some(m) = tolerance.first_mismatch(&grad, &want.grad) {
                panic!("{name} C={cols} grad: {m}");
            }
            for (i, &g) in grad.iter().enumerate() {
                assert_eq!(
                    round(g).1,
                    g,
                    "{name} C={cols} grad index {i}: {g} is not a {name} value, so the GPU did not store {name}"
                );
            }
        }
    }
}
