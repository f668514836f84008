//! Q5_K blocks' integers on AVX2 (`types::q5_k`), for `q8_blocks_i8`.

use std::arch::x86_64::*;

use super::q4_k_i8::{k4_add_chunk, k4_min_products, k4_scale_vectors};
use super::q8_blocks_i8::Avx2Block;
use super::q8_blocks_vnni::VnniBlock;
use crate::backend::cpu::types::q5_k::Q5K;

/// The 5-bit codes of a Q5_K chunk: the nibbles of `q` (low: the chunk's
/// first 32 values, high: its second) with their fifth bits, bits 0 and 1 of
/// each byte of `qh` (shifted right by 2c for chunk c by the caller).
///
/// # Safety
/// AVX2 (inlined into an AVX2 function).
#[inline(always)]
unsafe fn q5_k_codes(q: __m256i, qh: __m256i) -> (__m256i, __m256i) {
    // SAFETY: the caller's.
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let bit4 = _mm256_set1_epi8(0x10);
        (
            _mm256_or_si256(
                _mm256_and_si256(q, m4),
                _mm256_and_si256(_mm256_slli_epi16::<4>(qh), bit4),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4),
                _mm256_and_si256(_mm256_slli_epi16::<3>(qh), bit4),
            ),
        )
    }
}

impl Avx2Block for Q5K {
    #[inline(always)]
    unsafe fn ints_avx2<const G: usize>(
        w: *const u8,
        x: [*const i8; G],
        bs: [*const i16; G],
    ) -> ([__m256i; G], [__m256i; G]) {
        // SAFETY: the trait's contract: a whole block at w, 256 values and
        // 16 sums per activation row.
        unsafe {
            let (scales, mins) = k4_scale_vectors(w.add(4));
            // Chunk c reads bits 0 and 1 of each byte of qh shifted right
            // by 2c (16-bit shifts: what crosses into a byte lands in bits
            // 6 and 7, and at most in bits 2 and 3 by the last chunk).
            let mut qh = _mm256_loadu_si256(w.add(16) as *const __m256i);
            let mut a = [_mm256_setzero_si256(); G];
            for c in 0..4 {
                let q = _mm256_loadu_si256(w.add(48 + 32 * c) as *const __m256i);
                let (lo, hi) = q5_k_codes(q, qh);
                qh = _mm256_srli_epi16::<2>(qh);
                k4_add_chunk(&mut a, lo, hi, scales, c, &x);
            }
            (a, k4_min_products(&bs, mins))
        }
    }
}

impl VnniBlock for Q5K {
    #[inline(always)]
    unsafe fn codes_simd(block: *const u8, out: *mut u8) {
        // SAFETY: the trait's contract: a whole block at `block`, 256 bytes
        // at `out`.
        unsafe {
            // As `ints_avx2`: chunk c's fifth bits are bits 2c and 2c + 1.
            let mut qh = _mm256_loadu_si256(block.add(16) as *const __m256i);
            for c in 0..4 {
                let q = _mm256_loadu_si256(block.add(48 + 32 * c) as *const __m256i);
                let (lo, hi) = q5_k_codes(q, qh);
                qh = _mm256_srli_epi16::<2>(qh);
                _mm256_storeu_si256(out.add(64 * c) as *mut __m256i, lo);
                _mm256_storeu_si256(out.add(64 * c + 32) as *mut __m256i, hi);
            }
        }
    }
}
