//! Writes checkpoint pickles exactly as CPython's pickler (protocol 4) writes the
//! official files: the same opcodes, memo indices and frames, so the reference
//! JAX code loads what `grok1 init` writes and the files compare opcode for
//! opcode with the official ones.
//!
//! The two object shapes are a numpy array (`numpy.core.multiarray._reconstruct`
//! then `BUILD`, as numpy's `ndarray.__reduce__` produces) and a
//! `__main__.QuantizedWeight8bit` dataclass (`NEWOBJ` then `BUILD` with its
//! `__dict__`).
//! CPython memoises by object identity; the objects that are shared inside one
//! pickle (interned names, global objects, numpy's cached `b'b'`, one-character
//! strings, dtype singletons) are memoised here by key, everything else fresh.
//!
//! Framing follows `_pickle.c`: a frame is closed at the start of saving an object
//! once it holds 64 KiB or more, and a bytes payload of 64 KiB or more closes the
//! current frame and is written unframed, so multi-gigabyte payloads stream
//! straight to the file.

use std::collections::HashMap;
use std::io::{self, Write};

use super::pickle::op;
use super::DType;

const FRAME_SIZE_TARGET: usize = 64 * 1024;
const FRAME_SIZE_MIN: usize = 4;
const FRAME_HEADER_SIZE: usize = 9;

/// A payload of known length that can write itself; lets multi-gigabyte tensors be
/// generated and written in chunks.
pub trait Payload {
    fn byte_len(&self) -> u64;
    fn write_to(&mut self, out: &mut dyn Write) -> io::Result<()>;
}

impl Payload for &[u8] {
    fn byte_len(&self) -> u64 {
        self.len() as u64
    }

    fn write_to(&mut self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(self)
    }
}

/// The numpy description of one array: dtype and shape (C order, little-endian).
#[derive(Clone, Debug, PartialEq)]
pub struct ArraySpec {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl ArraySpec {
    pub fn byte_len(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size() as u64
    }
}

/// The module names a pickle refers to, which depend on the writer's numpy
/// version and on where the class was defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PickleStyle {
    /// `numpy.core.multiarray` (numpy 1, as in the official files) or
    /// `numpy._core.multiarray` (numpy 2).
    pub numpy_multiarray: &'static str,
    /// Module of `QuantizedWeight8bit`: `__main__` in the official files.
    pub class_module: &'static str,
    /// The flags numpy records in the pickled state of ml_dtypes' bfloat16 dtype
    /// (80 with numpy 1, as in the official files; 64 with numpy 2).
    pub bf16_dtype_flags: i64,
}

impl PickleStyle {
    /// As the official release was written.
    pub const OFFICIAL: PickleStyle = PickleStyle {
        numpy_multiarray: "numpy.core.multiarray",
        class_module: "__main__",
        bf16_dtype_flags: 80,
    };
}

#[derive(Hash, PartialEq, Eq)]
enum MemoKey {
    Str(String),
    Global(String, String),
    BytesB,
    Dtype(DType),
}

struct Pickler<'w> {
    out: &'w mut dyn Write,
    style: PickleStyle,
    buf: Vec<u8>,
    frame_start: Option<usize>,
    framing: bool,
    memo: HashMap<MemoKey, u32>,
    memo_len: u32,
}

impl<'w> Pickler<'w> {
    fn new(out: &'w mut dyn Write, style: PickleStyle) -> Self {
        Pickler {
            out,
            style,
            buf: Vec::new(),
            frame_start: None,
            framing: false,
            memo: HashMap::new(),
            memo_len: 0,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.framing && self.frame_start.is_none() {
            self.frame_start = Some(self.buf.len());
            self.buf.extend_from_slice(&[0u8; FRAME_HEADER_SIZE]);
        }
        self.buf.extend_from_slice(bytes);
    }

    fn commit_frame(&mut self) {
        let Some(start) = self.frame_start.take() else {
            return;
        };
        let frame_len = self.buf.len() - start - FRAME_HEADER_SIZE;
        if frame_len >= FRAME_SIZE_MIN {
            self.buf[start] = op::FRAME;
            self.buf[start + 1..start + FRAME_HEADER_SIZE]
                .copy_from_slice(&(frame_len as u64).to_le_bytes());
        } else {
            self.buf.drain(start..start + FRAME_HEADER_SIZE);
        }
    }

    /// Called where CPython starts saving an object.
    fn boundary(&mut self) -> io::Result<()> {
        if let Some(start) = self.frame_start {
            if self.buf.len() - start - FRAME_HEADER_SIZE >= FRAME_SIZE_TARGET {
                self.commit_frame();
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.frame_start.is_none() {
            self.out.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn memoize(&mut self, key: Option<MemoKey>) {
        self.write(&[op::MEMOIZE]);
        if let Some(key) = key {
            self.memo.insert(key, self.memo_len);
        }
        self.memo_len += 1;
    }

    /// Writes a memo reference if `key` was memoised; returns whether it did.
    fn get(&mut self, key: &MemoKey) -> bool {
        let Some(&index) = self.memo.get(key) else {
            return false;
        };
        if index < 256 {
            self.write(&[op::BINGET, index as u8]);
        } else {
            let mut b = vec![op::LONG_BINGET];
            b.extend_from_slice(&index.to_le_bytes());
            self.write(&b);
        }
        true
    }

    fn save_int(&mut self, v: i64) -> io::Result<()> {
        self.boundary()?;
        if (0..=0xff).contains(&v) {
            self.write(&[op::BININT1, v as u8]);
        } else if (0..=0xffff).contains(&v) {
            let b = (v as u16).to_le_bytes();
            self.write(&[op::BININT2, b[0], b[1]]);
        } else if let Ok(v32) = i32::try_from(v) {
            let mut b = vec![op::BININT];
            b.extend_from_slice(&v32.to_le_bytes());
            self.write(&b);
        } else {
            // Minimal two's-complement little-endian encoding, as pickle's encode_long.
            let bytes = v.to_le_bytes();
            let mut n = 8;
            while n > 1 {
                let top = bytes[n - 1];
                let next_sign = bytes[n - 2] & 0x80;
                if (top == 0 && next_sign == 0) || (top == 0xff && next_sign != 0) {
                    n -= 1;
                } else {
                    break;
                }
            }
            let mut b = vec![op::LONG1, n as u8];
            b.extend_from_slice(&bytes[..n]);
            self.write(&b);
        }
        Ok(())
    }

    fn save_bool(&mut self, v: bool) -> io::Result<()> {
        self.boundary()?;
        self.write(&[if v { op::NEWTRUE } else { op::NEWFALSE }]);
        Ok(())
    }

    fn save_none(&mut self) -> io::Result<()> {
        self.boundary()?;
        self.write(&[op::NONE]);
        Ok(())
    }

    /// A str; `shared` for strings CPython shares by identity (interned names,
    /// one-character strings), which are written once and then referenced.
    fn save_str(&mut self, s: &str, shared: bool) -> io::Result<()> {
        self.boundary()?;
        let key = MemoKey::Str(s.to_string());
        if shared && self.get(&key) {
            return Ok(());
        }
        let n = s.len();
        let mut b = Vec::with_capacity(n + 9);
        if n <= 0xff {
            b.push(op::SHORT_BINUNICODE);
            b.push(n as u8);
        } else if n as u64 > 0xffff_ffff {
            b.push(op::BINUNICODE8);
            b.extend_from_slice(&(n as u64).to_le_bytes());
        } else {
            b.push(op::BINUNICODE);
            b.extend_from_slice(&(n as u32).to_le_bytes());
        }
        b.extend_from_slice(s.as_bytes());
        self.write(&b);
        self.memoize(shared.then_some(key));
        Ok(())
    }

    fn save_global(&mut self, module: &str, name: &str) -> io::Result<()> {
        self.boundary()?;
        let key = MemoKey::Global(module.into(), name.into());
        if self.get(&key) {
            return Ok(());
        }
        self.save_str(module, true)?;
        self.save_str(name, true)?;
        self.write(&[op::STACK_GLOBAL]);
        self.memoize(Some(key));
        Ok(())
    }

    /// A bytes object whose content comes from `payload`.
    fn save_bytes(&mut self, payload: &mut dyn Payload, key: Option<MemoKey>) -> io::Result<()> {
        self.boundary()?;
        if let Some(k) = &key {
            if self.get(k) {
                return Ok(());
            }
        }
        let n = payload.byte_len();
        let mut header = Vec::with_capacity(9);
        if n <= 0xff {
            header.push(op::SHORT_BINBYTES);
            header.push(n as u8);
        } else if n > 0xffff_ffff {
            header.push(op::BINBYTES8);
            header.extend_from_slice(&n.to_le_bytes());
        } else {
            header.push(op::BINBYTES);
            header.extend_from_slice(&(n as u32).to_le_bytes());
        }
        if n >= FRAME_SIZE_TARGET as u64 {
            // Large payloads bypass framing and stream straight to the output.
            self.commit_frame();
            self.framing = false;
            self.write(&header);
            self.flush()?;
            let mut counted = CountingWriter {
                inner: &mut *self.out,
                written: 0,
            };
            payload.write_to(&mut counted)?;
            if counted.written != n {
                return Err(io::Error::other(format!(
                    "payload wrote {} bytes, expected {n}",
                    counted.written
                )));
            }
            self.framing = true;
        } else {
            self.write(&header);
            let mut small = Vec::with_capacity(n as usize);
            payload.write_to(&mut small)?;
            if small.len() as u64 != n {
                return Err(io::Error::other(format!(
                    "payload wrote {} bytes, expected {n}",
                    small.len()
                )));
            }
            self.write(&small);
        }
        self.memoize(key);
        Ok(())
    }

    /// A tuple of already-encodable items: `save_items` saves each element.
    fn save_tuple(
        &mut self,
        len: usize,
        save_items: impl FnOnce(&mut Self) -> io::Result<()>,
    ) -> io::Result<()> {
        self.boundary()?;
        if len == 0 {
            self.write(&[op::EMPTY_TUPLE]);
            return Ok(());
        }
        if len <= 3 {
            save_items(self)?;
            self.write(&[[op::TUPLE1, op::TUPLE2, op::TUPLE3][len - 1]]);
        } else {
            self.write(&[op::MARK]);
            save_items(self)?;
            self.write(&[op::TUPLE]);
        }
        self.memoize(None);
        Ok(())
    }

    fn save_dtype(&mut self, dtype: DType) -> io::Result<()> {
        self.boundary()?;
        let key = MemoKey::Dtype(dtype);
        if self.get(&key) {
            return Ok(());
        }
        // numpy's dtype.__reduce__: (numpy.dtype, (typestr, False, True), state).
        self.save_global("numpy", "dtype")?;
        self.save_tuple(3, |p| {
            match dtype {
                DType::BF16 => p.save_global("ml_dtypes", "bfloat16")?,
                other => p.save_str(&typestr(other), false)?,
            }
            p.save_bool(false)?;
            p.save_bool(true)
        })?;
        self.write(&[op::REDUCE]);
        self.memoize(Some(key));
        let (byteorder, elsize, alignment, flags) = match dtype {
            // ml_dtypes registers bfloat16 as a user dtype: numpy pickles its size,
            // alignment and flags explicitly.
            DType::BF16 => ("<", 2, 2, self.style.bf16_dtype_flags),
            d if d.size() == 1 => ("|", -1, -1, 0),
            _ => ("<", -1, -1, 0),
        };
        self.save_tuple(8, |p| {
            p.save_int(3)?;
            p.save_str(byteorder, true)?;
            p.save_none()?;
            p.save_none()?;
            p.save_none()?;
            p.save_int(elsize)?;
            p.save_int(alignment)?;
            p.save_int(flags)
        })?;
        self.write(&[op::BUILD]);
        Ok(())
    }

    fn save_ndarray(&mut self, spec: &ArraySpec, payload: &mut dyn Payload) -> io::Result<()> {
        if payload.byte_len() != spec.byte_len() {
            return Err(io::Error::other(format!(
                "payload of {} bytes for an array of {} bytes",
                payload.byte_len(),
                spec.byte_len()
            )));
        }
        self.boundary()?;
        // numpy's ndarray.__reduce__: (_reconstruct, (ndarray, (0,), b'b'), state).
        self.save_global(self.style.numpy_multiarray, "_reconstruct")?;
        self.save_tuple(3, |p| {
            p.save_global("numpy", "ndarray")?;
            p.save_tuple(1, |p| p.save_int(0))?;
            p.save_bytes(&mut &b"b"[..], Some(MemoKey::BytesB))
        })?;
        self.write(&[op::REDUCE]);
        self.memoize(None);
        // state = (1, shape, dtype, is_fortran, data)
        self.save_tuple(5, |p| {
            p.save_int(1)?;
            p.save_tuple(spec.shape.len(), |p| {
                for &d in &spec.shape {
                    p.save_int(d as i64)?;
                }
                Ok(())
            })?;
            p.save_dtype(spec.dtype)?;
            p.save_bool(false)?;
            p.save_bytes(payload, None)
        })?;
        self.write(&[op::BUILD]);
        Ok(())
    }

    fn begin(&mut self) {
        self.write(&[op::PROTO, 4]);
        self.framing = true;
    }

    fn end(mut self) -> io::Result<()> {
        self.write(&[op::STOP]);
        self.commit_frame();
        self.flush()?;
        self.out.flush()
    }
}

struct CountingWriter<'a> {
    inner: &'a mut dyn Write,
    written: u64,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn typestr(dtype: DType) -> String {
    let kind = match dtype {
        DType::F16 | DType::F32 | DType::F64 => 'f',
        DType::I8 | DType::I16 | DType::I32 | DType::I64 => 'i',
        DType::U8 | DType::U16 | DType::U32 | DType::U64 => 'u',
        DType::Bool => 'b',
        DType::BF16 => unreachable!("bfloat16 is pickled through ml_dtypes"),
    };
    format!("{kind}{}", dtype.size())
}

/// Writes `pickle.dumps(array, protocol=4)` for a numpy array.
pub fn write_array(
    out: &mut dyn Write,
    style: PickleStyle,
    spec: &ArraySpec,
    payload: &mut dyn Payload,
) -> io::Result<()> {
    let mut p = Pickler::new(out, style);
    p.begin();
    p.save_ndarray(spec, payload)?;
    p.end()
}

/// Writes `pickle.dumps(QuantizedWeight8bit(weight, scales), protocol=4)`.
pub fn write_quantized(
    out: &mut dyn Write,
    style: PickleStyle,
    weight: (&ArraySpec, &mut dyn Payload),
    scales: (&ArraySpec, &mut dyn Payload),
) -> io::Result<()> {
    let mut p = Pickler::new(out, style);
    p.begin();
    p.boundary()?;
    // dataclass __reduce_ex__(4): copyreg.__newobj__(cls) then BUILD with __dict__.
    p.save_global(style.class_module, "QuantizedWeight8bit")?;
    p.save_tuple(0, |_| Ok(()))?;
    p.write(&[op::NEWOBJ]);
    p.memoize(None);
    p.boundary()?;
    p.write(&[op::EMPTY_DICT]);
    p.memoize(None);
    p.write(&[op::MARK]);
    p.save_str("weight", true)?;
    p.save_ndarray(weight.0, weight.1)?;
    p.save_str("scales", true)?;
    p.save_ndarray(scales.0, scales.1)?;
    p.write(&[op::SETITEMS]);
    p.write(&[op::BUILD]);
    p.end()
}
