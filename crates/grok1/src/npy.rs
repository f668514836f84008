//! Minimal `.npy` (numpy format version 1.0) for little-endian f32 and i32
//! arrays: `grok1 logits` writes its output with it and the golden tests read the
//! fixtures with it. Hand-written because only these two dtypes in C order are
//! needed and the format is a short text header plus raw bytes.

use std::io::{self, Read, Write};

#[derive(Debug, thiserror::Error)]
pub enum NpyError {
    #[error("not a .npy file: {0}")]
    Format(String),
    #[error("expected dtype {expected}, found {found}")]
    Dtype {
        expected: &'static str,
        found: String,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A decoded array: shape and values.
#[derive(Clone, Debug, PartialEq)]
pub struct Array<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

fn header_for(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad with spaces so the data starts on a 64-byte boundary, then a newline.
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Writes a little-endian float32 array of `shape`.
pub fn write_f32(out: &mut dyn Write, shape: &[usize], data: &[f32]) -> io::Result<()> {
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "npy: shape does not match data"
    );
    out.write_all(&header_for("<f4", shape))?;
    let mut buf = Vec::with_capacity(data.len() * 4);
    for v in data {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    out.write_all(&buf)
}

fn read_raw(input: &mut dyn Read) -> Result<(String, Vec<usize>, Vec<u8>), NpyError> {
    let mut magic = [0u8; 10];
    input.read_exact(&mut magic)?;
    if &magic[..6] != b"\x93NUMPY" {
        return Err(NpyError::Format("bad magic".into()));
    }
    let header_len = match magic[6] {
        1 => u16::from_le_bytes([magic[8], magic[9]]) as usize,
        2 | 3 => {
            let mut more = [0u8; 2];
            input.read_exact(&mut more)?;
            u32::from_le_bytes([magic[8], magic[9], more[0], more[1]]) as usize
        }
        v => return Err(NpyError::Format(format!("unsupported version {v}"))),
    };
    let mut header = vec![0u8; header_len];
    input.read_exact(&mut header)?;
    let header =
        String::from_utf8(header).map_err(|_| NpyError::Format("header is not UTF-8".into()))?;
    let field = |key: &str| -> Result<String, NpyError> {
        let at = header
            .find(&format!("'{key}':"))
            .ok_or_else(|| NpyError::Format(format!("header has no {key}")))?;
        Ok(header[at + key.len() + 3..].trim_start().to_string())
    };
    let descr = field("descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|s| s.split('\'').next())
        .ok_or_else(|| NpyError::Format("bad descr".into()))?
        .to_string();
    if field("fortran_order")?.starts_with("True") {
        return Err(NpyError::Format("Fortran order is not supported".into()));
    }
    let shape_text = field("shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| NpyError::Format("bad shape".into()))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| NpyError::Format(format!("bad dimension {s}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut data = Vec::new();
    input.read_to_end(&mut data)?;
    Ok((descr, shape, data))
}

fn read_typed<T>(
    input: &mut dyn Read,
    expected: &'static str,
    decode: fn([u8; 4]) -> T,
) -> Result<Array<T>, NpyError> {
    let (descr, shape, data) = read_raw(input)?;
    if descr != expected {
        return Err(NpyError::Dtype {
            expected,
            found: descr,
        });
    }
    let count: usize = shape.iter().product();
    if data.len() != count * 4 {
        return Err(NpyError::Format(format!(
            "{} data bytes for shape {shape:?}",
            data.len()
        )));
    }
    let data = data
        .chunks_exact(4)
        .map(|c| decode([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Array { shape, data })
}

pub fn read_f32(input: &mut dyn Read) -> Result<Array<f32>, NpyError> {
    read_typed(input, "<f4", f32::from_le_bytes)
}

pub fn read_i32(input: &mut dyn Read) -> Result<Array<i32>, NpyError> {
    read_typed(input, "<i4", i32::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_an_aligned_header() {
        let mut buf = Vec::new();
        write_f32(&mut buf, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, -6.5]).unwrap();
        assert_eq!((buf.len() - 24) % 64, 0, "data starts 64-byte aligned");
        let a = read_f32(&mut &buf[..]).unwrap();
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data[5], -6.5);
        let err = read_i32(&mut &buf[..]).unwrap_err();
        assert!(err.to_string().contains("expected dtype <i4"));
    }
}
