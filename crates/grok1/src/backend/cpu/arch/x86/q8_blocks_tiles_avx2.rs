//! GGUF's K-quant and legacy rows against activations quantised per block,
//! AVX2 tiles for many activation rows (prompt processing on CPUs without
//! AVX-512 VNNI), bit-identical to `q8_blocks::dot_rows_q8_scalar`.
//!
//! The same scheme as the VNNI tiles (`q8_blocks_vnni`): each group of
//! eight weight rows is unpacked once into their unsigned codes and integer
//! scales (`Unpacked`), then the activations pass over it in tiles
//! (`ActTiles`, here without the 128 added: one activation row's quad of
//! four values per i32 lane, eight rows per vector), a weight row's quad of
//! codes broadcast per `maddubs` (codes the unsigned side, activations the
//! signed one: no saturation for codes below 128). `maddubs` leaves each
//! row's sums in two i16 lanes; several are added there before one `madd`
//! with the sub-block's scale widens them to i32 (as many as the type's
//! largest code allows: `TileBlock::CODE_MAX`), so that most of the work
//! is one `maddubs` and one i16 add per 32 products, where the row-wise
//! kernel (`q8_blocks_i8`) spends a `maddubs`, a `madd` and an add, and a
//! transpose of every block's sums. The activations' sums of 16 take the
//! offsets and mins (`madd`). The i-quants' signed levels become codes by
//! a bias (`TileBlock::LEVEL_BIAS`), taken back off with the sums of 16 as
//! an offset is; IQ4's biased levels reach 241, so they are multiplied as
//! two nibbles, the high one with 16 times the scale. The integers are
//! exact, and each block's f32 work is the scalar kernel's: `acc =
//! fma(f32(a), sa * dx, acc)`, then `acc = fma(f32(b), sb * dx, acc)`.

use std::arch::x86_64::*;

use super::q8_blocks_vnni::{TileShape, Unpacked, VnniBlock, GROUP};
use crate::backend::cpu::common::{Aligned, ROW_PAD};
use crate::backend::cpu::types::q8_blocks::{ActQ8Rows, BSUM_VALUES};

/// Weight rows per pass over a tile's half: their i32, i16 and f32 sums
/// stay in the sixteen vector registers.
const ROWS: usize = 4;
/// Activation rows per vector (i32 lanes).
const LANES: usize = 8;

/// AVX2 tile version of `q8_blocks::dot_rows_q8_scalar`, bit-identical to
/// it (the module's description), for activations with tiles stored as
/// they are (`ActTiles::plus_128` false) and types whose codes are
/// unsigned.
///
/// # Safety
/// AVX2, FMA and F16C; the bounds `kernels::dot_rows_q8` checks, and
/// `act.tiles` made by `ActQ8::quantize` for these `act.m` rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows_q8_tiles_avx2<T: VnniBlock>(act: ActQ8Rows, rows: &[u8], out_t: &mut [f32]) {
    let (m, k) = (act.m, act.k);
    let tiles = act
        .tiles
        .expect("dot_rows_q8_tiles_avx2: activations without tiles");
    assert!(
        !tiles.plus_128 && (!T::SIGNED_CODES || T::LEVEL_BIAS > 0),
        "dot_rows_q8_tiles_avx2: signed activations, and unsigned codes or biased levels only"
    );
    let TileShape {
        blocks,
        nsub,
        pairs,
        quads,
        row_bytes,
        nrows,
        ntiles,
    } = TileShape::checked::<T>(&act, tiles, rows, out_t.len());
    // maddubs of codes up to CODE_MAX against |x| <= 127 is at most
    // 2 * 127 * CODE_MAX in each i16 lane: this many fit before widening.
    // Codes past 127 (IQ4's biased levels) are split into their nibbles,
    // each multiplied on its own (`bias_levels`).
    let split = T::CODE_MAX > 127;
    let code_max = if split {
        15
    } else {
        usize::from(T::CODE_MAX) >> T::LEVEL_SHIFT
    };
    let run = (i16::MAX as usize / (2 * 127 * code_max)).max(1);
    let sub_quads = T::SUB / 4;
    let mut w = Unpacked::<GROUP>::new::<T>(k);
    let mut high = Aligned::<i8>::zeros(if split { GROUP * k } else { 0 });
    let mut c = 0;
    while c < nrows {
        let r = (nrows - c).min(GROUP);
        // SAFETY: rows c..c + r exist (asserted above).
        unsafe { w.fill::<T, false>(&rows[c * row_bytes..(c + r) * row_bytes], r, row_bytes, k) };
        if T::SIGNED_CODES {
            bias_levels::<T>(&mut w, high.as_mut_slice());
        }
        let codes = w.codes.as_ptr();
        let codes_high = high.as_ptr();
        for half in 0..2 * ntiles {
            let (t, h) = (half / 2, half % 2);
            let i0 = t * ROW_PAD + h * LANES;
            if i0 >= m {
                break;
            }
            for u0 in (0..r).step_by(ROWS) {
                let mut f = [_mm256_setzero_ps(); ROWS];
                for b in 0..blocks {
                    let tb = t * blocks + b;
                    // SAFETY: tile t's block b is `quads` quads of 64 bytes
                    // inside tiles.q, this half the 32 bytes at h * 32 of
                    // each; its scales and sums inside tiles.d and tiles.bs
                    // (asserted above); rows u0..u0 + ROWS of the group
                    // (GROUP >= u0 + ROWS: lanes past r repeat row r - 1)
                    // have their codes of block b inside w.codes and their
                    // scales inside w's vectors (made for k).
                    unsafe {
                        let xt = tiles.q.as_ptr().add(tb * quads * 64 + h * 32);
                        let dx = _mm256_loadu_ps(tiles.d.as_ptr().add(tb * ROW_PAD + h * LANES));
                        let mut a = [_mm256_setzero_si256(); ROWS];
                        for j in 0..nsub {
                            let at = (b * nsub + j) * GROUP + u0;
                            let mut scale = [_mm256_setzero_si256(); ROWS];
                            for (u, scale) in scale.iter_mut().enumerate() {
                                // Sub-block scales are 8-bit in every format.
                                *scale = _mm256_set1_epi16(w.sc[at + u] as i16);
                            }
                            let mut g0 = 0;
                            while g0 < sub_quads {
                                let quads = g0..(g0 + run).min(sub_quads);
                                let at = (u0, b * T::VALUES + 4 * j * sub_quads);
                                let first = j * sub_quads;
                                let s = sub_sums::<ROWS>(codes, k, at, xt, first, quads.clone());
                                for ((a, s), scale) in a.iter_mut().zip(s).zip(scale) {
                                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(s, scale));
                                }
                                if split {
                                    // The high nibbles weigh 16 (|16 sc| <= 512).
                                    let s = sub_sums::<ROWS>(codes_high, k, at, xt, first, quads);
                                    for ((a, s), scale) in a.iter_mut().zip(s).zip(scale) {
                                        let scale = _mm256_slli_epi16::<4>(scale);
                                        *a = _mm256_add_epi32(*a, _mm256_madd_epi16(s, scale));
                                    }
                                }
                                g0 += run;
                            }
                        }
                        let bs = tiles.bs.as_ptr().add(tb * pairs * ROW_PAD + h * LANES);
                        if T::HAS_CA || T::SIGNED_CODES {
                            add_sum_terms(&mut a, bs, &w.ca[b * pairs * GROUP + u0..], pairs);
                        }
                        for (u, (f, a)) in f.iter_mut().zip(a).enumerate() {
                            // sa * dx rounded once per row, as the scalar kernel does.
                            let d = _mm256_mul_ps(_mm256_set1_ps(w.sa[b * GROUP + u0 + u]), dx);
                            *f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), d, *f);
                        }
                        if T::HAS_B {
                            let mut bb = [_mm256_setzero_si256(); ROWS];
                            add_sum_terms(&mut bb, bs, &w.cb[b * pairs * GROUP + u0..], pairs);
                            for (u, (f, bb)) in f.iter_mut().zip(bb).enumerate() {
                                let d = _mm256_mul_ps(_mm256_set1_ps(w.sb[b * GROUP + u0 + u]), dx);
                                *f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(bb), d, *f);
                            }
                        }
                    }
                }
                store_rows(&f[..ROWS.min(r - u0)], out_t, c + u0, m, i0);
            }
        }
        c += r;
    }
}

/// `acc[u] += sum_p madd(sums of 16 pair p, coef[p * GROUP + u])`: the terms
/// of a block's `a` or `b` in the activations' sums of 16 (`bs`: the
/// half tile's pairs, `ROW_PAD` apart), for `ROWS` weight rows whose i16
/// coefficient pairs start at `coef` (`[pair][GROUP]`).
///
/// # Safety
/// AVX2 (inlined into an AVX2 function); `pairs` vectors of 8 i32 readable
/// at `bs`, `ROW_PAD` apart.
#[inline(always)]
unsafe fn add_sum_terms(acc: &mut [__m256i; ROWS], bs: *const i32, coef: &[i32], pairs: usize) {
    // SAFETY: the caller's.
    unsafe {
        for p in 0..pairs {
            let v = _mm256_loadu_si256(bs.add(p * ROW_PAD) as *const __m256i);
            for (u, acc) in acc.iter_mut().enumerate() {
                let c = _mm256_set1_epi32(coef[p * GROUP + u]);
                *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(v, c));
            }
        }
    }
}

/// The i16 sums of `maddubs(code quad, activation quad)` over quads
/// `quads` (counted from `first`, the sub-block's first quad in the block)
/// for the unpacked rows `at.0..at.0 + R` (codes from value `at.1` of each
/// row of `k` in `codes`) against one half of a tile at `xt` (quads 64
/// bytes apart).
///
/// # Safety
/// AVX2 (inlined into an AVX2 function); those codes and quads readable,
/// the quads 32-byte aligned.
#[inline(always)]
unsafe fn sub_sums<const R: usize>(
    codes: *const i8,
    k: usize,
    at: (usize, usize),
    xt: *const i8,
    first: usize,
    quads: std::ops::Range<usize>,
) -> [__m256i; R] {
    // SAFETY: the caller's.
    unsafe {
        let mut s = [_mm256_setzero_si256(); R];
        for g in quads {
            let x = _mm256_load_si256(xt.add((first + g) * 64) as *const __m256i);
            for (u, s) in s.iter_mut().enumerate() {
                let q = codes.add((at.0 + u) * k + at.1 + 4 * g);
                let q = _mm256_set1_epi32((q as *const i32).read_unaligned());
                *s = _mm256_add_epi16(*s, _mm256_maddubs_epi16(q, x));
            }
        }
        s
    }
}

/// The signed levels of an unpacked group as codes: `level + LEVEL_BIAS`
/// (in `0..=CODE_MAX`), and `-LEVEL_BIAS` times each sub-block's scale added
/// to the `ca` of its sums of 16, which takes the bias back off exactly.
/// Codes that may pass 127 (`CODE_MAX`) are split: their low nibbles stay in
/// `w.codes`, their high ones go to `high` (a `GROUP * k` buffer).
fn bias_levels<T: VnniBlock>(w: &mut Unpacked<GROUP>, high: &mut [i8]) {
    // Levels that are all multiples of 2^shift (`TileBlock::LEVEL_SHIFT`)
    // become `(level >> shift) + (bias >> shift)` against `sc << shift`: the
    // same products; the bias below is taken off with the larger scales.
    let (bias, shift) = (T::LEVEL_BIAS >> T::LEVEL_SHIFT, T::LEVEL_SHIFT);
    let code = |level: i8| {
        debug_assert!(
            level % (1 << shift) == 0,
            "level {level} not a multiple of 2^{shift}"
        );
        ((level >> shift) as u8).wrapping_add(bias)
    };
    if T::CODE_MAX > 127 {
        for (c, h) in w.codes.as_mut_slice().iter_mut().zip(high) {
            let code = code(*c);
            (*c, *h) = ((code & 15) as i8, (code >> 4) as i8);
        }
    } else {
        for c in w.codes.as_mut_slice() {
            *c = code(*c) as i8;
        }
    }
    if shift > 0 {
        for sc in &mut w.sc {
            *sc <<= shift;
        }
    }
    let (nsub, pairs) = (T::VALUES / T::SUB, T::VALUES / 32);
    let sums_per_sub = T::SUB / BSUM_VALUES;
    for (i, ca) in w.ca.iter_mut().enumerate() {
        let (u, bp) = (i % GROUP, i / GROUP);
        let (b, p) = (bp / pairs, bp % pairs);
        let pair = *ca as u32;
        let half = |h: usize| {
            // Sum of 16 number 2p + h of the block, in sub-block j.
            let j = (2 * p + h) / sums_per_sub;
            let sc = w.sc[(b * nsub + j) * GROUP + u];
            let old = (pair >> (16 * h)) as u16 as i16;
            let new = i32::from(old) - i32::from(bias) * sc;
            // |sc| <= 32 for every i-quant, bias <= 128 (with a level shift
            // the scale doubled and the bias halved): within i16.
            debug_assert!(i16::try_from(new).is_ok(), "biased ca {new} past i16");
            new as i16 as u16 as u32
        };
        *ca = (half(0) | (half(1) << 16)) as i32;
    }
}

/// Writes `f[u]` (weight row `c + u`'s sums for activation rows `i0 .. i0 +
/// 8`) into `out_t` (`[weight row][m]`), the lanes past `m` left out.
#[inline]
#[target_feature(enable = "avx2")]
fn store_rows(f: &[__m256], out_t: &mut [f32], c: usize, m: usize, i0: usize) {
    let live = (m - i0).min(LANES);
    for (u, fu) in f.iter().enumerate() {
        let at = (c + u) * m + i0;
        let dst = &mut out_t[at..at + live];
        if live == LANES {
            // SAFETY: 8 floats at dst (its length).
            unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), *fu) };
        } else {
            let mut lanes = [0f32; LANES];
            // SAFETY: 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *fu) };
            dst.copy_from_slice(&lanes[..live]);
        }
    }
}
