//! NumPy `.npy` files through the `npyz` crate, with the size checks done
//! before anything is allocated.

use std::path::Path;

use npyz::{DType, NpyHeader, Order, TypeChar, WriterBuilder};

use super::{element_count, file_error, read_file, write_atomically, Array, ArrayData, Element};
use crate::error::Result;

/// Reads a `.npy` file: float16/32/64 (f64 is rounded to f32) or int32/64, C order.
pub fn read_npy(path: &Path) -> Result<Array> {
    let bytes = read_file(path)?;
    read_npy_bytes(&bytes, &path.display().to_string())
}

/// [`read_npy`] on bytes already in memory; `source` names them in errors.
pub fn read_npy_bytes(bytes: &[u8], source: &str) -> Result<Array> {
    let fail = |problem: String| file_error(Path::new(source), problem);
    check_declared_shape(bytes).map_err(fail)?;
    let mut data = bytes;
    let header = NpyHeader::from_reader(&mut data)
        .map_err(|e| fail(format!("is not a valid .npy file: {e}")))?;
    if header.order() == Order::Fortran {
        return Err(fail(
            "is stored in Fortran order; save it in C order (numpy.ascontiguousarray) first".into(),
        ));
    }
    let kind = element_kind(&header.dtype()).map_err(fail)?;
    let shape = declared_shape(&header).map_err(fail)?;
    let count = element_count(&shape)
        .ok_or_else(|| fail(format!("declares shape {shape:?}, whose size overflows")))?;
    let needed = count.checked_mul(kind.size());
    if needed != Some(data.len()) {
        return Err(fail(format!(
            "declares shape {shape:?} of {} ({} data bytes), but {} data bytes follow the header{}",
            kind.name(),
            needed.map_or("more than addressable".to_string(), |n| n.to_string()),
            data.len(),
            if needed.is_some_and(|n| n > data.len()) {
                " (truncated file?)"
            } else {
                ""
            }
        )));
    }
    let file = npyz::NpyFile::with_header(header, data);
    let read_err =
        |e: std::io::Error| fail(format!("could not read its {} data: {e}", kind.name()));
    let values = match kind.name() {
        "float16" => ArrayData::F32(
            file.into_vec::<half::f16>()
                .map_err(read_err)?
                .into_iter()
                .map(f32::from)
                .collect(),
        ),
        "float32" => ArrayData::F32(file.into_vec::<f32>().map_err(read_err)?),
        "float64" => ArrayData::F32(
            file.into_vec::<f64>()
                .map_err(read_err)?
                .into_iter()
                .map(|v| v as f32)
                .collect(),
        ),
        "int32" => ArrayData::I64(
            file.into_vec::<i32>()
                .map_err(read_err)?
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        _ => ArrayData::I64(file.into_vec::<i64>().map_err(read_err)?),
    };
    Ok(Array {
        shape,
        data: values,
        file_dtype: kind.name(),
        source: source.to_string(),
    })
}

/// The element type of a `.npy` dtype this crate reads.
pub(super) fn element_kind(dtype: &DType) -> std::result::Result<Element, String> {
    let DType::Plain(ts) = dtype else {
        return Err(format!(
            "has a structured dtype ({}); expected float16/32/64 or int32/64",
            dtype.descr()
        ));
    };
    match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 2) => Ok(Element::F16),
        (TypeChar::Float, 4) => Ok(Element::F32),
        (TypeChar::Float, 8) => Ok(Element::F64),
        (TypeChar::Int, 4) => Ok(Element::I32),
        (TypeChar::Int, 8) => Ok(Element::I64),
        _ => Err(format!(
            "has dtype {ts}, which is not supported; expected float16/32/64 or int32/64"
        )),
    }
}

/// The shape a `.npy` header declares, in `usize`.
pub(super) fn declared_shape(header: &NpyHeader) -> std::result::Result<Vec<usize>, String> {
    header
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| format!("declares shape {:?}, too large here", header.shape()))
}

/// Brackets a header may nest; NumPy writes 2 (3 for a structured dtype).
const MAX_HEADER_NESTING: usize = 8;

/// npyz multiplies the declared dimensions without overflow checks; a hostile
/// header could wrap or panic there. Scan the header's `shape` tuple first.
pub(super) fn check_declared_shape(bytes: &[u8]) -> std::result::Result<(), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("is not a .npy file (no \\x93NUMPY magic at the start)".into());
    }
    let (len, start) = match bytes[6] {
        1 => (
            usize::from(u16::from_le_bytes([bytes[8], bytes[9]])),
            10usize,
        ),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("has unsupported .npy format version {v}")),
    };
    let Some(text) = bytes.get(start..start.saturating_add(len)) else {
        return Err(format!(
            "is truncated: its header declares {len} bytes but the file has {}",
            bytes.len().saturating_sub(start)
        ));
    };
    let text = String::from_utf8_lossy(text);
    // npyz parses the header with a backtracking grammar that takes
    // exponential time on deep nesting (found by fuzzing: 80 '[' ran for
    // minutes). Real headers nest two or three levels; refuse anything deep.
    let mut depth = 0usize;
    for c in text.chars() {
        match c {
            '[' | '(' | '{' => depth += 1,
            ']' | ')' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if depth > MAX_HEADER_NESTING {
            return Err(format!(
                "has a header nested more than {MAX_HEADER_NESTING} levels deep; not a NumPy header"
            ));
        }
    }
    // NumPy never writes escapes in a header; refusing them keeps a key from
    // being spelt in a way the scan below would not recognise ('\x73hape').
    if text.contains('\\') {
        return Err("has a backslash escape in its header; not a NumPy header".into());
    }
    // Every value given for a quoted 'shape' key, tuple or list (npyz takes
    // both, and a later duplicate key wins): none may overflow when multiplied.
    for quote in ["'shape'", "\"shape\""] {
        for (at, _) in text.match_indices(quote) {
            let rest = text[at + quote.len()..].trim_start();
            let Some(rest) = rest.strip_prefix(':') else {
                continue;
            };
            let rest = rest.trim_start();
            let close = match rest.chars().next() {
                Some('(') => ')',
                Some('[') => ']',
                _ => continue,
            };
            let Some(end) = rest.find(close) else {
                continue;
            };
            let dims = &rest[1..end];
            let mut count: u64 = 1;
            for dim in dims.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                let Ok(d) = dim.trim_end_matches('L').parse::<u64>() else {
                    break; // Not a plain integer: npyz rejects it with its own message.
                };
                count = count.checked_mul(d).ok_or_else(|| {
                    format!("declares shape ({dims}), whose element count overflows")
                })?;
            }
        }
    }
    Ok(())
}

/// Encodes an f32 array of `shape` as `.npy` bytes (`[]` is a 0-d array).
pub fn write_npy_bytes(shape: &[usize], data: &[f32]) -> Result<Vec<u8>> {
    let fail = |e: std::io::Error| file_error(Path::new("<npy encoder>"), e);
    if element_count(shape) != Some(data.len()) {
        return Err(wgpu_loss::Error::LengthMismatch {
            what: "npy data",
            expected: element_count(shape).unwrap_or(usize::MAX),
            actual: data.len(),
        }
        .into());
    }
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut bytes = Vec::with_capacity(128 + 4 * data.len());
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&dims)
        .writer(&mut bytes)
        .begin_nd()
        .map_err(fail)?;
    writer.extend(data.iter().copied()).map_err(fail)?;
    writer.finish().map_err(fail)?;
    Ok(bytes)
}

/// Writes an f32 array of `shape` to `path` as `.npy`, atomically.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let bytes = write_npy_bytes(shape, data)?;
    write_atomically(path, &bytes)
}
