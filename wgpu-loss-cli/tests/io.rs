//! Array files: round trips, every dtype the readers take, and the corpus of
//! malformed files in `tests/corpus/` (also the fuzzers' seed corpus), each of
//! which must give an error naming the file and the problem (never a panic or
//! a huge allocation).

use wgpu_loss_cli::io::{
    read_array, read_npy_bytes, read_safetensors_bytes, write_npy_bytes, ArrayData, ArrayFile,
};

/// A v1 `.npy` header for `dict`, padded as NumPy pads it.
fn header(dict: &str) -> Vec<u8> {
    let mut text = dict.to_string();
    while !(10 + text.len() + 1).is_multiple_of(64) {
        text.push(' ');
    }
    text.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((text.len() as u16).to_le_bytes());
    b.extend(text.as_bytes());
    b
}

fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut b = header(&format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    ));
    b.extend(data);
    b
}

#[test]
fn f32_round_trips_including_0d() {
    for (shape, data) in [
        (vec![], vec![3.5f32]),
        (vec![3], vec![1.0, -2.0, 3.0]),
        (vec![2, 2, 1], vec![0.5, 1.5, 2.5, f32::INFINITY]),
    ] {
        let bytes = write_npy_bytes(&shape, &data).expect("encode");
        let a = read_npy_bytes(&bytes, "rt.npy").expect("decode");
        assert_eq!(a.shape, shape);
        assert_eq!(a.data, ArrayData::F32(data));
        assert_eq!(a.file_dtype, "float32");
    }
    assert!(
        write_npy_bytes(&[2, 2], &[1.0]).is_err(),
        "length must match shape"
    );
}

#[test]
fn every_supported_dtype_reads_with_its_values() {
    let f64s: Vec<u8> = [1.5f64, -2.25]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let a = read_npy_bytes(&npy("<f8", "(2,)", &f64s), "d.npy").expect("f8");
    assert_eq!(a.data, ArrayData::F32(vec![1.5, -2.25]));
    assert!(a.was_narrowed());
    let f16s: Vec<u8> = [0.5f32, -3.0]
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let a = read_npy_bytes(&npy("<f2", "(2,)", &f16s), "h.npy").expect("f2");
    assert_eq!(a.data, ArrayData::F32(vec![0.5, -3.0]));
    let be: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_be_bytes()).collect();
    let a = read_npy_bytes(&npy(">f4", "(1, 2)", &be), "be.npy").expect("big-endian f4");
    assert_eq!(
        a.data,
        ArrayData::F32(vec![1.0, 2.0]),
        "big-endian values are byte-swapped"
    );
    let i32s: Vec<u8> = [7i32, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let a = read_npy_bytes(&npy("<i4", "(2,)", &i32s), "i.npy").expect("i4");
    assert_eq!(a.data, ArrayData::I64(vec![7, -1]));
    let i64s: Vec<u8> = [i64::MAX, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let a = read_npy_bytes(&npy("<i8", "(2,)", &i64s), "l.npy").expect("i8");
    assert_eq!(a.data, ArrayData::I64(vec![i64::MAX, 3]));
}

/// What each file of the regression corpus (`tests/corpus/`) must produce:
/// `Ok` for `ok-*` files, else an error naming the file and containing these
/// words. Every file in the folders must be listed, so a file added from a
/// fuzzing run has to say what it expects.
const CORPUS: &[(&str, &str)] = &[
    ("npy/empty.npy", "not a .npy file"),
    ("npy/wrong-magic.npy", "not a .npy file"),
    ("npy/truncated-header.npy", "truncated"),
    ("npy/truncated-data.npy", "truncated"),
    ("npy/trailing-bytes.npy", "data bytes follow"),
    ("npy/unknown-version.npy", "version 9"),
    ("npy/huge-header-length.npy", "truncated"),
    ("npy/huge-shape-overflow.npy", "overflows"),
    // Found in review: the first pre-check looked only at the first "shape"
    // text and only at tuples.
    ("npy/huge-shape-as-list.npy", "overflows"),
    ("npy/huge-shape-after-decoy-key.npy", "overflows"),
    ("npy/escaped-shape-key.npy", "backslash"),
    ("npy/huge-shape-no-data.npy", "truncated"),
    ("npy/dtype-mismatch.npy", "truncated"),
    ("npy/complex-dtype.npy", "not supported"),
    ("npy/unsigned-dtype.npy", "not supported"),
    ("npy/object-dtype.npy", ".npy"),
    ("npy/fortran-order.npy", "Fortran"),
    ("npy/no-shape-key.npy", ".npy"),
    ("npy/header-not-a-dict.npy", ".npy"),
    ("npy/negative-dimension.npy", ".npy"),
    ("npy/structured-dtype.npy", "structured"),
    // Found by `cargo fuzz`: 80 nested '[' kept npyz's header parser busy for minutes.
    ("npy/deeply-nested-header.npy", "nested more than"),
    ("npy/ok-big-endian-f4.npy", ""),
    ("npy/ok-f2.npy", ""),
    (
        "safetensors/truncated.safetensors",
        "not a valid .safetensors",
    ),
    (
        "safetensors/huge-header-length.safetensors",
        "not a valid .safetensors",
    ),
    (
        "safetensors/too-short.safetensors",
        "not a valid .safetensors",
    ),
    (
        "safetensors/header-not-json.safetensors",
        "not a valid .safetensors",
    ),
    (
        "safetensors/offsets-past-end.safetensors",
        "not a valid .safetensors",
    ),
    (
        "safetensors/shape-mismatch.safetensors",
        "not a valid .safetensors",
    ),
    ("safetensors/unsupported-dtype.safetensors", "not supported"),
    ("safetensors/ok-two-tensors.safetensors", ""),
];

#[test]
fn the_malformed_file_corpus_gives_errors_naming_file_and_problem() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut on_disk = Vec::new();
    for dir in ["npy", "safetensors"] {
        for entry in std::fs::read_dir(root.join(dir)).expect("corpus folder") {
            let name = entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            on_disk.push(format!("{dir}/{name}"));
        }
    }
    on_disk.sort();
    let mut listed: Vec<String> = CORPUS.iter().map(|(f, _)| f.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "tests/corpus and CORPUS disagree");
    for (file, words) in CORPUS {
        let path = root.join(file);
        let arg = path.to_str().expect("utf-8 path");
        // A .safetensors file with several tensors needs a name; ask for "x".
        let arg = if file.starts_with("safetensors/ok-") {
            format!("{arg}:x")
        } else {
            arg.to_string()
        };
        let result = read_array(&arg);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        match (name.starts_with("ok-"), result) {
            (true, Ok(a)) => assert!(!a.is_empty(), "{file}: read as empty"),
            (true, Err(e)) => panic!("{file}: valid file refused: {e}"),
            (false, Ok(a)) => panic!("{file}: read as {:?} {}", a.shape, a.file_dtype),
            (false, Err(e)) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(name),
                    "{file}: message does not name the file: {msg}"
                );
                assert!(msg.contains(words), "{file}: {words:?} missing from {msg}");
            }
        }
    }
    // The windowed reader (`eval`'s streaming) gives the same verdicts and
    // names the same problems, and reads the same values.
    for (file, words) in CORPUS {
        let path = root.join(file);
        let arg = path.to_str().expect("utf-8 path");
        let arg = if file.starts_with("safetensors/ok-") {
            format!("{arg}:x")
        } else {
            arg.to_string()
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let opened = ArrayFile::open(&arg).and_then(|mut f| {
            let n = f.len();
            let values = if f.element.is_float() {
                ArrayData::F32(f.read_f32(0, n)?)
            } else {
                ArrayData::I64(f.read_i64(0, n)?)
            };
            Ok((f.shape.clone(), values))
        });
        match (name.starts_with("ok-"), opened) {
            (true, Ok((shape, values))) => {
                let whole = read_array(&arg).expect("whole read");
                assert_eq!((shape, values), (whole.shape, whole.data), "{file}");
            }
            (true, Err(e)) => panic!("{file}: windowed reader refused a valid file: {e}"),
            (false, Ok((shape, _))) => panic!("{file}: windowed reader read {shape:?}"),
            (false, Err(e)) => {
                let msg = e.to_string();
                assert!(msg.contains(name), "{file}: windowed: {msg}");
                assert!(
                    msg.contains(words),
                    "{file}: windowed: {words:?} missing from {msg}"
                );
            }
        }
    }
    // The big-endian file's values are byte-swapped, not garbage.
    let be = read_array(
        root.join("npy/ok-big-endian-f4.npy")
            .to_str()
            .unwrap_or_default(),
    )
    .expect("big-endian file");
    assert_eq!(be.data, ArrayData::F32(vec![1.0, 2.0]));
}

#[test]
fn safetensors_reads_named_tensors_and_rejects_malformed_files() {
    let x = [1.0f32, 2.0, 3.0, 4.0];
    let t = [3i32, 0];
    let views = vec![
        (
            "x",
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![2, 2],
                bytemuck::cast_slice(&x),
            )
            .expect("view"),
        ),
        (
            "t",
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::I32,
                vec![2],
                bytemuck::cast_slice(&t),
            )
            .expect("view"),
        ),
    ];
    let bytes = safetensors::serialize(views, None).expect("serialize");
    let a = read_safetensors_bytes(&bytes, Some("x"), "m.safetensors").expect("x");
    assert_eq!(
        (a.shape.clone(), a.data),
        (vec![2, 2], ArrayData::F32(x.to_vec()))
    );
    let a = read_safetensors_bytes(&bytes, Some("t"), "m.safetensors").expect("t");
    assert_eq!(a.data, ArrayData::I64(vec![3, 0]));
    for (name, problem, words) in [
        (None, bytes.clone(), "holds 2 tensors"),
        (Some("y"), bytes.clone(), "no tensor named \"y\""),
        (
            Some("x"),
            bytes[..bytes.len() - 3].to_vec(),
            "not a valid .safetensors",
        ),
        (
            Some("x"),
            b"\xff\xff\xff\xff\xff\xff\xff\x7f{}".to_vec(),
            "not a valid",
        ),
        (Some("x"), vec![1, 2, 3], "not a valid"),
    ] {
        let e = read_safetensors_bytes(&problem, name, "m.safetensors")
            .expect_err("malformed input must fail");
        let msg = e.to_string();
        assert!(
            msg.starts_with("m.safetensors") && msg.contains(words),
            "{msg}"
        );
    }
}
