//! The i-quant blocks' integers on AVX2 (`types::iq4_nl` .. `types::iq1_s`),
//! for `q8_blocks_i8`, and their levels for the tile kernel
//! (`q8_blocks_vnni`).
//!
//! Every i-quant block is, per 32 values, signed levels times integer
//! sub-block scales ([`IqParts`]): each type gives the 32 levels as
//! magnitudes `u` (unsigned bytes) and a sign vector `s` (a level is
//! `sign(u, s)`): IQ4's levels come from a 16-entry `pshufb` lookup, the
//! grid types' magnitudes from their grid tables (one u64 or u32 row per 8
//! or 4 values) with sign masks, IQ1_S's levels from its grid of -1, 0, 1.
//! The dot against int8 activations is then `maddubs(u, sign(x, s))` (pairs
//! within i16: `|u| <= 127`, `|x| <= 127`) and `madd` with the scales.

use std::arch::x86_64::*;

use super::iq_i8_vbmi;
use super::q8_blocks_i8::Avx2Block;
use super::q8_blocks_vnni::VnniBlock;
use super::{bit_set_bytes, nibbles32, u32_bit_spread};
use crate::backend::cpu::types::iq1_m::IQ1M;
use crate::backend::cpu::types::iq1_s::IQ1S;
use crate::backend::cpu::types::iq2_s::IQ2S;
use crate::backend::cpu::types::iq2_xs::IQ2XS;
use crate::backend::cpu::types::iq2_xxs::IQ2XXS;
use crate::backend::cpu::types::iq3_s::IQ3S;
use crate::backend::cpu::types::iq3_xxs::IQ3XXS;
use crate::backend::cpu::types::iq4_nl::IQ4NL;
use crate::backend::cpu::types::iq4_xs::IQ4XS;
use crate::backend::cpu::types::iq_levels::even_signs;
use crate::backend::cpu::types::q8_blocks::QuantBlock;
use crate::quant::tables::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KVALUES_IQ4NL,
};

/// Per 7-bit sign index (`even_signs`), eight bytes `0xFF` (negate) or
/// `0x01` (keep), for `_mm256_sign_epi8`.
static SIGN_MASKS: [u64; 128] = {
    let mut t = [0u64; 128];
    let mut i = 0;
    while i < 128 {
        let s = even_signs(i as u8);
        let mut j = 0;
        while j < 8 {
            let byte: u64 = if s >> j & 1 != 0 { 0xFF } else { 0x01 };
            t[i] |= byte << (8 * j);
            j += 1;
        }
        i += 1;
    }
    t
};

/// `$body` for each part `$p` in `0..$n`: written out eight times where
/// `$unroll` and there are eight parts, else a loop, which LLVM keeps as
/// it is ([`IqParts::UNROLL`]).
macro_rules! each_part {
    ($unroll:expr, $n:expr, $p:ident => $body:block) => {
        if $unroll && $n == 8 {
            each_part!(@at $p = 0, $body);
            each_part!(@at $p = 1, $body);
            each_part!(@at $p = 2, $body);
            each_part!(@at $p = 3, $body);
            each_part!(@at $p = 4, $body);
            each_part!(@at $p = 5, $body);
            each_part!(@at $p = 6, $body);
            each_part!(@at $p = 7, $body);
        } else {
            for $p in 0..$n {
                $body
            }
        }
    };
    (@at $p:ident = $at:expr, $body:block) => {{
        let $p: usize = $at;
        $body
    }};
}

/// IQ1_M's levels `8 g + shift` a group of 8 values, by the group's index
/// into IQ1_S's grid and its shift's sign bit (row `sign << 11 | index`):
/// a lookup gives the group's levels, where the grid row, a vector of the
/// shifts made from the sign bits, a sign and an add did (32 KiB).
static IQ1M_LEVELS: [u64; 4096] = {
    let mut t = [0u64; 4096];
    let mut r = 0;
    while r < 4096 {
        let grid = IQ1S_GRID[r & 2047].to_le_bytes();
        let shift: i8 = if r & 2048 == 0 { 1 } else { -1 };
        let mut levels = [0u8; 8];
        let mut j = 0;
        while j < 8 {
            levels[j] = (8 * (grid[j] as i8) + shift) as u8;
            j += 1;
        }
        t[r] = u64::from_le_bytes(levels);
        r += 1;
    }
    t
};

/// An i-quant type in parts of 32 values.
trait IqParts: QuantBlock {
    /// Whether [`avx2_ints`] (and IQ1_S's `ints`) writes the eight parts
    /// out, else a loop, which LLVM keeps as it is. Measured per type
    /// (`kernel_bench`, one thread, rows in L2, Zen 3; llama.cpp's own
    /// `vec_dot` beside it by `bench/kernels_llamacpp.sh`): written out,
    /// IQ2_XS 3.40 -> 3.78 GB/s and IQ3_XXS 3.70 -> 4.35 (the loop made
    /// each part's scale control at run time and kept a counter and a
    /// branch, in kernels bound by the number of instructions); IQ2_S 3.56
    /// -> 3.98 and IQ1_S 2.50 -> 2.57 once their grid indices' high bits
    /// came from one multiply (written out with the shifts and masks, LLVM
    /// made those vector work and took each index out with `vpextrw`:
    /// IQ2_S 3.23, IQ1_S 2.29). Left as loops: IQ3_S (3.57 -> 2.66 written
    /// out), IQ2_XXS (3.25 -> 3.10); in pairs every type was slower.
    const UNROLL: bool = false;

    /// Part `p`'s 32 levels as magnitudes and signs `(u, s)`, given the
    /// block's sign words from [`IqParts::block_signs`].
    ///
    /// # Safety
    /// AVX2 (inlined into an AVX2 function); a whole block at `w`,
    /// `p < VALUES / 32`.
    unsafe fn part(w: *const u8, signs: &[u32; 8], p: usize) -> (__m256i, __m256i);

    /// The i16 scales of part `p`'s 16 pairs of values (its sub-block
    /// scales, each repeated over its values' pairs), given the block's
    /// scales from [`IqParts::block_scales`].
    ///
    /// # Safety
    /// As [`IqParts::part`].
    unsafe fn scale(sc: &[i16; 16], p: usize) -> __m256i;

    /// The block's sub-block scales, once per block.
    ///
    /// # Safety
    /// A whole block at `w`.
    unsafe fn block_scales(w: *const u8) -> [i16; 16];

    /// The block's sign bits as a u32 a part (bit `j` of byte `i` negates
    /// value `8 i + j`), where a type makes them for all parts at once
    /// (the others read theirs in `part`).
    ///
    /// # Safety
    /// As [`IqParts::block_scales`].
    #[inline(always)]
    unsafe fn block_signs(_w: *const u8) -> [u32; 8] {
        [0; 8]
    }

    /// The block's integers against `G` activation rows
    /// (`Avx2Block::ints_avx2`): the levels' dot ([`avx2_ints`]) unless a
    /// type has a cheaper form of the same integers.
    ///
    /// # Safety
    /// AVX2 (inlined into an AVX2 function); a whole block at `w`, `VALUES`
    /// values at each `x[t]` and their sums of 16 at `bs[t]`.
    #[inline(always)]
    unsafe fn ints<const G: usize>(
        w: *const u8,
        x: [*const i8; G],
        _bs: [*const i16; G],
    ) -> [__m256i; G]
    where
        Self: Sized,
    {
        // SAFETY: the caller's.
        unsafe { avx2_ints::<Self, G>(w, x) }
    }
}

/// Four 8-byte rows of `table`: row `l` at the byte offset in u16 lane `l`
/// of `high` (bits `mask`; a multiply put a part's high index bits there,
/// the rows' size already applied) plus 8 times index byte `l` at `low`,
/// as one vector (row 0 lowest). The lookup of IQ2_S's and IQ1_S's grids
/// and IQ1_M's levels.
///
/// # Safety
/// AVX2 (inlined); 4 readable bytes at `low`, and every offset so made
/// inside `table`.
#[inline(always)]
unsafe fn four_rows(table: *const u64, high: u64, mask: usize, low: *const u8) -> __m256i {
    // SAFETY: the caller's.
    unsafe {
        let g = |l: usize| {
            let at = (high >> (16 * l)) as usize & mask;
            let row = (table as *const u8)
                .add(at)
                .add(8 * usize::from(*low.add(l)));
            (row as *const i64).read()
        };
        _mm256_set_epi64x(g(3), g(2), g(1), g(0))
    }
}

/// One scale for all 32 values of part `p`.
#[inline(always)]
fn scale32(sc: &[i16; 16], p: usize) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller (inlined into them).
    unsafe { _mm256_set1_epi16(sc[p]) }
}

/// Scales `2p` (values 0..16 of the part, the low 128 bits) and `2p + 1`,
/// from `sc` in split order (the even-numbered scales in lanes 0..8, the
/// odd in 8..16): one byte shuffle of the block's scales in a register,
/// where two broadcasts and an insert a part were an eighth of IQ2_XS's
/// decode.
#[inline(always)]
fn scale16(sc: &[i16; 16], p: usize) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller (inlined into them); 32
    // bytes at `sc`.
    unsafe {
        let v = _mm256_loadu_si256(sc.as_ptr() as *const __m256i);
        // Word p of each 128-bit half: scale 2p below, 2p + 1 above.
        let word = (2 * p as i16) | (2 * p as i16 + 1) << 8;
        _mm256_shuffle_epi8(v, _mm256_set1_epi16(word))
    }
}

/// IQ4's 32 levels from 16 bytes of nibbles at `qs` (low nibbles first),
/// as `(|level|, level)`.
///
/// # Safety
/// AVX2 (inlined); 16 readable bytes at `qs`.
#[inline(always)]
unsafe fn iq4_part(qs: *const u8) -> (__m256i, __m256i) {
    // SAFETY: the caller's; the table has 16 bytes.
    unsafe {
        let table =
            _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i));
        let nibbles = nibbles32(_mm_loadu_si128(qs as *const __m128i));
        let v = _mm256_shuffle_epi8(table, nibbles);
        (_mm256_abs_epi8(v), v)
    }
}

/// The sign vector of four sign bytes (bit `j` of byte `i` negates value
/// `8 i + j`): bytes `0xFF` or `0x01`.
///
/// # Safety
/// AVX2 (inlined).
#[inline(always)]
unsafe fn byte_signs(bits: u32) -> __m256i {
    // SAFETY: the caller's.
    unsafe {
        let set = bit_set_bytes(_mm256_set1_epi32(bits as i32), u32_bit_spread());
        _mm256_or_si256(set, _mm256_set1_epi8(1))
    }
}

/// The sign bits of eight parts whose signs are four 7-bit indices
/// (`even_signs`) in the low 28 bits of each u32 lane of `aux`: per lane,
/// four bytes, each index's seven bits and the parity of them as the
/// eighth. Made for the eight parts at once: one part's from a table
/// (`SIGN_MASKS`: four indices taken apart, four loads and the vector
/// put together) were a third of the IQ3_XXS decode's operations.
///
/// # Safety
/// AVX2 (inlined into an AVX2 function).
#[inline(always)]
unsafe fn even_sign_words(aux: __m256i) -> [u32; 8] {
    // SAFETY: the caller's.
    unsafe {
        let field = |v: __m256i, mask: i32| _mm256_and_si256(v, _mm256_set1_epi32(mask));
        // Index i of each lane to byte i (bit 7 clear).
        let x = _mm256_or_si256(
            _mm256_or_si256(field(aux, 0x7F), field(_mm256_slli_epi32::<1>(aux), 0x7F00)),
            _mm256_or_si256(
                field(_mm256_slli_epi32::<2>(aux), 0x7F_0000),
                field(_mm256_slli_epi32::<3>(aux), 0x7F00_0000),
            ),
        );
        // Bit 0 of each byte the parity of its seven bits (what moves in
        // from the byte above only touches bits that are not read).
        let p = _mm256_xor_si256(x, _mm256_srli_epi32::<4>(x));
        let p = _mm256_xor_si256(p, _mm256_srli_epi32::<2>(p));
        let p = _mm256_xor_si256(p, _mm256_srli_epi32::<1>(p));
        let words = _mm256_or_si256(x, _mm256_slli_epi32::<7>(field(p, 0x0101_0101)));
        let mut out = [0u32; 8];
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, words);
        out
    }
}

#[inline(always)]
unsafe fn u16_at(w: *const u8, at: usize) -> u16 {
    // SAFETY: the caller's (inside the block).
    unsafe { (w.add(at) as *const u16).read_unaligned() }
}

#[inline(always)]
unsafe fn u32_at(w: *const u8, at: usize) -> u32 {
    // SAFETY: the caller's (inside the block).
    unsafe { (w.add(at) as *const u32).read_unaligned() }
}

impl IqParts for IQ4NL {
    #[inline(always)]
    unsafe fn part(w: *const u8, _signs: &[u32; 8], _p: usize) -> (__m256i, __m256i) {
        // SAFETY: the trait's contract.
        unsafe { iq4_part(w.add(2)) }
    }
    #[inline(always)]
    unsafe fn scale(sc: &[i16; 16], p: usize) -> __m256i {
        scale32(sc, p)
    }
    #[inline(always)]
    unsafe fn block_scales(_w: *const u8) -> [i16; 16] {
        [1; 16]
    }
}

impl IqParts for IQ4XS {
    #[inline(always)]
    unsafe fn part(w: *const u8, _signs: &[u32; 8], p: usize) -> (__m256i, __m256i) {
        // SAFETY: the trait's contract: sub-block p's 16 bytes.
        unsafe { iq4_part(w.add(8 + 16 * p)) }
    }
    #[inline(always)]
    unsafe fn scale(sc: &[i16; 16], p: usize) -> __m256i {
        scale32(sc, p)
    }
    /// `iq4_xs_scales` in one 128-bit vector: the low nibbles unpacked, the
    /// two high bits of scale `j` moved to the top of lane `j` by a multiply
    /// by `2^(14 - 2j)` and shifted down (AVX2 has no per-lane 16-bit shift);
    /// done by scalar code, the eight scales took a third of the decode
    /// kernel's time.
    #[inline(always)]
    unsafe fn block_scales(w: *const u8) -> [i16; 16] {
        // SAFETY: the trait's contract (the block's bytes 2..8).
        unsafe {
            let high = _mm_set1_epi16(u16_at(w, 2) as i16);
            let low = _mm_cvtsi32_si128(u32_at(w, 4) as i32);
            let nibbles = _mm_cvtepu8_epi16(nibble_bytes(low));
            let lift = _mm_setr_epi16(1 << 14, 1 << 12, 1 << 10, 1 << 8, 1 << 6, 1 << 4, 1 << 2, 1);
            let high = _mm_srli_epi16::<14>(_mm_mullo_epi16(high, lift));
            let scales = _mm_sub_epi16(
                _mm_or_si128(nibbles, _mm_slli_epi16::<4>(high)),
                _mm_set1_epi16(32),
            );
            let mut out = [0i16; 16];
            _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, scales);
            out
        }
    }
}

/// The second u32 of each of an IQ2_XXS block's eight parts (four 7-bit
/// sign indices and the scale).
///
/// # Safety
/// AVX2 (inlined into an AVX2 function); a whole block at `w`.
#[inline(always)]
unsafe fn iq2_xxs_aux(w: *const u8) -> __m256i {
    // SAFETY: the caller's: parts 0..4 and 4..8 (two u32 each: grid, then
    // signs and scale) at 2..34 and 34..66.
    unsafe {
        let a = _mm256_loadu_si256(w.add(2) as *const __m256i);
        let b = _mm256_loadu_si256(w.add(34) as *const __m256i);
        // The odd u32: [x0 x1 x4 x5 | x2 x3 x6 x7], then in order.
        let odd = _mm256_castps_si256(_mm256_shuffle_ps::<0b11_01_11_01>(
            _mm256_castsi256_ps(a),
            _mm256_castsi256_ps(b),
        ));
        _mm256_permutevar8x32_epi32(odd, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7))
    }
}

impl IqParts for IQ2XXS {
    #[inline(always)]
    unsafe fn part(w: *const u8, signs: &[u32; 8], p: usize) -> (__m256i, __m256i) {
        // SAFETY: the trait's contract: part p's two u32.
        unsafe {
            let grid = u32_at(w, 2 + 8 * p);
            let g = |l: u32| IQ2XXS_GRID[(grid >> (8 * l)) as u8 as usize] as i64;
            (
                _mm256_set_epi64x(g(3), g(2), g(1), g(0)),
                byte_signs(signs[p]),
            )
        }
    }
    #[inline(always)]
    unsafe fn scale(sc: &[i16; 16], p: usize) -> __m256i {
        scale32(sc, p)
    }
    #[inline(always)]
    unsafe fn block_scales(w: *const u8) -> [i16; 16] {
        // SAFETY: the trait's contract.
        unsafe { odd_top_scales(iq2_xxs_aux(w)) }
    }
    #[inline(always)]
    unsafe fn block_signs(w: *const u8) -> [u32; 8] {
        // SAFETY: the trait's contract.
        unsafe { even_sign_words(iq2_xxs_aux(w)) }
    }
}

/// The nibbles of bytes `0..8` of `low`, one a byte, the low nibble of
/// each byte first.
#[inline(always)]
fn nibble_bytes(low: __m128i) -> __m128i {
    // SAFETY: SSE2 (x86-64's baseline).
    unsafe {
        let m4 = _mm_set1_epi8(0x0F);
        _mm_unpacklo_epi8(
            _mm_and_si128(low, m4),
            _mm_and_si128(_mm_srli_epi16::<4>(low), m4),
        )
    }
}

/// `2 s + 1` of the nibbles `s` of `low` (low nibble of each byte first),
/// as i16 lanes in that order. The grid types' scales were made one at a
/// time by scalar code, a shift, a mask and a multiply-add each, as much
/// work a block as a part of its products.
///
/// # Safety
/// AVX2 (inlined into an AVX2 function).
#[inline(always)]
unsafe fn odd_nibble_scales(low: __m128i) -> [i16; 16] {
    // SAFETY: the caller's.
    unsafe {
        let nibbles = _mm256_cvtepu8_epi16(nibble_bytes(low));
        let odd = _mm256_or_si256(_mm256_slli_epi16::<1>(nibbles), _mm256_set1_epi16(1));
        let mut out = [0i16; 16];
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, odd);
        out
    }
}

/// `2 s + 1` of the 16 nibbles `s` of `low`'s bytes 0..8, as i16 lanes in
/// the split order of [`scale16`]: the low nibbles (scales 0, 2, ..)
/// first, then the high ones.
///
/// # Safety
/// AVX2 (inlined into an AVX2 function).
#[inline(always)]
unsafe fn odd_nibble_scales_split(low: __m128i) -> [i16; 16] {
    // SAFETY: the caller's.
    unsafe {
        let m4 = _mm_set1_epi8(0x0F);
        let even = _mm_cvtepu8_epi16(_mm_and_si128(low, m4));
        let odd = _mm_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(low), m4));
        let s = _mm256_set_m128i(odd, even);
        let s = _mm256_or_si256(_mm256_slli_epi16::<1>(s), _mm256_set1_epi16(1));
        let mut out = [0i16; 16];
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, s);
        out
    }
}

/// `2 s + 1` of the top nibbles `s` of the eight u32 lanes of `v`, as the
/// first eight i16 (the rest 0).
///
/// # Safety
/// AVX2 (inlined into an AVX2 function).
#[inline(always)]
unsafe fn odd_top_scales(v: __m256i) -> [i16; 16] {
    // SAFETY: the caller's.
    unsafe {
        let top = _mm256_srli_epi32::<28>(v);
        let odd = _mm256_or_si256(_mm256_slli_epi32::<1>(top), _mm256_set1_epi32(1));
        // [s0..s3, 0 x 4 | s4..s7, 0 x 4], then the two quads side by side.
        let packed = _mm256_packs_epi32(odd, _mm256_setzero_si256());
        let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(packed);
        let mut out = [0i16; 16];
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, packed);
        out
    }
}

impl IqParts for IQ2XS {
    const UNROLL: bool = true;

    #[inline(always)]
    unsafe fn part(w: *const u8, _signs: &[u32; 8], p: usize) -> (__m256i, __m256i) {
        // SAFETY: the trait's contract: part p's four u16.
        unsafe {
            let q = |l: usize| u16_at(w, 2 + 2 * (4 * p + l));
            let (q0, q1, q2, q3) = (q(0), q(1), q(2), q(3));
            let g = |q: u16| IQ2XS_GRID[usize::from(q & 511)] as i64;
            let s = |q: u16| SIGN_MASKS[usize::from(q >> 9)] as i64;
            (
                _mm256_set_epi64x(g(q3), g(q2), g(q1), g(q0)),
                _mm256_set_epi64x(s(q3), s(q2), s(q1), s(q0)),
            )
        }
    }
    #[inline(always)]
    unsafe fn scale(sc: &[i16; 16], p: usize) -> __m256i {
        scale16(sc, p)
    }
    #[inline(always)]
    unsafe fn block_scales(w: *const u8) -> [i16; 16] {
        // SAFETY: the trait's contract: 8 scale bytes at 66.
        unsafe { odd_nibble_scales_split(_mm_loadl_epi64(w.add(66) as *const __m128i)) }
    }
}

impl IqParts for IQ2S {
    const UNROLL: bool = true;

    #[inline(always)]
    unsafe fn part(w: *const u8, _signs: &[u32; 8], p: usize) -> (__m256i, __m256i) {
        // SAFETY: the trait's contract: part p's 4 index bytes, its byte of
        // high bits and its 4 sign bytes.
        unsafe {
            // Value l's two high index bits (bits 2l and 2l + 1 of qh) as
            // byte offsets of the grid's rows (8 bytes, 2048 a high value),
            // bits 11 and 12 of u16 lane l: one multiply puts the four
            // copies of qh in place (they do not overlap), where a shift,
            // a mask and an add an index were.
            let qh = u64::from(*w.add(66 + p));
            let high = qh.wrapping_mul(1 << 11 | 1 << 25 | 1 << 39 | 1 << 53);
            // Rows (high << 8 | low) < 1024.
            (
                four_rows(IQ2S_GRID.as_ptr(), high, 0x1800, w.add(2 + 4 * p)),
                byte_signs(u32_at(w, 34 + 4 * p)),
            )
        }
    }
    #[inline(always)]
    unsafe fn scale(sc: &[i16; 16], p: usize) -> __m256i {
        scale16(sc, p)
    }
    #[inline(always)]
    unsafe fn block_scales(w: *const u8) -> [i16; 16] {
        // SAFETY: the trait's contract: 8 scale bytes at 74.
        unsafe { odd_nibble_scales_split(_mm_loadl_epi64(w.add(74) as *const __m128i)) }
    }
}

impl IqParts for IQ3XXS {
    const UNROLL: bool = true;

    #[inline(always)]
    unsafe fn part(w: *const u8, signs: &[u32; 8], p: usize) -> (__m256i, __m256i) {
        // SAFETY: the trait's contract: part p's 8 index bytes and its u32.
        unsafe {
            let g = |l: usize| IQ3XXS_GRID[usize::from(*w.add(2 + 8 * p + l))] as i32;
            (
                _mm256_setr_epi32(g(0), g(1), g(2), g(3), g(4), g(5), g(6), g(7)),
                byte_signs(signs[p]),
            )
        }
    }
    #[inline(always)]
    unsafe fn block_signs(w: *const u8) -> [u32; 8] {
        // SAFETY: the trait's contract: the eight u32 at 66..98.
        unsafe { even_sign_words(_mm256_loadu_si256(w.add(66) as *const __m256i)) }
    }
    #[inline(always)]
    unsafe fn scale(sc: &[i16; 16], p: usize) -> __m256i {
        scale32(sc, p)
    }
    #[inline(always)]
    unsafe fn block_scales(w: *const u8) -> [i16; 16] {
        // SAFETY: the trait's contract: the eight u32 at 66..98.
        unsafe { odd_top_scales(_mm256_loadu_si256(w.add(66) as *const __m256i)) }
    }
}

impl IqParts for IQ3S {
    #[inline(always)]
    unsafe fn part(w: *const u8, _signs: &[u32; 8], p: usize) -> (__m256i, __m256i) {
        // SAFETY: the trait's contract: part p's 8 index bytes, its byte of
        // ninth bits and its 4 sign bytes.
        unsafe {
            let qh = *w.add(66 + p);
            let g = |l: usize| {
                let index = usize::from(*w.add(2 + 8 * p + l)) | usize::from(qh >> l & 1) << 8;
                IQ3S_GRID[index] as i32
            };
            (
                _mm256_setr_epi32(g(0), g(1), g(2), g(3), g(4), g(5), g(6), g(7)),
                byte_signs(u32_at(w, 74 + 4 * p)),
            )
        }
    }
    #[inline(always)]
    unsafe fn scale(sc: &[i16; 16], p: usize) -> __m256i {
        scale32(sc, p)
    }
    #[inline(always)]
    unsafe fn block_scales(w: *const u8) -> [i16; 16] {
        // SAFETY: the trait's contract: 4 scale bytes at 106 (the block's
        // last), the other lanes zero.
        let mut sc = unsafe { odd_nibble_scales(_mm_cvtsi32_si128(u32_at(w, 106) as i32)) };
        sc[8..].fill(0);
        sc
    }
}

/// The grid bytes (-1, 0 or 1) of an IQ1_S block's part `p`.
///
/// # Safety
/// AVX2 (inlined); a whole block at `w`, `p < 8`.
#[inline(always)]
unsafe fn iq1_s_grid(w: *const u8, p: usize) -> __m256i {
    // SAFETY: the caller's: part p's 4 index bytes and its u16.
    unsafe {
        // Value l's three high index bits (bits 3l..3l + 3 of qh) as byte
        // offsets of the grid's rows (8 bytes, 2048 a high value), bits
        // 11..14 of u16 lane l, by one multiply (as IQ2_S's).
        let qh = u64::from(u16_at(w, 34 + 2 * p) & 0x0FFF);
        let high = qh.wrapping_mul(1 << 11 | 1 << 24 | 1 << 37 | 1 << 50);
        // Rows (high << 8 | low) < 2048.
        four_rows(IQ1S_GRID.as_ptr(), high, 0x3800, w.add(2 + 4 * p))
    }
}

impl IqParts for IQ1S {
    const UNROLL: bool = true;

    #[inline(always)]
    unsafe fn part(w: *const u8, _signs: &[u32; 8], p: usize) -> (__m256i, __m256i) {
        // SAFETY: the trait's contract: part p's 4 index bytes and its u16.
        unsafe {
            let grid = iq1_s_grid(w, p);
            let shift = _mm256_set1_epi8(if u16_at(w, 34 + 2 * p) & 0x8000 == 0 {
                1
            } else {
                -1
            });
            // 8 grid + shift: odd, never 0.
            let v = _mm256_add_epi8(_mm256_sign_epi8(_mm256_set1_epi8(8), grid), shift);
            (_mm256_abs_epi8(v), v)
        }
    }
    #[inline(always)]
    unsafe fn scale(sc: &[i16; 16], p: usize) -> __m256i {
        scale32(sc, p)
    }
    /// `2 s + 1` of bits 12..15 of the eight u16 at 34, the rest 0.
    #[inline(always)]
    unsafe fn block_scales(w: *const u8) -> [i16; 16] {
        // SAFETY: the trait's contract: the eight u16 at 34..50.
        unsafe {
            let qh = _mm_loadu_si128(w.add(34) as *const __m128i);
            let s = _mm_and_si128(_mm_srli_epi16::<12>(qh), _mm_set1_epi16(7));
            let odd = _mm_or_si128(_mm_slli_epi16::<1>(s), _mm_set1_epi16(1));
            let mut out = [0i16; 16];
            _mm_storeu_si128(out.as_mut_ptr() as *mut __m128i, odd);
            out
        }
    }
    /// A level is `8 g + shift` (`g` a grid byte in {-1, 0, 1}, the shift
    /// +-1 a part), so a part's dot is `8 (g . x) + shift sum(x)`: the grid
    /// bytes sign the activations themselves, and the shifts meet the
    /// activations' sums of 16 (`bs`) once a block. Making the levels (a
    /// sign, an add and an absolute value a part, and the shift's
    /// broadcast) was a third of the vector work. The same integers as the
    /// levels' dot, exactly.
    #[inline(always)]
    unsafe fn ints<const G: usize>(
        w: *const u8,
        x: [*const i8; G],
        bs: [*const i16; G],
    ) -> [__m256i; G] {
        // SAFETY: the trait's contract: the eight u16 at 34..50, 16 sums
        // at each bs[t].
        unsafe {
            let sc = Self::block_scales(w);
            // Each part's +-(2 s + 1) (negative where bit 15 is set), once
            // for each of its two sums of 16.
            let odd = _mm_loadu_si128(sc.as_ptr() as *const __m128i);
            let negate = _mm_srai_epi16::<15>(_mm_loadu_si128(w.add(34) as *const __m128i));
            let shift = _mm_sub_epi16(_mm_xor_si128(odd, negate), negate);
            let shift = _mm256_set_m128i(
                _mm_unpackhi_epi16(shift, shift),
                _mm_unpacklo_epi16(shift, shift),
            );
            let mut a: [__m256i; G] = std::array::from_fn(|t| {
                _mm256_madd_epi16(_mm256_loadu_si256(bs[t] as *const __m256i), shift)
            });
            // maddubs against 8: each pair's 8 (g . x), at most 8 x 254.
            let eights = _mm256_set1_epi8(8);
            each_part!(Self::UNROLL, 8, p => {
                let grid = iq1_s_grid(w, p);
                let scale = Self::scale(&sc, p);
                for (t, a) in a.iter_mut().enumerate() {
                    let xv = _mm256_loadu_si256(x[t].add(32 * p) as *const __m256i);
                    let pairs = _mm256_maddubs_epi16(eights, _mm256_sign_epi8(xv, grid));
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(pairs, scale));
                }
            });
            a
        }
    }
}

impl IqParts for IQ1M {
    const UNROLL: bool = true;

    #[inline(always)]
    unsafe fn part(w: *const u8, _signs: &[u32; 8], p: usize) -> (__m256i, __m256i) {
        // SAFETY: the trait's contract: part p's 4 index bytes and its 2
        // bytes of nibbles.
        unsafe {
            // Group l's nibble (bits 4l..4l + 4 of qh: three high index
            // bits and the shift's sign) as a byte offset of
            // `IQ1M_LEVELS`'s rows (8 bytes, 2048 a nibble value), bits
            // 11..15 of u16 lane l: the even groups' by one multiply, the
            // odd ones' by another (four copies of the 16 bits would
            // overlap; two of each half do not), as IQ1_S's.
            let qh = u64::from(u16_at(w, 32 + 2 * p));
            let high = (qh & 0x0F0F).wrapping_mul(1 << 11 | 1 << 35)
                | (qh & 0xF0F0).wrapping_mul(1 << 23 | 1 << 47);
            // Rows (nibble << 8 | low) < 4096.
            let v = four_rows(IQ1M_LEVELS.as_ptr(), high, 0x7800, w.add(4 * p));
            (_mm256_abs_epi8(v), v)
        }
    }
    #[inline(always)]
    unsafe fn scale(sc: &[i16; 16], p: usize) -> __m256i {
        scale16(sc, p)
    }
    /// `iq1_m_scales` in `scale16`'s split order, in one vector: lane `j`
    /// of each half holds the u16 with scale `2j` (or `2j + 1`), a
    /// multiply by a power of two lifts that scale's three bits to the top
    /// and a shift brings them down (made by scalar code, sixteen shifts
    /// and masks and a reordering, the scales were most of the block's
    /// work).
    #[inline(always)]
    unsafe fn block_scales(w: *const u8) -> [i16; 16] {
        // SAFETY: the trait's contract: the four u16 at 48..56.
        unsafe {
            let words = _mm256_broadcastsi128_si256(_mm_loadl_epi64(w.add(48) as *const __m128i));
            // Scale j is field j % 4 of u16 j / 4: even scales (fields 0
            // and 2) below, odd (1 and 3) above.
            let pick = _mm256_setr_epi8(
                0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7, //
                0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7,
            );
            let lift = _mm256_setr_epi16(
                1 << 13,
                1 << 7,
                1 << 13,
                1 << 7,
                1 << 13,
                1 << 7,
                1 << 13,
                1 << 7,
                1 << 10,
                1 << 4,
                1 << 10,
                1 << 4,
                1 << 10,
                1 << 4,
                1 << 10,
                1 << 4,
            );
            let s = _mm256_mullo_epi16(_mm256_shuffle_epi8(words, pick), lift);
            let s = _mm256_srli_epi16::<13>(s);
            let odd = _mm256_or_si256(_mm256_slli_epi16::<1>(s), _mm256_set1_epi16(1));
            let mut out = [0i16; 16];
            _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, odd);
            out
        }
    }
}

/// The AVX2 integers of an i-quant block (`Avx2Block::ints_avx2`).
///
/// # Safety
/// AVX2 (inlined into an AVX2 function); a whole block at `w`, `VALUES`
/// values at each `x[t]`.
#[inline(always)]
unsafe fn avx2_ints<T: IqParts, const G: usize>(w: *const u8, x: [*const i8; G]) -> [__m256i; G] {
    // SAFETY: the caller's.
    unsafe {
        let sc = T::block_scales(w);
        let signs = T::block_signs(w);
        let mut a = [_mm256_setzero_si256(); G];
        each_part!(T::UNROLL, T::VALUES / 32, p => {
            let (u, s) = T::part(w, &signs, p);
            let scale = T::scale(&sc, p);
            for (t, a) in a.iter_mut().enumerate() {
                let xv = _mm256_loadu_si256(x[t].add(32 * p) as *const __m256i);
                let pairs = _mm256_maddubs_epi16(u, _mm256_sign_epi8(xv, s));
                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(pairs, scale));
            }
        });
        a
    }
}

/// The signed levels of an i-quant block into `out` (`VnniBlock::codes_simd`).
///
/// # Safety
/// AVX2 (inlined into an AVX2 function); a whole block at `block`, `VALUES`
/// writable bytes at `out`.
#[inline(always)]
unsafe fn avx2_levels<T: IqParts>(block: *const u8, out: *mut u8) {
    // SAFETY: the caller's.
    unsafe {
        let signs = T::block_signs(block);
        for p in 0..T::VALUES / 32 {
            let (u, s) = T::part(block, &signs, p);
            let levels = _mm256_sign_epi8(u, s);
            _mm256_storeu_si256(out.add(32 * p) as *mut __m256i, levels);
        }
    }
}

macro_rules! iq_avx2 {
    ($($t:ty),* ; wide: $($w:ty),*) => {
        $(
        impl Avx2Block for $t {
            iq_avx2!(@ints $t);
        }

        impl VnniBlock for $t {
            #[inline(always)]
            unsafe fn codes_simd(block: *const u8, out: *mut u8) {
                // SAFETY: the trait's contract.
                unsafe { avx2_levels::<$t>(block, out) }
            }
        }
        )*
        $(
        impl Avx2Block for $w {
            iq_avx2!(@ints $w);

            const WIDE: bool = true;

            #[inline(always)]
            unsafe fn ints_wide<const G: usize>(
                w: *const u8,
                x: [*const i8; G],
                _bs: [*const i16; G],
            ) -> ([__m256i; G], [__m256i; G]) {
                // SAFETY: the trait's contract, with AVX-512 F/BW/VL/VBMI.
                unsafe { (iq_i8_vbmi::ints::<$w, G>(w, x), [_mm256_setzero_si256(); G]) }
            }
        }

        impl VnniBlock for $w {
            #[inline(always)]
            unsafe fn codes_simd(block: *const u8, out: *mut u8) {
                // SAFETY: the trait's contract; the wide form only where
                // the CPU has its features.
                unsafe {
                    if iq_i8_vbmi::available() {
                        iq_i8_vbmi::store_levels::<$w>(block, out)
                    } else {
                        avx2_levels::<$w>(block, out)
                    }
                }
            }
        }
        )*
    };
    (@ints $t:ty) => {
        #[inline(always)]
        unsafe fn ints_avx2<const G: usize>(
            w: *const u8,
            x: [*const i8; G],
            bs: [*const i16; G],
        ) -> ([__m256i; G], [__m256i; G]) {
            // SAFETY: the trait's contract.
            unsafe { (<$t as IqParts>::ints::<G>(w, x, bs), [_mm256_setzero_si256(); G]) }
        }
    };
}

iq_avx2!(IQ4NL, IQ2XXS, IQ2XS, IQ2S, IQ1S, IQ1M; wide: IQ4XS, IQ3XXS, IQ3S);
