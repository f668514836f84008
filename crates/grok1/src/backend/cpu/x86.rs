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

/// AVX2 version of the scalar loop in `kernels::dot_rows`.
///
/// # Safety
/// The CPU must support AVX2 and FMA and `keys.len() >= scores.len() * q.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_rows_avx2(q: &[f32], keys: &[f32], scores: &mut [f32]) {
    let hd = q.len();
    let full = hd / 8 * 8;
    for (j, s) in scores.iter_mut().enumerate() {
        // SAFETY: row j covers keys[j*hd .. (j+1)*hd], inside `keys` by the contract.
        let k = unsafe { keys.as_ptr().add(j * hd) };
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
        for (t, &qt) in q.iter().enumerate().take(hd).skip(full) {
            total += qt * unsafe { *k.add(t) };
        }
        *s = total;
    }
}

/// AVX2 version of the scalar loop in `kernels::axpy_rows`.
///
/// # Safety
/// The CPU must support AVX2 and FMA and `values.len() >= w.len() * out.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn axpy_rows_avx2(w: &[f32], values: &[f32], out: &mut [f32]) {
    let hd = out.len();
    let full = hd / 8 * 8;
    let o = out.as_mut_ptr();
    for (j, &wj) in w.iter().enumerate() {
        // SAFETY: row j covers values[j*hd .. (j+1)*hd], inside `values`; out has hd.
        let v = unsafe { values.as_ptr().add(j * hd) };
        let wv = _mm256_set1_ps(wj);
        let mut i = 0;
        while i < full {
            unsafe {
                let acc = _mm256_loadu_ps(o.add(i));
                _mm256_storeu_ps(
                    o.add(i),
                    _mm256_fmadd_ps(wv, _mm256_loadu_ps(v.add(i)), acc),
                );
            }
            i += 8;
        }
        for t in full..hd {
            unsafe { *o.add(t) += wj * *v.add(t) };
        }
    }
}

#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// e^x for eight lanes (Cephes' expf: range reduction by ln 2 and a degree-6
/// polynomial, about 1 ulp); lanes below -87.3 give 0.
#[target_feature(enable = "avx2,fma")]
fn exp256(x: __m256) -> __m256 {
    let underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3), _CMP_LT_OQ);
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
        _mm256_set1_ps(88.7),
    );
    let fx = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693_359_4), x);
    let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.121_944_4e-4), x);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5e-1,
    ] {
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(x, x),
        _mm256_add_ps(x, _mm256_set1_ps(1.0)),
    );
    let n = _mm256_cvtps_epi32(fx);
    let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_add_epi32(n, _mm256_set1_epi32(127)),
        23,
    ));
    _mm256_andnot_ps(underflow, _mm256_mul_ps(y, pow2))
}

/// tanh for eight lanes (Cephes' tanhf: an odd polynomial below 0.625, else
/// 1 - 2/(e^2|x| + 1) with the sign of x; about 1e-7 relative).
#[target_feature(enable = "avx2,fma")]
fn tanh256(x: __m256) -> __m256 {
    let sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0));
    let a = _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
    // Large |x|: 1 - 2 / (exp(2a) + 1), from exp(-2a) to avoid overflow.
    let t = exp256(_mm256_mul_ps(a, _mm256_set1_ps(-2.0)));
    let big = _mm256_div_ps(
        _mm256_sub_ps(_mm256_set1_ps(1.0), t),
        _mm256_add_ps(_mm256_set1_ps(1.0), t),
    );
    let big = _mm256_or_ps(big, sign);
    // Small |x|: x + x^3 P(x^2).
    let z = _mm256_mul_ps(x, x);
    let mut p = _mm256_set1_ps(-5.704_988_7e-3);
    for c in [2.063_909e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328e-1] {
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(c));
    }
    let small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
    let use_small = _mm256_cmp_ps(a, _mm256_set1_ps(0.625), _CMP_LT_OQ);
    _mm256_blendv_ps(big, small, use_small)
}

/// AVX2 version of `kernels::softcap_softmax_scalar`.
///
/// # Safety
/// The CPU must support AVX2 and FMA and `mask.len() >= s.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn softcap_softmax_avx2(s: &mut [f32], mult: f32, cap: f32, mask: &[bool]) {
    let n = s.len();
    let full = n / 8 * 8;
    let p = s.as_mut_ptr();
    let (vm, vcap, vinv) = (
        _mm256_set1_ps(mult),
        _mm256_set1_ps(cap),
        _mm256_set1_ps(1.0 / cap),
    );
    let mut i = 0;
    while i < full {
        // SAFETY: lanes i..i+8 are inside s (i + 8 <= full <= n).
        unsafe {
            let x = _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), vm);
            _mm256_storeu_ps(
                p.add(i),
                _mm256_mul_ps(vcap, tanh256(_mm256_mul_ps(x, vinv))),
            );
        }
        i += 8;
    }
    for v in &mut s[full..] {
        *v = cap * (*v * mult / cap).tanh();
    }
    for (v, &keep) in s.iter_mut().zip(mask) {
        if !keep {
            *v = -1e30;
        }
    }
    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let vmax = _mm256_set1_ps(max);
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i < full {
        // SAFETY: as above.
        unsafe {
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), vmax));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
        }
        i += 8;
    }
    let mut sum = hsum(acc);
    for v in &mut s[full..] {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in s.iter_mut() {
        *v *= inv;
    }
}

/// AVX2 version of the scalar loop in `kernels::gelu_mul`, the same formula
/// with `tanh256` for libm's tanh.
///
/// # Safety
/// The CPU must support AVX2 and FMA and `v.len() >= h.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gelu_mul_avx2(h: &mut [f32], v: &[f32]) {
    let n = h.len();
    let full = n / 8 * 8;
    let (c, k, half, one) = (
        _mm256_set1_ps(0.797_884_6),
        _mm256_set1_ps(0.044715),
        _mm256_set1_ps(0.5),
        _mm256_set1_ps(1.0),
    );
    let mut i = 0;
    while i < full {
        unsafe {
            let x = _mm256_loadu_ps(h.as_ptr().add(i));
            let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
            let inner = _mm256_mul_ps(c, _mm256_add_ps(x, _mm256_mul_ps(k, x3)));
            let cdf = _mm256_mul_ps(half, _mm256_add_ps(one, tanh256(inner)));
            let y = _mm256_mul_ps(_mm256_mul_ps(x, cdf), _mm256_loadu_ps(v.as_ptr().add(i)));
            _mm256_storeu_ps(h.as_mut_ptr().add(i), y);
        }
        i += 8;
    }
    for (a, &b) in h[full..].iter_mut().zip(&v[full..]) {
        *a = crate::model::norm::gelu_tanh(*a) * b;
    }
}
