//! A rank's slice of a weight (tensor parallel, `crate::parallel`): the rows
//! or columns of `x @ W` it computes. A slice of whole stored rows stays a view
//! of the mapped file; a slice inside the stored rows (which the kernel's page
//! read-around would map whole) is copied into the rank's memory, 1/N of the
//! tensor, and the source pages are released. Slices are cut on quantisation
//! block (or scale group) boundaries; one that cannot be is refused naming the
//! tensor.

use std::ops::Range;
use std::path::Path;

use crate::backend::{Matrix, QuantMatrix, RowMatrix};
use crate::weights::{TensorData, WeightError};

fn refuse(file: &Path, tensor: &str, ranks: usize, reason: String) -> WeightError {
    WeightError::Invalid {
        file: file.to_path_buf(),
        tensor: tensor.to_string(),
        reason: format!("cannot be split over {ranks} ranks: {reason}"),
    }
}

/// Where a weight comes from and how many ranks it is split over (for errors).
#[derive(Clone, Copy, Debug)]
pub struct SliceOf<'a> {
    pub file: &'a Path,
    pub tensor: &'a str,
    pub ranks: usize,
}

impl SliceOf<'_> {
    fn refuse(&self, reason: String) -> WeightError {
        refuse(self.file, self.tensor, self.ranks, reason)
    }
}

/// Source bytes read between two releases of their pages: a copy's resident
/// transient stays this small whatever the tensor's size.
const RELEASE_EVERY: usize = 8 << 20;

/// `len` bytes at `start` of each of the `rows` rows (`stride` bytes apart)
/// of `src`, copied; the source pages are released every few MiB as the copy
/// goes, so a rank never holds more of a tensor than its part.
fn copy_columns(src: &TensorData, rows: usize, stride: usize, start: usize, len: usize) -> Vec<u8> {
    let bytes = src.bytes();
    let mut out = Vec::with_capacity(rows * len);
    let mut released = 0;
    for r in 0..rows {
        out.extend_from_slice(&bytes[r * stride + start..r * stride + start + len]);
        let read = (r + 1) * stride;
        if read - released >= RELEASE_EVERY {
            src.slice(released, read.min(src.len()) - released)
                .release();
            released = read.min(src.len());
        }
    }
    if released < src.len() {
        src.slice(released, src.len() - released).release();
    }
    out
}

/// Rows `rows` of a row-stored matrix: a view, never a copy.
pub fn rows_of(m: &RowMatrix, rows: Range<usize>) -> RowMatrix {
    let len = m.row_len();
    RowMatrix {
        rows: rows.len(),
        cols: m.cols,
        dtype: m.dtype,
        data: m.data.slice(rows.start * len, rows.len() * len),
    }
}

/// Columns `cols` of every row of a row-stored matrix, copied; the columns
/// must start and end on the type's block boundaries.
fn columns_of(m: &RowMatrix, cols: Range<usize>, of: SliceOf) -> Result<RowMatrix, WeightError> {
    let block = m.dtype.block_size();
    let (Some(start), Some(len)) = (m.dtype.row_bytes(cols.start), m.dtype.row_bytes(cols.len()))
    else {
        return Err(of.refuse(format!(
            "columns {}..{} of its rows are not whole {} blocks of {block}",
            cols.start, cols.end, m.dtype
        )));
    };
    let out = copy_columns(&m.data, m.rows, m.row_len(), start, len);
    Ok(RowMatrix {
        rows: m.rows,
        cols: cols.len(),
        dtype: m.dtype,
        data: TensorData::owned(out),
    })
}

/// Columns `cols` of an int8 `[k, n]` matrix and of its scales, copied (every
/// column has its own scales, so any range can be cut).
fn int8_columns(q: &QuantMatrix, cols: Range<usize>) -> QuantMatrix {
    let n = cols.len();
    let copy = |data: &TensorData, rows: usize, elem: usize| {
        TensorData::owned(copy_columns(
            data,
            rows,
            q.n * elem,
            cols.start * elem,
            n * elem,
        ))
    };
    QuantMatrix {
        k: q.k,
        n,
        groups: q.groups,
        weight: copy(&q.weight, q.k, 1),
        scales: copy(&q.scales, q.groups, q.scale_dtype.size()),
        scale_dtype: q.scale_dtype,
    }
}

/// Rows `rows` (inputs) of an int8 `[k, n]` matrix: a view of whole scale
/// groups, or of part of one group.
fn int8_rows(q: &QuantMatrix, rows: Range<usize>, of: SliceOf) -> Result<QuantMatrix, WeightError> {
    if rows.is_empty() || rows.end > q.k {
        return Err(of.refuse(format!("rows {}..{} of {}", rows.start, rows.end, q.k)));
    }
    let group = q.k / q.groups;
    let scale_row = q.n * q.scale_dtype.size();
    let (groups, first_group) =
        if rows.start.is_multiple_of(group) && rows.end.is_multiple_of(group) {
            (rows.len() / group, rows.start / group)
        } else if rows.start / group == (rows.end - 1) / group {
            (1, rows.start / group)
        } else {
            return Err(of.refuse(format!(
                "rows {}..{} cut its scale groups of {group} rows",
                rows.start, rows.end
            )));
        };
    Ok(QuantMatrix {
        k: rows.len(),
        n: q.n,
        groups,
        weight: q.weight.slice(rows.start * q.n, rows.len() * q.n),
        scales: q.scales.slice(first_group * scale_row, groups * scale_row),
        scale_dtype: q.scale_dtype,
    })
}

/// The outputs `range` of `x @ W` (columns of `[k, n]`).
pub fn outputs_of(m: &Matrix, range: Range<usize>) -> Matrix {
    match m {
        Matrix::Int8Grouped(q) => Matrix::Int8Grouped(int8_columns(q, range)),
        Matrix::Rows(r) => Matrix::Rows(rows_of(r, range)),
    }
}

/// The inputs `range` of `x @ W` (rows of `[k, n]`): each rank multiplies its
/// part of `x` and the parts' products are summed across ranks.
pub fn inputs_of(m: &Matrix, range: Range<usize>, of: SliceOf) -> Result<Matrix, WeightError> {
    Ok(match m {
        Matrix::Int8Grouped(q) => Matrix::Int8Grouped(int8_rows(q, range, of)?),
        Matrix::Rows(r) => Matrix::Rows(columns_of(r, range, of)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::GgmlType;
    use crate::weights::DType;

    fn of() -> SliceOf<'static> {
        SliceOf {
            file: Path::new("w.bin"),
            tensor: "t",
            ranks: 2,
        }
    }

    fn int8(k: usize, n: usize, groups: usize) -> QuantMatrix {
        let weight: Vec<u8> = (0..k * n).map(|i| i as u8).collect();
        let scales: Vec<u8> = (0..groups * n)
            .flat_map(|i| (i as f32 + 1.0).to_le_bytes())
            .collect();
        QuantMatrix {
            k,
            n,
            groups,
            weight: TensorData::owned(weight),
            scales: TensorData::owned(scales),
            scale_dtype: DType::F32,
        }
    }

    /// Element (r, c) of an int8 matrix dequantised.
    fn value(q: &QuantMatrix, r: usize, c: usize) -> f32 {
        let mut s = vec![0f32; q.n];
        q.scales_into(r / (q.k / q.groups), 0..q.n, &mut s);
        q.weight.bytes()[r * q.n + c] as i8 as f32 * s[c]
    }

    #[test]
    fn int8_slices_hold_the_same_values() {
        let q = int8(8, 6, 4);
        let cols = int8_columns(&q, 2..5);
        let rows = int8_rows(&q, 4..8, of()).unwrap();
        let inside = int8_rows(&q, 4..5, of()).unwrap();
        for r in 0..8 {
            for c in 0..3 {
                assert_eq!(value(&cols, r, c), value(&q, r, c + 2));
            }
        }
        for r in 0..4 {
            for c in 0..6 {
                assert_eq!(value(&rows, r, c), value(&q, r + 4, c));
            }
        }
        assert_eq!(rows.groups, 2);
        assert!(rows.weight.is_mapped() == q.weight.is_mapped());
        assert_eq!(inside.groups, 1);
        assert_eq!(value(&inside, 0, 3), value(&q, 4, 3));
        let err = int8_rows(&q, 1..5, of()).unwrap_err().to_string();
        assert!(
            err.contains("`t`") && err.contains("scale groups of 2 rows"),
            "{err}"
        );
    }

    #[test]
    fn row_matrix_columns_are_cut_on_block_boundaries() {
        // Two Q8_0 rows of 64 values: 2 blocks of 34 bytes each.
        let mut data = Vec::new();
        for r in 0..2u8 {
            for b in 0..2u8 {
                data.extend_from_slice(&half::f16::from_f32(1.0 + b as f32).to_le_bytes());
                data.extend((0..32).map(|i| (i as u8).wrapping_add(r * 7)));
            }
        }
        let m = RowMatrix {
            rows: 2,
            cols: 64,
            dtype: GgmlType::Q8_0,
            data: TensorData::owned(data),
        };
        let right = columns_of(&m, 32..64, of()).unwrap();
        let (mut whole, mut part) = (vec![0f32; 64], vec![0f32; 32]);
        for r in 0..2 {
            m.row_into(r, &mut whole);
            right.row_into(r, &mut part);
            assert_eq!(part, whole[32..]);
        }
        let err = columns_of(&m, 16..48, of()).unwrap_err().to_string();
        assert!(err.contains("cannot be split over 2 ranks"), "{err}");
        let top = rows_of(&m, 1..2);
        m.row_into(1, &mut whole);
        let mut one = vec![0f32; 64];
        top.row_into(0, &mut one);
        assert_eq!(one, whole);
    }
}
