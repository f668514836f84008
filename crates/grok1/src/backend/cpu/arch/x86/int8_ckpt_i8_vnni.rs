//! The checkpoint's int8 product with int8 activations (`kernels::q8_block_fast`)
//! on AVX-512 VNNI.
//!
//! `vpdpbusd` multiplies unsigned bytes by signed bytes and adds each lane's
//! four products into an i32: 64 products per instruction, no intermediate
//! i16 (so no saturation to avoid). The weights are signed, so they enter as
//! `w + 128` (one XOR with 0x80) and each block's sum comes out as
//! `sum(w * x) + 128 * sum(x)`; the activations' block sums are known
//! (`ActI8::xsum`), so the exact i32 `sum(w * x)` is recovered before it goes
//! to f32, and the results are bit-identical to the scalar reference.
//!
//! Layouts are those of the AVX2 kernels (`int8_ckpt_i8_avx2.rs`), 512 bits
//! wide. The int8 row dots (`int8_rows`) and GGUF Q8_0 rows (`q8_0_i8`) run on
//! `vpdpbusd` too.

use std::arch::x86_64::*;

use super::int8_ckpt_i8_avx2::{
    pack_panels, prefetch_quad, q8_block_fast_avx2, quad_rows, run_panels, Tile,
};
use super::int8_ckpt_i8_strips::{interleave_quad, q8_stream_i8, I8_HALF_PASS_MAX_M};
use super::int8_ckpt_strips::STRIPS_MAX_M;
use crate::backend::cpu::common::QUAD;
use crate::backend::cpu::types::int8_ckpt::{add_tail_columns, Q8Rows, SplitView, BLOCK_QUADS};

/// Activation rows per register tile: 8 i32 and 8 f32 accumulators, one
/// weight vector, the activations broadcast from memory.
const TILE_ROWS: usize = 8;

/// VNNI version of `int8_ckpt::q8_block_fast_scalar`, bit-identical to it.
///
/// # Safety
/// The CPU must support AVX2, FMA and AVX-512 F/BW/VL/VNNI, and the bounds
/// `kernels::q8_block_fast` checks must hold.
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
/// split (`int8_ckpt_i8_strips::q8_stream_i8`, in the unpack order of
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

/// `int8_ckpt_i8_avx2::pack_panels`, 64 columns at a time where the columns
/// are whole multiples of 64 (else the AVX2 `pack_panels`): four full cache
/// lines per quad interleaved in registers (as the decode stream does), the
/// lanes put in column order, four panels written.
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
