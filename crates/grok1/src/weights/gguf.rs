//! GGUF reader (versions 2 and 3, little-endian): llama.cpp's `grok` files,
//! quantised or not, single or split (`name-00001-of-0000N.gguf`).
//!
//! Hand-written because the format is part of the product: tensors are views
//! into the memory map (never copied), and every count, length, offset and
//! dimension in the file is checked against the file's size before it is used,
//! so a truncated or lying file is an error naming the file and the byte.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::mmap::MappedFile;
use super::WeightError;
use super::{BlockTensor, DType, DenseTensor, StoredTensor, TensorData, TensorKind, TensorStore};
use crate::config::{
    ModelConfig, GROK1_ATTN_SOFTCAP, GROK1_EMBEDDING_MULTIPLIER, GROK1_OUTPUT_MULTIPLIER,
};
use crate::quant::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
/// The fixed header: magic, version, tensor count, metadata count.
const HEADER_LEN: usize = 24;
/// ggml's limit on tensor dimensions.
const MAX_DIMS: usize = 4;
/// Arrays inside arrays deeper than this are refused (no real file nests).
const MAX_DEPTH: usize = 3;
const DEFAULT_ALIGNMENT: u64 = 32;
/// llama.cpp's default attention multiplier for `grok` (`1/sqrt(128)`).
const GROK1_ATTN_MULTIPLIER: f64 = 0.08838834764831845;

/// GGUF's metadata value type ids (`gguf_type` in llama.cpp's gguf.h), shared
/// by this reader and the writer in `convert`.
pub(crate) mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(v) => Some(v),
            _ => None,
        }
    }

    /// A short rendering for `inspect`: arrays show their length and first items.
    pub fn summary(&self) -> String {
        match self {
            MetaValue::Str(s) if s.chars().count() > 80 => {
                format!("{:?}...", s.chars().take(80).collect::<String>())
            }
            MetaValue::Str(s) => format!("{s:?}"),
            MetaValue::Array(v) => {
                let head: Vec<String> = v.iter().take(4).map(|x| x.summary()).collect();
                let more = if v.len() > 4 { ", ..." } else { "" };
                format!("[{} items: {}{more}]", v.len(), head.join(", "))
            }
            MetaValue::Bool(b) => b.to_string(),
            MetaValue::F32(v) => v.to_string(),
            MetaValue::F64(v) => v.to_string(),
            other => other.as_u64().map_or_else(
                || match other {
                    MetaValue::I8(v) => v.to_string(),
                    MetaValue::I16(v) => v.to_string(),
                    MetaValue::I32(v) => v.to_string(),
                    MetaValue::I64(v) => v.to_string(),
                    _ => String::new(),
                },
                |v| v.to_string(),
            ),
        }
    }
}

/// One tensor's header entry.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `ne[0]` varies fastest (the reverse of numpy's shape).
    pub ne: Vec<u64>,
    pub dtype: GgmlType,
    /// Byte offset of the data from the start of the data section.
    pub offset: u64,
    pub size: u64,
}

impl TensorInfo {
    /// Shape in numpy order.
    pub fn shape(&self) -> Vec<usize> {
        self.ne.iter().rev().map(|&n| n as usize).collect()
    }
}

/// One parsed GGUF file.
#[derive(Debug)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the data section.
    pub data_start: u64,
    map: Arc<MappedFile>,
}

/// Names of ggml types this engine does not decode, for error messages.
fn unsupported_type_name(id: u32) -> String {
    let name = match id {
        4 => "Q4_2 (removed from ggml)",
        5 => "Q4_3 (removed from ggml)",
        9 => "Q8_1",
        15 => "Q8_K",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        31 => "Q4_0_4_4 (removed from ggml)",
        32 => "Q4_0_4_8 (removed from ggml)",
        33 => "Q4_0_8_8 (removed from ggml)",
        36 => "IQ4_NL_4_4 (removed from ggml)",
        37 => "IQ4_NL_4_8 (removed from ggml)",
        38 => "IQ4_NL_8_8 (removed from ggml)",
        41 => "Q1_0",
        _ => return format!("unknown ggml type id {id}"),
    };
    format!("{name} (ggml type {id})")
}

/// A bounds-checked reader over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    file: &'a Path,
}

impl<'a> Cursor<'a> {
    fn error(&self, at: usize, reason: impl Into<String>) -> WeightError {
        WeightError::Format {
            file: self.file.to_path_buf(),
            offset: at as u64,
            reason: reason.into(),
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WeightError> {
        if n > self.remaining() {
            return Err(self.error(
                self.pos,
                format!(
                    "file ends inside {what}: {n} bytes needed, {} left (truncated file?)",
                    self.remaining()
                ),
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], WeightError> {
        Ok(self.take(N, what)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, WeightError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, WeightError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count that must fit in what is left of the file at `min_item` bytes an item.
    fn count(&mut self, what: &str, min_item: usize) -> Result<usize, WeightError> {
        let at = self.pos;
        let n = self.u64(what)?;
        let fits = (n as u128) * (min_item.max(1) as u128) <= self.remaining() as u128;
        if !fits {
            return Err(self.error(
                at,
                format!(
                    "{what} is {n}, more than the {} bytes left in the file can hold",
                    self.remaining()
                ),
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, WeightError> {
        let len = self.count(what, 1)?;
        let at = self.pos;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.error(at, format!("{what} is not valid UTF-8: {e}")))
    }

    fn value(&mut self, kind: u32, depth: usize, key: &str) -> Result<MetaValue, WeightError> {
        let what = format!("the value of `{key}`");
        Ok(match kind {
            value_type::U8 => MetaValue::U8(self.array::<1>(&what)?[0]),
            value_type::I8 => MetaValue::I8(self.array::<1>(&what)?[0] as i8),
            value_type::U16 => MetaValue::U16(u16::from_le_bytes(self.array(&what)?)),
            value_type::I16 => MetaValue::I16(i16::from_le_bytes(self.array(&what)?)),
            value_type::U32 => MetaValue::U32(u32::from_le_bytes(self.array(&what)?)),
            value_type::I32 => MetaValue::I32(i32::from_le_bytes(self.array(&what)?)),
            value_type::F32 => MetaValue::F32(f32::from_le_bytes(self.array(&what)?)),
            value_type::BOOL => {
                let at = self.pos;
                match self.array::<1>(&what)?[0] {
                    0 => MetaValue::Bool(false),
                    1 => MetaValue::Bool(true),
                    b => return Err(self.error(at, format!("{what}: bool byte {b} is not 0 or 1"))),
                }
            }
            value_type::STRING => MetaValue::Str(self.string(&what)?),
            value_type::ARRAY => {
                let at = self.pos;
                if depth >= MAX_DEPTH {
                    return Err(
                        self.error(at, format!("{what}: arrays nested deeper than {MAX_DEPTH}"))
                    );
                }
                let item = self.u32(&what)?;
                use value_type::*;
                let min = match item {
                    U8 | I8 | BOOL => 1,
                    U16 | I16 => 2,
                    U32 | I32 | F32 => 4,
                    // strings and arrays start with a u64 length
                    STRING | ARRAY | U64 | I64 | F64 => 8,
                    other => {
                        return Err(
                            self.error(at, format!("{what}: unknown array item type {other}"))
                        )
                    }
                };
                let n = self.count(&format!("the length of {what}"), min)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(item, depth + 1, key)?);
                }
                MetaValue::Array(items)
            }
            value_type::U64 => MetaValue::U64(u64::from_le_bytes(self.array(&what)?)),
            value_type::I64 => MetaValue::I64(i64::from_le_bytes(self.array(&what)?)),
            value_type::F64 => MetaValue::F64(f64::from_le_bytes(self.array(&what)?)),
            other => {
                return Err(self.error(self.pos - 4, format!("{what}: unknown value type {other}")))
            }
        })
    }
}

impl GgufFile {
    /// Maps and parses one file; checks every tensor's range against the file.
    pub fn open(path: &Path) -> Result<Self, WeightError> {
        let map = MappedFile::open(path).map_err(|source| WeightError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, map)
    }

    fn parse(path: &Path, map: Arc<MappedFile>) -> Result<Self, WeightError> {
        let mut c = Cursor {
            bytes: map.bytes(),
            pos: 0,
            file: path,
        };
        if let Some(reason) = not_gguf(c.bytes) {
            return Err(c.error(0, reason));
        }
        c.take(MAGIC.len(), "the magic number")?;
        let version = c.u32("the version")?;
        match version {
            2 | 3 => {}
            1 => return Err(c.error(4, "GGUF version 1 (32-bit counts) is not supported; re-save the file with a current llama.cpp")),
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(c.error(4, "a big-endian GGUF file; only little-endian files are supported"))
            }
            v => return Err(c.error(4, format!("unknown GGUF version {v}"))),
        }
        // A tensor entry is at least 8 (name length) + 4 (dims) + 4 (type) + 8 (offset) bytes.
        let tensor_count = c.count("the tensor count", 24)?;
        // A metadata entry is at least 8 (key length) + 4 (type) + 1 bytes.
        let kv_count = c.count("the metadata count", 13)?;
        let mut metadata = Vec::with_capacity(kv_count);
        let mut keys = HashSet::new();
        for _ in 0..kv_count {
            let at = c.pos;
            let key = c.string("a metadata key")?;
            if !keys.insert(key.clone()) {
                return Err(c.error(at, format!("metadata key `{key}` appears twice")));
            }
            let kind = c.u32(&format!("the type of `{key}`"))?;
            let value = c.value(kind, 0, &key)?;
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(c.error(
                        0,
                        format!("general.alignment {} is not a power of two", v.summary()),
                    ))
                }
            },
        };
        let mut tensors = Vec::with_capacity(tensor_count);
        let mut names = HashSet::new();
        for _ in 0..tensor_count {
            let at = c.pos;
            let name = c.string("a tensor name")?;
            if !names.insert(name.clone()) {
                return Err(c.error(at, format!("tensor `{name}` appears twice")));
            }
            let dims = c.u32(&format!("the dimension count of `{name}`"))? as usize;
            if dims == 0 || dims > MAX_DIMS {
                return Err(c.error(
                    at,
                    format!("tensor `{name}` has {dims} dimensions (1 to {MAX_DIMS} allowed)"),
                ));
            }
            let mut ne = Vec::with_capacity(dims);
            let mut elements: u64 = 1;
            for _ in 0..dims {
                let n = c.u64(&format!("the shape of `{name}`"))?;
                elements = elements
                    .checked_mul(n)
                    .filter(|&e| n > 0 && e < 1 << 48)
                    .ok_or_else(|| {
                        c.error(
                            at,
                            format!("tensor `{name}` has an absurd shape (dimension {n})"),
                        )
                    })?;
                ne.push(n);
            }
            let type_at = c.pos;
            let id = c.u32(&format!("the type of `{name}`"))?;
            let dtype = GgmlType::from_id(id).ok_or_else(|| {
                c.error(
                    type_at,
                    format!(
                        "tensor `{name}` has type {}, which this engine cannot read",
                        unsupported_type_name(id)
                    ),
                )
            })?;
            let offset = c.u64(&format!("the offset of `{name}`"))?;
            let row = dtype.row_bytes(ne[0] as usize).ok_or_else(|| {
                c.error(
                    at,
                    format!(
                        "tensor `{name}`: rows of {} values are not whole {dtype} blocks of {}",
                        ne[0],
                        dtype.block_size()
                    ),
                )
            })?;
            let size = (row as u64) * (elements / ne[0]);
            if offset % alignment != 0 {
                return Err(c.error(at, format!("tensor `{name}`: data offset {offset} is not a multiple of the alignment {alignment}")));
            }
            tensors.push(TensorInfo {
                name,
                ne,
                dtype,
                offset,
                size,
            });
        }
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = map.len() as u64;
        let data_len = file_len.saturating_sub(data_start);
        for t in &tensors {
            if t.offset
                .checked_add(t.size)
                .is_none_or(|end| end > data_len)
            {
                return Err(WeightError::Format {
                    file: path.to_path_buf(),
                    offset: data_start.saturating_add(t.offset),
                    reason: format!(
                        "tensor `{}` ({} bytes at data offset {}) runs past the end of the file ({file_len} bytes): truncated or lying header",
                        t.name, t.size, t.offset
                    ),
                });
            }
        }
        // Two tensors sharing bytes means the header lies about one of them.
        let mut order: Vec<&TensorInfo> = tensors.iter().collect();
        order.sort_by_key(|t| t.offset);
        for pair in order.windows(2) {
            if pair[0].offset + pair[0].size > pair[1].offset {
                return Err(WeightError::Format {
                    file: path.to_path_buf(),
                    offset: data_start + pair[1].offset,
                    reason: format!("tensors `{}` and `{}` overlap", pair[0].name, pair[1].name),
                });
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start,
            map,
        })
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The tensor's bytes as a view into the map.
    pub fn data(&self, t: &TensorInfo) -> TensorData {
        TensorData::mapped(
            self.map.clone(),
            (self.data_start + t.offset) as usize,
            t.size as usize,
        )
    }

    fn stored(&self, t: &TensorInfo) -> StoredTensor {
        let data = self.data(t);
        let shape = t.shape();
        let dense = |dtype| {
            TensorKind::Dense(DenseTensor {
                dtype,
                shape: shape.clone(),
                data: data.clone(),
            })
        };
        let kind = match t.dtype {
            GgmlType::F32 => dense(DType::F32),
            GgmlType::F16 => dense(DType::F16),
            GgmlType::BF16 => dense(DType::BF16),
            dtype => TensorKind::Blocks(BlockTensor {
                dtype,
                shape: shape.clone(),
                data: data.clone(),
            }),
        };
        StoredTensor {
            name: t.name.clone(),
            file: self.path.clone(),
            kind,
        }
    }
}

/// Why `bytes` cannot be a GGUF file, when their first bytes say so: what
/// they are instead, as far as that is recognisable.
fn not_gguf(bytes: &[u8]) -> Option<String> {
    let head = &bytes[..bytes.len().min(MAGIC.len())];
    let too_short = || {
        let n = bytes.len();
        let plural = if n == 1 { "" } else { "s" };
        format!("{n} byte{plural}, too short for a GGUF header ({HEADER_LEN} bytes)")
    };
    // ggml's files before GGUF; llama.cpp wrote the magic as a little-endian
    // u32, so "ggml" reads "lmgg" in the file.
    const LEGACY: [&[u8; 4]; 6] = [b"GGML", b"GGMF", b"GGJT", b"lmgg", b"fmgg", b"tjgg"];
    if bytes.is_empty() {
        Some("an empty file, not a GGUF model".into())
    } else if MAGIC.starts_with(head) {
        (bytes.len() < HEADER_LEN).then(too_short)
    } else if LEGACY.iter().any(|m| m[..] == *head) {
        Some(format!(
            "starts with `{}`: a pre-GGUF ggml file, not supported (convert it to GGUF with llama.cpp)",
            String::from_utf8_lossy(head)
        ))
    } else if bytes.len() > 8 && bytes[8] == b'{' {
        Some(
            "a safetensors file, not GGUF: pass the directory that holds it and its config.json"
                .into(),
        )
    } else if head[0] == 0x80 {
        Some("a Python pickle (a tensor of an official checkpoint?), not GGUF: pass the checkpoint's directory".into())
    } else if bytes.len() < MAGIC.len() {
        Some(too_short())
    } else {
        Some(format!(
            "not a GGUF file (magic {head:02x?}, expected \"GGUF\")"
        ))
    }
}

/// The other parts of a split model, from its first part's name
/// (`name-00001-of-00003.gguf` gives parts 2 and 3); empty for a single file.
fn split_siblings(first: &Path) -> Result<Vec<PathBuf>, WeightError> {
    let Some(name) = first.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let Some(stem) = name.strip_suffix(".gguf") else {
        return Ok(Vec::new());
    };
    // ...-NNNNN-of-MMMMM
    let parts: Vec<&str> = stem.rsplitn(4, '-').collect();
    if parts.len() < 4 || parts[1] != "of" {
        return Ok(Vec::new());
    }
    let (total, index, prefix) = (parts[0], parts[2], parts[3]);
    let (Ok(total_n), Ok(index_n)) = (total.parse::<usize>(), index.parse::<usize>()) else {
        return Ok(Vec::new());
    };
    if index_n != 1 {
        return Err(WeightError::Format {
            file: first.to_path_buf(),
            offset: 0,
            reason: format!(
                "part {index_n} of a split model: pass the first part (-{:0w$}-of-{total}.gguf)",
                1,
                w = index.len()
            ),
        });
    }
    let dir = first.parent().unwrap_or(Path::new("."));
    Ok((2..=total_n)
        .map(|i| dir.join(format!("{prefix}-{i:0w$}-of-{total}.gguf", w = index.len())))
        .collect())
}

/// A GGUF model: its parts, their tensors in one store, and the metadata of
/// the first part.
pub struct GgufModel {
    pub parts: Vec<GgufFile>,
    pub store: TensorStore,
}

impl GgufModel {
    /// Opens `path` (a `.gguf` file, or the first part of a split model).
    pub fn open(path: &Path) -> Result<Self, WeightError> {
        let first = GgufFile::open(path)?;
        let mut parts = vec![first];
        let siblings = split_siblings(path)?;
        let declared = parts[0].get("split.count").and_then(MetaValue::as_u64);
        if let Some(n) = declared {
            if n as usize != siblings.len() + 1 && !(n == 1 && siblings.is_empty()) {
                return Err(WeightError::Format {
                    file: path.to_path_buf(),
                    offset: 0,
                    reason: format!(
                        "split.count is {n} but the file name says {} parts",
                        siblings.len() + 1
                    ),
                });
            }
        }
        for p in &siblings {
            if !p.exists() {
                return Err(WeightError::MissingFile {
                    file: p.clone(),
                    tensor: "part of a split GGUF model".into(),
                });
            }
            parts.push(GgufFile::open(p)?);
        }
        let mut store = TensorStore::default();
        let mut seen = HashSet::new();
        for part in &parts {
            for t in &part.tensors {
                if !seen.insert(t.name.clone()) {
                    return Err(WeightError::Format {
                        file: part.path.clone(),
                        offset: 0,
                        reason: format!(
                            "tensor `{}` appears in two parts of the split model",
                            t.name
                        ),
                    });
                }
                store.insert(part.stored(t));
            }
        }
        if let Some(expected) = parts[0]
            .get("split.tensors.count")
            .and_then(MetaValue::as_u64)
        {
            if expected as usize != store.len() {
                return Err(WeightError::Format {
                    file: path.to_path_buf(),
                    offset: 0,
                    reason: format!(
                        "split.tensors.count is {expected} but the parts hold {} tensors",
                        store.len()
                    ),
                });
            }
        }
        Ok(GgufModel { parts, store })
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.parts[0].get(key)
    }

    fn error(&self, reason: String) -> WeightError {
        WeightError::Format {
            file: self.parts[0].path.clone(),
            offset: 0,
            reason,
        }
    }

    fn uint(&self, key: &str, default: Option<u64>) -> Result<usize, WeightError> {
        match self.get(key) {
            Some(v) => v.as_u64().map(|n| n as usize).ok_or_else(|| {
                self.error(format!(
                    "metadata `{key}` is {}, not a non-negative integer",
                    v.summary()
                ))
            }),
            None => default
                .map(|n| n as usize)
                .ok_or_else(|| self.error(format!("metadata `{key}` is missing"))),
        }
    }

    fn float(&self, key: &str, default: f64) -> Result<f64, WeightError> {
        match self.get(key) {
            Some(v) => v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                self.error(format!(
                    "metadata `{key}` is {}, not a finite number",
                    v.summary()
                ))
            }),
            None => Ok(default),
        }
    }

    /// The vocabulary stored in the file (`tokenizer.ggml.*`, llama.cpp's
    /// `llama` SentencePiece model), or `None` when the file has none.
    pub fn tokenizer(&self) -> Result<Option<grok1_tokenizer::Tokenizer>, WeightError> {
        use grok1_tokenizer::{PieceKind, SpecialIds, Tokenizer};
        let Some(tokens) = self.get("tokenizer.ggml.tokens") else {
            return Ok(None);
        };
        match self.get("tokenizer.ggml.model").and_then(MetaValue::as_str) {
            Some("llama") => {}
            other => {
                return Err(self.error(format!(
                    "tokenizer.ggml.model {other:?}: only SentencePiece (`llama`) vocabularies are supported; pass --tokenizer"
                )))
            }
        }
        let array = |key: &str| {
            self.get(key)
                .and_then(MetaValue::as_array)
                .ok_or_else(|| self.error(format!("metadata `{key}` is missing or not an array")))
        };
        let tokens = tokens
            .as_array()
            .ok_or_else(|| self.error("tokenizer.ggml.tokens is not an array".into()))?;
        let pieces: Vec<String> = tokens
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    self.error(format!("tokenizer.ggml.tokens[{i}] is not a string"))
                })
            })
            .collect::<Result<_, _>>()?;
        let scores: Vec<f32> = match self.get("tokenizer.ggml.scores") {
            Some(_) => array("tokenizer.ggml.scores")?
                .iter()
                .map(|v| v.as_f64().unwrap_or(0.0) as f32)
                .collect(),
            None => vec![0.0; pieces.len()],
        };
        let kinds: Vec<PieceKind> = match self.get("tokenizer.ggml.token_type") {
            Some(_) => array("tokenizer.ggml.token_type")?
                .iter()
                .map(|v| match v {
                    MetaValue::I32(2) => PieceKind::Unknown,
                    MetaValue::I32(3) => PieceKind::Control,
                    MetaValue::I32(4) => PieceKind::UserDefined,
                    MetaValue::I32(5) => PieceKind::Unused,
                    MetaValue::I32(6) => PieceKind::Byte,
                    _ => PieceKind::Normal,
                })
                .collect(),
            None => vec![PieceKind::Normal; pieces.len()],
        };
        let id = |key: &str| self.get(key).and_then(MetaValue::as_u64).map(|v| v as u32);
        let special = SpecialIds {
            unk: id("tokenizer.ggml.unknown_token_id"),
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            pad: id("tokenizer.ggml.padding_token_id"),
        };
        Tokenizer::from_vocab(&pieces, &scores, &kinds, special)
            .map(Some)
            .map_err(|e| self.error(format!("the vocabulary in the file is unusable: {e}")))
    }

    /// The model's constants from `grok.*` metadata, with llama.cpp's Grok-1
    /// defaults where older files omit a key. `grok.router_logit_softcapping` is
    /// ignored: Grok-1 has no router soft cap (shared/docs/formats.md).
    pub fn config(&self) -> Result<ModelConfig, WeightError> {
        let arch = self
            .get("general.architecture")
            .and_then(MetaValue::as_str)
            .ok_or_else(|| self.error("metadata `general.architecture` is missing".into()))?;
        if arch != "grok" {
            return Err(self.error(format!(
                "architecture `{arch}`: this engine runs Grok-1 (`grok`) models only"
            )));
        }
        let embedding = self
            .store
            .get("token_embd.weight")
            .map_err(|_| self.error("tensor `token_embd.weight` is missing".into()))?;
        let emb_size = self.uint("grok.embedding_length", None)?;
        let vocab_size = match embedding.shape() {
            [v, d] if *d == emb_size => *v,
            other => {
                return Err(self.error(format!(
                    "token_embd.weight has shape {other:?}, expected [vocab, {emb_size}]"
                )))
            }
        };
        let num_q_heads = self.uint("grok.attention.head_count", None)?;
        if num_q_heads == 0 {
            return Err(self.error("grok.attention.head_count is 0".into()));
        }
        let key_size = self.uint(
            "grok.attention.key_length",
            Some((emb_size / num_q_heads) as u64),
        )?;
        let ffn = match self.get("grok.expert_feed_forward_length") {
            Some(_) => self.uint("grok.expert_feed_forward_length", None)?,
            None => self.uint("grok.feed_forward_length", None)?,
        };
        let name = self
            .get("general.name")
            .and_then(MetaValue::as_str)
            .unwrap_or("grok-gguf")
            .to_string();
        let token = |key: &str, default: u64| self.uint(key, Some(default)).map(|v| v as u32);
        let cfg = ModelConfig {
            name,
            vocab_size,
            pad_token: token("tokenizer.ggml.padding_token_id", 0)?,
            eos_token: token("tokenizer.ggml.eos_token_id", 2)?,
            sequence_len: self.uint("grok.context_length", Some(8192))?,
            emb_size,
            key_size,
            num_q_heads,
            num_kv_heads: self.uint("grok.attention.head_count_kv", Some(num_q_heads as u64))?,
            num_layers: self.uint("grok.block_count", None)?,
            // Not stored in GGUF; the ffn width is.
            widening_factor: crate::config::widening_factor_for(ffn, emb_size),
            ffn_size: ffn,
            num_experts: self.uint("grok.expert_count", Some(8))?,
            num_selected_experts: self.uint("grok.expert_used_count", Some(2))?,
            attn_output_multiplier: self
                .float("grok.attention.output_scale", GROK1_ATTN_MULTIPLIER)?,
            embedding_multiplier_scale: self
                .float("grok.embedding_scale", GROK1_EMBEDDING_MULTIPLIER)?,
            output_multiplier_scale: self.float("grok.logit_scale", GROK1_OUTPUT_MULTIPLIER)?,
            attn_softcap: self.float("grok.attn_logit_softcapping", GROK1_ATTN_SOFTCAP)?,
            rope_base: self.float("grok.rope.freq_base", 10000.0)?,
            rms_norm_eps: self.float("grok.attention.layer_norm_rms_epsilon", 1e-5)?,
            model_parallel_shards: 1,
            seed: None,
            emb_std: None,
            num_tensors: None,
            tensors: None,
        };
        cfg.validate()
            .map_err(|e| self.error(format!("the metadata describe an invalid model: {e}")))?;
        Ok(cfg)
    }
}

/// The GGUF model `path` names: the file itself, or in a directory its only
/// `.gguf` file or the first part of its split model. `None` when `path` is
/// missing (for the caller to report) or holds no GGUF (another format's
/// directory).
pub fn find(path: &Path) -> Result<Option<PathBuf>, WeightError> {
    match std::fs::metadata(path) {
        // GGUF is the one format given as a single file, so a path that is not
        // a directory goes to its reader, which says what the file is if it is
        // not GGUF (or not a regular file at all).
        Ok(meta) if !meta.is_dir() => return Ok(Some(path.to_path_buf())),
        Ok(_) => {}
        Err(_) => return Ok(None),
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return Ok(None);
    };
    // Not only regular files: a FIFO named `x.gguf` is refused when opened,
    // rather than skipped for another format's error.
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf") && !p.is_dir())
        .collect();
    found.sort();
    let firsts: Vec<&PathBuf> = found
        .iter()
        .filter(|p| p.to_string_lossy().contains("-00001-of-"))
        .collect();
    match (found.len(), firsts.len()) {
        (0, _) => Ok(None),
        (1, _) => Ok(Some(found.remove(0))),
        (_, 1) => Ok(Some(firsts[0].clone())),
        _ => Err(WeightError::Format {
            file: path.to_path_buf(),
            offset: 0,
            reason: format!(
                "{} GGUF files here ({}): pass the one to load",
                found.len(),
                found
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}
