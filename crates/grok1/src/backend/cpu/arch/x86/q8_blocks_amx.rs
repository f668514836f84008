//! GGUF's K-quant, legacy and i-quant rows against activations quantised
//! per block, on the AMX tile unit for many activation rows (prompt
//! processing), bit-identical to `q8_blocks::dot_rows_q8_scalar`.
//!
//! A block's integer `a` is `sum_j sc_j * sum(code * x over sub-block j) +
//! sum_i ca_i * bsum_i`: per value, `(sc * code + ca) * x`, with `sc` its
//! sub-block's scale and `ca` its sum of 16's coefficient. So the unpacking
//! (`fill_digits`) multiplies each weight value out to `v = sc * code + ca`
//! once, and the tile unit then sums `v * x` over a whole block at its full
//! depth of 64 values per `tdpbssd`, with no per-sub-block work: where every
//! `v` fits a signed byte (`TileBlock::CODE_SCALE_MAX`: Q2_K, the legacy
//! types, IQ4_NL) it is the left tile itself; else (up to 8191) it is split
//! into two digits, `v = 64 hi + lo` with `lo` in `0..64` and `hi` a signed
//! byte, each multiplied into its own accumulator tile, and `a = 64 A_hi +
//! A_lo` exactly. (The VNNI tiles instead multiply each sub-block's codes
//! and fold its sums with its scale: a `vpmulld` per sub-block and tile
//! row, which on the sub-blocks of 16 cost as much as the multiplies.)
//!
//! Sixteen weight rows' digits, `[16][k]` bytes, are the left tiles as they
//! lie (16 rows of 64 values, `k` apart); the activation tile's quads of the
//! same 64 values (`ActTiles` without the 128) the right one. A block's sums
//! go into one of two accumulator pairs; they are stored after the next
//! block's multiplies are issued and read one block after that (two
//! buffers), so the tile unit works while the block before is folded: `a`,
//! then the `b` terms (`cb`, the mins) and the f32 work per block as the
//! VNNI kernel does them (`Unpacked::finish_block`): `acc = fma(f32(a), sa *
//! dx, acc)`, then `acc = fma(f32(b), sb * dx, acc)`.

use std::arch::asm;
use std::arch::x86_64::*;

use super::amx::{multiply_digits, permitted, store_digit_sums, Sums, TileConfig, TILE_M};
use super::q8_0_i8::store_tile_rows;
use super::q8_blocks_i8::{dot_rows_q8_avx2, Avx2Block, WHOLE_MAX_VALUES_AMX};
use super::q8_blocks_vnni::{TileShape, Unpacked, VnniBlock};
use crate::backend::cpu::common::{Aligned, ROW_PAD};
use crate::backend::cpu::types::q8_blocks::{i16_pair, ActQ8Rows, TileBlock, BSUM_VALUES};

/// Weight rows per group: the left tiles' rows.
const GROUP: usize = TILE_M;

/// Whether `T`'s values `sc * code + ca` take two digits.
const fn two_digits<T: TileBlock>() -> bool {
    T::CODE_SCALE_MAX > 127
}

/// Values per tile product: 64, or a whole block where blocks are smaller.
const fn depth<T: TileBlock>() -> usize {
    if T::VALUES < 64 {
        T::VALUES
    } else {
        64
    }
}

/// The `b` terms' pairs per block, and the sums of 16 each of a pair's two
/// halves spans: pairs of sums of 32 where `cb` is the same over each 32
/// values (`TileBlock::CB_PER_32`: half the products), else of 16.
const fn b_pairs<T: TileBlock>() -> (usize, usize) {
    if T::CB_PER_32 && T::VALUES.is_multiple_of(64) {
        (T::VALUES / 64, 2)
    } else {
        (T::VALUES / 32, 1)
    }
}

/// Word indices for `vpermw` over a block's scales and coefficients: in the
/// chunk of 64 values `c`, each 128-bit lane of the unpacked words holds 16
/// values, one sum of 16 (`4 c + lane`), whose sub-block's scale is word `2
/// j` of the i32 scales and whose `ca` is word `4 c + lane` of the i16 ones.
fn lane_indices<T: TileBlock>(c: usize) -> ([i16; 32], [i16; 32]) {
    (
        std::array::from_fn(|w| {
            let sum16 = 4 * c + w / 8;
            (2 * (sum16 * BSUM_VALUES / T::SUB).min(15)) as i16
        }),
        std::array::from_fn(|w| (4 * c + w / 8).min(15) as i16),
    )
}

/// 64 codes at `src` (value order) to their `v = sc * code + ca`: one
/// signed byte each at `lo`, or where `two` the low digits at `lo` and the
/// high ones at `hi`. The codes are widened to words in each 128-bit lane
/// (`vpunpck*bw`) and packed back the same way, so they stay in value order.
///
/// # Safety
/// AVX-512 F/BW (inlined into such a function); 64 bytes at `src`, `lo` and
/// (where `two`) `hi`.
#[inline(always)]
unsafe fn digits_64<T: TileBlock>(
    src: *const u8,
    (scv, cav): (__m512i, __m512i),
    (isc, ica): (__m512i, __m512i),
    two: bool,
    lo: *mut i8,
    hi: *mut i8,
) {
    // SAFETY: the caller's.
    unsafe {
        let x = _mm512_loadu_si512(src as *const __m512i);
        let (wl, wh) = if T::SIGNED_CODES {
            // Each byte in both halves of a word, shifted down with its sign.
            (
                _mm512_srai_epi16::<8>(_mm512_unpacklo_epi8(x, x)),
                _mm512_srai_epi16::<8>(_mm512_unpackhi_epi8(x, x)),
            )
        } else {
            let z = _mm512_setzero_si512();
            (_mm512_unpacklo_epi8(x, z), _mm512_unpackhi_epi8(x, z))
        };
        let s = _mm512_permutexvar_epi16(isc, scv);
        let o = _mm512_permutexvar_epi16(ica, cav);
        let vl = _mm512_add_epi16(_mm512_mullo_epi16(wl, s), o);
        let vh = _mm512_add_epi16(_mm512_mullo_epi16(wh, s), o);
        if two {
            let m = _mm512_set1_epi16(63);
            let l = _mm512_packs_epi16(_mm512_and_si512(vl, m), _mm512_and_si512(vh, m));
            let h = _mm512_packs_epi16(_mm512_srai_epi16::<6>(vl), _mm512_srai_epi16::<6>(vh));
            _mm512_storeu_si512(lo as *mut __m512i, l);
            _mm512_storeu_si512(hi as *mut __m512i, h);
        } else {
            _mm512_storeu_si512(lo as *mut __m512i, _mm512_packs_epi16(vl, vh));
        }
    }
}

/// [`digits_64`] on a block of 32 values (the legacy types and IQ4_NL),
/// whose scale and coefficients are words 0 and 0..2 of `scv` and `cav`.
/// (`digits_64` with a masked load and stores did these blocks 8-10%
/// slower: `kernel_bench` Q4_0 and IQ4_NL at m = 32.)
///
/// # Safety
/// AVX-512 F/BW/VL (inlined into such a function); 32 bytes at `src`, `lo`
/// and (where `two`) `hi`.
#[inline(always)]
unsafe fn digits_32<T: TileBlock>(
    src: *const u8,
    (scv, cav): (__m512i, __m512i),
    (isc, ica): (__m512i, __m512i),
    two: bool,
    lo: *mut i8,
    hi: *mut i8,
) {
    // SAFETY: the caller's.
    unsafe {
        let x = _mm256_loadu_si256(src as *const __m256i);
        let (wl, wh) = if T::SIGNED_CODES {
            (
                _mm256_srai_epi16::<8>(_mm256_unpacklo_epi8(x, x)),
                _mm256_srai_epi16::<8>(_mm256_unpackhi_epi8(x, x)),
            )
        } else {
            let z = _mm256_setzero_si256();
            (_mm256_unpacklo_epi8(x, z), _mm256_unpackhi_epi8(x, z))
        };
        let word = |i: __m512i, v: __m512i| _mm512_castsi512_si256(_mm512_permutexvar_epi16(i, v));
        let (s, o) = (word(isc, scv), word(ica, cav));
        let vl = _mm256_add_epi16(_mm256_mullo_epi16(wl, s), o);
        let vh = _mm256_add_epi16(_mm256_mullo_epi16(wh, s), o);
        if two {
            let m = _mm256_set1_epi16(63);
            let l = _mm256_packs_epi16(_mm256_and_si256(vl, m), _mm256_and_si256(vh, m));
            let h = _mm256_packs_epi16(_mm256_srai_epi16::<6>(vl), _mm256_srai_epi16::<6>(vh));
            _mm256_storeu_si256(lo as *mut __m256i, l);
            _mm256_storeu_si256(hi as *mut __m256i, h);
        } else {
            _mm256_storeu_si256(lo as *mut __m256i, _mm256_packs_epi16(vl, vh));
        }
    }
}

impl Unpacked<GROUP> {
    /// Unpacks weight rows `0..r` of `rows` (`row_bytes` apart; rows from
    /// `r` on repeat the last one) into each value's `v = sc * code + ca`
    /// (`codes`, or where it takes two digits their low ones there and the
    /// high ones in `hi`), and the blocks' `cb` pairs and f32 scales.
    ///
    /// # Safety
    /// AVX2, FMA, F16C and AVX-512 F/BW/VL; `rows` holds `r` rows of `k /
    /// VALUES` blocks, `1 <= r <= 16`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    unsafe fn fill_digits<T: VnniBlock>(
        &mut self,
        rows: &[u8],
        r: usize,
        row_bytes: usize,
        k: usize,
    ) {
        let blocks = k / T::VALUES;
        let (nsub, sums16) = (T::VALUES / T::SUB, T::VALUES / BSUM_VALUES);
        let two = two_digits::<T>();
        assert!((1..=GROUP).contains(&r) && rows.len() >= r * row_bytes);
        assert!(row_bytes >= blocks * T::BYTES && self.codes.len() >= GROUP * k);
        assert!(!two || self.hi.len() >= GROUP * k);
        assert!(
            (T::VALUES == 32 || T::VALUES.is_multiple_of(64))
                && T::VALUES <= 256
                && T::SUB.is_multiple_of(BSUM_VALUES)
                && nsub <= 16,
            "fill_digits: blocks the digits cannot take"
        );
        #[repr(C, align(64))]
        struct Codes([u8; 256]);
        let mut buf = Codes([0; 256]);
        let mut sc = [0i32; 16];
        let (mut ca, mut cb) = ([0i16; 32], [0i16; 16]);
        let idx: [(__m512i, __m512i); 4] = std::array::from_fn(|c| {
            let (sc, ca) = lane_indices::<T>(c);
            // SAFETY: 64 bytes each; AVX-512 F is this function's.
            unsafe {
                (
                    _mm512_loadu_si512(sc.as_ptr() as *const __m512i),
                    _mm512_loadu_si512(ca.as_ptr() as *const __m512i),
                )
            }
        });
        let lo = self.codes.as_mut_slice().as_mut_ptr();
        let hi = if two {
            self.hi.as_mut_slice().as_mut_ptr()
        } else {
            lo
        };
        for u in 0..GROUP {
            let row = &rows[u.min(r - 1) * row_bytes..][..blocks * T::BYTES];
            for (b, block) in row.chunks_exact(T::BYTES).enumerate() {
                // SAFETY: a whole block in, VALUES bytes out.
                unsafe { T::codes_simd(block.as_ptr(), buf.0.as_mut_ptr()) };
                T::tile_scales(block, &mut sc[..nsub], &mut ca[..sums16], &mut cb[..sums16]);
                let at = u * k + b * T::VALUES;
                // SAFETY: `sc` is 16 i32 and `ca` 32 i16 (64 bytes each);
                // the block's VALUES codes are in `buf`, and its VALUES bytes
                // at `at` inside `codes` and `hi` (asserted above).
                unsafe {
                    let vs = (
                        _mm512_loadu_si512(sc.as_ptr() as *const __m512i),
                        _mm512_loadu_si512(ca.as_ptr() as *const __m512i),
                    );
                    if T::VALUES == 32 {
                        digits_32::<T>(buf.0.as_ptr(), vs, idx[0], two, lo.add(at), hi.add(at));
                    } else {
                        for (c, &idx) in idx.iter().enumerate().take(T::VALUES / 64) {
                            let o = at + 64 * c;
                            digits_64::<T>(
                                buf.0.as_ptr().add(64 * c),
                                vs,
                                idx,
                                two,
                                lo.add(o),
                                hi.add(o),
                            );
                        }
                    }
                }
                if T::HAS_B {
                    // Pairs of sums of 16's cb, or where it is the same
                    // over each 32 values pairs of sums of 32's (`b_pairs`).
                    let (n, step) = b_pairs::<T>();
                    for p in 0..n {
                        let pair = i16_pair(cb[2 * step * p], cb[2 * step * p + step]);
                        self.cb[(b * n + p) * GROUP + u] = pair;
                    }
                }
                let (sa, sb) = T::scales(block);
                self.sa[b * GROUP + u] = sa;
                self.sb[b * GROUP + u] = sb;
            }
        }
    }
}

/// AMX version of `q8_blocks::dot_rows_q8_scalar`, bit-identical to it (the
/// module's description), for activations with tiles stored as they are
/// (not plus 128); a thread refused the tile data takes the row-wise AVX2
/// kernel.
///
/// # Safety
/// AVX2, FMA, F16C, AVX-512 F/BW/VL/VNNI and AMX-TILE/INT8 (`amx::available`);
/// the bounds `kernels::dot_rows_q8` checks, and `act.tiles` made by
/// `ActQ8::quantize` for these `act.m` rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_rows_q8_amx<T: VnniBlock + Avx2Block>(
    act: ActQ8Rows,
    rows: &[u8],
    out_t: &mut [f32],
) {
    let (m, k) = (act.m, act.k);
    let tiles = act
        .tiles
        .expect("dot_rows_q8_amx: activations without tiles");
    assert!(
        !tiles.plus_128,
        "dot_rows_q8_amx: activations stored plus 128"
    );
    if !permitted() {
        // SAFETY: the caller's bounds and features (AVX2, FMA, F16C).
        return unsafe { dot_rows_q8_avx2::<T>(act, rows, out_t, WHOLE_MAX_VALUES_AMX) };
    }
    let TileShape {
        blocks,
        pairs,
        quads,
        row_bytes,
        nrows,
        ntiles,
        ..
    } = TileShape::checked::<T>(&act, tiles, rows, out_t.len());
    let (depth, two) = (depth::<T>(), two_digits::<T>());
    let (n, step) = b_pairs::<T>();
    assert!(
        step == 1 || tiles.bs32.len() >= ntiles * blocks * n * ROW_PAD,
        "dot_rows_q8_amx: activation tiles without sums of 32"
    );
    assert!(
        T::CODE_SCALE_MAX <= 8191 && T::VALUES.is_multiple_of(depth),
        "dot_rows_q8_amx: values the digits cannot take"
    );
    assert_eq!(ROW_PAD, TILE_M, "an activation tile is a tile's 16 rows");
    let config = TileConfig::with_depth(depth);
    // SAFETY: a valid palette-1 layout, and this thread may use the tile
    // data (`permitted`).
    unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
    let mut w = Unpacked::<GROUP>::new::<T>(k);
    if two {
        w.hi = Aligned::zeros(GROUP * k);
    }
    let zero = || Sums([[0; 16]; TILE_M]);
    // [buffer][digit]: block b's sums are stored into buffer b % 2 while
    // those of block b - 1, stored a block earlier, are read from the other.
    let mut sums = [[zero(), zero()], [zero(), zero()]];
    let mut c = 0;
    while c < nrows {
        let r = (nrows - c).min(GROUP);
        // SAFETY: rows c..c + r exist (TileShape::checked); the features
        // are this function's.
        unsafe { w.fill_digits::<T>(&rows[c * row_bytes..(c + r) * row_bytes], r, row_bytes, k) };
        let (lo, hi) = (w.codes.as_ptr(), w.hi.as_ptr());
        // The next group's rows, prefetched over this one's passes, as the
        // VNNI kernel does, but into L2: a burst into L1 held the core
        // waiting for fill buffers (kernel_bench m=32: 3-8% slower than
        // into L2; spread over the blocks' folds it was slower still).
        let next = &rows[(c + r) * row_bytes..(c + r + GROUP).min(nrows) * row_bytes];
        let lines = next.len().div_ceil(64);
        let per_block = lines.div_ceil(ntiles * blocks);
        for t in 0..ntiles {
            let mut f = [_mm512_setzero_ps(); GROUP];
            for s in 0..blocks + 2 {
                if s < blocks {
                    let tb = t * blocks + s;
                    for l in tb * per_block..((tb + 1) * per_block).min(lines) {
                        // SAFETY: the line starts inside `next`.
                        unsafe {
                            _mm_prefetch(next.as_ptr().add(64 * l) as *const i8, _MM_HINT_T1)
                        };
                    }
                    let x = tiles.q.as_ptr().wrapping_add(tb * quads * 64) as *const u8;
                    for j in 0..T::VALUES / depth {
                        let o = s * T::VALUES + j * depth;
                        // SAFETY: the 16 rows' digits of these `depth`
                        // values (k apart) are inside w.codes and w.hi
                        // (made for k), and tile t's quads of them
                        // (`depth / 4` rows of 64 bytes) inside tiles.q
                        // (TileShape::checked); the tiles are configured.
                        unsafe {
                            multiply_digits(
                                s,
                                j == 0,
                                two,
                                (lo.add(o), if two { hi.add(o) } else { lo }),
                                k,
                                x.add(j * depth / 4 * 64),
                            )
                        };
                    }
                }
                if (1..=blocks).contains(&s) {
                    // SAFETY: each of `sums` holds 16 rows of 64 bytes; the
                    // tiles are configured.
                    unsafe { store_digit_sums(s - 1, two, &mut sums[(s - 1) % 2]) };
                }
                if s < 2 {
                    continue;
                }
                let b = s - 2;
                let sums = &sums[b % 2];
                // SAFETY: a row of `sums` is 16 i32.
                let mut a: [__m512i; GROUP] = std::array::from_fn(|u| unsafe {
                    let l = _mm512_loadu_si512(sums[0].0[u].as_ptr() as *const __m512i);
                    if two {
                        let h = _mm512_loadu_si512(sums[1].0[u].as_ptr() as *const __m512i);
                        _mm512_add_epi32(_mm512_slli_epi32::<6>(h), l)
                    } else {
                        l
                    }
                });
                // SAFETY: tile t's scales and pairs of block b are inside
                // tiles.d and tiles.bs (or bs32, asserted above), block b
                // inside w (TileShape::checked).
                let tb = t * blocks + b;
                let pairs_of = if step == 2 { &tiles.bs32 } else { &tiles.bs };
                unsafe {
                    let b_sums = (pairs_of.as_ptr().add(tb * n * ROW_PAD), n);
                    w.finish_block::<T>(tiles, (tb, b, pairs), false, b_sums, &mut a, &mut f)
                };
            }
            store_tile_rows(&f[..r], out_t, c, m, t * ROW_PAD);
        }
        c += r;
    }
    // SAFETY: AMX-TILE is present; releasing leaves the thread without tile state.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}
