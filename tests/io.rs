//! Array files: round trips, every dtype the readers take, and a corpus of
//! malformed files, each of which must give an error naming the file and the
//! problem (never a panic or a huge allocation).

use wgpu_loss::io::{read_npy_bytes, read_safetensors_bytes, write_npy_bytes, ArrayData};

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

#[test]
fn malformed_npy_files_give_errors_naming_file_and_problem() {
    let good = npy("<f4", "(2, 3)", &[0u8; 24]);
    let mut v2_huge_len = b"\x93NUMPY\x02\x00".to_vec();
    v2_huge_len.extend(u32::MAX.to_le_bytes());
    let corpus: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.npy", vec![], "not a .npy file"),
        (
            "magic.npy",
            b"\x93NUMPX\x01\x00\x10\x00{}".to_vec(),
            "not a .npy file",
        ),
        ("truncated-header.npy", good[..40].to_vec(), "truncated"),
        (
            "truncated-data.npy",
            good[..good.len() - 5].to_vec(),
            "truncated",
        ),
        (
            "trailing.npy",
            [good.clone(), vec![0; 4]].concat(),
            "data bytes follow",
        ),
        (
            "version.npy",
            b"\x93NUMPY\x09\x00\x10\x00".to_vec(),
            "version 9",
        ),
        ("v2-huge-header.npy", v2_huge_len, "truncated"),
        (
            "huge-shape.npy",
            npy("<f4", "(4294967296, 4294967296, 16)", &[0; 64]),
            "overflows",
        ),
        (
            "huge-but-fits.npy",
            npy("<f4", "(1000000000, 1000)", &[0; 64]),
            "truncated",
        ),
        (
            "dtype-mismatch.npy",
            npy("<f8", "(2, 3)", &[0u8; 24]),
            "truncated",
        ),
        (
            "complex.npy",
            npy("<c8", "(2,)", &[0u8; 16]),
            "not supported",
        ),
        ("uint.npy", npy("<u2", "(2,)", &[0u8; 4]), "not supported"),
        ("object.npy", npy("|O", "(2,)", &[0u8; 16]), ".npy"),
        (
            "fortran.npy",
            {
                let mut b = header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }");
                b.extend([0u8; 24]);
                b
            },
            "Fortran",
        ),
        (
            "no-shape.npy",
            header("{'descr': '<f4', 'fortran_order': False}"),
            ".npy",
        ),
        ("not-a-dict.npy", header("[1, 2, 3]"), ".npy"),
        ("bad-shape.npy", npy("<f4", "(2, -3)", &[0u8; 24]), ".npy"),
        (
            "structured.npy",
            npy("[('a', '<f4')]", "(2,)", &[0u8; 8]),
            "structured",
        ),
    ];
    for (name, bytes, words) in corpus {
        match read_npy_bytes(&bytes, name) {
            Ok(a) => panic!("{name}: read as {:?} {:?}", a.shape, a.file_dtype),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with(name),
                    "{name}: message does not name the file: {msg}"
                );
                assert!(msg.contains(words), "{name}: {words:?} missing from {msg}");
            }
        }
    }
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
