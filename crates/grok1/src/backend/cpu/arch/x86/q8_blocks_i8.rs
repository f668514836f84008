//! GGUF's K-quant and legacy rows against activations quantised per block
//! (`types::q8_blocks`), AVX2, bit-identical to
//! `q8_blocks::dot_rows_q8_scalar`: eight weight rows at a time, each block
//! type giving per weight row vectors whose i32 lanes add up to its exact
//! integers `a` and `b` ([`Avx2Block`], one file per type), which one
//! transpose-and-add puts in the lanes of the eight rows, so that each
//! block's f32 work is one FMA per integer for the eight rows, in the
//! scalar order, the rows read in memory order (`rows8`). Up to four
//! activation rows share each weight block's unpacking (the batches of
//! prompt processing).

use std::arch::x86_64::*;

use super::q8_0_i8::{pair_sums, quad_sums, sums8};
use super::{group_rows, prefetch_ahead, rows_in_parts};
use crate::backend::cpu::types::q8_blocks::{ActQ8Rows, QuantBlock, BSUM_VALUES};

/// The AVX2 side of a block type.
pub trait Avx2Block: QuantBlock {
    /// Against `G` activation rows: vectors whose eight i32 lanes add up to
    /// the block's `a` (and `b`, where the type has a `b` that is not the
    /// activations' block sum, else anything) for each row, the offset
    /// `OFFSET * xsum` not yet taken off.
    ///
    /// # Safety
    /// Inlined into an AVX2 function; `w` points at a whole block, `x[t]` at
    /// the block's `VALUES` activations, `bs[t]` at their `VALUES / 16` sums.
    unsafe fn ints_avx2<const G: usize>(
        w: *const u8,
        x: [*const i8; G],
        bs: [*const i16; G],
    ) -> ([__m256i; G], [__m256i; G]);

    /// Whether the type has its own [`Avx2Block::ints_wide`], which
    /// `dot_rows_q8_wide` then runs.
    const WIDE: bool = false;

    /// Whether the type has its own [`Avx2Block::pair_ints`], which the
    /// decode of one activation row then runs ([`rows8_pairs`]; only types
    /// of 32 values whose `b` is none or the activations' block sum).
    const PAIRS: bool = false;

    /// Weight rows `wu` and `wv` against one activation row `x`: a vector
    /// whose low four i32 lanes add up to row `u`'s `a` and high four to
    /// row `v`'s (as [`Avx2Block::ints_avx2`]'s, the offset not taken off).
    ///
    /// # Safety
    /// As [`Avx2Block::ints_avx2`], for both rows.
    #[inline(always)]
    unsafe fn pair_ints(wu: *const u8, wv: *const u8, x: *const i8, bs: *const i16) -> __m256i {
        // SAFETY: the caller's.
        unsafe {
            let ([au], _) = Self::ints_avx2::<1>(wu, [x], [bs]);
            let ([av], _) = Self::ints_avx2::<1>(wv, [x], [bs]);
            // [u's lanes 0..4 | v's lanes 0..4] + [u's 4..8 | v's 4..8].
            _mm256_add_epi32(
                _mm256_permute2x128_si256::<0x20>(au, av),
                _mm256_permute2x128_si256::<0x31>(au, av),
            )
        }
    }

    /// [`Avx2Block::ints_avx2`]'s integers, made with AVX-512 F/BW/VL/VBMI
    /// where the type has such a form (`WIDE`).
    ///
    /// # Safety
    /// As [`Avx2Block::ints_avx2`], inlined into a function with those
    /// features too.
    #[inline(always)]
    unsafe fn ints_wide<const G: usize>(
        w: *const u8,
        x: [*const i8; G],
        bs: [*const i16; G],
    ) -> ([__m256i; G], [__m256i; G]) {
        // SAFETY: the caller's.
        unsafe { Self::ints_avx2::<G>(w, x, bs) }
    }
}

/// Whether this CPU runs [`dot_rows_q8_wide`]: AVX-512 VBMI (with the
/// AVX-512 F/BW/VL that `Isa::Avx512Vnni` has checked).
pub fn wide_available() -> bool {
    super::iq_i8_vbmi::available()
}

/// The block integers of `T` from its wide form or its AVX2 one.
///
/// # Safety
/// As [`Avx2Block::ints_wide`] when `WIDE`, else as
/// [`Avx2Block::ints_avx2`].
#[inline(always)]
unsafe fn ints<T: Avx2Block, const WIDE: bool, const G: usize>(
    w: *const u8,
    x: [*const i8; G],
    bs: [*const i16; G],
) -> ([__m256i; G], [__m256i; G]) {
    // SAFETY: the caller's.
    unsafe {
        if WIDE {
            T::ints_wide::<G>(w, x, bs)
        } else {
            T::ints_avx2::<G>(w, x, bs)
        }
    }
}

/// The driver of both entry points, [`dot_rows_q8_avx2`] and
/// [`dot_rows_q8_wide`] (a macro, so that the closure inside it has its
/// entry point's target features).
macro_rules! driver {
    ($(#[$doc:meta])* $name:ident, $features:literal, $wide:literal) => {
$(#[$doc])*
#[target_feature(enable = $features)]
pub unsafe fn $name<T: Avx2Block>(
    act: ActQ8Rows,
    rows: &[u8],
    out_t: &mut [f32],
    whole_max: usize,
) {
    const WIDE: bool = $wide;
    let (m, k) = (act.m, act.k);
    let blocks = k / T::VALUES;
    let row_bytes = blocks * T::BYTES;
    let nrows = out_t.len() / m;
    assert!(rows.len() >= nrows * row_bytes && act.q.len() >= m * k);
    assert!(act.d.len() >= m * blocks && act.xsum.len() >= m * blocks);
    assert!(act.bsums.len() >= m * k / BSUM_VALUES && act.block == T::VALUES);
    // One activation row (decode) reads each weight row whole before the
    // next: its blocks' integers wait here for the transpose.
    let mut scratch = vec![[[0i32; 4]; 8]; if m == 1 { WHOLE_ROW_STREAMS * blocks } else { 0 }];
    let mut c = 0;
    if m == 1 && T::PAIRS {
        // One activation row (decode) against the legacy types' rows: the
        // rows in parts, each one stream, two rows per vector.
        assert!(T::VALUES == 32 && (!T::HAS_B || T::B_IS_XSUM));
        // SAFETY: every row handed over holds `blocks` blocks, the
        // activation row is inside act (asserted above).
        c = rows_in_parts::<8>(rows, row_bytes, out_t, |wp| unsafe {
            rows8_pairs::<T>(act, wp)
        });
    } else if m == 1 && T::VALUES < SEQUENTIAL_MIN_VALUES {
        // One activation row (decode) against the legacy types' rows: the
        // rows in parts, each one stream (the K-quants read whole adjacent
        // rows in order instead, one stream, which measured faster than
        // whole rows in parts).
        // SAFETY: every row handed over holds `blocks` blocks, the
        // activation row is inside act (asserted above).
        c = rows_in_parts::<8>(rows, row_bytes, out_t, |wp| unsafe {
            rows8_interleaved::<T, WIDE, 1>(act, 0, wp, &[])[0]
        });
    }
    if m == 1 && T::VALUES >= SEQUENTIAL_MIN_VALUES && k <= whole_max {
        // One activation row against the K-quants' and i-quants' rows,
        // read whole: the rows in WHOLE_ROW_STREAMS parts, group g of each
        // part side by side.
        const S: usize = WHOLE_ROW_STREAMS;
        let part = nrows / (8 * S);
        for g in 0..part {
            let first = |st: usize| (g + st * part) * 8;
            let wp: [[*const u8; 8]; S] =
                std::array::from_fn(|st| group_rows::<8>(&rows[first(st) * row_bytes..], 8, row_bytes));
            // SAFETY: each group is eight whole rows inside `rows` (asserted
            // above), the activation row inside act.
            let sums = unsafe { rows8_whole::<T, WIDE, S>(act, wp, &mut scratch, whole_max) };
            for (st, sums) in sums.iter().enumerate() {
                out_t[first(st)..first(st) + 8].copy_from_slice(sums);
            }
        }
        c = S * part * 8;
    }
    while c < nrows {
        let r = (nrows - c).min(8);
        let group = &rows[c * row_bytes..(c + r) * row_bytes];
        let wp = group_rows::<8>(group, r, row_bytes);
        // The legacy types' kernel prefetches the next group while the
        // first activation rows pass over this one (as the Q8_0 kernel does).
        let next = &rows[(c + r) * row_bytes..(c + r + 8).min(nrows) * row_bytes];
        let mut i = 0;
        while i < m {
            let g = (m - i).min(4);
            let ahead = if i == 0 { next } else { &[] };
            // SAFETY: rows c..c + r exist, activation rows i..i + g < m
            // (asserted above).
            let sums: [[f32; 8]; 4] = unsafe {
                match (g, T::VALUES >= SEQUENTIAL_MIN_VALUES) {
                    (4, true) => rows8::<T, WIDE, 4>(act, i, group, r, row_bytes),
                    (3, true) => rows8::<T, WIDE, 3>(act, i, group, r, row_bytes),
                    (2, true) => rows8::<T, WIDE, 2>(act, i, group, r, row_bytes),
                    (_, true) if m == 1 => {
                        let [sums] =
                            rows8_whole::<T, WIDE, 1>(act, [wp], &mut scratch, whole_max);
                        [sums, [0.0; 8], [0.0; 8], [0.0; 8]]
                    }
                    (_, true) => rows8::<T, WIDE, 1>(act, i, group, r, row_bytes),
                    (4, false) => rows8_interleaved::<T, WIDE, 4>(act, i, wp, ahead),
                    (3, false) => rows8_interleaved::<T, WIDE, 3>(act, i, wp, ahead),
                    (2, false) => rows8_interleaved::<T, WIDE, 2>(act, i, wp, ahead),
                    _ => rows8_interleaved::<T, WIDE, 1>(act, i, wp, ahead),
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
    };
}

driver!(
    /// AVX2 version of `q8_blocks::dot_rows_q8_scalar`, bit-identical to it.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; the bounds `kernels::dot_rows_q8` checks.
    dot_rows_q8_avx2,
    "avx2,fma,f16c",
    false
);

driver!(
    /// [`dot_rows_q8_avx2`] with the block types' wide integers
    /// (`Avx2Block::ints_wide`), bit-identical to it.
    ///
    /// # Safety
    /// AVX2, FMA, F16C and AVX-512 F/BW/VL/VBMI/VNNI; the bounds
    /// `kernels::dot_rows_q8` checks.
    dot_rows_q8_wide,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni",
    true
);

/// Blocks of a weight row read in one run by [`rows8`] before the next row's.
const RUN_BLOCKS: usize = 4;
/// Block sizes (values) read in memory order by [`rows8`]: the K-quants'.
const SEQUENTIAL_MIN_VALUES: usize = 256;

/// Weight rows `0..r` (`r <= 8`, `row_bytes` apart in `rows`) against
/// activation rows `i..i + G`: `[t][u]` is activation row `i + t` times
/// weight row `u` (lanes from `r` on repeat the last row). The rows are read
/// in memory order, up to [`RUN_BLOCKS`] blocks of one row, then the same
/// blocks of the next, their integers kept until the eight rows' are
/// there: a sequential stream the hardware prefetchers follow (reading block
/// `b` of the eight rows side by side, with software prefetches of the next
/// rows, streamed Q6_K rows at half the speed: 8 against 17 GB/s on one
/// thread, `kernel_bench`).
///
/// # Safety
/// AVX2, FMA and F16C; `rows` holds `r` rows of `act.k / T::VALUES` blocks,
/// `1 <= r <= 8`, `i + G <= act.m`.
#[inline(always)]
unsafe fn rows8<T: Avx2Block, const WIDE: bool, const G: usize>(
    act: ActQ8Rows,
    i: usize,
    rows: &[u8],
    r: usize,
    row_bytes: usize,
) -> [[f32; 8]; 4] {
    // SAFETY: the caller's (the function's contract), as noted
    // at each access below.
    unsafe {
        let blocks = act.k / T::VALUES;
        let per_block_sums = T::VALUES / BSUM_VALUES;
        assert!((1..=8).contains(&r) && rows.len() >= r * row_bytes);
        assert!(row_bytes >= blocks * T::BYTES && (i + G) * act.k <= act.q.len());
        assert!((i + G) * blocks <= act.d.len() && (i + G) * blocks <= act.xsum.len());
        assert!((i + G) * blocks * per_block_sums <= act.bsums.len());
        let mut acc = [_mm256_setzero_ps(); G];
        let wp = group_rows::<8>(rows, r, row_bytes);
        for b0 in (0..blocks).step_by(RUN_BLOCKS) {
            let run = RUN_BLOCKS.min(blocks - b0);
            let mut a = [[[_mm256_setzero_si256(); 8]; G]; RUN_BLOCKS];
            let mut bb = [[[_mm256_setzero_si256(); 8]; G]; RUN_BLOCKS];
            for (u, &w) in wp.iter().enumerate() {
                for (c, (a, bb)) in a.iter_mut().zip(&mut bb).take(run).enumerate() {
                    let b = b0 + c;
                    // SAFETY: each weight row's block b is inside its row, the
                    // activation rows' block b inside act's slices (asserted
                    // above).
                    let (au, bu) = {
                        let x: [*const i8; G] = std::array::from_fn(|t| {
                            act.q.as_ptr().add(((i + t) * blocks + b) * T::VALUES)
                        });
                        let bs: [*const i16; G] = std::array::from_fn(|t| {
                            act.bsums
                                .as_ptr()
                                .add(((i + t) * blocks + b) * per_block_sums)
                        });
                        ints::<T, WIDE, G>(w.add(b * T::BYTES), x, bs)
                    };
                    for t in 0..G {
                        a[t][u] = au[t];
                        bb[t][u] = bu[t];
                    }
                }
            }
            for (c, (a, bb)) in a.iter().zip(&bb).take(run).enumerate() {
                let b = b0 + c;
                // SAFETY: block b lies inside each of the eight rows.
                let (sa, sb) = block_scales::<T>(&wp, b * T::BYTES);
                for (t, acc) in acc.iter_mut().enumerate() {
                    let xa = (i + t) * blocks + b;
                    *acc = add_block::<T>(*acc, a[t], bb[t], sa, sb, act.d[xa], act.xsum[xa]);
                }
            }
        }
        lanes(acc)
    }
}

/// Longest activation rows (values, so bytes of int8) that [`rows8_whole`]
/// reads whole weight rows against; past them, block `b` of the eight rows
/// side by side. Measured on the Zen 4 (`kernel_bench`, two threads, Q4_K /
/// Q6_K, GB/s of weights, whole rows against side by side): k = 2816: 33 /
/// 35 against 10 / 8; 6144: 25 / 29 against 20 / 17; 8192: 27 / 30 against
/// 22 / 20; 12288: 22 / 21 against 24 / 21; 16384: 17 / 17 against 26 / 23;
/// 32768 (Grok-1's expert down projections): 15 / 15 against 30 / 26. The
/// activation row then no longer stays in L1 beside the stream.
pub const WHOLE_MAX_VALUES: usize = 8192;

/// [`WHOLE_MAX_VALUES`] on the CPUs with AMX (Intel's, whose L1 holds 48
/// KiB where the Zen 4's holds 32): there, with two streams a thread
/// ([`WHOLE_ROW_STREAMS`]), whole rows of 32768 values measured as fast as
/// or faster than a block of eight rows at a time (`kernel_bench`, Intel
/// Xeon, `[6144 x 32768]`, m = 1: in cache, one thread, Q4_K 19.9 -> 22.0-22.5
/// GB/s, Q3_K 12.5 -> 13.4; two threads from 2 GiB, three rounds, Q3_K
/// 15.2-15.9 -> 19.9-20.7, Q4_K 22.9-23.3 -> 21.8-23.9, Q5_K 23.6-23.8 ->
/// 22.8-24.3, Q6_K 23.6-25.0 -> 24.2-24.8, IQ4_XS 19.9-21.1 -> 20.7-21.4;
/// two full-width Grok-1 layers in q2_k, whose down projections are Q3_K,
/// decoded 12.2-12.4 -> 13.2-13.3 tokens/s, q4_k_m the same).
pub const WHOLE_MAX_VALUES_AMX: usize = 32768;

/// Streams one thread reads at once when it decodes whole weight rows
/// ([`rows8_whole`]): its rows in this many parts, a group of eight rows
/// of each side by side. One stream left each thread about 12 GB/s of
/// memory reads where the read probe reaches 15-17 (the software prefetch
/// keeps only so many lines in flight, the hardware prefetchers follow one
/// stream at the pace the kernel reads it); two reach near the probe
/// (`kernel_bench`, Intel Xeon, two threads, 2 GiB of weights, m = 1,
/// `[32768 x 6144]`, GB/s one -> two streams: Q6_K 21.5-26.6 -> 29.5-30.7,
/// Q4_K 23.2-24.3 -> 29.0-29.9, Q2_K 19.7-21.6 -> 24.7-26.0; `[131072 x
/// 6144]` Q6_K 24.3-25.1 -> 30.5-30.6; three or four streams no better).
/// Rows longer than the driver's `whole_max`, read a block of eight rows
/// at a time, already are eight streams.
const WHOLE_ROW_STREAMS: usize = 2;

/// [`rows8`] for one activation row, each weight row read whole before the
/// next (a purely sequential stream however long the rows: runs of four
/// blocks of Q6_K rows of 2816 values, 840 of their 2310 bytes, streamed
/// at a fifth of the speed of whole rows), up to `whole_max` values
/// ([`WHOLE_MAX_VALUES`], or [`WHOLE_MAX_VALUES_AMX`]); longer rows a
/// block of each at a time. Each block is prefetched
/// `PREFETCH_DISTANCE` ahead of its reading (the kernel is compute-bound,
/// and the hardware prefetchers alone kept too few lines in flight for the
/// stream's speed). Each block's two integer vectors are half added up as
/// soon as they are made and kept in `scratch` as four i32 per row (128
/// bytes a block for the eight rows: the vectors themselves were 512), and
/// the eight rows' are finished together. With `S` groups of eight rows
/// (`wp[s]`), each block is read from each group in turn, `S` streams
/// ([`WHOLE_ROW_STREAMS`]); `[s]` of the result is group `s`'s.
///
/// # Safety
/// AVX2, FMA and F16C; each `wp[s][u]` points at a row of `act.k /
/// T::VALUES` blocks, `act.m >= 1`.
#[inline(always)]
unsafe fn rows8_whole<T: Avx2Block, const WIDE: bool, const S: usize>(
    act: ActQ8Rows,
    wp: [[*const u8; 8]; S],
    scratch: &mut [[[i32; 4]; 8]],
    whole_max: usize,
) -> [[f32; 8]; S] {
    // SAFETY: the caller's (the function's contract), as noted
    // at each access below.
    unsafe {
        let blocks = act.k / T::VALUES;
        let per_block_sums = T::VALUES / BSUM_VALUES;
        assert!(act.k <= act.q.len());
        assert!(blocks <= act.d.len() && blocks <= act.xsum.len() && scratch.len() >= S * blocks);
        assert!(blocks * per_block_sums <= act.bsums.len());
        // At least 1: rows of no values (k = 0) have no blocks to step over.
        let run = if act.k <= whole_max { blocks.max(1) } else { 1 };
        for b0 in (0..blocks).step_by(run) {
            for u in 0..8 {
                for b in b0..b0 + run {
                    // Block b of row u of each stream in turn.
                    for (st, wp) in wp.iter().enumerate() {
                        // SAFETY: each weight row's block b is inside its row,
                        // the activation row's block b inside act's slices
                        // (asserted above).
                        let ([au], [bu]) = {
                            let block = wp[u].add(b * T::BYTES);
                            prefetch_ahead(block, T::BYTES);
                            let x = act.q.as_ptr().add(b * T::VALUES);
                            let bs = act.bsums.as_ptr().add(b * per_block_sums);
                            ints::<T, WIDE, 1>(block, [x], [bs])
                        };
                        // [a01 a23 b01 b23 | a45 a67 b45 b67], then the halves
                        // added: [a', a'', b', b''] (a = a' + a'', b = b' + b'').
                        let h = _mm256_hadd_epi32(au, bu);
                        let h = _mm_add_epi32(
                            _mm256_castsi256_si128(h),
                            _mm256_extracti128_si256::<1>(h),
                        );
                        let ab = &mut scratch[st * blocks + b][u];
                        _mm_storeu_si128(ab.as_mut_ptr() as *mut __m128i, h);
                    }
                }
            }
        }
        let mut out = [[0f32; 8]; S];
        for ((wp, scratch), out) in wp
            .iter()
            .zip(scratch.chunks_exact(blocks.max(1)))
            .zip(&mut out)
        {
            let mut acc = _mm256_setzero_ps();
            for (b, ab) in scratch.iter().enumerate() {
                // SAFETY: block b lies inside each of the eight rows; `ab`
                // holds 8 x 4 i32.
                let (sa, sb) = block_scales::<T>(wp, b * T::BYTES);
                // [row j | row j + 4], then pairs added: [a_j, b_j, a_j+1,
                // b_j+1 | rows j + 4, j + 5], then the a and b lanes picked
                // out.
                let x = _mm256_castsi256_ps(_mm256_hadd_epi32(row_pair(ab, 0), row_pair(ab, 1)));
                let y = _mm256_castsi256_ps(_mm256_hadd_epi32(row_pair(ab, 2), row_pair(ab, 3)));
                let ai = _mm256_castps_si256(_mm256_shuffle_ps::<0b10_00_10_00>(x, y));
                let bi = _mm256_castps_si256(_mm256_shuffle_ps::<0b11_01_11_01>(x, y));
                acc = add_sums::<T>(acc, ai, bi, sa, sb, act.d[b], act.xsum[b]);
            }
            // SAFETY: 8 floats.
            _mm256_storeu_ps(out.as_mut_ptr(), acc);
        }
        out
    }
}

/// Rows `j` and `j + 4` of a block's half-added sums (`rows8_whole`'s
/// scratch), one per 128-bit half.
#[inline(always)]
fn row_pair(ab: &[[i32; 4]; 8], j: usize) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller (inlined into them); both
    // rows are 4 i32.
    unsafe {
        _mm256_loadu2_m128i(
            ab[j + 4].as_ptr() as *const __m128i,
            ab[j].as_ptr() as *const __m128i,
        )
    }
}

/// The eight weight rows at `wp` against activation rows `i..i + G`,
/// prefetching `ahead` on the way: `[t][u]` is activation row `i + t` times
/// weight row `u`. Block `b` of the eight rows is read side by side, for
/// the small blocks of the legacy types (read in memory order as
/// [`rows8`] does, a run of their blocks holds too few products to pay for
/// keeping its integers).
///
/// # Safety
/// AVX2, FMA and F16C; each `wp[u]` points at a row of `act.k / T::VALUES`
/// blocks, `i + G <= act.m`.
#[inline(always)]
unsafe fn rows8_interleaved<T: Avx2Block, const WIDE: bool, const G: usize>(
    act: ActQ8Rows,
    i: usize,
    wp: [*const u8; 8],
    ahead: &[u8],
) -> [[f32; 8]; 4] {
    // SAFETY: the caller's (the function's contract), as noted
    // at each access below.
    unsafe {
        let blocks = act.k / T::VALUES;
        let per_block_sums = T::VALUES / BSUM_VALUES;
        assert!((i + G) * act.k <= act.q.len());
        assert!((i + G) * blocks <= act.d.len() && (i + G) * blocks <= act.xsum.len());
        assert!((i + G) * blocks * per_block_sums <= act.bsums.len());
        let ahead_lines = ahead.len().div_ceil(64);
        let lines = ahead_lines.div_ceil(blocks.max(1));
        let mut acc = [_mm256_setzero_ps(); G];
        for b in 0..blocks {
            // SAFETY: each weight row's block b is inside its row, the
            // activation rows' block b inside act's slices (asserted above); the
            // prefetched lines start inside `ahead`.
            {
                for l in b * lines..((b + 1) * lines).min(ahead_lines) {
                    _mm_prefetch(ahead.as_ptr().add(64 * l) as *const i8, _MM_HINT_T0);
                }
                let at = b * T::BYTES;
                let x: [*const i8; G] =
                    std::array::from_fn(|t| act.q.as_ptr().add(((i + t) * blocks + b) * T::VALUES));
                let bs: [*const i16; G] = std::array::from_fn(|t| {
                    act.bsums
                        .as_ptr()
                        .add(((i + t) * blocks + b) * per_block_sums)
                });
                let mut a = [[_mm256_setzero_si256(); 8]; G];
                let mut bb = [[_mm256_setzero_si256(); 8]; G];
                for (u, &w) in wp.iter().enumerate() {
                    let (au, bu) = ints::<T, WIDE, G>(w.add(at), x, bs);
                    for t in 0..G {
                        a[t][u] = au[t];
                        bb[t][u] = bu[t];
                    }
                }
                let (sa, sb) = block_scales::<T>(&wp, at);
                for (t, acc) in acc.iter_mut().enumerate() {
                    let xa = (i + t) * blocks + b;
                    *acc = add_block::<T>(*acc, a[t], bb[t], sa, sb, act.d[xa], act.xsum[xa]);
                }
            }
        }
        lanes(acc)
    }
}

/// The eight weight rows at `wp` against one activation row, for types with
/// [`Avx2Block::pair_ints`]: rows `j` and `j + 4` share a vector, so a
/// block of the eight rows is four of them, added across by two rounds of
/// unpacks (where [`rows8_interleaved`] makes eight and transposes them).
///
/// # Safety
/// AVX2, FMA and F16C; each `wp[u]` points at a row of `act.k / T::VALUES`
/// blocks, `act.m >= 1`, `T::PAIRS`.
#[inline(always)]
unsafe fn rows8_pairs<T: Avx2Block>(act: ActQ8Rows, wp: [*const u8; 8]) -> [f32; 8] {
    // SAFETY: the caller's (the function's contract), as noted
    // at each access below.
    unsafe {
        let blocks = act.k / T::VALUES;
        let per_block_sums = T::VALUES / BSUM_VALUES;
        assert!(act.k <= act.q.len());
        assert!(blocks <= act.d.len() && blocks <= act.xsum.len());
        assert!(blocks * per_block_sums <= act.bsums.len());
        let mut acc = _mm256_setzero_ps();
        for b in 0..blocks {
            // SAFETY: each weight row's block b is inside its row, the
            // activation row's block b inside act's slices (asserted above).
            let at = b * T::BYTES;
            let x = act.q.as_ptr().add(b * T::VALUES);
            let bs = act.bsums.as_ptr().add(b * per_block_sums);
            let v: [__m256i; 4] = [
                T::pair_ints(wp[0].add(at), wp[4].add(at), x, bs),
                T::pair_ints(wp[1].add(at), wp[5].add(at), x, bs),
                T::pair_ints(wp[2].add(at), wp[6].add(at), x, bs),
                T::pair_ints(wp[3].add(at), wp[7].add(at), x, bs),
            ];
            // [rows 0..4 | rows 4..8], each lane its row's `a`.
            let ai = quad_sums(pair_sums(v[0], v[1]), pair_sums(v[2], v[3]));
            let (sa, sb) = block_scales::<T>(&wp, at);
            let zero = _mm256_setzero_si256();
            acc = add_sums::<T>(acc, ai, zero, sa, sb, act.d[b], act.xsum[b]);
        }
        let mut out = [0f32; 8];
        // SAFETY: 8 floats.
        _mm256_storeu_ps(out.as_mut_ptr(), acc);
        out
    }
}

/// The lanes of up to four accumulators, as the drivers return them.
#[inline]
#[target_feature(enable = "avx")]
fn lanes<const G: usize>(acc: [__m256; G]) -> [[f32; 8]; 4] {
    let mut out = [[0f32; 8]; 4];
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: 8 floats.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), a) };
    }
    out
}

/// The f16 scale fields of block `at` (bytes) of the eight rows `wp`, as f32
/// lanes: `sa` (at `T::SA_AT`) and `sb` (at `T::SB_AT`, negated where the
/// type subtracts it; zero for a type without it).
///
/// # Safety
/// AVX2, FMA and F16C; each row holds the block's bytes at `at`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn block_scales<T: Avx2Block>(wp: &[*const u8; 8], at: usize) -> (__m256, __m256) {
    // SAFETY: the f16 fields are inside each row's block (the caller's
    // contract).
    let f16s = |off: usize| unsafe {
        let h = |u: usize| i16::from_le_bytes([*wp[u].add(at + off), *wp[u].add(at + off + 1)]);
        _mm256_cvtph_ps(_mm_setr_epi16(
            h(0),
            h(1),
            h(2),
            h(3),
            h(4),
            h(5),
            h(6),
            h(7),
        ))
    };
    // SAFETY: each row holds the whole block at `at` (the caller's contract).
    let sa_bits = |u: usize| unsafe {
        T::sa_bits(std::slice::from_raw_parts(wp[u].add(at), T::BYTES)) as i16
    };
    let sa = _mm256_cvtph_ps(_mm_setr_epi16(
        sa_bits(0),
        sa_bits(1),
        sa_bits(2),
        sa_bits(3),
        sa_bits(4),
        sa_bits(5),
        sa_bits(6),
        sa_bits(7),
    ));
    let sa = if T::SA_MUL == 1.0 {
        sa
    } else {
        _mm256_mul_ps(sa, _mm256_set1_ps(T::SA_MUL))
    };
    let sb = if !T::HAS_B {
        _mm256_setzero_ps()
    } else if T::NEGATE_SB {
        _mm256_xor_ps(f16s(T::SB_AT), _mm256_set1_ps(-0.0))
    } else {
        f16s(T::SB_AT)
    };
    (sa, sb)
}

/// `acc` plus one block's products of one activation row with the eight
/// weight rows: their integers `a` (and `bb`, the second sum of types that
/// have one) against the rows' scales `sa`, `sb` and the activation block's
/// scale `dx` and sum `xsum`, in the scalar kernel's order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn add_block<T: Avx2Block>(
    acc: __m256,
    a: [__m256i; 8],
    bb: [__m256i; 8],
    sa: __m256,
    sb: __m256,
    dx: f32,
    xsum: i32,
) -> __m256 {
    add_sums::<T>(acc, sums8(a), sums8(bb), sa, sb, dx, xsum)
}

/// [`add_block`] with each row's integers already added up: lane `u` of
/// `ai` (and `bi`) holds row `u`'s `a` (and `b`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn add_sums<T: Avx2Block>(
    acc: __m256,
    mut ai: __m256i,
    bi: __m256i,
    sa: __m256,
    sb: __m256,
    dx: f32,
    xsum: i32,
) -> __m256 {
    let dx = _mm256_set1_ps(dx);
    if T::OFFSET != 0 {
        ai = _mm256_sub_epi32(ai, _mm256_set1_epi32(T::OFFSET * xsum));
    }
    // sa * dx rounded once per row, as the scalar kernel does.
    let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ai), _mm256_mul_ps(sa, dx), acc);
    if !T::HAS_B {
        return acc;
    }
    let bi = if T::B_IS_XSUM {
        _mm256_set1_epi32(xsum)
    } else {
        bi
    };
    _mm256_fmadd_ps(_mm256_cvtepi32_ps(bi), _mm256_mul_ps(sb, dx), acc)
}

/// Lanes `0..8` of the result hold i16 `j` of the low half of `v`'s 128-bit
/// halves, lanes `8..16` i16 `j'` of its high half: with `v` holding the same
/// eight scales in both halves, a pair of sub-block scales for `madd`.
#[inline(always)]
pub(super) fn pick_i16(v: __m256i, j: i32, j_hi: i32) -> __m256i {
    let at = |j: i32| (2 * j) | ((2 * j + 1) << 8);
    // SAFETY: AVX2 is enabled in every caller (inlined into them).
    unsafe {
        _mm256_shuffle_epi8(
            v,
            _mm256_set_m128i(
                _mm_set1_epi16(at(j_hi) as i16),
                _mm_set1_epi16(at(j) as i16),
            ),
        )
    }
}

/// `maddubs(codes, x)` (unsigned codes times int8, pairs added in i16: no
/// saturation for codes below 128 against |x| <= 127), then `madd` with
/// `scales` (i16 pairs into i32).
#[inline(always)]
pub(super) fn scaled_dot(codes: __m256i, x: *const i8, scales: __m256i) -> __m256i {
    // SAFETY: AVX2 is enabled in every caller (inlined into them), which
    // hands 32 readable bytes at `x`.
    unsafe {
        let x = _mm256_loadu_si256(x as *const __m256i);
        _mm256_madd_epi16(_mm256_maddubs_epi16(codes, x), scales)
    }
}
