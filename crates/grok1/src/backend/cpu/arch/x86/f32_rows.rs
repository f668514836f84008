//! f32 rows (`types::f32_rows`) on AVX2 + FMA: the tied embedding's product
//! as stored and the row dots of decoded GGUF rows.

use std::arch::x86_64::*;

use super::hsum;

/// AVX2 version of `f32_rows::dot_f32_bytes_scalar`: eight rows of `e` at a
/// time against each row of `x` (eight independent accumulators, one
/// horizontal reduction for all eight), the leftover rows one by one.
///
/// # Safety
/// The CPU must support AVX2 and FMA, `m > 0`, `x.len() >= m * d` and
/// `e.len() >= out_t.len() / m * d * 4`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32_bytes_avx2(x: &[f32], m: usize, d: usize, e: &[u8], out_t: &mut [f32]) {
    let rows = out_t.len() / m;
    let full = d / 8 * 8;
    let ep = e.as_ptr() as *const f32;
    let mut r = 0;
    while r + 8 <= rows {
        for i in 0..m {
            // SAFETY: rows r..r+8 of e and row i of x are in bounds by the
            // caller's contract; loads are unaligned (loadu).
            let xp = unsafe { x.as_ptr().add(i * d) };
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut j = 0;
            while j < full {
                let xv = unsafe { _mm256_loadu_ps(xp.add(j)) };
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(
                        xv,
                        unsafe { _mm256_loadu_ps(ep.add((r + u) * d + j)) },
                        *a,
                    );
                }
                j += 8;
            }
            let mut sums = [0f32; 8];
            unsafe { _mm256_storeu_ps(sums.as_mut_ptr(), hsum8(acc)) };
            for (u, total) in sums.iter_mut().enumerate() {
                for jj in full..d {
                    let b = &e[((r + u) * d + jj) * 4..((r + u) * d + jj) * 4 + 4];
                    *total += unsafe { *xp.add(jj) } * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
                out_t[(r + u) * m + i] = *total;
            }
        }
        r += 8;
    }
    for r in r..rows {
        for i in 0..m {
            // SAFETY: as above, for the single row r.
            let xp = unsafe { x.as_ptr().add(i * d) };
            let mut acc = _mm256_setzero_ps();
            let mut j = 0;
            while j < full {
                unsafe {
                    acc = _mm256_fmadd_ps(
                        _mm256_loadu_ps(xp.add(j)),
                        _mm256_loadu_ps(ep.add(r * d + j)),
                        acc,
                    );
                }
                j += 8;
            }
            let mut total = hsum(acc);
            for jj in full..d {
                let b = &e[(r * d + jj) * 4..(r * d + jj) * 4 + 4];
                total += unsafe { *xp.add(jj) } * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            out_t[r * m + i] = total;
        }
    }
}

/// The eight horizontal sums of `v[0..8]`, as the lanes of one vector.
#[target_feature(enable = "avx2,fma")]
fn hsum8(v: [__m256; 8]) -> __m256 {
    // hadd pairs lanes within each 128-bit half: after two rounds the low half
    // holds the low-half sums of four inputs and the high half their high-half sums.
    let t0 = _mm256_hadd_ps(v[0], v[1]);
    let t1 = _mm256_hadd_ps(v[2], v[3]);
    let t2 = _mm256_hadd_ps(v[4], v[5]);
    let t3 = _mm256_hadd_ps(v[6], v[7]);
    let u0 = _mm256_hadd_ps(t0, t1);
    let u1 = _mm256_hadd_ps(t2, t3);
    let lo = _mm256_permute2f128_ps(u0, u1, 0x20);
    let hi = _mm256_permute2f128_ps(u0, u1, 0x31);
    _mm256_add_ps(lo, hi)
}

/// AVX2 version of the scalar loop in `kernels::dot_rows`.
///
/// # Safety
/// The CPU must support AVX2 and FMA and `keys.len() >= scores.len() * q.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_rows_avx2(q: &[f32], keys: &[f32], scores: &mut [f32]) {
    let hd = q.len();
    let full = hd / 8 * 8;
    let n = scores.len();
    let kp = keys.as_ptr();
    let mut j = 0;
    // Eight keys at a time: eight accumulators, one reduction for all eight.
    while j + 8 <= n {
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i < full {
            // SAFETY: rows j..j+8 of keys are inside `keys` by the contract.
            let qv = unsafe { _mm256_loadu_ps(q.as_ptr().add(i)) };
            for (u, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(qv, unsafe { _mm256_loadu_ps(kp.add((j + u) * hd + i)) }, *a);
            }
            i += 8;
        }
        let mut sums = [0f32; 8];
        unsafe { _mm256_storeu_ps(sums.as_mut_ptr(), hsum8(acc)) };
        for (u, mut total) in sums.into_iter().enumerate() {
            for (t, &qt) in q.iter().enumerate().skip(full) {
                total += qt * keys[(j + u) * hd + t];
            }
            scores[j + u] = total;
        }
        j += 8;
    }
    for (j, s) in scores.iter_mut().enumerate().skip(j) {
        // SAFETY: row j covers keys[j*hd .. (j+1)*hd], inside `keys` by the contract.
        let k = unsafe { kp.add(j * hd) };
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < full {
            unsafe {
                acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(q.as_ptr().add(i)),
                    _mm256_loadu_ps(k.add(i)),
                    acc,
                );
            }
            i += 8;
        }
        let mut total = hsum(acc);
        for (t, &qt) in q.iter().enumerate().skip(full) {
            total += qt * unsafe { *k.add(t) };
        }
        *s = total;
    }
}
