//! Opening a GGUF file: memory-map it, parse the header with candle, and hand out
//! metadata values and tensors as [`Weight`]s.

use std::fs::File;
use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};
use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::quant::{Formats, Weight};

/// An open GGUF file. Tensors are copied out of the map on request; the map itself is
/// dropped with this value once the model is built.
pub(crate) struct GgufFile {
    map: Mmap,
    content: Content,
}

impl GgufFile {
    /// Map and parse `path`.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)
            .map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
        let map = map_file(&file)
            .map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
        let content = Content::read(&mut Cursor::new(&map[..])).map_err(|e| {
            Error::Model(format!("{} is not a valid GGUF file: {e}", path.display()))
        })?;
        Ok(GgufFile { map, content })
    }

    /// A metadata value.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    /// A string value.
    pub(crate) fn str(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// A required integer value of any width.
    pub(crate) fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key).ok_or_else(|| Error::Model(format!("gguf metadata lacks `{key}`")))
    }

    /// An integer value of any width.
    pub(crate) fn opt_usize(&self, key: &str) -> Option<usize> {
        let v = self.get(key)?;
        match v {
            Value::U8(x) => Some(usize::from(*x)),
            Value::U16(x) => Some(usize::from(*x)),
            Value::U32(x) => usize::try_from(*x).ok(),
            Value::U64(x) => usize::try_from(*x).ok(),
            Value::I8(x) => usize::try_from(*x).ok(),
            Value::I16(x) => usize::try_from(*x).ok(),
            Value::I32(x) => usize::try_from(*x).ok(),
            Value::I64(x) => usize::try_from(*x).ok(),
            _ => None,
        }
    }

    /// A float value.
    pub(crate) fn opt_f32(&self, key: &str) -> Option<f32> {
        match self.get(key)? {
            Value::F32(x) => Some(*x),
            #[allow(clippy::cast_possible_truncation)]
            Value::F64(x) => Some(*x as f32),
            _ => None,
        }
    }

    /// A boolean value.
    pub(crate) fn opt_bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// Whether the file holds tensor `name`.
    pub(crate) fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Tensor `name` as a weight (row-major dims, outputs first).
    pub(crate) fn weight(&self, name: &str) -> Result<Weight> {
        let (dtype, bytes, dims) = self.tensor(name)?;
        Weight::from_gguf(dtype, bytes, dims)
            .map_err(|e| Error::Model(format!("tensor `{name}`: {e}")))
    }

    /// Tensor `name` in the form the engine runs it (see [`Weight::load`]).
    pub(crate) fn weight_as(&self, name: &str, formats: Formats) -> Result<Weight> {
        let (dtype, bytes, dims) = self.tensor(name)?;
        Weight::load(dtype, bytes, dims, formats)
            .map_err(|e| Error::Model(format!("tensor `{name}`: {e}")))
    }

    /// Tensor `name`: its type, its bytes in the mapped file and its dims.
    fn tensor(&self, name: &str) -> Result<(GgmlDType, &[u8], &[usize])> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| Error::Model(format!("gguf file lacks tensor `{name}`")))?;
        let elems = info.shape.elem_count();
        let size = elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        let start = usize::try_from(self.content.tensor_data_offset + info.offset)
            .map_err(|_| Error::Model(format!("tensor `{name}` offset overflows")))?;
        let bytes = self.map.get(start..start + size).ok_or_else(|| {
            Error::Model(format!("tensor `{name}` runs past the end of the file"))
        })?;
        Ok((info.ggml_dtype, bytes, info.shape.dims()))
    }

    /// Tensor `name` as a flat f32 vector (norm weights, biases).
    pub(crate) fn vector(&self, name: &str) -> Result<Vec<f32>> {
        Ok(self.weight(name)?.to_f32())
    }
}

/// Map a file read-only.
#[allow(unsafe_code)]
fn map_file(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the map is read-only and lives only while the model loads (tensors are
    // copied out of it). Another process truncating or rewriting the file during those
    // milliseconds is the one hazard, the same one every GGUF runtime accepts; model
    // files are not written in place.
    unsafe { Mmap::map(file) }
}
