//! The legacy blocks' integers on AVX2 (`types::q4_0`, `q4_1`, `q5_0`,
//! `q5_1`: 32 values, 4-bit codes and an optional fifth bit, so one
//! unpacking for the four), for `q8_blocks_i8`.

use std::arch::x86_64::*;

use super::q8_blocks_i8::Avx2Block;
use super::q8_blocks_vnni::VnniBlock;
use super::{bit_set_bytes, nibbles32, u32_bit_spread};
use crate::backend::cpu::types::q4_0::Q4_0;
use crate::backend::cpu::types::q4_1::Q4_1;
use crate::backend::cpu::types::q5_0::Q5_0;
use crate::backend::cpu::types::q5_1::Q5_1;

/// The 32 codes of a legacy block: the nibbles of the 16 bytes at `qs` (low
/// nibbles first), with the fifth bits of the little-endian u32 at `qh`.
///
/// # Safety
/// AVX2 (inlined into an AVX2 function); 16 readable bytes at `qs`, 4 at
/// `qh`.
#[inline(always)]
unsafe fn codes(qs: *const u8, qh: Option<*const u8>) -> __m256i {
    // SAFETY: the caller's.
    unsafe {
        let nibbles = nibbles32(_mm_loadu_si128(qs as *const __m128i));
        let Some(qh) = qh else {
            return nibbles;
        };
        // Byte j gets byte j / 8 of the bits, then its own bit of it.
        let h = _mm256_set1_epi32((qh as *const i32).read_unaligned());
        _mm256_or_si256(nibbles, fifth_bits(h, u32_bit_spread()))
    }
}

/// `sum(code * x)` over a block against each activation row, in the lanes
/// of one vector per row.
///
/// # Safety
/// AVX2 (inlined into an AVX2 function); 32 readable values at each `x[t]`.
#[inline(always)]
unsafe fn dots<const G: usize>(codes: __m256i, x: [*const i8; G]) -> [__m256i; G] {
    // SAFETY: the caller's.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        std::array::from_fn(|t| {
            let x = _mm256_loadu_si256(x[t] as *const __m256i);
            _mm256_madd_epi16(_mm256_maddubs_epi16(codes, x), ones)
        })
    }
}

/// The codes of two legacy blocks, `(low, high)`: values `0..16` of the
/// block at `wu` then of the block at `wv` (one per 128-bit half), and
/// values `16..32` the same way.
///
/// # Safety
/// AVX2 (inlined into an AVX2 function); 16 readable bytes at `qs + wu`
/// and `qs + wv`, 4 at `qh + wu` and `qh + wv` when there are fifth bits.
#[inline(always)]
unsafe fn pair_codes(
    wu: *const u8,
    wv: *const u8,
    qs: usize,
    qh: Option<usize>,
) -> (__m256i, __m256i) {
    // SAFETY: the caller's.
    unsafe {
        let q = _mm256_loadu2_m128i(wv.add(qs) as *const __m128i, wu.add(qs) as *const __m128i);
        let m4 = _mm256_set1_epi8(0x0F);
        let (lo, hi) = (
            _mm256_and_si256(q, m4),
            _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4),
        );
        let Some(qh) = qh else {
            return (lo, hi);
        };
        // Byte j of each half gets its fifth bit: bytes 0 and 1 of the
        // half's u32 for the low values, 2 and 3 for the high ones.
        let h = _mm256_set_m128i(
            _mm_set1_epi32((wv.add(qh) as *const i32).read_unaligned()),
            _mm_set1_epi32((wu.add(qh) as *const i32).read_unaligned()),
        );
        let spread_lo = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1,
            1, 1, 1,
        );
        let spread_hi = _mm256_add_epi8(spread_lo, _mm256_set1_epi8(2));
        (
            _mm256_or_si256(lo, fifth_bits(h, spread_lo)),
            _mm256_or_si256(hi, fifth_bits(h, spread_hi)),
        )
    }
}

/// `0x10` in byte `j` of each 128-bit half where bit `j % 8` of the byte of
/// `h` that `spread` picks for it is set.
#[inline(always)]
fn fifth_bits(h: __m256i, spread: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller (inlined into them).
    unsafe { _mm256_and_si256(bit_set_bytes(h, spread), _mm256_set1_epi8(0x10)) }
}

macro_rules! legacy_block {
    ($t:ty, $qs:expr, $qh:expr) => {
        impl Avx2Block for $t {
            #[inline(always)]
            unsafe fn ints_avx2<const G: usize>(
                w: *const u8,
                x: [*const i8; G],
                _bs: [*const i16; G],
            ) -> ([__m256i; G], [__m256i; G]) {
                // SAFETY: the trait's contract: a whole block at w, 32
                // values per activation row. The offset and the block sums
                // are the driver's.
                unsafe {
                    let qh: Option<usize> = $qh;
                    let c = codes(w.add($qs), qh.map(|at| w.add(at)));
                    (dots(c, x), [_mm256_setzero_si256(); G])
                }
            }

            const PAIRS: bool = true;

            #[inline(always)]
            unsafe fn pair_ints(
                wu: *const u8,
                wv: *const u8,
                x: *const i8,
                _bs: *const i16,
            ) -> __m256i {
                // SAFETY: the trait's contract: whole blocks at wu and wv,
                // 32 values at x.
                unsafe {
                    let (lo, hi) = pair_codes(wu, wv, $qs, $qh);
                    // Each code below 32 against |x| <= 127: the two
                    // maddubs add up within i16 (2 * 2 * 31 * 127).
                    let x_lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(x as *const __m128i));
                    let x_hi =
                        _mm256_broadcastsi128_si256(_mm_loadu_si128(x.add(16) as *const __m128i));
                    let p = _mm256_add_epi16(
                        _mm256_maddubs_epi16(lo, x_lo),
                        _mm256_maddubs_epi16(hi, x_hi),
                    );
                    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
                }
            }
        }

        impl VnniBlock for $t {
            #[inline(always)]
            unsafe fn codes_simd(block: *const u8, out: *mut u8) {
                // SAFETY: the trait's contract: a whole block at `block`,
                // 32 bytes at `out`.
                unsafe {
                    let qh: Option<usize> = $qh;
                    let c = codes(block.add($qs), qh.map(|at| block.add(at)));
                    _mm256_storeu_si256(out as *mut __m256i, c);
                }
            }
        }
    };
}

legacy_block!(Q4_0, 2, None);
legacy_block!(Q4_1, 4, None);
legacy_block!(Q5_0, 6, Some(2));
legacy_block!(Q5_1, 8, Some(4));
