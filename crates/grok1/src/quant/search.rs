//! The scale searches of llama.cpp's quantisers (ggml-quants.c), written from
//! their description: for a group of values and per-value weights, choose a
//! scale (and for the asymmetric types a minimum) and integer levels that
//! minimise the weighted squared error, by trying a few scales around the
//! closed-form one and solving the weighted least-squares problem for each
//! set of levels. The weights are the importance of each value (from an
//! imatrix) or a stand-in derived from the values themselves.

/// Round half to even, as ggml's `nearest_int` does, with its float-add
/// trick: for |x| < 2^22 - 1, `x + 1.5 * 2^23` lands where floats are one apart,
/// so the addition itself rounds (to nearest, ties to even) and the integer
/// is in the low mantissa bits. `round_ties_even` is a libm call (`rintf`)
/// on the baseline x86-64 target, and took a quarter of a q2_k conversion's
/// time; outside that range (and for NaN) it is still used.
#[inline]
pub(super) fn nearest(x: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    if x.abs() < 4_194_303.0 {
        ((x + MAGIC).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
    } else {
        x.round_ties_even() as i32
    }
}

/// Below this the group is treated as zero (ggml's GROUP_MAX_EPS).
const GROUP_MAX_EPS: f32 = 1e-15;

/// The value of largest magnitude, with its sign (the first such).
fn signed_max(x: &[f32]) -> f32 {
    x.iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

/// Symmetric levels `-nmax..nmax` (stored as `l + nmax`) and the scale that
/// minimises `sum w (x - scale l)^2` over 19 candidate mappings of the
/// largest-magnitude value onto `-nmax` (llama.cpp's `make_qx_quants`).
pub(super) fn symmetric(x: &[f32], nmax: i32, w: &[f32], levels: &mut [u8]) -> f32 {
    let max = signed_max(x);
    if max.abs() < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for (&v, &w) in x.iter().zip(w) {
            let l = nearest(iscale * v).clamp(-nmax, nmax - 1) as f32;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let fill = |iscale: f32, levels: &mut [u8]| {
        for (q, &v) in levels.iter_mut().zip(x) {
            *q = (nearest(iscale * v).clamp(-nmax, nmax - 1) + nmax) as u8;
        }
    };
    let iscale = -(nmax as f32) / max;
    fill(iscale, levels);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for step in (-9..=9).filter(|&s| s != 0) {
        let iscale = -(nmax as f32 + 0.1 * step as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        // sumlx^2 / suml2 is the error reduction of the best scale for these levels.
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            fill(iscale, levels);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric levels `-nmax..nmax` (stored as `l + nmax`) refined one value
/// at a time: each level moves to the one that is best for the scale the
/// others imply, while that lowers the error (llama.cpp's `make_q3_quants`,
/// weights `x^2`).
pub(super) fn symmetric_refined(x: &[f32], nmax: i32, levels: &mut [u8]) -> f32 {
    let max = signed_max(x);
    if max.abs() < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut l_buf = [0i32; 32];
    let l = &mut l_buf[..x.len()];
    for (q, &v) in l.iter_mut().zip(x) {
        *q = nearest(iscale * v).clamp(-nmax, nmax - 1);
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (&v, &q) in x.iter().zip(l.iter()) {
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * (q * q) as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (i, &v) in x.iter().enumerate() {
            let w = v * v;
            let old = l[i] as f32;
            let slx = sumlx - w * v * old;
            if slx <= 0.0 {
                continue;
            }
            let sl2 = suml2 - w * old * old;
            let new = nearest(v * sl2 / slx).clamp(-nmax, nmax - 1);
            if new == l[i] {
                continue;
            }
            let (slx, sl2) = (slx + w * v * new as f32, sl2 + w * (new * new) as f32);
            if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                l[i] = new;
                (sumlx, suml2) = (slx, sl2);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    for (q, &v) in levels.iter_mut().zip(l.iter()) {
        *q = (v + nmax) as u8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// The candidate scales [`with_min`] tries: `(nmax + rmin + rdelta i) /
/// range` for `i` in `0..=steps`.
#[derive(Clone, Copy)]
pub(super) struct Candidates {
    pub rmin: f32,
    pub rdelta: f32,
    pub steps: i32,
    /// Minimise the weighted absolute error instead of the squared one.
    pub absolute: bool,
}

/// Levels `0..=nmax` with a scale and a minimum, `x ~ scale l - min`
/// (returned as `(scale, min)` with `min >= 0`): for each candidate mapping
/// of the range onto the levels, the weighted least-squares scale and
/// minimum of those levels; the best of them (llama.cpp's
/// `make_qkx2_quants` / `make_qkx3_quants`).
pub(super) fn with_min(
    x: &[f32],
    nmax: i32,
    w: &[f32],
    levels: &mut [u8],
    c: Candidates,
) -> (f32, f32) {
    let mut min = x.iter().fold(f32::INFINITY, |m, &v| m.min(v)).min(0.0);
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if max <= min {
        levels.fill(0);
        return (0.0, -min);
    }
    let (sum_w, sum_x) = x
        .iter()
        .zip(w)
        .fold((0f32, 0f32), |(sw, sx), (&v, &w)| (sw + w, sx + w * v));
    let error = |scale: f32, min: f32, levels: &[u8]| -> f32 {
        x.iter()
            .zip(w)
            .zip(levels)
            .map(|((&v, &w), &l)| {
                let diff = scale * l as f32 + min - v;
                w * if c.absolute { diff.abs() } else { diff * diff }
            })
            .sum()
    };
    let quantize = |iscale: f32, min: f32, levels: &mut [u8]| {
        for (q, &v) in levels.iter_mut().zip(x) {
            *q = nearest(iscale * (v - min)).clamp(0, nmax) as u8;
        }
    };
    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    quantize(iscale, min, levels);
    let mut best = error(scale, min, levels);
    // Groups are at most 32 values (K-quant sub-blocks, 32-value blocks).
    let mut trial_buf = [0u8; 32];
    let trial = &mut trial_buf[..x.len()];
    for i in 0..=c.steps {
        let iscale = (c.rmin + c.rdelta * i as f32 + nmax as f32) / (max - min);
        quantize(iscale, min, trial);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for ((&v, &w), &l) in x.iter().zip(w).zip(trial.iter()) {
            let l = l as f32;
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * v;
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det <= 0.0 {
            continue;
        }
        let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if this_min > 0.0 {
            // The levels start at the minimum: it may not lie above zero.
            this_min = 0.0;
            this_scale = sum_xl / sum_l2;
        }
        let e = error(this_scale, this_min, trial);
        if e < best {
            levels.copy_from_slice(trial);
            best = e;
            scale = this_scale;
            min = this_min;
        }
    }
    (scale, -min)
}

/// Non-negative values (sub-block scales or minimums) as levels `0..=nmax`
/// of one scale, chosen for the weighted error and refined one level at a
/// time (llama.cpp's `make_qp_quants`).
pub(super) fn non_negative(x: &[f32], nmax: i32, w: &[f32], levels: &mut [u8]) -> f32 {
    let max = x.iter().fold(0f32, |m, &v| m.max(v));
    if max < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest(iscale * v).clamp(0, nmax);
    let mse = |iscale: f32| -> f32 {
        let scale = 1.0 / iscale;
        x.iter()
            .zip(w)
            .map(|(&v, &w)| {
                let diff = v - scale * level(iscale, v) as f32;
                w * diff * diff
            })
            .sum()
    };
    let mut iscale = nmax as f32 / max;
    let mut best = mse(iscale);
    for step in (-4..=4).filter(|&s| s != 0) {
        let candidate = (0.1 * step as f32 + nmax as f32) / max;
        let e = mse(candidate);
        if e < best {
            best = e;
            iscale = candidate;
        }
    }
    // At most 16 sub-block scales or mins.
    let mut l_buf = [0i32; 16];
    let l = &mut l_buf[..x.len()];
    for (q, &v) in l.iter_mut().zip(x) {
        *q = level(iscale, v);
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for ((&v, &w), &q) in x.iter().zip(w).zip(l.iter()) {
        sumlx += w * v * q as f32;
        suml2 += w * (q * q) as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (i, (&v, &w)) in x.iter().zip(w).enumerate() {
            let old = l[i] as f32;
            let (slx, sl2) = (sumlx - w * v * old, suml2 - w * old * old);
            if slx <= 0.0 || sl2 <= 0.0 {
                continue;
            }
            let new = nearest(v * sl2 / slx).clamp(0, nmax);
            if new == l[i] {
                continue;
            }
            let (slx, sl2) = (slx + w * v * new as f32, sl2 + w * (new * new) as f32);
            if slx * slx * suml2 > sumlx * sumlx * sl2 {
                l[i] = new;
                (sumlx, suml2) = (slx, sl2);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    for (q, &v) in levels.iter_mut().zip(l.iter()) {
        *q = v as u8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Index of the level of `values` (ascending) nearest `x`.
#[inline]
pub(super) fn nearest_level(values: &[i8; 16], x: f32) -> usize {
    if x <= values[0] as f32 {
        return 0;
    }
    if x >= values[15] as f32 {
        return 15;
    }
    let (mut lo, mut hi) = (0, 15);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if x < values[mid] as f32 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if x - (values[lo] as f32) < values[hi] as f32 - x {
        lo
    } else {
        hi
    }
}

/// A scale for non-linear levels `values` (IQ4_NL's), minimising the
/// weighted error over 15 candidate mappings of the largest-magnitude value
/// onto the outermost levels (llama.cpp's `quantize_row_iq4_nl_impl`, per
/// block). Zero for an all-zero block.
pub(super) fn non_linear(x: &[f32], w: &[f32], values: &[i8; 16]) -> f32 {
    let max = signed_max(x);
    if max.abs() < GROUP_MAX_EPS {
        return 0.0;
    }
    let sums = |id: f32| {
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for (&v, &w) in x.iter().zip(w) {
            let q = values[nearest_level(values, id * v)] as f32;
            sumqx += w * q * v;
            sumq2 += w * q * q;
        }
        (sumqx, sumq2)
    };
    // First the largest magnitude onto the top level, then (below) onto
    // the bottom one and 7 mappings either side of it.
    let (sumqx, sumq2) = sums(-(values[0] as f32) / max);
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for step in -7..=7 {
        let (sumqx, sumq2) = sums((step as f32 + values[0] as f32) / max);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rounds_half_to_even_as_rint_does() {
        let mut cases = vec![0.0f32, -0.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997];
        cases.extend([
            4_194_303.5,
            -4_194_303.5,
            4_194_304.0,
            -4_194_305.0,
            1e9,
            -1e9,
        ]);
        cases.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
        ]);
        // A spread of magnitudes and fractions around every half.
        let mut v = 1e-3f32;
        while v < 1e7 {
            for x in [
                v,
                -v,
                v + 0.5,
                -v - 0.5,
                v.floor() + 0.5,
                -(v.floor() + 0.5),
            ] {
                cases.push(x);
            }
            v *= 1.013;
        }
        for x in cases {
            assert_eq!(nearest(x), x.round_ties_even() as i32, "{x:?}");
        }
    }

    fn weighted_error(x: &[f32], w: &[f32], y: impl Fn(usize) -> f32) -> f32 {
        x.iter()
            .zip(w)
            .enumerate()
            .map(|(i, (&v, &w))| w * (v - y(i)).powi(2))
            .sum()
    }

    fn sample(n: usize, seed: u32) -> Vec<f32> {
        // A small deterministic generator: values of mixed sign and size.
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.45) * 2.0
            })
            .collect()
    }

    /// Each search is at least as good, in its own weighted error, as the
    /// closed-form choice it starts from.
    #[test]
    fn searches_beat_their_closed_form_start() {
        for seed in 0..50 {
            let x = sample(32, seed);
            let w: Vec<f32> = x.iter().map(|v| v * v + 0.01).collect();
            let mut l = [0u8; 32];
            let scale = symmetric(&x, 4, &w, &mut l);
            let searched = weighted_error(&x, &w, |i| scale * (l[i] as i32 - 4) as f32);
            let max = signed_max(&x);
            let closed = weighted_error(&x, &w, |i| {
                let l = nearest(-4.0 / max * x[i]).clamp(-4, 3);
                -max / 4.0 * l as f32
            });
            assert!(
                searched <= closed * 1.000_01,
                "{seed}: {searched} > {closed}"
            );

            let (scale, min) = with_min(
                &x,
                15,
                &w,
                &mut l,
                Candidates {
                    rmin: -0.9,
                    rdelta: 0.05,
                    steps: 36,
                    absolute: false,
                },
            );
            let searched = weighted_error(&x, &w, |i| scale * l[i] as f32 - min);
            let lo = x.iter().fold(0f32, |m, &v| m.min(v));
            let hi = x.iter().fold(f32::MIN, |m, &v| m.max(v));
            let step = (hi - lo) / 15.0;
            let closed = weighted_error(&x, &w, |i| {
                nearest((x[i] - lo) / step).clamp(0, 15) as f32 * step + lo
            });
            assert!(
                searched <= closed * 1.000_01,
                "{seed}: {searched} > {closed}"
            );
        }
    }

    #[test]
    fn nearest_level_is_the_nearest() {
        let values = super::super::tables::KVALUES_IQ4NL;
        for i in -1300..1300 {
            let x = i as f32 / 10.0;
            let got = values[nearest_level(&values, x)] as f32;
            let best = values
                .iter()
                .map(|&v| (v as f32 - x).abs())
                .fold(f32::MAX, f32::min);
            assert_eq!((got - x).abs(), best, "{x}");
        }
    }

    #[test]
    fn zero_groups_give_zero_scales() {
        let x = [0f32; 16];
        let w = [1f32; 16];
        let mut l = [9u8; 16];
        assert_eq!(symmetric(&x, 32, &w, &mut l), 0.0);
        assert_eq!(l, [0; 16]);
        assert_eq!(non_negative(&x, 63, &w, &mut l), 0.0);
        assert_eq!(
            non_linear(&x, &w, &super::super::tables::KVALUES_IQ4NL),
            0.0
        );
    }
}
