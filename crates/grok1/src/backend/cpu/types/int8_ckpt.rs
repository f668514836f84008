//! The official checkpoint's int8 weights (`QuantMatrix`: `[k, n]`, computing
//! `x @ W`, one f32 scale per group of rows and column): the weight side as
//! the kernels read it ([`Q8Rows`]), the activations each product pairs with,
//! and the scalar reference of both products, which the SIMD versions
//! (`arch/`) match bit for bit.
//!
//! With f32 activations (packed by [`pack_activations`]), each run of rows is
//! one FMA per row from zero, then scaled ([`q8_block_scalar`]).
//!
//! With int8 activations ([`ActI8`], [`q8_block_fast_scalar`]), the fast
//! mode's int8 products: activations quantised to int8 in blocks of
//! `ACT_BLOCK` weight rows, multiplied with the int8 weights as integers
//! (exact), each block's sum then taken to f32 once. On AVX2 this runs on the
//! byte multiply-adds (`maddubs`, 32 products per instruction instead of 8
//! FMAs), and it is the shape VNNI's `vpdpbusd` takes.
//!
//! The arithmetic, identical on every path: for each activation row `i`, each
//! split of weight rows (`row_splits`, inside one scale group) and each output
//! column `j`,
//!
//! ```text
//! part = 0
//! for each block b of the split (ACT_BLOCK rows from the split's start):
//!     isum = sum over r in b of xq[i][r] * w[r][j]        (i32, exact)
//!     part = fma(f32(isum), sx[i][b], part)               (one rounding)
//! total[i][j] += part * scale[j]                          (as in the f32 mode)
//! ```
//!
//! `f32(isum)` is exact (|isum| <= 32 * 128 * 127 < 2^24), so the SIMD kernels
//! are bit-identical to the scalar one, and nothing mixes rows, so results do
//! not depend on the batch.

use std::ops::Range;

use crate::backend::cpu::common::QUAD;

/// Activation rows per group in the packed layout of [`pack_activations`].
pub const XGROUP: usize = 6;

/// The activations `x` (`[m, k]`) packed for the int8 products: groups of
/// `XGROUP` rows (the last one narrower), each group transposed to
/// `[k, width]`, so the values of a group that one weight row multiplies are
/// adjacent and a group's run of weight rows reads one sequential stream. With
/// `m <= XGROUP` this is plain `[k, m]`.
pub fn pack_activations(x: &[f32], m: usize, k: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "pack_activations: x is not [m, k]");
    let mut out = vec![0f32; m * k];
    for (g, dst) in out.chunks_mut(XGROUP * k).enumerate() {
        let width = dst.len() / k.max(1);
        for t in 0..width {
            let row = &x[(g * XGROUP + t) * k..(g * XGROUP + t + 1) * k];
            for (r, &v) in row.iter().enumerate() {
                dst[r * width + t] = v;
            }
        }
    }
    out
}

/// Where `x[i][r]` sits in [`pack_activations`]' layout.
#[inline]
pub fn packed_index(m: usize, k: usize, i: usize, r: usize) -> usize {
    let g = i / XGROUP;
    let width = XGROUP.min(m - g * XGROUP);
    g * XGROUP * k + r * width + (i - g * XGROUP)
}

/// The weight side of [`q8_block`]: rows `rows`, columns from `n0`, of an
/// int8 row-major matrix `w` with `n` columns.
///
/// [`q8_block`]: crate::backend::cpu::kernels::q8_block
#[derive(Clone, Debug)]
pub struct Q8Rows<'a> {
    pub w: &'a [u8],
    pub n: usize,
    pub rows: Range<usize>,
    pub n0: usize,
}

pub fn q8_block_scalar(xp: &[f32], m: usize, wb: &Q8Rows, scales: &[f32], total: &mut [f32]) {
    let Q8Rows { w, n, n0, .. } = *wb;
    let (nb, k) = (total.len() / m, xp.len() / m);
    let mut acc = vec![0f32; m * nb];
    for r in wb.rows.clone() {
        let row = &w[r * n + n0..r * n + n0 + nb];
        for i in 0..m {
            let xv = xp[packed_index(m, k, i, r)];
            for (a, &b) in acc[i * nb..(i + 1) * nb].iter_mut().zip(row) {
                *a = xv.mul_add(b as i8 as f32, *a);
            }
        }
    }
    add_scaled(&acc, nb, scales, total);
}

/// Columns `full..nb` of a `[m, nb]` block product (`total`) through
/// `kernel`, a path for any width, for the last columns a wide kernel leaves:
/// `kernel` adds `p * s` into zeros, which is `p * s` exactly, so adding its
/// result into `total` gives the sums it would give in place.
pub(crate) fn add_tail_columns(
    m: usize,
    full: usize,
    wb: &Q8Rows,
    scales: &[f32],
    total: &mut [f32],
    kernel: impl FnOnce(&Q8Rows, &[f32], &mut [f32]),
) {
    let nb = total.len() / m;
    if full >= nb {
        return;
    }
    let tail = nb - full;
    let mut t = vec![0f32; m * tail];
    let cols = Q8Rows {
        n0: wb.n0 + full,
        ..wb.clone()
    };
    kernel(&cols, &scales[full..nb], &mut t);
    for (dst, src) in total.chunks_exact_mut(nb).zip(t.chunks_exact(tail)) {
        for (d, s) in dst[full..].iter_mut().zip(src) {
            *d += s;
        }
    }
}

/// `total[i][j] += acc[i][j] * scales[j]` for `[_, nb]` matrices.
pub(crate) fn add_scaled(acc: &[f32], nb: usize, scales: &[f32], total: &mut [f32]) {
    for (tr, ar) in total.chunks_exact_mut(nb).zip(acc.chunks_exact(nb)) {
        for ((t, &a), &sc) in tr.iter_mut().zip(ar).zip(scales) {
            *t += a * sc;
        }
    }
}

/// Weight rows per activation block (one int8 scale per row per block), as
/// llama.cpp quantises activations (`Q8_0`, blocks of 32): fine enough that an
/// outlier coarsens only its own block.
pub const ACT_BLOCK: usize = 32;
/// Quads per activation block.
pub const BLOCK_QUADS: usize = ACT_BLOCK / QUAD;

/// The rows of quad `qd` of a split of `split_len` rows, relative to the
/// split (`None`: padding). A block of `len` rows has `s = ceil(len / 4)`
/// quads, quad `t` holding rows `t, t + s, t + 2s, t + 3s` of the block: its
/// four rows are a quarter block apart, so streaming the quads in order reads
/// four long runs of consecutive rows (8 KiB and more at n = 1024) rather than
/// four adjacent rows at once, which the hardware prefetchers follow badly
/// when rows are short (measured on Zen 4: 9 GB/s for adjacent rows of 1 KiB,
/// 19 GB/s for rows a quarter block apart, one core).
#[inline]
pub fn quad_lanes(split_len: usize, qd: usize) -> [Option<usize>; QUAD] {
    let (b, t) = (qd / BLOCK_QUADS, qd % BLOCK_QUADS);
    let len = (split_len - b * ACT_BLOCK).min(ACT_BLOCK);
    let s = len.div_ceil(QUAD);
    std::array::from_fn(|u| {
        let off = t + u * s;
        (off < len).then_some(b * ACT_BLOCK + off)
    })
}

/// Where the split-relative row `r` sits in a split's quads (the inverse of
/// [`quad_lanes`]): `quad * QUAD + lane`.
#[inline]
pub fn quad_index(split_len: usize, r: usize) -> usize {
    let (b, off) = (r / ACT_BLOCK, r % ACT_BLOCK);
    let len = (split_len - b * ACT_BLOCK).min(ACT_BLOCK);
    let s = len.div_ceil(QUAD);
    (b * BLOCK_QUADS + off % s) * QUAD + off / s
}

/// Activations `[m, k]` quantised for the integer products over a matrix
/// whose rows are cut into the given splits: per row, per split, per block of
/// `ACT_BLOCK` rows from the split's start, `q = round(x / s)` with `s =
/// absmax / 127`. Each split's values are laid out in quads ([`quad_lanes`]),
/// padded with zeros to whole blocks, and the values and scales have zero rows
/// after the `m` rows up to a multiple of [`ROW_PAD`]: the AMX tiles load
/// whole blocks of 16 rows in place (a short block or a short last tile then
/// multiplies zeros). Made by `ActI8::quantize` (in `kernels`: it quantises
/// on the instruction set it is given).
///
/// [`ROW_PAD`]: crate::backend::cpu::common::ROW_PAD
pub struct ActI8 {
    pub m: usize,
    /// Padded quads per activation row (all splits).
    pub quads: usize,
    /// Blocks per activation row (all splits).
    pub blocks: usize,
    /// `[m.next_multiple_of(ROW_PAD), quads * 4]` values, each split's in its
    /// quads' order.
    pub q: Vec<i8>,
    /// `[m.next_multiple_of(ROW_PAD), blocks]` scales.
    pub sx: Vec<f32>,
    /// `[m, blocks]` sums of each block's values (the VNNI kernels multiply
    /// `w + 128` and take `128 * sum` back off).
    pub xsum: Vec<i32>,
    /// Each split's rows, first quad and first block.
    pub splits: Vec<(Range<usize>, usize, usize)>,
}

/// One split of [`ActI8`] as the kernels read it.
pub struct SplitView<'a> {
    pub act: &'a ActI8,
    pub rows: Range<usize>,
    /// The split's first quad and block in the activations.
    pub q0: usize,
    pub b0: usize,
}

impl SplitView<'_> {
    /// Row `i`'s values for the split, padded to whole quads.
    #[inline]
    pub fn row(&self, i: usize) -> &[i8] {
        let at = (i * self.act.quads + self.q0) * QUAD;
        &self.act.q[at..at + self.rows.len().div_ceil(QUAD) * QUAD]
    }

    /// Row `i`'s value for the split-relative row `r`.
    #[inline]
    pub fn value(&self, i: usize, r: usize) -> i8 {
        self.row(i)[quad_index(self.rows.len(), r)]
    }

    /// Row `i`'s four values for the split's quad `qd`, as one little-endian word.
    #[inline]
    pub fn quad(&self, i: usize, qd: usize) -> i32 {
        let q = &self.row(i)[QUAD * qd..QUAD * (qd + 1)];
        i32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8])
    }

    /// Row `i`'s scale for the split's block `b`.
    #[inline]
    pub fn scale(&self, i: usize, b: usize) -> f32 {
        self.act.sx[i * self.act.blocks + self.b0 + b]
    }

    /// The sum of row `i`'s values in the split's block `b`.
    #[inline]
    pub fn sum(&self, i: usize, b: usize) -> i32 {
        self.act.xsum[i * self.act.blocks + self.b0 + b]
    }
}

pub fn q8_block_fast_scalar(view: &SplitView, wb: &Q8Rows, scales: &[f32], total: &mut [f32]) {
    let Q8Rows { w, n, n0, .. } = *wb;
    let m = view.act.m;
    let nb = total.len() / m;
    let (mut isum, mut part) = (vec![0i32; nb], vec![0f32; nb]);
    for (i, tr) in total.chunks_exact_mut(nb).enumerate() {
        part.fill(0.0);
        for (b, block) in view.rows.clone().step_by(ACT_BLOCK).enumerate() {
            isum.fill(0);
            for r in block..(block + ACT_BLOCK).min(view.rows.end) {
                let xv = i32::from(view.value(i, r - view.rows.start));
                let row = &w[r * n + n0..r * n + n0 + nb];
                for (s, &v) in isum.iter_mut().zip(row) {
                    *s += xv * i32::from(v as i8);
                }
            }
            let sx = view.scale(i, b);
            for (p, &s) in part.iter_mut().zip(&isum) {
                *p = (s as f32).mul_add(sx, *p);
            }
        }
        for ((t, &p), &sc) in tr.iter_mut().zip(&part).zip(scales) {
            *t += p * sc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quads_cover_each_row_once_and_quad_index_inverts_them() {
        for len in 1usize..=300 {
            let quads = len.div_ceil(QUAD);
            let mut seen = vec![0; len];
            for qd in 0..quads {
                for (u, lane) in quad_lanes(len, qd).into_iter().enumerate() {
                    if let Some(r) = lane {
                        seen[r] += 1;
                        assert_eq!(quad_index(len, r), qd * QUAD + u, "len {len} row {r}");
                        // A quad never leaves its block (one scale per block).
                        assert_eq!(r / ACT_BLOCK, qd / BLOCK_QUADS);
                    }
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "len {len}: {seen:?}");
        }
    }
}
