//! Q6_K blocks' integers on AVX2 (`types::q6_k`), for `q8_blocks_i8`.

use std::arch::x86_64::*;

use super::iq_i8_vbmi::{add_halves, i16_halves, lane_scales};
use super::q8_blocks_i8::{pick_i16, scaled_dot, Avx2Block};
use super::q8_blocks_vnni::VnniBlock;
use crate::backend::cpu::types::q6_k::Q6K;

/// The sixteen i8 scales `sc8` as i16: all of them (for `madd` with the
/// activation sums), and scales 0..8 and 8..16 each in both 128-bit halves
/// (for [`pick_i16`]).
///
/// # Safety
/// AVX2 (inlined into an AVX2 function).
#[inline(always)]
pub(super) unsafe fn i8_scale_vectors(sc8: __m128i) -> (__m256i, [__m256i; 2]) {
    // SAFETY: the caller's.
    unsafe {
        let all = _mm256_cvtepi8_epi16(sc8);
        (
            all,
            [
                _mm256_broadcastsi128_si256(_mm256_castsi256_si128(all)),
                _mm256_broadcastsi128_si256(_mm256_extracti128_si256::<1>(all)),
            ],
        )
    }
}

/// The 6-bit codes of half `h` of the Q6_K block at `w` (values `128h ..
/// 128h + 128`) as four vectors of 32, in value order.
///
/// # Safety
/// AVX2 (inlined into an AVX2 function); a whole block at `w`.
#[inline(always)]
unsafe fn q6_k_half_codes(w: *const u8, h: usize) -> [__m256i; 4] {
    // SAFETY: the caller's.
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let m3 = _mm256_set1_epi8(0x03);
        let m30 = _mm256_set1_epi8(0x30);
        let ql0 = _mm256_loadu_si256(w.add(64 * h) as *const __m256i);
        let ql1 = _mm256_loadu_si256(w.add(64 * h + 32) as *const __m256i);
        let qh = _mm256_loadu_si256(w.add(128 + 32 * h) as *const __m256i);
        // 16-bit shifts: the bits that cross bytes are masked off.
        [
            _mm256_or_si256(
                _mm256_and_si256(ql0, m4),
                _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m3)),
            ),
            _mm256_or_si256(
                _mm256_and_si256(ql1, m4),
                _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                _mm256_and_si256(qh, m30),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
            ),
        ]
    }
}

impl Avx2Block for Q6K {
    #[inline(always)]
    unsafe fn ints_avx2<const G: usize>(
        w: *const u8,
        x: [*const i8; G],
        bs: [*const i16; G],
    ) -> ([__m256i; G], [__m256i; G]) {
        // SAFETY: the trait's contract: a whole block at w, 256 values and
        // 16 sums per activation row.
        unsafe {
            let (all, halves) = i8_scale_vectors(_mm_loadu_si128(w.add(192) as *const __m128i));
            let mut a = [_mm256_setzero_si256(); G];
            for (h, &half) in halves.iter().enumerate() {
                let codes = q6_k_half_codes(w, h);
                for (g, &q) in codes.iter().enumerate() {
                    let s = pick_i16(half, 2 * g as i32, 2 * g as i32 + 1);
                    for (t, a) in a.iter_mut().enumerate() {
                        let p = scaled_dot(q, x[t].add(128 * h + 32 * g), s);
                        *a = _mm256_add_epi32(*a, p);
                    }
                }
            }
            // The codes' offset of 32: sum_s sc_s * 32 * sum(x).
            for (t, a) in a.iter_mut().enumerate() {
                let off = _mm256_madd_epi16(_mm256_loadu_si256(bs[t] as *const __m256i), all);
                *a = _mm256_sub_epi32(*a, _mm256_slli_epi32::<5>(off));
            }
            (a, [_mm256_setzero_si256(); G])
        }
    }

    const WIDE: bool = true;

    /// 64 values per vector: a half's two vectors of codes from one load
    /// of its 64 low-bit bytes and its 32 high-bit bytes in both halves of
    /// a vector, per-word variable shifts putting each group's high bits in
    /// place; the sixteen scales picked by `vpermw`.
    #[inline(always)]
    unsafe fn ints_wide<const G: usize>(
        w: *const u8,
        x: [*const i8; G],
        bs: [*const i16; G],
    ) -> ([__m256i; G], [__m256i; G]) {
        // SAFETY: the trait's contract: a whole block at w (ql at 0..128,
        // qh at 128..192, scales at 192..208), 256 values and 16 sums per
        // activation row, AVX-512 F/BW/VL.
        unsafe {
            let all = _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(192) as *const __m128i));
            let all512 = _mm512_castsi256_si512(all);
            let m4 = _mm512_set1_epi8(0x0F);
            let m30 = _mm512_set1_epi8(0x30);
            let (shl, shr) = (i16_halves(4, 2), i16_halves(0, 2));
            let mut acc = [_mm512_setzero_si512(); G];
            for h in 0..2 {
                let ql = _mm512_loadu_si512(w.add(64 * h) as *const __m512i);
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                    w.add(128 + 32 * h) as *const __m256i
                ));
                let codes = [
                    _mm512_or_si512(
                        _mm512_and_si512(ql, m4),
                        _mm512_and_si512(_mm512_sllv_epi16(qh, shl), m30),
                    ),
                    _mm512_or_si512(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4),
                        _mm512_and_si512(_mm512_srlv_epi16(qh, shr), m30),
                    ),
                ];
                for (c, &q) in codes.iter().enumerate() {
                    // Scales j..j + 4 (sub-blocks of 16), one per
                    // 128-bit lane.
                    let sc = lane_scales(all512, (4 * h + 2 * c) as i16 * 2);
                    for (t, acc) in acc.iter_mut().enumerate() {
                        let xv = _mm512_loadu_si512(x[t].add(128 * h + 64 * c) as *const __m512i);
                        let p = _mm512_madd_epi16(_mm512_maddubs_epi16(q, xv), sc);
                        *acc = _mm512_add_epi32(*acc, p);
                    }
                }
            }
            let mut a = [_mm256_setzero_si256(); G];
            for (t, a) in a.iter_mut().enumerate() {
                let sum = add_halves(acc[t]);
                // The codes' offset of 32: sum_s sc_s * 32 * sum(x).
                let off = _mm256_madd_epi16(_mm256_loadu_si256(bs[t] as *const __m256i), all);
                *a = _mm256_sub_epi32(sum, _mm256_slli_epi32::<5>(off));
            }
            (a, [_mm256_setzero_si256(); G])
        }
    }
}

impl VnniBlock for Q6K {
    #[inline(always)]
    unsafe fn codes_simd(block: *const u8, out: *mut u8) {
        // SAFETY: the trait's contract: a whole block at `block`, 256 bytes
        // at `out`.
        unsafe {
            for h in 0..2 {
                let codes = q6_k_half_codes(block, h);
                for (g, &q) in codes.iter().enumerate() {
                    _mm256_storeu_si256(out.add(128 * h + 32 * g) as *mut __m256i, q);
                }
            }
        }
    }
}
