//! The KV cache's f32 pages (keys stored transposed, `[hd, page]`; values
//! `[page, hd]`): the scalar chains of FMAs of the page kernels
//! (`attention::pages`), which the SIMD versions also run on their last
//! slots and columns.

use std::ops::Range;

/// [`page_scores`]' chains for queries `rows` and slots `slots`, one at a
/// time (the scalar kernel, and the SIMD kernels' last slots).
///
/// [`page_scores`]: crate::backend::cpu::attention::pages::page_scores
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

/// [`page_values`]' chains for outputs `rows` and columns `cols`, one at a
/// time (the scalar kernel, and the SIMD kernels' last columns); `o` is
/// `[_, hd]`.
///
/// [`page_values`]: crate::backend::cpu::attention::pages::page_values
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
