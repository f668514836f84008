//! Q2_K blocks' integers on AVX2 (`types::q2_k`), for `q8_blocks_i8`.

use std::arch::x86_64::*;

use super::iq_i8_vbmi::{add_halves, i16_halves};
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

    const WIDE: bool = true;

    /// Each code multiplied out by its sub-block's scale before the
    /// product (`sc * code <= 45`, an unsigned byte), so that one
    /// `vpdpbusd` sums 64 values with no per-sub-block work: the 64 products
    /// `c * sc_j` (`c < 4`, `j < 16`) of a block are one vector, and
    /// `vpermb` looks each value's up by `4 j + c`. The AVX2 form spends a
    /// `maddubs`, a `madd` and a scale shuffle per 32 values instead.
    #[inline(always)]
    unsafe fn ints_wide<const G: usize>(
        w: *const u8,
        x: [*const i8; G],
        bs: [*const i16; G],
    ) -> ([__m256i; G], [__m256i; G]) {
        // SAFETY: the trait's contract: a whole block at w (scales at
        // 0..16, codes at 16..80), 256 values and 16 sums per activation
        // row; AVX-512 F/BW/VL/VBMI/VNNI.
        unsafe {
            let packed = _mm_loadu_si128(w as *const __m128i);
            let m4 = _mm_set1_epi8(0x0F);
            let sc = _mm512_castsi128_si512(_mm_and_si128(packed, m4));
            // Byte 4 j + c of `products` is c * sc_j: sc_j where c is odd,
            // plus 2 sc_j where c >= 2.
            let quarter = _mm512_set_epi64(
                0x0f0f_0f0f_0e0e_0e0e,
                0x0d0d_0d0d_0c0c_0c0c,
                0x0b0b_0b0b_0a0a_0a0a,
                0x0909_0909_0808_0808,
                0x0707_0707_0606_0606,
                0x0505_0505_0404_0404,
                0x0303_0303_0202_0202,
                0x0101_0101_0000_0000,
            );
            let each = _mm512_permutexvar_epi8(quarter, sc);
            let odd = _mm512_maskz_mov_epi8(0xAAAA_AAAA_AAAA_AAAA, each);
            let products =
                _mm512_mask_add_epi8(odd, 0xCCCC_CCCC_CCCC_CCCC, odd, _mm512_add_epi8(each, each));
            let m3 = _mm512_set1_epi8(0x03);
            let mut acc = [_mm512_setzero_si512(); G];
            for p in 0..4 {
                // Values 64 p..64 p + 64: code-byte half p / 2 in both
                // 256-bit halves, bit pairs 2 (p % 2) and 2 (p % 2) + 1
                // (shifts 4 (p % 2) and 4 (p % 2) + 2);
                // sub-blocks 4 p + (byte / 16), so index 16 p + 4 (byte /
                // 16) + code into `products`.
                let qs = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                    w.add(16 + 32 * (p / 2)) as *const __m256i
                ));
                let sh = 4 * (p % 2) as i16;
                let shifts = i16_halves(sh, sh + 2);
                let base = 16 * p as i8;
                let bases = _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(_mm256_set_m128i(
                        _mm_set1_epi8(base + 4),
                        _mm_set1_epi8(base),
                    )),
                    _mm256_set_m128i(_mm_set1_epi8(base + 12), _mm_set1_epi8(base + 8)),
                );
                // (shifted & 3) | bases.
                let idx =
                    _mm512_ternarylogic_epi32::<0xEA>(_mm512_srlv_epi16(qs, shifts), m3, bases);
                let v = _mm512_permutexvar_epi8(idx, products);
                for (t, acc) in acc.iter_mut().enumerate() {
                    let xv = _mm512_loadu_si512(x[t].add(64 * p) as *const __m512i);
                    *acc = _mm512_dpbusd_epi32(*acc, v, xv);
                }
            }
            let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(packed), m4));
            let a = acc.map(|acc| add_halves(acc));
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
