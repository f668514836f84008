//! The inner loops of the CPU backend, in a portable scalar version (the
//! reference the SIMD versions are tested against) and SIMD versions chosen at
//! run time from the CPU's features.

use std::ops::Range;

#[cfg(target_arch = "x86_64")]
use super::arch::x86::int8_ckpt_f32::Wide;

/// The instruction set the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// x86-64 AVX2 with FMA (and F16C, which every such CPU has).
    Avx2,
    /// AVX2 plus AVX-512 (F, BW, VL) with VNNI: the integer products run on
    /// `vpdpbusd` (64 byte products per instruction); everything else on the
    /// AVX2 kernels.
    Avx512Vnni,
    /// `Avx512Vnni` plus AMX-INT8 (Intel Sapphire Rapids and later): the int8
    /// mode's products over 16 activation rows or more (prefill) run on the
    /// tile multiplier (`x86_amx.rs`, 16 x 16 x 32 products per instruction).
    Amx,
    /// aarch64 NEON (`neon.rs`): the checkpoint's int8 products, the int8
    /// row dots, GGUF Q8_0 rows with f32 activations, attention and the
    /// GELU; the int8 mode's kernels run the scalar ones.
    Neon,
}

impl Isa {
    /// The best instruction set this CPU has; `GROK1_KERNELS=scalar` forces the
    /// portable kernels, `GROK1_KERNELS=avx2` the AVX2 ones and
    /// `GROK1_KERNELS=avx512-vnni` the AVX-512 ones on a CPU that has more
    /// (for debugging and comparison).
    pub fn detect() -> Isa {
        let best = Self::best();
        match std::env::var("GROK1_KERNELS").as_deref() {
            Ok("scalar") => Isa::Scalar,
            // For comparisons on a CPU that has more.
            Ok("avx2") if best != Isa::Scalar => Isa::Avx2,
            Ok("avx512-vnni") if best == Isa::Amx => Isa::Avx512Vnni,
            _ => best,
        }
    }

    /// The best instruction set this CPU has, ignoring the environment.
    pub fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
            {
                #[cfg(target_os = "linux")]
                if super::arch::x86::amx::available() {
                    return Isa::Amx;
                }
                return Isa::Avx512Vnni;
            }
            return Isa::Avx2;
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            return Isa::Neon;
        }
        Isa::Scalar
    }

    /// Every instruction set this CPU can run (for tests).
    pub fn available() -> Vec<Isa> {
        let all: &[Isa] = if cfg!(target_arch = "aarch64") {
            &[Isa::Scalar, Isa::Neon]
        } else {
            &[Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Amx]
        };
        let best = all.iter().position(|&i| i == Self::best()).unwrap_or(0);
        all[..=best].to_vec()
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2+fma",
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Amx => "avx512-vnni+amx",
            Isa::Neon => "neon",
        }
    }
}

/// Activation rows per group in the packed layout of [`pack_activations`].
pub const XGROUP: usize = 6;

/// The activations `x` (`[m, k]`) packed for the int8 products: groups of
/// `XGROUP` rows (the last one narrower), each group transposed to
/// `[k, width]`, so the values of a group that one weight row multiplies are
/// adjacent and a group's run of weight rows reads one sequential stream. With
/// `m <= XGROUP` this is plain `[k, m]`.
pub fn pack_activations(x: &[f32], m: usize, k: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "pack_activations: x is not [m, k]");
    let mut out = vec![0f32; m * k];
    for (g, dst) in out.chunks_mut(XGROUP * k).enumerate() {
        let width = dst.len() / k.max(1);
        for t in 0..width {
            let row = &x[(g * XGROUP + t) * k..(g * XGROUP + t + 1) * k];
            for (r, &v) in row.iter().enumerate() {
                dst[r * width + t] = v;
            }
        }
    }
    out
}

/// Where `x[i][r]` sits in [`pack_activations`]' layout.
#[inline]
pub fn packed_index(m: usize, k: usize, i: usize, r: usize) -> usize {
    let g = i / XGROUP;
    let width = XGROUP.min(m - g * XGROUP);
    g * XGROUP * k + r * width + (i - g * XGROUP)
}

/// Most activation rows for which `isa`'s decode kernel (the f32 one of
/// [`q8_block`], or the int8 one when `int8`) keeps its sums in registers and
/// touches the task's accumulators once per block of weight rows; 0 where it
/// has no such kernel. Up to that many rows, a task's columns need not shrink
/// as rows are added.
pub fn register_stream_rows(isa: Isa, int8: bool) -> usize {
    match (isa, int8) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, false) => super::arch::x86::int8_ckpt_strips::STRIPS_AVX2_MAX_M,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512Vnni | Isa::Amx, false) => {
            super::arch::x86::int8_ckpt_strips::STRIPS_MAX_M_HALF
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512Vnni | Isa::Amx, true) => super::arch::x86::int8_ckpt_strips::STRIPS_MAX_M,
        _ => 0,
    }
}

/// The weight side of [`q8_block`]: rows `rows`, columns from `n0`, of an
/// int8 row-major matrix `w` with `n` columns.
#[derive(Clone, Debug)]
pub struct Q8Rows<'a> {
    pub w: &'a [u8],
    pub n: usize,
    pub rows: Range<usize>,
    pub n0: usize,
}

/// A block of columns of an int8 matrix product over one run of rows inside a
/// scale group: `total[i][j] += scales[j] * (sum over r in rows of x[i][r] *
/// w[r][n0 + j])` for `i < m`, `j < nb`, where `xp` is the `k` columns of the
/// activations packed by [`pack_activations`] and `total` is row-major
/// `[m, nb]`. The sum starts at zero and takes one FMA per row in order; then
/// it is multiplied by the scale and added (two roundings, no FMA), the same
/// on every path.
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
            unsafe {
                super::arch::x86::int8_ckpt_f32::q8_block_avx2(xp, m, wb, scales, total, wide)
            }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the shapes are checked above.
            unsafe { super::arch::arm::neon::q8_block_neon(xp, m, wb, scales, total) }
        }
        _ => q8_block_scalar(xp, m, wb, scales, total),
    }
}

pub fn q8_block_scalar(xp: &[f32], m: usize, wb: &Q8Rows, scales: &[f32], total: &mut [f32]) {
    let Q8Rows { w, n, n0, .. } = *wb;
    let (nb, k) = (total.len() / m, xp.len() / m);
    let mut acc = vec![0f32; m * nb];
    for r in wb.rows.clone() {
        let row = &w[r * n + n0..r * n + n0 + nb];
        for i in 0..m {
            let xv = xp[packed_index(m, k, i, r)];
            for (a, &b) in acc[i * nb..(i + 1) * nb].iter_mut().zip(row) {
                *a = xv.mul_add(b as i8 as f32, *a);
            }
        }
    }
    add_scaled(&acc, nb, scales, total);
}

/// Columns `full..nb` of a `[m, nb]` block product (`total`) through
/// `kernel`, a path for any width, for the last columns a wide kernel leaves:
/// `kernel` adds `p * s` into zeros, which is `p * s` exactly, so adding its
/// result into `total` gives the sums it would give in place.
pub(crate) fn add_tail_columns(
    m: usize,
    full: usize,
    wb: &Q8Rows,
    scales: &[f32],
    total: &mut [f32],
    kernel: impl FnOnce(&Q8Rows, &[f32], &mut [f32]),
) {
    let nb = total.len() / m;
    if full >= nb {
        return;
    }
    let tail = nb - full;
    let mut t = vec![0f32; m * tail];
    let cols = Q8Rows {
        n0: wb.n0 + full,
        ..wb.clone()
    };
    kernel(&cols, &scales[full..nb], &mut t);
    for (dst, src) in total.chunks_exact_mut(nb).zip(t.chunks_exact(tail)) {
        for (d, s) in dst[full..].iter_mut().zip(src) {
            *d += s;
        }
    }
}

/// `total[i][j] += acc[i][j] * scales[j]` for `[_, nb]` matrices.
pub(crate) fn add_scaled(acc: &[f32], nb: usize, scales: &[f32], total: &mut [f32]) {
    for (tr, ar) in total.chunks_exact_mut(nb).zip(acc.chunks_exact(nb)) {
        for ((t, &a), &sc) in tr.iter_mut().zip(ar).zip(scales) {
            *t += a * sc;
        }
    }
}

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
            unsafe { super::arch::x86::int8_ckpt_f32::dot_f32_bytes_avx2(x, m, d, e, out_t) }
        }
        _ => dot_f32_bytes_scalar(x, m, d, e, out_t),
    }
}

pub fn dot_f32_bytes_scalar(x: &[f32], m: usize, d: usize, e: &[u8], out_t: &mut [f32]) {
    for (col, row) in out_t.chunks_exact_mut(m).zip(e.chunks_exact(d * 4)) {
        for (i, o) in col.iter_mut().enumerate() {
            *o = x[i * d..(i + 1) * d]
                .iter()
                .zip(row.chunks_exact(4))
                .map(|(a, b)| a * f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .sum();
        }
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
            unsafe { super::arch::x86::int8_ckpt_f32::dot_rows_avx2(q, keys, scores) }
        }
        _ => {
            for (s, k) in scores.iter_mut().zip(keys.chunks_exact(hd)) {
                *s = q.iter().zip(k).map(|(a, b)| a * b).sum();
            }
        }
    }
}

/// Attention scores of `g` queries (`q`, `[g, hd]`, one row's heads) against
/// the first `n` keys of one page (`keys_t`, `[hd, ps]`, the cache's
/// transposed layout): `s[i * ps + j] = q_i . k_j` for `j < n`, each one
/// chain of FMAs in `t` order, so every path gives the same bits. The
/// entries `n..ps` of each row of `s` may be overwritten.
pub fn page_scores(
    isa: Isa,
    q: &[f32],
    g: usize,
    keys_t: &[f32],
    ps: usize,
    n: usize,
    s: &mut [f32],
) {
    assert!(g > 0 && q.len().is_multiple_of(g), "page_scores: queries");
    let hd = q.len() / g;
    assert!(n <= ps && keys_t.len() >= hd * ps, "page_scores: keys");
    assert!(s.len() >= g * ps, "page_scores: scores");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx => {
            // SAFETY: AVX2/FMA are present (Isa::best) and the sizes are checked above.
            unsafe { super::arch::x86::attention::page_scores_avx2(q, g, keys_t, ps, n, s) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the shapes are checked above.
            unsafe { super::arch::arm::neon::page_scores_neon(q, g, keys_t, ps, n, s) }
        }
        _ => page_scores_part(q, hd, 0..g, keys_t, ps, 0..n, s),
    }
}

/// [`page_scores`]' chains for queries `rows` and slots `slots`, one at a
/// time (the scalar kernel, and the SIMD kernels' last slots).
pub(crate) fn page_scores_part(
    q: &[f32],
    hd: usize,
    rows: Range<usize>,
    keys_t: &[f32],
    ps: usize,
    slots: Range<usize>,
    s: &mut [f32],
) {
    for r in rows {
        for j in slots.clone() {
            let mut acc = 0f32;
            for t in 0..hd {
                acc = q[r * hd + t].mul_add(keys_t[t * ps + j], acc);
            }
            s[r * ps + j] = acc;
        }
    }
}

/// `o_i += sum_{j < n} p[i * ps + j] * values[j]` for `g` outputs (`o`,
/// `[g, hd]`) and one page's values (`[n, hd]`), each element one chain of
/// FMAs in `j` order (the same bits on every path).
pub fn page_values(
    isa: Isa,
    p: &[f32],
    g: usize,
    ps: usize,
    n: usize,
    values: &[f32],
    o: &mut [f32],
) {
    assert!(g > 0 && o.len().is_multiple_of(g), "page_values: outputs");
    let hd = o.len() / g;
    assert!(
        n <= ps && p.len() >= (g - 1) * ps + n,
        "page_values: weights"
    );
    assert!(values.len() >= n * hd, "page_values: values");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx => {
            // SAFETY: AVX2/FMA are present (Isa::best) and the sizes are checked above.
            unsafe { super::arch::x86::attention::page_values_avx2(p, g, ps, n, values, o) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the shapes are checked above.
            unsafe { super::arch::arm::neon::page_values_neon(p, g, ps, n, values, o) }
        }
        _ => page_values_part(p, 0..g, ps, n, values, o, hd, 0..hd),
    }
}

/// [`page_values`]' chains for outputs `rows` and columns `cols`, one at a
/// time (the scalar kernel, and the SIMD kernels' last columns); `o` is
/// `[_, hd]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn page_values_part(
    p: &[f32],
    rows: Range<usize>,
    ps: usize,
    n: usize,
    values: &[f32],
    o: &mut [f32],
    hd: usize,
    cols: Range<usize>,
) {
    for r in rows {
        for c in cols.clone() {
            let mut acc = o[r * hd + c];
            for j in 0..n {
                acc = p[r * ps + j].mul_add(values[j * hd + c], acc);
            }
            o[r * hd + c] = acc;
        }
    }
}

/// Cephes' expf, shared by the SIMD kernels' exp (x86 and NEON): inputs
/// clamped to `EXP_RANGE`, `x - n ln 2` with ln 2 in two parts
/// (`EXP_LN2_PARTS`), then the polynomial `EXP_POLY` (highest power first).
pub(crate) const EXP_RANGE: (f32, f32) = (-87.3, 88.7);
pub(crate) const EXP_LN2_PARTS: [f32; 2] = [0.693_359_4, -2.121_944_4e-4];
pub(crate) const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    5e-1,
];
/// Cephes' tanhf below |x| = `TANH_SMALL`: `x + x^3 P(x^2)`, `TANH_POLY`
/// highest power first.
pub(crate) const TANH_SMALL: f32 = 0.625;
pub(crate) const TANH_POLY: [f32; 5] = [
    -5.704_988_7e-3,
    2.063_909e-2,
    -5.373_971_6e-2,
    1.333_144_2e-1,
    -3.333_328e-1,
];

/// Capped attention scores from raw ones, in place: `s = cap * tanh(s * mult /
/// cap)`, masked positions (`mask[j]` false) set to -1e30 (so a row whose
/// keys are all masked gets uniform weights, as the reference's mask does).
/// Returns the largest.
pub fn softcap_scores(isa: Isa, s: &mut [f32], mult: f32, cap: f32, mask: &[bool]) -> f32 {
    assert!(mask.len() >= s.len(), "softcap_scores: mask too short");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx => {
            // SAFETY: AVX2/FMA are present (Isa::best) and the sizes are checked above.
            unsafe { super::arch::x86::int8_ckpt_f32::softcap_scores_avx2(s, mult, cap, mask) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the sizes are checked above.
            unsafe { super::arch::arm::neon::softcap_scores_neon(s, mult, cap, mask) }
        }
        _ => softcap_scores_scalar(s, mult, cap, mask),
    }
}

pub fn softcap_scores_scalar(s: &mut [f32], mult: f32, cap: f32, mask: &[bool]) -> f32 {
    let mut max = f32::NEG_INFINITY;
    for (v, &keep) in s.iter_mut().zip(mask) {
        let x = *v * mult;
        *v = if keep { cap * (x / cap).tanh() } else { -1e30 };
        max = max.max(*v);
    }
    max
}

/// `s = exp(s - max)` in place; returns the sum (the softmax's denominator,
/// or one page's share of it).
pub fn exp_shifted(isa: Isa, s: &mut [f32], max: f32) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx => {
            // SAFETY: AVX2/FMA are present (Isa::best).
            unsafe { super::arch::x86::int8_ckpt_f32::exp_shifted_avx2(s, max) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the sizes are checked above.
            unsafe { super::arch::arm::neon::exp_shifted_neon(s, max) }
        }
        _ => exp_shifted_scalar(s, max),
    }
}

pub fn exp_shifted_scalar(s: &mut [f32], max: f32) -> f32 {
    let mut sum = 0f32;
    for v in s.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    sum
}

/// The gated expert activation, in place: `h = gelu_tanh(h) * v`.
pub fn gelu_mul(isa: Isa, h: &mut [f32], v: &[f32]) {
    assert!(v.len() >= h.len(), "gelu_mul: v too short");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx => {
            // SAFETY: AVX2/FMA are present (Isa::best) and the sizes are checked above.
            unsafe { super::arch::x86::int8_ckpt_f32::gelu_mul_avx2(h, v) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the sizes are checked above.
            unsafe { super::arch::arm::neon::gelu_mul_neon(h, v) }
        }
        _ => {
            for (a, &b) in h.iter_mut().zip(v) {
                *a = crate::model::norm::gelu_tanh(*a) * b;
            }
        }
    }
}

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
                unsafe { super::arch::x86::int8_ckpt_f32::dot_i8_rows_avx2(x, rows, &mut sums) };
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
                super::arch::x86::int8_ckpt_i8_vnni::dot_i8_rows_vnni(xs, rows, out_t)
            } else {
                super::arch::x86::int8_ckpt_i8_vnni::dot_i8_rows_multi_vnni(xs, g, rows, out_t)
            }
        },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the shapes are checked above.
            unsafe { super::arch::arm::neon::dot_i8_rows_neon(xs, g, rows, out_t) }
        }
        _ => dot_i8_rows_scalar(xs, g, rows, out_t),
    }
}

pub fn dot_i8_rows_scalar(xs: &[i8], g: usize, rows: &[i8], out_t: &mut [i32]) {
    let k = xs.len() / g.max(1);
    if k == 0 {
        out_t.fill(0);
        return;
    }
    for (o, row) in out_t.chunks_exact_mut(g).zip(rows.chunks_exact(k)) {
        for (o, x) in o.iter_mut().zip(xs.chunks_exact(k)) {
            *o = dot_i8(x, row);
        }
    }
}

/// `sum(a[i] * b[i])` in i32, exact for fewer than 2^17 values (each product
/// is at most 2^14 in magnitude): the scalar row dot, and the SIMD row dots'
/// last columns.
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&a, &b)| i32::from(a) * i32::from(b))
        .sum()
}

/// Bytes of one Q8_0 block: an f16 scale and 32 int8 values.
pub const Q8_0_BLOCK_BYTES: usize = 34;

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
            unsafe { super::arch::x86::int8_ckpt_f32::dot_q8_0_rows_avx2(x, m, k, rows, out_t) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the shapes are checked above.
            unsafe { super::arch::arm::neon::dot_q8_0_rows_neon(x, m, k, rows, out_t) }
        }
        _ => dot_q8_0_rows_scalar(x, m, k, rows, out_t),
    }
}

pub fn dot_q8_0_rows_scalar(x: &[f32], m: usize, k: usize, rows: &[u8], out_t: &mut [f32]) {
    let row_bytes = k / 32 * Q8_0_BLOCK_BYTES;
    for (c, row) in rows.chunks_exact(row_bytes.max(1)).enumerate() {
        for i in 0..m {
            let xi = &x[i * k..(i + 1) * k];
            let mut acc = [0f32; 8];
            for (b, block) in row.chunks_exact(Q8_0_BLOCK_BYTES).enumerate() {
                let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                let q = &block[2..];
                let xb = &xi[32 * b..32 * b + 32];
                for u in 0..4 {
                    for (l, a) in acc.iter_mut().enumerate() {
                        *a = xb[8 * u + l].mul_add(d * f32::from(q[8 * u + l] as i8), *a);
                    }
                }
            }
            out_t[c * m + i] =
                ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
        }
    }
}

/// Activation rows from which the f32 Q8_0 product takes the AVX-512 tile
/// kernel (`x86_q8_0.rs`); fewer take [`dot_q8_0_rows`], whose row-at-a-time
/// passes are as fast when the weights' bytes, not the arithmetic, set the
/// pace.
pub const Q8_0_TILE_MIN_M: usize = 6;

/// Whether the f32 Q8_0 product of `m` activation rows takes the tile kernel
/// on `isa` (with activations packed by [`pair_rows`]).
pub fn q8_0_paired(isa: Isa, m: usize) -> bool {
    matches!(isa, Isa::Avx512Vnni | Isa::Amx) && m >= Q8_0_TILE_MIN_M
}

/// A cache line of values.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A buffer of `T` (plain numbers) starting on a cache line, so that the
/// tile kernels' 512-bit loads of its lines never straddle two (a `Vec`'s
/// 16-byte alignment made every such load two: the f32 Q8_0 tiles ran at two
/// thirds of their speed).
pub struct Aligned<T> {
    lines: Vec<Line>,
    len: usize,
    _values: std::marker::PhantomData<T>,
}

/// The plain number types [`Aligned`] holds.
///
/// # Safety
/// Every bit pattern of the type's size is a value of it, and its alignment
/// is at most 64 bytes.
pub unsafe trait Plain: Copy {}
// SAFETY: any 4 bytes are an f32 (NaNs included), any byte an i8; both align
// to at most 4.
unsafe impl Plain for f32 {}
// SAFETY: as above.
unsafe impl Plain for i8 {}

impl<T: Plain> Aligned<T> {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Self {
        let bytes = len * std::mem::size_of::<T>();
        Aligned {
            lines: vec![Line([0; 64]); bytes.div_ceil(64)],
            len,
            _values: std::marker::PhantomData,
        }
    }

    pub fn as_slice(&self) -> &[T] {
        // SAFETY: the lines hold at least `len` values' bytes, aligned for
        // any T of alignment <= 64, and every bit pattern is a T (Plain's
        // contract).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as `as_slice`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }
}

impl<T: Plain> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

/// Most activation pairs the f32 Q8_0 tile kernel takes in one group.
pub const PAIR_GROUP: usize = 12;

/// The width of the pair groups for `pairs` pairs: as equal as they can be
/// (a narrow last group would convert each weight for few pairs).
pub fn pair_group_width(pairs: usize) -> usize {
    pairs.div_ceil(pairs.div_ceil(PAIR_GROUP).max(1)).max(1)
}

/// `x` (`[m, k]`, `k` a multiple of 32) packed for [`dot_q8_0_rows_paired`]:
/// rows in pairs (the last padded with zeros), the pairs in groups
/// ([`pair_group_width`]), per group, per block of 32, per pair and per eighth
/// of a block, the first row's 8 values then the second's. (A group's blocks
/// are adjacent: the activations a tile walks are one contiguous run, where a
/// stride of a power of two bytes would put every block in the same L1 sets.)
pub fn pair_rows(x: &[f32], m: usize, k: usize) -> Aligned<f32> {
    assert!(
        x.len() == m * k && k.is_multiple_of(32),
        "pair_rows: x is not [m, k]"
    );
    let pairs = m.div_ceil(2);
    let mut packed = Aligned::zeros(pairs * 2 * k);
    let out = packed.as_mut_slice();
    for (i, row) in x.chunks_exact(k.max(1)).enumerate() {
        for (e, eighth) in row.chunks_exact(8).enumerate() {
            let at = paired_index(pairs, k, i, 8 * e);
            out[at..at + 8].copy_from_slice(eighth);
        }
    }
    packed
}

/// Where `x[i][r]` (rows of `k`) sits in [`pair_rows`]' layout of `pairs`
/// pairs.
#[inline]
fn paired_index(pairs: usize, k: usize, i: usize, r: usize) -> usize {
    let width = pair_group_width(pairs);
    let (g, t) = (i / 2 / width, i / 2 % width);
    let group_width = width.min(pairs - g * width);
    let (b, u, l) = (r / 32, r % 32 / 8, r % 8);
    g * width * 2 * k + ((b * group_width + t) * 4 + u) * 16 + 8 * (i % 2) + l
}

/// [`dot_q8_0_rows`] (the same results, bit for bit) with the activations
/// packed by [`pair_rows`].
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
            unsafe {
                super::arch::x86::q8_0_f32::dot_q8_0_rows_paired_avx512(xp, m, k, rows, out_t)
            }
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
