//! Exact int8 row dots (`types::int8_rows`, the fast mode's int8 output
//! projection): AVX2 `maddubs` and AVX-512 VNNI `vpdpbusd` versions.

use std::arch::x86_64::*;

use crate::backend::cpu::types::int8_rows::dot_i8;

/// Bytes ahead of the one in use that the kernels reading whole rows one after
/// the other (the AVX2 and VNNI int8 row dots) prefetch: such rows are one
/// stream, but the hardware prefetchers ran too little ahead of it (the
/// d1024 checkpoint's fast decode, whose int8 output projection is 45% of its
/// bytes: 56-64 -> 69-70 tok/s; the f32 Q8_0 row kernel, then one row at a
/// time, 42-44 -> 66-67 tok/s decoding the d1024 Q8_0 model).
const ROWS_AHEAD: usize = 2048;

/// `kernels::dot_i8_rows` with AVX2: |x| times sign(w, x) with
/// `maddubs` (pairs of products of at most 127 * 127 fit an i16), widened to
/// i32 with `madd`. Rows are read one after another, each front to back with
/// four independent accumulators: one sequential stream (interleaving several
/// short rows defeated the hardware prefetchers), prefetched 2 KiB ahead
/// (forced AVX2 on the AVX-512 Xeon, d1024 fast decode: 57-61 -> 63-66
/// tok/s).
///
/// # Safety
/// The CPU must support AVX2; `rows.len() == x.len() * out.len()`.
#[target_feature(enable = "avx2")]
pub unsafe fn dot_i8_rows_avx2(x: &[i8], rows: &[i8], out: &mut [i32]) {
    let k = x.len();
    if k == 0 {
        out.fill(0);
        return;
    }
    let full = k / 32 * 32;
    let quad = k / 128 * 128;
    let ones = _mm256_set1_epi16(1);
    let sum8 = |v: __m256i| -> i32 {
        let lo = _mm256_castsi256_si128(v);
        let hi = _mm256_extracti128_si256(v, 1);
        let s = _mm_add_epi32(lo, hi);
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    };
    let step = |acc: __m256i, xv: __m256i, wv: __m256i| -> __m256i {
        let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(xv, xv), _mm256_sign_epi8(wv, xv));
        _mm256_add_epi32(acc, _mm256_madd_epi16(p16, ones))
    };
    for (j, o) in out.iter_mut().enumerate() {
        let row = &rows[j * k..(j + 1) * k];
        let mut acc = [_mm256_setzero_si256(); 4];
        let mut i = 0;
        while i < quad {
            // Two lines per 128 bytes; a prefetch reads nothing and cannot
            // fault (wrapping address).
            _mm_prefetch(row.as_ptr().wrapping_add(i + ROWS_AHEAD), _MM_HINT_T0);
            _mm_prefetch(row.as_ptr().wrapping_add(i + 64 + ROWS_AHEAD), _MM_HINT_T0);
            for (t, a) in acc.iter_mut().enumerate() {
                let at = i + 32 * t;
                *a = step(
                    *a,
                    load_i8x32(&x[at..at + 32]),
                    load_i8x32(&row[at..at + 32]),
                );
            }
            i += 128;
        }
        while i < full {
            acc[0] = step(
                acc[0],
                load_i8x32(&x[i..i + 32]),
                load_i8x32(&row[i..i + 32]),
            );
            i += 32;
        }
        let total = _mm256_add_epi32(
            _mm256_add_epi32(acc[0], acc[1]),
            _mm256_add_epi32(acc[2], acc[3]),
        );
        *o = sum8(total) + dot_i8(&x[full..], &row[full..]);
    }
}

/// 32 int8 values from a slice of at least 32 (checked).
#[inline]
#[target_feature(enable = "avx2")]
fn load_i8x32(s: &[i8]) -> __m256i {
    assert!(s.len() >= 32);
    // SAFETY: 32 bytes are readable (checked above); unaligned loads are allowed.
    unsafe { _mm256_loadu_si256(s.as_ptr() as *const __m256i) }
}

/// VNNI version of `int8_rows::dot_i8_rows_scalar` (exact, so the same
/// result): tiles of four weight rows by up to four activation rows, sixteen
/// accumulators, so each 64-byte chunk of a weight row is loaded once per four
/// activation rows and each chunk of an activation row once per four weight
/// rows (one row against one row was a load of each per `vpdpbusd`).
///
/// # Safety
/// AVX-512 F/BW/VNNI; `xs.len() == g * k`, `rows.len() == n * k` and
/// `out_t.len() == n * g` for some `k` and `n`, `g > 0`.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_i8_rows_multi_vnni(xs: &[i8], g: usize, rows: &[i8], out_t: &mut [i32]) {
    let k = xs.len() / g;
    let n = out_t.len() / g;
    assert!(
        xs.len() == g * k && rows.len() == n * k && out_t.len() == n * g,
        "dot_i8_rows_multi_vnni: shapes"
    );
    let full = k / 64 * 64;
    // sum((w + 128) * x) = sum(w * x) + 128 * sum(x) over the vector part.
    let corr: Vec<i32> = (0..g)
        .map(|t| {
            128 * xs[t * k..t * k + full]
                .iter()
                .map(|&v| i32::from(v))
                .sum::<i32>()
        })
        .collect();
    let tile = I8Tile {
        xs,
        g,
        k,
        full,
        corr: &corr,
        rows,
    };
    let mut j = 0;
    while j < n {
        // Four rows side by side where they are a page or more long; shorter
        // rows one at a time, in address order (short rows read side by side
        // are a pattern the hardware prefetchers follow badly, as the former
        // AVX2 f32 decode stream measured).
        let r = if n - j >= 4 && k >= 4096 { 4 } else { 1 };
        for t in (0..g).step_by(4) {
            // SAFETY: rows j..j + r < n and activation rows t..t + 4 min g.
            unsafe {
                match (r, (g - t).min(4)) {
                    (4, 1) => tile.run::<4, 1>(j, t, out_t),
                    (4, 2) => tile.run::<4, 2>(j, t, out_t),
                    (4, 3) => tile.run::<4, 3>(j, t, out_t),
                    (4, _) => tile.run::<4, 4>(j, t, out_t),
                    (_, 1) => tile.run::<1, 1>(j, t, out_t),
                    (_, 2) => tile.run::<1, 2>(j, t, out_t),
                    (_, 3) => tile.run::<1, 3>(j, t, out_t),
                    (_, _) => tile.run::<1, 4>(j, t, out_t),
                }
            }
        }
        j += r;
    }
}

/// The operands of `dot_i8_rows_multi_vnni`.
struct I8Tile<'a> {
    xs: &'a [i8],
    g: usize,
    k: usize,
    /// Columns in whole 64-byte chunks.
    full: usize,
    /// `128 * sum(x[..full])` per activation row.
    corr: &'a [i32],
    rows: &'a [i8],
}

impl I8Tile<'_> {
    /// `out_t[j0 + u][t0 + t]` for `u < R`, `t < G`.
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI; `j0 + R <= n`, `t0 + G <= g`.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn run<const R: usize, const G: usize>(&self, j0: usize, t0: usize, out_t: &mut [i32]) {
        let (k, g) = (self.k, self.g);
        let w: [&[i8]; R] = std::array::from_fn(|u| &self.rows[(j0 + u) * k..(j0 + u + 1) * k]);
        let x: [&[i8]; G] = std::array::from_fn(|t| &self.xs[(t0 + t) * k..(t0 + t + 1) * k]);
        let bias = _mm512_set1_epi8(-128);
        let mut acc = [[_mm512_setzero_si512(); G]; R];
        for c in (0..self.full).step_by(64) {
            // SAFETY: c + 64 <= full <= k: inside every row.
            let wv: [__m512i; R] = std::array::from_fn(|u| unsafe {
                // A prefetch reads nothing and cannot fault (wrapping address).
                _mm_prefetch(w[u].as_ptr().wrapping_add(c + ROWS_AHEAD), _MM_HINT_T0);
                _mm512_xor_si512(
                    _mm512_loadu_si512(w[u].as_ptr().add(c) as *const __m512i),
                    bias,
                )
            });
            for (t, xt) in x.iter().enumerate() {
                // SAFETY: as above.
                let xv = unsafe { _mm512_loadu_si512(xt.as_ptr().add(c) as *const __m512i) };
                for (au, &wu) in acc.iter_mut().zip(&wv) {
                    au[t] = _mm512_dpbusd_epi32(au[t], wu, xv);
                }
            }
        }
        for (u, au) in acc.iter().enumerate() {
            for (t, &a) in au.iter().enumerate() {
                let tail = dot_i8(&x[t][self.full..], &w[u][self.full..]);
                out_t[(j0 + u) * g + t0 + t] =
                    _mm512_reduce_add_epi32(a) - self.corr[t0 + t] + tail;
            }
        }
    }
}

/// One activation row against int8 rows (`kernels::dot_i8_rows` with `g ==
/// 1`), exact: each row in address order, four accumulators (the tiles of
/// `dot_i8_rows_multi_vnni` read one row with one accumulator: the issue's
/// d1024 shape decoded 10% slower in the int8 mode).
///
/// # Safety
/// AVX-512 F/BW/VNNI; `rows.len() == x.len() * out.len()`.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_i8_rows_vnni(x: &[i8], rows: &[i8], out: &mut [i32]) {
    let k = x.len();
    assert_eq!(rows.len(), k * out.len(), "dot_i8_rows_vnni: shapes");
    let full = k / 64 * 64;
    let four = k / 256 * 256;
    // sum((w + 128) * x) = sum(w * x) + 128 * sum(x) over the vector part.
    let corr = 128 * x[..full].iter().map(|&v| i32::from(v)).sum::<i32>();
    let bias = _mm512_set1_epi8(-128);
    let xp = x.as_ptr();
    for (j, o) in out.iter_mut().enumerate() {
        let row = &rows[j * k..(j + 1) * k];
        let rp = row.as_ptr();
        // SAFETY (both loops): i + 64 * t + 64 <= full <= k for x and the row.
        let step = |acc: __m512i, at: usize| unsafe {
            let w = _mm512_xor_si512(_mm512_loadu_si512(rp.add(at) as *const __m512i), bias);
            _mm512_dpbusd_epi32(acc, w, _mm512_loadu_si512(xp.add(at) as *const __m512i))
        };
        let mut acc = [_mm512_setzero_si512(); 4];
        let mut i = 0;
        while i < four {
            for (t, a) in acc.iter_mut().enumerate() {
                // A prefetch reads nothing and cannot fault (wrapping address).
                _mm_prefetch(rp.wrapping_add(i + 64 * t + ROWS_AHEAD), _MM_HINT_T0);
                *a = step(*a, i + 64 * t);
            }
            i += 256;
        }
        while i < full {
            acc[0] = step(acc[0], i);
            i += 64;
        }
        let sum = _mm512_add_epi32(
            _mm512_add_epi32(acc[0], acc[1]),
            _mm512_add_epi32(acc[2], acc[3]),
        );
        *o = _mm512_reduce_add_epi32(sum) - corr + dot_i8(&x[full..], &row[full..]);
    }
}
