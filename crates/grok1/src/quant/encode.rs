//! Encoders into the ggml types `grok1 convert` writes, in the block layouts
//! of `blocks.rs` (whose decoders are checked bit-exact against gguf-py).
//! The 2- to 6-bit types choose their scales as llama-quantize does: a
//! weighted search per sub-block (`search.rs`), the sub-block scales then
//! quantised by a second search weighted by each sub-block's total weight,
//! and every value requantised against the scales as stored. The weights are
//! the importance of each column (an imatrix) when one is given, else the
//! stand-ins llama.cpp uses without one.

use half::{bf16, f16};

use super::search::{
    nearest, nearest_level, non_linear, non_negative, symmetric, symmetric_refined, with_min,
    Candidates,
};
use super::tables::KVALUES_IQ4NL;
use super::{GgmlType, QK_K};

/// Encodes `x` (a whole number of blocks) into `out`, which it clears first.
/// Panics for a type this module does not encode (callers choose from
/// [`GgmlType::ENCODABLE`]).
pub fn quantize_row(t: GgmlType, x: &[f32], out: &mut Vec<u8>) {
    quantize_row_weighted(t, x, None, out)
}

/// [`quantize_row`] with the importance of each value of the row (one
/// non-negative weight per column, from an importance matrix): the scale
/// searches minimise the error weighted by it. Panics if the lengths differ.
pub fn quantize_row_weighted(
    t: GgmlType,
    x: &[f32],
    importance: Option<&[f32]>,
    out: &mut Vec<u8>,
) {
    out.clear();
    assert_eq!(
        x.len() % t.block_size(),
        0,
        "{t}: row of {} values",
        x.len()
    );
    if let Some(w) = importance {
        assert_eq!(w.len(), x.len(), "{t}: importance of {} columns", w.len());
    }
    let bs = t.block_size();
    // The weights of block `i`, if any.
    let block_w = |i: usize| importance.map(|w| &w[i * bs..(i + 1) * bs]);
    let blocks = x.chunks_exact(bs).enumerate();
    match t {
        GgmlType::F32 => out.extend(x.iter().flat_map(|v| v.to_le_bytes())),
        GgmlType::F16 => out.extend(x.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes())),
        GgmlType::BF16 => out.extend(x.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes())),
        GgmlType::Q8_0 => x.chunks_exact(32).for_each(|b| q8_0(b, out)),
        GgmlType::Q4_0 => {
            let sigma2 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
            blocks.for_each(|(i, b)| q4_0(b, block_w(i), sigma2, out))
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let sigma2 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
            let with_min = t == GgmlType::Q5_1;
            blocks.for_each(|(i, b)| q5(b, block_w(i), sigma2, with_min, out))
        }
        GgmlType::IQ4_NL => blocks.for_each(|(i, b)| iq4_nl(b, block_w(i), out)),
        GgmlType::Q2K => blocks.for_each(|(i, b)| q2_k(b, block_w(i), out)),
        GgmlType::Q3K => blocks.for_each(|(i, b)| q3_k(b, block_w(i), out)),
        GgmlType::Q4K => blocks.for_each(|(i, b)| q45_k(b, block_w(i), 15, out)),
        GgmlType::Q5K => blocks.for_each(|(i, b)| q45_k(b, block_w(i), 31, out)),
        GgmlType::Q6K => blocks.for_each(|(i, b)| q6_k(b, block_w(i), out)),
        GgmlType::IQ4_XS => blocks.for_each(|(i, b)| iq4_xs(b, block_w(i), out)),
        other => panic!("no encoder for {other}"),
    }
}

impl GgmlType {
    /// The types `quantize_row` writes.
    pub const ENCODABLE: [GgmlType; 14] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::IQ4_NL,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::IQ4_XS,
    ];
}

fn q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend(f16::from_f32(d).to_le_bytes());
    out.extend(
        x.iter()
            .map(|&v| nearest(v * id).clamp(-127, 127) as i8 as u8),
    );
}

/// The weights of a sub-block's values when an importance matrix gives
/// `importance`: llama.cpp scales it by `sqrt(sigma2 + x^2)` so that large
/// values count more within a column's importance.
fn imatrix_weights(x: &[f32], importance: &[f32], sigma2: f32, w: &mut [f32]) {
    for ((w, &v), &q) in w.iter_mut().zip(x).zip(importance) {
        *w = q * (sigma2 + v * v).sqrt();
    }
}

/// Mean square of a super-block's values, the `sigma2` of the weights.
fn mean_square(x: &[f32]) -> f32 {
    x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32
}

/// Q4_0: `{ f16 d; u8 qs[16] }`, `x ~ d (q - 8)`. The scale is searched
/// with weights `importance sqrt(sigma2 + x^2)` (importance 1 without an
/// imatrix, where llama.cpp would take the closed-form `max / -8`: the
/// search is never worse in that weighted error).
fn q4_0(x: &[f32], importance: Option<&[f32]>, sigma2: f32, out: &mut Vec<u8>) {
    let mut w = [0f32; 32];
    imatrix_weights(x, importance.unwrap_or(&[1.0; 32]), sigma2, &mut w);
    let mut levels = [0u8; 32];
    let d = symmetric(x, 8, &w, &mut levels);
    out.extend(f16::from_f32(d).to_le_bytes());
    out.extend((0..16).map(|j| levels[j] | (levels[j + 16] << 4)));
}

/// Q5_0 `{ f16 d; u8 qh[4]; u8 qs[16] }`, `x ~ d (q - 16)`, or with
/// `with_min` Q5_1 `{ f16 d; f16 m; u8 qh[4]; u8 qs[16] }`, `x ~ d q + m`:
/// 5-bit `q`, the fifth bit of value `j` in bit `j` of `qh`. Weighted as
/// Q4_0.
fn q5(x: &[f32], importance: Option<&[f32]>, sigma2: f32, with_min: bool, out: &mut Vec<u8>) {
    let mut w = [0f32; 32];
    imatrix_weights(x, importance.unwrap_or(&[1.0; 32]), sigma2, &mut w);
    let mut levels = [0u8; 32];
    if with_min {
        let c = Candidates {
            rmin: -0.9,
            rdelta: 0.05,
            steps: 36,
            absolute: false,
        };
        let (d, min) = super::search::with_min(x, 31, &w, &mut levels, c);
        out.extend(f16::from_f32(d).to_le_bytes());
        out.extend(f16::from_f32(-min).to_le_bytes());
    } else {
        let d = symmetric(x, 16, &w, &mut levels);
        out.extend(f16::from_f32(d).to_le_bytes());
    }
    let qh = levels
        .iter()
        .enumerate()
        .fold(0u32, |qh, (j, &l)| qh | (((l >> 4) as u32) << j));
    out.extend(qh.to_le_bytes());
    out.extend((0..16).map(|j| (levels[j] & 0x0F) | ((levels[j + 16] & 0x0F) << 4)));
}

/// IQ4_NL: `{ f16 d; u8 qs[16] }`, `x ~ d v[q]` on the non-linear levels,
/// low nibbles for values 0..16, high for 16..32.
fn iq4_nl(x: &[f32], importance: Option<&[f32]>, out: &mut Vec<u8>) {
    let mut w = [0f32; 32];
    match importance {
        Some(q) => imatrix_weights(x, q, 2.0 * mean_square(x), &mut w),
        None => {
            for (w, &v) in w.iter_mut().zip(x) {
                *w = v * v;
            }
        }
    }
    let d = f16::from_f32(non_linear(x, &w, &KVALUES_IQ4NL));
    let df = d.to_f32();
    let id = if df != 0.0 { 1.0 / df } else { 0.0 };
    let level = |v: f32| nearest_level(&KVALUES_IQ4NL, id * v) as u8;
    out.extend(d.to_le_bytes());
    out.extend((0..16).map(|j| level(x[j]) | (level(x[j + 16]) << 4)));
}

/// The 2-bit quants of Q2_K and Q3_K: elements `32 s + l` of each 128 in
/// bits `2 s` of byte `l`.
fn pack_2bit(levels: &[u8; QK_K], out: &mut Vec<u8>) {
    for half in levels.chunks_exact(128) {
        out.extend(
            (0..32)
                .map(|l| half[l] | (half[l + 32] << 2) | (half[l + 64] << 4) | (half[l + 96] << 6)),
        );
    }
}

/// Q2_K: `{ u8 scales[16]; u8 qs[64]; f16 d; f16 dmin }`, 16 groups of 16
/// with `x ~ d sc q - dmin m`, 4-bit `sc` and `m`, 2-bit `q`.
fn q2_k(x: &[f32], importance: Option<&[f32]>, out: &mut Vec<u8>) {
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins, mut group_w) = ([0f32; 16], [0f32; 16], [0f32; 16]);
    let sigma2 = mean_square(x);
    let mut w = [0f32; 16];
    for (j, sub) in x.chunks_exact(16).enumerate() {
        let c = match importance {
            Some(q) => {
                imatrix_weights(sub, &q[16 * j..16 * j + 16], sigma2, &mut w);
                Candidates {
                    rmin: -0.9,
                    rdelta: 0.05,
                    steps: 36,
                    absolute: false,
                }
            }
            None => {
                for (w, &v) in w.iter_mut().zip(sub) {
                    *w = v.abs();
                }
                Candidates {
                    rmin: -0.5,
                    rdelta: 0.1,
                    steps: 15,
                    absolute: true,
                }
            }
        };
        group_w[j] = w.iter().sum();
        (scales[j], mins[j]) = with_min(sub, 3, &w, &mut levels[16 * j..16 * j + 16], c);
    }
    let (d, dmin, ls, lm) = requantize_with_mins(
        x,
        &scales,
        &mins,
        &group_w,
        importance.is_some(),
        15,
        3,
        &mut levels,
    );
    out.extend((0..16).map(|j| ls[j] | (lm[j] << 4)));
    pack_2bit(&levels, out);
    out.extend(d.to_le_bytes());
    out.extend(dmin.to_le_bytes());
}

/// The super-block step of the K-quants with a scale and a min per group
/// (Q2_K, Q4_K, Q5_K): the `G` groups' `scales` and `mins` as levels
/// `0..=scale_max` of one f16 scale each (weighted by the groups'
/// importance `group_w` when `weighted`, else the closed form), then each
/// group's values of `x` requantised into `levels` (`0..=nmax`) against its
/// rounded scale and min. Returns `d`, `dmin` and the scales' and mins'
/// levels.
#[allow(clippy::too_many_arguments)]
fn requantize_with_mins<const G: usize>(
    x: &[f32],
    scales: &[f32; G],
    mins: &[f32; G],
    group_w: &[f32; G],
    weighted: bool,
    scale_max: i32,
    nmax: i32,
    levels: &mut [u8; QK_K],
) -> (f16, f16, [u8; G], [u8; G]) {
    let (mut ls, mut lm) = ([0u8; G], [0u8; G]);
    let (d, dmin) = if weighted {
        (
            non_negative(scales, scale_max, group_w, &mut ls),
            non_negative(mins, scale_max, group_w, &mut lm),
        )
    } else {
        (
            max_scaled(scales, scale_max, &mut ls),
            max_scaled(mins, scale_max, &mut lm),
        )
    };
    let (d, dmin) = (f16::from_f32(d), f16::from_f32(dmin));
    let (df, dminf) = (d.to_f32(), dmin.to_f32());
    let len = QK_K / G;
    for (j, (sub, group)) in x
        .chunks_exact(len)
        .zip(levels.chunks_exact_mut(len))
        .enumerate()
    {
        let step = df * ls[j] as f32;
        if step == 0.0 {
            continue;
        }
        let m = dminf * lm[j] as f32;
        for (q, &v) in group.iter_mut().zip(sub) {
            *q = nearest((v + m) / step).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, ls, lm)
}

/// Non-negative `x` as levels `0..=nmax` of `max / nmax` (the closed form
/// llama.cpp's reference K-quantisers use for sub-block scales); returns
/// the scale.
fn max_scaled(x: &[f32], nmax: i32, levels: &mut [u8]) -> f32 {
    let max = x.iter().fold(0f32, |m, &v| m.max(v));
    if max <= 0.0 {
        levels.fill(0);
        return 0.0;
    }
    let inv = nmax as f32 / max;
    for (q, &v) in levels.iter_mut().zip(x) {
        *q = nearest(inv * v).clamp(0, nmax) as u8;
    }
    max / nmax as f32
}

/// Q3_K: `{ u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d }`, 16 groups of
/// 16 with `x ~ d (sc - 32) (q - 4)`, 6-bit `sc`, 3-bit `q`.
fn q3_k(x: &[f32], importance: Option<&[f32]>, out: &mut Vec<u8>) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let mut ls = [0u8; 16];
    let d = match importance {
        Some(q) => {
            let sigma2 = 2.0 * mean_square(x);
            let mut group_w = [0f32; 16];
            let mut w = [0f32; 16];
            for (j, sub) in x.chunks_exact(16).enumerate() {
                imatrix_weights(sub, &q[16 * j..16 * j + 16], sigma2, &mut w);
                group_w[j] = w.iter().sum();
                scales[j] = symmetric(sub, 4, &w, &mut levels[16 * j..16 * j + 16]);
            }
            symmetric(&scales, 32, &group_w, &mut ls)
        }
        None => {
            for (j, sub) in x.chunks_exact(16).enumerate() {
                scales[j] = symmetric_refined(sub, 4, &mut levels[16 * j..16 * j + 16]);
            }
            let max = scales
                .iter()
                .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            if max == 0.0 {
                0.0
            } else {
                let iscale = -32.0 / max;
                for (l, &s) in ls.iter_mut().zip(&scales) {
                    *l = (nearest(iscale * s).clamp(-32, 31) + 32) as u8;
                }
                1.0 / iscale
            }
        }
    };
    let d = f16::from_f32(d);
    let df = d.to_f32();
    for (j, sub) in x.chunks_exact(16).enumerate() {
        let step = df * (ls[j] as i32 - 32) as f32;
        if step == 0.0 {
            continue;
        }
        for (q, &v) in levels[16 * j..16 * j + 16].iter_mut().zip(sub) {
            *q = (nearest(v / step).clamp(-4, 3) + 4) as u8;
        }
    }
    // The high bit of element j goes to bit j / 32 of hmask[j % 32].
    let mut hmask = [0u8; 32];
    for (j, q) in levels.iter_mut().enumerate() {
        if *q > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            *q -= 4;
        }
    }
    let mut packed = [0u8; 12];
    for (j, &l) in ls.iter().enumerate() {
        if j < 8 {
            packed[j] = l & 0x0F;
        } else {
            packed[j - 8] |= (l & 0x0F) << 4;
        }
        packed[8 + j % 4] |= (l >> 4) << (2 * (j / 4));
    }
    out.extend(hmask);
    pack_2bit(&levels, out);
    out.extend(packed);
    out.extend(d.to_le_bytes());
}

/// Q4_K (`nmax` 15) and Q5_K (`nmax` 31): `{ f16 d; f16 dmin; u8 scales[12];
/// (Q5_K: u8 qh[32];) u8 qs[128] }`, 8 sub-blocks of 32 with `x ~ d sc q -
/// dmin m`, 6-bit `sc` and `m`.
fn q45_k(x: &[f32], importance: Option<&[f32]>, nmax: i32, out: &mut Vec<u8>) {
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins, mut group_w) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    let sigma2 = 2.0 * mean_square(x);
    let mut w = [0f32; 32];
    for (j, sub) in x.chunks_exact(32).enumerate() {
        let c = match importance {
            Some(q) => {
                imatrix_weights(sub, &q[32 * j..32 * j + 32], sigma2, &mut w);
                Candidates {
                    rmin: -0.9,
                    rdelta: 0.05,
                    steps: 36,
                    absolute: false,
                }
            }
            None => {
                let av = mean_square(sub).sqrt();
                for (w, &v) in w.iter_mut().zip(sub) {
                    *w = av + v.abs();
                }
                let (rmin, steps) = if nmax == 15 { (-1.0, 20) } else { (-0.5, 15) };
                Candidates {
                    rmin,
                    rdelta: 0.1,
                    steps,
                    absolute: false,
                }
            }
        };
        group_w[j] = w.iter().sum();
        (scales[j], mins[j]) = with_min(sub, nmax, &w, &mut levels[32 * j..32 * j + 32], c);
    }
    let (d, dmin, ls, lm) = requantize_with_mins(
        x,
        &scales,
        &mins,
        &group_w,
        importance.is_some(),
        63,
        nmax,
        &mut levels,
    );
    out.extend(d.to_le_bytes());
    out.extend(dmin.to_le_bytes());
    let mut packed = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            packed[j] = ls[j];
            packed[j + 4] = lm[j];
        } else {
            packed[j + 4] = (ls[j] & 0x0F) | ((lm[j] & 0x0F) << 4);
            packed[j - 4] |= (ls[j] >> 4) << 6;
            packed[j] |= (lm[j] >> 4) << 6;
        }
    }
    out.extend(packed);
    if nmax == 31 {
        // The fifth bit of element 64 c + l (+ 32) is bit 2 c (+ 1) of qh[l].
        let mut qh = [0u8; 32];
        for (c, chunk) in levels.chunks_exact_mut(64).enumerate() {
            for (half, values) in chunk.chunks_exact_mut(32).enumerate() {
                for (h, q) in qh.iter_mut().zip(values) {
                    if *q > 15 {
                        *h |= 1 << (2 * c + half);
                        *q -= 16;
                    }
                }
            }
        }
        out.extend(qh);
    }
    for chunk in levels.chunks_exact(64) {
        out.extend((0..32).map(|l| chunk[l] | (chunk[l + 32] << 4)));
    }
}

/// Q6_K: `{ u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }`, 16 groups of 16
/// with `x ~ d sc (q - 32)`, signed 8-bit `sc`, 6-bit `q`.
fn q6_k(x: &[f32], importance: Option<&[f32]>, out: &mut Vec<u8>) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let mut w = [0f32; 16];
    for (j, sub) in x.chunks_exact(16).enumerate() {
        // llama.cpp weighs by the importance alone here, or by x^2 without one.
        match importance {
            Some(q) => w.copy_from_slice(&q[16 * j..16 * j + 16]),
            None => {
                for (w, &v) in w.iter_mut().zip(sub) {
                    *w = v * v;
                }
            }
        }
        scales[j] = symmetric(sub, 32, &w, &mut levels[16 * j..16 * j + 16]);
    }
    let max = scales
        .iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if max.abs() < 1e-15 {
        out.extend([0u8; 210]);
        return;
    }
    let iscale = -128.0 / max;
    let d = f16::from_f32(1.0 / iscale);
    let mut sc = [0i8; 16];
    for (s, &v) in sc.iter_mut().zip(&scales) {
        *s = nearest(iscale * v).clamp(-128, 127) as i8;
    }
    let df = d.to_f32();
    for (j, sub) in x.chunks_exact(16).enumerate() {
        let step = df * sc[j] as f32;
        if step == 0.0 {
            continue;
        }
        for (q, &v) in levels[16 * j..16 * j + 16].iter_mut().zip(sub) {
            *q = (nearest(v / step).clamp(-32, 31) + 32) as u8;
        }
    }
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for half in 0..2 {
        let lv = &levels[128 * half..128 * half + 128];
        for l in 0..32 {
            let (q1, q2, q3, q4) = (lv[l], lv[l + 32], lv[l + 64], lv[l + 96]);
            ql[64 * half + l] = (q1 & 0x0F) | ((q3 & 0x0F) << 4);
            ql[64 * half + l + 32] = (q2 & 0x0F) | ((q4 & 0x0F) << 4);
            qh[32 * half + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
    out.extend(ql);
    out.extend(qh);
    out.extend(sc.iter().map(|&s| s as u8));
    out.extend(d.to_le_bytes());
}

/// IQ4_XS: `{ f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128] }`, 8
/// sub-blocks of 32 on IQ4_NL's non-linear levels with 6-bit scales.
fn iq4_xs(x: &[f32], importance: Option<&[f32]>, out: &mut Vec<u8>) {
    let sigma2 = 2.0 * mean_square(x);
    let mut scales = [0f32; 8];
    let mut w = [0f32; 32];
    for (ib, sub) in x.chunks_exact(32).enumerate() {
        match importance {
            Some(q) => imatrix_weights(sub, &q[32 * ib..32 * ib + 32], sigma2, &mut w),
            None => {
                for (w, &v) in w.iter_mut().zip(sub) {
                    *w = v * v;
                }
            }
        }
        scales[ib] = non_linear(sub, &w, &KVALUES_IQ4NL);
    }
    let max = scales
        .iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    // As llama.cpp, the values are requantised against the f32 super-block
    // scale, not the f16 one stored, so that the bytes are llama-quantize's
    // (bench/quant_kl.sh).
    let df = -max / 32.0;
    let d = f16::from_f32(df);
    let id = if df != 0.0 { 1.0 / df } else { 0.0 };
    let (mut scales_h, mut scales_l) = (0u16, [0u8; 4]);
    let mut levels = [0u8; QK_K];
    for (ib, sub) in x.chunks_exact(32).enumerate() {
        let l = nearest(id * scales[ib]).clamp(-32, 31);
        let dl = df * l as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        for (q, &v) in levels[32 * ib..32 * ib + 32].iter_mut().zip(sub) {
            *q = nearest_level(&KVALUES_IQ4NL, idl * v) as u8;
        }
        let l = (l + 32) as u8;
        scales_l[ib / 2] |= (l & 0x0F) << (4 * (ib % 2));
        scales_h |= ((l >> 4) as u16) << (2 * ib);
    }
    out.extend(d.to_le_bytes());
    out.extend(scales_h.to_le_bytes());
    out.extend(scales_l);
    for sub in levels.chunks_exact(32) {
        out.extend((0..16).map(|j| sub[j] | (sub[j + 16] << 4)));
    }
}
