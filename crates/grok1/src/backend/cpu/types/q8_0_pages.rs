//! The KV cache's q8_0 pages: each key and value row of `hd` elements is cut
//! into blocks of [`BLOCK`] (the last one shorter where `hd` is not a
//! multiple), each block an f16 scale and one i8 per element (34 bytes per
//! 32 values), value = scale * i8.
//!
//! Keys keep the f32 pages' transposed layout, the i8s `[hd, page]` and the
//! scales `[blocks, page]` (so the scales of consecutive slots, which a
//! vector of slots needs, are adjacent); values are `[page, hd]` and
//! `[page, blocks]`. An f16 times an i8 is exact in f32, so the page kernels
//! are the f32 chains on the decoded elements.

use std::ops::Range;

use super::f32_pages::{scores_chain, values_chain};

/// Elements per block.
pub const BLOCK: usize = 32;

/// Blocks of a row of `hd` elements.
pub fn blocks(hd: usize) -> usize {
    hd.div_ceil(BLOCK)
}

/// The scale of a block of values: its largest magnitude over 127, rounded
/// to f16 (held inside f16's finite range, so a decoded block is never
/// inf or NaN), as bits and as the f32 the i8s are divided by.
pub fn block_scale(x: &[f32]) -> (u16, f32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = half::f16::from_f32((amax / 127.0).min(65504.0));
    (d.to_bits(), d.to_f32())
}

/// One element of a block of scale `d` (from [`block_scale`]).
#[inline]
pub fn quantize(x: f32, d: f32) -> i8 {
    if d == 0.0 {
        0
    } else {
        // NaN casts to 0; the clamp keeps an f16-rounded-down scale in range.
        (x / d).round().clamp(-127.0, 127.0) as i8
    }
}

/// The f32 an element of scale bits `d` stands for (exact).
#[inline]
pub fn decode(d: u16, q: i8) -> f32 {
    half::f16::from_bits(d).to_f32() * q as f32
}

/// The f32 pages' `page_scores_part` on q8_0 keys (`keys_t`, `[hd, ps]`;
/// `scales`, `[blocks, ps]`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn page_scores_part(
    q: &[f32],
    hd: usize,
    rows: Range<usize>,
    keys_t: &[i8],
    scales: &[u16],
    ps: usize,
    slots: Range<usize>,
    s: &mut [f32],
) {
    let key = |t: usize, j: usize| decode(scales[t / BLOCK * ps + j], keys_t[t * ps + j]);
    scores_chain(q, hd, rows, key, ps, slots, s)
}

/// The f32 pages' `page_values_part` on q8_0 values (`values`, `[n, hd]`;
/// `scales`, `[n, blocks]`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn page_values_part(
    p: &[f32],
    rows: Range<usize>,
    ps: usize,
    n: usize,
    values: &[i8],
    scales: &[u16],
    o: &mut [f32],
    hd: usize,
    cols: Range<usize>,
) {
    let nb = blocks(hd);
    let value = |j: usize, c: usize| decode(scales[j * nb + c / BLOCK], values[j * hd + c]);
    values_chain(p, rows, ps, n, value, o, hd, cols)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(x: &[f32]) -> Vec<f32> {
        let (bits, d) = block_scale(x);
        x.iter().map(|&v| decode(bits, quantize(v, d))).collect()
    }

    #[test]
    fn a_block_is_within_half_a_step_and_requantises_to_itself() {
        let x: Vec<f32> = (0..32)
            .map(|i| ((i * 37 % 29) as f32 - 14.0) * 0.173)
            .collect();
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let y = round_trip(&x);
        for (a, b) in x.iter().zip(&y) {
            // Half a step of amax / 127, plus the f16 rounding of the scale.
            assert!((a - b).abs() <= amax / 127.0 * (0.5 + 127.0 / 2048.0));
        }
        // Decoded values quantise to the same block (sessions re-import them).
        assert_eq!(round_trip(&y), y);
    }

    #[test]
    fn zero_tiny_and_huge_blocks_stay_finite() {
        assert_eq!(round_trip(&[0.0; 8]), vec![0.0; 8]);
        assert_eq!(round_trip(&[1e-30, -1e-30]), vec![0.0, 0.0]);
        let y = round_trip(&[1e30, -1e30, 1.0, f32::NAN]);
        assert!(y.iter().all(|v| v.is_finite()));
        assert_eq!(y[0], 65504.0 * 127.0);
        assert_eq!(y[1], -65504.0 * 127.0);
    }
}
