//! AVX2 + FMA versions of the kernels in `kernels.rs`. Each is an `unsafe fn`
//! whose callers there check every bound first and only call it when the CPU
//! has the features (`Isa::best`).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::ops::Range;

/// AVX2 version of `kernels::q8_accumulate_scalar` (same FMA per row, in the
/// same order, so the results are bit-identical).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `m > 0`, `acc.len() == m * nb`,
/// `rows.end * m <= xt.len()`, `n0 + nb <= n` and `rows.end * n <= w.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q8_accumulate_avx2(
    xt: &[f32],
    m: usize,
    w: &[u8],
    n: usize,
    rows: Range<usize>,
    n0: usize,
    acc: &mut [f32],
) {
    let nb = acc.len() / m;
    let full = nb / 16 * 16;
    let acc_ptr = acc.as_mut_ptr();
    let wp = w.as_ptr();
    let xp = xt.as_ptr();
    // SAFETY (whole function): every row r in `rows` covers
    // w[r*n + n0 .. r*n + n0 + nb] and xt[r*m .. r*m + m], inside their slices by
    // the caller's bounds; acc row i < m covers acc[i*nb .. (i+1)*nb].
    let load16 = |r: usize, j: usize| unsafe {
        let p = wp.add(r * n + n0 + j);
        let lo = _mm_loadl_epi64(p as *const __m128i);
        let hi = _mm_loadl_epi64(p.add(8) as *const __m128i);
        (
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)),
        )
    };
    let mut r = rows.start;
    // Four rows at a time: each 16-column slice of the accumulators is loaded and
    // stored once per four rows, the four FMAs applied in row order.
    while r + 4 <= rows.end {
        // The next four rows are fetched while these are used: a row segment is a
        // few pages, and hardware prefetchers stop at page boundaries.
        let prefetch = r + 8 <= rows.end;
        let mut j = 0;
        while j < full {
            if prefetch && j % 64 == 0 {
                for q in 4..8 {
                    // SAFETY: row r + q < rows.end and column j < nb are in bounds.
                    unsafe { _mm_prefetch(wp.add((r + q) * n + n0 + j) as *const i8, _MM_HINT_T0) };
                }
            }
            let (a0, a1) = load16(r, j);
            let (b0, b1) = load16(r + 1, j);
            let (c0, c1) = load16(r + 2, j);
            let (d0, d1) = load16(r + 3, j);
            for i in 0..m {
                unsafe {
                    let p = acc_ptr.add(i * nb + j);
                    let mut s0 = _mm256_loadu_ps(p);
                    let mut s1 = _mm256_loadu_ps(p.add(8));
                    let x0 = _mm256_set1_ps(*xp.add(r * m + i));
                    s0 = _mm256_fmadd_ps(x0, a0, s0);
                    s1 = _mm256_fmadd_ps(x0, a1, s1);
                    let x1 = _mm256_set1_ps(*xp.add((r + 1) * m + i));
                    s0 = _mm256_fmadd_ps(x1, b0, s0);
                    s1 = _mm256_fmadd_ps(x1, b1, s1);
                    let x2 = _mm256_set1_ps(*xp.add((r + 2) * m + i));
                    s0 = _mm256_fmadd_ps(x2, c0, s0);
                    s1 = _mm256_fmadd_ps(x2, c1, s1);
                    let x3 = _mm256_set1_ps(*xp.add((r + 3) * m + i));
                    s0 = _mm256_fmadd_ps(x3, d0, s0);
                    s1 = _mm256_fmadd_ps(x3, d1, s1);
                    _mm256_storeu_ps(p, s0);
                    _mm256_storeu_ps(p.add(8), s1);
                }
            }
            j += 16;
        }
        for q in 0..4 {
            // SAFETY: row r + q is in `rows`; the caller's bounds cover it.
            unsafe { tail_columns(xp, m, wp, n, r + q, n0, acc_ptr, nb, full) };
        }
        r += 4;
    }
    while r < rows.end {
        let mut j = 0;
        while j < full {
            let (a0, a1) = load16(r, j);
            for i in 0..m {
                unsafe {
                    let p = acc_ptr.add(i * nb + j);
                    let x0 = _mm256_set1_ps(*xp.add(r * m + i));
                    _mm256_storeu_ps(p, _mm256_fmadd_ps(x0, a0, _mm256_loadu_ps(p)));
                    _mm256_storeu_ps(p.add(8), _mm256_fmadd_ps(x0, a1, _mm256_loadu_ps(p.add(8))));
                }
            }
            j += 16;
        }
        // SAFETY: row r is in `rows`; the caller's bounds cover it.
        unsafe { tail_columns(xp, m, wp, n, r, n0, acc_ptr, nb, full) };
        r += 1;
    }
}

/// Columns `full..nb` of row `r`, one at a time.
///
/// # Safety
/// The bounds of `q8_accumulate_avx2` hold for row `r`, columns `full..nb` and
/// the `m` accumulator rows.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tail_columns(
    xp: *const f32,
    m: usize,
    wp: *const u8,
    n: usize,
    r: usize,
    n0: usize,
    acc_ptr: *mut f32,
    nb: usize,
    full: usize,
) {
    for jj in full..nb {
        // SAFETY: the same bounds as the caller's: jj < nb, r in rows, i < m.
        unsafe {
            let wv = *wp.add(r * n + n0 + jj) as i8 as f32;
            for i in 0..m {
                let a = acc_ptr.add(i * nb + jj);
                *a = (*xp.add(r * m + i)).mul_add(wv, *a);
            }
        }
    }
}

/// AVX2 version of `kernels::dot_f32_bytes_scalar`.
///
/// # Safety
/// The CPU must support AVX2 and FMA, `x.len() >= out.len() * d` and
/// `e.len() >= 4 * d`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32_bytes_avx2(x: &[f32], d: usize, e: &[u8], out: &mut [f32]) {
    let full = d / 32 * 32;
    let ep = e.as_ptr() as *const f32;
    for (i, o) in out.iter_mut().enumerate() {
        // SAFETY (whole body): elements j < d of row i of x and of e are in
        // bounds by the caller's contract; loads are unaligned (loadu).
        let xp = unsafe { x.as_ptr().add(i * d) };
        let mut s = [_mm256_setzero_ps(); 4];
        let mut j = 0;
        while j < full {
            for (u, acc) in s.iter_mut().enumerate() {
                unsafe {
                    let ev = _mm256_loadu_ps(ep.add(j + 8 * u));
                    let xv = _mm256_loadu_ps(xp.add(j + 8 * u));
                    *acc = _mm256_fmadd_ps(xv, ev, *acc);
                }
            }
            j += 32;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(s[0], s[1]), _mm256_add_ps(s[2], s[3]));
        let mut lanes = [0f32; 8];
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        let mut total: f32 = lanes.iter().sum();
        for jj in full..d {
            let b = &e[jj * 4..jj * 4 + 4];
            total += unsafe { *xp.add(jj) } * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        *o = total;
    }
}
