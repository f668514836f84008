//! NEON kernels for one page of attention (`pages::page_scores`,
//! `pages::page_values`) on pages of every KV type, decoded in registers
//! (bf16 by a shift, q8_0 as i8 times its f16 scale, both exact in f32): a
//! page's slots (or a value row's columns) in the lanes, up to four queries
//! of one row sharing each load and decode. Each output element is one chain
//! of FMAs in the scalar kernels' order, so the results are theirs bit for
//! bit, as `arch::x86::attention`'s are.

use std::arch::aarch64::*;

use crate::backend::cpu::attention::pages::{page_scores_scalar, page_values_scalar};
use crate::backend::cpu::attention::raw_page::{RawPage as Page, BF16, F32, Q8_0};
use crate::backend::cpu::types::q8_0_pages::{blocks, BLOCK};
use crate::kv_cache::{KeysPage, ValuesPage};

/// Lanes per vector.
const L: usize = 4;
/// Queries per register block.
const QB: usize = 4;

/// Four f16s (bits, widened to u32 lanes) as the f32s they stand for,
/// exactly, in integer operations (Rust's f16 vector types and their
/// `fcvtl` are not stable): the exponent and mantissa moved to f32's place
/// and multiplied by 2^112, which rebiases normals and turns subnormals
/// (an f32 subnormal there) into the normal f32 of their value; infinities
/// and NaNs keep an all-ones exponent.
#[inline]
#[target_feature(enable = "neon")]
fn f16x4_to_f32(h: uint32x4_t) -> float32x4_t {
    let sign = vshlq_n_u32::<16>(vandq_u32(h, vdupq_n_u32(0x8000)));
    let em = vandq_u32(h, vdupq_n_u32(0x7fff));
    let shifted = vshlq_n_u32::<13>(em);
    let finite = vmulq_f32(
        vreinterpretq_f32_u32(shifted),
        vdupq_n_f32(f32::from_bits(0x7780_0000)), // 2^112
    );
    let special = vorrq_u32(shifted, vdupq_n_u32(0x7f80_0000));
    let is_special = vcgeq_u32(em, vdupq_n_u32(0x7c00));
    let magnitude = vbslq_u32(is_special, special, vreinterpretq_u32_f32(finite));
    vreinterpretq_f32_u32(vorrq_u32(magnitude, sign))
}

/// Four consecutive elements of type `K` from element index `at`, decoded
/// to f32 (exactly: bf16 by a shift, q8_0 as i8 times the scales `d`, an
/// f16 times an i8 being exact in f32).
///
/// # Safety
/// NEON; elements `at..at + 4` inside the page.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn load4<const K: u8>(page: Page, at: usize, d: float32x4_t) -> float32x4_t {
    // SAFETY: the caller's.
    unsafe {
        match K {
            F32 => vld1q_f32(page.e.cast::<f32>().add(at)),
            BF16 => {
                let h = vld1_u16(page.e.cast::<u16>().add(at));
                vreinterpretq_f32_u32(vshll_n_u16::<16>(h))
            }
            _ => {
                let b = page.e.cast::<i8>().add(at).cast::<i32>().read_unaligned();
                let b = vreinterpret_s8_s32(vdup_n_s32(b));
                let w = vmovl_s16(vget_low_s16(vmovl_s8(b)));
                vmulq_f32(vcvtq_f32_s32(w), d)
            }
        }
    }
}

/// `pages::page_scores` (same contract, same bits): `s[i * ps + j] = q_i .
/// k_j` for the `g` queries of `q` and the first `n` keys of `keys`; the
/// slots past the last whole vector of the page one at a time.
///
/// # Safety
/// NEON; the shapes `pages::page_scores` asserts.
#[target_feature(enable = "neon")]
pub unsafe fn page_scores_neon(
    q: &[f32],
    g: usize,
    keys: KeysPage,
    ps: usize,
    n: usize,
    s: &mut [f32],
) {
    // SAFETY: the contract, passed on.
    match Page::keys(keys) {
        (F32, page) => unsafe { scores_typed::<F32>(q, g, page, ps, n, s) },
        (BF16, page) => unsafe { scores_typed::<BF16>(q, g, page, ps, n, s) },
        (_, page) => unsafe { scores_typed::<Q8_0>(q, g, page, ps, n, s) },
    }
    let hd = q.len() / g;
    let vectors = n.div_ceil(L).min(ps / L);
    page_scores_scalar(q, hd, 0..g, keys, ps, vectors * L..n, s);
}

/// `page_scores_neon` on keys of type `K`, all but the scalar tail: up to
/// four queries against a vector of four slots, lanes `n..` of the last
/// vector computed too where the page has room (the caller ignores them).
///
/// # Safety
/// As `page_scores_neon`.
#[target_feature(enable = "neon")]
unsafe fn scores_typed<const K: u8>(
    q: &[f32],
    g: usize,
    keys: Page,
    ps: usize,
    n: usize,
    s: &mut [f32],
) {
    let hd = q.len() / g;
    let vectors = n.div_ceil(L).min(ps / L);
    for i0 in (0..g).step_by(QB) {
        let rows = QB.min(g - i0);
        for v in 0..vectors {
            let j0 = v * L;
            let mut acc = [vdupq_n_f32(0.0); QB];
            let mut d = vdupq_n_f32(0.0);
            for t in 0..hd {
                // SAFETY (all): slots j0..j0 + 4 <= ps of key row t and of
                // its scales' row, queries i0..i0 + rows (the contract).
                if K == Q8_0 && t % BLOCK == 0 {
                    // The scales of these slots for elements t..t + 32.
                    let bits = unsafe { vld1_u16(keys.scales.add(t / BLOCK * ps + j0)) };
                    d = f16x4_to_f32(vmovl_u16(bits));
                }
                let k = unsafe { load4::<K>(keys, t * ps + j0, d) };
                for (r, a) in acc.iter_mut().enumerate().take(rows) {
                    *a = vfmaq_n_f32(*a, k, q[(i0 + r) * hd + t]);
                }
            }
            for (r, a) in acc.iter().enumerate().take(rows) {
                // SAFETY: four floats of row i0 + r of s (j0 + 4 <= ps).
                unsafe { vst1q_f32(s[(i0 + r) * ps + j0..].as_mut_ptr(), *a) };
            }
        }
    }
}

/// `pages::page_values` (same contract, same bits): the output's columns in
/// the lanes, up to four outputs sharing each load of a value row; the
/// columns past the last whole vector one at a time.
///
/// # Safety
/// NEON; the shapes `pages::page_values` asserts.
#[target_feature(enable = "neon")]
pub unsafe fn page_values_neon(
    p: &[f32],
    g: usize,
    ps: usize,
    n: usize,
    values: ValuesPage,
    o: &mut [f32],
) {
    // SAFETY: the contract, passed on.
    match Page::values(values) {
        (F32, page) => unsafe { values_typed::<F32>(p, g, ps, n, page, o) },
        (BF16, page) => unsafe { values_typed::<BF16>(p, g, ps, n, page, o) },
        (_, page) => unsafe { values_typed::<Q8_0>(p, g, ps, n, page, o) },
    }
    let hd = o.len() / g;
    page_values_scalar(p, 0..g, ps, n, values, o, hd, hd / L * L..hd);
}

/// `page_values_neon` on values of type `K`, all but the scalar tail.
///
/// # Safety
/// As `page_values_neon`.
#[target_feature(enable = "neon")]
unsafe fn values_typed<const K: u8>(
    p: &[f32],
    g: usize,
    ps: usize,
    n: usize,
    values: Page,
    o: &mut [f32],
) {
    let hd = o.len() / g;
    let full = hd / L * L;
    let nb = blocks(hd);
    for i0 in (0..g).step_by(QB) {
        let rows = QB.min(g - i0);
        for c in (0..full).step_by(L) {
            // SAFETY (all): columns c..c + 4 <= full of outputs i0..i0 +
            // rows and of value rows 0..n, the scales of those rows (the
            // contract).
            let mut acc: [float32x4_t; QB] = std::array::from_fn(|r| unsafe {
                vld1q_f32(o[(i0 + r.min(rows - 1)) * hd + c..].as_ptr())
            });
            for j in 0..n {
                // Four columns never straddle a block (4 divides 32).
                let d = if K == Q8_0 {
                    let bits = unsafe { *values.scales.add(j * nb + c / BLOCK) };
                    f16x4_to_f32(vdupq_n_u32(u32::from(bits)))
                } else {
                    vdupq_n_f32(0.0)
                };
                let v = unsafe { load4::<K>(values, j * hd + c, d) };
                for (r, a) in acc.iter_mut().enumerate().take(rows) {
                    *a = vfmaq_n_f32(*a, v, p[(i0 + r) * ps + j]);
                }
            }
            for (r, a) in acc.iter().enumerate().take(rows) {
                unsafe { vst1q_f32(o[(i0 + r) * hd + c..].as_mut_ptr(), *a) };
            }
        }
    }
}
