//! Q2_K blocks' integers on AVX2 (`types::q2_k`), for `q8_blocks_i8`.

use std::arch::x86_64::*;

use super::q8_blocks_i8::{pick_i16, scaled_dot, Avx2Block};
use super::q8_blocks_vnni::VnniBlock;
use crate::backend::cpu::types::q2_k::Q2K;

impl Avx2Block for Q2K {
    #[inline(always)]
    unsafe fn ints_avx2<const G: usize>(
        w: *const u8,
        x: [*const i8; G],
        bs: [*const i16; G],
    ) -> ([__m256i; G], [__m256i; G]) {
        // SAFETY: the trait's contract: a whole block at w, 256 values and
        // 16 sums per activation row.
        unsafe {
            let m4 = _mm_set1_epi8(0x0F);
            let packed = _mm_loadu_si128(w as *const __m128i);
            let sc = _mm256_cvtepu8_epi16(_mm_and_si128(packed, m4));
            let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(packed), m4));
            let halves = [
                _mm256_broadcastsi128_si256(_mm256_castsi256_si128(sc)),
                _mm256_broadcastsi128_si256(_mm256_extracti128_si256::<1>(sc)),
            ];
            let m3 = _mm256_set1_epi8(0x03);
            let mut a = [_mm256_setzero_si256(); G];
            for (h, &half) in halves.iter().enumerate() {
                // Bits 0-1 of the code bytes shifted right by 2 (g % 4)
                // (16-bit shifts: crossings reach bits 2-3 at most).
                let mut qs = _mm256_loadu_si256(w.add(16 + 32 * h) as *const __m256i);
                for gg in 0..4 {
                    let q = _mm256_and_si256(qs, m3);
                    qs = _mm256_srli_epi16::<2>(qs);
                    let s = pick_i16(half, 2 * gg as i32, 2 * gg as i32 + 1);
                    for (t, a) in a.iter_mut().enumerate() {
                        let p = scaled_dot(q, x[t].add(32 * (4 * h + gg)), s);
                        *a = _mm256_add_epi32(*a, p);
                    }
                }
            }
            let b = std::array::from_fn(|t| {
                _mm256_madd_epi16(_mm256_loadu_si256(bs[t] as *const __m256i), mins)
            });
            (a, b)
        }
    }
}

impl VnniBlock for Q2K {
    #[inline(always)]
    unsafe fn codes_simd(block: *const u8, out: *mut u8) {
        // SAFETY: the trait's contract: a whole block at `block`, 256 bytes
        // at `out`.
        unsafe {
            let m3 = _mm256_set1_epi8(0x03);
            for h in 0..2 {
                let mut qs = _mm256_loadu_si256(block.add(16 + 32 * h) as *const __m256i);
                for gg in 0..4 {
                    let q = _mm256_and_si256(qs, m3);
                    qs = _mm256_srli_epi16::<2>(qs);
                    _mm256_storeu_si256(out.add(32 * (4 * h + gg)) as *mut __m256i, q);
                }
            }
        }
    }
}
