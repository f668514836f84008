//! The checkpoint's int8 product with int8 activations (`kernels::q8_block_fast`,
//! the fast mode's integer products) on AVX2.
//!
//! The weights are `[k, n]` int8, so the four rows a 32-bit lane needs for one
//! column are `n` bytes apart: the kernels interleave four rows' bytes (two
//! unpack steps) so that each lane holds one column's quad, then
//! `maddubs(|w|, sign(x, w))` multiplies them with the activations' quad
//! (broadcast) and adds pairs, and `madd(_, 1)` adds the pairs: 32 products in
//! three instructions. The sign trick keeps every product within i16 (|w| <=
//! 128, |x| <= 127, so a pair is at most 32512), including w = -128.

use std::arch::x86_64::*;

use crate::backend::cpu::common::QUAD;
use crate::backend::cpu::types::int8_ckpt::{
    add_tail_columns, q8_block_fast_scalar, quad_lanes, Q8Rows, SplitView, BLOCK_QUADS,
};

/// From this many activation rows on, a chunk of weight quads is interleaved
/// once into panels and reused by every row from L1/L2; fewer rows interleave
/// each quad in registers as it streams past.
pub(super) const PANEL_MIN_M: usize = 4;
/// Most bytes of interleaved weights held at a time.
const PANEL_BYTES: usize = 96 << 10;
/// Activation rows per register tile.
const TILE_ROWS: usize = 4;

/// AVX2 version of `int8_ckpt::q8_block_fast_scalar`, bit-identical to it.
///
/// # Safety
/// The CPU must support AVX2 and FMA, and the bounds `kernels::q8_block_fast`
/// checks must hold.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q8_block_fast_avx2(view: &SplitView, wb: &Q8Rows, scales: &[f32], total: &mut [f32]) {
    let m = view.act.m;
    let nb = total.len() / m;
    let full = if m >= PANEL_MIN_M {
        nb / 16 * 16
    } else {
        nb / 32 * 32
    };
    if full > 0 {
        // SAFETY: the caller's bounds; columns 0..full <= nb.
        unsafe {
            match m {
                1 => stream::<1>(view, wb, full, scales, total),
                2 => stream::<2>(view, wb, full, scales, total),
                3 => stream::<3>(view, wb, full, scales, total),
                _ => panels(view, wb, full, scales, total),
            }
        }
    }
    // The last columns (fewer than a vector) through the scalar kernel.
    add_tail_columns(m, full, wb, scales, total, |cols, s, t| {
        q8_block_fast_scalar(view, cols, s, t)
    });
}

/// Pointers to the four weight rows of quad `qd` (`int8_ckpt::quad_lanes`) at
/// column `n0`, with padding lanes (in a ragged split's last block) read from
/// `zeros` (their activations are zero, so any finite bytes would do; zeros
/// keep them in bounds).
#[inline(always)]
pub(super) fn quad_rows(wb: &Q8Rows, qd: usize, zeros: &[u8]) -> [*const u8; QUAD] {
    quad_lanes(wb.rows.len(), qd).map(|lane| match lane {
        Some(r) => wb.w[(wb.rows.start + r) * wb.n + wb.n0..].as_ptr(),
        None => zeros.as_ptr(),
    })
}

/// Prefetches column `j` of the next quad's rows (once per cache line): a row
/// segment is a few pages, and hardware prefetchers stop at page boundaries.
///
/// # Safety
/// Each pointer has `j` readable bytes past it (a prefetch reads nothing, but
/// the address must stay inside the allocation).
#[inline(always)]
pub(super) unsafe fn prefetch_quad(next: Option<[*const u8; QUAD]>, j: usize) {
    if let Some(next) = next {
        if j.is_multiple_of(64) {
            for p in next {
                // SAFETY: the caller's bound.
                unsafe { _mm_prefetch(p.add(j) as *const i8, _MM_HINT_T0) };
            }
        }
    }
}

/// `total[i][j] += part[i][j] * scales[j]` for columns `0..full` (a product,
/// then a sum, as the scalar kernel).
///
/// # Safety
/// AVX2; `part` is `[m, full]`, `total` `[m, nb]`, `full <= nb`, `full % 8 == 0`,
/// `scales.len() >= full`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn add_scaled(
    part: &[f32],
    full: usize,
    scales: &[f32],
    total: &mut [f32],
    nb: usize,
) {
    for (tr, pr) in total.chunks_exact_mut(nb).zip(part.chunks_exact(full)) {
        for j in (0..full).step_by(8) {
            // SAFETY: j + 8 <= full <= nb, full <= scales.len().
            unsafe {
                let p = _mm256_loadu_ps(pr.as_ptr().add(j));
                let s = _mm256_loadu_ps(scales.as_ptr().add(j));
                let t = tr.as_mut_ptr().add(j);
                _mm256_storeu_ps(t, _mm256_add_ps(_mm256_loadu_ps(t), _mm256_mul_ps(p, s)));
            }
        }
    }
}

/// `M < PANEL_MIN_M` activation rows (decoding): each quad of weight rows is
/// read once, 32 columns at a time, interleaved in registers and used by
/// every row; the i32 sums wait in memory (`acc`, in the unpack order) until
/// the block ends, then go, in column order, into the f32 `part`.
///
/// # Safety
/// As `q8_block_fast_avx2`, with `m == M`, `full % 32 == 0`, `full <= nb`.
#[target_feature(enable = "avx2,fma")]
unsafe fn stream<const M: usize>(
    view: &SplitView,
    wb: &Q8Rows,
    full: usize,
    scales: &[f32],
    total: &mut [f32],
) {
    let nb = total.len() / M;
    let nq = view.rows.len().div_ceil(QUAD);
    let zeros = vec![0u8; full];
    let mut acc = vec![0i32; M * full];
    let mut part = vec![0f32; M * full];
    let (ap, pp) = (acc.as_mut_ptr(), part.as_mut_ptr());
    let ones = _mm256_set1_epi16(1);
    for qd in 0..nq {
        let [p0, p1, p2, p3] = quad_rows(wb, qd, &zeros);
        let next = (qd + 1 < nq).then(|| quad_rows(wb, qd + 1, &zeros));
        let xs: [__m256i; M] = std::array::from_fn(|i| _mm256_set1_epi32(view.quad(i, qd)));
        for j in (0..full).step_by(32) {
            // SAFETY (block): each row pointer has `full` readable bytes from
            // column n0 (a row of the split, or `zeros`); acc and part rows are
            // `full` long; j + 32 <= full.
            unsafe {
                prefetch_quad(next, j);
                let a = _mm256_loadu_si256(p0.add(j) as *const __m256i);
                let b = _mm256_loadu_si256(p1.add(j) as *const __m256i);
                let c = _mm256_loadu_si256(p2.add(j) as *const __m256i);
                let d = _mm256_loadu_si256(p3.add(j) as *const __m256i);
                let (ab_lo, ab_hi) = (_mm256_unpacklo_epi8(a, b), _mm256_unpackhi_epi8(a, b));
                let (cd_lo, cd_hi) = (_mm256_unpacklo_epi8(c, d), _mm256_unpackhi_epi8(c, d));
                // Lanes: v0 columns 0-3 | 16-19, v1 4-7 | 20-23, v2 8-11 | 24-27,
                // v3 12-15 | 28-31, each 32-bit lane one column's four rows.
                let v = [
                    _mm256_unpacklo_epi16(ab_lo, cd_lo),
                    _mm256_unpackhi_epi16(ab_lo, cd_lo),
                    _mm256_unpacklo_epi16(ab_hi, cd_hi),
                    _mm256_unpackhi_epi16(ab_hi, cd_hi),
                ];
                let va = v.map(|v| _mm256_abs_epi8(v));
                for (i, &x) in xs.iter().enumerate() {
                    let base = ap.add(i * full + j) as *mut __m256i;
                    for u in 0..4 {
                        let prod = _mm256_madd_epi16(
                            _mm256_maddubs_epi16(va[u], _mm256_sign_epi8(x, v[u])),
                            ones,
                        );
                        let s = base.add(u);
                        _mm256_storeu_si256(s, _mm256_add_epi32(_mm256_loadu_si256(s), prod));
                    }
                }
            }
        }
        if (qd + 1) % BLOCK_QUADS == 0 || qd + 1 == nq {
            let b = qd / BLOCK_QUADS;
            for i in 0..M {
                let sx = _mm256_set1_ps(view.scale(i, b));
                for j in (0..full).step_by(32) {
                    // SAFETY: j + 32 <= full on rows i < M of acc and part.
                    unsafe {
                        let s = ap.add(i * full + j) as *mut __m256i;
                        let v: [__m256i; 4] = std::array::from_fn(|u| _mm256_loadu_si256(s.add(u)));
                        let cols = [
                            _mm256_permute2x128_si256::<0x20>(v[0], v[1]),
                            _mm256_permute2x128_si256::<0x20>(v[2], v[3]),
                            _mm256_permute2x128_si256::<0x31>(v[0], v[1]),
                            _mm256_permute2x128_si256::<0x31>(v[2], v[3]),
                        ];
                        for (u, c) in cols.into_iter().enumerate() {
                            let p = pp.add(i * full + j + 8 * u);
                            let f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c), sx, _mm256_loadu_ps(p));
                            _mm256_storeu_ps(p, f);
                            _mm256_storeu_si256(s.add(u), _mm256_setzero_si256());
                        }
                    }
                }
            }
        }
    }
    // SAFETY: part is [M, full], total [M, nb] with full <= nb, scales >= full.
    unsafe { add_scaled(&part, full, scales, total, nb) };
}

/// `m >= PANEL_MIN_M` activation rows: chunks of quads (whole blocks) are
/// interleaved once into 16-column panels (`[chunk][16 columns x 4 rows]`
/// bytes each), each read front to back with the next quad's rows prefetched,
/// then `MR x 16` register tiles run down each panel: i32 sums per block, f32
/// sums carried in registers through the chunk and in `part` between chunks.
///
/// # Safety
/// As `q8_block_fast_avx2`, with `full % 16 == 0`, `full <= nb`.
#[target_feature(enable = "avx2,fma")]
unsafe fn panels(view: &SplitView, wb: &Q8Rows, full: usize, scales: &[f32], total: &mut [f32]) {
    let nb = total.len() / view.act.m;
    run_panels(
        view,
        full,
        total,
        TILE_ROWS,
        |quads, nq, chunk, zeros, panel| {
            // SAFETY: the caller's bounds; the panel holds `chunk` quads per 16 columns.
            unsafe { pack_panels(wb, quads, nq, chunk, full, zeros, panel, false) }
        },
        |tile, i, mr, part, total| {
            // SAFETY: rows i..i + mr <= m of part and total.
            unsafe {
                match mr {
                    1 => tile.run::<1>(i, part, total, nb, scales),
                    2 => tile.run::<2>(i, part, total, nb, scales),
                    3 => tile.run::<3>(i, part, total, nb, scales),
                    _ => tile.run::<TILE_ROWS>(i, part, total, nb, scales),
                }
            }
        },
    );
}

/// The panel loop of the int8 tile kernels (AVX2 and VNNI): chunks of quads
/// (whole blocks, `PANEL_BYTES` of panels at most) interleaved by `pack(quads,
/// nq, chunk, zeros, panel)` into 16-column panels, then for each panel
/// `run(tile, i, mr, part, total)` on rows `i..i + mr`, `mr <= tile_rows`,
/// with `part` (`[m, full]`) carrying the sums between chunks. Columns
/// `0..full` (`full % 16 == 0`, `full <= nb`).
#[inline(always)]
pub(super) fn run_panels(
    view: &SplitView,
    full: usize,
    total: &mut [f32],
    tile_rows: usize,
    pack: impl Fn(std::ops::Range<usize>, usize, usize, &[u8], &mut [u8]),
    run: impl Fn(&Tile, usize, usize, &mut [f32], &mut [f32]),
) {
    let m = view.act.m;
    let nq = view.rows.len().div_ceil(QUAD);
    let chunk = (PANEL_BYTES / (full * QUAD) / BLOCK_QUADS * BLOCK_QUADS)
        .max(BLOCK_QUADS)
        .min(nq.div_ceil(BLOCK_QUADS) * BLOCK_QUADS);
    let zeros = vec![0u8; full];
    let mut panel = vec![0u8; chunk * full * QUAD];
    let mut part = vec![0f32; m * full];
    for c0 in (0..nq).step_by(chunk) {
        let cq = chunk.min(nq - c0);
        pack(c0..c0 + cq, nq, chunk, &zeros, &mut panel);
        for j in (0..full).step_by(16) {
            // The panel's quads rounded up to whole blocks (<= chunk): the AMX
            // tiles read a short last block whole, against zero activations.
            let tile = Tile {
                view,
                panel: &panel
                    [j / 16 * chunk * 64..(j / 16 * chunk + cq.next_multiple_of(BLOCK_QUADS)) * 64],
                quads: c0..c0 + cq,
                last_quad: nq,
                j,
                full,
            };
            let mut i = 0;
            while i < m {
                let mr = tile_rows.min(m - i);
                run(&tile, i, mr, &mut part, total);
                i += mr;
            }
        }
    }
}

/// Interleaves the split's quads `quads` (a chunk of `chunk` at most, of `nq`)
/// into 16-column panels (`panel[(j / 16 * chunk + q) * 64..]`: column `j +
/// c`'s four rows at bytes `4 c..4 c + 4`) for columns `0..full`, prefetching
/// the next quad's rows; `bias` adds 128 to every byte (the unsigned operand
/// of the VNNI kernels).
///
/// # Safety
/// AVX2; the bounds of `q8_block_fast_avx2` with `full <= nb`,
/// `full % 16 == 0`, `zeros.len() >= full`, `panel.len() >= chunk * full * 4`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn pack_panels(
    wb: &Q8Rows,
    quads: std::ops::Range<usize>,
    nq: usize,
    chunk: usize,
    full: usize,
    zeros: &[u8],
    panel: &mut [u8],
    bias: bool,
) {
    assert!(quads.len() <= chunk && panel.len() >= chunk * full * QUAD && zeros.len() >= full);
    let pan = panel.as_mut_ptr();
    let flip = _mm_set1_epi8(if bias { -128 } else { 0 });
    for (qd, quad) in quads.clone().enumerate() {
        let [p0, p1, p2, p3] = quad_rows(wb, quad, zeros);
        let next = (quad + 1 < nq).then(|| quad_rows(wb, quad + 1, zeros));
        for j in (0..full).step_by(16) {
            // SAFETY: row pointers have `full` bytes from column n0; the
            // panel of columns j..j + 16 holds `chunk` quads of 64 bytes.
            unsafe {
                prefetch_quad(next, j);
                let load =
                    |p: *const u8| _mm_xor_si128(_mm_loadu_si128(p.add(j) as *const __m128i), flip);
                let (a, b, c, d) = (load(p0), load(p1), load(p2), load(p3));
                let (ab_lo, ab_hi) = (_mm_unpacklo_epi8(a, b), _mm_unpackhi_epi8(a, b));
                let (cd_lo, cd_hi) = (_mm_unpacklo_epi8(c, d), _mm_unpackhi_epi8(c, d));
                let dst = pan.add((j / 16 * chunk + qd) * 64) as *mut __m128i;
                _mm_storeu_si128(dst, _mm_unpacklo_epi16(ab_lo, cd_lo));
                _mm_storeu_si128(dst.add(1), _mm_unpackhi_epi16(ab_lo, cd_lo));
                _mm_storeu_si128(dst.add(2), _mm_unpacklo_epi16(ab_hi, cd_hi));
                _mm_storeu_si128(dst.add(3), _mm_unpackhi_epi16(ab_hi, cd_hi));
            }
        }
    }
}

/// One chunk of a 16-column panel (the AVX2 and VNNI tiles run on it).
pub(super) struct Tile<'a> {
    pub view: &'a SplitView<'a>,
    /// `[quads][64]` interleaved weights.
    pub panel: &'a [u8],
    /// The chunk's quads in the split.
    pub quads: std::ops::Range<usize>,
    /// Quads in the split.
    pub last_quad: usize,
    /// The panel's first column.
    pub j: usize,
    /// `part`'s row length.
    pub full: usize,
}

impl Tile<'_> {
    /// Rows `i0..i0 + MR`.
    ///
    /// # Safety
    /// AVX2 and FMA; `i0 + MR <= m`; `part` is `[m, full]`, `total` `[m, nb]`
    /// with `j + 16 <= full <= nb`, `scales.len() >= full`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run<const MR: usize>(
        &self,
        i0: usize,
        part: &mut [f32],
        total: &mut [f32],
        nb: usize,
        scales: &[f32],
    ) {
        assert!(self.panel.len() >= self.quads.len() * 64 && self.j + 16 <= self.full);
        let pp = part.as_mut_ptr();
        let first = self.quads.start == 0;
        let last = self.quads.end == self.last_quad;
        let mut f = [[_mm256_setzero_ps(); 2]; MR];
        if !first {
            for (t, ft) in f.iter_mut().enumerate() {
                // SAFETY: row i0 + t < m, columns j..j + 16 <= full of part.
                unsafe {
                    let p = pp.add((i0 + t) * self.full + self.j);
                    ft[0] = _mm256_loadu_ps(p);
                    ft[1] = _mm256_loadu_ps(p.add(8));
                }
            }
        }
        let ones = _mm256_set1_epi16(1);
        let mut c = [[_mm256_setzero_si256(); 2]; MR];
        let wp = self.panel.as_ptr();
        // Each row's quads as 32-bit words (read unaligned).
        let xr: [*const i32; MR] = std::array::from_fn(|t| {
            let row = self.view.row(i0 + t);
            assert!(row.len() >= self.quads.end * QUAD);
            row.as_ptr() as *const i32
        });
        // Chunks start on block boundaries: blocks of BLOCK_QUADS quads (the
        // split's last one shorter), each summed in i32 then taken to f32.
        let mut qd = self.quads.start;
        while qd < self.quads.end {
            let end = (qd + BLOCK_QUADS).min(self.last_quad);
            debug_assert!(end <= self.quads.end);
            for q in qd..end {
                let at = q - self.quads.start;
                // SAFETY: at < quads.len(), so the panel's 64 bytes are in bounds.
                let (w0, w1) = unsafe {
                    (
                        _mm256_loadu_si256(wp.add(64 * at) as *const __m256i),
                        _mm256_loadu_si256(wp.add(64 * at + 32) as *const __m256i),
                    )
                };
                let (a0, a1) = (_mm256_abs_epi8(w0), _mm256_abs_epi8(w1));
                for (t, ct) in c.iter_mut().enumerate() {
                    // SAFETY: q < quads.end, inside the row (asserted above).
                    let x = _mm256_set1_epi32(unsafe { xr[t].add(q).read_unaligned() });
                    let p0 =
                        _mm256_madd_epi16(_mm256_maddubs_epi16(a0, _mm256_sign_epi8(x, w0)), ones);
                    let p1 =
                        _mm256_madd_epi16(_mm256_maddubs_epi16(a1, _mm256_sign_epi8(x, w1)), ones);
                    ct[0] = _mm256_add_epi32(ct[0], p0);
                    ct[1] = _mm256_add_epi32(ct[1], p1);
                }
            }
            let b = qd / BLOCK_QUADS;
            for t in 0..MR {
                let sx = _mm256_set1_ps(self.view.scale(i0 + t, b));
                for u in 0..2 {
                    f[t][u] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(c[t][u]), sx, f[t][u]);
                    c[t][u] = _mm256_setzero_si256();
                }
            }
            qd = end;
        }
        for (t, ft) in f.iter().enumerate() {
            // SAFETY: row i0 + t < m; columns j..j + 16 <= full <= nb.
            unsafe {
                if last {
                    let s0 = _mm256_loadu_ps(scales.as_ptr().add(self.j));
                    let s1 = _mm256_loadu_ps(scales.as_ptr().add(self.j + 8));
                    let p = total.as_mut_ptr().add((i0 + t) * nb + self.j);
                    _mm256_storeu_ps(
                        p,
                        _mm256_add_ps(_mm256_loadu_ps(p), _mm256_mul_ps(ft[0], s0)),
                    );
                    let p = p.add(8);
                    _mm256_storeu_ps(
                        p,
                        _mm256_add_ps(_mm256_loadu_ps(p), _mm256_mul_ps(ft[1], s1)),
                    );
                } else {
                    let p = pp.add((i0 + t) * self.full + self.j);
                    _mm256_storeu_ps(p, ft[0]);
                    _mm256_storeu_ps(p.add(8), ft[1]);
                }
            }
        }
    }
}
