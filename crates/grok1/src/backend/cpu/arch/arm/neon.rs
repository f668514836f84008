//! NEON kernels for aarch64 (every aarch64 Linux CPU has NEON): the int8
//! checkpoint's product with f32 activations (`kernels::q8_block`), the int8
//! row dots of the fast mode's output projection, GGUF Q8_0 rows against f32
//! activations and (the int8 mode) against Q8_0 blocks, and attention's
//! elementwise maps (its page products are in `attention`). Each computes
//! the scalar kernel's chains of FMAs (or its exact integer sums) in the
//! same order, so the results are the scalar ones bit for bit. The capped
//! scores, their exponentials and the GELU use the x86 kernels' polynomial
//! exp and tanh (within 1e-5 of libm's). The products of the other GGUF
//! block types (K-quants, legacy, i-quants) are in `q8_blocks_i8`. The int8
//! mode's product on the int8 checkpoint (`kernels::q8_block_fast`) is here
//! too, with the activations' int8 quantisation.
//!
//! Checked here by cross-compiling and running the tests under qemu
//! (`scripts/test-aarch64.sh`); their speed on real hardware is not measured.

use std::arch::aarch64::*;

use crate::backend::cpu::arch::{EXP_LN2_PARTS, EXP_POLY, EXP_RANGE, TANH_POLY, TANH_SMALL};
use crate::backend::cpu::types::int8_ckpt::{
    add_scaled, add_tail_columns, q8_block_fast_scalar, q8_block_scalar, Q8Rows, SplitView,
    ACT_BLOCK, XGROUP,
};
use crate::backend::cpu::types::q8_0::{Q8_0Acts, Q8_0_BLOCK_BYTES};

/// `kernels::q8_block` (same contract, same bits): per group of packed
/// activation rows (up to `XGROUP`), strips of 16 or 8 columns whose sums
/// stay in registers through all the rows of the run, each weight converted
/// once per group.
///
/// # Safety
/// NEON (always present on aarch64); the bounds `kernels::q8_block` asserts.
#[target_feature(enable = "neon")]
pub unsafe fn q8_block_neon(xp: &[f32], m: usize, wb: &Q8Rows, scales: &[f32], total: &mut [f32]) {
    let nb = total.len() / m;
    let k = xp.len() / m;
    let full = nb / 8 * 8;
    let mut acc = vec![0f32; m * full];
    for g0 in (0..m).step_by(XGROUP) {
        let width = XGROUP.min(m - g0);
        // The group's packed activations: `[k][width]`.
        let xg = &xp[g0 * k..(g0 + width) * k];
        let mut c = 0;
        while c < full {
            let wide = full - c >= 16;
            // SAFETY: columns c..c+16 (or c+8) < full <= nb and the rows of
            // the run are inside w (the caller's bounds); acc is [m][full].
            unsafe {
                match (width, wide) {
                    (1, true) => strip::<1, 4>(xg, wb, c, &mut acc, full, g0),
                    (2, true) => strip::<2, 4>(xg, wb, c, &mut acc, full, g0),
                    (3, true) => strip::<3, 4>(xg, wb, c, &mut acc, full, g0),
                    (4, true) => strip::<4, 4>(xg, wb, c, &mut acc, full, g0),
                    (5, true) => strip::<5, 4>(xg, wb, c, &mut acc, full, g0),
                    (_, true) => strip::<6, 4>(xg, wb, c, &mut acc, full, g0),
                    (1, false) => strip::<1, 2>(xg, wb, c, &mut acc, full, g0),
                    (2, false) => strip::<2, 2>(xg, wb, c, &mut acc, full, g0),
                    (3, false) => strip::<3, 2>(xg, wb, c, &mut acc, full, g0),
                    (4, false) => strip::<4, 2>(xg, wb, c, &mut acc, full, g0),
                    (5, false) => strip::<5, 2>(xg, wb, c, &mut acc, full, g0),
                    (_, false) => strip::<6, 2>(xg, wb, c, &mut acc, full, g0),
                }
            }
            c += if wide { 16 } else { 8 };
        }
    }
    if full > 0 {
        for (tr, ar) in total.chunks_exact_mut(nb).zip(acc.chunks_exact(full)) {
            add_scaled(ar, full, &scales[..full], &mut tr[..full]);
        }
    }
    add_tail_columns(m, full, wb, scales, total, |cols, sc, t| {
        q8_block_scalar(xp, m, cols, sc, t)
    });
}

/// `R` activation rows (group rows `g0..g0+R`, packed `[k][R]` in `xg`) by
/// `4V` columns from `c`: `acc[i][c + j] = fma(x[i][r], w[r][n0 + c + j], ..)`
/// over the run's rows in order, from zero.
///
/// # Safety
/// NEON; the bounds of `q8_block_neon`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn strip<const R: usize, const V: usize>(
    xg: &[f32],
    wb: &Q8Rows,
    c: usize,
    acc: &mut [f32],
    full: usize,
    g0: usize,
) {
    let mut a = [[vdupq_n_f32(0.0); V]; R];
    for r in wb.rows.clone() {
        let at = r * wb.n + wb.n0 + c;
        // SAFETY: columns at..at + 4V of row r are inside w (the caller's).
        let w: [float32x4_t; V] = unsafe { widen::<V>(wb.w.as_ptr().add(at) as *const i8) };
        for (i, ai) in a.iter_mut().enumerate() {
            let x = xg[r * R + i];
            for (av, &wv) in ai.iter_mut().zip(&w) {
                *av = vfmaq_n_f32(*av, wv, x);
            }
        }
    }
    for (i, ai) in a.iter().enumerate() {
        for (v, av) in ai.iter().enumerate() {
            let o = &mut acc[(g0 + i) * full + c + 4 * v..][..4];
            // SAFETY: o is four floats.
            unsafe { vst1q_f32(o.as_mut_ptr(), *av) };
        }
    }
}

/// `4V` int8 values from `p` as f32 vectors (`V` is 2 or 4).
///
/// # Safety
/// NEON; `4V` bytes readable at `p`.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn widen<const V: usize>(p: *const i8) -> [float32x4_t; V] {
    let mut out = [vdupq_n_f32(0.0); V];
    // SAFETY: the caller's.
    let halves: [int16x8_t; 2] = unsafe {
        if V == 4 {
            let b = vld1q_s8(p);
            [vmovl_s8(vget_low_s8(b)), vmovl_high_s8(b)]
        } else {
            [vmovl_s8(vld1_s8(p)), vdupq_n_s16(0)]
        }
    };
    for (v, o) in out.iter_mut().enumerate() {
        let h = halves[v / 2];
        let q = if v % 2 == 0 {
            vmovl_s16(vget_low_s16(h))
        } else {
            vmovl_high_s16(h)
        };
        *o = vcvtq_f32_s32(q);
    }
    out
}

/// `kernels::q8_block_fast` (same contract, same bits: each activation
/// block's exact integer sums per column, `part = fma(f32(isum), sx, part)`
/// in block order, then `total += part * scale`): sixteen columns at a time
/// whose sums stay in registers through the block's rows, each product
/// widened to i16 (`|x * w| <= 127 * 128`) and added into i32 lanes.
///
/// # Safety
/// NEON; the bounds `kernels::q8_block_fast` asserts.
#[target_feature(enable = "neon")]
pub unsafe fn q8_block_fast_neon(view: &SplitView, wb: &Q8Rows, scales: &[f32], total: &mut [f32]) {
    let Q8Rows { w, n, n0, .. } = *wb;
    let m = view.act.m;
    let nb = total.len() / m;
    let full = nb / 16 * 16;
    let mut part = vec![0f32; full];
    let mut xs = [0i8; ACT_BLOCK];
    for (i, tr) in total.chunks_exact_mut(nb).enumerate() {
        part.fill(0.0);
        for (b, block) in view.rows.clone().step_by(ACT_BLOCK).enumerate() {
            let end = (block + ACT_BLOCK).min(view.rows.end);
            let xs = &mut xs[..end - block];
            for (r, x) in (block..end).zip(xs.iter_mut()) {
                *x = view.value(i, r - view.rows.start);
            }
            let sx = view.scale(i, b);
            for c in (0..full).step_by(16) {
                let mut acc = [vdupq_n_s32(0); 4];
                for (r, &x) in (block..end).zip(xs.iter()) {
                    // SAFETY: columns n0 + c..n0 + c + 16 <= n0 + nb <= n of
                    // row r < rows.end (the contract: rows.end * n <= w.len()).
                    let wv = unsafe { vld1q_s8(w.as_ptr().add(r * n + n0 + c).cast()) };
                    let xv = vdupq_n_s8(x);
                    let lo = vmull_s8(vget_low_s8(wv), vget_low_s8(xv));
                    let hi = vmull_high_s8(wv, xv);
                    acc[0] = vaddw_s16(acc[0], vget_low_s16(lo));
                    acc[1] = vaddw_high_s16(acc[1], lo);
                    acc[2] = vaddw_s16(acc[2], vget_low_s16(hi));
                    acc[3] = vaddw_high_s16(acc[3], hi);
                }
                for (q, a) in acc.into_iter().enumerate() {
                    let p = &mut part[c + 4 * q..c + 4 * q + 4];
                    // SAFETY: four floats of `part` (c + 16 <= full).
                    unsafe {
                        let v = vfmaq_n_f32(vld1q_f32(p.as_ptr()), vcvtq_f32_s32(a), sx);
                        vst1q_f32(p.as_mut_ptr(), v);
                    }
                }
            }
        }
        for ((t, &p), &sc) in tr.iter_mut().zip(&part).zip(scales) {
            *t += p * sc;
        }
    }
    // The last columns (fewer than sixteen) through the scalar kernel.
    add_tail_columns(m, full, wb, scales, total, |cols, s, t| {
        q8_block_fast_scalar(view, cols, s, t)
    });
}

/// `kernels::quantize_block` (the scalar `quantize_row_i8`'s scale and
/// integers): the largest magnitude by `fmaxnm` (NaN skipped, as the scalar
/// fold skips it; the maximum is exact in any order), each `x * inv`
/// rounded to nearest with ties away from zero by `fcvtas`, which is the
/// scalar `round_half_away` (NaN to 0 in both).
///
/// # Safety
/// NEON; `src.len() == dst.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn quantize_block_neon(src: &[f32], dst: &mut [i8]) -> f32 {
    let full = src.len() / 8 * 8;
    let mut mx = vdupq_n_f32(0.0);
    for j in (0..full).step_by(4) {
        // SAFETY: j + 4 <= full <= src.len().
        mx = vmaxnmq_f32(mx, vabsq_f32(unsafe { vld1q_f32(src.as_ptr().add(j)) }));
    }
    let absmax = src[full..].iter().fold(
        vmaxnmvq_f32(mx),
        |m, &x| if x.abs() > m { x.abs() } else { m },
    );
    if absmax == 0.0 || !absmax.is_finite() {
        dst.fill(0);
        return if absmax.is_finite() { 0.0 } else { f32::NAN };
    }
    let inv = 127.0 / absmax;
    for j in (0..full).step_by(8) {
        // SAFETY: j + 8 <= full, for src and dst alike.
        unsafe {
            let a = vcvtaq_s32_f32(vmulq_n_f32(vld1q_f32(src.as_ptr().add(j)), inv));
            let b = vcvtaq_s32_f32(vmulq_n_f32(vld1q_f32(src.as_ptr().add(j + 4)), inv));
            // |x * inv| <= 127 (rounded up at most to 127 exactly): no saturation.
            let q = vqmovn_s16(vcombine_s16(vqmovn_s32(a), vqmovn_s32(b)));
            vst1_s8(dst.as_mut_ptr().add(j), q);
        }
    }
    for (o, &x) in dst[full..].iter_mut().zip(&src[full..]) {
        *o = crate::backend::round_half_away(x * inv) as i8;
    }
    absmax / 127.0
}

/// `kernels::dot_i8_rows` (exact i32 sums): 16 products a step, widened to
/// i16 pairwise and added into i32 lanes.
///
/// # Safety
/// NEON; the shapes `kernels::dot_i8_rows` asserts.
#[target_feature(enable = "neon")]
pub unsafe fn dot_i8_rows_neon(xs: &[i8], g: usize, rows: &[i8], out_t: &mut [i32]) {
    let k = xs.len() / g;
    let full = k / 16 * 16;
    for (o, row) in out_t.chunks_exact_mut(g).zip(rows.chunks_exact(k.max(1))) {
        for (o, x) in o.iter_mut().zip(xs.chunks_exact(k.max(1))) {
            let mut acc = vdupq_n_s32(0);
            let mut i = 0;
            while i < full {
                // SAFETY: bytes i..i+16 of both rows exist (i + 16 <= full <= k).
                unsafe {
                    let (a, b) = (vld1q_s8(x.as_ptr().add(i)), vld1q_s8(row.as_ptr().add(i)));
                    // |a * b| <= 128 * 128 fits i16; each pair added in i32.
                    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
                    acc = vpadalq_s16(acc, vmull_high_s8(a, b));
                }
                i += 16;
            }
            let tail: i32 = x[full..]
                .iter()
                .zip(&row[full..])
                .map(|(&a, &b)| i32::from(a) * i32::from(b))
                .sum();
            *o = vaddvq_s32(acc) + tail;
        }
    }
    if k == 0 {
        out_t.fill(0);
    }
}

/// `kernels::dot_q8_0_rows_int8` (same bits: each block's exact integer
/// sum, then `acc = fma(f32(isum), d_w * d_x, acc)` in block order), on
/// activations as rows (`Q8_0Tiles::None`): up to four activation rows per
/// pass over a weight row, each block's quants loaded and its scale decoded
/// once per pass.
///
/// # Safety
/// NEON; the shapes `kernels::dot_q8_0_rows_int8` asserts, `act.q` row-major.
#[target_feature(enable = "neon")]
pub unsafe fn dot_q8_0_rows_int8_neon(act: Q8_0Acts, rows: &[u8], out_t: &mut [f32]) {
    let (m, k) = (act.m, act.k);
    let blocks = k / 32;
    let row_bytes = blocks * Q8_0_BLOCK_BYTES;
    for (c, row) in rows.chunks_exact(row_bytes.max(1)).enumerate() {
        for i0 in (0..m).step_by(4) {
            let g = 4.min(m - i0);
            let mut acc = [0f32; 4];
            for (b, block) in row.chunks_exact(Q8_0_BLOCK_BYTES).enumerate() {
                let dw = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                // SAFETY: the block's 32 quants follow its scale; activation
                // rows i0..i0 + g hold block b's 32 values (the contract).
                unsafe {
                    let wp = block.as_ptr().add(2).cast::<i8>();
                    let (w0, w1) = (vld1q_s8(wp), vld1q_s8(wp.add(16)));
                    for (t, acc) in acc.iter_mut().enumerate().take(g) {
                        let i = i0 + t;
                        let xp = act.q.as_ptr().add(i * k + 32 * b);
                        let (x0, x1) = (vld1q_s8(xp), vld1q_s8(xp.add(16)));
                        // |x * w| <= 128 * 128 fits i16; pairs added in i32.
                        let mut sum = vpaddlq_s16(vmull_s8(vget_low_s8(x0), vget_low_s8(w0)));
                        sum = vpadalq_s16(sum, vmull_high_s8(x0, w0));
                        sum = vpadalq_s16(sum, vmull_s8(vget_low_s8(x1), vget_low_s8(w1)));
                        sum = vpadalq_s16(sum, vmull_high_s8(x1, w1));
                        let d = dw * act.s[i * blocks + b];
                        *acc = (vaddvq_s32(sum) as f32).mul_add(d, *acc);
                    }
                }
            }
            for (t, &a) in acc.iter().enumerate().take(g) {
                out_t[c * m + i0 + t] = a;
            }
        }
    }
}

/// `kernels::dot_q8_0_rows` (same bits): the eight lanes as two vectors, up
/// to four activation rows per pass over a weight row, each block's `d * q`
/// made once per pass.
///
/// # Safety
/// NEON; the shapes `kernels::dot_q8_0_rows` asserts.
#[target_feature(enable = "neon")]
pub unsafe fn dot_q8_0_rows_neon(x: &[f32], m: usize, k: usize, rows: &[u8], out_t: &mut [f32]) {
    let row_bytes = k / 32 * Q8_0_BLOCK_BYTES;
    for (c, row) in rows.chunks_exact(row_bytes.max(1)).enumerate() {
        for i0 in (0..m).step_by(4) {
            let g = 4.min(m - i0);
            let mut acc = [[vdupq_n_f32(0.0); 2]; 4];
            for (b, block) in row.chunks_exact(Q8_0_BLOCK_BYTES).enumerate() {
                let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                // SAFETY: the block's 32 quants follow its scale.
                let q: [float32x4_t; 8] = unsafe {
                    let lo = widen::<4>(block[2..].as_ptr() as *const i8);
                    let hi = widen::<4>(block[18..].as_ptr() as *const i8);
                    [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]]
                        .map(|v| vmulq_n_f32(v, d))
                };
                for (t, a) in acc.iter_mut().enumerate().take(g) {
                    let xb = &x[(i0 + t) * k + 32 * b..][..32];
                    for u in 0..4 {
                        // SAFETY: eight of the block's 32 activations.
                        unsafe {
                            let p = xb[8 * u..].as_ptr();
                            a[0] = vfmaq_f32(a[0], vld1q_f32(p), q[2 * u]);
                            a[1] = vfmaq_f32(a[1], vld1q_f32(p.add(4)), q[2 * u + 1]);
                        }
                    }
                }
            }
            for (t, a) in acc.iter().enumerate().take(g) {
                // ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)), as the reference.
                let s = vaddq_f32(a[0], a[1]);
                let (s0, s1, s2, s3) = (
                    vgetq_lane_f32(s, 0),
                    vgetq_lane_f32(s, 1),
                    vgetq_lane_f32(s, 2),
                    vgetq_lane_f32(s, 3),
                );
                out_t[c * m + i0 + t] = (s0 + s2) + (s1 + s3);
            }
        }
    }
}

/// e^x for four lanes: `math::exp256`'s Cephes expf (range reduction by ln 2,
/// a degree-6 polynomial, about 1 ulp); lanes below -87.3 give 0.
#[inline]
#[target_feature(enable = "neon")]
fn exp4(x: float32x4_t) -> float32x4_t {
    let (lo, hi) = EXP_RANGE;
    let underflow = vcltq_f32(x, vdupq_n_f32(lo));
    let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(lo)), vdupq_n_f32(hi));
    // Ties to even, as x86's _MM_FROUND_TO_NEAREST_INT.
    let fx = vrndnq_f32(vmulq_n_f32(x, std::f32::consts::LOG2_E));
    let x = vfmsq_f32(x, fx, vdupq_n_f32(EXP_LN2_PARTS[0]));
    let x = vfmsq_f32(x, fx, vdupq_n_f32(EXP_LN2_PARTS[1]));
    let mut y = vdupq_n_f32(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        y = vfmaq_f32(vdupq_n_f32(c), y, x);
    }
    let y = vfmaq_f32(vaddq_f32(x, vdupq_n_f32(1.0)), y, vmulq_f32(x, x));
    let n = vcvtq_s32_f32(fx);
    let pow2 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n, vdupq_n_s32(127))));
    let r = vmulq_f32(y, pow2);
    vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(r), underflow))
}

/// tanh for four lanes: `math::tanh256`'s Cephes tanhf (an odd polynomial
/// below 0.625, else 1 - 2/(e^2|x| + 1) with the sign of x).
#[inline]
#[target_feature(enable = "neon")]
fn tanh4(x: float32x4_t) -> float32x4_t {
    let sign = vandq_u32(vreinterpretq_u32_f32(x), vdupq_n_u32(0x8000_0000));
    let a = vabsq_f32(x);
    let t = exp4(vmulq_n_f32(a, -2.0));
    let one = vdupq_n_f32(1.0);
    let big = vdivq_f32(vsubq_f32(one, t), vaddq_f32(one, t));
    let big = vreinterpretq_f32_u32(vorrq_u32(vreinterpretq_u32_f32(big), sign));
    let z = vmulq_f32(x, x);
    let mut p = vdupq_n_f32(TANH_POLY[0]);
    for &c in &TANH_POLY[1..] {
        p = vfmaq_f32(vdupq_n_f32(c), p, z);
    }
    let small = vfmaq_f32(x, vmulq_f32(p, z), x);
    vbslq_f32(vcltq_f32(a, vdupq_n_f32(TANH_SMALL)), small, big)
}

/// `f` applied to `s` four lanes at a time, the last lanes through a vector
/// padded with `pad` (so every lane gets the same arithmetic).
#[inline]
#[target_feature(enable = "neon")]
fn map4(s: &mut [f32], pad: f32, mut f: impl FnMut(float32x4_t, usize) -> float32x4_t) {
    let full = s.len() / 4 * 4;
    for i in (0..full).step_by(4) {
        // SAFETY: lanes i..i+4 are inside s.
        unsafe { vst1q_f32(s.as_mut_ptr().add(i), f(vld1q_f32(s.as_ptr().add(i)), i)) };
    }
    if full < s.len() {
        let mut lanes = [pad; 4];
        let n = s.len() - full;
        lanes[..n].copy_from_slice(&s[full..]);
        // SAFETY: four floats.
        unsafe { vst1q_f32(lanes.as_mut_ptr(), f(vld1q_f32(lanes.as_ptr()), full)) };
        s[full..].copy_from_slice(&lanes[..n]);
    }
}

/// `kernels::gelu_mul` with `tanh4` (the x86 kernels' formula).
///
/// # Safety
/// NEON; `v.len() >= h.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn gelu_mul_neon(h: &mut [f32], v: &[f32]) {
    let n = h.len();
    let mut vpad = [0f32; 4];
    map4(h, 0.0, |x, i| {
        let vi = if i + 4 <= n {
            // SAFETY: lanes i..i+4 of v (v.len() >= n).
            unsafe { vld1q_f32(v.as_ptr().add(i)) }
        } else {
            vpad[..n - i].copy_from_slice(&v[i..n]);
            // SAFETY: four floats.
            unsafe { vld1q_f32(vpad.as_ptr()) }
        };
        let x3 = vmulq_f32(vmulq_f32(x, x), x);
        let inner = vmulq_n_f32(vfmaq_n_f32(x, x3, 0.044715), 0.797_884_6);
        let cdf = vmulq_n_f32(vaddq_f32(vdupq_n_f32(1.0), tanh4(inner)), 0.5);
        vmulq_f32(vmulq_f32(x, cdf), vi)
    });
}

/// `pages::softcap_scores` with `tanh4`: `s = cap * tanh(s * mult / cap)`,
/// masked positions -1e30; returns the largest.
///
/// # Safety
/// NEON; `mask.len() >= s.len()`.
#[target_feature(enable = "neon")]
pub unsafe fn softcap_scores_neon(s: &mut [f32], mult: f32, cap: f32, mask: &[bool]) -> f32 {
    map4(s, 0.0, |x, _| {
        vmulq_n_f32(tanh4(vmulq_n_f32(vmulq_n_f32(x, mult), 1.0 / cap)), cap)
    });
    let mut max = f32::NEG_INFINITY;
    for (v, &keep) in s.iter_mut().zip(mask) {
        if !keep {
            *v = -1e30;
        }
        max = max.max(*v);
    }
    max
}

/// `pages::exp_shifted` with `exp4`: `s = exp(s - max)`; returns the sum.
///
/// # Safety
/// NEON.
#[target_feature(enable = "neon")]
pub unsafe fn exp_shifted_neon(s: &mut [f32], max: f32) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    // Padding at -inf comes out of exp as 0 and adds nothing.
    map4(s, f32::NEG_INFINITY, |x, _| {
        let e = exp4(vsubq_f32(x, vdupq_n_f32(max)));
        acc = vaddq_f32(acc, e);
        e
    });
    vaddvq_f32(acc)
}
