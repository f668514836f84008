//! The fast mode's int8 products: activations quantised to int8 in blocks of
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

use super::kernels::{Aligned, Isa, Q8Rows, Q8_0_BLOCK_BYTES};

/// Weight rows per activation block (one int8 scale per row per block), as
/// llama.cpp quantises activations (`Q8_0`, blocks of 32): fine enough that an
/// outlier coarsens only its own block.
pub const ACT_BLOCK: usize = 32;
/// Rows per quad: the integer kernels take weight rows four at a time (each
/// 32-bit lane of an int8 vector holds one column's four rows).
pub const QUAD: usize = 4;
/// Quads per activation block.
pub const BLOCK_QUADS: usize = ACT_BLOCK / QUAD;
/// [`ActI8`]'s rows are padded with zeros to a multiple of this (the AMX
/// tile height).
pub const ROW_PAD: usize = 16;

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
/// multiplies zeros).
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

impl ActI8 {
    /// Quantises `x` (`[m, k]`) for a matrix whose `k` rows are cut into
    /// `splits` (consecutive ranges covering `0..k`).
    pub fn quantize(isa: Isa, x: &[f32], m: usize, k: usize, splits: &[Range<usize>]) -> ActI8 {
        assert_eq!(x.len(), m * k, "ActI8::quantize: x is not [m, k]");
        let mut layout = Vec::with_capacity(splits.len());
        let (mut quads, mut blocks, mut next) = (0, 0, 0);
        for rows in splits {
            assert_eq!(rows.start, next, "ActI8::quantize: splits do not tile 0..k");
            next = rows.end;
            layout.push((rows.clone(), quads, blocks));
            quads += rows.len().div_ceil(ACT_BLOCK) * BLOCK_QUADS;
            blocks += rows.len().div_ceil(ACT_BLOCK);
        }
        assert_eq!(next, k, "ActI8::quantize: splits do not tile 0..k");
        let padded = m.next_multiple_of(ROW_PAD);
        let mut q = vec![0i8; padded * quads * QUAD];
        let mut sx = vec![0f32; padded * blocks];
        let mut xsum = vec![0i32; m * blocks];
        for i in 0..m {
            let xi = &x[i * k..(i + 1) * k];
            let qi = &mut q[i * quads * QUAD..(i + 1) * quads * QUAD];
            let si = &mut sx[i * blocks..(i + 1) * blocks];
            let ssum = &mut xsum[i * blocks..(i + 1) * blocks];
            let mut block = [0i8; ACT_BLOCK];
            for (rows, q0, b0) in &layout {
                let dst = &mut qi[q0 * QUAD..(q0 + rows.len().div_ceil(QUAD)) * QUAD];
                for (b, src) in xi[rows.clone()].chunks(ACT_BLOCK).enumerate() {
                    let vals = &mut block[..src.len()];
                    si[b0 + b] = quantize_block(isa, src, vals);
                    ssum[b0 + b] = vals.iter().map(|&v| i32::from(v)).sum();
                    for (off, &v) in vals.iter().enumerate() {
                        dst[quad_index(rows.len(), b * ACT_BLOCK + off)] = v;
                    }
                }
            }
        }
        ActI8 {
            m,
            quads,
            blocks,
            q,
            sx,
            xsum,
            splits: layout,
        }
    }
}

/// `quantize_row_i8` on one block, on the given instruction set (the same
/// result on each).
pub fn quantize_block(isa: Isa, src: &[f32], dst: &mut [i8]) -> f32 {
    assert_eq!(src.len(), dst.len(), "quantize_block: lengths differ");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 and Avx512Vnni are only chosen when the CPU has AVX2
        // (Isa::best); the lengths are checked above.
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx => unsafe {
            super::arch::x86::int8_ckpt_i8_avx2::quantize_block_avx2(src, dst)
        },
        _ => crate::backend::quantize_row_i8(src, dst),
    }
}

/// One split's product for a block of columns: `total[i][j] += scale[j] *
/// part[i][j]` with `part` as in the module's description, for the split
/// `split` of `act` (whose rows `wb.rows` must be), columns `wb.n0 ..
/// wb.n0 + nb`, `total` row-major `[m, nb]`.
pub fn q8_block_fast(
    isa: Isa,
    act: &ActI8,
    split: usize,
    wb: &Q8Rows,
    scales: &[f32],
    total: &mut [f32],
) {
    let m = act.m;
    let Q8Rows { w, n, n0, .. } = *wb;
    let (rows, q0, b0) = act.splits[split].clone();
    assert_eq!(rows, wb.rows, "q8_block_fast: rows are not the split's");
    if m == 0 || total.is_empty() || rows.is_empty() {
        return;
    }
    let nb = total.len() / m;
    // Every index the kernels use is inside these bounds.
    assert_eq!(total.len(), m * nb, "q8_block_fast: total is not [m, nb]");
    assert!(
        scales.len() >= nb,
        "q8_block_fast: fewer scales than columns"
    );
    assert!(
        n0 + nb <= n && rows.end * n <= w.len(),
        "q8_block_fast: w too short"
    );
    assert!(
        q0 + rows.len().div_ceil(ACT_BLOCK) * BLOCK_QUADS <= act.quads
            && b0 + rows.len().div_ceil(ACT_BLOCK) <= act.blocks,
        "q8_block_fast: activations do not cover the split"
    );
    let view = SplitView { act, rows, q0, b0 };
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // SAFETY: Avx2 is only chosen when the CPU has AVX2 and FMA
            // (Isa::best), and the bounds above hold for every index used.
            unsafe {
                super::arch::x86::int8_ckpt_i8_avx2::q8_block_fast_avx2(&view, wb, scales, total)
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => {
            // SAFETY: Avx512Vnni is only chosen when the CPU has AVX2, FMA and
            // AVX-512 F/BW/VL/VNNI (Isa::best); the bounds above hold.
            unsafe {
                super::arch::x86::int8_ckpt_i8_vnni::q8_block_fast_vnni(&view, wb, scales, total)
            }
        }
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        Isa::Amx => {
            // SAFETY: Amx is only chosen when the CPU has everything
            // Avx512Vnni needs plus AMX-TILE/INT8 and the kernel let this
            // process use the tile data (Isa::best); the bounds above hold.
            unsafe { super::arch::x86::amx::q8_block_fast_amx(&view, wb, scales, total) }
        }
        _ => q8_block_fast_scalar(&view, wb, scales, total),
    }
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

/// Activations `[m, k]` quantised for Q8_0 weight rows (GGUF): per row, per
/// block of 32 values along `k` (the weights' own blocks), `q = round(x / s)`
/// with `s = absmax / 127`, as llama.cpp quantises them for its Q8_0 dot.
pub struct ActQ8_0 {
    pub m: usize,
    pub k: usize,
    /// `[m, k]` values.
    pub q: Vec<i8>,
    /// `[m, k / 32]` scales.
    pub s: Vec<f32>,
    /// Which tile kernel `tiles` is laid out for.
    pub layout: Q8_0Tiles,
    /// The same values in tile order when a tile kernel will read them (else
    /// empty): per tile of [`ROW_PAD`] rows (the last padded with zeros), per
    /// block, eight rows of 64 bytes, row `qd` holding each activation row's
    /// values `4 qd .. 4 qd + 4` of the block (what AMX calls the "VNNI"
    /// layout of a right-hand operand); for [`Q8_0Tiles::Vnni`] each value is
    /// stored plus 128 (`vpdpbusd`'s unsigned operand). Made once per product,
    /// as every task reads all of it.
    pub tiles: Aligned<i8>,
    /// `[tiles, k / 32, ROW_PAD]` scales (zeros for padding rows), with `tiles`.
    pub tile_s: Vec<f32>,
}

/// The tile kernels for Q8_0 weights with int8 activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Q8_0Tiles {
    /// No tile layout: the row kernels.
    None,
    /// AMX-INT8 (`tdpbssd`, signed values), from [`ROW_PAD`] rows on.
    Amx,
    /// AVX-512 VNNI (`vpdpbusd`, values plus 128), from [`VNNI_MIN_M`] rows
    /// on, on machines with VNNI and on AMX ones below the AMX kernel's rows.
    Vnni,
}

/// Fewest activation rows the VNNI tile kernel takes: it multiplies 16 rows
/// (padding included) at the cost of one, which pays from a few rows on,
/// and below them the row kernel does less per weight byte.
pub const VNNI_MIN_M: usize = 4;

impl ActQ8_0 {
    /// Quantises `x` (`[m, k]`, `k` a multiple of 32).
    pub fn quantize(isa: Isa, x: &[f32], m: usize, k: usize) -> ActQ8_0 {
        assert!(
            k.is_multiple_of(Q8_0_VALUES) && x.len() == m * k,
            "ActQ8_0::quantize: x is not [m, k] with k a multiple of 32"
        );
        let mut q = vec![0i8; m * k];
        let s: Vec<f32> = x
            .chunks_exact(Q8_0_VALUES)
            .zip(q.chunks_exact_mut(Q8_0_VALUES))
            .map(|(src, dst)| quantize_block(isa, src, dst))
            .collect();
        let (mut tiles, mut tile_s) = (Aligned::zeros(0), Vec::new());
        let layout = q8_0_tiled(isa, m);
        if layout != Q8_0Tiles::None {
            let bias = if layout == Q8_0Tiles::Vnni { 0x80u8 } else { 0 };
            let blocks = k / Q8_0_VALUES;
            let padded = m.next_multiple_of(ROW_PAD);
            tiles = Aligned::zeros(padded * k);
            let packed = tiles.as_mut_slice();
            tile_s = vec![0f32; padded * blocks];
            for i in 0..m {
                let (t, u) = (i / ROW_PAD, i % ROW_PAD);
                for b in 0..blocks {
                    let block = (t * blocks + b) * ROW_PAD;
                    tile_s[block + u] = s[i * blocks + b];
                    for qd in 0..Q8_0_VALUES / QUAD {
                        let (dst, src) = (
                            (block * 8 + qd * ROW_PAD + u) * QUAD,
                            i * k + 32 * b + QUAD * qd,
                        );
                        for (d, &v) in packed[dst..dst + QUAD].iter_mut().zip(&q[src..src + QUAD]) {
                            *d = (v as u8 ^ bias) as i8;
                        }
                    }
                }
            }
        }
        ActQ8_0 {
            m,
            k,
            q,
            s,
            layout,
            tiles,
            tile_s,
        }
    }

    /// Rows `rows` of the activations, as the kernels read them (with the
    /// tile order only for all of them).
    pub fn rows(&self, rows: Range<usize>) -> Q8_0Acts<'_> {
        let blocks = self.k / Q8_0_VALUES;
        let all = rows == (0..self.m);
        Q8_0Acts {
            m: rows.len(),
            k: self.k,
            q: &self.q[rows.start * self.k..rows.end * self.k],
            s: &self.s[rows.start * blocks..rows.end * blocks],
            layout: if all { self.layout } else { Q8_0Tiles::None },
            tiles: if all { &self.tiles } else { &[] },
            tile_s: if all { &self.tile_s } else { &[] },
        }
    }
}

/// The tile layout [`ActQ8_0`] makes for `m` rows on `isa`.
fn q8_0_tiled(isa: Isa, m: usize) -> Q8_0Tiles {
    match isa {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        Isa::Amx if m >= super::arch::x86::amx::AMX_MIN_M => Q8_0Tiles::Amx,
        Isa::Avx512Vnni | Isa::Amx if m >= VNNI_MIN_M => Q8_0Tiles::Vnni,
        _ => Q8_0Tiles::None,
    }
}

/// Some rows of an [`ActQ8_0`]: `q` is `[m, k]`, `s` `[m, k / 32]`; `layout`,
/// `tiles` and `tile_s` as there, or none.
#[derive(Clone, Copy)]
pub struct Q8_0Acts<'a> {
    pub m: usize,
    pub k: usize,
    pub q: &'a [i8],
    pub s: &'a [f32],
    pub layout: Q8_0Tiles,
    pub tiles: &'a [i8],
    pub tile_s: &'a [f32],
}

/// Values per Q8_0 block.
const Q8_0_VALUES: usize = 32;

/// `out_t[c][i] = x[i] . row_c` for Q8_0 weight rows (`rows` holds
/// `out_t.len() / m` rows of `k / 32` blocks) and activations quantised to
/// Q8_0 blocks: for each block in order, `isum = sum over t < 32 of xq[32b +
/// t] * q[32b + t]` (exact, in i32; any order), `acc = fma(f32(isum), d_w *
/// d_x, acc)` with `d_w * d_x` rounded once. One exact integer sum per block is
/// what a tile multiplier (`tdpbssd`) gives for a block, so the AMX kernel does
/// these operations too; every path does, so results are the same on every ISA
/// and for every batch. `f32(isum)` is exact: |isum| <= 32 * 127 * 128 < 2^24.
pub fn dot_q8_0_rows_int8(isa: Isa, act: Q8_0Acts, rows: &[u8], out_t: &mut [f32]) {
    let (m, k) = (act.m, act.k);
    assert!(m > 0, "dot_q8_0_rows_int8: no activation rows");
    assert!(
        act.q.len() == m * k && act.s.len() == m * (k / Q8_0_VALUES),
        "dot_q8_0_rows_int8: activations are not [m, k]"
    );
    assert_eq!(
        rows.len(),
        out_t.len() / m * (k / Q8_0_VALUES) * Q8_0_BLOCK_BYTES,
        "dot_q8_0_rows_int8: rows do not match the output"
    );
    match isa {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        Isa::Amx if act.layout == Q8_0Tiles::Amx => {
            // SAFETY: Amx is only chosen when the CPU has AVX2, FMA, F16C,
            // AVX-512 F/BW/VL and AMX-TILE/INT8 (Isa::best); sizes checked
            // above, the tiles laid out for it.
            unsafe { super::arch::x86::amx::dot_q8_0_rows_int8_amx(act, rows, out_t) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Amx if act.layout == Q8_0Tiles::Vnni => {
            // SAFETY: both are only chosen when the CPU has AVX2, FMA, F16C and
            // AVX-512 F/BW/VL/VNNI (Isa::best); sizes checked above, the tiles
            // laid out for it.
            unsafe {
                super::arch::x86::int8_ckpt_i8_vnni::dot_q8_0_rows_int8_vnni(act, rows, out_t)
            }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx => {
            // SAFETY: AVX2/FMA are present (Isa::best), F16C with them on every
            // CPU that has both, and the sizes are checked above.
            unsafe {
                super::arch::x86::int8_ckpt_i8_avx2::dot_q8_0_rows_int8_avx2(act, rows, out_t)
            }
        }
        _ => dot_q8_0_rows_int8_scalar(act, rows, out_t),
    }
}

pub fn dot_q8_0_rows_int8_scalar(act: Q8_0Acts, rows: &[u8], out_t: &mut [f32]) {
    let (m, k) = (act.m, act.k);
    let blocks = k / Q8_0_VALUES;
    for (c, row) in rows
        .chunks_exact((blocks * Q8_0_BLOCK_BYTES).max(1))
        .enumerate()
    {
        for i in 0..m {
            let mut acc = 0f32;
            for (b, block) in row.chunks_exact(Q8_0_BLOCK_BYTES).enumerate() {
                let d =
                    half::f16::from_le_bytes([block[0], block[1]]).to_f32() * act.s[i * blocks + b];
                let x = &act.q[i * k + Q8_0_VALUES * b..i * k + Q8_0_VALUES * (b + 1)];
                let isum: i32 = x
                    .iter()
                    .zip(&block[2..])
                    .map(|(&x, &w)| i32::from(x) * i32::from(w as i8))
                    .sum();
                acc = (isum as f32).mul_add(d, acc);
            }
            out_t[c * m + i] = acc;
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
