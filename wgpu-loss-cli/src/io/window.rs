//! Arrays read and written a window of elements at a time, for `eval` on
//! files larger than memory: [`ArrayFile`] reads any element range of a
//! `.npy` or one `.safetensors` tensor without mapping the file (so the
//! pages read never count toward the resident set), and [`NpyWriter`] writes
//! a `.npy` header first and then the data as it comes.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use npyz::{NpyHeader, Order};

use super::{element_count, file_error, FileSpec};
use crate::error::Result;

/// Element type of a file's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Element {
    /// IEEE half.
    F16,
    /// bfloat16 (safetensors only).
    Bf16,
    /// f32.
    F32,
    /// f64, rounded to f32 when read.
    F64,
    /// i32 class indices.
    I32,
    /// i64 class indices.
    I64,
}

impl Element {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Element::F16 | Element::Bf16 => 2,
            Element::F32 | Element::I32 => 4,
            Element::F64 | Element::I64 => 8,
        }
    }

    /// NumPy's name (`bfloat16` for bf16).
    pub fn name(self) -> &'static str {
        match self {
            Element::F16 => "float16",
            Element::Bf16 => "bfloat16",
            Element::F32 => "float32",
            Element::F64 => "float64",
            Element::I32 => "int32",
            Element::I64 => "int64",
        }
    }

    /// Whether the values are floats.
    pub fn is_float(self) -> bool {
        !matches!(self, Element::I32 | Element::I64)
    }

    /// The `.npy` type string this element is written as: `.npy` has no
    /// bfloat16, so bf16 is written as f32 (and so are integers).
    fn npy_descr(self) -> &'static str {
        match self {
            Element::F16 => "<f2",
            Element::F64 => "<f8",
            _ => "<f4",
        }
    }

    /// The element an output of this input type is written as: f16 and f64 stay, the rest become f32 (`.npy` has no bfloat16).
    pub fn output(self) -> Element {
        match self {
            Element::F16 | Element::F64 => self,
            _ => Element::F32,
        }
    }
}

/// An array in a file, read by element ranges. Opening reads and checks the
/// header and the file's length, not the data.
#[derive(Debug)]
pub struct ArrayFile {
    /// The file as named on the command line (for messages).
    pub source: String,
    /// Shape; `[]` for a 0-d array.
    pub shape: Vec<usize>,
    /// Element type of the data.
    pub element: Element,
    path: PathBuf,
    data_start: u64,
    big_endian: bool,
    file: File,
    raw: Vec<u8>,
}

impl ArrayFile {
    /// Opens a `.npy` file or one tensor of a `.safetensors` file
    /// (`FILE.safetensors:NAME`; the name may be left out when the file holds
    /// one tensor), as [`super::read_array`] names them.
    pub fn open(arg: &str) -> Result<ArrayFile> {
        let spec = FileSpec::parse(arg);
        if let Some((file, _)) = arg.rsplit_once(':').filter(|(file, _)| {
            !spec.is_safetensors() && !spec.path.exists() && Path::new(file).is_file()
        }) {
            return Err(file_error(
                Path::new(file),
                format!(
                    "{arg:?}: a tensor name after ':' is only meaningful for .safetensors files"
                ),
            ));
        }
        let meta = std::fs::metadata(&spec.path).map_err(|e| file_error(&spec.path, e))?;
        if !meta.is_file() {
            return Err(file_error(&spec.path, "is not a regular file"));
        }
        let mut file = File::open(&spec.path).map_err(|e| file_error(&spec.path, e))?;
        let (shape, element, data_start, source, big_endian) = if spec.is_safetensors() {
            safetensors_layout(&mut file, &spec, meta.len())?
        } else {
            npy_layout(&mut file, &spec.path, meta.len())?
        };
        Ok(ArrayFile {
            source,
            shape,
            element,
            path: spec.path,
            data_start,
            big_endian,
            file,
            raw: Vec::new(),
        })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        element_count(&self.shape).unwrap_or(0)
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of data.
    pub fn data_bytes(&self) -> u64 {
        (self.len() * self.element.size()) as u64
    }

    fn read_raw(&mut self, first: usize, count: usize) -> Result<&[u8]> {
        let size = self.element.size();
        if first.checked_add(count).is_none_or(|end| end > self.len()) {
            return Err(file_error(
                &self.path,
                format!(
                    "elements {first}..{} asked of {} elements",
                    first.saturating_add(count),
                    self.len()
                ),
            ));
        }
        self.raw.resize(count * size, 0);
        let at = self.data_start + (first * size) as u64;
        let path = &self.path;
        self.file
            .seek(SeekFrom::Start(at))
            .and_then(|_| self.file.read_exact(&mut self.raw))
            .map_err(|e| {
                file_error(
                    path,
                    format!("could not read elements {first}..{}: {e}", first + count),
                )
            })?;
        if self.big_endian {
            self.raw.chunks_exact_mut(size).for_each(<[u8]>::reverse);
        }
        Ok(&self.raw)
    }

    /// Elements `first .. first + count` as f32 (f64 rounded); an error for integer data.
    pub fn read_f32(&mut self, first: usize, count: usize) -> Result<Vec<f32>> {
        let element = self.element;
        if !element.is_float() {
            return Err(file_error(
                &self.path,
                format!("has dtype {}; expected a float array", element.name()),
            ));
        }
        let raw = self.read_raw(first, count)?;
        Ok(match element {
            Element::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Element::Bf16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Element::F64 => raw
                .chunks_exact(8)
                .map(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })
                .collect(),
            _ => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        })
    }

    /// Elements `first .. first + count` as i64; an error for float data.
    pub fn read_i64(&mut self, first: usize, count: usize) -> Result<Vec<i64>> {
        let element = self.element;
        if element.is_float() {
            return Err(file_error(
                &self.path,
                format!(
                    "has dtype {}; expected integer class indices",
                    element.name()
                ),
            ));
        }
        let raw = self.read_raw(first, count)?;
        Ok(match element {
            Element::I32 => raw
                .chunks_exact(4)
                .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
            _ => raw
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
        })
    }
}

/// Checks that the data the header declares is exactly what the file holds.
fn check_length(
    path: &Path,
    shape: &[usize],
    element: Element,
    data_start: u64,
    file_len: u64,
) -> Result<()> {
    let needed = element_count(shape)
        .and_then(|n| n.checked_mul(element.size()))
        .ok_or_else(|| {
            file_error(
                path,
                format!("declares shape {shape:?}, whose size overflows"),
            )
        })?;
    let present = file_len.saturating_sub(data_start);
    if needed as u64 != present {
        return Err(file_error(
            path,
            format!(
                "declares shape {shape:?} of {} ({needed} data bytes), but {present} data bytes follow the header{}",
                element.name(),
                if (needed as u64) > present { " (truncated file?)" } else { "" }
            ),
        ));
    }
    Ok(())
}

/// Header bytes read at most (NumPy writes a few hundred; safetensors
/// headers of large models run to a few megabytes).
const MAX_HEADER_BYTES: u64 = 100 << 20;

fn read_at_most(file: &mut File, path: &Path, bytes: u64) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    file.take(bytes)
        .read_to_end(&mut buf)
        .map_err(|e| file_error(path, e))?;
    Ok(buf)
}

/// Shape, element, byte offset of the data, name for messages, big-endian data.
type Layout = (Vec<usize>, Element, u64, String, bool);

fn npy_layout(file: &mut File, path: &Path, file_len: u64) -> Result<Layout> {
    let fail = |problem: String| file_error(path, problem);
    let head = read_at_most(file, path, 12)?;
    if head.len() < 10 || &head[..6] != b"\x93NUMPY" {
        return Err(fail(
            "is not a .npy file (no \\x93NUMPY magic at the start)".into(),
        ));
    }
    let (len, start) = match head[6] {
        1 => (u64::from(u16::from_le_bytes([head[8], head[9]])), 10u64),
        2 | 3 if head.len() >= 12 => (
            u64::from(u32::from_le_bytes([head[8], head[9], head[10], head[11]])),
            12,
        ),
        v => return Err(fail(format!("has unsupported .npy format version {v}"))),
    };
    if len > MAX_HEADER_BYTES || start + len > file_len {
        return Err(fail(format!(
            "is truncated or not a .npy file: its header declares {len} bytes but the file has {}",
            file_len.saturating_sub(start)
        )));
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| file_error(path, e))?;
    let header_bytes = read_at_most(file, path, start + len)?;
    // The whole-file reader's checks (nesting, overflowing shapes) on the header alone.
    super::npy::check_declared_shape(&header_bytes).map_err(fail)?;
    let header = NpyHeader::from_reader(&mut &header_bytes[..])
        .map_err(|e| fail(format!("is not a valid .npy file: {e}")))?;
    if header.order() == Order::Fortran {
        return Err(fail(
            "is stored in Fortran order; save it in C order (numpy.ascontiguousarray) first".into(),
        ));
    }
    let element = super::npy::element_kind(&header.dtype()).map_err(fail)?;
    let shape = super::npy::declared_shape(&header).map_err(fail)?;
    let data_start = start + len;
    check_length(path, &shape, element, data_start, file_len)?;
    let big_endian = matches!(header.dtype(), npyz::DType::Plain(ts) if ts.endianness() == npyz::Endianness::Big);
    Ok((
        shape,
        element,
        data_start,
        path.display().to_string(),
        big_endian,
    ))
}

fn safetensors_layout(file: &mut File, spec: &FileSpec, file_len: u64) -> Result<Layout> {
    let path = &spec.path;
    let fail = |problem: String| file_error(path, problem);
    let head = read_at_most(file, path, 8)?;
    let Ok(n) = <[u8; 8]>::try_from(head.as_slice()).map(u64::from_le_bytes) else {
        return Err(fail(
            "is not a valid .safetensors file: shorter than its 8-byte header length".into(),
        ));
    };
    if n > MAX_HEADER_BYTES || 8 + n > file_len {
        return Err(fail(format!(
            "is not a valid .safetensors file: header of {n} bytes in a {file_len}-byte file"
        )));
    }
    let header = read_at_most(file, path, n)?;
    let metadata: safetensors::tensor::Metadata = serde_json::from_slice(&header)
        .map_err(|e| fail(format!("is not a valid .safetensors file: {e}")))?;
    let data_start = 8 + n;
    if data_start + metadata.data_len() as u64 != file_len {
        return Err(fail(format!(
            "is not a valid .safetensors file: its header describes {} data bytes, the file holds {}{}",
            metadata.data_len(),
            file_len - data_start,
            if (metadata.data_len() as u64) > file_len - data_start { " (truncated file?)" } else { "" }
        )));
    }
    let tensors = metadata.tensors();
    let names: Vec<&str> = tensors.keys().map(String::as_str).collect();
    let name = super::safetensors::pick_tensor(names, spec.tensor.as_deref()).map_err(fail)?;
    let Some(info) = tensors.get(name) else {
        return Err(fail(format!("has no tensor named {name:?}")));
    };
    use safetensors::Dtype;
    let element = match info.dtype {
        Dtype::F16 => Element::F16,
        Dtype::BF16 => Element::Bf16,
        Dtype::F32 => Element::F32,
        Dtype::F64 => Element::F64,
        Dtype::I32 => Element::I32,
        Dtype::I64 => Element::I64,
        other => {
            return Err(fail(format!(
                "tensor {name:?} has dtype {other}, which is not supported; expected F16, BF16, F32, F64, I32 or I64"
            )))
        }
    };
    Ok((
        info.shape.clone(),
        element,
        data_start + info.data_offsets.0 as u64,
        format!("{}:{name}", path.display()),
        false,
    ))
}

/// A `.npy` file written a window at a time: the header (with the final
/// shape) first, then values appended in order, converted to the element
/// type. [`NpyWriter::finish`] checks that exactly the declared count came.
#[derive(Debug)]
pub struct NpyWriter {
    path: PathBuf,
    out: BufWriter<File>,
    element: Element,
    expected: usize,
    written: usize,
    bytes: Vec<u8>,
}

impl NpyWriter {
    /// The `.npy` header's bytes for `shape` and `element` (see [`Element::output`]).
    pub fn header(shape: &[usize], element: Element) -> Vec<u8> {
        let dims = match shape {
            [] => String::new(),
            [d] => format!("{d},"),
            _ => shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        let mut text = format!(
            "{{'descr': '{}', 'fortran_order': False, 'shape': ({dims}), }}",
            element.npy_descr()
        );
        // Magic (6) + version (2) + length (2) + text + '\n', a multiple of 64.
        let total = (10 + text.len() + 1).div_ceil(64) * 64;
        text.extend(std::iter::repeat_n(' ', total - 10 - text.len() - 1));
        text.push('\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(text.len() as u16).to_le_bytes());
        bytes.extend_from_slice(text.as_bytes());
        bytes
    }

    /// Bytes the whole file will take.
    pub fn file_bytes(shape: &[usize], element: Element) -> u64 {
        Self::header(shape, element).len() as u64
            + element_count(shape).unwrap_or(usize::MAX) as u64 * element.output().size() as u64
    }

    /// Creates `path` (truncating it) and writes the header.
    pub fn create(path: &Path, shape: &[usize], element: Element) -> Result<NpyWriter> {
        let element = element.output();
        let file = File::create(path).map_err(|e| file_error(path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&Self::header(shape, element))
            .map_err(|e| file_error(path, e))?;
        Ok(NpyWriter {
            path: path.to_path_buf(),
            out,
            element,
            expected: element_count(shape).unwrap_or(usize::MAX),
            written: 0,
            bytes: Vec::new(),
        })
    }

    /// Appends `values`, converted to the file's element type.
    pub fn append(&mut self, values: &[f32]) -> Result<()> {
        if self.written + values.len() > self.expected {
            return Err(file_error(
                &self.path,
                format!(
                    "{} values past the declared {}",
                    self.written + values.len(),
                    self.expected
                ),
            ));
        }
        for block in values.chunks(1 << 16) {
            self.bytes.clear();
            match self.element {
                Element::F16 => block.iter().for_each(|&v| {
                    self.bytes
                        .extend_from_slice(&half::f16::from_f32(v).to_le_bytes())
                }),
                Element::F64 => block
                    .iter()
                    .for_each(|&v| self.bytes.extend_from_slice(&f64::from(v).to_le_bytes())),
                _ => self.bytes.extend_from_slice(bytemuck::cast_slice(block)),
            }
            self.out
                .write_all(&self.bytes)
                .map_err(|e| file_error(&self.path, e))?;
        }
        self.written += values.len();
        Ok(())
    }

    /// Flushes, and checks that every declared value was written.
    pub fn finish(mut self) -> Result<()> {
        if self.written != self.expected {
            return Err(file_error(
                &self.path,
                format!(
                    "{} values written of the declared {}",
                    self.written, self.expected
                ),
            ));
        }
        self.out.flush().map_err(|e| file_error(&self.path, e))?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| file_error(&self.path, e.error()))?;
        file.sync_all().map_err(|e| file_error(&self.path, e))
    }
}
