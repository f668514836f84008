//! Decode streams (on AVX-512 up to 12 activation rows in f32, 6 in int8) that
//! keep their sums in registers: a block of weight rows is walked in strips of
//! 64 columns (one cache line per row; 32 columns from 7 f32 rows on), each
//! strip's sums held in registers down all the block's rows and written back
//! once (the f32 ones also on 256-bit vectors, for AVX2). The former AVX2 f32
//! stream (and still the AVX2 int8 one) loaded and stored its sums in memory
//! for every four weight rows, which at two or more activation rows (an
//! expert's share of a decoding batch) costs more than the weights' own
//! arithmetic; the panels of converted weights that prefill uses cost more
//! still at a handful of rows.
//!
//! Walking a block column-strip by column-strip reads each of its rows as a
//! sequential stream, one line per strip: the block's rows are prefetched a
//! few strips ahead (and the next block's first strips while the last ones
//! run), since that many streams at a page-crossing stride are more than the
//! hardware prefetchers follow.
//!
//! The f32 streams are here; the int8 one is in `int8_ckpt_i8_strips`.

use std::arch::x86_64::*;

use crate::backend::cpu::types::int8_ckpt::{packed_index, Q8Rows};

/// Weight rows per block of the f32 stream: a strip's lines are in flight
/// together, and the sums are stored once per block (measured at full width,
/// batch 8: 16 rows 3% faster than 32 or 8, 64 rows much slower) ...
const F32_BLOCK_ROWS: usize = 16;
/// ... up to 2 activation rows; from `SHORT_BLOCK_MIN_M` on, whose FMAs
/// leave less time to wait for memory, 8 rows keep fewer rows' lines in
/// flight (full width, 3 and 4 rows: 6-8% faster than 16; 2 rows 2% slower,
/// 6 rows alike).
const F32_SHORT_BLOCK_ROWS: usize = 8;
const SHORT_BLOCK_MIN_M: usize = 3;
/// Strips prefetched ahead of the one in use by the f32 stream (measured at
/// full width with 16-row blocks, 1 to 6 rows: 8 strips 2-5% faster than 4,
/// 16 no faster than 8) and by the int8 stream (with 16-row passes, 1 to 6
/// rows: 8 strips 2-4% faster than 4; with 32-row passes 2, 4 and 8 were
/// alike).
const F32_AHEAD: usize = 8;
pub(super) const I8_AHEAD: usize = 8;
/// Most activation rows the streams take in strips of 64 columns: `4 M` sums
/// plus four weight vectors and temporaries in 32 registers.
pub(crate) const STRIPS_MAX_M: usize = 6;
/// Most activation rows the f32 stream takes, in strips of 32 columns (`2 M`
/// sums); above it, the panels.
pub(crate) const STRIPS_MAX_M_HALF: usize = 12;
/// On AVX2 (sixteen registers): 32-column strips up to this many rows, 16
/// columns up to `STRIPS_AVX2_MAX_M`.
pub(super) const STRIPS_AVX2_WIDE_M: usize = 2;
pub(crate) const STRIPS_AVX2_MAX_M: usize = 6;

/// Prefetches the line `AHEAD` strips past column `j` of a row (`row`
/// points at its first column) in a walk over `full` columns, or, past the
/// last strip, the matching line of `next` (the same row of the next block,
/// whose first strips then arrive while the last ones run).
#[inline(always)]
pub(super) fn prefetch_ahead<const AHEAD: usize>(
    row: *const u8,
    next: Option<*const u8>,
    j: usize,
    full: usize,
) {
    let jj = j + 64 * AHEAD;
    let p = if jj < full {
        row.wrapping_add(jj)
    } else if let Some(next) = next {
        next.wrapping_add(jj - full)
    } else {
        return;
    };
    // SAFETY: a prefetch reads nothing and cannot fault; the address is
    // formed with wrapping arithmetic.
    unsafe { _mm_prefetch(p as *const i8, _MM_HINT_T0) };
}

/// Defines a stream `$name::<M, V>` on `$vec` vectors of `$lanes` f32
/// lanes, `$widen` converting `$lanes` int8 weights to f32.
macro_rules! q8_stream_f32 {
    ($(#[$attr:meta])* $name:ident, $feature:literal, $vec:ty, $lanes:literal,
     $load:ident, $store:ident, $set1:ident, $fma:ident, $widen:ident) => {
        $(#[$attr])*
        #[target_feature(enable = $feature)]
        pub(super) unsafe fn $name<const M: usize, const V: usize>(
            xp: &[f32],
            wb: &Q8Rows,
            full: usize,
            acc: &mut [f32],
        ) {
            let Q8Rows { w, n, n0, .. } = *wb;
            let nb = acc.len() / M;
            let k = xp.len() / M;
            let (wp, xs, ap) = (w.as_ptr(), xp.as_ptr(), acc.as_mut_ptr());
            let end = wb.rows.end;
            let block_rows = if M >= SHORT_BLOCK_MIN_M {
                F32_SHORT_BLOCK_ROWS
            } else {
                F32_BLOCK_ROWS
            };
            for r0 in wb.rows.clone().step_by(block_rows) {
                let r1 = (r0 + block_rows).min(end);
                for j in (0..full).step_by($lanes * V) {
                    // SAFETY (block): rows r0..r1 are in `wb.rows`, j + lanes V
                    // <= full, the accumulator rows i < M hold nb >= full columns.
                    unsafe {
                        let mut s: [[$vec; V]; M] = std::array::from_fn(|i| {
                            std::array::from_fn(|u| $load(ap.add(i * nb + j + $lanes * u)))
                        });
                        for r in r0..r1 {
                            let row = wp.wrapping_add(r * n + n0);
                            let next = r + block_rows;
                            if j % 64 == 0 {
                                prefetch_ahead::<F32_AHEAD>(
                                    row,
                                    (next < end).then(|| wp.wrapping_add(next * n + n0)),
                                    j,
                                    full,
                                );
                            }
                            let p = row.add(j);
                            let wv: [$vec; V] = std::array::from_fn(|u| $widen(p.add($lanes * u)));
                            for (i, si) in s.iter_mut().enumerate() {
                                let x = $set1(*xs.add(packed_index(M, k, i, r)));
                                for (su, &wu) in si.iter_mut().zip(&wv) {
                                    *su = $fma(x, wu, *su);
                                }
                            }
                        }
                        for (i, si) in s.iter().enumerate() {
                            for (u, &su) in si.iter().enumerate() {
                                $store(ap.add(i * nb + j + $lanes * u), su);
                            }
                        }
                    }
                }
            }
        }
    };
}

q8_stream_f32!(
    /// `acc[i][j] += sum over rows of x[i][r] * w[r][n0 + j]` for columns
    /// `0..full` (`full % (16 V) == 0`), `xp` being the `M` activation rows
    /// packed by `int8_ckpt::pack_activations`: the FMAs of
    /// `int8_ckpt::q8_block_scalar` in the same order (one per row, rows in
    /// order, for every column), so the sums are bit-identical. Strips of `V`
    /// vectors: 4 (a cache line) up to `STRIPS_MAX_M` rows, 2 up to
    /// `STRIPS_MAX_M_HALF`.
    ///
    /// # Safety
    /// AVX-512 F; every row of `wb.rows` covers `w[r*n + n0 .. + full]`; `xp`
    /// holds `M * k` floats with `wb.rows.end <= k`; `acc` is `[M, nb]` with
    /// `full <= nb`.
    q8_stream_f32_512, "avx512f", __m512, 16,
    _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_fmadd_ps, widen16
);

q8_stream_f32!(
    /// `q8_stream_f32_512` on 256-bit vectors (`full % (8 V) == 0`), for CPUs
    /// without AVX-512: sixteen registers hold `M V` sums, `V` weight vectors
    /// and a broadcast, so strips of 32 columns (`V = 4`) up to
    /// `STRIPS_AVX2_WIDE_M` rows, of 16 (`V = 2`) up to `STRIPS_AVX2_MAX_M`.
    ///
    /// # Safety
    /// AVX2 and FMA; the bounds of `q8_stream_f32_512`.
    q8_stream_f32_256, "avx2,fma", __m256, 8,
    _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps, _mm256_fmadd_ps, widen8
);

/// 16 int8 weights from `p` as f32.
///
/// # Safety
/// AVX-512 F; 16 readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn widen16(p: *const u8) -> __m512 {
    // SAFETY: the caller's bound.
    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(unsafe {
        _mm_loadu_si128(p as *const __m128i)
    }))
}

/// 8 int8 weights from `p` as f32.
///
/// # Safety
/// AVX2; 8 readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn widen8(p: *const u8) -> __m256 {
    // SAFETY: the caller's bound.
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(unsafe {
        _mm_loadl_epi64(p as *const __m128i)
    }))
}
