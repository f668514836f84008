//! AVX-512 VNNI versions of the integer products (`q8_fast.rs` and
//! `kernels::dot_i8_rows`).
//!
//! `vpdpbusd` multiplies unsigned bytes by signed bytes and adds each lane's
//! four products into an i32: 64 products per instruction, no intermediate
//! i16 (so no saturation to avoid). The weights are signed, so they enter as
//! `w + 128` (one XOR with 0x80) and each block's sum comes out as
//! `sum(w * x) + 128 * sum(x)`; the activations' block sums are known
//! (`ActI8::xsum`), so the exact i32 `sum(w * x)` is recovered before it goes
//! to f32, and the results are bit-identical to the scalar reference.
//!
//! Layouts are those of the AVX2 kernels (`x86_fast.rs`), 512 bits wide,
//! except for GGUF Q8_0 rows ([`dot_q8_0_rows_int8_vnni`]), where the
//! activations are the unsigned side (stored plus 128) and the weights'
//! block sums are taken off.

use std::arch::x86_64::*;

use super::int8_ckpt_f32::ROWS_AHEAD;
use super::int8_ckpt_i8_avx2::{
    pack_panels, prefetch_quad, q8_block_fast_avx2, quad_rows, run_panels, Tile,
};
use super::int8_ckpt_strips::{q8_stream_i8, I8_HALF_PASS_MAX_M, STRIPS_MAX_M};
use crate::backend::cpu::kernels::{add_tail_columns, dot_i8, Q8Rows, Q8_0_BLOCK_BYTES};
use crate::backend::cpu::q8_fast::{Q8_0Acts, Q8_0Tiles, SplitView, BLOCK_QUADS, QUAD, ROW_PAD};

/// Activation rows per register tile: 8 i32 and 8 f32 accumulators, one
/// weight vector, the activations broadcast from memory.
const TILE_ROWS: usize = 8;

/// VNNI version of `q8_fast::q8_block_fast_scalar`, bit-identical to it.
///
/// # Safety
/// The CPU must support AVX2, FMA and AVX-512 F/BW/VL/VNNI, and the bounds
/// `q8_fast::q8_block_fast` checks must hold.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn q8_block_fast_vnni(view: &SplitView, wb: &Q8Rows, scales: &[f32], total: &mut [f32]) {
    let m = view.act.m;
    let nb = total.len() / m;
    let full = if m > STRIPS_MAX_M {
        nb / 16 * 16
    } else {
        nb / 64 * 64
    };
    if full > 0 {
        // SAFETY: the caller's bounds; columns 0..full <= nb.
        unsafe {
            match m {
                1 => stream::<1>(view, wb, full, scales, total),
                2 => stream::<2>(view, wb, full, scales, total),
                3 => stream::<3>(view, wb, full, scales, total),
                4 => stream::<4>(view, wb, full, scales, total),
                5 => stream::<5>(view, wb, full, scales, total),
                6 => stream::<6>(view, wb, full, scales, total),
                _ => panels(view, wb, full, scales, total),
            }
        }
    }
    // The last columns (fewer than a vector) through the AVX2 kernel.
    add_tail_columns(m, full, wb, scales, total, |cols, s, t| {
        // SAFETY: AVX2 and FMA are present; the columns are a subset of the
        // caller's, so its bounds hold.
        unsafe { q8_block_fast_avx2(view, cols, s, t) }
    });
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

/// The 4 x 4 transpose of 128-bit lanes that takes the unpack order (vector
/// `u`, lane `l` holds columns `16 l + 4 u ..`) to column order (vector `l`
/// holds columns `16 l .. 16 l + 16`).
#[inline]
#[target_feature(enable = "avx512f")]
fn lanes_to_columns(v: [__m512; 4]) -> [__m512; 4] {
    let t0 = _mm512_shuffle_f32x4::<0b01_00_01_00>(v[0], v[1]);
    let t1 = _mm512_shuffle_f32x4::<0b01_00_01_00>(v[2], v[3]);
    let t2 = _mm512_shuffle_f32x4::<0b11_10_11_10>(v[0], v[1]);
    let t3 = _mm512_shuffle_f32x4::<0b11_10_11_10>(v[2], v[3]);
    [
        _mm512_shuffle_f32x4::<0b10_00_10_00>(t0, t1),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(t0, t1),
        _mm512_shuffle_f32x4::<0b10_00_10_00>(t2, t3),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(t2, t3),
    ]
}

/// `M <= STRIPS_MAX_M` activation rows (decoding): the f32 sums of the
/// split (`x86_strips::q8_stream_i8`, in the unpack order of
/// `interleave_quad`), put in column order once at the end, times the
/// column scales into `total`.
///
/// # Safety
/// As `q8_block_fast_vnni`, with `m == M`, `full % 64 == 0`, `full <= nb`.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn stream<const M: usize>(
    view: &SplitView,
    wb: &Q8Rows,
    full: usize,
    scales: &[f32],
    total: &mut [f32],
) {
    let nb = total.len() / M;
    let mut part = vec![0f32; M * full];
    // SAFETY: the caller's bounds; `part` is [M, full].
    unsafe {
        if M <= I8_HALF_PASS_MAX_M {
            q8_stream_i8::<M, { BLOCK_QUADS / 2 }>(view, wb, full, &mut part)
        } else {
            q8_stream_i8::<M, BLOCK_QUADS>(view, wb, full, &mut part)
        }
    };
    let pp = part.as_ptr();
    for i in 0..M {
        for j in (0..full).step_by(64) {
            // SAFETY: row i < M; j + 64 <= full <= nb, scales.len() >= full.
            unsafe {
                let p = pp.add(i * full + j);
                let v: [__m512; 4] = std::array::from_fn(|u| _mm512_loadu_ps(p.add(16 * u)));
                for (u, col) in lanes_to_columns(v).into_iter().enumerate() {
                    let s = _mm512_loadu_ps(scales.as_ptr().add(j + 16 * u));
                    let t = total.as_mut_ptr().add(i * nb + j + 16 * u);
                    _mm512_storeu_ps(t, _mm512_add_ps(_mm512_loadu_ps(t), _mm512_mul_ps(col, s)));
                }
            }
        }
    }
}

/// `x86_fast::pack_panels`, 64 columns at a time where the columns are whole
/// multiples of 64 (else the AVX2 `pack_panels`): four full cache lines per
/// quad interleaved in registers (as the decode stream does), the lanes put in
/// column order, four panels written.
///
/// # Safety
/// As `pack_panels`, and AVX-512 F/BW.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,avx512f,avx512bw")]
pub(super) unsafe fn pack_panels_512(
    wb: &Q8Rows,
    quads: std::ops::Range<usize>,
    nq: usize,
    chunk: usize,
    full: usize,
    zeros: &[u8],
    panel: &mut [u8],
    bias: bool,
) {
    if !full.is_multiple_of(64) {
        // SAFETY: the caller's bounds; AVX2 is present.
        return unsafe { pack_panels(wb, quads, nq, chunk, full, zeros, panel, bias) };
    }
    assert!(quads.len() <= chunk && panel.len() >= chunk * full * QUAD && zeros.len() >= full);
    let pan = panel.as_mut_ptr();
    let flip = _mm512_set1_epi8(if bias { -128 } else { 0 });
    for (qd, quad) in quads.clone().enumerate() {
        let [p0, p1, p2, p3] = quad_rows(wb, quad, zeros);
        let next = (quad + 1 < nq).then(|| quad_rows(wb, quad + 1, zeros));
        for j in (0..full).step_by(64) {
            // SAFETY: row pointers have `full` bytes from column n0, j + 64 <=
            // full; panels j / 16 .. j / 16 + 4 hold `chunk` quads of 64 bytes.
            unsafe {
                prefetch_quad(next, j);
                let v = interleave_quad([p0, p1, p2, p3], j, flip);
                let cols = lanes_to_columns(v.map(|x| _mm512_castsi512_ps(x)));
                for (u, col) in cols.into_iter().enumerate() {
                    let dst = pan.add(((j / 16 + u) * chunk + qd) * 64);
                    _mm512_storeu_ps(dst as *mut f32, col);
                }
            }
        }
    }
}

/// `m >= PANEL_MIN_M` activation rows: chunks of quads (whole blocks) are
/// interleaved once into 16-column panels of `w + 128` (`[chunk][16 columns
/// x 4 rows]` bytes, one 512-bit vector per quad), then `MR x 16` register
/// tiles run down each panel.
///
/// # Safety
/// As `q8_block_fast_vnni`, with `full % 16 == 0`, `full <= nb`.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn panels(view: &SplitView, wb: &Q8Rows, full: usize, scales: &[f32], total: &mut [f32]) {
    let nb = total.len() / view.act.m;
    run_panels(
        view,
        full,
        total,
        TILE_ROWS,
        |quads, nq, chunk, zeros, panel| {
            // SAFETY: the caller's bounds; the panel holds `chunk` quads per
            // 16 columns; AVX-512 F/BW are present.
            unsafe { pack_panels_512(wb, quads, nq, chunk, full, zeros, panel, true) }
        },
        |tile, i, mr, part, total| {
            // SAFETY: rows i..i + mr <= m of part and total; AVX-512 VNNI is present.
            unsafe {
                match mr {
                    1 => tile.run_vnni::<1>(i, part, total, nb, scales),
                    2 => tile.run_vnni::<2>(i, part, total, nb, scales),
                    3 => tile.run_vnni::<3>(i, part, total, nb, scales),
                    4 => tile.run_vnni::<4>(i, part, total, nb, scales),
                    5 => tile.run_vnni::<5>(i, part, total, nb, scales),
                    6 => tile.run_vnni::<6>(i, part, total, nb, scales),
                    7 => tile.run_vnni::<7>(i, part, total, nb, scales),
                    _ => tile.run_vnni::<TILE_ROWS>(i, part, total, nb, scales),
                }
            }
        },
    );
}

impl Tile<'_> {
    /// Rows `i0..i0 + MR`, on `w + 128` panels.
    ///
    /// # Safety
    /// AVX-512 F/VNNI; `i0 + MR <= m`; `part` is `[m, full]`, `total` `[m, nb]`
    /// with `j + 16 <= full <= nb`, `scales.len() >= full`.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn run_vnni<const MR: usize>(
        &self,
        i0: usize,
        part: &mut [f32],
        total: &mut [f32],
        nb: usize,
        scales: &[f32],
    ) {
        assert!(self.panel.len() >= self.quads.len() * 64 && self.j + 16 <= self.full);
        let mut f = [_mm512_setzero_ps(); MR];
        self.sums_in(i0, &mut f, part);
        let mut c = [_mm512_setzero_si512(); MR];
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
                let w = unsafe { _mm512_loadu_si512(wp.add(64 * at) as *const __m512i) };
                for (t, ct) in c.iter_mut().enumerate() {
                    // SAFETY: q < quads.end, inside the row (asserted above).
                    let x = _mm512_set1_epi32(unsafe { xr[t].add(q).read_unaligned() });
                    *ct = _mm512_dpbusd_epi32(*ct, w, x);
                }
            }
            let b = qd / BLOCK_QUADS;
            for t in 0..MR {
                let sx = _mm512_set1_ps(self.view.scale(i0 + t, b));
                let corr = _mm512_set1_epi32(128 * self.view.sum(i0 + t, b));
                let exact = _mm512_sub_epi32(c[t], corr);
                f[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), sx, f[t]);
                c[t] = _mm512_setzero_si512();
            }
            qd = end;
        }
        self.sums_out(i0, &f, part, total, nb, scales);
    }

    /// The f32 sums rows `i0..i0 + f.len()` start the chunk with: zeros on the
    /// split's first chunk, else those `part` carried (columns `j..j + 16`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn sums_in(&self, i0: usize, f: &mut [__m512], part: &[f32]) {
        for (t, ft) in f.iter_mut().enumerate() {
            *ft = if self.quads.start == 0 {
                _mm512_setzero_ps()
            } else {
                let p = part[(i0 + t) * self.full + self.j..][..16].as_ptr();
                // SAFETY: `p` points at 16 floats of `part`.
                unsafe { _mm512_loadu_ps(p) }
            };
        }
    }

    /// Rows `i0..i0 + f.len()` of the chunk's sums: on the split's last chunk
    /// times the column scales into `total` (`[m, nb]`), else into `part`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn sums_out(
        &self,
        i0: usize,
        f: &[__m512],
        part: &mut [f32],
        total: &mut [f32],
        nb: usize,
        scales: &[f32],
    ) {
        for (t, ft) in f.iter().enumerate() {
            if self.quads.end == self.last_quad {
                let s = scales[self.j..][..16].as_ptr();
                let p = total[(i0 + t) * nb + self.j..][..16].as_mut_ptr();
                // SAFETY: `s` and `p` point at 16 floats.
                unsafe {
                    let sum =
                        _mm512_add_ps(_mm512_loadu_ps(p), _mm512_mul_ps(*ft, _mm512_loadu_ps(s)));
                    _mm512_storeu_ps(p, sum);
                }
            } else {
                let p = part[(i0 + t) * self.full + self.j..][..16].as_mut_ptr();
                // SAFETY: `p` points at 16 floats of `part`.
                unsafe { _mm512_storeu_ps(p, *ft) };
            }
        }
    }
}

/// VNNI version of `kernels::dot_i8_rows_scalar` (exact, so the same
/// result): tiles of four weight rows by up to four activation rows, sixteen
/// accumulators, so each 64-byte chunk of a weight row is loaded once per four
/// activation rows and each chunk of an activation row once per four weight
/// rows (one row against one row was a load of each per `vpdpbusd`).
///
/// # Safety
/// AVX-512 F/BW/VNNI; `xs.len() == g * k`, `rows.len() == n * k` and
/// `out_t.len() == n * g` for some `k` and `n`, `g > 0`.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_i8_rows_multi_vnni(xs: &[i8], g: usize, rows: &[i8], out_t: &mut [i32]) {
    let k = xs.len() / g;
    let n = out_t.len() / g;
    assert!(
        xs.len() == g * k && rows.len() == n * k && out_t.len() == n * g,
        "dot_i8_rows_multi_vnni: shapes"
    );
    let full = k / 64 * 64;
    // sum((w + 128) * x) = sum(w * x) + 128 * sum(x) over the vector part.
    let corr: Vec<i32> = (0..g)
        .map(|t| {
            128 * xs[t * k..t * k + full]
                .iter()
                .map(|&v| i32::from(v))
                .sum::<i32>()
        })
        .collect();
    let tile = I8Tile {
        xs,
        g,
        k,
        full,
        corr: &corr,
        rows,
    };
    let mut j = 0;
    while j < n {
        // Four rows side by side where they are a page or more long; shorter
        // rows one at a time, in address order (short rows read side by side
        // are a pattern the hardware prefetchers follow badly, as the former
        // AVX2 f32 decode stream measured).
        let r = if n - j >= 4 && k >= 4096 { 4 } else { 1 };
        for t in (0..g).step_by(4) {
            // SAFETY: rows j..j + r < n and activation rows t..t + 4 min g.
            unsafe {
                match (r, (g - t).min(4)) {
                    (4, 1) => tile.run::<4, 1>(j, t, out_t),
                    (4, 2) => tile.run::<4, 2>(j, t, out_t),
                    (4, 3) => tile.run::<4, 3>(j, t, out_t),
                    (4, _) => tile.run::<4, 4>(j, t, out_t),
                    (_, 1) => tile.run::<1, 1>(j, t, out_t),
                    (_, 2) => tile.run::<1, 2>(j, t, out_t),
                    (_, 3) => tile.run::<1, 3>(j, t, out_t),
                    (_, _) => tile.run::<1, 4>(j, t, out_t),
                }
            }
        }
        j += r;
    }
}

/// The operands of `dot_i8_rows_multi_vnni`.
struct I8Tile<'a> {
    xs: &'a [i8],
    g: usize,
    k: usize,
    /// Columns in whole 64-byte chunks.
    full: usize,
    /// `128 * sum(x[..full])` per activation row.
    corr: &'a [i32],
    rows: &'a [i8],
}

impl I8Tile<'_> {
    /// `out_t[j0 + u][t0 + t]` for `u < R`, `t < G`.
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI; `j0 + R <= n`, `t0 + G <= g`.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn run<const R: usize, const G: usize>(&self, j0: usize, t0: usize, out_t: &mut [i32]) {
        let (k, g) = (self.k, self.g);
        let w: [&[i8]; R] = std::array::from_fn(|u| &self.rows[(j0 + u) * k..(j0 + u + 1) * k]);
        let x: [&[i8]; G] = std::array::from_fn(|t| &self.xs[(t0 + t) * k..(t0 + t + 1) * k]);
        let bias = _mm512_set1_epi8(-128);
        let mut acc = [[_mm512_setzero_si512(); G]; R];
        for c in (0..self.full).step_by(64) {
            // SAFETY: c + 64 <= full <= k: inside every row.
            let wv: [__m512i; R] = std::array::from_fn(|u| unsafe {
                // A prefetch reads nothing and cannot fault (wrapping address).
                _mm_prefetch(w[u].as_ptr().wrapping_add(c + ROWS_AHEAD), _MM_HINT_T0);
                _mm512_xor_si512(
                    _mm512_loadu_si512(w[u].as_ptr().add(c) as *const __m512i),
                    bias,
                )
            });
            for (t, xt) in x.iter().enumerate() {
                // SAFETY: as above.
                let xv = unsafe { _mm512_loadu_si512(xt.as_ptr().add(c) as *const __m512i) };
                for (au, &wu) in acc.iter_mut().zip(&wv) {
                    au[t] = _mm512_dpbusd_epi32(au[t], wu, xv);
                }
            }
        }
        for (u, au) in acc.iter().enumerate() {
            for (t, &a) in au.iter().enumerate() {
                let tail = dot_i8(&x[t][self.full..], &w[u][self.full..]);
                out_t[(j0 + u) * g + t0 + t] =
                    _mm512_reduce_add_epi32(a) - self.corr[t0 + t] + tail;
            }
        }
    }
}

/// One activation row against int8 rows (`kernels::dot_i8_rows` with `g ==
/// 1`), exact: each row in address order, four accumulators (the tiles of
/// `dot_i8_rows_multi_vnni` read one row with one accumulator: the issue's
/// d1024 shape decoded 10% slower in the int8 mode).
///
/// # Safety
/// AVX-512 F/BW/VNNI; `rows.len() == x.len() * out.len()`.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_i8_rows_vnni(x: &[i8], rows: &[i8], out: &mut [i32]) {
    let k = x.len();
    assert_eq!(rows.len(), k * out.len(), "dot_i8_rows_vnni: shapes");
    let full = k / 64 * 64;
    let four = k / 256 * 256;
    // sum((w + 128) * x) = sum(w * x) + 128 * sum(x) over the vector part.
    let corr = 128 * x[..full].iter().map(|&v| i32::from(v)).sum::<i32>();
    let bias = _mm512_set1_epi8(-128);
    let xp = x.as_ptr();
    for (j, o) in out.iter_mut().enumerate() {
        let row = &rows[j * k..(j + 1) * k];
        let rp = row.as_ptr();
        // SAFETY (both loops): i + 64 * t + 64 <= full <= k for x and the row.
        let step = |acc: __m512i, at: usize| unsafe {
            let w = _mm512_xor_si512(_mm512_loadu_si512(rp.add(at) as *const __m512i), bias);
            _mm512_dpbusd_epi32(acc, w, _mm512_loadu_si512(xp.add(at) as *const __m512i))
        };
        let mut acc = [_mm512_setzero_si512(); 4];
        let mut i = 0;
        while i < four {
            for (t, a) in acc.iter_mut().enumerate() {
                // A prefetch reads nothing and cannot fault (wrapping address).
                _mm_prefetch(rp.wrapping_add(i + 64 * t + ROWS_AHEAD), _MM_HINT_T0);
                *a = step(*a, i + 64 * t);
            }
            i += 256;
        }
        while i < full {
            acc[0] = step(acc[0], i);
            i += 64;
        }
        let sum = _mm512_add_epi32(
            _mm512_add_epi32(acc[0], acc[1]),
            _mm512_add_epi32(acc[2], acc[3]),
        );
        *o = _mm512_reduce_add_epi32(sum) - corr + dot_i8(&x[full..], &row[full..]);
    }
}

/// VNNI version of `q8_fast::dot_q8_0_rows_int8_scalar` (Q8_0 weight rows of
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
/// `q8_fast::dot_q8_0_rows_int8` checks, and `act.tiles` laid out by
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
        let wp: [*const u8; 8] =
            std::array::from_fn(|u| group[u.min(r - 1) * row_bytes..].as_ptr());
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
