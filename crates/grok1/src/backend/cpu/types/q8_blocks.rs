//! Activations quantised per block for the products of GGUF's K-quant and
//! legacy block types (as llama.cpp pairs them: q8_K, 256 values per block,
//! for the K-quants; q8_0 / q8_1, 32 values, for Q4_0/Q5_0 and Q4_1/Q5_1),
//! the trait each such weight block type implements ([`QuantBlock`]), and
//! the scalar reference of its row products ([`dot_rows_q8_scalar`]), which
//! the SIMD versions (`arch/`) match bit for bit.
//!
//! Every product has the same shape: per weight block and activation row, the
//! block type gives two exact integers `a` and `b` (sums of integer weights
//! times int8 activations, the weights' integer sub-block scales applied),
//! and the sum takes them as `acc = fma(f32(a), sa * dx, acc)`, then `acc =
//! fma(f32(b), sb * dx, acc)` where the type has `b`, with `sa`, `sb` the
//! block's f32 scales and `dx` the activation block's. The integers are exact
//! whatever order a SIMD version adds them in, and the f32 operations are
//! these on every path, so every instruction set and every batch width gives
//! the same bits.

use std::ops::Range;

/// Values per sub-block sum of the activations (q8_K's `bsums`).
pub const BSUM_VALUES: usize = 16;

/// Activations `[m, k]` quantised per block of `block` values along `k` (the
/// weights' own block): per block `q = round(x / s)` with `s = absmax / 127`
/// (rounding half away from zero, as `quantize_row_i8`), with the exact sums
/// of each 16 values (`bsums`, used for the weights' mins and offsets) and of
/// each block (`xsum`). llama.cpp's q8_K uses `-128 / max` and q8_1 keeps
/// `d * sum` in f16; these keep llama.cpp's blocks, and the integer sums
/// exact.
pub struct ActQ8 {
    pub m: usize,
    pub k: usize,
    /// 256 (q8_K) or 32 (q8_0 / q8_1).
    pub block: usize,
    /// `[m, k]` values.
    pub q: Vec<i8>,
    /// `[m, k / block]` scales.
    pub d: Vec<f32>,
    /// `[m, k / 16]` sums of 16 values.
    pub bsums: Vec<i16>,
    /// `[m, k / block]` sums of each block's values.
    pub xsum: Vec<i32>,
}

impl ActQ8 {
    /// Rows `rows` of the activations, as the kernels read them.
    pub fn rows(&self, rows: Range<usize>) -> ActQ8Rows<'_> {
        let (k, blocks) = (self.k, self.k / self.block);
        ActQ8Rows {
            m: rows.len(),
            k,
            block: self.block,
            q: &self.q[rows.start * k..rows.end * k],
            d: &self.d[rows.start * blocks..rows.end * blocks],
            bsums: &self.bsums[rows.start * k / BSUM_VALUES..rows.end * k / BSUM_VALUES],
            xsum: &self.xsum[rows.start * blocks..rows.end * blocks],
        }
    }

    /// Row `i` dequantised (`q * d`), for tests.
    pub fn dequantize_row(&self, i: usize) -> Vec<f32> {
        let blocks = self.k / self.block;
        self.q[i * self.k..(i + 1) * self.k]
            .iter()
            .enumerate()
            .map(|(r, &q)| f32::from(q) * self.d[i * blocks + r / self.block])
            .collect()
    }
}

/// Some rows of an [`ActQ8`] (its fields, cut to `m` rows).
#[derive(Clone, Copy)]
pub struct ActQ8Rows<'a> {
    pub m: usize,
    pub k: usize,
    pub block: usize,
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub bsums: &'a [i16],
    pub xsum: &'a [i32],
}

/// A GGUF block type whose rows are multiplied with [`ActQ8`] activations.
pub trait QuantBlock {
    /// Values per block (the activations' block).
    const VALUES: usize;
    /// Bytes per block.
    const BYTES: usize;
    /// Whether a block gives a second integer `b` (mins, or the activations'
    /// block sum for a weight offset stored as a float).
    const HAS_B: bool;
    /// For the legacy types: `a` is `sum(n * x) - OFFSET * xsum` over the
    /// block, `n` the weight's unsigned code (SIMD versions take the offset
    /// off after adding up `n * x`). 0 for the K-quants.
    const OFFSET: i32;
    /// Whether `b` is the activations' block sum (Q4_1, Q5_1) rather than
    /// a sum over the weights' mins.
    const B_IS_XSUM: bool;
    /// Byte offsets in a block of the f16 scales `sa` and `sb` (`sb` is
    /// negated for the K-quants' mins: [`QuantBlock::NEGATE_SB`]).
    const SA_AT: usize;
    const SB_AT: usize;
    const NEGATE_SB: bool;

    /// The block's exact integers `(a, b)` against `x` (its `VALUES`
    /// activations) and `bsums` (their sums per 16), `xsum` their sum.
    fn ints(block: &[u8], x: &[i8], bsums: &[i16], xsum: i32) -> (i32, i32);

    /// The block's f32 scales `(sa, sb)`.
    #[inline(always)]
    fn scales(block: &[u8]) -> (f32, f32) {
        let f = |at: usize| half::f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
        let sb = if Self::HAS_B { f(Self::SB_AT) } else { 0.0 };
        (f(Self::SA_AT), if Self::NEGATE_SB { -sb } else { sb })
    }
}

/// `out_t[c * m + i] = x[i] . row_c` for weight rows of block type `T`
/// (`rows` holds `out_t.len() / m` rows of `k / T::VALUES` blocks): per block
/// in order, `acc = fma(f32(a), sa * dx, acc)` and, where `T` has `b`, `acc =
/// fma(f32(b), sb * dx, acc)` (the module's description).
pub fn dot_rows_q8_scalar<T: QuantBlock>(act: ActQ8Rows, rows: &[u8], out_t: &mut [f32]) {
    let (m, k) = (act.m, act.k);
    let blocks = k / T::VALUES;
    let sums = T::VALUES / BSUM_VALUES;
    for (c, row) in rows.chunks_exact((blocks * T::BYTES).max(1)).enumerate() {
        for i in 0..m {
            let mut acc = 0f32;
            for (b, block) in row.chunks_exact(T::BYTES).enumerate() {
                let at = i * blocks + b;
                let x = &act.q[at * T::VALUES..(at + 1) * T::VALUES];
                let bsums = &act.bsums[at * sums..(at + 1) * sums];
                let (a, bb) = T::ints(block, x, bsums, act.xsum[at]);
                let (sa, sb) = T::scales(block);
                let dx = act.d[at];
                acc = (a as f32).mul_add(sa * dx, acc);
                if T::HAS_B {
                    acc = (bb as f32).mul_add(sb * dx, acc);
                }
            }
            out_t[c * m + i] = acc;
        }
    }
}

/// `sum(w[l] * x[l])` of unsigned codes and int8 activations, in i32.
#[inline(always)]
pub fn dot_codes(w: &[u8], x: &[i8]) -> i32 {
    w.iter()
        .zip(x)
        .map(|(&w, &x)| i32::from(w) * i32::from(x))
        .sum()
}
