//! GGUF Q8_0 rows against activations quantised to Q8_0 blocks
//! (`types::q8_0::dot_q8_0_rows_int8_scalar`), bit-identical to the scalar
//! reference: AVX2 eight weight rows at a time, and the AVX-512 VNNI tiles,
//! where the activations are `vpdpbusd`'s unsigned side (stored plus 128) and
//! the weights' block sums are taken off (the AMX tiles are in `amx`).

use std::arch::x86_64::*;

use super::{group_rows, rows_in_parts};
use crate::backend::cpu::common::ROW_PAD;
use crate::backend::cpu::types::q8_0::{Q8_0Acts, Q8_0Tiles, Q8_0_BLOCK_BYTES};

/// AVX2 version of `q8_0::dot_q8_0_rows_int8_scalar`, bit-identical to
/// it: eight weight rows at a time (one per f32 lane of the sums) against up
/// to four activation rows (each group of rows stays in L1 or L2 while every
/// activation row passes), `maddubs(|w|, sign(x, w))` + `madd` giving each
/// row's eight partial sums of a block, added across into one exact sum per
/// row (integers: the order does not matter).
///
/// # Safety
/// AVX2, FMA and F16C; the bounds `kernels::dot_q8_0_rows_int8` checks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_rows_int8_avx2(act: Q8_0Acts, rows: &[u8], out_t: &mut [f32]) {
    let (m, k) = (act.m, act.k);
    let row_bytes = k / 32 * Q8_0_BLOCK_BYTES;
    let nrows = out_t.len() / m;
    assert!(rows.len() >= nrows * row_bytes && act.q.len() >= m * k && act.s.len() >= m * (k / 32));
    let mut c = 0;
    if m == 1 {
        // One activation row (decode): the rows in parts, each one stream.
        // SAFETY: every row handed over holds k / 32 blocks, the activation
        // row is inside act (asserted above).
        c = rows_in_parts::<8>(rows, row_bytes, out_t, |wp| unsafe {
            q8_0_int8_rows8::<1>(act, 0, wp, &[])[0]
        });
    }
    while c < nrows {
        let r = (nrows - c).min(8);
        let group = &rows[c * row_bytes..(c + r) * row_bytes];
        let wp = group_rows::<8>(group, r, row_bytes);
        // The next group's rows, prefetched as one run while the first
        // activation rows pass over this group: adjacent rows read side by
        // side are a pattern the hardware prefetchers follow badly (measured:
        // 34 -> 46 tok/s decoding the d1024 Q8_0 model on a Zen 1).
        let next = &rows[(c + r) * row_bytes..(c + r + 8).min(nrows) * row_bytes];
        let mut i = 0;
        while i < m {
            let g = (m - i).min(4);
            let ahead = if i == 0 { next } else { &[] };
            // SAFETY: rows c..c + r exist, activation rows i..i + g < m
            // (asserted above).
            let sums: [[f32; 8]; 4] = unsafe {
                match g {
                    4 => q8_0_int8_rows8::<4>(act, i, wp, ahead),
                    3 => q8_0_int8_rows8::<3>(act, i, wp, ahead),
                    2 => q8_0_int8_rows8::<2>(act, i, wp, ahead),
                    _ => q8_0_int8_rows8::<1>(act, i, wp, ahead),
                }
            };
            for (t, row) in sums[..g].iter().enumerate() {
                for (u, &v) in row[..r].iter().enumerate() {
                    out_t[(c + u) * m + i + t] = v;
                }
            }
            i += g;
        }
        c += r;
    }
}

/// The eight weight rows at `wp` against activation rows `i..i + G`,
/// prefetching `ahead` front to back on the way: `[t][u]` is activation row
/// `i + t` times weight row `u`.
///
/// # Safety
/// AVX2, FMA and F16C; each `wp[u]` points at a row of `act.k / 32` blocks,
/// `i + G <= act.m`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_int8_rows8<const G: usize>(
    act: Q8_0Acts,
    i: usize,
    wp: [*const u8; 8],
    ahead: &[u8],
) -> [[f32; 8]; 4] {
    let (k, blocks) = (act.k, act.k / 32);
    assert!((i + G) * k <= act.q.len() && (i + G) * blocks <= act.s.len());
    // Cache lines of `ahead` to prefetch per block, to cover it by the end.
    let ahead_lines = ahead.len().div_ceil(64);
    let lines = ahead_lines.div_ceil(blocks.max(1));
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); G];
    for b in 0..blocks {
        // SAFETY: each weight row's block b is 34 bytes inside the row, the
        // activation rows' block b is inside act.q and act.s (asserted above);
        // the prefetched lines start inside `ahead`.
        unsafe {
            for l in b * lines..((b + 1) * lines).min(ahead_lines) {
                _mm_prefetch(ahead.as_ptr().add(64 * l) as *const i8, _MM_HINT_T0);
            }
            let at = b * Q8_0_BLOCK_BYTES;
            let d16 = |u: usize| i16::from_le_bytes([*wp[u].add(at), *wp[u].add(at + 1)]);
            let dw = _mm256_cvtph_ps(_mm_setr_epi16(
                d16(0),
                d16(1),
                d16(2),
                d16(3),
                d16(4),
                d16(5),
                d16(6),
                d16(7),
            ));
            for (t, a) in acc.iter_mut().enumerate() {
                let x =
                    _mm256_loadu_si256(act.q.as_ptr().add((i + t) * k + 32 * b) as *const __m256i);
                let p: [__m256i; 8] = std::array::from_fn(|u| {
                    let w = _mm256_loadu_si256(wp[u].add(at + 2) as *const __m256i);
                    _mm256_madd_epi16(
                        _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w)),
                        ones,
                    )
                });
                // d_w * d_x rounded once per row, as the scalar kernel does.
                let d = _mm256_mul_ps(dw, _mm256_set1_ps(act.s[(i + t) * blocks + b]));
                *a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums8(p)), d, *a);
            }
        }
    }
    let mut out = [[0f32; 8]; 4];
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), a) };
    }
    out
}

/// Lane `u` of the result is the sum of `p[u]`'s eight lanes: a transpose
/// and add in three rounds of unpacks (one-uop shuffles; `hadd` is three
/// uops on AMD's cores and was the decode kernels' bottleneck on a Zen 3:
/// six of them a block of eight rows).
#[inline(always)]
pub(super) fn sums8(p: [__m256i; 8]) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller (inlined into them).
    unsafe {
        let lo = quad_sums(pair_sums(p[0], p[1]), pair_sums(p[2], p[3]));
        let hi = quad_sums(pair_sums(p[4], p[5]), pair_sums(p[6], p[7]));
        _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(lo, hi),
            _mm256_permute2x128_si256::<0x31>(lo, hi),
        )
    }
}

/// Per 128-bit half of `a` and `b`: `[a0 + a2, b0 + b2, a1 + a3, b1 + b3]`
/// (the first round of [`sums8`]).
#[inline(always)]
pub(super) fn pair_sums(a: __m256i, b: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller (inlined into them).
    unsafe { _mm256_add_epi32(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b)) }
}

/// Per 128-bit half, the four rows' sums of that half's lanes, from two
/// [`pair_sums`] (rows 0 and 1 in `ab`, 2 and 3 in `cd`).
#[inline(always)]
pub(super) fn quad_sums(ab: __m256i, cd: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller (inlined into them).
    unsafe { _mm256_add_epi32(_mm256_unpacklo_epi64(ab, cd), _mm256_unpackhi_epi64(ab, cd)) }
}

/// VNNI version of `q8_0::dot_q8_0_rows_int8_scalar` (Q8_0 weight rows of
/// a GGUF against activations in Q8_0 blocks), bit-identical to it, for
/// [`Q8_0Tiles::Vnni`] activations: sixteen activation rows per vector (one
/// per i32 lane, their values plus 128 in `ActQ8_0`'s tile order), each
/// weight row's four values of a quad broadcast from the file, so a block of
/// one weight row against 16 activation rows is eight `vpdpbusd`. Each
/// block's sums start from `-128 * sum(w)` (the weights' own block sum, taken
/// once per group of rows), which takes the `+ 128` back off exactly. Eight
/// weight rows at a time, their f32 sums in registers.
///
/// # Safety
/// AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI; the bounds
/// `kernels::dot_q8_0_rows_int8` checks, and `act.tiles` laid out by
/// `ActQ8_0::quantize` for `act.m` rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_q8_0_rows_int8_vnni(act: Q8_0Acts, rows: &[u8], out_t: &mut [f32]) {
    let (m, k) = (act.m, act.k);
    let blocks = k / 32;
    let row_bytes = blocks * Q8_0_BLOCK_BYTES;
    let nrows = out_t.len() / m;
    let tiles = m.div_ceil(ROW_PAD);
    assert!(rows.len() >= nrows * row_bytes && blocks > 0);
    assert!(
        act.tiles.len() >= tiles * blocks * 512 && act.tile_s.len() >= tiles * blocks * ROW_PAD
    );
    assert_eq!(
        act.layout,
        Q8_0Tiles::Vnni,
        "activations not laid out for VNNI"
    );
    // Per block and weight row of a group: d_w as f32, -128 * sum(w).
    let mut dw = vec![0f32; blocks * 8];
    let mut corr = vec![0i32; blocks * 8];
    let mut c = 0;
    while c < nrows {
        let r = (nrows - c).min(8);
        let group = &rows[c * row_bytes..(c + r) * row_bytes];
        let wp = group_rows::<8>(group, r, row_bytes);
        for (u, row) in group.chunks_exact(row_bytes).enumerate() {
            for (b, block) in row.chunks_exact(Q8_0_BLOCK_BYTES).enumerate() {
                dw[b * 8 + u] = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                // SAFETY: the block's 32 values follow its 2-byte scale.
                corr[b * 8 + u] = -128 * unsafe { block_sum(block.as_ptr().add(2)) };
            }
        }
        // The next group, prefetched over the first tile's blocks (as the
        // AVX2 kernel does).
        let next = &rows[(c + r) * row_bytes..(c + r + 8).min(nrows) * row_bytes];
        let lines = next.len().div_ceil(64);
        let per_block = lines.div_ceil(blocks);
        for t in 0..tiles {
            let xt = act.tiles[t * blocks * 512..(t + 1) * blocks * 512].as_ptr() as *const __m512i;
            let st = &act.tile_s[t * blocks * ROW_PAD..(t + 1) * blocks * ROW_PAD];
            let mut f = [_mm512_setzero_ps(); 8];
            for b in 0..blocks {
                if t == 0 {
                    for l in b * per_block..((b + 1) * per_block).min(lines) {
                        // SAFETY: the line starts inside `next`.
                        unsafe {
                            _mm_prefetch(next.as_ptr().add(64 * l) as *const i8, _MM_HINT_T0)
                        };
                    }
                }
                // SAFETY: block b of the tile is 8 vectors inside act.tiles
                // (asserted above); each weight row's block b is inside its
                // row, its values 2 bytes in.
                unsafe {
                    let x: [__m512i; 8] =
                        std::array::from_fn(|qd| _mm512_loadu_si512(xt.add(b * 8 + qd)));
                    let dx = _mm512_loadu_ps(st[b * ROW_PAD..].as_ptr());
                    for (u, fu) in f.iter_mut().enumerate() {
                        let w = wp[u].add(b * Q8_0_BLOCK_BYTES + 2) as *const i32;
                        let mut sum = _mm512_set1_epi32(corr[b * 8 + u]);
                        for (qd, &xq) in x.iter().enumerate() {
                            sum = _mm512_dpbusd_epi32(
                                sum,
                                xq,
                                _mm512_set1_epi32(w.add(qd).read_unaligned()),
                            );
                        }
                        // d_w * d_x rounded once, as the scalar kernel does.
                        let d = _mm512_mul_ps(_mm512_set1_ps(dw[b * 8 + u]), dx);
                        *fu = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), d, *fu);
                    }
                }
            }
            store_tile_rows(&f[..r], out_t, c, m, t * ROW_PAD);
        }
        c += r;
    }
}

/// Writes `f[u]` (weight row `c + u`'s sums for activation rows `i0 ..
/// i0 + 16`) into `out_t` (`[weight row][m]`), the lanes past `m` left out:
/// how the Q8_0 tile kernels (VNNI and AMX) hand back a tile.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) fn store_tile_rows(f: &[__m512], out_t: &mut [f32], c: usize, m: usize, i0: usize) {
    let live = (m - i0).min(16);
    let mask: __mmask16 = if live == 16 { !0 } else { (1u16 << live) - 1 };
    for (u, fu) in f.iter().enumerate() {
        let at = (c + u) * m + i0;
        assert!(at + live <= out_t.len());
        // SAFETY: the `live` lanes stored are inside out_t (asserted).
        unsafe { _mm512_mask_storeu_ps(out_t.as_mut_ptr().add(at), mask, *fu) };
    }
}

/// The sum of the 32 signed bytes at `p`.
///
/// # Safety
/// AVX2; 32 readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn block_sum(p: *const u8) -> i32 {
    // SAFETY: the caller's.
    let v = unsafe { _mm256_loadu_si256(p as *const __m256i) };
    // |w + 128| summed by sad (each 8 bytes into a u64), then 32 * 128 off.
    let sad = _mm256_sad_epu8(
        _mm256_xor_si256(v, _mm256_set1_epi8(-128)),
        _mm256_setzero_si256(),
    );
    let s = _mm_add_epi64(
        _mm256_castsi256_si128(sad),
        _mm256_extracti128_si256::<1>(sad),
    );
    (_mm_cvtsi128_si64(s) + _mm_extract_epi64::<1>(s)) as i32 - 32 * 128
}
