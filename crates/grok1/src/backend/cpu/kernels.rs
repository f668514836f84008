//! The kernels' entry points. Each checks its shapes (every bound the SIMD
//! versions rely on) and runs the version for the instruction set it is
//! given: one from `arch/`, or the portable scalar reference from `types/`,
//! which the tests hold every other version to. Grouped by the data type
//! whose products they are; the page kernels of attention have theirs in
//! `attention::pages`.

use std::ops::Range;

#[cfg(target_arch = "aarch64")]
use super::arch::arm::{f32_rows as arm_f32_rows, neon};
#[cfg(target_arch = "x86_64")]
use super::arch::x86::{self, int8_ckpt_f32::Wide};
use super::common::{Aligned, Isa, QUAD, ROW_PAD};
use super::types::f32_rows::{dot_f32_bytes_scalar, dot_rows_scalar};
use super::types::int8_ckpt::{
    q8_block_fast_scalar, q8_block_scalar, quad_index, ActI8, Q8Rows, SplitView, ACT_BLOCK,
    BLOCK_QUADS,
};
use super::types::int8_rows::dot_i8_rows_scalar;
use super::types::q8_0::{
    dot_q8_0_rows_int8_scalar, dot_q8_0_rows_scalar, paired_index, ActQ8_0, Q8_0Acts, Q8_0Tiles,
    Q8_0_BLOCK_BYTES, Q8_0_VALUES,
};
use super::types::q8_blocks::{
    dot_rows_q8_scalar, quantize_q8_0, quantize_q8_k, ActQ8, ActQ8Rows, ActTiles, BSUM_VALUES,
};
#[cfg(not(target_arch = "x86_64"))]
use super::types::q8_blocks::{QuantBlock, TileBlock};

// The checkpoint's int8 matrices (`types::int8_ckpt`), with f32 or int8
// activations.

/// Most activation rows for which `isa`'s decode kernel (the f32 one of
/// [`q8_block`], or the int8 one when `int8`) keeps its sums in registers and
/// touches the task's accumulators once per block of weight rows; 0 where it
/// has no such kernel. Up to that many rows, a task's columns need not shrink
/// as rows are added.
pub fn register_stream_rows(isa: Isa, int8: bool) -> usize {
    match (isa, int8) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, false) => x86::int8_ckpt_strips::STRIPS_AVX2_MAX_M,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512Vnni | Isa::Amx, false) => x86::int8_ckpt_strips::STRIPS_MAX_M_HALF,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512Vnni | Isa::Amx, true) => x86::int8_ckpt_strips::STRIPS_MAX_M,
        _ => 0,
    }
}

/// A block of columns of an int8 matrix product over one run of rows inside a
/// scale group: `total[i][j] += scales[j] * (sum over r in rows of x[i][r] *
/// w[r][n0 + j])` for `i < m`, `j < nb`, where `xp` is the `k` columns of the
/// activations packed by [`pack_activations`] and `total` is row-major
/// `[m, nb]`. The sum starts at zero and takes one FMA per row in order; then
/// it is multiplied by the scale and added (two roundings, no FMA), the same
/// on every path.
///
/// [`pack_activations`]: super::types::int8_ckpt::pack_activations
pub fn q8_block(isa: Isa, xp: &[f32], m: usize, wb: &Q8Rows, scales: &[f32], total: &mut [f32]) {
    let Q8Rows { w, n, n0, .. } = *wb;
    let rows = wb.rows.clone();
    if m == 0 || total.is_empty() || rows.is_empty() {
        return;
    }
    let nb = total.len() / m;
    // Every index the kernels use is inside these bounds.
    assert_eq!(total.len(), m * nb, "q8_block: total is not [m, nb]");
    assert!(scales.len() >= nb, "q8_block: fewer scales than columns");
    assert!(
        xp.len().is_multiple_of(m) && rows.end <= xp.len() / m,
        "q8_block: packed activations too short"
    );
    assert!(
        n0 + nb <= n && rows.end * n <= w.len(),
        "q8_block: w too short"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx => {
            // 512-bit tiles only where AVX-512 is present (the two ISAs above
            // Avx2 are only chosen with AVX-512 F).
            let wide = if isa == Isa::Avx2 {
                Wide::Avx2
            } else {
                Wide::Avx512
            };
            // SAFETY: Avx2 is only chosen when the CPU has AVX2 and FMA
            // (Isa::best), and the bounds above hold for every index used.
            unsafe { x86::int8_ckpt_f32::q8_block_avx2(xp, m, wb, scales, total, wide) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the shapes are checked above.
            unsafe { neon::q8_block_neon(xp, m, wb, scales, total) }
        }
        _ => q8_block_scalar(xp, m, wb, scales, total),
    }
}

/// One split's product for a block of columns: `total[i][j] += scale[j] *
/// part[i][j]` with `part` as in the module's description, for the split
/// `split` of `act` (whose rows `wb.rows` must be), columns `wb.n0 ..
/// wb.n0 + nb`, `total` row-major `[m, nb]`.
pub fn q8_block_fast(
    isa: Isa,
    act: &ActI8,
    split: usize,
    wb: &Q8Rows,
    scales: &[f32],
    total: &mut [f32],
) {
    let m = act.m;
    let Q8Rows { w, n, n0, .. } = *wb;
    let (rows, q0, b0) = act.splits[split].clone();
    assert_eq!(rows, wb.rows, "q8_block_fast: rows are not the split's");
    if m == 0 || total.is_empty() || rows.is_empty() {
        return;
    }
    let nb = total.len() / m;
    // Every index the kernels use is inside these bounds.
    assert_eq!(total.len(), m * nb, "q8_block_fast: total is not [m, nb]");
    assert!(
        scales.len() >= nb,
        "q8_block_fast: fewer scales than columns"
    );
    assert!(
        n0 + nb <= n && rows.end * n <= w.len(),
        "q8_block_fast: w too short"
    );
    assert!(
        q0 + rows.len().div_ceil(ACT_BLOCK) * BLOCK_QUADS <= act.quads
            && b0 + rows.len().div_ceil(ACT_BLOCK) <= act.blocks,
        "q8_block_fast: activations do not cover the split"
    );
    let view = SplitView { act, rows, q0, b0 };
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // SAFETY: Avx2 is only chosen when the CPU has AVX2 and FMA
            // (Isa::best), and the bounds above hold for every index used.
            unsafe { x86::int8_ckpt_i8_avx2::q8_block_fast_avx2(&view, wb, scales, total) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => {
            // SAFETY: Avx512Vnni is only chosen when the CPU has AVX2, FMA and
            // AVX-512 F/BW/VL/VNNI (Isa::best); the bounds above hold.
            unsafe { x86::int8_ckpt_i8_vnni::q8_block_fast_vnni(&view, wb, scales, total) }
        }
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        Isa::Amx => {
            // SAFETY: Amx is only chosen when the CPU has everything
            // Avx512Vnni needs plus AMX-TILE/INT8 and the kernel let this
            // process use the tile data (Isa::best); the bounds above hold.
            unsafe { x86::amx::q8_block_fast_amx(&view, wb, scales, total) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON
            // (Isa::best); the bounds above hold for every index used.
            unsafe { neon::q8_block_fast_neon(&view, wb, scales, total) }
        }
        _ => q8_block_fast_scalar(&view, wb, scales, total),
    }
}

impl ActI8 {
    /// Quantises `x` (`[m, k]`) for a matrix whose `k` rows are cut into
    /// `splits` (consecutive ranges covering `0..k`).
    pub fn quantize(isa: Isa, x: &[f32], m: usize, k: usize, splits: &[Range<usize>]) -> ActI8 {
        assert_eq!(x.len(), m * k, "ActI8::quantize: x is not [m, k]");
        let mut layout = Vec::with_capacity(splits.len());
        let (mut quads, mut blocks, mut next) = (0, 0, 0);
        for rows in splits {
            assert_eq!(rows.start, next, "ActI8::quantize: splits do not tile 0..k");
            next = rows.end;
            layout.push((rows.clone(), quads, blocks));
            quads += rows.len().div_ceil(ACT_BLOCK) * BLOCK_QUADS;
            blocks += rows.len().div_ceil(ACT_BLOCK);
        }
        assert_eq!(next, k, "ActI8::quantize: splits do not tile 0..k");
        let padded = m.next_multiple_of(ROW_PAD);
        let mut q = vec![0i8; padded * quads * QUAD];
        let mut sx = vec![0f32; padded * blocks];
        let mut xsum = vec![0i32; m * blocks];
        for i in 0..m {
            let xi = &x[i * k..(i + 1) * k];
            let qi = &mut q[i * quads * QUAD..(i + 1) * quads * QUAD];
            let si = &mut sx[i * blocks..(i + 1) * blocks];
            let ssum = &mut xsum[i * blocks..(i + 1) * blocks];
            let mut block = [0i8; ACT_BLOCK];
            for (rows, q0, b0) in &layout {
                let dst = &mut qi[q0 * QUAD..(q0 + rows.len().div_ceil(QUAD)) * QUAD];
                for (b, src) in xi[rows.clone()].chunks(ACT_BLOCK).enumerate() {
                    let vals = &mut block[..src.len()];
                    si[b0 + b] = quantize_block(isa, src, vals);
                    ssum[b0 + b] = vals.iter().map(|&v| i32::from(v)).sum();
                    for (off, &v) in vals.iter().enumerate() {
                        dst[quad_index(rows.len(), b * ACT_BLOCK + off)] = v;
                    }
                }
            }
        }
        ActI8 {
            m,
            quads,
            blocks,
            q,
            sx,
            xsum,
            splits: layout,
        }
    }
}

/// `quantize_row_i8` on one block, on the given instruction set (the same
/// result on each).
pub fn quantize_block(isa: Isa, src: &[f32], dst: &mut [i8]) -> f32 {
    assert_eq!(src.len(), dst.len(), "quantize_block: lengths differ");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 and Avx512Vnni are only chosen when the CPU has AVX2
        // (Isa::best); the lengths are checked above.
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx => unsafe {
            x86::quantize::quantize_block_avx2(src, dst)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: every aarch64 CPU this ISA is chosen on has NEON
        // (Isa::best); the lengths are checked above.
        Isa::Neon => unsafe { neon::quantize_block_neon(src, dst) },
        _ => crate::backend::quantize_row_i8(src, dst),
    }
}

// GGUF Q8_0 rows (`types::q8_0`), with f32 activations or activations in
// Q8_0 blocks.

/// `out_t[c][i] = x[i] . row_c` for the `m` rows of `x` (`[m, k]`) and Q8_0
/// weight rows (`rows` holds `out_t.len() / m` rows of `k / 32` blocks), with
/// the weights dequantised exactly (`d * q` is exact in f32: 11 and 8
/// significant bits) and never written out: eight lanes, `acc[l] =
/// fma(x[8e + l], d * q[8e + l], acc[l])` for every eighth `e` of the row in
/// order (one FMA per product, so a tile kernel spends its time on FMAs),
/// and at the end the lanes added as `((l0 + l4) + (l2 + l6)) + ((l1 + l5) +
/// (l3 + l7))`. Every path and every `m` does exactly these operations for
/// each row, so results do not depend on the batch. `k` must be a multiple
/// of 32 (Q8_0 rows are whole blocks).
pub fn dot_q8_0_rows(isa: Isa, x: &[f32], m: usize, k: usize, rows: &[u8], out_t: &mut [f32]) {
    assert!(m > 0 && k.is_multiple_of(32), "dot_q8_0_rows: shape");
    assert!(x.len() >= m * k, "dot_q8_0_rows: x too short");
    assert_eq!(
        rows.len(),
        out_t.len() / m * (k / 32) * Q8_0_BLOCK_BYTES,
        "dot_q8_0_rows: rows do not match the output"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx => {
            // SAFETY: AVX2/FMA are present (Isa::best), F16C with them on every
            // CPU that has both, and the sizes are checked above.
            unsafe { x86::q8_0_f32::dot_q8_0_rows_avx2(x, m, k, rows, out_t) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the shapes are checked above.
            unsafe { neon::dot_q8_0_rows_neon(x, m, k, rows, out_t) }
        }
        _ => dot_q8_0_rows_scalar(x, m, k, rows, out_t),
    }
}

/// Activation rows from which the f32 Q8_0 product takes the tile kernels
/// (`arch/x86/q8_0_f32.rs`); fewer take [`dot_q8_0_rows`], whose
/// row-at-a-time passes are as fast when the weights' bytes, not the
/// arithmetic, set the pace.
pub const Q8_0_TILE_MIN_M: usize = 6;

/// Whether the f32 Q8_0 product of `m` activation rows takes the tile kernel
/// on `isa` (with activations packed by [`pair_rows`]).
///
/// [`pair_rows`]: super::types::q8_0::pair_rows
pub fn q8_0_paired(isa: Isa, m: usize) -> bool {
    matches!(isa, Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx) && m >= Q8_0_TILE_MIN_M
}

/// [`dot_q8_0_rows`] (the same results, bit for bit) with the activations
/// packed by [`pair_rows`].
///
/// [`pair_rows`]: super::types::q8_0::pair_rows
pub fn dot_q8_0_rows_paired(
    isa: Isa,
    xp: &[f32],
    m: usize,
    k: usize,
    rows: &[u8],
    out_t: &mut [f32],
) {
    assert!(m > 0 && k.is_multiple_of(32), "dot_q8_0_rows_paired: shape");
    assert!(
        xp.len() >= m.div_ceil(2) * 2 * k,
        "dot_q8_0_rows_paired: x too short"
    );
    assert_eq!(
        rows.len(),
        out_t.len() / m * (k / 32) * Q8_0_BLOCK_BYTES,
        "dot_q8_0_rows_paired: rows do not match the output"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Amx => {
            // SAFETY: both are only chosen when the CPU has AVX2, FMA, F16C
            // and AVX-512 F (Isa::best); the sizes are checked above.
            unsafe { x86::q8_0_f32::dot_q8_0_rows_paired_avx512(xp, m, k, rows, out_t) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            // SAFETY: AVX2/FMA are present (Isa::best), F16C with them on every
            // CPU that has both; the sizes are checked above.
            unsafe { x86::q8_0_f32::dot_q8_0_rows_paired_avx2(xp, m, k, rows, out_t) }
        }
        _ => {
            // No tile kernel here: the row kernel on the rows unpacked.
            let mut x = vec![0f32; m * k];
            for (i, row) in x.chunks_exact_mut(k.max(1)).enumerate() {
                for (e, eighth) in row.chunks_exact_mut(8).enumerate() {
                    let at = paired_index(m.div_ceil(2), k, i, 8 * e);
                    eighth.copy_from_slice(&xp[at..at + 8]);
                }
            }
            dot_q8_0_rows(isa, &x, m, k, rows, out_t)
        }
    }
}

/// Fewest activation rows the VNNI tile kernel takes: it multiplies 16 rows
/// (padding included) at the cost of one, which pays from a few rows on,
/// and below them the row kernel does less per weight byte.
pub const VNNI_MIN_M: usize = 4;

impl ActQ8_0 {
    /// Quantises `x` (`[m, k]`, `k` a multiple of 32).
    pub fn quantize(isa: Isa, x: &[f32], m: usize, k: usize) -> ActQ8_0 {
        assert!(
            k.is_multiple_of(Q8_0_VALUES) && x.len() == m * k,
            "ActQ8_0::quantize: x is not [m, k] with k a multiple of 32"
        );
        let mut q = vec![0i8; m * k];
        let s: Vec<f32> = x
            .chunks_exact(Q8_0_VALUES)
            .zip(q.chunks_exact_mut(Q8_0_VALUES))
            .map(|(src, dst)| quantize_block(isa, src, dst))
            .collect();
        let (mut tiles, mut tile_s) = (Aligned::zeros(0), Vec::new());
        let layout = q8_0_tiled(isa, m);
        if layout != Q8_0Tiles::None {
            let bias = if layout == Q8_0Tiles::Vnni { 0x80u8 } else { 0 };
            let blocks = k / Q8_0_VALUES;
            let padded = m.next_multiple_of(ROW_PAD);
            tiles = Aligned::zeros(padded * k);
            let packed = tiles.as_mut_slice();
            tile_s = vec![0f32; padded * blocks];
            for i in 0..m {
                let (t, u) = (i / ROW_PAD, i % ROW_PAD);
                for b in 0..blocks {
                    let block = (t * blocks + b) * ROW_PAD;
                    tile_s[block + u] = s[i * blocks + b];
                    for qd in 0..Q8_0_VALUES / QUAD {
                        let (dst, src) = (
                            (block * 8 + qd * ROW_PAD + u) * QUAD,
                            i * k + 32 * b + QUAD * qd,
                        );
                        for (d, &v) in packed[dst..dst + QUAD].iter_mut().zip(&q[src..src + QUAD]) {
                            *d = (v as u8 ^ bias) as i8;
                        }
                    }
                }
            }
        }
        ActQ8_0 {
            m,
            k,
            q,
            s,
            layout,
            tiles,
            tile_s,
        }
    }
}

/// The tile layout [`ActQ8_0`] makes for `m` rows on `isa`.
fn q8_0_tiled(isa: Isa, m: usize) -> Q8_0Tiles {
    match isa {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        Isa::Amx if m >= x86::amx::AMX_MIN_M => Q8_0Tiles::Amx,
        Isa::Avx512Vnni | Isa::Amx if m >= VNNI_MIN_M => Q8_0Tiles::Vnni,
        _ => Q8_0Tiles::None,
    }
}

/// `out_t[c][i] = x[i] . row_c` for Q8_0 weight rows (`rows` holds
/// `out_t.len() / m` rows of `k / 32` blocks) and activations quantised to
/// Q8_0 blocks: for each block in order, `isum = sum over t < 32 of xq[32b +
/// t] * q[32b + t]` (exact, in i32; any order), `acc = fma(f32(isum), d_w *
/// d_x, acc)` with `d_w * d_x` rounded once. One exact integer sum per block is
/// what a tile multiplier (`tdpbssd`) gives for a block, so the AMX kernel does
/// these operations too; every path does, so results are the same on every ISA
/// and for every batch. `f32(isum)` is exact: |isum| <= 32 * 127 * 128 < 2^24.
pub fn dot_q8_0_rows_int8(isa: Isa, act: Q8_0Acts, rows: &[u8], out_t: &mut [f32]) {
    let (m, k) = (act.m, act.k);
    assert!(m > 0, "dot_q8_0_rows_int8: no activation rows");
    assert!(
        act.q.len() == m * k && act.s.len() == m * (k / Q8_0_VALUES),
        "dot_q8_0_rows_int8: activations are not [m, k]"
    );
    assert_eq!(
        rows.len(),
        out_t.len() / m * (k / Q8_0_VALUES) * Q8_0_BLOCK_BYTES,
        "dot_q8_0_rows_int8: rows do not match the output"
    );
    match isa {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        Isa::Amx if act.layout == Q8_0Tiles::Amx => {
            // SAFETY: Amx is only chosen when the CPU has AVX2, FMA, F16C,
            // AVX-512 F/BW/VL and AMX-TILE/INT8 (Isa::best); sizes checked
            // above, the tiles laid out for it.
            unsafe { x86::amx::dot_q8_0_rows_int8_amx(act, rows, out_t) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Amx if act.layout == Q8_0Tiles::Vnni => {
            // SAFETY: both are only chosen when the CPU has AVX2, FMA, F16C and
            // AVX-512 F/BW/VL/VNNI (Isa::best); sizes checked above, the tiles
            // laid out for it.
            unsafe { x86::q8_0_i8::dot_q8_0_rows_int8_vnni(act, rows, out_t) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx => {
            // SAFETY: AVX2/FMA are present (Isa::best), F16C with them on every
            // CPU that has both, and the sizes are checked above.
            unsafe { x86::q8_0_i8::dot_q8_0_rows_int8_avx2(act, rows, out_t) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon if act.layout == Q8_0Tiles::None => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON
            // (Isa::best); the sizes are checked above, the activations rows.
            unsafe { neon::dot_q8_0_rows_int8_neon(act, rows, out_t) }
        }
        _ => dot_q8_0_rows_int8_scalar(act, rows, out_t),
    }
}

// Int8 rows with a scale per row (`types::int8_rows`).

/// `out_t[j][t] = xs[t] . rows[j]` for `g` int8 vectors `xs` (`[g, k]`)
/// and the int8 rows `rows` (`[n, k]`), `out_t` being `[n, g]`, summed exactly
/// in i32 (values within +-127, as [`crate::backend::quantize_row_i8`] makes
/// them): every path gives the same result.
pub fn dot_i8_rows(isa: Isa, xs: &[i8], g: usize, rows: &[i8], out_t: &mut [i32]) {
    assert!(g > 0, "dot_i8_rows: no activation rows");
    let k = xs.len() / g;
    assert!(
        xs.len() == g * k && out_t.len().is_multiple_of(g) && rows.len() == k * (out_t.len() / g),
        "dot_i8_rows: shapes"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            let n = out_t.len() / g;
            let mut sums = vec![0i32; n];
            for (t, x) in xs.chunks_exact(k.max(1)).enumerate().take(g) {
                // SAFETY: `Isa::Avx2` is only chosen when the CPU has AVX2 (Isa::best).
                unsafe { x86::int8_rows::dot_i8_rows_avx2(x, rows, &mut sums) };
                for (j, &v) in sums.iter().enumerate() {
                    out_t[j * g + t] = v;
                }
            }
            if k == 0 {
                out_t.fill(0);
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512Vnni` and `Isa::Amx` are only chosen when the
        // CPU has AVX-512 F/BW/VL/VNNI (Isa::best); the shapes are checked.
        Isa::Avx512Vnni | Isa::Amx => unsafe {
            if g == 1 {
                x86::int8_rows::dot_i8_rows_vnni(xs, rows, out_t)
            } else {
                x86::int8_rows::dot_i8_rows_multi_vnni(xs, g, rows, out_t)
            }
        },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the shapes are checked above.
            unsafe { neon::dot_i8_rows_neon(xs, g, rows, out_t) }
        }
        _ => dot_i8_rows_scalar(xs, g, rows, out_t),
    }
}

// f32 rows (`types::f32_rows`).

/// `out_t[r][i] = x[i] . e[r]` for the `m` rows of `x` (`[m, d]`) and the rows
/// of `e` (`[out_t.len() / m, d]`, little-endian f32, not necessarily aligned);
/// `out_t` is `[rows, m]`.
pub fn dot_f32_bytes(isa: Isa, x: &[f32], m: usize, d: usize, e: &[u8], out_t: &mut [f32]) {
    assert!(
        m > 0 && out_t.len().is_multiple_of(m),
        "dot_f32_bytes: output shape"
    );
    let rows = out_t.len() / m;
    assert!(
        x.len() >= m * d && e.len() >= rows * d * 4,
        "dot_f32_bytes: sizes"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx => {
            // SAFETY: AVX2/FMA are present (Isa::best) and the sizes are checked above.
            unsafe { x86::f32_rows::dot_f32_bytes_avx2(x, m, d, e, out_t) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the sizes are checked above.
            unsafe { arm_f32_rows::dot_f32_bytes_neon(x, m, d, e, out_t) }
        }
        _ => dot_f32_bytes_scalar(x, m, d, e, out_t),
    }
}

/// `scores[j] = q . keys[j]` for the rows of `keys` (`[scores.len(), q.len()]`).
pub fn dot_rows(isa: Isa, q: &[f32], keys: &[f32], scores: &mut [f32]) {
    let hd = q.len();
    assert!(keys.len() >= scores.len() * hd, "dot_rows: keys too short");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx => {
            // SAFETY: AVX2/FMA are present (Isa::best) and the sizes are checked above.
            unsafe { x86::f32_rows::dot_rows_avx2(q, keys, scores) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the size is checked above.
            unsafe { arm_f32_rows::dot_rows_neon(q, keys, scores) }
        }
        _ => dot_rows_scalar(q, keys, scores),
    }
}

// Elementwise.

/// The gated expert activation, in place: `h = gelu_tanh(h) * v`.
pub fn gelu_mul(isa: Isa, h: &mut [f32], v: &[f32]) {
    assert!(v.len() >= h.len(), "gelu_mul: v too short");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx => {
            // SAFETY: AVX2/FMA are present (Isa::best) and the sizes are checked above.
            unsafe { x86::math::gelu_mul_avx2(h, v) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the sizes are checked above.
            unsafe { neon::gelu_mul_neon(h, v) }
        }
        _ => {
            for (a, &b) in h.iter_mut().zip(v) {
                *a = crate::model::norm::gelu_tanh(*a) * b;
            }
        }
    }
}

// The memory probe of `grok1 bench`.

/// The wrapping sum of `words`: the read loop of the memory bandwidth probe,
/// as fast as `isa` reads memory.
pub fn read_sum(isa: Isa, words: &[u64]) -> u64 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx => {
            // SAFETY: these ISAs are only chosen where the CPU has AVX2.
            unsafe { x86::read::sum_words_avx2(words) }
        }
        // NEON is aarch64's baseline: this loop is vectorised there, eight
        // independent accumulators.
        _ => {
            let mut acc = [0u64; 8];
            let blocks = words.chunks_exact(8);
            let tail = blocks.remainder();
            for b in blocks {
                for (a, &v) in acc.iter_mut().zip(b) {
                    *a = a.wrapping_add(v);
                }
            }
            acc.iter().chain(tail).fold(0u64, |a, &b| a.wrapping_add(b))
        }
    }
}

// GGUF's K-quant and legacy rows (`types::q8_blocks` and one module per
// block type), with activations quantised per block.

impl ActQ8 {
    /// Quantises `x` (`[m, k]`) in blocks of `block` values (`k` a multiple
    /// of it, and `block` of 16) as llama.cpp does (`q8_blocks::quantize_q8_k`
    /// for blocks of 256, else `quantize_q8_0`), on the given instruction set
    /// (the same result on each).
    pub fn quantize(isa: Isa, x: &[f32], m: usize, k: usize, block: usize) -> ActQ8 {
        assert!(
            block.is_multiple_of(BSUM_VALUES) && k.is_multiple_of(block) && x.len() == m * k,
            "ActQ8::quantize: x is not [m, k] with k a multiple of {block}"
        );
        let mut q = vec![0i8; m * k];
        let mut bsums = vec![0i16; m * k / BSUM_VALUES];
        let mut xsum = vec![0i32; m * k / block];
        let d: Vec<f32> = x
            .chunks_exact(block)
            .zip(q.chunks_exact_mut(block))
            .map(|(src, dst)| quantize_act_block(isa, src, dst))
            .collect();
        for ((q, s), xs) in q
            .chunks_exact(block)
            .zip(bsums.chunks_exact_mut(block / BSUM_VALUES))
            .zip(&mut xsum)
        {
            // |sum| <= 16 * 127 fits an i16.
            for (s, q) in s.iter_mut().zip(q.chunks_exact(BSUM_VALUES)) {
                *s = q.iter().map(|&v| i16::from(v)).sum();
            }
            *xs = s.iter().map(|&v| i32::from(v)).sum();
        }
        let mut act = ActQ8 {
            m,
            k,
            block,
            q,
            d,
            bsums,
            xsum,
            tiles: ActTiles::default(),
        };
        if q8_blocks_tiled(isa, m) {
            // The VNNI tiles multiply the activations as vpdpbusd's unsigned
            // side, the AVX2 ones as maddubs's signed side, the AMX ones as
            // tdpbssd's signed side.
            let plus_128 = isa == Isa::Avx512Vnni;
            // Only the AMX tiles read the pairs of sums of 32.
            act.tiles = ActTiles::new(&act, plus_128, isa == Isa::Amx);
        }
        act
    }
}

/// One block of [`ActQ8`]: llama.cpp's q8_K for 256 values, its q8_0 for
/// others.
fn quantize_act_block(isa: Isa, src: &[f32], dst: &mut [i8]) -> f32 {
    assert_eq!(src.len(), dst.len(), "quantize_act_block: lengths differ");
    let q8_k = src.len() == 256;
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: these ISAs are only chosen when the CPU has AVX2 and FMA
        // (Isa::best); the lengths are checked above.
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx => unsafe {
            if q8_k {
                x86::quantize::quantize_q8_k_avx2(src, dst)
            } else {
                x86::quantize::quantize_q8_0_avx2(src, dst)
            }
        },
        _ if q8_k => quantize_q8_k(src, dst),
        _ => quantize_q8_0(src, dst),
    }
}

/// Fewest activation rows the tile kernel of the K-quant and legacy types
/// takes (`arch/x86/q8_blocks_vnni.rs`): it multiplies 16 rows (padding
/// included) per instruction, and unpacks each weight block once for all
/// of them; below, the AVX2 kernel's four rows per unpacking do less.
pub const Q8_BLOCKS_TILE_MIN_M: usize = 10;

/// The same for the AMX tiles (`arch/x86/q8_blocks_amx.rs`), whose
/// weights are unpacked once per 16 rows and multiplied at full depth: from
/// 6 rows they beat the row-wise kernels (`kernel_bench`, Intel Xeon, one
/// thread, `[2816 x 1024]`, two rounds, GFLOP/s row-wise -> tiled: m = 4
/// Q4_K 52-56 -> 51-52, IQ4_XS 60 -> 51-52; m = 6 Q4_K 59-63 -> 77, Q6_K 60
/// -> 66-69, IQ4_XS 64-66 -> 76-77, Q2_K 68 -> 92-95; m = 8 Q4_K 71 ->
/// 100-110, Q6_K 71 -> 87, Q2_K 76-80 -> 124).
pub const Q8_BLOCKS_AMX_TILE_MIN_M: usize = 6;

/// The same for the AVX2 tiles (`arch/x86/q8_blocks_tiles_avx2.rs`, eight
/// rows per instruction) of the i-quants, whose row-wise AVX2 kernel looks
/// their grids up once per block and weight row (`kernel_bench`, Zen 3,
/// IQ3_XXS at m = 8: 38 GFLOP/s row-wise, 52 tiled)...
pub const Q8_BLOCKS_AVX2_TILE_MIN_M: usize = 8;
/// ...and of the K-quant and legacy types, whose unpacking is cheaper to
/// repeat (Q4_K at m = 8: 68 against 44; at 12: 71 against 76; at 16: 71
/// against 98), and IQ4's, whose tiles multiply two nibbles (IQ4_XS at m
/// = 8: 42-57 against 35-56; at 32: 59 against 73-78).
pub const Q8_BLOCKS_AVX2_TILE_MIN_M_CODES: usize = 12;

/// Whether the AVX2 tiles take `m` activation rows of block type `T`.
#[cfg(target_arch = "x86_64")]
fn avx2_tiled<T: RowBlock>(m: usize) -> bool {
    let biased = T::SIGNED_CODES && T::LEVEL_BIAS > 0;
    if biased && T::CODE_MAX <= 127 {
        m >= Q8_BLOCKS_AVX2_TILE_MIN_M
    } else {
        (biased || !T::SIGNED_CODES) && m >= Q8_BLOCKS_AVX2_TILE_MIN_M_CODES
    }
}

/// Whether [`ActQ8::quantize`] lays out `m` rows for the tile kernel on `isa`.
fn q8_blocks_tiled(isa: Isa, m: usize) -> bool {
    match isa {
        Isa::Avx512Vnni => m >= Q8_BLOCKS_TILE_MIN_M,
        Isa::Amx => m >= Q8_BLOCKS_AMX_TILE_MIN_M,
        Isa::Avx2 => m >= Q8_BLOCKS_AVX2_TILE_MIN_M,
        _ => false,
    }
}

/// `out_t[c][i] = x[i] . row_c` for weight rows of block type `T` (`rows`
/// holds `out_t.len() / m` rows of `k / T::VALUES` blocks) and activations
/// quantised in `T`'s blocks: per block in order, the block's exact integers
/// `a` and `b`, then `acc = fma(f32(a), sa * dx, acc)` and `acc = fma(f32(b),
/// sb * dx, acc)` (`types::q8_blocks`). Every path does these operations, so
/// results are the same on every ISA and for every batch.
pub fn dot_rows_q8<T: RowBlock>(isa: Isa, act: ActQ8Rows, rows: &[u8], out_t: &mut [f32]) {
    let (m, k) = (act.m, act.k);
    assert!(m > 0, "dot_rows_q8: no activation rows");
    assert!(
        act.block == T::VALUES
            && k.is_multiple_of(T::VALUES)
            && act.q.len() == m * k
            && act.d.len() == m * (k / T::VALUES)
            && act.xsum.len() == m * (k / T::VALUES)
            && act.bsums.len() == m * (k / BSUM_VALUES),
        "dot_rows_q8: activations are not [m, k] in the weights' blocks"
    );
    assert_eq!(
        rows.len(),
        out_t.len() / m * (k / T::VALUES) * T::BYTES,
        "dot_rows_q8: rows do not match the output"
    );
    // How long the weight rows that one activation row reads whole may be.
    #[cfg(target_arch = "x86_64")]
    let whole_max = if isa == Isa::Amx {
        x86::q8_blocks_i8::WHOLE_MAX_VALUES_AMX
    } else {
        x86::q8_blocks_i8::WHOLE_MAX_VALUES
    };
    match isa {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        Isa::Amx if act.tiles.is_some_and(|t| !t.plus_128) => {
            // SAFETY: Amx is only chosen when the CPU has AVX2, FMA, F16C,
            // AVX-512 F/BW/VL/VNNI and AMX-TILE/INT8 (Isa::best); the sizes
            // are checked above, the tiles made by ActQ8::quantize for these
            // rows, without the 128 on this ISA.
            unsafe { x86::q8_blocks_amx::dot_rows_q8_amx::<T>(act, rows, out_t) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if act.tiles.is_some_and(|t| t.plus_128) => {
            // SAFETY: both are only chosen when the CPU has AVX2, FMA, F16C
            // and AVX-512 F/BW/VL/VNNI (Isa::best); the sizes are checked
            // above, the tiles made by ActQ8::quantize for these rows.
            unsafe { x86::q8_blocks_vnni::dot_rows_q8_vnni::<T>(act, rows, out_t) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if act.tiles.is_some_and(|t| !t.plus_128) && avx2_tiled::<T>(m) => {
            // SAFETY: AVX2/FMA are present (Isa::best), F16C with them on
            // every CPU that has both; the sizes are checked above, the
            // tiles made by ActQ8::quantize for these rows, without the 128
            // on this ISA.
            unsafe { x86::q8_blocks_tiles_avx2::dot_rows_q8_tiles_avx2::<T>(act, rows, out_t) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Amx if T::WIDE && x86::q8_blocks_i8::wide_available() => {
            // SAFETY: both are only chosen when the CPU has AVX2, FMA, F16C
            // and AVX-512 F/BW/VL/VNNI (Isa::best), VBMI checked by
            // wide_available; the sizes are checked above.
            unsafe { x86::q8_blocks_i8::dot_rows_q8_wide::<T>(act, rows, out_t, whole_max) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx => {
            // SAFETY: AVX2/FMA are present (Isa::best), F16C with them on every
            // CPU that has both, and the sizes are checked above.
            unsafe { x86::q8_blocks_i8::dot_rows_q8_avx2::<T>(act, rows, out_t, whole_max) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the sizes are checked above.
            unsafe { super::arch::arm::q8_blocks_i8::dot_rows_q8_neon::<T>(act, rows, out_t) }
        }
        _ => dot_rows_q8_scalar::<T>(act, rows, out_t),
    }
}

/// A block type with a fused product: its scalar reference and tile form
/// (`types/`) and, on x86-64, its AVX2 integers and VNNI unpacking
/// (`arch/x86/`).
#[cfg(target_arch = "x86_64")]
pub trait RowBlock: x86::q8_blocks_i8::Avx2Block + x86::q8_blocks_vnni::VnniBlock {}
#[cfg(target_arch = "x86_64")]
impl<T: x86::q8_blocks_i8::Avx2Block + x86::q8_blocks_vnni::VnniBlock> RowBlock for T {}
/// A block type with a fused product: its scalar reference and tile form
/// (`types/`) and, on aarch64, its NEON unpacking (`arch/arm/`).
#[cfg(target_arch = "aarch64")]
pub trait RowBlock: QuantBlock + TileBlock + super::arch::arm::q8_blocks_i8::NeonBlock {}
#[cfg(target_arch = "aarch64")]
impl<T: QuantBlock + TileBlock + super::arch::arm::q8_blocks_i8::NeonBlock> RowBlock for T {}
/// A block type with a fused product: its scalar reference and tile form
/// (`types/`).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub trait RowBlock: QuantBlock + TileBlock {}
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
impl<T: QuantBlock + TileBlock> RowBlock for T {}
