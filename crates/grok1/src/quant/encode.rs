//! Encoders into the ggml types `grok1 convert` writes: F32, F16, BF16, Q8_0,
//! Q4_K and Q6_K, in the block layouts of `blocks.rs` (whose decoders are
//! checked bit-exact against gguf-py). Scales are chosen as llama.cpp's
//! reference quantisers do in their first, closed-form step (amax-based for
//! Q8_0 and Q6_K, min/max-based for Q4_K, scales of scales quantised to 8 or 6
//! bits); llama.cpp then refines them with a weighted search, which we leave
//! out, so our 4- and 6-bit files are valid but slightly less accurate than
//! llama-quantize's (bench/RESULTS.md reports the KL divergence).

use half::{bf16, f16};

use super::{GgmlType, QK_K};

#[inline]
fn nearest(x: f32) -> i32 {
    x.round() as i32
}

/// Encodes `x` (a whole number of blocks) into `out`, which it clears first.
/// Panics for a type this module does not encode (callers choose from
/// [`GgmlType::ENCODABLE`]).
pub fn quantize_row(t: GgmlType, x: &[f32], out: &mut Vec<u8>) {
    out.clear();
    assert_eq!(
        x.len() % t.block_size(),
        0,
        "{t}: row of {} values",
        x.len()
    );
    match t {
        GgmlType::F32 => out.extend(x.iter().flat_map(|v| v.to_le_bytes())),
        GgmlType::F16 => out.extend(x.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes())),
        GgmlType::BF16 => out.extend(x.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes())),
        GgmlType::Q8_0 => x.chunks_exact(32).for_each(|b| q8_0(b, out)),
        GgmlType::Q4K => x.chunks_exact(QK_K).for_each(|b| q4_k(b, out)),
        GgmlType::Q6K => x.chunks_exact(QK_K).for_each(|b| q6_k(b, out)),
        other => panic!("no encoder for {other}"),
    }
}

impl GgmlType {
    /// The types `quantize_row` writes.
    pub const ENCODABLE: [GgmlType; 6] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
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

/// Q4_K: 8 sub-blocks of 32, each `x ~ d*sc*q - dmin*m` with 4-bit `q`.
fn q4_k(x: &[f32], out: &mut Vec<u8>) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for (j, sub) in x.chunks_exact(32).enumerate() {
        let lo = sub.iter().fold(f32::INFINITY, |m, &v| m.min(v)).min(0.0);
        let hi = sub.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        scales[j] = (hi - lo) / 15.0;
        mins[j] = -lo;
    }
    let max_scale = scales.iter().fold(0f32, |m, &v| m.max(v));
    let max_min = mins.iter().fold(0f32, |m, &v| m.max(v));
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        ls[j] = nearest(inv_scale * scales[j]).clamp(0, 63) as u8;
        lm[j] = nearest(inv_min * mins[j]).clamp(0, 63) as u8;
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
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
    // Quantise against the scales as stored, so rounding of d/dmin is absorbed.
    let (d, dmin) = (d.to_f32(), dmin.to_f32());
    let mut levels = [0u8; QK_K];
    for (j, sub) in x.chunks_exact(32).enumerate() {
        let step = d * ls[j] as f32;
        let offset = dmin * lm[j] as f32;
        let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
        for (l, &v) in sub.iter().enumerate() {
            levels[32 * j + l] = nearest((v + offset) * inv).clamp(0, 15) as u8;
        }
    }
    for chunk in 0..4 {
        for l in 0..32 {
            out.push(levels[64 * chunk + l] | (levels[64 * chunk + 32 + l] << 4));
        }
    }
}

/// Q6_K: 16 sub-blocks of 16, each `x ~ d*sc*(q - 32)` with 6-bit `q` and
/// signed 8-bit `sc`.
fn q6_k(x: &[f32], out: &mut Vec<u8>) {
    // Each sub-block's scale maps its largest-magnitude value onto -32, as
    // llama.cpp's make_qx_quants starts; the sign keeps that value exact.
    let mut scales = [0f32; 16];
    for (j, sub) in x.chunks_exact(16).enumerate() {
        let max = sub
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        scales[j] = -max / 32.0;
    }
    let max_scale = scales
        .iter()
        .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let iscale = if max_scale != 0.0 {
        -128.0 / max_scale
    } else {
        0.0
    };
    let d = f16::from_f32(if iscale != 0.0 { 1.0 / iscale } else { 0.0 });
    let mut sc = [0i8; 16];
    for j in 0..16 {
        sc[j] = nearest(iscale * scales[j]).clamp(-128, 127) as i8;
    }
    let df = d.to_f32();
    let mut levels = [0u8; QK_K];
    for (j, sub) in x.chunks_exact(16).enumerate() {
        let step = df * sc[j] as f32;
        let inv = if step != 0.0 { 1.0 / step } else { 0.0 };
        for (l, &v) in sub.iter().enumerate() {
            levels[16 * j + l] = (nearest(v * inv).clamp(-32, 31) + 32) as u8;
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
