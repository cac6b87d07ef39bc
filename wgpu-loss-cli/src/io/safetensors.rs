//! `.safetensors` files through the `safetensors` crate, which checks the
//! header and every tensor's byte range against the file.

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::{file_error, read_file, Array, ArrayData};
use crate::error::Result;

/// Reads tensor `name` of a `.safetensors` file (or its only tensor when
/// `name` is `None`): F16, BF16, F32, F64 (rounded to f32), I32 or I64.
pub fn read_safetensors(path: &Path, name: Option<&str>) -> Result<Array> {
    let bytes = read_file(path)?;
    read_safetensors_bytes(&bytes, name, &path.display().to_string())
}

/// [`read_safetensors`] on bytes already in memory; `source` names them in errors.
pub fn read_safetensors_bytes(bytes: &[u8], name: Option<&str>, source: &str) -> Result<Array> {
    let fail = |problem: String| file_error(Path::new(source), problem);
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| fail(format!("is not a valid .safetensors file: {e}")))?;
    let name = pick_tensor(file.names(), name).map_err(fail)?;
    let view = file
        .tensor(name)
        .map_err(|_| fail(format!("has no tensor named {name:?}")))?;
    let raw = view.data();
    let f32s = |size: usize, decode: fn(&[u8]) -> f32| raw.chunks_exact(size).map(decode).collect();
    let (data, file_dtype) = match view.dtype() {
        Dtype::F16 => (
            ArrayData::F32(f32s(2, |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())),
            "float16",
        ),
        Dtype::BF16 => (
            ArrayData::F32(f32s(2, |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())),
            "bfloat16",
        ),
        Dtype::F32 => (
            ArrayData::F32(f32s(4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            "float32",
        ),
        Dtype::F64 => (
            ArrayData::F32(f32s(8, |b| {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            })),
            "float64",
        ),
        Dtype::I32 => (
            ArrayData::I64(
                raw.chunks_exact(4)
                    .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                    .collect(),
            ),
            "int32",
        ),
        Dtype::I64 => (
            ArrayData::I64(
                raw.chunks_exact(8)
                    .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                    .collect(),
            ),
            "int64",
        ),
        other => {
            return Err(fail(format!(
                "tensor {name:?} has dtype {other}, which is not supported; expected F16, BF16, F32, F64, I32 or I64"
            )))
        }
    };
    Ok(Array {
        shape: view.shape().to_vec(),
        data,
        file_dtype,
        source: format!("{source}:{name}"),
    })
}

/// The tensor to read: `wanted`, which must be one of `names`, or the only
/// one when none is named. Errors list the names.
pub(super) fn pick_tensor<'a>(
    mut names: Vec<&'a str>,
    wanted: Option<&'a str>,
) -> std::result::Result<&'a str, String> {
    names.sort_unstable();
    match wanted {
        Some(n) if names.contains(&n) => Ok(n),
        Some(n) => Err(format!(
            "has no tensor named {n:?} (names: {})",
            names.join(", ")
        )),
        None if names.len() == 1 => Ok(names[0]),
        None => Err(format!(
            "holds {} tensors; name one as FILE.safetensors:NAME (names: {})",
            names.len(),
            names.join(", ")
        )),
    }
}
