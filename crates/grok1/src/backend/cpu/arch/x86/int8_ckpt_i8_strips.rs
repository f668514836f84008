//! The register-summed decode stream of `int8_ckpt_strips` on int8
//! activations, for the VNNI product (`int8_ckpt_i8_vnni`, up to
//! `STRIPS_MAX_M` activation rows).
//!
//! A module of its own, apart from its caller: while the two shared one (and
//! so one codegen unit), LLVM inlined the stream into the VNNI kernel and left
//! its loop over a pass's quads rolled, and one-row decoding took 15% more
//! time (kernel_bench, 6144 x 4096, one thread). Its speed depends on such
//! codegen choices: measure it after moving it.

use std::arch::x86_64::*;

use super::int8_ckpt_i8_avx2::quad_rows;
use super::int8_ckpt_strips::{prefetch_ahead, I8_AHEAD};
use crate::backend::cpu::common::QUAD;
use crate::backend::cpu::types::int8_ckpt::{Q8Rows, SplitView, BLOCK_QUADS};

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
