//! The page kernels of attention, for the KV cache's pages of each type
//! (their layouts and scalar chains are in `types::{f32,bf16,q8_0}_pages`):
//! the scores of a row's queries against a page's keys, their capping and
//! exponentials, and the weighted sum of a page's values. Each checks its
//! shapes and runs the version for the instruction set it is given (`arch/`)
//! or the scalar one. The compact types are decoded in registers, never
//! copied out as f32, and give the f32 kernels' bits on the values they
//! decode to.

#[cfg(target_arch = "aarch64")]
use crate::backend::cpu::arch::arm::{attention as arm_attention, neon};
#[cfg(target_arch = "x86_64")]
use crate::backend::cpu::arch::x86;
use crate::backend::cpu::common::Isa;
use crate::backend::cpu::types::{bf16_pages, f32_pages, q8_0_pages};
use crate::kv_cache::{KeysPage, ValuesPage};

/// Attention scores of `g` queries (`q`, `[g, hd]`, one row's heads) against
/// the first `n` keys of one page (`keys_t`, `[hd, ps]`, the cache's
/// transposed layout): `s[i * ps + j] = q_i . k_j` for `j < n`, each one
/// chain of FMAs in `t` order, so every path gives the same bits. The
/// entries `n..ps` of each row of `s` may be overwritten.
pub fn page_scores(
    isa: Isa,
    q: &[f32],
    g: usize,
    keys: KeysPage,
    ps: usize,
    n: usize,
    s: &mut [f32],
) {
    assert!(g > 0 && q.len().is_multiple_of(g), "page_scores: queries");
    let hd = q.len() / g;
    assert!(n <= ps && keys.fits(hd, ps), "page_scores: keys");
    assert!(s.len() >= g * ps, "page_scores: scores");
    match (isa, keys) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx, _) => {
            // SAFETY: AVX2/FMA/F16C are present (Isa::best) and the sizes are checked above.
            unsafe { x86::attention::page_scores_avx2(q, g, keys, ps, n, s) }
        }
        #[cfg(target_arch = "aarch64")]
        (Isa::Neon, _) => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the shapes are checked above.
            unsafe { arm_attention::page_scores_neon(q, g, keys, ps, n, s) }
        }
        _ => page_scores_scalar(q, hd, 0..g, keys, ps, 0..n, s),
    }
}

/// The scalar chains of [`page_scores`] for queries `rows` and slots
/// `slots`, on a page of any type (also the SIMD kernels' last slots).
pub(crate) fn page_scores_scalar(
    q: &[f32],
    hd: usize,
    rows: std::ops::Range<usize>,
    keys: KeysPage,
    ps: usize,
    slots: std::ops::Range<usize>,
    s: &mut [f32],
) {
    match keys {
        KeysPage::F32(k) => f32_pages::page_scores_part(q, hd, rows, k, ps, slots, s),
        KeysPage::Bf16(k) => bf16_pages::page_scores_part(q, hd, rows, k, ps, slots, s),
        KeysPage::Q8_0 { q: k, scales } => {
            q8_0_pages::page_scores_part(q, hd, rows, k, scales, ps, slots, s)
        }
    }
}

/// The scalar chains of [`page_values`] for outputs `rows` and columns
/// `cols`, on a page of any type (also the SIMD kernels' last columns).
#[allow(clippy::too_many_arguments)]
pub(crate) fn page_values_scalar(
    p: &[f32],
    rows: std::ops::Range<usize>,
    ps: usize,
    n: usize,
    values: ValuesPage,
    o: &mut [f32],
    hd: usize,
    cols: std::ops::Range<usize>,
) {
    match values {
        ValuesPage::F32(v) => f32_pages::page_values_part(p, rows, ps, n, v, o, hd, cols),
        ValuesPage::Bf16(v) => bf16_pages::page_values_part(p, rows, ps, n, v, o, hd, cols),
        ValuesPage::Q8_0 { q, scales } => {
            q8_0_pages::page_values_part(p, rows, ps, n, q, scales, o, hd, cols)
        }
    }
}

/// `o_i += sum_{j < n} p[i * ps + j] * values[j]` for `g` outputs (`o`,
/// `[g, hd]`) and the first `n` rows of one page's values (`[n, hd]`), each
/// element one chain of FMAs in `j` order (the same bits on every path).
pub fn page_values(
    isa: Isa,
    p: &[f32],
    g: usize,
    ps: usize,
    n: usize,
    values: ValuesPage,
    o: &mut [f32],
) {
    assert!(g > 0 && o.len().is_multiple_of(g), "page_values: outputs");
    let hd = o.len() / g;
    assert!(
        n <= ps && p.len() >= (g - 1) * ps + n,
        "page_values: weights"
    );
    assert!(values.fits(hd, n), "page_values: values");
    match (isa, values) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512Vnni | Isa::Amx, _) => {
            // SAFETY: AVX2/FMA/F16C are present (Isa::best) and the sizes are checked above.
            unsafe { x86::attention::page_values_avx2(p, g, ps, n, values, o) }
        }
        #[cfg(target_arch = "aarch64")]
        (Isa::Neon, _) => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the shapes are checked above.
            unsafe { arm_attention::page_values_neon(p, g, ps, n, values, o) }
        }
        _ => page_values_scalar(p, 0..g, ps, n, values, o, hd, 0..hd),
    }
}

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
            unsafe { x86::attention::softcap_scores_avx2(s, mult, cap, mask) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the sizes are checked above.
            unsafe { neon::softcap_scores_neon(s, mult, cap, mask) }
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
            unsafe { x86::attention::exp_shifted_avx2(s, max) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            // SAFETY: every aarch64 CPU this ISA is chosen on has NEON (Isa::best);
            // the sizes are checked above.
            unsafe { neon::exp_shifted_neon(s, max) }
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
