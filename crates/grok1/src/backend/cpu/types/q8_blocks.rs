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

use crate::backend::cpu::common::{Aligned, ROW_PAD};

/// Values per sub-block sum of the activations (q8_K's `bsums`).
pub const BSUM_VALUES: usize = 16;

/// Activations `[m, k]` quantised per block of `block` values along `k` (the
/// weights' own block) as llama.cpp quantises them for these products
/// ([`quantize_q8_k`] for 256-value blocks, [`quantize_q8_0`] for 32), so
/// that a file gives the same integers here as there, with the exact sums
/// of each 16 values (`bsums`, used for the weights' mins and offsets) and
/// of each block (`xsum`; llama.cpp's q8_1 keeps `d * sum` in f16 instead).
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
    /// The same activations laid out for the tile kernels, where the
    /// instruction set has them and there are enough rows (else empty).
    pub tiles: ActTiles,
}

/// Activations in tiles of [`ROW_PAD`] rows (zero rows past `m`), for the
/// tile kernels, which multiply sixteen activation rows (one per i32 lane)
/// by a weight row's four codes broadcast: per tile and block, `VALUES / 4`
/// vectors of 64 bytes, row `r`'s four values of each quad at `4 * r`, as
/// they are or, where `plus_128`, each plus 128 (`vpdpbusd`'s unsigned side;
/// the weights' code sums take the 128 back off; the AVX2 tiles multiply
/// them as the signed side of `maddubs` instead); the block's scales of the
/// 16 rows; and per pair of sums of 16 (`bsums[2p]`, `bsums[2p + 1]`), the
/// 16 rows' pairs as i16 halves of an i32.
pub struct ActTiles {
    pub q: Aligned<i8>,
    /// Whether `q` holds the values plus 128.
    pub plus_128: bool,
    /// `[tile][block][ROW_PAD]`.
    pub d: Vec<f32>,
    /// `[tile][block][VALUES / 32][ROW_PAD]`.
    pub bs: Vec<i32>,
    /// `[tile][block][VALUES / 64][ROW_PAD]`: per pair of sums of 32 (each
    /// `bsums[2j] + bsums[2j + 1]`, at most 4096 in magnitude), the 16 rows'
    /// pairs as i16 halves of an i32, which the AMX tiles read for the types
    /// whose `cb` is the same over each 32 values (`TileBlock::CB_PER_32`);
    /// empty for blocks of 32, and for the other kernels' tiles.
    pub bs32: Vec<i32>,
}

impl Default for ActTiles {
    /// No tiles.
    fn default() -> Self {
        ActTiles {
            q: Aligned::zeros(0),
            plus_128: false,
            d: Vec::new(),
            bs: Vec::new(),
            bs32: Vec::new(),
        }
    }
}

/// Two i16 as the low and high halves of an i32, as `vpdpwssd` and `madd`
/// read a pair of words.
#[inline(always)]
pub fn i16_pair(lo: i16, hi: i16) -> i32 {
    (u32::from(lo as u16) | (u32::from(hi as u16) << 16)) as i32
}

impl ActTiles {
    /// The tiles of `act` (its `m` rows), the values plus 128 where
    /// `plus_128`, with the pairs of sums of 32 (`bs32`) where `sums_32`.
    pub fn new(act: &ActQ8, plus_128: bool, sums_32: bool) -> ActTiles {
        let (m, k, values) = (act.m, act.k, act.block);
        let (blocks, pairs, quads) = (k / values, values / 32, values / 4);
        let tiles = m.div_ceil(ROW_PAD);
        let mut q = Aligned::zeros(tiles * k * ROW_PAD);
        let qs = q.as_mut_slice();
        let mut d = vec![0f32; tiles * blocks * ROW_PAD];
        let mut bs = vec![0i32; tiles * blocks * pairs * ROW_PAD];
        let quads32 = if sums_32 { values / 64 } else { 0 };
        let mut bs32 = vec![0i32; tiles * blocks * quads32 * ROW_PAD];
        // Padding rows: zero activations, stored as every other.
        let flip: u8 = if plus_128 { 0x80 } else { 0 };
        qs.fill(flip as i8);
        for i in 0..m {
            let (t, r) = (i / ROW_PAD, i % ROW_PAD);
            for b in 0..blocks {
                let tb = t * blocks + b;
                d[tb * ROW_PAD + r] = act.d[i * blocks + b];
                for p in 0..pairs {
                    let at = (i * k + b * values) / BSUM_VALUES + 2 * p;
                    bs[(tb * pairs + p) * ROW_PAD + r] = i16_pair(act.bsums[at], act.bsums[at + 1]);
                }
                for p in 0..quads32 {
                    let at = (i * k + b * values) / BSUM_VALUES + 4 * p;
                    let s = |j: usize| act.bsums[at + j] + act.bsums[at + j + 1];
                    bs32[(tb * quads32 + p) * ROW_PAD + r] = i16_pair(s(0), s(2));
                }
                for qd in 0..quads {
                    let dst = ((tb * quads + qd) * ROW_PAD + r) * 4;
                    let src = i * k + b * values + 4 * qd;
                    for (o, &v) in qs[dst..dst + 4].iter_mut().zip(&act.q[src..src + 4]) {
                        *o = (v as u8 ^ flip) as i8;
                    }
                }
            }
        }
        ActTiles {
            q,
            plus_128,
            d,
            bs,
            bs32,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
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
            // The tiles hold all the rows, so only a view of all of them
            // has them.
            tiles: (rows == (0..self.m) && !self.tiles.is_empty()).then_some(&self.tiles),
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
    /// The rows' tiles, where the activations have them.
    pub tiles: Option<&'a ActTiles>,
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
    /// A power of two the f16 `sa` is multiplied by (exactly) before use:
    /// the i-quants' fixed factors (IQ2's `1/8`, IQ3_XXS's `1/4`), which
    /// keeps their integer scales `2 s + 1` whole.
    const SA_MUL: f32 = 1.0;

    /// The block's exact integers `(a, b)` against `x` (its `VALUES`
    /// activations) and `bsums` (their sums per 16), `xsum` their sum.
    fn ints(block: &[u8], x: &[i8], bsums: &[i16], xsum: i32) -> (i32, i32);

    /// The bits of the block's f16 `sa`: at `SA_AT`, but where a type
    /// spreads it over other fields (IQ1_M).
    #[inline(always)]
    fn sa_bits(block: &[u8]) -> u16 {
        u16::from_le_bytes([block[Self::SA_AT], block[Self::SA_AT + 1]])
    }

    /// The block's f32 scales `(sa, sb)`.
    #[inline(always)]
    fn scales(block: &[u8]) -> (f32, f32) {
        let f = |at: usize| half::f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
        let sb = if Self::HAS_B { f(Self::SB_AT) } else { 0.0 };
        (
            half::f16::from_bits(Self::sa_bits(block)).to_f32() * Self::SA_MUL,
            if Self::NEGATE_SB { -sb } else { sb },
        )
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
    let row_bytes = blocks * T::BYTES;
    // By output row, so that rows of no values still get their empty sum.
    for c in 0..out_t.len() / m.max(1) {
        let row = &rows[c * row_bytes..(c + 1) * row_bytes];
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

/// `sum(w[l] * x[l])` of codes stored as signed bytes and int8 activations,
/// in i32.
#[inline(always)]
pub fn dot_signed(w: &[u8], x: &[i8]) -> i32 {
    w.iter()
        .zip(x)
        .map(|(&w, &x)| i32::from(w as i8) * i32::from(x))
        .sum()
}

/// A block type in the form the tile kernels (`arch/x86/q8_blocks_vnni.rs`)
/// multiply: its unsigned codes in value order, an integer scale per
/// sub-block of [`TileBlock::SUB`] values, and i16 coefficients of the
/// activations' sums of 16, such that the block's integers are
/// `a = sum_j sc_j * sum(code * x over sub-block j) + sum_i ca_i * bsums_i`
/// and `b = sum_i cb_i * bsums_i` ([`tile_ints`], the same integers as
/// [`QuantBlock::ints`]).
pub trait TileBlock: QuantBlock {
    /// Values per sub-block scale.
    const SUB: usize;
    /// Whether the sub-block scales are other than 1 (the K-quants).
    const SCALED: bool;
    /// Whether any `ca_i` is other than 0.
    const HAS_CA: bool;
    /// Whether the codes are signed bytes (the i-quants' signed levels,
    /// each within -127..=127) rather than unsigned ones below 128.
    const SIGNED_CODES: bool = false;
    /// The largest code `tile_codes` gives (unsigned codes), or level plus
    /// [`TileBlock::LEVEL_BIAS`] (signed ones): how many `maddubs` of codes
    /// against int8 activations the AVX2 tiles add up in i16 lanes before
    /// they widen them (`tests/block_kernels.rs` checks it).
    const CODE_MAX: u8 = 127;
    /// Signed codes only: a bias that makes every level a code in
    /// `0..=CODE_MAX`, so that the AVX2 tiles multiply `level + bias` as
    /// `maddubs`'s unsigned side and take `bias` times the activations'
    /// sums back off (codes past 127, IQ4's, as two nibbles); 0: not tiled
    /// on AVX2.
    const LEVEL_BIAS: u8 = 0;
    /// Signed codes only: every level is a multiple of `2^LEVEL_SHIFT`
    /// (IQ3_XXS's are even), so the AVX2 tiles may multiply `(level >>
    /// LEVEL_SHIFT) + (LEVEL_BIAS >> LEVEL_SHIFT)`, codes up to `CODE_MAX >>
    /// LEVEL_SHIFT`, against the scale times `2^LEVEL_SHIFT`: smaller codes,
    /// so more `maddubs` add up in i16 lanes before they are widened
    /// (`tests/block_kernels.rs` checks the multiples).
    const LEVEL_SHIFT: u32 = 0;
    /// The largest `|sc * code + ca|` of any value (its sub-block's scale,
    /// its sum of 16's `ca`): where it is at most 127 the AMX tiles multiply
    /// each value's `sc * code + ca` as one signed byte, else as two digits
    /// (`64 hi + lo`, `lo` in `0..64`), which hold up to 8191
    /// (`tests/block_kernels.rs` checks it).
    const CODE_SCALE_MAX: i32 = 8191;
    /// Whether `cb` is the same for both sums of 16 of every 32 values (the
    /// mins of Q4_K's and Q5_K's sub-blocks of 32): the AMX tiles then take
    /// the `b` terms from sums of 32 (`ActTiles::bs32`), half the products
    /// (`tests/block_kernels.rs` checks it).
    const CB_PER_32: bool = false;

    /// The block's `VALUES` codes (each below 128, or signed bytes where
    /// [`TileBlock::SIGNED_CODES`]), in value order.
    fn tile_codes(block: &[u8], out: &mut [u8]);

    /// The block's `sc` (`VALUES / SUB`), `ca` and `cb` (`VALUES / 16` each).
    fn tile_scales(block: &[u8], sc: &mut [i32], ca: &mut [i16], cb: &mut [i16]);
}

/// A block's integers `(a, b)` computed in the tile form of [`TileBlock`]
/// (the tests hold them equal to [`QuantBlock::ints`]).
pub fn tile_ints<T: TileBlock>(block: &[u8], x: &[i8], bsums: &[i16]) -> (i32, i32) {
    let mut codes = vec![0u8; T::VALUES];
    let mut sc = vec![0i32; T::VALUES / T::SUB];
    let mut ca = vec![0i16; T::VALUES / BSUM_VALUES];
    let mut cb = vec![0i16; T::VALUES / BSUM_VALUES];
    T::tile_codes(block, &mut codes);
    T::tile_scales(block, &mut sc, &mut ca, &mut cb);
    let mut a: i32 = codes
        .chunks_exact(T::SUB)
        .zip(x.chunks_exact(T::SUB))
        .zip(&sc)
        .map(|((c, x), &s)| {
            s * if T::SIGNED_CODES {
                dot_signed(c, x)
            } else {
                dot_codes(c, x)
            }
        })
        .sum();
    let mut b = 0i32;
    for ((&s, &ca), &cb) in bsums.iter().zip(&ca).zip(&cb) {
        a += i32::from(ca) * i32::from(s);
        b += i32::from(cb) * i32::from(s);
    }
    (a, b)
}

/// [`TileBlock::tile_scales`] of the legacy types: one sub-block of scale 1,
/// the offset taken off with the two sums of 16 (`ca = -OFFSET`), and `b`
/// their sum where it is the activations' block sum.
pub fn legacy_tile_scales<T: QuantBlock>(sc: &mut [i32], ca: &mut [i16], cb: &mut [i16]) {
    sc.fill(1);
    ca.fill(-(T::OFFSET as i16));
    cb.fill(i16::from(T::B_IS_XSUM));
}

/// llama.cpp's q8_K quantisation of one block (`quantize_row_q8_K_ref`, the
/// one its CPU backend runs): `max` is the first value of the largest
/// magnitude, sign kept, `iscale = -127 / max`, `q = min(127,
/// round_half_even(iscale * x))`, and the scale is `1 / iscale` (negative
/// for a positive `max`: the codes carry the opposite sign). An all-zero
/// block is zeros with scale 0; a block whose magnitudes are not all finite
/// is zeros with a NaN scale, as `quantize_row_i8` (NaN values are skipped
/// in the search and give 0).
pub fn quantize_q8_k(src: &[f32], dst: &mut [i8]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &x in src {
        if x.abs() > amax {
            amax = x.abs();
            max = x;
        }
    }
    if amax == 0.0 || !amax.is_finite() {
        dst.fill(0);
        return if amax.is_finite() { 0.0 } else { f32::NAN };
    }
    let iscale = -127.0 / max;
    for (o, &x) in dst.iter_mut().zip(src) {
        *o = round_code(iscale * x);
    }
    1.0 / iscale
}

/// llama.cpp's q8_0 quantisation of one block of 32 as its x86 backend runs
/// it (`quantize_row_q8_0`, AVX): `d = absmax / 127` rounded to f16 (the
/// block's stored scale), `q = round_half_even(x * (127 / absmax))`. The
/// same non-finite rules as [`quantize_q8_k`].
pub fn quantize_q8_0(src: &[f32], dst: &mut [i8]) -> f32 {
    let amax = src
        .iter()
        .fold(0f32, |m, &x| if x.abs() > m { x.abs() } else { m });
    if amax == 0.0 || !amax.is_finite() {
        dst.fill(0);
        return if amax.is_finite() { 0.0 } else { f32::NAN };
    }
    let id = 127.0 / amax;
    for (o, &x) in dst.iter_mut().zip(src) {
        *o = round_code(x * id);
    }
    half::f16::from_f32(amax / 127.0).to_f32()
}

/// `min(127, round_half_even(v))` as a code, NaN to 0 (`|v| <= 127` but for
/// rounding: `v` is a value times 127 over the block's largest magnitude).
#[inline(always)]
pub fn round_code(v: f32) -> i8 {
    if v.is_nan() {
        0
    } else {
        v.round_ties_even().min(127.0) as i8
    }
}
