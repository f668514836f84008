//! GGUF's K-quant and legacy rows against activations quantised per block,
//! AVX-512 VNNI tiles for many activation rows (prompt processing),
//! bit-identical to `q8_blocks::dot_rows_q8_scalar`.
//!
//! Each group of eight weight rows is unpacked once into their codes in
//! value order (`TileBlock`, signed bytes: every code is below 128, or is
//! a signed level of the i-quants, `TileBlock::SIGNED_CODES`) and
//! their integer scales; then every tile of sixteen activation rows
//! (`ActTiles`: one row per i32 lane, values plus 128) passes over it, a
//! quad of four codes broadcast per `vpdpbusd`, so a block of one weight row
//! against sixteen activation rows is `VALUES / 4` instructions. A
//! sub-block's sum starts from `-128` times its codes' sum (taking the 128
//! back off exactly) and is multiplied by its scale; the activations' sums
//! of 16 take the offsets and mins (`vpdpwssd`). The integers are exact, and
//! each block's f32 work is the scalar kernel's: `acc = fma(f32(a), sa * dx,
//! acc)`, then `acc = fma(f32(b), sb * dx, acc)`.

use std::arch::x86_64::*;

use super::q8_0_i8::store_tile_rows;
use crate::backend::cpu::common::{Aligned, ROW_PAD};
use crate::backend::cpu::types::q8_blocks::{
    i16_pair, ActQ8Rows, ActTiles, TileBlock, BSUM_VALUES,
};

/// The VNNI side of a block type: its codes unpacked with vector
/// instructions where that is written, else by its scalar `tile_codes`.
pub trait VnniBlock: TileBlock {
    /// The block's codes in value order into `out` (`TileBlock::tile_codes`).
    ///
    /// # Safety
    /// AVX2 (inlined into an AVX2 function); a whole block at `block`,
    /// `VALUES` writable bytes at `out`.
    #[inline(always)]
    unsafe fn codes_simd(block: *const u8, out: *mut u8) {
        // SAFETY: the caller's.
        let (block, out) = unsafe {
            (
                std::slice::from_raw_parts(block, Self::BYTES),
                std::slice::from_raw_parts_mut(out, Self::VALUES),
            )
        };
        Self::tile_codes(block, out);
    }
}

/// Weight rows per group: their sums for a tile stay in registers.
pub(super) const GROUP: usize = 8;

/// A group of `G` weight rows as the tiles read them (here, in
/// `q8_blocks_tiles_avx2` and, sixteen rows, in `q8_blocks_amx`).
pub(super) struct Unpacked<const G: usize> {
    /// `[G][k]` codes (the AMX tiles' one digit, or low digit: `fill_digits`).
    pub(super) codes: Aligned<i8>,
    /// `[G][k]` high digits where the AMX tiles take two; else empty.
    pub(super) hi: Aligned<i8>,
    /// `[block][sub-block][G]`: scales, and `-128` times the codes' sums
    /// (made only where `fill` is asked for them).
    pub(super) sc: Vec<i32>,
    pub(super) start: Vec<i32>,
    /// `[block][pair of sums of 16][G]`: `ca` and `cb` pairs as i16
    /// halves of an i32 (the AMX kernel's `cb` may be pairs of sums of 32).
    pub(super) ca: Vec<i32>,
    pub(super) cb: Vec<i32>,
    /// `[block][G]`: the f32 scales.
    pub(super) sa: Vec<f32>,
    pub(super) sb: Vec<f32>,
}

/// The sum of the `n` (a multiple of 16) codes at `p`.
///
/// # Safety
/// AVX2; `n` readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn code_sum(p: *const i8, n: usize) -> i32 {
    let mut s = _mm_setzero_si128();
    for o in (0..n).step_by(16) {
        // SAFETY: the caller's.
        let v = unsafe { _mm_loadu_si128(p.add(o) as *const __m128i) };
        s = _mm_add_epi64(s, _mm_sad_epu8(v, _mm_setzero_si128()));
    }
    (_mm_cvtsi128_si64(s) + _mm_extract_epi64::<1>(s)) as i32
}

/// The sum of the `n` (a multiple of 16) codes at `p` read as signed bytes:
/// the unsigned sum of each plus 128 (bit 7 flipped), less `128 n`.
///
/// # Safety
/// AVX2; `n` readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn signed_code_sum(p: *const i8, n: usize) -> i32 {
    let flip = _mm_set1_epi8(-128);
    let mut s = _mm_setzero_si128();
    for o in (0..n).step_by(16) {
        // SAFETY: the caller's.
        let v = unsafe { _mm_loadu_si128(p.add(o) as *const __m128i) };
        s = _mm_add_epi64(s, _mm_sad_epu8(_mm_xor_si128(v, flip), _mm_setzero_si128()));
    }
    (_mm_cvtsi128_si64(s) + _mm_extract_epi64::<1>(s)) as i32 - 128 * n as i32
}

impl<const G: usize> Unpacked<G> {
    pub(super) fn new<T: TileBlock>(k: usize) -> Self {
        let blocks = k / T::VALUES;
        let per = |n: usize| vec![0i32; blocks * n * G];
        Unpacked {
            codes: Aligned::zeros(G * k),
            hi: Aligned::zeros(0),
            sc: per(T::VALUES / T::SUB),
            start: per(T::VALUES / T::SUB),
            ca: per(T::VALUES / 32),
            cb: per(T::VALUES / 32),
            sa: vec![0f32; blocks * G],
            sb: vec![0f32; blocks * G],
        }
    }

    /// Unpacks weight rows `0..r` of `rows` (`row_bytes` apart; lanes from
    /// `r` on repeat the last row), with the codes' sums (`start`) where
    /// `START`.
    ///
    /// # Safety
    /// AVX2; `rows` holds `r` rows of `k / VALUES` blocks, `1 <= r <= G`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn fill<T: VnniBlock, const START: bool>(
        &mut self,
        rows: &[u8],
        r: usize,
        row_bytes: usize,
        k: usize,
    ) {
        let blocks = k / T::VALUES;
        let (nsub, pairs) = (T::VALUES / T::SUB, T::VALUES / 32);
        assert!((1..=G).contains(&r) && rows.len() >= r * row_bytes);
        assert!(row_bytes >= blocks * T::BYTES && self.codes.len() >= G * k);
        let codes = self.codes.as_mut_slice();
        let mut sc = [0i32; 16];
        let (mut ca, mut cb) = ([0i16; 16], [0i16; 16]);
        for u in 0..G {
            let row = &rows[u.min(r - 1) * row_bytes..][..blocks * T::BYTES];
            for (b, block) in row.chunks_exact(T::BYTES).enumerate() {
                let dst = &mut codes[u * k + b * T::VALUES..][..T::VALUES];
                // SAFETY: a whole block in, VALUES bytes out.
                unsafe { T::codes_simd(block.as_ptr(), dst.as_mut_ptr() as *mut u8) };
                T::tile_scales(
                    block,
                    &mut sc[..nsub],
                    &mut ca[..T::VALUES / BSUM_VALUES],
                    &mut cb[..T::VALUES / BSUM_VALUES],
                );
                for (j, &scale) in sc[..nsub].iter().enumerate() {
                    let at = (b * nsub + j) * G + u;
                    self.sc[at] = scale;
                    if !START {
                        continue;
                    }
                    // SAFETY: sub-block j's SUB codes are inside dst.
                    self.start[at] = -128
                        * unsafe {
                            if T::SIGNED_CODES {
                                signed_code_sum(dst.as_ptr().add(j * T::SUB), T::SUB)
                            } else {
                                code_sum(dst.as_ptr().add(j * T::SUB), T::SUB)
                            }
                        };
                }
                for p in 0..pairs {
                    self.ca[(b * pairs + p) * G + u] = i16_pair(ca[2 * p], ca[2 * p + 1]);
                    self.cb[(b * pairs + p) * G + u] = i16_pair(cb[2 * p], cb[2 * p + 1]);
                }
                let (sa, sb) = T::scales(block);
                self.sa[b * G + u] = sa;
                self.sb[b * G + u] = sb;
            }
        }
    }
}

impl<const G: usize> Unpacked<G> {
    /// The end of block `b` for tile `t` (`tb = t * blocks + b`) of the
    /// 16-row tile kernels (VNNI and AMX), whose sub-blocks left the block's
    /// integers `a` (one vector of 16 activation rows per weight row): adds
    /// the sums-of-16 terms (`ca`) where `with_ca` (the AMX digits hold them
    /// already), folds `a` into `f` with `sa * dx`, then
    /// the `b` integers with `sb * dx`, as the scalar kernel orders them;
    /// leaves `a` zero for the next block. The `b` terms are `cb` (`n` i16
    /// pairs per block and row: `[block][n][G]`) times the tile's pairs of
    /// sums at `b_sums` (`n` vectors, `ROW_PAD` apart): its pairs of sums of
    /// 16 (`n = pairs`), or in the AMX kernel of 32 (`ActTiles::bs32`).
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI (inlined into such a function); tile `t`'s scales
    /// and pairs of block `b` inside `tiles` (`TileShape::checked`), and
    /// block `b` inside these unpacked rows.
    #[inline(always)]
    pub(super) unsafe fn finish_block<T: TileBlock>(
        &self,
        tiles: &ActTiles,
        (tb, b, pairs): (usize, usize, usize),
        with_ca: bool,
        (b_sums, n): (*const i32, usize),
        a: &mut [__m512i; G],
        f: &mut [__m512; G],
    ) {
        // SAFETY: the caller's.
        unsafe {
            let dx = _mm512_loadu_ps(tiles.d.as_ptr().add(tb * ROW_PAD));
            let bs = tiles.bs.as_ptr().add(tb * pairs * ROW_PAD);
            if T::HAS_CA && with_ca {
                for p in 0..pairs {
                    let v = _mm512_loadu_si512(bs.add(p * ROW_PAD) as *const __m512i);
                    for (u, a) in a.iter_mut().enumerate() {
                        let ca = _mm512_set1_epi32(self.ca[(b * pairs + p) * G + u]);
                        *a = _mm512_dpwssd_epi32(*a, v, ca);
                    }
                }
            }
            for (u, (f, a)) in f.iter_mut().zip(a.iter_mut()).enumerate() {
                // sa * dx rounded once per row, as the scalar kernel does.
                let d = _mm512_mul_ps(_mm512_set1_ps(self.sa[b * G + u]), dx);
                *f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*a), d, *f);
                *a = _mm512_setzero_si512();
            }
            if T::HAS_B {
                let mut bb = [_mm512_setzero_si512(); G];
                for p in 0..n {
                    let v = _mm512_loadu_si512(b_sums.add(p * ROW_PAD) as *const __m512i);
                    for (u, bb) in bb.iter_mut().enumerate() {
                        let cb = _mm512_set1_epi32(self.cb[(b * n + p) * G + u]);
                        *bb = _mm512_dpwssd_epi32(*bb, v, cb);
                    }
                }
                for (u, (f, bb)) in f.iter_mut().zip(bb).enumerate() {
                    let d = _mm512_mul_ps(_mm512_set1_ps(self.sb[b * G + u]), dx);
                    *f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(bb), d, *f);
                }
            }
        }
    }
}

/// The sizes a tile product walks, from `T`, `act` and the output, checked
/// against the tiles and the weight rows (here and in
/// `q8_blocks_tiles_avx2`).
pub(super) struct TileShape {
    pub(super) blocks: usize,
    /// Sub-blocks, pairs of sums of 16 and quads of values per block.
    pub(super) nsub: usize,
    pub(super) pairs: usize,
    pub(super) quads: usize,
    pub(super) row_bytes: usize,
    /// Weight rows, and tiles of activation rows.
    pub(super) nrows: usize,
    pub(super) ntiles: usize,
}

impl TileShape {
    pub(super) fn checked<T: TileBlock>(
        act: &ActQ8Rows,
        tiles: &ActTiles,
        rows: &[u8],
        out_len: usize,
    ) -> TileShape {
        let (m, k) = (act.m, act.k);
        let blocks = k / T::VALUES;
        let pairs = T::VALUES / 32;
        let row_bytes = blocks * T::BYTES;
        let nrows = out_len / m;
        let ntiles = m.div_ceil(ROW_PAD);
        assert!(rows.len() >= nrows * row_bytes && act.block == T::VALUES);
        assert!(
            tiles.q.len() >= ntiles * k * ROW_PAD && tiles.d.len() >= ntiles * blocks * ROW_PAD
        );
        assert!(tiles.bs.len() >= ntiles * blocks * pairs * ROW_PAD);
        TileShape {
            blocks,
            nsub: T::VALUES / T::SUB,
            pairs,
            quads: T::VALUES / 4,
            row_bytes,
            nrows,
            ntiles,
        }
    }
}

/// VNNI tile version of `q8_blocks::dot_rows_q8_scalar`, bit-identical to
/// it (the module's description), for activations with tiles stored plus
/// 128.
///
/// # Safety
/// AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI; the bounds
/// `kernels::dot_rows_q8` checks, and `act.tiles` made by `ActQ8::quantize`
/// for these `act.m` rows.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_rows_q8_vnni<T: VnniBlock>(act: ActQ8Rows, rows: &[u8], out_t: &mut [f32]) {
    let (m, k) = (act.m, act.k);
    let tiles = act
        .tiles
        .expect("dot_rows_q8_vnni: activations without tiles");
    assert!(
        tiles.plus_128,
        "dot_rows_q8_vnni: activations not stored plus 128"
    );
    let q = &tiles.q;
    let TileShape {
        blocks,
        nsub,
        pairs,
        quads,
        row_bytes,
        nrows,
        ntiles,
    } = TileShape::checked::<T>(&act, tiles, rows, out_t.len());
    let mut w = Unpacked::<GROUP>::new::<T>(k);
    let mut c = 0;
    while c < nrows {
        let r = (nrows - c).min(GROUP);
        // SAFETY: rows c..c + r exist (asserted above).
        unsafe { w.fill::<T, true>(&rows[c * row_bytes..(c + r) * row_bytes], r, row_bytes, k) };
        let codes = w.codes.as_ptr();
        // The next group's rows, prefetched while the tiles pass over this
        // one: the unpacking reads them next, and nothing else would fetch
        // them ahead (measured: the unpacking then waited on memory for
        // half the time of a 16-row product).
        let next = &rows[(c + r) * row_bytes..(c + r + GROUP).min(nrows) * row_bytes];
        let lines = next.len().div_ceil(64);
        let per_step = lines.div_ceil(ntiles * blocks);
        for t in 0..ntiles {
            let mut f = [_mm512_setzero_ps(); GROUP];
            for b in 0..blocks {
                let tb = t * blocks + b;
                for l in tb * per_step..((tb + 1) * per_step).min(lines) {
                    // SAFETY: the line starts inside `next`.
                    unsafe { _mm_prefetch(next.as_ptr().add(64 * l) as *const i8, _MM_HINT_T0) };
                }
                // SAFETY: tile t's block b is `quads` vectors inside
                // tiles.q, its scales and sums inside tiles.d and tiles.bs
                // (asserted above); each row's codes of block b are inside
                // w.codes and its scales inside w's vectors (made for k).
                unsafe {
                    let xt = q.as_ptr().add(tb * quads * 64) as *const __m512i;
                    let mut a = [_mm512_setzero_si512(); GROUP];
                    for j in 0..nsub {
                        let at = (b * nsub + j) * GROUP;
                        let mut s: [__m512i; GROUP] =
                            std::array::from_fn(|u| _mm512_set1_epi32(w.start[at + u]));
                        for g in 0..T::SUB / 4 {
                            let x = _mm512_load_si512(xt.add(j * T::SUB / 4 + g));
                            for (u, s) in s.iter_mut().enumerate() {
                                let q = codes.add(u * k + b * T::VALUES + j * T::SUB + 4 * g);
                                let q = (q as *const i32).read_unaligned();
                                *s = _mm512_dpbusd_epi32(*s, x, _mm512_set1_epi32(q));
                            }
                        }
                        for (u, (a, s)) in a.iter_mut().zip(s).enumerate() {
                            *a = if T::SCALED {
                                _mm512_add_epi32(
                                    *a,
                                    _mm512_mullo_epi32(s, _mm512_set1_epi32(w.sc[at + u])),
                                )
                            } else {
                                _mm512_add_epi32(*a, s)
                            };
                        }
                    }
                    let b_sums = (tiles.bs.as_ptr().add(tb * pairs * ROW_PAD), pairs);
                    w.finish_block::<T>(tiles, (tb, b, pairs), true, b_sums, &mut a, &mut f);
                }
            }
            store_tile_rows(&f[..r], out_t, c, m, t * ROW_PAD);
        }
        c += r;
    }
}
