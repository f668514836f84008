//! AVX2 + FMA versions of the kernels in `kernels.rs`. Each is an `unsafe fn`
//! whose callers there check every bound first and only call it when the CPU
//! has the features (`Isa::best`).

use std::arch::x86_64::*;
use std::ops::Range;

use super::int8_ckpt_strips::{
    STRIPS_AVX2_MAX_M, STRIPS_AVX2_WIDE_M, STRIPS_MAX_M, STRIPS_MAX_M_HALF,
};
use crate::backend::cpu::kernels::{
    Q8Rows, EXP_LN2_PARTS, EXP_POLY, EXP_RANGE, Q8_0_BLOCK_BYTES, TANH_POLY, TANH_SMALL, XGROUP,
};

/// AVX2 version of `kernels::q8_block_scalar` (same FMAs in the same order,
/// the same scale multiply and add: bit-identical). A few activation rows
/// (decoding: up to `STRIPS_MAX_M_HALF` where `wide` allows AVX-512, else
/// `STRIPS_AVX2_MAX_M`) take the register-summed streams of `x86_strips`;
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
    crate::backend::cpu::kernels::add_tail_columns(m, full, wb, scales, total, |cols, s, t| {
        crate::backend::cpu::kernels::q8_block_scalar(xp, m, cols, s, t)
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
    crate::backend::cpu::kernels::add_tail_columns(m, full, wb, scales, total, |cols, s, t| {
        crate::backend::cpu::kernels::q8_block_scalar(xp, m, cols, s, t)
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

/// AVX2 version of `kernels::dot_f32_bytes_scalar`: eight rows of `e` at a
/// time against each row of `x` (eight independent accumulators, one
/// horizontal reduction for all eight), the leftover rows one by one.
///
/// # Safety
/// The CPU must support AVX2 and FMA, `m > 0`, `x.len() >= m * d` and
/// `e.len() >= out_t.len() / m * d * 4`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32_bytes_avx2(x: &[f32], m: usize, d: usize, e: &[u8], out_t: &mut [f32]) {
    let rows = out_t.len() / m;
    let full = d / 8 * 8;
    let ep = e.as_ptr() as *const f32;
    let mut r = 0;
    while r + 8 <= rows {
        for i in 0..m {
            // SAFETY: rows r..r+8 of e and row i of x are in bounds by the
            // caller's contract; loads are unaligned (loadu).
            let xp = unsafe { x.as_ptr().add(i * d) };
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut j = 0;
            while j < full {
                let xv = unsafe { _mm256_loadu_ps(xp.add(j)) };
                for (u, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(
                        xv,
                        unsafe { _mm256_loadu_ps(ep.add((r + u) * d + j)) },
                        *a,
                    );
                }
                j += 8;
            }
            let mut sums = [0f32; 8];
            unsafe { _mm256_storeu_ps(sums.as_mut_ptr(), hsum8(acc)) };
            for (u, total) in sums.iter_mut().enumerate() {
                for jj in full..d {
                    let b = &e[((r + u) * d + jj) * 4..((r + u) * d + jj) * 4 + 4];
                    *total += unsafe { *xp.add(jj) } * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
                out_t[(r + u) * m + i] = *total;
            }
        }
        r += 8;
    }
    for r in r..rows {
        for i in 0..m {
            // SAFETY: as above, for the single row r.
            let xp = unsafe { x.as_ptr().add(i * d) };
            let mut acc = _mm256_setzero_ps();
            let mut j = 0;
            while j < full {
                unsafe {
                    acc = _mm256_fmadd_ps(
                        _mm256_loadu_ps(xp.add(j)),
                        _mm256_loadu_ps(ep.add(r * d + j)),
                        acc,
                    );
                }
                j += 8;
            }
            let mut total = hsum(acc);
            for jj in full..d {
                let b = &e[(r * d + jj) * 4..(r * d + jj) * 4 + 4];
                total += unsafe { *xp.add(jj) } * f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            out_t[r * m + i] = total;
        }
    }
}

/// The eight horizontal sums of `v[0..8]`, as the lanes of one vector.
#[target_feature(enable = "avx2,fma")]
fn hsum8(v: [__m256; 8]) -> __m256 {
    // hadd pairs lanes within each 128-bit half: after two rounds the low half
    // holds the low-half sums of four inputs and the high half their high-half sums.
    let t0 = _mm256_hadd_ps(v[0], v[1]);
    let t1 = _mm256_hadd_ps(v[2], v[3]);
    let t2 = _mm256_hadd_ps(v[4], v[5]);
    let t3 = _mm256_hadd_ps(v[6], v[7]);
    let u0 = _mm256_hadd_ps(t0, t1);
    let u1 = _mm256_hadd_ps(t2, t3);
    let lo = _mm256_permute2f128_ps(u0, u1, 0x20);
    let hi = _mm256_permute2f128_ps(u0, u1, 0x31);
    _mm256_add_ps(lo, hi)
}

/// AVX2 version of the scalar loop in `kernels::dot_rows`.
///
/// # Safety
/// The CPU must support AVX2 and FMA and `keys.len() >= scores.len() * q.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_rows_avx2(q: &[f32], keys: &[f32], scores: &mut [f32]) {
    let hd = q.len();
    let full = hd / 8 * 8;
    let n = scores.len();
    let kp = keys.as_ptr();
    let mut j = 0;
    // Eight keys at a time: eight accumulators, one reduction for all eight.
    while j + 8 <= n {
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i < full {
            // SAFETY: rows j..j+8 of keys are inside `keys` by the contract.
            let qv = unsafe { _mm256_loadu_ps(q.as_ptr().add(i)) };
            for (u, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(qv, unsafe { _mm256_loadu_ps(kp.add((j + u) * hd + i)) }, *a);
            }
            i += 8;
        }
        let mut sums = [0f32; 8];
        unsafe { _mm256_storeu_ps(sums.as_mut_ptr(), hsum8(acc)) };
        for (u, mut total) in sums.into_iter().enumerate() {
            for (t, &qt) in q.iter().enumerate().skip(full) {
                total += qt * keys[(j + u) * hd + t];
            }
            scores[j + u] = total;
        }
        j += 8;
    }
    for (j, s) in scores.iter_mut().enumerate().skip(j) {
        // SAFETY: row j covers keys[j*hd .. (j+1)*hd], inside `keys` by the contract.
        let k = unsafe { kp.add(j * hd) };
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i < full {
            unsafe {
                acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(q.as_ptr().add(i)),
                    _mm256_loadu_ps(k.add(i)),
                    acc,
                );
            }
            i += 8;
        }
        let mut total = hsum(acc);
        for (t, &qt) in q.iter().enumerate().skip(full) {
            total += qt * unsafe { *k.add(t) };
        }
        *s = total;
    }
}

#[target_feature(enable = "avx2,fma")]
pub(super) fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// e^x for eight lanes (Cephes' expf: range reduction by ln 2 and a degree-6
/// polynomial, about 1 ulp); lanes below -87.3 give 0.
#[target_feature(enable = "avx2,fma")]
fn exp256(x: __m256) -> __m256 {
    let (lo, hi) = EXP_RANGE;
    let underflow = _mm256_cmp_ps(x, _mm256_set1_ps(lo), _CMP_LT_OQ);
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(lo)), _mm256_set1_ps(hi));
    let fx = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(EXP_LN2_PARTS[0]), x);
    let x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(EXP_LN2_PARTS[1]), x);
    let mut y = _mm256_set1_ps(EXP_POLY[0]);
    for c in &EXP_POLY[1..] {
        y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(*c));
    }
    let y = _mm256_fmadd_ps(
        y,
        _mm256_mul_ps(x, x),
        _mm256_add_ps(x, _mm256_set1_ps(1.0)),
    );
    let n = _mm256_cvtps_epi32(fx);
    let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_add_epi32(n, _mm256_set1_epi32(127)),
        23,
    ));
    _mm256_andnot_ps(underflow, _mm256_mul_ps(y, pow2))
}

/// tanh for eight lanes (Cephes' tanhf: an odd polynomial below 0.625, else
/// 1 - 2/(e^2|x| + 1) with the sign of x; about 1e-7 relative).
#[target_feature(enable = "avx2,fma")]
fn tanh256(x: __m256) -> __m256 {
    let sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0));
    let a = _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
    // Large |x|: 1 - 2 / (exp(2a) + 1), from exp(-2a) to avoid overflow.
    let t = exp256(_mm256_mul_ps(a, _mm256_set1_ps(-2.0)));
    let big = _mm256_div_ps(
        _mm256_sub_ps(_mm256_set1_ps(1.0), t),
        _mm256_add_ps(_mm256_set1_ps(1.0), t),
    );
    let big = _mm256_or_ps(big, sign);
    // Small |x|: x + x^3 P(x^2).
    let z = _mm256_mul_ps(x, x);
    let mut p = _mm256_set1_ps(TANH_POLY[0]);
    for c in &TANH_POLY[1..] {
        p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(*c));
    }
    let small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
    let use_small = _mm256_cmp_ps(a, _mm256_set1_ps(TANH_SMALL), _CMP_LT_OQ);
    _mm256_blendv_ps(big, small, use_small)
}

/// AVX2 version of `kernels::softcap_scores_scalar`, with `tanh256` for libm's
/// tanh: `s = cap * tanh(s * mult / cap)`, masked positions -1e30; returns
/// the largest.
///
/// # Safety
/// The CPU must support AVX2 and FMA and `mask.len() >= s.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn softcap_scores_avx2(s: &mut [f32], mult: f32, cap: f32, mask: &[bool]) -> f32 {
    let n = s.len();
    let full = n / 8 * 8;
    let (vm, vcap, vinv, masked) = (
        _mm256_set1_ps(mult),
        _mm256_set1_ps(cap),
        _mm256_set1_ps(1.0 / cap),
        _mm256_set1_ps(-1e30),
    );
    // Eight lanes of scores and their eight mask bytes (bool is one byte,
    // 0 or 1), capped, masked, and the running maximum.
    let capped = |x: __m256, keep: &[bool], max: &mut __m256| {
        debug_assert_eq!(keep.len(), 8);
        // SAFETY: keep holds eight bytes; AVX2 is enabled for this function.
        let keep =
            unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(keep.as_ptr() as *const __m128i)) };
        let drop = _mm256_castsi256_ps(_mm256_cmpeq_epi32(keep, _mm256_setzero_si256()));
        let y = _mm256_mul_ps(vcap, tanh256(_mm256_mul_ps(_mm256_mul_ps(x, vm), vinv)));
        let y = _mm256_blendv_ps(y, masked, drop);
        *max = _mm256_max_ps(*max, y);
        y
    };
    let mut max = masked;
    let mut i = 0;
    while i < full {
        // SAFETY: lanes i..i+8 are inside s (i + 8 <= full <= n).
        unsafe {
            let y = capped(
                _mm256_loadu_ps(s.as_ptr().add(i)),
                &mask[i..i + 8],
                &mut max,
            );
            _mm256_storeu_ps(s.as_mut_ptr().add(i), y);
        }
        i += 8;
    }
    if full < n {
        // The tail through padded vectors (padding masked), so it gets the
        // same tanh as the rest.
        let (mut lanes, mut keep) = ([0f32; 8], [false; 8]);
        lanes[..n - full].copy_from_slice(&s[full..]);
        keep[..n - full].copy_from_slice(&mask[full..n]);
        let y = capped(unsafe { _mm256_loadu_ps(lanes.as_ptr()) }, &keep, &mut max);
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), y) };
        s[full..].copy_from_slice(&lanes[..n - full]);
    }
    let mut lanes = [0f32; 8];
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), max) };
    if n == 0 {
        return f32::NEG_INFINITY;
    }
    lanes.into_iter().fold(f32::NEG_INFINITY, f32::max)
}

/// AVX2 version of `kernels::exp_shifted_scalar` with `exp256` for libm's exp:
/// `s = exp(s - max)`; returns the sum.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_shifted_avx2(s: &mut [f32], max: f32) -> f32 {
    let n = s.len();
    let full = n / 8 * 8;
    let p = s.as_mut_ptr();
    let vmax = _mm256_set1_ps(max);
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i < full {
        // SAFETY: lanes i..i+8 are inside s (i + 8 <= full <= n).
        unsafe {
            let e = exp256(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), vmax));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
        }
        i += 8;
    }
    if full < n {
        // Padding lanes at -inf come out of exp as 0 and add nothing (-1e30,
        // a masked score, would not where every score is masked).
        let mut lanes = [f32::NEG_INFINITY; 8];
        lanes[..n - full].copy_from_slice(&s[full..]);
        let e = exp256(_mm256_sub_ps(
            unsafe { _mm256_loadu_ps(lanes.as_ptr()) },
            vmax,
        ));
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), e) };
        s[full..].copy_from_slice(&lanes[..n - full]);
        acc = _mm256_add_ps(acc, e);
    }
    hsum(acc)
}

/// AVX2 version of the scalar loop in `kernels::gelu_mul`, the same formula
/// with `tanh256` for libm's tanh.
///
/// # Safety
/// The CPU must support AVX2 and FMA and `v.len() >= h.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gelu_mul_avx2(h: &mut [f32], v: &[f32]) {
    let n = h.len();
    let full = n / 8 * 8;
    let (c, k, half, one) = (
        _mm256_set1_ps(0.797_884_6),
        _mm256_set1_ps(0.044715),
        _mm256_set1_ps(0.5),
        _mm256_set1_ps(1.0),
    );
    let mut i = 0;
    while i < full {
        unsafe {
            let x = _mm256_loadu_ps(h.as_ptr().add(i));
            let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
            let inner = _mm256_mul_ps(c, _mm256_add_ps(x, _mm256_mul_ps(k, x3)));
            let cdf = _mm256_mul_ps(half, _mm256_add_ps(one, tanh256(inner)));
            let y = _mm256_mul_ps(_mm256_mul_ps(x, cdf), _mm256_loadu_ps(v.as_ptr().add(i)));
            _mm256_storeu_ps(h.as_mut_ptr().add(i), y);
        }
        i += 8;
    }
    for (a, &b) in h[full..].iter_mut().zip(&v[full..]) {
        *a = crate::model::norm::gelu_tanh(*a) * b;
    }
}

/// [`crate::backend::cpu::kernels::dot_i8_rows`] with AVX2: |x| times sign(w, x) with
/// `maddubs` (pairs of products of at most 127 * 127 fit an i16), widened to
/// i32 with `madd`. Rows are read one after another, each front to back with
/// four independent accumulators: one sequential stream (interleaving several
/// short rows defeated the hardware prefetchers), prefetched 2 KiB ahead
/// (forced AVX2 on the AVX-512 Xeon, d1024 fast decode: 57-61 -> 63-66
/// tok/s).
///
/// # Safety
/// The CPU must support AVX2; `rows.len() == x.len() * out.len()`.
#[target_feature(enable = "avx2")]
pub unsafe fn dot_i8_rows_avx2(x: &[i8], rows: &[i8], out: &mut [i32]) {
    let k = x.len();
    if k == 0 {
        out.fill(0);
        return;
    }
    let full = k / 32 * 32;
    let quad = k / 128 * 128;
    let ones = _mm256_set1_epi16(1);
    let sum8 = |v: __m256i| -> i32 {
        let lo = _mm256_castsi256_si128(v);
        let hi = _mm256_extracti128_si256(v, 1);
        let s = _mm_add_epi32(lo, hi);
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    };
    let step = |acc: __m256i, xv: __m256i, wv: __m256i| -> __m256i {
        let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(xv, xv), _mm256_sign_epi8(wv, xv));
        _mm256_add_epi32(acc, _mm256_madd_epi16(p16, ones))
    };
    for (j, o) in out.iter_mut().enumerate() {
        let row = &rows[j * k..(j + 1) * k];
        let mut acc = [_mm256_setzero_si256(); 4];
        let mut i = 0;
        while i < quad {
            // Two lines per 128 bytes; a prefetch reads nothing and cannot
            // fault (wrapping address).
            _mm_prefetch(row.as_ptr().wrapping_add(i + ROWS_AHEAD), _MM_HINT_T0);
            _mm_prefetch(row.as_ptr().wrapping_add(i + 64 + ROWS_AHEAD), _MM_HINT_T0);
            for (t, a) in acc.iter_mut().enumerate() {
                let at = i + 32 * t;
                *a = step(
                    *a,
                    load_i8x32(&x[at..at + 32]),
                    load_i8x32(&row[at..at + 32]),
                );
            }
            i += 128;
        }
        while i < full {
            acc[0] = step(
                acc[0],
                load_i8x32(&x[i..i + 32]),
                load_i8x32(&row[i..i + 32]),
            );
            i += 32;
        }
        let total = _mm256_add_epi32(
            _mm256_add_epi32(acc[0], acc[1]),
            _mm256_add_epi32(acc[2], acc[3]),
        );
        *o = sum8(total) + crate::backend::cpu::kernels::dot_i8(&x[full..], &row[full..]);
    }
}

/// 32 int8 values from a slice of at least 32 (checked).
#[inline]
#[target_feature(enable = "avx2")]
fn load_i8x32(s: &[i8]) -> __m256i {
    assert!(s.len() >= 32);
    // SAFETY: 32 bytes are readable (checked above); unaligned loads are allowed.
    unsafe { _mm256_loadu_si256(s.as_ptr() as *const __m256i) }
}

/// AVX2 version of `kernels::dot_q8_0_rows_scalar`: up to four weight rows
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

/// Bytes ahead of the one in use that the kernels reading whole rows one after
/// the other (the AVX2 and VNNI int8 row dots) prefetch: such rows are one
/// stream, but the hardware prefetchers ran too little ahead of it (the
/// d1024 checkpoint's fast decode, whose int8 output projection is 45% of its
/// bytes: 56-64 -> 69-70 tok/s; the f32 Q8_0 row kernel, then one row at a
/// time, 42-44 -> 66-67 tok/s decoding the d1024 Q8_0 model).
pub(super) const ROWS_AHEAD: usize = 2048;

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
