//! f32 rows (`types::f32_rows`) on NEON: the tied embedding's product as
//! stored (the f32 mode's output projection, a whole vocabulary of rows a
//! token) and the row dots of decoded GGUF rows. Four rows at a time share
//! each load of the activations, two accumulators a row (four lanes each)
//! hide the FMA latency; the sums' order differs from the scalar loop's, so
//! the results agree within f32 rounding of the length (as the AVX2 ones).

use std::arch::aarch64::*;

/// Rows per pass.
const ROWS: usize = 4;

/// `dot(x, row)` of `ROWS` rows (or one, the last rows of a matrix) at
/// `rows[u]` (`d` f32 each, at any address: the tied embedding's rows lie
/// where a pickle put them) against `x` (`d` aligned f32).
///
/// # Safety
/// NEON; `d` readable f32 at `x` and at each `rows[u]`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dots<const R: usize>(x: *const f32, rows: [*const f32; R], d: usize) -> [f32; R] {
    // SAFETY: the caller's.
    unsafe {
        let full = d / 8 * 8;
        let mut acc = [[vdupq_n_f32(0.0); 2]; R];
        let mut j = 0;
        while j < full {
            let x0 = vld1q_f32(x.add(j));
            let x1 = vld1q_f32(x.add(j + 4));
            for (a, &r) in acc.iter_mut().zip(&rows) {
                a[0] = vfmaq_f32(a[0], x0, vld1q_f32(r.add(j)));
                a[1] = vfmaq_f32(a[1], x1, vld1q_f32(r.add(j + 4)));
            }
            j += 8;
        }
        std::array::from_fn(|u| {
            let mut total = vaddvq_f32(vaddq_f32(acc[u][0], acc[u][1]));
            for t in full..d {
                total += *x.add(t) * rows[u].add(t).read_unaligned();
            }
            total
        })
    }
}

/// NEON version of `f32_rows::dot_f32_bytes_scalar` (same contract:
/// `out_t[r][i] = x[i] . e[r]`, `e` little-endian f32 rows at any byte
/// offset).
///
/// # Safety
/// NEON; `m > 0`, `x.len() >= m * d`, `e.len() >= out_t.len() / m * d * 4`.
#[target_feature(enable = "neon")]
pub unsafe fn dot_f32_bytes_neon(x: &[f32], m: usize, d: usize, e: &[u8], out_t: &mut [f32]) {
    let rows = out_t.len() / m;
    // Little-endian f32s at any address: `vld1q_f32` reads them unaligned.
    let ep = e.as_ptr().cast::<f32>();
    let mut r = 0;
    while r + ROWS <= rows {
        for i in 0..m {
            // SAFETY: rows r..r + 4 of e and row i of x are in bounds (the
            // contract); NEON loads need no alignment.
            let sums = unsafe {
                dots::<ROWS>(
                    x.as_ptr().add(i * d),
                    std::array::from_fn(|u| ep.add((r + u) * d)),
                    d,
                )
            };
            for (u, s) in sums.into_iter().enumerate() {
                out_t[(r + u) * m + i] = s;
            }
        }
        r += ROWS;
    }
    for r in r..rows {
        for i in 0..m {
            // SAFETY: as above, for the single row r.
            let [s] = unsafe { dots::<1>(x.as_ptr().add(i * d), [ep.add(r * d)], d) };
            out_t[r * m + i] = s;
        }
    }
}

/// NEON version of `f32_rows::dot_rows_scalar` (`scores[j] = q . keys[j]`).
///
/// # Safety
/// NEON; `keys.len() >= scores.len() * q.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn dot_rows_neon(q: &[f32], keys: &[f32], scores: &mut [f32]) {
    let hd = q.len();
    let (qp, kp) = (q.as_ptr(), keys.as_ptr());
    let mut j = 0;
    while j + ROWS <= scores.len() {
        // SAFETY: rows j..j + 4 of keys are inside it (the contract).
        let sums = unsafe { dots::<ROWS>(qp, std::array::from_fn(|u| kp.add((j + u) * hd)), hd) };
        scores[j..j + ROWS].copy_from_slice(&sums);
        j += ROWS;
    }
    for (j, s) in scores.iter_mut().enumerate().skip(j) {
        // SAFETY: row j is inside keys (the contract).
        [*s] = unsafe { dots::<1>(qp, [kp.add(j * hd)], hd) };
    }
}
