//! The grid i-quants' integers with AVX-512 VBMI (`Avx2Block::ints_wide`,
//! run by `q8_blocks_i8::dot_rows_q8_wide`): the same exact integers as
//! `iq_i8`'s AVX2 forms, made with far fewer instructions.
//!
//! The AVX2 forms look every grid row up with a scalar load and insert it
//! into a vector (32 of each per IQ3 block, plus the sign masks): the
//! decode of IQ3_XXS and IQ3_S ran at 4 GB/s of weights on one thread, a
//! fifth of the K-quants. Here the grid is held as four byte planes (byte
//! `j` of every entry), each looked up for all 64 indices of a block at
//! once by `vpermi2b` (128 entries per instruction), and the four planes'
//! bytes interleaved back into entries by two rounds of unpacking; the
//! indices are reordered first (one `vpermb`) so that the unpacking, which
//! works within 128-bit lanes, leaves the 256 magnitudes in value order.
//! Signs become mask registers and are applied to the activations by a
//! masked subtraction.

use std::arch::x86_64::*;

use crate::backend::cpu::types::iq3_s::IQ3S;
use crate::backend::cpu::types::iq3_xxs::IQ3XXS;
use crate::backend::cpu::types::iq4_xs::IQ4XS;
use crate::backend::cpu::types::iq_levels::even_signs;
use crate::quant::tables::{IQ3S_GRID, IQ3XXS_GRID, KVALUES_IQ4NL};

/// 64-byte vectors, aligned for `vmovdqa64`.
#[repr(C, align(64))]
struct Vectors<const N: usize>([[u8; 64]; N]);

/// The byte planes of a grid of `E` u32 entries (`N = 4 E / 64` vectors):
/// vector `c` of plane `j` (vector `j * E / 64 + c`) holds byte `j` of
/// entries `64 c..64 c + 64`.
const fn planes<const E: usize, const N: usize>(grid: &[u32; E]) -> Vectors<N> {
    let mut out = [[0u8; 64]; N];
    let chunks = E / 64;
    let mut j = 0;
    while j < 4 {
        let mut c = 0;
        while c < chunks {
            let mut e = 0;
            while e < 64 {
                out[j * chunks + c][e] = (grid[64 * c + e] >> (8 * j)) as u8;
                e += 1;
            }
            c += 1;
        }
        j += 1;
    }
    Vectors(out)
}

static IQ3XXS_PLANES: Vectors<16> = planes(&IQ3XXS_GRID);
static IQ3S_PLANES: Vectors<32> = planes(&IQ3S_GRID);

/// `vpermb` indices putting index `16 m + 4 l + i` at position
/// `16 l + 4 m + i`: after [`interleave`], vector `m` holds entries
/// `16 m..16 m + 16` in order.
static LANE_TRANSPOSE: Vectors<1> = {
    let mut t = [0u8; 64];
    let mut p = 0;
    while p < 64 {
        let (l, m, i) = (p / 16, p / 4 % 4, p % 4);
        t[p] = (16 * m + 4 * l + i) as u8;
        p += 1;
    }
    Vectors([t])
};

/// `even_signs` of every 7-bit index, for `vpermi2b`.
static EVEN_SIGNS: Vectors<2> = {
    let mut t = [[0u8; 64]; 2];
    let mut i = 0;
    while i < 128 {
        t[i / 64][i % 64] = even_signs(i as u8);
        i += 1;
    }
    Vectors(t)
};

/// `lo` in each i16 of the low 256 bits, `hi` in each of the high ones.
///
/// # Safety
/// AVX-512 F (inlined into a function that has it).
#[inline(always)]
pub(super) unsafe fn i16_halves(lo: i16, hi: i16) -> __m512i {
    // SAFETY: the caller's.
    unsafe {
        _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_set1_epi16(lo)),
            _mm256_set1_epi16(hi),
        )
    }
}

/// Words `j..j + 4` of `words` spread over the four 128-bit lanes, word
/// `j + L` in every i16 of lane `L`: the scales of four consecutive
/// sub-blocks of 16 values against `madd`'s pairs of a vector of 64.
///
/// # Safety
/// AVX-512 F/BW (inlined into a function that has them).
#[inline(always)]
pub(super) unsafe fn lane_scales(words: __m512i, j: i16) -> __m512i {
    // SAFETY: the caller's.
    unsafe {
        // Each word of 128-bit lane L: L.
        let lane = _mm512_set_epi64(
            0x0003_0003_0003_0003,
            0x0003_0003_0003_0003,
            0x0002_0002_0002_0002,
            0x0002_0002_0002_0002,
            0x0001_0001_0001_0001,
            0x0001_0001_0001_0001,
            0,
            0,
        );
        _mm512_permutexvar_epi16(_mm512_add_epi16(lane, _mm512_set1_epi16(j)), words)
    }
}

/// The two 256-bit halves of `v` added as i32 lanes (a sum of its 16
/// lanes kept in 8).
///
/// # Safety
/// AVX-512 F (inlined into a function that has it).
#[inline(always)]
pub(super) unsafe fn add_halves(v: __m512i) -> __m256i {
    // SAFETY: the caller's.
    unsafe { _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v)) }
}

/// The i16 scale vectors of [`dots`] from the scales among the i16 lanes of
/// `words` (part `p`'s in lane `at[p]`): vector `m` holds part `2 m`'s scale
/// in its first 16 words, part `2 m + 1`'s in the others.
///
/// # Safety
/// AVX-512 F/BW (inlined into a function with them).
#[inline(always)]
unsafe fn scale_words(words: __m512i, at: [i16; 8]) -> [__m512i; 4] {
    // SAFETY: the caller's.
    unsafe {
        let mut out = [_mm512_setzero_si512(); 4];
        for (m, o) in out.iter_mut().enumerate() {
            let idx = i16_halves(at[2 * m], at[2 * m + 1]);
            *o = _mm512_permutexvar_epi16(idx, words);
        }
        out
    }
}

/// The four byte planes' vectors interleaved into u32 entries: entry `i` of
/// 128-bit lane `l` of result `m` is position `16 l + 4 m + i` of the
/// planes.
///
/// # Safety
/// AVX-512 BW (inlined).
#[inline(always)]
unsafe fn interleave(p: [__m512i; 4]) -> [__m512i; 4] {
    // SAFETY: the caller's.
    unsafe {
        let a = _mm512_unpacklo_epi8(p[0], p[1]);
        let b = _mm512_unpackhi_epi8(p[0], p[1]);
        let c = _mm512_unpacklo_epi8(p[2], p[3]);
        let d = _mm512_unpackhi_epi8(p[2], p[3]);
        [
            _mm512_unpacklo_epi16(a, c),
            _mm512_unpackhi_epi16(a, c),
            _mm512_unpacklo_epi16(b, d),
            _mm512_unpackhi_epi16(b, d),
        ]
    }
}

/// The vector `c` of a plane table.
///
/// # Safety
/// AVX-512 F (inlined).
#[inline(always)]
unsafe fn table(t: &[[u8; 64]], c: usize) -> __m512i {
    // SAFETY: the caller's; the vectors are 64-byte aligned.
    unsafe { _mm512_load_si512(t[c].as_ptr() as *const __m512i) }
}

/// The 64 index bytes at `qs`, reordered for [`interleave`].
///
/// # Safety
/// AVX-512 F/VBMI (inlined); 64 readable bytes at `qs`.
#[inline(always)]
unsafe fn indices(qs: *const u8) -> __m512i {
    // SAFETY: the caller's.
    unsafe {
        _mm512_permutexvar_epi8(
            table(&LANE_TRANSPOSE.0, 0),
            _mm512_loadu_si512(qs as *const __m512i),
        )
    }
}

/// A 256-value block taken apart for [`dots`]: magnitudes `u` (vector
/// `m`: values `64 m..64 m + 64`), sign bits (bit `i` of `signs[m]`
/// negates value `64 m + i`) and the scale words of [`scale_words`].
pub(super) struct Parts {
    u: [__m512i; 4],
    signs: [__mmask64; 4],
    scales: [__m512i; 4],
}

/// An i-quant of 256-value blocks with a wide form.
pub(super) trait WideIq {
    /// The block at `w` taken apart.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL/VBMI (inlined into a function with them); a whole
    /// block at `w`.
    unsafe fn parts(w: *const u8) -> Parts;
}

/// The block integers of `T` against `G` activation rows (`dots`).
///
/// # Safety
/// AVX-512 F/BW/VL/VBMI (inlined); a whole block at `w`, 256 values at each
/// `x[t]`.
#[inline(always)]
pub(super) unsafe fn ints<T: WideIq, const G: usize>(
    w: *const u8,
    x: [*const i8; G],
) -> [__m256i; G] {
    // SAFETY: the caller's.
    unsafe { dots(T::parts(w), x) }
}

/// Whether this CPU runs the wide forms: AVX-512 F/BW/VL/VBMI.
pub fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vbmi")
}

/// The block's 256 signed levels into `out`, for the tile kernel
/// (`VnniBlock::codes_simd`, which calls it where [`available`]).
///
/// # Safety
/// AVX-512 F/BW/VL/VBMI; a whole block at `w`, 256 writable bytes at `out`.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vbmi")]
pub(super) unsafe fn store_levels<T: WideIq>(w: *const u8, out: *mut u8) {
    // SAFETY: the caller's.
    unsafe {
        let p = T::parts(w);
        let zero = _mm512_setzero_si512();
        for m in 0..4 {
            let levels = _mm512_mask_sub_epi8(p.u[m], p.signs[m], zero, p.u[m]);
            _mm512_storeu_si512(out.add(64 * m) as *mut __m512i, levels);
        }
    }
}

/// `sum(scale * level * x)` over a 256-value block taken apart against
/// each activation row, in the lanes of one vector per row.
///
/// # Safety
/// AVX-512 F/BW (inlined); 256 readable values at each `x[t]`.
#[inline(always)]
unsafe fn dots<const G: usize>(p: Parts, x: [*const i8; G]) -> [__m256i; G] {
    // SAFETY: the caller's.
    unsafe {
        let Parts { u, signs, scales } = p;
        let zero = _mm512_setzero_si512();
        let mut out = [_mm256_setzero_si256(); G];
        for (t, o) in out.iter_mut().enumerate() {
            let mut acc = zero;
            for m in 0..4 {
                let xv = _mm512_loadu_si512(x[t].add(64 * m) as *const __m512i);
                let xs = _mm512_mask_sub_epi8(xv, signs[m], zero, xv);
                let pairs = _mm512_maddubs_epi16(u[m], xs);
                acc = _mm512_add_epi32(acc, _mm512_madd_epi16(pairs, scales[m]));
            }
            *o = add_halves(acc);
        }
        out
    }
}

/// IQ3_XXS (`{ f16 d; u8 qs[64]; u32 aux[8] }`), its grid from
/// byte planes.
impl WideIq for IQ3XXS {
    #[inline(always)]
    unsafe fn parts(w: *const u8) -> Parts {
        // SAFETY: the caller's: qs at 2..66, aux at 66..98.
        unsafe {
            let idx = indices(w.add(2));
            let high = _mm512_movepi8_mask(idx);
            let t = &IQ3XXS_PLANES.0;
            let mut p = [idx; 4];
            for (j, p) in p.iter_mut().enumerate() {
                let lo = _mm512_permutex2var_epi8(table(t, 4 * j), idx, table(t, 4 * j + 1));
                let hi = _mm512_permutex2var_epi8(table(t, 4 * j + 2), idx, table(t, 4 * j + 3));
                *p = _mm512_mask_blend_epi8(high, lo, hi);
            }
            let u = interleave(p);
            let aux = _mm256_loadu_si256(w.add(66) as *const __m256i);
            // Bytes 8 q..8 q + 8: the four 7-bit sign indices of aux[2 q], then
            // of aux[2 q + 1]; with the second control, bytes 8 q and 8 q + 1:
            // the scales of parts 2 q and 2 q + 1 (bits 28 and 60).
            let sign_at = _mm256_set1_epi64x(i64::from_le_bytes([0, 7, 14, 21, 32, 39, 46, 53]));
            let sign_idx = _mm256_multishift_epi64_epi8(sign_at, aux);
            let sign_bytes = _mm512_permutex2var_epi8(
                table(&EVEN_SIGNS.0, 0),
                _mm512_castsi256_si512(sign_idx),
                table(&EVEN_SIGNS.0, 1),
            );
            let mut signs = [0u64; 8];
            _mm512_storeu_si512(signs.as_mut_ptr() as *mut __m512i, sign_bytes);
            let scale_at = _mm256_set1_epi64x(i64::from_le_bytes([28, 60, 0, 0, 0, 0, 0, 0]));
            let s = _mm256_and_si256(
                _mm256_multishift_epi64_epi8(scale_at, aux),
                _mm256_set1_epi8(0x0F),
            );
            let s = _mm256_add_epi8(_mm256_add_epi8(s, s), _mm256_set1_epi8(1));
            let scales = scale_words(_mm512_cvtepu8_epi16(s), [0, 1, 8, 9, 16, 17, 24, 25]);
            Parts {
                u,
                signs: [signs[0], signs[1], signs[2], signs[3]],
                scales,
            }
        }
    }
}

/// IQ3_S (`{ f16 d; u8 qs[64]; u8 qh[8]; u8 signs[32]; u8 scales[4] }`),
/// its grid of 512 from byte planes, the ninth index bit choosing the half.
impl WideIq for IQ3S {
    #[inline(always)]
    unsafe fn parts(w: *const u8) -> Parts {
        // SAFETY: the caller's: qs at 2..66, qh at 66..74, signs at 74..106,
        // scales at 106..110.
        unsafe {
            let idx = indices(w.add(2));
            let bit7 = _mm512_movepi8_mask(idx);
            // Bit e of qh is index e's ninth bit: as bytes, reordered as the
            // indices were.
            let qh = (w.add(66) as *const u64).read_unaligned();
            let bit8 = _mm512_movepi8_mask(_mm512_permutexvar_epi8(
                table(&LANE_TRANSPOSE.0, 0),
                _mm512_movm_epi8(qh),
            ));
            let t = &IQ3S_PLANES.0;
            let mut p = [idx; 4];
            for (j, p) in p.iter_mut().enumerate() {
                let mut quarter = [idx; 4];
                for (c, q) in quarter.iter_mut().enumerate() {
                    let at = 8 * j + 2 * c;
                    *q = _mm512_permutex2var_epi8(table(t, at), idx, table(t, at + 1));
                }
                let low = _mm512_mask_blend_epi8(bit7, quarter[0], quarter[1]);
                let high = _mm512_mask_blend_epi8(bit7, quarter[2], quarter[3]);
                *p = _mm512_mask_blend_epi8(bit8, low, high);
            }
            let u = interleave(p);
            let signs = (w.add(74) as *const [u64; 4]).read_unaligned();
            // Nibble p of the scale bytes is part p's.
            let nibble_at = _mm_set1_epi64x(i64::from_le_bytes([0, 4, 8, 12, 16, 20, 24, 28]));
            let s = _mm_and_si128(
                _mm_multishift_epi64_epi8(
                    nibble_at,
                    _mm_cvtsi32_si128((w.add(106) as *const i32).read_unaligned()),
                ),
                _mm_set1_epi8(0x0F),
            );
            let s = _mm_add_epi8(_mm_add_epi8(s, s), _mm_set1_epi8(1));
            // Words 0..8 only are read: the upper half may be anything.
            let s = _mm512_cvtepu8_epi16(_mm256_castsi128_si256(s));
            let scales = scale_words(s, [0, 1, 2, 3, 4, 5, 6, 7]);
            Parts { u, signs, scales }
        }
    }
}

/// IQ4_XS (`{ f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128] }`), its
/// levels from the 16-entry table by `vpshufb`, their magnitudes and signs
/// split for `maddubs`.
impl WideIq for IQ4XS {
    #[inline(always)]
    unsafe fn parts(w: *const u8) -> Parts {
        // SAFETY: the caller's: scales_h at 2..4, scales_l at 4..8, qs at
        // 8..136.
        unsafe {
            let levels =
                _mm512_broadcast_i32x4(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i));
            // Part p's 16 bytes in 128-bit lanes 0 and 1 of vector p / 2 (low
            // nibbles, then high), part p + 1's in lanes 2 and 3.
            let spread = _mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3);
            let shifts = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_setr_epi16(
                    0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4,
                )),
                _mm256_setr_epi16(0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4),
            );
            let mut u = [_mm512_setzero_si512(); 4];
            let mut signs = [0; 4];
            for m in 0..4 {
                let q = _mm256_loadu_si256(w.add(8 + 32 * m) as *const __m256i);
                let q = _mm512_permutexvar_epi64(spread, _mm512_castsi256_si512(q));
                let nibbles =
                    _mm512_and_si512(_mm512_srlv_epi16(q, shifts), _mm512_set1_epi8(0x0F));
                let v = _mm512_shuffle_epi8(levels, nibbles);
                u[m] = _mm512_abs_epi8(v);
                signs[m] = _mm512_movepi8_mask(v);
            }
            // Scale p: nibble p of scales_l, with bits 2 p, 2 p + 1 of scales_h
            // above it, less 32.
            let nibble_at = _mm_set1_epi64x(i64::from_le_bytes([0, 4, 8, 12, 16, 20, 24, 28]));
            let pair_at = _mm_set1_epi64x(i64::from_le_bytes([32, 34, 36, 38, 40, 42, 44, 46]));
            // scales_h in bits 32..48, scales_l in bits 0..32.
            let bits = _mm_cvtsi64_si128(
                i64::from((w.add(4) as *const u32).read_unaligned())
                    | i64::from((w.add(2) as *const u16).read_unaligned()) << 32,
            );
            let low = _mm_and_si128(
                _mm_multishift_epi64_epi8(nibble_at, bits),
                _mm_set1_epi8(0x0F),
            );
            let high = _mm_and_si128(
                _mm_multishift_epi64_epi8(pair_at, bits),
                _mm_set1_epi8(0x03),
            );
            let s = _mm_sub_epi8(
                _mm_or_si128(low, _mm_slli_epi16::<4>(high)),
                _mm_set1_epi8(32),
            );
            Parts {
                u,
                signs,
                scales: scale_words(
                    _mm512_castsi128_si512(_mm_cvtepi8_epi16(s)),
                    [0, 1, 2, 3, 4, 5, 6, 7],
                ),
            }
        }
    }
}
