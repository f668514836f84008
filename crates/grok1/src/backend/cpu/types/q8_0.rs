//! GGUF's Q8_0 blocks (an f16 scale and 32 int8 weights, 34 bytes) in rows of
//! `k` weights (`RowMatrix`): the block layout, the activations the products
//! pair with (f32 rows, in pairs for the tile kernel: [`pair_rows`]; or int8
//! in Q8_0 blocks: [`ActQ8_0`]), and the scalar reference of both products
//! ([`dot_q8_0_rows_scalar`], [`dot_q8_0_rows_int8_scalar`]), which the SIMD
//! versions (`arch/`) match bit for bit.

use std::ops::Range;

use crate::backend::cpu::common::Aligned;

/// Bytes of one Q8_0 block: an f16 scale and 32 int8 values.
pub const Q8_0_BLOCK_BYTES: usize = 34;

/// Values per Q8_0 block.
pub const Q8_0_VALUES: usize = 32;

pub fn dot_q8_0_rows_scalar(x: &[f32], m: usize, k: usize, rows: &[u8], out_t: &mut [f32]) {
    let row_bytes = k / 32 * Q8_0_BLOCK_BYTES;
    for (c, row) in rows.chunks_exact(row_bytes.max(1)).enumerate() {
        for i in 0..m {
            let xi = &x[i * k..(i + 1) * k];
            let mut acc = [0f32; 8];
            for (b, block) in row.chunks_exact(Q8_0_BLOCK_BYTES).enumerate() {
                let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                let q = &block[2..];
                let xb = &xi[32 * b..32 * b + 32];
                for u in 0..4 {
                    for (l, a) in acc.iter_mut().enumerate() {
                        *a = xb[8 * u + l].mul_add(d * f32::from(q[8 * u + l] as i8), *a);
                    }
                }
            }
            out_t[c * m + i] =
                ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
        }
    }
}

/// Most activation pairs the f32 Q8_0 tile kernel takes in one group.
pub const PAIR_GROUP: usize = 12;

/// The width of the pair groups for `pairs` pairs: as equal as they can be
/// (a narrow last group would convert each weight for few pairs).
pub fn pair_group_width(pairs: usize) -> usize {
    pairs.div_ceil(pairs.div_ceil(PAIR_GROUP).max(1)).max(1)
}

/// `x` (`[m, k]`, `k` a multiple of 32) packed for [`dot_q8_0_rows_paired`]:
/// rows in pairs (the last padded with zeros), the pairs in groups
/// ([`pair_group_width`]), per group, per block of 32, per pair and per eighth
/// of a block, the first row's 8 values then the second's. (A group's blocks
/// are adjacent: the activations a tile walks are one contiguous run, where a
/// stride of a power of two bytes would put every block in the same L1 sets.)
///
/// [`dot_q8_0_rows_paired`]: crate::backend::cpu::kernels::dot_q8_0_rows_paired
pub fn pair_rows(x: &[f32], m: usize, k: usize) -> Aligned<f32> {
    assert!(
        x.len() == m * k && k.is_multiple_of(32),
        "pair_rows: x is not [m, k]"
    );
    let pairs = m.div_ceil(2);
    let mut packed = Aligned::zeros(pairs * 2 * k);
    let out = packed.as_mut_slice();
    for (i, row) in x.chunks_exact(k.max(1)).enumerate() {
        for (e, eighth) in row.chunks_exact(8).enumerate() {
            let at = paired_index(pairs, k, i, 8 * e);
            out[at..at + 8].copy_from_slice(eighth);
        }
    }
    packed
}

/// Where `x[i][r]` (rows of `k`) sits in [`pair_rows`]' layout of `pairs`
/// pairs.
#[inline]
pub fn paired_index(pairs: usize, k: usize, i: usize, r: usize) -> usize {
    let width = pair_group_width(pairs);
    let (g, t) = (i / 2 / width, i / 2 % width);
    let group_width = width.min(pairs - g * width);
    let (b, u, l) = (r / 32, r % 32 / 8, r % 8);
    g * width * 2 * k + ((b * group_width + t) * 4 + u) * 16 + 8 * (i % 2) + l
}

/// Activations `[m, k]` quantised for Q8_0 weight rows (GGUF): per row, per
/// block of 32 values along `k` (the weights' own blocks), `q = round(x / s)`
/// with `s = absmax / 127`, as llama.cpp quantises them for its Q8_0 dot.
/// Made by `ActQ8_0::quantize` (in `kernels`: it quantises on the
/// instruction set it is given and lays out the tiles of its kernels).
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
    ///
    /// [`ROW_PAD`]: crate::backend::cpu::common::ROW_PAD
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
    ///
    /// [`ROW_PAD`]: crate::backend::cpu::common::ROW_PAD
    Amx,
    /// AVX-512 VNNI (`vpdpbusd`, values plus 128), from [`VNNI_MIN_M`] rows
    /// on, on machines with VNNI and on AMX ones below the AMX kernel's rows.
    ///
    /// [`VNNI_MIN_M`]: crate::backend::cpu::kernels::VNNI_MIN_M
    Vnni,
}

impl ActQ8_0 {
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
