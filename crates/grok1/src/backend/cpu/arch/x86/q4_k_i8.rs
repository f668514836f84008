//! Q4_K blocks' integers on AVX2 (`types::q4_k`), for `q8_blocks_i8`.

use std::arch::x86_64::*;

use super::q8_blocks_i8::{pick_i16, scaled_dot, Avx2Block};
use super::q8_blocks_vnni::VnniBlock;
use crate::backend::cpu::types::q4_k::Q4K;

/// The 12 packed bytes of Q4_K/Q5_K scales and mins at `p` as two u64 of
/// eight bytes (`types::q4_k::k4_scales_mins`, done on 32-bit words).
///
/// # Safety
/// 12 readable bytes at `p`.
#[inline(always)]
pub(super) unsafe fn k4_scales_mins_words(p: *const u8) -> (u64, u64) {
    // SAFETY: the caller's.
    let word = |o: usize| unsafe { (p.add(o) as *const u32).read_unaligned() };
    let (u0, u1, u2) = (word(0), word(4), word(8));
    let sc_hi = (u2 & 0x0f0f_0f0f) | (((u0 >> 6) & 0x0303_0303) << 4);
    let mn_hi = ((u2 >> 4) & 0x0f0f_0f0f) | (((u1 >> 6) & 0x0303_0303) << 4);
    (
        u64::from(u0 & 0x3f3f_3f3f) | (u64::from(sc_hi) << 32),
        u64::from(u1 & 0x3f3f_3f3f) | (u64::from(mn_hi) << 32),
    )
}

/// The eight scales (as i16, in both 128-bit halves) and the eight mins
/// (each twice, i16, for `madd` with the sixteen activation sums) of a
/// Q4_K/Q5_K block whose packed scales are at `p`.
///
/// # Safety
/// AVX2 (inlined into an AVX2 function); 12 readable bytes at `p`.
#[inline(always)]
pub(super) unsafe fn k4_scale_vectors(p: *const u8) -> (__m256i, __m256i) {
    // SAFETY: the caller's.
    unsafe {
        let (sc, mn) = k4_scales_mins_words(p);
        let sc = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64));
        let mn = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
        (
            _mm256_broadcastsi128_si256(sc),
            _mm256_set_m128i(_mm_unpackhi_epi16(mn, mn), _mm_unpacklo_epi16(mn, mn)),
        )
    }
}

/// Adds chunk `c` of a Q4_K/Q5_K block to each activation row's `a`: the
/// codes `lo` (sub-block `2c`) and `hi` (`2c + 1`) against the row's values
/// `64c..64c + 64`, times their scales from `scales` (`k4_scale_vectors`).
///
/// # Safety
/// AVX2 (inlined into an AVX2 function); 64 values from `64c` at each `x`.
#[inline(always)]
pub(super) unsafe fn k4_add_chunk<const G: usize>(
    a: &mut [__m256i; G],
    lo: __m256i,
    hi: __m256i,
    scales: __m256i,
    c: usize,
    x: &[*const i8; G],
) {
    let s_lo = pick_i16(scales, 2 * c as i32, 2 * c as i32);
    let s_hi = pick_i16(scales, 2 * c as i32 + 1, 2 * c as i32 + 1);
    for (t, a) in a.iter_mut().enumerate() {
        // SAFETY: the caller's.
        unsafe {
            let p_lo = scaled_dot(lo, x[t].add(64 * c), s_lo);
            let p_hi = scaled_dot(hi, x[t].add(64 * c + 32), s_hi);
            *a = _mm256_add_epi32(*a, _mm256_add_epi32(p_lo, p_hi));
        }
    }
}

/// Each activation row's `b` of a Q4_K/Q5_K block: its sixteen sums of 16
/// at `bs` times the mins (`k4_scale_vectors`), pairs added.
///
/// # Safety
/// AVX2 (inlined into an AVX2 function); 16 readable i16 at each `bs`.
#[inline(always)]
pub(super) unsafe fn k4_min_products<const G: usize>(
    bs: &[*const i16; G],
    mins: __m256i,
) -> [__m256i; G] {
    // SAFETY: the caller's.
    std::array::from_fn(|t| unsafe {
        _mm256_madd_epi16(_mm256_loadu_si256(bs[t] as *const __m256i), mins)
    })
}

impl Avx2Block for Q4K {
    #[inline(always)]
    unsafe fn ints_avx2<const G: usize>(
        w: *const u8,
        x: [*const i8; G],
        bs: [*const i16; G],
    ) -> ([__m256i; G], [__m256i; G]) {
        // SAFETY: the trait's contract: a whole block at w, 256 values and
        // 16 sums per activation row.
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let (scales, mins) = k4_scale_vectors(w.add(4));
            let mut a = [_mm256_setzero_si256(); G];
            for c in 0..4 {
                let q = _mm256_loadu_si256(w.add(16 + 32 * c) as *const __m256i);
                let lo = _mm256_and_si256(q, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                k4_add_chunk(&mut a, lo, hi, scales, c, &x);
            }
            (a, k4_min_products(&bs, mins))
        }
    }
}

impl VnniBlock for Q4K {
    #[inline(always)]
    unsafe fn codes_simd(block: *const u8, out: *mut u8) {
        // SAFETY: the trait's contract: a whole block at `block`, 256 bytes
        // at `out`.
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            for c in 0..4 {
                let q = _mm256_loadu_si256(block.add(16 + 32 * c) as *const __m256i);
                let lo = _mm256_and_si256(q, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                _mm256_storeu_si256(out.add(64 * c) as *mut __m256i, lo);
                _mm256_storeu_si256(out.add(64 * c + 32) as *mut __m256i, hi);
            }
        }
    }
}
