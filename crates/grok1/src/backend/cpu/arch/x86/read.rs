//! The memory probe's read kernel: `grok1 bench` divides the bytes a step
//! reads by the bandwidth this reaches, so it must read as fast as the
//! machine can (a STREAM-style loop built with -O3 -march=native is the
//! check: bench/stream_read.sh). Eight independent 256-bit loads per
//! iteration keep enough misses in flight; the portable loop, compiled for
//! the x86-64 baseline (SSE2), read 15-25% below it.

use std::arch::x86_64::*;

/// The wrapping sum of `words`, read with 256-bit loads.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub unsafe fn sum_words_avx2(words: &[u64]) -> u64 {
    let blocks = words.chunks_exact(32);
    let tail = blocks.remainder();
    let mut acc = [_mm256_setzero_si256(); 4];
    for b in blocks {
        let p = b.as_ptr() as *const __m256i;
        // SAFETY: `b` holds 32 words, eight 32-byte vectors; unaligned loads.
        let v: [__m256i; 8] = std::array::from_fn(|i| unsafe { _mm256_loadu_si256(p.add(i)) });
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm256_add_epi64(*a, _mm256_add_epi64(v[2 * j], v[2 * j + 1]));
        }
    }
    let s = _mm256_add_epi64(
        _mm256_add_epi64(acc[0], acc[1]),
        _mm256_add_epi64(acc[2], acc[3]),
    );
    let mut lanes = [0u64; 4];
    // SAFETY: `lanes` is 32 bytes.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, s) };
    lanes
        .iter()
        .chain(tail)
        .fold(0u64, |a, &b| a.wrapping_add(b))
}
