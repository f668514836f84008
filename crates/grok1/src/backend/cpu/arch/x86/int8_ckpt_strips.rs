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

use std::arch::x86_64::*;

use super::int8_ckpt_i8_avx2::quad_rows;
use crate::backend::cpu::common::QUAD;
use crate::backend::cpu::types::int8_ckpt::{packed_index, Q8Rows, SplitView, BLOCK_QUADS};

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
const I8_AHEAD: usize = 8;
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
fn prefetch_ahead<const AHEAD: usize>(
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

/// Quads (of four weight rows) the int8 stream walks together: half an
/// activation block (16 rows in flight) up to this many activation rows, a
/// whole block above (measured at full width: halves 5-13% faster at 2 and 3
/// rows, as fast at 4, 15% slower at 6, where the carried sums crowd the
/// registers).
pub(super) const I8_HALF_PASS_MAX_M: usize = 4;

/// `part[i] += sum over the split's blocks b of f32(sum_b(w * x_i)) * sx[i][b]`
/// for columns `0..full` (`full % 64 == 0`), `part` being `[M, full]` in the
/// unpack order of `interleave_quad` (f32, one FMA per block in block order,
/// the i32 block sums exact): the VNNI decode stream. A block's eight quads
/// (32 weight rows) are walked in passes of `PQ` quads (8 or 4), each strip
/// by strip with the `M x 64` i32 sums in registers (carried between the
/// passes of a block in `carry`); each strip's f32 sums are loaded and stored
/// once per block.
///
/// # Safety
/// AVX-512 F/BW/VNNI; the bounds `kernels::q8_block_fast` checks, with
/// `full <= nb`; `part` holds `M * full` floats.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn q8_stream_i8<const M: usize, const PQ: usize>(
    view: &SplitView,
    wb: &Q8Rows,
    full: usize,
    part: &mut [f32],
) {
    assert!(part.len() >= M * full);
    assert!(BLOCK_QUADS.is_multiple_of(PQ));
    let passes_per_block = BLOCK_QUADS / PQ;
    let nq = view.rows.len().div_ceil(QUAD);
    let zeros = vec![0u8; full];
    let mut carry = vec![0i32; if passes_per_block > 1 { M * full } else { 0 }];
    let (pp, cp) = (part.as_mut_ptr(), carry.as_mut_ptr());
    let bias = _mm512_set1_epi8(-128);
    let pass_rows = |p: usize| -> [[*const u8; QUAD]; PQ] {
        std::array::from_fn(|t| {
            let qd = p * PQ + t;
            if qd < nq {
                quad_rows(wb, qd, &zeros)
            } else {
                [zeros.as_ptr(); QUAD]
            }
        })
    };
    let passes = nq.div_ceil(PQ);
    let mut rows = pass_rows(0);
    for p in 0..passes {
        let b = p / passes_per_block;
        let q0 = p * PQ;
        let quads = (nq - q0).min(PQ);
        // The first pass of a block starts its sums at zero, the last one
        // (the block's second, or the split's last) scales them into `part`;
        // in between they wait in `carry`.
        let first = p % passes_per_block == 0;
        let last = p % passes_per_block == passes_per_block - 1 || p + 1 == passes;
        // The next pass's rows (this pass's again after the last: their
        // lines are then in cache, the prefetches cost nothing). Plain arrays,
        // not an Option of one: with an `Option<[[ptr; 4]; 8]>` here one
        // build kept the loop's values on the stack and the int8 decode ran
        // 25% slower (batch 8 at full width: 17.9 -> 13.9 tok/s).
        let has_next = p + 1 < passes;
        let next = if has_next { pass_rows(p + 1) } else { rows };
        let xs: [[i32; M]; PQ] = std::array::from_fn(|t| {
            std::array::from_fn(|i| if t < quads { view.quad(i, q0 + t) } else { 0 })
        });
        let sx: [__m512; M] = std::array::from_fn(|i| _mm512_set1_ps(view.scale(i, b)));
        let corr: [__m512i; M] = std::array::from_fn(|i| _mm512_set1_epi32(128 * view.sum(i, b)));
        for j in (0..full).step_by(64) {
            // SAFETY (block): i < M, j + 16 u + 16 <= full: inside `part`
            // and `carry`, both [M, full].
            let mut c: [[__m512i; 4]; M] = if first {
                [[_mm512_setzero_si512(); 4]; M]
            } else {
                std::array::from_fn(|i| {
                    std::array::from_fn(|u| unsafe {
                        _mm512_loadu_si512(cp.add(i * full + j + 16 * u) as *const __m512i)
                    })
                })
            };
            for t in 0..quads {
                for (u, &row) in rows[t].iter().enumerate() {
                    prefetch_ahead::<I8_AHEAD>(row, Some(next[t][u]), j, full);
                }
                // SAFETY: every row pointer has `full` readable bytes (a row
                // of the split from column n0, or `zeros`); j + 64 <= full.
                let v = unsafe { interleave_quad(rows[t], j, bias) };
                for (ci, &x) in c.iter_mut().zip(&xs[t]) {
                    let x = _mm512_set1_epi32(x);
                    for (cu, &vu) in ci.iter_mut().zip(&v) {
                        *cu = _mm512_dpbusd_epi32(*cu, vu, x);
                    }
                }
            }
            for (i, ci) in c.iter_mut().enumerate() {
                for (u, cu) in ci.iter_mut().enumerate() {
                    let off = i * full + j + 16 * u;
                    // SAFETY: as above.
                    unsafe {
                        if last {
                            let p = pp.add(off);
                            let exact = _mm512_sub_epi32(*cu, corr[i]);
                            _mm512_storeu_ps(
                                p,
                                _mm512_fmadd_ps(
                                    _mm512_cvtepi32_ps(exact),
                                    sx[i],
                                    _mm512_loadu_ps(p),
                                ),
                            );
                        } else {
                            _mm512_storeu_si512(cp.add(off) as *mut __m512i, *cu);
                        }
                    }
                }
            }
        }
        if has_next {
            rows = next;
        }
    }
}

/// Columns `j .. j + 64` of a quad's four rows XOR `bias` (`0x80` bytes give
/// `w + 128`, the unsigned operand of `vpdpbusd`; zeros keep `w`),
/// interleaved: vector `u`, 128-bit lane `l` holds columns `16 l + 4 u .. + 4`,
/// each 32-bit lane one column's four rows.
///
/// # Safety
/// Each pointer has `j + 64` readable bytes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn interleave_quad(
    rows: [*const u8; QUAD],
    j: usize,
    bias: __m512i,
) -> [__m512i; 4] {
    // SAFETY: the caller's bound.
    let [a, b, c, d] = rows
        .map(|p| unsafe { _mm512_xor_si512(_mm512_loadu_si512(p.add(j) as *const __m512i), bias) });
    let (ab_lo, ab_hi) = (_mm512_unpacklo_epi8(a, b), _mm512_unpackhi_epi8(a, b));
    let (cd_lo, cd_hi) = (_mm512_unpacklo_epi8(c, d), _mm512_unpackhi_epi8(c, d));
    [
        _mm512_unpacklo_epi16(ab_lo, cd_lo),
        _mm512_unpackhi_epi16(ab_lo, cd_lo),
        _mm512_unpacklo_epi16(ab_hi, cd_hi),
        _mm512_unpackhi_epi16(ab_hi, cd_hi),
    ]
}
