//! AVX2 kernels for one page of attention (`pages::page_scores`,
//! `pages::page_values`) on pages of every KV type (decoded in registers):
//! a page's slots in the lanes, up to four queries of one row at a time
//! sharing every load and decode of the page. Each output element
//! is one chain of FMAs in the scalar kernels' order, so the results are
//! theirs bit for bit. Also the capped scores and their exponentials
//! (`pages::softcap_scores`, `pages::exp_shifted`), on `math`'s tanh and exp.

use std::arch::x86_64::*;

use super::hsum;
use super::math::{exp256, tanh256};
use crate::backend::cpu::attention::pages::{page_scores_scalar, page_values_scalar};
use crate::backend::cpu::attention::raw_page::{RawPage as Page, BF16, F32, Q8_0};
use crate::backend::cpu::types::q8_0_pages::{blocks, BLOCK};
use crate::kv_cache::{KeysPage, ValuesPage};

/// Lanes per vector.
const L: usize = 8;
/// Queries per register block.
const QB: usize = 4;

/// Eight consecutive elements of type `K` from element index `at`, decoded
/// to f32 (exactly: bf16 by a shift, q8_0 as i8 times the scale vector
/// `d`, an f16 times an i8 being exact in f32).
///
/// # Safety
/// AVX2/FMA/F16C; elements `at..at + 8` inside the page.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load8<const K: u8>(page: Page, at: usize, d: __m256) -> __m256 {
    unsafe {
        match K {
            F32 => _mm256_loadu_ps(page.e.cast::<f32>().add(at)),
            BF16 => {
                let h = _mm_loadu_si128(page.e.cast::<u16>().add(at).cast());
                _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
            }
            _ => {
                let b = _mm_loadl_epi64(page.e.cast::<i8>().add(at).cast());
                _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), d)
            }
        }
    }
}

/// `s[i * ps + j] = q_i . k_j` for the `g` queries of `q` (`[g, hd]`) and
/// the first `n` keys of the page `keys` (`[hd, ps]`). Lanes `n..` of the
/// last vector of slots are computed too where the page has room (their
/// results land in `s[i * ps + n..]`, which the caller ignores).
///
/// # Safety
/// AVX2, FMA and F16C; `n <= ps`, `q.len() == g * hd`, `keys` holds `hd`
/// rows of `ps` (`KeysPage::fits`), `s.len() >= g * ps`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn page_scores_avx2(
    q: &[f32],
    g: usize,
    keys: KeysPage,
    ps: usize,
    n: usize,
    s: &mut [f32],
) {
    // SAFETY: the contract, passed on.
    match Page::keys(keys) {
        (F32, page) => unsafe { scores_typed::<F32>(q, g, page, ps, n, s) },
        (BF16, page) => unsafe { scores_typed::<BF16>(q, g, page, ps, n, s) },
        (_, page) => unsafe { scores_typed::<Q8_0>(q, g, page, ps, n, s) },
    }
    // Slots after the vectors that fit in the page's rows (pages not a
    // multiple of 8 long), one at a time.
    let hd = q.len() / g;
    let vectors = n.div_ceil(L).min(ps / L);
    page_scores_scalar(q, hd, 0..g, keys, ps, vectors * L..n, s);
}

/// `page_scores_avx2` on keys of type `K`, all but the scalar tail.
///
/// # Safety
/// As `page_scores_avx2`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_typed<const K: u8>(
    q: &[f32],
    g: usize,
    keys: Page,
    ps: usize,
    n: usize,
    s: &mut [f32],
) {
    let hd = q.len() / g;
    let vectors = n.div_ceil(L).min(ps / L);
    let mut i = 0;
    while i < g {
        let rows = (g - i).min(QB);
        let mut v = 0;
        while v < vectors {
            // SAFETY (all): queries i..i+rows, slots 8v..8(v+w) < ps, in bounds by the contract.
            match ((vectors - v).min(2), rows) {
                (2, 4) => unsafe { scores_block::<4, 2, K>(q, hd, i, keys, ps, v * L, s) },
                (2, 3) => unsafe { scores_block::<3, 2, K>(q, hd, i, keys, ps, v * L, s) },
                (2, 2) => unsafe { scores_block::<2, 2, K>(q, hd, i, keys, ps, v * L, s) },
                (2, _) => unsafe { scores_block::<1, 2, K>(q, hd, i, keys, ps, v * L, s) },
                (_, 4) => unsafe { scores_block::<4, 1, K>(q, hd, i, keys, ps, v * L, s) },
                (_, 3) => unsafe { scores_block::<3, 1, K>(q, hd, i, keys, ps, v * L, s) },
                (_, 2) => unsafe { scores_block::<2, 1, K>(q, hd, i, keys, ps, v * L, s) },
                _ => unsafe { scores_block::<1, 1, K>(q, hd, i, keys, ps, v * L, s) },
            }
            v += 2;
        }
        i += rows;
    }
}

/// Queries `i..i+R` by slots `j0..j0+8W`.
///
/// # Safety
/// AVX2, FMA and F16C; the ranges inside the slices (see `page_scores_avx2`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_block<const R: usize, const W: usize, const K: u8>(
    q: &[f32],
    hd: usize,
    i: usize,
    keys: Page,
    ps: usize,
    j0: usize,
    s: &mut [f32],
) {
    let qp = q.as_ptr();
    let mut acc = [[_mm256_setzero_ps(); W]; R];
    let mut d = [_mm256_setzero_ps(); W];
    for t in 0..hd {
        if K == Q8_0 && t % BLOCK == 0 {
            // The scales of these slots' block of elements t..t+32.
            for (w, d) in d.iter_mut().enumerate() {
                let at = (t / BLOCK) * ps + j0 + w * L;
                *d = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(keys.scales.add(at).cast()) });
            }
        }
        let mut k = [_mm256_setzero_ps(); W];
        for (w, k) in k.iter_mut().enumerate() {
            *k = unsafe { load8::<K>(keys, t * ps + j0 + w * L, d[w]) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm256_set1_ps(unsafe { *qp.add((i + r) * hd + t) });
            for (a, &k) in acc.iter_mut().zip(&k) {
                *a = _mm256_fmadd_ps(x, k, *a);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (w, a) in acc.iter().enumerate() {
            unsafe { _mm256_storeu_ps(s.as_mut_ptr().add((i + r) * ps + j0 + w * L), *a) };
        }
    }
}

/// `o_i += sum_{j < n} p[i * ps + j] * values[j]` for the `g` outputs of `o`
/// (`[g, hd]`), the rows of `values` (`[n, hd]`) in order.
///
/// # Safety
/// AVX2, FMA and F16C; `p.len() >= (g - 1) * ps + n`, `values` holds `n`
/// rows of `hd` (`ValuesPage::fits`), `o.len() == g * hd`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn page_values_avx2(
    p: &[f32],
    g: usize,
    ps: usize,
    n: usize,
    values: ValuesPage,
    o: &mut [f32],
) {
    // SAFETY: the contract, passed on.
    match Page::values(values) {
        (F32, page) => unsafe { values_typed::<F32>(p, g, ps, n, page, o) },
        (BF16, page) => unsafe { values_typed::<BF16>(p, g, ps, n, page, o) },
        (_, page) => unsafe { values_typed::<Q8_0>(p, g, ps, n, page, o) },
    }
    let hd = o.len() / g;
    page_values_scalar(p, 0..g, ps, n, values, o, hd, hd / L * L..hd);
}

/// `page_values_avx2` on values of type `K`, all but the scalar tail.
///
/// # Safety
/// As `page_values_avx2`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn values_typed<const K: u8>(
    p: &[f32],
    g: usize,
    ps: usize,
    n: usize,
    values: Page,
    o: &mut [f32],
) {
    let hd = o.len() / g;
    let full = hd / L * L;
    let mut i = 0;
    while i < g {
        let rows = (g - i).min(QB);
        let mut c = 0;
        while c < full {
            let two = (full - c) / L >= 2;
            // SAFETY (all): outputs i..i+rows, columns c..c+8W < hd, by the contract.
            match (two, rows) {
                (true, 4) => unsafe { values_block::<4, 2, K>(p, i, ps, n, values, o, hd, c) },
                (true, 3) => unsafe { values_block::<3, 2, K>(p, i, ps, n, values, o, hd, c) },
                (true, 2) => unsafe { values_block::<2, 2, K>(p, i, ps, n, values, o, hd, c) },
                (true, _) => unsafe { values_block::<1, 2, K>(p, i, ps, n, values, o, hd, c) },
                (false, 4) => unsafe { values_block::<4, 1, K>(p, i, ps, n, values, o, hd, c) },
                (false, 3) => unsafe { values_block::<3, 1, K>(p, i, ps, n, values, o, hd, c) },
                (false, 2) => unsafe { values_block::<2, 1, K>(p, i, ps, n, values, o, hd, c) },
                (false, _) => unsafe { values_block::<1, 1, K>(p, i, ps, n, values, o, hd, c) },
            }
            c += if two { 2 * L } else { L };
        }
        i += rows;
    }
}

/// Outputs `i..i+R`, columns `c..c+8W`.
///
/// # Safety
/// AVX2, FMA and F16C; the ranges inside the slices (see `page_values_avx2`).
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn values_block<const R: usize, const W: usize, const K: u8>(
    p: &[f32],
    i: usize,
    ps: usize,
    n: usize,
    values: Page,
    o: &mut [f32],
    hd: usize,
    c: usize,
) {
    let (pp, op) = (p.as_ptr(), o.as_mut_ptr());
    let nb = blocks(hd);
    let mut acc = [[_mm256_setzero_ps(); W]; R];
    for (r, acc) in acc.iter_mut().enumerate() {
        for (w, a) in acc.iter_mut().enumerate() {
            *a = unsafe { _mm256_loadu_ps(op.add((i + r) * hd + c + w * L)) };
        }
    }
    for j in 0..n {
        let mut v = [_mm256_setzero_ps(); W];
        for (w, v) in v.iter_mut().enumerate() {
            let col = c + w * L;
            // Eight columns never straddle a block (8 divides 32).
            let d = if K == Q8_0 {
                let bits = unsafe { *values.scales.add(j * nb + col / BLOCK) };
                _mm256_cvtph_ps(_mm_set1_epi16(bits as i16))
            } else {
                _mm256_setzero_ps()
            };
            *v = unsafe { load8::<K>(values, j * hd + col, d) };
        }
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = _mm256_set1_ps(unsafe { *pp.add((i + r) * ps + j) });
            for (a, &v) in acc.iter_mut().zip(&v) {
                *a = _mm256_fmadd_ps(x, v, *a);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (w, a) in acc.iter().enumerate() {
            unsafe { _mm256_storeu_ps(op.add((i + r) * hd + c + w * L), *a) };
        }
    }
}

/// AVX2 version of `pages::softcap_scores_scalar`, with `tanh256` for libm's
/// tanh: `s = cap * tanh(s * mult / cap)`, masked positions -1e30; returns
/// the largest.
///
/// # Safety
/// The CPU must support AVX2 and FMA and `mask.len() >= s.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn softcap_scores_avx2(s: &mut [f32], mult: f32, cap: f32, mask: &[bool]) -> f32 {
    let n = s.len();
    let full = n / 8 * 8;
    let (vm, vcap, vinv, masked) = (
        _mm256_set1_ps(mult),
        _mm256_set1_ps(cap),
        _mm256_set1_ps(1.0 / cap),
        _mm256_set1_ps(-1e30),
    );
    // Eight lanes of scores and their eight mask bytes (bool is one byte,
    // 0 or 1), capped, masked, and the running maximum.
    let capped = |x: __m256, keep: &[bool], max: &mut __m256| {
        debug_assert_eq!(keep.len(), 8);
        // SAFETY: keep holds eight bytes; AVX2 is enabled for this function.
        let keep =
            unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(keep.as_ptr() as *const __m128i)) };
        let drop = _mm256_castsi256_ps(_mm256_cmpeq_epi32(keep, _mm256_setzero_si256()));
        let y = _mm256_mul_ps(vcap, tanh256(_mm256_mul_ps(_mm256_mul_ps(x, vm), vinv)));
        let y = _mm256_blendv_ps(y, masked, drop);
        *max = _mm256_max_ps(*max, y);
        y
    };
    let mut max = masked;
    let mut i = 0;
    while i < full {
        // SAFETY: lanes i..i+8 are inside s (i + 8 <= full <= n).
        unsafe {
            let y = capped(
                _mm256_loadu_ps(s.as_ptr().add(i)),
                &mask[i..i + 8],
                &mut max,
            );
            _mm256_storeu_ps(s.as_mut_ptr().add(i), y);
        }
        i += 8;
    }
    if full < n {
        // The tail through padded vectors (padding masked), so it gets the
        // same tanh as the rest.
        let (mut lanes, mut keep) = ([0f32; 8], [false; 8]);
        lanes[..n - full].copy_from_slice(&s[full..]);
        keep[..n - full].copy_from_slice(&mask[full..n]);
        let y = capped(unsafe { _mm256_loadu_ps(lanes.as_ptr()) }, &keep, &mut max);
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), y) };
        s[full..].copy_from_slice(&lanes[..n - full]);
    }
    let mut lanes = [0f32; 8];
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), max) };
    if n == 0 {
        return f32::NEG_INFINITY;
    }
    lanes.into_iter().fold(f32::NEG_INFINITY, f32::max)
}

/// AVX2 version of `pages::exp_shifted_scalar` with `exp256` for libm's exp:
/// `s = exp(s - max)`; returns the sum.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_shifted_avx2(s: &mut [f32], max: f32) -> f32 {
    let n = s.len();
    let full = n / 8 * 8;
    let p = s.as_mut_ptr();
    let vmax = _mm256_set1_ps(max);
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i < full {
        // SAFETY: lanes i..i+8 are inside s (i + 8 <= full <= n).
        unsafe {
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), vmax));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
        }
        i += 8;
    }
    if full < n {
        // Padding lanes at -inf come out of exp as 0 and add nothing (-1e30,
        // a masked score, would not where every score is masked).
        let mut lanes = [f32::NEG_INFINITY; 8];
        lanes[..n - full].copy_from_slice(&s[full..]);
        let e = exp256(_mm256_sub_ps(
            unsafe { _mm256_loadu_ps(lanes.as_ptr()) },
            vmax,
        ));
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), e) };
        s[full..].copy_from_slice(&lanes[..n - full]);
        acc = _mm256_add_ps(acc, e);
    }
    hsum(acc)
}
