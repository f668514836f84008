//! Q3_K blocks' integers on AVX2 (`types::q3_k`), for `q8_blocks_i8`.

use std::arch::x86_64::*;

use super::iq_i8_vbmi::{add_halves, i16_halves, lane_scales};
use super::q6_k_i8::i8_scale_vectors;
use super::q8_blocks_i8::{pick_i16, scaled_dot, Avx2Block};
use super::q8_blocks_vnni::VnniBlock;
use crate::backend::cpu::types::q3_k::Q3K;

/// The 16 six-bit scales of a Q3_K block (`types::q3_k::q3_k_scales`,
/// before their offset of 32) from its 12 packed bytes at `p`, on 32-bit
/// words: low nibbles from words 0 and 1, top bit pairs from word 2.
///
/// # Safety
/// SSE2 (inlined into an AVX2 function); 12 readable bytes at `p`.
#[inline(always)]
unsafe fn q3_k_packed_scales(p: *const u8) -> __m128i {
    // SAFETY: the caller's.
    unsafe {
        let word = |o: usize| (p.add(o) as *const u32).read_unaligned();
        let (a0, a1, hi) = (word(0), word(4), word(8));
        let m = 0x0f0f_0f0f;
        let top = |s: u32| ((hi >> s) & 0x0303_0303) << 4;
        _mm_setr_epi32(
            ((a0 & m) | top(0)) as i32,
            ((a1 & m) | top(2)) as i32,
            (((a0 >> 4) & m) | top(4)) as i32,
            (((a1 >> 4) & m) | top(6)) as i32,
        )
    }
}

impl Avx2Block for Q3K {
    #[inline(always)]
    unsafe fn ints_avx2<const G: usize>(
        w: *const u8,
        x: [*const i8; G],
        bs: [*const i16; G],
    ) -> ([__m256i; G], [__m256i; G]) {
        // SAFETY: the trait's contract: a whole block at w, 256 values and
        // 16 sums per activation row.
        unsafe {
            let packed = q3_k_packed_scales(w.add(96));
            let (all, halves) = i8_scale_vectors(_mm_sub_epi8(packed, _mm_set1_epi8(32)));
            let m3 = _mm256_set1_epi8(0x03);
            let bit2 = _mm256_set1_epi8(0x04);
            // Group g reads bit 0 of hmask shifted right by g (16-bit
            // shifts: what crosses into a byte lands in bit 7 and reaches
            // bit 1 at most), and bits 0-1 of its code bytes shifted right
            // by 2 (g % 4) (crossings reach bits 2-3 at most).
            let mut hm = _mm256_loadu_si256(w as *const __m256i);
            let mut a = [_mm256_setzero_si256(); G];
            for (h, &half) in halves.iter().enumerate() {
                let mut qs = _mm256_loadu_si256(w.add(32 + 32 * h) as *const __m256i);
                for gg in 0..4 {
                    let g = 4 * h + gg;
                    let q = _mm256_or_si256(
                        _mm256_and_si256(qs, m3),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(hm), bit2),
                    );
                    qs = _mm256_srli_epi16::<2>(qs);
                    hm = _mm256_srli_epi16::<1>(hm);
                    let s = pick_i16(half, 2 * gg as i32, 2 * gg as i32 + 1);
                    for (t, a) in a.iter_mut().enumerate() {
                        *a = _mm256_add_epi32(*a, scaled_dot(q, x[t].add(32 * g), s));
                    }
                }
            }
            // The codes' offset of 4: sum_s sc_s * 4 * sum(x).
            for (t, a) in a.iter_mut().enumerate() {
                let off = _mm256_madd_epi16(_mm256_loadu_si256(bs[t] as *const __m256i), all);
                *a = _mm256_sub_epi32(*a, _mm256_slli_epi32::<2>(off));
            }
            (a, [_mm256_setzero_si256(); G])
        }
    }

    const WIDE: bool = true;

    /// 64 values per vector: a half's code bytes in both 256-bit halves,
    /// per-word shifts picking two groups' bit pairs at once; each group's
    /// third bit tested out of the 32 hmask bytes (also in both halves)
    /// into a mask that adds 4; the sixteen scales picked by `vpermw`.
    #[inline(always)]
    unsafe fn ints_wide<const G: usize>(
        w: *const u8,
        x: [*const i8; G],
        bs: [*const i16; G],
    ) -> ([__m256i; G], [__m256i; G]) {
        // SAFETY: the trait's contract: a whole block at w (hmask at 0..32,
        // codes at 32..96, scales at 96..108), 256 values and 16 sums per
        // activation row; AVX-512 F/BW/VL.
        unsafe {
            let all = _mm256_cvtepi8_epi16(_mm_sub_epi8(
                q3_k_packed_scales(w.add(96)),
                _mm_set1_epi8(32),
            ));
            let all512 = _mm512_castsi256_si512(all);
            let hm = _mm512_broadcast_i64x4(_mm256_loadu_si256(w as *const __m256i));
            let m3 = _mm512_set1_epi8(0x03);
            let four = _mm512_set1_epi8(0x04);
            let mut acc = [_mm512_setzero_si512(); G];
            for p in 0..4 {
                // Values 64 p..64 p + 64: groups g = 2 p (low half) and
                // 2 p + 1 (high half), bit pairs g % 4 of code-byte half
                // p / 2, third bits g of hmask.
                let qs = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                    w.add(32 + 32 * (p / 2)) as *const __m256i
                ));
                let sh = 4 * (p % 2) as i16;
                let low = _mm512_and_si512(_mm512_srlv_epi16(qs, i16_halves(sh, sh + 2)), m3);
                let bit = i16_halves(0x0101 << (2 * p as i16), 0x0101 << (2 * p as i16 + 1));
                let high = _mm512_test_epi8_mask(hm, bit);
                let q = _mm512_mask_add_epi8(low, high, low, four);
                // Sub-blocks 4 p..4 p + 4, one per 128-bit lane.
                let sc = lane_scales(all512, 4 * p as i16);
                for (t, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm512_loadu_si512(x[t].add(64 * p) as *const __m512i);
                    let prod = _mm512_madd_epi16(_mm512_maddubs_epi16(q, xv), sc);
                    *acc = _mm512_add_epi32(*acc, prod);
                }
            }
            let mut a = [_mm256_setzero_si256(); G];
            for (t, a) in a.iter_mut().enumerate() {
                // The codes' offset of 4: sum_s sc_s * 4 * sum(x).
                let off = _mm256_madd_epi16(_mm256_loadu_si256(bs[t] as *const __m256i), all);
                *a = _mm256_sub_epi32(add_halves(acc[t]), _mm256_slli_epi32::<2>(off));
            }
            (a, [_mm256_setzero_si256(); G])
        }
    }
}

impl VnniBlock for Q3K {
    #[inline(always)]
    unsafe fn codes_simd(block: *const u8, out: *mut u8) {
        // SAFETY: the trait's contract: a whole block at `block`, 256 bytes
        // at `out`.
        unsafe {
            let m3 = _mm256_set1_epi8(0x03);
            let bit2 = _mm256_set1_epi8(0x04);
            // As `ints_avx2`: group g's third bit is bit g of hmask.
            let mut hm = _mm256_loadu_si256(block as *const __m256i);
            for h in 0..2 {
                let mut qs = _mm256_loadu_si256(block.add(32 + 32 * h) as *const __m256i);
                for gg in 0..4 {
                    let q = _mm256_or_si256(
                        _mm256_and_si256(qs, m3),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(hm), bit2),
                    );
                    qs = _mm256_srli_epi16::<2>(qs);
                    hm = _mm256_srli_epi16::<1>(hm);
                    _mm256_storeu_si256(out.add(32 * (4 * h + gg)) as *mut __m256i, q);
                }
            }
        }
    }
}
