//! The KV cache's bf16 pages: the f32 pages' layout (keys transposed,
//! `[hd, page]`; values `[page, hd]`) with each element the top half of an
//! f32, rounded to nearest even when written. A bf16 decodes to f32
//! exactly, so the page kernels are the f32 chains on the decoded elements.

use std::ops::Range;

use super::f32_pages::{scores_chain, values_chain};

/// The bf16 nearest to `x` (ties to even), as its bits.
#[inline]
pub fn encode(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// The f32 a bf16 stands for (exact).
#[inline]
pub fn decode(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// The f32 pages' `page_scores_part` on bf16 keys.
pub(crate) fn page_scores_part(
    q: &[f32],
    hd: usize,
    rows: Range<usize>,
    keys_t: &[u16],
    ps: usize,
    slots: Range<usize>,
    s: &mut [f32],
) {
    scores_chain(q, hd, rows, |t, j| decode(keys_t[t * ps + j]), ps, slots, s)
}

/// The f32 pages' `page_values_part` on bf16 values.
#[allow(clippy::too_many_arguments)]
pub(crate) fn page_values_part(
    p: &[f32],
    rows: Range<usize>,
    ps: usize,
    n: usize,
    values: &[u16],
    o: &mut [f32],
    hd: usize,
    cols: Range<usize>,
) {
    let value = |j: usize, c: usize| decode(values[j * hd + c]);
    values_chain(p, rows, ps, n, value, o, hd, cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rounds_to_nearest_even() {
        for x in [0.0f32, -1.5, 3.140625, 2f32.powi(-100), -65536.0] {
            assert_eq!(decode(encode(x)), x);
        }
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1).
        assert_eq!(decode(encode(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(decode(encode(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
    }
}
