//! A pickle reader that never executes anything.
//!
//! A pickle is a program for Python's pickle machine. The official `ckpt-0` files
//! are pickles of numpy arrays and of `QuantizedWeight8bit` objects, so this module
//! runs a small stack machine that understands exactly the opcodes (protocols 2 to
//! 5) and the few callables those files use:
//!
//! - `numpy.core.multiarray._reconstruct` / `numpy._core.multiarray._reconstruct`
//!   with `numpy.ndarray`, then `BUILD` with the array state (numpy's `__reduce__`);
//! - `numpy.dtype(name | ml_dtypes.bfloat16, align, copy)` then `BUILD` (byte order);
//! - `numpy.core.numeric._frombuffer` / `numpy._core.numeric._frombuffer`
//!   (numpy's protocol-5 form);
//! - `_codecs.encode(str, 'latin1')` (how protocol 2 spells bytes);
//! - `__main__.QuantizedWeight8bit` / `model.QuantizedWeight8bit` built by `NEWOBJ`
//!   and `BUILD` with its `weight` / `scales` dict.
//!
//! Any other global is refused with its name; nothing is ever imported or called.
//! Array payloads are returned as byte ranges of the input so the caller can
//! memory-map them instead of copying.

use std::cell::RefCell;
use std::rc::Rc;

use super::DType;

/// Why a pickle could not be read.
#[derive(Debug, Clone, PartialEq)]
pub enum PickleErrorKind {
    /// A global outside the allowed set, as `module.name`.
    Forbidden(String),
    Malformed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PickleError {
    /// Byte offset of the opcode at fault.
    pub offset: usize,
    pub kind: PickleErrorKind,
}

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            PickleErrorKind::Forbidden(g) => {
                write!(f, "byte {}: refusing pickle global `{g}`", self.offset)
            }
            PickleErrorKind::Malformed(m) => write!(f, "byte {}: {m}", self.offset),
        }
    }
}

fn malformed<T>(offset: usize, reason: impl Into<String>) -> Result<T, PickleError> {
    Err(PickleError {
        offset,
        kind: PickleErrorKind::Malformed(reason.into()),
    })
}

/// An array payload: a range of the pickle's bytes, or bytes decoded from an
/// old-protocol string (which cannot be mapped).
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayBytes {
    Span { offset: usize, len: usize },
    Owned(Vec<u8>),
}

impl ArrayBytes {
    pub fn len(&self) -> usize {
        match self {
            ArrayBytes::Span { len, .. } => *len,
            ArrayBytes::Owned(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A numpy array as stored in the pickle (C order, little-endian).
#[derive(Debug, Clone, PartialEq)]
pub struct PickledArray {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: ArrayBytes,
}

/// What a checkpoint file holds.
#[derive(Debug, Clone, PartialEq)]
pub enum PickledTensor {
    Array(PickledArray),
    Quantized {
        /// The module the class was pickled from (`__main__` or `model`).
        module: String,
        weight: PickledArray,
        scales: PickledArray,
    },
}

// Opcodes (Python's Lib/pickle.py names).
pub mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const REDUCE: u8 = b'R';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_SET: u8 = 0x8f;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
    pub const BYTEARRAY8: u8 = 0x96;
}

/// The argument an opcode carries in the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    None,
    Int(i64),
    Float(f64),
    Str(String),
    /// A byte payload: its offset and length in the input.
    Bytes {
        offset: usize,
        len: usize,
    },
    Global {
        module: String,
        name: String,
    },
}

/// One decoded instruction.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    pub offset: usize,
    pub code: u8,
    pub arg: Arg,
}

impl Instruction {
    /// Python's name for the opcode (as `pickletools` prints it).
    pub fn name(&self) -> &'static str {
        opcode_name(self.code)
    }
}

pub fn opcode_name(code: u8) -> &'static str {
    use op::*;
    match code {
        MARK => "MARK",
        STOP => "STOP",
        POP => "POP",
        POP_MARK => "POP_MARK",
        DUP => "DUP",
        BININT => "BININT",
        BININT1 => "BININT1",
        BININT2 => "BININT2",
        NONE => "NONE",
        BINUNICODE => "BINUNICODE",
        APPEND => "APPEND",
        BUILD => "BUILD",
        GLOBAL => "GLOBAL",
        DICT => "DICT",
        EMPTY_DICT => "EMPTY_DICT",
        APPENDS => "APPENDS",
        BINGET => "BINGET",
        LONG_BINGET => "LONG_BINGET",
        LIST => "LIST",
        EMPTY_LIST => "EMPTY_LIST",
        BINPUT => "BINPUT",
        LONG_BINPUT => "LONG_BINPUT",
        SETITEM => "SETITEM",
        TUPLE => "TUPLE",
        EMPTY_TUPLE => "EMPTY_TUPLE",
        SETITEMS => "SETITEMS",
        BINFLOAT => "BINFLOAT",
        REDUCE => "REDUCE",
        PROTO => "PROTO",
        NEWOBJ => "NEWOBJ",
        TUPLE1 => "TUPLE1",
        TUPLE2 => "TUPLE2",
        TUPLE3 => "TUPLE3",
        NEWTRUE => "NEWTRUE",
        NEWFALSE => "NEWFALSE",
        LONG1 => "LONG1",
        LONG4 => "LONG4",
        BINBYTES => "BINBYTES",
        SHORT_BINBYTES => "SHORT_BINBYTES",
        SHORT_BINUNICODE => "SHORT_BINUNICODE",
        BINUNICODE8 => "BINUNICODE8",
        BINBYTES8 => "BINBYTES8",
        EMPTY_SET => "EMPTY_SET",
        NEWOBJ_EX => "NEWOBJ_EX",
        STACK_GLOBAL => "STACK_GLOBAL",
        MEMOIZE => "MEMOIZE",
        FRAME => "FRAME",
        BYTEARRAY8 => "BYTEARRAY8",
        _ => "UNKNOWN",
    }
}

/// Decodes instructions one at a time; every length is checked against the bytes
/// left before it is used.
struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    fn take(&mut self, at: usize, n: u64) -> Result<&'a [u8], PickleError> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return malformed(
                at,
                format!(
                    "truncated: needs {n} more bytes at byte {}, only {left} left",
                    self.pos
                ),
            );
        }
        let n = n as usize;
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self, at: usize) -> Result<u8, PickleError> {
        Ok(self.take(at, 1)?[0])
    }

    fn le_u32(&mut self, at: usize) -> Result<u32, PickleError> {
        let b = self.take(at, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn le_u64(&mut self, at: usize) -> Result<u64, PickleError> {
        let b = self.take(at, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn text(&mut self, at: usize, n: u64) -> Result<String, PickleError> {
        let b = self.take(at, n)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => malformed(at, "string is not valid UTF-8"),
        }
    }

    fn line(&mut self, at: usize) -> Result<String, PickleError> {
        let rest = &self.bytes[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return malformed(at, "truncated: unterminated GLOBAL line");
        };
        let s = self.text(at, end as u64)?;
        self.pos += 1;
        Ok(s)
    }

    fn payload(&mut self, at: usize, n: u64) -> Result<Arg, PickleError> {
        let offset = self.pos;
        self.take(at, n)?;
        Ok(Arg::Bytes {
            offset,
            len: n as usize,
        })
    }

    fn next(&mut self) -> Result<Option<Instruction>, PickleError> {
        use op::*;
        if self.pos >= self.bytes.len() {
            return Ok(None);
        }
        let at = self.pos;
        let code = self.u8(at)?;
        let arg = match code {
            MARK | STOP | POP | POP_MARK | DUP | NONE | APPEND | BUILD | DICT | EMPTY_DICT
            | APPENDS | LIST | EMPTY_LIST | SETITEM | TUPLE | EMPTY_TUPLE | SETITEMS | REDUCE
            | NEWOBJ | TUPLE1 | TUPLE2 | TUPLE3 | NEWTRUE | NEWFALSE | NEWOBJ_EX | STACK_GLOBAL
            | MEMOIZE | EMPTY_SET => Arg::None,
            PROTO => Arg::Int(self.u8(at)? as i64),
            FRAME => Arg::Int(self.le_u64(at)? as i64),
            BININT => Arg::Int(self.le_u32(at)? as i32 as i64),
            BININT1 => Arg::Int(self.u8(at)? as i64),
            BININT2 => {
                let b = self.take(at, 2)?;
                Arg::Int(u16::from_le_bytes([b[0], b[1]]) as i64)
            }
            LONG1 | LONG4 => {
                let n = if code == LONG1 {
                    self.u8(at)? as u64
                } else {
                    self.le_u32(at)? as u64
                };
                let b = self.take(at, n)?;
                if b.len() > 8 {
                    return malformed(at, "integer too large");
                }
                let mut v: i64 = 0;
                for (i, &byte) in b.iter().enumerate() {
                    v |= (byte as i64) << (8 * i);
                }
                // Sign-extend the two's complement value.
                if let Some(&last) = b.last() {
                    if last & 0x80 != 0 && b.len() < 8 {
                        v -= 1i64 << (8 * b.len());
                    }
                }
                Arg::Int(v)
            }
            BINFLOAT => {
                let b = self.take(at, 8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Arg::Float(f64::from_be_bytes(a))
            }
            SHORT_BINUNICODE => {
                let n = self.u8(at)? as u64;
                Arg::Str(self.text(at, n)?)
            }
            BINUNICODE => {
                let n = self.le_u32(at)? as u64;
                Arg::Str(self.text(at, n)?)
            }
            BINUNICODE8 => {
                let n = self.le_u64(at)?;
                Arg::Str(self.text(at, n)?)
            }
            SHORT_BINBYTES => {
                let n = self.u8(at)? as u64;
                self.payload(at, n)?
            }
            BINBYTES => {
                let n = self.le_u32(at)? as u64;
                self.payload(at, n)?
            }
            BINBYTES8 | BYTEARRAY8 => {
                let n = self.le_u64(at)?;
                self.payload(at, n)?
            }
            GLOBAL => {
                let module = self.line(at)?;
                let name = self.line(at)?;
                Arg::Global { module, name }
            }
            BINGET | BINPUT => Arg::Int(self.u8(at)? as i64),
            LONG_BINGET | LONG_BINPUT => Arg::Int(self.le_u32(at)? as i64),
            other => {
                return malformed(
                    at,
                    format!(
                        "unsupported pickle opcode 0x{other:02x} ({})",
                        opcode_name(other)
                    ),
                )
            }
        };
        Ok(Some(Instruction {
            offset: at,
            code,
            arg,
        }))
    }
}

/// Decodes every instruction up to and including `STOP` (for inspection and tests;
/// executes nothing).
pub fn disassemble(bytes: &[u8]) -> Result<Vec<Instruction>, PickleError> {
    let mut decoder = Decoder { bytes, pos: 0 };
    let mut out = Vec::new();
    while let Some(ins) = decoder.next()? {
        let stop = ins.code == op::STOP;
        out.push(ins);
        if stop {
            return Ok(out);
        }
    }
    malformed(bytes.len(), "truncated: no STOP opcode")
}

/// The callables and classes a checkpoint may name.
#[derive(Debug, Clone, PartialEq)]
enum Global {
    Reconstruct,
    NdArray,
    NumpyDtype,
    Bfloat16,
    FromBuffer,
    CodecsEncode,
    QuantizedWeight8bit(String),
}

fn resolve_global(module: &str, name: &str) -> Option<Global> {
    match (module, name) {
        ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => {
            Some(Global::Reconstruct)
        }
        ("numpy", "ndarray") => Some(Global::NdArray),
        ("numpy", "dtype") => Some(Global::NumpyDtype),
        ("ml_dtypes", "bfloat16") => Some(Global::Bfloat16),
        ("numpy.core.numeric" | "numpy._core.numeric", "_frombuffer") => Some(Global::FromBuffer),
        ("_codecs", "encode") => Some(Global::CodecsEncode),
        ("__main__" | "model", "QuantizedWeight8bit") => {
            Some(Global::QuantizedWeight8bit(module.to_string()))
        }
        _ => None,
    }
}

#[derive(Debug)]
enum Object {
    Dtype {
        dtype: DType,
        byteorder: char,
    },
    /// `_reconstruct(ndarray, (0,), b'b')`: empty until `BUILD` gives it a state.
    Array(Option<PickledArray>),
    Quantized {
        module: String,
        weight: Option<PickledArray>,
        scales: Option<PickledArray>,
    },
}

#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Str(Rc<str>),
    Bytes(Rc<ArrayBytes>),
    Tuple(Rc<Node>),
    List(Rc<RefCell<Node>>),
    /// Keys and values alternate in the node's items.
    Dict(Rc<RefCell<Node>>),
    Global(Global),
    Object(Rc<RefCell<Object>>),
}

/// Deepest nesting of tuples, lists and dicts a pickle may build. A checkpoint
/// tensor nests four levels; Python's own unpickler has no limit, and a file of
/// 200,000 one-byte `TUPLE1`s would otherwise build (and drop) 200,000 levels.
pub const MAX_DEPTH: usize = 100;

/// Most instructions a pickle may run. A checkpoint tensor runs about 130;
/// each instruction can leave a value of up to ~100 bytes behind (on the stack
/// or in the memo: `MEMOIZE` is one byte), so this bounds the reader's memory
/// at a few MB whatever the file, instead of ~30x its size.
pub const MAX_INSTRUCTIONS: usize = 1 << 16;

/// The items of a tuple, list or dict and the depth of their nesting.
#[derive(Debug)]
struct Node {
    /// 1 + the deepest item's depth, as recorded when items were added. An item
    /// mutated after it was added (a memoised list appended to later) can make
    /// the real depth larger: the limit then does not apply, but `Drop` below
    /// still never recurses.
    depth: usize,
    items: Vec<Value>,
}

/// The depth of a container holding `items`: 1 + the deepest of them.
fn depth_holding(at: usize, items: &[Value]) -> Result<usize, PickleError> {
    let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
    if depth > MAX_DEPTH {
        return malformed(
            at,
            format!("values nested more than {MAX_DEPTH} levels deep"),
        );
    }
    Ok(depth)
}

impl Node {
    fn new(at: usize, items: Vec<Value>) -> Result<Node, PickleError> {
        Ok(Node {
            depth: depth_holding(at, &items)?,
            items,
        })
    }

    /// Adds items whose container depth [`depth_holding`] gave (measured before
    /// this node is borrowed: an item may be the node itself).
    fn add(&mut self, depth: usize, items: impl IntoIterator<Item = Value>) {
        self.depth = self.depth.max(depth);
        self.items.extend(items);
    }
}

impl std::ops::Deref for Node {
    type Target = [Value];

    fn deref(&self) -> &[Value] {
        &self.items
    }
}

impl Drop for Node {
    /// Frees nested containers from a work list instead of recursively, so no
    /// nesting (however it was built) can overflow the stack.
    fn drop(&mut self) {
        let mut pending = std::mem::take(&mut self.items);
        while let Some(value) = pending.pop() {
            let inner = match value {
                Value::Tuple(node) => Rc::into_inner(node),
                Value::List(node) | Value::Dict(node) => {
                    Rc::into_inner(node).map(RefCell::into_inner)
                }
                _ => None,
            };
            // The last owner empties the node here; it then drops with no items.
            if let Some(mut node) = inner {
                pending.append(&mut node.items);
            }
        }
    }
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Object(_) => "object",
        }
    }

    /// How deeply containers nest in this value (0 for a scalar).
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(node) => node.depth,
            Value::List(node) | Value::Dict(node) => node.borrow().depth,
            _ => 0,
        }
    }
}

/// Parses the numpy type string of `numpy.dtype(...)` (`f4`, `<i1`, `|b1`...).
fn parse_typestr(s: &str) -> Option<(DType, Option<char>)> {
    let (order, rest) = match s.chars().next()? {
        c @ ('<' | '>' | '|' | '=') => (Some(c), &s[1..]),
        _ => (None, s),
    };
    let dtype = match rest {
        "f2" => DType::F16,
        "f4" => DType::F32,
        "f8" => DType::F64,
        "i1" => DType::I8,
        "i2" => DType::I16,
        "i4" => DType::I32,
        "i8" => DType::I64,
        "u1" => DType::U8,
        "u2" => DType::U16,
        "u4" => DType::U32,
        "u8" => DType::U64,
        "b1" | "?" => DType::Bool,
        _ => return None,
    };
    Some((dtype, order))
}

struct Machine {
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: std::collections::HashMap<u32, Value>,
}

impl Machine {
    fn pop(&mut self, at: usize) -> Result<Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return malformed(at, "stack underflow");
        }
        Ok(self.stack.pop().expect("checked above"))
    }

    fn top(&mut self, at: usize) -> Result<&mut Value, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return malformed(at, "stack underflow");
        }
        Ok(self.stack.last_mut().expect("checked above"))
    }

    fn pop_mark(&mut self, at: usize) -> Result<Vec<Value>, PickleError> {
        let Some(mark) = self.marks.pop() else {
            return malformed(at, "no MARK on the stack");
        };
        Ok(self.stack.split_off(mark))
    }

    fn pop_n(&mut self, at: usize, n: usize) -> Result<Vec<Value>, PickleError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() < floor + n {
            return malformed(at, "stack underflow");
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    /// `APPEND(S)` (`code`) to the list on top, `SETITEM(S)` to the dict.
    fn add_to_top(&mut self, at: usize, code: u8, items: Vec<Value>) -> Result<(), PickleError> {
        let depth = depth_holding(at, &items)?;
        let wants_list = matches!(code, op::APPEND | op::APPENDS);
        match self.top(at)? {
            Value::List(node) if wants_list => node.borrow_mut().add(depth, items),
            Value::Dict(node) if !wants_list => node.borrow_mut().add(depth, items),
            other => return malformed(at, format!("{} on a {}", opcode_name(code), other.kind())),
        }
        Ok(())
    }

    fn memo_put(&mut self, at: usize, key: u32) -> Result<(), PickleError> {
        let value = self.top(at)?.clone();
        self.memo.insert(key, value);
        Ok(())
    }
}

fn expect_int(at: usize, v: &Value, what: &str) -> Result<i64, PickleError> {
    match v {
        Value::Int(i) => Ok(*i),
        other => malformed(
            at,
            format!("{what}: expected an int, found {}", other.kind()),
        ),
    }
}

fn shape_of(at: usize, v: &Value) -> Result<Vec<usize>, PickleError> {
    let Value::Tuple(dims) = v else {
        return malformed(
            at,
            format!("array shape: expected a tuple, found {}", v.kind()),
        );
    };
    if dims.len() > 16 {
        return malformed(at, format!("array has {} dimensions", dims.len()));
    }
    dims.iter()
        .map(|d| {
            let d = expect_int(at, d, "array dimension")?;
            usize::try_from(d).or_else(|_| malformed(at, format!("negative array dimension {d}")))
        })
        .collect()
}

fn dtype_of(at: usize, v: &Value) -> Result<DType, PickleError> {
    let Value::Object(obj) = v else {
        return malformed(
            at,
            format!("array dtype: expected a dtype, found {}", v.kind()),
        );
    };
    // (Not borrowed when it is the array being built.)
    match obj.try_borrow().as_deref() {
        Ok(Object::Dtype { dtype, byteorder }) => {
            if *byteorder == '>' && dtype.size() > 1 {
                return malformed(at, format!("big-endian {dtype} arrays are not supported"));
            }
            Ok(*dtype)
        }
        _ => malformed(at, "array dtype: expected a numpy dtype"),
    }
}

fn make_array(
    at: usize,
    dtype: DType,
    shape: Vec<usize>,
    data: &Value,
) -> Result<PickledArray, PickleError> {
    let elements = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| PickleError {
            offset: at,
            kind: PickleErrorKind::Malformed(format!("array shape {shape:?} overflows")),
        })?;
    let expected = elements
        .checked_mul(dtype.size())
        .ok_or_else(|| PickleError {
            offset: at,
            kind: PickleErrorKind::Malformed(format!("array shape {shape:?} overflows")),
        })?;
    let Value::Bytes(bytes) = data else {
        return malformed(
            at,
            format!(
                "array data: expected bytes, found {} (object arrays are not supported)",
                data.kind()
            ),
        );
    };
    if bytes.len() != expected {
        return malformed(
            at,
            format!(
                "array payload is {} bytes, but shape {shape:?} of {dtype} needs {expected}",
                bytes.len()
            ),
        );
    }
    Ok(PickledArray {
        dtype,
        shape,
        data: (**bytes).clone(),
    })
}

fn call(at: usize, func: Global, args: &[Value]) -> Result<Value, PickleError> {
    match func {
        Global::Reconstruct => {
            if !matches!(args.first(), Some(Value::Global(Global::NdArray))) {
                return malformed(at, "_reconstruct: only numpy.ndarray can be reconstructed");
            }
            Ok(Value::Object(Rc::new(RefCell::new(Object::Array(None)))))
        }
        Global::NumpyDtype => {
            let dtype = match args.first() {
                Some(Value::Str(s)) => match parse_typestr(s) {
                    Some((dtype, _)) => dtype,
                    None => return malformed(at, format!("unsupported numpy dtype `{s}`")),
                },
                Some(Value::Global(Global::Bfloat16)) => DType::BF16,
                _ => return malformed(at, "numpy.dtype: unsupported arguments"),
            };
            Ok(Value::Object(Rc::new(RefCell::new(Object::Dtype {
                dtype,
                byteorder: '=',
            }))))
        }
        Global::FromBuffer => {
            let [buffer, dtype, shape, order] = args else {
                return malformed(at, "_frombuffer: expected 4 arguments");
            };
            if let Value::Str(order) = order {
                let is_c = &**order == "C";
                if !is_c {
                    return malformed(at, format!("_frombuffer: unsupported order `{order}`"));
                }
            }
            let dtype = dtype_of(at, dtype)?;
            let shape = shape_of(at, shape)?;
            let array = make_array(at, dtype, shape, buffer)?;
            Ok(Value::Object(Rc::new(RefCell::new(Object::Array(Some(
                array,
            ))))))
        }
        Global::CodecsEncode => {
            let [Value::Str(text), Value::Str(encoding)] = args else {
                return malformed(at, "_codecs.encode: expected (str, encoding)");
            };
            if !matches!(&**encoding, "latin1" | "latin-1") {
                return malformed(
                    at,
                    format!("_codecs.encode: unsupported encoding `{encoding}`"),
                );
            }
            let mut bytes = Vec::with_capacity(text.len());
            for ch in text.chars() {
                let code = ch as u32;
                if code > 0xff {
                    return malformed(at, "_codecs.encode: character outside latin-1");
                }
                bytes.push(code as u8);
            }
            Ok(Value::Bytes(Rc::new(ArrayBytes::Owned(bytes))))
        }
        Global::NdArray | Global::Bfloat16 | Global::QuantizedWeight8bit(_) => {
            malformed(at, "this global cannot be called with REDUCE")
        }
    }
}

fn build(at: usize, target: &Value, state: Value) -> Result<(), PickleError> {
    let Value::Object(obj) = target else {
        return malformed(at, format!("BUILD on a {}", target.kind()));
    };
    let mut obj = obj.borrow_mut();
    match &mut *obj {
        Object::Dtype { byteorder, .. } => {
            let Value::Tuple(items) = &state else {
                return malformed(at, "dtype state: expected a tuple");
            };
            match items.get(1) {
                Some(Value::Str(order)) if order.len() == 1 => {
                    *byteorder = order.chars().next().expect("one char");
                }
                _ => return malformed(at, "dtype state: missing byte order"),
            }
            Ok(())
        }
        Object::Array(slot) => {
            if slot.is_some() {
                return malformed(at, "array built twice");
            }
            let Value::Tuple(items) = &state else {
                return malformed(at, "array state: expected a tuple");
            };
            let [version, shape, dtype, fortran, data] = &items[..] else {
                return malformed(
                    at,
                    format!("array state: expected 5 items, found {}", items.len()),
                );
            };
            expect_int(at, version, "array state version")?;
            let shape = shape_of(at, shape)?;
            let dtype = dtype_of(at, dtype)?;
            if matches!(fortran, Value::Bool(true)) && shape.iter().filter(|&&d| d > 1).count() > 1
            {
                return malformed(at, "Fortran-order arrays are not supported");
            }
            *slot = Some(make_array(at, dtype, shape, data)?);
            Ok(())
        }
        Object::Quantized { weight, scales, .. } => {
            let dict = match &state {
                Value::Dict(d) => d.clone(),
                Value::Tuple(items) => match items.first() {
                    Some(Value::Dict(d)) => d.clone(),
                    _ => return malformed(at, "QuantizedWeight8bit state: expected a dict"),
                },
                _ => return malformed(at, "QuantizedWeight8bit state: expected a dict"),
            };
            for pair in dict.borrow().chunks_exact(2) {
                let (key, value) = (&pair[0], &pair[1]);
                let Value::Str(key) = key else {
                    return malformed(at, "QuantizedWeight8bit state: non-string key");
                };
                let array = match value {
                    // (Not borrowed when it is the object being built.)
                    Value::Object(o) => match o.try_borrow().as_deref() {
                        Ok(Object::Array(Some(a))) => a.clone(),
                        _ => {
                            return malformed(
                                at,
                                format!("QuantizedWeight8bit.{key}: not an array"),
                            )
                        }
                    },
                    other => {
                        return malformed(
                            at,
                            format!("QuantizedWeight8bit.{key}: found {}", other.kind()),
                        )
                    }
                };
                match &**key {
                    "weight" => *weight = Some(array),
                    "scales" => *scales = Some(array),
                    other => {
                        return malformed(
                            at,
                            format!("QuantizedWeight8bit: unexpected field `{other}`"),
                        )
                    }
                }
            }
            Ok(())
        }
    }
}

/// Runs a checkpoint pickle and returns the tensor it describes.
pub fn read_tensor(bytes: &[u8]) -> Result<PickledTensor, PickleError> {
    use op::*;
    let mut decoder = Decoder { bytes, pos: 0 };
    let mut m = Machine {
        stack: Vec::new(),
        marks: Vec::new(),
        memo: std::collections::HashMap::new(),
    };
    for _ in 0..MAX_INSTRUCTIONS {
        let Some(ins) = decoder.next()? else {
            return malformed(bytes.len(), "truncated: no STOP opcode");
        };
        let at = ins.offset;
        match (ins.code, ins.arg) {
            (PROTO, Arg::Int(v)) => {
                if !(2..=5).contains(&v) {
                    return malformed(at, format!("unsupported pickle protocol {v}"));
                }
            }
            (FRAME, Arg::Int(len)) => {
                if (len as u64) > (bytes.len() - decoder.pos) as u64 {
                    return malformed(
                        at,
                        format!("truncated: frame of {len} bytes runs past the end"),
                    );
                }
            }
            (STOP, _) => {
                let result = m.pop(at)?;
                return finish(at, result);
            }
            (MARK, _) => m.marks.push(m.stack.len()),
            (POP, _) => {
                m.pop(at)?;
            }
            (POP_MARK, _) => {
                m.pop_mark(at)?;
            }
            (DUP, _) => {
                let v = m.top(at)?.clone();
                m.stack.push(v);
            }
            (NONE, _) => m.stack.push(Value::None),
            (NEWTRUE, _) => m.stack.push(Value::Bool(true)),
            (NEWFALSE, _) => m.stack.push(Value::Bool(false)),
            (BININT | BININT1 | BININT2 | LONG1 | LONG4, Arg::Int(v)) => {
                m.stack.push(Value::Int(v))
            }
            (SHORT_BINUNICODE | BINUNICODE | BINUNICODE8, Arg::Str(s)) => {
                m.stack.push(Value::Str(s.into()))
            }
            (SHORT_BINBYTES | BINBYTES | BINBYTES8 | BYTEARRAY8, Arg::Bytes { offset, len }) => m
                .stack
                .push(Value::Bytes(Rc::new(ArrayBytes::Span { offset, len }))),
            (EMPTY_TUPLE, _) => m
                .stack
                .push(Value::Tuple(Rc::new(Node::new(at, Vec::new())?))),
            (TUPLE1 | TUPLE2 | TUPLE3, _) => {
                let n = (ins.code - TUPLE1 + 1) as usize;
                let items = m.pop_n(at, n)?;
                m.stack.push(Value::Tuple(Rc::new(Node::new(at, items)?)));
            }
            (TUPLE, _) => {
                let items = m.pop_mark(at)?;
                m.stack.push(Value::Tuple(Rc::new(Node::new(at, items)?)));
            }
            (EMPTY_LIST, _) => m.stack.push(Value::List(Rc::new(RefCell::new(Node::new(
                at,
                Vec::new(),
            )?)))),
            (LIST, _) => {
                let items = m.pop_mark(at)?;
                m.stack
                    .push(Value::List(Rc::new(RefCell::new(Node::new(at, items)?))));
            }
            (APPEND, _) => {
                let v = m.pop(at)?;
                m.add_to_top(at, ins.code, vec![v])?;
            }
            (APPENDS, _) => {
                let items = m.pop_mark(at)?;
                m.add_to_top(at, ins.code, items)?;
            }
            (EMPTY_DICT, _) => m.stack.push(Value::Dict(Rc::new(RefCell::new(Node::new(
                at,
                Vec::new(),
            )?)))),
            (DICT, _) => {
                let items = m.pop_mark(at)?;
                if items.len() % 2 != 0 {
                    return malformed(at, "DICT with an odd number of items");
                }
                m.stack
                    .push(Value::Dict(Rc::new(RefCell::new(Node::new(at, items)?))));
            }
            (SETITEM, _) => {
                let value = m.pop(at)?;
                let key = m.pop(at)?;
                m.add_to_top(at, ins.code, vec![key, value])?;
            }
            (SETITEMS, _) => {
                let items = m.pop_mark(at)?;
                if items.len() % 2 != 0 {
                    return malformed(at, "SETITEMS with an odd number of items");
                }
                m.add_to_top(at, ins.code, items)?;
            }
            (GLOBAL, Arg::Global { module, name }) => {
                let Some(g) = resolve_global(&module, &name) else {
                    return Err(PickleError {
                        offset: at,
                        kind: PickleErrorKind::Forbidden(format!("{module}.{name}")),
                    });
                };
                m.stack.push(Value::Global(g));
            }
            (STACK_GLOBAL, _) => {
                let name = m.pop(at)?;
                let module = m.pop(at)?;
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    return malformed(at, "STACK_GLOBAL needs two strings");
                };
                let Some(g) = resolve_global(&module, &name) else {
                    return Err(PickleError {
                        offset: at,
                        kind: PickleErrorKind::Forbidden(format!("{module}.{name}")),
                    });
                };
                m.stack.push(Value::Global(g));
            }
            (REDUCE, _) => {
                let args = m.pop(at)?;
                let func = m.pop(at)?;
                let Value::Tuple(args) = args else {
                    return malformed(at, "REDUCE arguments are not a tuple");
                };
                let Value::Global(func) = func else {
                    return malformed(at, format!("REDUCE on a {}", func.kind()));
                };
                let result = call(at, func, &args)?;
                m.stack.push(result);
            }
            (NEWOBJ | NEWOBJ_EX, _) => {
                if ins.code == NEWOBJ_EX {
                    m.pop(at)?; // kwargs
                }
                let args = m.pop(at)?;
                let cls = m.pop(at)?;
                match (cls, args) {
                    (Value::Global(Global::QuantizedWeight8bit(module)), Value::Tuple(a))
                        if a.is_empty() =>
                    {
                        m.stack
                            .push(Value::Object(Rc::new(RefCell::new(Object::Quantized {
                                module,
                                weight: None,
                                scales: None,
                            }))))
                    }
                    (cls, _) => {
                        return malformed(
                            at,
                            format!("NEWOBJ of a {} is not supported", cls.kind()),
                        )
                    }
                }
            }
            (BUILD, _) => {
                let state = m.pop(at)?;
                let target = m.top(at)?.clone();
                build(at, &target, state)?;
            }
            (MEMOIZE, _) => {
                let key = m.memo.len() as u32;
                m.memo_put(at, key)?;
            }
            (BINPUT | LONG_BINPUT, Arg::Int(key)) => m.memo_put(at, key as u32)?,
            (BINGET | LONG_BINGET, Arg::Int(key)) => {
                let Some(v) = m.memo.get(&(key as u32)) else {
                    return malformed(at, format!("memo key {key} was never stored"));
                };
                m.stack.push(v.clone());
            }
            (code, _) => {
                return malformed(
                    at,
                    format!("unsupported pickle opcode {}", opcode_name(code)),
                )
            }
        }
    }
    malformed(
        decoder.pos,
        format!(
            "more than {MAX_INSTRUCTIONS} pickle instructions (a checkpoint tensor takes about 130)"
        ),
    )
}

fn finish(at: usize, result: Value) -> Result<PickledTensor, PickleError> {
    let Value::Object(obj) = result else {
        return malformed(
            at,
            format!("the pickle holds a {}, not an array", result.kind()),
        );
    };
    let obj = obj.borrow();
    match &*obj {
        Object::Array(Some(a)) => Ok(PickledTensor::Array(a.clone())),
        Object::Quantized {
            module,
            weight: Some(weight),
            scales: Some(scales),
        } => Ok(PickledTensor::Quantized {
            module: module.clone(),
            weight: weight.clone(),
            scales: scales.clone(),
        }),
        Object::Quantized { .. } => malformed(at, "QuantizedWeight8bit without weight and scales"),
        Object::Array(None) => malformed(at, "array without a state"),
        Object::Dtype { .. } => malformed(at, "the pickle holds a dtype, not an array"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_foreign_globals() {
        // pickle.dumps(os.system, protocol=2) style: GLOBAL 'os\nsystem\n'.
        let bytes = b"\x80\x02cos\nsystem\nq\x00.";
        let err = read_tensor(bytes).unwrap_err();
        assert_eq!(err.kind, PickleErrorKind::Forbidden("os.system".into()));
        assert_eq!(err.offset, 2);
    }

    #[test]
    fn truncated_input_is_an_error() {
        let bytes = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x05num";
        let err = read_tensor(bytes).unwrap_err();
        assert!(
            matches!(err.kind, PickleErrorKind::Malformed(ref m) if m.contains("truncated")),
            "{err}"
        );
    }

    /// Runs `f` on a thread with a small stack, so that recursion as deep as
    /// the nesting (200,000 levels, or 9,000 built by mutation) overflows it.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(128 << 10)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn deep_nesting_is_refused_while_parsing() {
        // None wrapped in 200,000 one-tuples: a 200 KB file.
        let mut bytes = b"\x80\x02N".to_vec();
        bytes.extend(std::iter::repeat_n(op::TUPLE1, 200_000));
        bytes.push(op::STOP);
        let err = on_small_stack(move || read_tensor(&bytes).unwrap_err());
        assert_eq!(
            err,
            PickleError {
                offset: 3 + MAX_DEPTH,
                kind: PickleErrorKind::Malformed(format!(
                    "values nested more than {MAX_DEPTH} levels deep"
                )),
            }
        );
    }

    #[test]
    fn nesting_built_by_mutation_is_dropped_without_recursion() {
        // Lists 0..n memoised, then list i+1 appended to list i in turn: each
        // append sees a shallow list, so the depth limit does not catch the
        // chain, n levels deep; dropping it must not recurse.
        let n = 9_000u32;
        let mut bytes = b"\x80\x04".to_vec();
        for i in 0..n {
            bytes.push(op::EMPTY_LIST);
            bytes.push(op::LONG_BINPUT);
            bytes.extend(i.to_le_bytes());
            bytes.push(op::POP);
        }
        for i in 0..n - 1 {
            for key in [i, i + 1] {
                bytes.push(op::LONG_BINGET);
                bytes.extend(key.to_le_bytes());
            }
            bytes.extend([op::APPEND, op::POP]);
        }
        bytes.push(op::LONG_BINGET);
        bytes.extend(0u32.to_le_bytes());
        bytes.push(op::STOP);
        let err = on_small_stack(move || read_tensor(&bytes).unwrap_err());
        assert_eq!(
            err.kind,
            PickleErrorKind::Malformed("the pickle holds a list, not an array".into())
        );
    }

    #[test]
    fn instruction_count_is_bounded() {
        // One-byte MEMOIZEs each add a memo entry: memory was ~30x the file.
        let mut bytes = b"\x80\x04N".to_vec();
        bytes.extend(std::iter::repeat_n(op::MEMOIZE, 100_000));
        bytes.push(op::STOP);
        let err = read_tensor(&bytes).unwrap_err();
        assert_eq!(
            err,
            PickleError {
                offset: 3 + MAX_INSTRUCTIONS - 2,
                kind: PickleErrorKind::Malformed(format!(
                    "more than {MAX_INSTRUCTIONS} pickle instructions (a checkpoint tensor takes about 130)"
                )),
            }
        );
    }

    #[test]
    fn an_object_in_its_own_state_is_an_error() {
        // q = QuantizedWeight8bit(); q.__setstate__({"weight": q})
        let mut bytes = b"\x80\x02c__main__\nQuantizedWeight8bit\n)\x81q\x00}".to_vec();
        bytes.extend(b"X\x06\x00\x00\x00weighth\x00sb.");
        let err = read_tensor(&bytes).unwrap_err();
        assert_eq!(
            err.kind,
            PickleErrorKind::Malformed("QuantizedWeight8bit.weight: not an array".into())
        );
    }

    #[test]
    fn an_array_as_its_own_dtype_is_an_error() {
        // a = _reconstruct(ndarray, (0,), b"b"); a.__setstate__((1, (1,), a, False, b"x"))
        let mut bytes =
            b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87Rq\x00".to_vec();
        bytes.extend(b"(K\x01K\x01\x85h\x00\x89C\x01xtb.");
        let err = read_tensor(&bytes).unwrap_err();
        assert_eq!(
            err.kind,
            PickleErrorKind::Malformed("array dtype: expected a numpy dtype".into())
        );
    }

    #[test]
    fn sign_extends_long1() {
        let mut d = Decoder {
            bytes: b"\x8a\x02\xff\xff",
            pos: 0,
        };
        assert_eq!(d.next().unwrap().unwrap().arg, Arg::Int(-1));
        let mut d = Decoder {
            bytes: b"\x8a\x02\xff\x7f",
            pos: 0,
        };
        assert_eq!(d.next().unwrap().unwrap().arg, Arg::Int(32767));
    }
}
