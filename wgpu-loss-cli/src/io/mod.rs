//! Array files: NumPy `.npy` and `.safetensors` in, `.npy` out.
//!
//! Readers check everything a malformed or hostile file can get wrong (magic,
//! header, dtype, declared size against the bytes actually present) before
//! they allocate, and name the file in every error. Writers write to a
//! temporary name and rename, so a failed run never leaves a partial file.

mod npy;
mod safetensors;
mod window;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub use npy::{read_npy, read_npy_bytes, write_npy, write_npy_bytes};
pub use safetensors::{read_safetensors, read_safetensors_bytes};
pub use window::{ArrayFile, Element, NpyWriter};

/// Element values of an array read from a file, widened to what the ops take.
#[derive(Clone, Debug, PartialEq)]
pub enum ArrayData {
    /// Floating-point data (f16, f32, or f64 rounded to f32).
    F32(Vec<f32>),
    /// Integer data (class indices), widened to i64.
    I64(Vec<i64>),
}

/// An array read from a file: row-major data, its shape, and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// Shape; `[]` for a 0-d array.
    pub shape: Vec<usize>,
    /// Values in row-major (C) order.
    pub data: ArrayData,
    /// The element type as the file declared it (`float32`, `int64`, ...).
    pub file_dtype: &'static str,
    /// What the file was called on the command line (for messages).
    pub source: String,
}

impl Array {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            ArrayData::F32(v) => v.len(),
            ArrayData::I64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the file held f64 values that were rounded to f32.
    pub fn was_narrowed(&self) -> bool {
        self.file_dtype == "float64"
    }
}

/// A file argument: a path, or `FILE.safetensors:TENSOR` naming one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSpec {
    /// The file.
    pub path: PathBuf,
    /// The tensor inside a `.safetensors` file, if named.
    pub tensor: Option<String>,
}

impl FileSpec {
    /// Parses `path` or `path.safetensors:tensor`.
    pub fn parse(arg: &str) -> FileSpec {
        if let Some((file, tensor)) = arg.rsplit_once(':') {
            if file.ends_with(".safetensors") && !tensor.is_empty() {
                return FileSpec {
                    path: PathBuf::from(file),
                    tensor: Some(tensor.to_string()),
                };
            }
        }
        FileSpec {
            path: PathBuf::from(arg),
            tensor: None,
        }
    }

    pub(crate) fn is_safetensors(&self) -> bool {
        self.path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
    }
}

/// Reads a `.npy` file, or one tensor of a `.safetensors` file (`FILE.safetensors:NAME`;
/// the name may be left out when the file holds exactly one tensor).
///
/// ```
/// # fn main() -> Result<(), wgpu_loss_cli::Error> {
/// use wgpu_loss_cli::io::{read_array, write_npy, ArrayData};
/// let dir = std::env::temp_dir().join(format!("wgpu-loss-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).map_err(|e| wgpu_loss_cli::Error::File {
///     path: dir.display().to_string(),
///     problem: e.to_string(),
/// })?;
/// let path = dir.join("x.npy");
/// write_npy(&path, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
/// let array = read_array(path.to_str().unwrap_or_default())?;
/// assert_eq!(array.shape, vec![2, 3]);
/// assert_eq!(array.data, ArrayData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(()) }
/// ```
pub fn read_array(arg: &str) -> Result<Array> {
    let spec = FileSpec::parse(arg);
    if spec.is_safetensors() {
        read_safetensors(&spec.path, spec.tensor.as_deref())
    } else if let Some((file, _)) = arg
        .rsplit_once(':')
        .filter(|(file, _)| !spec.path.exists() && Path::new(file).is_file())
    {
        Err(file_error(
            Path::new(file),
            format!("{arg:?}: a tensor name after ':' is only meaningful for .safetensors files"),
        ))
    } else {
        read_npy(&spec.path)
    }
}

/// Reads a whole file, refusing anything that is not a regular file.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| file_error(path, e))?;
    if !meta.is_file() {
        return Err(file_error(path, "is not a regular file"));
    }
    std::fs::read(path).map_err(|e| file_error(path, e))
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a
/// rename, so readers never see a half-written file.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_name(path);
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        std::fs::remove_file(&tmp).ok();
        return Err(file_error(path, e));
    }
    Ok(())
}

/// `DIR/.NAME.partial`: hidden, next to the target so the rename stays on one filesystem.
pub fn temporary_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

pub(crate) fn file_error(path: &Path, problem: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

/// Product of a shape's dimensions, `None` on overflow.
pub(crate) fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}
