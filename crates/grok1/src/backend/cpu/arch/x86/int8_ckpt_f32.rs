//! The checkpoint's int8 product with f32 activations (`kernels::q8_block`)
//! on AVX2 + FMA, on 512-bit registers where the CPU has AVX-512 F: the
//! register-summed streams of `int8_ckpt_strips` for a few activation rows
//! (decoding), panels of weights converted to f32 under register tiles for
//! more (prefill).

use std::arch::x86_64::*;
use std::ops::Range;

use super::int8_ckpt_strips::{
    STRIPS_AVX2_MAX_M, STRIPS_AVX2_WIDE_M, STRIPS_MAX_M, STRIPS_MAX_M_HALF,
};
use crate::backend::cpu::types::int8_ckpt::{add_tail_columns, q8_block_scalar, Q8Rows, XGROUP};

/// AVX2 version of `int8_ckpt::q8_block_scalar` (same FMAs in the same order,
/// the same scale multiply and add: bit-identical). A few activation rows
/// (decoding: up to `STRIPS_MAX_M_HALF` where `wide` allows AVX-512, else
/// `STRIPS_AVX2_MAX_M`) take the register-summed streams of `int8_ckpt_strips`;
/// more rows (prefill) the panels.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `m > 0`, `total.len() == m * nb`,
/// `scales.len() >= nb`, `xp` holds `m * k` packed activations with
/// `rows.end <= k`, `n0 + nb <= n` and
/// `rows.end * n <= w.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn q8_block_avx2(
    xp: &[f32],
    m: usize,
    wb: &Q8Rows,
    scales: &[f32],
    total: &mut [f32],
    wide: Wide,
) {
    let nb = total.len() / m;
    let strips = match wide {
        Wide::Avx512 => m <= STRIPS_MAX_M_HALF,
        Wide::Avx2 => m <= STRIPS_AVX2_MAX_M,
    };
    if !strips {
        // SAFETY: the same bounds, passed on.
        unsafe { q8_block_panels(xp, m, wb, scales, total, wide) };
        return;
    }
    // Columns per strip.
    let width = match wide {
        Wide::Avx512 if m <= STRIPS_MAX_M => 64,
        Wide::Avx512 => 32,
        Wide::Avx2 if m <= STRIPS_AVX2_WIDE_M => 32,
        Wide::Avx2 => 16,
    };
    let full = nb / width * width;
    let mut acc = vec![0f32; m * full];
    // SAFETY: AVX-512 F is present for Wide::Avx512, AVX2 and FMA always
    // (this function's features); the same bounds, with `acc` `[m, full]`.
    unsafe {
        use super::int8_ckpt_strips::{q8_stream_f32_256 as s256, q8_stream_f32_512 as s512};
        let acc = &mut acc;
        match (wide, m) {
            (Wide::Avx512, 1) => s512::<1, 4>(xp, wb, full, acc),
            (Wide::Avx512, 2) => s512::<2, 4>(xp, wb, full, acc),
            (Wide::Avx512, 3) => s512::<3, 4>(xp, wb, full, acc),
            (Wide::Avx512, 4) => s512::<4, 4>(xp, wb, full, acc),
            (Wide::Avx512, 5) => s512::<5, 4>(xp, wb, full, acc),
            (Wide::Avx512, 6) => s512::<6, 4>(xp, wb, full, acc),
            (Wide::Avx512, 7) => s512::<7, 2>(xp, wb, full, acc),
            (Wide::Avx512, 8) => s512::<8, 2>(xp, wb, full, acc),
            (Wide::Avx512, 9) => s512::<9, 2>(xp, wb, full, acc),
            (Wide::Avx512, 10) => s512::<10, 2>(xp, wb, full, acc),
            (Wide::Avx512, 11) => s512::<11, 2>(xp, wb, full, acc),
            (Wide::Avx512, _) => s512::<12, 2>(xp, wb, full, acc),
            (Wide::Avx2, 1) => s256::<1, 4>(xp, wb, full, acc),
            (Wide::Avx2, 2) => s256::<2, 4>(xp, wb, full, acc),
            (Wide::Avx2, 3) => s256::<3, 2>(xp, wb, full, acc),
            (Wide::Avx2, 4) => s256::<4, 2>(xp, wb, full, acc),
            (Wide::Avx2, 5) => s256::<5, 2>(xp, wb, full, acc),
            (Wide::Avx2, _) => s256::<6, 2>(xp, wb, full, acc),
        }
    }
    if full > 0 {
        // SAFETY: AVX2 (this function's features); `acc` is [m, full], full
        // is a multiple of 16 and at most nb, scales.len() >= nb.
        unsafe { super::int8_ckpt_i8_avx2::add_scaled(&acc, full, scales, total, nb) };
    }
    // The last columns (fewer than a strip), as the panels leave theirs.
    add_tail_columns(m, full, wb, scales, total, |cols, s, t| {
        q8_block_scalar(xp, m, cols, s, t)
    });
}

/// Weight rows per panel: 16 KiB of f32, half of L1.
const PANEL_ROWS: usize = 256;
/// Most floats of converted weights held at a time on a wide matrix (256 KiB,
/// half of L2).
const PANEL_FLOATS: usize = 65536;

/// `q8_block_avx2` for more rows than the streams take: for each 16-column panel, its rows
/// are converted to f32 into a buffer (`PANEL_ROWS` at a time) and `MR x 16`
/// tiles of accumulators are kept in registers while the rows stream past;
/// between row chunks they wait in `part`. Each accumulator starts at zero and
/// takes one FMA per weight row, in row order; the last chunk multiplies by
/// the scales and adds into `total`: bit-identical to the scalar kernel. The
/// last `nb % 16` columns go through the scalar kernel.
///
/// # Safety
/// The bounds of `q8_block_avx2`.
#[target_feature(enable = "avx2,fma")]
unsafe fn q8_block_panels(
    xp: &[f32],
    m: usize,
    wb: &Q8Rows,
    scales: &[f32],
    total: &mut [f32],
    wide: Wide,
) {
    let Q8Rows { w, n, n0, .. } = *wb;
    let rows = wb.rows.clone();
    let (nb, k) = (total.len() / m, xp.len() / m);
    let full = nb / 16 * 16;
    if n >= 4096 {
        // Rows a page or more apart (a wide matrix): the hardware prefetchers
        // do not follow a panel's walk down them, so the block is converted
        // row by row instead, each row read front to back and the next rows
        // prefetched (full-width Grok-1 prefill: 19 -> 25 tokens/s). On
        // narrow matrices this measured 10% slower than one panel at a time.
        // SAFETY: the same bounds, passed on.
        unsafe { q8_panels_by_rows(xp, m, wb, scales, total, wide) };
    } else {
        let mut panel = [0f32; PANEL_ROWS * 16];
        let mut part = vec![0f32; m * 16];
        for j in (0..full).step_by(16) {
            let mut r0 = rows.start;
            while r0 < rows.end {
                let count = PANEL_ROWS.min(rows.end - r0);
                for t in 0..count {
                    // SAFETY: row r0 + t < rows.end, columns n0 + j .. n0 + j + 16 <= n0 + nb.
                    unsafe {
                        widen16(
                            w.as_ptr().add((r0 + t) * n + n0 + j),
                            panel.as_mut_ptr().add(16 * t),
                        )
                    };
                }
                let tile = Tile {
                    xp,
                    k,
                    rows: r0..r0 + count,
                    panel: &panel[..count * 16],
                    first: r0 == rows.start,
                    last: (r0 + count == rows.end).then_some(&scales[j..j + 16]),
                };
                let out = Out {
                    part: &mut part,
                    part_stride: 16,
                    part_j: 0,
                    total: &mut *total,
                    nb,
                    j,
                };
                // SAFETY: rows i..i + MR <= m of `part` and `total`, columns j..j + 16 <= nb.
                unsafe { tile.run_any(m, out, wide) };
                r0 += count;
            }
        }
    }
    add_tail_columns(m, full, wb, scales, total, |cols, s, t| {
        q8_block_scalar(xp, m, cols, s, t)
    });
}

/// `q8_block_panels` for a wide matrix (columns `0..nb / 16 * 16`): chunks of
/// rows converted whole, row after row, into one panel per 16 columns held in
/// L2, then the same register tiles.
///
/// # Safety
/// The bounds of `q8_block_avx2`.
#[target_feature(enable = "avx2,fma")]
unsafe fn q8_panels_by_rows(
    xp: &[f32],
    m: usize,
    wb: &Q8Rows,
    scales: &[f32],
    total: &mut [f32],
    wide: Wide,
) {
    let Q8Rows { w, n, n0, .. } = *wb;
    let rows = wb.rows.clone();
    let (nb, k) = (total.len() / m, xp.len() / m);
    let full = nb / 16 * 16;
    let group = full.max(16);
    let chunk = (PANEL_FLOATS / group).clamp(16, PANEL_ROWS);
    let mut panels = vec![0f32; chunk * group];
    let mut part = vec![0f32; m * group];
    for g0 in (0..full).step_by(group) {
        let width = group.min(full - g0);
        let mut r0 = rows.start;
        while r0 < rows.end {
            let count = chunk.min(rows.end - r0);
            for t in 0..count {
                let src = (r0 + t) * n + n0 + g0;
                // SAFETY: row r0 + t < rows.end, columns n0 + g0 .. n0 + g0 + width
                // <= n0 + nb; a prefetch reads nothing, and row r0 + t + 4 exists.
                unsafe {
                    if width > 16 && r0 + t + 4 < rows.end {
                        for j in (0..width).step_by(64) {
                            _mm_prefetch(w.as_ptr().add(src + 4 * n + j) as *const i8, _MM_HINT_T0);
                        }
                    }
                    for j in (0..width).step_by(16) {
                        widen16(
                            w.as_ptr().add(src + j),
                            panels.as_mut_ptr().add(j * chunk + 16 * t),
                        );
                    }
                }
            }
            for j in (0..width).step_by(16) {
                let tile = Tile {
                    xp,
                    k,
                    rows: r0..r0 + count,
                    panel: &panels[j * chunk..j * chunk + count * 16],
                    first: r0 == rows.start,
                    last: (r0 + count == rows.end).then_some(&scales[g0 + j..g0 + j + 16]),
                };
                let out = Out {
                    part: &mut part,
                    part_stride: group,
                    part_j: j,
                    total: &mut *total,
                    nb,
                    j: g0 + j,
                };
                // SAFETY: rows i..i + MR <= m of `part` and `total`, columns
                // g0 + j .. g0 + j + 16 <= full <= nb.
                unsafe { tile.run_any(m, out, wide) };
            }
            r0 += count;
        }
    }
}

/// Sixteen int8 weights at `src` written as f32 at `dst`.
///
/// # Safety
/// AVX2; 16 bytes readable at `src`, 16 floats writable at `dst`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn widen16(src: *const u8, dst: *mut f32) {
    // SAFETY: the caller's bounds.
    unsafe {
        let lo = _mm_loadl_epi64(src as *const __m128i);
        let hi = _mm_loadl_epi64(src.add(8) as *const __m128i);
        _mm256_storeu_ps(dst, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)));
        _mm256_storeu_ps(dst.add(8), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)));
    }
}

/// Whether the f32 register tiles may use AVX-512 (`Wide::Avx512` only when
/// the CPU has AVX-512 F).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wide {
    Avx2,
    Avx512,
}

/// One chunk of converted weight rows of a 16-column panel, against their
/// activations.
struct Tile<'a> {
    /// All the packed activations (`pack_activations`, `k` columns).
    xp: &'a [f32],
    k: usize,
    /// The chunk's weight rows.
    rows: Range<usize>,
    /// `[rows, 16]` f32 weights.
    panel: &'a [f32],
    /// The sums start at zero (else from `part`).
    first: bool,
    /// The panel's scales when this is its last chunk: the sums go, scaled,
    /// into `total` (else they wait in `part`).
    last: Option<&'a [f32]>,
}

/// Where a tile's sums go.
struct Out<'a> {
    /// `[m, part_stride]` sums carried between chunks (the panel's at column
    /// `part_j`).
    part: &'a mut [f32],
    part_stride: usize,
    part_j: usize,
    /// `[m, nb]`.
    total: &'a mut [f32],
    nb: usize,
    /// The panel's first column in `total`.
    j: usize,
}

impl Tile<'_> {
    /// `run_all`, or `run_all_avx512` where `wide` allows.
    ///
    /// # Safety
    /// As `run_all`; `Wide::Avx512` only when the CPU has AVX-512 F.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_any(&self, m: usize, out: Out<'_>, wide: Wide) {
        // SAFETY: the caller's bounds and features.
        unsafe {
            match wide {
                Wide::Avx2 => self.run_all(m, out),
                Wide::Avx512 => self.run_all_avx512(m, out),
            }
        }
    }

    /// `run_all` on 512-bit registers: a 16-column panel row is one vector,
    /// and two packed groups (12 rows, 12 accumulators: enough to hide the
    /// FMA latency on two FMA units) share each weight load. The same FMAs in
    /// the same order per accumulator: bit-identical.
    ///
    /// # Safety
    /// As `run_all`, and AVX-512 F.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f")]
    unsafe fn run_all_avx512(&self, m: usize, mut out: Out<'_>) {
        let mut i = 0;
        while i < m {
            let group = |i: usize| {
                let width = XGROUP.min(m - i);
                (
                    width,
                    &self.xp
                        [i * self.k + self.rows.start * width..i * self.k + self.rows.end * width],
                )
            };
            let (width, x) = group(i);
            // SAFETY: rows i..i + width (and the next group's) <= m; each `x`
            // holds its group's values for the chunk's rows.
            unsafe {
                if width == XGROUP && i + 2 * XGROUP <= m {
                    let (_, x2) = group(i + XGROUP);
                    self.run_avx512::<XGROUP, 2>([x, x2], i, &mut out);
                    i += 2 * XGROUP;
                    continue;
                }
                match width {
                    6 => self.run_avx512::<6, 1>([x], i, &mut out),
                    5 => self.run_avx512::<5, 1>([x], i, &mut out),
                    4 => self.run_avx512::<4, 1>([x], i, &mut out),
                    3 => self.run_avx512::<3, 1>([x], i, &mut out),
                    2 => self.run_avx512::<2, 1>([x], i, &mut out),
                    _ => self.run_avx512::<1, 1>([x], i, &mut out),
                }
            }
            i += width;
        }
    }

    /// `run` for `G` consecutive packed groups of `MR` rows from `i0` (each
    /// `xs[g]` is `[rows, MR]`), one 512-bit accumulator per row.
    ///
    /// # Safety
    /// AVX-512 F; rows `i0..i0 + G * MR <= m`; the shapes of `run_all`.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f")]
    unsafe fn run_avx512<const MR: usize, const G: usize>(
        &self,
        xs: [&[f32]; G],
        i0: usize,
        out: &mut Out<'_>,
    ) {
        let rows = self.panel.len() / 16;
        assert!(xs.iter().all(|x| x.len() >= rows * MR) && out.j + 16 <= out.nb);
        let pp = out.part.as_mut_ptr();
        let at = |g: usize, t: usize| i0 + g * MR + t;
        let mut c = [[_mm512_setzero_ps(); MR]; G];
        if !self.first {
            for (g, cg) in c.iter_mut().enumerate() {
                for (t, ct) in cg.iter_mut().enumerate() {
                    // SAFETY: row at(g, t) < m, columns part_j..part_j + 16 of part.
                    *ct =
                        unsafe { _mm512_loadu_ps(pp.add(at(g, t) * out.part_stride + out.part_j)) };
                }
            }
        }
        let wp = self.panel.as_ptr();
        let xp = xs.map(|x| x.as_ptr());
        for r in 0..rows {
            // SAFETY: r < rows: panel[16 r..16 r + 16] and xs[g][r MR + t] are in bounds.
            unsafe {
                let w = _mm512_loadu_ps(wp.add(16 * r));
                for (g, cg) in c.iter_mut().enumerate() {
                    for (t, ct) in cg.iter_mut().enumerate() {
                        let x = _mm512_set1_ps(*xp[g].add(r * MR + t));
                        *ct = _mm512_fmadd_ps(x, w, *ct);
                    }
                }
            }
        }
        let tp = out.total.as_mut_ptr();
        for (g, cg) in c.iter().enumerate() {
            for (t, ct) in cg.iter().enumerate() {
                // SAFETY: as for the loads; scales has 16 values, columns
                // j..j + 16 <= nb of total.
                unsafe {
                    match self.last {
                        None => {
                            _mm512_storeu_ps(pp.add(at(g, t) * out.part_stride + out.part_j), *ct)
                        }
                        Some(scales) => {
                            let p = tp.add(at(g, t) * out.nb + out.j);
                            let s = _mm512_loadu_ps(scales.as_ptr());
                            _mm512_storeu_ps(
                                p,
                                _mm512_add_ps(_mm512_loadu_ps(p), _mm512_mul_ps(*ct, s)),
                            );
                        }
                    }
                }
            }
        }
    }

    /// Every activation row, a packed group at a time.
    ///
    /// # Safety
    /// AVX2 and FMA; `part` is `[m, part_stride]` with `part_j + 16 <=
    /// part_stride`, `total` `[m, nb]` with `j + 16 <= nb`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_all(&self, m: usize, mut out: Out<'_>) {
        for i in (0..m).step_by(XGROUP) {
            let width = XGROUP.min(m - i);
            // The group's values for the chunk's rows: one sequential run.
            let base = i * self.k;
            let x = &self.xp[base + self.rows.start * width..base + self.rows.end * width];
            // SAFETY: rows i..i + width <= m; `x` holds the chunk's rows.
            unsafe {
                match width {
                    6 => self.run::<6>(x, i, &mut out),
                    5 => self.run::<5>(x, i, &mut out),
                    4 => self.run::<4>(x, i, &mut out),
                    3 => self.run::<3>(x, i, &mut out),
                    2 => self.run::<2>(x, i, &mut out),
                    _ => self.run::<1>(x, i, &mut out),
                }
            }
        }
    }

    /// Rows `i0..i0 + MR`: `c[t] = (first ? 0 : part[i0 + t]) + sum over the
    /// chunk's rows of x[row][t] * panel[row]`, one FMA per row in
    /// order, the accumulators in registers; then either `part = c` or
    /// `total[.., j..j + 16] += c * scales`.
    ///
    /// # Safety
    /// AVX2 and FMA; `x` is `[rows, MR]`, `i0 + MR <= m`, and the shapes of
    /// `run_all`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run<const MR: usize>(&self, x: &[f32], i0: usize, out: &mut Out<'_>) {
        let rows = self.panel.len() / 16;
        assert!(x.len() >= rows * MR && out.j + 16 <= out.nb);
        let pp = out.part.as_mut_ptr();
        let mut c = [[_mm256_setzero_ps(); 2]; MR];
        if !self.first {
            for (t, ct) in c.iter_mut().enumerate() {
                // SAFETY: row i0 + t < m, columns part_j..part_j + 16 of the [m, part_stride] part.
                unsafe {
                    ct[0] = _mm256_loadu_ps(pp.add((i0 + t) * out.part_stride + out.part_j));
                    ct[1] = _mm256_loadu_ps(pp.add((i0 + t) * out.part_stride + out.part_j + 8));
                }
            }
        }
        let (xp, wp) = (x.as_ptr(), self.panel.as_ptr());
        for r in 0..rows {
            // SAFETY: r < rows, so panel[16 r .. 16 r + 16] and x[r MR + t] are in bounds.
            unsafe {
                let w0 = _mm256_loadu_ps(wp.add(16 * r));
                let w1 = _mm256_loadu_ps(wp.add(16 * r + 8));
                for (t, ct) in c.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*xp.add(r * MR + t));
                    ct[0] = _mm256_fmadd_ps(x, w0, ct[0]);
                    ct[1] = _mm256_fmadd_ps(x, w1, ct[1]);
                }
            }
        }
        match self.last {
            None => {
                for (t, ct) in c.iter().enumerate() {
                    // SAFETY: as for the loads.
                    unsafe {
                        _mm256_storeu_ps(pp.add((i0 + t) * out.part_stride + out.part_j), ct[0]);
                        _mm256_storeu_ps(
                            pp.add((i0 + t) * out.part_stride + out.part_j + 8),
                            ct[1],
                        );
                    }
                }
            }
            Some(scales) => {
                let tp = out.total.as_mut_ptr();
                // SAFETY: scales has 16 values; row i0 + t < m, columns j..j + 16 <= nb.
                unsafe {
                    let s0 = _mm256_loadu_ps(scales.as_ptr());
                    let s1 = _mm256_loadu_ps(scales.as_ptr().add(8));
                    for (t, ct) in c.iter().enumerate() {
                        let p = tp.add((i0 + t) * out.nb + out.j);
                        let v0 = _mm256_add_ps(_mm256_loadu_ps(p), _mm256_mul_ps(ct[0], s0));
                        let v1 = _mm256_add_ps(_mm256_loadu_ps(p.add(8)), _mm256_mul_ps(ct[1], s1));
                        _mm256_storeu_ps(p, v0);
                        _mm256_storeu_ps(p.add(8), v1);
                    }
                }
            }
        }
    }
}
