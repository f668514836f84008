//! The KV cache's f32 pages (keys stored transposed, `[hd, page]`; values
//! `[page, hd]`): the scalar chains of FMAs of the page kernels
//! (`attention::pages`), which the SIMD versions also run on their last
//! slots and columns. The compact page types (`bf16_pages`, `q8_0_pages`)
//! run the same chains on their decoded elements, so a page of any type
//! gives the f32 kernels' bits for the values it decodes to.

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
    scores_chain(q, hd, rows, |t, j| keys_t[t * ps + j], ps, slots, s)
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
    values_chain(p, rows, ps, n, |j, c| values[j * hd + c], o, hd, cols)
}

/// `s[r * ps + j] = q_r . k_j`, one FMA chain in `t` order, where `key(t, j)`
/// is element `t` of key `j`.
pub(crate) fn scores_chain(
    q: &[f32],
    hd: usize,
    rows: Range<usize>,
    key: impl Fn(usize, usize) -> f32,
    ps: usize,
    slots: Range<usize>,
    s: &mut [f32],
) {
    for r in rows {
        for j in slots.clone() {
            let mut acc = 0f32;
            for t in 0..hd {
                acc = q[r * hd + t].mul_add(key(t, j), acc);
            }
            s[r * ps + j] = acc;
        }
    }
}

/// `o[r, c] += sum_j p[r * ps + j] * value(j, c)`, one FMA chain in `j`
/// order, where `value(j, c)` is element `c` of value row `j`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn values_chain(
    p: &[f32],
    rows: Range<usize>,
    ps: usize,
    n: usize,
    value: impl Fn(usize, usize) -> f32,
    o: &mut [f32],
    hd: usize,
    cols: Range<usize>,
) {
    for r in rows {
        for c in cols.clone() {
            let mut acc = o[r * hd + c];
            for j in 0..n {
                acc = p[r * ps + j].mul_add(value(j, c), acc);
            }
            o[r * hd + c] = acc;
        }
    }
}
