//! x86-64 kernels: AVX2 + FMA (+ F16C) everywhere, AVX-512 VNNI and AMX-INT8
//! where the CPU has them. Each is an `unsafe fn` whose caller in `kernels`
//! (or `attention::pages`) checks every bound first and only calls it when
//! the CPU has its features (`Isa::best`). The files are named by product:
//! the weight type (`types/`) and the activations it is multiplied with
//! (`f32` or `i8`), or what the kernels compute.
//!
//! Dependencies among them run one way: `int8_ckpt_i8_avx2`, `int8_ckpt_strips`
//! <- `int8_ckpt_i8_strips` <- `int8_ckpt_i8_vnni` <- `amx`; `int8_ckpt_f32`
//! takes the strips and `add_scaled`; `q8_0_i8` <- `amx`; `amx`, `q8_blocks_vnni`
//! <- `q8_blocks_amx`; `math` <- `attention`;
//! `hsum` (here) <- `f32_rows`, `q8_0_f32`, `attention`; `group_rows` and
//! `rows_in_parts` (here) <- `q8_0_f32`, `q8_0_i8`, `q8_blocks_i8`;
//! `prefetch_ahead` (here) <- `q8_blocks_i8`; `nibbles32`, `u32_bit_spread`
//! and `bit_set_bytes` (here) <- `legacy_i8`, `iq_i8`.

#[cfg(target_os = "linux")]
pub mod amx;
pub mod attention;
pub mod f32_rows;
pub mod int8_ckpt_f32;
pub mod int8_ckpt_i8_avx2;
pub mod int8_ckpt_i8_strips;
pub mod int8_ckpt_i8_vnni;
pub mod int8_ckpt_strips;
pub mod int8_rows;
pub mod iq_i8;
pub mod iq_i8_vbmi;
pub mod legacy_i8;
pub mod math;
pub mod q2_k_i8;
pub mod q3_k_i8;
pub mod q4_k_i8;
pub mod q5_k_i8;
pub mod q6_k_i8;
pub mod q8_0_f32;
pub mod q8_0_i8;
#[cfg(target_os = "linux")]
pub mod q8_blocks_amx;
pub mod q8_blocks_i8;
pub mod q8_blocks_tiles_avx2;
pub mod q8_blocks_vnni;
pub mod quantize;
pub mod read;

use std::arch::x86_64::*;

/// The sum of the eight lanes of `v`.
#[target_feature(enable = "avx2,fma")]
pub(super) fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// The 32 nibbles of the 16 bytes `q`, one a byte: the low nibbles in the
/// low 128-bit half, the high ones in the high half (the legacy and IQ4
/// blocks' order of values).
#[inline(always)]
pub(super) fn nibbles32(q: __m128i) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller (inlined into them).
    unsafe {
        _mm256_and_si256(
            _mm256_set_m128i(_mm_srli_epi16::<4>(q), q),
            _mm256_set1_epi8(0x0F),
        )
    }
}

/// The `vpshufb` index that gives byte `j` of each 128-bit half byte `j / 8`
/// of a u32 broadcast over the vector: with [`bit_set_bytes`], bit `j` of
/// that u32 in byte `j`.
#[inline(always)]
pub(super) fn u32_bit_spread() -> __m256i {
    // SAFETY: AVX is enabled in every caller (inlined into them).
    unsafe {
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        )
    }
}

/// `0xFF` in each byte `j` whose bit `j % 8` is set in the byte of `h` that
/// `spread` picks for it (`vpshufb`, within each 128-bit half), else 0.
#[inline(always)]
pub(super) fn bit_set_bytes(h: __m256i, spread: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller (inlined into them).
    unsafe {
        let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(h, spread), mask), mask)
    }
}

/// How far ahead of its reading point (bytes) a decode kernel that reads
/// one weight stream prefetches it. The hardware prefetchers alone left
/// the K-quant decode kernels (compute-bound at about 21 GB/s a thread in
/// cache) at 16-19 GB/s on two Zen 3 threads reading from memory, with 29
/// GB/s of read bandwidth there; 1.5-6 KiB ahead read 21-28 GB/s
/// (`kernel_bench`, Q6_K and Q4_K `[131072 x 1024]`, m = 1) and decoded the
/// d1024 Q4_K_M file 20-25% faster, 2 and 4 KiB alike. The kernels that read
/// eight streams at once (`rows_in_parts`) reach the bandwidth without it,
/// and lost 5% with it (Q8_0).
const PREFETCH_DISTANCE: usize = 2048;

/// Prefetches (into every cache level) the lines of the `bytes` bytes that
/// lie [`PREFETCH_DISTANCE`] past `p` in a stream read front to back: called
/// at each step of the stream, it has every line on the way in flight
/// before it is read. Reads nothing, so the lines may lie past the end of
/// the stream.
#[inline(always)]
pub(super) fn prefetch_ahead(p: *const u8, bytes: usize) {
    let ahead = p.wrapping_add(PREFETCH_DISTANCE);
    for l in 0..bytes.div_ceil(64) {
        // SAFETY: a prefetch loads nothing architecturally and never faults.
        unsafe { _mm_prefetch(ahead.wrapping_add(64 * l) as *const i8, _MM_HINT_T0) };
    }
}

/// The `N` rows of a group of `r` rows (`1 <= r <= N`, `row_bytes` apart)
/// at `rows`, the last repeated from `r` on (their sums are dropped).
pub(super) fn group_rows<const N: usize>(
    rows: &[u8],
    r: usize,
    row_bytes: usize,
) -> [*const u8; N] {
    assert!((1..=N).contains(&r) && rows.len() >= r * row_bytes);
    std::array::from_fn(|u| rows[u.min(r - 1) * row_bytes..].as_ptr())
}

/// One activation row against `nrows` weight rows (`row_bytes` apart at
/// `rows`), read in `N` parts: `rows_of(p)` gets row `j` of each part and
/// returns their sums, which land in `out[j + s * part]`. Each part is then
/// one sequential stream, where `N` adjacent rows read side by side are `N`
/// short streams, which the hardware prefetchers follow badly. Returns the
/// rows done (none when there are fewer than `2 N`); the rest are the
/// caller's.
pub(super) fn rows_in_parts<const N: usize>(
    rows: &[u8],
    row_bytes: usize,
    out: &mut [f32],
    mut rows_of: impl FnMut([*const u8; N]) -> [f32; N],
) -> usize {
    let nrows = out.len();
    assert!(rows.len() >= nrows * row_bytes);
    if nrows < 2 * N {
        return 0;
    }
    let part = nrows / N;
    for j in 0..part {
        let at: [*const u8; N] =
            std::array::from_fn(|s| rows[(j + s * part) * row_bytes..].as_ptr());
        for (s, v) in rows_of(at).into_iter().enumerate() {
            out[j + s * part] = v;
        }
    }
    part * N
}
