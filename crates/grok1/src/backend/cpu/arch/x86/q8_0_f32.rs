//! GGUF Q8_0 rows against f32 activations (`kernels::dot_q8_0_rows`): AVX2
//! groups of up to four weight rows ([`dot_q8_0_rows_avx2`]), and for many
//! activation rows the pair tiles below, in 512 or 256 bits.
//!
//! The tiles (`kernels::dot_q8_0_rows_paired`: prefill) are bit-identical to
//! the scalar reference, whose arithmetic keeps eight lanes per (weight row,
//! activation row): the activations are packed in pairs (`q8_0::pair_rows`:
//! per group of pairs, block, pair and eighth of a block, 16 floats, eight of
//! each row), so that a 512-bit vector holds one pair's two sums and a
//! 256-bit tile two vectors; each weight eighth is dequantised once for all
//! the tile's pairs, so each product is one FMA. A register tile is some
//! weight rows by a few activation pairs; it walks `KC` blocks, its sums
//! kept between such chunks in a small buffer, so the chunk of activations
//! it reads stays in L1 (24 KiB) while every weight row of the run passes,
//! and the run of weight rows stays in L2 while every pair group passes.

use std::arch::x86_64::*;

use super::{hsum, rows_in_parts};
use crate::backend::cpu::types::q8_0::{pair_group_width, PAIR_GROUP, Q8_0_BLOCK_BYTES};

/// AVX2 version of `q8_0::dot_q8_0_rows_scalar`: up to four weight rows
/// at a time against up to two activation rows (each sum is a chain of four
/// FMAs per block, so one row alone would wait on them), each block
/// converted once for all of them.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `m > 0`, `k % 32 == 0`,
/// `x.len() >= m * k` and `rows` holds `out_t.len() / m` rows of `k / 32` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_rows_avx2(x: &[f32], m: usize, k: usize, rows: &[u8], out_t: &mut [f32]) {
    let row_bytes = k / 32 * Q8_0_BLOCK_BYTES;
    let nrows = out_t.len() / m;
    assert!(x.len() >= m * k && rows.len() >= nrows * row_bytes);
    let mut c = 0;
    if m == 1 {
        // One activation row (decode): the rows in parts, each one stream.
        // SAFETY: every row handed over holds k / 32 blocks (asserted
        // above); x holds k values.
        c = rows_in_parts::<STREAMS>(rows, row_bytes, out_t, |at| unsafe {
            q8_0_row_streams(x, k, at)
        });
    }
    while c < nrows {
        let w = (nrows - c).min(4);
        let group = &rows[c * row_bytes..(c + w) * row_bytes];
        let mut i = 0;
        while i < m {
            let g = (m - i).min(2);
            // SAFETY: rows i..i + g of x exist; the group holds w rows of k / 32 blocks.
            let sums = unsafe {
                match (w, g) {
                    (4, 2) => q8_0_rows_group::<4, 2>(x, k, i, group),
                    (4, _) => q8_0_rows_group::<4, 1>(x, k, i, group),
                    (3, 2) => q8_0_rows_group::<3, 2>(x, k, i, group),
                    (3, _) => q8_0_rows_group::<3, 1>(x, k, i, group),
                    (2, 2) => q8_0_rows_group::<2, 2>(x, k, i, group),
                    (2, _) => q8_0_rows_group::<2, 1>(x, k, i, group),
                    (_, 2) => q8_0_rows_group::<1, 2>(x, k, i, group),
                    _ => q8_0_rows_group::<1, 1>(x, k, i, group),
                }
            };
            for (r, row) in sums[..w].iter().enumerate() {
                out_t[(c + r) * m + i..(c + r) * m + i + g].copy_from_slice(&row[..g]);
            }
            i += g;
        }
        c += w;
    }
}

/// Rows read side by side by [`q8_0_row_streams`].
const STREAMS: usize = 4;

/// One activation row against `STREAMS` weight rows at `at`, each from its
/// own part of the task's rows.
///
/// # Safety
/// AVX2, FMA and F16C; `x` holds `k` values, each `at[s]` a row of `k / 32`
/// blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_row_streams(x: &[f32], k: usize, at: [*const u8; STREAMS]) -> [f32; STREAMS] {
    assert!(x.len() >= k);
    let mut acc = [_mm256_setzero_ps(); STREAMS];
    for b in 0..k / 32 {
        // SAFETY: each row's block b is 34 bytes at at[s] + 34 b; x holds 32
        // values from 32 b.
        unsafe {
            let blk: [*const u8; STREAMS] =
                std::array::from_fn(|s| at[s].add(b * Q8_0_BLOCK_BYTES));
            let d: [__m256; STREAMS] = std::array::from_fn(|s| {
                let bits = u16::from_le_bytes([*blk[s], *blk[s].add(1)]);
                _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
            });
            for u in 0..4 {
                let xv = _mm256_loadu_ps(x.as_ptr().add(32 * b + 8 * u));
                for s in 0..STREAMS {
                    let q = _mm256_mul_ps(
                        d[s],
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                            blk[s].add(2 + 8 * u) as *const __m128i,
                        ))),
                    );
                    acc[s] = _mm256_fmadd_ps(xv, q, acc[s]);
                }
            }
        }
    }
    acc.map(|a| hsum(a))
}

/// `W` Q8_0 weight rows (`rows`) against activation rows `i0..i0 + G`:
/// `[r][t]` is weight row `r` times activation row `i0 + t`. Each row
/// prefetches the same block of the next group's row: the group is one
/// stream `W` rows wide, which the hardware prefetchers follow badly.
///
/// # Safety
/// AVX2, FMA and F16C; `x` holds rows `i0..i0 + G` of `k`, `rows` `W` rows of
/// `k / 32` blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_rows_group<const W: usize, const G: usize>(
    x: &[f32],
    k: usize,
    i0: usize,
    rows: &[u8],
) -> [[f32; 2]; 4] {
    let row_bytes = k / 32 * Q8_0_BLOCK_BYTES;
    assert!(x.len() >= (i0 + G) * k && rows.len() >= W * row_bytes);
    let mut acc = [[_mm256_setzero_ps(); G]; W];
    for b in 0..k / 32 {
        // SAFETY: each row's block b is 34 bytes inside `rows`; x rows i0 + t
        // hold 32 values from 32 b (asserted above).
        unsafe {
            let at: [*const u8; W] =
                std::array::from_fn(|r| rows.as_ptr().add(r * row_bytes + b * Q8_0_BLOCK_BYTES));
            let d: [__m256; W] = std::array::from_fn(|r| {
                // A prefetch reads nothing and cannot fault (wrapping address).
                _mm_prefetch(at[r].wrapping_add(W * row_bytes) as *const i8, _MM_HINT_T0);
                let bits = u16::from_le_bytes([*at[r], *at[r].add(1)]);
                _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
            });
            for u in 0..4 {
                for r in 0..W {
                    let q = _mm256_mul_ps(
                        d[r],
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                            at[r].add(2 + 8 * u) as *const __m128i,
                        ))),
                    );
                    for (t, a) in acc[r].iter_mut().enumerate() {
                        let xv = _mm256_loadu_ps(x.as_ptr().add((i0 + t) * k + 32 * b + 8 * u));
                        *a = _mm256_fmadd_ps(xv, q, *a);
                    }
                }
            }
        }
    }
    let mut out = [[0f32; 2]; 4];
    for (o, a) in out.iter_mut().zip(&acc) {
        for (v, &at) in o.iter_mut().zip(a) {
            *v = hsum(at);
        }
    }
    out
}

/// Weight rows per register tile.
const R: usize = 2;
/// Activation pairs per register tile: 2 x 12 accumulators in registers,
/// two weight vectors, two scales.
const P: usize = PAIR_GROUP;
/// Blocks per chunk: `P` pairs' activations for 8 blocks are 24 KiB.
const KC: usize = 8;
/// Floats per pair per block (two rows of 32).
const PAIR_BLOCK: usize = 64;

/// `out_t[c][i] = x[i] . row_c` as `q8_0::dot_q8_0_rows_scalar` computes
/// it, for `m` activation rows packed by `q8_0::pair_rows` and the Q8_0
/// weight rows in `rows` (`out_t.len() / m` of them), by 512-bit tiles.
///
/// # Safety
/// AVX2, FMA, F16C and AVX-512 F; `m > 0`, `k % 32 == 0`, `xp` holds
/// `m.div_ceil(2) * 2 * k` floats, `rows` `out_t.len() / m` rows of `k / 32`
/// blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub unsafe fn dot_q8_0_rows_paired_avx512(
    xp: &[f32],
    m: usize,
    k: usize,
    rows: &[u8],
    out_t: &mut [f32],
) {
    // SAFETY: the caller's.
    unsafe { paired::<Zmm>(xp, m, k, rows, out_t) }
}

/// [`dot_q8_0_rows_paired_avx512`] by 256-bit tiles: each pair of
/// activation rows two vectors of sums. The row kernel
/// ([`dot_q8_0_rows_avx2`]) converted each eighth of a weight block for
/// two activation rows, three conversions for two FMAs; here for up to
/// twelve.
///
/// # Safety
/// AVX2, FMA and F16C; otherwise as [`dot_q8_0_rows_paired_avx512`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0_rows_paired_avx2(
    xp: &[f32],
    m: usize,
    k: usize,
    rows: &[u8],
    out_t: &mut [f32],
) {
    // SAFETY: the caller's.
    unsafe { paired::<Ymm>(xp, m, k, rows, out_t) }
}

/// A register tile kernel of the paired product: `Acc` is one weight row's
/// sums against one pair of activation rows.
trait PairTiles {
    /// Vectors of f32 sums (all-zero bits are sums of 0.0).
    type Acc: Copy;

    /// [`Tile`]'s rows (`r`: 1 or 2) times its first `pp` pairs (1..=P),
    /// added into `acc` (`[r][P]`, row-major; from zero in the first chunk).
    ///
    /// # Safety
    /// The CPU has the kernel's features; as [`Tile`]'s fields say.
    unsafe fn run_any(tile: &Tile, r: usize, pp: usize, acc: &mut [Self::Acc]);

    /// The pair's two sums, each row's lanes added as the reference does:
    /// `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`.
    ///
    /// # Safety
    /// The CPU has the kernel's features.
    unsafe fn sums(acc: Self::Acc) -> [f32; 2];
}

/// The paired product over tiles of kernel `K`: pair groups, chunks of `KC`
/// blocks, runs of `R` weight rows.
///
/// # Safety
/// The CPU has `K`'s features (inlined into a function that enables them);
/// as [`dot_q8_0_rows_paired_avx512`].
#[inline(always)]
unsafe fn paired<K: PairTiles>(xp: &[f32], m: usize, k: usize, rows: &[u8], out_t: &mut [f32]) {
    let blocks = k / 32;
    let row_bytes = blocks * Q8_0_BLOCK_BYTES;
    let nrows = out_t.len() / m;
    let pairs = m.div_ceil(2);
    assert!(m > 0 && blocks > 0 && xp.len() >= pairs * blocks * PAIR_BLOCK);
    assert!(rows.len() >= nrows * row_bytes && out_t.len() == nrows * m);
    // The sums of one pair group: [row][pair in group]. SAFETY: `Acc` is
    // f32 vectors, for which all-zero bits are valid (0.0).
    let mut acc = vec![unsafe { std::mem::zeroed::<K::Acc>() }; nrows * P];
    // The rows' block scales as f32 (converted in the tile, the compiler tied
    // each block to the one before through a partial register write).
    let mut dw = vec![0f32; nrows * blocks];
    for (d, block) in dw.iter_mut().zip(rows.chunks_exact(Q8_0_BLOCK_BYTES)) {
        let bits = i32::from(u16::from_le_bytes([block[0], block[1]]));
        // SAFETY: F16C, which both kernels' callers enable.
        *d = unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits))) };
    }
    let width = pair_group_width(pairs);
    // The bytes after these rows (the next run of a task's rows, read by the
    // next call), brought into L2 a few lines per tile while this run is
    // multiplied: the scales above are read first thing, which otherwise
    // waits on memory with nothing to overlap it (d1024 Q8_0 GGUF, fast
    // prefill: 466 -> 503 tok/s).
    let tiles = pairs.div_ceil(width) * blocks.div_ceil(KC) * nrows.div_ceil(R);
    let next_lines = rows.len().div_ceil(64);
    let per_tile = next_lines.div_ceil(tiles);
    let mut next = 0;
    for p0 in (0..pairs).step_by(width) {
        let pp = width.min(pairs - p0);
        for b0 in (0..blocks).step_by(KC) {
            let kb = KC.min(blocks - b0);
            let mut c = 0;
            while c < nrows {
                let r = R.min(nrows - c);
                let tile = Tile {
                    w: [0, 1].map(|u| rows[(c + u.min(r - 1)) * row_bytes..].as_ptr()),
                    d: [0, 1].map(|u| dw[(c + u.min(r - 1)) * blocks..].as_ptr()),
                    // The group's activations: `pp` pairs per block.
                    x: xp[p0 * 2 * k..].as_ptr(),
                    pairs: pp,
                    b0,
                    kb,
                };
                // The tiles read the run (from memory in the first pair group,
                // from L2 after) in pieces of rows too short for the hardware
                // prefetchers: the chunk of the rows two tiles on is fetched now.
                for u in c + 2 * R..(c + 3 * R).min(nrows) {
                    let at = u * row_bytes + b0 * Q8_0_BLOCK_BYTES;
                    for line in (0..kb * Q8_0_BLOCK_BYTES).step_by(64) {
                        // SAFETY: SSE (x86-64's baseline); a prefetch reads
                        // nothing and cannot fault.
                        unsafe {
                            _mm_prefetch(
                                rows.as_ptr().wrapping_add(at + line) as *const i8,
                                _MM_HINT_T0,
                            )
                        };
                    }
                }
                for line in next..(next + per_tile).min(next_lines) {
                    // SAFETY: SSE; past the slice, but a prefetch reads
                    // nothing and cannot fault.
                    unsafe {
                        _mm_prefetch(
                            rows.as_ptr().wrapping_add(rows.len() + 64 * line) as *const i8,
                            _MM_HINT_T1,
                        )
                    };
                }
                next += per_tile;
                let a = &mut acc[c * P..(c + r) * P];
                // SAFETY: rows c..c + r hold blocks b0..b0 + kb; pairs p0..p0 +
                // pp hold them too (asserted above); `a` is r * P sums.
                unsafe { K::run_any(&tile, r, pp, a) };
                c += r;
            }
        }
        for c in 0..nrows {
            for t in 0..pp {
                // SAFETY: the caller's features.
                let (i, sums) = (2 * (p0 + t), unsafe { K::sums(acc[c * P + t]) });
                out_t[c * m + i] = sums[0];
                if i + 1 < m {
                    out_t[c * m + i + 1] = sums[1];
                }
            }
        }
    }
}

/// The 512-bit tiles: one vector per pair (its two rows' eight lanes side
/// by side), each weight eighth dequantised once into both halves.
struct Zmm;

impl PairTiles for Zmm {
    type Acc = __m512;

    unsafe fn run_any(tile: &Tile, r: usize, pp: usize, acc: &mut [__m512]) {
        // SAFETY: the caller's.
        unsafe { tile.run_any(r, pp, acc) }
    }

    unsafe fn sums(acc: __m512) -> [f32; 2] {
        // SAFETY: the caller's features.
        unsafe { halves_added(acc) }
    }
}

/// The 256-bit tiles: two vectors per pair, one a row.
struct Ymm;

impl PairTiles for Ymm {
    type Acc = [__m256; 2];

    unsafe fn run_any(tile: &Tile, r: usize, pp: usize, acc: &mut [[__m256; 2]]) {
        // SAFETY: the caller's.
        unsafe { tile.run_any_avx2(r, pp, acc) }
    }

    unsafe fn sums(acc: [__m256; 2]) -> [f32; 2] {
        // SAFETY: the caller's features.
        unsafe { [hsum(acc[0]), hsum(acc[1])] }
    }
}

/// Each half's eight lanes added as the reference does: `((l0 + l4) + (l2 +
/// l6)) + ((l1 + l5) + (l3 + l7))`, in vector registers (with this done in
/// scalar code and the sums' buffer cleared per group, the product ran 6%
/// slower at 32 rows).
#[inline]
#[target_feature(enable = "avx512f")]
fn halves_added(v: __m512) -> [f32; 2] {
    // 128-bit quarters [a b c d] + [b a d c]: lanes l0 + l4 .. l3 + l7 per half.
    let v = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0b10_11_00_01>(v, v));
    // + the lanes two apart, then + the neighbour (within each quarter).
    let v = _mm512_add_ps(v, _mm512_permute_ps::<0b01_00_11_10>(v));
    let v = _mm512_add_ps(v, _mm512_permute_ps::<0b10_11_00_01>(v));
    let mut out = [0f32; 16];
    // SAFETY: 16 floats.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), v) };
    [out[0], out[8]]
}

/// One register tile's operands: up to `R` weight rows (the missing ones
/// repeat the last) and their scales, the first pair of its group and the
/// group's width, a chunk of blocks.
struct Tile {
    w: [*const u8; R],
    d: [*const f32; R],
    x: *const f32,
    pairs: usize,
    b0: usize,
    kb: usize,
}

/// `tile.run::<rr, pp>` for the `(rr, pp)` given at run time.
macro_rules! run_any {
    ($tile:expr, $r:expr, $pp:expr, $acc:expr, $($p:literal)+) => {
        match ($r, $pp) {
            $((2, $p) => $tile.run::<2, $p>($acc),)+
            $((_, $p) => $tile.run::<1, $p>($acc),)+
            _ => unreachable!("pair group of {} pairs", $pp),
        }
    };
}

/// Pairs in a 256-bit register tile of one weight row: twelve vectors of
/// sums, the weight eighth and its scale.
const PY: usize = 6;

impl Tile {
    /// [`PairTiles::run_any`] by 256-bit tiles: each row alone against the
    /// pairs in parts of at most [`PY`], as equal as they can be. (Two rows
    /// against half the pairs, each activation vector loaded once for both,
    /// ran 8% slower in cache.)
    ///
    /// # Safety
    /// AVX2, FMA and F16C; as [`Tile`]'s fields say, `acc` `[r][P]`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run_any_avx2(&self, r: usize, pp: usize, acc: &mut [[__m256; 2]]) {
        let part = pp.div_ceil(pp.div_ceil(PY));
        for u in 0..r {
            let mut t0 = 0;
            while t0 < pp {
                let n = part.min(pp - t0);
                let a = &mut acc[u * P + t0..];
                // SAFETY: the caller's; `a` holds at least n sums (t0 + n <=
                // pp <= P).
                unsafe {
                    match n {
                        1 => self.run_avx2::<1>(u, t0, a),
                        2 => self.run_avx2::<2>(u, t0, a),
                        3 => self.run_avx2::<3>(u, t0, a),
                        4 => self.run_avx2::<4>(u, t0, a),
                        5 => self.run_avx2::<5>(u, t0, a),
                        _ => self.run_avx2::<PY>(u, t0, a),
                    }
                }
                t0 += n;
            }
        }
    }

    /// Adds blocks `b0..b0 + kb` of weight row `u` times pairs `t0..t0 +
    /// PP` into `acc[..PP]` (from zero in the first chunk): per block and
    /// eighth `e`, the weights dequantised once and `acc = fma(x, d * q,
    /// acc)` for each of the `2 PP` activation rows.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; row `u` holds the chunk's blocks, the packed
    /// activations pairs `t0..t0 + PP` in each of them, `acc` at least `PP`
    /// sums.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn run_avx2<const PP: usize>(&self, u: usize, t0: usize, acc: &mut [[__m256; 2]]) {
        assert!(acc.len() >= PP && u < R);
        let mut a: [[__m256; 2]; PP] = std::array::from_fn(|t| {
            if self.b0 == 0 {
                [_mm256_setzero_ps(); 2]
            } else {
                acc[t]
            }
        });
        for b in self.b0..self.b0 + self.kb {
            // SAFETY: the caller's bounds.
            unsafe {
                let d = _mm256_set1_ps(*self.d[u].add(b));
                for e in 0..4 {
                    let at = self.w[u].add(b * Q8_0_BLOCK_BYTES + 2 + 8 * e);
                    let q = _mm256_mul_ps(
                        d,
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                            at as *const __m128i,
                        ))),
                    );
                    for (t, sums) in a.iter_mut().enumerate() {
                        let x = self.x.add((b * self.pairs + t0 + t) * PAIR_BLOCK + 16 * e);
                        sums[0] = _mm256_fmadd_ps(_mm256_loadu_ps(x), q, sums[0]);
                        sums[1] = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(8)), q, sums[1]);
                    }
                }
            }
        }
        acc[..PP].copy_from_slice(&a);
    }

    /// [`Tile::run`] for `r` rows (1 or 2) and `pp` pairs (1..=P).
    ///
    /// # Safety
    /// As `run`.
    #[target_feature(enable = "avx2,fma,f16c,avx512f")]
    unsafe fn run_any(&self, r: usize, pp: usize, acc: &mut [__m512]) {
        // SAFETY: the caller's.
        unsafe { run_any!(self, r, pp, acc, 1 2 3 4 5 6 7 8 9 10 11 12) }
    }

    /// Adds blocks `b0..b0 + kb` of `RR` weight rows times `PP` pairs into
    /// `acc` (`[RR][P]`, row-major; the first chunk starts from zero): per
    /// block and eighth `u`, `acc = fma(x, d * q, acc)`.
    ///
    /// # Safety
    /// AVX2, FMA, F16C, AVX-512 F; the rows hold the chunk's blocks, the
    /// packed activations (`pairs` pairs per block) `PP` pairs from `x` in
    /// each of the chunk's blocks, `acc` at least `RR * P` vectors.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f")]
    unsafe fn run<const RR: usize, const PP: usize>(&self, acc: &mut [__m512]) {
        assert!(acc.len() >= (RR - 1) * P + PP);
        let mut a: [[__m512; PP]; RR] = std::array::from_fn(|r| {
            std::array::from_fn(|t| {
                if self.b0 == 0 {
                    _mm512_setzero_ps()
                } else {
                    acc[r * P + t]
                }
            })
        });
        for b in self.b0..self.b0 + self.kb {
            // SAFETY: the caller's bounds.
            unsafe {
                let d: [__m512; RR] = std::array::from_fn(|r| _mm512_set1_ps(*self.d[r].add(b)));
                for u in 0..4 {
                    // Eighth u of each row's block, dequantised (exactly) in
                    // both halves.
                    let q: [__m512; RR] = std::array::from_fn(|r| {
                        let at = self.w[r].add(b * Q8_0_BLOCK_BYTES + 2 + 8 * u);
                        let bytes = _mm_set1_epi64x((at as *const i64).read_unaligned());
                        _mm512_mul_ps(d[r], _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)))
                    });
                    for t in 0..PP {
                        let x =
                            _mm512_loadu_ps(self.x.add((b * self.pairs + t) * PAIR_BLOCK + 16 * u));
                        for (ar, &qr) in a.iter_mut().zip(&q) {
                            ar[t] = _mm512_fmadd_ps(x, qr, ar[t]);
                        }
                    }
                }
            }
        }
        for r in 0..RR {
            for t in 0..PP {
                acc[r * P + t] = a[r][t];
            }
        }
    }
}
