//! Weights: a `TensorStore` that maps a parameter name (the official Haiku path,
//! e.g. `transformer/decoder_layer_3/moe/linear/w`) to a tensor view, filled by a
//! format reader. The model never knows which file format the weights came from.

pub mod ckpt0;
pub mod gguf;
pub mod mmap;
pub mod pickle;
pub mod pickle_writer;
pub mod random;
pub mod safetensors;
pub mod shard;
pub mod shard_set;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use mmap::MappedFile;

use crate::quant::GgmlType;

/// Element types a weight file may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// numpy's name for the type (`ml_dtypes` for bfloat16).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::U8 => "uint8",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::Bool => "bool",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors reading or checking weights. Each names the file and, where known,
/// the parameter path.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: byte {offset}: {reason}", file.display())]
    Pickle {
        file: PathBuf,
        offset: usize,
        reason: String,
    },
    #[error("{}: byte {offset}: refusing pickle global `{global}` (only numpy arrays, dtypes and QuantizedWeight8bit are allowed; nothing in a checkpoint is ever executed)", file.display())]
    ForbiddenGlobal {
        file: PathBuf,
        offset: usize,
        global: String,
    },
    #[error("{}: missing checkpoint file for `{tensor}`", file.display())]
    MissingFile { file: PathBuf, tensor: String },
    #[error("{}: unexpected file in the checkpoint directory (the config expects {expected} tensor files)", file.display())]
    StrayFile { file: PathBuf, expected: usize },
    #[error("{}: `{tensor}`: expected {expected}, found {found}", file.display())]
    Mismatch {
        file: PathBuf,
        tensor: String,
        expected: String,
        found: String,
    },
    #[error("{}: `{tensor}`: {reason}", file.display())]
    Invalid {
        file: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("{}: no checkpoint found (expected a `ckpt-0` directory or `tensor00000_000` files)", path.display())]
    NotACheckpoint { path: PathBuf },
    #[error("tensor `{0}` is not in the store")]
    NotFound(String),
    #[error("{}: byte {offset}: {reason}", file.display())]
    Format {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
}

/// Where a tensor's bytes live.
#[derive(Clone, Debug)]
enum Backing {
    Mapped(Arc<MappedFile>),
    Owned(Arc<Vec<u8>>),
}

/// A contiguous byte range holding a tensor payload: a view into a mapped file,
/// or an owned buffer (weights built in memory, old-protocol pickles).
#[derive(Clone, Debug)]
pub struct TensorData {
    backing: Backing,
    offset: usize,
    len: usize,
}

impl TensorData {
    /// A view of `len` bytes at `offset` of a mapped file. The caller has checked
    /// the range against the file length; this re-checks and panics otherwise.
    pub fn mapped(file: Arc<MappedFile>, offset: usize, len: usize) -> Self {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= file.len()),
            "tensor range outside its file"
        );
        TensorData {
            backing: Backing::Mapped(file),
            offset,
            len,
        }
    }

    pub fn owned(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        TensorData {
            backing: Backing::Owned(Arc::new(bytes)),
            offset: 0,
            len,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        let all: &[u8] = match &self.backing {
            Backing::Mapped(file) => file.bytes(),
            Backing::Owned(vec) => vec,
        };
        &all[self.offset..self.offset + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Byte offset of the payload inside its file (0 for owned data).
    pub fn file_offset(&self) -> usize {
        self.offset
    }

    /// True when the bytes are read from a memory map rather than the heap.
    pub fn is_mapped(&self) -> bool {
        matches!(self.backing, Backing::Mapped(_))
    }

    /// Lets the OS drop this range's pages from the process's resident set
    /// (mapped data only; the bytes stay readable). See [`MappedFile::release`].
    pub fn release(&self) {
        if let Backing::Mapped(file) = &self.backing {
            file.release(self.offset, self.len);
        }
    }

    /// A sub-range of this view.
    pub fn slice(&self, offset: usize, len: usize) -> Self {
        assert!(offset + len <= self.len, "tensor slice out of range");
        TensorData {
            backing: self.backing.clone(),
            offset: self.offset + offset,
            len,
        }
    }
}

/// A plain (not quantised) tensor.
#[derive(Clone, Debug)]
pub struct DenseTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// An int8 weight with bf16 scales grouped along the contracting axis: for a
/// weight `(*lead, K, N)` the scales are `(*lead, G, N)` and group `g` covers rows
/// `[g*K/G, (g+1)*K/G)`. Dequantised value = int8 * its group's scale.
#[derive(Clone, Debug)]
pub struct QuantizedTensor {
    /// Shape of the int8 weight, `(*lead, K, N)`.
    pub shape: Vec<usize>,
    /// Scale groups G along K.
    pub groups: usize,
    pub weight: TensorData,
    pub scales: TensorData,
    pub scale_dtype: DType,
}

/// A tensor in one of ggml's block formats (GGUF files), shape in numpy order
/// (the last axis is the one the blocks run along).
#[derive(Clone, Debug)]
pub struct BlockTensor {
    pub dtype: GgmlType,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

#[derive(Clone, Debug)]
pub enum TensorKind {
    Dense(DenseTensor),
    Int8Grouped(QuantizedTensor),
    Blocks(BlockTensor),
}

/// One named parameter and the file it came from.
#[derive(Clone, Debug)]
pub struct StoredTensor {
    /// Parameter path, e.g. `transformer/decoder_layer_0/moe/linear/w`.
    pub name: String,
    /// The file that holds it (for messages and `inspect`).
    pub file: PathBuf,
    pub kind: TensorKind,
}

impl StoredTensor {
    pub fn shape(&self) -> &[usize] {
        match &self.kind {
            TensorKind::Dense(t) => &t.shape,
            TensorKind::Int8Grouped(q) => &q.shape,
            TensorKind::Blocks(b) => &b.shape,
        }
    }

    /// The tensor as rows of a ggml type (`None` for the official int8 layout
    /// and for dense types ggml has no rows for).
    pub fn as_ggml(&self) -> Option<(GgmlType, &[usize], &TensorData)> {
        match &self.kind {
            TensorKind::Dense(t) => {
                let dtype = match t.dtype {
                    DType::F32 => GgmlType::F32,
                    DType::F16 => GgmlType::F16,
                    DType::BF16 => GgmlType::BF16,
                    _ => return None,
                };
                Some((dtype, &t.shape, &t.data))
            }
            TensorKind::Blocks(b) => Some((b.dtype, &b.shape, &b.data)),
            TensorKind::Int8Grouped(_) => None,
        }
    }

    pub fn element_count(&self) -> usize {
        self.shape().iter().product()
    }

    /// Payload bytes (weights plus scales for quantised tensors).
    pub fn byte_count(&self) -> usize {
        match &self.kind {
            TensorKind::Dense(t) => t.data.len(),
            TensorKind::Int8Grouped(q) => q.weight.len() + q.scales.len(),
            TensorKind::Blocks(b) => b.data.len(),
        }
    }

    pub fn dtype_label(&self) -> String {
        match &self.kind {
            TensorKind::Dense(t) => t.dtype.to_string(),
            TensorKind::Int8Grouped(q) => format!("int8+{}", q.scale_dtype),
            TensorKind::Blocks(b) => b.dtype.to_string(),
        }
    }
}

/// Parameters by name, in the order the format stores them.
#[derive(Default, Debug)]
pub struct TensorStore {
    tensors: Vec<StoredTensor>,
    index: HashMap<String, usize>,
}

impl TensorStore {
    pub fn insert(&mut self, tensor: StoredTensor) {
        self.index.insert(tensor.name.clone(), self.tensors.len());
        self.tensors.push(tensor);
    }

    pub fn get(&self, name: &str) -> Result<&StoredTensor, WeightError> {
        self.index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| WeightError::NotFound(name.to_string()))
    }

    pub fn iter(&self) -> impl Iterator<Item = &StoredTensor> {
        self.tensors.iter()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}
